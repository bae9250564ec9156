"""Packs on disk: discovery, validation and the in-memory registry of their content (spec §9).

Loading never stops at the first problem: every bad file becomes a `ContentError` naming the
file, the line and the reason, and everything else in the pack (and every other pack) loads.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import logging
import os
import pickle
import re
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.actions import Action, build_action
from engine.content_files import without_enabled
from engine.files import write_atomically
from engine.yamlfile import FAST_LOADER, ContentError, ContentInvalid, LineMap, load_yaml

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jsonschema import ValidationError

log = logging.getLogger(__name__)

PACK_REF = re.compile(r"^[a-z0-9_]+$")
#: Shipped packs Squall itself depends on (system trigger types, chat posts, its own commands): a user
#: pack may not take their names. StackStorm's blacklist names `core` and `packs`; Squall's `packs` is replaceable.
SYSTEM_PACKS = {"core", "chatops", "squall"}
#: Shipped packs that StackStorm users replace with their own copy: a user pack of that name is loaded
#: instead of the shipped one, as installing a pack over StackStorm's shipped `linux` does. `packs` (StackStorm's
#: pack-management actions on Squall's CLI) too: Exchange content calls `packs.install`, nothing of Squall does.
REPLACEABLE_PACKS = {"linux", "packs"}
CONTENT_KINDS = ("aliases", "rules", "sensors", "policies")


@dataclass(frozen=True)
class ContentWarning(ContentError):
    """A problem in a pack file that loads all the same (a pack version that is not semver, an alias format
    whose `{{` has no `}}`): listed with the problems, with file and line, but nothing was skipped, so
    `squall pack reload` still exits 0 for it and the logs do not call it skipped."""


#: StackStorm's check of a pack's `version` (st2common.constants.pack.PACK_VERSION_REGEX): semver.
PACK_VERSION = re.compile(r"^(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)\.(?:0|[1-9]\d*)(?:-[\da-z\-]+(?:\.[\da-z\-]+)*)?"
                          r"(?:\+[\da-z\-]+(?:\.[\da-z\-]+)*)?$")


def version_problem(version: Any) -> str | None:
    """Why a pack.yaml `version` is not one StackStorm registers, or None. As StackStorm, a version with one
    dot is read with `.0` added first (its `normalize_pack_version`: Exchange packs still say `0.1`)."""
    text = str(version)
    normalized = f"{text}.0" if text.count(".") == 1 else text
    if PACK_VERSION.match(normalized):
        return None
    return (f"version {text!r} is not semantic versioning: write MAJOR.MINOR.PATCH, such as 1.0.0 (StackStorm "
            "registers no pack with such a version; Squall loads the pack all the same)")


@dataclass
class TriggerType:
    """A trigger type a pack declares (spec §6.1)."""

    name: str
    pack: str
    description: str = ""
    payload_schema: dict[str, Any] = field(default_factory=dict)
    parameters_schema: dict[str, Any] = field(default_factory=dict)
    metadata_file: str = ""

    @property
    def ref(self) -> str:
        return f"{self.pack}.{self.name}"


@dataclass
class ContentDocument:
    """A parsed alias, rule, sensor or policy file, kept for the part of Squall that owns it."""

    kind: str
    pack: str
    file: str
    data: Any
    lines: LineMap


#: Folders a pack's content hash leaves out: what tools write beside the pack, not the pack.
_UNHASHED = frozenset({"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"})
#: A pack's top folders only `squall serve` reads (never a worker's run): left out of its content hash.
SERVE_ONLY = frozenset({"rules", "aliases", "sensors"})


@dataclass
class Pack:
    ref: str
    path: Path
    metadata: dict[str, Any]
    system: bool
    config_schema: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    _content_hash: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0.0.0"))

    @property
    def requirements(self) -> Path:
        return self.path / "requirements.txt"

    def content_hash(self) -> str:
        """SHA-256 over the files that make the pack's actions run (names and bytes; caches, git data
        and what only `squall serve` reads, `SERVE_ONLY`, left out): equal on every machine that holds
        the same pack, whatever the files' times. Worked out once per process, at the first request of
        one of its actions under the scale-out executor. Rules, aliases and sensors are left out: the
        web UI's rule switch (and `st2 rule disable`) rewrites a rule file on one serve node, which
        must not stop the workers running the pack's actions. So is an action's `enabled:` line, which `st2
        action disable` rewrites: an action's metadata (a YAML file right in `actions/`) is read
        `without_enabled`."""
        if self._content_hash is None:
            digest = hashlib.sha256()
            for file in sorted(p for p in self.path.rglob("*") if p.is_file() and not _UNHASHED.intersection(
                    p.relative_to(self.path).parts) and p.suffix != ".pyc"
                    and p.relative_to(self.path).parts[0] not in SERVE_ONLY):
                relative = file.relative_to(self.path)
                content = file.read_bytes()
                if relative.parent.as_posix() == "actions" and relative.suffix in (".yaml", ".yml"):
                    with contextlib.suppress(UnicodeDecodeError):  # no action loads from it: its bytes
                        content = without_enabled(content.decode("utf-8")).encode("utf-8")
                digest.update(relative.as_posix().encode() + b"\0")
                digest.update(hashlib.sha256(content).digest())
            self._content_hash = digest.hexdigest()
        return self._content_hash

    def summary(self, counts: dict[str, int] | None = None) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.metadata.get("name", self.ref),
            "version": self.version,
            "description": self.metadata.get("description", ""),
            "author": self.metadata.get("author", ""),
            "email": self.metadata.get("email", ""),
            "keywords": self.metadata.get("keywords") or [],
            "path": str(self.path),
            "system": self.system,
            **({"content": counts} if counts is not None else {}),
        }


class UnknownAction(LookupError):
    """An action ref that no loaded pack has; carries the nearest refs for the message."""

    def __init__(self, ref: str, suggestions: list[str], disabled: bool = False) -> None:
        self.ref = ref
        self.suggestions = suggestions
        if disabled:
            message = f'Unable to execute. Action "{ref}" is disabled.'
        else:
            hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
            message = f'action "{ref}" not found{hint}'
        super().__init__(message)


class SystemPacksMissing(RuntimeError):
    """Squall's built-in packs (core, chatops, squall, linux, packs) are not where this install looks for them.

    Without them no system trigger type, chat post or `core.*` action exists, so every command would fail
    later and vaguely ('action "core.echo" not found'); the CLI shows this as a setup error (exit 3)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"Squall's built-in packs are not installed at {path} (no {path / 'core' / 'pack.yaml'}); install "
            "Squall from a checkout of its repository: `make install` in it, or `pip install -e <checkout>`")


