"""The scale-out reaper and the PostgreSQL server's wall clock (`engine.jobs.reap_stalled`).

Heartbeats are stored with the server's `now()`. The reaper judged them by their age by that clock,
so a step of the server's clock judged them wrongly: forward (NTP), every worker's heartbeat looked
an hour old until its next beat, and the reaper abandoned what live workers ran (a retry policy then
ran it twice); back, heartbeats (and `pg_postmaster_start_time()`) lay in the future, and a killed
worker's runs stayed `running` for the length of the step. Now a reaper judges a heartbeat by whether
it changes, over its own monotonic clock, and abandons only while the heartbeat is still the one it
watched. The reaper's clock is the test's (`jobs.time`); the rows are a real PostgreSQL's. One slow
test runs a PostgreSQL whose clock libfaketime steps back (Debian package `libfaketime`).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.app import Squall
from engine import jobs
from engine.config import load_config
from engine.jobs import ReaperWatch, queue_status
from tests.conftest import server_missing
from tests.pgcluster import Cluster, initdb_path
from tests.test_scaleout import Cluster as Nodes
from tests.test_scaleout import _home

T0 = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)


class Monotonic:
    """The reaper's `time`: a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
async def reaper(home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[Squall, Monotonic]]:
    clock = Monotonic()
    monkeypatch.setattr(jobs, "time", clock)
    squall = await Squall.start(load_config(_home(home, postgres_url) / "config.yml"))
    try:
        yield squall, clock
    finally:
        await squall.close()


async def running_on_a_worker(squall: Squall, heartbeat: str = "now()") -> tuple[str, int, int]:
    """An execution a worker runs: its job `doing` on a worker whose last heartbeat is `heartbeat`
    (SQL); (execution id, job id, worker id)."""
    asked = await squall.executions.request("demo.hello", {"who": "x"})
    jobs.defer(squall.store, asked["id"], "default")
    with squall.store.engine.begin() as conn:
        worker = conn.execute(sa.text(
            f"INSERT INTO procrastinate_workers (last_heartbeat) VALUES ({heartbeat}) RETURNING id")).scalar_one()
        job = conn.execute(sa.text("SELECT id FROM procrastinate_jobs WHERE args ->> 'execution_id' = :e"),
                           {"e": asked["id"]}).scalar_one()
        conn.execute(sa.text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :j"),
                     {"w": worker, "j": job})
    squall.store.update_execution(asked["id"], {"status": "running", "runner_info": {
        "job_id": job, "worker": "w:1", "hostname": "elsewhere", "pid": 1}})
    return asked["id"], job, worker


def beat(squall: Squall, worker: int, heartbeat: str = "clock_timestamp()") -> None:
    """The worker stores a heartbeat: `heartbeat` (SQL), by the server's clock."""
    with squall.store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE procrastinate_workers SET last_heartbeat = {heartbeat} WHERE id = :w"),
                     {"w": worker})


def status(squall: Squall, execution_id: str) -> str:
    return str(squall.store.get_execution(execution_id)["status"])


