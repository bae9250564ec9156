"""Orquesta workflows (spec §7.2): the spec model, its checks at load, and the conductor.

The conductor keeps contexts as Orquesta's conductor does (`ctxs`): a list whose first entry is
the workflow's initial context (its parent context, input and vars) and each later entry what one
taken transition published. A task's run is given the indexes of its inbound transitions' contexts
and sees their merge, in order; a transition publishes on a copy of its task's context, so neither
a parallel branch nor a sibling transition of the same task sees it. A join merges the contexts of
the transitions that arrived, in arrival order; the output is rendered from the merge of the
terminal tasks' contexts. The contexts are rebuilt by replaying the children (see `service.py`),
so nothing of them is stored. The conductor also keeps a record per task and route, and Orquesta's
task state entries (one per task and route at a time); it never runs anything itself.

Fail-fast: once a task fails without a transition that remediates it (one that matched and leads
somewhere other than `continue`), or a transition says `fail`, nothing new starts (but what was
staged with the `fail`) and the workflow fails when the running branches end; every task that ends
from then on is terminal, as Orquesta marks it.
A task with `join` is staged by each arriving transition and starts once all (or N) of its inbound
tasks took a transition into it; a later arrival stages and starts it again (Orquesta's, and so
StackStorm's, `join: N`). Without `join`, every inbound transition starts the task again, each on
a route of its own (Orquesta's split), so `task(name)` finds the run of the branch it is asked from.
The behaviour is checked against real orquesta in `tests/test_orquesta_differential.py`.

What the workflow returns is shaped as StackStorm shapes it: `{"output": ...}` (null when empty),
plus `errors` when it failed, each entry as Orquesta's `log_entry` makes it (`type`, `message`,
and only where known `task_id`, `route`, `task_transition_id`, `result`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.workflows import graph
from engine.workflows.expressions import (
    ExpressionError,
    Scope,
    evaluate,
    evaluate_shell,
    has_expression,
    syntax_errors,
)
from engine.workflows.model import FAILED, Outcome, TaskCall
from engine.yamlfile import ContentError, ContentInvalid, LineMap

ENGINE_COMMANDS = frozenset({"continue", "fail", "noop", "retry"})
#: Orquesta's `REGEX_INLINE_PARAMS` (utils/parameters.py): the value forms an inline `k=v` may take, tried
#: in this order. A value of none of these forms (a bare word such as `x=hello`) is not a parameter.
_INLINE_VALUE_FORMS = (r"\[.*\]\s*", r"\"[^\"]*\"\s*", r"'[^']*'\s*", r"[-]?\d*\.\d+", r"[-]?\d+",
                       r"(?i:true)", r"(?i:false)", r"null", r"<%.*?%>", r"{{.*?}}")
_INLINE_PARAMS = re.compile(r"([\w]+)=(" + "|".join(_INLINE_VALUE_FORMS) + ")")
_INLINE_QUOTED = (re.compile(r"\"[^\"]*\"\s*"), re.compile(r"'[^']*'\s*"))
#: An expression block in a task's `action`: its spaces and `=` belong to the expression, not to inline parameters.
_EXPRESSION_BLOCK = re.compile(r"<%.*?%>|\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_WITH_NAMES = re.compile(r"^\s*([\w]+(?:\s*,\s*[\w]+)*)\s+in\s+(.+)$", re.DOTALL)
#: Where StackStorm's content errors point in Orquesta's workflow schema (`inspect_task_contents`).
_TASK_SCHEMA_PATH = r"properties.tasks.patternProperties.^\w+$"
_TOP_KEYS = {"version", "description", "input", "vars", "tasks", "output"}
_TASK_KEYS = {"action", "input", "next", "join", "with", "retry", "delay"}
_NEXT_KEYS = {"when", "publish", "do"}


@dataclass
class Transition:
    when: Any
    publish: list[tuple[str, Any]]
    do: list[str]


@dataclass
class TaskSpec:
    name: str
    #: A ref, or an expression that gives one when the task runs (Orquesta's dynamic action).
    action: str | None
    #: Parameter names to values, or an expression that gives them when the task runs (a text).
    input: dict[str, Any] | str
    next: list[Transition]
    join: str | int | None = None
    items: Any = None
    item_names: list[str] = field(default_factory=list)
    concurrency: Any = None
    retry: dict[str, Any] | None = None
    delay: Any = None


@dataclass
class WorkflowSpec:
    file: str
    input: list[tuple[str, Any, bool]]
    vars: list[tuple[str, Any]]
    output: list[tuple[str, Any]]
    tasks: dict[str, TaskSpec]
    starts: list[str]
    inbound: dict[str, set[str]]
    #: The definition as written, which StackStorm's context inspection reads (`orquesta_inspect`).
    definition: dict[str, Any] = field(default_factory=dict)


def parse_inline_params(text: Any) -> list[tuple[str, Any]]:
    """Orquesta's `parse_inline_params`, ported as it is, so `publish: k=v ...` and `action: ref k=v ...`
    mean in Squall what they mean in StackStorm: a value in brackets, a number, `true`/`false` (any
    case) or `null` is JSON-decoded (`n=1` is the number 1, `l=[1,2]` a list); a quoted value is the
    text inside the quotes, left a string (`q="1"` is "1"), unless it is a JSON object in quotes; an
    expression is kept for evaluation. Anything else, a bare word such as `x=hello`, is no parameter
    at all (StackStorm drops it), so write `x="hello"` or the list form. Pairs keep their order."""
    pairs: list[tuple[str, Any]] = []
    if not isinstance(text, str) or not text:
        return pairs
    for key, raw in _INLINE_PARAMS.findall(text):
        value: Any = raw.strip()
        quoted = any(pattern.search(value) for pattern in _INLINE_QUOTED)
        value = re.sub('"$', "", re.sub('^"', "", value))
        value = re.sub("'$", "", re.sub("^'", "", value))
        quotes_in_string = bool(value) and quoted and not (value[0] == "{" and value[-1] == "}")
        if not quotes_in_string:
            with contextlib.suppress(ValueError, RecursionError):  # not JSON: the text as it is
                value = json.loads(value.lower() if value.lower() in ("true", "false") else value)
        pairs.append((key, value))
    return pairs


def _outside_expressions(text: str) -> str:
    """`text` with each expression block blanked out (same length, no space left in it), so that the first
    space found in it is where an `action`'s ref ends and its inline parameters begin. An action given by an
    expression (Orquesta's dynamic action, `<% ctx(act) %>`, `{{ ctx().act }}`) has spaces inside it that
    are no such place, and a YAQL comparison in it (`$.x='a'`) is no inline parameter."""
    return _EXPRESSION_BLOCK.sub(lambda match: "x" * len(match.group()), text)


def _pairs(value: Any, what: str) -> list[tuple[str, Any]]:
    """`[{k: v}, ...]`, `{k: v}` or `"k=v k2=v2"` → ordered pairs."""
    if value is None:
        return []
    if isinstance(value, str):
        return parse_inline_params(value)
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        pairs = []
        for entry in value:
            if isinstance(entry, dict) and len(entry) == 1:
                pairs.extend(entry.items())
            elif isinstance(entry, str):
                pairs.extend(parse_inline_params(entry)) if "=" in entry else pairs.append((entry, None))
            else:
                raise ValueError(f"each entry of '{what}' must be a one-key mapping, not {entry!r}")
        return pairs
    raise ValueError(f"'{what}' must be a list of one-key mappings")


def parse(data: Any, lines: LineMap, file: str) -> WorkflowSpec:  # noqa: C901 (a check per workflow key (spec §6))
    """Build and check the spec; the first problem raises `ContentInvalid` naming file, task and reason."""

    def fail(reason: str, *path: str | int) -> ContentInvalid:
        return ContentInvalid(ContentError(file, lines.line(*path), reason))

    if not isinstance(data, dict):
        raise fail("an Orquesta workflow must be a mapping with 'version' and 'tasks'")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown top-level key(s) {', '.join(sorted(map(str, unknown)))} "
                   f"(allowed: {', '.join(sorted(_TOP_KEYS))})", str(sorted(map(str, unknown))[0]))
    if str(data.get("version")) not in ("1.0", "1"):
        raise fail("'version' must be 1.0", "version")
    tasks_data = data.get("tasks")
    if not isinstance(tasks_data, dict) or not tasks_data:
        raise fail("'tasks' must be a non-empty mapping of task names to tasks", "tasks")
    try:
        inputs = []
        for name, default in _pairs(data.get("input"), "input"):
            has_default = not (isinstance(data.get("input"), list) and any(e == name for e in data["input"]))
            inputs.append((str(name), default, has_default))
        variables = _pairs(data.get("vars"), "vars")
        output = _pairs(data.get("output"), "output")
    except ValueError as exc:
        raise fail(str(exc)) from exc
    for key in ("vars", "output", "input"):
        for problem in syntax_errors(data.get(key)):
            raise fail(f"{key}: expression syntax error: {problem}", key)

    tasks: dict[str, TaskSpec] = {}
    for name, body in tasks_data.items():
        name = str(name)
        where = ("tasks", name)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise fail(f"task '{name}': must be a mapping", *where)
        extra = set(body) - _TASK_KEYS
        if extra:
            raise fail(f"task '{name}': unknown key(s) {', '.join(sorted(map(str, extra)))} "
                       f"(allowed: {', '.join(sorted(_TASK_KEYS))})", *where)
        for problem in syntax_errors({k: v for k, v in body.items() if k != "next"}):
            raise fail(f"task '{name}': expression syntax error: {problem}", *where)
        action = body.get("action")
        task_input: dict[str, Any] | str = {}
        if action is not None:
            if not isinstance(action, str) or not action.strip():
                raise fail(f"task '{name}': 'action' must be an action ref", *where, "action")
            action = action.strip()
            space = _outside_expressions(action).find(" ")
            inline = dict(parse_inline_params(action[space:])) if space > 0 else {}
            if inline:  # as Orquesta's TaskSpec: the inline parameters are the input
                action, task_input = action[:space], inline
            elif space > 0:  # StackStorm would look for an action named all of it, and fail at run time
                raise fail(f"task '{name}': action {action!r}: no inline parameter here is one Orquesta reads, "
                           "so the whole text would be taken for the action's name; quote text values "
                           "(who=\"one\") or give them as 'input'", *where, "action")
        given_input = body.get("input")
        if given_input is not None and not task_input:
            if isinstance(given_input, dict):
                task_input = dict(given_input)
            elif has_expression(given_input):  # Orquesta's dynamic input: evaluated to a mapping at run time
                task_input = given_input.strip()
            else:
                raise fail(f"task '{name}': 'input' must be a mapping of parameter names to values, or an "
                           f"expression that gives one (<% ... %> or {{{{ ... }}}}), not {given_input!r}",
                           *where, "input")
        transitions = []
        next_data = body.get("next") or []
        if not isinstance(next_data, list):
            raise fail(f"task '{name}': 'next' must be a list of transitions", *where, "next")
        for index, entry in enumerate(next_data):
            if not isinstance(entry, dict) or set(entry) - _NEXT_KEYS:
                raise fail(f"task '{name}': transition {index + 1} must be a mapping of when/publish/do",
                           *where, "next")
            for problem in syntax_errors({k: v for k, v in entry.items() if k != "do"}):
                raise fail(f"task '{name}': transition {index + 1}: expression syntax error: {problem}",
                           *where, "next")
            do = entry.get("do") or []
            if isinstance(do, str):
                do = [d.strip() for d in do.split(",") if d.strip()]
            if not isinstance(do, list) or not all(isinstance(d, str) for d in do):
                raise fail(f"task '{name}': transition {index + 1}: 'do' must name tasks", *where, "next")
            try:
                publish = _pairs(entry.get("publish"), "publish")
            except ValueError as exc:
                raise fail(f"task '{name}': transition {index + 1}: {exc}", *where, "next") from exc
            transitions.append(Transition(entry.get("when"), publish, list(do)))
        join = body.get("join")
        if join is not None and join != "all" and not (isinstance(join, int) and join > 0):
            raise fail(f"task '{name}': 'join' must be 'all' or a positive count", *where, "join")
        items, names, concurrency = None, [], None
        with_ = body.get("with")
        if with_ is not None:
            if isinstance(with_, dict):
                items, concurrency = with_.get("items"), with_.get("concurrency")
            else:
                items = with_
            if not isinstance(items, str | list):
                raise fail(f"task '{name}': 'with' needs 'items'", *where, "with")
            if isinstance(items, str):
                match = _WITH_NAMES.match(items)
                if match and not match.group(1).startswith(("<%", "{{")):
                    names = [n.strip() for n in match.group(1).split(",")]
                    items = match.group(2).strip()
        retry = body.get("retry")
        if retry is not None and (not isinstance(retry, dict) or "count" not in retry):
            raise fail(f"task '{name}': 'retry' must be a mapping with 'count'", *where, "retry")
        tasks[name] = TaskSpec(name, action, task_input, transitions, join, items, names, concurrency, retry,
                               body.get("delay"))

    inbound: dict[str, set[str]] = {n: set() for n in tasks}
    edges: dict[str, list[str]] = {n: [] for n in tasks}
    for task in tasks.values():
        for index, transition in enumerate(task.next):
            for target in transition.do:
                if target in ENGINE_COMMANDS:
                    continue
                if target not in tasks:
                    raise fail(f"task '{task.name}': transition {index + 1} names unknown task '{target}' in 'do'",
                               "tasks", task.name, "next")
                inbound[target].add(task.name)
                edges[task.name].append(target)
    starts = [n for n in tasks if not inbound[n]]
    if not starts:
        raise fail("no task can start: every task has an inbound transition (a cycle with no entry)", "tasks")
    reached = graph.reachable(starts, edges)
    for name in tasks:
        if name not in reached:
            raise fail(f"task '{name}': unreachable from the start tasks ({', '.join(starts)})", "tasks", name)
    can_stop = {
        name: (not task.next or any(t.when is not None or "fail" in t.do or not t.do for t in task.next)
               or task.retry is not None)
        for name, task in tasks.items()
    }
    for cycle in graph.closed_cycles(list(tasks), edges, can_stop):
        raise fail(f"task '{cycle[0]}': cycle {' -> '.join(cycle)} has no exit (every transition in it is "
                   "unconditional and stays in the cycle)", "tasks", cycle[0])
    return WorkflowSpec(file, inputs, variables, output, tasks, starts, inbound, data)


#: An action's merged parameter schemas by name, as `Action.parameters` holds them.
Parameters = Mapping[str, Mapping[str, Any]]


def inspect_task_contents(spec: WorkflowSpec,
                          parameters_of: Callable[[str], Parameters | None]) -> list[dict[str, Any]]:
    """StackStorm's `inspect_task_contents` (st2common/services/workflows.py), which its `request()` runs
    before the workflow starts: every task whose `action` is a literal ref (not an expression) is checked
    against the registry (`parameters_of(ref)`: the action's merged runner and action parameters, None
    when no such action is registered), and its literal input names against those parameters. A typo in
    a later task then fails the workflow before any task runs, not after the tasks before it made their
    side effects. The entries are shaped and ordered as StackStorm's (`type: content`, `message`,
    `spec_path`, `schema_path`; by schema path, then task order), its messages word for word."""
    errors: list[dict[str, Any]] = []
    for name, task in spec.tasks.items():
        ref = task.action
        if not ref or has_expression(ref):
            continue
        action_at = {"spec_path": f"tasks.{name}.action", "schema_path": f"{_TASK_SCHEMA_PATH}.properties.action"}
        if "." not in ref:  # StackStorm's `ResourceReference.is_resource_reference`: `pack.name`
            errors.append({"type": "content", "message": f'The action reference "{ref}" is not formatted correctly.',
                           **action_at})
            continue
        parameters = parameters_of(ref)
        if parameters is None:
            errors.append({"type": "content", "message": f'The action "{ref}" is not registered in the database.',
                           **action_at})
            continue
        if isinstance(task.input, Mapping):  # an input given by an expression is known at run time only
            errors += _input_errors(name, ref, task.input, parameters)
    return sorted(errors, key=lambda error: (error["type"], error["schema_path"]))


def _input_errors(task: str, ref: str, given: Mapping[Any, Any], parameters: Parameters) -> list[dict[str, Any]]:
    """StackStorm's `validate_action_parameters` as its inspection reports it: a required parameter
    without a default that the task's input does not give, and an input name the action has no
    parameter for."""
    names = {str(key) for key in given}
    input_path, input_schema = f"tasks.{task}.input", f"{_TASK_SCHEMA_PATH}.properties.input"
    missing = sorted(p for p, meta in parameters.items()
                     if meta.get("required") and "default" not in meta and p not in names)
    errors = [{"type": "content", "message": f'Action "{ref}" is missing required input "{p}".',
               "spec_path": input_path, "schema_path": input_schema} for p in missing]
    errors += [{"type": "content", "message": f'Action "{ref}" has unexpected input "{p}".',
                "spec_path": f"{input_path}.{p}", "schema_path": f"{input_schema}.patternProperties.^\\w+$"}
               for p in sorted(names - set(parameters))]
    return errors


@dataclass
class _Entry:
    """Orquesta's task state entry: one per task and route at a time, made when a run of the task
    starts while none is active there. A run started while one is active shares it (Orquesta keys task
    state by task and route): the first of them to end completes it, and the others' ends change
    nothing."""

    #: Its place in Orquesta's task sequence (the order entries are made): terminal contexts merge in it.
    seq: int
    #: Orquesta's `ctxs.in`: indexes of the conductor's contexts whose merge the task's transitions see.
    ctxs: list[int]
    #: That merge, built once when the entry is made (its inbound transitions are all known then).
    ctx: dict[str, Any]
    #: Orquesta's `next`: the (target, transition index) pairs taken when it completed, what a join counts.
    taken: set[tuple[str, int]] = field(default_factory=set)
    done: bool = False


@dataclass
class _Run:
    """One occurrence of a task: its attempt, and for `with` items their progress."""

    task: TaskSpec
    occurrence: int
    route: int = 0  # Orquesta's route: which branch after a split this run is on
    attempt: int = 0
    items: list[Any] | None = None
    results: list[Any] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)
    next_item: int = 0
    running: int = 0
    concurrency: int = 0
    failed: bool = False
    unevaluable: bool = False  # an item's input did not evaluate: retrying cannot help
    execution_ids: list[str] = field(default_factory=list)
    #: The context its action's input is rendered on: the merge of the contexts it was staged with.
    ctx: dict[str, Any] = field(default_factory=dict)
    #: Its task state entry (its own, or the one of a run of the task still active on the route).
    entry: _Entry = field(default_factory=lambda: _Entry(0, [0], {}))
    #: Staged together with a `fail` command (Orquesta's `run_on_fail`): it runs though the workflow fails.
    on_fail: bool = False

    @property
    def prefix(self) -> str:
        return f"{self.task.name}.{self.occurrence}.{self.attempt}"


def _split_facts(spec: WorkflowSpec) -> tuple[Counter[str], set[str], dict[str, dict[str, set[int]]]]:
    """How many transitions lead to each task, and which tasks are in a cycle: what decides
    whether reaching a task starts a new route. And for each join, its inbound tasks with the indexes
    of their transitions into it: a join counts an inbound task as arrived once one of them was taken."""
    inbound: Counter[str] = Counter()
    edges: dict[str, list[str]] = {name: [] for name in spec.tasks}
    sources: dict[str, dict[str, set[int]]] = {name: {} for name, task in spec.tasks.items() if task.join}
    for task in spec.tasks.values():
        for index, transition in enumerate(task.next):
            for target in dict.fromkeys(transition.do):
                if target in spec.tasks:
                    inbound[target] += 1
                    edges[task.name].append(target)
                if target in sources:
                    sources[target].setdefault(task.name, set()).add(index)
    cyclic = {name for name in spec.tasks if name in graph.reachable(edges[name], edges)}
    return inbound, cyclic, sources


def _merge_into(left: dict[str, Any], right: Mapping[str, Any]) -> None:
    """Orquesta's `merge_dicts(left, right, overwrite=True)`: a mapping merged into a mapping key by
    key, anything else overwritten. Only `left` (the caller's own) is written to: a nested mapping is
    copied before it changes, so the stored contexts never do."""
    for key, value in right.items():
        old = left.get(key)
        if key in left and isinstance(old, dict) and isinstance(value, dict):
            merged = dict(old)
            _merge_into(merged, value)
            left[key] = merged
        else:
            left[key] = value


def _without_initial(ctxs: list[int]) -> list[int]:
    """Inbound indexes without the initial context, as Orquesta adds a later arrival's to a join (and
    a later terminal task's to the output's): the initial context would overwrite what was published."""
    rest = list(ctxs)
    if 0 in rest:
        rest.remove(0)
    return rest


def _logged(exc: Exception) -> str:
    """An error's message as StackStorm records it: the exception's class, then its text."""
    return exc.logged if isinstance(exc, ExpressionError) else f"{type(exc).__name__}: {exc}"


def _shown(value: Any, limit: int = 200) -> str:
    """A value an expression gave, as an error quotes it: its repr and type, cut at `limit` characters
    (an expression that gave the whole context is not quoted whole)."""
    text = repr(value)
    return f"{text if len(text) <= limit else text[:limit] + '...'} ({type(value).__name__})"


def _task_result(run: _Run, result: Any) -> Any:
    """What `task(name).result` holds: a with-items task's is `{"items": [{status, result}...]}`
    (null for items that never ran), as StackStorm's task execution records it."""
    if run.items is None:
        return result
    return {"items": [None if status is None else {"status": status, "result": value}
                      for status, value in zip(run.statuses, run.results, strict=False)]}