def check_system_packs(system_path: Path) -> None:
    """Raise `SystemPacksMissing` unless `system_path` holds the `core` pack, the one every other depends on."""
    if not (system_path / "core" / "pack.yaml").is_file():
        raise SystemPacksMissing(system_path)


@dataclass
class Registry:
    """Everything loaded from the pack folders, plus what went wrong while loading."""

    packs: dict[str, Pack] = field(default_factory=dict)
    actions: dict[str, Action] = field(default_factory=dict)
    trigger_types: dict[str, TriggerType] = field(default_factory=dict)
    documents: list[ContentDocument] = field(default_factory=list)
    errors: list[ContentError] = field(default_factory=list)

    def action(self, ref: str) -> Action:
        """The enabled action `ref`, or `UnknownAction` naming the nearest refs."""
        action = self.actions.get(ref)
        if action is not None:
            if not action.enabled:
                raise UnknownAction(ref, [], disabled=True)
            return action
        refs = list(self.actions)
        suggestions = difflib.get_close_matches(ref, refs, n=3, cutoff=0.5)
        if not suggestions and "." in ref:
            name = ref.rsplit(".", 1)[1]
            suggestions = [r for r in refs if r.rsplit(".", 1)[1] == name][:3]
        raise UnknownAction(ref, suggestions)

    def counts(self, pack: str) -> dict[str, int]:
        counts = {"actions": sum(1 for a in self.actions.values() if a.pack == pack),
                  "triggers": sum(1 for t in self.trigger_types.values() if t.pack == pack)}
        for kind in CONTENT_KINDS:
            counts[kind] = sum(1 for d in self.documents if d.pack == pack and d.kind == kind)
        return counts


