"""Packs on disk: discovery, validation and the in-memory registry of their content (spec §9).

Loading never stops at the first problem: every bad file becomes a `ContentError` naming the
file, the line and the reason, and everything else in the pack (and every other pack) loads.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from engine.actions import Action, build_action
from engine.parameters import draft4
from engine.yamlfile import ContentError, ContentInvalid, LineMap, load_yaml

PACK_REF = re.compile(r"^[a-z0-9_]+$")
#: Shipped packs Squall itself depends on (system trigger types, chat posts, its own commands): a user
#: pack may not take their names. StackStorm's blacklist names `core` and `packs`; Squall ships no `packs`.
SYSTEM_PACKS = {"core", "chatops", "squall"}
#: Shipped packs that StackStorm users replace with their own copy: a user pack of that name is loaded
#: instead of the shipped one, as installing a pack over StackStorm's shipped `linux` does.
REPLACEABLE_PACKS = {"linux"}
CONTENT_KINDS = ("aliases", "rules", "sensors", "policies")


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


@dataclass
class Pack:
    ref: str
    path: Path
    metadata: dict[str, Any]
    system: bool
    config_schema: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0.0.0"))

    @property
    def requirements(self) -> Path:
        return self.path / "requirements.txt"

    def summary(self, counts: dict[str, int] | None = None) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "name": self.metadata.get("name", self.ref),
            "version": self.version,
            "description": self.metadata.get("description", ""),
            "author": self.metadata.get("author", ""),
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
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def discover(paths: list[Path]) -> list[Path]:
    """Pack folders (those holding a pack.yaml) under each path, in path order, each once."""
    seen: set[Path] = set()
    found: list[Path] = []
    for base in paths:
        if not base.is_dir():
            continue
        candidates = [base] if (base / "pack.yaml").is_file() else sorted(base.iterdir())
        for candidate in candidates:
            real = candidate.resolve()
            if real in seen or not (candidate / "pack.yaml").is_file():
                continue
            seen.add(real)
            found.append(candidate)
    return found


def _apply_defaults(schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    result = dict(values)
    for key, spec in schema.items():
        if not isinstance(spec, dict):
            continue
        if key not in result and "default" in spec:
            result[key] = spec["default"]
        if (spec.get("type") == "object" and isinstance(spec.get("properties"), dict)
                and isinstance(result.get(key), dict | None)):
            # A value of the wrong type is left alone for validation to report.
            result[key] = _apply_defaults(spec["properties"], result.get(key) or {})
    return result


def _config_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """StackStorm config schemas mark `required` per property, at any depth; make that JSON schema."""
    properties = {key: spec for key, spec in schema.items() if isinstance(spec, dict)}
    return draft4({"type": "object", "properties": properties})


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
                    registry.trigger_types.setdefault(trigger.ref, trigger)
    return pack


def sensor_trigger_types(pack: str, data: Any, file: str) -> list[TriggerType]:
    """The trigger types a sensor file declares (`trigger_types:`): rules may use them like any other."""
    if not isinstance(data, dict) or not isinstance(data.get("trigger_types"), list):
        return []
    return [TriggerType(name=item["name"], pack=str(item.get("pack") or pack),
                        description=str(item.get("description") or ""),
                        payload_schema=item.get("payload_schema") or {},
                        parameters_schema=item.get("parameters_schema") or {}, metadata_file=file)
            for item in data["trigger_types"] if isinstance(item, dict) and isinstance(item.get("name"), str)]


def _load_config(pack: Pack, registry: Registry, configs_path: Path) -> None:
    schema_file = pack.path / "config.schema.yaml"
    if schema_file.is_file():
        try:
            schema, _ = load_yaml(schema_file, _display(schema_file))
            pack.config_schema = schema if isinstance(schema, dict) else {}
        except ContentInvalid as exc:
            registry.errors.append(exc.error)
    config_file = configs_path / f"{pack.ref}.yaml"
    values: dict[str, Any] = {}
    if config_file.is_file():
        try:
            loaded, _ = load_yaml(config_file, _display(config_file))
        except ContentInvalid as exc:
            registry.errors.append(exc.error)
            loaded = None
        if loaded is not None and not isinstance(loaded, dict):
            registry.errors.append(ContentError(_display(config_file), 1, "a pack config must be a mapping"))
        elif loaded:
            values = loaded
    values = _apply_defaults(pack.config_schema, values)
    if pack.config_schema:
        validator = jsonschema.Draft4Validator(_config_json_schema(pack.config_schema))
        for error in validator.iter_errors(values):
            path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            registry.errors.append(ContentError(
                _display(config_file), None, f"config of pack '{pack.ref}': {path}: {error.message}"
            ))
    pack.config = values


def load_registry(pack_paths: list[Path], configs_path: Path, system_path: Path) -> Registry:
    """Load the system packs, then every pack under `pack_paths`.

    A replaceable shipped pack (`linux`) loads last and only if no user pack took its ref, so an
    installed copy replaces it without an "already loaded" warning, and removing that copy brings
    the shipped one back.
    """
    registry = Registry()
    shipped = system_path.resolve()
    replaceable: list[Path] = []
    for path in discover([system_path, *pack_paths]):
        if path.resolve().parent == shipped and path.name in REPLACEABLE_PACKS:
            replaceable.append(path)  # after the user's packs, so a user's copy of the name wins
            continue
        load_pack(path, registry, configs_path, system_path)
    for path in replaceable:
        if path.name not in registry.packs:
            load_pack(path, registry, configs_path, system_path)
    return registry


def fingerprint(paths: list[Path]) -> tuple[int, int]:
    """A cheap summary of the pack folders (file count, newest mtime) to notice edits and installs."""
    count = newest = 0
    for base in paths:
        if not base.is_dir():
            continue
        for folder, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
            count += len(files) + 1
            newest = max(newest, os.stat(folder).st_mtime_ns)
            for name in files:
                try:
                    newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
                except FileNotFoundError:
                    continue
    return count, newest
