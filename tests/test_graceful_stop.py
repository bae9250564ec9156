"""A graceful stop of `squall serve` (SIGTERM, Ctrl-C): no new run starts, the running actions get up to
`executor.shutdown_grace` seconds to finish, then what is left is abandoned; a second signal abandons it
at once. A workflow whose task finishes meanwhile starts nothing more and is conducted on after the
restart, with no task run twice. Requests that come meanwhile are stored and run at the next start.

Before, serve cancelled every run at once: an action a second from its end ended `abandoned`, and a
workflow's task cut so ran again from its start after the restart, its side effect twice."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.service import let_runs_finish
from engine.config import ConfigError, load_config
from engine.executor import LocalExecutor
from engine.storage import Store
from tests.conftest import free_port, wait_until_answering, write
from tests.workflow_helpers import workflow_pack

SQUALL = Path(sys.executable).parent / "squall"
KEY = "k-graceful-stop-test-key-0001"
WAITING = "stop again (SIGTERM or Ctrl-C) to abandon them now"

FLOW = """
version: 1.0
input: [dir]
tasks:
  a:
    action: grace.nap
    input: {dir: <% ctx(dir) %>, name: a, seconds: 4}
    next: [{when: <% succeeded() %>, do: b}]
  b:
    action: grace.nap
    input: {dir: <% ctx(dir) %>, name: b, seconds: 0}
    next: [{when: <% succeeded() %>, do: c}]
  c:
    action: grace.nap
    input: {dir: <% ctx(dir) %>, name: c, seconds: 0}
"""


def graceful_home(home: Path, grace: float | None = None) -> tuple[Path, str]:
    """`grace.nap` (a line in `<dir>/<name>.log` as it starts, another as it ends) and `wf.flow` (a, b, c
    one after another); the API on a port of its own. The work folder and the API's base URL."""
    port = free_port()
    executor = f"executor:\n  shutdown_grace: {grace}\n" if grace is not None else ""
    write(home / "config.yml", f"database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n{executor}"
                               f"api:\n  port: {port}\n  keys: [{KEY}]\nadapters:\n  console:\n    enabled: false\n")
    write(home / "packs" / "grace" / "pack.yaml", "ref: grace\nname: grace\nversion: 0.1.0\n")
    write(home / "packs" / "grace" / "actions" / "nap.yaml", """
        name: nap
        runner_type: local-shell-cmd
        parameters:
          dir: {type: string, required: true}
          name: {type: string, required: true}
          seconds: {type: number, default: 2}
          cmd: {default: "echo start >> {{dir}}/{{name}}.log; sleep {{seconds}}; echo done >> {{dir}}/{{name}}.log",
                immutable: true}
          timeout: {default: 120}
    """)
    workflow_pack(home, {"flow": ("orquesta", "dir: {type: string}", FLOW)})
    (home / "work").mkdir()
    return home / "work", f"http://127.0.0.1:{port}"


def serve(home: Path, base: str) -> subprocess.Popen[str]:
    with open(home / "serve.log", "a") as log:
        server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
    wait_until_answering(base, server)
    return server


def queue(home: Path, ref: str, *params: str) -> str:
    done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "run", ref, *params, "--async", "--json"],
                          capture_output=True, text=True, cwd=home, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]