async def watch(squall: Squall, clock: Monotonic, seconds: float, between: Any = None) -> None:
    """Reaping passes every `REAP_SECONDS` of the reaper's clock for `seconds`; `between()` runs
    before each."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += jobs.REAP_SECONDS
        if between is not None:
            between()
        await jobs.reap_stalled(squall.executions, squall.jobs)


@pytest.mark.postgres
async def test_a_forward_step_of_the_servers_clock_abandons_nothing_a_live_worker_runs(
        reaper: tuple[Squall, Monotonic]) -> None:
    """The worker beats every 5 s; the reaper has watched it for longer than the stall time. Then the
    server's clock steps an hour forward: the heartbeat written just before is an hour old by the
    server's `now()` until the worker's next beat. It changed, so the worker is alive: its run goes
    on. Once the worker stops beating, the reaper ends the run after the stall time as before."""
    squall, clock = reaper
    execution, _job, worker = await running_on_a_worker(squall)
    await watch(squall, clock, 30, lambda: beat(squall, worker))
    beat(squall, worker, "now() - interval '1 hour'")  # the last beat before the step, by the new clock
    await watch(squall, clock, 5)
    assert status(squall, execution) == "running"
    await watch(squall, clock, 30, lambda: beat(squall, worker))  # beats by the stepped clock
    assert status(squall, execution) == "running"
    await watch(squall, clock, jobs.STALLED_SECONDS - jobs.REAP_SECONDS)  # it stops beating
    assert status(squall, execution) == "running"
    await watch(squall, clock, 2 * jobs.REAP_SECONDS)
    assert status(squall, execution) == "abandoned"


@pytest.mark.postgres
async def test_a_backward_step_of_the_servers_clock_still_ends_a_killed_workers_run(
        reaper: tuple[Squall, Monotonic]) -> None:
    """The server's clock went back an hour after the worker's last beat, then the worker was killed:
    its heartbeat lies an hour in the future by the server's `now()` (as `pg_postmaster_start_time()`
    does when the clock goes back after the server's start), and it was never older than the stall
    time: the run stayed `running` for an hour. It never changes again, so the reaper ends the run
    once it has watched it unchanged for the stall time."""
    squall, clock = reaper
    execution, _job, _worker = await running_on_a_worker(squall, "now() + interval '1 hour'")
    await watch(squall, clock, jobs.STALLED_SECONDS)
    assert status(squall, execution) == "running"  # watched unchanged since the first of these passes
    await watch(squall, clock, jobs.REAP_SECONDS)
    done = squall.store.get_execution(execution)
    assert done["status"] == "abandoned" and "stopped answering" in done["result"]["error"]


@pytest.mark.postgres
async def test_a_worker_that_beats_as_it_is_judged_stalled_is_not_abandoned(
        reaper: tuple[Squall, Monotonic], monkeypatch: pytest.MonkeyPatch) -> None:
    """Reapers judge from what each has watched, so they may disagree about a worker for a moment.
    None may abandon a worker that beat after its judgement: the job is failed only while the worker's
    heartbeat is still the one the reaper watched, checked under a lock in the transaction that fails
    it. Here the worker, silent for an hour, beats between the reaper's look and its abandon."""
    squall, clock = reaper
    execution, job, worker = await running_on_a_worker(squall, "now() - interval '1 hour'")
    await watch(squall, clock, jobs.STALLED_SECONDS)  # the next pass finds it silent for the stall time
    assert status(squall, execution) == "running"
    looked = jobs._stalled

    def look_then_beat(*args: Any) -> Any:
        found = looked(*args)
        beat(squall, worker)
        return found

    monkeypatch.setattr(jobs, "_stalled", look_then_beat)
    await watch(squall, clock, jobs.REAP_SECONDS)
    assert status(squall, execution) == "running"
    with squall.store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM procrastinate_jobs WHERE id = :j"),
                            {"j": job}).scalar_one() == "doing"


@pytest.mark.postgres
async def test_a_job_whose_worker_is_gone_ends_at_the_first_look(reaper: tuple[Squall, Monotonic]) -> None:
    """A worker whose row is gone (it unregistered, or was removed) beats no more: no watching needed."""
    squall, _clock = reaper
    execution, _job, worker = await running_on_a_worker(squall)
    with squall.store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM procrastinate_workers WHERE id = :w"), {"w": worker})
    assert await jobs.reap_stalled(squall.executions, squall.jobs) == 1
    assert status(squall, execution) == "abandoned"


def test_a_watch_forgets_what_it_saw_across_a_gap_or_a_server_restart() -> None:
    """A heartbeat unchanged across a time the reaper did not see (a gap between its looks), or
    across a restart of PostgreSQL (its start time changed: nobody could beat while it was down), says
    nothing: the reaper starts watching it anew. Only the start time's change counts, never how it
    compares with the clock: after a step back it lies in the future."""
    watch = ReaperWatch()
    started, later = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    watch.saw(0.0, started)
    watch.observe({7: T0}, 0.0)
    for now in (5.0, 10.0, 15.0, 20.0):
        watch.saw(now, started)
        watch.observe({7: T0}, now)
    assert watch.stalled(7, T0, 20.0)
    watch.saw(25.0, later)  # PostgreSQL restarted between two looks
    watch.observe({7: T0}, 25.0)
    assert watch.silent(7, T0, 45.0) == 20.0 and not watch.stalled(7, T0, 40.0)
    watch.saw(25.0 + jobs.STALLED_SECONDS, later)  # the reaper did not look for the stall time
    watch.observe({7: T0}, 25.0 + jobs.STALLED_SECONDS)
    assert not watch.stalled(7, T0, 25.0 + jobs.STALLED_SECONDS + 5)
    watch.observe({}, 50.0)  # its row is gone: forgotten
    assert watch.silent(7, T0, 100.0) == 0.0


