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
- `reap_stalled` ends what a worker that stopped answering (its heartbeat unchanged for
  `STALLED_SECONDS`) left: its actions become `abandoned` (retry policies then run them again, and
  their workflow conducts on), its workflow steps are queued again, and one warning per worker names
  it, how long it was silent and what it left; each action it abandons gets an audit event
  (`REAPER_ABANDON`) in the transaction of its end, naming the worker and why. It also queues a step
  for any workflow that waits on nothing and has no job (its last task's process died between the
  two), once that lasts: a task's end commits before the step it queues, so every busy workflow
  waits on nothing for a moment (`UNATTENDED_GRACE_SECONDS`).
  A heartbeat is the server's `now()` when it was stored, and the server's wall clock may step
  (NTP): its age by that clock made a forward step abandon what live workers ran, and a step back
  (a heartbeat, or the server's start, in the future) keep a dead worker's runs for the step's
  length. So a reaper judges a heartbeat by whether it changes, over its own monotonic clock
  (`ReaperWatch`), never by comparing it with a clock. And it says the worker is gone only if the
  worker could have beaten meanwhile: while PostgreSQL is down, or cut off from the reaper and the
  workers alike, nobody beats. So the watch starts again after a gap in the reaper's own looks and
  when the server restarted (`pg_postmaster_start_time()` changed); a live worker beats again
  within seconds of the database's return (`bot.worker.JobWorker`). Several processes reap (every
  worker and the leading serve node), each from what it watched: the job is failed only while its
  worker's heartbeat is still the one that reaper watched, under a lock (`_fail_stalled`), so a
  worker that beat meanwhile is abandoned by none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.config import Config
from engine.executions import ABANDONED_BY, STEPPING, AuditEntry, until_due
from engine.packs import Registry
from engine.storage import Store, Trouble, as_utc
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
#: A workflow that waits on no task and has no job is stepped on by a reaper only once it has seen it so,
#: unchanged, this long ago (two passes), or its last task ended longer ago than this. A task's end commits
#: first and the step it queues (`JobExecutor.advance`) commits a moment later, in a transaction of its
#: own: a pass that fell in between warned, in normal operation, that the workflow had been left, and
#: queued a step besides. That gap is milliseconds, a second or so on a loaded node; below `REAP_SECONDS`,
#: so the second pass that sees a workflow truly left steps it on: within about 5 s of its last task's
#: end, as `docs/scale-out.md` says, 8 s at most (a first look 3 s after the end, the next 5 s later).
UNATTENDED_GRACE_SECONDS = 3.0
#: How many executions a log line names before it gives the count of the rest.
NAMED = 5
#: The audit event of an action a reaper ends `abandoned` (`_abandoned_event`), one per execution: the
#: audit trail (`/audit`, `squall audit export`, `audit.sinks`) showed the end, never why it came.
REAPER_ABANDON = "reaper.execution.abandon"
#: Why a reaper ends an action whose job ended without it (`_orphaned`): in its warning and its audit event.
_JOB_ENDED_WITHOUT_IT = "its job ended without it (its end could not be stored)"
_LIVE = ("running", "pausing", "canceling", "resuming")
#: A task in one of these will queue its workflow's next step when it ends.
_CHILD_LIVE = ("requested", "scheduled", "delayed", "running", "canceling", "pausing", "resuming")

_DEFER = sa.text(
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task, 0, CAST(:lock AS text), :queueing_lock, "
    "CAST(:args AS jsonb), CAST(NULL AS timestamptz))]::procrastinate_job_to_defer_v1[]))")
_ABORT = sa.text("SELECT procrastinate_cancel_job_v1(:job_id, true, false)")
#: What a reaper watches: every worker's heartbeat, and when the server started (one row without workers).
_BEATS = sa.text(
    "SELECT w.id, w.last_heartbeat, s.started FROM (SELECT pg_postmaster_start_time() AS started) s "
    "LEFT JOIN procrastinate_workers w ON true")
