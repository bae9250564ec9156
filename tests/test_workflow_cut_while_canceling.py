"""A workflow whose run was cut while it was `canceling` keeps what it had done, as a cancel seen to its end.

An Orquesta cancel lets the running actions finish and then stores `{"output": ...}`; an ActionChain's stores
its `tasks` and `published`. When the run's task was cut meanwhile (a worker's drain that ran out, the
executor stopping the task), the workflow ended `canceled` with the error alone: an Orquesta workflow lost its
`output` (`Flow.interrupted_result` kept only an ActionChain's work). It keeps it now, as its own cancel
would have stored it, with the cancel's error beside it."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.processes import process_identity
from engine.storage import Store, iso, utcnow
from tests.test_crash_ownership import _dead_pid
from tests.workflow_helpers import children, task_names, until, workflow_pack

#: `first` publishes what it said, `wait` runs until the gate file exists; the output is what `first` said.
GATED = """
version: 1.0
input: [gate]
tasks:
  first:
    action: core.echo message="first done"
    next:
      - when: <% succeeded() %>
        publish: [said: <% result().stdout %>]
        do: wait
  wait:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 20
output:
  - said: <% ctx(said) %>
"""

#: The same as an ActionChain.
GATED_CHAIN = """
chain:
  - name: first
    ref: core.echo
    parameters: {message: "first done"}
    publish: {said: "{{ first.stdout }}"}
    on-success: wait
  - name: wait
    ref: core.local
    parameters: {cmd: "while [ ! -f {{ gate }} ]; do sleep 0.02; done", timeout: 20}
