"""The durable chat outbox: every reply is stored before it is sent, and sent in order per channel.

A delivered reply is marked sent without holding up the next one in its channel (the mark is
written in the background, committed with whatever else is being written): one channel's
replies go out at the platform's pace, not one database commit apart. A crash before the mark
commits leaves a reply the platform has as `pending`. So every post carries its outbox id
(`Reply.outbox_id`), and at start-up, before sending again what earlier runs left pending, the
outbox asks each adapter that can look its posts up (`find_sent`: Mattermost, Slack) which of
them the platform already has, once per channel, and marks those sent instead: exactly once
there, at no cost on the hot path. A row longer than its platform takes (stored by a CLI run, where
the adapter is not running to fit it) is split as it is sent, and each of its posts carries its
`Part` too (number, count, where it ends in the text): a kill between two parts leaves the row
pending, and the lookup makes it go on after the furthest part the platform has, the rest split
anew from where that part ended (the split may differ after a restart: another post limit, files
turned on), and marks it sent only once its last part is there. No write per part either. Adapters
that cannot look up (IRC, the console) deliver at least once.

A reply the platform refuses now (rate limit, 5xx, disconnect) is retried with backoff (at most
`MAX_BACKOFF` apart, for up to `GIVE_UP_AFTER`) while the replies behind it in the same channel
wait, so a channel never sees them out of order. A failure after which the platform may have the
post all the same (the connection dropped before the answer, no answer in time, a 5xx:
`DeliveryError.maybe_taken`) is followed by the same lookup, for that reply, before it is sent
again: one the platform stored is recorded sent with its platform id (the ack's later edit goes to
it) instead of being posted twice. A 429 or a refusal stored nothing and is sent again at once; a
send that succeeds asks nothing. Replies
stored by another process (a CLI run of `chatops.post_message`) are picked up by `poll()`. On
start-up, whatever was still pending is sent: nothing accepted is lost.

No high-water mark: every poll reads *all* pending rows for our adapters, from the oldest, and
queues those not queued here already (`_known`). A mark ("rows above the newest id seen") was
jumped by every reply this process stored, so rows another process (or an earlier run) stored
below it were never sent. An id leaves `_known` only once a poll that began after its `sent` or
`failed` status committed has run, so a poll can never hand back a reply already delivered here.
Polls are serialized; one also runs at once when an id this process stores is not the next one
(someone else stored replies meanwhile), so those go out without waiting for the next poll.

The result of a chat execution is stored by `post_result`, keyed by the execution, all its rows
in one transaction: stored once, whoever tries (the listener, or recovery after a crash). Its ack
and its `notify` messages are keyed the same way (`post_keyed`), so the result's edit of the ack
finds the ack's row in the database, and a sweep can store a notification a crash kept from being
stored, once.

The platform ids of the most recent `KEEP_PLATFORM_IDS` replies sent are kept in memory, for the
edits of them (the ack's edit to the final status, a question put back) to cost no database read;
an edit of an older one reads the id from its row. Kept for every reply, the map grew with every
command for as long as the process ran.

Each (adapter, channel) has a queue and a worker task while it has replies to send; a worker that
waited `IDLE_AFTER` on its empty queue is ended by one timer for the whole outbox (`_reap`), so the
hot path arms no timer per reply: it only notes when its worker began to wait.

One reply is sent unstored (`send_unstored`): the one telling a person that the database took nothing,
which the database would refuse to store as well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from adapters.base import Adapter, DeliveryError, FoundPost, Part, Reply
from bot.chat.replies import fit, later_part
from engine import tracing, wakeups
from engine.metrics import metrics
from engine.storage import Database, Store, keyed_in_one_statement, utcnow

log = logging.getLogger(__name__)
#: How long a reply is retried through refusals that may pass (rate limits, 5xx, a disconnect) before it
#: is marked failed: an outage of hours loses nothing, and a reply no platform ever takes does not
#: hold its channel forever. (A refusal that cannot pass, `DeliveryError.permanent`, fails it at once.)
GIVE_UP_AFTER = 24 * 3600.0
MAX_BACKOFF = 30.0
#: Attempts after which an exception that is not a `DeliveryError` (an adapter bug, text the adapter
#: cannot encode) counts as permanent: it is not a refusal that may pass, and retrying it for
#: `GIVE_UP_AFTER` would hold every later reply of its channel behind it.
UNEXPECTED_LIMIT = 3
PAGE = 1000
#: How far before a leftover reply was stored the platform is searched for it (clocks differ).
CLOCK_SKEW = timedelta(minutes=2)
#: How many of the replies sent last keep their platform id in memory, for the edits of them. Most
#: edits come soon after what they edit (the ack's, when its execution ends); a later one (a long run,
#: a question put back) reads the id from the row, which its `sent` mark wrote within moments of the
#: send. About 130 bytes each: 1.3 MB at most, where keeping them all grew ~1 GB a year at 10k commands a day.
KEEP_PLATFORM_IDS = 10_000
#: How long a channel's worker waits on its empty queue before it ends, its queue with it. Every Slack or
#: Mattermost DM is a channel, and so is every IRC private exchange (`nick~tag`, a new tag after a quit):
#: kept for ever, their workers and queues grew ~6 KB a channel for as long as the process ran. A reply to
#: the channel later starts a fresh one. A worker sending or retrying a reply is not waiting: it stays.
IDLE_AFTER = 60.0


@dataclasses.dataclass(slots=True)
class Progress:
    """How far a row sent in parts got: the platform id of its first part (it stands for the row),
    the number of the last part posted, and where that part ended in the row's text."""

    first: str | None
    number: int
    end: int