def _display(path: Path) -> str:
    """The path as people name it: relative to the working folder where it is under it, but for the root
    folder (systemd's working folder), relative to which `etc/squall/x` would name no file from elsewhere."""
    cwd = os.getcwd()
    text = str(path)
    # A string test first: `Path.relative_to` per file was a tenth of loading a 4,000-action pack.
    if cwd == os.sep or not text.startswith(cwd):
        return text
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return text


def hidden(name: str) -> bool:
    """A folder under a pack path that is never a pack: a dot-folder (`.<ref>.installing`, the copy
    `squall pack install` is still building; `.git`), loaded by nobody, as its name says."""
    return name.startswith(".")


def discover(paths: list[Path], adding: Path | None = None) -> list[Path]:
    """Pack folders (those holding a pack.yaml) under each path, in path order, each once; `hidden`
    folders are skipped. With `adding`, as if that pack folder were in place (a pack about to be
    installed there): where it would stand among them."""
    seen: set[Path] = set()
    found: list[Path] = []
    for base in paths:
        adds_here = adding is not None and adding.parent.resolve() == base.resolve()
        if not base.is_dir() and not adds_here:
            continue
        if (base / "pack.yaml").is_file():
            candidates = [base]
        else:
            candidates = [path for path in base.iterdir() if not hidden(path.name)] if base.is_dir() else []
            if adds_here and adding.name not in {path.name for path in candidates}:  # type: ignore[union-attr]
                candidates.append(adding)  # type: ignore[arg-type]
            candidates.sort()
        for candidate in candidates:
            real = candidate.resolve()
            if real in seen or not (candidate == adding or (candidate / "pack.yaml").is_file()):
                continue
            seen.add(real)
            found.append(candidate)
    return found


def _apply_defaults(schema: dict[str, Any], values: dict[str, Any], *, absent_objects: bool) -> dict[str, Any]:
    """`values` with the schema's defaults where a key is missing, inside the objects it holds too (an
    empty section, `api:`, included). StackStorm fills them twice, differently: its registration
    checks a config with an object the file leaves out still left out (`absent_objects` False), so
    the `required` keys inside an optional one are not asked for (the github pack's
    `repository_sensor`); its loader then hands actions every object filled in from its nested
    defaults (`absent_objects` True)."""
    result = dict(values)
    for key, spec in schema.items():
        if not isinstance(spec, dict):
            continue
        if key not in result and "default" in spec:
            result[key] = spec["default"]
        if spec.get("type") != "object" or not isinstance(spec.get("properties"), dict):
            continue
        if key not in result and absent_objects:
            result[key] = {}
        if key in result and isinstance(result[key], dict | None):  # another type is validation's to report
            result[key] = _apply_defaults(spec["properties"], result[key] or {}, absent_objects=absent_objects)
    return result


def _config_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """StackStorm config schemas mark `required` per property, at any depth; make that JSON schema.

    `engine.parameters` (and jsonschema with it) is imported here, not at the top: a registry read
    from the pack cache needs neither, and they were a seventh of a cached `squall pack list`."""
    from engine.parameters import draft4

    properties = {key: spec for key, spec in schema.items() if isinstance(spec, dict)}
    return draft4({"type": "object", "properties": properties})


def _holds_secret(schema: Any, path: list[Any]) -> bool:
    """Whether the value at `path` of a config is, is inside or holds a `secret: true` property:
    a load problem about it must not quote it (the pages show problems to every viewer)."""
    from engine.parameters import (  # with the config's schema check (see `_config_json_schema`)
        holds_secret,
        item_schema,
        property_schema,
    )

    for key in path:  # walked as `engine.pack_config.masked_config` walks a config: one rule for what is secret
        if not isinstance(schema, dict) or schema.get("secret"):
            return isinstance(schema, dict)
        schema = property_schema(schema, key) if isinstance(key, str) else item_schema(schema, key)
    return holds_secret(schema)


