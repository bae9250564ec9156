"""Mistral v2 workflows (`runner_type: mistral-v2`, StackStorm before 3.3) on Squall's workflow host.

StackStorm dropped Mistral in 3.3, but packs written for it still exist. Rather than a second
engine, a Mistral direct workflow is translated onto the host Orquesta uses (`service.Flow`):
the spec is checked at pack load, and `MistralConductor` answers outcomes with calls like any
other conductor, so pause, resume, cancel, re-run and restarts behave the same.

What Mistral's engine kept as state that the host cannot replay from children (a `pause-before`
that already paused, a `pause` engine command, a `wait-after` timer) becomes a small `core.noop`
child (a *marker*): replaying the workflow after a resume or a crash finds it finished and goes
on, instead of pausing or waiting again.

Semantics follow Mistral's documentation: publish is per branch (a task's context is the one of
the task that triggered it; a join merges its inbound branches); an error is handled only by an
`on-error` clause that applies (`on-complete` runs but does not handle it); the workflow ends
when nothing is running and nothing is left to start, failed if an error went unhandled; without
`output` the result carries the whole final context.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.workflows import graph
from engine.workflows.expressions import ExpressionError, Scope, evaluate, evaluate_shell, syntax_errors
from engine.workflows.model import FAILED, Outcome, TaskCall
from engine.yamlfile import ContentError, ContentInvalid, LineMap

if TYPE_CHECKING:
    from engine.runners import RunRequest

ENGINE_COMMANDS = frozenset({"noop", "fail", "succeed", "pause"})
#: Mistral's own actions that run inside the conductor (no child execution).
BUILTIN_ACTIONS = frozenset({"std.noop", "std.echo", "std.fail"})
#: The action StackStorm's Mistral plugin ran st2 actions through (`input: {ref, parameters}`).
ST2_ACTION = "st2.action"
MARKER_ACTION = "core.noop"

_WORKFLOW_KEYS = {"type", "description", "input", "output", "output-on-error", "vars", "task-defaults", "tasks",
                  "tags"}
_TRANSITIONS = ("on-success", "on-error", "on-complete")
_POLICY_KEYS = {"pause-before", "wait-before", "wait-after", "fail-on", "retry", "concurrency", "safe-rerun"}
_DEFAULT_KEYS = {*_TRANSITIONS, *_POLICY_KEYS}
_TASK_KEYS = {"description", "action", "input", "publish", "publish-on-error", "with-items", "join",
              "keep-result", "target", *_DEFAULT_KEYS}
_RETRY_KEYS = {"count", "delay", "break-on", "continue-on"}
_UNSUPPORTED = {
    "workflow": "'workflow:' sub-workflow tasks are not supported; make the sub-workflow an action of its own "
                "(runner_type: mistral-v2) and call it with 'action: <pack>.<name>'",
    "timeout": "'timeout' is not supported; give the action's own 'timeout' parameter in 'input'",
    "requires": "'requires' belongs to reverse workflows, which are not supported (direct workflows only)",
    "on-skip": "'on-skip' is not supported (Mistral 2023+); use on-success/on-error/on-complete",
    "publish-on-skip": "'publish-on-skip' is not supported (Mistral 2023+)",
}
_SUPPORTED = ("supported: direct workflows with tasks using action, input, publish, publish-on-error, "
              "on-success/on-error/on-complete, with-items, concurrency, retry, wait-before, wait-after, "
              "pause-before, fail-on, join")
_VERSION_NAMES = ("2.0", "2")
_WITH_ITEMS = re.compile(r"^\s*([A-Za-z_]\w*)\s+in\s+(.+?)\s*$", re.DOTALL)
_COMMAND = re.compile(r"^\s*([\w.\-]+)\s*(.*)$", re.DOTALL)
# key=value pairs of Mistral's inline input: quoted text, an expression, a [list], a {map}, or a bare word.
_PAIR = re.compile(r"""([\w\-]+)=("[^"]*"|'[^']*'|<%.*?%>|\{\{.*?\}\}|\[[^\]]*\]|\{[^}]*\}|\S+)""", re.DOTALL)
_BLOCKS = re.compile(r"<%.*?%>|\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_TASK_NOW = re.compile(r"\btask\(\s*\)")
_ENV = re.compile(r"\benv\(\s*\)")
_EXECUTION = re.compile(r"\bexecution\(\s*\)")
_JINJA_CONTEXT = re.compile(r"(?<![\w.])_(?!\w)")
_QUOTED = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


# -- the spec ----------------------------------------------------------------------------------------

@dataclass
class Transition:
    """One entry of an on-* list: a task or an engine command, with its guard and command input."""

    target: str
    condition: Any = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrySpec:
    """A task's `retry`; each field may be an expression, evaluated after every attempt."""

    count: Any
    delay: Any = 0
    break_on: Any = None
    continue_on: Any = None


@dataclass
class TaskSpec:
    """One task as checked at load, `task-defaults` already filled in, expressions still unevaluated."""

    name: str
    action: str | None
    input: Any
    publish: dict[str, Any]
    publish_on_error: dict[str, Any]
    transitions: dict[str, list[Transition]]
    items: list[tuple[str, Any]] = field(default_factory=list)
    concurrency: Any = None
    retry: RetrySpec | None = None
    wait_before: Any = None
    wait_after: Any = None
    pause_before: Any = None
    fail_on: Any = None
    join: str | int | None = None


@dataclass
class WorkflowSpec:
    """The one workflow of a file, checked at load: the conductor trusts its graph (targets exist)."""

    file: str
    name: str
    input: list[tuple[str, Any, bool]]
    vars: dict[str, Any]
    output: Any
    output_on_error: Any
    tasks: dict[str, TaskSpec]
    starts: list[str]
    inbound: dict[str, set[str]]


class _Problem(Exception):
    """A spec problem found below `parse`: reason, and the key path its line is looked up by."""

    def __init__(self, reason: str, *path: str | int) -> None:
        super().__init__(reason)
        self.path = path


def _literal(text: str) -> Any:
    """An inline value: quotes stripped, expressions kept, JSON values decoded, the rest as text."""
    if text[:1] in "\"'" and text[-1:] == text[:1] and len(text) >= 2:
        return text[1:-1]
    if text.startswith(("<%", "{{")):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _command(text: str, what: str, *path: str | int) -> tuple[str, dict[str, Any]]:
    """`name key=value ...` (an action with inline input, or an engine command with `msg`)."""
    match = _COMMAND.match(text)
    if not match:
        raise _Problem(f"{what}: cannot read {text!r}", *path)
    rest = match.group(2)
    params = {key: _literal(value) for key, value in _PAIR.findall(rest)}
    if rest.strip() and not params:
        raise _Problem(f"{what}: cannot read the input {rest.strip()!r} (expected key=value pairs)", *path)
    return match.group(1), params


def _transitions(value: Any, where: str, *path: str | int) -> list[Transition]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        raise _Problem(f"{where}: the 'publish'/'next' form of transitions is not supported; give a list of task "
                       "names or '- task: <% condition %>' entries", *path)
    if not isinstance(value, list):
        raise _Problem(f"{where}: must be a list of task names", *path)
    found = []
    for entry in value:
        condition = None
        if isinstance(entry, dict) and len(entry) == 1:
            entry, condition = next(iter(entry.items()))
        if not isinstance(entry, str):
            raise _Problem(f"{where}: each entry must be a task name or a one-key mapping "
                           "'task: <% condition %>'", *path)
        name, params = _command(entry, where, *path)
        found.append(Transition(name, condition, params))
    return found


def _with_items(value: Any, where: str, *path: str | int) -> list[tuple[str, Any]]:
    entries = value if isinstance(value, list) else [value]
    items = []
    for entry in entries:
        match = _WITH_ITEMS.match(entry) if isinstance(entry, str) else None
        if match is None:
            raise _Problem(f"{where}: 'with-items' entries must read 'name in <% expression %>' (or a [list])",
                           *path)
        items.append((match.group(1), _literal(match.group(2))))
    return items


def _retry(value: Any, where: str, *path: str | int) -> RetrySpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {key: _literal(text) for key, text in _PAIR.findall(value)}
    if not isinstance(value, dict) or "count" not in value:
        raise _Problem(f"{where}: 'retry' must be a mapping with 'count' (and delay, break-on, continue-on)", *path)
    extra = set(value) - _RETRY_KEYS
    if extra:
        raise _Problem(f"{where}: unknown retry key(s) {', '.join(sorted(map(str, extra)))} "
                       f"(allowed: {', '.join(sorted(_RETRY_KEYS))})", *path)
    return RetrySpec(value["count"], value.get("delay", 0), value.get("break-on"), value.get("continue-on"))


def _check_keys(body: dict[str, Any], allowed: set[str], where: str, *path: str | int) -> None:
    for key in body:
        if key in _UNSUPPORTED:
            raise _Problem(f"{where}: {_UNSUPPORTED[key]}", *path, key)
    extra = set(body) - allowed
    if extra:
        raise _Problem(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))} ({_SUPPORTED})", *path)


