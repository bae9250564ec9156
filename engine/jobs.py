"""Executions as procrastinate jobs (`executor.kind: procrastinate`): the scale-out executor.

A job is "run execution X" or, for a workflow, "conduct workflow X one step on"; the execution
row stays the source of truth and its claim (`ExecutionService.run`) stays the guard against
running anything twice, so a job that finds its execution no longer `requested` does nothing.
procrastinate (PostgreSQL: `FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY`, worker heartbeats, locks,
aborts) carries the jobs; Squall writes its jobs and reads its tables with SQL of its own on its
own connections, so the request side (`squall serve`, the CLI) needs no procrastinate App (and
imports nothing of it).

- `JobExecutor` is the executor of every process under this executor: it defers a job on the
  action's queue (`executor.queues`) for each `requested` execution, a workflow's tasks included,
  and cancels by asking the job's worker to abort (procrastinate's abort reaches any machine).
  `squall serve`'s poll re-submits `requested` rows every second, so a request whose job was never
  written (a crash between the two) gets one: no request is stranded. The queueing lock (the
  execution id) keeps it to one waiting job.
- Workflows are conducted in steps (`JobExecutor.advance`): each task that ends queues a job for
  its workflow, which a worker takes to replay the workflow's stored tasks and request what comes
  next, then lets go. Every job of a workflow carries its id as procrastinate's `lock`, so two
  steps of one workflow never run at once, and any worker of its queue may take the next; no worker
  holds a workflow while its tasks run, and the death of any node loses no step.
- `worker_app` is the procrastinate App a `squall worker` runs: one task, which claims and runs
  the execution, or conducts the workflow one step, in the worker's engine.
- `reap_stalled` ends what a worker that stopped answering (its heartbeat older than
  `STALLED_SECONDS`) left: its actions become `abandoned` (retry policies then run them again, and
  their workflow conducts on), its workflow steps are queued again. It also queues a step for any
  workflow that waits on nothing and has no job (its last task's process died between the two).
  A heartbeat's age says the worker is gone only if the worker could have beaten meanwhile: while
  PostgreSQL is down, or cut off from the reaper and the workers alike, nobody beats. So a reaper
  judges heartbeats only once it has itself reached the database without a gap for
  `STALLED_SECONDS` (`ReaperWatch`), and never within `STALLED_SECONDS` of the server's start; a
  live worker beats again within seconds of the database's return (`bot.worker.JobWorker`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.config import Config
from engine.executions import STEPPING, until_due
from engine.packs import Registry
from engine.storage import Store, as_utc
from engine.wakeups import libpq_url

if TYPE_CHECKING:
    from engine.executions import ExecutionService

log = logging.getLogger(__name__)

#: The procrastinate task every execution job names.
TASK = "squall.run_execution"
#: How long a worker may go without a heartbeat before its jobs count as stalled. Workers beat every
#: `HEARTBEAT_SECONDS` and reap every `REAP_SECONDS`, so a dead worker's executions end within 30 s.
STALLED_SECONDS = 20.0
HEARTBEAT_SECONDS = 5.0
REAP_SECONDS = 5.0
#: A worker is deleted from procrastinate's workers, at another worker's start, only once it has been
#: silent this long. procrastinate prunes by the stall time: a worker starting right after an outage
#: deleted the live ones that had not beaten again yet, which made their next fetch fail. Stalled jobs
#: are judged by heartbeats, so keeping a dead worker's row longer delays nothing.
PRUNE_SECONDS = 3600.0
_LIVE = ("running", "pausing", "canceling", "resuming")
#: A task in one of these will queue its workflow's next step when it ends.
_CHILD_LIVE = ("requested", "scheduled", "delayed", "running", "canceling", "pausing", "resuming")

_DEFER = sa.text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, 0, CAST(:lock AS text), :queueing_lock, "
    "CAST(:args AS jsonb), CAST(NULL AS timestamptz))]::procrastinate_job_to_defer_v1[]))")
_ABORT = sa.text("SELECT procrastinate_cancel_job_v1(:job_id, true, false)")
#: A running job whose worker is gone (its row deleted: it unregistered, or was pruned) or silent: no
#: heartbeat for `:seconds`, the server up for longer than that (no worker beats while it is down).
_STALLED = sa.text(
    "SELECT j.id, j.args ->> 'execution_id' AS execution_id, w.id IS NULL AS gone FROM procrastinate_jobs j "
    "LEFT JOIN procrastinate_workers w ON w.id = j.worker_id "
    "WHERE j.status = 'doing' AND j.task_name = :task "
    "AND (w.id IS NULL OR GREATEST(w.last_heartbeat, pg_postmaster_start_time()) "
    "< now() - make_interval(secs => :seconds))")
_UNATTENDED = sa.text(
    "SELECT e.id FROM executions e WHERE e.status IN :stepping AND e.runner IN :runners "
    "AND NOT EXISTS (SELECT 1 FROM executions c WHERE c.parent = e.id AND c.status IN :live) "
    "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.lock = e.id AND j.status IN ('todo', 'doing'))"
).bindparams(sa.bindparam("stepping", expanding=True), sa.bindparam("runners", expanding=True),
             sa.bindparam("live", expanding=True))
_FAIL = sa.text("SELECT procrastinate_finish_job_v1(:job_id, 'failed', false)")
_ORPHANED = sa.text(
    "SELECT e.id FROM executions e WHERE e.status IN :live AND e.runner NOT IN :workflows "
    "AND (e.runner_info ->> 'job_id') IS NOT NULL "
    "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.id = CAST(e.runner_info ->> 'job_id' AS bigint) "
    "AND j.status IN ('todo', 'doing', 'aborting'))"
).bindparams(sa.bindparam("live", expanding=True), sa.bindparam("workflows", expanding=True))


def defer(store: Store, execution_id: str, queue: str, *, steps: bool = False) -> int | None:
    """Queue a job for `execution_id`; its id, or None when one already waits (the queueing lock).
    A workflow's jobs (`steps`) carry its id as their lock too, so its steps run one at a time. An
    action's do not: procrastinate checks a job's lock against every other waiting job's as it
    fetches, which with thousands queued cost a worker more than the action itself."""
    with store._write() as conn:
        try:
            with conn.begin_nested():
                return int(conn.execute(_DEFER, {"queue": queue, "task": TASK, "queueing_lock": execution_id,
                                                 "lock": execution_id if steps else None,
                                                 "args": json.dumps({"execution_id": execution_id})}).scalar_one())
        except sa.exc.IntegrityError:
            return None


def abort(store: Store, job_id: int) -> bool:
    """Ask the worker running job `job_id` to abort it (a waiting job is cancelled); False if it had ended."""
    with store._write() as conn:
        return conn.execute(_ABORT, {"job_id": job_id}).scalar() is not None


def pack_mismatch(registry: Registry, record: dict[str, Any]) -> str | None:
    """Why this worker must not run `record`: its action's pack here differs from the pack the request
    was made with (a half-deployed pack), or is not here at all; None when it may run it."""
    expected = (record.get("spec") or {}).get("pack_hash")
    pack_ref = record["action"].partition(".")[0]
    pack = registry.packs.get(pack_ref)
    if pack is None:
        return (f"this squall worker does not have the pack {pack_ref} that {record['action']} needs: install it "
                "on every worker of its queue")
    if expected is None or pack.content_hash() == expected:
        return None
    return (f"the pack {pack_ref} on this squall worker differs from the one the request was made with (content "
            f"{pack.content_hash()[:12]} here, {expected[:12]} requested): deploy the same pack on every node, "
            "then run it again")


def due(record: dict[str, Any]) -> bool:
    """Whether `record` is a `delayed` request whose delay (`runner_info.delayed_until`) is over."""
    return ((record.get("runner_info") or {}).get("delayed_until") is not None and record["status"] == "delayed"
            and until_due(record) == 0)


def waiting_since(store: Store, before: datetime, limit: int = 1000) -> list[dict[str, Any]]:
    """Executions still `requested` (no worker took their job) since before `before`, oldest first."""
    rows = store.list_executions(status="requested", limit=limit, oldest_first=True)
    return [row for row in rows if as_utc(row["start_timestamp"]) < before]


def waiting_note(config: Config, record: dict[str, Any], now: datetime) -> str | None:
    """What to tell people of a queued execution no worker has taken, or None if it is not one."""
    if config.executor_kind != "procrastinate" or record["status"] != "requested":
        return None
    waited = (now - as_utc(record["start_timestamp"])).total_seconds()
    queue = config.queue_for(record["action"])
    return (f"waiting {waited:.0f} s for a squall worker of queue '{queue}': none has taken it (none serves "
            f"that queue, or all are busy); start one with `squall worker --queues {queue}`")


class JobExecutor:
    """The executor of every process under `executor.kind: procrastinate`: it queues jobs that
    `squall worker`s run (see the module's docstring)."""

    #: Set when a worker stops: a run cut short by the stop ends `abandoned`, a workflow step lets go.
    closing = False
    #: Other processes run what this one submits: concurrency policies count in the database.
    shared = True

    def __init__(self, executions: ExecutionService, config: Config) -> None:
        self.executions = executions
        self.config = config
        self.watch = ReaperWatch()  # this process's reaper: what it saw of the database

    @property
    def running(self) -> set[str]:
        return set()  # what runs here runs as a job, not as this executor's task

    async def submit(self, execution_id: str) -> None:
        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        # `delayed` only once due (a workflow task's `delay`): a concurrency policy admits its own
        # `delayed` ones (to `scheduled`) before they get here.
        if record is not None and (record["status"] in ("requested", "scheduled", "resuming") or due(record)):
            await self._defer(record)

    async def advance(self, execution_id: str) -> None:
        """Queue the next step of a workflow (one of its tasks ended, or it was asked to pause or
        cancel); a step already waiting covers it."""
        record = await self.executions.db(self.executions.db.store.get_execution, execution_id)
        if record is not None and record["status"] in ("resuming", *STEPPING):
            await self._defer(record)

    async def _defer(self, record: dict[str, Any]) -> None:
        queue = self.config.queue_for(record["action"])
        job = await self.executions.db(defer, self.executions.db.store, record["id"], queue,
                                       steps=self.executions.resumable(record["runner"]))
        if job is not None:
            log.debug("execution %s (%s) queued as job %s on %s", record["id"], record["status"], job, queue)

    async def cancel(self, execution_id: str) -> bool:
        """Abort the job running an action; False for a workflow (it cancels through its steps)."""
        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        job = ((record or {}).get("runner_info") or {}).get("job_id")
        if job is None or record is None or self.executions.resumable(record["runner"]):
            return False
        return await self.executions.db(abort, store, int(job))

    async def close(self) -> None:
        self.closing = True


def worker_app(config: Config, run: Callable[[str, dict[str, Any]], Awaitable[None]]) -> Any:
    """The procrastinate App of a `squall worker`: its one task claims and runs an execution with
    `run(execution_id, owner)`, `owner` naming the job and worker in the execution's `runner_info`."""
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=libpq_url(config.database_url), min_size=1, max_size=4))

    @app.task(name=TASK, pass_context=True, retry=False)
    async def run_execution(context: Any, execution_id: str) -> None:
        await run(execution_id, {"job_id": context.job.id, "worker_id": context.job.worker_id,
                                 "worker": context.worker_name})

    return app


