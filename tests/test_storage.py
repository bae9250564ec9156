"""Storage on SQLite and PostgreSQL: migrations, execution rows, compare-and-set claims, key-value pairs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from bot.app import Squall
from engine import storage, writeback
from engine.config import load_config
from engine.executions import new_id
from engine.storage import Database, DuplicateDelivery, ExecutionFilter, Store, iso, utcnow
from tests.conftest import REPO, write

HEAD = "0024"  # the newest migration; a new one must update this and storage.HEAD_REVISION


def _execution(execution_id: str, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": execution_id,
        "action": "core.noop",
        "runner": "noop",
        "status": "requested",
        "parameters": {},
        "spec": {"values": {}, "templates": {}},
        "sealed": None,
        "result": None,
        "context": {"user": "tester", "pack": "core"},
        "log": [],
        "parent": None,
        "runner_info": None,
        "start_timestamp": utcnow(),
        "end_timestamp": None,
    }
    record.update(fields)
    return record


def _kv(name: str, value: str, *, scope: str = "system", expire_at: Any = None, secret: bool = False) -> dict:
    return {"scope": scope, "name": name, "value": value, "secret": secret, "description": None,
            "expire_at": expire_at, "updated_at": utcnow()}



# -- migrations ---------------------------------------------------------------------------------

def test_open_migrates_an_empty_database_to_head(database_url: str) -> None:
    engine = storage.create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()

    store = Store.open(database_url)
    try:
        inspector = sa.inspect(store.engine)
        assert {"executions", "kv_pairs", "alembic_version"} <= set(inspector.get_table_names())
        assert {c["name"] for c in inspector.get_columns("executions")} == {c.name for c in storage.executions.c}
        assert {c["name"] for c in inspector.get_columns("kv_pairs")} == {c.name for c in storage.kv_pairs.c}
        indexes = {i["name"] for i in inspector.get_indexes("executions")}
        assert {"ix_executions_status", "ix_executions_action_start", "ix_executions_start",
                "ix_executions_parent"} <= indexes
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
        store.insert_execution(_execution("keepme"))
        store.kv_put(_kv("kept", "yes"))
    finally:
        store.close()


def test_opening_a_migrated_database_again_is_a_no_op(database_url: str, monkeypatch) -> None:
    first = Store.open(database_url)
    first.insert_execution(_execution("survivor"))
    first.kv_put(_kv("kept", "yes"))
    first.close()

    from alembic import command

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("upgrade must not run on a database already at head")

    monkeypatch.setattr(command, "upgrade", refuse)
    again = Store.open(database_url)
    try:
        assert again.get_execution("survivor")["action"] == "core.noop"
        assert again.kv_get("system", "kept", utcnow())["value"] == "yes"
        with again.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    finally:
        again.close()


_OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from engine.storage import Store
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
Store.open(sys.argv[1]).close()
"""