"""


async def _canceling(squall: Squall, ref: str, gate: Path) -> str:
    """A run of `ref` canceled while its `wait` task runs: its id, once it shows `canceling` (or, an
    ActionChain, which cancels at once, once the cancel was asked)."""
    record = await squall.executions.request(ref, {"gate": str(gate)}, {"user": "tester"})

    async def waiting() -> bool:
        rows = await children(squall, record["id"])
        return any(row["status"] == "running" for row in rows if task_names([row]) == ["wait"])

    await until(waiting, "the `wait` task to run")
    await squall.executions.cancel(record["id"])
    return str(record["id"])


async def _ended(squall: Squall, execution_id: str) -> dict[str, Any]:
    squall.executions._recent.pop(execution_id, None)
    return await squall.executions.wait(execution_id, timeout=30)


async def test_an_orquesta_workflow_cut_while_canceling_keeps_its_output(home: Path, tmp_path: Path) -> None:
    workflow_pack(home, {"gated": ("orquesta", "gate: {type: string}", GATED)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = tmp_path / "gate"
        normal = await _canceling(squall, "wf.gated", gate)
        assert (await squall.executions.get(normal))["status"] == "canceling"  # its running task finishes first
        gate.touch()
        seen_through = await _ended(squall, normal)
        assert seen_through["status"] == "canceled", seen_through
        assert "first done" in str(seen_through["result"]["output"]["said"]), seen_through["result"]

        gate.unlink()
        cut = await _canceling(squall, "wf.gated", gate)
        assert (await squall.executions.get(cut))["status"] == "canceling"
        assert await squall.executions.executor.cancel(cut)  # its run's task is cut while it is canceling
        ended = await _ended(squall, cut)
        assert ended["status"] == "canceled", ended
        assert ended["result"]["output"] == seen_through["result"]["output"], ended["result"]
        assert ended["result"]["error"] == "canceled by request"
        rows = await children(squall, cut)
        assert [(task_names([row])[0], row["status"]) for row in rows] == [("first", "succeeded"),
                                                                           ("wait", "canceled")]
    finally:
        gate.touch()
        await squall.close()


async def test_an_action_chain_cut_while_canceling_keeps_its_tasks(home: Path, tmp_path: Path) -> None:
    """An ActionChain's cancel cuts its task: it kept its `tasks` and `published` already, and still does."""
    workflow_pack(home, {"gated": ("action-chain", "gate: {type: string}", GATED_CHAIN)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        gate = tmp_path / "gate"
        ended = await _ended(squall, await _canceling(squall, "wf.gated", gate))
        assert ended["status"] == "canceled", ended
        result = ended["result"]
        assert [(task["name"], task["state"]) for task in result["tasks"]] == [("first", "succeeded"),
                                                                                 ("wait", "canceled")]
        assert "first done" in str(result["published"]["said"]) and result["error"] == "canceled by request"
    finally:
        gate.touch()
        await squall.close()


async def _killed_while_canceling(home: Path, ref: str, gate: Path) -> str:
    """A run of `ref` whose `squall serve` died while it was `canceling`, its `wait` task running: what a
    kill -9 leaves (the run stopped where it stood, owned by a process that is gone, its cancel asked)."""
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request(ref, {"gate": str(gate)}, {"user": "tester"})

        async def waiting() -> bool:
            rows = await children(squall, record["id"])
            return any(row["status"] == "running" for row in rows if task_names([row]) == ["wait"])

        await until(waiting, "the `wait` task to run")
    finally:
        await squall.close()  # the workflow stays `running`, to be conducted on by the next start
    store = Store.open(load_config(home / "config.yml").database_url)
    try:
        stored = store.get_execution(record["id"])
        assert stored["status"] == "running", stored
        dead = {"hostname": socket.gethostname(), **process_identity(), "pid": _dead_pid()}
        log = [*(stored.get("log") or []), {"status": "canceling", "timestamp": iso(utcnow())}]
        assert store.update_execution(record["id"], {"status": "canceling", "runner_info": dead, "log": log},
                                      expect=("running",))
    finally:
        store.close()
    return str(record["id"])


async def _seen_through(home: Path, ref: str, gate: Path) -> dict[str, Any]:
    """What a cancel of a run of `ref` seen through to its end stores: the result to keep."""
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        execution_id = await _canceling(squall, ref, gate)
        gate.touch()
        ended = await _ended(squall, execution_id)
        assert ended["status"] == "canceled", ended
        return ended["result"]
    finally:
        gate.unlink(missing_ok=True)
        await squall.close()


def _same_work(kept: dict[str, Any], normal: dict[str, Any]) -> None:
    """`kept` has what `normal` (a cancel seen through) has of what the workflow did before its cancel."""
    if "output" in normal:
        assert kept["output"] == normal["output"] and normal["output"], (kept, normal)
        return
    done = [(task["name"], task["state"], task["result"]) for task in normal["tasks"] if task["name"] == "first"]
    assert done and [(task["name"], task["state"], task["result"]) for task in kept["tasks"]][:1] == done, kept
    assert kept["published"] == normal["published"] and normal["published"], (kept, normal)


@pytest.mark.parametrize("kind", ["orquesta", "action-chain"])
async def test_a_workflow_killed_while_canceling_has_its_work_kept_for_its_end(
        home: Path, tmp_path: Path, kind: str) -> None:
    """`kept_result` (what `_end_orphaned` and `_cancel_orphan` are to store with the cancel's error) replays
    the stored children of a workflow its dead process left `canceling`: its `output`, or its `tasks` and
    `published`, as its cancel seen through stores them."""
    workflow_pack(home, {"gated": (kind, "gate: {type: string}", GATED if kind == "orquesta" else GATED_CHAIN)})
    gate = tmp_path / "gate"
    normal = await _seen_through(home, "wf.gated", gate)
    killed = await _killed_while_canceling(home, "wf.gated", gate)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.db(squall.store.get_execution, killed)
        kept = await squall.executions.runners[kind].kept_result(record)
        assert kept is not None and "error" not in kept, kept
        _same_work(kept, normal)
        assert (await squall.db(squall.store.get_execution, killed))["status"] == "canceling"  # it only reads
        assert task_names(await children(squall, killed)) == ["first", "wait"]  # and requests nothing
    finally:
        gate.touch()
        await squall.close()


@pytest.mark.parametrize("kind", ["orquesta", "action-chain"])
async def test_recovery_ends_a_workflow_killed_while_canceling_with_its_work(
        home: Path, tmp_path: Path, kind: str) -> None:
    """The next start ends it `canceled` (`_end_orphaned`) with its `output`, or its `tasks`, kept."""
    workflow_pack(home, {"gated": (kind, "gate: {type: string}", GATED if kind == "orquesta" else GATED_CHAIN)})
    gate = tmp_path / "gate"
    normal = await _seen_through(home, "wf.gated", gate)
    killed = await _killed_while_canceling(home, "wf.gated", gate)
    squall = await Squall.start(load_config(home / "config.yml"), recover=True)
    try:
        ended = await squall.db(squall.store.get_execution, killed)
        assert ended["status"] == "canceled", ended
        assert "canceled by request" in ended["result"]["error"], ended["result"]
        _same_work(ended["result"], normal)
    finally:
        gate.touch()
        await squall.close()