# Complex by nature: a check per pack.yaml key and folder.
def load_pack(path: Path, registry: Registry, configs_path: Path, system_path: Path | None) -> Pack | None:  # noqa: C901
    """Load one pack into `registry`; returns None when its pack.yaml itself is unusable."""
    manifest = path / "pack.yaml"
    try:
        metadata, lines = load_yaml(manifest, _display(manifest))
    except ContentInvalid as exc:
        registry.errors.append(exc.error)
        return None
    if not isinstance(metadata, dict):
        registry.errors.append(ContentError(_display(manifest), 1, "pack.yaml must be a mapping"))
        return None
    ref = metadata.get("ref") or metadata.get("name")
    if not isinstance(ref, str) or not PACK_REF.match(ref):
        where = "ref" if "ref" in metadata else "name"
        registry.errors.append(ContentError(
            _display(manifest), lines.line(where),
            f"pack ref {ref!r} must match ^[a-z0-9_]+$ (lower case, digits, '_'); add a 'ref' that does",
        ))
        return None
    system = system_path is not None and path.resolve().parent == system_path.resolve()
    ref_key = "ref" if "ref" in metadata else "name"
    # Reserved names first: a user pack called `core` must say so, not "already loaded".
    if ref in SYSTEM_PACKS and not system:
        registry.errors.append(ContentError(
            _display(manifest), lines.line(ref_key), f"'{ref}' is reserved for Squall's system packs"
        ))
        return None
    if ref in registry.packs:
        registry.errors.append(ContentError(
            _display(manifest), lines.line(ref_key),
            f"pack '{ref}' is already loaded from {registry.packs[ref].path}; this copy is ignored",
        ))
        return None
    pack = Pack(ref=ref, path=path, metadata=metadata, system=system)
    registry.packs[ref] = pack
    if metadata.get("version") is not None and (problem := version_problem(metadata["version"])) is not None:
        registry.errors.append(ContentWarning(_display(manifest), lines.line("version"), problem))
    _load_config(pack, registry, configs_path)

    for file in sorted((path / "actions").glob("*.y*ml")):
        try:
            data, amap = load_yaml(file, _display(file))
            action = build_action(data, amap, pack=ref, pack_path=path, file=_display(file))
        except ContentInvalid as exc:
            registry.errors.append(exc.error)
            continue
        if action.ref in registry.actions:
            registry.errors.append(ContentError(
                _display(file), amap.line("name"),
                f"action '{action.ref}' is already defined in {registry.actions[action.ref].metadata_file}",
            ))
            continue
        registry.actions[action.ref] = action

    for file in sorted((path / "triggers").glob("*.y*ml")):
        try:
            data, _ = load_yaml(file, _display(file))
        except ContentInvalid as exc:
            registry.errors.append(exc.error)
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            registry.errors.append(ContentError(_display(file), 1, "a trigger type needs a 'name'"))
            continue
        trigger = TriggerType(
            name=data["name"], pack=ref, description=str(data.get("description") or ""),
            payload_schema=data.get("payload_schema") or {},
            parameters_schema=data.get("parameters_schema") or {}, metadata_file=_display(file),
        )
        _check_payload_schema(trigger, registry)
        registry.trigger_types[trigger.ref] = trigger

    for kind in CONTENT_KINDS:
        for file in sorted((path / kind).glob("*.y*ml")):
            try:
                data, dmap = load_yaml(file, _display(file))
            except ContentInvalid as exc:
                registry.errors.append(exc.error)
                continue
            registry.documents.append(ContentDocument(kind, ref, _display(file), data, dmap))
            if kind == "sensors":
                for trigger in sensor_trigger_types(ref, data, _display(file)):
                    if trigger.ref not in registry.trigger_types:
                        _check_payload_schema(trigger, registry)
                        registry.trigger_types[trigger.ref] = trigger
    return pack


#: JSON schema's type names (draft 4).
_JSON_TYPES = frozenset({"array", "boolean", "integer", "null", "number", "object", "string"})


