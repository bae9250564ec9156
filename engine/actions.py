"""Actions: their metadata files, checked the way StackStorm's registrar checks them (spec §1.1 to 1.2)."""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from engine.runners import RUNNER_TYPES, SHELL_COMMAND_RUNNERS
from engine.runners.shell_template import numeric_placeholder_problem
from engine.yamlfile import ContentError, ContentInvalid, LineMap

PARAMETER_TYPES = {"array", "boolean", "integer", "null", "number", "object", "string"}
_EXTENSION_KEYS = {"type", "description", "title", "default", "required", "secret", "immutable", "position", "enum"}
_DRAFT4_KEYS = {
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
    "items", "additionalItems", "minItems", "maxItems", "uniqueItems", "properties", "patternProperties",
    "additionalProperties", "dependencies", "allOf", "anyOf", "oneOf", "not", "multipleOf", "definitions",
    "id", "$schema", "format",
}
PARAMETER_KEYS = _EXTENSION_KEYS | _DRAFT4_KEYS
_OVERRIDABLE = {"default", "description", "enum", "immutable", "required"}
_ACTION_KEYS = {
    "name", "runner_type", "entry_point", "description", "enabled", "pack", "parameters", "output_schema",
    "notify", "tags", "metadata_file", "ref", "uid", "id", "approval",
}
log = logging.getLogger(__name__)

_NAME = re.compile(r"^[\w.-]+$")
_PARAM_NAME = re.compile(r"^\w+$")


@dataclass
class Action:
    """One loaded action; `parameters` is the merged runner ⊕ action schema used everywhere."""

    name: str
    pack: str
    runner_type: str
    entry_point: str
    description: str
    enabled: bool
    parameters: dict[str, dict[str, Any]]
    declared: dict[str, dict[str, Any]]
    notify: dict[str, Any]
    tags: list[Any]
    output_schema: dict[str, Any] | None
    metadata_file: str
    pack_path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    #: `approval:` (a Squall extension), checked by `approval_policy`: chat holds the action until approved.
    approval: dict[str, Any] | None = None

    @cached_property
    def ref(self) -> str:
        """`pack.name`, made once, as `runner_parameter_names` (a request asks three times)."""
        return f"{self.pack}.{self.name}"

    @property
    def id(self) -> str:
        """StackStorm's `id` of the action (st2client updates, deletes, enables and disables an action at
        `/actions/{id}` after reading it): 24 hex digits derived from the ref, as a rule's
        (`engine.rules.rule_id`), so every process and restart shows the same one. An action is its pack
        file here, with no row to number; an `id:` written in that file is not used."""
        return action_id(self.ref)

    @property
    def entry_path(self) -> Path | None:
        return (self.pack_path / "actions" / self.entry_point) if self.entry_point else None

    @cached_property
    def runner_parameter_names(self) -> frozenset[str]:
        """Its runner's parameter names (made once: every request asks, and a loaded action never changes;
        a pack reload loads new `Action`s)."""
        return frozenset(RUNNER_TYPES[self.runner_type].parameters)

    @cached_property
    def secret_names(self) -> frozenset[str]:
        """The names of its `secret: true` parameters (made once, as `runner_parameter_names`)."""
        return frozenset(name for name, spec in self.parameters.items() if spec.get("secret"))

    @cached_property
    def immutable_names(self) -> frozenset[str]:
        """The names of its `immutable: true` parameters (made once, as `runner_parameter_names`)."""
        return frozenset(name for name, spec in self.parameters.items() if spec.get("immutable"))

    @cached_property
    def templated_defaults(self) -> frozenset[str]:
        """The names of its parameters whose `default` is a template (made once, as `runner_parameter_names`):
        every request asks whether it has anything to render (`engine.parameters.needs_rendering`, `resolve`),
        and most actions have none. A default JSON cannot hold (a YAML date in an object) counts as one, so
        each request asks about it as before: raised here, it would refuse every request of the action, those
        that give the parameter too."""
        from engine.parameters import has_template  # (that module imports this one)

        def templated(default: Any) -> bool:
            try:
                return has_template(default)
            except (TypeError, ValueError):
                return True

        return frozenset(name for name, spec in self.parameters.items()
                         if "default" in spec and templated(spec["default"]))

    @cached_property
    def plain_types(self) -> dict[str, tuple[type, ...]]:
        """For each parameter whose spec asks nothing but its type, the Python types of its values
        (`engine.parameters.plain_types`): made once, as `runner_parameter_names`."""
        from engine.parameters import plain_types  # (that module imports this one)

        return plain_types(self.parameters)

    @cached_property
    def value_plan(self) -> tuple[tuple[str, dict[str, Any], Any, bool, frozenset[type] | None, bool], ...]:
        """For each parameter, what a request with nothing to render reads of its spec
        (`engine.parameters.value_plan`): made once, as `runner_parameter_names`."""
        from engine.parameters import value_plan  # (that module imports this one)

        return value_plan(self.parameters)

    @cached_property
    def shown_as_given(self) -> bool:
        """Whether a request's values are stored and shown exactly as resolved: no `secret` parameter, and
        none whose value `mask_value` may mask (`headers`, `cookies`, `env`, a URL: `MASKED_NAMES`), so
        nothing is masked, sealed nor scrubbed unless something decrypted was revealed
        (`engine.executions._shown_values`). Made once, as `runner_parameter_names`."""
        from engine.parameters import MASKED_NAMES  # (that module imports this one)

        return not self.secret_names and not any(name in MASKED_NAMES for name in self.parameters)

    def summary(self) -> dict[str, Any]:
        """The record shown by `squall action list/get --json` and the API."""
        return {
            "id": self.id,
            "ref": self.ref,
            "name": self.name,
            "pack": self.pack,
            "runner_type": self.runner_type,
            "entry_point": self.entry_point,
            "description": self.description,
            "enabled": self.enabled,
            "parameters": self.parameters,
            "notify": self.notify,
            "tags": self.tags,
            "output_schema": self.output_schema,
            "metadata_file": self.metadata_file,
        }


