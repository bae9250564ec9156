"""The database goes away (PostgreSQL stopped) or is locked (SQLite, by another process): people are told so
in chat and in the API's shape, the log says it once rather than a traceback a second, and a lock that
outlasts the busy timeout is waited for instead of failing whichever request was first in line.

The PostgreSQL tests stop a throwaway cluster of their own (`tests.pgcluster.Cluster`, as the suite's
`postgres_server` makes one) and start it again; the SQLite ones hold the write lock on a connection of
their own, with the busy timeout and the bound on waiting made short (`BUSY_TIMEOUT_MS`,
`LOCK_WAIT_SECONDS`), so that waiting past them takes milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.http import create_api
from bot.http.server import ApiServer
from bot.service import Housekeeping
from engine import storage
from engine.config import load_config
from engine.storage import Database, Store
from tests.conftest import free_port, server_missing
from tests.pgcluster import Cluster, Stoppable, initdb_path, own_cluster
from tests.test_chat import _config, loopback_chat, settle
from tests.test_storage import _kv

KEY = "outage-key-0123456789"


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, limit: float = 30.0) -> None:
    """Poll until `check()` holds (a guard against hanging, not an assertion about time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        held = check()
        if held if isinstance(held, bool) else await held:
            return
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info is not None]


# -- PostgreSQL goes away ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A cluster of this module's own: its tests stop it, which the session's shared one must never be."""
    initdb = initdb_path()
    if initdb is None:
        server_missing("PostgreSQL is not installed (Debian package 'postgresql'; .ci/run installs it)")
    yield from own_cluster(initdb, "squall-pg-outage-")


@pytest.fixture
def server(cluster: Cluster) -> Iterator[Stoppable]:
    running = Stoppable(cluster)
    try:
        yield running
    finally:
        if not running.running:
            running.up()


@pytest.fixture
def pg_home(home: Path, cluster: Cluster) -> Path:
    """The chat tests' home (`tests.test_chat._config`: the demo pack) on a new database of the cluster,
    with an API key."""
    _config(home, f"api: {{keys: [{KEY}], port: {free_port()}}}")
    url = cluster.create(f"t_{uuid.uuid4().hex[:12]}")
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", url))
    return home


@pytest.fixture
async def pg_squall(pg_home: Path, server: Stoppable) -> AsyncIterator[Squall]:
    squall = await Squall.start(load_config(pg_home / "config.yml"))
    try:
        yield squall
    finally:
        if not server.running:
            server.up()
        await squall.close()


@pytest.mark.postgres
async def test_housekeeping_logs_an_outage_once_per_step_and_once_when_it_works_again(
        pg_squall: Squall, server: Stoppable, caplog: pytest.LogCaptureFixture) -> None:
    """Each tick's failing steps (stored requests, the outbox) say so once an outage, without a
    traceback: the drill logged 4,293 lines, 77 tracebacks, in 20 s of an idle service."""
    housekeeping = Housekeeping(pg_squall, [])
    await housekeeping.start()
    await housekeeping.tick()
    caplog.set_level(logging.INFO, logger="squall")
    caplog.clear()
    server.down()
    for _ in range(4):
        await housekeeping.tick()
    ours = [r for r in caplog.records if r.name == "squall"]
    assert not [r for r in ours if r.levelno >= logging.ERROR], [r.getMessage() for r in ours]
    assert not _tracebacks(caplog)
    warned = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    for step in ("running stored requests", "sending the outbox"):
        said = [message for message in warned if f"({step})" in message]
        assert len(said) == 1, warned
        assert "OperationalError" in said[0] and "unreachable" in said[0], said
    assert len(warned) == len(set(warned)), warned  # no step twice, whichever failed
    server.up()
    caplog.clear()

    async def works_again() -> bool:
        await housekeeping.tick()
        said = [r.getMessage() for r in caplog.records if r.name == "squall" and r.levelno == logging.INFO]
        return all(any(f"({step})" in message and "works again" in message for message in said)
                   for step in ("running stored requests", "sending the outbox"))

    await until(works_again, "housekeeping to say its steps work again")
    for _ in range(2):
        await housekeeping.tick()
    again = [r.getMessage() for r in caplog.records if r.name == "squall" and "works again" in r.getMessage()]
    assert len(again) == len(set(again)), again  # once each
    assert not _tracebacks(caplog)


