"""ActionChain (spec §7.1): the chain file's checks at load, and its sequential conductor.

Parameters and `publish` render with the house Jinja from the workflow's parameters, earlier
results by task name, the chain's vars, `__results`, `st2kv` and `action_context`, as StackStorm
does. The chain's status is the one implied by the last task it processed. Its result holds each
task's result, as StackStorm's does, but the results of chains nested more than `NESTED_RESULTS`
deep under it are a marker naming their execution (`_bounded`), so a chain that calls itself keeps a
result of bounded size however deep it went.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.actions import notify_problem
from engine.runners.shell_template import render_shell_command
from engine.templates import TemplateRenderError, is_jinja_expression, render_values
from engine.workflows import graph
from engine.workflows.model import FAILED, Outcome, TaskCall
from engine.yamlfile import ContentError, ContentInvalid, LineMap

log = logging.getLogger(__name__)

_TOP_KEYS = {"chain", "default", "vars"}
_SPEC_KEYS = ("name", "ref", "params", "parameters", "on-success", "on-failure", "publish", "notify")
_NODE_KEYS = set(_SPEC_KEYS)


def _near_key(key: Any) -> str | None:
    """The task key `key` reads like misspelt (`parmeters`: parameters, `on_success`: on-success), if any."""
    if not isinstance(key, str):
        return None
    near = difflib.get_close_matches(key.replace("_", "-"), _SPEC_KEYS, n=1, cutoff=0.8)
    return near[0] if near else None


def _keys_said(keys: Any) -> str:
    """Unknown task keys, sorted, each with the key it reads like (`parmeters` (did you mean "parameters"?))."""
    said = []
    for key in sorted(map(str, keys)):
        near = _near_key(key)
        said.append(f'{key} (did you mean "{near}"?)' if near else key)
    return ", ".join(said)


@dataclass
class Node:
    name: str
    ref: str
    parameters: dict[str, Any]
    on_success: str | None
    on_failure: str | None
    publish: dict[str, Any]
    notify: dict[str, Any] | None = None  # the task's own, replacing the chain's for this task
    #: The task as StackStorm hands it to its child in `context.chain` (its runner's `vars(action_node)`:
    #: every node key, underscored, None when absent), so an action written for StackStorm finds it there.
    spec: dict[str, Any] | None = None


@dataclass
class ChainSpec:
    file: str
    nodes: dict[str, Node]
    start: str
    vars: dict[str, Any]


def parse(data: Any, lines: LineMap, file: str) -> ChainSpec:  # noqa: C901 (a check per workflow key (spec §6))
    def fail(reason: str, *path: str | int) -> ContentInvalid:
        return ContentInvalid(ContentError(file, lines.line(*path), reason))

    if not isinstance(data, dict):
        raise fail("an action chain must be a mapping with a 'chain' list")
    extra = set(data) - _TOP_KEYS
    if extra:
        raise fail(f"unknown top-level key(s) {', '.join(sorted(map(str, extra)))} (allowed: chain, default, vars)")
    chain = data.get("chain")
    if not isinstance(chain, list) or not chain:
        raise fail("'chain' must be a non-empty list of tasks", "chain")
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        raise fail("'vars' must be a mapping", "vars")
    nodes: dict[str, Node] = {}
    for index, body in enumerate(chain):
        where = ("chain", index)
        if not isinstance(body, dict):
            raise fail(f"task {index + 1}: must be a mapping with 'name' and 'ref'", *where)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"task {index + 1}: needs a 'name'", *where)
        unknown = set(body) - _NODE_KEYS
        if unknown and index == 0:
            raise fail(f"task '{name}': unknown key(s) {_keys_said(unknown)} (StackStorm refuses them in the first "
                       f"task; allowed: {', '.join(_SPEC_KEYS)})", *where)
        if unknown:
            # StackStorm's chain schema lists its node schema as `items: [Node]`, which JSON schema
            # applies to the first task only; later tasks may carry any keys (`description`, say),
            # and StackStorm ignores them. Exchange chains rely on that. One that reads like a task key
            # misspelt (`parmeters`, `on_failure`) is said at WARNING: ignored, the task runs without it.
            said = [key for key in unknown if _near_key(key)]
            if said:
                log.warning("%s: task '%s': key(s) %s ignored, as StackStorm ignores unknown keys after the first "
                            "task; the task runs without them", file, name, _keys_said(said))
            if len(said) < len(unknown):
                log.debug("%s: task '%s': key(s) %s ignored", file, name, ", ".join(sorted(map(str, unknown))))
        if not isinstance(body.get("ref"), str) or not body["ref"]:
            raise fail(f"task '{name}': needs 'ref' (the action to run)", *where)
        if "params" in body and "parameters" in body:
            raise fail(f"task '{name}': give 'parameters' or 'params', not both", *where)
        parameters = body.get("parameters", body.get("params")) or {}
        publish = body.get("publish") or {}
        if not isinstance(parameters, dict) or not isinstance(publish, dict):
            raise fail(f"task '{name}': 'parameters' and 'publish' must be mappings", *where)
        if name in nodes:
            raise fail(f"task '{name}': the name is used twice", *where)
        notify = body.get("notify")
        if notify is not None and (problem := notify_problem(notify)):
            raise fail(f"task '{name}': {problem}", *where)
        spec = {key.replace("-", "_"): body.get(key) for key in _SPEC_KEYS}
        nodes[name] = Node(name, body["ref"], parameters, body.get("on-success"), body.get("on-failure"), publish,
                           notify, spec)
    referenced: set[str] = set()
    edges: dict[str, list[str]] = {n: [] for n in nodes}
    for node in nodes.values():
        for key, target in (("on-success", node.on_success), ("on-failure", node.on_failure)):
            if target is None:
                continue
            if not isinstance(target, str):
                raise fail(f"task '{node.name}': '{key}' must name a task", "chain")
            if is_jinja_expression(target):
                continue
            if target not in nodes:
                raise fail(f"task '{node.name}': '{key}' names unknown task '{target}'", "chain")
            referenced.add(target)
            edges[node.name].append(target)
    default = data.get("default")
    if default is not None:
        if default not in nodes:
            raise fail(f"'default' names unknown task '{default}'", "default")
        start = str(default)
    else:
        start = next((n for n in nodes if n not in referenced), next(iter(nodes)))
    reached = graph.reachable([start], edges)
    unreached = [name for name in nodes if name not in reached]
    if unreached:
        # StackStorm's ChainHolder.validate checks only that transitions name tasks; a task nothing
        # leads to never runs there and the chain loads. So here: a warning, not a refused pack.
        log.warning("%s: task(s) %s unreachable from the start task '%s' (never run; lead to them with "
                    "on-success/on-failure, or remove them)", file, ", ".join(f"'{n}'" for n in unreached), start)
    can_stop = {n.name: n.on_success is None or n.on_failure is None for n in nodes.values()}
    # A cycle that can never be entered cannot hang a run: only the reachable tasks are checked.
    for cycle in graph.closed_cycles([n for n in nodes if n in reached], edges, can_stop):
        raise fail(f"task '{cycle[0]}': cycle {' -> '.join(cycle)} has no exit (on-success and on-failure "
                   "both stay in the cycle)", "chain")
    return ChainSpec(file, nodes, start, variables)


def _after_resume(result: Any) -> Any:
    """What later tasks' templates see of a task the chain paused on and that ended after its resume.
    StackStorm's `resume` rebuilds its context with the task's updated result under `result`
    (`context_result[last_task]["result"]`), so its documented inquiry chain reads the answer as
    `{{ task1.result.response.secondfactor }}`; the result's own keys stay beside it, so
    `{{ task1.response.secondfactor }}` reads it too. A result that is no mapping has no keys to add to."""
    return {**result, "result": result} if isinstance(result, dict) else result


#: How many ActionChains deep a chain's result shows the results of the chains its tasks ran (`_bounded`).
NESTED_RESULTS = 10


def _chain_result(value: Any) -> bool:
    """Whether `value` is an ActionChain's result (`ChainConductor.snapshot`): its `tasks` are the entries
    `on_done` records, each with the `execution_id` and `result` of the task's child."""
    tasks = value.get("tasks") if isinstance(value, dict) else None
    return isinstance(tasks, list) and all(isinstance(task, dict) and "execution_id" in task and "result" in task
                                           for task in tasks)