def _check_payload_schema(trigger: TriggerType, registry: Registry) -> None:
    """A `payload_schema` or `parameters_schema` that is no mapping, or whose `type` is no JSON schema
    type (`type: int`, the usual slip), is a load problem: every instance of the trigger would be
    refused (a webhook's 400, a sensor's dispatch logged and dropped), and every rule on it fails to
    load. Checked by hand, not by jsonschema, which `squall serve` loads only when a payload is first
    checked; `TriggerService.check` and `rules.load_rule` name any other schema error then."""
    for name in ("payload_schema", "parameters_schema"):
        schema = getattr(trigger, name)
        problem = (_type_problem(schema, "") if isinstance(schema, dict) or not schema
                   else f"must be a mapping (a JSON schema), not {type(schema).__name__}")
        if problem is not None:
            registry.errors.append(ContentError(trigger.metadata_file, None,
                                                f"trigger type '{trigger.ref}': {name} {problem}"))


def _type_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
    for name in kinds:
        if not isinstance(name, str) or name not in _JSON_TYPES:
            return (f"{where or '(top level)'}: type {name!r} is not a JSON schema type; use one of "
                    f"{', '.join(sorted(_JSON_TYPES))}")
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    children = [(f"{where}.{key}".lstrip("."), child) for key, child in properties.items()]
    children.append((f"{where}[]", schema.get("items")))
    for child_where, child in children:
        problem = _type_problem(child, child_where)
        if problem is not None:
            return problem
    return None


def sensor_trigger_types(pack: str, data: Any, file: str) -> list[TriggerType]:
    """The trigger types a sensor file declares (`trigger_types:`): rules may use them like any other."""
    if not isinstance(data, dict) or not isinstance(data.get("trigger_types"), list):
        return []
    return [TriggerType(name=item["name"], pack=str(item.get("pack") or pack),
                        description=str(item.get("description") or ""),
                        payload_schema=item.get("payload_schema") or {},
                        parameters_schema=item.get("parameters_schema") or {}, metadata_file=file)
            for item in data["trigger_types"] if isinstance(item, dict) and isinstance(item.get("name"), str)]


#: Where StackStorm keeps pack configs (spec §9.1), named when a pack's config file is not where Squall looks.
ST2_CONFIGS_PATH = "/opt/stackstorm/configs"


def _load_config(pack: Pack, registry: Registry, configs_path: Path) -> None:
    """The pack's config schema and `configs/<ref>.yaml`, checked against it, defaults applied.

    A config file that is not there is no problem of its own: StackStorm registers the pack all the same
    and its actions get the schema's defaults (spec §9.2); Squall does too and says so (`_missing_config`)."""
    schema_file = pack.path / "config.schema.yaml"
    if schema_file.is_file():
        try:
            schema, _ = load_yaml(schema_file, _display(schema_file))
            pack.config_schema = schema if isinstance(schema, dict) else {}
        except ContentInvalid as exc:
            registry.errors.append(exc.error)
    config_file = configs_path / f"{pack.ref}.yaml"
    present = config_file.is_file()
    values = _read_config(config_file, registry) if present else {}
    if pack.config_schema:
        _check_config(pack, registry, config_file, values, present=present)
    pack.config = _apply_defaults(pack.config_schema, values, absent_objects=True)


def config_file_values(config_file: Path) -> dict[str, Any]:
    """The values a pack's config file holds ({} for an empty one): what the loader reads, and what the
    API's `PUT /configs/<pack>` keeps of a secret sent back masked. `ContentInvalid` when it cannot be
    read or parsed, or holds something other than a mapping."""
    loaded, _ = load_yaml(config_file, _display(config_file))
    if loaded is not None and not isinstance(loaded, dict):
        raise ContentInvalid(ContentError(_display(config_file), 1, "a pack config must be a mapping"))
    return loaded or {}


def _read_config(config_file: Path, registry: Registry) -> dict[str, Any]:
    """The values of a config file that is there ({} when it cannot be read, the problem noted)."""
    try:
        return config_file_values(config_file)
    except ContentInvalid as exc:
        registry.errors.append(exc.error)
        return {}