def _rest(reply: Reply, end: int) -> Reply:
    """What is left of a row sent in parts once its text up to `end` went out, as `fit` makes the
    parts after the first."""
    return later_part(reply, reply.text[end:].lstrip("\n"))


def _ends(text: str, parts: Sequence[Reply], start: int) -> list[int]:
    """Where each part ends in `text`, the parts being split from it after `start`: `fit` cuts text
    into pieces of it, in order, with only newlines between them, so each is found after the one
    before. The last ends the text, whatever it carries (the head of a file)."""
    ends, position = [], start
    for part in parts[:-1]:
        position = text.index(part.text, position) + len(part.text)
        ends.append(position)
    return [*ends, len(text)]


def _left_of(posts: Sequence[FoundPost]) -> str | Progress | None:
    """What the posts `find_sent` found of one row say: the platform id that stands for it once it is
    all there (posted whole, or its last part found; None if its first part is gone), else how far
    its parts got. A part goes out only once the platform took the one before, so the furthest one
    found is where it stopped: a part missing before it was deleted since, and is not posted again."""
    parts = [(platform_id, part) for platform_id, part in posts if part is not None]
    if len(parts) < len(posts):
        return next(platform_id for platform_id, part in posts if part is None)
    first = next((platform_id for platform_id, part in parts if part.number == 1), None)
    last = max((part for _platform_id, part in parts), key=lambda part: part.end)
    return first if last.number == last.count else Progress(first, last.number, last.end)


def _maybe_taken(adapter: Adapter, exc: Exception) -> bool:
    """Whether a failed send may have reached the platform and been stored all the same (the connection
    dropped after the request went out, no answer in time, a 5xx: `DeliveryError.maybe_taken`; any
    exception that is no `DeliveryError`, which says nothing), where the adapter can look its posts up.
    Not a 429 or a refusal, which stored nothing: those are sent again without asking."""
    if getattr(adapter, "find_sent", None) is None:
        return False
    return exc.maybe_taken if isinstance(exc, DeliveryError) else True


def _numbered(reply: Reply, outbox_id: int) -> Reply:
    """A copy of `reply` carrying its outbox id, as the adapter is given it: its fields copied as they are,
    without `Reply.__init__` and its keywords (`Reply(**{...})`; `dataclasses.replace` re-reads the fields
    too): about 4,700 instructions fewer a copy (callgrind, a loop of copies). Every reply sent comes here."""
    numbered = object.__new__(Reply)
    numbered.__dict__.update(reply.__dict__)
    numbered.outbox_id = outbox_id
    return numbered


def keyed_rows(key: str, replies: Sequence[Reply]) -> list[tuple[str, str, dict[str, Any], str, str]]:
    """Outbox rows (adapter, channel, payload, kind, status) for the parts of one keyed reply: kinds
    `key`, `key.2`, `key.3`..., all pending."""
    return [(reply.adapter, reply.channel, reply.to_json(), key if n == 1 else f"{key}.{n}", "pending")
            for n, reply in enumerate(replies, 1)]