def _bounded(result: Any, below: int = NESTED_RESULTS - 1) -> Any:
    """A task's `result` as its chain keeps it: a sub-chain's result shows the results of the chains under
    it down to `below` more levels; past them, a chain's result is a marker naming its execution, whose
    own record holds it. StackStorm copies each task's result whole, so a chain that calls itself nests
    one more level of results per level of calls: canceled (or failed at `workflows.max_depth`) a few
    hundred deep, its result outgrew what the JSON encoders and the secret scrub take (a RecursionError
    that left it `canceling`). Each chain keeps its own result so bounded, so a chain's result is bounded
    however deep the tree under it is, and this looks at most `below` levels down. A chain nested less
    deep than that (every chain but one that calls itself) keeps its result exactly as it came, the
    same object; nothing of the child's is changed, only copied where a level below is cut."""
    if not _chain_result(result):
        return result
    tasks: list[Any] = []
    for task in result["tasks"]:
        inner = task["result"]
        if _chain_result(inner):
            cut = _bounded(inner, below - 1) if below > 0 else {
                "execution_id": task["execution_id"],
                "truncated": f"the result of execution {task['execution_id']} is not copied here: a chain's result "
                             f"shows those of the chains under it {NESTED_RESULTS} deep, and this one is deeper "
                             f"(see: squall execution get {task['execution_id']})"}
            if cut is not inner:
                task = {**task, "result": cut}
        tasks.append(task)
    if all(kept is task for kept, task in zip(tasks, result["tasks"], strict=True)):
        return result
    return {**result, "tasks": tasks}