def config_problems(config_schema: dict[str, Any], values: dict[str, Any]) -> Iterator[tuple[ValidationError, str]]:
    """Each way a pack's config does not fit its config.schema.yaml, as StackStorm checks it when it
    registers one: `values` with the schema's defaults (an object they leave out left out: `_apply_defaults`)
    against the schema made JSON schema. Each is jsonschema's error and `<key path>: <its message>`, a
    secret value not quoted. The one rule for both the pack loader and the API's `PUT /configs/<pack>`,
    so a config the API accepts is one the next load takes."""
    import jsonschema

    schema = _config_json_schema(config_schema)
    checked = _apply_defaults(config_schema, values, absent_objects=False)
    for error in jsonschema.Draft4Validator(schema).iter_errors(checked):
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message
        if _holds_secret(schema, list(error.absolute_path)):  # jsonschema's messages quote the value's repr
            message = message.replace(repr(error.instance), "********")
        yield error, f"{path}: {message}"


def _check_config(pack: Pack, registry: Registry, config_file: Path, values: dict[str, Any], *,
                  present: bool) -> None:
    """Each way the config (its values and the schema's defaults) does not fit the schema, as a problem of
    its file; without a file, the required items left without a value are one warning (`_missing_config`)."""
    unset: dict[str, None] = {}  # dotted names, in the schema's order, each once
    for error, problem in config_problems(pack.config_schema, values):
        if not present and error.validator == "required" and isinstance(error.instance, dict):
            parent = "".join(f"{p}." for p in error.absolute_path)
            unset.update((parent + str(name), None) for name in error.validator_value if name not in error.instance)
            continue
        registry.errors.append(ContentError(_display(config_file), None, f"config of pack '{pack.ref}': {problem}"))
    if unset:
        registry.errors.append(_missing_config(pack.ref, config_file, list(unset)))


def _missing_config(ref: str, config_file: Path, unset: list[str]) -> ContentWarning:
    """The warning for a config file that is not there while the schema requires items it gives no default.

    It was said as the schema's errors ("(top level): 'api_url' is a required property") and as content
    skipped, of a file that does not exist and a pack of which nothing was skipped. A migrating operator's
    configs are usually where StackStorm keeps them, so that folder and the setting to point at it are named."""
    return ContentWarning(
        _display(config_file), None,
        f"no config file for pack '{ref}': Squall reads pack configs from packs.configs_path "
        f"({_display(config_file.parent)}), and StackStorm keeps them in {ST2_CONFIGS_PATH}: set "
        f"packs.configs_path to the folder holding {ref}.yaml, or write this file. The pack loads all the same "
        f"(as StackStorm registers it), and its actions get only its config schema's defaults, which give no "
        f"value to the required {', '.join(unset)}")


def load_registry(pack_paths: list[Path], configs_path: Path, system_path: Path) -> Registry:
    """Load the system packs, then every pack under `pack_paths`.

    A replaceable shipped pack (`linux`, `packs`) loads last and only if no user pack took its ref, so an
    installed copy replaces it without an "already loaded" warning, and removing that copy brings
    the shipped one back. Without the system packs (`SystemPacksMissing`) nothing would work, so that
    one problem stops the load instead of becoming a per-file error.
    """
    check_system_packs(system_path)
    registry = Registry()
    shipped = system_path.resolve()
    replaceable: list[Path] = []
    for path in discover([system_path, *pack_paths]):
        if path.resolve().parent == shipped and path.name in REPLACEABLE_PACKS:
            replaceable.append(path)  # after the user's packs, so a user's copy of the name wins
            continue
        if path.resolve().parent == shipped and path.name not in SYSTEM_PACKS:
            registry.errors.append(ContentWarning(
                _display(path), None, f"{path.name} is not a pack Squall ships, yet it is in the shipped packs' "
                f"folder ({system_path}): it loads as one of them, in every Squall home, and cannot be removed; "
                f"move it under packs.paths (data/packs in the checkout's config)"))
        load_pack(path, registry, configs_path, system_path)
    registry.errors.extend(_packs_without_manifest([system_path, *pack_paths]))
    for path in replaceable:
        if path.name not in registry.packs:
            load_pack(path, registry, configs_path, system_path)
    return registry