def test_a_watch_counts_only_an_unchanged_heartbeat_whatever_its_value() -> None:
    """A heartbeat that changes, forward or back by the wall clock, is a live worker's."""
    watch = ReaperWatch()
    values = [T0, T0 + timedelta(hours=1), T0 - timedelta(hours=1), T0 - timedelta(hours=1, seconds=-5)]
    for now, value in zip((0.0, 5.0, 10.0, 15.0), values, strict=True):
        watch.saw(now)
        watch.observe({7: value}, now)
    assert watch.silent(7, values[-1], 30.0) == 15.0 and not watch.stalled(7, values[-1], 30.0)
    assert watch.silent(7, T0, 30.0) == 0.0  # not the heartbeat it holds now


@pytest.mark.postgres
async def test_queue_status_judges_workers_as_the_reaper_does(reaper: tuple[Squall, Monotonic]) -> None:
    """The status page's `stalled` is the reaper's judgement when given its watch: a worker it saw
    beat is alive however old its heartbeat looks by the server's clock, one it watched unchanged for
    the stall time is stalled even with a heartbeat in the future. Without the watch (or for a worker
    it has not seen), the age by the server's clock."""
    squall, clock = reaper
    _e1, _j1, live = await running_on_a_worker(squall, "now() - interval '1 hour'")
    _e2, _j2, dead = await running_on_a_worker(squall, "now() + interval '1 hour'")
    await watch(squall, clock, jobs.STALLED_SECONDS + jobs.REAP_SECONDS,
                lambda: beat(squall, live, "last_heartbeat + interval '5 seconds'"))
    assert {w["id"]: w["stalled"] for w in queue_status(squall.store, squall.jobs.watch)["workers"]} == {
        live: False, dead: True}
    assert {w["id"]: w["stalled"] for w in queue_status(squall.store)["workers"]} == {live: True, dead: False}


@pytest.fixture
def stepped_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Cluster, Path]]:
    """A PostgreSQL of its own started an hour ahead under libfaketime, which reads the offset from
    the returned file at every call: writing `+0` there steps the server's clock back."""
    initdb, preload = initdb_path(), sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if initdb is None:
        server_missing("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
    if not preload:
        server_missing("libfaketime is not installed (Debian package 'libfaketime')")
    folder = Path(tempfile.mkdtemp(prefix="squall-clock-"))
    folder.chmod(0o755)  # the server may run as another user (`Cluster`): it reads the offset
    offset = folder / "offset"
    offset.write_text("+3600\n")
    offset.chmod(0o644)
    server = Cluster(initdb, prefix="squall-pg-clock-")
    try:
        with monkeypatch.context() as env:
            for name, value in (("LD_PRELOAD", preload[-1]), ("FAKETIME_TIMESTAMP_FILE", str(offset)),
                                ("FAKETIME_NO_CACHE", "1"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")):
                env.setenv(name, value)
            server.start()
        yield server, offset
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_a_killed_workers_run_ends_after_the_servers_clock_stepped_back(
        home: Path, stepped_server: tuple[Cluster, Path], tmp_path: Path) -> None:
    """The database host booted an hour ahead and NTP stepped its clock back: PostgreSQL's start time
    lay an hour in the future, and the reaper's `GREATEST(last_heartbeat, pg_postmaster_start_time())`
    was never older than the stall time: a killed worker's run stayed `running` for that hour. Now
    another worker's reaper ends it as for any killed worker."""
    server, offset = stepped_server
    url = server.create("clock")
    offset.write_text("+0\n")
    nodes = Nodes(_home(home, url))
    try:
        with nodes.store.engine.connect() as conn:  # the condition of the bug, as the server sees it
            assert conn.execute(sa.text("SELECT pg_postmaster_start_time() > now() + interval '50 minutes'")).scalar()
        doomed = nodes.worker()
        napping = nodes.request("demo.nap", f"marker={tmp_path / 'never'}", "seconds=600")
        assert nodes.wait(napping, "running")["runner_info"]["worker"].endswith(f":{doomed.pid}")
        os.killpg(doomed.pid, signal.SIGKILL)
        nodes.worker()
        done = nodes.wait(napping, "abandoned", seconds=jobs.STALLED_SECONDS + 30)
        assert "stopped answering" in done["result"]["error"]
    finally:
        nodes.close()