def until(predicate: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def lines(work: Path, name: str) -> list[str]:
    path = work / f"{name}.log"
    return path.read_text().split() if path.exists() else []


def logged(home: Path, text: str) -> int:
    return (home / "serve.log").read_text().count(text)


def ended(server: subprocess.Popen[str], seconds: float = 60) -> int:
    try:
        return server.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        raise


@pytest.fixture
def store(home: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(Store.open(f"sqlite:///{home / 'data' / 'squall.db'}"))
        return opened[-1]

    yield open_store
    for each in opened:
        each.close()


@pytest.fixture
def stop_all() -> Iterator[list[subprocess.Popen[str]]]:
    """The serve processes a test started: any still running at its end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for server in started:
        if server.poll() is None:
            server.kill()
            server.wait()


# -- end to end: a real `squall serve`, stopped with SIGTERM --------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_sigterm_lets_a_running_action_finish_before_serve_exits(home: Path, store: Callable[[], Store],
                                                                stop_all: list[subprocess.Popen[str]],
                                                                sig: signal.Signals) -> None:
    """`systemctl stop` (SIGTERM) and the first Ctrl-C (SIGINT) alike."""
    work, base = graceful_home(home)
    server = serve(home, base)
    stop_all.append(server)
    nap = queue(home, "grace.nap", f"dir={work}", "name=nap", "seconds=2")
    until(lambda: lines(work, "nap") == ["start"], "the action to start")
    time.sleep(0.5)
    server.send_signal(sig)
    assert ended(server) == 0
    record = store().get_execution(nap)
    assert record["status"] == "succeeded", record["result"]
    assert record["runner_info"]["pid"] == server.pid  # ended by the serve that ran it, before it exited
    assert lines(work, "nap") == ["start", "done"]
    assert logged(home, "abandoning") == 0


@pytest.mark.slow
def test_requests_made_while_stopping_are_stored_and_run_at_the_next_start(
        home: Path, store: Callable[[], Store], stop_all: list[subprocess.Popen[str]]) -> None:
    """The API stays up while the running actions finish: what it accepts meanwhile starts nothing, not even
    a run `core.noop` ends in the call that stores it, and is run by the next start, never lost."""
    work, base = graceful_home(home)
    server = serve(home, base)
    stop_all.append(server)
    nap = queue(home, "grace.nap", f"dir={work}", "name=nap", "seconds=4")
    until(lambda: lines(work, "nap") == ["start"], "the action to start")
    server.send_signal(signal.SIGTERM)
    until(lambda: logged(home, WAITING), "serve to wait for the running action")
    headers = {"St2-Api-Key": KEY}
    made = [httpx.post(f"{base}/api/v1/executions", headers=headers, timeout=10,
                       json={"action": "grace.nap", "parameters": {"dir": str(work), "name": "later", "seconds": 0}}),
            httpx.post(f"{base}/api/v1/executions", headers=headers, timeout=10, json={"action": "core.noop"})]
    assert [r.status_code for r in made] == [201, 201], [r.text for r in made]
    assert [r.json()["status"] for r in made] == ["requested", "requested"]
    assert ended(server) == 0
    db = store()
    assert db.get_execution(nap)["status"] == "succeeded"
    assert [db.get_execution(r.json()["id"])["status"] for r in made] == ["requested", "requested"]
    assert lines(work, "later") == []  # never started

    server = serve(home, base)
    stop_all.append(server)
    for response in made:
        until(lambda r=response: db.get_execution(r.json()["id"])["status"] == "succeeded", "the stored request")
    assert lines(work, "later") == ["start", "done"]
    assert lines(work, "nap") == ["start", "done"]  # not run again
    server.send_signal(signal.SIGTERM)
    assert ended(server) == 0


@pytest.mark.slow
def test_an_action_still_running_after_the_grace_is_abandoned(home: Path, store: Callable[[], Store],
                                                              stop_all: list[subprocess.Popen[str]]) -> None:
    work, base = graceful_home(home, grace=1)
    server = serve(home, base)
    stop_all.append(server)
    nap = queue(home, "grace.nap", f"dir={work}", "name=nap", "seconds=60")
    until(lambda: lines(work, "nap") == ["start"], "the action to start")
    server.send_signal(signal.SIGTERM)
    assert ended(server) == 0
    record = store().get_execution(nap)
    assert record["status"] == "abandoned" and record["result"]["error"] == "Squall shut down while it was running"
    assert lines(work, "nap") == ["start"]
    assert logged(home, WAITING) == 1  # said once, as the wait began
    assert logged(home, "waiting up to 1 s for 1 running action to finish") == 1
    assert logged(home, f"still running after 1 s; abandoning 1 action: {nap}") == 1


@pytest.mark.slow
def test_a_second_sigterm_abandons_the_running_actions_at_once(home: Path, store: Callable[[], Store],
                                                               stop_all: list[subprocess.Popen[str]]) -> None:
    """With a grace longer than the test waits for serve to exit, only the second signal can end it."""
    work, base = graceful_home(home, grace=600)
    server = serve(home, base)
    stop_all.append(server)
    nap = queue(home, "grace.nap", f"dir={work}", "name=nap", "seconds=60")
    until(lambda: lines(work, "nap") == ["start"], "the action to start")
    server.send_signal(signal.SIGTERM)
    until(lambda: logged(home, WAITING), "serve to wait for the running action")
    assert server.poll() is None  # waiting, not stopped
    server.send_signal(signal.SIGTERM)
    assert ended(server, seconds=60) == 0
    record = store().get_execution(nap)
    assert record["status"] == "abandoned", record["result"]
    assert lines(work, "nap") == ["start"]
    assert logged(home, f"asked to stop again; abandoning 1 action: {nap}") == 1


@pytest.mark.slow
def test_a_workflow_task_finishes_during_the_grace_and_the_workflow_goes_on_after_the_restart(
        home: Path, store: Callable[[], Store], stop_all: list[subprocess.Popen[str]]) -> None:
    work, base = graceful_home(home)
    server = serve(home, base)
    stop_all.append(server)
    flow = queue(home, "wf.flow", f"dir={work}")
    until(lambda: lines(work, "a") == ["start"], "task a to start")
    time.sleep(0.5)
    server.send_signal(signal.SIGTERM)
    assert ended(server) == 0
    db = store()
    tasks = db.list_executions(parent=flow)
    assert [(t["context"]["workflow_task"]["task"], t["status"]) for t in tasks] == [("a", "succeeded")]
    assert db.get_execution(flow)["status"] == "running"  # no new task while stopping: the next start goes on
    assert lines(work, "a") == ["start", "done"] and lines(work, "b") == []
    assert logged(home, "running actions to finish") == 0  # it waited for task a alone, never the workflow

    server = serve(home, base)
    stop_all.append(server)
    done = until(lambda: (r := db.get_execution(flow))["status"] not in ("running", "resuming") and r,
                 "the workflow to end")
    assert done["status"] == "succeeded", done["result"]
    tasks = sorted(db.list_executions(parent=flow), key=lambda r: r["id"])
    assert [(t["context"]["workflow_task"]["task"], t["status"]) for t in tasks] == [
        ("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded")]
    assert [lines(work, name) for name in "abc"] == [["start", "done"]] * 3  # each task ran once
    server.send_signal(signal.SIGTERM)
    assert ended(server) == 0


# -- in the process: the executor's drain ---------------------------------------------------------

async def test_a_cancel_while_stopping_ends_the_action_canceled_not_abandoned(home: Path) -> None:
    """The grace lets actions finish; one canceled meanwhile is canceled by request, as at any other time."""
    from bot.app import Squall

    work, _base = graceful_home(home, grace=600)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[])
    try:
        record = await squall.executions.request("grace.nap", {"dir": str(work), "name": "nap", "seconds": 60},
                                                 {"user": "tester"})
        while lines(work, "nap") != ["start"]:
            await asyncio.sleep(0.02)
        again = asyncio.Event()
        stopping = asyncio.create_task(let_runs_finish(squall, 600, again))
        while not squall.executions.stopping:
            await asyncio.sleep(0.01)
        await squall.executions.cancel(record["id"])
        async with asyncio.timeout(30):
            await stopping  # nothing runs any more: the wait is over
        done = await squall.executions.get(record["id"])
        assert done["status"] == "canceled", done["result"]
    finally:
        await squall.close()


async def test_nothing_waiting_for_a_slot_starts_while_stopping() -> None:
    """A run queued behind `max_concurrency` when the stop comes never starts (the next start runs it)."""
    started: list[str] = []
    release = asyncio.Event()

    async def run(execution_id: str) -> None:
        started.append(execution_id)
        await release.wait()

    executor = LocalExecutor(run, max_concurrency=1)
    await executor.submit("first")
    await executor.submit("second")  # waits for the one slot
    await asyncio.sleep(0)
    assert started == ["first"]
    again = asyncio.Event()
    draining = asyncio.create_task(executor.drain(600, again))
    await asyncio.sleep(0)
    await executor.submit("third")  # refused: stopping
    release.set()
    assert await draining == set()
    await executor.close()
    assert started == ["first"] and executor.running == set()


async def test_drain_returns_what_still_runs_when_asked_to_stop_again() -> None:
    async def run(_execution_id: str) -> None:
        await asyncio.Event().wait()

    executor = LocalExecutor(run)
    await executor.submit("stuck")
    await asyncio.sleep(0)
    again = asyncio.Event()
    draining = asyncio.create_task(executor.drain(600, again))
    await asyncio.sleep(0)
    assert not draining.done()
    again.set()
    assert await draining == {"stuck"}
    await executor.close()
    assert executor.running == set()


# -- the setting ------------------------------------------------------------------------------------

def test_shutdown_grace_defaults_to_30_seconds_and_0_is_at_once(home: Path) -> None:
    assert load_config(home / "config.yml").shutdown_grace == 30.0
    write(home / "config.yml", (home / "config.yml").read_text() + "executor:\n  shutdown_grace: 0\n")
    assert load_config(home / "config.yml").shutdown_grace == 0.0


@pytest.mark.parametrize("value", ["-1", "'30s'", "true", ".inf", "[30]"])
def test_a_shutdown_grace_that_is_not_seconds_is_refused_naming_the_key(home: Path, value: str) -> None:
    write(home / "config.yml", (home / "config.yml").read_text() + f"executor:\n  shutdown_grace: {value}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(home / "config.yml")
    message = str(refused.value)
    assert "'executor.shutdown_grace' must be seconds, 0 or more" in message and str(home / "config.yml") in message
    assert "0 abandons them at once" in message
