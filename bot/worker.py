"""`squall worker`: runs the executions `squall serve` nodes queue (`executor.kind: procrastinate`).

A worker is the engine with its chat side but no HTTP API. Its adapters are built from config, never
connected: what its executions owe chat (results in their thread, questions, `notify` messages,
`chatops.post_*`) is fitted to them and stored in the durable outbox, which stays held here; the
`squall serve` nodes deliver it as soon as it commits (PostgreSQL notifies them, `engine/wakeups.py`).
It takes jobs from its queues through procrastinate (woken by `LISTEN/NOTIFY`, polling as a safety
net), at most `concurrency` at once: an action's run, or one step of a workflow (whose tasks are
jobs of their own, on their queues).
The trigger instances its executions raise (action and notify triggers, datastore changes, inquiries)
are stored `pending`, of every type the engine raises, and processed by the serve nodes with their
current rules, never here (`Engine.hand_off_triggers`): a rule changed after the worker's start holds
for them, and a worker that dies holds none.
Every worker also ends what workers that stopped answering left (`engine.jobs.reap_stalled`) and
submits what waits for a node to (`_poll_forever`: delays that are over, what a policy delayed).
At its start it expires the questions whose TTL ran out while the worker that asked them was gone,
and arms timers for the rest (`InquiryService.recover`).

SIGTERM or SIGINT stops taking jobs; running actions get up to `drain` seconds to finish (`--drain`,
else `executor.shutdown_grace`, as `squall serve` lets its own; what still runs then ends `abandoned`,
named in one warning and audited, `WORKER_ABANDON`, their error saying why), the worker beating meanwhile.
Workflows need no hand-back: between steps no worker holds them. A second signal ends the drain at once:
what still runs is cut short as at the drain's end, its end stored before the engine closes (closed
under it, the ends failed and the process hung for good), and a job fetched meanwhile goes back to its
queue unstarted (`JobWorker._process_job`). Should the process die first, the reaper of
another node ends its executions within `engine.jobs.STALLED_SECONDS`.

procrastinate's worker loop runs as `JobWorker`, which outlasts a database outage (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import psycopg
from procrastinate import exceptions as procrastinate_exceptions
from procrastinate import job_context
from procrastinate import utils as procrastinate_utils
from procrastinate import worker as procrastinate_worker
from procrastinate.manager import get_channel_for_queues

from bot.app import Squall
from bot.heap import settle_heap
from bot.service import configured_adapters
from engine.config import Config, ConfigError
from engine.executions import STEPPING, AuditEntry, CompletionWrite
from engine.jobs import (
    HEARTBEAT_SECONDS,
    PRUNE_SECONDS,
    REAP_SECONDS,
    listing,
    pack_mismatch,
    reap_forever,
    worker_app,
)
from engine.storage import Trouble
from engine.wakeups import PROCESS_NAME, libpq_url, listen_to

log = logging.getLogger("squall.worker")
#: After a heartbeat that failed, the next try comes this soon: a worker beats again within seconds of
#: the database's return (this, plus `HEARTBEAT_POOL_WAIT`), long before a reaper may take it for stalled.
HEARTBEAT_RETRY_SECONDS = 1.0
#: How long a heartbeat waits for procrastinate's pool before it is stored on a connection of its own.
HEARTBEAT_POOL_WAIT = 2.0
#: An end of a job the database failed to record is tried again after the first of these many
#: seconds, the wait doubling up to the second, while the worker runs.
FINISH_RETRY_SECONDS = (0.5, 30.0)
#: The audit event of an action a worker's drain cut short, ended `abandoned` (`Worker.completing`): the
#: audit trail showed the end and never why (a reaper's ends are `engine.jobs.REAPER_ABANDON`).
WORKER_ABANDON = "worker.execution.abandon"


def worker_name() -> str:
    """How this worker shows in logs and in its executions' `runner_info`."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """One `squall worker` process: the engine, its procrastinate App, and what ends its work."""

    def __init__(self, squall: Squall, queues: list[str] | None = None) -> None:
        self.squall = squall
        self.executions = squall.executions
        self.name = worker_name()
        self.queues = queues
        self.stopping = False
        #: The executions whose jobs run here now: their action, and whether the job is a workflow's step.
        self.running: dict[str, tuple[str, bool]] = {}
        #: The actions the drain's end cut short (`cut_short`), and why: their end is audited (`completing`).
        self.cut: set[str] = set()
        self.cut_why = ""
        squall.executions.on_completing(self.completing)
        # The trigger instances its executions raise go to the serve nodes, whose rules are current.
        squall.hand_off_triggers()

    async def run_job(self, execution_id: str, owner: dict[str, Any]) -> None:
        """A job's body: refuse a request made with other pack content, else claim and run it, or
        conduct the workflow it names one step on."""
        executions, store = self.executions, self.executions.db.store
        record = await executions.db(store.get_execution, execution_id)
        if record is None:
            return
        # Not yet run (a delayed one too): a resumed workflow runs on what it started with.
        queued = ("requested", "scheduled", "delayed")
        refused = pack_mismatch(self.squall.registry, record) if record["status"] in queued else None
        if refused is not None:
            log.error("execution %s refused: %s", execution_id, refused)
            await executions.complete(execution_id, "failed", {"error": refused}, queued)
            return
        step = record["status"] in STEPPING and executions.resumable(record["runner"])
        self.running[execution_id] = (record["action"], step)
        try:
            if step:
                await executions.step(execution_id, owner)
            else:
                await executions.run(execution_id, owner)
        finally:
            self.running.pop(execution_id, None)

    def cut_short(self, execution_ids: list[str], drain: float | None, now: bool = False) -> None:
        """The drain ran out with the jobs of `execution_ids` still running (`JobWorker._abort_running_jobs`),
        or a second stop signal ended it (`now`, `JobWorker.stop_now`): say which actions now end `abandoned`,
        and which workflow steps are let go (another worker conducts them on), as a reaper says what it ends
        of a dead worker's. procrastinate's own line says how many at INFO, under the libraries' level, and
        names none: the stop logged no execution at all. Why is kept for their audit events (`completing`)
        and their error (`ExecutionService.stopped_why`): it said only that Squall shut down."""
        jobs = [(execution_id, *self.running.get(execution_id, ("action unknown", False)))
                for execution_id in execution_ids]
        actions = [(execution_id, action) for execution_id, action, step in jobs if not step]
        steps = [(execution_id, action) for execution_id, action, step in jobs if step]
        said = [f"{len(actions)} action(s) end abandoned: {listing(actions)}"] if actions else []
        if steps:
            said.append(f"the step of {len(steps)} workflow(s) is let go, for another worker: {listing(steps)}")
        limit = "no limit" if drain is None else f"{drain:g} s"
        self.cut.update(execution_id for execution_id, _action in actions)
        ended = f"a second stop signal ended its drain ({limit})" if now else f"its drain ({limit}) ran out"
        self.cut_why = f"its worker {self.name} was stopped and {ended} while it ran"
        self.executions.stopped_why = self.cut_why  # their error says it too
        self.executions.stopped_by = "drain"  # and their result marks it, so their workflows run them again
        log.warning("squall worker %s: %s with %d job(s) still running, cut short now: %s",
                    self.name, ended, len(jobs), "; ".join(said))

    def completing(self, record: dict[str, Any]) -> CompletionWrite | None:
        """What to store with the end of `record` (`ExecutionService.on_completing`): for an action the drain's
        end cut short (`cut_short`) that ends `abandoned`, its audit event (`WORKER_ABANDON`, a system event: no
        actor), in the end's transaction, so the audit trail says why it ended so, as the warning says in this
        worker's log. An end that finds the execution moved on (a reaper ended it, a cancel) stores none."""
        if record["status"] != "abandoned" or record["id"] not in self.cut:
            return None
        event = AuditEntry(WORKER_ABANDON, None, "worker", None, {
            "action": record["action"], "worker": self.name, "hostname": socket.gethostname(), "reason": self.cut_why})
        return CompletionWrite(lambda store, _at: event.add(store, record["id"]), lambda _added: None,
                               one_statement=True)

    def stop(self, jobs: asyncio.Task[None], runner: JobWorker, drain: float | None) -> None:
        """A stop signal: the first drains (see the module's docstring), another cuts short what still
        runs (`JobWorker.stop_now`). That one no longer cancels `jobs` again: it cut procrastinate's wait
        for the running jobs, the engine closed under them, and their ends, which need its database
        thread, failed ('cannot schedule new futures after shutdown') and left the process hung."""
        if self.stopping:
            log.warning("squall worker %s: stopping now", self.name)
            runner.stop_now()
            return
        log.info("squall worker %s: stopping (running actions get up to %s s)", self.name, drain)
        self.stopping = True
        self.squall.jobs.closing = True  # type: ignore[union-attr]  # what is cut short ends `abandoned`
        jobs.cancel()  # procrastinate takes no new job and gives running ones `drain` seconds


