"""Wake-ups between processes on PostgreSQL: `LISTEN`/`NOTIFY` instead of waiting for the next poll.

Under the scale-out executor a worker stores the replies its executions owe (results, questions,
notices) in the outbox, and the `squall serve` node that holds the chat adapter sends them. That
node polls the outbox every second; a trigger on the outbox (migration 0018) also notifies
`OUTBOX` at the commit of every insert, with the inserting connection's `application_name` as the
payload, so the node sends them at once. Every connection of this process names itself
`PROCESS_NAME` (`storage.create_engine`), which lets a listener skip the notifications of its own
inserts: this process sends those without being told.

The same holds for trigger instances: a worker stores those its executions raise (action and notify
triggers, datastore changes, inquiries) `pending` and notifies `TRIGGERS` in the transaction that
stores them (`Store.wake`), so at its commit; the `squall serve` nodes, which process them with their
current rules, take them at once (`TriggerService.follow`).

The poll stays as the safety net: a notification sent while the listener was reconnecting is
lost, so each (re)connection counts as a wake-up of its own.

A `squall worker` listens for procrastinate's new jobs and abort requests the same way
(`listen_to`, from `bot.worker.JobWorker`): procrastinate's own listener gave up for good when the
server was not back at its one try to reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: The channel the outbox's trigger notifies (migration 0018 names it too).
OUTBOX = "squall_outbox"
#: The channel a `squall worker` notifies as it stores trigger instances for the serve nodes to process.
TRIGGERS = "squall_triggers"
#: This process's `application_name` on PostgreSQL (at most 63 bytes, PostgreSQL's limit, so that a
#: notification's payload reads back equal to it).
PROCESS_NAME = f"squall {os.getpid()}@{socket.gethostname()}"[:63]
#: The other Squall processes' sessions on this PostgreSQL database, by name (`sqlalchemy.text`, `me`: ours).
SQUALL_SESSIONS = ("SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = current_database() "
                   "AND application_name LIKE 'squall %' AND application_name <> :me")
#: How long to wait before connecting again after the listening connection failed.
RETRY_SECONDS = 5.0


def libpq_url(database_url: str) -> str:
    """The libpq DSN of a SQLAlchemy URL (which names its driver too), for psycopg's own connections
    (the `LISTEN` here, procrastinate's pool), with `storage.PG_LIVENESS` where the URL sets none."""
    import sqlalchemy as sa

    from engine.storage import PG_LIVENESS

    url = sa.engine.make_url(database_url)
    query = {**{name: str(value) for name, value in PG_LIVENESS.items()}, **url.query}
    return url.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


async def listen(database_url: str, channel: str, wake: Callable[[], None], *,
                 retry: float = RETRY_SECONDS) -> None:
    """Call `wake` for every notification on `channel` that another process sent, and each time the
    listening connection is made (what came while it was down is not told again); runs until
    cancelled, connecting again `retry` seconds after a failure."""

    def heard(_channel: str | None, payload: str | None) -> None:
        if payload != PROCESS_NAME:
            wake()

    await listen_to(database_url, [channel], heard, channel, retry=retry)


async def listen_to(database_url: str, channels: Sequence[str], heard: Callable[[str | None, str | None], None],
                    what: str, *, retry: float = RETRY_SECONDS) -> None:
    """Call `heard(channel, payload)` for every notification on `channels`, this process's own too, and
    `heard(None, None)` each time the listening connection is made (what came while it was down is not
    told again). Runs until cancelled; after a failure it connects again every `retry` seconds, saying
    so once per outage (`what` names what it listens for) and once when it listens again: a listener
    that gave up silently left its process on its poll for good."""
    import psycopg
    from psycopg import sql

    failing = False
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                    libpq_url(database_url), autocommit=True, application_name=PROCESS_NAME) as conn:
                for channel in channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if failing:
                    log.info("listening for %s again", what)
                failing = False
                heard(None, None)
                async for note in conn.notifies():
                    heard(note.channel, note.payload)
        except (psycopg.Error, OSError) as exc:
            if not failing:  # once per outage, not every few seconds
                log.warning("lost the database connection that listens for %s (%s); polling until it is back",
                            what, exc)
            failing = True
        await asyncio.sleep(retry)


class Rerun:
    """Runs `work` at a wake-up (`kick`) and once more for whatever wake-ups came while it ran, however
    many, never two at once: a burst of notifications costs one run after the one under way, and none is
    missed. What a `listen` sets off (the outbox's look for replies other processes stored, a serve
    node's take of the trigger instances workers stored). A run that fails is logged (`what` it was
    doing) and left to the caller's own poll, which tries again within a second."""

    def __init__(self, work: Callable[[], Awaitable[Any]], name: str, what: str) -> None:
        self._work, self._name, self._what = work, name, what
        self._again = False
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def kick(self, *_told: Any) -> None:
        """A wake-up (`listen`'s `wake`, or `listen_to`'s `heard` with its channel and payload)."""
        if self.closed:
            return
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while self._again and not self.closed:
            self._again = False
            try:
                await self._work()
            except Exception as exc:
                log.warning("%s failed (%s); the next poll tries again", self._what, exc)
                return

    def close(self) -> asyncio.Task[None] | None:
        """Take no more wake-ups; the run under way, if any, to wait for or cancel."""
        self.closed = True
        return self._task
