"""A PostgreSQL outage under the scale-out executor (`executor.kind: procrastinate`): a database that is
away longer than the stall time abandons nothing a live worker runs (an `action.retry` policy would run it
twice), because a reaper judges a worker's heartbeat only across time it watched itself; a worker beats
again and listens again once the database is back; a run that another node ended meanwhile is let go
with one line each, from the execution and from its job, and no unretrieved task exception.

The outage tests stop a throwaway cluster of this module's own (`tests.pgcluster.Cluster`, as the
suite's `postgres_server` makes one) and start it again; the others use the suite's cluster. The
in-process worker is `bot.worker.work`, stopped with SIGTERM as systemd stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
import sqlalchemy as sa

from engine.config import Config, load_config
from engine.storage import Store
from tests.conftest import server_missing, write
from tests.pgcluster import Cluster, Stoppable, initdb_path, own_cluster
from tests.test_cli import SQUALL
from tests.test_scaleout import _home

pytestmark = [pytest.mark.postgres]

RETRY = "name: retry\nresource_ref: demo.nap\npolicy_type: action.retry\n" \
        "parameters: {retry_on: failure, max_retry_count: 1}\n"
#: What asyncio logs for a task that ended with an exception nobody looked at.
UNRETRIEVED = "exception was never retrieved"


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, limit: float = 60.0) -> None:
    """Poll until `check()` holds (a guard against hanging, not an assertion about time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        held = check()
        if held if isinstance(held, bool) else await held:
            return
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


def _sql(url: str, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """`query`'s rows on a connection of its own; [] while the server is away or the tables are not
    made yet (the caller polls)."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            return list(conn.execute(query, params).fetchall() if params else conn.execute(query).fetchall())
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return []


def _listening(url: str) -> bool:
    """Whether some connection listens for procrastinate's jobs (its last statement was the LISTEN)."""
    return bool(_sql(url, "SELECT 1 FROM pg_stat_activity WHERE query ILIKE 'LISTEN %procrastinate%'"))


def _beat_since_start(url: str) -> bool:
    """Whether every registered worker stored a heartbeat since the server last started."""
    rows = _sql(url, "SELECT count(*), bool_and(last_heartbeat > pg_postmaster_start_time()) "
                     "FROM procrastinate_workers")
    return bool(rows) and rows[0][0] > 0 and bool(rows[0][1])


def _status(url: str, execution_id: str) -> str | None:
    rows = _sql(url, "SELECT status FROM executions WHERE id = %(id)s", {"id": execution_id})
    return rows[0][0] if rows else None


@pytest.fixture(scope="module")
def outage_cluster() -> Iterator[Cluster]:
    """A cluster of this module's own: its tests stop it, which the session's shared one must never be."""
    initdb = initdb_path()
    if initdb is None:
        server_missing("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
    yield from own_cluster(initdb, "squall-pg-reaper-")


@pytest.fixture
def server(outage_cluster: Cluster) -> Iterator[Stoppable]:
    running = Stoppable(outage_cluster)
    try:
        yield running
    finally:
        if not running.running:
            running.up()


@pytest.fixture
def outage_url(outage_cluster: Cluster) -> str:
    return outage_cluster.create(f"t_{uuid.uuid4().hex[:12]}")


def _run(home: Path, *args: str) -> Any:
    done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args, "--json"], cwd=home,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextlib.asynccontextmanager
async def _worker(config: Config, url: str) -> AsyncIterator[asyncio.Task[None]]:
    """`squall worker` in this process (its log in caplog, its tasks on this loop), up once it has
    registered; stopped at the end with SIGTERM, as systemd stops it."""
    from bot.worker import work

    running = asyncio.create_task(work(config, None, 2, drain=120))
    try:
        await until(lambda: running.done() or bool(_sql(url, "SELECT 1 FROM procrastinate_workers")),
                    "the worker to register")
        assert not running.done(), running.exception()
        yield running
    finally:
        if not running.done() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            running.cancel()  # not up yet: a SIGTERM would end pytest itself
            with contextlib.suppress(asyncio.CancelledError):
                await running
        elif not running.done():
            signal.raise_signal(signal.SIGTERM)
            await asyncio.wait_for(running, 180)


# -- a reaper judges heartbeats only across time it watched ---------------------------------------

async def test_a_reaper_judges_no_heartbeat_across_a_time_it_could_not_see(home: Path, postgres_url: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A reaper whose own database access was cut (its passes failing) found, once back, every worker's
    heartbeat older than the stall time, since none could beat meanwhile either, and abandoned what
    they ran. Now it judges a heartbeat only once it has watched the database for the stall time
    itself: a worker that stays silent that long is still taken for dead."""
    from bot.app import Squall
    from engine import jobs

    monkeypatch.setattr(jobs, "STALLED_SECONDS", 2.0)
    squall = await Squall.start(load_config(_home(home, postgres_url) / "config.yml"))
    executions, store = squall.executions, squall.store
    try:
        asked = await executions.request("demo.hello", {"who": "x"})
        with store.engine.begin() as conn:  # a live worker took its job and runs it
            worker = conn.execute(sa.text("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")).scalar()
            job = conn.execute(sa.text("SELECT max(id) FROM procrastinate_jobs")).scalar()
            conn.execute(sa.text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :j"),
                         {"w": worker, "j": job})
        store.update_execution(asked["id"], {"status": "running", "runner_info": {
            "job_id": job, "worker": "w:1", "hostname": "elsewhere", "pid": 1}})
        await jobs.reap_stalled(executions, squall.jobs)
        assert store.get_execution(asked["id"])["status"] == "running"

        real = jobs._stalled

        def cut(*args: Any) -> Any:
            raise sa.exc.OperationalError("SELECT ...", {}, OSError("the reaper's network is cut"))

        monkeypatch.setattr(jobs, "_stalled", cut)
        with store.engine.begin() as conn:  # nobody reached the database: the worker could not beat either
            conn.execute(sa.text("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '30 seconds'"))
        await asyncio.sleep(jobs.STALLED_SECONDS)  # cut off for longer than the stall time
        with pytest.raises(sa.exc.OperationalError):
            await jobs.reap_stalled(executions, squall.jobs)
        monkeypatch.setattr(jobs, "_stalled", real)

        await jobs.reap_stalled(executions, squall.jobs)  # back: the heartbeat is old, but it saw none of that
        assert store.get_execution(asked["id"])["status"] == "running"

        async def reaped() -> bool:  # the worker stays silent while the reaper watches: it is dead
            await jobs.reap_stalled(executions, squall.jobs)
            return store.get_execution(asked["id"])["status"] != "running"

        await until(reaped, "the silent worker's execution to be reaped", limit=30)
        done = store.get_execution(asked["id"])
        assert done["status"] == "abandoned" and "stopped answering" in done["result"]["error"]
    finally:
        await squall.close()


# -- the review's outage: serve and a worker, a retry policy, PostgreSQL away past the stall time --------

@pytest.mark.slow
def test_a_database_outage_abandons_nothing_a_live_worker_runs(home: Path, outage_url: str, server: Stoppable,
                                                               tmp_path: Path) -> None:
    """PostgreSQL stopped for longer than the stall time while a worker ran an action: once it was back,
    the leader's reaper found the worker's heartbeat stale (nobody could beat) and abandoned the run,
    and the retry policy ran the action a second time; the worker's LISTEN was gone for good. Now the
    run ends as it ran, once, the worker beats and listens again, and nothing is left unretrieved."""
    from engine.jobs import STALLED_SECONDS

    _home(home, outage_url)
    write(home / "packs" / "demo" / "policies" / "retry.yaml", RETRY)
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "worker")}
    processes = []
    for name, argv in (("serve", ["serve"]), ("worker", ["worker", "--concurrency", "2"])):
        with logs[name].open("w") as out:
            processes.append(subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), *argv], cwd=home,
                                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    marker = tmp_path / "ran"
    try:
        asyncio.run(until(lambda: _listening(outage_url), "the worker to listen"))
        asked = _run(home, "run", "demo.nap", "seconds=4", f"marker={marker}", "--async")["id"]
        asyncio.run(until(lambda: _status(outage_url, asked) == "running", "the nap to run"))
        server.down()
        time.sleep(STALLED_SECONDS + 4)  # away for longer than the stall time
        server.up()
        asyncio.run(until(lambda: _status(outage_url, asked) not in (None, "running"), "the nap to end", 120))
        assert _status(outage_url, asked) == "succeeded"
        asyncio.run(until(lambda: _beat_since_start(outage_url), "the worker to beat again"))
        asyncio.run(until(lambda: _listening(outage_url), "the worker to listen again"))
        runs = _sql(outage_url, "SELECT id, status FROM executions WHERE action = 'demo.nap'")
        assert runs == [(asked, "succeeded")]  # no retry: it did not fail
        assert marker.read_text() == "ran\n"  # it ran once
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    worker_log = logs["worker"].read_text()
    assert UNRETRIEVED not in worker_log, worker_log[-3000:]


# -- a worker's side of it ----------------------------------------------------------------------------

@pytest.mark.slow
async def test_a_workers_listen_and_heartbeat_come_back_after_a_restart(home: Path, outage_url: str, server: Stoppable,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """procrastinate's listener tried once to connect again, while the server was still shutting down,
    and ended: the worker took jobs on its 5 s poll from then on, and said nothing until it stopped.
    It listens again now, saying so once, and beats again."""
    from bot import worker

    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", 0.5)
    caplog.set_level(logging.INFO)
    config = load_config(_home(home, outage_url) / "config.yml")
    async with _worker(config, outage_url):
        await until(lambda: _listening(outage_url), "the worker to listen")
        await asyncio.to_thread(server.down, "fast")
        await asyncio.sleep(2 * worker.HEARTBEAT_SECONDS)  # a heartbeat falls in the outage
        await asyncio.to_thread(server.up)
        await until(lambda: _listening(outage_url), "the worker to listen again")
        await until(lambda: _beat_since_start(outage_url), "the worker to beat again")
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "lost the database connection that listens for" in m]) == 1, said
    assert [m for m in said if "listening for new jobs" in m and "again" in m], said


@pytest.mark.slow
async def test_a_failed_heartbeat_is_tried_again_until_stored(home: Path, outage_url: str, server: Stoppable,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """procrastinate's heartbeat task ended at its first failure (a pooled connection the outage broke,
    or none within the pool's 30 s): the worker never beat again, and once a reaper had watched for the
    stall time, what it ran was abandoned though it ran on. Its pool, moreover, tries to connect again
    at doubling intervals, long after the database is back: here it never gives a connection, and the
    worker beats once the server is back all the same, saying once that it could not."""
    from procrastinate import exceptions
    from procrastinate.manager import JobManager

    from bot import worker

    async def waiting_out_its_backoff(self: JobManager, worker_id: int) -> None:
        raise exceptions.ConnectorException() from psycopg_pool.PoolTimeout("couldn't get a connection")

    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", 0.5)
    monkeypatch.setattr(JobManager, "update_heartbeat", waiting_out_its_backoff)
    caplog.set_level(logging.INFO)
    config = load_config(_home(home, outage_url) / "config.yml")
    async with _worker(config, outage_url):
        await asyncio.to_thread(server.down)
        await asyncio.sleep(4 * worker.HEARTBEAT_SECONDS)  # heartbeats fall in the outage
        await asyncio.to_thread(server.up)
        await until(lambda: _beat_since_start(outage_url), "the worker to beat again")
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "its heartbeat could not be stored" in m]) == 1, said
    assert len([m for m in said if "its heartbeat is stored again" in m]) == 1, said


@pytest.mark.slow
async def test_a_fetch_that_fails_for_want_of_the_database_is_tried_again(home: Path, postgres_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A fetch that got no connection (an outage longer than the pool's 30 s wait, or its reconnection
    backoff after one) stopped procrastinate's worker loop: the worker drained and exited. It fetches
    again at the next poll or notification now, saying so once."""
    from procrastinate import exceptions
    from procrastinate.manager import JobManager

    real = JobManager.fetch_job
    failures = [2]

    async def no_connection(self: JobManager, *args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise exceptions.ConnectorException() from psycopg_pool.PoolTimeout("couldn't get a connection")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(JobManager, "fetch_job", no_connection)
    caplog.set_level(logging.INFO)
    config = load_config(_home(home, postgres_url) / "config.yml")
    async with _worker(config, postgres_url) as running:
        await until(lambda: running.done() or failures[0] == 0, "two fetches to fail")
        asked = (await asyncio.to_thread(_run, home, "run", "demo.hello", "who=later", "--async"))["id"]
        await until(lambda: running.done() or _status(postgres_url, asked) == "succeeded", "the run")
        assert not running.done(), "the worker stopped"
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "could not fetch jobs (couldn't get a connection)" in m]) == 1, said
    assert len([m for m in said if "fetches jobs again" in m]) == 1, said


@pytest.mark.slow
async def test_a_draining_worker_goes_on_beating(home: Path, postgres_url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """At SIGTERM procrastinate stopped the heartbeat before it waited for the running jobs: an action
    draining for longer than the stall time was abandoned by another node's reaper (and retried)."""
    from bot import worker

    monkeypatch.setattr(worker, "HEARTBEAT_SECONDS", 0.5)
    config = load_config(_home(home, postgres_url) / "config.yml")
    async with _worker(config, postgres_url) as running:
        asked = (await asyncio.to_thread(_run, home, "run", "demo.nap", "seconds=5", f"marker={tmp_path / 'ran'}",
                                         "--async"))["id"]
        await until(lambda: _status(postgres_url, asked) == "running", "the nap to run")
        signal.raise_signal(signal.SIGTERM)  # drain: the nap goes on
        [(stopped_at,)] = _sql(postgres_url, "SELECT now()")

        def beat_or_ended() -> bool:
            return (_status(postgres_url, asked) != "running"
                    or bool(_sql(postgres_url, "SELECT 1 FROM procrastinate_workers WHERE last_heartbeat > %(t)s",
                                 {"t": stopped_at})))

        await until(beat_or_ended, "a heartbeat or the nap's end")
        assert _status(postgres_url, asked) == "running", "no heartbeat while the nap drained"
        await asyncio.wait_for(running, 60)
    assert _status(postgres_url, asked) == "succeeded"


@pytest.mark.slow
async def test_a_run_ended_elsewhere_meanwhile_is_let_go_with_one_line_each(home: Path, postgres_url: str,
                                                                            tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A worker taken for stalled (frozen, cut off) whose run then ends: the guarded write of its end
    changes nothing, and procrastinate's `finish_job` raises, as the reaper failed the job. The first
    was logged as 'is stored' (after failed tries) or not at all, the second as an asyncio task
    exception nobody retrieved. Now each says what happened, once."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    marker = tmp_path / "ran"
    config = load_config(_home(home, postgres_url) / "config.yml")
    store = Store.open(config.database_url)
    try:
        async with _worker(config, postgres_url):
            asked = (await asyncio.to_thread(_run, home, "run", "demo.nap", "seconds=3", f"marker={marker}",
                                             "--async"))["id"]
            await until(lambda: _status(postgres_url, asked) == "running", "the nap to run")
            job = store.get_execution(asked)["runner_info"]["job_id"]
            # What a reaper that took this worker for stalled does: the run ends abandoned, the job failed.
            assert store.update_execution(asked, {"status": "abandoned", "result": {"error": "taken for stalled"}},
                                          expect=("running",))
            with store.engine.begin() as conn:
                conn.execute(sa.text("SELECT procrastinate_finish_job_v1(:j, 'failed', false)"), {"j": job})
            await until(marker.exists, "the nap to end on the worker")
            await until(lambda: any("was ended by another node meanwhile" in r.getMessage() for r in caplog.records),
                        "the worker to let the job go")
        gc.collect()
    finally:
        store.close()
        loop.set_exception_handler(None)
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if f"execution {asked} ended meanwhile as abandoned" in m]) == 1, said
    assert [m for m in said if "this run's end (succeeded) was not written" in m], said
    assert len([m for m in said if "was ended by another node meanwhile" in m]) == 1, said
    assert not [m for m in said if "is stored" in m], said
    assert not [c for c in unhandled if UNRETRIEVED in str(c.get("message"))], unhandled
    assert not [m for m in said if UNRETRIEVED in m], said
    assert _status(postgres_url, asked) == "abandoned"