@pytest.mark.postgres
async def test_a_chat_command_while_postgresql_is_down_is_answered_through_the_adapter(
        pg_home: Path, server: Stoppable, caplog: pytest.LogCaptureFixture) -> None:
    """The 'could not store' reply cannot be stored either: it is sent straight through the adapter, and
    each lost command logs one line (no traceback, not three entries)."""
    async with loopback_chat(pg_home) as (squall, bot, loopback):
        try:
            caplog.set_level(logging.DEBUG, logger="bot.chat")
            server.down()
            await loopback.say("!greet bob", user="olivia", channel="#ops")
            await loopback.say("!greet alice", user="olivia", channel="#ops")
            said = loopback.texts("#ops")
            assert len(said) == 2, said
            for text in said:
                assert text.startswith("Squall could not store that command: the database is full, not writable or "
                                       "unreachable (OperationalError"), text
                assert text.endswith("Nothing ran.")
            threads = [posted.reply.thread for posted in loopback.posted]  # each in its command's thread
            assert len(set(threads)) == 2 and all(thread and thread.startswith("m") for thread in threads), threads
            assert not _tracebacks(caplog)
            chat_warnings = [r for r in caplog.records
                             if r.name.startswith("bot.chat") and r.levelno >= logging.WARNING]
            assert len(chat_warnings) == 1, [r.getMessage() for r in chat_warnings]  # once an outage
        finally:
            if not server.running:
                server.up()
        await loopback.say("!greet carol", user="olivia", channel="#ops")
        await settle(squall, bot)
        assert "hello carol" in loopback.texts("#ops")[-1]


async def test_a_message_the_database_failed_is_answered_unstored_without_a_traceback(
        home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Not only a command's request: any step of handling a message that the database fails (a read of
    waiting questions, say) is answered through the adapter, in one log line, never with a traceback."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        async def unreachable(*_args: Any, **_kwargs: Any) -> None:
            raise sa.exc.OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))

        monkeypatch.setattr(bot.dispatcher, "_handle", unreachable)
        caplog.set_level(logging.DEBUG, logger="bot.chat")
        await loopback.say("!greet bob", user="olivia", channel="#ops")
        assert loopback.texts("#ops") == ["Squall could not do that: the database is full, not writable or "
                                          "unreachable (ConnectionError)."]
        with squall.store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM outbox WHERE kind IS NULL")).scalar() == 0
        assert not _tracebacks(caplog)
        said = [r.getMessage() for r in caplog.records if r.name.startswith("bot.chat") and r.levelno >= logging.INFO]
        assert said == ["handling a message from olivia failed, as the database is full, not writable or unreachable "
                        "(ConnectionError)"], said


