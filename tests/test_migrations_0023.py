"""Migration 0023: the lists and counts that read the whole history are read from indexes.

Each query the API and the web send for a list or a count (through the Store's own methods, the SQL
they really send) is planned on SQLite on an index: no plan reads its table row by row (`SCAN <table>`),
nor walks the time index checking every execution for a filter that matches few. Checked on a new
database (`storage.migrate` makes it from the tables at once) and on one migrated from 0022 with
rows in it; and the migration goes up and down on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import storage
from engine.storage import ExecutionFilter, Store, audit, executions, rule_enforcements, trigger_instances
from tests.test_storage import _sqlite_schema

T0 = datetime(2025, 1, 1, tzinfo=UTC)
TABLES = ("executions", "trigger_instances", "rule_enforcements", "audit")
#: What most executions are (their context, by number): a chat command's, the API's, a rule's.
COMMON = [{"user": "alice", "source": "chat", "chat": {"adapter": "slack", "channel": "#ops", "thread": "t"}},
          {"user": "ci", "source": "api"},
          {"user": "squall", "rule": {"ref": "demo.on_push"}, "trigger_instance": {"id": "ti-common"}}]
#: The one execution each rare filter matches.
RARE = {"nobody": {"user": "nobody", "source": "api"},
        "web": {"user": "wendy", "source": "web"},
        "quiet": {"user": "alice", "source": "chat", "chat": {"adapter": "slack", "channel": "#quiet"}},
        "fired": {"user": "squall", "rule": {"ref": "demo.on_tag"}, "trigger_instance": {"id": "ti-rare"}}}


def _execution(number: int, context: dict[str, Any], *, action: str = "core.noop", status: str = "succeeded",
               parent: str | None = None) -> dict[str, Any]:
    start = T0 + timedelta(seconds=number)
    return {"id": f"{number:024x}", "action": action, "runner": "noop", "status": status, "parameters": {},
            "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None, "context": context, "log": [],
            "parent": parent, "runner_info": None, "start_timestamp": start, "end_timestamp": start}


def _rows() -> dict[sa.Table, list[dict[str, Any]]]:
    """A history: 600 common executions (a few workflow tasks among them), one of each rare kind among
    the oldest, instances, enforcements and audit entries."""
    rare = [_execution(1, RARE["nobody"]), _execution(2, RARE["web"]), _execution(3, RARE["quiet"]),
            _execution(4, RARE["fired"]), _execution(5, COMMON[1], action="linux.uptime"),
            _execution(6, COMMON[1], status="abandoned")]
    common = [_execution(number, COMMON[number % 3], parent=f"{10:024x}" if number % 50 == 0 else None)
              for number in range(10, 610)]
    instances = [{"id": f"ti-{number}", "trigger": "core.st2.webhook", "payload": {}, "status": "processed",
                  "occurrence_time": T0 + timedelta(seconds=number), "trace_tag": None, "trigger_parameters": None,
                  "owner": None} for number in range(200)]
    enforcements = [{"id": f"re-{number}", "rule": "demo.on_push", "trigger_instance_id": f"ti-{number}",
                     "execution_id": f"{number + 10:024x}", "status": "succeeded", "failure_reason": None,
                     "enforced_at": T0 + timedelta(seconds=number)} for number in range(200)]
    entries = [{"timestamp": T0 + timedelta(seconds=number), "event": "chat.execution" if number % 9 else "web.login",
                "actor": "alice", "source": "slack:#ops", "target": "core.noop", "detail": {}} for number in range(300)]
    return {executions: rare + common, trigger_instances: instances, rule_enforcements: enforcements,
            audit: entries}


def _insert(engine: sa.Engine, rows: dict[sa.Table, list[dict[str, Any]]]) -> None:
    with engine.begin() as connection:
        for table, records in rows.items():
            connection.execute(sa.insert(table), records)


def _alembic(connection: sa.Connection, revision: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(storage._MIGRATIONS))
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


@pytest.fixture(params=["made by migrate", "migrated from 0022"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A SQLite database with `_rows`: new (`migrate` makes it from the tables), or at 0022 with the
    rows already in it when `Store.open` upgrades it, as a running installation's."""
    url = f"sqlite:///{tmp_path / 'squall.db'}"
    rows = _rows()
    if request.param == "migrated from 0022":
        engine = storage.create_engine(url)
        try:
            with engine.begin() as connection:
                _alembic(connection, "0022")
            _insert(engine, rows)
        finally:
            engine.dispose()
    store = Store.open(url)
    try:
        if request.param == "made by migrate":
            _insert(store.engine, rows)
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def _statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The SELECTs (and their parameters) sent to the database while inside."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)


