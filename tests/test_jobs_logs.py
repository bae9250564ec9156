"""What the scale-out executor's loops log (`engine.jobs`, `bot.worker`, the chat's result sweep): a
reaper names the dead worker and what it abandoned, once per worker, and audits each action it abandons;
a worker whose drain ran out names what it cut short, and audits each action it abandons; a workflow
between a task's end and the step that end queues (normal operation) is not reported as left; a
database outage is said once as it starts and once as it ends, without a traceback, while any other
failure keeps its traceback every time.

The reaper's tests run on the suite's PostgreSQL with the reaper's monotonic clock the test's
(`tests.test_reaper_clock.Monotonic`); the outage tests need no database: their steps raise a
database failure as SQLAlchemy does."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from bot.app import Squall
from engine import jobs
from engine.config import load_config
from engine.storage import Store
from tests.test_pg_outage import _run, until
from tests.test_pg_outage import _status as _pg_status
from tests.test_reaper_clock import Monotonic, watch
from tests.test_scaleout import _home

#: What the store raises when PostgreSQL is away (SQLAlchemy's error from the driver's).
OUTAGE = sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection failed: Connection refused"))


# -- a reaper names the worker and what it abandoned ------------------------------------------------

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


async def _on_one_worker(squall: Squall, count: int, name: str) -> tuple[list[str], int]:
    """`count` executions of demo.hello running on one worker named `name` (`host:pid`), whose jobs
    are `doing` on it; (execution ids, procrastinate's worker id)."""
    asked = [(await squall.executions.request("demo.hello", {"who": str(n)}))["id"] for n in range(count)]
    with squall.store.engine.begin() as conn:
        worker = conn.execute(sa.text(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now()) RETURNING id")).scalar_one()
        conn.execute(sa.text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w "
                             "WHERE args ->> 'execution_id' IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)), {"w": worker, "ids": asked})
        jobs_of = dict(conn.execute(sa.text("SELECT args ->> 'execution_id', id FROM procrastinate_jobs")).all())
    for execution_id in asked:
        squall.store.update_execution(execution_id, {"status": "running", "runner_info": {
            "job_id": jobs_of[execution_id], "worker": name, "hostname": "web3"}})
    return asked, worker


def _status(squall: Squall, execution_id: str) -> str:
    return str(squall.store.get_execution(execution_id)["status"])


def _warnings(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


@pytest.mark.postgres
async def test_a_reaper_names_the_dead_worker_and_what_it_abandoned_in_one_warning(
        reaper: tuple[Squall, Monotonic], caplog: pytest.LogCaptureFixture) -> None:
    """A killed worker's actions ended `abandoned` with no log line anywhere: nothing named the worker,
    nor which executions it left. Now one warning per worker and pass names the worker (procrastinate's
    id and its `host:pid`), how long its heartbeat stayed the same, and the executions by id and action:
    the first five, and how many more."""
    squall, clock = reaper
    caplog.set_level(logging.INFO, logger="engine.jobs")
    asked, worker = await _on_one_worker(squall, jobs.NAMED + 2, "web3:4242")
    await watch(squall, clock, jobs.STALLED_SECONDS + jobs.REAP_SECONDS)
    assert {_status(squall, execution) for execution in asked} == {"abandoned"}
    await watch(squall, clock, 2 * jobs.REAP_SECONDS)  # nothing is left of it: said once
    [said] = [m for m in _warnings(caplog, "engine.jobs") if "web3:4242" in m]
    assert f"procrastinate worker {worker}" in said
    silent = int(re.search(r"has not changed for (\d+) s", said).group(1))  # type: ignore[union-attr]
    assert silent >= jobs.STALLED_SECONDS
    assert f"abandoned {len(asked)} execution(s)" in said and "and 2 more" in said
    assert len([e for e in asked if f"{e} (demo.hello)" in said]) == jobs.NAMED


@pytest.mark.postgres
async def test_a_reaper_audits_each_action_it_abandons_naming_the_worker_and_why(
        reaper: tuple[Squall, Monotonic]) -> None:
    """The reaper's warning, in one node's log, was the only trace of why a dead worker's actions ended
    `abandoned`: the audit trail (`/audit`, `squall audit export`, `audit.sinks`) had no event for it. Now
    each gets one (`reaper.execution.abandon`), stored with its end: about the execution, naming its action,
    the worker (its `host:pid`, host and procrastinate's id) and why, with no actor (a system event)."""
    squall, clock = reaper
    asked, worker = await _on_one_worker(squall, 2, "web3:4242")
    await watch(squall, clock, jobs.STALLED_SECONDS + jobs.REAP_SECONDS)
    assert {_status(squall, execution) for execution in asked} == {"abandoned"}
    await watch(squall, clock, 2 * jobs.REAP_SECONDS)  # nothing is left of it: audited once
    events = squall.store.audit_list(event=jobs.REAPER_ABANDON)
    assert sorted(event["target"] for event in events) == sorted(asked)
    for event in events:
        assert event["actor"] is None and event["source"] == "reaper"
        detail = event["detail"]
        assert (detail["action"], detail["worker"], detail["hostname"], detail["procrastinate_worker"]) == (
            "demo.hello", "web3:4242", "web3", worker)
        assert f"procrastinate worker {worker}) stopped answering" in detail["reason"], detail["reason"]
        silent = re.search(r"has not changed for (\d+) s", detail["reason"])
        assert silent is not None and int(silent.group(1)) >= jobs.STALLED_SECONDS, detail["reason"]


# -- a workflow between a task's end and its next step is not left -------------------------------

def _unattended_flow(squall: Squall, flow: str, ended: datetime) -> None:
    """`flow` waits on nothing, and no job of it waits or runs: its one task ended at `ended`."""
    with squall.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE lock = :f"), {"f": flow})
    for child in squall.store.list_executions(parent=flow):
        squall.store.update_execution(child["id"], {"status": "succeeded", "end_timestamp": ended})


def _steps_queued(squall: Squall, flow: str) -> int:
    with squall.store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM procrastinate_jobs WHERE lock = :f AND status = 'todo'"),
                                {"f": flow}).scalar_one())


@pytest.mark.postgres
async def test_a_workflow_is_stepped_on_only_when_left_not_between_a_tasks_end_and_its_step(
        reaper: tuple[Squall, Monotonic], caplog: pytest.LogCaptureFixture) -> None:
    """A task's end commits before the step it queues (`JobExecutor.advance`, a transaction of its own).
    A reaping pass in between warned that the workflow waited on no task and had no job, and queued a
    step: in normal operation, read as a node's crash. Now a workflow found so is stepped on only when a
    later pass finds it so still, unchanged, or its last task ended more than the grace time ago: a
    node died between the two, and then one warning says so."""
    squall, clock = reaper
    caplog.set_level(logging.INFO, logger="engine.jobs")
    flow = (await squall.executions.request("demo.flow"))["id"]
    squall.store.update_execution(flow, {"status": "running"})
    await squall.executions.request("demo.hello", {"who": "one"}, parent=flow)
    now = datetime.now(tz=UTC)
    _unattended_flow(squall, flow, now)  # the task's end is stored; its step is not queued yet

    await watch(squall, clock, jobs.REAP_SECONDS)
    assert _steps_queued(squall, flow) == 0 and not _warnings(caplog, "engine.jobs")
    assert await squall.jobs.advance(flow)  # the step lands, as the node that ended the task queues it
    await watch(squall, clock, jobs.REAP_SECONDS)
    assert _steps_queued(squall, flow) == 1 and not _warnings(caplog, "engine.jobs")

    # That step ran and requested a task, which ended just now: another gap, not the one seen before.
    await squall.executions.request("demo.hello", {"who": "two"}, parent=flow)
    _unattended_flow(squall, flow, now + timedelta(seconds=1))
    await watch(squall, clock, jobs.REAP_SECONDS)
    assert _steps_queued(squall, flow) == 0 and not _warnings(caplog, "engine.jobs")

    await watch(squall, clock, jobs.REAP_SECONDS)  # still so a pass later: the node died before its step
    assert _steps_queued(squall, flow) == 1
    [said] = _warnings(caplog, "engine.jobs")
    assert f"workflow {flow} (demo.flow)" in said and "queued it now" in said

    # A reaper that starts watching finds a workflow whose last task ended long ago: at its first pass.
    _unattended_flow(squall, flow, now - timedelta(seconds=60))
    squall.jobs.watch = jobs.ReaperWatch()
    await watch(squall, clock, jobs.REAP_SECONDS)
    assert _steps_queued(squall, flow) == 1 and len(_warnings(caplog, "engine.jobs")) == 2


# -- a drain that ran out names what it cut short ------------------------------------------------

@pytest.mark.postgres
async def test_a_worker_whose_drain_ran_out_names_the_actions_it_abandons(
        home: Path, postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At SIGTERM a worker lets its running actions finish for `--drain` seconds; those still running
    then end `abandoned`. It said only that it was stopping: nothing named them."""
    from bot.worker import work

    caplog.set_level(logging.INFO)
    config = load_config(_home(home, postgres_url) / "config.yml")
    running = asyncio.create_task(work(config, None, 2, drain=1))
    try:
        asked = (await asyncio.to_thread(_run, home, "run", "demo.nap", "seconds=60", f"marker={tmp_path / 'ran'}",
                                         "--async"))["id"]
        await until(lambda: running.done() or _pg_status(postgres_url, asked) == "running", "the nap to run")
        assert not running.done(), running.exception()
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(running, 60)
    finally:
        if not running.done():
            running.cancel()
    assert _pg_status(postgres_url, asked) == "abandoned"
    [said] = [m for m in _warnings(caplog, "squall.worker") if "ran out" in m]
    assert "drain (1 s)" in said and f"1 action(s) end abandoned: {asked} (demo.nap)" in said


@pytest.mark.postgres
async def test_a_worker_whose_drain_ran_out_audits_each_action_it_abandons(
        home: Path, postgres_url: str, tmp_path: Path) -> None:
    """An action the drain's end cut short ended `abandoned` with no audit event: only the worker's warning
    said why. Now its end is stored with a `worker.execution.abandon` event about it: its action, the worker
    and why, with no actor (a system event). A run that finished within the drain gets none."""
    from bot.worker import WORKER_ABANDON, work, worker_name

    config = load_config(_home(home, postgres_url) / "config.yml")
    running = asyncio.create_task(work(config, None, 2, drain=1))
    try:
        quick = (await asyncio.to_thread(_run, home, "run", "demo.hello", "who=quick"))["id"]
        asked = (await asyncio.to_thread(_run, home, "run", "demo.nap", "seconds=60", f"marker={tmp_path / 'ran'}",
                                         "--async"))["id"]
        await until(lambda: running.done() or _pg_status(postgres_url, asked) == "running", "the nap to run")
        assert not running.done(), running.exception()
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(running, 60)
    finally:
        if not running.done():
            running.cancel()
    assert (_pg_status(postgres_url, quick), _pg_status(postgres_url, asked)) == ("succeeded", "abandoned")
    store = Store.open(postgres_url)
    try:
        [event] = store.audit_list(event=WORKER_ABANDON)
    finally:
        store.close()
    assert (event["target"], event["actor"], event["source"]) == (asked, None, "worker")
    assert (event["detail"]["action"], event["detail"]["worker"]) == ("demo.nap", worker_name())
    assert worker_name() in event["detail"]["reason"] and "drain (1 s) ran out" in event["detail"]["reason"]


# -- a database outage is said once, and its end once --------------------------------------------

def _scripted(outcomes: list[BaseException | None], done: asyncio.Event) -> Callable[..., Awaitable[None]]:
    """A step that raises each of `outcomes` in turn (None: works), then sets `done` and works."""
    left = list(outcomes)

    async def step(*_args: Any) -> None:
        if not left:
            done.set()
            return
        outcome = left.pop(0)
        if outcome is not None:
            raise outcome

    return step


async def _until_done(loop: Awaitable[None], done: asyncio.Event) -> None:
    task = asyncio.ensure_future(loop)
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _outage_said_once(caplog: pytest.LogCaptureFixture, logger: str, what: str) -> None:
    """`what` failed for the database three times, worked, then failed twice for a bug: one warning
    without a traceback, one line at its end, and the bug's traceback each time."""
    records = [r for r in caplog.records if r.name == logger and r.getMessage().startswith(what)]
    warned = [r for r in records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].exc_info is None, [r.getMessage() for r in records]
    assert "OperationalError" in warned[0].getMessage()
    assert len([r for r in records if r.levelno == logging.INFO and "works again" in r.getMessage()]) == 1
    bugs = [r for r in records if r.levelno == logging.ERROR]
    assert len(bugs) == 2 and all(r.exc_info is not None for r in bugs), [r.getMessage() for r in records]


OUTCOMES: list[BaseException | None] = [OUTAGE, OUTAGE, OUTAGE, None, RuntimeError("a bug"), RuntimeError("a bug")]


async def test_the_reaper_says_a_database_outage_once_and_a_bug_each_time(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Each failed pass logged a chained traceback of some 45 lines, every 5 s, for a whole outage."""
    caplog.set_level(logging.DEBUG, logger="engine.jobs")
    done = asyncio.Event()
    monkeypatch.setattr(jobs, "reap_stalled", _scripted(OUTCOMES, done))
    await _until_done(jobs.reap_forever(None, None, every=0), done)  # type: ignore[arg-type]
    _outage_said_once(caplog, "engine.jobs", "looking for stalled workers' executions")


async def test_a_workers_poll_says_a_database_outage_once_and_a_bug_each_time(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from bot import worker

    caplog.set_level(logging.DEBUG, logger="squall.worker")
    done = asyncio.Event()
    monkeypatch.setattr(worker, "REAP_SECONDS", 0)
    squall = SimpleNamespace(executions=SimpleNamespace(poll=_scripted(OUTCOMES, done)))
    await _until_done(worker._poll_forever(squall), done)  # type: ignore[arg-type]
    _outage_said_once(caplog, "squall.worker", "looking for executions waiting to be submitted")


async def test_the_chat_sweep_says_a_database_outage_once_and_a_bug_each_time(
        squall: Squall, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """serve's result sweep logged three tracebacks (results, notifications, approvals) at every sweep of
    an outage. Here the store's reads raise a database failure, as PostgreSQL's absence makes them."""
    caplog.set_level(logging.DEBUG, logger="bot.chat.bot")
    steps = {"executions_owing_results": "looking for chat results that were never stored",
             "executions_owing_notifications": "looking for notifications that were never stored",
             "approvals_pending": "expiring approvals"}
    real = {name: getattr(squall.store, name) for name in steps}
    for outcome in OUTCOMES:
        for name in steps:
            if outcome is None:
                monkeypatch.setattr(squall.store, name, real[name])
            else:
                monkeypatch.setattr(squall.store, name, _raising(outcome))
        await squall.chat.sweep(timedelta(hours=1))
    for what in steps.values():
        _outage_said_once(caplog, "bot.chat.bot", what)


def _raising(exc: BaseException) -> Callable[..., Any]:
    def fails(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return fails
