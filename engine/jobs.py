"""Executions as procrastinate jobs (`executor.kind: procrastinate`): the scale-out executor.

A job is "run execution X"; the execution row stays the source of truth and its claim
(`ExecutionService.run`) stays the guard against running anything twice, so a job that finds its
execution no longer `requested` does nothing. procrastinate (PostgreSQL: `FOR UPDATE SKIP LOCKED`,
`LISTEN/NOTIFY`, worker heartbeats, aborts) carries the jobs; Squall writes its jobs and reads its
tables with SQL of its own on its own connections, so the request side (`squall serve`, the CLI)
needs no procrastinate App (and imports nothing of it).

- `JobExecutor` is the executor of processes that request executions but do not run them: it
  defers a job on the action's queue (`executor.queues`) for each `requested` execution, and
  cancels by asking the job's worker to abort (procrastinate's abort reaches any machine).
  `squall serve`'s poll re-submits `requested` rows every second, so a request whose job was never
  written (a crash between the two) gets one: no request is stranded. The queueing lock (the
  execution id) keeps it to one waiting job.
- `worker_app` is the procrastinate App a `squall worker` runs: one task, which claims and runs
  the execution in the worker's engine (workflows conduct there; their tasks run beside them).
- `reap_stalled` ends what a worker that stopped answering (its heartbeat older than
  `STALLED_SECONDS`) left: its actions become `abandoned` (retry policies then run them again),
  its workflows go back to `resuming` and their jobs to the queue, so another worker conducts them
  on from their stored tasks; what it ran inside those workflows is abandoned and run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.config import Config
from engine.packs import Registry
from engine.storage import Store, as_utc

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
_LIVE = ("running", "pausing", "canceling", "resuming")

_DEFER = sa.text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, 0, CAST(NULL AS text), :queueing_lock, "
    "CAST(:args AS jsonb), CAST(NULL AS timestamptz))]::procrastinate_job_to_defer_v1[]))")
_ABORT = sa.text("SELECT procrastinate_cancel_job_v1(:job_id, true, false)")
_STALLED = sa.text(
    "SELECT j.id, j.args ->> 'execution_id' AS execution_id FROM procrastinate_jobs j "
    "LEFT JOIN procrastinate_workers w ON w.id = j.worker_id "
    "WHERE j.status = 'doing' AND j.task_name = :task "
    "AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => :seconds))")
_RETRY = sa.text("SELECT procrastinate_retry_job_v2(:job_id, now(), NULL, NULL, NULL)")
_FAIL = sa.text("SELECT procrastinate_finish_job_v1(:job_id, 'failed', false)")


def libpq_url(database_url: str) -> str:
    """The DSN procrastinate's psycopg connector takes (SQLAlchemy's URL names its driver too)."""
    return sa.engine.make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def defer(store: Store, execution_id: str, queue: str) -> int | None:
    """Queue a job for `execution_id`; its id, or None when one already waits (the queueing lock)."""
    with store._write() as conn:
        try:
            with conn.begin_nested():
                return int(conn.execute(_DEFER, {"queue": queue, "task": TASK, "queueing_lock": execution_id,
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
    """The executor of a process that requests executions for `squall worker`s to run."""

    closing = False
    #: Other processes run what this one submits: concurrency policies count in the database.
    shared = True

    def __init__(self, executions: ExecutionService, config: Config) -> None:
        self.executions = executions
        self.config = config

    @property
    def running(self) -> set[str]:
        return set()  # nothing runs here

    async def submit(self, execution_id: str) -> None:
        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        # Not `delayed`: a concurrency policy admits those (to `scheduled`) first. Not a workflow's task:
        # the worker conducting the workflow runs it (and on a replay, starts those left unclaimed).
        if record is None or record["status"] not in ("requested", "scheduled", "resuming") or record["parent"]:
            return
        queue = self.config.queue_for(record["action"])
        job = await self.executions.db(defer, store, execution_id, queue)
        if job is not None:
            log.debug("execution %s queued as job %s on %s", execution_id, job, queue)

    async def cancel(self, execution_id: str) -> bool:
        """Abort the job running an action; False for a workflow (its worker sees `canceling` and lets
        running tasks finish, as a cancel asks) and for what runs inside one (its worker stops it)."""
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


async def reap_stalled(executions: ExecutionService) -> int:
    """End what workers that stopped answering left (see the module's docstring); how many jobs."""
    store = executions.db.store
    stalled = await executions.db(_stalled, store)
    for job_id, execution_id in stalled:
        record = await executions.db(store.get_execution, execution_id)
        owner = _process((record or {}).get("runner_info"))
        if owner:
            await _abandon_inside(executions, owner, keep=execution_id)
        workflow = record is not None and record["status"] in _LIVE and executions.resumable(record["runner"])
        if workflow and await _workflow_on(executions, record):
            await executions.db(_job_sql, store, _RETRY, job_id)
            log.warning("workflow %s: its worker stopped answering; another worker conducts it on", execution_id)
            continue
        if record is not None and record["status"] in _LIVE:
            await executions.complete(execution_id, "abandoned", _lost(record), _LIVE)
        await executions.db(_job_sql, store, _FAIL, job_id)
    return len(stalled)


async def _workflow_on(executions: ExecutionService, record: dict[str, Any]) -> bool:
    """A workflow whose worker died: conducted on elsewhere (True: its job goes back to the queue),
    unless a cancel or pause was under way, which the death completes (its tasks there are gone)."""
    store = executions.db.store
    status = record["status"]
    if status == "canceling":
        await executions.complete(record["id"], "canceled", {**(record.get("result") or {}),
                                                             "error": "canceled by request"}, ("canceling",))
        return False
    if status == "pausing":
        await executions.db(store.update_execution, record["id"], {"status": "paused"}, expect=("pausing",))
        return False
    return bool(await executions.db(store.update_execution, record["id"], {"status": "resuming"}, expect=_LIVE))


def _stalled(store: Store) -> list[tuple[int, str]]:
    with store._read() as conn:
        return [(int(row.id), str(row.execution_id))
                for row in conn.execute(_STALLED, {"task": TASK, "seconds": STALLED_SECONDS})]


def _job_sql(store: Store, statement: Any, job_id: int) -> None:
    with store._write() as conn:
        conn.execute(statement, {"job_id": job_id})


def _process(runner_info: Any) -> tuple[Any, ...] | None:
    """The process an execution ran in (pid, start, boot), to find all it ran."""
    if not isinstance(runner_info, dict) or runner_info.get("pid") is None:
        return None
    return (runner_info.get("pid"), runner_info.get("started"), runner_info.get("boot_id"))


def _lost(record: dict[str, Any]) -> dict[str, Any]:
    info = record.get("runner_info") or {}
    return {**(record.get("result") or {}),
            "error": f"Squall stopped running it: its worker ({info.get('worker') or 'unknown'} on "
                     f"{info.get('hostname') or 'an unknown host'}) stopped answering for {STALLED_SECONDS:.0f} s"}


async def _abandon_inside(executions: ExecutionService, owner: tuple[Any, ...], keep: str) -> None:
    """Abandon what the dead worker ran beside its jobs (a workflow's tasks), so a workflow conducted
    on elsewhere runs them again instead of waiting on them for ever."""
    store = executions.db.store
    rows = await executions.db(store.execution_ids_with_status, _LIVE)
    for row in rows:
        if row["id"] != keep and _process(row.get("runner_info")) == owner:
            record = await executions.db(store.get_execution, row["id"])
            if record is not None and record["status"] in _LIVE:
                await executions.complete(row["id"], "abandoned", _lost(record), _LIVE)


async def reap_forever(executions: ExecutionService, every: float = REAP_SECONDS) -> None:
    """`reap_stalled` every `every` seconds until cancelled; a failed pass is logged and retried."""
    while True:
        try:
            await reap_stalled(executions)
        except Exception:  # the next pass tries again; a worker must not die of it
            log.exception("could not look for stalled workers' executions")
        await asyncio.sleep(every)
