"""Chat's `!executions` reads a channel's executions from the index on the chat channel (migration 0022),
on SQLite and PostgreSQL, and finds what it found before: a quiet channel no longer costs a read of
every execution."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine import storage
from engine.storage import Store, executions

INDEX = "ix_executions_chat_channel"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
#: Most executions (their context, by number): the API's, a rule's, a busy channel's.
OTHERS = [{"source": "api", "user": "ci"},
          {"source": "squall", "user": "squall", "rule": {"ref": "demo.hourly"}},
          {"source": "chat", "user": "bob", "chat": {"adapter": "loopback", "channel": "#busy", "thread": "t"}}]
#: A few newer ones `!executions` in the quiet channel must not list: a channel of the same name on
#: another adapter, a web request and one of no source that carry its chat block, one with no context
#: but its user.
DECOYS = [{"source": "chat", "user": "bob", "chat": {"adapter": "irc", "channel": "#quiet"}},
          {"source": "web", "user": "carol", "chat": {"adapter": "loopback", "channel": "#quiet"}},
          {"user": "erin", "chat": {"adapter": "loopback", "channel": "#quiet"}},
          {"user": "dave"}]
QUIET = {"source": "chat", "user": "alice", "chat": {"adapter": "loopback", "channel": "#quiet", "thread": "m1"}}


def _row(number: int, start: datetime, context: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    return {"id": f"{number:024x}", "action": "core.noop", "runner": "noop", "status": "succeeded",
            "parameters": {"n": number}, "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
            "context": context, "log": [], "parent": parent, "runner_info": None, "start_timestamp": start,
            "end_timestamp": start}


def _stored(store: Store) -> list[dict[str, Any]]:
    """3,000 executions: the quiet channel's four are the oldest (two started at the same instant,
    one a workflow's task), the decoys among the newest; statistics gathered, as a database that has
    run for a while has them."""
    rows = [_row(1, T0, QUIET), _row(2, T0 + timedelta(seconds=1), QUIET),
            _row(3, T0 + timedelta(seconds=1), QUIET, parent=f"{1:024x}"), _row(4, T0 + timedelta(seconds=2), QUIET)]
    rows += [_row(number, T0 + timedelta(seconds=number),
                  DECOYS[number % 10] if number % 10 < len(DECOYS) and number > 2900 else OTHERS[number % 3])
             for number in range(5, 3000)]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(executions), rows)
        conn.execute(sa.text("ANALYZE"))
    return rows


def _expected(rows: list[dict[str, Any]], adapter: str, channel: str, limit: int) -> list[str]:
    """What `!executions` must list, found the long way: chat executions of that adapter's channel,
    newest first (the larger id first at the same instant), `limit` of them."""
    mine = [row for row in rows if row["context"].get("source") == "chat"
            and row["context"].get("chat", {}).get("adapter") == adapter
            and row["context"].get("chat", {}).get("channel") == channel]
    mine.sort(key=lambda row: (row["start_timestamp"], row["id"]), reverse=True)
    return [row["id"] for row in mine[:limit]]


@contextlib.contextmanager
def _statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The SQL (and its parameters) sent to the database while inside."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)


def _plan(store: Store, statement: str, parameters: Any) -> str:
    """The database's plan of `statement` run with `parameters` (SQLite's EXPLAIN QUERY PLAN, or
    PostgreSQL's EXPLAIN with these values)."""
    explain = "EXPLAIN QUERY PLAN " if store.is_sqlite else "EXPLAIN "
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(explain + statement, parameters).fetchall()
    return "\n".join(str(row[-1]) for row in rows)


def test_executions_of_a_quiet_channel_are_read_from_the_chat_channel_index(database_url: str) -> None:
    """The query `!executions` sends is planned on the index on the chat channel (a bound JSON path,
    or one written otherwise than the index's, would match none and read every execution), and it
    lists what the long way finds: the channel's chat executions of that adapter, a workflow's task
    among them, newest first, however many others there are."""
    store = Store.open(database_url)
    try:
        rows = _stored(store)
        with _statements(store) as sent:
            found = store.chat_executions("loopback", "#quiet", limit=10)
        [(statement, parameters)] = sent
        assert INDEX in _plan(store, statement, parameters)
        assert [row["id"] for row in found] == _expected(rows, "loopback", "#quiet", 10) == [
            f"{4:024x}", f"{3:024x}", f"{2:024x}", f"{1:024x}"]
        assert found[0]["parameters"] == {"n": 4} and found[0]["context"] == QUIET
        for adapter, channel, limit in (("loopback", "#quiet", 2), ("loopback", "#busy", 10), ("irc", "#quiet", 10),
                                        ("loopback", "#none", 10), ("slack", "#busy", 10)):
            listed = [row["id"] for row in store.chat_executions(adapter, channel, limit=limit)]
            assert listed == _expected(rows, adapter, channel, limit), (adapter, channel)
    finally:
        store.close()


def _alembic(connection: sa.Connection, revision: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(storage._MIGRATIONS))
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


def _indexes(engine: sa.Engine) -> set[str]:
    """The names of the executions table's indexes, from the catalog (SQLAlchemy does not reflect an
    index on expressions from SQLite)."""
    query = ("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'executions'"
             if engine.dialect.name == "sqlite" else "SELECT indexname FROM pg_indexes WHERE tablename = 'executions'")
    with engine.connect() as conn:
        return set(conn.exec_driver_sql(query).scalars())


def test_migration_0022_adds_the_chat_channel_index_to_a_database_with_executions(database_url: str) -> None:
    """A database at 0021 with executions gets the index (the rows it had are in it: the query finds
    them through it), and loses it going back down."""
    engine = storage.create_engine(database_url)
    try:
        with engine.begin() as connection:
            _alembic(connection, "0021")
        with engine.begin() as connection:
            connection.execute(sa.insert(executions), [_row(1, T0, QUIET), _row(2, T0, OTHERS[0])])
        assert INDEX not in _indexes(engine)
    finally:
        engine.dispose()

    store = Store.open(database_url)  # migrates to the head, as `squall serve` does
    try:
        assert INDEX in _indexes(store.engine)
        assert [row["id"] for row in store.chat_executions("loopback", "#quiet")] == [f"{1:024x}"]
        with store.engine.begin() as connection:
            _alembic(connection, "0021", down=True)
        assert INDEX not in _indexes(store.engine)
    finally:
        store.close()