def _plan(store: Store, statement: str, parameters: Any) -> list[str]:
    with store.engine.connect() as conn:
        return [str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]


def _table_scans(plan: list[str]) -> list[str]:
    """The steps of `plan` that read a table row by row, in no index's order (`SCAN executions`)."""
    return [step for step in plan if re.fullmatch(rf"SCAN ({'|'.join(TABLES)})", step)]


ONE_TI = "ti-rare"


@dataclass(frozen=True)
class Query:
    """A list or count the API or the web sends: what it calls, the index its plan must read, whether
    that index gives its order (nothing found is sorted), and what it must find."""

    call: Callable[[Store], Any]
    index: str
    ordered: bool
    found: Callable[[Any], bool]
    #: Its page may read the time index newest first: the filter selects most executions.
    time_index: bool = False


def _ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


QUERIES = {
    "api parent=null (st2 execution list)": Query(
        lambda store: store.page_executions(limit=5, parent="null"), "ix_executions_parent", False,
        lambda found: found[1] == 6 + 600 - 12 and _ids(found[0]) == [f"{n:024x}" for n in (609, 608, 607, 606, 605)],
        time_index=True),
    "api user= count and page": Query(
        lambda store: store.page_executions(limit=50, parent="null", user="nobody"), "ix_executions_context_user",
        True, lambda found: found[1] == 1 and _ids(found[0]) == [f"{1:024x}"]),
    "api status= count and page (st2 execution list --status)": Query(
        lambda store: store.page_executions(limit=50, parent="null", status="abandoned"), "ix_executions_status",
        True, lambda found: found[1] == 1 and _ids(found[0]) == [f"{6:024x}"]),
    "api trigger_instance= count and page": Query(
        lambda store: store.page_executions(limit=50, trigger_instance=ONE_TI),
        "ix_executions_context_trigger_instance", False,
        lambda found: found[1] == 1 and _ids(found[0]) == [f"{4:024x}"]),
    "web user=": Query(lambda store: store.execution_keyset(ExecutionFilter(user="nobody"), limit=51),
                       "ix_executions_context_user", True, lambda found: _ids(found) == [f"{1:024x}"]),
    "web source=web": Query(lambda store: store.execution_keyset(ExecutionFilter(source="web"), limit=51),
                            "ix_executions_context_source", True, lambda found: _ids(found) == [f"{2:024x}"]),
    "web channel=": Query(lambda store: store.execution_keyset(ExecutionFilter(channel="#quiet"), limit=51),
                          "ix_executions_chat_channel", True, lambda found: _ids(found) == [f"{3:024x}"]),
    "web pack=": Query(lambda store: store.execution_keyset(ExecutionFilter(pack="linux"), limit=51),
                       "ix_executions_action_start", False, lambda found: _ids(found) == [f"{5:024x}"]),
    "web status=": Query(lambda store: store.execution_keyset(ExecutionFilter(status="abandoned"), limit=51),
                         "ix_executions_status", True, lambda found: _ids(found) == [f"{6:024x}"]),
    "api trigger instances": Query(lambda store: store.trigger_instance_page(limit=50), "ix_trigger_instances_occurred",
                                   True, lambda found: found[0][0]["id"] == "ti-199" and found[1] == 200),
    "api rule enforcements": Query(lambda store: store.rule_enforcement_page(limit=50), "ix_rule_enforcements_enforced",
                                   True, lambda found: found[0][0]["id"] == "re-199" and found[1] == 200),
    "api rule enforcements of an execution": Query(
        lambda store: store.rule_enforcement_page(execution_id=f"{15:024x}", limit=50),
        "ix_rule_enforcements_execution", False, lambda found: _ids(found[0]) == ["re-5"] and found[1] == 1),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_each_history_query_is_planned_on_an_index(history: Store, name: str) -> None:
    """The statements the query sends read its index, no table row by row, and not the time index
    checking every execution for a filter that matches few; in the list's order where the index
    gives it; and they find what they found before the indexes."""
    query = QUERIES[name]
    with _statements(history) as sent:
        found = query.call(history)
    assert query.found(found), found
    plans = [_plan(history, statement, parameters) for statement, parameters in sent]
    steps = [step for plan in plans for step in plan]
    assert query.index in "\n".join(steps), plans
    assert _table_scans(steps) == [], plans
    if not query.time_index:
        assert not any("ix_executions_start" in step for step in steps), plans
    if query.ordered:
        assert not any("TEMP B-TREE" in step for step in steps), plans


def test_a_pack_of_many_actions_is_still_listed_newest_first(history: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack with more actions than are read apart is read on the time index, as before: the same rows."""
    monkeypatch.setattr(storage, "PACK_ACTIONS_READ_APART", 0)
    assert [r["id"] for r in history.execution_keyset(ExecutionFilter(pack="linux"))] == [f"{5:024x}"]
    assert history.execution_keyset(ExecutionFilter(pack="nothing")) == []


def _indexes(engine: sa.Engine) -> dict[str, str]:
    """Each index's definition, from the catalog (SQLAlchemy reflects no index on expressions from SQLite)."""
    query = ("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
             if engine.dialect.name == "sqlite" else "SELECT indexname, indexdef FROM pg_indexes")
    with engine.connect() as conn:
        return {name: " ".join(str(sql).split()) for name, sql in conn.exec_driver_sql(query)}


NEW = {"ix_trigger_instances_occurred", "ix_rule_enforcements_enforced",
       "ix_rule_enforcements_execution", "ix_executions_context_trigger_instance"}
#: SQLite's own: PostgreSQL has 0019's on the user and source.
NEW_ON_SQLITE = {"ix_executions_context_user", "ix_executions_context_source"}


def test_migration_0023_goes_up_and_down_with_rows_in_place(database_url: str) -> None:
    """A database at 0022 with rows gets the indexes, the status's with start, id and parent (and, on SQLite, the
    chat channel's with the adapter last), and loses them going back down; the rows stay and the lists
    read them."""
    engine = storage.create_engine(database_url)
    try:
        with engine.begin() as connection:
            _alembic(connection, "0022")
        _insert(engine, _rows())
        before = _indexes(engine)
        with engine.begin() as connection:  # 0023 itself: later revisions add indexes of their own
            _alembic(connection, "0023")
    finally:
        engine.dispose()
    sqlite = database_url.startswith("sqlite")
    store = Store(storage.create_engine(database_url))
    try:
        added = set(_indexes(store.engine)) - set(before)
        assert added == NEW | (NEW_ON_SQLITE if sqlite else set())
        assert re.search(r"\(status, start_timestamp, id, parent\)", _indexes(store.engine)["ix_executions_status"])
        assert [r["id"] for r in store.page_executions(limit=5, trigger_instance=ONE_TI)[0]] == [f"{4:024x}"]
        assert store.page_executions(limit=0, parent="null")[1] == 594
        with store.engine.begin() as connection:
            _alembic(connection, "0022", down=True)
        assert _indexes(store.engine) == before
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM executions").scalar() == 606
    finally:
        store.close()


@pytest.mark.postgres
def test_postgresql_reads_the_trigger_instance_filter_from_its_index(postgres_url: str) -> None:
    """PostgreSQL's query is written with its index's expression (a bound JSON path would match none)."""
    store = Store.open(postgres_url)
    try:
        _insert(store.engine, _rows())
        with _statements(store) as sent:
            store.page_executions(limit=50, trigger_instance=ONE_TI)
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SET enable_seqscan = off")
            for statement, parameters in sent:
                plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
                assert "ix_executions_context_trigger_instance" in plan, plan
    finally:
        store.close()


def test_a_database_migrated_down_from_0023_is_the_one_0022_made(tmp_path: Path) -> None:
    """Down again, a database has 0022's schema exactly (the chat channel's index as 0022 made it)."""
    made, back = tmp_path / "0022.db", tmp_path / "back.db"
    for path, revisions in ((made, ["0022"]), (back, ["head", "0022"])):
        engine = sa.create_engine(f"sqlite:///{path}")
        try:
            for number, revision in enumerate(revisions):
                with engine.begin() as connection:
                    _alembic(connection, revision, down=number > 0)
        finally:
            engine.dispose()
    assert _sqlite_schema(made) == _sqlite_schema(back)
    with contextlib.closing(sqlite3.connect(back)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0022",)]
