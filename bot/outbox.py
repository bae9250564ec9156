"""The durable chat outbox: every reply is stored before it is sent, and sent in order per channel.

A delivered reply is marked sent without holding up the next one in its channel (the mark is
written in the background, committed with whatever else is being written): one channel's
replies go out at the platform's pace, not one database commit apart. A crash before the mark
commits sends that reply again at start-up, as any outbox delivers: at least once.

A reply the platform refuses now (rate limit, disconnect) is retried with backoff while the
replies behind it in the same channel wait, so a channel never sees them out of order. Replies
stored by another process (a CLI run of `chatops.post_message`) are picked up by `poll()`. On
start-up, whatever was still pending is sent: nothing accepted is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from adapters.base import Adapter, DeliveryError, Reply
from engine.storage import Database, utcnow

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 12
MAX_BACKOFF = 30.0


class Outbox:
    def __init__(self, db: Database, adapters: Mapping[str, Adapter]) -> None:
        self.db = db
        self.adapters = adapters
        self._queues: dict[tuple[str, str], asyncio.Queue[tuple[int, Reply]]] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._platform_ids: dict[int, str | None] = {}
        self._known: set[int] = set()
        self._last_seen = 0
        self._pending = 0
        self._marks: set[asyncio.Future[Any]] = set()
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Replies queued here and not yet delivered (or given up on)."""
        return self._pending

    async def post(self, reply: Reply) -> int:
        """Store the reply, then queue it for delivery; returns its outbox id."""
        outbox_id = await self.db(self.db.store.outbox_add, reply.adapter, reply.channel, reply.to_json())
        self._enqueue(outbox_id, reply)
        return outbox_id

    def _enqueue(self, outbox_id: int, reply: Reply) -> None:
        if outbox_id in self._known:
            return
        self._known.add(outbox_id)
        self._last_seen = max(self._last_seen, outbox_id)
        if reply.adapter not in self.adapters:
            log.warning("reply %s is for adapter %r, which is not running; it stays queued", outbox_id, reply.adapter)
            return
        if self._closed:  # shutting down: it is stored, and the next start sends it
            return
        key = (reply.adapter, reply.channel)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._workers[key] = asyncio.create_task(self._deliver(key, queue), name=f"outbox-{key}")
        self._pending += 1
        self._idle.clear()
        queue.put_nowait((outbox_id, reply))

    async def poll(self) -> int:
        """Queue replies other processes stored (and, at start-up, what was left pending)."""
        rows = await self.db(self.db.store.outbox_pending, list(self.adapters), self._last_seen)
        for row in rows:
            self._enqueue(row["id"], Reply.from_json(row["payload"]))
        return len(rows)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued reply was delivered (or given up on)."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        self._closed = True
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), *self._marks, return_exceptions=True)

    async def _platform_id(self, outbox_id: int) -> str | None:
        if outbox_id not in self._platform_ids:
            row = await self.db(self.db.store.outbox_get, outbox_id)
            return row["platform_id"] if row else None
        return self._platform_ids[outbox_id]

    async def _deliver(self, key: tuple[str, str], queue: asyncio.Queue[tuple[int, Reply]]) -> None:
        adapter = self.adapters[key[0]]
        while True:
            outbox_id, reply = await queue.get()
            sent = None
            try:
                sent = await self._deliver_one(adapter, outbox_id, reply)
            finally:
                if sent is None:
                    self._settled()
                else:
                    self._mark(outbox_id, sent)

    def _mark(self, outbox_id: int, fields: dict[str, Any]) -> None:
        """Record a delivery in the background; the reply counts as pending until it is recorded."""
        mark = asyncio.ensure_future(self.db(self.db.store.outbox_update, outbox_id, fields))
        self._marks.add(mark)

        def marked(future: asyncio.Future[Any]) -> None:
            self._marks.discard(future)
            if not future.cancelled() and future.exception() is not None:
                log.warning("reply %s was delivered but could not be marked sent (%s); it may be sent again "
                            "at start-up", outbox_id, future.exception())
            self._settled()

        mark.add_done_callback(marked)

    def _settled(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def _deliver_one(self, adapter: Adapter, outbox_id: int, reply: Reply) -> dict[str, Any] | None:
        """Send one reply, retrying; returns the fields that record it sent, or None once it failed for good."""
        delay = 0.25
        for attempt in range(1, MAX_ATTEMPTS + 1):
            edit_of = await self._platform_id(reply.edit) if reply.edit is not None else None
            try:
                if reply.edit is not None and edit_of is None:
                    # The message to edit never got an id (or cannot be edited): post it anew instead.
                    reply = Reply(**{**reply.__dict__, "edit": None})
                platform_id = await adapter.send(reply, edit_of=edit_of)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, DeliveryError) and exc.permanent:  # retrying cannot help: do not hold the channel
                    log.error("reply %s to %s %s cannot be delivered: %s", outbox_id, reply.adapter, reply.channel, exc)
                    await self.db(self.db.store.outbox_update, outbox_id,
                                  {"status": "failed", "attempts": attempt, "error": str(exc)})
                    return None
                wait = exc.retry_after if isinstance(exc, DeliveryError) and exc.retry_after else delay
                log.warning("sending reply %s to %s %s failed (attempt %d): %s; retrying in %.1fs",
                            outbox_id, reply.adapter, reply.channel, attempt, exc, wait)
                await self.db(self.db.store.outbox_update, outbox_id, {"attempts": attempt, "error": str(exc)})
                await asyncio.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self._platform_ids[outbox_id] = platform_id
            return {"status": "sent", "attempts": attempt, "platform_id": platform_id, "sent_at": utcnow(),
                    "error": None}
        log.error("giving up on reply %s to %s %s after %d attempts", outbox_id, reply.adapter, reply.channel,
                  MAX_ATTEMPTS)
        await self.db(self.db.store.outbox_update, outbox_id, {"status": "failed"})
        return None
