"""A sub-workflow deep under a canceled workflow conducts nothing, whatever the levels between say.

A cancel that failed midway, or a crash, can leave a tree's root `canceled` with the workflows between it and
a grandchild still `paused` (or `running`). The grandchild, resumed or started before the next restart
cancels what is left (`ExecutionService.recover`), checked only the workflow that started it: `paused`, so
it conducted on and requested tasks inside the canceled tree. It looks up every workflow above it now
(`WorkflowService._parent_canceled`, `canceled_above`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.executions import COMPLETED
from engine.storage import utcnow
from engine.workflows.service import canceled_above
from tests.test_workflow_orquesta import NESTED, NESTED_TWICE, PAUSABLE
from tests.workflow_helpers import children, task_names, until, workflow_pack

GATE = "gate: {type: string}"


@pytest.fixture
async def tree(home: Path) -> AsyncIterator[Squall]:
    """`wf.nested_twice` (the root) runs `wf.nested` (mid), which runs `wf.pausable` (the grandchild: `wait`
    for a file, then `after`)."""
    workflow_pack(home, {"pausable": ("orquesta", GATE, PAUSABLE), "nested": ("orquesta", GATE, NESTED),
                         "nested_twice": ("orquesta", GATE, NESTED_TWICE)})
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


async def _paused_tree(app: Squall, gate: Path) -> list[str]:
    """The ids of root, mid and grandchild once all three are paused, the grandchild's `wait` done and its
    `after` not started."""
    root = await app.executions.request("wf.nested_twice", {"gate": str(gate)}, {"user": "tester"})

    async def levels() -> list[str] | None:
        mids = await children(app, root["id"])
        grandchildren = await children(app, mids[0]["id"]) if mids else []
        if grandchildren and await children(app, grandchildren[0]["id"]):
            return [root["id"], mids[0]["id"], grandchildren[0]["id"]]
        return None

    ids = await until(levels, "the grandchild to run its first task")
    await app.executions.pause(root["id"])
    gate.touch()

    async def paused() -> bool:
        return [(await app.executions.get(i))["status"] for i in ids] == ["paused"] * 3

    await until(paused, "every level to pause")
    return ids


async def _end_root_canceled(app: Squall, root: str) -> None:
    """What a cancel that failed after its first write leaves: the root `canceled`, nobody told, the
    levels under it as they were."""
    assert await app.db(app.store.update_execution, root, {
        "status": "canceled", "end_timestamp": utcnow(), "result": {"error": "canceled by request"}},
        expect=("paused",))


async def _ended(app: Squall, execution_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        record = await app.executions.get(execution_id)
        return record if record["status"] in COMPLETED else None

    return await until(check, f"execution {execution_id} to end")


async def test_a_grandchild_resumed_under_a_canceled_root_requests_nothing_and_ends_canceled(
        tree: Squall, tmp_path: Path) -> None:
    root, mid, grandchild = await _paused_tree(tree, tmp_path / "gate")
    await _end_root_canceled(tree, root)
    assert (await tree.executions.get(mid))["status"] == "paused"  # the level between says nothing of it

    await tree.executions.resume(grandchild)
    assert (await _ended(tree, grandchild))["status"] == "canceled"
    assert task_names(await children(tree, grandchild)) == ["wait"]  # `after` never started
    assert (await _ended(tree, mid))["status"] == "canceled"  # it went on, and started nothing either
    assert task_names(await children(tree, mid)) == ["sub"]
    assert (await tree.executions.get(root))["status"] == "canceled"


async def test_a_grandchild_started_under_a_canceled_root_requests_nothing_and_ends_canceled(
        tree: Squall, tmp_path: Path) -> None:
    root, mid, _ = await _paused_tree(tree, tmp_path / "gate")
    await _end_root_canceled(tree, root)

    started = await tree.executions.request("wf.pausable", {"gate": str(tmp_path / "gate")}, {"user": "tester"},
                                            parent=mid)
    assert (await _ended(tree, started["id"]))["status"] == "canceled"
    assert await children(tree, started["id"]) == []  # not even its first task


async def test_the_walk_up_stops_at_the_first_canceled_workflow_and_costs_one_call_at_any_depth(
        tree: Squall) -> None:
    """`canceled_above` walks `parent` ids in a loop, so a chain 1,500 deep (past Python's recursion limit) is
    one call; it answers the nearest canceling or canceled execution at or above the one asked about, and
    None when there is none."""
    store = tree.store
    tree.executions.executor = None  # stored `requested`, never run: only the chain of parents matters
    ids: list[str] = []
    for _ in range(1500):
        record = await tree.executions.request("core.noop", {}, {"user": "tester"}, parent=ids[-1] if ids else None)
        ids.append(record["id"])
    assert await tree.db(canceled_above, store, ids[-1]) is None
    assert await tree.db(store.update_execution, ids[0], {"status": "canceled"})
    assert (await tree.db(canceled_above, store, ids[-1]))["id"] == ids[0]
    assert await tree.db(store.update_execution, ids[1000], {"status": "canceling"})
    assert (await tree.db(canceled_above, store, ids[-1]))["id"] == ids[1000]
    assert (await tree.db(canceled_above, store, ids[999]))["id"] == ids[0]
    assert await tree.db(canceled_above, store, None) is None
