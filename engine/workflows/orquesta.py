"""Orquesta workflows (spec §7.2): the spec model, its checks at load, and the conductor.

The conductor keeps one workflow context (inputs, vars and what transitions publish) and a
record per task; it never runs anything itself. Fail-fast: once a task fails without a matching
transition (or a transition says `fail`), nothing new starts and the workflow fails when the
running branches end. A task with `join` starts once all (or N) inbound branches arrived;
without it, every inbound transition starts the task again.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.workflows import graph
from engine.workflows.expressions import ExpressionError, Scope, evaluate, evaluate_shell, syntax_errors
from engine.workflows.model import FAILED, Outcome, TaskCall
from engine.yamlfile import ContentError, ContentInvalid, LineMap

ENGINE_COMMANDS = frozenset({"continue", "fail", "noop", "retry"})
_INLINE_PAIR = re.compile(r"""([\w]+)=(<%.*?%>|\{\{.*?\}\}|"[^"]*"|'[^']*'|\S+)""")
_WITH_NAMES = re.compile(r"^\s*([\w]+(?:\s*,\s*[\w]+)*)\s+in\s+(.+)$", re.DOTALL)
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
    action: str | None
    input: dict[str, Any]
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


def _inline(text: str) -> dict[str, Any]:
    pairs = {}
    for key, value in _INLINE_PAIR.findall(text):
        if value[:1] in "\"'" and value[-1:] == value[:1]:
            value = value[1:-1]
        pairs[key] = value
    return pairs


def _pairs(value: Any, what: str) -> list[tuple[str, Any]]:
    """`[{k: v}, ...]`, `{k: v}` or `"k=v k2=v2"` → ordered pairs."""
    if value is None:
        return []
    if isinstance(value, str):
        return list(_inline(value).items())
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, list):
        pairs = []
        for entry in value:
            if isinstance(entry, dict) and len(entry) == 1:
                pairs.extend(entry.items())
            elif isinstance(entry, str):
                pairs.extend(_inline(entry).items()) if "=" in entry else pairs.append((entry, None))
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
        task_input: dict[str, Any] = {}
        if action is not None:
            if not isinstance(action, str) or not action.strip():
                raise fail(f"task '{name}': 'action' must be an action ref", *where, "action")
            ref, _, inline = action.strip().partition(" ")
            action = ref
            task_input.update(_inline(inline))
        if body.get("input") is not None:
            if not isinstance(body["input"], dict):
                raise fail(f"task '{name}': 'input' must be a mapping", *where, "input")
            task_input.update(body["input"])
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
    return WorkflowSpec(file, inputs, variables, output, tasks, starts, inbound)


@dataclass
class _Run:
    """One occurrence of a task: its attempt, and for `with` items their progress."""

    task: TaskSpec
    occurrence: int
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

    @property
    def prefix(self) -> str:
        return f"{self.task.name}.{self.occurrence}.{self.attempt}"


