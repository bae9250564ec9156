"""How a `squall worker` stops (`executor.kind: procrastinate`, the suite's real PostgreSQL): a second
stop signal during the drain stops it at once, its executions left to the reaper; the executions a
drain's end cut short say why they ended, and a workflow's task cut so runs again on another worker; a
`squall serve` restarted after a worker was killed leaves that worker's executions to the reaper (which
names the worker and audits the end)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App, PsycopgConnector

from bot.worker import WORKER_ABANDON, JobWorker
from engine.executions import ABANDONED_BY
from engine.jobs import REAPER_ABANDON, STALLED_SECONDS
from engine.storage import Store
from engine.wakeups import libpq_url
from tests.conftest import write
from tests.test_scaleout import Cluster, _home

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _with_python_nap(home: Path) -> Path:
    """`_home`'s packs, plus `demo.pynap`: a python action that sleeps, then writes its marker."""
    write(home / "packs" / "demo" / "actions" / "pynap.yaml", """
        name: pynap
        runner_type: python-script
        entry_point: pynap.py
        parameters:
          seconds: {type: integer, default: 30}
          marker: {type: string, required: true}
    """)
    write(home / "packs" / "demo" / "actions" / "pynap.py", """
        import time

        from st2common.runners.base_action import Action

        class PyNap(Action):
            def run(self, seconds, marker):
                time.sleep(seconds)
                with open(marker, "a") as f:
                    f.write("ran\\n")
                return {"slept": seconds}
    """)
    return home


@pytest.fixture
def cluster(home: Path, postgres_url: str) -> Iterator[Cluster]:
    group = Cluster(_with_python_nap(_home(home, postgres_url)))
    try:
        yield group
    finally:
        group.close()


def _output(process: subprocess.Popen[str]) -> str:
    return process.stdout.read() if process.stdout else ""


def _events(cluster: Cluster, event: str, execution_id: str) -> list[dict[str, Any]]:
    return [row for row in cluster.store.audit_list(limit=1000, event=event) if row["target"] == execution_id]


def test_a_second_sigterm_stops_a_draining_worker_at_once(cluster: Cluster, tmp_path: Path) -> None:
    """A second SIGTERM while a worker drains a shell and a python action: it cancelled procrastinate's
    wait for the jobs and closed the engine while their ends were still to be stored, which failed
    ('cannot schedule new futures after shutdown'), and the process hung for good (no database
    connection, no health answer). It must exit, its executions ended `abandoned`, saying why."""
    worker = cluster.worker("--drain", "120")
    shell = cluster.request("demo.nap", f"marker={tmp_path / 'shell'}", "seconds=25")
    python = cluster.request("demo.pynap", f"marker={tmp_path / 'python'}", "seconds=25")
    cluster.wait(shell, "running")
    cluster.wait(python, "running")
    started = time.monotonic()
    time.sleep(1)  # the python action's process is up
    os.killpg(worker.pid, signal.SIGTERM)
    time.sleep(1)
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=15)  # a deadline, under the actions' 25 s and the 120 s drain
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        raise AssertionError(f"the worker did not exit after a second SIGTERM:\n{_output(worker)}") from None
    said = _output(worker)
    assert worker.returncode == 0 and "cannot schedule new futures" not in said, said
    assert "second stop signal ended its drain (120 s) with 2 job(s) still running" in said, said
    for execution_id in (shell, python):
        done = cluster.wait(execution_id, "abandoned", seconds=STALLED_SECONDS + 30)  # here, or by a reaper
        assert f":{worker.pid} was stopped and a second stop signal ended its drain" in done["result"]["error"]
        [event] = _events(cluster, WORKER_ABANDON, execution_id)
        assert event["detail"]["reason"] == done["result"]["error"]
    time.sleep(max(0.0, started + 27 - time.monotonic()))
    assert not (tmp_path / "shell").exists() and not (tmp_path / "python").exists()  # stopped, not left to run


def test_an_action_a_drain_cut_short_says_why_it_was_abandoned(cluster: Cluster, tmp_path: Path) -> None:
    """Its error said 'Squall shut down while it was running' while its audit event and the worker's
    warning said which worker stopped and that its drain ran out: now the error says so too."""
    worker = cluster.worker("--drain", "1")
    napping = cluster.request("demo.nap", f"marker={tmp_path / 'never'}", "seconds=60")
    cluster.wait(napping, "running")
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    done = cluster.execution(napping)
    assert done["status"] == "abandoned", done
    [event] = _events(cluster, WORKER_ABANDON, napping)
    assert done["result"]["error"] == event["detail"]["reason"]
    assert f":{worker.pid} was stopped and its drain (1 s) ran out" in done["result"]["error"]


def test_serve_restarted_leaves_a_killed_workers_actions_to_the_reaper(cluster: Cluster, tmp_path: Path) -> None:
    """`squall serve` started after a worker on its host was killed ended that worker's action at once in
    its recovery, as if Squall had stopped ('it was abandoned'), with no audit event and no line naming the
    worker. The poll's sweep leaves such jobs to the reaper, and so does the recovery now: the action ends
    with the reaper's reason, naming the worker, and its `reaper.execution.abandon` event."""
    doomed = cluster.worker()
    napping = cluster.request("demo.nap", f"marker={tmp_path / 'never'}", "seconds=120")
    assert cluster.wait(napping, "running")["runner_info"]["worker"].endswith(f":{doomed.pid}")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=30)
    cluster.serve()
    done = cluster.wait(napping, "abandoned", seconds=STALLED_SECONDS + 30)
    assert "stopped answering" in done["result"]["error"] and f":{doomed.pid}" in done["result"]["error"], done
    [event] = _events(cluster, REAPER_ABANDON, napping)
    assert event["detail"]["worker"].endswith(f":{doomed.pid}")


