"""Trigger instances: stored before they are processed, then handed to whoever consumes them.

Webhooks, timers, sensors, the API and the engine itself (action and notify triggers) all call
`TriggerService.dispatch`. The instance is written as `pending` first, so a crash never loses
one; processing moves it to `processing` and then `processed` or `processing_failed`
(StackStorm's statuses). Consumers (the rules engine) register as processors; `wanted(ref)`
lets the engine skip emitting trigger types nobody listens to.

Several `squall serve` processes may share the database. A process claims an instance atomically
(`pending` → `processing`, recording itself as its owner: host, pid, start time, boot, pid
namespace), so of those that try, one processes it, and only its owner writes how it ended
(`Store.trigger_instance_finish`). Recovery at start processes what is `pending` and resumes what a
process of this host that died left `processing` (never what a live one holds): the rules engine
then enforces only the rules that had not acted for it.

A pid tells nothing on another host. So on PostgreSQL each serve node stores a heartbeat every
`NODE_BEAT_SECONDS` (`start_beating`) and watches the others' (`resume_silent`, `NodeWatch`): a node
whose heartbeat stayed the same for `NODE_SILENT_SECONDS` of the watcher's own clock is presumed
dead, and its `processing` instances are taken over, while its heartbeat is still the one watched,
under a lock on its row. One presumed dead that was only paused cannot write over the taker: its
end is not written, and the rules act once per instance whoever enforces them. Before, an instance a
serve node of another host held when it was killed or lost stayed `processing` until a serve node
started on that host again, perhaps never.

A `squall worker` (`executor.kind: procrastinate`) processes none of the instances it raises: it
hands them off (`hand_off`). Each is stored `pending` with a notification on `wakeups.TRIGGERS` in
the same transaction, and the serve nodes claim and process them with their current rules (`follow`
at once, `take_pending` at every poll, `recover` at start). Processed in the worker, they met the
rules the worker loaded at its start, however the serve nodes' rules had changed since; and an
instance a worker of another host held `processing` when it died was left to nobody (a worker beats
no heartbeat, and its pid tells nothing to a serve node of another host).

A serve node also looks after what it holds itself. A claim the database fails (PostgreSQL restarting)
is tried again until it answers (`_through_outage`), as the processing is, rather than left `pending`
for the minute sweep. And that sweep (`recover` with `pending_for`) takes up again an instance this
process holds `processing` that no task of its own has worked on for `HELD_GRACE_SECONDS` (a task lost,
a claim whose answer the database lost): nobody else takes over what a live process holds, so before,
it stayed `processing` for as long as the node lived. It is resumed, so each rule acts once.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from engine import wakeups
from engine.executions import END_RETRY_SECONDS, AuditEntry, new_id
from engine.metrics import metrics
from engine.packs import Registry
from engine.processes import LEDGER, ledger_directory, owner_state, process_identity
from engine.storage import Database, Store, as_utc, database_trouble, iso, utcnow

log = logging.getLogger(__name__)
T = TypeVar("T")
WEBHOOK = "core.st2.webhook"
#: How many `pending` instances a serve node claims at once (`TriggerService.take_pending`).
TAKE_BATCH = 100
#: How many instances a serve node holds in hand before it takes more: the rest wait in the database
#: for its next wake-up or poll, not in its memory.
TAKE_IN_HAND = 1000
#: How often a `squall serve` node on PostgreSQL stores its heartbeat (`Store.serve_node_beat`), and
#: looks at the other nodes' (`TriggerService.resume_silent`).
NODE_BEAT_SECONDS = 5.0
#: A serve node whose heartbeat another node has watched stay the same for this long (by the watcher's
#: own monotonic clock) is presumed dead, and the instances it holds `processing` are taken over.
NODE_SILENT_SECONDS = 30.0
#: A serve node silent this long is forgotten: its heartbeat row is deleted, with a last take-over.
NODE_FORGOTTEN_SECONDS = 3600.0
#: An instance this process holds `processing` that its sweeps (`recover`) found no task of its own
#: working on for this long, by its own monotonic clock, is taken up again (`_resume_held`). Longer than
#: the moment between a claim's commit and its task's start; the minute sweep takes it at its next look.
HELD_GRACE_SECONDS = 30.0


def binding(trigger_ref: str, parameters: Mapping[str, Any] | None) -> str:
    """The key that ties an instance to the rules of one trigger: its type plus its parameters.

    StackStorm calls a trigger type with parameters a Trigger: a rule on `core.st2.IntervalTimer`
    every 10 s must not fire for the 60 s timer, nor a webhook rule for another hook's URL.
    """
    if not parameters:
        return trigger_ref
    if trigger_ref == WEBHOOK:
        parameters = {**parameters, "url": str(parameters.get("url", "")).strip("/")}
    return f"{trigger_ref} {json.dumps(parameters, sort_keys=True, default=str)}"


class TriggerError(ValueError):
    """A trigger that cannot be dispatched: unknown type, or a payload its schema refuses."""


class _Stopping(Exception):
    """Work on an instance that the database failed, given up as this process stops (`_through_outage`)."""


class TriggerProcessor(Protocol):
    def interested(self, trigger_ref: str) -> bool:
        """Whether instances of this trigger type matter to this processor."""

    async def process(self, instance: dict[str, Any], resumed: bool = False) -> None:
        """Handle one stored instance; raising marks it `processing_failed`. `resumed`: a process that
        died was processing it, and may have done part of the work."""


def encode_owner(identity: Mapping[str, Any]) -> str:
    """An instance's `owner` as stored: JSON text, keys sorted, so a recovery can compare it as
    text when it takes the instance over (`Store.trigger_instance_take_over`)."""
    return json.dumps(dict(identity), sort_keys=True, separators=(",", ":"))


def decode_owner(text: str | None) -> dict[str, Any] | None:
    """The owner record `encode_owner` stored (None: none, or unreadable, which counts as gone)."""
    try:
        owner = json.loads(text) if text else None
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


class NodeWatch:
    """What one serve node has watched of the others' heartbeats, by its own monotonic clock: a node is
    judged by whether its heartbeat changes, never by how old it looks, as `engine.jobs.ReaperWatch`
    judges workers. No clock of another machine, nor a step of one, can make a live node look dead.

    Per node it keeps the heartbeat read last, when that was first read, and when a take-over of it
    was last tried. It forgets everything when its looks are more than half `NODE_SILENT_SECONDS` apart
    (they failed: the database or this node's connection was down, or this node was paused): a
    heartbeat unchanged across such a hole may be one nobody could store, so it watches anew."""

    def __init__(self) -> None:
        self.last: float | None = None
        #: Per node (owner text): [heartbeat, monotonic time it was first read, time a take-over was tried].
        self.beats: dict[str, tuple[int, float, float | None]] = {}

    def look(self, beats: Mapping[str, int], now: float) -> None:
        """The heartbeats one look read, done at `now`: a value not the one held before starts being
        watched now; nodes the look did not find are forgotten."""
        if self.last is not None and now - self.last > NODE_SILENT_SECONDS / 2:
            log.info("this serve node last read the others' heartbeats %.0f s ago: a serve node counts as stopped "
                     "only once it has watched it for %.0f s", now - self.last, NODE_SILENT_SECONDS)
            self.beats = {}
        held = self.beats
        self.beats = {node: held[node] if node in held and held[node][0] == beat else (beat, now, None)
                      for node, beat in beats.items()}
        self.last = now

    def silent(self, now: float) -> list[tuple[str, int, float]]:
        """The nodes whose heartbeat stayed the same for `NODE_SILENT_SECONDS` up to `now`, whose take-over
        was not tried within that time: (node, heartbeat, for how long)."""
        return [(node, beat, now - since) for node, (beat, since, tried) in self.beats.items()
                if now - since >= NODE_SILENT_SECONDS and (tried is None or now - tried >= NODE_SILENT_SECONDS)]

    def tried(self, node: str, now: float) -> None:
        """A take-over of `node` was tried at `now` (a later look tries again, for what it claimed meanwhile)."""
        if node in self.beats:
            beat, since, _tried = self.beats[node]
            self.beats[node] = (beat, since, now)


def _added_with(store: Store, record: dict[str, Any], delivery: tuple[str, datetime] | None,
                wake: str | None, event: AuditEntry) -> None:
    """A trigger instance and the audit event of the person who fired it: one transaction, so one
    failing leaves neither (`TriggerService.dispatch`)."""
    with AuditEntry.together(store):
        store.trigger_instance_add(record, delivery, wake)
        event.add(store, record["trigger"])


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "trigger": record["trigger"],
        "payload": record["payload"],
        "occurrence_time": iso(record["occurrence_time"]),
        "status": record["status"],
        "trace_tag": record.get("trace_tag"),
        "trigger_parameters": record.get("trigger_parameters") or {},
    }


class TriggerService:
    def __init__(self, registry: Registry, db: Database) -> None:
        self.registry = registry
        self.db = db
        self.processors: list[TriggerProcessor] = []
        #: The tasks processing instances in this process, each with its instance's id.
        self._tasks: dict[asyncio.Task[None], str] = {}
        #: Instances this process holds `processing` with no task on them, and when a sweep first found
        #: each so (monotonic): taken up again once that is `HELD_GRACE_SECONDS` ago (`_resume_held`).
        self._unworked: dict[str, float] = {}
        #: Who claims the instances this process processes (as an execution's `runner_info`).
        self.identity: dict[str, Any] = {"hostname": socket.gethostname(), **process_identity()}
        self.owner = encode_owner(self.identity)
        store = getattr(db, "store", None)
        self._sqlite = bool(getattr(store, "is_sqlite", False))
        #: Where processes of other containers on this machine keep their owner files (`engine.processes`).
        self.ledger = ledger_directory(store.engine.url.database if self._sqlite and store is not None else None)
        #: Whether the instances this process raises go to the serve nodes (`hand_off`: a `squall worker`).
        self.handing_off = False
        #: The channel notified in the transaction that stores an instance (`hand_off`), so at its commit.
        self._wake: str | None = None
        self._taking = asyncio.Lock()  # one `take_pending` at a time in this process
        self._listener: asyncio.Task[None] | None = None
        #: Takes what workers stored, at their notifications (`follow`).
        self._taker = wakeups.Rerun(self.take_pending, "trigger-take",
                                    "taking up the trigger instances squall workers stored")
        self._closed = False
        #: A serve node's heartbeat (`start_beating`), and what it watched of the other nodes' (`resume_silent`).
        self._beating: asyncio.Task[None] | None = None
        self.watch = NodeWatch()

    def hand_off(self) -> None:
        """Store the instances this process raises `pending` and process none of them (a `squall worker`):
        the serve nodes process them with their current rules, woken at the commit of each store
        (`wakeups.TRIGGERS`). `wanted` is then true of every type: which ones the serve nodes' rules use
        now, this process cannot know (they change without its restart), so it raises every type the
        engine raises, as StackStorm emits its action trigger for every execution."""
        self.handing_off = True
        self._wake = wakeups.TRIGGERS

    def wanted(self, trigger_ref: str) -> bool:
        """Whether an instance of `trigger_ref` matters here (a processor is interested, or `hand_off`). Asked
        at every execution's end (`Notifier.on_finished`): a loop, not `any` over a generator, which made a
        generator and its frame each time (it took 2.8 times as long)."""
        if self.handing_off:
            return True
        for processor in self.processors:  # noqa: SIM110 - a loop: `any` over a generator costs its frame each end
            if processor.interested(trigger_ref):
                return True
        return False

    def check(self, trigger_ref: str, payload: Any) -> None:
        """Raise `TriggerError` naming the problem if this instance cannot be dispatched."""
        trigger = self.registry.trigger_types.get(trigger_ref)
        if trigger is None:
            near = difflib.get_close_matches(trigger_ref, list(self.registry.trigger_types), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise TriggerError(f'trigger type "{trigger_ref}" is not registered{hint}')
        if trigger.payload_schema:
            import jsonschema  # here, not at the top: ~35 ms that `squall serve` need not pay before it answers

            try:
                error = jsonschema.exceptions.best_match(
                    jsonschema.Draft4Validator(trigger.payload_schema).iter_errors(payload))
            except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType) as exc:
                problem = (f"unknown type {exc.type!r}" if isinstance(exc, jsonschema.exceptions.UnknownType)
                           else exc.message)
                raise TriggerError(f'trigger type "{trigger_ref}" has an invalid payload_schema, so no payload can be '
                                   f'checked against it ({problem}): fix {trigger.metadata_file}') from None
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "payload"
                raise TriggerError(f'payload for "{trigger_ref}" is invalid at {where}: {error.message}')

    async def dispatch(self, trigger_ref: str, payload: Any, *, parameters: Mapping[str, Any] | None = None,
                       trace_tag: str | None = None, validate: bool = True,
                       delivery: tuple[str, datetime] | None = None, audit: AuditEntry | None = None,
                       instance_id: str | None = None, occurred_at: datetime | None = None) -> dict[str, Any]:
        """Store one instance (durable before this returns), then process it in the background.

        `parameters` names the trigger it fired for (a hook URL, a schedule): only rules with the
        same trigger parameters see it. Without, only rules on the bare type do. `delivery` (a key
        and when it expires) makes it the only instance of that delivery until then: the same one
        again raises `DuplicateDelivery` (a signed webhook request sent twice fires once).

        `audit`: a person fired it (`squall trigger emit`, a re-emit from the CLI, the API or the web). The
        event is stored with the instance, one transaction: one the database does not take stores no
        instance and fires nothing, so a caller told it failed may try again without firing it twice. It
        is about the trigger type unless it names its own target; its detail gains the instance's id
        (`instance`, or `new_instance` beside a re-emit's original).

        `instance_id` and `occurred_at` (aware): the instance's id and time where the caller names the
        occurrence itself rather than its storing (a timer's run: `engine.timers.occurrence`, its scheduled
        time), so that every process that fires it makes the same instance; by default a new id, and now."""
        if validate:
            self.check(trigger_ref, payload)
        record = {"id": instance_id or new_id(), "trigger": trigger_ref, "payload": payload,
                  "occurrence_time": occurred_at or utcnow(),
                  "status": "pending", "trace_tag": trace_tag, "trigger_parameters": dict(parameters or {}) or None}
        if audit is None:
            await self.db(self.db.store.trigger_instance_add, record, delivery, self._wake)
        else:
            named = "new_instance" if "instance" in audit.detail else "instance"
            await self.db(_added_with, self.db.store, record, delivery, self._wake,
                          audit.with_facts(**{named: record["id"]}))
        metrics.count(metrics.trigger_instances, trigger_ref)
        if not self.handing_off:
            self._spawn(record)
        return public(record)

    async def dispatch_once(self, trigger_ref: str, payloads: list[Any], key: str,
                            expires_at: datetime) -> list[dict[str, Any]]:
        """Store the instances of one occurrence (durable before this returns) under `key`, all or
        none, then process them in the background; [] if `key` was stored before, by anyone (in this
        process or another). With no payloads, only the key is stored: the occurrence owed nothing.
        The payloads are the engine's own (action and notify triggers): not checked."""
        now = utcnow()
        records = [{"id": new_id(), "trigger": trigger_ref, "payload": payload, "occurrence_time": now,
                    "status": "pending", "trace_tag": None, "trigger_parameters": None} for payload in payloads]
        if not await self.db(self.db.store.trigger_instances_add_once, records, key, expires_at, self._wake):
            return []
        for record in records:
            metrics.count(metrics.trigger_instances, trigger_ref)
            if not self.handing_off:
                self._spawn(record)
        return [public(record) for record in records]

    def _spawn(self, record: dict[str, Any], resumed: bool = False, held: bool = False) -> None:
        """Process `record` in the background; `held`: this process claimed it already (`take_pending`)."""
        work = self._handle(record, resumed) if held else self.process(record, resumed=resumed)
        task = asyncio.get_running_loop().create_task(work, name=f"trigger-{record['id']}")
        self._tasks[task] = record["id"]
        task.add_done_callback(self._tasks.pop)

    async def process(self, record: dict[str, Any], resumed: bool = False) -> None:
        """Claim a `pending` instance and hand it to the processors; nothing if another process (or
        another task of this one) claimed it first. `resumed`: this process took the instance over
        from one that died while processing it (`recover`), and holds it already.

        A claim the database fails is tried again until it answers (`_through_outage`): left `pending`,
        the instance waited for the minute sweep. Should a failed try have committed (its answer lost),
        the next finds it claimed by this process, and goes on with it (`_claim`)."""
        if not resumed:
            LEDGER.ensure()  # the owner file says this process lives (to other containers) before it claims
            try:
                claimed = await self._through_outage(record, "claiming", lambda again: self._claim(record, again))
            except _Stopping:
                return  # still `pending`, or this process's: whichever sweeps next takes it
            if not claimed:
                return
        await self._handle(record, resumed)

    async def _claim(self, record: Mapping[str, Any], again: bool) -> bool:
        """Claim `record` for this process; `again`: a try after one the database failed. That one may
        have committed before its answer was lost (the server cut the connection after the commit): the
        instance is then this process's already, found so here, where it waited for the minute sweep's
        second look (`_resume_held`: one to two minutes) before. No other task of this process works on
        it: its claim was this call's."""
        store = self.db.store
        if await self.db(store.trigger_instance_claim, record["id"], self.owner):
            return True
        if not again:
            return False
        row = await self.db(store.trigger_instance_get, record["id"])
        return row is not None and row["status"] == "processing" and row.get("owner") == self.owner

    async def _handle(self, record: dict[str, Any], resumed: bool) -> None:
        """Hand an instance this process holds (`processing`, claimed by it) to the processors that
        want it, then store how that went.

        A processor's work or the end's write that the database fails (down, restarting, locked:
        `database_trouble`) is tried again until it goes through (`_through_outage`), the processor's
        as resumed (the rules engine then enforces only the rules that had not acted). Before, the
        rule's action was never requested, or the end never written, and the instance stayed
        `processing` for as long as this process lived: nobody takes over what a live process holds."""
        status = "processed"
        instance = public({**record, "status": "processing"})
        for processor in self.processors:
            if not processor.interested(record["trigger"]):
                continue
            try:
                await self._through_outage(record, "processing", lambda again, p=processor: p.process(
                    instance, resumed=resumed or again))
            except _Stopping:
                return
            except Exception:
                log.exception("processing trigger instance %s (%s) failed", record["id"], record["trigger"])
                status = "processing_failed"
        try:
            finished = await self._through_outage(record, f"storing the end ({status}) of", lambda _again: self.db(
                self.db.store.trigger_instance_finish, record["id"], status, self.owner))
        except _Stopping:
            return
        except Exception:
            log.exception("storing the end (%s) of trigger instance %s (%s) failed", status, record["id"],
                          record["trigger"])
            return
        if not finished:
            log.info("trigger instance %s (%s) was taken over meanwhile by a serve node that found this one silent "
                     "for %.0f s: its end is that node's to write, so this one's (%s) was not written", record["id"],
                     record["trigger"], NODE_SILENT_SECONDS, status)

    async def _through_outage(self, record: Mapping[str, Any], what: str,
                              attempt: Callable[[bool], Awaitable[T]]) -> T:
        """`attempt(again)` (`again`: a try after one the database failed), tried again while the database
        fails it, after `END_RETRY_SECONDS[0]`, the wait doubling up to `END_RETRY_SECONDS[1]`, as an
        execution's end is (`ExecutionService._stored_end`). Logged once (a warning naming the instance),
        once more when through. Should this process stop meanwhile, it stops trying (`_Stopping`): the
        instance stays `processing`, and the next start's `recover` (or a live serve node, once this one's
        heartbeat stops) resumes it. Any other error is raised."""
        wait, longest = END_RETRY_SECONDS
        tries = 0
        while True:
            try:
                done = await attempt(tries > 0)
            except Exception as exc:
                trouble = database_trouble(exc)
                if trouble is None:
                    raise
                tries += 1
                if self._closed:
                    log.warning("%s trigger instance %s (%s) failed (%s) and Squall is stopping: the next start "
                                "resumes it", what, record["id"], record["trigger"], trouble)
                    raise _Stopping from exc
                if tries == 1:
                    log.warning("%s trigger instance %s (%s) failed, as %s; it is tried again until the database "
                                "takes it", what, record["id"], record["trigger"], trouble)
                else:
                    log.debug("%s trigger instance %s failed again (%s); tried again in %.2f s", what, record["id"],
                              trouble, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)
                continue
            if tries:
                log.info("%s trigger instance %s (%s) went through, after %d failed tries", what, record["id"],
                         record["trigger"], tries)
            return done

    def purge_deliveries(self) -> int:
        """Forget the deliveries whose senders' signatures have expired (on the database's side)."""
        return self.db.store.deliveries_purge_expired(utcnow())

    async def get(self, instance_id: str) -> dict[str, Any]:
        record = await self.db(self.db.store.trigger_instance_get, instance_id)
        if record is None:
            raise LookupError(f'trigger instance "{instance_id}" not found')
        return public(record)

    async def list(self, **filters: Any) -> list[dict[str, Any]]:
        return [public(r) for r in await self.db(self.db.store.trigger_instance_list, **filters)]

    async def page(self, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """One page (`limit`, `offset`) of what `filters` select, and how many they select in all."""
        rows, total = await self.db(self.db.store.trigger_instance_page, **filters)
        return [public(r) for r in rows], total

    async def re_emit(self, instance_id: str, audit: AuditEntry | None = None) -> dict[str, Any]:
        """A new instance with the same trigger and payload (StackStorm's re_emit). As StackStorm's, a
        mapping payload gets `__context: {original_id: <instance_id>}` (replacing one an earlier re-emit
        set), so rules and their actions can tell a re-sent event from the original (`trigger.__context`).
        `audit` as `dispatch`'s. LookupError if `instance_id` is none."""
        original = await self.get(instance_id)
        payload = original["payload"]
        if isinstance(payload, dict):
            payload = {**payload, "__context": {"original_id": instance_id}}
        return await self.dispatch(original["trigger"], payload, trace_tag=original["trace_tag"],
                                   parameters=original["trigger_parameters"], validate=False, audit=audit)

    async def recover(self, pending_for: float = 0.0, held_for: float = HELD_GRACE_SECONDS) -> int:
        """Process what is `pending` (the claim lets one process have each, should its own process be
        at it too), and resume what a process that died left `processing`: its processors do what
        it had not done yet (the rules engine enforces the rules that had not acted). What a live
        process (another `squall serve` on this database) is processing is left to it; so is what
        one of another host holds (PostgreSQL: `resume_silent` takes that over once its serve node stops
        beating). Returns how many instances it took up.

        `squall serve` calls it at start, and again every minute with `pending_for` (seconds): a
        process that stored an instance and died before it claimed or finished it (a `squall run`
        that ended, one killed) left it to nobody until the next start. Then only instances pending
        for that long are taken up: younger ones are their own process's to claim.

        What this process holds `processing` with no task of its own on it, found so by its sweeps for
        `held_for` seconds, it takes up again (`_resume_held`)."""
        LEDGER.ensure()  # the owner file says this process lives (to other containers) before it claims
        working = set(self._tasks.values())  # before the read: a task that ends meanwhile wrote its end
        rows = await self.db(self.db.store.trigger_instance_list, None, ("pending", "processing"), 10_000)
        stored_by = utcnow() - timedelta(seconds=pending_for)
        taken = 0
        held: list[dict[str, Any]] = []
        for row in reversed(rows):
            if row["status"] == "pending":
                if pending_for and as_utc(row["occurrence_time"]) > stored_by:
                    continue
                self._spawn(row)
                taken += 1
            elif row.get("owner") == self.owner:
                held.append(row)
            elif await self._take_over(row):
                self._spawn(row, resumed=True)
                taken += 1
        return taken + self._resume_held(held, working, held_for)

    def _resume_held(self, held: list[dict[str, Any]], working: set[str], grace: float) -> int:
        """Take up again, resumed, the instances of `held` (this process's `processing` ones, as one look
        read them) that no task of this process worked on, neither before the look (`working`) nor now,
        in looks at least `grace` seconds apart; how many. The rest wait for a later look; one a task works
        on again, or no longer `processing` by this process, is forgotten. The grace covers the moment
        between a claim's commit and its task's start (`take_pending`)."""
        now = time.monotonic()
        working = working | set(self._tasks.values())
        self._unworked = {row["id"]: self._unworked.get(row["id"], now) for row in held if row["id"] not in working}
        taken = 0
        for row in held:
            since = self._unworked.get(row["id"])
            if since is None or now - since < grace:
                continue
            log.warning("resuming trigger instance %s (%s): this process holds it processing, and no task of its "
                        "own has worked on it for %.0f s", row["id"], row["trigger"], now - since)
            del self._unworked[row["id"]]
            self._spawn(row, resumed=True, held=True)
            taken += 1
        return taken

    async def _take_over(self, row: Mapping[str, Any]) -> bool:
        """Make this process the owner of a `processing` instance whose owner died; False if it may
        live (this process, a live one, or one of another host, which nobody here can see) or if
        another process's recovery took the instance first. No owner (a row from before 0021) or an
        unreadable one is a dead process's."""
        owner = row.get("owner")
        if owner_state(decode_owner(owner), self.identity, self.ledger, one_machine=self._sqlite) != "gone":
            return False
        if not await self.db(self.db.store.trigger_instance_take_over, row["id"], owner, self.owner):
            return False
        log.info("resuming trigger instance %s (%s): the process that was processing it is gone", row["id"],
                 row["trigger"])
        return True

    async def beat(self) -> None:
        """Store this serve node's heartbeat once, on a connection of its own (off the database thread,
        where a long group would hold it up)."""
        await asyncio.to_thread(self.db.store.serve_node_beat, self.owner)

    def start_beating(self) -> None:
        """Store this serve node's heartbeat every `NODE_BEAT_SECONDS` until `close` (PostgreSQL; on SQLite,
        one machine, pids tell who lives): while it beats, no node of another host takes over what it holds."""
        if not self._sqlite and self._beating is None:
            self._beating = asyncio.get_running_loop().create_task(self._beat_forever(), name="serve-heartbeat")

    async def _beat_forever(self) -> None:
        failing: str | None = None
        while True:
            try:
                await self.beat()
            except Exception as exc:
                if failing is None:
                    log.warning("this serve node could not store its heartbeat (%s); trying every %.0f s. Silent for "
                                "%.0f s, the trigger instances it processes are taken over by other serve nodes",
                                database_trouble(exc) or exc, NODE_BEAT_SECONDS, NODE_SILENT_SECONDS)
                failing = str(database_trouble(exc) or exc)
            else:
                if failing is not None:
                    log.info("this serve node stores its heartbeat again (it failed: %s)", failing)
                failing = None
            await asyncio.sleep(NODE_BEAT_SECONDS)

    async def resume_silent(self) -> int:
        """Look at the serve nodes' heartbeats (every `NODE_BEAT_SECONDS`), and resume what those that
        stopped beating for `NODE_SILENT_SECONDS` hold `processing`, whatever their host: of several
        nodes that find one silent, one takes each instance, and only while its heartbeat is still the
        one watched. A process of this host that lives keeps its instances, beating or not. The rules
        engine then enforces the rules that had not acted. How many instances it took."""
        if self._sqlite:
            return 0
        before = time.monotonic()  # the look's snapshot is taken after this
        beats = await self.db(self.db.store.serve_node_beats)
        self.watch.look(beats, time.monotonic())
        taken = 0
        for node, beat, silent in self.watch.silent(before):
            if node != self.owner and owner_state(decode_owner(node), self.identity, self.ledger,
                                                  one_machine=False) not in ("here", "alive"):
                taken += await self._take_over_node(node, beat, silent)
            self.watch.tried(node, before)
        return taken

    async def _take_over_node(self, node: str, beat: int, silent: float) -> int:
        """Take over and resume what the silent serve node `node` holds; how many instances."""
        LEDGER.ensure()  # the owner file says this process lives (to other containers) before it claims
        rows = await self.db(self.db.store.serve_node_take_over, node, beat, self.owner,
                             silent >= NODE_FORGOTTEN_SECONDS)
        if not rows:
            return 0
        who = decode_owner(node) or {}
        log.warning("the serve node %s@%s has not beaten for %.0f s: resuming the %d trigger instances it was "
                    "processing", who.get("pid"), who.get("hostname"), silent, len(rows))
        for row in rows:
            log.info("resuming trigger instance %s (%s): the serve node that was processing it stopped beating",
                     row["id"], row["trigger"])
            self._spawn(row, resumed=True)
        return len(rows)

    async def take_pending(self) -> int:
        """Claim and process the `pending` instances, oldest first (a `squall serve`: those `squall worker`s
        stored; another process's that it is about to claim may come along, and the claim gives each to one
        process), `TAKE_BATCH` at a time while fewer than `TAKE_IN_HAND` are in hand here; how many."""
        taken = 0
        async with self._taking:
            LEDGER.ensure()  # the owner file says this process lives (to other containers) before it claims
            while self.busy < TAKE_IN_HAND and not self._closed:
                rows = await self.db(self.db.store.trigger_instances_take, self.owner, TAKE_BATCH)
                for row in rows:
                    self._spawn(row, held=True)
                taken += len(rows)
                if len(rows) < TAKE_BATCH:
                    break
        return taken

    def follow(self, database_url: str) -> None:
        """Take what `squall worker`s store as soon as its transaction commits (PostgreSQL notifies
        `wakeups.TRIGGERS`), not at the next poll, which stays for a notification lost while the
        listener reconnected (each connection counts as one). Every notification counts: only a process
        that hands off sends them, never one that follows."""
        listening = wakeups.listen_to(database_url, [wakeups.TRIGGERS], self._taker.kick,
                                      "the trigger instances squall workers store")
        self._listener = asyncio.create_task(listening, name="trigger-listener")

    async def close(self) -> None:
        """Stop listening and taking. A take under way ends first: cancelled between its claim's commit and
        its processing, it would leave instances `processing` by this process, which no other takes over
        while it lives (a serve node of another host only once this one has stopped beating for
        `NODE_SILENT_SECONDS`). The heartbeat stops here: what this process settles after takes less."""
        self._closed = True
        for task in (self._listener, self._beating):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(task for task in (self._listener, self._beating, self._taker.close())
                               if task is not None), return_exceptions=True)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def settle(self) -> None:
        """Wait for instances being processed (for tests and the CLI)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