class OrquestaConductor:
    """Conducts one workflow; the host feeds it outcomes in the order they happened."""

    def __init__(self, spec: WorkflowSpec, parameters: dict[str, Any], st2: dict[str, Any],
                 st2kv: Any = None, shell_command: Callable[[str], bool] = lambda ref: False) -> None:
        self.spec = spec
        #: Whether an action's `cmd` is shell text (a `*-shell-cmd` runner): its values must be quoted.
        self.shell_command = shell_command
        self.parameters = parameters
        self.st2kv = st2kv
        self.ctx: dict[str, Any] = {"st2": st2}
        self.errors: list[dict[str, Any]] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.occurrences: Counter[str] = Counter()
        self.arrivals: dict[str, set[str]] = {}
        self.fired: set[str] = set()
        self.runs: dict[str, tuple[_Run, int | None]] = {}
        self.active: set[int] = set()
        self._runs_by_id: dict[int, _Run] = {}
        self.failing = False
        self.canceled = False
        self.output: Any = None

    # -- evaluation ---------------------------------------------------------------------------
    def _scope(self, **kwargs: Any) -> Scope:
        return Scope(self.ctx, tasks=self.records.get, st2kv=self.st2kv, **kwargs)

    def _error(self, message: str, task: str | None = None, **extra: Any) -> None:
        error: dict[str, Any] = {"type": "error", "message": message}
        if task is not None:
            error.update({"task_id": task, "route": 0})
        error.update(extra)
        self.errors.append(error)
        self.failing = True

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
            self._error(str(exc), expression=exc.expression)
            return []
        for name, value in self.parameters.items():
            self.ctx.setdefault(name, value)
        calls: list[TaskCall] = []
        for name in self.spec.starts:
            calls += self._schedule(name)
        return calls

    def _schedule(self, name: str) -> list[TaskCall]:
        if self.failing or self.canceled:
            return []
        task = self.spec.tasks[name]
        self.occurrences[name] += 1
        run = _Run(task, self.occurrences[name])
        self._runs_by_id[id(run)] = run
        self.active.add(id(run))
        self.records[name] = {"task_name": name, "task_id": name, "route": 0, "status": "running", "result": None,
                              "workflow_execution_id": self.ctx["st2"].get("action_execution_id"),
                              "task_execution_id": None}
        if task.action is None:
            return self._complete(run, "succeeded", None)
        if task.items is not None:
            try:
                items = evaluate(task.items, self._scope())
                if isinstance(items, dict) or not hasattr(items, "__iter__") or isinstance(items, str):
                    raise ExpressionError(str(task.items), f"The value of with items is not a list: {items!r}")
                run.items = list(items)
                concurrency = evaluate(task.concurrency, self._scope()) if task.concurrency is not None else 0
                run.concurrency = int(concurrency or 0)
            except (ExpressionError, TypeError, ValueError) as exc:
                self._error(str(exc), name)
                return self._complete(run, "failed", None, transitions=False)
            run.results = [None] * len(run.items)
            run.statuses = [None] * len(run.items)
            if not run.items:
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

    def _input(self, task: Any, scope: Scope) -> Any:
        """A task's input; a shell command's `cmd` keeps its values out of the shell text (they go in
        `env`, as the shell runner does with its own templates), so workflow data never runs as code."""
        raw = task.input
        if not (isinstance(raw, dict) and isinstance(raw.get("cmd"), str) and self.shell_command(str(task.action))):
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
        scope = self._scope(item=item)
        try:
            parameters = self._input(task, scope)
            delay = float(evaluate(task.delay, scope) or 0) if task.delay is not None and run.attempt == 0 else 0.0
            if run.attempt and task.retry and task.retry.get("delay"):
                delay = float(evaluate(task.retry["delay"], scope) or 0)
        except (ExpressionError, TypeError, ValueError) as exc:
            self._error(str(exc), task.name, **({"item_id": index} if index is not None else {}))
            return None
        key = run.prefix if index is None else f"{run.prefix}[{index}]"
        self.runs[key] = (run, index)
        context = {"orquesta": {"task_name": task.name, "task_id": task.name, "task_route": 0,
                                **({"item_id": index} if index is not None else {})}}
        return TaskCall(key, task.name, str(task.action), parameters, context, delay)

    def _next_items(self, run: _Run) -> list[TaskCall]:
        calls = []
        assert run.items is not None
        while run.next_item < len(run.items) and not run.failed and not self.canceled:
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
        if run.running == 0 and (run.failed or run.next_item >= len(run.items) or self.canceled):
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
        if found is None:
            return []
        run, index = found
        if execution_id:
            run.execution_ids.append(execution_id)
            self.records[run.task.name]["task_execution_id"] = execution_id
        if status == "canceled":
            self.canceled = True
        if index is not None:
            run.running -= 1
            run.results[index] = result
            run.statuses[index] = status
            if status != "succeeded":
                run.failed = True
            return self._next_items(run)
        if self._retrying(run, status, result):
            run.attempt += 1
            call = self._call(run, None)
            if call is not None:
                return [call]
        return self._complete(run, status, result)

    def _retrying(self, run: _Run, status: str, result: Any) -> bool:
        """Whether the task's `retry` asks for another attempt after this outcome."""
        retry = run.task.retry
        if not retry or status == "succeeded" or self.canceled or run.attempt >= int(retry.get("count", 0)):
            return False
        try:
            if retry.get("when") is None:
                return status in FAILED
            return bool(evaluate(retry["when"], self._scope(result=result, status=status)))
        except ExpressionError as exc:
            self._error(str(exc), run.task.name)
            return False

    def _complete(self, run: _Run, status: str, result: Any, *, transitions: bool = True) -> list[TaskCall]:
        task = run.task
        self.active.discard(id(run))
        self._runs_by_id.pop(id(run), None)
        self.records[task.name].update({"status": status, "result": result})
        if status == "canceled" or self.canceled:
            return []
        if not transitions:
            return []
        scope = self._scope(result=result, status=status)
        matched = fail = False
        targets: list[str] = []
        for index, transition in enumerate(task.next):
            try:
                when = True if transition.when is None else evaluate(transition.when, scope)
                if not when:
                    continue
                matched = True
                for name, value in transition.publish:
                    self.ctx[name] = evaluate(value, scope)
                    scope.ctx = self.ctx
            except ExpressionError as exc:
                self._error(str(exc), task.name, task_transition_id=f"{index}")
                return []
            for target in transition.do:
                if target == "fail":
                    fail = True
                elif target == "retry":
                    targets.append(task.name)
                elif target not in ("noop", "continue"):
                    targets.append(target)
        if status != "succeeded" and not matched:
            error: dict[str, Any] = {"result": result}
            self._error("Execution failed. See result for details.", task.name, **error)
        calls: list[TaskCall] = []
        for target in targets:
            calls += self._arrive(target, task.name)
        if fail:  # the other tasks of the transition still run; nothing after them does
            self._error(f'Task "{task.name}" ran the "fail" command.', task.name)
        return calls

    def _arrive(self, target: str, source: str) -> list[TaskCall]:
        join = self.spec.tasks[target].join
        if join is None:
            return self._schedule(target)
        if target in self.fired:
            return []
        arrived = self.arrivals.setdefault(target, set())
        arrived.add(source)
        needed = len(self.spec.inbound[target]) if join == "all" else int(join)
        if len(arrived) >= needed:
            self.fired.add(target)
            return self._schedule(target)
        return []

    # -- the end ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not self.active

    def outcome(self) -> Outcome:
        if self.canceled:
            return Outcome("canceled", self.snapshot())
        output: dict[str, Any] = {}
        try:
            for name, value in self.spec.output:
                output[name] = evaluate(value, self._scope())
                self.ctx[name] = output[name] if name not in self.ctx else self.ctx[name]
        except ExpressionError as exc:
            if not self.failing:
                self._error(str(exc), expression=exc.expression)
        status = "failed" if self.failing or self.errors else "succeeded"
        result: dict[str, Any] = {"output": output if self.spec.output else None}
        if self.errors:
            result["errors"] = self.errors
        return Outcome(status, result)

    def snapshot(self) -> Any:
        result: dict[str, Any] = {"output": None}
        if self.errors:
            result["errors"] = self.errors
        return result