def content_id(kind: str, ref: str) -> str:
    """The `id` StackStorm's API gives pack content of `kind` (an action, a rule, a policy...): its MongoDB
    id there; here 24 hexadecimal digits derived from the kind and ref, the same in every process and
    restart, since the content is a file with no row to number."""
    return hashlib.sha256(f"{kind}:{ref}".encode()).hexdigest()[:24]


def action_id(ref: str) -> str:
    """The `id` of the action `ref` (`Action.id`)."""
    return content_id("action", ref)


NOTIFY_SECTIONS = ("on-complete", "on-success", "on-failure")


def notify_problem(notify: Any) -> str | None:
    """What is wrong with a `notify` mapping (an action's or an action-chain task's), or None."""
    if not isinstance(notify, dict):
        return "'notify' must be a mapping with on-complete / on-success / on-failure"
    for key in notify:
        if key not in NOTIFY_SECTIONS:
            return f"unknown notify section '{key}'{_suggest(str(key), list(NOTIFY_SECTIONS))}"
    return None


APPROVAL_KEYS = {"groups", "count", "self_approval", "ttl"}
_TTL = re.compile(r"^(\d+)([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ApprovalProblem(ValueError):
    """What is wrong with an `approval:` mapping, and the key under `approval` it is about (if one)."""

    def __init__(self, reason: str, key: str | None = None) -> None:
        super().__init__(reason)
        self.key = key


def approval_policy(value: Any) -> dict[str, Any] | None:
    """An alias's or action's `approval: {groups, count: 1, self_approval: false, ttl: 1h}` with its
    defaults filled and `ttl` in seconds (None when absent); `ApprovalProblem` names the bad key.
    Checked at pack load: a typo must not let a command run unapproved or hold it forever."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApprovalProblem("'approval' must be a mapping such as {groups: [oncall], count: 1, ttl: 1h}")
    for key in value:
        if key not in APPROVAL_KEYS:
            raise ApprovalProblem(f"unknown approval attribute '{key}'{_suggest(str(key), APPROVAL_KEYS)}; "
                                  f"allowed: {', '.join(sorted(APPROVAL_KEYS))}", str(key))
    groups = value.get("groups")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, str) and g for g in groups):
        raise ApprovalProblem("'approval.groups' must be a non-empty list of group names", "groups")
    count = value.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ApprovalProblem("'approval.count' must be a whole number >= 1", "count")
    self_approval = value.get("self_approval", False)
    if not isinstance(self_approval, bool):
        raise ApprovalProblem("'approval.self_approval' must be true or false", "self_approval")
    ttl = value.get("ttl", "1h")
    found = _TTL.match(str(ttl)) if not isinstance(ttl, bool) and isinstance(ttl, int | str) else None
    seconds = int(found.group(1)) * _TTL_UNITS[found.group(2)] if found else 0
    if seconds <= 0:
        raise ApprovalProblem(f"'approval.ttl' must be seconds or a duration such as 30m, 1h or 2d, not {ttl!r}",
                              "ttl")
    return {"groups": list(groups), "count": count, "self_approval": self_approval, "ttl": seconds}


def unapproved(ref: str, policy: dict[str, Any]) -> str:
    """Why a request that cannot be held for approvers (the API, the web UI) is refused: an action or
    alias declaring `approval:` never runs unapproved, wherever it is asked for."""
    return (f"{ref} needs approval from {', '.join(policy['groups'])}; ask for it in chat, where the approvers "
            "are asked")


def _suggest(word: str, choices: set[str] | list[str]) -> str:
    near = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _position_problem(parameters: dict[str, dict[str, Any]]) -> tuple[str, str] | None:
    """The parameter whose `position` StackStorm's registrar would refuse, with the reason, or None.

    StackStorm sorts positional parameters by position and refuses only two numberings: the same
    position twice, and gaps. It does not require them to start at 0 (git's `clone` numbers its
    arguments from 1), so neither do we: the runners pass them in sorted order either way."""
    positions: list[tuple[float, str]] = []
    for pname, spec in parameters.items():
        if "position" in spec:
            pos = spec["position"]
            if isinstance(pos, bool) or not isinstance(pos, int | float) or pos < 0:
                return pname, f"parameter '{pname}': 'position' must be a number >= 0"
            if pos != int(pos):
                return pname, f"parameter '{pname}': 'position' must be a whole number, not {pos:g}"
            positions.append((pos, pname))
    positions.sort()
    taken = ", ".join(f"{n}={p:g}" for p, n in positions)
    for index, (pos, pname) in enumerate(positions):
        if index and pos == positions[index - 1][0]:
            return pname, (f"parameter positions must be unique and contiguous ({taken}); '{pname}' has the "
                           f"same position {pos:g} as '{positions[index - 1][1]}'")
        expected = positions[0][0] + index
        if pos != expected:
            return pname, (f"parameter positions must be unique and contiguous ({taken}); '{pname}' should "
                           f"have position {expected:g}")
    return None


# Complex by nature: a check per action metadata key (spec §1.1); split, they would be scattered.
def build_action(data: Any, lines: LineMap, *, pack: str, pack_path: Path, file: str) -> Action:  # noqa: C901
    """Check one action document and merge its parameters with its runner's; raise on the first error."""

    def fail(reason: str, *path: str | int) -> ContentInvalid:
        return ContentInvalid(ContentError(file, lines.line(*path), reason))

    if not isinstance(data, dict):
        raise fail("an action file must be a mapping with at least 'name' and 'runner_type'")
    for key in data:
        if key not in _ACTION_KEYS:
            raise fail(f"unknown action attribute '{key}'{_suggest(key, _ACTION_KEYS)}", key)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise fail("'name' is required and must be a string", "name")
    if not _NAME.match(name):
        raise fail(f"action name '{name}' may hold only letters, digits, '_', '-' and '.'", "name")
    if data.get("pack") not in (None, pack):
        raise fail(f"'pack: {data['pack']}' does not match the pack folder's pack '{pack}'", "pack")
    runner_name = data.get("runner_type")
    if runner_name == "orchestra":
        runner_name = "orquesta"
    if runner_name not in RUNNER_TYPES:
        raise fail(
            f"unknown runner_type {runner_name!r}{_suggest(str(runner_name), list(RUNNER_TYPES))}; "
            f"available: {', '.join(sorted(RUNNER_TYPES))}",
            "runner_type",
        )
    runner = RUNNER_TYPES[runner_name]
    entry_point = data.get("entry_point") or ""
    if not isinstance(entry_point, str):
        raise fail("'entry_point' must be a path relative to the pack's actions/ folder", "entry_point")
    if runner.needs_entry_point and not entry_point:
        raise fail(f"runner '{runner_name}' needs 'entry_point' (a file under actions/)", "entry_point")
    if runner.forbids_entry_point and entry_point:
        # StackStorm stores and ignores it (the runner runs `cmd`); Exchange packs ship such leftovers.
        log.debug("%s: runner '%s' runs 'cmd'; entry_point '%s' is ignored", file, runner_name, entry_point)
        entry_point = ""
    if entry_point:
        target = (pack_path / "actions" / entry_point).resolve()
        if not target.is_relative_to(pack_path.resolve()):
            raise fail(f"entry_point '{entry_point}' points outside the pack", "entry_point")
        if not target.is_file():
            raise fail(f"entry_point '{entry_point}' does not exist (looked for {target})", "entry_point")
        if runner.check_entry_point is not None:  # workflows: bad files are rejected at load
            runner.check_entry_point(target, str(Path(file).parent / entry_point))
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail("'enabled' must be true or false", "enabled")

    declared = data.get("parameters") or {}
    if not isinstance(declared, dict):
        raise fail("'parameters' must be a mapping of parameter name to schema", "parameters")
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in runner.parameters.items()}
    for pname, spec in declared.items():
        where = ("parameters", pname)
        if not isinstance(pname, str) or not _PARAM_NAME.match(pname):
            raise fail(f"parameter name {pname!r} may hold only letters, digits and '_'", *where)
        if not isinstance(spec, dict):
            raise fail(f"parameter '{pname}' must be a mapping (its schema)", *where)
        for key in spec:
            if key not in PARAMETER_KEYS:
                raise fail(f"parameter '{pname}': unknown attribute '{key}'{_suggest(key, PARAMETER_KEYS)}",
                           *where, key)
        ptype = spec.get("type")
        types = ptype if isinstance(ptype, list) else [ptype] if ptype is not None else []
        for item in types:
            if item not in PARAMETER_TYPES:
                raise fail(f"parameter '{pname}': unknown type {item!r}{_suggest(str(item), PARAMETER_TYPES)}; "
                           f"use one of {', '.join(sorted(PARAMETER_TYPES))}", *where, "type")
        for flag in ("required", "secret", "immutable"):
            if flag in spec and not isinstance(spec[flag], bool):
                raise fail(f"parameter '{pname}': '{flag}' must be true or false", *where, flag)
        if "enum" in spec and not isinstance(spec["enum"], list):
            raise fail(f"parameter '{pname}': 'enum' must be a list of allowed values", *where, "enum")
        if pname in runner.parameters:
            base = runner.parameters[pname]
            if base.get("immutable"):
                raise fail(f"parameter '{pname}' is immutable in runner '{runner_name}' and cannot be "
                           "redeclared", *where)
            for key, value in spec.items():
                # StackStorm compares with the runner's value (None when the runner lacks the key)
                # and names the action by its ref.
                if key not in _OVERRIDABLE and base.get(key) != value:
                    raise fail(f'The attribute "{key}" for the runner parameter "{pname}" in action '
                               f'"{pack}.{name}" cannot be overridden.', *where, key)
            merged[pname] = {**base, **spec}
        else:
            merged[pname] = dict(spec)
        if merged[pname].get("immutable") and "default" not in merged[pname]:
            raise fail(f"parameter '{pname}' is immutable and so needs a 'default'", *where)

    position_problem = _position_problem(merged)
    if position_problem:
        pname, reason = position_problem
        raise fail(reason, "parameters", pname, "position")

    cmd = merged.get("cmd", {}).get("default") if runner_name in SHELL_COMMAND_RUNNERS else None
    if isinstance(cmd, str) and "{{" in cmd:
        problem = numeric_placeholder_problem(cmd, merged)
        if problem:
            raise fail(f"cmd: {problem}", "parameters", "cmd", "default")

    notify = data.get("notify") or {}
    problem = notify_problem(notify)
    if problem:
        unknown = [key for key in notify if key not in NOTIFY_SECTIONS] if isinstance(notify, dict) else []
        raise fail(problem, "notify", *unknown[:1])
    output_schema = data.get("output_schema")
    if output_schema is not None and not isinstance(output_schema, dict):
        raise fail("'output_schema' must be a JSON schema mapping", "output_schema")
    try:
        approval = approval_policy(data.get("approval"))
    except ApprovalProblem as exc:
        raise fail(str(exc), "approval", *([exc.key] if exc.key else [])) from None

    return Action(
        name=name,
        pack=pack,
        runner_type=runner_name,
        entry_point=entry_point,
        description=str(data.get("description") or ""),
        enabled=enabled,
        parameters=merged,
        declared=declared,
        notify=notify,
        tags=list(data.get("tags") or []),
        output_schema=output_schema,
        metadata_file=file,
        pack_path=pack_path,
        approval=approval,
    )