#: `demo.slow_flow` as an ActionChain: a nap, then a hello.
SLOW_CHAIN = """
chain:
  - name: first
    ref: demo.nap
    parameters: {seconds: 6, marker: "{{ marker }}"}
    on-success: second
  - name: second
    ref: demo.hello
    parameters: {who: second}
"""


@pytest.mark.parametrize("ref", ["demo.slow_flow", "demo.slow_chain"])
def test_a_workflows_task_a_drain_cut_short_runs_again_on_another_worker(cluster: Cluster, tmp_path: Path,
                                                                          ref: str) -> None:
    """SIGTERM to the worker running a workflow's task, whose drain ran out: the task ended `abandoned`
    with the drain's reason, and the workflow failed (the ActionChain ended `abandoned`), where a kill -9
    had the task run again. Now it runs again on the other worker, and the workflow succeeds."""
    write(cluster.home / "packs" / "demo" / "actions" / "slow_chain.yaml", """
        name: slow_chain
        runner_type: action-chain
        entry_point: chains/slow_chain.yaml
        parameters:
          marker: {type: string, required: true}
    """)
    write(cluster.home / "packs" / "demo" / "actions" / "chains" / "slow_chain.yaml", SLOW_CHAIN)
    stopping = cluster.worker("--drain", "1")
    marker = tmp_path / "first-ran"
    flow = cluster.request(ref, f"marker={marker}", *(["seconds=6"] if ref == "demo.slow_flow" else []))
    deadline = time.monotonic() + 60
    while not [c for c in cluster.store.list_executions(parent=flow) if c["status"] == "running"]:
        assert time.monotonic() < deadline, "the workflow's first task did not start"
        time.sleep(0.1)
    os.killpg(stopping.pid, signal.SIGTERM)
    assert stopping.wait(timeout=60) == 0
    assert not marker.exists()  # cut short, not left to run
    cluster.worker()
    done = cluster.wait(flow, "succeeded", "failed", "abandoned", seconds=STALLED_SECONDS + 60)
    assert done["status"] == "succeeded", done["result"]
    tasks = sorted(cluster.store.list_executions(parent=flow), key=lambda r: r["start_timestamp"])
    assert [(t["action"], t["status"]) for t in tasks] == [
        ("demo.nap", "abandoned"), ("demo.nap", "succeeded"), ("demo.hello", "succeeded")]
    cut = tasks[0]["result"]
    assert f":{stopping.pid} was stopped and its drain (1 s) ran out" in cut["error"] and cut[ABANDONED_BY] == "drain"
    assert marker.read_text() == "ran\n"  # the cut run never finished; the task ran to its end once


async def test_a_job_fetched_as_a_second_signal_cuts_the_running_ones_goes_back_to_its_queue(
        postgres_url: str) -> None:
    """A job whose fetch was in flight when a second stop signal cut the running jobs short started after
    the cut, under no cut at all: the stop meant to be now waited for it to finish (for ever without a
    drain). It goes back to its queue unstarted now, for another worker, and the worker stops at once."""
    Store.open(postgres_url).close()  # the schema, procrastinate's tables among it
    app = App(connector=PsycopgConnector(conninfo=libpq_url(postgres_url), min_size=1, max_size=4))
    started: list[int] = []

    @app.task(name="nap", retry=False)
    async def nap(n: int) -> None:
        started.append(n)
        await asyncio.sleep(120)

    cut: list[tuple[list[str], bool]] = []
    async with app.open_async():
        first, second = await nap.defer_async(n=1), await nap.defer_async(n=2)
        fetch = app.job_manager.fetch_job
        fetched, release = asyncio.Event(), asyncio.Event()

        async def held_fetch(queues: Any, worker_id: int) -> Any:
            job = await fetch(queues=queues, worker_id=worker_id)
            if job is not None and job.id == second:  # in flight as the second signal comes
                fetched.set()
                await release.wait()
            return job

        app.job_manager.fetch_job = held_fetch  # type: ignore[method-assign]
        runner = JobWorker(app, postgres_url, lambda ids, _drain, now: cut.append((ids, now)), concurrency=2,
                           name="cut-test", shutdown_graceful_timeout=None, install_signal_handlers=False)
        running = asyncio.create_task(runner.run())
        await asyncio.wait_for(fetched.wait(), 30)
        while not started:
            await asyncio.sleep(0.01)
        runner.stop()  # the first signal: the drain (no end: `shutdown_graceful_timeout` None)
        runner.stop_now()  # the second: what runs is cut short now
        release.set()
        await asyncio.wait_for(running, 30)  # the job fetched meanwhile does not hold the stop up
        async with app.connector.pool.connection() as conn, conn.cursor() as cursor:
            await cursor.execute("SELECT id, status FROM procrastinate_jobs ORDER BY id")
            statuses = dict(await cursor.fetchall())
    assert started == [1]  # the second job never started here
    assert [now for _ids, now in cut] == [True]  # the first was cut short, once
    assert statuses[second] == "todo", statuses  # back in its queue, for another worker
    assert statuses[first] != "doing", statuses