# Made for every chat command: slotted, not frozen (see docs/architecture.md, "Value objects").
@dataclasses.dataclass(slots=True)
class Keyed:
    """One execution's replies of one key, fitted into outbox rows: `store` them, then `queue` what
    was stored (see `Outbox.post_keyed`)."""

    outbox: Outbox
    execution_id: str
    key: str
    rows: list[tuple[str, str, dict[str, Any], str, str]]
    parts: list[Reply]
    edits: str | None

    @property
    def one_statement(self) -> bool:
        """Whether `store` makes a single statement (a lone result or ack)."""
        return keyed_in_one_statement(self.key, self.rows, self.edits)

    def store(self, store: Store, at: datetime | None = None) -> list[tuple[int | None, int | None]] | None:
        """Store the rows, created `at` (now unless given: a result stored with its end is of the end's time)."""
        return store.outbox_add_keyed(self.execution_id, self.key, self.rows, edits=self.edits, at=at)

    def queue(self, stored: list[tuple[int | None, int | None]] | None) -> list[int] | None:
        """Queue the stored rows for delivery; their ids, or None if the key was stored before."""
        if stored is None:
            return None
        ids: list[int] = []
        for outbox_id, _edit in stored:  # (one loop, no comprehension: every command's result comes here)
            if outbox_id is not None:
                ids.append(outbox_id)
                self.outbox._stored(outbox_id)
        # The `skipped` row, last, is not sent.
        for (outbox_id, edit), reply in zip(stored, self.parts, strict=False):
            if outbox_id is not None:
                self.outbox._enqueue(outbox_id, reply if edit is None else Reply(**{**reply.__dict__, "edit": edit}))
        return ids


