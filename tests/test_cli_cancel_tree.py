"""`squall execution cancel` (the CLI) of a workflow tree, and what a workflow that ended leaves behind.

The CLI ends a paused workflow, or one whose `squall serve` is gone, itself; its tasks are canceled by
the workflows' listener, which runs as a task of the CLI's own loop. That task was dropped when the
command exited: sub-workflows stayed `paused` and an inquiry `pending` under the canceled root (an
answer then ran its branch in the canceled tree), and tasks held `delayed` ran at the next start. The
CLI now waits for its listeners (`Engine.close`), and recovery cancels whatever is still unfinished
under a workflow that ended (`ExecutionService.recover`), so a cancel made by a CLI killed midway
converges at the next start too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import Config, load_config
from engine.events import EXECUTION_FINISHED
from engine.executions import COMPLETED
from engine.processes import process_identity
from engine.storage import Store, utcnow
from tests.conftest import write
from tests.test_crash_ownership import _dead_pid, cli, kill_hard, serve, stop
from tests.test_crash_ownership import until as until_sync
from tests.workflow_helpers import until, workflow_pack

DIR = "dir: {type: string, required: true}"

#: outer -> mid -> inner, which asks; an approval touches `approved` in the test's folder.
TREE = {
    "outer": ("orquesta", DIR, """
        version: 1.0
        input: [dir]
        tasks:
          sub:
            action: wf.mid dir=<% ctx(dir) %>
    """),
    "mid": ("orquesta", DIR, """
        version: 1.0
        input: [dir]
        tasks:
          sub:
            action: wf.inner dir=<% ctx(dir) %>
    """),
    "inner": ("orquesta", DIR, """
        version: 1.0
        input: [dir]
        tasks:
          q:
            action: core.ask
            input:
              schema: {type: object, properties: {ok: {type: boolean}}, required: [ok]}
            next:
              - when: <% succeeded() %>
                do: approved
          approved:
            action: core.local
            input:
              cmd: touch <% ctx(dir) %>/approved
    """),
}


def _tree_pack(home: Path) -> None:
    workflow_pack(home, TREE)


def _descendants(store: Store, execution_id: str) -> list[dict[str, Any]]:
    """Every execution under `execution_id`, at every depth."""
    found: list[dict[str, Any]] = []
    parents = [execution_id]
    while parents:
        rows = store.list_executions(parent=parents.pop(), limit=100_000)
        found.extend(rows)
        parents.extend(row["id"] for row in rows)
    return found


def _open(home: Path) -> Store:
    return Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")


async def _paused_tree(squall: Squall, folder: Path) -> dict[str, str]:
    """A tree paused on its inquiry, three workflows deep: the ids of outer, mid, inner and the inquiry."""
    outer = await squall.executions.request("wf.outer", {"dir": str(folder)}, {"user": "tester"})
    store = squall.db.store

    async def paused() -> dict[str, str] | None:
        rows = {row["action"]: row for row in _descendants(store, outer["id"])}
        ask = rows.get("core.ask")
        if ask is None or ask["status"] != "pending" or store.get_execution(outer["id"])["status"] != "paused":
            return None
        if rows["wf.mid"]["status"] != "paused" or rows["wf.inner"]["status"] != "paused":
            return None
        return {"outer": outer["id"], "mid": rows["wf.mid"]["id"], "inner": rows["wf.inner"]["id"],
                "ask": ask["id"]}

    return await until(paused, "the tree to pause on its inquiry")


def test_cli_cancel_of_a_paused_tree_cancels_every_level_before_it_exits(home: Path, config: Config) -> None:
    """A paused tree canceled from the CLI: its paused sub-workflows and its pending inquiry end `canceled`
    by the time the command has exited, and the inquiry can no longer be answered, so its `approved`
    branch never runs in the canceled tree."""
    _tree_pack(home)
    folder = home / "work"
    folder.mkdir()

    async def build() -> dict[str, str]:
        squall = await Squall.start(config)
        try:
            return await _paused_tree(squall, folder)
        finally:
            await squall.close()

    tree = asyncio.run(build())
    done = cli(home, "execution", "cancel", tree["outer"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "canceled"

    store = _open(home)
    try:
        statuses = {row["id"]: row["status"] for row in _descendants(store, tree["outer"])}
    finally:
        store.close()
    assert {statuses[tree[name]] for name in ("mid", "inner", "ask")} == {"canceled"}, statuses
    assert set(statuses.values()) <= COMPLETED, statuses

    answered = cli(home, "inquiry", "respond", tree["ask"], "-r", '{"ok": true}')
    assert answered.returncode == 2, (answered.stdout, answered.stderr)
    assert not (folder / "approved").exists()


async def test_recovery_cancels_what_a_workflow_that_ended_left_unfinished(home: Path, config: Config) -> None:
    """A CLI cancel killed after it ended the root (or one made by a CLI that did not wait) left the tree
    under it: paused sub-workflows, a pending inquiry, tasks held `delayed` or `requested`. The next start
    cancels them, at every depth, instead of running the held tasks. A tree whose root did not end is left
    as it was, and its held task runs, as recovery always ran it."""
    _tree_pack(home)
    folder = home / "work"
    folder.mkdir()
    squall = await Squall.start(config)
    try:
        ended = await _paused_tree(squall, folder)
        live = await _paused_tree(squall, folder)
        executions = squall.executions
        executions.executor = None  # what follows is stored and never run here, as a crash leaves it

        async def held(parent: str, name: str, delay: float = 0.0) -> str:
            """A task stored under `parent`: `delayed` for `delay` seconds, else `requested`."""
            record = await executions.request("core.local", {"cmd": f"touch {folder / name}"}, {"user": "tester"},
                                              parent=parent, delay=delay)
            assert record["status"] == ("delayed" if delay else "requested")
            return record["id"]

        late = await held(ended["mid"], "ran-under-canceled-mid", delay=0.1)
        queued = await held(ended["outer"], "ran-under-canceled-root")
        control = await held(live["mid"], "ran-under-live-mid", delay=0.1)
        # What `squall execution cancel` of a paused root writes, its process killed before its listener
        # canceled the tasks (the listener is left out here: nothing of this process cancels them).
        executions.events.unsubscribe(EXECUTION_FINISHED, squall.workflows._on_finished)
        assert await executions.complete(ended["outer"], "canceled", {"error": "canceled by request"}, ("paused",))
    finally:
        await squall.close()

    squall = await Squall.start(load_config(home / "config.yml"), recover=True)
    try:
        store = squall.db.store

        async def control_ran() -> bool:
            return store.get_execution(control)["status"] in COMPLETED

        await until(control_ran, "the live tree's held task to run")
        statuses = {row["id"]: row["status"] for row in _descendants(store, ended["outer"])}
        for name in ("mid", "inner", "ask"):
            assert statuses[ended[name]] == "canceled", (name, statuses)
        assert statuses[late] == statuses[queued] == "canceled", statuses
        assert "ended canceled" in store.get_execution(ended["ask"])["result"]["error"]
        # The live tree: still paused on its inquiry; its held task ran.
        assert [store.get_execution(live[name])["status"] for name in ("outer", "mid", "inner", "ask")] == [
            "paused", "paused", "paused", "pending"]
        assert store.get_execution(control)["status"] == "succeeded"
    finally:
        await squall.close()
    assert (folder / "ran-under-live-mid").exists()
    assert not (folder / "ran-under-canceled-mid").exists()
    assert not (folder / "ran-under-canceled-root").exists()


async def test_recovery_cancels_the_held_tasks_of_a_cancel_it_ends(home: Path, config: Config) -> None:
    """A workflow left `canceling` by a service that died (a cancel asked just before the kill) is ended
    `canceled` by the next start; its task that never started is canceled with it, not submitted beside
    that end and started inside the canceled workflow (where the listener's cancel then cut it short)."""
    _tree_pack(home)
    folder = home / "work"
    folder.mkdir()
    squall = await Squall.start(config)
    try:
        executions = squall.executions
        executions.executor = None  # stored and never run here, as the dead service left them
        root = await executions.request("wf.outer", {"dir": str(folder)}, {"user": "tester"})
        task = await executions.request("core.local", {"cmd": f"touch {folder / 'ran'}"}, {"user": "tester"},
                                        parent=root["id"])
        dead = {"hostname": socket.gethostname(), **process_identity(), "pid": _dead_pid()}
        assert await executions.change(root["id"], {"status": "canceling", "runner_info": dead}, ("requested",))
    finally:
        await squall.close()

    squall = await Squall.start(load_config(home / "config.yml"), recover=True)
    try:
        store = squall.db.store

        async def ended() -> bool:
            return store.get_execution(task["id"])["status"] in COMPLETED

        await until(ended, "the task to end")
        assert store.get_execution(root["id"])["status"] == "canceled"
        stored = store.get_execution(task["id"])
        assert stored["status"] == "canceled"
        assert "running" not in [entry["status"] for entry in stored["log"]], stored["log"]  # never claimed
    finally:
        await squall.close()
    assert not (folder / "ran").exists()


HELD_FLOW = """
version: 1.0
input: [dir]
tasks:
  first:
    action: core.noop
    next: [{do: [later, many]}]
  later:
    delay: 600
    action: core.local
    input:
      cmd: touch <% ctx(dir) %>/later
  many:
    with:
      items: i in <% range(3) %>
      concurrency: 3
    action: held.hold
    input:
      dir: <% ctx(dir) %>
      n: <% item(i) %>
"""


def _held_home(home: Path) -> Path:
    """A service whose workflow holds tasks two ways: a task's `delay:`, and a concurrency policy (one
    `held.hold` at a time: the others wait `delayed`)."""
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\nadapters:\n  console:\n    enabled: false\n")
    pack = home / "packs" / "held"
    write(pack / "pack.yaml", "ref: held\nname: held\nversion: 0.1.0\n")
    write(pack / "actions" / "hold.yaml", """
        name: hold
        runner_type: local-shell-cmd
        parameters:
          dir: {type: string, required: true}
          n: {type: integer, required: true}
          cmd:
            default: "echo start {{ n }} >> {{ dir }}/held.log; sleep 60"
            immutable: true
    """)
    write(pack / "policies" / "one.yaml", "name: one\nresource_ref: held.hold\npolicy_type: action.concurrency\n"
                                          "parameters: {threshold: 1, action: delay}\n")
    workflow_pack(home, {"flow": ("orquesta", DIR, HELD_FLOW)}, pack="held")
    (home / "work").mkdir()
    return home / "work"


def _children_by_status(store: Store, execution_id: str) -> dict[str, list[str]]:
    rows = _descendants(store, execution_id)
    by: dict[str, list[str]] = {}
    for row in rows:
        by.setdefault(row["status"], []).append(row["action"])
    return by


@pytest.mark.slow
@pytest.mark.integration
def test_cli_cancel_while_serve_is_down_cancels_the_held_tasks_and_a_restart_runs_none(home: Path) -> None:
    """`squall serve` killed while two workflows hold tasks `delayed` (a concurrency policy, a `delay:`).
    `squall execution cancel` of the one whose `held.hold` was running cancels its tasks before it exits.
    The other's cancel stopped after its root (a CLI killed midway): the next start cancels its held
    tasks, and none of them runs: the hold running when serve died is the only one that ever started."""
    work = _held_home(home)
    with contextlib.closing(_open_when_ready(home)) as store:
        server = serve(home)
        try:
            flows = [_queue(home, work), _queue(home, work)]

            def holding() -> bool:
                by = [_children_by_status(store, flow) for flow in flows]
                return (sorted(len(b.get("delayed", [])) for b in by) == [3, 4]
                        and [b.get("running") for b in by].count(["held.hold"]) == 1 and (work / "held.log").exists())

            until_sync(holding, "one workflow to run one hold and hold the rest, the other to hold all its tasks",
                       seconds=60)
        finally:
            kill_hard(server)
        started = (work / "held.log").read_text().splitlines()
        assert len(started) == 1, started
        running, other = sorted(flows, key=lambda flow: "running" not in _children_by_status(store, flow))

        done = cli(home, "execution", "cancel", running, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "canceled"
        left = _children_by_status(store, running)
        assert set(left) <= COMPLETED, left

        # The other: ended by a cancel that stopped before its tasks were canceled.
        assert store.update_execution(other, {"status": "canceled", "end_timestamp": utcnow(),
                                              "result": {"error": "canceled by request"}}, expect=("running",))
        server = serve(home)
        try:
            until_sync(lambda: set(_children_by_status(store, other)) <= COMPLETED, "the restart to end the held tasks",
                       seconds=60)
            time.sleep(1)  # what a restart admitted would have started by now
        finally:
            stop(server)
        assert {row["status"] for row in _descendants(store, other) if row["action"] != "core.noop"} == {"canceled"}
        assert (work / "held.log").read_text().splitlines() == started
        assert not (work / "later").exists()


def _open_when_ready(home: Path) -> Store:
    """The service's database, made now (as `squall serve` would at its start)."""
    (home / "data").mkdir(exist_ok=True)
    return _open(home)


def _queue(home: Path, work: Path) -> str:
    done = cli(home, "run", "held.flow", f"dir={work}", "--async", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]