def _packs_without_manifest(paths: list[Path]) -> list[ContentWarning]:
    """A folder under a pack path that holds pack content (`actions/`, `rules/`, `aliases/`, `sensors/`,
    `policies/`) but no pack.yaml: a pack written without its manifest, which loads nothing. Said, so that
    `squall pack reload` and the log name it: skipped without a word, its webhook answered 404."""
    found: list[ContentWarning] = []
    for base in paths:
        if not base.is_dir() or (base / "pack.yaml").is_file():
            continue
        for folder in sorted(base.iterdir()):
            if hidden(folder.name) or not folder.is_dir() or (folder / "pack.yaml").is_file():
                continue
            kinds = [kind for kind in ("actions", *CONTENT_KINDS) if (folder / kind).is_dir()]
            if kinds:
                found.append(ContentWarning(
                    _display(folder), None, f"holds {', '.join(f'{kind}/' for kind in kinds)} but no pack.yaml, so "
                    f"nothing in it is loaded; add a pack.yaml (ref: {folder.name}, name, version: 0.1.0, author, "
                    "description)"))
    return found


def fingerprint(paths: list[Path]) -> tuple[int, int]:
    """A cheap summary of the pack folders (file count, newest mtime) to notice edits and installs. A file
    it cannot stat is left out: `squall serve` calls it every second, and one bad file must not stop it."""
    count = newest = 0
    for base in paths:
        if not base.is_dir():
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            count += len(files) + 1
            for path in (folder, *(os.path.join(folder, name) for name in files)):
                try:
                    newest = max(newest, os.stat(path).st_mtime_ns)
                except OSError:  # gone meanwhile, a symlink loop or one pointing nowhere: the loader reports it
                    continue
    return count, newest


# --- The pack cache: the registry kept between CLI calls -----------------------------------------

#: Set to 0 (or off, no, false) to load every pack from its files on every call (benchmarks, doubt).
CACHE_ENV = "SQUALL_PACK_CACHE"
_CACHE_MAGIC = b"squall-pack-cache 1\n"
#: A file changed this recently may change again within the file system's timestamp granularity
#: without its mtime moving ("racy git"); a registry loaded from such files is not cached.
_SETTLE_NS = 2_000_000_000
_SKIPPED_DIRS = {".git", "__pycache__", ".mypy_cache", ".pytest_cache"}


def cache_enabled() -> bool:
    """False when `$SQUALL_PACK_CACHE` turns the cache off."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in {"0", "off", "no", "false"}


def _walk_stats(root: Path, digest: Any, seen: set[str]) -> int:
    """Feed path, size, mtime, ctime and inode of every file under `root` into `digest`; the newest
    mtime/ctime seen. Follows symlinked folders (a pack may be linked in), each real folder once."""
    newest = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            digest.update(f"?{folder}\0".encode())  # gone or unreadable: still part of the key
            continue
        digest.update(f"D{folder}\0".encode())
        for entry in entries:
            try:
                info = entry.stat()  # follows symlinks: a link to a changed file counts as changed
            except OSError:
                digest.update(f"?{entry.path}\0".encode())
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name not in _SKIPPED_DIRS:
                    stack.append(entry.path)
                continue
            digest.update(f"F{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\0"
                          f"{info.st_ino}\0".encode())
            newest = max(newest, info.st_mtime_ns, info.st_ctime_ns)
    return newest


def registry_fingerprint(pack_paths: list[Path], configs_path: Path, system_path: Path) -> tuple[str, bool]:
    """The cache key of a registry and whether its files have settled (see `_SETTLE_NS`).

    The key covers everything the registry is built from: every file of every pack folder and of
    the configs folder (path, size, mtime, ctime, inode: ctime moves on any write, even one that
    restores the mtime), the loader's own code (the `engine` package's files), the Python and
    parser in use, and the working folder (file names in problems are relative to it)."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version}\0{FAST_LOADER.__name__}\0{os.getcwd()}\0".encode())
    seen: set[str] = set()
    _walk_stats(Path(__file__).parent, digest, seen)
    newest = 0
    for root in [system_path, *pack_paths]:
        digest.update(f"R{root}\0".encode())
        for folder in _pack_folders(root, digest):
            newest = max(newest, _walk_stats(folder, digest, seen))
    digest.update(f"C{configs_path}\0".encode())
    newest = max(newest, _walk_stats(configs_path, digest, seen))
    return digest.hexdigest(), newest < time.time_ns() - _SETTLE_NS