class _Channel:
    """One (adapter, channel)'s replies waiting for its worker (`Outbox._deliver`), the one reader: a deque
    and the future the worker waits on while it is empty. Not an `asyncio.Queue`, whose `put_nowait` and
    `get_nowait` are Python calls of their own with a count, an event and a waiters' deque to keep
    (callgrind, chat at 100 in flight, with `_held` read per reply in place of `Event.is_set`: about -7,500
    instructions a command, -0.8%)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: deque[tuple[int, Reply]] = deque()
        #: Set while the worker waits on the empty deque; `put` wakes it.
        self.waiter: asyncio.Future[None] | None = None

    def put(self, outbox_id: int, reply: Reply) -> None:
        self.items.append((outbox_id, reply))
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():  # (cancelled with its worker by `_reap`)
                waiter.set_result(None)


class Outbox:
    """`hold=True` stores and queues but sends nothing until `release()` (the adapters are up)."""

    def __init__(self, db: Database, adapters: Mapping[str, Adapter], *, hold: bool = False) -> None:
        self.db = db
        self.adapters = adapters
        self._queues: dict[tuple[str, str], _Channel] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Workers waiting on their empty queue: since when (loop time). Not one sending or retrying a reply.
        self._waiting: dict[tuple[str, str], float] = {}
        #: The next look for workers idle for `IDLE_AFTER` (`_reap`), armed while there are workers.
        self._reaper: asyncio.TimerHandle | None = None
        #: Platform ids of the replies sent last, oldest first (`KEEP_PLATFORM_IDS`): edits of them read no row.
        self._platform_ids: OrderedDict[int, str | None] = OrderedDict()
        #: Rows longer than their platform takes, sent in parts: how far each got (here, or found on the
        #: platform after a crash), so a retry goes on from there instead of posting the first part again.
        self._progress: dict[int, Progress] = {}
        #: Ids queued, being sent, or settled but not yet past a poll that began after they settled.
        self._known: set[int] = set()
        #: Ids whose `sent`/`failed` status committed (or whose delivery failed here) since the last poll began.
        self._settled_ids: list[int] = []
        #: Delivered replies whose `sent` mark failed to commit: marked again by the next poll.
        self._unmarked: dict[int, dict[str, Any]] = {}
        self._newest = 0
        self._polling = asyncio.Lock()
        #: Looks for replies other processes stored, at their notifications (`follow`).
        self._catch_up = wakeups.Rerun(self.poll, "outbox-catch-up", "looking for replies other processes stored")
        self._listener: asyncio.Task[None] | None = None
        self._pending = 0
        self._marks: set[asyncio.Future[Any]] = set()
        #: The sent marks not yet written: their statement's future and (outbox id, fields) each (`_mark`).
        self._round: tuple[asyncio.Future[Any], list[tuple[int, dict[str, Any]]]] | None = None
        #: Posts earlier runs left pending (found by the first poll), not yet looked up on their platform.
        self._unchecked: dict[int, tuple[Reply, datetime]] = {}
        #: Of those, the ones the platform already had whole: outbox id → platform id.
        self._found: dict[int, str | None] = {}
        self._polled = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()
        #: Whether `_open` is still clear (`hold=True`, not yet released): read per reply, set once.
        self._held = hold
        if not hold:
            self._open.set()

    @property
    def pending(self) -> int:
        """Replies queued here and not yet delivered (or given up on)."""
        return self._pending

    def release(self) -> None:
        """Start sending (a held outbox queues what it finds or is given, and waits for this)."""
        self._held = False
        self._open.set()

    def parts(self, reply: Reply) -> list[Reply]:
        """`reply` fitted to its adapter's capabilities (split, or uploaded as a file): the one place
        replies are fitted. An adapter not running here (a CLI run) is fitted at delivery instead."""
        if reply.trace is None and (trace := tracing.traceparent()) is not None:  # None at once when tracing is off
            reply = dataclasses.replace(reply, trace=trace)
        adapter = self.adapters.get(reply.adapter)
        return fit(reply, adapter.capabilities) if adapter is not None else [reply]

    async def post(self, reply: Reply) -> int:
        """Store the reply (fitted: one row per part), then queue it for delivery; returns the
        outbox id of its first part."""
        first = 0
        for part in self.parts(reply):
            outbox_id = await self.db(self.db.store.outbox_add, part.adapter, part.channel, part.to_json())
            self._stored(outbox_id)
            self._enqueue(outbox_id, part)
            first = first or outbox_id
        return first

    async def send_unstored(self, reply: Reply) -> bool:
        """Send `reply` straight through its adapter, neither stored nor retried; whether the platform
        took it. The one exception to the one reply path, for the one reply it cannot carry: the one
        saying that the database took nothing ("Squall could not store that command... Nothing ran.",
        `Dispatcher.say_unstored`). Stored first, that reply failed with the database it reports on (a
        PostgreSQL outage, SQLite locked elsewhere), and the person who typed the command heard nothing.
        Best effort, and safe to lose: nothing refers to it later (no edit, no result in its thread),
        nothing waits for it, and the command it answers was not stored either. It may overtake the
        replies its channel has queued; a refusal is logged, not retried."""
        adapter = self.adapters.get(reply.adapter)
        if adapter is None or self._closed:
            return False
        try:
            for part in self.parts(reply):
                await adapter.send(part)
        except Exception as exc:
            log.warning("a reply that could not be stored was not taken by %s %s either (%s); it is lost",
                        reply.adapter, reply.channel, exc)
            metrics.count(metrics.chat_replies, adapter.name, "failed")
            return False
        metrics.count(metrics.chat_replies, adapter.name, "sent")
        return True

    async def post_result(self, execution_id: str, adapter: str, channel: str, replies: Sequence[Reply],
                          status: Sequence[Reply] = ()) -> list[int] | None:
        """Store the replies that carry an execution's final result, keyed by the execution, in one
        transaction, then queue them; None (nothing stored) if its result was stored before.

        A crash can therefore leave the result stored whole or not at all, and recovery, which
        stores what is missing, can never store it a second time. With no reply (the alias turns
        results off) a `skipped` row records that there is nothing to send. `status` are the edits
        of the execution's ack (kind "ack"): the ack's row is found in the same transaction, so the
        edit is stored with the result after a restart too; with no ack stored they are dropped."""
        return await self.post_keyed(execution_id, "result", replies, adapter=adapter, channel=channel,
                                     status=status)

    async def post_keyed(self, execution_id: str, key: str, replies: Sequence[Reply], *,
                         adapter: str | None = None, channel: str | None = None,
                         status: Sequence[Reply] = ()) -> list[int] | None:
        """Store an execution's replies of one key ("ack", "result", "notify:<route>") in one
        transaction, keyed (execution_id, key / key.N), then queue them; their ids, or None (nothing
        stored) if that key was stored before. With no reply and `adapter`/`channel` given, a
        `skipped` row records that there is nothing to send; with neither, nothing is stored."""
        keyed = self.keyed(execution_id, key, replies, adapter=adapter, channel=channel, status=status)
        if keyed is None:
            return []
        return keyed.queue(await self.db(keyed.store, self.db.store))

    def keyed(self, execution_id: str, key: str, replies: Sequence[Reply], *, adapter: str | None = None,
              channel: str | None = None, status: Sequence[Reply] = ()) -> Keyed | None:
        """`post_keyed`'s replies, fitted, ready to store (`Keyed.store`, in any transaction: the
        result's is the execution's end's) and then to queue; None when there is nothing to store. Every
        chat command's result comes here, most without status edits (no ack, or no edits): none fitted."""
        # One reply (a command's result, an ack): its parts as `parts` makes them, no comprehension around them.
        replies = (self.parts(replies[0]) if len(replies) == 1 else
                   [part for reply in replies for part in self.parts(reply)])
        if status:
            status = [part for reply in status for part in self.parts(reply)]
            rows = [*keyed_rows("status", status), *keyed_rows(key, replies)]
        else:
            rows = keyed_rows(key, replies)
        if not replies:
            if adapter is None or channel is None:
                return None
            rows.append((adapter, channel, Reply(adapter=adapter, channel=channel, text="").to_json(), key,
                         "skipped"))
        if not status:
            return Keyed(self, execution_id, key, rows, replies, None)
        return Keyed(self, execution_id, key, rows, [*status, *replies], "ack")

    def _stored(self, outbox_id: int) -> None:
        """Note an id this process stored. Ids below it it has not seen mean another process stored
        replies meanwhile: look for them now, not at the next poll."""
        if outbox_id > self._newest + 1:
            self._catch_up.kick()
        self._newest = max(self._newest, outbox_id)

    def follow(self, database_url: str) -> None:
        """Look for replies as soon as another process (a `squall worker`) stores some, not at the
        next poll: PostgreSQL notifies each insert (`engine/wakeups.py`)."""
        self._listener = asyncio.create_task(wakeups.listen(database_url, wakeups.OUTBOX, self._catch_up.kick),
                                             name="outbox-listener")


    def _enqueue(self, outbox_id: int, reply: Reply) -> None:
        if outbox_id in self._known:
            return
        self._known.add(outbox_id)
        if not self.adapters:  # a process without chat (a CLI run): stored, `squall serve` sends it
            return
        if reply.adapter not in self.adapters:
            log.warning("reply %s is for adapter %r, which is not running; it stays queued", outbox_id, reply.adapter)
            return
        if self._closed:  # shutting down: it is stored, and the next start sends it
            return
        key = (reply.adapter, reply.channel)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Channel()
            self._workers[key] = asyncio.create_task(self._deliver(key, queue), name=f"outbox-{key}")
            if self._reaper is None:
                self._reap_in(IDLE_AFTER)
        if not self._pending:  # else clear already: only `_settled` sets it, as the last pending reply settles
            self._idle.clear()
        self._pending += 1
        queue.put(outbox_id, reply)

    async def poll(self) -> int:
        """Queue every pending reply not queued here yet: what other processes stored and, at
        start-up, what earlier runs left. Reads all pending rows from the oldest (no high-water
        mark), so nothing is skipped whoever stored it and whenever it committed; returns how many
        it queued."""
        async with self._polling:
            await self._mark_again()
            # Settled before this read began, so the read cannot return them: safe to forget after it.
            forget, self._settled_ids = self._settled_ids, []
            adapters = list(self.adapters)
            found: list[dict[str, Any]] = []
            after = 0
            while True:
                ids = await self.db(self.db.store.outbox_pending_ids, adapters, after, PAGE)
                new = [outbox_id for outbox_id in ids if outbox_id not in self._known]
                if new:
                    found += await self.db(self.db.store.outbox_get_many, new)
                if len(ids) < PAGE:
                    break
                after = ids[-1]
            self._known.difference_update(forget)
            queued = 0
            for row in found:
                self._newest = max(self._newest, row["id"])
                if row["status"] == "pending" and row["id"] not in self._known:
                    reply = Reply.from_json(row["payload"])
                    if not self._polled and reply.edit is None:  # an edit made twice changes nothing
                        self._unchecked[row["id"]] = (reply, row["created_at"])
                    self._enqueue(row["id"], reply)
                    queued += 1
            self._polled = True
            return queued

    async def _mark_again(self) -> None:
        for outbox_id, fields in list(self._unmarked.items()):
            try:
                await self.db(self.db.store.outbox_update, outbox_id, fields)
            except Exception:
                continue
            del self._unmarked[outbox_id]
            self._settled_ids.append(outbox_id)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued reply was delivered (or given up on)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        others = (self._catch_up.close(), self._listener)
        tasks = [*self._workers.values(), *(task for task in others if task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._marks, return_exceptions=True)

    def _sent_as(self, outbox_id: int, platform_id: str | None) -> None:
        """Keep the platform id of a reply just sent for the edits of it, forgetting the oldest kept
        beyond `KEEP_PLATFORM_IDS` (its row has it): memory stays bounded however long the process runs."""
        self._platform_ids[outbox_id] = platform_id
        if len(self._platform_ids) > KEEP_PLATFORM_IDS:
            self._platform_ids.popitem(last=False)

    async def _platform_id(self, outbox_id: int) -> str | None:
        """The platform id of the reply `outbox_id`, to edit it: kept here if it was sent lately, else its
        row's (or, if its `sent` mark failed to commit, the mark waiting for the next poll)."""
        if outbox_id in self._platform_ids:
            return self._platform_ids[outbox_id]
        if outbox_id in self._unmarked:
            return self._unmarked[outbox_id].get("platform_id")
        row = await self.db(self.db.store.outbox_get, outbox_id)
        return row["platform_id"] if row else None

    def _reap_in(self, delay: float) -> None:
        self._reaper = asyncio.get_running_loop().call_later(delay, self._reap)

    def _reap(self) -> None:
        """End the workers that have waited `IDLE_AFTER` on their empty queue, and forget their queues.
        No await between forgetting a channel's pair and cancelling its worker (waiting on its channel's `waiter`,
        holding nothing): `_enqueue` finds the live pair or none and starts a fresh one, so a channel's
        replies keep their order. A worker whose queue was given a reply it has not taken yet is kept,
        and one sending or retrying a reply (through an outage, up to `GIVE_UP_AFTER`) is not waiting."""
        self._reaper = None
        now = asyncio.get_running_loop().time()
        soonest = now + IDLE_AFTER
        for key, since in list(self._waiting.items()):
            if self._queues[key].items:  # its worker is about to take a reply
                continue
            if since + IDLE_AFTER > now:
                soonest = min(soonest, since + IDLE_AFTER)
                continue
            del self._waiting[key], self._queues[key]
            self._workers.pop(key).cancel()
        if self._workers and not self._closed:
            self._reap_in(soonest - now)

    async def _deliver(self, key: tuple[str, str], queue: _Channel) -> None:
        adapter = self.adapters[key[0]]
        loop = asyncio.get_running_loop()
        items = queue.items
        while True:
            if not items:  # only then: a busy channel's replies cost no clock read
                self._waiting[key] = loop.time()
                queue.waiter = loop.create_future()
                await queue.waiter  # the one place `_reap` ends a worker
                del self._waiting[key]
            outbox_id, reply = items.popleft()
            sent = None
            try:
                if self._held:  # (`hold=True`) until `release`: else no coroutine to wait on
                    await self._open.wait()
                sent = await self._deliver_one(adapter, outbox_id, reply)
            except Exception:
                # Not delivered (a send that succeeds returns at once): a later poll queues it again.
                log.exception("delivering reply %s failed; it is tried again", outbox_id)
                self._settled_ids.append(outbox_id)
            finally:
                if sent is None:
                    self._settled()
                else:
                    metrics.count(metrics.chat_replies, adapter.name, "sent")
                    self._mark(outbox_id, sent)

    def _mark(self, outbox_id: int, fields: dict[str, Any]) -> None:
        """Record a delivery in the background, with the next writes (`Database.later`: no commit of
        its own while work goes on; with the other deliveries meanwhile, in one statement); the reply
        counts as pending until it is recorded. A crash first posts it again at start-up, except
        where the adapter finds what it sent (`find_sent`). The marks of one statement share its future
        and one callback on it (`_marked`), not a closure and a loop callback each (callgrind, chat at 100
        in flight: about -14,000 instructions a command, -1.6%)."""
        mark = self.db.later_together(self.db.store.outbox_update_many, (outbox_id, fields))
        if self._round is not None and self._round[0] is mark:
            self._round[1].append((outbox_id, fields))
            return
        marks = [(outbox_id, fields)]
        self._round = (mark, marks)
        self._marks.add(mark)
        mark.add_done_callback(functools.partial(self._marked, marks))

    def _marked(self, marks: list[tuple[int, dict[str, Any]]], future: asyncio.Future[Any]) -> None:
        """The marks of one statement (`_mark`) done: each settled, in the order it was delivered, or kept
        for the next poll to mark again if the statement failed."""
        self._marks.discard(future)
        if self._round is not None and self._round[0] is future:
            self._round = None
        canceled = future.cancelled()
        failed = None if canceled else future.exception()
        for outbox_id, fields in marks:
            if failed is not None:
                log.warning("reply %s was delivered but could not be marked sent (%s); marking it again at the "
                            "next poll (a crash first sends it again at start-up)", outbox_id, failed)
                self._unmarked[outbox_id] = fields
            elif not canceled:
                self._settled_ids.append(outbox_id)
            self._settled()

    def _settled(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    def _send(self, adapter: Adapter, outbox_id: int, reply: Reply, edit_of: str | None) -> Awaitable[str | None]:
        """Send one stored row (await what this returns). A row stored where its adapter was not running (a
        CLI run) may be longer than the platform takes: it is fitted now and its parts sent in order, each
        carrying its `Part` (how far the row got, for `find_sent` after a crash); a retry, or a start that
        found some parts posted, goes on after the last one, the rest split anew from where it ended. The
        first part's id stands for the row. A row in one post (nearly every one) is the adapter's own send,
        not a coroutine around it."""
        progress = self._progress.get(outbox_id)
        if progress is None:
            parts = fit(reply, adapter.capabilities)
            if len(parts) == 1:
                return adapter.send(parts[0], edit_of=edit_of)
            progress = Progress(None, 0, 0)
        else:  # what is left of a row sent in parts goes on in parts (its file rode on the first)
            parts = fit(_rest(reply, progress.end), dataclasses.replace(adapter.capabilities, files=False))
        return self._send_parts(adapter, outbox_id, reply, edit_of, parts, progress)

    async def _send_parts(self, adapter: Adapter, outbox_id: int, reply: Reply, edit_of: str | None,
                          parts: list[Reply], progress: Progress) -> str | None:
        """`_send` of a row in `parts`, on from `progress`."""
        count = progress.number + len(parts)
        for part, end in zip(parts, _ends(reply.text, parts, progress.end), strict=True):
            number = progress.number + 1
            part = Reply(**{**part.__dict__, "part": Part(number, count, end)})
            platform_id = await adapter.send(part, edit_of=edit_of if number == 1 else None)
            first = platform_id if number == 1 else progress.first
            progress = self._progress[outbox_id] = Progress(first, number, end)
        del self._progress[outbox_id]
        return progress.first

    async def _look_up(self, adapter: Adapter, channel: str) -> None:
        """Ask the platform which of the channel's leftover replies it already has (one call per
        channel, for all of them). A failed lookup only means they are sent again: at least once."""
        rows = {outbox_id: entry for outbox_id, entry in self._unchecked.items()
                if entry[0].adapter == adapter.name and entry[0].channel == channel}
        for outbox_id in rows:
            del self._unchecked[outbox_id]
        find_sent = getattr(adapter, "find_sent", None)
        if find_sent is None:
            return
        since = min(created_at for _reply, created_at in rows.values()) - CLOCK_SKEW
        try:
            found = await find_sent([dataclasses.replace(reply, outbox_id=outbox_id)
                                     for outbox_id, (reply, _created) in rows.items()], since)
        except Exception as exc:
            log.warning("cannot ask %s which of %d replies left pending in %s it already has (%s); sending them "
                        "again", adapter.name, len(rows), channel, exc)
            return
        for outbox_id, posts in found.items():
            if outbox_id not in rows:
                continue
            left = self._note_found(outbox_id, posts)
            if isinstance(left, Progress):
                log.info("reply %s was sent up to its part %d to %s before the last stop (found there); sending "
                         "the rest", outbox_id, left.number, adapter.name)

    def _note_found(self, outbox_id: int, posts: Sequence[FoundPost]) -> str | Progress | None:
        """Note what `find_sent` found of a row: the platform id standing for it once it is all there
        (`_found`), else how far its parts got (`_progress`, never behind what this process sent of it:
        a part deleted since is not posted again). Returns what the posts say (`_left_of`)."""
        left = _left_of(posts)
        if not isinstance(left, Progress):
            self._found[outbox_id] = left
            return left
        known = self._progress.get(outbox_id)
        if known is None or known.end < left.end:
            self._progress[outbox_id] = Progress(left.first or (known.first if known else None), left.number,
                                                 left.end)
        return left

    async def _look_again(self, adapter: Adapter, outbox_id: int, reply: Reply, since: float) -> bool:
        """After an attempt that failed once the request may have reached the platform (`_maybe_taken`),
        ask the platform whether it has the reply (`find_sent`, by the outbox id its post carries),
        before sending it again: a post it stored without its answer reaching us is not posted twice.
        What it found is noted as after a restart (`_note_found`). `since` is when sending began
        (monotonic). True once the platform answered; False if the lookup failed: the reply is sent
        again all the same (at least once, as without `find_sent`), and looked for again first should
        that attempt fail too."""
        began = utcnow() - timedelta(seconds=time.monotonic() - since) - CLOCK_SKEW
        try:
            found = await adapter.find_sent([reply], began)  # type: ignore[attr-defined]  # `_maybe_taken` saw it
        except Exception as exc:
            log.warning("cannot ask %s whether it took reply %s before its answer was lost (%s); sending it again",
                        adapter.name, outbox_id, exc)
            return False
        posts = found.get(outbox_id)
        if posts:
            self._note_found(outbox_id, posts)
        return True

    def _found_sent(self, outbox_id: int, **fields: Any) -> dict[str, Any]:
        """Record a reply `find_sent` found on the platform as sent, with the platform id that stands for
        it (kept for the edits of it, as a reply sent here is)."""
        platform_id = self._found.pop(outbox_id)
        self._progress.pop(outbox_id, None)
        self._sent_as(outbox_id, platform_id)
        return {"status": "sent", "platform_id": platform_id, "sent_at": utcnow(), "error": None, **fields}

    def _deliver_one(self, adapter: Adapter, outbox_id: int,
                     reply: Reply) -> Coroutine[Any, Any, dict[str, Any] | None]:
        """Send one reply, retrying; returns the fields that record it sent, or None once it failed for good.
        A reply stored in a trace is sent in a `chat.reply` span of it: the trace ends at the platform. One
        without (tracing off) is `_send_retrying` itself, not a coroutine around it: every reply comes here."""
        if reply.trace is None:
            return self._send_retrying(adapter, outbox_id, reply)
        return self._traced(adapter, outbox_id, reply)

    async def _traced(self, adapter: Adapter, outbox_id: int, reply: Reply) -> dict[str, Any] | None:
        """`_send_retrying` in a `chat.reply` span of the reply's trace."""
        with tracing.span("chat.reply", reply.trace, adapter=reply.adapter, outbox_id=outbox_id):
            return await self._send_retrying(adapter, outbox_id, reply)

    async def _send_retrying(self, adapter: Adapter, outbox_id: int, reply: Reply) -> dict[str, Any] | None:
        """Send one reply until the platform takes it, it is refused for good, or `GIVE_UP_AFTER` passed.
        After a failure the platform may have taken (`_maybe_taken`), the platform is asked first
        (`_look_again`); a send that succeeds asks nothing."""
        if outbox_id in self._unchecked:
            await self._look_up(adapter, reply.channel)
        if outbox_id in self._found:
            log.info("reply %s reached %s before the last stop (found there); not sending it again", outbox_id,
                     reply.adapter)
            return self._found_sent(outbox_id)
        reply = _numbered(reply, outbox_id)
        delay, attempt, unexpected, since = 0.25, 0, 0, time.monotonic()
        unsure = False  # a failed attempt may have reached the platform, and no lookup has said since
        while True:
            attempt += 1
            if unsure:
                unsure = not await self._look_again(adapter, outbox_id, reply, since)
                if outbox_id in self._found:
                    log.info("reply %s reached %s although the answer to it was lost (found there); not sending it "
                             "again", outbox_id, reply.adapter)
                    return self._found_sent(outbox_id, attempts=attempt - 1)
            edit_of = await self._platform_id(reply.edit) if reply.edit is not None else None
            try:
                if reply.edit is not None and edit_of is None:
                    # The message to edit never got an id (or cannot be edited): post it anew instead.
                    reply = Reply(**{**reply.__dict__, "edit": None})
                platform_id = await self._send(adapter, outbox_id, reply, edit_of)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, DeliveryError) and exc.permanent:  # retrying cannot help: do not hold the channel
                    log.error("reply %s to %s %s cannot be delivered: %s", outbox_id, reply.adapter, reply.channel, exc)
                    return await self._fail(adapter, outbox_id, attempt, str(exc))
                if not isinstance(exc, DeliveryError):
                    unexpected += 1
                    if unexpected >= UNEXPECTED_LIMIT:  # not a refusal that may pass: a bug, or text it cannot take
                        reason = f"{exc.__class__.__name__}: {exc}"
                        log.error("reply %s to %s %s failed %d times with an unexpected error (%s); recording it "
                                  "as failed so the channel's later replies are not held behind it", outbox_id,
                                  reply.adapter, reply.channel, unexpected, reason,
                                  exc_info=(type(exc), exc, exc.__traceback__))
                        return await self._fail(adapter, outbox_id, attempt, reason)
                if time.monotonic() - since >= GIVE_UP_AFTER:
                    break
                unsure = unsure or _maybe_taken(adapter, exc)
                wait = exc.retry_after if isinstance(exc, DeliveryError) and exc.retry_after else delay
                log.warning("sending reply %s to %s %s failed (attempt %d): %s; retrying in %.1fs",
                            outbox_id, reply.adapter, reply.channel, attempt, exc, wait)
                await self.db(self.db.store.outbox_update, outbox_id, {"attempts": attempt, "error": str(exc)})
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self._sent_as(outbox_id, platform_id)
            return {"status": "sent", "attempts": attempt, "platform_id": platform_id, "sent_at": utcnow(),
                    "error": None}
        log.error("giving up on reply %s to %s %s: %d attempts over %.0f hours all failed", outbox_id, reply.adapter,
                  reply.channel, attempt, GIVE_UP_AFTER / 3600)
        self._progress.pop(outbox_id, None)
        await self.db(self.db.store.outbox_update, outbox_id, {"status": "failed"})
        metrics.count(metrics.chat_replies, adapter.name, "failed")
        self._settled_ids.append(outbox_id)
        return None

    async def _fail(self, adapter: Adapter, outbox_id: int, attempt: int, reason: str) -> None:
        """Record a reply that retrying cannot deliver as failed, with why, so its channel moves on."""
        self._progress.pop(outbox_id, None)
        await self.db(self.db.store.outbox_update, outbox_id,
                      {"status": "failed", "attempts": attempt, "error": reason})
        metrics.count(metrics.chat_replies, adapter.name, "failed")
        self._settled_ids.append(outbox_id)
