"""Orquesta's contexts as its conductor keeps them: each task runs on the merge of its inbound
transitions' contexts, a transition publishes on a copy of its task's context, a join merges its
arrivals' contexts in arrival order, and the output is rendered over the terminal tasks' contexts.

The conductor is fed outcomes directly (in the order a test chooses, so which branch ends first is
decided, never raced); the last test runs a workflow in Squall, pauses it, stops Squall and resumes
the stored workflow in a new one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.workflows.model import TaskCall
from engine.workflows.orquesta import OrquestaConductor
from engine.workflows.service import load_spec
from tests.conftest import write
from tests.workflow_helpers import children, task_names, workflow_pack


def conductor(tmp_path: Path, text: str, parameters: dict[str, Any] | None = None) -> OrquestaConductor:
    path = write(tmp_path / "workflow.yaml", text)
    spec = load_spec("orquesta", path, "workflow.yaml")
    return OrquestaConductor(spec, parameters or {}, {"workflow_execution_id": "wf1"})


def by_task(calls: list[TaskCall]) -> dict[str, TaskCall]:
    return {call.task: call for call in calls}


def done(flow: OrquestaConductor, call: TaskCall, result: Any = None) -> dict[str, TaskCall]:
    """The task of `call` succeeded: the calls it leads to, by task."""
    return by_task(flow.on_done(call.key, "succeeded", result, None))


BRANCHES = """
version: 1.0
tasks:
  start:
    next:
      - do: [a, b]
  a:
    action: core.noop
    next:
      - publish: [x: from_a]
        do: a2
  a2:
    action: core.noop
    next:
      - do: a3
  a3:
    action: core.echo
    input:
      message: <% ctx(x) %>
  b:
    action: core.noop
    next:
      - publish: [x: from_b]
"""


def test_a_branch_does_not_see_what_a_parallel_branch_published(tmp_path: Path) -> None:
    """Branch b publishes `x` after branch a did but before a's next task starts: a3 still sees
    a's own `x` (it was b's, from the one shared context)."""
    flow = conductor(tmp_path, BRANCHES)
    calls = by_task(flow.start())
    a2 = done(flow, calls["a"])["a2"]
    assert done(flow, calls["b"]) == {}
    a3 = done(flow, a2)["a3"]
    assert a3.parameters == {"message": "from_a"}


SIBLINGS = """
version: 1.0
vars:
  - a: zero
tasks:
  t:
    action: core.noop
    next:
      - publish: [a: one]
        do: x
      - publish: [b: <% ctx(a) %>]
        do: y
  x:
    action: core.echo
    input:
      message: <% ctx(a) %> <% ctx().containsKey(b) %>
  y:
    action: core.echo
    input:
      message: <% ctx(a) %> <% ctx(b) %>
"""


def test_a_transition_does_not_see_what_a_sibling_transition_of_its_task_published(tmp_path: Path) -> None:
    flow = conductor(tmp_path, SIBLINGS)
    calls = done(flow, by_task(flow.start())["t"])
    assert calls["x"].parameters == {"message": "one False"}
    assert calls["y"].parameters == {"message": "zero zero"}


JOIN = """
version: 1.0
vars:
  - x: initial
  - y: initial
  - z: initial
tasks:
  start:
    next:
      - do: [a, b]
  a:
    action: core.noop
    next:
      - publish: [x: from_a, y: from_a]
        do: j
  b:
    action: core.noop
    next:
      - publish: [x: from_b, cfg: {b: 2}]
        do: b2
  b2:
    action: core.noop
    next:
      - do: j
  j:
    join: all
    action: core.echo
    input:
      message: <% ctx(x) %> <% ctx(y) %> <% ctx(z) %> <% ctx(cfg) %>
"""


@pytest.mark.parametrize(("order", "expected"), [
    (["b", "a", "b2"], 'from_b from_a initial {"b": 2}'),
    (["b", "b2", "a"], 'from_a from_a initial {"b": 2}'),
])
def test_a_join_merges_its_arrivals_contexts_in_the_order_they_arrived(tmp_path: Path, order: list[str],
                                                                      expected: str) -> None:
    """The branch that arrives later wins a name both published, whenever it published it (b
    published `x` before a did); a name only one branch published keeps that branch's value (the
    other branch's initial value does not overwrite it)."""
    flow = conductor(tmp_path, JOIN)
    calls = by_task(flow.start())
    for task in order:
        calls.update(done(flow, calls[task]))
    assert calls["j"].parameters["message"].replace("'", '"') == expected


def test_published_mappings_merge_as_orquesta_merges_contexts(tmp_path: Path) -> None:
    """Orquesta merges contexts key by key: a mapping published over a mapping is merged into it."""
    flow = conductor(tmp_path, """
version: 1.0
vars:
  - cfg: {a: 1}
tasks:
  one:
    action: core.noop
    next:
      - publish: [cfg: {b: 2}]
        do: two
  two:
    action: core.noop
output:
  - cfg: <% ctx(cfg) %>
""")
    two = done(flow, by_task(flow.start())["one"])["two"]
    assert done(flow, two) == {}
    assert flow.outcome().result == {"output": {"cfg": {"a": 1, "b": 2}}}