def _pack_folders(root: Path, digest: Any) -> list[Path]:
    """The folders `discover` would load under `root`, their names fed to `digest`: only folders
    holding a pack.yaml and not `hidden` count, so neither a data folder under a pack path (a
    database written on every command) nor an install's staging copy invalidates the cache."""
    if (root / "pack.yaml").is_file():
        return [root]
    try:
        names = sorted(os.listdir(root))
    except OSError:
        digest.update(b"?\0")
        return []
    folders = []
    for name in names:
        if not hidden(name) and (root / name / "pack.yaml").is_file():
            digest.update(f"N{name}\0".encode())
            folders.append(root / name)
    return folders


def _cache_file(cache_dir: Path, pack_paths: list[Path], configs_path: Path, system_path: Path) -> Path:
    """One cache file per set of folders, so two configs sharing a data folder do not evict each other."""
    name = hashlib.sha256(repr((str(system_path), [str(p) for p in pack_paths], str(configs_path))).encode())
    return cache_dir / f"packs-{name.hexdigest()[:16]}.pickle"


def _read_cache(file: Path, key: str) -> Registry | None:
    """The cached registry if `file` is ours (same user, 0600, a regular file) and made for `key`."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            log.warning("ignoring pack cache %s: not a private file of this user", file)
            return None
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            head = handle.read(len(_CACHE_MAGIC) + 64)
            if head != _CACHE_MAGIC + key.encode():
                return None
            # The cyclic collector would walk the growing heap again and again while ~100k objects are
            # made; none of them is garbage yet (a third of the load's time).
            collecting = gc.isenabled()
            gc.disable()
            try:
                registry = pickle.load(handle)
            finally:
                if collecting:
                    gc.enable()
    except Exception as exc:  # any unreadable cache is rebuilt, never fatal
        log.info("ignoring unreadable pack cache %s: %s", file, exc)
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    return registry if isinstance(registry, Registry) else None


def _write_cache(file: Path, key: str, registry: Registry) -> None:
    """Write the cache atomically (temporary file, then rename), 0600 in a 0700 folder."""
    try:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = _CACHE_MAGIC + key.encode() + pickle.dumps(registry, protocol=pickle.HIGHEST_PROTOCOL)
        write_atomically(file, data, sync=False)  # 0600; a cache lost in a machine crash is rebuilt
    except Exception as exc:  # a cache that cannot be written only costs the next call its speed
        log.info("pack cache not written to %s: %s", file, exc)


def load_registry_cached(pack_paths: list[Path], configs_path: Path, system_path: Path,
                         cache_dir: Path | None) -> Registry:
    """`load_registry`, from the cache in `cache_dir` when no file it was built from has changed.

    Why pickle: the registry is a graph of dataclasses (actions, their merged parameters, parsed
    alias and rule documents with their line maps) that pickle restores in a fraction of the time
    of parsing the YAML again, with no schema of its own to keep in step. Unpickling runs code named
    by the file, so the file is trusted only as Squall's own: it lives in Squall's data folder
    (`<data_dir>/cache`, 0700), is written by this user with mode 0600, and is read only if it is a
    regular file (not a symlink) owned by the reading user with no group or other permissions.
    Anything else — another owner, wider permissions, a different key, a truncated or corrupt file
    — is ignored and rebuilt. The key (`registry_fingerprint`) is checked on every call; a registry
    whose files changed while it loaded, or changed within the last two seconds, is not cached.
    Missing system packs stop it before any cache is read or written (`check_system_packs`).
    """
    check_system_packs(system_path)
    if cache_dir is None or not cache_enabled():
        return load_registry(pack_paths, configs_path, system_path)
    file = _cache_file(cache_dir, pack_paths, configs_path, system_path)
    key, settled = registry_fingerprint(pack_paths, configs_path, system_path)
    cached = _read_cache(file, key)
    if cached is not None:
        return cached
    registry = load_registry(pack_paths, configs_path, system_path)
    after, settled_after = registry_fingerprint(pack_paths, configs_path, system_path)
    if settled and settled_after and after == key:
        _write_cache(file, key, registry)
    return registry