@pytest.mark.postgres
async def test_the_api_answers_503_in_its_shape_while_postgresql_is_down(
        pg_squall: Squall, server: Stoppable, caplog: pytest.LogCaptureFixture) -> None:
    """`{"faultstring": ...}` naming the failure, `Retry-After`, as `/healthz` says 503 at the same time;
    one log line an outage, no traceback (the drill: a 500 in text/plain and a traceback each)."""
    transport = httpx.ASGITransport(app=create_api(pg_squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as api:
        caplog.set_level(logging.DEBUG, logger="bot.http")
        server.down()
        for n in range(3):
            answer = await api.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": f"x{n}"}})
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/json"
            assert int(answer.headers["retry-after"]) > 0
            fault = answer.json()["faultstring"]
            assert "the database is full, not writable or unreachable (OperationalError" in fault, fault
            assert "INSERT" not in fault and "SELECT" not in fault and "127.0.0.1" not in fault
        assert (await api.get("/healthz")).status_code == 503
        warned = [r for r in caplog.records if r.name.startswith("bot.http") and r.levelno >= logging.WARNING]
        assert len(warned) == 1 and warned[0].exc_info is None, [r.getMessage() for r in warned]
        server.up()
        created = await api.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "back"}})
        assert created.status_code == 201, created.text


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> bytes:
    """One keep-alive `POST /api/v1/executions` on an open connection; its answer's head and body."""
    body = b'{"action": "demo.greet", "parameters": {"who": "kept"}}'
    writer.write(b"POST /api/v1/executions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nSt2-Api-Key: %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (port, KEY.encode(), len(body), body))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


@pytest.mark.postgres
async def test_a_keep_alive_connection_outlives_a_database_error(pg_squall: Squall, server: Stoppable) -> None:
    """The drill's 'Connection reset by peer': the error escaped the app, Starlette answered 500 and
    re-raised, and uvicorn closes the connection of an app that raised after answering; a client's next
    request on it was reset. Answered by a handler, the connection takes the next request."""
    api = ApiServer(pg_squall, host="127.0.0.1", port=free_port())
    await api.start()
    try:
        server.down()
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        try:
            for _ in range(2):
                answer = await _exchange(reader, writer, api.port)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"faultstring" in answer
        finally:
            writer.close()
    finally:
        await api.stop()


# -- SQLite locked by another process -------------------------------------------------------------

@pytest.fixture
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy timeout of 20 ms (read as each connection opens: set before the store is) and a bound on
    waiting for a lock of 0.3 s."""
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 20)
    monkeypatch.setattr(storage, "LOCK_WAIT_SECONDS", 0.3, raising=False)


class Locker:
    """Another connection (as another process's) holding SQLite's write lock on `path`."""

    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.held = False

    def hold(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")
        self.held = True

    def release(self) -> None:
        if self.held:
            self.connection.execute("ROLLBACK")
            self.held = False

    def close(self) -> None:
        self.release()
        self.connection.close()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, Database, Locker]]:
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 20)
    path = tmp_path / "squall.db"
    store = Store.open(f"sqlite:///{path}")
    db = Database(store)
    locker = Locker(str(path))
    try:
        yield store, db, locker
    finally:
        locker.close()
        db.close()
        store.close()


async def test_a_group_that_waits_past_the_busy_timeout_is_tried_again_until_the_lock_is_free(
        database: tuple[Store, Database, Locker]) -> None:
    """The first call in line used to wait the busy timeout alone and fail ('database is locked'); the
    group is tried again instead (nothing of it was committed), each call taking effect once."""
    store, db, locker = database
    tries: list[int] = []

    def first() -> None:
        tries.append(1)
        store.kv_put(_kv("first", "stored"))

    locker.hold()
    a = db.submit(first)
    b = db.submit(store.audit_add, "test.locked", "olivia", "test", None, {})
    # The loop's try (refused at once) and the thread's first (past the busy timeout), then another.
    await until(lambda: len(tries) >= 3 or a.done(), "the locked group to be tried again")
    locker.release()
    await a
    await b
    assert store.kv_get("system", "first", storage.utcnow())["value"] == "stored"
    assert [row["event"] for row in store.audit_list(event="test.locked")] == ["test.locked"]  # once
    assert db.failing is None


async def test_a_lock_held_past_the_bound_fails_the_whole_group_saying_so(
        database: tuple[Store, Database, Locker], monkeypatch: pytest.MonkeyPatch) -> None:
    store, db, locker = database
    monkeypatch.setattr(storage, "LOCK_WAIT_SECONDS", 0.3, raising=False)
    locker.hold()
    calls = [db.submit(store.kv_put, _kv("first", "stored")), db.submit(store.audit_add, "test.locked", None, None,
                                                                          None, {})]
    for call in calls:
        with pytest.raises(storage.DatabaseLocked) as raised:
            await call
        assert str(raised.value).startswith("the SQLite database is locked by another process; nothing was stored")
        assert "INSERT" not in str(raised.value)
        assert storage.database_failure(raised.value) is None  # a lock is no failing database (/healthz stays 200)
        assert storage.database_locked(raised.value)
    locker.release()
    assert store.kv_get("system", "first", storage.utcnow()) is None
    assert store.audit_list(event="test.locked") == []
    assert db.failing is None
    await db(store.kv_put, _kv("after", "stored"))  # and the next group commits
    assert store.kv_get("system", "after", storage.utcnow()) is not None


async def test_the_calls_queued_behind_a_group_that_gave_up_wait_no_longer(
        database: tuple[Store, Database, Locker], monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound is the lock's, not each group's: a call queued while a group waited for the lock is
    tried once more when that group gives up, not for the whole bound again (which let a request
    wait up to twice `LOCK_WAIT_SECONDS`, longer than clients wait)."""
    store, db, locker = database
    monkeypatch.setattr(storage, "LOCK_WAIT_SECONDS", 0.3, raising=False)
    tries: list[str] = []

    def put(name: str) -> None:
        tries.append(name)
        store.kv_put(_kv(name, "stored"))

    locker.hold()
    first = db.submit(put, "first")
    await until(lambda: tries.count("first") >= 2, "the first group to wait on the thread")
    behind = db.submit(put, "behind")  # queued behind the group on the thread
    for call in (first, behind):
        with pytest.raises(storage.DatabaseLocked):
            await call
    assert tries.count("behind") == 2, tries  # the loop's try, refused at once, and the thread's one
    locker.release()
    await db(put, "after")  # the wait is over once the lock is free
    assert store.kv_get("system", "after", storage.utcnow()) is not None


def _locker_of(squall: Squall) -> Locker:
    return Locker(str(squall.store.engine.url.database))


async def test_the_api_answers_503_saying_the_database_is_locked(short_waits: None, home: Path) -> None:
    _config(home, f"api: {{keys: [{KEY}]}}")
    squall = await Squall.start(load_config(home / "config.yml"))
    locker = _locker_of(squall)
    try:
        transport = httpx.ASGITransport(app=create_api(squall))
        async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as api:
            locker.hold()
            answer = await api.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}})
            assert answer.status_code == 503, answer.text
            assert int(answer.headers["retry-after"]) > 0
            assert "database is locked by another process" in answer.json()["faultstring"], answer.json()
            assert (await api.get("/healthz")).status_code == 200  # locked, not failing
            locker.release()
            created = await api.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "y"}})
            assert created.status_code == 201, created.text
    finally:
        locker.close()
        await squall.close()


