"""Pauses across workflow levels and restarts: an inquiry in a sub-workflow, a sub-workflow paused by
request, and a pause still under way when the service stops (Orquesta and Mistral, real processes)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.storage import Store
from tests.conftest import write
from tests.workflow_helpers import children, task_names, workflow_pack

SQUALL = Path(sys.executable).parent / "squall"

#: A question, then a task: run as a sub-workflow of `ask_parent`.
ASK_CHILD = """
version: 1.0
tasks:
  ask:
    action: core.ask
    input: {schema: {type: object, properties: {ok: {type: boolean}}}}
    next: [{when: <% succeeded() %>, do: after}]
  after:
    action: core.noop
"""

ASK_PARENT = """
version: 1.0
tasks:
  sub:
    action: wf.ask_child
    next: [{when: <% succeeded() %>, do: done}]
  done:
    action: core.noop
"""

#: A task held by a gate file, then another.
GATED = """
version: 1.0
input: [gate]
tasks:
  wait:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 30
    next: [{do: after}]
  after:
    action: core.noop
"""

GATED_PARENT = """
version: 1.0
input: [gate]
tasks:
  sub:
    action: wf.gated gate=<% ctx(gate) %>
    next: [{do: done}]
  done:
    action: core.noop
"""


@pytest.fixture
async def nested(home: Path) -> Squall:
    workflow_pack(home, {
        "ask_child": ("orquesta", "", ASK_CHILD),
        "ask_parent": ("orquesta", "", ASK_PARENT),
        "gated": ("orquesta", "gate: {type: string}", GATED),
        "gated_parent": ("orquesta", "gate: {type: string}", GATED_PARENT),
    })
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


async def _until(check: Any, what: str, seconds: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while not (value := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return value


async def _status(app: Squall, execution_id: str) -> str:
    return str((await app.executions.get(execution_id))["status"])


async def test_an_inquiry_in_a_sub_workflow_pauses_the_parent_once_until_it_is_answered(nested: Squall) -> None:
    """The parent paused because its sub-workflow waits for an answer used to be woken at once (no
    task of its own was pending), find the paused sub-workflow, pause again, and so on: thousands of
    log entries a second until the answer. It pauses once and waits now."""
    record = await nested.executions.request("wf.ask_parent", {}, {"user": "tester"})
    parent = record["id"]
    await _until(lambda: _is(nested, parent, "paused"), "the parent to pause")
    sub = (await children(nested, parent))[0]
    await asyncio.sleep(0.5)  # time enough for a loop to show: it went round hundreds of times in this
    paused = await nested.executions.get(parent)
    assert paused["status"] == "paused"
    assert [e["status"] for e in paused["log"]] == ["requested", "scheduled", "running", "paused"]
    assert paused["result"]["paused_by"] == "child"  # its own task is no inquiry
    assert (await nested.executions.get(sub["id"]))["result"]["paused_by"] == "inquiry"

    (ask,) = [r for r in await children(nested, sub["id"]) if r["action"] == "core.ask"]
    await nested.inquiries.respond(ask["id"], {"ok": True}, "tester")
    await _until(lambda: _is(nested, parent, "succeeded"), "the parent to finish")
    assert task_names(await children(nested, parent)) == ["sub", "done"]
    assert task_names(await children(nested, sub["id"])) == ["ask", "after"]


async def test_a_sub_workflow_paused_by_request_stays_paused_and_its_resume_resumes_the_parent(
        nested: Squall, tmp_path: Path) -> None:
    """`squall execution pause <sub-workflow>`: the parent pauses with it (StackStorm's), and used to
    resume at once, resuming the sub-workflow it had not paused. Both stay paused now; resuming the
    sub-workflow resumes the parent, which then waits for it."""
    gate = tmp_path / "gate"
    record = await nested.executions.request("wf.gated_parent", {"gate": str(gate)}, {"user": "tester"})
    parent = record["id"]

    async def sub_started() -> str | None:
        subs = await children(nested, parent)
        return subs[0]["id"] if subs and await children(nested, subs[0]["id"]) else None

    sub = await _until(sub_started, "the sub-workflow's first task")
    assert (await nested.executions.pause(sub))["status"] == "pausing"
    gate.touch()
    await _until(lambda: _is(nested, parent, "paused"), "the parent to pause")
    await asyncio.sleep(0.5)  # a resume of either would have happened by now
    assert await _status(nested, sub) == "paused"
    assert await _status(nested, parent) == "paused"
    assert (await nested.executions.get(parent))["result"]["paused_by"] == "child"
    assert task_names(await children(nested, sub)) == ["wait"]  # `after` did not start

    await nested.executions.resume(sub)
    await _until(lambda: _is(nested, parent, "succeeded"), "the parent to finish")
    assert await _status(nested, sub) == "succeeded"
    assert task_names(await children(nested, sub)) == ["wait", "after"]
    assert task_names(await children(nested, parent)) == ["sub", "done"]


async def test_resuming_a_parent_leaves_a_sub_workflow_paused_before_its_own_pause(nested: Squall,
                                                                                   tmp_path: Path) -> None:
    """A parent's resume resumes only the sub-workflows its own pause paused: one paused by a request
    of its own before stays paused, and the parent pauses again waiting for it."""
    gate = tmp_path / "gate"
    record = await nested.executions.request("wf.gated_parent", {"gate": str(gate)}, {"user": "tester"})
    parent = record["id"]

    async def sub_started() -> str | None:
        subs = await children(nested, parent)
        return subs[0]["id"] if subs and await children(nested, subs[0]["id"]) else None

    sub = await _until(sub_started, "the sub-workflow's first task")
    await nested.executions.pause(sub)
    await nested.executions.pause(parent)  # asked while the sub-workflow is still pausing
    gate.touch()
    await _until(lambda: _is(nested, parent, "paused"), "the parent to pause")
    assert (await nested.executions.get(parent))["result"]["paused_by"] == "request"

    await nested.executions.resume(parent)
    await _until(lambda: _paused_again(nested, parent), "the parent to pause again")
    assert await _status(nested, sub) == "paused"
    assert (await nested.executions.get(parent))["result"]["paused_by"] == "child"
    assert task_names(await children(nested, sub)) == ["wait"]

    await nested.executions.resume(sub)
    await _until(lambda: _is(nested, parent, "succeeded"), "the parent to finish")
    assert task_names(await children(nested, parent)) == ["sub", "done"]


async def _is(app: Squall, execution_id: str, status: str) -> bool:
    return await _status(app, execution_id) == status


async def _paused_again(app: Squall, execution_id: str) -> bool:
    record = await app.executions.get(execution_id)
    return record["status"] == "paused" and [e["status"] for e in record["log"]].count("paused") == 2


ORQUESTA_PAUSABLE = """
version: 1.0
input: [dir]
tasks:
  a:
    action: core.local
    input:
      cmd: "echo a >> {{ ctx('dir') }}/a.log; while [ ! -f {{ ctx('dir') }}/go ]; do sleep 0.05; done"
      timeout: 60
    next: [{when: <% succeeded() %>, do: b}]
  b:
    action: core.local
    input:
      cmd: "echo b >> {{ ctx('dir') }}/b.log"
"""

MISTRAL_PAUSABLE = """
version: '2.0'
wf.pausable:
  input: [dir]
  tasks:
    a:
      action: core.local
      input:
        cmd: "echo a >> <% $.dir %>/a.log; while [ ! -f <% $.dir %>/go ]; do sleep 0.05; done"
        timeout: 60
      on-success: [b]
    b:
      action: core.local
      input:
        cmd: "echo b >> <% $.dir %>/b.log"
"""


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True, text=True,
                          cwd=home, timeout=60)


def _serve(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)


def _wait_for(predicate: Any, what: str, seconds: float = 40) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("runner,stop", [("orquesta", signal.SIGKILL), ("mistral-v2", signal.SIGTERM)])
def test_a_pause_under_way_when_the_service_stops_still_pauses_after_the_restart(
        home: Path, runner: str, stop: signal.Signals) -> None:
    """Recovery conducted a `pausing` workflow on as if nobody had asked: `b` ran and it succeeded.
    Now the interrupted task runs again and finishes, the workflow ends `paused`, and `b` runs only
    after a resume. (`shutdown_grace: 0`: the stop interrupts the task, as SIGKILL does, rather than let it
    run on for the grace until it is abandoned: the task waits for a file written after the stop.)"""
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               "executor:\n  shutdown_grace: 0\n"
                               "api:\n  enabled: false\nadapters:\n  console:\n    enabled: false\n")
    workflow_pack(home, {"pausable": (runner, "dir: {type: string}",
                                      ORQUESTA_PAUSABLE if runner == "orquesta" else MISTRAL_PAUSABLE)})
    work = home / "work"
    work.mkdir()
    queued = _cli(home, "run", "wf.pausable", f"dir={work}", "--async", "--json")
    assert queued.returncode == 0, queued.stderr
    workflow_id = json.loads(queued.stdout)["id"]
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    server = _serve(home)
    try:
        _wait_for(lambda: (work / "a.log").exists(), "task a to start")
        paused = _cli(home, "execution", "pause", workflow_id)
        assert paused.returncode == 0, paused.stderr
        assert store.get_execution(workflow_id)["status"] == "pausing"
        if stop == signal.SIGKILL:
            os.killpg(server.pid, signal.SIGKILL)  # the server and the shell it runs: no goodbye
        else:
            server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert store.get_execution(workflow_id)["status"] == "pausing"
        (work / "go").touch()
        server = _serve(home)
        done = _wait_for(lambda: (r := store.get_execution(workflow_id))["status"] not in (
            "running", "resuming", "pausing") and r, "the workflow to settle")
        assert done["status"] == "paused", done["result"]
        assert not (work / "b.log").exists()
        rows = sorted(store.list_executions(parent=workflow_id), key=lambda r: r["id"])
        assert [(r["context"]["workflow_task"]["task"], r["status"]) for r in rows] == [
            ("a", "abandoned"), ("a", "succeeded")]  # interrupted, so run again to its end

        resumed = _cli(home, "execution", "resume", workflow_id)
        assert resumed.returncode == 0, resumed.stderr
        final = _wait_for(lambda: (r := store.get_execution(workflow_id))["status"] not in (
            "paused", "running", "resuming") and r, "the workflow to finish")
        assert final["status"] == "succeeded", final["result"]
        assert (work / "b.log").read_text() == "b\n"
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        store.close()
