"""Action aliases loaded from packs (spec §2.1), checked with file, line and reason for every problem.

`load_aliases(registry)` turns the registry's `aliases` documents into `Alias` objects. A bad alias file
becomes a `ContentError` and is skipped; everything else loads. Squall extensions kept as plain data for
the bot to enforce: `permissions: {allow: {users, groups, channels}, deny: {...}}` and
`confirm: true | {ttl: seconds}`, `approval: {groups, count, self_approval, ttl}`.

`cast_alias_parameters` casts matched values by the action's parameter types (spec §3.1: arrays split on
commas and stripped, via `engine.parameters.cast`), and `inject_immutable` adds the alias's
`immutable_parameters`, rendered with Jinja, refusing a user-supplied value for any of them; those that
read the datastore, and a shell runner's `cmd` (`engine_immutables`), are left for the engine to render,
with the alias's context as names (`immutable_names`).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jinja2

from aliases.grammar import AliasFormatError, brace_problem, compile_format
from engine.actions import Action, ApprovalProblem, approval_policy
from engine.packs import ContentWarning, Registry, UnknownAction
from engine.parameters import ParameterError, cast
from engine.runners import SHELL_COMMAND_RUNNERS
from engine.templates import TemplateRenderError, render_values
from engine.yamlfile import ContentError, LineMap

ALIAS_KEYS = {
    "name", "pack", "action_ref", "description", "enabled", "formats", "ack", "result", "extra",
    "immutable_parameters", "metadata_file", "permissions", "confirm", "ref", "uid", "id", "allow_overrides",
    "approval",
}
FORMAT_KEYS = {"display", "representation", "match_multiple"}
ACK_KEYS = {"enabled", "format", "extra", "append_url"}
RESULT_KEYS = {"enabled", "format", "extra"}
PERMISSION_SIDES = {"allow", "deny"}
#: What an allow or deny list names, in the order help and refusals list them.
PERMISSION_KINDS = ("users", "groups", "channels", "adapters")
CONFIRM_KEYS = {"ttl"}


@dataclass
class AliasFormat:
    """One entry of `formats`: shown as `display` in help, matched through each representation."""

    display: str | None
    representations: list[str]
    match_multiple: bool = False

    def summary(self) -> dict[str, Any]:
        return {"display": self.display, "representation": list(self.representations),
                "match_multiple": self.match_multiple}


@dataclass
class Alias:
    """One loaded action alias."""

    name: str
    pack: str
    action_ref: str
    description: str = ""
    enabled: bool = True
    formats: list[AliasFormat] = field(default_factory=list)
    ack: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    immutable_parameters: dict[str, Any] = field(default_factory=dict)
    permissions: dict[str, Any] = field(default_factory=dict)
    confirm: bool | dict[str, Any] = False
    metadata_file: str = ""
    #: Runner parameters (env, cwd, timeout...) a chat command may set as key=value; none by default.
    allow_overrides: list[str] = field(default_factory=list)
    #: `approval: {groups, count, self_approval, ttl}` (`engine.actions.approval_policy`): chat holds
    #: the command until enough approvers said yes; None leaves it to the action's own `approval`.
    approval: dict[str, Any] | None = None

    @cached_property
    def ref(self) -> str:
        """`pack.name`, made once: a chat command asks about six times (a loaded alias never changes; a
        pack reload loads new `Alias`es, and `dataclasses.replace` makes a new one)."""
        return f"{self.pack}.{self.name}"

    @cached_property
    def representations(self) -> list[str]:
        """Every format's representations, made once, as `ref`: every chat command's authorisation asks
        (`CommandService._allowed`); a pack reload loads new `Alias`es, whose formats are their own."""
        return [r for f in self.formats for r in f.representations]

    @property
    def format_parameters(self) -> set[str]:
        """The parameters its formats name (`run {{cmd}}`): a person sets them by typing a format, so
        a form asks for them and a key=value pair may give them, runner parameters included."""
        return {name for representation in self.representations
                for name in compile_format(representation).placeholders}

    def summary(self) -> dict[str, Any]:
        """The record shown by `squall alias list --json` (StackStorm's ActionAliasAPI fields)."""
        return {
            "ref": self.ref,
            "name": self.name,
            "pack": self.pack,
            "action_ref": self.action_ref,
            "description": self.description,
            "enabled": self.enabled,
            "formats": [f.summary() for f in self.formats],
            "ack": self.ack,
            "result": self.result,
            "extra": self.extra,
            "immutable_parameters": self.immutable_parameters,
            "permissions": self.permissions,
            "confirm": self.confirm,
            "allow_overrides": self.allow_overrides,
            "approval": self.approval,
            "metadata_file": self.metadata_file,
        }


class _Invalid(Exception):
    def __init__(self, error: ContentError) -> None:
        super().__init__(str(error))
        self.error = error


def _suggest(word: Any, choices: Collection[str]) -> str:
    near = difflib.get_close_matches(str(word), sorted(choices), n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _check_keys(value: dict[str, Any], allowed: Collection[str], what: str, fail: Any, *path: Any) -> None:
    for key in value:
        if key not in allowed:
            raise fail(f"unknown {what} '{key}'{_suggest(key, allowed)}; allowed: {', '.join(sorted(allowed))}",
                       *path, key)


def _mapping(data: dict[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(f"'{key}' must be a mapping", key)
    return value


def _formats(data: dict[str, Any], fail: Any, warn: Any) -> list[AliasFormat]:
    raw = data.get("formats")
    if raw is None:
        raise fail("'formats' is required: a list of format strings or {display, representation} mappings",
                   "formats")
    if not isinstance(raw, list) or not raw:
        raise fail("'formats' must be a non-empty list", "formats")
    formats: list[AliasFormat] = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            entry = AliasFormat(display=item, representations=[item])
            where: list[tuple[Any, ...]] = [("formats", index)]
        elif isinstance(item, dict):
            _check_keys(item, FORMAT_KEYS, "format attribute", fail, "formats", index)
            display = item.get("display")
            if display is not None and not isinstance(display, str):
                raise fail("'display' must be a string", "formats", index, "display")
            reps = item.get("representation")
            if reps is None:
                reps = []
            elif isinstance(reps, str):
                reps = [reps]
            if not isinstance(reps, list) or not all(isinstance(r, str) for r in reps):
                raise fail("'representation' must be a string or a list of strings", "formats", index,
                           "representation")
            if display is None and not reps:
                raise fail("a format mapping needs 'display', 'representation' or both", "formats", index)
            multiple = item.get("match_multiple", False)
            if not isinstance(multiple, bool):
                raise fail("'match_multiple' must be true or false", "formats", index, "match_multiple")
            entry = AliasFormat(display=display, representations=list(reps), match_multiple=multiple)
            where = [("formats", index, "representation", i) for i in range(len(reps))]
        else:
            raise fail(f"format #{index + 1} must be a string or a mapping, not {type(item).__name__}",
                       "formats", index)
        for rep, path in zip(entry.representations, where, strict=False):
            try:
                compile_format(rep)
            except AliasFormatError as exc:
                raise fail(str(exc), *path) from None
            if (problem := brace_problem(rep)) is not None:
                warn(problem, *path)
        formats.append(entry)
    return formats


def _reply_section(data: dict[str, Any], key: str, allowed: set[str], fail: Any) -> dict[str, Any]:
    section = _mapping(data, key, fail)
    _check_keys(section, allowed, f"{key} attribute", fail, key)
    for flag in ("enabled", "append_url"):
        if flag in section and not isinstance(section[flag], bool):
            raise fail(f"'{key}.{flag}' must be true or false", key, flag)
    if "format" in section and not isinstance(section["format"], str):
        raise fail(f"'{key}.format' must be a string (a Jinja template)", key, "format")
    if "extra" in section and not isinstance(section["extra"], dict):
        raise fail(f"'{key}.extra' must be a mapping", key, "extra")
    return section


def _permissions(data: dict[str, Any], fail: Any) -> dict[str, Any]:
    perms = _mapping(data, "permissions", fail)
    _check_keys(perms, PERMISSION_SIDES, "permissions section", fail, "permissions")
    for side, rules in perms.items():
        if rules is None:
            continue
        if not isinstance(rules, dict):
            raise fail(f"'permissions.{side}' must be a mapping of users, groups, channels and adapters",
                       "permissions", side)
        _check_keys(rules, PERMISSION_KINDS, f"permissions.{side} list", fail, "permissions", side)
        for kind, names in rules.items():
            if names is None:
                continue
            # A YAML number is a channel's name (an IRC or Mattermost id may be digits), never a
            # user's, group's or adapter's: `007` reads as 7, and a deny list that names nobody
            # lets everybody in. As config's `auth.aliases` (`engine.config._names`).
            kinds = (str, int) if kind == "channels" else (str,)
            if not isinstance(names, list) or not all(isinstance(n, kinds) and not isinstance(n, bool)
                                                      for n in names):
                quote = (" (quote a name that looks like a number)"
                         if isinstance(names, list) and any(isinstance(n, int | float) for n in names) else "")
                raise fail(f"'permissions.{side}.{kind}' must be a list of names, such as [root], not {names!r}"
                           f"{quote}", "permissions", side, kind)
    return perms


def _confirm(data: dict[str, Any], fail: Any) -> bool | dict[str, Any]:
    confirm = data.get("confirm", False)
    if confirm is None or isinstance(confirm, bool):
        return bool(confirm)
    if not isinstance(confirm, dict):
        raise fail("'confirm' must be true, false or a mapping such as {ttl: 60}", "confirm")
    _check_keys(confirm, CONFIRM_KEYS, "confirm attribute", fail, "confirm")
    ttl = confirm.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise fail("'confirm.ttl' must be a number of seconds > 0", "confirm", "ttl")
    return confirm


def _allow_overrides(data: dict[str, Any], fail: Any) -> list[str]:
    names = data.get("allow_overrides")
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise fail("'allow_overrides' must be a list of parameter names, e.g. [timeout]", "allow_overrides")
    return list(names)


def _approval(data: dict[str, Any], fail: Any) -> dict[str, Any] | None:
    try:
        return approval_policy(data.get("approval"))
    except ApprovalProblem as exc:
        raise fail(str(exc), "approval", *([exc.key] if exc.key else [])) from None


def build_alias(data: Any, lines: LineMap, *, pack: str, file: str, registry: Registry,
                warnings: list[ContentError] | None = None) -> Alias:
    """Check one alias document; raise `_Invalid` with the first problem. What loads all the same but may
    not do what its author meant (a format's `{{` without `}}`) is added to `warnings` as a `ContentWarning`
    with its line, when a list is given."""

    def fail(reason: str, *path: Any) -> _Invalid:
        return _Invalid(ContentError(file, lines.line(*path), reason))

    found: list[ContentError] = []  # given to `warnings` once the alias has loaded: a skipped one has its error

    def warn(reason: str, *path: Any) -> None:
        found.append(ContentWarning(file, lines.line(*path), reason))

    if not isinstance(data, dict):
        raise fail("an alias file must be a mapping with at least 'name', 'action_ref' and 'formats'")
    _check_keys(data, ALIAS_KEYS, "alias attribute", fail)
    name = data.get("name")
    if isinstance(name, bool):
        raise fail(f"'name' must be a string (YAML reads {'on/yes' if name else 'off/no'} as {str(name).lower()}: "
                   "quote it)", "name")
    if not isinstance(name, str) or not name.strip():
        raise fail("'name' is required and must be a string", "name")
    if any(c.isspace() for c in name):
        raise fail(f"alias name {name!r} may not contain spaces", "name")
    if data.get("pack") not in (None, pack):
        raise fail(f"'pack: {data['pack']}' does not match the pack folder's pack '{pack}'", "pack")
    action_ref = data.get("action_ref")
    if not isinstance(action_ref, str) or not action_ref:
        raise fail("'action_ref' is required: the action this alias runs, as pack.name", "action_ref")
    if action_ref not in registry.actions:
        try:
            registry.action(action_ref)
        except UnknownAction as exc:
            raise fail(f"action_ref: {exc}", "action_ref") from None
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("'description' must be a string", "description")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("'enabled' must be true or false", "enabled")
    formats = _formats(data, fail, warn)
    alias = Alias(
        name=name,
        pack=pack,
        action_ref=action_ref,
        description=description or "",
        enabled=enabled,
        formats=formats,
        ack=_reply_section(data, "ack", ACK_KEYS, fail),
        result=_reply_section(data, "result", RESULT_KEYS, fail),
        extra=_mapping(data, "extra", fail),
        immutable_parameters=_mapping(data, "immutable_parameters", fail),
        permissions=_permissions(data, fail),
        confirm=_confirm(data, fail),
        metadata_file=file,
        allow_overrides=_allow_overrides(data, fail),
        approval=_approval(data, fail),
    )
    if warnings is not None:
        warnings.extend(found)
    return alias


def load_aliases(registry: Registry, warnings: list[ContentError] | None = None,
                 ) -> tuple[list[Alias], list[ContentError]]:
    """Every valid alias of the loaded packs (sorted by pack, name), and a `ContentError` per bad one; with
    `warnings`, a `ContentWarning` is added to it for each alias that loads but may not mean what it says
    (`build_alias`). They are kept apart from the errors, which callers report as aliases skipped."""
    aliases: dict[str, Alias] = {}
    errors: list[ContentError] = []
    for doc in registry.documents:
        if doc.kind != "aliases":
            continue
        found: list[ContentError] = []
        try:
            alias = build_alias(doc.data, doc.lines, pack=doc.pack, file=doc.file, registry=registry,
                                warnings=found)
        except _Invalid as exc:
            errors.append(exc.error)
            continue
        if alias.ref in aliases:
            errors.append(ContentError(doc.file, doc.lines.line("name"),
                                       f"alias '{alias.ref}' is already defined in {aliases[alias.ref].metadata_file}"))
            continue
        aliases[alias.ref] = alias
        if warnings is not None:
            warnings.extend(found)
    return sorted(aliases.values(), key=lambda a: (a.pack, a.name)), errors


def cast_alias_parameters(action: Action, params: Mapping[str, Any]) -> dict[str, Any]:
    """Cast matched values by the action's parameter types (spec §3.1); unknown names pass through.

    Arrays are split on commas and each item stripped (`"a, b"` → `["a", "b"]`; a JSON list is
    decoded); values that are already typed (typed placeholders, lists) are left alone. Raises
    `ParameterError` naming the parameter when a value cannot be cast.
    """
    result: dict[str, Any] = {}
    for name, value in params.items():
        spec = action.parameters.get(name)
        result[name] = cast(name, value, spec) if spec is not None else value
    return result


def check_overrides(alias: Alias, action: Action, names: Collection[str]) -> None:
    """Refuse key=value pairs of a chat command that name a runner parameter (env, cwd, timeout,
    sudo, hosts...) the alias does not open with `allow_overrides`: a person in a channel may set
    the action's own parameters, not how and where it runs. One that a format of the alias names
    (`run {{cmd}} on {{hosts}}`) is open: typing that format would set it all the same. A command
    without pairs (most) has nothing to refuse, and builds none of these sets."""
    if not names:
        return
    runner = action.runner_parameter_names - set(alias.allow_overrides)
    if runner & set(names):
        runner -= alias.format_parameters
    for name in sorted(names):
        if name in runner:
            raise ParameterError(
                f'"{name}" is a parameter of the {action.runner_type} runner, which a chat command may not set; '
                f'only {action.ref}\'s own parameters may be given as key=value (the alias {alias.ref} would '
                f"have to list it in allow_overrides)")


#: What marks a template that reads the datastore: the names only the engine's template context has.
_DATASTORE_NAMES = ("st2kv", "decrypt_kv")


def _reads_datastore(value: Any) -> bool:
    """Whether an immutable parameter's value is a template that reads the datastore."""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else ""
    return ("{{" in text or "{%" in text) and any(name in text for name in _DATASTORE_NAMES)


def datastore_immutables(alias: Alias) -> set[str]:
    """The names of the alias's `immutable_parameters` whose templates read the datastore
    (`{{ st2kv.system.token | decrypt_kv }}`). `inject_immutable` passes them on unrendered and the
    request must name them among the values that render (`CommandService.run`): the engine renders
    them like a format's defaults, with `st2kv.system`, `st2kv.user` of the requester and
    `decrypt_kv`, and keeps what `decrypt_kv` reveals out of acks, approvals, records and the audit
    log. Rendered here, they would have no datastore, or a decrypted value nothing tracks."""
    return {name for name, value in (alias.immutable_parameters or {}).items() if _reads_datastore(value)}


def shell_immutables(alias: Alias, action: Action | None) -> set[str]:
    """`{"cmd"}` when the alias's `immutable_parameters` give a shell runner's action (`local-shell-cmd`,
    `remote-shell-cmd`) a `cmd` template, else nothing. It must render in the engine, whose shell runner
    passes each `{{ }}` value as a quoted variable (docs/security.md, "Shell templates"): rendered here,
    a nick such as x`id`y or a channel such as $(reboot) became bash text and ran."""
    value = (alias.immutable_parameters or {}).get("cmd")
    shell = action is not None and action.runner_type in SHELL_COMMAND_RUNNERS
    return {"cmd"} if shell and isinstance(value, str) and ("{{" in value or "{%" in value) else set()


def engine_immutables(alias: Alias, action: Action | None = None) -> set[str]:
    """The alias's immutable parameters that `inject_immutable` passes on as written, for the engine to
    render (the request names them in `render`): those that read the datastore (`datastore_immutables`)
    and, with `action`, a shell runner's `cmd` (`shell_immutables`). The others render here. An alias
    without immutable parameters (most) has none, asked of every command."""
    if not alias.immutable_parameters:
        return set()
    return datastore_immutables(alias) | shell_immutables(alias, action)


#: Names of the engine's own template context, which an alias's context never hides.
_ENGINE_NAMES = frozenset({"st2kv", "action_context", "config_context"})


def immutable_names(alias: Alias, render: Iterable[str], context: Mapping[str, Any]) -> dict[str, Any] | None:
    """The names the alias's immutable templates that the engine renders (those of `render`) may use
    besides the action's parameters, which win where a name is both: what `inject_immutable` renders the
    others with (each key of `context`, `user`, `api_user`, `source_channel`..., and `__context`), for
    the request's `extra_template_context`. The engine keeps them with the execution, so its shell runner
    and a re-run render the same. None when the request renders none of them (nothing changes), at once
    for an alias without immutable parameters (most; every chat command asks)."""
    immutable = alias.immutable_parameters
    if not immutable or not set(render) & set(immutable):
        return None
    names = {"__context": dict(context), **context}
    return {name: value for name, value in names.items() if name not in _ENGINE_NAMES}


def inject_immutable(alias: Alias, params: Mapping[str, Any], context: Mapping[str, Any],
                     env: jinja2.Environment | None = None, *, action: Action | None = None) -> dict[str, Any]:
    """`params` plus the alias's `immutable_parameters` rendered with Jinja against `context`, except
    those the engine renders (`engine_immutables`: what reads the datastore and, given the `action`, a
    shell runner's `cmd`), which are added as written.

    A value the user supplied for an immutable parameter is refused, as StackStorm does:
    `ParameterError("Immutable arguments cannot be overriden: <names>")`.
    """
    immutable = alias.immutable_parameters or {}
    if not immutable:
        return dict(params)
    overridden = [name for name in immutable if name in params]
    if overridden:
        raise ParameterError(f"Immutable arguments cannot be overriden: {','.join(overridden)}")
    deferred = engine_immutables(alias, action)
    try:
        rendered = render_values({k: v for k, v in immutable.items() if k not in deferred}, context, env)
    except TemplateRenderError as exc:
        raise ParameterError(f"alias '{alias.ref}': cannot render immutable_parameters: {exc}") from exc
    return {**params, **{name: immutable[name] if name in deferred else rendered[name] for name in immutable}}
