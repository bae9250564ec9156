"""Rules (spec §5): load, index by trigger type, evaluate criteria, enforce by requesting the action.

A rule file is checked once at load (schema, trigger type and its parameters, operators,
JSONPath keys, action ref) and its criteria are compiled then: every key becomes a getter (a
plain dict/list walk for simple paths, a parsed jsonpath-ng expression otherwise) and every
operator a function. Per trigger instance the engine looks only at the enabled rules of that
trigger type: standard rules first, backstop rules only if no standard rule matched. Rules whose
first criterion is `equals` with a literal pattern are also indexed by that pattern, so an
instance is checked only against rules that can match (the result is the same as evaluating
every rule: the first criterion is the first one StackStorm evaluates too).

Deliberate differences from StackStorm: `exists`/`nexists` need no `pattern`; the documented
`{{ st2kv.system.key }}` pattern form works; a rule naming the action or trigger type of a pack not
loaded yet is loaded and reported as waiting, as StackStorm registers it, but matches nothing until a
reload brings the pack (StackStorm would record failed enforcements for a missing action meanwhile).

The criteria of one trigger instance, every rule's together, may take `CRITERIA_SECONDS` of CPU time
(`engine.patterns.Budget`; each regex's timeout is what is left of it): the sender chooses the payload
every rule, and every item of a `search`, is checked against, and steps each under a second added up
to seconds. The rules the budget leaves undecided do not match; each gets a failed enforcement and a
warning that say so. Criteria are evaluated where the instance's database call runs (the event loop,
on SQLite) while they take at most `templates.BRIEF_SECONDS`, as nearly all do; past that they are
given up there and evaluated again on a render thread (`RulesEngine.process`).

A rule whose action parameters are refused (a template that does not render, a value the action's types
or schema refuse) gets a `failed` execution of its action, with the error as its result, and a `failed`
enforcement naming it (spec §5.4): the failure shows in the execution list, and its end fires the action
trigger a rule alerting on failed executions watches. StackStorm's enforcer does so for a template that
does not render, though its enforcement names no execution, and records a cast or schema refusal with the
enforcement alone; Squall treats the three alike, as whoever watches for failures needs to hear of each. A
request refused for anything else (the action gone or disabled) gets the enforcement alone, as in
StackStorm. One the database failed (down, restarting) is no refusal: the instance is processed again once
the database is back (`TriggerService._handle`), and the derived ids make the rule act once.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
import sqlalchemy as sa

from engine import patterns, templates, tracing
from engine.actions import content_id
from engine.executions import CompletionWrite
from engine.metrics import metrics
from engine.operators import OPERATORS, PATTERNLESS, SEARCH, canonical, search
from engine.packs import Registry
from engine.parameters import ParameterError, draft4
from engine.storage import database_trouble, iso, utcnow
from engine.templates import (
    KVNamespace,
    TemplateRenderError,
    TooLongForTheLoop,
    briefly,
    build_environment,
    render_pool,
    render_template,
)
from engine.timers import TIMER_TYPES, schedule
from engine.triggers import WEBHOOK, binding
from engine.yamlfile import ContentError, LineMap

if TYPE_CHECKING:
    from engine.datastore import Datastore
    from engine.executions import ExecutionService
    from engine.storage import Database
    from engine.triggers import TriggerService

log = logging.getLogger(__name__)

RULE_TYPES = ("standard", "backstop")
_RULE_KEYS = {"name", "pack", "description", "enabled", "type", "trigger", "criteria", "action", "context",
              "tags", "metadata_file", "id", "uid", "ref"}
_ACTION_KEYS = {"ref", "parameters", "description"}
#: CPU seconds the criteria of one trigger instance may take, every rule's together, counted on the thread
#: that evaluates them. A rule with an ordinary regex over each of a webhook's alerts took ~0.5 s an alert,
#: each under `patterns.TIMEOUT`, and 6.5 s a request in all; real criteria take microseconds.
CRITERIA_SECONDS = 1.0
_BUDGET_FOR = "the criteria of one trigger instance (every rule's together)"


class RuleError(ValueError):
    """A rule that cannot be loaded; `error` says where (file, line) and why."""

    def __init__(self, error: ContentError) -> None:
        super().__init__(str(error))
        self.error = error


# -- criteria keys ---------------------------------------------------------------------------

_SIMPLE_STEP = re.compile(r"""\.?(?:([A-Za-z_][A-Za-z0-9_]*)|\['([^'\\]*)'\]|\["([^"\\]*)"\]"""
                          r"""|'([^'\\]*)'|"([^"\\]*)"|\[(\d+)\])""")
_JSONPATH_WORDS = {"where", "this", "id", "len", "sorted", "filter", "split", "sub", "str", "and", "or", "not"}


def strip_tag(key: str) -> str:
    """Criteria tags: text after the first `#` is dropped, so one key can appear several times."""
    return key.split("#", 1)[0]


def _simple_steps(path: str) -> tuple[str | int, ...] | None:
    """`a.b['c-d'][0]` as ('a', 'b', 'c-d', 0); None when the path needs the full JSONPath engine."""
    steps: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = _SIMPLE_STEP.match(path, pos)
        if match is None or (pos == 0 and path.startswith(".")):
            return None
        name, sq, dq, sqf, dqf, index = match.groups()
        if name is not None and name in _JSONPATH_WORDS:
            return None
        if (name is not None or sqf is not None or dqf is not None) and pos and path[pos] != ".":
            return None  # `a'b'`, `a[0]b`: no JSONPath, which its parser says (a load error)
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(next(p for p in (name, sq, dq, sqf, dqf) if p is not None))
        pos = match.end()
    return tuple(steps) if steps else None


