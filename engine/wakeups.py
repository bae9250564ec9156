"""Wake-ups between processes on PostgreSQL: `LISTEN`/`NOTIFY` instead of waiting for the next poll.

Under the scale-out executor a worker stores the replies its executions owe (results, questions,
notices) in the outbox, and the `squall serve` node that holds the chat adapter sends them. That
node polls the outbox every second; a trigger on the outbox (migration 0018) also notifies
`OUTBOX` at the commit of every insert, with the inserting connection's `application_name` as the
payload, so the node sends them at once. Every connection of this process names itself
`PROCESS_NAME` (`storage.create_engine`), which lets a listener skip the notifications of its own
inserts: this process sends those without being told.

The poll stays as the safety net: a notification sent while the listener was reconnecting is
lost, so each (re)connection counts as a wake-up of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The channel the outbox's trigger notifies (migration 0018 names it too).
OUTBOX = "squall_outbox"
#: This process's `application_name` on PostgreSQL (at most 63 bytes, PostgreSQL's limit, so that a
#: notification's payload reads back equal to it).
PROCESS_NAME = f"squall {os.getpid()}@{socket.gethostname()}"[:63]
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
    import psycopg

    failing = False
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                    libpq_url(database_url), autocommit=True, application_name=PROCESS_NAME) as conn:
                await conn.execute(f"LISTEN {channel}")
                if failing:
                    log.info("listening for %s again", channel)
                failing = False
                wake()
                async for note in conn.notifies():
                    if note.payload != PROCESS_NAME:
                        wake()
        except (psycopg.Error, OSError) as exc:
            if not failing:  # once per outage, not every few seconds
                log.warning("lost the database connection that listens for %s (%s); polling until it is back",
                            channel, exc)
            failing = True
        await asyncio.sleep(retry)