#: The running jobs of the workers `:workers` (the ones a reaper found stalled) or of none: gone (its row
#: deleted: it unregistered, or was pruned), judged in the same snapshot as the job.
_RUNNING = sa.text(
    "SELECT j.id, j.args ->> 'execution_id' AS execution_id, w.id AS worker_id FROM procrastinate_jobs j "
    "LEFT JOIN procrastinate_workers w ON w.id = j.worker_id "
    "WHERE j.status = 'doing' AND j.task_name = :task AND (w.id IS NULL OR w.id IN :workers)"
).bindparams(sa.bindparam("workers", expanding=True))
#: A running job about to be failed as stalled, locked; and its worker's heartbeat, locked against a
#: beat (`FOR SHARE`: a heartbeat's UPDATE waits for the reaper's commit, and then changes nothing it decided).
_JOB_DOING = sa.text("SELECT worker_id FROM procrastinate_jobs WHERE id = :job_id AND status = 'doing' FOR UPDATE")
_HEARTBEAT = sa.text("SELECT last_heartbeat FROM procrastinate_workers WHERE id = :worker_id FOR SHARE")
#: Workflows that wait on no task and have no job, with what they have done (how many tasks, the last end:
#: a step moved it on when that changes) and for how long they have been quiet by the server's clock (against
#: the ending node's, which wrote `end_timestamp`; since the workflow's start when no task of it ended).
_UNATTENDED = sa.text(
    "SELECT e.id, e.action, t.tasks, t.last_end, "
    "EXTRACT(EPOCH FROM now() - COALESCE(t.last_end, e.start_timestamp)) AS quiet FROM executions e "
    "CROSS JOIN LATERAL (SELECT count(*) AS tasks, max(c.end_timestamp) AS last_end FROM executions c "
    "WHERE c.parent = e.id) t WHERE e.status IN :stepping AND e.runner IN :runners "
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

    async def advance(self, execution_id: str) -> bool:
        """Queue the next step of a workflow (one of its tasks ended, or it was asked to pause or
        cancel); a step already waiting covers it. Whether this queued one (the reaper says so only then)."""
        record = await self.executions.db(self.executions.db.store.get_execution, execution_id)
        if record is not None and record["status"] in ("resuming", *STEPPING):
            return await self._defer(record)
        return False

    async def _defer(self, record: dict[str, Any]) -> bool:
        queue = self.config.queue_for(record["action"])
        job = await self.executions.db(defer, self.executions.db.store, record["id"], queue,
                                       steps=self.executions.resumable(record["runner"]))
        if job is not None:
            log.debug("execution %s (%s) queued as job %s on %s", record["id"], record["status"], job, queue)
        return job is not None

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


@dataclass(frozen=True)
class Look:
    """What one reaping pass read (`_BEATS`): each worker's last heartbeat, and when the server started."""

    beats: dict[int, datetime]
    server_started: datetime | None


class ReaperWatch:
    """What one process's reaper has watched of the workers' heartbeats, by its own monotonic clock,
    so that it judges a worker by whether its heartbeat changes, never by how old it looks.

    A heartbeat is the server's wall-clock `now()`. Its age by that clock is wrong for as long as the
    clock stepped: forward, every live worker's heartbeat looked that much older until its next beat
    and its runs were abandoned (and run twice by a retry policy); back, a dead worker's heartbeat (and
    the server's start) lay in the future, and its runs stayed `running` for the step's length. So the
    watch keeps, per worker, the heartbeat it read last and when it first read it: a worker is stalled
    once that value has stayed the same for `STALLED_SECONDS`.

    It forgets what it watched when that time has a hole in it: looks more than half the stall time
    apart (its passes failing: the server down, or its own connection cut; a pass that hung; a serve
    node that did not lead), or a server that restarted between two looks (its start time changed:
    nobody could beat while it was down). A reaper back from either found every heartbeat unchanged
    since before, and abandoned what healthy workers ran. A reaper starting (or taking the lead)
    starts watching too."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.last: float | None = None
        #: When the server started, as the last look read it (compared only with the next one's).
        self.server_started: datetime | None = None
        #: Per worker id: the heartbeat read last, and when (monotonic) it was first read.
        self.beats: dict[int, tuple[datetime, float]] = {}
        #: Per workflow found waiting on no task without a job: what it had done then (`Unattended.done`),
        #: and when (monotonic) this watch first found it so.
        self.unattended: dict[str, tuple[tuple[int, datetime | None], float]] = {}

    def saw(self, now: float, server_started: datetime | None = None) -> float:
        """A look at the database that succeeded at `now` (monotonic), which read `server_started`:
        how long it has watched without a hole since."""
        gap = STALLED_SECONDS / 2
        if self.since is None or self.last is None or now - self.last > gap:
            if self.last is not None:
                log.info("the reaper last reached the database %.0f s ago (it was unreachable, or this node did "
                         "not lead): workers silent meanwhile count as stalled only once it has watched for %.0f s",
                         now - self.last, STALLED_SECONDS)
            self._start(now)
        elif server_started is not None and self.server_started not in (None, server_started):
            log.info("PostgreSQL restarted since the reaper's last look (started %s, then %s): workers silent "
                     "meanwhile count as stalled only once it has watched for %.0f s", self.server_started,
                     server_started, STALLED_SECONDS)
            self._start(now)
        if server_started is not None:
            self.server_started = server_started
        self.last = now
        return now - self.since if self.since is not None else 0.0

    def _start(self, now: float) -> None:
        self.since = now
        self.beats.clear()
        self.unattended.clear()

    def observe(self, beats: Mapping[int, datetime], now: float) -> None:
        """The heartbeats one look read, done at `now`: a value not the one held before starts being
        watched now; workers the look did not find are forgotten."""
        held = self.beats
        self.beats = {worker: held[worker] if worker in held and held[worker][0] == beat else (beat, now)
                      for worker, beat in beats.items()}

    def holds(self, worker: int, beat: datetime) -> bool:
        """Whether `beat` is the heartbeat this watch read last for `worker`."""
        held = self.beats.get(worker)
        return held is not None and held[0] == beat

    def silent(self, worker: int, beat: datetime, now: float) -> float:
        """For how long, at `now`, this watch has seen `beat` as `worker`'s heartbeat; 0 when it does
        not hold that one."""
        return max(0.0, now - self.beats[worker][1]) if self.holds(worker, beat) else 0.0

    def stalled(self, worker: int, beat: datetime, now: float) -> bool:
        """Whether `worker`, whose heartbeat is `beat`, has not beaten for `STALLED_SECONDS` of this watch."""
        return self.silent(worker, beat, now) >= STALLED_SECONDS

    def left(self, found: list[Unattended], now: float) -> list[Unattended]:
        """Of the workflows one look at `now` found waiting on no task without a job, those left so: found
        so, having done the same, `UNATTENDED_GRACE_SECONDS` ago by this watch, or quiet that long by the
        server's clock. The others are watched on: their step is being queued. Those found no more
        are forgotten, as are those returned (stepped on)."""
        held, self.unattended = self.unattended, {}
        left = []
        for workflow in found:
            seen = held.get(workflow.id)
            since = seen[1] if seen is not None and seen[0] == workflow.done else now
            if workflow.quiet >= UNATTENDED_GRACE_SECONDS or now - since >= UNATTENDED_GRACE_SECONDS:
                left.append(replace(workflow, quiet=max(workflow.quiet, now - since)))
            else:
                self.unattended[workflow.id] = (workflow.done, since)
        return left


@dataclass(frozen=True)
class Unattended:
    """A workflow that waits on no task and has no job (`_UNATTENDED`): what it has done (how many tasks,
    when the last one ended), and for how many seconds it has been quiet (the server's clock; at least
    as long as a reaper watched it so, `ReaperWatch.left`)."""

    id: str
    action: str
    done: tuple[int, datetime | None]
    quiet: float


@dataclass(frozen=True)
class Reaped:
    """What a reaper did with one stalled job (`_reap`): `outcome` of its execution `record` (`abandoned`,
    `canceled`, `stepped`: a workflow's step queued again; `ended`: it had ended already)."""

    outcome: str
    record: dict[str, Any]


async def reap_stalled(executions: ExecutionService, jobs: JobExecutor) -> int:
    """End what workers that stopped answering left, and queue a step for every workflow that
    waits on nothing without one (see the module's docstring); how many jobs were stalled. What it
    ended is said once per worker (`_say_reaped`), also when the pass is cut short."""
    store = executions.db.store
    before = time.monotonic()  # the look's snapshot is taken after this, and read before `after`
    look = await executions.db(_stalled, store)
    after = time.monotonic()
    watch = jobs.watch
    watch.saw(after, look.server_started)
    watch.observe(look.beats, after)
    silent = [worker for worker, beat in look.beats.items() if watch.stalled(worker, beat, before)]
    reaped: dict[int | None, list[Reaped]] = {}
    try:
        for job_id, execution_id, worker in await executions.db(_running, store, silent):
            beat = None if worker is None else look.beats[worker]
            why = _gone(worker, None if worker is None else watch.silent(worker, look.beats[worker], before))
            done = await _reap(executions, jobs, job_id, execution_id, worker, beat, f"its worker {why}")
            if done is not None:
                reaped.setdefault(worker, []).append(done)
    finally:
        for worker, done in reaped.items():
            _say_reaped(worker, None if worker is None else watch.silent(worker, look.beats[worker], before), done)
    workflows = [name for name in executions.runners if executions.resumable(name)]
    for execution_id in await executions.db(_orphaned, store, workflows):
        record = await executions.db(store.get_execution, execution_id)
        if record is not None and record["status"] in _LIVE:
            log.warning("execution %s: %s; ending it", execution_id, _JOB_ENDED_WITHOUT_IT)
            await _end_lost(executions, record, _JOB_ENDED_WITHOUT_IT)
    for workflow in watch.left(await executions.db(_unattended, store, workflows), time.monotonic()):
        if await jobs.advance(workflow.id):
            log.warning("workflow %s (%s) has had no task running and no step queued for %.0f s, since its last task "
                        "ended: the node that ended that task stopped before it queued the next step; queued it now",
                        workflow.id, workflow.action, workflow.quiet)
    watch.saw(time.monotonic())
    return sum(len(done) for done in reaped.values())


def _say_reaped(worker: int | None, silent: float | None, reaped: list[Reaped]) -> None:
    """One warning for what a reaper ended of one worker's: the worker (procrastinate's id, and the
    `host:pid` its executions name), how long its heartbeat stayed the same (`silent`; None: its entry
    is gone), and the executions by what became of them. Before, an action abandoned so was logged
    nowhere: its end and the process groups serve killed later named neither the worker nor it."""
    names = {(r.record.get("runner_info") or {}).get("worker") for r in reaped} - {None}
    who = f"squall worker {', '.join(sorted(names)) or '(name unknown)'}"
    why = _gone(worker, silent)
    said = {"abandoned": "abandoned {} execution(s)", "canceled": "canceled {} execution(s) (a cancel was asked for)",
            "stepped": "queued again the step of {} workflow(s), for another worker",
            "ended": "{} execution(s) had ended already"}
    parts = []
    for outcome, what in said.items():
        these = [(r.record["id"], str(r.record.get("action"))) for r in reaped if r.outcome == outcome]
        if these:
            parts.append(f"{what.format(len(these))}: {listing(these)}")
    log.warning("%s %s; its %d running job(s) are failed: %s", who, why, len(reaped), "; ".join(parts))


def _gone(worker: int | None, silent: float | None) -> str:
    """Why a reaper takes `worker` (procrastinate's id; None: its entry is gone) for dead, after its
    heartbeat stayed the same for `silent` seconds: the reaper's warning and its audit events say it alike."""
    if worker is None:
        return "is gone (its procrastinate entry was removed: it unregistered, or was pruned)"
    return f"(procrastinate worker {worker}) stopped answering: its heartbeat has not changed for {silent or 0:.0f} s"


def listing(executions: list[tuple[str, str]], named: int = NAMED) -> str:
    """`executions` ((id, action ref) pairs) for a log line: the first `named`, and how many more."""
    shown = ", ".join(f"{execution} ({action})" for execution, action in executions[:named])
    rest = len(executions) - named
    return shown + (f" and {rest} more" if rest > 0 else "")


async def _reap(executions: ExecutionService, jobs: JobExecutor, job_id: int, execution_id: str,
                worker: int | None, beat: datetime | None, why: str) -> Reaped | None:
    """Fail stalled job `job_id`, if its worker still has the heartbeat `beat` this reaper watched
    (`worker` None: it was gone), then end what it left of `execution_id` (`why`: for its audit event);
    what became of it, None when it was left alone. The job fails first, under that check: a pass cut
    short after it leaves an execution whose job ended, which `_orphaned` ends (in this pass, or the next
    one if this one stops here)."""
    store = executions.db.store
    if not await executions.db(_fail_stalled, store, job_id, worker, beat):
        log.info("job %s (execution %s): its worker %s beat again, or the job ended, as it was found stalled; "
                 "left alone", job_id, execution_id, worker)
        return None
    record = await executions.db(store.get_execution, execution_id)
    if record is None or record["status"] not in _LIVE:
        return Reaped("ended", record or {"id": execution_id, "action": "deleted"})
    if executions.resumable(record["runner"]):
        await jobs.advance(execution_id)  # its lock is free for the next step
        return Reaped("stepped", record)
    return Reaped(await _end_lost(executions, record, why, worker) or "ended", record)


def _fail_stalled(store: Store, job_id: int, worker: int | None, beat: datetime | None) -> bool:
    """Fail job `job_id` as stalled if it still runs on `worker` and that worker's heartbeat is still
    `beat` (None for both: its worker was gone, and is); whether it did. The job's row and the worker's
    are locked first, so a worker that beats meanwhile either beat before (nothing is failed) or waits
    for this to commit."""
    with store._write() as conn:
        row = conn.execute(_JOB_DOING, {"job_id": job_id}).one_or_none()
        if row is None or (worker is not None and row.worker_id != worker):
            return False
        if row.worker_id is not None:
            current = conn.execute(_HEARTBEAT, {"worker_id": row.worker_id}).scalar_one_or_none()
            if current != beat:  # it beat since this reaper watched it
                return False
        conn.execute(_FAIL, {"job_id": job_id})
        return True


async def _end_lost(executions: ExecutionService, record: dict[str, Any], why: str,
                    worker: int | None = None) -> str | None:
    """An action whose worker is gone: `canceled` if a cancel was asked for, else `abandoned`, with its
    audit event saying `why` (`_abandoned_event`; `worker`: procrastinate's id of the worker it ran on);
    how it ended, None when it had ended meanwhile (its worker's late end, a cancel)."""
    if record["status"] == "canceling":
        done = await executions.complete(record["id"], "canceled", {
            **(record.get("result") or {}), "error": "canceled by request; its worker stopped"}, ("canceling",))
        return "canceled" if done is not None else None
    done = await executions.complete(record["id"], "abandoned", _lost(record, why), _LIVE,
                                     _abandoned_event(record, why, worker))
    return "abandoned" if done is not None else None


def _abandoned_event(record: dict[str, Any], why: str, worker: int | None) -> AuditEntry:
    """The audit event (`REAPER_ABANDON`) of `record`, an action a reaper ends `abandoned`: stored with that
    end (`ExecutionService.complete`), so neither is stored without the other, and about the execution. It
    names the worker that ran it (its `host:pid`, host, procrastinate's id and job) and `why` the reaper ended
    it, as the reaper's warning does in that node's log only. A system event: no actor, as `retention.purge`."""
    info = record.get("runner_info") or {}
    return AuditEntry(REAPER_ABANDON, None, "reaper", None, {
        "action": record["action"], "worker": info.get("worker"), "hostname": info.get("hostname"),
        "procrastinate_worker": worker, "job_id": info.get("job_id"), "reason": why})


def _orphaned(store: Store, workflows: list[str]) -> list[str]:
    """Actions still live whose worker's job has ended: the task raised before the execution's end
    was stored (the database unreachable for a moment), and nothing else would ever end them."""
    with store._read() as conn:
        return [str(row.id) for row in conn.execute(_ORPHANED, {"live": list(_LIVE), "workflows": workflows or [""]})]


def _stalled(store: Store) -> Look:
    """What a reaper watches (`Look`): the workers' heartbeats, and when the server started."""
    beats: dict[int, datetime] = {}
    server_started = None
    with store._read() as conn:
        for row in conn.execute(_BEATS):
            server_started = row.started
            if row.id is not None:
                beats[int(row.id)] = row.last_heartbeat
    return Look(beats, server_started)


def _running(store: Store, workers: list[int]) -> list[tuple[int, str, int | None]]:
    """The running jobs of `workers`, and of workers that are gone: (job id, execution id, worker id
    or None when gone)."""
    with store._read() as conn:
        return [(int(row.id), str(row.execution_id), None if row.worker_id is None else int(row.worker_id))
                for row in conn.execute(_RUNNING, {"task": TASK, "workers": workers or [-1]})]


def _unattended(store: Store, runners: list[str]) -> list[Unattended]:
    with store._read() as conn:
        return [Unattended(str(row.id), str(row.action), (int(row.tasks), row.last_end), float(row.quiet))
                for row in conn.execute(_UNATTENDED, {"stepping": list(STEPPING), "runners": runners,
                                                      "live": list(_CHILD_LIVE)})]


def _lost(record: dict[str, Any], why: str) -> dict[str, Any]:
    """The result of an action a reaper ends `abandoned`, saying where it ran and `why` it was ended, as its
    audit event does: its worker stopped answering, its worker is gone (stopped and unregistered), or its
    job ended without it. (Every such end said "stopped answering" before.) Marked so (`ABANDONED_BY`),
    so that its workflow runs the task again."""
    info = record.get("runner_info") or {}
    return {**(record.get("result") or {}),
            "error": f"Squall stopped running it on {info.get('worker') or 'an unknown worker'} "
                     f"({info.get('hostname') or 'an unknown host'}): {why}",
            ABANDONED_BY: "reaper"}


async def reap_forever(executions: ExecutionService, jobs: JobExecutor, every: float = REAP_SECONDS) -> None:
    """`reap_stalled` every `every` seconds until cancelled; a failed pass is logged (`Trouble`: a
    database outage once as it starts and once as it ends) and retried."""
    trouble, what = Trouble(log, f"every {every:g} s"), "looking for stalled workers' executions"
    while True:
        try:
            await reap_stalled(executions, jobs)
        except Exception as exc:  # the next pass tries again; a worker must not die of it
            trouble.failed(what, exc)
        else:
            trouble.worked(what)
        await asyncio.sleep(every)


def queue_status(store: Store, watch: ReaperWatch | None = None) -> dict[str, Any]:
    """For the web UI's status page: procrastinate's workers (id, last heartbeat, whether it counts as
    stalled) and, per queue, how many jobs wait (`todo`) and run (`doing`).

    A worker is stalled as this process's reaper judges it (`watch`) when that has read its current
    heartbeat; else (no watch: a serve node that does not lead, or a worker it has not seen yet) by the
    heartbeat's age on the server's own clock, a hint that is wrong for a while after that clock steps."""
    now = time.monotonic()
    with store._read() as conn:
        workers = []
        for row in conn.execute(sa.text(
                "SELECT id, last_heartbeat, last_heartbeat < now() - make_interval(secs => :seconds) AS old "
                "FROM procrastinate_workers ORDER BY id"), {"seconds": STALLED_SECONDS}):
            stalled = bool(row.old)
            if watch is not None and watch.holds(int(row.id), row.last_heartbeat):
                stalled = watch.stalled(int(row.id), row.last_heartbeat, now)
            workers.append({"id": int(row.id), "last_heartbeat": as_utc(row.last_heartbeat), "stalled": stalled})
        queues: dict[str, dict[str, int]] = {}
        for row in conn.execute(sa.text(
                "SELECT queue_name, status, count(*) AS n FROM procrastinate_jobs "
                "WHERE status IN ('todo', 'doing') GROUP BY queue_name, status ORDER BY queue_name")):
            queues.setdefault(str(row.queue_name), {"todo": 0, "doing": 0})[str(row.status)] = int(row.n)
    return {"workers": workers, "queues": queues}