TERMINALS = """
version: 1.0
vars:
  - r: initial
tasks:
  start:
    next:
      - do: [a, b]
  a:
    action: core.noop
    next:
      - publish: [r: from_a, p: 1]
        do: a2
  a2:
    action: core.noop
  b:
    action: core.noop
    next:
      - publish: [r: from_b, q: 2]
  c:
    action: core.noop
    next:
      - publish: [hidden: yes]
        do: c2
  c2:
    action: core.noop
    next:
      - when: <% failed() %>
        do: never
  never:
    action: core.noop
output:
  - r: <% ctx(r) %>
  - p: <% ctx(p) %>
  - q: <% ctx(q) %>
  - hidden: <% ctx().containsKey(hidden) %>
"""


def test_the_output_is_rendered_over_the_terminal_tasks_contexts(tmp_path: Path) -> None:
    """a2 (no `next`) and b's transition to `continue` end their branches; the one that started
    later wins a name both set. c2 took no transition but did not end the workflow: as in Orquesta
    it is not terminal, so what c published for it is not in the output."""
    flow = conductor(tmp_path, TERMINALS)
    calls = by_task(flow.start())
    c2 = done(flow, calls["c"])["c2"]
    assert done(flow, c2) == {}
    assert done(flow, calls["b"]) == {}
    a2 = done(flow, calls["a"])["a2"]
    assert done(flow, a2) == {}
    assert flow.outcome().result == {"output": {"r": "from_a", "p": 1, "q": 2, "hidden": False}}


def test_the_task_that_ends_the_workflow_is_terminal_though_it_has_transitions(tmp_path: Path) -> None:
    flow = conductor(tmp_path, """
version: 1.0
tasks:
  one:
    action: core.noop
    next:
      - publish: [x: one]
        do: two
  two:
    action: core.noop
    next:
      - when: <% failed() %>
        do: cleanup
  cleanup:
    action: core.noop
output:
  - x: <% ctx(x) %>
""")
    two = done(flow, by_task(flow.start())["one"])["two"]
    assert done(flow, two) == {}
    assert flow.outcome().result == {"output": {"x": "one"}}


PAUSED_BRANCHES = """
version: 1.0
input: [gate_a, gate_b]
tasks:
  start:
    next:
      - do: [a, b]
  a:
    action: core.noop
    next:
      - publish: [x: from_a]
        do: a2
  a2:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate_a') }} ]; do sleep 0.02; done"
      timeout: 30
    next:
      - do: a3
  a3:
    action: core.echo
    input:
      message: <% ctx(x) %>
    next:
      - publish: [a3_saw: <% result().stdout %>]
  b:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate_b') }} ]; do sleep 0.02; done"
      timeout: 30
    next:
      - publish: [x: from_b]
output:
  - a3_saw: <% ctx(a3_saw) %>
"""


async def _until(check: Any) -> Any:
    for _ in range(2000):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("the workflow never got there")


async def test_a_paused_workflow_resumes_after_a_restart_with_each_branch_on_its_own_context(
        home: Path, tmp_path: Path) -> None:
    """What is stored of a paused workflow is its record and its children, in the shape stored
    before contexts were per task (no context is stored): a new Squall rebuilds every branch's
    context from the children, so a3 sees its branch's `x` though b published one after it."""
    gate_a, gate_b = tmp_path / "gate_a", tmp_path / "gate_b"
    workflow_pack(home, {"branches": ("orquesta", "gate_a: {type: string}\ngate_b: {type: string}",
                                      PAUSED_BRANCHES)})
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await app.executions.request("wf.branches", {"gate_a": str(gate_a), "gate_b": str(gate_b)},
                                              {"user": "tester"})

        async def tasks_started() -> bool:
            return sorted(task_names(await children(app, record["id"]))) == ["a", "a2", "b"]

        await _until(tasks_started)
        gate_b.touch()  # b ends (publishing x=from_b) after a published x=from_a

        async def b_done() -> bool:
            rows = await children(app, record["id"])
            return dict(zip(task_names(rows), [r["status"] for r in rows], strict=True))["b"] == "succeeded"

        await _until(b_done)
        await app.executions.pause(record["id"])
        gate_a.touch()
        paused = await app.executions.wait(record["id"], timeout=20)
        assert paused["status"] == "paused", paused["result"]
        assert set(paused["result"]) == {"output", "paused_by"}  # the stored shape, as before
        assert sorted(task_names(await children(app, record["id"]))) == ["a", "a2", "b"]
    finally:
        await app.close()

    app = await Squall.start(load_config(home / "config.yml"))
    try:
        await app.executions.resume(record["id"])
        final = await app.executions.wait(record["id"], timeout=20)
        assert final["status"] == "succeeded", final["result"]
        assert final["result"]["output"] == {"a3_saw": "from_a"}
    finally:
        await app.close()