def test_processes_opening_a_new_database_at_once_all_succeed(database_url: str, tmp_path: Path) -> None:
    """`squall serve` and a CLI command may both be the first to open a new database."""
    go = tmp_path / "go"
    processes = [
        subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, database_url, str(go)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    time.sleep(1.0)  # let them all import and wait at the line: not an assertion about time
    go.touch()
    failures = []
    for process in processes:
        try:
            _out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _out, err = process.communicate()
            failures.append("hung: " + err[-2000:])
            continue
        if process.returncode != 0:
            failures.append(err[-2000:])
    assert failures == []
    store = Store.open(database_url)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
        store.insert_execution(_execution("after-race"))
        assert store.get_execution("after-race") is not None
    finally:
        store.close()


def test_sqlite_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "squall.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        assert store.is_sqlite
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        store.close()
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


# -- executions -----------------------------------------------------------------------------------

def test_insert_and_get_execution_round_trips_json_and_utc_timestamps(store: Store) -> None:
    start = utcnow()
    record = _execution(
        "abc123", parameters={"cmd": "echo hi", "n": 3}, context={"user": "ann", "pack": "core"},
        runner_info={"hostname": "h", "pid": 42}, start_timestamp=start,
    )
    store.insert_execution(record)
    got = store.get_execution("abc123")
    assert got is not None
    assert got["parameters"] == {"cmd": "echo hi", "n": 3}
    assert got["context"] == {"user": "ann", "pack": "core"}
    assert got["runner_info"] == {"hostname": "h", "pid": 42}
    assert got["start_timestamp"] == start
    assert got["start_timestamp"].utcoffset() == timedelta(0)
    assert got["end_timestamp"] is None
    assert store.get_execution("nope") is None


def test_direct_writes_store_exactly_what_sqlalchemy_core_stores(tmp_path: Path) -> None:
    """SQLite's hot writes bypass Core; the bytes on disk must not depend on which path wrote them."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        fields = {"parameters": {"cmd": "echo é", "n": [1, 2.5, None]}, "result": None, "sealed": None,
                  "runner_info": {"pid": 7}, "context": {"user": "ann", "pack": "core", "flag": True}}
        start = utcnow()
        store.insert_execution(_execution("direct", **fields, start_timestamp=start))
        with store.engine.begin() as conn:
            conn.execute(storage.executions.insert(), _execution("core", **fields, start_timestamp=start))
        finished = {"status": "succeeded", "result": {"stdout": "x\n"}, "end_timestamp": utcnow(), "log": []}
        assert store.update_execution("direct", finished, expect=("requested",))
        with store.engine.begin() as conn:
            conn.execute(storage.executions.update().where(storage.executions.c.id == "core").values(finished))
        store.outbox_add("loopback", "#c", {"text": "hi", "extra": None})
        with store.engine.begin() as conn:
            conn.execute(storage.outbox.insert(), {"adapter": "loopback", "channel": "#c",
                                                   "payload": {"text": "hi", "extra": None}, "status": "pending",
                                                   "attempts": 0, "created_at": utcnow()})
        raw = sqlite3.connect(tmp_path / "s.db")
        direct, core = raw.execute("SELECT * FROM executions ORDER BY id DESC").fetchall()
        assert direct[1:] == core[1:]
        first, second = raw.execute("SELECT adapter, channel, payload, status, attempts FROM outbox").fetchall()
        assert first == second
        raw.close()
        # A claim reads the row back through the same decoding as a Core select.
        store.insert_execution(_execution("claimed", **fields))
        claimed = store.claim_execution("claimed", {"status": "running"}, ("requested",))
        assert claimed == store.get_execution("claimed")
        assert claimed["parameters"] == fields["parameters"] and claimed["start_timestamp"].tzinfo is not None
        # Errors are SQLAlchemy's, as callers expect.
        with pytest.raises(sa.exc.IntegrityError):
            store.insert_execution(_execution("direct"))
    finally:
        store.close()


def test_a_round_of_outbox_marks_updates_each_row_with_its_own_fields(store: Store) -> None:
    """A delivery round's sent marks go as one call (one statement per set of field names on SQLite):
    each row gets its own fields, rows outside the round keep theirs."""
    ids = [store.outbox_add("loopback", "#c", {"text": f"r{n}"}) for n in range(4)]
    sent_at = utcnow()
    store.outbox_update_many([
        (ids[0], {"status": "sent", "attempts": 1, "platform_id": "p0", "sent_at": sent_at, "error": None}),
        (ids[2], {"status": "sent", "platform_id": "p2", "sent_at": sent_at, "error": None}),
        (ids[1], {"status": "sent", "attempts": 2, "platform_id": "p1", "sent_at": sent_at, "error": None}),
    ])
    rows = {row["id"]: row for row in (store.outbox_get(outbox_id) for outbox_id in ids)}
    assert [(rows[i]["status"], rows[i]["platform_id"], rows[i]["attempts"]) for i in ids] == [
        ("sent", "p0", 1), ("sent", "p1", 2), ("sent", "p2", 0), ("pending", None, 0)]
    assert rows[ids[1]]["sent_at"] == sent_at and rows[ids[3]]["sent_at"] is None
    store.outbox_update_many([])  # an empty round changes nothing
    assert [row["id"] for row in store.outbox_pending(["loopback"])] == [ids[3]]


@pytest.mark.postgres
def test_timestamps_read_back_in_utc_whatever_the_server_time_zone(postgres_url: str) -> None:
    with sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://")).connect() as conn:
        name = postgres_url.rsplit("/", 1)[1]
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET timezone TO \'America/New_York\''))
        conn.commit()
    store = Store.open(postgres_url)
    try:
        start = utcnow()
        store.insert_execution(_execution("tz", start_timestamp=start))
        store.kv_put(_kv("tz", "v", expire_at=start + timedelta(hours=1)))
        got = store.get_execution("tz")["start_timestamp"]
        assert got == start
        assert got.utcoffset() == timedelta(0)
        assert store.list_executions()[0]["start_timestamp"].utcoffset() == timedelta(0)
        assert store.kv_get("system", "tz", start)["expire_at"].utcoffset() == timedelta(0)
    finally:
        store.close()


def test_list_executions_filters_and_orders_newest_first(store: Store) -> None:
    base = utcnow()
    rows = [
        ("e1", "core.noop", "succeeded", 1),
        ("e2", "core.local", "failed", 2),
        ("e3", "core.noop", "running", 3),
        ("e4", "core.local", "succeeded", 4),
        ("e5", "core.noop", "succeeded", 5),
    ]
    for execution_id, action, status, minutes in rows:
        store.insert_execution(_execution(execution_id, action=action, status=status,
                                          start_timestamp=base + timedelta(minutes=minutes)))
    store.insert_execution(_execution("child", parent="e3", start_timestamp=base))

    assert [r["id"] for r in store.list_executions()] == ["e5", "e4", "e3", "e2", "e1", "child"]
    assert [r["id"] for r in store.list_executions(action="core.noop")] == ["e5", "e3", "e1", "child"]
    assert [r["id"] for r in store.list_executions(status="succeeded")] == ["e5", "e4", "e1"]
    assert [r["id"] for r in store.list_executions(status=["failed", "running"])] == ["e3", "e2"]
    assert [r["id"] for r in store.list_executions(action="core.local", status="succeeded")] == ["e4"]
    assert [r["id"] for r in store.list_executions(limit=2)] == ["e5", "e4"]
    assert [r["id"] for r in store.list_executions(parent="e3")] == ["child"]
    assert store.list_executions(action="core.nothing") == []


def test_claim_execution_succeeds_once(store: Store) -> None:
    store.insert_execution(_execution("claimme"))
    fields = {"status": "running", "runner_info": {"hostname": "a", "pid": 1}}
    claimed = store.claim_execution("claimme", fields, ("requested", "scheduled"))
    assert claimed is not None
    assert claimed["id"] == "claimme"
    assert claimed["status"] == "running"
    assert claimed["runner_info"] == {"hostname": "a", "pid": 1}
    assert claimed["start_timestamp"].tzinfo is not None

    second = store.claim_execution("claimme", {"status": "running", "runner_info": {"hostname": "b", "pid": 2}},
                                   ("requested", "scheduled"))
    assert second is None
    assert store.get_execution("claimme")["runner_info"] == {"hostname": "a", "pid": 1}
    assert store.claim_execution("missing", fields, ("requested",)) is None


def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    store.insert_execution(_execution("race"))
    barrier = threading.Barrier(6)
    winners: list[int] = []
    errors: list[BaseException] = []

    def claim(n: int) -> None:
        try:
            barrier.wait()
            if store.claim_execution("race", {"status": "running", "runner_info": {"pid": n}}, ("requested",)):
                winners.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(winners) == 1
    assert store.get_execution("race")["runner_info"] == {"pid": winners[0]}


def test_update_execution_with_expect_guards(store: Store) -> None:
    store.insert_execution(_execution("guarded"))
    assert store.update_execution("guarded", {"status": "canceled"}, expect=("running",)) is False
    assert store.get_execution("guarded")["status"] == "requested"
    assert store.update_execution("guarded", {"status": "canceled"}, expect=("requested", "scheduled")) is True
    assert store.get_execution("guarded")["status"] == "canceled"
    # Without expect the update is unconditional.
    assert store.update_execution("guarded", {"result": {"x": 1}}) is True
    assert store.get_execution("guarded")["result"] == {"x": 1}
    assert store.update_execution("absent", {"status": "failed"}) is False


def test_find_executions_by_id_prefix(store: Store) -> None:
    for execution_id in ("aaa111", "aaa222", "abf001", "abcf01", "bbb000", "ac0000"):
        store.insert_execution(_execution(execution_id))
    assert sorted(store.find_executions("aaa")) == ["aaa111", "aaa222"]
    assert store.find_executions("AAA1") == ["aaa111"]  # ids are hex: either case finds them
    assert store.find_executions("bbb000") == ["bbb000"]
    assert store.find_executions("abf") == ["abf001"] and store.find_executions("abc") == ["abcf01"]
    assert store.find_executions("ab") == ["abcf01", "abf001"]  # "ab" < id < "ac": not "ac0000"
    assert store.find_executions("fff") == []
    # Ids are hexadecimal: anything else (LIKE's `_` and `%`, a 60,000-character prefix) is not queried.
    assert store.find_executions("abc_") == [] and store.find_executions("a%") == []
    assert store.find_executions("a" * 60_000) == []
    assert len(store.find_executions("a", limit=2)) == 2


def test_execution_ids_with_status(store: Store) -> None:
    base = utcnow()
    store.insert_execution(_execution("r1", status="requested", start_timestamp=base))
    store.insert_execution(_execution("x1", status="running", runner_info={"hostname": "h", "pid": 5},
                                      start_timestamp=base + timedelta(seconds=1)))
    store.insert_execution(_execution("s1", status="succeeded"))
    rows = store.execution_ids_with_status(("requested", "running"))
    assert [(r["id"], r["status"]) for r in rows] == [("r1", "requested"), ("x1", "running")]
    assert rows[1]["runner_info"] == {"hostname": "h", "pid": 5}


def test_delayed_on_a_clock_are_the_top_level_delayed_rows_with_a_delayed_until(store: Store) -> None:
    """The poll's look for retries and `--delay` runs another process stored (`ExecutionService.poll`): not a
    concurrency policy's backlog (no `delayed_until`), nor a workflow's delayed task (its conductor's)."""
    base = utcnow()
    until = {"delayed_until": "2026-01-01T00:00:00Z"}
    store.insert_execution(_execution("retry", status="delayed", runner_info=until, start_timestamp=base))
    store.insert_execution(_execution("policy", status="delayed", start_timestamp=base + timedelta(seconds=1)))
    store.insert_execution(_execution("task", status="delayed", runner_info=until, parent="retry",
                                      start_timestamp=base + timedelta(seconds=2)))
    store.insert_execution(_execution("later", status="delayed", runner_info={**until, "hostname": "h"},
                                      start_timestamp=base + timedelta(seconds=3)))
    store.insert_execution(_execution("done", status="succeeded", runner_info=until))
    rows = store.delayed_on_a_clock()
    assert [r["id"] for r in rows] == ["retry", "later"]
    assert rows[0]["runner_info"] == until


def test_the_top_level_count_leaves_out_children_alone_or_with_other_filters(store: Store) -> None:
    """`parent=null` alone is counted as every execution less the children (migration 0023); with a
    user, on the user's index, which holds the parent. Both count what the list holds."""
    base = utcnow()
    for number, user in enumerate(("alice", "bob", "alice", "carol", "alice")):
        store.insert_execution(_execution(f"top{number}", context={"user": user},
                                          start_timestamp=base + timedelta(seconds=number)))
    for number, user in enumerate(("alice", "alice", "alice", "bob")):
        store.insert_execution(_execution(f"task{number}", context={"user": user}, parent="top0",
                                          start_timestamp=base + timedelta(seconds=10 + number)))
    rows, total = store.page_executions(limit=2, parent="null")
    assert total == 5 and [r["id"] for r in rows] == ["top4", "top3"]
    assert store.page_executions(limit=50, parent="null", user="alice")[1] == 3
    assert store.page_executions(limit=50, user="alice")[1] == 6
    assert store.page_executions(limit=50, parent="null", status="requested")[1] == 5
    assert store.page_executions(limit=50, parent="top0")[1] == 4
    assert store.page_executions(limit=50)[1] == 9


def _pages(store: Store, where: ExecutionFilter, limit: int) -> list[str]:
    """Every id of `where`'s keyset pages, each page started below the last one's last id."""
    listed: list[str] = []
    while page := store.execution_keyset(where, before=listed[-1] if listed else None, limit=limit):
        listed += [row["id"] for row in page]
    return listed


def _newest_first(rows: list[dict[str, Any]], keep: Any) -> list[str]:
    kept = [row for row in rows if keep(row) and row["parent"] is None]
    return [row["id"] for row in sorted(kept, key=lambda row: (row["start_timestamp"], row["id"]), reverse=True)]


def test_a_pack_is_listed_newest_first_across_its_actions_page_by_page(store: Store,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack's page is the pages of its actions merged (SQLite, migration 0023): newest first across
    actions, ties broken by id, every execution once over keyset pages; with another filter; and the
    same read on the time index when the pack has more actions than are read apart."""
    base = utcnow()
    actions = ("demo.a", "demo.b", "demo.c", "demonic.x", "other.y")
    rows = [_execution(f"e{number:03}", action=actions[number % 5] if number % 7 else "demo.c",
                       context={"user": "alice" if number % 2 else "bob"},
                       parent="e001" if number % 11 == 0 else None,
                       start_timestamp=base + timedelta(seconds=number // 3))  # three at each instant
            for number in range(1, 60)]
    for row in rows:
        store.insert_execution(row)
    in_demo = _newest_first(rows, lambda row: row["action"].startswith("demo."))
    assert len(in_demo) > 20 and _pages(store, ExecutionFilter(pack="demo"), 4) == in_demo
    assert _pages(store, ExecutionFilter(pack="demo", user="alice"), 3) == _newest_first(
        rows, lambda row: row["action"].startswith("demo.") and row["context"]["user"] == "alice")
    assert _pages(store, ExecutionFilter(pack="demo", top_level=False), 5) == [
        row["id"] for row in sorted((row for row in rows if row["action"].startswith("demo.")),
                                    key=lambda row: (row["start_timestamp"], row["id"]), reverse=True)]
    assert store.execution_keyset(ExecutionFilter(pack="none")) == []
    monkeypatch.setattr(storage, "PACK_ACTIONS_READ_APART", 2)
    assert _pages(store, ExecutionFilter(pack="demo"), 4) == in_demo


def test_the_source_channel_and_status_filters_page_newest_first(store: Store) -> None:
    """Read from their indexes on SQLite (migration 0023): the source's holds no chat execution, the
    chat channel's names the adapter last (a channel of two adapters is listed whole), the status's
    holds the start and id. Each lists newest first, every row once over keyset pages."""
    base = utcnow()
    contexts = [{"user": "u", "source": "chat", "chat": {"adapter": "slack", "channel": "#ops"}},
                {"user": "u", "source": "chat", "chat": {"adapter": "irc", "channel": "#ops"}},
                {"user": "w", "source": "web", "chat": {"adapter": "slack", "channel": "#ops"}},  # a re-run
                {"user": "w", "source": "web"}, {"user": "a", "source": "api"}, {"user": "squall"}]
    rows = [_execution(f"e{number:03}", context=contexts[number % 6], status=("succeeded", "failed")[number % 4 == 0],
                       start_timestamp=base + timedelta(seconds=number // 2)) for number in range(1, 50)]
    for row in rows:
        store.insert_execution(row)
    for source in ("chat", "web", "api", "cli"):
        assert _pages(store, ExecutionFilter(source=source), 3) == _newest_first(
            rows, lambda row, source=source: row["context"].get("source") == source), source
    assert _pages(store, ExecutionFilter(channel="#ops"), 4) == _newest_first(
        rows, lambda row: row["context"].get("chat", {}).get("channel") == "#ops")
    assert _pages(store, ExecutionFilter(channel="#ops", source="web"), 2) == _newest_first(
        rows, lambda row: "chat" in row["context"] and row["context"]["source"] == "web")
    assert _pages(store, ExecutionFilter(status="failed"), 3) == _newest_first(
        rows, lambda row: row["status"] == "failed")
    assert [row["id"] for row in store.chat_executions("irc", "#ops")] == _newest_first(
        rows, lambda row: row["context"].get("chat", {}).get("adapter") == "irc")[:10]


# -- key-value pairs ------------------------------------------------------------------------------

def test_kv_put_get_list_delete(store: Store) -> None:
    now = utcnow()
    assert store.kv_put(_kv("alpha", "1")) is None
    store.kv_put(_kv("beta", "2"))
    store.kv_put(_kv("ann:gamma", "3", scope="user"))
    assert store.kv_get("system", "alpha", now)["value"] == "1"
    assert store.kv_get("user", "alpha", now) is None
    assert store.kv_get("user", "ann:gamma", now)["value"] == "3"

    previous = store.kv_put(_kv("alpha", "one"))
    assert previous is not None and previous["value"] == "1"
    assert store.kv_get("system", "alpha", now)["value"] == "one"

    assert [(r["scope"], r["name"]) for r in store.kv_list(None, None, now)] == [
        ("system", "alpha"), ("system", "beta"), ("user", "ann:gamma")]
    assert [r["name"] for r in store.kv_list("system", None, now)] == ["alpha", "beta"]
    assert [r["name"] for r in store.kv_list("system", "al", now)] == ["alpha"]
    assert [r["name"] for r in store.kv_list(None, None, now, limit=1)] == ["alpha"]

    assert store.kv_delete("system", "alpha") is True
    assert store.kv_delete("system", "alpha") is False
    assert store.kv_get("system", "alpha", now) is None
    assert [r["name"] for r in store.kv_list("system", None, now)] == ["beta"]


def test_kv_list_prefix_is_literal(store: Store) -> None:
    now = utcnow()
    store.kv_put(_kv("a_b", "1"))
    store.kv_put(_kv("axb", "2"))
    store.kv_put(_kv("a%c", "3"))
    assert [r["name"] for r in store.kv_list("system", "a_", now)] == ["a_b"]
    assert [r["name"] for r in store.kv_list("system", "a%", now)] == ["a%c"]


def test_expired_key_is_invisible_at_once_and_purged(store: Store) -> None:
    now = utcnow()
    store.kv_put(_kv("fresh", "f", expire_at=now + timedelta(hours=1)))
    store.kv_put(_kv("stale", "s", expire_at=now - timedelta(seconds=1)))
    store.kv_put(_kv("forever", "x"))

    assert store.kv_get("system", "stale", now) is None
    assert store.kv_get("system", "fresh", now)["value"] == "f"
    assert store.kv_get("system", "fresh", now)["expire_at"] == now + timedelta(hours=1)
    assert [r["name"] for r in store.kv_list("system", None, now)] == ["forever", "fresh"]
    # The moment a key's time is up it is gone, before any purge runs.
    later = now + timedelta(hours=2)
    assert store.kv_get("system", "fresh", later) is None
    assert [r["name"] for r in store.kv_list(None, None, later)] == ["forever"]

    assert store.kv_purge_expired(now) == 1
    with store.engine.connect() as conn:
        names = conn.execute(sa.select(storage.kv_pairs.c.name).order_by(storage.kv_pairs.c.name)).scalars().all()
    assert names == ["forever", "fresh"]
    assert store.kv_purge_expired(later) == 1
    assert store.kv_purge_expired(later) == 0


def test_kv_put_over_an_expired_key_reports_no_previous_value(store: Store) -> None:
    now = utcnow()
    store.kv_put(_kv("k", "old", expire_at=now - timedelta(seconds=5)))
    assert store.kv_put(_kv("k", "new")) is None
    got = store.kv_get("system", "k", utcnow())
    assert got["value"] == "new"
    assert got["expire_at"] is None


def test_concurrent_kv_puts_of_one_new_key_all_succeed(store: Store) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def put(n: int) -> None:
        try:
            barrier.wait()
            store.kv_put(_kv("contested", str(n)))
        except BaseException as exc:
            errors.append(exc)

    for _round in range(3):
        store.kv_delete("system", "contested")
        threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert store.kv_get("system", "contested", utcnow())["value"] in {str(n) for n in range(8)}


async def test_database_calls_return_results_and_errors(store: Store) -> None:
    db = Database(store)
    try:
        assert await db(store.kv_put, _kv("via-db", "v")) is None
        got = await db(store.kv_get, "system", "via-db", now=utcnow())
        assert got["value"] == "v"
        with pytest.raises(ValueError, match="mine"):
            await db(_raise, ValueError("mine"))
    finally:
        db.close()


def _raise(exc: Exception) -> None:
    raise exc


async def test_a_firm_call_s_waiter_cancelled_meanwhile_still_reads_its_outcome(store: Store) -> None:
    """`submit_firm` (an execution's claim): cancelling the task that awaits it cancels neither the
    call nor its future; the task's CancelledError comes once the call is committed, and the task
    reads what it did."""
    db = Database(store)
    seen: list[Any] = []

    async def claimer() -> None:
        call = db.submit_firm(store.kv_put, _kv("firm", "v"))
        try:
            await call
        except asyncio.CancelledError:
            seen.append(("cancelled after the call", call.done(), call.result()))
            raise

    try:
        task = asyncio.ensure_future(claimer())
        await asyncio.sleep(0)  # the call is queued, not yet run
        assert task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == [("cancelled after the call", True, None)]
        assert (await db(store.kv_get, "system", "firm", now=utcnow()))["value"] == "v"
        # A plain call's future is cancelled with its waiter (what `submit_firm` is for).
        plain = db.submit(store.kv_put, _kv("plain", "v"))
        assert plain.cancel() and plain.cancelled()
        firm = db.submit_firm(store.kv_put, _kv("firm-2", "v"))
        assert not firm.cancel() and (await firm) is None
    finally:
        db.close()


@pytest.mark.postgres
async def test_postgres_calls_run_off_the_event_loop_thread(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    db = Database(store)
    try:
        assert await db(threading.get_ident) != threading.get_ident()
    finally:
        db.close()
        store.close()


async def test_sqlite_lock_held_elsewhere_never_stalls_the_event_loop(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock: the write waits on the database thread while
    the event loop keeps running, and lands once the lock is released."""
    store = Store.open(f"sqlite:///{tmp_path / 'locked.db'}")
    db = Database(store)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # takes the write lock, as a CLI writing would
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(heartbeat())
        write = asyncio.create_task(db(store.kv_put, _kv("after-lock", "v")))
        await asyncio.sleep(0.5)
        assert not write.done()
        assert ticks >= 10  # the loop ran while the write waited
        holder.execute("COMMIT")
        await asyncio.wait_for(write, 10)
        beat.cancel()
        assert store.kv_get("system", "after-lock", utcnow())["value"] == "v"
    finally:
        holder.close()
        db.close()
        store.close()


async def test_calls_queued_behind_a_lock_held_elsewhere_come_back_to_the_loop(tmp_path: Path) -> None:
    """A lock held by another connection sends the loop's group to the database thread, which waits
    for it. Once that group is committed, the calls that queued behind it run in the loop's own
    transactions again, in their order: left on the thread, a steady stream of calls kept its queue
    from ever emptying, and the chat paid the thread's hand-offs for as long as the stream lasted."""
    store = Store.open(f"sqlite:///{tmp_path / 'locked.db'}")
    db = Database(store)
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    ran: list[tuple[str, int]] = []

    def write(name: str) -> None:
        store.kv_put(_kv(name, "v"))
        ran.append((name, threading.get_ident()))

    try:
        holder.execute("BEGIN IMMEDIATE")  # as a CLI writing would
        first = db.submit(write, "first")
        await asyncio.sleep(0.2)  # its group found the lock held: it waits on the database thread
        assert not first.done()
        queued = [db.submit(write, f"queued{n}") for n in range(3)]
        holder.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(first, *queued), 10)
        await db(write, "after")
        assert [name for name, _thread in ran] == ["first", "queued0", "queued1", "queued2", "after"]
        threads = dict(ran)
        assert threads["first"] != threading.get_ident()
        assert {name for name, thread in ran if thread == threading.get_ident()} == {
            "queued0", "queued1", "queued2", "after"}
        assert {row["name"] for row in store.kv_list("system", "", utcnow())} == {name for name, _ in ran}
    finally:
        holder.close()
        db.close()
        store.close()


async def test_a_wal_that_never_gets_a_quiet_moment_is_restarted(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes back to back leave every PASSIVE checkpoint behind, so the WAL would grow for as long as
    they last (an alert storm filling the disk); past WAL_RESTART_BYTES the checkpoint restarts it
    and the writes go over its start again. Nothing written is lost."""
    monkeypatch.setattr(storage, "CHECKPOINT_SECONDS", 0.01)
    monkeypatch.setattr(storage, "WAL_RESTART_BYTES", 256 << 10)
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    wal = tmp_path / "s.db-wal"
    largest = 0
    try:
        for n in range(3000):  # ~36 MB of WAL if it never started over
            await db(store.audit_add, "bench", "me", "test", None, {"n": n, "pad": "x" * 500})
            largest = max(largest, wal.stat().st_size)
        assert largest < 8 << 20, f"the WAL grew to {largest:,} bytes"
        assert len(await db(store.audit_list, 5000)) == 3000
    finally:
        db.close()
        store.close()


async def test_a_wal_whose_checkpoint_thread_never_wakes_is_cut_by_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With both cores busy the checkpoint thread may wake late, while the writes go on: past
    WAL_RUNAWAY_FACTOR times the bound the loop's own connection cuts the WAL between its commits.
    Here the thread never checkpoints at all (due in an hour), so only that backstop bounds the file."""
    monkeypatch.setattr(storage, "CHECKPOINT_SECONDS", 3600)
    monkeypatch.setattr(storage, "WAL_RESTART_BYTES", 256 << 10)
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    wal = tmp_path / "s.db-wal"
    largest = 0
    try:
        for n in range(1500):  # ~18 MB of WAL if nothing restarted it
            await db(store.audit_add, "bench", "me", "test", None, {"n": n, "pad": "x" * 500})
            largest = max(largest, wal.stat().st_size)
        # looked at every WAL_LOOK_EVERY groups: a commit here writes ~10 KB of WAL
        bound = storage.WAL_RUNAWAY_FACTOR * (256 << 10) + storage.WAL_LOOK_EVERY * (16 << 10)
        assert largest < bound, f"the WAL grew to {largest:,} bytes"
        assert len(await db(store.audit_list, 5000)) == 1500
    finally:
        db.close()
        store.close()


async def test_a_failing_wal_checkpoint_is_said_once_an_outage_in_the_drivers_words(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint that fails (a full disk) is tried again after the next writes, about once a second for
    the whole outage: one warning when it starts failing, without SQLAlchemy's statement and link lines,
    and one line when it works again."""
    monkeypatch.setattr(storage, "CHECKPOINT_SECONDS", 0.01)
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    failing = True
    checkpoint = store.checkpoint

    def full_disk() -> None:
        if failing:
            raise sa.exc.OperationalError("PRAGMA wal_checkpoint(PASSIVE)", None,
                                          sqlite3.OperationalError("database or disk is full"))
        checkpoint()

    monkeypatch.setattr(store, "checkpoint", full_disk)
    caplog.set_level(logging.INFO, logger="engine.storage")
    try:
        for n in range(5):
            await db(store.audit_add, "bench", "me", "test", None, {"n": n})
            await asyncio.sleep(0.05)
        failing = False
        for n in range(3):
            await db(store.audit_add, "bench", "me", "test", None, {"n": n})
            await asyncio.sleep(0.05)
    finally:
        db.close()
        store.close()
    said = [r for r in caplog.records if "checkpoint" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.INFO], [r.getMessage() for r in said]
    assert "database or disk is full" in said[0].getMessage()
    assert "\n" not in said[0].getMessage() and "PRAGMA" not in said[0].getMessage()


@pytest.mark.parametrize("nowait", [True, False])
def test_an_isolated_first_call_commits_with_its_group_not_before(tmp_path: Path, nowait: bool) -> None:
    """On SQLite a SAVEPOINT outside a transaction begins one, and its RELEASE commits it: an isolated call
    first in a group (a request stored with its audit event) was committed at once, apart from the group.
    A group that then failed (another process's lock: the group runs again on the thread) kept it, so
    it was stored twice, or stored though its caller was told it failed."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        with pytest.raises(RuntimeError), (store.batch_without_waiting() if nowait else store.batch()):
            with store.isolated():
                store.audit_add("first", "me", "test", None, {})
            store.audit_add("second", "me", "test", None, {})
            raise RuntimeError("the group fails after both")
        assert [row["event"] for row in store.audit_list(10)] == []
        with store.batch_without_waiting() if nowait else store.batch(), store.isolated():
            store.audit_add("kept", "me", "test", None, {})
        assert [row["event"] for row in store.audit_list(10)] == ["kept"]
    finally:
        store.close()


async def test_database_batches_isolate_a_failing_call(store: Store) -> None:
    """Calls that share one group commit: one failing does not undo or fail the others."""
    db = Database(store)
    try:
        store.insert_execution(_execution("taken"))

        def boom() -> None:
            raise ValueError("this call fails on its own")

        calls = []
        for n in range(30):
            if n % 10 == 3:
                calls.append(db(store.insert_execution, _execution("taken")))  # duplicate primary key
            elif n % 10 == 7:
                calls.append(db(boom))
            else:
                calls.append(db(store.insert_execution, _execution(f"ok{n:02d}")))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for n, outcome in enumerate(outcomes):
            if n % 10 == 3:
                assert isinstance(outcome, sa.exc.IntegrityError), (n, outcome)
            elif n % 10 == 7:
                assert isinstance(outcome, ValueError), (n, outcome)
            else:
                assert outcome is None, (n, outcome)
        expected = {f"ok{n:02d}" for n in range(30) if n % 10 not in (3, 7)} | {"taken"}
        assert {r["id"] for r in store.list_executions(limit=100)} == expected
        # And the database thread is still serving.
        assert (await db(store.get_execution, "ok00"))["id"] == "ok00"
    finally:
        db.close()


async def test_database_reports_writes_only_once_they_are_committed(database_url: str) -> None:
    store = Store.open(database_url)
    db = Database(store)
    try:
        results = await asyncio.gather(*(db(store.kv_put, _kv(f"k{n}", str(n))) for n in range(20)))
        assert results == [None] * 20
        # Another connection (another process, in production) sees every acknowledged write.
        other = Store.open(database_url)
        try:
            assert len(other.kv_list("system", "k", utcnow())) == 20
        finally:
            other.close()
    finally:
        db.close()
        store.close()


# -- the whole service on PostgreSQL --------------------------------------------------------------

@pytest.mark.postgres
async def test_execution_service_runs_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    (tmp_path / "packs").mkdir()
    write(tmp_path / "config.yml", f"""
        database:
          url: {postgres_url}
        packs:
          paths: [packs]
    """)
    config = load_config(tmp_path / "config.yml")
    assert config.database_url == postgres_url
    app = await Squall.start(config)
    try:
        assert not app.store.is_sqlite
        noop = await app.executions.request("core.noop")
        local = await app.executions.request("core.local", {"cmd": "echo pg-$((6*7))"})
        failing = await app.executions.request("core.local", {"cmd": "exit 3"})
        done_noop = await app.executions.wait(noop["id"], timeout=30)
        done_local = await app.executions.wait(local["id"], timeout=30)
        done_failing = await app.executions.wait(failing["id"], timeout=30)
        assert done_noop["status"] == "succeeded"
        assert done_local["status"] == "succeeded"
        assert done_local["result"]["stdout"] == "pg-42"
        assert done_failing["status"] == "failed"
        assert done_failing["result"]["return_code"] == 3
        assert [e["status"] for e in done_local["log"]] == ["requested", "scheduled", "running", "succeeded"]

        listed = await app.executions.list(action="core.local")
        assert [r["id"] for r in listed] == [failing["id"], local["id"]]
        assert (await app.executions.get(local["id"][:18]))["id"] == local["id"]

        await app.db(app.datastore.set, "pg_key", "pg_value", encrypt=True)
        record = await app.db(app.datastore.get, "pg_key", decrypt=True)
        assert record["value"] == "pg_value"
    finally:
        await app.close()
    # The rows are really in PostgreSQL.
    reopened = Store.open(postgres_url)
    try:
        assert reopened.get_execution(local["id"])["status"] == "succeeded"
    finally:
        reopened.close()


def test_the_fast_schema_check_knows_the_newest_migration() -> None:
    """`migrate` skips Alembic when the database is at `HEAD_REVISION`: it must be Alembic's head."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(storage._MIGRATIONS))
    assert storage.HEAD_REVISION == ScriptDirectory.from_config(config).get_current_head() == HEAD


def _sqlite_schema(path: Path) -> dict[str, Any]:
    """Every table's columns, indexes and foreign keys as SQLite reports them, and the DDL of each
    table and index (spacing and quoting aside)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        schema: dict[str, Any] = {}
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"):
            ddl = re.sub(r"\s*([(),])\s*", r"\1", re.sub(r"\s+", " ", sql).replace('"', "")).strip()
            schema[f"ddl {name}"] = ddl
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            indexes = [(row[1], row[2], row[3], row[4], [c[2] for c in conn.execute(f"PRAGMA index_info('{row[1]}')")])
                       for row in conn.execute(f"PRAGMA index_list('{table}')")]
            schema[f"table {table}"] = ([row[1:] for row in conn.execute(f"PRAGMA table_info('{table}')")],
                                        sorted(indexes),
                                        sorted(row[2:] for row in conn.execute(f"PRAGMA foreign_key_list('{table}')")))
        return schema


def test_a_new_sqlite_database_has_the_migrated_schema(tmp_path: Path) -> None:
    """A new SQLite database is made from the tables' declarations at once, stamped with the head
    revision, instead of by Alembic's revisions one by one: both must give the same schema, or the
    next revision would find a database it was not written for."""
    made, migrated = tmp_path / "made.db", tmp_path / "migrated.db"
    engines = [sa.create_engine(f"sqlite:///{path}") for path in (made, migrated, made)]
    try:
        storage.migrate(engines[0])
        storage._upgrade(engines[1])
        assert _sqlite_schema(made) == _sqlite_schema(migrated)
        with contextlib.closing(sqlite3.connect(made)) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        storage.migrate(engines[2])  # a database that has tables is left to Alembic (current: one query)
        assert _sqlite_schema(made) == _sqlite_schema(migrated)
    finally:
        for engine in engines:
            engine.dispose()


async def test_the_loop_s_commits_leave_checkpoints_to_their_own_thread(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's connection never checkpoints (a checkpoint inside a commit stalled it); the
    Database's checkpointer keeps the WAL from growing with every write."""
    monkeypatch.setattr(storage, "CHECKPOINT_SECONDS", 0.02)
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    checkpoints = []
    checkpoint = store.checkpoint
    monkeypatch.setattr(store, "checkpoint", lambda: checkpoints.append(1) or checkpoint())
    wal = tmp_path / "s.db-wal"
    sizes = []
    try:
        for _round in range(5):
            for n in range(200):
                await db(store.audit_add, "bench", "me", "test", None, {"n": n, "pad": "x" * 500})
            await asyncio.sleep(0.2)  # the checkpoint runs meanwhile
            sizes.append(wal.stat().st_size)
        with sqlite3.connect(tmp_path / "s.db") as conn:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # other connections: as ever
        assert checkpoints  # on its own thread, after the loop's commits
        assert sizes[-1] <= sizes[0] * 1.5, sizes  # reused, not grown: 1,000 rows of 500 bytes would be ~5x
        assert len(await db(store.audit_list, 2000)) == 1000
    finally:
        db.close()
        store.close()


def test_a_delivery_is_stored_once_until_it_expires(database_url: str) -> None:
    """A delivery key (a signed webhook request) stores one trigger instance until it expires, across
    processes and restarts; refused inside a group commit, it spoils none of the group's other writes."""
    def instance() -> dict[str, Any]:
        return {"id": new_id(), "trigger": "core.st2.webhook", "payload": {"n": 1}, "occurrence_time": utcnow(),
                "status": "pending", "trace_tag": None, "trigger_parameters": None}

    soon = utcnow() + timedelta(minutes=5)
    first = instance()
    store = Store.open(database_url)
    store.trigger_instance_add(first, ("webhook one", soon))
    store.close()
    store = Store.open(database_url)  # another process, or the same after a restart
    try:
        with pytest.raises(DuplicateDelivery) as refused:
            store.trigger_instance_add(instance(), ("webhook one", soon))
        assert refused.value.instance_id == first["id"]
        before, after = instance(), instance()
        with store.batch():
            store.trigger_instance_add(before, ("webhook two", soon))
            with pytest.raises(DuplicateDelivery):
                store.trigger_instance_add(instance(), ("webhook one", soon))
            store.trigger_instance_add(after)
        stored = {row["id"] for row in store.trigger_instance_list("core.st2.webhook", limit=100)}
        assert stored == {first["id"], before["id"], after["id"]}

        expired = instance()
        store.trigger_instance_add(expired, ("webhook old", utcnow() - timedelta(seconds=1)))
        again = instance()
        store.trigger_instance_add(again, ("webhook old", soon))  # its first delivery expired: a new one
        assert store.deliveries_purge_expired(utcnow() + timedelta(minutes=10)) == 3
        store.trigger_instance_add(instance(), ("webhook one", soon))  # purged: accepted again
    finally:
        store.close()


@pytest.mark.skipif(not writeback.available(), reason="sync_file_range is Linux's")
async def test_the_wal_is_written_back_ahead_of_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the loop's commits the kernel is asked to start writing the WAL to disk, off the loop and
    at most every WRITEBACK_SECONDS, so the checkpoint's fsync (which holds up the loop's next
    commits while it runs) has little left to write."""
    monkeypatch.setattr(storage, "WRITEBACK_SECONDS", 0.05)
    started: list[tuple[str, bool, str]] = []
    start = writeback.start
    monkeypatch.setattr(writeback, "start", lambda path: started.append(
        (path, start(path), threading.current_thread().name)))
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    try:
        began = time.monotonic()
        for _round in range(3):
            for n in range(50):
                await db(store.audit_add, "bench", "me", "test", None, {"n": n})
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - began
        assert started, "no write-back was started"
        assert {(path, ok) for path, ok, _thread in started} == {(f"{tmp_path}/s.db-wal", True)}
        assert all(thread.startswith("squall-checkpoint") for _path, _ok, thread in started)
        assert len(started) <= 1 + elapsed / 0.05  # 150 commits: at most one write-back a WRITEBACK_SECONDS
    finally:
        db.close()
        store.close()
    assert not writeback.start(f"{tmp_path}/missing-wal")


async def test_a_deferred_call_rides_with_the_next_group_or_goes_alone(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`Database.later` (an outbox row marked sent): no commit of its own while other calls come,
    its own within LATER_SECONDS when none do, and never left behind at close."""
    import contextlib

    monkeypatch.setattr(storage, "LATER_SECONDS", 0.2)
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    groups: list[int] = []

    def counting(transaction: Any) -> Any:
        @contextlib.contextmanager
        def counted():
            groups.append(1)
            with transaction():
                yield
        return counted

    # A group is one transaction, on the loop's connection or (if its lock is taken) the thread's.
    monkeypatch.setattr(store, "batch", counting(store.batch))
    monkeypatch.setattr(store, "batch_without_waiting", counting(store.batch_without_waiting))
    rode = db.later(store.audit_add, "deferred", None, None, None, {})
    await db(store.audit_add, "now", None, None, None, {})
    assert rode.done() and len(groups) == 1  # one transaction for both
    alone = db.later(store.audit_add, "alone", None, None, None, {})
    await asyncio.sleep(0.05)
    assert not alone.done()
    await asyncio.wait_for(alone, 1)
    assert len(groups) == 2
    last = db.later(store.audit_add, "at-close", None, None, None, {})
    db.close()
    assert last.done() and last.exception() is None
    assert sorted(row["event"] for row in store.audit_list()) == ["alone", "at-close", "deferred", "now"]
    store.close()


async def test_deferred_items_of_one_kind_go_in_one_call_per_group(tmp_path: Path) -> None:
    """`Database.later_together` (a delivery round's sent marks): items queued before the deferred
    calls go out share one call and its future; an item queued after that starts the next call."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    db = Database(store)
    calls: list[list[str]] = []

    def record(events: list[str]) -> int:
        calls.append(list(events))
        for event in events:
            store.audit_add(event, None, None, None, {})
        return len(events)

    first = db.later_together(record, "a")
    assert db.later_together(record, "b") is first
    await db(store.audit_add, "group", None, None, None, {})  # the deferred call rides with this group
    assert first.done() and first.result() == 2
    second = db.later_together(record, "c")
    assert second is not first
    await asyncio.wait_for(second, 1)  # alone, within LATER_SECONDS
    assert calls == [["a", "b"], ["c"]]
    assert sorted(row["event"] for row in store.audit_list()) == ["a", "b", "c", "group"]
    db.close()
    store.close()


class _Text(str):
    pass


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**70, -(2**64), 1.5, 1e300, 5e-324, "x", "é✓\n\"\\", "\ud800", _Text("sub"),
    [], {}, (1, 2), {"a": [1, {"b": None}], "é": "ü"}, {1: "int key", 2.5: "f", False: "b", None: "n"},
    {"log": [{"status": "requested", "timestamp": "2026-12-03T05:00:00Z"}], "runner_info": {"pid": 1}},
    functools.reduce(lambda inner, _: [inner], range(360), 0),

])
def test_the_hot_json_encoder_stores_what_json_dumps_stores(value: Any) -> None:
    """Another text (orjson's, compact) that reads back as `json.dumps`'s does, exact big integers,
    non-string keys and 360 levels of nesting (orjson's limit is 255) included."""
    import json

    stored = storage.json_dumps()(value)
    assert isinstance(stored, str)
    assert json.loads(stored) == json.loads(json.dumps(value))


def test_the_hot_json_encoder_writes_orjsons_text_and_null_for_nan() -> None:
    """The common case goes through orjson (the speed is the point); NaN and the infinities, which
    `json.dumps` wrote as `NaN`/`Infinity` that PostgreSQL, SQLite's JSON functions and the API's
    encoder all refuse, are stored as null."""
    dumps = storage.json_dumps()
    assert dumps({"a": [1, {"b": None}], "é": "ü"}) == '{"a":[1,{"b":null}],"é":"ü"}'
    assert dumps({"result": float("nan"), "up": float("inf"), "down": float("-inf")}) == \
        '{"result":null,"up":null,"down":null}'


def test_the_hot_json_encoder_refuses_what_json_dumps_refuses() -> None:
    dumps = storage.json_dumps()
    for bad in (object(), {"set": {1, 2}}, {(1, 2): "tuple key"}):
        with pytest.raises(TypeError):
            dumps(bad)
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular"):
        dumps(circular)
    assert dumps({"after": "a refusal"}) == '{"after":"a refusal"}'  # nothing left over from the failures


def test_times_are_written_as_isoformat_and_sqlalchemy_write_them() -> None:
    """`iso` and the hot writes' DATETIME binds format times themselves (fast, a second's text kept);
    they must read exactly as `isoformat` with a `Z`, and as SQLAlchemy's SQLite processor stores them."""
    dialect = sqlite_dialect()
    reference = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    stored = storage._stored_datetime(reference)
    offset = timezone(timedelta(hours=2))
    now = utcnow()
    for value in (now, now, now.replace(microsecond=0), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                  datetime(1, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=UTC),
                  datetime(2026, 1, 2, 3, 4, 5, 7), datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=offset)):
        assert iso(value) == value.isoformat().replace("+00:00", "Z")
        assert stored(value) == reference(value)
    assert iso(None) is None and stored(None) is None
    assert stored(date(2026, 1, 2)) == reference(date(2026, 1, 2))



def test_a_database_a_newer_squall_migrated_is_refused_in_one_line(tmp_path: Path) -> None:
    """Rolling Squall back after an upgrade: the database's revision is one this Squall does not know. Each
    command said it in ~110 lines of Alembic traceback and exit 1 ("the action failed"); now one line, exit 3,
    before anything is written."""
    import sqlite3
    import subprocess
    import sys

    write(tmp_path / "config.yml", "database: {url: 'sqlite:///data/squall.db'}\n")
    Store.open(f"sqlite:///{tmp_path / 'data' / 'squall.db'}").close()
    with sqlite3.connect(tmp_path / "data" / "squall.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    done = subprocess.run([str(Path(sys.executable).parent / "squall"), "-c", str(tmp_path / "config.yml"),
                           "execution", "list"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("error: the database's schema is at revision 9999_from_the_future, newer than "
                                  "this Squall knows"), done.stderr
    assert len(done.stderr.strip().splitlines()) <= 3 and "Traceback" not in done.stderr
    with sqlite3.connect(tmp_path / "data" / "squall.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999_from_the_future",)]


def test_an_upgrade_is_said_in_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An operator has a record of when the schema changed, and from what: older Squalls cannot open it after."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'squall.db'}"
    Store.open(url).close()
    with sqlite3.connect(tmp_path / "squall.db") as conn:  # as a database 0024 left: its newest table undone
        conn.execute("DROP TABLE serve_nodes")
        conn.execute("UPDATE alembic_version SET version_num = '0023'")
    with caplog.at_level(logging.WARNING, logger="engine.storage"):
        Store.open(url).close()
    said = [r.getMessage() for r in caplog.records if "upgrading the database's schema" in r.getMessage()]
    assert said == [f"upgrading the database's schema from revision 0023 to {HEAD}: a Squall older than "
                    "this one cannot use it afterwards"]


def _as_0023_left_it(database: Path) -> None:
    """A current database put back to revision 0023, as a Squall of that revision left it."""
    with sqlite3.connect(database) as conn:
        conn.execute("DROP TABLE serve_nodes")
        conn.execute("UPDATE alembic_version SET version_num = '0023'")


@contextlib.contextmanager
def _leading(database: Path) -> Iterator[subprocess.Popen[str]]:
    """A process of its own holding the lead on `database`, as every `squall serve` takes it, until the end."""
    leading = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path; from engine.leader import FileLock; "
         f"assert FileLock(Path({str(database) + '.leader'!r})).lead(); print('leads', flush=True); time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert leading.stdout is not None and leading.stdout.readline() == "leads\n"
        yield leading
    finally:
        leading.kill()
        leading.wait()


def test_a_cli_command_never_upgrades_a_database_an_older_serve_runs_on(tmp_path: Path) -> None:
    """The package was upgraded and `squall serve` not restarted yet: a CLI command of the new version upgraded
    the schema under the running service, which then could not start again (nor could its CLI). It is refused
    in one line, exit 3, nothing written; with no service leading, the command upgrades it as before."""
    write(tmp_path / "config.yml", "database: {url: 'sqlite:///data/squall.db'}\n")
    database = tmp_path / "data" / "squall.db"
    Store.open(f"sqlite:///{database}").close()
    _as_0023_left_it(database)
    squall = [str(Path(sys.executable).parent / "squall"), "-c", str(tmp_path / "config.yml")]
    with _leading(database) as leading:  # the older serve
        done = subprocess.run([*squall, "execution", "list"], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert done.returncode == 3, done.stderr
        assert done.stderr.startswith(f"error: the database's schema is at revision 0023, older than this Squall's "
                                      f"{HEAD}, and squall {leading.pid}@"), done.stderr
        assert "Restart `squall serve` with this version first" in done.stderr and "Traceback" not in done.stderr
        with sqlite3.connect(database) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0023",)]
        keys = subprocess.run([*squall, "key", "list"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert keys.returncode == 3 and "older than this Squall's" in keys.stderr, keys.stderr  # the store alone too
    done = subprocess.run([*squall, "execution", "list"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


def test_a_service_upgrades_a_database_another_squall_leads_on(tmp_path: Path) -> None:
    """A service's start (serve, worker: `upgrade_in_use`, the default) still upgrades under an older process:
    the rolling upgrade of several serve nodes starts one upgraded node first (docs/scale-out.md)."""
    database = tmp_path / "squall.db"
    Store.open(f"sqlite:///{database}").close()
    _as_0023_left_it(database)
    with _leading(database):
        with pytest.raises(storage.SchemaInUse):
            Store.open(f"sqlite:///{database}", upgrade_in_use=False)
        Store.open(f"sqlite:///{database}").close()
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]


@pytest.mark.postgres
def test_a_cli_command_never_upgrades_a_postgresql_database_another_squall_session_is_on(postgres_url: str) -> None:
    """On PostgreSQL every Squall session names its process (`application_name`): a worker of another host,
    which takes no lead, is on the database too, and a CLI command refuses to upgrade the schema under it."""
    Store.open(postgres_url).close()
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://")
    with sa.create_engine(url).begin() as conn:  # as a database 0024 left: its newest table undone
        conn.execute(sa.text("DROP TABLE serve_nodes"))
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0023'"))
    worker = sa.create_engine(url, connect_args={"application_name": "squall 4242@worker-host"})
    try:
        with worker.connect():
            with pytest.raises(storage.SchemaInUse, match="squall 4242@worker-host runs on it"):
                Store.open(postgres_url, upgrade_in_use=False)
            with sa.create_engine(url).connect() as conn:
                assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0023"
    finally:
        worker.dispose()  # its session closed
    Store.open(postgres_url, upgrade_in_use=False).close()  # nobody else on it now: upgraded
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == HEAD