class ChainConductor:
    """Runs the chain one task at a time."""

    def __init__(self, spec: ChainSpec, parameters: dict[str, Any], base_context: dict[str, Any], jinja: Any,
                 display_published: bool = True, shell_command: Callable[[str], bool] = lambda ref: False,
                 action_exists: Callable[[str], bool] = lambda ref: True) -> None:
        self.spec = spec
        #: Whether an action ref is registered: a task naming none ends the chain, as StackStorm's does.
        self.action_exists = action_exists
        #: Whether an action's `cmd` is shell text (a `*-shell-cmd` runner): its values must be quoted.
        self.shell_command = shell_command
        self.parameters = parameters
        self.base = base_context  # st2kv, action_context, config_context
        self.jinja = jinja
        self.display_published = display_published
        self.vars: dict[str, Any] = {}
        self.published: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.tasks: list[dict[str, Any]] = []
        self.occurrences: Counter[str] = Counter()
        self.current: str | None = None
        self.status = "succeeded"
        self.error: dict[str, Any] | None = None
        self.done = False

    def _context(self) -> dict[str, Any]:
        return {**self.parameters, **self.results, **self.vars, "__results": self.results, **self.base}

    def start(self) -> list[TaskCall]:
        try:
            self.vars = render_values(self.spec.vars, {**self.parameters, **self.base}, self.jinja)
        except TemplateRenderError as exc:
            return self._fail(f"Failed to render vars: {exc}")
        return self._enter(self.spec.start)

    def _fail(self, message: str) -> list[TaskCall]:
        self.status = "failed"
        self.error = {"error": message}
        self.done = True
        return []

    def _enter(self, name: str | None) -> list[TaskCall]:
        if name is None:
            self.done = True
            return []
        node = self.spec.nodes.get(name)
        if node is None:
            return self._fail(f'Unable to find node with name "{name}".')
        if not self.action_exists(node.ref):
            # StackStorm (`_get_next_action`, InvalidActionReferencedException): the chain ends failed,
            # no on-failure runs and no task is recorded. A disabled action exists: its request fails
            # the task, which takes on-failure.
            return self._fail(f'Failed to run task "{name}". Action with reference "{node.ref}" doesn\'t exist.')
        try:
            parameters = self._render(node)
        except TemplateRenderError as exc:
            return self._fail(f'Failed to run task "{name}". Parameter rendering failed: {exc}')
        self.occurrences[name] += 1
        self.current = name
        key = f"{name}.{self.occurrences[name]}"
        context: dict[str, Any] = {"chain": {"node": name, **(node.spec or {})}}
        if node.notify is not None:
            context["notify"] = node.notify
        return [TaskCall(key, name, node.ref, parameters, context)]

    def _render(self, node: Node) -> dict[str, Any]:
        """A task's parameters. A shell command's `cmd` is rendered as the shell runner renders its own
        template: each value goes to the command in an environment variable (added to `env`), never
        pasted into the shell text, so a workflow input or earlier result cannot run as shell code."""
        raw = dict(node.parameters)
        cmd = raw.get("cmd")
        quoted = is_jinja_expression(cmd) and self.shell_command(node.ref)
        if quoted:
            del raw["cmd"]
        context = self._context()
        parameters = render_values(raw, context, self.jinja)
        if quoted:
            text, variables = render_shell_command(cmd, {"__context": context, **context}, self.jinja)
            env = parameters.get("env")
            parameters["cmd"] = text
            parameters["env"] = {**(env if isinstance(env, dict) else {}), **variables}
        return parameters

    def on_done(self, key: str, status: str, result: Any, execution_id: str | None, *,
                created_at: str | None = None, updated_at: str | None = None, resumed: bool = False) -> list[TaskCall]:
        """A task ended; `execution_id` None: its child could not be requested (bad parameters, say).
        `created_at`/`updated_at` (ISO 8601) are when its child was requested and last changed.
        `resumed`: the chain paused on the task (an inquiry waiting for its answer, a paused sub-chain)
        and it ended after; its templates then also find its result under `result` (`_after_resume`)."""
        name = key.rsplit(".", 1)[0]
        node = self.spec.nodes[name]
        result = _bounded(result)  # a sub-chain's, its own chains' results shown only so deep
        self.tasks.append({"id": name, "name": name, "execution_id": execution_id, "liveaction_id": execution_id,
                           "workflow": None, "created_at": created_at, "updated_at": updated_at, "state": status,
                           "result": result})
        seen = self.results[name] = _after_resume(result) if resumed else result
        self.status = status
        # StackStorm renders `publish` only for a child that ran (the `else:` of its scheduling `try`):
        # a request refused has no result to publish from, and the task takes on-failure.
        if node.publish and execution_id is not None:
            try:
                published = render_values(node.publish, {**self._context(), name: seen}, self.jinja)
            except TemplateRenderError as exc:
                return self._fail(f'Failed to publish from task "{name}": {exc}')
            self.vars.update(published)
            self.published.update(published)
        if status == "canceled":
            self.done = True
            return []
        target = node.on_success if status == "succeeded" else node.on_failure if status in FAILED else None
        if target is not None and is_jinja_expression(target):
            return self._fail(f'Unable to find node with name "{target}".')
        return self._enter(target)

    @property
    def finished(self) -> bool:
        return self.done

    def outcome(self) -> Outcome:
        return Outcome(self.status, self.snapshot())

    def snapshot(self) -> Any:
        result: dict[str, Any] = {"tasks": self.tasks}
        if self.display_published:
            result["published"] = dict(self.published)
        if self.error:
            result.update(self.error)
        return result