def _action(body: dict[str, Any], where: str, *path: str | int) -> tuple[str | None, dict[str, Any]]:
    action = body.get("action")
    if action is None:
        return None, {}
    if not isinstance(action, str) or not action.strip():
        raise _Problem(f"{where}: 'action' must name an action", *path, "action")
    if action.strip().startswith(("<%", "{{")):
        raise _Problem(f"{where}: an action name given by an expression is not supported; name the action",
                       *path, "action")
    ref, inline = _command(action.strip(), where, *path, "action")
    if ref.startswith("std.") and ref not in BUILTIN_ACTIONS:
        raise _Problem(f"{where}: Mistral's action '{ref}' is not supported (std.noop, std.echo and std.fail are; "
                       "use a StackStorm action such as core.http or core.remote instead)", *path, "action")
    if "." not in ref:
        raise _Problem(f"{where}: action '{ref}' is not an action ref (<pack>.<action>)", *path, "action")
    return ref, inline


def _merged(own: dict[str, Any], defaults: dict[str, Any], name: str) -> dict[str, Any]:
    """A task's body with `task-defaults` filled in; a default transition never targets the task itself."""
    body = dict(own)
    for key, value in defaults.items():
        if key in body:
            continue
        if key in _TRANSITIONS:
            entries = value if isinstance(value, list) else [value]
            value = [e for e in entries if (next(iter(e)) if isinstance(e, dict) else e) != name]
        body[key] = value
    return body