@functools.lru_cache(maxsize=4096)
def compile_key(key: str) -> Callable[[Mapping[str, Any]], Any]:
    """A getter for criteria key `key` (tag already stripped): the first JSONPath match, or None.

    Raises `jsonpath_ng` parse errors (a load error). Simple paths use a dict/list walk with the
    same results as jsonpath-ng (a field of a non-dict or an index past the end is no match), and
    need no parse: jsonpath-ng is imported for the first key that does.
    Kept per key (getters hold no state): jsonpath-ng's parser takes ~0.4 ms a key, so loading
    1,000 rules parsed for most of a second, again at every pack reload.
    """
    steps = _simple_steps(key)
    if steps is not None and steps[0] in ("trigger", "item"):  # valid JSONPath as `_SIMPLE_STEP` reads it
        # A missing field, a field of a non-dict and an index past a list's end are all None.
        def walk(context: Mapping[str, Any]) -> Any:
            current: Any = context
            for step in steps:
                if isinstance(step, int):
                    if not isinstance(current, list) or step >= len(current):
                        return None
                    current = current[step]
                elif isinstance(current, dict):
                    current = current.get(step)
                else:
                    return None
            return current
        return walk
    import jsonpath_ng  # with the first rule whose criteria need it, not at start (shipped rules do not)

    expression = jsonpath_ng.parse(key)  # a bad path is a load error

    def find(context: Mapping[str, Any]) -> Any:
        matches = expression.find(context)
        return matches[0].value if matches else None
    return find


# -- patterns ----------------------------------------------------------------------------------

_EXPRESSION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.DOTALL)


def _to_complex_form(text: str) -> str:
    return _EXPRESSION.sub(lambda m: "{{" + m.group(1) + " (" + m.group(2).strip() + ") | to_complex " + m.group(3)
                           + "}}", text)


def render_pattern(pattern: Any, context: Mapping[str, Any], env: jinja2.Environment) -> Any:
    """StackStorm's pattern rendering: strings with `{{ }}` try the `| to_complex` form and JSON-decode
    it (keeping the type), falling back to plain rendering; other patterns are used as they are."""
    if not isinstance(pattern, str) or ("{{" not in pattern and "{%" not in pattern):
        return pattern
    if "{{" in pattern:
        try:
            return json.loads(render_template(_to_complex_form(pattern), context, env))
        except (ValueError, TemplateRenderError):
            pass  # e.g. "pre{{ x }}post": not JSON; a real error shows again below
    return render_template(pattern, context, env)


# -- the model ---------------------------------------------------------------------------------

@dataclass
class Criterion:
    key: str                       # as written, with any #tag
    path: str                      # the JSONPath
    operator: str                  # canonical name
    pattern: Any
    condition: str | None = None
    children: list[Criterion] = field(default_factory=list)
    get: Callable[[Mapping[str, Any]], Any] = field(default=lambda context: None, repr=False)
    templated: bool = False
    #: The operator's function, looked up once (an alert storm evaluates criteria ~20 times an instance).
    function: Callable[..., bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.function = OPERATORS[self.operator]


@dataclass
class Rule:
    name: str
    pack: str
    file: str
    trigger_type: str
    action_ref: str
    enabled: bool = False
    type: str = "standard"
    description: str = ""
    trigger_parameters: dict[str, Any] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)
    action_parameters: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    tags: list[Any] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    #: What the rule waits for: its trigger type or action, of a pack not loaded yet (one line each).
    #: StackStorm registers such a rule and it works once the pack is registered; so does ours, after
    #: the reload that loads the pack. Until then it matches nothing.
    waiting: list[str] = field(default_factory=list)
    waiting_line: int | None = None  # where the first missing ref is written

    @property
    def ref(self) -> str:
        return f"{self.pack}.{self.name}"

    @property
    def id(self) -> str:
        """StackStorm's `id` of the rule (st2client updates a rule at `PUT /rules/{id}`): 24 hex digits, as
        a MongoDB id, derived from the ref, so every process and every restart gives the same one. A rule
        is its pack file here, with no row to number, and its ref is what names it for good."""
        return rule_id(self.ref)

    @property
    def live(self) -> bool:
        """Whether trigger instances can reach it: enabled, and nothing it names is missing."""
        return self.enabled and not self.waiting

    @property
    def webhook_url(self) -> str | None:
        if self.trigger_type != WEBHOOK:
            return None
        return str(self.trigger_parameters.get("url", "")).strip("/")

    @property
    def binding(self) -> str:
        """Which trigger instances this rule sees: its trigger type plus its trigger parameters."""
        return binding(self.trigger_type, self.trigger_parameters)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "ref": self.ref, "name": self.name, "pack": self.pack, "description": self.description,
            "enabled": self.enabled, "type": {"ref": self.type, "parameters": {}},
            "trigger": {"type": self.trigger_type, "parameters": self.trigger_parameters, "ref": self.trigger_type},
            "criteria": self.data.get("criteria") or {},
            "action": {"ref": self.action_ref, "parameters": self.action_parameters},
            "context": self.context, "tags": self.tags, "metadata_file": self.file,
        }


def rule_id(ref: str) -> str:
    """The `id` of the rule `ref` (`Rule.id`)."""
    return content_id("rule", ref)


_INSTANCE_ID = re.compile(r"[0-9a-f]{24}\Z")


def _derived_id(kind: str, rule_ref: str, instance_id: str) -> str:
    """24 hex digits named by (kind, rule, instance), the same in every process and attempt; as
    `engine.policies.retry_id`, they sort just after the instance (its microsecond plus one, then 40
    bits of a hash), as an id made when the rule acted would."""
    digest = hashlib.sha256(f"{kind}\n{rule_ref}\n{instance_id}".encode()).hexdigest()
    if not _INSTANCE_ID.match(instance_id):  # not one of Squall's ids (made by hand): a hash alone
        return digest[:24]
    return f"{int(instance_id[:14], 16) + 1:014x}{digest[:10]}"