class ReaperWatch:
    """How long one process's reaper has reached the database without a gap, so that it judges a
    worker's heartbeat only across time it saw itself.

    A reaper back from not seeing the database (its passes failing: the server down, or its own
    connection cut; a pass that hung; a serve node that did not lead) found every worker's heartbeat
    older than the stall time, since no worker could beat either, and abandoned what healthy workers
    ran (which retry policies then ran twice). Looks more than half the stall time apart are a gap:
    the watch starts again, and a silent worker counts as stalled once the watch is `STALLED_SECONDS`
    long, that is once its heartbeat is that much older than both its last beat and the reaper's
    return. A reaper starting (or taking the lead) starts watching too."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.last: float | None = None

    def saw(self, now: float) -> float:
        """A look at the database that succeeded at `now` (monotonic): how long it has watched since."""
        gap = STALLED_SECONDS / 2
        if self.since is None or self.last is None or now - self.last > gap:
            if self.last is not None:
                log.info("the reaper last reached the database %.0f s ago (it was unreachable, or this node did "
                         "not lead): workers silent meanwhile count as stalled only once it has watched for %.0f s",
                         now - self.last, STALLED_SECONDS)
            self.since = now
        self.last = now
        return now - self.since


async def reap_stalled(executions: ExecutionService, jobs: JobExecutor) -> int:
    """End what workers that stopped answering left, and queue a step for every workflow that
    waits on nothing without one (see the module's docstring); how many jobs were stalled."""
    store = executions.db.store
    found = await executions.db(_stalled, store)
    watched = jobs.watch.saw(time.monotonic())
    stalled = [(job_id, execution_id) for job_id, execution_id, gone in found if gone or watched >= STALLED_SECONDS]
    for job_id, execution_id in stalled:
        await _reap(executions, jobs, job_id, execution_id)
    workflows = [name for name in executions.runners if executions.resumable(name)]
    for execution_id in await executions.db(_orphaned, store, workflows):
        record = await executions.db(store.get_execution, execution_id)
        if record is not None and record["status"] in _LIVE:
            log.warning("execution %s: its job ended without it (its end could not be stored); ending it",
                        execution_id)
            await _end_lost(executions, record)
    for execution_id in await executions.db(_unattended, store, workflows):
        log.warning("workflow %s waits on no task and had no job: queued its next step", execution_id)
        await jobs.advance(execution_id)
    jobs.watch.saw(time.monotonic())
    return len(stalled)


async def _reap(executions: ExecutionService, jobs: JobExecutor, job_id: int, execution_id: str) -> None:
    """End what stalled job `job_id` left of `execution_id`, then fail the job."""
    store = executions.db.store
    record = await executions.db(store.get_execution, execution_id)
    live = record is not None and record["status"] in _LIVE
    if live and executions.resumable(record["runner"]):
        await executions.db(_job_sql, store, _FAIL, job_id)  # its lock is free for the next step
        log.warning("workflow %s: its worker stopped answering mid-step; another worker conducts it on",
                    execution_id)
        await jobs.advance(execution_id)
        return
    if live:  # ended before its job fails: a pass cut short in between leaves nothing running
        await _end_lost(executions, record)
    await executions.db(_job_sql, store, _FAIL, job_id)


async def _end_lost(executions: ExecutionService, record: dict[str, Any]) -> None:
    """An action whose worker is gone: `canceled` if a cancel was asked for, else `abandoned`."""
    if record["status"] == "canceling":
        await executions.complete(record["id"], "canceled", {**(record.get("result") or {}),
                                                             "error": "canceled by request; its worker stopped"},
                                  ("canceling",))
    else:
        await executions.complete(record["id"], "abandoned", _lost(record), _LIVE)


def _orphaned(store: Store, workflows: list[str]) -> list[str]:
    """Actions still live whose worker's job has ended: the task raised before the execution's end
    was stored (the database unreachable for a moment), and nothing else would ever end them."""
    with store._read() as conn:
        return [str(row.id) for row in conn.execute(_ORPHANED, {"live": list(_LIVE), "workflows": workflows or [""]})]


def _stalled(store: Store) -> list[tuple[int, str, bool]]:
    """Running jobs whose worker is gone or silent: (job id, execution id, whether its worker is gone)."""
    with store._read() as conn:
        return [(int(row.id), str(row.execution_id), bool(row.gone))
                for row in conn.execute(_STALLED, {"task": TASK, "seconds": STALLED_SECONDS})]


def _unattended(store: Store, runners: list[str]) -> list[str]:
    with store._read() as conn:
        return [str(row.id) for row in conn.execute(_UNATTENDED, {
            "stepping": list(STEPPING), "runners": runners, "live": list(_CHILD_LIVE)})]


def _job_sql(store: Store, statement: Any, job_id: int) -> None:
    with store._write() as conn:
        conn.execute(statement, {"job_id": job_id})


def _lost(record: dict[str, Any]) -> dict[str, Any]:
    info = record.get("runner_info") or {}
    return {**(record.get("result") or {}),
            "error": f"Squall stopped running it: its worker ({info.get('worker') or 'unknown'} on "
                     f"{info.get('hostname') or 'an unknown host'}) stopped answering for {STALLED_SECONDS:.0f} s"}


async def reap_forever(executions: ExecutionService, jobs: JobExecutor, every: float = REAP_SECONDS) -> None:
    """`reap_stalled` every `every` seconds until cancelled; a failed pass is logged and retried."""
    while True:
        try:
            await reap_stalled(executions, jobs)
        except Exception:  # the next pass tries again; a worker must not die of it
            log.exception("could not look for stalled workers' executions")
        await asyncio.sleep(every)


def queue_status(store: Store) -> dict[str, Any]:
    """For the web UI's status page: procrastinate's workers (id, last heartbeat, whether it counts as
    stalled) and, per queue, how many jobs wait (`todo`) and run (`doing`)."""
    with store._read() as conn:
        workers = [{"id": int(row.id), "last_heartbeat": as_utc(row.last_heartbeat),
                    "stalled": bool(row.stalled)} for row in conn.execute(sa.text(
                        "SELECT id, last_heartbeat, last_heartbeat < now() - make_interval(secs => :seconds) "
                        "AS stalled FROM procrastinate_workers ORDER BY id"), {"seconds": STALLED_SECONDS})]
        queues: dict[str, dict[str, int]] = {}
        for row in conn.execute(sa.text(
                "SELECT queue_name, status, count(*) AS n FROM procrastinate_jobs "
                "WHERE status IN ('todo', 'doing') GROUP BY queue_name, status ORDER BY queue_name")):
            queues.setdefault(str(row.queue_name), {"todo": 0, "doing": 0})[str(row.status)] = int(row.n)
    return {"workers": workers, "queues": queues}