def _task(name: str, own: Any, defaults: dict[str, Any]) -> TaskSpec:
    where, path = f"task '{name}'", ("tasks", name)
    if own is None:
        own = {}
    if not isinstance(own, dict):
        raise _Problem(f"{where}: must be a mapping", *path)
    _check_keys(own, _TASK_KEYS, where, *path)
    body = _merged(own, defaults, name)
    checked = {k: v for k, v in body.items() if k not in _TRANSITIONS}
    for problem in syntax_errors(checked):
        raise _Problem(f"{where}: expression syntax error: {problem}", *path)
    action, inline = _action(body, where, *path)
    task_input = body.get("input")
    if task_input is not None and not isinstance(task_input, dict | str):
        raise _Problem(f"{where}: 'input' must be a mapping (or an expression giving one)", *path, "input")
    if inline:  # `input` wins over inline pairs; an `input` expression is merged when evaluated
        if isinstance(task_input, str):
            task_input = {"__inline__": inline, "__input__": task_input}
        else:
            task_input = {**inline, **(task_input or {})}
    for key in ("publish", "publish-on-error"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise _Problem(f"{where}: '{key}' must be a mapping of names to values", *path, key)
    transitions = {}
    for key in _TRANSITIONS:
        transitions[key] = _transitions(body.get(key), f"{where}: '{key}'", *path, key)
        for problem in syntax_errors([t.condition for t in transitions[key]] + [t.params for t in transitions[key]]):
            raise _Problem(f"{where}: '{key}': expression syntax error: {problem}", *path, key)
    join = body.get("join")
    if join is not None and join not in ("all", "one") and not (isinstance(join, int) and join > 0):
        raise _Problem(f"{where}: 'join' must be 'all', 'one' or a positive count", *path, "join")
    items = _with_items(body["with-items"], where, *path, "with-items") if "with-items" in body else []
    return TaskSpec(name, action, task_input, body.get("publish") or {}, body.get("publish-on-error") or {},
                    transitions, items, body.get("concurrency"), _retry(body.get("retry"), where, *path, "retry"),
                    body.get("wait-before"), body.get("wait-after"), body.get("pause-before"), body.get("fail-on"),
                    1 if join == "one" else join)


def _pick_workflow(data: Any) -> tuple[str, Any, tuple[str | int, ...]]:
    """The one workflow of a workflow file or of a single-workflow workbook."""
    if not isinstance(data, dict):
        raise _Problem("a Mistral workflow file must be a mapping with version: '2.0' and one workflow")
    if str(data.get("version")) not in _VERSION_NAMES:
        raise _Problem("'version' must be '2.0' (Mistral v2)", "version")
    if "workflows" in data or "actions" in data:  # a workbook
        if data.get("actions"):
            raise _Problem("workbook ad-hoc 'actions' are not supported; use StackStorm actions", "actions")
        workflows = data.get("workflows")
        if not isinstance(workflows, dict) or len(workflows) != 1:
            raise _Problem("a workbook must hold exactly one workflow here (sub-workflows are separate actions)",
                           "workflows")
        name, body = next(iter(workflows.items()))
        return str(name), body, ("workflows", name)
    names = [key for key in data if key != "version"]
    if len(names) != 1:
        found = ", ".join(map(str, names)) or "none"
        raise _Problem(f"the file must hold exactly one workflow next to 'version' (found: {found}); one workflow "
                       "per file is supported: make each sub-workflow an action of its own")
    return str(names[0]), data[names[0]], (names[0],)


def _input_names(value: Any, *path: str | int) -> list[tuple[str, Any, bool]]:
    found = []
    for entry in value or []:
        if isinstance(entry, str):
            found.append((entry, None, False))
        elif isinstance(entry, dict) and len(entry) == 1:
            name, default = next(iter(entry.items()))
            found.append((str(name), default, True))
        else:
            raise _Problem(f"'input' entries must be names or one-key mappings 'name: default', not {entry!r}",
                           *path, "input")
    return found


def _graph(tasks: dict[str, TaskSpec], path: tuple[str | int, ...]) -> tuple[list[str], dict[str, set[str]]]:
    """Check every target exists, find the start tasks, and refuse unreachable tasks and closed cycles."""
    inbound: dict[str, set[str]] = {n: set() for n in tasks}
    edges: dict[str, list[str]] = {n: [] for n in tasks}
    for task in tasks.values():
        for key, transitions in task.transitions.items():
            for transition in transitions:
                if transition.target in tasks:
                    inbound[transition.target].add(task.name)
                    edges[task.name].append(transition.target)
                elif transition.target not in ENGINE_COMMANDS:
                    commands = ", ".join(sorted(ENGINE_COMMANDS))
                    raise _Problem(f"task '{task.name}': '{key}' names unknown task '{transition.target}' "
                                   f"(tasks: {', '.join(tasks)}; engine commands: {commands})",
                                   *path, "tasks", task.name, key)
    starts = [n for n in tasks if not inbound[n]]
    if not starts:
        raise _Problem("no task can start: every task is the target of a transition (a cycle with no entry)",
                       *path, "tasks")
    reached = graph.reachable(starts, edges)
    for name in tasks:
        if name not in reached:
            raise _Problem(f"task '{name}': unreachable from the start tasks ({', '.join(starts)})",
                           *path, "tasks", name)

    def always(task: TaskSpec, key: str) -> bool:
        return any(t.condition is None and t.target in tasks for t in task.transitions[key])

    can_stop = {n: not (always(t, "on-complete") or (always(t, "on-success") and always(t, "on-error")))
                for n, t in tasks.items()}
    for cycle in graph.closed_cycles(list(tasks), edges, can_stop):
        raise _Problem(f"task '{cycle[0]}': cycle {' -> '.join(cycle)} has no exit (every task in it moves on "
                       "unconditionally, whatever its outcome)", *path, "tasks", cycle[0])
    return starts, inbound


def _workflow(name: str, body: Any, path: tuple[str | int, ...], file: str) -> WorkflowSpec:
    if not isinstance(body, dict):
        raise _Problem(f"workflow '{name}' must be a mapping with 'tasks'", *path)
    if body.get("type", "direct") == "reverse":
        raise _Problem(f"workflow '{name}': reverse workflows (type: reverse) are not supported; only direct "
                       "workflows are (type: direct, the default)", *path, "type")
    if body.get("type", "direct") != "direct":
        raise _Problem(f"workflow '{name}': 'type' must be 'direct'", *path, "type")
    _check_keys(body, _WORKFLOW_KEYS, f"workflow '{name}'", *path)
    defaults = body.get("task-defaults") or {}
    if not isinstance(defaults, dict):
        raise _Problem("'task-defaults' must be a mapping", *path, "task-defaults")
    _check_keys(defaults, _DEFAULT_KEYS, "task-defaults", *path, "task-defaults")
    for key in ("vars", "output", "output-on-error"):
        for problem in syntax_errors(body.get(key)):
            raise _Problem(f"{key}: expression syntax error: {problem}", *path, key)
    variables = body.get("vars") or {}
    if not isinstance(variables, dict):
        raise _Problem("'vars' must be a mapping", *path, "vars")
    tasks_data = body.get("tasks")
    if not isinstance(tasks_data, dict) or not tasks_data:
        raise _Problem(f"workflow '{name}': 'tasks' must be a non-empty mapping of task names to tasks",
                       *path, "tasks")
    tasks = {}
    for task_name, task_body in tasks_data.items():
        try:
            tasks[str(task_name)] = _task(str(task_name), task_body, defaults)
        except _Problem as problem:
            raise _Problem(str(problem), *path, *problem.path) from problem
    starts, inbound = _graph(tasks, path)
    return WorkflowSpec(file, name, _input_names(body.get("input"), *path), variables, body.get("output"),
                        body.get("output-on-error"), tasks, starts, inbound)


def parse(data: Any, lines: LineMap, file: str) -> WorkflowSpec:
    """Build and check the spec; the first problem raises `ContentInvalid` naming file, task and reason."""
    try:
        name, body, path = _pick_workflow(data)
        return _workflow(name, body, path, file)
    except _Problem as problem:
        raise ContentInvalid(ContentError(file, lines.line(*problem.path), str(problem))) from problem


# -- expressions ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _mistral_text(text: str, current: str) -> str:
    """Mistral's expression names in the shared evaluator's terms: `task()` is the current task,
    `env()` and `execution()` read the context (as Mistral's do), Jinja's `_` is the context.
    Quoted text inside an expression is left as written."""

    def code(part: str, jinja: bool) -> str:
        part = _TASK_NOW.sub(f"task({json.dumps(current)})", part)
        part = _ENV.sub("ctx('__env')", part)
        part = _EXECUTION.sub("ctx('__execution')", part)
        return _JINJA_CONTEXT.sub("ctx()", part) if jinja else part

    def block(match: re.Match[str]) -> str:
        jinja = not match.group(0).startswith("<%")
        return "".join(piece if piece[:1] in "'\"" else code(piece, jinja)
                       for piece in _QUOTED.split(match.group(0)) if piece)

    return _BLOCKS.sub(block, text)


def _mistral(value: Any, current: str) -> Any:
    if isinstance(value, str):
        return _mistral_text(value, current) if ("<%" in value or "{" in value) else value
    if isinstance(value, dict):
        return {_mistral(k, current): _mistral(v, current) for k, v in value.items()}
    if isinstance(value, list):
        return [_mistral(v, current) for v in value]
    return value


def _merge(*contexts: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for context in contexts:
        merged.update(context)
    return merged


def _state(status: str) -> str:
    if status == "succeeded":
        return "SUCCESS"
    if status == "canceled":
        return "CANCELLED"
    return "ERROR" if status in FAILED else "RUNNING"


# -- the conductor -------------------------------------------------------------------------------------

@dataclass
class _Run:
    """One occurrence of a task: its inbound (branch) context, attempt, and items' progress."""

    task: TaskSpec
    occurrence: int
    ctx: dict[str, Any]
    record: dict[str, Any]
    attempt: int = 0
    items: dict[str, list[Any]] | None = None
    size: int = 1
    results: list[Any] = field(default_factory=list)
    statuses: list[str | None] = field(default_factory=list)
    next_item: int = 0
    running: int = 0
    concurrency: int = 0
    failed: bool = False
    #: An `on-error` clause of this (failed) run applied: its error is handled (Mistral's all_errors_handled).
    handled: bool = False
    delay: float = 0.0
    builtin: dict[int, tuple[str, Any]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"{self.task.name}.{self.occurrence}.{self.attempt}"

    def reset(self) -> None:
        self.results, self.statuses = [None] * self.size, [None] * self.size
        self.next_item, self.running, self.failed = 0, 0, False


@dataclass
class _Join:
    """A join task's progress: branches that arrived (their contexts), inbound tasks that will not."""

    arrived: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocked: set[str] = field(default_factory=set)
    fired: bool = False


class MistralConductor:
    """Conducts one Mistral direct workflow; the host feeds it outcomes in the order they happened."""

    def __init__(self, spec: WorkflowSpec, parameters: dict[str, Any], env: dict[str, Any],
                 execution: dict[str, Any], st2kv: Any = None,
                 shell_command: Callable[[str], bool] = lambda ref: False,
                 pause: Callable[[Callable[[], bool]], None] | None = None) -> None:
        self.spec = spec
        self.parameters = parameters
        self.env = env
        self.execution = execution
        self.st2kv = st2kv
        #: Whether an action's `cmd` is shell text (a `*-shell-cmd` runner): its values must be quoted.
        self.shell_command = shell_command
        #: Asks the host to pause after this step, if the check still holds then (see `DeferredPause`).
        self.request_pause = pause
        self.base: dict[str, Any] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.occurrences: Counter[str] = Counter()
        self.runs: dict[str, tuple[_Run, int]] = {}
        self.markers: dict[str, tuple[_Run, Callable[[], list[TaskCall]]]] = {}
        self.active: dict[int, _Run] = {}  # by id: the runs not through yet
        self.joins: dict[str, _Join] = {}
        self.ends: list[dict[str, Any]] = []
        self.unhandled: list[str] = []
        self.ended: str | None = None  # "succeeded"/"failed" by an engine command or a workflow error
        self.state_info: str | None = None
        self.canceled = False
        self.holding = False  # a pause this conductor asked for is under way: not finished yet

    # -- evaluation ---------------------------------------------------------------------------------
    def _eval(self, value: Any, ctx: dict[str, Any], current: str) -> Any:
        view = {**ctx, "__env": self.env, "__execution": self.execution}
        return evaluate(_mistral(value, current), Scope(view, tasks=self.records.get, st2kv=self.st2kv))

    def _number(self, value: Any, ctx: dict[str, Any], current: str) -> float:
        return float(self._eval(value, ctx, current) or 0) if value is not None else 0.0

    def _end(self, status: str, message: str | None) -> None:
        if self.ended is None:
            self.ended = status
            self.state_info = message

    # -- starting -----------------------------------------------------------------------------------
    def start(self) -> list[TaskCall]:
        ctx: dict[str, Any] = {}
        for name, default, _ in self.spec.input:
            value = self.parameters.get(name)
            ctx[name] = value if value is not None else default
        for name, value in self.parameters.items():
            ctx.setdefault(name, value)
        try:
            for name, value in self.spec.vars.items():
                ctx[name] = self._eval(value, ctx, "")
        except ExpressionError as exc:
            self._end("failed", f"Failed to evaluate the workflow's vars: {exc}")
            return []
        self.base = ctx
        self.execution = {**self.execution, "input": {n: ctx.get(n) for n, _, _ in self.spec.input}}
        calls: list[TaskCall] = []
        for name in self.spec.starts:
            calls += self._schedule(name, dict(ctx))
        return calls + self._settle()

    def _schedule(self, name: str, ctx: dict[str, Any]) -> list[TaskCall]:
        if self.ended or self.canceled:
            return []
        task = self.spec.tasks[name]
        self.occurrences[name] += 1
        record = {"id": f"{name}.{self.occurrences[name]}", "name": name,
                  "workflow_execution_id": self.execution.get("id"), "workflow_name": self.spec.name,
                  "state": "RUNNING", "state_info": None, "input": None, "result": None, "published": {}}
        run = _Run(task, self.occurrences[name], ctx, record)
        self.records[name] = record
        self.active[id(run)] = run
        try:
            pause = task.pause_before is not None and bool(self._eval(task.pause_before, ctx, name))
        except ExpressionError as exc:
            return self._task_done(run, "failed", None, str(exc))
        if pause:
            return self._marker(f"{run.prefix}~pause-before", run, lambda: self._begin(run), pause=True)
        return self._begin(run)

    def _marker(self, key: str, run: _Run, then: Callable[[], list[TaskCall]], *, pause: bool = False,
                delay: float = 0.0) -> list[TaskCall]:
        """A `core.noop` child standing for a pause or a wait, so a replay knows it already happened."""
        self.markers[key] = (run, then)
        if pause and self.request_pause is not None:
            def still_wanted() -> bool:
                self.holding = key in self.markers
                return self.holding

            self.request_pause(still_wanted)
        kind = "pause" if pause else "wait-after"
        return [TaskCall(key, run.task.name, MARKER_ACTION, {}, {"mistral": self._child(run, None, kind)}, delay)]

    def _child(self, run: _Run, index: int | None, marker: str | None = None) -> dict[str, Any]:
        context: dict[str, Any] = {"workflow_name": self.spec.name, "task_name": run.task.name,
                                   "task_id": run.record["id"], "execution_id": self.execution.get("id")}
        if index is not None and run.items is not None:
            context["item_id"] = index
        if marker:
            context["marker"] = marker
        return context

    def _begin(self, run: _Run) -> list[TaskCall]:
        task = run.task
        try:
            run.delay = self._number(task.wait_before, run.ctx, task.name)
            if task.items:
                lists = {name: self._eval(value, run.ctx, task.name) for name, value in task.items}
                run.items, run.size = self._check_items(lists)
                run.concurrency = int(self._number(task.concurrency, run.ctx, task.name))
        except (ExpressionError, TypeError, ValueError) as exc:
            return self._task_done(run, "failed", None, str(exc))
        run.reset()
        if run.size == 0:
            return self._attempt_done(run)
        calls = self._next_items(run)
        run.delay = 0.0  # wait-before delays the task's start, not items that wait for a free slot
        return calls

    @staticmethod
    def _check_items(lists: dict[str, Any]) -> tuple[dict[str, list[Any]], int]:
        for name, value in lists.items():
            if not isinstance(value, list | tuple):
                raise ValueError(f"with-items: '{name}' is not a list: {value!r}")
        sizes = {len(v) for v in lists.values()}
        if len(sizes) > 1:
            raise ValueError(f"with-items: the lists must have the same length, not {sorted(sizes)}")
        return {n: list(v) for n, v in lists.items()}, sizes.pop()

    # -- calls --------------------------------------------------------------------------------------
    def _item_ctx(self, run: _Run, index: int) -> dict[str, Any]:
        if run.items is None:
            return run.ctx
        return {**run.ctx, **{name: values[index] for name, values in run.items.items()}}

    def _parameters(self, task: TaskSpec, ctx: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The child's action and its evaluated input; a shell `cmd` keeps values out of the shell text."""
        raw = task.input if task.input is not None else {}
        if isinstance(raw, dict) and "__input__" in raw:  # inline pairs under an input expression
            raw = {**raw["__inline__"], **(self._eval(raw["__input__"], ctx, task.name) or {})}
        ref = str(task.action)
        if ref == ST2_ACTION:
            raw = self._eval(raw, ctx, task.name) if isinstance(raw, str) else dict(raw or {})
            ref = str(self._eval(raw.get("ref"), ctx, task.name))
            raw = raw.get("parameters") or {}
        if isinstance(raw, str):
            raw = self._eval(raw, ctx, task.name)
        if not isinstance(raw, dict):
            raise ValueError(f"the input of task '{task.name}' is not a mapping: {raw!r}")
        if not (isinstance(raw.get("cmd"), str) and self.shell_command(ref)):
            return ref, self._eval(raw, ctx, task.name)
        parameters = self._eval({k: v for k, v in raw.items() if k != "cmd"}, ctx, task.name)
        view = {**ctx, "__env": self.env, "__execution": self.execution}
        text, variables = evaluate_shell(_mistral(raw["cmd"], task.name),
                                         Scope(view, tasks=self.records.get, st2kv=self.st2kv))
        parameters["cmd"] = text
        if variables:
            env = parameters.get("env")
            parameters["env"] = {**(env if isinstance(env, dict) else {}), **variables}
        return ref, parameters

    def _call(self, run: _Run, index: int) -> TaskCall | tuple[str, Any]:
        """A child for one item (or the task), or at once the outcome of a built-in action / a failure."""
        task = run.task
        ctx = self._item_ctx(run, index)
        try:
            ref, parameters = self._parameters(task, ctx)
            delay = run.delay if run.attempt == 0 else (
                self._number(task.retry.delay, ctx, task.name) if task.retry else 0.0)
        except (ExpressionError, TypeError, ValueError) as exc:
            return "failed", {"error": str(exc)}
        key = run.prefix if run.items is None else f"{run.prefix}[{index}]"
        if ref in BUILTIN_ACTIONS:
            outcome = self._builtin(ref, parameters)
            if delay <= 0:
                return outcome
            run.builtin[index] = outcome
            ref, parameters = MARKER_ACTION, {}
        self.runs[key] = (run, index)
        return TaskCall(key, task.name, ref, parameters, {"mistral": self._child(run, index)}, delay)

    @staticmethod
    def _builtin(ref: str, parameters: dict[str, Any]) -> tuple[str, Any]:
        if ref == "std.echo":
            return "succeeded", parameters.get("output")
        if ref == "std.fail":
            return "failed", parameters.get("error_data")
        return "succeeded", None

    @property
    def _stopped(self) -> bool:
        """Canceled, or ended by `fail`/`succeed`: nothing new starts."""
        return self.canceled or self.ended is not None

    def _next_items(self, run: _Run) -> list[TaskCall]:
        """Start the items a free slot allows. A failed item does not stop the others (Mistral's
        WithItemsTask schedules on whatever earlier items did): the attempt is over once every item
        was started and none runs, or sooner when the workflow stops."""
        calls: list[TaskCall] = []
        while run.next_item < run.size and not self._stopped:
            if run.concurrency and run.running >= run.concurrency:
                break
            index = run.next_item
            run.next_item += 1
            made = self._call(run, index)
            if isinstance(made, TaskCall):
                run.running += 1
                calls.append(made)
            else:
                self._item_done(run, index, *made)
        if run.running == 0 and (run.next_item >= run.size or self._stopped):
            calls += self._attempt_done(run)
        return calls

    def _item_done(self, run: _Run, index: int, status: str, result: Any) -> None:
        run.results[index] = result
        run.statuses[index] = status
        if status != "succeeded":
            run.failed = True
        if status == "canceled":
            self.canceled = True

    # -- outcomes -----------------------------------------------------------------------------------
    def on_done(self, key: str, status: str, result: Any, execution_id: str | None) -> list[TaskCall]:
        if key in self.markers:
            run, then = self.markers.pop(key)
            if status == "canceled":
                self.canceled = True
            if self.canceled:
                self.active.pop(id(run), None)
                calls = []
            else:
                calls = then()
        else:
            calls = self._outcome(key, status, result, execution_id)
        return calls + self._settle()

    def _outcome(self, key: str, status: str, result: Any, execution_id: str | None) -> list[TaskCall]:
        found = self.runs.pop(key, None)
        if found is None:
            return []
        run, index = found
        if execution_id:
            run.record["id"] = execution_id
        builtin = run.builtin.pop(index, None)
        if builtin is not None and status == "succeeded":  # the wait before a built-in action is over
            status, result = builtin
        run.running -= 1
        self._item_done(run, index, status, result)
        return self._next_items(run)

    def _attempt_done(self, run: _Run) -> list[TaskCall]:
        """Every item of this attempt ended: fail-on, then retry or finish the task."""
        status = "canceled" if self.canceled else ("failed" if run.failed else "succeeded")
        if run.items is None:
            result = run.results[0] if run.results else None
            for item_status in run.statuses:
                status = item_status or status
        else:
            result = list(run.results)
        info = None
        if status == "succeeded" and run.task.fail_on is not None:
            try:
                if self._eval(run.task.fail_on, self._outbound(run, status, result), run.task.name):
                    status, info = "failed", "Failed by 'fail-on' policy"
            except ExpressionError as exc:
                status, info = "failed", str(exc)
        if status != "canceled" and self._retrying(run, status, result):
            run.attempt += 1
            run.reset()
            return self._next_items(run)
        return self._task_done(run, status, result, info)

    def _outbound(self, run: _Run, status: str, result: Any) -> dict[str, Any]:
        """The task's context after it published (`task()` sees its result meanwhile)."""
        run.record.update({"state": _state(status), "result": result})
        publish = run.task.publish if status == "succeeded" else run.task.publish_on_error
        published = {name: self._eval(value, run.ctx, run.task.name) for name, value in publish.items()}
        run.record["published"] = published
        return {**run.ctx, **published}

    def _retrying(self, run: _Run, status: str, result: Any) -> bool:
        retry = run.task.retry
        if retry is None or self.ended:
            return False
        name = run.task.name
        try:
            ctx = self._outbound(run, status, result)
            if run.attempt >= int(self._eval(retry.count, ctx, name) or 0):
                return False
            if retry.continue_on is not None:
                return bool(self._eval(retry.continue_on, ctx, name))
            if status == "succeeded":
                return False
            return not (retry.break_on is not None and self._eval(retry.break_on, ctx, name))
        except (ExpressionError, TypeError, ValueError):
            return False  # the task finishes; its own publish reports the expression

    def _task_done(self, run: _Run, status: str, result: Any, info: str | None = None) -> list[TaskCall]:
        task = run.task
        try:
            outbound = self._outbound(run, status, result)
        except ExpressionError as exc:
            status, info = "failed", f"Failed to publish: {exc}"
            run.record["state"] = "ERROR"
            outbound = dict(run.ctx)
        if status != "succeeded" and info is None and isinstance(result, dict) and result.get("error"):
            info = str(result["error"])
        run.record["state_info"] = info
        self.log.append(run.record)
        if status == "canceled" or self.canceled:
            self.canceled = True
            self.active.pop(id(run), None)
            return []
        try:
            wait = self._number(task.wait_after, outbound, task.name)
        except (ExpressionError, TypeError, ValueError) as exc:
            wait, run.record["state"], run.record["state_info"] = 0.0, "ERROR", str(exc)
        if wait > 0:
            return self._marker(f"{run.prefix}~wait-after", run, lambda: self._transitions(run, outbound),
                                delay=wait)
        return self._transitions(run, outbound)

    # -- transitions --------------------------------------------------------------------------------
    def _clauses(self, run: _Run) -> list[Transition]:
        state = run.record["state"]
        task = run.task
        clauses = list(task.transitions["on-error"] if state == "ERROR" else
                       task.transitions["on-success"] if state == "SUCCESS" else [])
        if state in ("SUCCESS", "ERROR"):
            clauses += task.transitions["on-complete"]
        return clauses

    def _transitions(self, run: _Run, outbound: dict[str, Any]) -> list[TaskCall]:
        if self.canceled:
            self.active.pop(id(run), None)
            return []
        return self._follow(run, outbound, self._clauses(run), 0, set())

    def _follow(self, run: _Run, outbound: dict[str, Any], clauses: list[Transition], start: int,
                triggered: set[str]) -> list[TaskCall]:
        """Process the clauses from `start` in order; `pause` holds the rest until the workflow resumes.
        A failed task's error is handled only if one of its on-error clauses applied (Mistral's
        all_errors_handled): on-complete runs but does not handle it."""
        name = run.task.name
        failed = run.record["state"] == "ERROR"
        errors = len(run.task.transitions["on-error"]) if failed else 0  # the first clauses are on-error's
        calls: list[TaskCall] = []
        for position in range(start, len(clauses)):
            if self.ended or self.canceled:
                break
            clause = clauses[position]
            try:
                if clause.condition is not None and not self._eval(clause.condition, outbound, name):
                    continue
                params = self._eval(clause.params, outbound, name)
            except ExpressionError as exc:
                self._end("failed", f"Failed to evaluate a transition of task '{name}': {exc}")
                break
            run.handled = run.handled or position < errors
            if clause.target in self.spec.tasks:
                triggered.add(clause.target)
                calls += self._arrive(clause.target, name, outbound)
            elif clause.target == "pause":
                return calls + self._marker(f"{run.prefix}~pause{position}", run,
                                            lambda p=position: self._follow(run, outbound, clauses, p + 1, triggered),
                                            pause=True)
            elif clause.target in ("fail", "succeed"):
                message = params.get("msg")
                if message is None and clause.target == "fail":
                    message = f'Failed by the "fail" command of task "{name}"'
                self._end("failed" if clause.target == "fail" else "succeeded",
                          str(message) if message is not None else None)
        if failed and not run.handled:
            self.unhandled.append(name)
        return calls + self._leave(run, outbound, triggered)

    def _leave(self, run: _Run, outbound: dict[str, Any], triggered: set[str]) -> list[TaskCall]:
        """The task is through: it is an end of the workflow if it led nowhere; joins it did not reach
        learn they will not hear from it."""
        self.active.pop(id(run), None)
        if not triggered:
            self.ends.append(outbound)
        calls: list[TaskCall] = []
        for target in {t.target for ts in run.task.transitions.values() for t in ts}:
            task = self.spec.tasks.get(target)
            if task is None or task.join is None or target in triggered:
                continue
            join = self.joins.setdefault(target, _Join())
            join.blocked.add(run.task.name)
            calls += self._check_join(target, join)
        return calls

    def _arrive(self, target: str, source: str, outbound: dict[str, Any]) -> list[TaskCall]:
        if self.spec.tasks[target].join is None:
            return self._schedule(target, dict(outbound))
        join = self.joins.setdefault(target, _Join())
        if join.fired:
            return []
        join.arrived[source] = outbound
        join.blocked.discard(source)
        needed = len(self.spec.inbound[target]) if self.spec.tasks[target].join == "all" \
            else int(self.spec.tasks[target].join or 1)
        if len(join.arrived) >= needed:
            join.fired = True
            return self._schedule(target, _merge(*join.arrived.values()))
        return []

    def _check_join(self, target: str, join: _Join, *, final: bool = False) -> list[TaskCall]:
        """A join that can no longer be reached fails (Mistral's "Failed by tasks")."""
        if join.fired:
            return []
        total = len(self.spec.inbound[target])
        rule = self.spec.tasks[target].join
        needed = total if rule == "all" else int(rule or 1)
        blocked = sorted(join.blocked - set(join.arrived))
        if not final and len(blocked) <= total - needed:
            return []
        join.fired = True
        self.occurrences[target] += 1
        record = {"id": f"{target}.{self.occurrences[target]}", "name": target,
                  "workflow_execution_id": self.execution.get("id"), "workflow_name": self.spec.name,
                  "state": "RUNNING", "state_info": None, "input": None, "result": None, "published": {}}
        self.records[target] = record
        run = _Run(self.spec.tasks[target], self.occurrences[target], _merge(*join.arrived.values()), record)
        self.active[id(run)] = run
        waiting = blocked or sorted(self.spec.inbound[target] - set(join.arrived))
        return self._task_done(run, "failed", None, f"Failed by tasks: {waiting}")

    def _settle(self) -> list[TaskCall]:
        """Nothing runs any more: joins still waiting will never fire; they fail now."""
        if self.active or self.markers or self.ended or self.canceled:
            return []
        calls: list[TaskCall] = []
        for target, join in list(self.joins.items()):
            if not join.fired and join.arrived:
                calls += self._check_join(target, join, final=True)
        return calls

    # -- the end ------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.active and not self.markers and not self.holding

    def _final_context(self) -> dict[str, Any]:
        return _merge(self.base, *self.ends)

    def _output(self, spec: Any, ctx: dict[str, Any]) -> dict[str, Any]:
        if spec is None:
            return {k: v for k, v in ctx.items() if not str(k).startswith("__")}
        output = self._eval(spec, ctx, "")
        return output if isinstance(output, dict) else {"output": output}

    def _failure_message(self) -> str:
        if self.state_info:
            return self.state_info
        failed = [r for r in self.log if r["state"] == "ERROR" and r["name"] in self.unhandled]
        lines = [f"Failure caused by error in tasks: {', '.join(sorted({r['name'] for r in failed}))}", ""]
        lines += [f"  {r['name']} [task_ex_id={r['id']}] -> {r['state_info'] or r['result']}" for r in failed]
        return "\n".join(lines)

    def outcome(self) -> Outcome:
        if self.canceled:
            cancelled = sorted({r["name"] for r in self.log if r["state"] == "CANCELLED"})
            return Outcome("canceled", self._result({}, "CANCELLED", f"Cancelled tasks: {', '.join(cancelled)}"))
        ctx = self._final_context()
        if self.ended == "succeeded" or (self.ended is None and not self.unhandled):
            try:
                return Outcome("succeeded", self._result(self._output(self.spec.output, ctx), "SUCCESS",
                                                         self.state_info))
            except ExpressionError as exc:
                self._end("failed", f"Failed to evaluate the workflow's output: {exc}")
                self.ended = "failed"
        message = self._failure_message()
        try:
            extra = self._output(self.spec.output_on_error, ctx) if self.spec.output_on_error is not None else {}
        except ExpressionError as exc:
            extra, message = {}, f"{message}\nFailed to evaluate output-on-error: {exc}"
        return Outcome("failed", self._result({"result": message, **extra}, "ERROR", message))

    def _result(self, output: dict[str, Any], state: str, info: str | None) -> dict[str, Any]:
        return {**output, "extra": {"state": state, "state_info": info}, "tasks": list(self.log)}

    def snapshot(self) -> Any:
        return self._result({}, "PAUSED", None)


# -- building -----------------------------------------------------------------------------------------

class DeferredPause:
    """The conductor's pause requests (`pause-before`, the `pause` command), carried out by the host
    between its steps (`fire`), on the event loop. A step runs on a render thread, where neither the
    host's pause (its flow's queue, the loop's tasks) nor the conductor (which the next step may be
    using) can be touched from a callback; and by then the marker call has been handed to the host (so
    it is requested), and a replay has fed the marker's stored outcome (so a pause that already
    happened is not asked for again)."""

    def __init__(self, pause: Callable[[str], bool], execution_id: str) -> None:
        self.pause = pause
        self.execution_id = execution_id
        #: The checks of the pauses asked since the last `fire`: each says whether its pause is still wanted.
        self.asked: list[Callable[[], bool]] = []

    def __call__(self, still_wanted: Callable[[], bool]) -> None:
        self.asked.append(still_wanted)

    def fire(self) -> None:
        """Pause the workflow for each pause asked that is still wanted (on the loop, no step running)."""
        asked, self.asked = self.asked, []
        for still_wanted in asked:
            if still_wanted():
                self.pause(self.execution_id)


def build(spec: WorkflowSpec, request: RunRequest, st2kv: Any, shell_command: Callable[[str], bool],
          pause: Callable[[str], bool]) -> MistralConductor:
    """A conductor for one run: inputs are the action's parameters over the runner's `context`,
    `env()` is what StackStorm's Mistral plugin passed (st2_execution_id, api url, st2 context)."""
    if request.runner_parameters.get("task"):
        raise ContentInvalid(ContentError(spec.file, None, "the 'task' runner parameter is for reverse workflows, "
                                                           "which are not supported (direct workflows only)"))
    wanted = request.runner_parameters.get("workflow")
    if wanted and str(wanted).rsplit(".", 1)[-1] != spec.name.rsplit(".", 1)[-1]:
        raise ContentInvalid(ContentError(spec.file, None, f"the file holds workflow '{spec.name}', not '{wanted}'"))
    context = request.context
    execution_id = request.execution_id
    parent = {"execution_id": execution_id, "user": context.get("user"), "pack": request.action.pack}
    for name in ("api_user", "source_channel"):
        if name in context:
            parent[name] = context[name]
    env = {"st2_execution_id": execution_id, "st2_liveaction_id": execution_id,
           "st2_action_api_url": request.api_url,
           "__actions": {ST2_ACTION: {"st2_context": {"api_url": request.api_url, "parent": parent,
                                                       "skip_notify": request.runner_parameters.get("skip_notify")
                                                       or []}}}}
    execution = {"id": execution_id, "name": spec.name, "params": {}, "input": {},
                 "root_execution_id": (context.get("parent") or {}).get("root_id", execution_id)}
    extra = request.runner_parameters.get("context") or {}
    parameters = {**(extra if isinstance(extra, dict) else {}), **request.action_parameters}
    return MistralConductor(spec, parameters, env, execution, st2kv, shell_command,
                            DeferredPause(pause, execution_id))