async def test_chat_says_the_database_is_locked_and_nothing_ran(short_waits: None, home: Path) -> None:
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        locker = _locker_of(squall)
        try:
            locker.hold()
            await loopback.say("!greet bob", user="olivia", channel="#ops")
            said = loopback.texts("#ops")
            assert len(said) == 1, said
            assert said[0].startswith("Squall could not store that command: the SQLite database is locked by another "
                                      "process"), said
            assert said[0].endswith("Nothing ran."), said
            locker.release()
            await loopback.say("!greet carol", user="olivia", channel="#ops")
            await settle(squall, bot)
            assert "hello carol" in loopback.texts("#ops")[-1]
        finally:
            locker.close()



async def test_the_lead_check_says_an_outage_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    """Housekeeping asks every second whether this process leads; through a PostgreSQL outage that was a
    warning each time, with SQLAlchemy's whole text. Now one warning in the database's words, then debug
    lines, and one line when it can tell again."""
    from engine.leader import AdvisoryLock, leads

    class Flaky(AdvisoryLock):
        def __init__(self) -> None:
            self.down = True
            self.unsure = False

        def lead(self) -> bool:
            if self.down:
                raise sa.exc.OperationalError("SELECT pg_try_advisory_lock(...)", {"secret": "s3cr3t"},
                                              sqlite3.OperationalError("disk I/O error"))
            return True

    lock = Flaky()
    caplog.set_level(logging.DEBUG, logger="engine.leader")
    assert [await leads(lock) for _ in range(3)] == [False, False, False]
    lock.down = False
    assert await leads(lock) is True and await leads(lock) is True
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "engine.leader"]
    assert [level for level, _ in said] == ["WARNING", "DEBUG", "DEBUG", "INFO"], said
    assert "disk I/O error" in said[0][1] and "s3cr3t" not in said[0][1] and "SELECT" not in said[0][1]