def enforcement_id(rule_ref: str, instance_id: str) -> str:
    """The id of the enforcement of rule `rule_ref` for trigger instance `instance_id`: one per pair,
    so a second attempt (a recovery after a crash) is refused by the primary key."""
    return _derived_id("enforcement", rule_ref, instance_id)


def enforced_execution_id(rule_ref: str, instance_id: str) -> str:
    """The id of the execution rule `rule_ref` requests for trigger instance `instance_id`: requested
    again, it is one row still (`ExecutionService.request`'s `execution_id`)."""
    return _derived_id("execution", rule_ref, instance_id)


def _fail(file: str, lines: LineMap | None, path: tuple[str | int, ...], reason: str) -> RuleError:
    line = None
    if lines is not None:
        for cut in range(len(path), -1, -1):
            line = lines.line(*path[:cut]) if cut else None
            if line:
                break
    return RuleError(ContentError(file, line, reason))


def _criterion(key: Any, spec: Any, where: tuple[str | int, ...], file: str, lines: LineMap | None,
               child: bool = False) -> Criterion:
    what = f'criteria key "{key}"'
    if not isinstance(key, str) or not key:
        raise _fail(file, lines, where, f"{what}: a criteria key must be a non-empty string")
    if not isinstance(spec, dict):
        raise _fail(file, lines, where, f"{what}: expected a mapping with type and pattern")
    name = canonical(spec.get("type"))
    if name is None:
        known = sorted(OPERATORS)
        near = difflib.get_close_matches(str(spec.get("type")).lower(), known, n=2)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known operators: {', '.join(known)}"
        raise _fail(file, lines, (*where, "type"),
                    f'{what} in {file}: unknown operator "{spec.get("type")}"{hint}')
    if spec.get("pattern") is None and name not in PATTERNLESS:
        raise _fail(file, lines, where, f'{what} (operator "{name}"): a pattern is required')
    path = strip_tag(key)
    try:
        getter = compile_key(path)
    except Exception as exc:
        raise _fail(file, lines, where, f'{what}: invalid JSONPath "{path}": {exc}') from None
    criterion = Criterion(key=key, path=path, operator=name, pattern=spec.get("pattern"),
                          condition=spec.get("condition"), get=getter)
    pattern = criterion.pattern
    criterion.templated = isinstance(pattern, str) and ("{{" in pattern or "{%" in pattern)
    if name == SEARCH:
        if not isinstance(pattern, dict) or not pattern:
            raise _fail(file, lines, where, f'{what}: the "search" operator needs a mapping of child criteria '
                        "as its pattern")
        if criterion.condition not in ("any", "all", "any2any", "all2any"):
            raise _fail(file, lines, where, f'{what}: the "search" condition must be any, all, any2any or all2any, '
                        f'not "{criterion.condition}"')
        criterion.children = [_criterion(k, v, (*where, "pattern", k), file, lines, child=True)
                              for k, v in pattern.items()]
        criterion.templated = False
    return criterion