class JobWorker(procrastinate_worker.Worker):
    """procrastinate's worker loop (3.10, pinned), made to outlast a database outage.

    - Its heartbeat survives a failed beat and tries again every `HEARTBEAT_RETRY_SECONDS` until one
      is stored, on a connection of its own when procrastinate's pool cannot give one (`_beat`).
      procrastinate's heartbeat task ended at its first failure: a healthy worker stopped beating for
      good and was reaped, its actions abandoned (and retried), once a reaper had watched for the
      stall time.
    - It listens for new jobs and abort requests on a connection of its own that comes back with the
      database (`engine.wakeups.listen_to`, one warning per outage, one line when back). procrastinate's
      listener tried once to connect again, while the server was still shutting down, and ended: the
      worker ran on its 5 s poll from then on and said nothing until it stopped.
    - procrastinate's side-task monitor keeps watching: it waits for the first side task to end and
      stops the worker if that one failed, but its periodic deferrer, without periodic tasks, ended at
      once, and the monitor with it.
    - A job's end that the database cannot record now is tried again while the worker runs; one that
      another node failed meanwhile (it took this worker for stalled) is let go with one line, not left
      as an exception in a task nobody awaits.
    - A fetch of the next job that got no connection is tried again at the next poll or notification.
      It stopped procrastinate's loop, and so the worker, once an outage outlasted the pool's 30 s wait
      (or its reconnection backoff after one).
    - It goes on beating while it drains at a stop: procrastinate stopped the heartbeat before it waited
      for the running jobs, which another node's reaper then abandoned.
    - The jobs its drain's end, or a second stop signal (`stop_now`), cuts short are named (`cut_short`), once."""

    def __init__(self, app: Any, database_url: str,
                 cut_short: Callable[[list[str], float | None, bool], None] | None = None,
                 **options: Any) -> None:
        super().__init__(app=app, listen_notify=False, **options)
        self.database_url = database_url
        self._fetch_failed_at: float | None = None
        #: Told which executions' jobs the drain's end cuts short (`Worker.cut_short`).
        self.cut_short = cut_short
        #: The running jobs were cut short already (the drain ran out, or `stop_now`): never twice.
        self._cut = False

    def _cut_running(self, now: bool) -> None:
        """Cut short the jobs still running, said first (`cut_short`); once. Each job's task is cancelled
        once: its execution's end is stored under a shield, which a second cancel would leave running
        while procrastinate and the engine closed under it."""
        if self._cut:
            return
        self._cut = True
        if self.cut_short is not None and self._running_jobs:
            self.cut_short([str((context.job.task_kwargs or {}).get("execution_id"))
                            for context in self._running_jobs.values()], self.shutdown_graceful_timeout, now)
        for task, context in list(self._running_jobs.items()):
            self._abort_job(task, context, job_context.AbortReason.SHUTDOWN)

    def stop_now(self) -> None:
        """A second stop signal: take no more jobs, and end the drain now; procrastinate's shutdown then
        waits only for the ends of the jobs cut short (stored in a moment, or not at all when the database
        is away: `ExecutionService._stored_end` and `_persist_job_status` stop trying once stopping)."""
        self.stop()
        self._cut_running(now=True)

    async def _process_job(self, context: job_context.JobContext) -> None:
        """Run a job, unless a second stop signal cut the running ones short before it started: its fetch
        was in flight then, and procrastinate starts what a fetch brings even once stopping. Such a job
        goes back to its queue unstarted (`retry_job`), for another worker. It ran before, under no cut
        (the cut is made once), so the stop signalled to be now waited for it to finish. Should the
        database refuse it back, it runs as before."""
        if self._cut:
            job = context.job
            try:
                await self.app.job_manager.retry_job(job)
            except procrastinate_exceptions.ConnectorException as exc:
                log.warning("squall worker %s: job %s, fetched as it was stopping now, could not go back to its "
                            "queue (%s); it runs here", self.worker_name, job.id, _cause(exc))
            else:
                log.warning("squall worker %s: job %s (execution %s), fetched as it was stopping now, went back to "
                            "its queue unstarted", self.worker_name, job.id,
                            (job.task_kwargs or {}).get("execution_id"))
                return
        await super()._process_job(context)

    async def _abort_running_jobs(self) -> None:
        """The drain ran out: the jobs still running are cut short, said first (`cut_short`)."""
        self._cut_running(now=False)
        await asyncio.gather(*self._running_jobs, return_exceptions=True)

    async def _fetch_and_process_jobs(self) -> None:
        try:
            await super()._fetch_and_process_jobs()
        except procrastinate_exceptions.ConnectorException as exc:
            if not isinstance(exc.__cause__, psycopg.OperationalError):
                raise
            if self._fetch_failed_at is None:
                self._fetch_failed_at = time.monotonic()
                log.warning("squall worker %s: could not fetch jobs (%s); tried again at the next poll (%.0f s) or "
                            "notification", self.worker_name, _cause(exc), self.fetch_job_polling_interval)
            return
        if self._fetch_failed_at is not None:
            log.info("squall worker %s: fetches jobs again (it failed for %.0f s)", self.worker_name,
                     time.monotonic() - self._fetch_failed_at)
            self._fetch_failed_at = None

    async def _update_heartbeat(self) -> None:
        failed_at: float | None = None
        while True:
            await asyncio.sleep(HEARTBEAT_RETRY_SECONDS if failed_at is not None else self.update_heartbeat_interval)
            try:
                await self._beat()
            except Exception as exc:  # the database away: beat again as soon as it is back
                if failed_at is None:
                    failed_at = time.monotonic()
                    log.warning("squall worker %s: its heartbeat could not be stored (%s); tried again every %.0f s "
                                "until it is", self.worker_name, _cause(exc), HEARTBEAT_RETRY_SECONDS)
                continue
            if failed_at is not None:
                log.info("squall worker %s: its heartbeat is stored again (it failed for %.0f s)", self.worker_name,
                         time.monotonic() - failed_at)
                failed_at = None

    async def _beat(self) -> None:
        """Store a heartbeat: through procrastinate's pool, else on a connection of its own. After an
        outage the pool waits out a reconnection backoff that doubles (1, 2, 4 ... s): its next try may
        come long after the database is back, later than a reaper's watch allows."""
        try:
            await asyncio.wait_for(self.app.job_manager.update_heartbeat(self.worker_id), HEARTBEAT_POOL_WAIT)
            return
        except (TimeoutError, procrastinate_exceptions.ConnectorException):
            pass
        async with await psycopg.AsyncConnection.connect(libpq_url(self.database_url), autocommit=True,
                                                         connect_timeout=5, application_name=PROCESS_NAME) as conn:
            await conn.execute("SELECT procrastinate_update_heartbeat_v1(%s)", (self.worker_id,))

    async def _periodic_deferrer(self) -> None:
        await super()._periodic_deferrer()
        await asyncio.get_running_loop().create_future()  # until cancelled: the side-task monitor keeps watching

    def _start_side_tasks(self) -> list[asyncio.Task[Any]]:
        channels = list(get_channel_for_queues(self.queues))
        listener = listen_to(self.database_url, channels, self._heard, f"new jobs ({', '.join(channels)})")
        return [*super()._start_side_tasks(), asyncio.create_task(listener, name="listener")]

    def _heard(self, _channel: str | None, payload: str | None) -> None:
        """A notification (what procrastinate's listener did with it), or None when (re)connected: what
        was queued while it was not listening is fetched now, not at the next poll."""
        if payload is None:
            self._new_job_event.set()
            return
        try:
            note = json.loads(payload)
        except ValueError:
            log.warning("squall worker %s: a notification it cannot read (%r), ignored", self.worker_name, payload)
            return
        if note.get("type") == "job_inserted":
            self._new_job_event.set()
        elif note.get("type") == "abort_job_requested":
            self._handle_abort_jobs_requested([note.get("job_id")])

    async def _persist_job_status(self, job: Any, status: Any, retry_decision: Any, context: Any,
                                  job_result: Any) -> None:
        wait, longest = FINISH_RETRY_SECONDS
        failed = False
        while True:
            try:
                await super()._persist_job_status(job, status, retry_decision, context, job_result)
            except procrastinate_exceptions.ConnectorException as exc:
                if not isinstance(exc.__cause__, psycopg.OperationalError) or self._stop_event.is_set():
                    self._let_go(job, status.value, exc, failed)
                    return
                if not failed:
                    log.warning("squall worker %s: the end (%s) of job %s could not be recorded (%s); tried again "
                                "until it is", self.worker_name, status.value, job.id, _cause(exc))
                failed = True
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)
                continue
            if failed:
                log.info("squall worker %s: the end (%s) of job %s is recorded", self.worker_name, status.value,
                         job.id)
            return

    def _let_go(self, job: Any, status: str, exc: Exception, retried: bool) -> None:
        """A job whose end will not be recorded here: another node failed it meanwhile (or, `retried`,
        an earlier try recorded it and lost its answer), or the worker stops while the database is away
        (the reaper of another node fails it once this worker's heartbeat ends)."""
        self._job_ids_to_abort.pop(job.id, None)
        execution_id = (job.task_kwargs or {}).get("execution_id")
        if not isinstance(exc.__cause__, psycopg.errors.RaiseException):
            log.error("squall worker %s: the end (%s) of job %s (execution %s) could not be recorded (%s); the "
                      "reaper of another node fails the job once this worker stops beating", self.worker_name,
                      status, job.id, execution_id, _cause(exc))
        elif retried:
            log.info("squall worker %s: job %s (execution %s) is no longer running in the database: an earlier try "
                     "recorded its end (%s) and lost the answer, or another node ended it meanwhile",
                     self.worker_name, job.id, execution_id, status)
        else:
            log.warning("squall worker %s: job %s (execution %s) was ended by another node meanwhile, which took "
                        "this worker for stalled; its end here (%s) is not recorded", self.worker_name, job.id,
                        execution_id, status)

    async def _shutdown(self, side_tasks: list[asyncio.Task[Any]]) -> None:
        beating = [task for task in side_tasks if task.get_name() == "update_heartbeats"]
        try:
            await super()._shutdown([task for task in side_tasks if task not in beating])
        finally:
            await procrastinate_utils.cancel_and_capture_errors(beating)