async def test_live_output_a_failing_database_refuses_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """Each running execution's output flush logged a whole traceback through a database outage."""
    from engine.events import Events
    from engine.output import OutputRecorder

    class Failing:
        store = type("S", (), {"execution_output_add": None})()

        async def __call__(self, *_args: Any) -> None:
            raise sa.exc.OperationalError("INSERT INTO execution_output ...", {}, sqlite3.OperationalError(
                "database or disk is full"))

    recorder = OutputRecorder(Failing(), Events())  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="engine.output")
    recorder._rows = [{"execution_id": "e1", "output_type": "stdout", "data": "x"}]
    await recorder.flush()
    [record] = [r for r in caplog.records if r.name == "engine.output"]
    assert record.exc_info is None and "database or disk is full" in record.getMessage()
    assert "INSERT" not in record.getMessage()


# -- the web UI through an outage -------------------------------------------------------------------

def _disk_full() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT INTO executions ...", {},
                                   sqlite3.OperationalError("database or disk is full"))


async def test_a_form_the_database_failed_gets_the_ui_s_error_page_and_the_api_its_fault(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A browser's form post got the API's bare JSON 503, without the UI's headers or a way back."""
    from tests.test_api import KEY
    from tests.test_web_auth import started_web

    async with started_web(home) as web:
        client, csrf = await web.signed_in("olga", "operator")

        async def failing(*_args: Any, **_kwargs: Any) -> Any:
            raise _disk_full()

        monkeypatch.setattr(web.squall.executions, "request", failing)
        page = await client.post("/actions/core.noop", data={"csrf_token": csrf})
        api = await web.client().post("/api/v1/executions", json={"action": "core.noop"}, headers={"St2-Api-Key": KEY})
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html"), page.text
    assert "database or disk is full" in page.text and "<html" in page.text.lower()
    assert "default-src" in page.headers["content-security-policy"] and page.headers["retry-after"]
    assert api.status_code == 503 and "database or disk is full" in api.json()["faultstring"]


async def test_a_live_view_the_database_failed_ends_cleanly_to_come_back(
        home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The error cut the stream off mid-body and uvicorn logged its traceback, once a stream a second."""
    from bot.web.live import RECONNECT_MS
    from tests.test_web_auth import started_web

    async with started_web(home) as web:
        client, _csrf = await web.signed_in("vic", "viewer")
        record = await web.squall.executions.request("core.noop", {})
        await web.squall.executions.wait(record["id"], timeout=30)

        def failing_after_first(original: Any) -> Any:  # the route's own look works; the stream's fail
            calls = 0

            def call(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls > 1:
                    raise _disk_full()
                return original(*args, **kwargs)

            return call

        monkeypatch.setattr(web.squall.executions, "get", failing_after_first(web.squall.executions.get))
        keyset = failing_after_first(web.squall.store.execution_keyset)
        monkeypatch.setattr(web.squall.store, "execution_keyset", keyset)
        caplog.set_level(logging.DEBUG)
        streamed = await asyncio.wait_for(client.get(f"/live/executions/{record['id']}"), 30)
        listed = await asyncio.wait_for(client.get("/live/executions"), 30)
    for answer in (streamed, listed):
        assert answer.status_code == 200 and answer.text.rstrip().endswith(f"retry: {RECONNECT_MS}"), answer.text
    assert not [r for r in caplog.records if r.exc_info is not None], "a traceback was logged"