# Complex by nature: a check per rule key (spec §5).
def load_rule(data: Any, pack: str, file: str, registry: Registry, lines: LineMap | None = None, *,  # noqa: C901
              check_action: bool = True) -> Rule:
    """One rule from its parsed YAML; raises `RuleError` (file, line, reason) on the first problem."""
    if not isinstance(data, dict):
        raise _fail(file, lines, (), "a rule must be a mapping")
    unknown = sorted(str(k) for k in data if k not in _RULE_KEYS)
    if unknown:
        raise _fail(file, lines, (unknown[0],), f"unknown rule field(s): {', '.join(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail(file, lines, ("name",), 'a rule needs a "name"')
    pack = str(data.get("pack") or pack)
    enabled = data.get("enabled", False)
    if not isinstance(enabled, bool):
        raise _fail(file, lines, ("enabled",), f'"enabled" must be true or false, not {enabled!r}')
    rule_type = data.get("type") or {}
    if not isinstance(rule_type, dict):
        raise _fail(file, lines, ("type",), '"type" must be a mapping like {ref: standard}')
    type_ref = rule_type.get("ref", "standard")
    if type_ref not in RULE_TYPES:
        raise _fail(file, lines, ("type", "ref"), f'rule type "{type_ref}" is not standard or backstop')

    trigger = data.get("trigger")
    if not isinstance(trigger, dict) or not isinstance(trigger.get("type"), str):
        raise _fail(file, lines, ("trigger",), 'a rule needs "trigger" with a "type"')
    trigger_ref = trigger["type"]
    trigger_type = registry.trigger_types.get(trigger_ref)
    waiting: list[str] = []
    if trigger_type is None and (missing := _missing_pack(trigger_ref, registry)):
        waiting.append(f'trigger type "{trigger_ref}" (pack "{missing}" is not loaded)')
    elif trigger_type is None:
        near = difflib.get_close_matches(trigger_ref, list(registry.trigger_types), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise _fail(file, lines, ("trigger", "type"), f'trigger type "{trigger_ref}" is not registered{hint}')
    parameters = trigger.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail(file, lines, ("trigger", "parameters"), "trigger parameters must be a mapping")
    if trigger_type is not None and trigger_type.parameters_schema:
        import jsonschema  # here, not at the top: ~35 ms that `squall serve` need not pay before it answers

        try:
            error = jsonschema.exceptions.best_match(
                jsonschema.Draft4Validator(draft4(trigger_type.parameters_schema)).iter_errors(parameters))
        except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType, AttributeError,
                TypeError) as exc:  # the trigger type's own schema is broken (named at its pack's load too)
            raise _fail(file, lines, ("trigger", "type"), f'trigger type "{trigger_ref}" has a parameters_schema '
                        f"that is not a valid JSON schema ({type(exc).__name__}), so its parameters cannot be "
                        "checked") from exc
        if error is not None:
            at = "/".join(str(p) for p in error.absolute_path)
            raise _fail(file, lines, ("trigger", "parameters", *error.absolute_path),
                        f'trigger parameters for "{trigger_ref}" are invalid{" at " + at if at else ""}: '
                        f"{error.message}")
    if trigger_ref in TIMER_TYPES:
        try:
            schedule(trigger_ref, parameters)
        except ValueError as exc:
            raise _fail(file, lines, ("trigger", "parameters"), f'not a valid "{trigger_ref}" schedule: {exc}') from exc

    criteria_data = data.get("criteria") or {}
    if not isinstance(criteria_data, dict):
        raise _fail(file, lines, ("criteria",), "criteria must be a mapping of key to {type, pattern}")
    criteria = [_criterion(k, v, ("criteria", k), file, lines) for k, v in criteria_data.items()]

    action = data.get("action")
    if not isinstance(action, dict) or not isinstance(action.get("ref"), str):
        raise _fail(file, lines, ("action",), 'a rule needs "action" with a "ref"')
    extra = sorted(str(k) for k in action if k not in _ACTION_KEYS)
    if extra:
        raise _fail(file, lines, ("action", extra[0]), f"unknown action field(s): {', '.join(extra)}")
    action_parameters = action.get("parameters") or {}
    if not isinstance(action_parameters, dict):
        raise _fail(file, lines, ("action", "parameters"), "action parameters must be a mapping")
    if check_action and action["ref"] not in registry.actions:
        if missing := _missing_pack(action["ref"], registry):
            waiting.append(f'action "{action["ref"]}" (pack "{missing}" is not loaded)')
        else:
            try:
                registry.action(action["ref"])
            except LookupError as exc:
                raise _fail(file, lines, ("action", "ref"), str(exc)) from None

    return Rule(name=name, pack=pack, file=file, trigger_type=trigger_ref, action_ref=action["ref"], enabled=enabled,
                type=type_ref, description=str(data.get("description") or ""), trigger_parameters=dict(parameters),
                criteria=criteria, action_parameters=dict(action_parameters), context=dict(data.get("context") or {}),
                tags=list(data.get("tags") or []), data=data, waiting=waiting,
                waiting_line=_waiting_line(waiting, lines))


def _waiting_line(waiting: list[str], lines: LineMap | None) -> int | None:
    if not waiting or lines is None:
        return None
    return lines.line(*(("trigger", "type") if waiting[0].startswith("trigger") else ("action", "ref")))


def _missing_pack(ref: str, registry: Registry) -> str | None:
    """The pack named by `ref` (`pack.name`) when no pack of that name is loaded, else None. A ref of
    a loaded pack that names nothing is a mistake to report now, not something to wait for."""
    pack = ref.split(".", 1)[0] if "." in ref else None
    return pack if pack and pack not in registry.packs else None


def waiting_problem(rule: Rule) -> ContentError:
    """The problem reported for a rule that waits for packs: what it waits for, and when it goes live."""
    packs = "the pack is" if len(rule.waiting) == 1 else "those packs are"
    return ContentError(rule.file, rule.waiting_line, f'rule "{rule.ref}" is loaded but waits for '
                                                      f'{" and ".join(rule.waiting)}; it goes live once {packs} loaded')


def load_rules(registry: Registry) -> tuple[list[Rule], list[ContentError]]:
    rules: list[Rule] = []
    errors: list[ContentError] = []
    seen: set[str] = set()
    for document in registry.documents:
        if document.kind != "rules":
            continue
        try:
            rule = load_rule(document.data, document.pack, document.file, registry, document.lines)
        except RuleError as exc:
            errors.append(exc.error)
            continue
        if rule.ref in seen:
            errors.append(ContentError(document.file, document.lines.line("name"),
                                       f'rule "{rule.ref}" is defined more than once'))
            continue
        seen.add(rule.ref)
        rules.append(rule)
    return rules, errors


# -- evaluation --------------------------------------------------------------------------------

@dataclass
class Check:
    """How one criterion came out (for `squall rule test`)."""

    key: str
    operator: str
    pattern: Any
    value: Any
    result: bool
    error: str | None = None


class MatchFailure(Exception):
    """A criterion that raised; `reason` is StackStorm's failure text before `: <exc>`."""

    def __init__(self, reason: str, exc: BaseException) -> None:
        super().__init__(f"{reason}: {exc}")
        self.reason = reason
        self.exc = exc


class Evaluator:
    """Criteria evaluation against one context (payload + datastore lookups)."""

    def __init__(self, env: jinja2.Environment, kv_getter: Callable[[str], str | None]) -> None:
        self.env = env
        system = KVNamespace(kv_getter, label="st2kv.system")
        self.system = system

    def context(self, payload: Any) -> dict[str, Any]:
        return {"trigger": payload, "system": self.system, "st2kv": {"system": self.system}}

    def _check(self, criterion: Criterion, context: Mapping[str, Any], checks: list[Check] | None,
               prefix: str = "") -> bool:
        pattern = self._rendered(criterion, context) if criterion.templated else criterion.pattern
        try:
            value = criterion.get(context)
        except Exception as exc:  # pragma: no cover - getters do not raise on dicts
            raise MatchFailure(f"Failed transforming criteria key {criterion.key}", exc) from exc
        try:
            if criterion.operator == SEARCH:
                result = self._search(criterion, value, context)
            else:
                result = criterion.function(value, pattern)
        except (MatchFailure, TooLongForTheLoop, patterns.BudgetSpent):
            raise
        except Exception as exc:
            patterns.check_budget(str(exc))  # what raised ran the budget out (a regex filter's, wrapped)
            if checks is not None:
                checks.append(Check(prefix + criterion.key, criterion.operator, pattern, value, False, str(exc)))
            raise MatchFailure("There might be a problem with the criteria in rule", exc) from exc
        if checks is not None:
            checks.append(Check(prefix + criterion.key, criterion.operator, pattern, value, result))
        return result

    def _rendered(self, criterion: Criterion, context: Mapping[str, Any]) -> Any:
        """The criterion's pattern template rendered. On the loop (`briefly`) a render past
        `templates.BRIEF_SECONDS` raises `TooLongForTheLoop`; elsewhere it may run `templates.max_seconds`,
        and what it took counts against the instance's budget."""
        try:
            pattern = render_pattern(criterion.pattern, context, self.env)
        except (TooLongForTheLoop, patterns.BudgetSpent):
            raise
        except Exception as exc:
            patterns.check_budget(f"while the pattern template rendered: {exc}")
            raise MatchFailure(f'Failed to render pattern value "{criterion.pattern}" for key '
                               f'"{criterion.key}"', exc) from exc
        patterns.check_budget("while the pattern template rendered")
        return pattern

    def _search(self, criterion: Criterion, value: Any, context: Mapping[str, Any]) -> bool:
        """A `search` criterion: its children against each item, the budget looked at as it goes
        (a list of 10,000 items, every item's children cheap, still adds up)."""
        budget = patterns.current_budget()

        def child_check(child: Criterion, item: Any) -> bool:
            if budget is not None:
                budget.now_and_then()
            return self._check(child, {**context, "item": item}, None)
        return search(value, criterion.children, criterion.condition, child_check)

    def matches(self, rule: Rule, payload: Any, checks: list[Check] | None = None) -> bool:
        """RuleFilter.filter: disabled no; empty criteria yes; empty payload no; ANDed in order.

        Raises `MatchFailure` when a criterion raises (the caller records a failed enforcement)."""
        return self.matches_in(rule, self.context(payload) if payload else None, checks)

    def matches_in(self, rule: Rule, context: Mapping[str, Any] | None, checks: list[Check] | None = None) -> bool:
        """`matches` with the context made once for all the rules one instance is checked against
        (None: the payload is empty)."""
        if not rule.criteria:
            return True
        if context is None:
            return False
        check = self._check
        for criterion in rule.criteria:  # noqa: SIM110 - a loop: all() over a generator costs 7% of a storm
            if not check(criterion, context, checks):
                return False
        return True


def failure_reason(rule: Rule, instance_id: str, failure: MatchFailure) -> str:
    reason = failure.reason
    if reason.endswith("in rule"):
        reason = f"{reason} {rule.ref}"
    return f'Failed to match rule "{rule.ref}" against trigger instance "{instance_id}": {reason}: {failure.exc}'


def out_of_time(rules: Iterable[Rule], instance_id: str, at: Rule,
                spent: patterns.BudgetSpent) -> list[tuple[Rule, str]]:
    """The failures of the rules an instance's budget left undecided (`CRITERIA_SECONDS`); `at`: the
    rule whose criteria were under way when it ran out."""
    return [(rule, f'Failed to match rule "{rule.ref}" against trigger instance "{instance_id}": {spent}, at '
                   + ("this rule's criteria" if rule is at else f'rule "{at.ref}", before this rule\'s criteria')
                   + "; the rule does not match. Criteria this slow need making cheaper: a regex that "
                     "backtracks, a long pattern template, a search over a long list")
            for rule in rules]


@dataclass
class _Evaluation:
    """What the criteria of one trigger instance came to (`RulesEngine._evaluated`)."""

    matched: list[Rule]
    failures: list[tuple[Rule, str]]
    #: CPU seconds it took where it was given up (`given_up`), counted against what is left.
    spent: float = 0.0
    #: Too long for the loop: nothing was decided, and it is done again on a render thread.
    given_up: bool = False


@dataclass
class _Bucket:
    """The enabled rules of one trigger type (or one webhook URL), in load order."""

    rules: list[Rule] = field(default_factory=list)
    loose: list[tuple[int, Rule]] = field(default_factory=list)
    indexes: dict[str, tuple[Callable[[Mapping[str, Any]], Any], dict[Any, list[tuple[int, Rule]]]]] = \
        field(default_factory=dict)

    def add(self, rule: Rule) -> None:
        position = len(self.rules)
        self.rules.append(rule)
        first = rule.criteria[0] if rule.criteria else None
        if (first is not None and first.operator == "equals" and not first.templated
                and first.pattern is not None and not isinstance(first.pattern, bytes)):
            try:
                hash(first.pattern)
            except TypeError:
                pass
            else:
                _, index = self.indexes.setdefault(first.path, (first.get, {}))
                index.setdefault(first.pattern, []).append((position, rule))
                return
        self.loose.append((position, rule))

    def candidates(self, payload: Any) -> list[Rule]:
        if not self.indexes:
            return [rule for _, rule in self.loose]
        found = list(self.loose)
        if payload:
            context = {"trigger": payload}
            for getter, index in self.indexes.values():
                value = getter(context)
                try:
                    hit = index.get(value)
                except TypeError:  # unhashable payload value: equals to a hashable pattern is false
                    continue
                if hit:
                    found.extend(hit)
        if len(found) > 1:
            found.sort(key=lambda entry: entry[0])
        return [rule for _, rule in found]


class RulesEngine:
    """The rules processor: `TriggerService` hands it every instance of a trigger type a rule uses."""

    def __init__(self, registry: Registry, db: Database, executions: ExecutionService, triggers: TriggerService,
                 datastore: Datastore) -> None:
        self.db = db
        self.executions = executions
        self.triggers = triggers
        self.datastore = datastore
        self.env = executions.jinja
        self.rules: dict[str, Rule] = {}
        self.errors: list[ContentError] = []
        self._standard: dict[str, _Bucket] = {}
        self._backstop: dict[str, _Bucket] = {}
        self._types: set[str] = set()
        self.evaluator = Evaluator(self.env, self._kv)
        self.rebuild(registry)

    def _kv(self, key: str) -> str | None:
        return self.datastore.lookup("system", key)

    # -- loading -------------------------------------------------------------------------------
    def rebuild(self, registry: Registry) -> None:
        """Load the registry's rules; also on every pack reload, which is how a rule waiting for a
        pack goes live once that pack arrives. Waiting rules are reported with the load problems:
        both go into `registry.errors`, which whoever loaded the packs logs once (`squall serve` at its
        start and at each reload) or shows (the CLI); logged here too, each came out twice."""
        rules, errors = load_rules(registry)
        waiting = [waiting_problem(rule) for rule in rules if rule.waiting]
        for problem in (*errors, *waiting):
            if problem not in registry.errors:
                registry.errors.append(problem)
        self.errors = [*errors, *waiting]
        self.set_rules(rules)

    def set_rules(self, rules: Iterable[Rule]) -> None:
        self.rules = {rule.ref: rule for rule in rules}
        standard: dict[str, _Bucket] = {}
        backstop: dict[str, _Bucket] = {}
        for rule in self.rules.values():
            if not rule.live:
                continue
            target = standard if rule.type == "standard" else backstop
            target.setdefault(rule.binding, _Bucket()).add(rule)
        self._standard, self._backstop = standard, backstop
        self._types = {rule.trigger_type for rule in self.rules.values() if rule.live}

    # -- lookups for the API and CLI -----------------------------------------------------------
    def hooks(self) -> list[str]:
        """Webhook URLs declared by enabled rules on `core.st2.webhook` (no leading/trailing `/`)."""
        return sorted({rule.webhook_url for rule in self.rules.values() if rule.live and rule.webhook_url})

    def webhook_rules(self, url: str) -> list[Rule]:
        key = binding(WEBHOOK, {"url": url})
        return [*getattr(self._standard.get(key), "rules", []), *getattr(self._backstop.get(key), "rules", [])]

    async def dispatch_webhook(self, url: str, payload: Any, *, trace_tag: str | None = None,
                               delivery: tuple[str, datetime] | None = None) -> dict[str, Any]:
        """Store a `core.st2.webhook` instance for hook `url`; only that hook's rules see it
        (`delivery`: as `TriggerService.dispatch`)."""
        url = url.strip("/")
        if not self.webhook_rules(url):
            raise LookupError(f"Webhook {url} not registered with st2")
        return await self.triggers.dispatch(WEBHOOK, payload, parameters={"url": url}, trace_tag=trace_tag,
                                            delivery=delivery)

    def triggers_of(self, trigger_ref: str) -> list[dict[str, Any]]:
        """The distinct parameter sets enabled rules give `trigger_ref` (timers and sensors serve these),
        each with the refs of the rules that give it (a timer's lost run names them)."""
        seen: dict[str, dict[str, Any]] = {}
        rules: dict[str, list[str]] = {}
        for rule in self.rules.values():
            if rule.live and rule.trigger_type == trigger_ref:
                seen.setdefault(rule.binding, rule.trigger_parameters)
                rules.setdefault(rule.binding, []).append(rule.ref)
        return [{"key": key, "type": trigger_ref, "parameters": parameters, "rules": rules[key]}
                for key, parameters in seen.items()]

    # -- the processor protocol ----------------------------------------------------------------
    def interested(self, trigger_ref: str) -> bool:
        return trigger_ref in self._types

    def _buckets(self, instance: Mapping[str, Any]) -> tuple[_Bucket | None, _Bucket | None]:
        key = binding(instance["trigger"], instance.get("trigger_parameters"))
        return self._standard.get(key), self._backstop.get(key)

    def matching_rules(self, instance: Mapping[str, Any], failures: list[tuple[Rule, str]] | None = None, *,
                       budgeted: bool = False) -> list[Rule]:
        """The rules to enforce for one instance (no action is requested). Criteria that raise are
        a non-match; their failure reasons are logged and go to `failures` when given. Under a
        `patterns.Budget` that runs out, `budgeted` fails the rules not decided yet the same way (and
        the backstop rules, unless a standard rule matched); else `BudgetSpent` is raised."""
        standard, backstop = self._buckets(instance)
        payload = instance.get("payload")
        failed: list[tuple[Rule, str]] = []
        matched, evaluated, stopped = self._pass(standard, payload, instance, failed, budgeted)
        if not matched and stopped is None:
            matched, more, _stopped = self._pass(backstop, payload, instance, failed, budgeted)
            evaluated += more
        elif not matched and stopped is not None and backstop is not None:
            at, spent = stopped  # whether a standard rule would have matched is not known: nor is the backstop's turn
            failed.extend(out_of_time(backstop.candidates(payload), instance["id"], at, spent))
        if evaluated:
            metrics.evaluated(instance["trigger"], evaluated)
        for _rule, reason in failed:
            log.warning("%s", reason)
        if failures is not None:
            failures.extend(failed)
        return matched

    def _pass(self, bucket: _Bucket | None, payload: Any, instance: Mapping[str, Any],
              failures: list[tuple[Rule, str]], budgeted: bool
              ) -> tuple[list[Rule], int, tuple[Rule, patterns.BudgetSpent] | None]:
        """One bucket's rules: those that match, how many were evaluated, and (`budgeted`) the rule the
        budget ran out at, with why; the rules left then are failed in `failures`."""
        if bucket is None:
            return [], 0, None
        matched = []
        matches = self.evaluator.matches_in
        context = self.evaluator.context(payload) if payload else None
        budget = patterns.current_budget()
        candidates = bucket.candidates(payload)
        for position, rule in enumerate(candidates):
            try:
                if budget is not None and position & 7 == 7:  # the clock costs as much as a cheap rule
                    budget.check()
                if matches(rule, context):
                    matched.append(rule)
            except MatchFailure as failure:
                failures.append((rule, failure_reason(rule, instance["id"], failure)))
            except patterns.BudgetSpent as spent:
                if not budgeted:
                    raise
                failures.extend(out_of_time(candidates[position:], instance["id"], rule, spent))
                return matched, position + 1, (rule, spent)
        return matched, len(candidates), None

    async def process(self, instance: dict[str, Any], resumed: bool = False) -> None:
        """Enforce the rules `instance` matches. `resumed` (a process that died was at it): only those
        with no enforcement for it yet; the ids make a second attempt store nothing in any case.

        The criteria are evaluated where the database call runs (the loop, on SQLite), where their
        datastore reads are, within `templates.BRIEF_SECONDS`; past that they are given up there and
        evaluated again on a render thread (st2kv reads take a pooled connection of their own), with
        what is left of `CRITERIA_SECONDS`, while the loop goes on."""
        evaluation, acted = await self.db(self._evaluated_briefly, instance, resumed)
        if evaluation.given_up:
            evaluation = await asyncio.get_running_loop().run_in_executor(
                render_pool(), self._evaluated, instance, evaluation.spent)
        for rule, reason in evaluation.failures:
            if rule.ref not in acted:
                await self._record(rule, instance, None, "failed", reason)
        for rule in evaluation.matched:
            if rule.ref in acted:
                continue
            metrics.count(metrics.rules_matched, rule.ref)
            await self.enforce(rule, instance)

    def _evaluated_briefly(self, instance: Mapping[str, Any], resumed: bool) -> tuple[_Evaluation, set[str]]:
        """`_evaluated` briefly, and (`resumed`) the refs of the rules that acted for the instance already
        (on the database's side, in one trip)."""
        acted = self.db.store.rules_enforced_for(instance["id"]) if resumed else set()
        return self._evaluated(instance, brief=True), acted

    def _evaluated(self, instance: Mapping[str, Any], spent: float = 0.0, brief: bool = False) -> _Evaluation:
        """The instance's criteria evaluated within `CRITERIA_SECONDS` of this thread's CPU time, less
        what `spent` on them before. `brief` (on the loop): within `templates.BRIEF_SECONDS` for
        everything (`briefly` for the templates), else given up, as nothing of it took effect."""
        seconds = CRITERIA_SECONDS
        budget = patterns.Budget(min(seconds, templates.BRIEF_SECONDS) if brief else seconds, _BUDGET_FOR, spent)
        failures: list[tuple[Rule, str]] = []
        with budget:
            if not brief:
                return _Evaluation(self.matching_rules(instance, failures, budgeted=True), failures)
            try:
                return _Evaluation(briefly(self.matching_rules, instance, failures), failures)
            except (TooLongForTheLoop, patterns.BudgetSpent):
                return _Evaluation([], [], budget.spent(), given_up=True)

    async def enforce(self, rule: Rule, instance: Mapping[str, Any]) -> dict[str, Any]:
        """Request the rule's action for `instance` and record the enforcement, once for the pair.

        Both ids are derived from (rule, instance). The execution is requested first, under its
        derived id; the enforcement is stored with the request, in its transaction where the
        request's transaction is the loop's (SQLite), else right after it, and never twice. After a
        crash at any point the next attempt finds either nothing (and acts), the execution alone
        (the primary key refuses a second request of it, and the enforcement is stored naming the
        first), or the enforcement (`process(resumed=True)` skips the rule; here it is kept).

        A request the database failed (down, restarting, locked: `database_trouble`) is raised, not recorded
        as a failed enforcement: the trigger service tries the instance again, resumed, once the database
        takes it (`TriggerService._handle`). Recorded, the failure stood for good, though the event was
        stored and answered 202, and the rule never acted for it."""
        execution_id = enforced_execution_id(rule.ref, instance["id"])
        record = self._enforcement(rule, instance, execution_id, "succeeded", None)
        stored: list[bool] = []
        with_request = _stored_with(record, stored)
        try:
            with tracing.span("rule.enforce", rule=rule.ref, trigger_instance_id=instance["id"]):
                await self.executions.request(
                    rule.action_ref, rule.action_parameters, self._context(rule, instance),
                    extra_template_context={"trigger": instance.get("payload")}, render=True,
                    execution_id=execution_id, stored_with=with_request)
        except sa.exc.IntegrityError as exc:
            if await self.db(self.db.store.get_execution, execution_id) is None:  # not our id's conflict
                return await self._request_failed(rule, instance, exc)
            log.info("rule %s: the action for trigger instance %s was requested before (%s)", rule.ref,
                     instance["id"], execution_id)
        except (ParameterError, TemplateRenderError) as exc:
            return await self._refused(rule, instance, execution_id, exc)
        except Exception as exc:
            if database_trouble(exc) is not None:
                raise  # not the rule's failure: the instance's processing is tried again (`TriggerService._handle`)
            return await self._request_failed(rule, instance, exc)
        if stored and stored[0]:  # in the request's transaction
            return enforcement_public(record)
        return await self._store(record)

    async def _refused(self, rule: Rule, instance: Mapping[str, Any], execution_id: str,
                       problem: Exception) -> dict[str, Any]:
        """The rule's request refused for its parameters: stored as a failed execution of its action under
        the enforcement's derived id (`ExecutionService.record_refused`), with the `failed` enforcement
        naming it in the same transaction, as StackStorm's enforcer stores one for a template that does
        not render (spec §5.4; this module's docstring says where Squall goes further). A second
        attempt after a crash finds the execution (its id's primary key) and stores only the enforcement,
        if that is missing; a failure to store the execution leaves the enforcement alone, as before."""
        reason = self._reason(rule, instance, problem)
        log.warning("%s", reason)
        record = self._enforcement(rule, instance, execution_id, "failed", reason)
        stored: list[bool] = []
        try:
            await self.executions.record_refused(
                rule.action_ref, rule.action_parameters, self._context(rule, instance), problem,
                extra_template_context={"trigger": instance.get("payload")}, render=True,
                execution_id=execution_id, stored_with=_stored_with(record, stored))
        except sa.exc.IntegrityError:
            if await self.db(self.db.store.get_execution, execution_id) is None:  # not our id's conflict
                log.exception("rule %s: the failed execution for trigger instance %s could not be stored",
                              rule.ref, instance["id"])
                return await self._record(rule, instance, None, "failed", reason)
            log.info("rule %s: the failed execution for trigger instance %s was stored before (%s)", rule.ref,
                     instance["id"], execution_id)
        except Exception as exc:
            if database_trouble(exc) is not None:
                raise  # as `enforce`'s: tried again once the database takes it
            log.exception("rule %s: the failed execution for trigger instance %s could not be stored", rule.ref,
                          instance["id"])
            return await self._record(rule, instance, None, "failed", reason)
        if stored and stored[0]:  # in the execution's transaction
            return enforcement_public(record)
        return await self._store(record)

    @staticmethod
    def _context(rule: Rule, instance: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "user": "squall",
            "rule": {"ref": rule.ref, "name": rule.name},
            "trigger_instance": {"id": instance["id"], "name": instance["trigger"]},
            "trace_context": {"trace_tag": instance.get("trace_tag"), "trigger_instance_id": instance["id"]},
        }

    async def _request_failed(self, rule: Rule, instance: Mapping[str, Any], problem: Any) -> dict[str, Any]:
        reason = self._reason(rule, instance, problem)
        log.warning("%s", reason)
        return await self._record(rule, instance, None, "failed", reason)

    @staticmethod
    def _reason(rule: Rule, instance: Mapping[str, Any], problem: Any) -> str:
        """A failed enforcement's `failure_reason`: the action, the rule and the instance, and what went wrong."""
        return f'Failed to request action "{rule.action_ref}" for rule "{rule.ref}" and trigger instance ' \
               f'"{instance["id"]}": {problem}'

    @staticmethod
    def _enforcement(rule: Rule, instance: Mapping[str, Any], execution_id: str | None, status: str,
                     reason: str | None) -> dict[str, Any]:
        return {"id": enforcement_id(rule.ref, instance["id"]), "rule": rule.ref,
                "trigger_instance_id": instance["id"], "execution_id": execution_id, "status": status,
                "failure_reason": reason, "enforced_at": utcnow()}

    async def _record(self, rule: Rule, instance: Mapping[str, Any], execution_id: str | None, status: str,
                      reason: str | None) -> dict[str, Any]:
        return await self._store(self._enforcement(rule, instance, execution_id, status, reason))

    async def _store(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store an enforcement unless its rule has one for the instance: the one stored, either way."""
        return enforcement_public(await self.db(self._stored_once, record))

    def _stored_once(self, record: dict[str, Any]) -> dict[str, Any]:
        store = self.db.store
        if store.rule_enforcement_add_once(record):
            return record
        return store.rule_enforcement_get(record["id"]) or record

    async def enforcements(self, *, rule: str | None = None, trigger_instance_id: str | None = None,
                           execution_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.db(self.db.store.rule_enforcement_list, rule, trigger_instance_id,
                                    execution_id, limit)
        return [enforcement_public(row) for row in rows]

    async def settle(self, timeout: float = 60) -> None:
        """Wait until trigger instances, the executions rules started, and the instances those
        executions emit (action triggers) are all done (for the CLI and tests)."""
        triggers, executions = self.triggers, self.executions
        waited: set[str] = set()

        async def loop() -> None:
            while True:
                await triggers.settle()
                pending = [e["execution_id"] for e in await self.enforcements(limit=10_000)
                           if e["execution_id"] and e["execution_id"] not in waited]
                for execution_id in pending:
                    waited.add(execution_id)
                    await executions.wait(execution_id)
                while executions.notifying:
                    await asyncio.sleep(0.01)
                if not pending and not triggers.busy:
                    return
        await asyncio.wait_for(loop(), timeout)


def _stored_with(record: dict[str, Any], stored: list[bool]) -> Callable[[dict[str, Any]], CompletionWrite]:
    """A request's `stored_with` that stores the enforcement `record` in the request's transaction,
    appending to `stored` whether it was stored (no: its rule had one for the instance already)."""

    def with_request(_shown: dict[str, Any]) -> CompletionWrite:
        return CompletionWrite(lambda store, _at: store.rule_enforcement_add_once(record), stored.append,
                               one_statement=True)

    return with_request


def enforcement_public(record: Mapping[str, Any]) -> dict[str, Any]:
    enforced = record["enforced_at"]
    return {
        "id": record["id"],
        "rule": {"ref": record["rule"]},
        "trigger_instance_id": record["trigger_instance_id"],
        "execution_id": record.get("execution_id"),
        "status": record["status"],
        "failure_reason": record.get("failure_reason"),
        "enforced_at": iso(enforced) if hasattr(enforced, "isoformat") else enforced,
    }


def default_evaluator(kv: Mapping[str, str] | None = None) -> Evaluator:
    """An evaluator over a plain dict of system keys (for tests and the benchmark)."""
    values = dict(kv or {})
    return Evaluator(build_environment(), values.get)


__all__ = ["CRITERIA_SECONDS", "Check", "Criterion", "Evaluator", "MatchFailure", "Rule", "RuleError", "RulesEngine",
           "compile_key", "default_evaluator", "enforced_execution_id", "enforcement_id", "enforcement_public",
           "failure_reason", "load_rule", "load_rules", "out_of_time", "render_pattern", "rule_id", "strip_tag",
           "waiting_problem"]