class OrquestaConductor:
    """Conducts one workflow; the host feeds it outcomes in the order they happened."""

    def __init__(self, spec: WorkflowSpec, parameters: dict[str, Any], st2: dict[str, Any],
                 st2kv: Any = None, shell_command: Callable[[str], bool] = lambda ref: False,
                 parent: dict[str, Any] | None = None) -> None:
        self.spec = spec
        #: Whether an action's `cmd` is shell text (a `*-shell-cmd` runner): its values must be quoted.
        self.shell_command = shell_command
        self.parameters = parameters
        self.st2kv = st2kv
        initial: dict[str, Any] = {"st2": st2}
        if parent:
            initial["parent"] = parent  # StackStorm's `ctx().parent`: the execution's own context
        #: Orquesta's `contexts`: [0] the initial one (input and vars too, once `start` rendered them),
        #: then what each taken transition published (only the published names).
        self.contexts: list[dict[str, Any]] = [initial]
        #: Orquesta's terminal tasks, sequence -> ctxs: entries of a task without `next`, each taken
        #: transition to `continue`, `noop` or `fail` (its published context), and once the workflow
        #: fails every entry that completes or changes after (Orquesta marks a task terminal whenever
        #: its update leaves the workflow completed). The output merges them in sequence order.
        self._terminal: dict[int, list[int]] = {}
        self._sequence = 0
        #: The run completed last: the one that ends the workflow is terminal too (as Orquesta marks it).
        self._last: _Run | None = None
        #: Input or vars did not evaluate: nothing ran, and no output is rendered (as Orquesta).
        self.aborted = False
        #: Some task finished: the output is rendered from the terminal tasks' contexts, else from nothing.
        self.completed_any = False
        self.errors: list[dict[str, Any]] = []
        #: Task records by (task, route): what `task(name)` returns.
        self.records: dict[tuple[str, int], dict[str, Any]] = {}
        #: Orquesta's routes: route n is the list of split transitions (`task__tN`) taken to reach it.
        self.routes: list[list[str]] = [[]]
        self._inbound_transitions, self._cyclic, self._join_sources = _split_facts(spec)
        self.occurrences: Counter[str] = Counter()
        #: Orquesta's task state: the latest entry of each task on each route.
        self._entries: dict[tuple[str, int], _Entry] = {}
        #: Orquesta's staged joins not yet ready, by task and route: the context indexes of the
        #: transitions that arrived, in arrival order. A join starts once enough inbound tasks took a
        #: transition into it, and leaves the stage; an arrival after that stages it anew.
        self._staged: dict[tuple[str, int], list[int]] = {}
        #: A task was ready but not started because the workflow was failing or canceled (Orquesta
        #: leaves it staged): a join still waiting on an inbound task that never ran is then not
        #: reported unreachable, as Orquesta's criteria call it "in progress".
        self._unstarted = False
        self.runs: dict[str, tuple[_Run, int | None]] = {}
        #: The refs that calls of tasks with an action expression were given, by call key (`_failure`).
        self._given_refs: dict[str, str] = {}
        self.active: set[int] = set()
        self._runs_by_id: dict[int, _Run] = {}
        self.failing = False
        self.canceled = False
        self.output: Any = None

    # -- evaluation ---------------------------------------------------------------------------
    @property
    def ctx(self) -> dict[str, Any]:
        """The initial context (parent context, input, vars): what the start tasks see."""
        return self.contexts[0]

    def _scope(self, run: _Run | None = None, ctx: dict[str, Any] | None = None, **kwargs: Any) -> Scope:
        """What an expression sees: `ctx`, else the run's own context (the initial one before any task
        runs)."""
        if ctx is None:
            ctx = run.ctx if run is not None else self.contexts[0]
        return Scope(ctx, routed_tasks=self._record, st2kv=self.st2kv, **kwargs)

    def _context(self, ctxs: list[int]) -> dict[str, Any]:
        """Orquesta's `get_task_context`: the merge of these contexts, in order."""
        merged: dict[str, Any] = {}
        for index in ctxs:
            _merge_into(merged, self.contexts[index])
        return merged

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def _mark_terminal(self, seq: int, ctxs: list[int]) -> None:
        """Orquesta's `term` flag: set once per entry, whatever marks it."""
        self._terminal.setdefault(seq, list(ctxs))

    def _record(self, name: str, route: int) -> dict[str, Any] | None:
        """A task's record on a route; on a route after a split, a task before it is found on the
        latest earlier route the split came from (as StackStorm's `task()` looks)."""
        record = self.records.get((name, route))
        if record is None and 0 < route < len(self.routes):
            details = set(self.routes[route])
            for earlier in range(route - 1, -1, -1):
                if set(self.routes[earlier]) <= details:
                    return self._record(name, earlier)
        return record

    def _route(self, target: str, source: str, index: int, route: int) -> int:
        """The route a transition leads on: a split task (several inbound transitions, no join, not
        in a cycle) reached by a transition not yet on the route starts a new route."""
        task = self.spec.tasks[target]
        if task.join is not None or self._inbound_transitions[target] <= 1 or target in self._cyclic:
            return route
        transition = f"{source}__t{index}"
        if transition in self.routes[route]:
            return route
        self.routes.append([*self.routes[route], transition])
        return len(self.routes) - 1

    def _log_error(self, message: str, task_id: str | None = None, route: int | None = None,
                   transition: str | None = None, result: Any = None) -> None:
        """Record an error entry shaped as Orquesta's `log_entry` shapes it: keys only when set, and
        an entry identical to one already there is not repeated."""
        entry: dict[str, Any] = {"type": "error", "message": message}
        for key, value in (("task_id", task_id), ("route", route), ("task_transition_id", transition),
                           ("result", result)):
            if value is not None:
                entry[key] = value
        if entry not in self.errors:
            self.errors.append(entry)

    def _fail(self, message: str, task_id: str | None = None, **extra: Any) -> None:
        """Record the error and fail the workflow (nothing new starts)."""
        self._log_error(message, task_id, **extra)
        self.failing = True

    def cancel(self) -> None:
        """Start nothing new; the workflow ends `canceled` once the tasks still running end."""
        self.canceled = True

    # -- starting ---------------------------------------------------------------------------
    def start(self) -> list[TaskCall]:
        try:
            for name, default, has_default in self.spec.input:
                if self.parameters.get(name) is not None:
                    self.ctx[name] = self.parameters[name]
                else:
                    self.ctx[name] = evaluate(default, self._scope()) if has_default else None
            for name, value in self.spec.vars:
                self.ctx[name] = evaluate(value, self._scope())
        except ExpressionError as exc:
            self._fail(exc.logged)
            self.aborted = True
            return []
        for name, value in self.parameters.items():
            self.ctx.setdefault(name, value)
        calls: list[TaskCall] = []
        for name in self.spec.starts:
            calls += self._schedule(name)
        return calls

    def _schedule(self, name: str, route: int = 0, ctxs: list[int] | None = None,
                  ctx: dict[str, Any] | None = None, on_fail: bool = False) -> list[TaskCall]:
        """Start a run of the task on these inbound contexts (`ctx`: their merge, when the caller
        has it already). While the workflow fails only a task staged with a `fail` command starts."""
        if (self.failing and not on_fail) or self.canceled:
            self._unstarted = True
            return []
        task = self.spec.tasks[name]
        self.occurrences[name] += 1
        inbound = list(ctxs) if ctxs else [0]
        run_ctx = dict(ctx) if ctx is not None else self._context(inbound)
        entry = self._entries.get((name, route))
        if entry is None or entry.done:
            entry = self._entries[(name, route)] = _Entry(self._next_sequence(), inbound, run_ctx)
            self.records[(name, route)] = {
                "task_name": name, "task_id": name, "route": route, "status": "running", "result": None,
                "workflow_execution_id": self.ctx["st2"].get("workflow_execution_id"), "task_execution_id": None}
        run = _Run(task, self.occurrences[name], route, ctx=run_ctx, entry=entry, on_fail=on_fail)
        self._runs_by_id[id(run)] = run
        self.active.add(id(run))
        if task.action is None:
            self.completed_any = True
            return self._complete(run, "succeeded", None)
        if task.items is not None:
            try:
                items = evaluate(task.items, self._scope(run))
                if isinstance(items, dict) or not hasattr(items, "__iter__") or isinstance(items, str):
                    raise ExpressionError(str(task.items), f"The value of with items is not a list: {items!r}")
                run.items = list(items)
                concurrency = evaluate(task.concurrency, self._scope(run)) if task.concurrency is not None else 0
                run.concurrency = int(concurrency or 0)
            except (ExpressionError, TypeError, ValueError) as exc:
                self._fail(_logged(exc), name, route=route)
                return self._complete(run, "failed", None, transitions=False)
            run.results = [None] * len(run.items)
            run.statuses = [None] * len(run.items)
            if not run.items:
                self.completed_any = True
                return self._complete(run, "succeeded", [])
            return self._next_items(run)
        call = self._call(run, None)
        return [call] if call is not None else self._complete(run, "failed", None, transitions=False)

    def _item_value(self, run: _Run, index: int) -> Any:
        value = run.items[index]  # type: ignore[index]
        names = run.task.item_names
        if len(names) == 1:
            return {names[0]: value}
        if len(names) > 1:
            values = list(value) if isinstance(value, list | tuple) else [value]
            return {n: (values[i] if i < len(values) else None) for i, n in enumerate(names)}
        return value

    def _action(self, task: TaskSpec, scope: Scope) -> str:
        """The ref of the action the task runs: as written, or what its expression gives (Orquesta's
        dynamic action, evaluated for every call as its `TaskSpec.render` does: each item, each retry).
        What a string names is left to the host's request, which refuses an action not loaded
        (`on_done` then names the expression); anything else fails the task here."""
        if not has_expression(task.action):
            return str(task.action)
        ref = evaluate(task.action, scope)
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError(f'The action expression "{task.action}" of task "{task.name}" gave {_shown(ref)}: '
                             "it must give the ref of a loaded action, as pack.action")
        return ref

    def _input(self, task: TaskSpec, ref: str, scope: Scope) -> Any:
        """A task's input, for action `ref`; a shell command's `cmd` keeps its values out of the shell text
        (they go in `env`, as the shell runner does with its own templates), so workflow data never runs as
        code. An input given by an expression (Orquesta's dynamic input) is the mapping it gives, whose
        values are data: never evaluated again."""
        raw = task.input
        if isinstance(raw, str):
            given = evaluate(raw, scope)
            if not isinstance(given, dict) or not all(isinstance(name, str) for name in given):
                raise ValueError(f'The input expression "{raw}" of task "{task.name}" gave {_shown(given)}: '
                                 "it must give a mapping of parameter names to values")
            return given
        if not (isinstance(raw.get("cmd"), str) and self.shell_command(ref)):
            return evaluate(raw, scope)
        parameters = evaluate({k: v for k, v in raw.items() if k != "cmd"}, scope)
        text, variables = evaluate_shell(raw["cmd"], scope)
        env = parameters.get("env")
        parameters["cmd"] = text
        if variables:
            parameters["env"] = {**(env if isinstance(env, dict) else {}), **variables}
        return parameters

    def _call(self, run: _Run, index: int | None) -> TaskCall | None:
        task = run.task
        item = self._item_value(run, index) if index is not None else None
        scope = self._scope(run, item=item, task_name=task.name, task_route=run.route)
        try:
            ref = self._action(task, scope)
            parameters = self._input(task, ref, scope)
            delay = self._delay(run, index, scope)
        except (ExpressionError, TypeError, ValueError) as exc:
            self._fail(_logged(exc), task.name, route=run.route)
            return None
        key = run.prefix if index is None else f"{run.prefix}[{index}]"
        self.runs[key] = (run, index)
        if has_expression(task.action):
            self._given_refs[key] = ref
        context = {"orquesta": {"task_name": task.name, "task_id": task.name, "task_route": run.route,
                                **({"item_id": index} if index is not None else {})}}
        return TaskCall(key, task.name, ref, parameters, context, delay)

    def _delay(self, run: _Run, index: int | None, scope: Scope) -> float:
        """Seconds the call waits as a `delayed` child: the task's `delay` on its first attempt (for
        items with a concurrency, only the first batch waits, as StackStorm delays them), else the
        retry's `delay`."""
        task = run.task
        if run.attempt and task.retry and task.retry.get("delay"):
            return float(evaluate(task.retry["delay"], scope) or 0)
        if task.delay is None or run.attempt:
            return 0.0
        if index is not None and run.concurrency and index >= run.concurrency:
            return 0.0
        return float(evaluate(task.delay, scope) or 0)

    def _may_dispatch(self, run: _Run) -> bool:
        """Whether more items may start, as Orquesta decides: not once the workflow fails or is
        canceled; after an item failed, only while another item is still running (the task fails once
        none is)."""
        if self.canceled or run.unevaluable or (self.failing and not run.on_fail):
            return False
        return not (run.failed and run.running == 0)

    def _next_items(self, run: _Run) -> list[TaskCall]:
        calls = []
        assert run.items is not None
        while run.next_item < len(run.items) and self._may_dispatch(run):
            if run.concurrency and run.running >= run.concurrency:
                break
            index = run.next_item
            run.next_item += 1
            call = self._call(run, index)
            if call is None:
                run.failed = run.unevaluable = True
                run.statuses[index] = "failed"
                break
            run.running += 1
            calls.append(call)
        if run.running == 0 and not (run.failed or run.next_item >= len(run.items) or self.canceled):
            if self.failing and not run.on_fail:  # items never started: Orquesta leaves the task running
                self.active.discard(id(run))
                self._runs_by_id.pop(id(run), None)
                self._last = run
        elif run.running == 0:
            status = "failed" if run.failed else ("canceled" if self.canceled else "succeeded")
            if status == "failed" and not run.unevaluable and self._retrying(run, status, run.results):
                run.attempt += 1  # the task runs again whole, every item, as Orquesta retries it
                run.next_item, run.failed = 0, False
                run.results, run.statuses = [None] * len(run.items), [None] * len(run.items)
                return calls + self._next_items(run)
            calls += self._complete(run, status, run.results)
        return calls

    # -- outcomes ---------------------------------------------------------------------------
    def on_done(self, key: str, status: str, result: Any, execution_id: str | None) -> list[TaskCall]:
        found = self.runs.pop(key, None)
        given_ref = self._given_refs.pop(key, None)
        if found is None:
            return []
        run, index = found
        if execution_id:
            run.execution_ids.append(execution_id)
            self.records[(run.task.name, run.route)]["task_execution_id"] = execution_id
        if status == "canceled":
            self.canceled = True
        self.completed_any = True
        if status in FAILED:  # logged for every failed run, remediated or not (shown if the workflow fails)
            self._log_error(self._failure(run, given_ref, result, execution_id), run.task.name, result=result)
        if index is not None:
            run.running -= 1
            run.results[index] = result
            run.statuses[index] = status
            if status != "succeeded":
                run.failed = True
            calls = self._next_items(run)
            if self.failing:  # Orquesta marks the task terminal on any update once the workflow failed
                self._mark_terminal(run.entry.seq, run.entry.ctxs)
            return calls
        if self._retrying(run, status, result):
            run.attempt += 1
            call = self._call(run, None)
            if call is not None:
                return [call]
        return self._complete(run, status, result)

    @staticmethod
    def _failure(run: _Run, given_ref: str | None, result: Any, execution_id: str | None) -> str:
        """The error logged for a failed run: StackStorm's words, unless the host could not even request
        the action an expression gave (no execution: not loaded, or its parameters refused), which only
        the run shows; then the expression, what it gave and the host's reason."""
        if given_ref is None or execution_id is not None:
            return "Execution failed. See result for details."
        reason = result.get("error") if isinstance(result, dict) else None
        return (f'The action expression "{run.task.action}" of task "{run.task.name}" gave "{given_ref}", '
                f"which could not be requested: {reason or 'see result for details'}")

    def _retrying(self, run: _Run, status: str, result: Any) -> bool:
        """Whether the task's `retry` asks for another attempt after this outcome. As Orquesta: without
        `when` a failure is retried; with it, `when` decides whatever the outcome (a success can be
        retried: polling until a condition holds); `count` may be an expression."""
        retry = run.task.retry
        if not retry or status == "canceled" or self.canceled or self.failing:
            return False  # Orquesta retries only while the workflow is active
        scope = self._scope(run, result=result, status=status, task_name=run.task.name, task_route=run.route)
        try:
            count = evaluate(retry.get("count", 0), scope)
            if isinstance(count, bool) or not isinstance(count, int):
                self._fail(f'ValueError: The retry count for task "{run.task.name}" is not an integer.',
                           run.task.name, route=run.route)
                return False
            if run.attempt >= count:
                return False
            if retry.get("when") is None:
                return status in FAILED
            return bool(evaluate(retry["when"], scope))
        except ExpressionError as exc:
            self._fail(exc.logged, run.task.name, route=run.route)
            return False

    def _complete(self, run: _Run, status: str, result: Any, *, transitions: bool = True) -> list[TaskCall]:
        """The run ended: it completes its task state entry and the transitions taken are followed,
        unless another run of the task on this route completed the entry first (Orquesta ignores
        this end then). Once the workflow fails, the entry is terminal (Orquesta marks every task
        terminal whose update leaves the workflow completed), so what it saw is in the output."""
        task, entry = run.task, run.entry
        self.active.discard(id(run))
        self._runs_by_id.pop(id(run), None)
        self._last = run
        calls: list[TaskCall] = []
        if not entry.done:
            entry.done = True
            self.records[(task.name, run.route)].update({"status": status, "result": _task_result(run, result)})
            if not task.next:
                self._mark_terminal(entry.seq, entry.ctxs)
            if transitions and status != "canceled" and not self.canceled:
                calls = self._follow(run, status, result)
        if self.failing and transitions:
            self._mark_terminal(entry.seq, entry.ctxs)
        return calls

    def _follow(self, run: _Run, status: str, result: Any) -> list[TaskCall]:
        """Evaluate the task's transitions, as Orquesta's `update_task_state` does: every taken one
        stages its target with the transition's contexts first (a target reached by two transitions of
        this task gathers both), then what is ready starts: a task without `join` at once, a join once
        enough of its inbound tasks took a transition into it."""
        task, entry = run.task, run.entry
        order: list[tuple[str, int]] = []
        staged: dict[tuple[str, int], tuple[list[int], dict[str, Any] | None]] = {}
        remediated = fail = False
        for index, transition in enumerate(task.next):
            scope = self._scope(run, ctx=entry.ctx, result=result, status=status, task_name=task.name,
                                task_route=run.route)
            try:
                out = self._transition(transition, scope, entry.ctxs)
                if out is None:
                    continue
            except ExpressionError as exc:
                for target in transition.do or ["continue"]:
                    self._fail(exc.logged, task.name, route=run.route, transition=f"{target}__t{index}")
                return []
            for target in transition.do or ["continue"]:
                remediated = remediated or target != "continue"  # `continue` carries the failure on
                if target in ("fail", "noop", "continue"):  # an engine command ends its branch here
                    self._mark_terminal(self._next_sequence(), out[0])
                    fail = fail or target == "fail"
                    continue
                name = task.name if target == "retry" else target
                entry.taken.add((name, index))
                key = (name, self._route(name, task.name, index, run.route))
                self._stage(key, out, staged)
                if key not in order:
                    order.append(key)
        if status != "succeeded" and not remediated:
            self.failing = True  # its "Execution failed" entry was logged with its outcome
        calls: list[TaskCall] = []
        for name, route in order:  # a task staged with a `fail` command runs though the workflow fails
            if (name, route) in staged:
                ctxs, ctx = staged[(name, route)]
                calls += self._schedule(name, route, ctxs, ctx, on_fail=fail)
            elif self._join_ready(name, run.route):
                calls += self._schedule(name, route, self._staged.pop((name, route)), on_fail=fail)
        if fail:  # the other tasks of the transition still run; nothing after them does
            self._fail("Execution failed. See result for details.", "fail")
        return calls

    def _stage(self, key: tuple[str, int], out: tuple[list[int], dict[str, Any]],
               staged: dict[tuple[str, int], tuple[list[int], dict[str, Any] | None]]) -> None:
        """A transition reached task and route `key` with its context indexes (and their merge). As
        Orquesta stages it: a task already staged there gathers them too, without the initial context
        (it would overwrite what the earlier arrivals published). A join stays staged until it is
        ready; any other task is staged only until this completion's transitions are all evaluated."""
        ctxs, ctx = out
        if self.spec.tasks[key[0]].join is not None:
            gathered = self._staged.get(key)
            self._staged[key] = list(ctxs) if gathered is None else [*gathered, *_without_initial(ctxs)]
        elif key in staged:
            staged[key] = ([*staged[key][0], *_without_initial(ctxs)], None)
        else:
            staged[key] = (list(ctxs), ctx)

    def _join_ready(self, name: str, route: int) -> bool:
        """Orquesta's inbound criteria: a join is ready once as many of its inbound tasks as it needs
        (`all` of them, or its count) took, in their latest run on this route, a transition into it.
        An inbound task counts once however many of its transitions lead to the join."""
        sources = self._join_sources[name]
        arrived = 0
        for source, indexes in sources.items():
            entry = self._entries.get((source, route))
            arrived += entry is not None and any((name, index) in entry.taken for index in indexes)
        join = self.spec.tasks[name].join
        return arrived >= (len(sources) if join == "all" else int(join))

    def _join_waits(self, name: str, route: int) -> bool:
        """Orquesta's "in progress" criteria for a join not ready when the workflow ended: an inbound
        task never ran on the route while some ready task was left unstarted."""
        return self._unstarted and any((source, route) not in self._entries for source in self._join_sources[name])

    def _transition(self, transition: Transition, scope: Scope,
                    ctxs: list[int]) -> tuple[list[int], dict[str, Any]] | None:
        """None if the transition is not taken; else the context indexes it passes on (the task's
        own, plus a new context of what its `publish` set) and their merge. As Orquesta's
        `finalize_context`, the publish is evaluated on a copy of the task's context (each name sees
        the ones before it), so what one transition publishes is never seen by a sibling transition."""
        if transition.when is not None and not evaluate(transition.when, scope):
            return None
        if not transition.publish:
            return list(ctxs), dict(scope.ctx)
        own = scope.ctx
        rolling = dict(own)
        published: dict[str, Any] = {}
        scope.ctx = rolling
        for name, value in transition.publish:
            rolling[name] = published[name] = evaluate(value, scope)
        self.contexts.append(published)
        merged = dict(own)  # what `_context` would make of the indexes passed on, without merging them all again
        _merge_into(merged, published)
        return [*ctxs, len(self.contexts) - 1], merged

    # -- the end ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.active

    def outcome(self) -> Outcome:
        """The final status and result, as StackStorm shapes it: `{"output": ...}` (null when empty),
        with `errors` only when the workflow failed."""
        output = self._output()
        if self.canceled:
            return Outcome("canceled", {"output": output or None})
        for target, route in list(self._staged):  # some arrived, not enough ever will
            if not self._join_waits(target, route):
                self._fail(f'UnreachableJoinError: The join task|route "{target}|{route}" is '
                           "partially satisfied but unreachable.", target, route=route)
        status = "failed" if self.failing else "succeeded"
        result: dict[str, Any] = {"output": output or None}
        if status == "failed":
            result["errors"] = self.errors
        return Outcome(status, result)

    def _terminal_context(self) -> dict[str, Any]:
        """Orquesta's `get_workflow_terminal_context`: the first terminal task's context, then each
        later one's merged over it (without the initial context), in the order the tasks started. The
        task whose end ended the workflow is terminal too, as Orquesta marks it. Nothing if no task
        finished."""
        if not self.completed_any:
            return {}
        entries = dict(self._terminal)
        if self._last is not None:
            entries.setdefault(self._last.entry.seq, self._last.entry.ctxs)
        if not entries:
            return self._context([0])
        ordered = [entries[seq] for seq in sorted(entries)]
        ctxs = [*ordered[0]]
        for more in ordered[1:]:
            ctxs += _without_initial(more)
        return self._context(ctxs)

    def _output(self) -> dict[str, Any] | None:
        """The workflow's `output`, rendered from the terminal tasks' context (see
        `_terminal_context`); an error fails the workflow."""
        if self.aborted or not self.spec.output:
            return None
        context = self._terminal_context()
        output: dict[str, Any] = {}
        try:
            for name, value in self.spec.output:
                output[name] = evaluate(value, Scope(context, routed_tasks=self._record, st2kv=self.st2kv))
                if name not in context:
                    context = {**context, name: output[name]}
        except ExpressionError as exc:
            if not self.canceled:
                self._fail(exc.logged)
            return None
        return output

    def snapshot(self) -> Any:
        result: dict[str, Any] = {"output": None}
        if self.errors:
            result["errors"] = self.errors
        return result
