"""The history's heavy reads (the API's and the web UI's lists and counts) run on `Database.read`'s
threads, with connections of their own: a scan of 300,000 executions holds neither the event loop
(`/healthz`, chat, the outbox, timers) nor waits behind a write queued for another process's SQLite
lock. `limit=-1` answers are written a page at a time.

A read that "scans" here is a Store method patched to block until the test lets it go: what is
asserted is the order things were answered in, never how long they took."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import sqlalchemy as sa

import bot.http.paging
from bot.app import Squall
from engine.executions import new_id
from engine.storage import Database, Store, rule_enforcements, trigger_instances
from tests.test_api import KEY
from tests.test_metrics import chat_and_api
from tests.test_reads_beside_a_lock import another_process_writing
from tests.test_web_auth import Web, started_web
from tests.test_web_executions import stored

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: How long a patched read blocks at most when nothing lets it go (the old code ran it on the loop,
#: where nothing else could): a bound, so that a failing test ends.
HELD_AT_MOST = 10


def held(original: Callable[..., Any], entered: threading.Event, release: threading.Event) -> Callable[..., Any]:
    """`original`, made to block until `release` is set, as a scan of a big table holds its thread."""

    def call(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(HELD_AT_MOST)
        return original(*args, **kwargs)

    return call


async def test_a_slow_list_holds_neither_healthz_nor_a_chat_command(home: Path) -> None:
    """While `GET /api/v1/executions?user=nobody` scans, `/healthz` answers and a chat command is acked:
    both before the list, which answers once its read is let go."""
    async with chat_and_api(home) as (squall, loopback, client):
        entered, release = threading.Event(), threading.Event()
        squall.store.page_executions = held(squall.store.page_executions, entered, release)  # type: ignore[method-assign]
        answered: list[str] = []

        async def listing() -> httpx.Response:
            response = await client.get("/api/v1/executions", params={"user": "nobody"})
            answered.append("list")
            return response

        task = asyncio.create_task(listing())
        try:
            assert await asyncio.to_thread(entered.wait, HELD_AT_MOST)
            health = await client.get("/healthz")
            answered.append("health")
            await loopback.say("!greet bob", channel="#ops")
            await loopback.wait_for(lambda posted: any(p.reply.text == "greeting bob" for p in posted))
            answered.append("chat")
        finally:
            release.set()
        listed = await task
        assert answered == ["health", "chat", "list"]
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert listed.status_code == 200 and listed.json() == []


async def test_a_read_is_answered_while_another_process_holds_the_write_lock(home: Path) -> None:
    """Another process holds SQLite's write lock and one of Squall's writes waits for it on the database
    thread: a list is answered meanwhile (it used to queue behind the write, up to `LOCK_WAIT_SECONDS`),
    and the write is stored once the lock is let go."""
    async with chat_and_api(home) as (squall, _loopback, client):
        stored(squall.store, T0)
        async with another_process_writing(squall) as write:
            listed = await client.get("/api/v1/executions")
            enforcements = await client.get("/api/v1/ruleenforcements")
        await write
        assert listed.status_code == 200 and len(listed.json()) == 1
        assert enforcements.status_code == 200 and enforcements.json() == []
        assert [e["event"] for e in squall.store.audit_list(event="test.write")] == ["test.write"]


async def test_a_read_runs_on_a_reader_thread_and_a_failing_database_is_kept(database_url: str) -> None:
    """`Database.read` on SQLite and PostgreSQL alike: the call runs on a reader thread, outside any group
    (no connection of a group is this thread's), and answers what it read; a database failure it meets
    reaches its caller and is kept in `failing` for `/healthz`, as a group's is; another error is the caller's."""
    store = Store.open(database_url)
    db = Database(store)
    try:
        made = stored(store, T0)
        seen: list[tuple[str, Any]] = []

        def listing() -> list[dict[str, Any]]:
            seen.append((threading.current_thread().name, getattr(store._batch, "conn", None)))
            return store.list_executions(limit=5)

        assert [r["id"] for r in await db.read(listing)] == [made]
        assert seen == [(seen[0][0], None)] and seen[0][0].startswith("squall-read")

        def failing() -> None:
            raise sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))

        with pytest.raises(ValueError):
            await db.read(int, "not a number")
        assert db.failing is None
        with pytest.raises(sa.exc.OperationalError):
            await db.read(failing)
        assert db.failing is not None and "disk I/O error" in db.failing[0]
    finally:
        db.close()
        store.close()


# -- every heavy read of the API and the web UI goes the read path ----------------------------------------

#: (client, path, what it reads: a Store method's name, or `bot.web.audit`'s function).
HEAVY_READS = [
    ("api", "/api/v1/executions?user=nobody", "page_executions"),
    ("api", "/api/v1/executions?limit=-1", "page_executions"),
    ("api", "/api/v1/triggerinstances", "trigger_instance_page"),
    ("api", "/api/v1/ruleenforcements?rule=demo.on_build", "rule_enforcement_page"),
    ("web", "/executions?user=nobody", "execution_keyset"),
    ("web", "/triggers", "trigger_instance_list"),
    ("web", "/rules/demo.on_build", "rule_enforcement_list"),
    ("web", "/audit?user=nobody", "audit_page"),
    ("web", "/audit", "audit_kinds"),
]


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


@pytest.mark.parametrize(("who", "path", "read"), HEAVY_READS)
async def test_a_heavy_read_runs_beside_the_loop(web: Web, monkeypatch: pytest.MonkeyPatch, who: str, path: str,
                                                 read: str) -> None:
    if who == "web":
        client, _csrf = await web.signed_in("vic", "viewer")
    else:
        client = web.client()
        client.headers["St2-Api-Key"] = KEY
    threads: list[threading.Thread] = []
    owner: Any = web.squall.store
    if read.startswith("audit_"):
        import bot.web.audit as owner
    original = getattr(owner, read)

    def spied(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, read, spied)
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert threads, f"{path} did not read through {read}"
    assert threading.current_thread() not in threads  # the loop's


# -- limit=-1: the whole list, a page at a time ---------------------------------------------------------------

@pytest.fixture
async def listed(home: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Squall, httpx.AsyncClient,
                                                                                     list[dict[str, Any]]]]:
    """Squall with 4-row pages for `limit=-1`, 17 executions (six started in the same microsecond, so that
    pages end inside a tie, and a workflow's task), and what `limit=-1` read: each call's `limit`."""
    import bot.http.executions

    monkeypatch.setattr(bot.http.executions, "ALL_PAGE", 4)
    async with chat_and_api(home) as (squall, _loopback, client):
        first = stored(squall.store, T0)
        for i in range(1, 10):
            stored(squall.store, T0 + timedelta(seconds=i), context={"user": "ann" if i % 2 else "bob"})
        for _ in range(6):
            stored(squall.store, T0 + timedelta(seconds=5, microseconds=1), context={"user": "ann"})
        stored(squall.store, T0 + timedelta(seconds=20), parent=first)
        reads: list[dict[str, Any]] = []
        for name in ("page_executions", "list_executions"):
            original = getattr(squall.store, name)

            def spied(*args: Any, _original: Callable[..., Any] = original, **kwargs: Any) -> Any:
                reads.append(kwargs)
                return _original(*args, **kwargs)

            monkeypatch.setattr(squall.store, name, spied)
        yield squall, client, reads


@pytest.mark.parametrize("query", [
    {}, {"sort_asc": "true"}, {"parent": "null"}, {"user": "ann"}, {"user": "ann", "sort_asc": "true", "offset": "3"},
    {"timestamp_gt": "2026-03-01T12:00:03Z", "timestamp_lt": "2026-03-01T12:00:09Z"},
    {"timestamp_gt": "2026-03-01T12:00:03Z", "sort_asc": "true", "parent": "null"},
    {"include_attributes": "id,status", "offset": "15"}, {"user": "nobody"},
])
async def test_limit_minus_one_lists_every_execution_a_page_at_a_time(listed: tuple[Squall, httpx.AsyncClient,
                                                                                    list[dict[str, Any]]],
                                                                      query: dict[str, str]) -> None:
    """The whole list, as one JSON array in the order and with the total a big enough page gives, read
    four rows at a time: none skipped or repeated where a page ends among executions of one microsecond."""
    _squall, client, reads = listed
    whole = await client.get("/api/v1/executions", params={**query, "limit": "1000"})
    reads.clear()
    streamed = await client.get("/api/v1/executions", params={**query, "limit": "-1"})
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "application/json"
    assert streamed.json() == whole.json()
    assert streamed.headers["X-Total-Count"] == whole.headers["X-Total-Count"] and "X-Limit" not in streamed.headers
    assert reads and all(read["limit"] <= 4 for read in reads)


async def test_limit_minus_one_lists_more_than_a_page(listed: tuple[Squall, httpx.AsyncClient,
                                                                    list[dict[str, Any]]]) -> None:
    _squall, client, reads = listed
    streamed = await client.get("/api/v1/executions", params={"limit": "-1"})
    ids = [e["id"] for e in streamed.json()]
    assert len(ids) == len(set(ids)) == 17 and streamed.headers["X-Total-Count"] == "17"
    assert len(reads) > 17 // 4


def _instance(at: datetime, trigger: str = "demo.event") -> dict[str, Any]:
    return {"id": new_id(), "trigger": trigger, "payload": {"at": at.isoformat()}, "occurrence_time": at,
            "status": "processed", "trace_tag": None, "trigger_parameters": None}


def _enforcement(at: datetime, rule: str = "demo.on_build") -> dict[str, Any]:
    return {"id": new_id(), "rule": rule, "trigger_instance_id": "t1", "execution_id": None, "status": "succeeded",
            "failure_reason": None, "enforced_at": at}


#: (path, filters, how a row is stored, the Store method `limit=-1` reads pages with).
LOGS = [
    ("/api/v1/triggerinstances", {"trigger": "demo.event"}, "trigger_instance_add", _instance, "trigger_instance_page"),
    ("/api/v1/ruleenforcements", {"rule": "demo.on_build"}, "rule_enforcement_add_once", _enforcement,
     "rule_enforcement_page"),
]


@pytest.mark.parametrize(("path", "filters", "add", "row", "read"), LOGS)
async def test_limit_minus_one_lists_a_whole_log_a_page_at_a_time(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  path: str, filters: dict[str, str], add: str,
                                                                  row: Callable[[datetime], dict[str, Any]],
                                                                  read: str) -> None:
    """Trigger instances and rule enforcements come whole, three at a time, as a big enough page lists
    them, from an `offset` too; a row stored while the answer is written is not in it, and moves no row
    into a page already written (each page after the first starts below the last row written)."""
    monkeypatch.setattr(bot.http.paging, "LOG_PAGE", 3)
    async with chat_and_api(home) as (squall, _loopback, client):
        store = squall.store
        for i in range(8):
            getattr(store, add)(row(T0 + timedelta(seconds=i // 2)))  # pairs at one time: ids break the ties
        getattr(store, add)(row(T0, "demo.other"))  # not one of `filters`'
        for query in ({**filters, "offset": "2"}, {}, filters):
            whole = await client.get(path, params={**query, "limit": "1000"})
            streamed = await client.get(path, params={**query, "limit": "-1"})
            assert streamed.status_code == 200 and streamed.json() == whole.json()
            assert streamed.headers["X-Total-Count"] == whole.headers["X-Total-Count"]
        original, limits = getattr(store, read), []

        def arriving(*args: Any, **kwargs: Any) -> Any:
            page = original(*args, **kwargs)
            limits.append(kwargs["limit"])
            if len(limits) == 2:  # the first page was read: two newer rows arrive before the second is
                for _ in range(2):
                    getattr(store, add)(row(T0 + timedelta(minutes=1)))
            return page

        monkeypatch.setattr(store, read, arriving)
        streamed = await client.get(path, params={**filters, "limit": "-1"})
        assert streamed.json() == whole.json()  # `filters`' eight, as listed before the two came
        assert limits == [0, 3, 3, 3]  # the count, then 3 + 3 + 2: the two newer rows are read by no page


# -- limit=-1 of a log: keyset pages, which rows stored or deleted meanwhile do not move -----------------------

class Log(NamedTuple):
    """A log the API lists whole a page at a time: its route, a filter of it, its table, how a row of it
    is made, the Store method its pages are read with, and the time it is listed by (newest first)."""

    path: str
    filters: dict[str, str]
    table: sa.Table
    row: Callable[..., dict[str, Any]]
    read: str
    time: str


WHOLE_LOGS = [
    Log("/api/v1/triggerinstances", {"trigger": "demo.event"}, trigger_instances, _instance, "trigger_instance_page",
        "occurrence_time"),
    Log("/api/v1/ruleenforcements", {"rule": "demo.on_build"}, rule_enforcements, _enforcement,
        "rule_enforcement_page", "enforced_at"),
]


def _stored_rows(store: Store, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """`rows` stored in one statement (a storm of a thousand, one write each, would take seconds)."""
    with store.engine.begin() as conn:
        conn.execute(table.insert(), rows)


def _deleted_rows(store: Store, table: sa.Table, ids: list[str]) -> None:
    with store.engine.begin() as conn:
        conn.execute(table.delete().where(table.c.id.in_(ids)))


def _between_pages(store: Store, log: Log, monkeypatch: pytest.MonkeyPatch,
                   meanwhile: Callable[[list[dict[str, Any]]], None]) -> list[int]:
    """`log.read` made to call `meanwhile` with each page it reads (not the count, a `limit=0` read) as
    soon as it has read it: what happens between two page reads. Gives each read's `limit`, as it goes."""
    original, limits = getattr(store, log.read), []

    def read(*args: Any, **kwargs: Any) -> Any:
        rows, total = original(*args, **kwargs)
        limits.append(kwargs["limit"])
        if kwargs["limit"]:
            meanwhile(rows)
        return rows, total

    monkeypatch.setattr(store, log.read, read)
    return limits


@pytest.mark.parametrize("log", WHOLE_LOGS, ids=lambda log: log.path)
async def test_limit_minus_one_writes_each_row_of_a_log_once_through_a_storm(home: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             log: Log) -> None:
    """An alert storm while `st2 trigger-instance list -n -1` is written: after each page is read, more
    than a page's worth of newer rows is stored. The answer is the log as it was, each row once, in its
    order (pages end among rows of one microsecond): a page read at the next OFFSET found the rows the
    storm pushed down, the first page's among them, and wrote them again (the previous page's ids, all it
    left out, were the storm's by then)."""
    page = bot.http.paging.LOG_PAGE
    async with chat_and_api(home) as (squall, _loopback, client):
        store = squall.store
        _stored_rows(store, log.table, [log.row(T0 + timedelta(microseconds=i // 3)) for i in range(2 * page + 101)])
        calm = await client.get(log.path, params={"limit": "-1"})
        storms: list[datetime] = []

        def storm(_page: list[dict[str, Any]]) -> None:
            if len(storms) < 3:  # then it calms down: an answer read by OFFSET ended once the rows stopped coming
                storms.append(T0 + timedelta(minutes=len(storms) + 1))
                _stored_rows(store, log.table, [log.row(storms[-1]) for _ in range(page + 1)])

        limits = _between_pages(store, log, monkeypatch, storm)
        streamed = await client.get(log.path, params={"limit": "-1"})
    ids = [r["id"] for r in streamed.json()]
    assert len(ids) == len(set(ids)) == 2 * page + 101 == int(calm.headers["X-Total-Count"])
    assert streamed.json() == calm.json()
    assert streamed.headers["X-Total-Count"] == calm.headers["X-Total-Count"] and "X-Limit" not in streamed.headers
    assert limits == [0, page, page, page]  # the count, then three pages: the storm's rows are read by none


@pytest.mark.parametrize("log", WHOLE_LOGS, ids=lambda log: log.path)
async def test_limit_minus_one_skips_no_row_of_a_log_when_rows_are_deleted(home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          log: Log) -> None:
    """A purge while the whole log is written, its cutoff past where the list has got to, deletes rows
    already written (here the last one too, where the next page starts) and rows not read yet. Every row
    not deleted before its page was read is written once, in order: a page read at the next OFFSET
    started as many rows further on as were deleted above it, and left those out."""
    page = bot.http.paging.LOG_PAGE
    async with chat_and_api(home) as (squall, _loopback, client):
        store = squall.store
        _stored_rows(store, log.table, [log.row(T0 + timedelta(microseconds=i // 3)) for i in range(2 * page + 101)])
        calm = [r["id"] for r in (await client.get(log.path, params={"limit": "-1"})).json()]
        unread = calm[page + 7:page + 17] + calm[-5:]
        purged: list[str] = []

        def purge(rows: list[dict[str, Any]]) -> None:
            if not purged:  # after the first page: 21 of its rows (its last among them) and 15 not read yet
                purged.extend([r["id"] for r in rows[::25]] + [rows[-1]["id"]] + unread)
                _deleted_rows(store, log.table, purged)

        _between_pages(store, log, monkeypatch, purge)
        streamed = [r["id"] for r in (await client.get(log.path, params={"limit": "-1"})).json()]
    assert len(purged) == 20 + 1 + 15
    assert streamed == [i for i in calm if i not in unread]


@pytest.mark.parametrize("log", WHOLE_LOGS, ids=lambda log: log.path)
async def test_limit_minus_one_counts_a_log_once_not_per_page(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                             log: Log) -> None:
    """The whole log's count (`X-Total-Count`) is read once, before its pages: each page read without
    it, where every page ran the count again, a scan of every row the filters select, per 500 rows."""
    monkeypatch.setattr(bot.http.paging, "LOG_PAGE", 3)
    async with chat_and_api(home) as (squall, _loopback, client):
        store = squall.store
        _stored_rows(store, log.table, [log.row(T0 + timedelta(seconds=i)) for i in range(10)])
        counts: list[str] = []

        def executed(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "count(" in statement.lower() and log.table.name in statement:
                counts.append(statement)

        sa.event.listen(store.engine, "before_cursor_execute", executed)
        try:
            streamed = await client.get(log.path, params={**log.filters, "limit": "-1"})
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", executed)
    assert streamed.status_code == 200 and len(streamed.json()) == 10 == int(streamed.headers["X-Total-Count"])
    assert len(counts) == 1, counts  # four pages (3 + 3 + 3 + 1), one count


@pytest.mark.parametrize("log", WHOLE_LOGS, ids=lambda log: log.path)
def test_a_page_of_a_log_before_a_row_starts_just_below_it(database_url: str, log: Log) -> None:
    """The store's keyset page, on SQLite and PostgreSQL: `before` (a row's time and id) starts the page
    strictly below that row in the list's order (time, then id, newest first), through rows of one
    microsecond and past a row deleted since, with the list's filters and its whole count."""
    store = Store.open(database_url)
    try:
        read = getattr(store, log.read)
        _stored_rows(store, log.table, [log.row(T0 + timedelta(microseconds=i // 3)) for i in range(9)])
        _stored_rows(store, log.table, [log.row(T0 + timedelta(microseconds=1), "demo.other")])  # `filters` leave it
        listed, total = read(**log.filters, limit=50)
        assert total == 9 and len(listed) == 9
        everything = read(limit=50)[0]
        keyset = [(r[log.time], r["id"]) for r in listed]
        for i in range(9):
            rows, counted = read(**log.filters, limit=3, before=keyset[i])
            assert (rows, counted) == (listed[i + 1:i + 4], 9)
        _deleted_rows(store, log.table, [listed[4]["id"]])
        assert read(**log.filters, limit=3, before=keyset[4])[0] == listed[5:8]
        below = everything.index(listed[4]) + 1  # unfiltered, wherever the other one's id puts it in its tie
        assert read(limit=50, before=keyset[4])[0] == everything[below:]
    finally:
        store.close()