def _cause(exc: BaseException) -> str:
    """What failed, in the driver's words: procrastinate's own error only says 'Database error.'."""
    cause = exc.__cause__ or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


async def _poll_forever(squall: Squall) -> None:
    """Every `REAP_SECONDS`, submit what waits for a node to do it, as serve's poll does: what a
    concurrency policy delayed (admitted once a slot is free), workflow tasks whose `delay` is over
    (their step's worker may be gone), requests whose job was never written. So a cluster runs them
    with no serve node up. A failure is said as the reaper's are (`Trouble`): a database outage once, and
    once when it is over; anything else with its traceback."""
    trouble, what = Trouble(log, f"every {REAP_SECONDS:g} s"), "looking for executions waiting to be submitted"
    while True:
        await asyncio.sleep(REAP_SECONDS)
        try:
            await squall.executions.poll()
        except Exception as exc:  # the next pass tries again; a worker must not die of it
            trouble.failed(what, exc)
        else:
            trouble.worked(what)


async def work(config: Config, queues: list[str] | None, concurrency: int, drain: float | None = None,
               health: tuple[str, int] | None = None) -> None:
    """Run jobs of `queues` (all when None) until a stop signal; `health`: where to answer `/healthz`.
    `drain`: the seconds running actions get to finish at a stop (`--drain`); None takes
    `executor.shutdown_grace`, the setting `squall serve` stops by, so one key sets it for every node
    (the worker ignored it: only `--drain`, 600 unless given, held)."""
    if drain is None:
        drain = config.shutdown_grace
    if config.executor_kind != "procrastinate":
        raise ConfigError(f"{config.named}: squall worker runs the jobs of 'executor.kind: procrastinate' "
                          f"(with PostgreSQL); this config's executor is {config.executor_kind!r}, whose executions "
                          "squall serve runs itself")
    squall = await Squall.start(config, adapters=configured_adapters(config))
    # Each pack's content hash now, as loaded: a pack edited on disk later is not what runs here.
    await asyncio.to_thread(lambda: [pack.content_hash() for pack in squall.registry.packs.values()])
    worker = Worker(squall, queues)  # first: what the recovery below raises goes to the serve nodes too
    # Questions whose TTL timer went with a worker that stopped: the overdue expire now, the others get a
    # timer here (the lead's minute sweep does the same; one query over what is pending).
    await squall.inquiries.recover()
    app = worker_app(config, worker.run_job)
    server = None
    if health is not None:
        from bot.http.health import worker_api
        from bot.http.server import ApiServer

        server = ApiServer(squall, host=health[0], port=health[1], app=worker_api(worker))
        try:
            await server.start()
        except (OSError, RuntimeError) as exc:  # taken since the CLI's check (`_probe_listen`): nothing else started
            await squall.close()
            raise ConfigError(f"--health-port {health[1]}: cannot listen on {health[0]}:{health[1]} (in use, or "
                              f"not this machine's address): {exc}") from None
        log.info("squall worker %s: health at http://%s:%d/healthz", worker.name, *health)
    helpers = [asyncio.create_task(reap_forever(squall.executions, squall.jobs), name="squall-reaper"),
               asyncio.create_task(_poll_forever(squall), name="squall-poll")]
    log.info("squall worker %s: queues %s, %d at once, %d packs, %d actions", worker.name,
             ", ".join(queues) if queues else "all", concurrency, len(squall.registry.packs),
             len(squall.registry.actions))
    settle_heap()  # as squall serve does once it is up
    try:
        async with app.open_async():
            runner = JobWorker(app, config.database_url, worker.cut_short, queues=queues, concurrency=concurrency,
                               name=worker.name, shutdown_graceful_timeout=drain, install_signal_handlers=False,
                               update_heartbeat_interval=HEARTBEAT_SECONDS, stalled_worker_timeout=PRUNE_SECONDS)
            jobs = asyncio.create_task(runner.run())
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop, jobs, runner, drain)
            with contextlib.suppress(asyncio.CancelledError):
                await jobs
    finally:
        log.info("squall worker %s is stopping", worker.name)
        if server is not None:
            await server.stop()
        for task in helpers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await squall.close()
