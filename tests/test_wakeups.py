"""PostgreSQL wake-ups: a reply another process (a `squall worker`) stores is sent at once, not at
the next poll, and a process is not woken by its own inserts."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.base import Reply
from engine import wakeups
from engine.leader import leadership
from engine.storage import Store
from tests.test_outbox_durability import _chat

pytestmark = pytest.mark.postgres


def _other_process(url: str) -> Store:
    """A store whose connections name themselves as another process's do."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1),
                              connect_args={"application_name": "squall 1@elsewhere"})
    return Store(engine)


def _reply(text: str) -> dict:
    return Reply(adapter="loopback", channel="#ops", text=text).to_json()


async def test_a_listener_is_woken_by_other_processes_inserts_only(postgres_url: str) -> None:
    ours = Store.open(postgres_url)
    theirs = _other_process(postgres_url)
    wakes: asyncio.Queue[None] = asyncio.Queue()
    listener = asyncio.create_task(wakeups.listen(postgres_url, wakeups.OUTBOX, lambda: wakes.put_nowait(None)))
    try:
        await asyncio.wait_for(wakes.get(), 30)  # connected: one wake-up to catch up on what came before
        await asyncio.to_thread(ours.outbox_add, "loopback", "#ops", _reply("ours"))
        await asyncio.to_thread(theirs.outbox_add, "loopback", "#ops", _reply("theirs"))
        await asyncio.wait_for(wakes.get(), 30)
        # Notifications reach a listener in commit order: had our own insert woken it, this would be its second.
        await asyncio.sleep(0.2)
        assert wakes.empty()
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        ours.close()
        theirs.close()


async def test_a_reply_a_worker_stores_is_sent_without_waiting_for_a_poll(home: Path, postgres_url: str) -> None:
    async for _squall, bot, loopback in _chat(home, postgres_url):
        worker = _other_process(postgres_url)
        try:
            bot.outbox.follow(postgres_url)  # as `squall serve` does on PostgreSQL; nothing else polls here
            await asyncio.sleep(0.5)  # the listener connects (if it had not, its first look finds the reply)
            await asyncio.to_thread(worker.outbox_add, "loopback", "#ops", _reply("from a worker"))
            await loopback.wait_for(lambda posted: "from a worker" in [p.text for p in posted], 30)
            assert loopback.texts().count("from a worker") == 1
        finally:
            worker.close()


def _liveness(fd: int) -> tuple[bool, int]:
    """Whether TCP keepalives are on for a connection's socket, and its TCP_USER_TIMEOUT (ms)."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return (bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))


async def test_every_connection_to_postgresql_fails_fast_when_its_peer_vanishes(postgres_url: str) -> None:
    """A failover that moves the server's address leaves half-open connections: without keepalives an
    idle one (the `LISTEN`, a pooled one) waits for ever, and a statement sent into it is retransmitted
    for ~15 minutes. The pool's, the lead's and psycopg's own (`LISTEN`, procrastinate) connections all
    set both; a setting the URL names itself is kept."""
    import psycopg

    store = Store.open(postgres_url)
    lead = leadership(store.engine)
    try:
        with store.engine.connect() as conn:
            assert _liveness(conn.connection.dbapi_connection.fileno()) == (True, 30_000)
        assert lead.lead()
        assert _liveness(lead._conn.connection.dbapi_connection.fileno()) == (True, 25_000)
        with psycopg.connect(wakeups.libpq_url(postgres_url)) as conn:
            assert _liveness(conn.fileno()) == (True, 30_000)
        own = f"{postgres_url}?tcp_user_timeout=7000"
        with psycopg.connect(wakeups.libpq_url(own)) as conn:
            assert _liveness(conn.fileno()) == (True, 7_000)
    finally:
        lead.close()
        store.close()
