"""The store's shortcuts on the chat path: the texts of datetimes written from their whole seconds', the
direct statements' shapes (their SQL and value processors, made once per table and columns) and a group's driver
connection, looked up once a group."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from engine import storage
from engine.storage import Store, iso, utcnow


def test_a_kept_utc_text_is_never_the_text_of_the_same_instant_in_another_zone() -> None:
    """Datetimes of one instant in two zones are equal (and hash alike), yet are written differently:
    a UTC datetime's kept texts must not answer for the other, in either order, nor the reverse."""
    dialect = sqlite_dialect()
    reference = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    stored = storage._stored_datetime(reference)
    plus_two = timezone(timedelta(hours=2))
    for micro in (0, 7, 123456):
        utc = datetime(2026, 3, 4, 5, 6, 7, micro, tzinfo=UTC)
        elsewhere = utc.astimezone(plus_two)
        assert utc == elsewhere
        for first, second in ((utc, elsewhere), (elsewhere, utc)):
            for value in (first, second, first, second):
                assert stored(value) == reference(value)
                assert iso(value) == value.isoformat().replace("+00:00", "Z")
        assert stored(elsewhere) == f"2026-03-04 07:06:07.{micro:06d}"


def test_times_are_written_as_sqlalchemy_and_isoformat_write_them_across_seconds(tmp_path: Path) -> None:
    """A datetime's stored text (its column's processor, and `_encode`'s own writing of it in a direct
    insert) is SQLAlchemy's, and `iso` is `isoformat`'s, for UTC datetimes (no longer kept by datetime),
    naive ones and other zones, at a second's ends and past the whole seconds `_SECONDS` keeps."""
    dialect = sqlite_dialect()
    reference = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    stored = storage._stored_datetime(reference)
    last = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    times = [last, last + timedelta(microseconds=1), last.replace(microsecond=0), last.replace(tzinfo=None),
             last.astimezone(timezone(timedelta(hours=-5))),
             *(last + timedelta(seconds=n, microseconds=n) for n in range(100))]
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        for value in times:
            assert stored(value) == reference(value)
            if value.tzinfo is UTC:
                assert iso(value) == value.isoformat().replace("+00:00", "Z")
            store._insert(storage.audit, {"event": "e", "detail": {}, "timestamp": value})
        assert len(storage._SECONDS) <= 64
        raw = sqlite3.connect(tmp_path / "s.db")
        assert [text for (text,) in raw.execute("SELECT timestamp FROM audit ORDER BY id")] == \
            [reference(value) for value in times]
        raw.close()
    finally:
        store.close()


def test_the_kept_second_answers_for_the_utc_times_of_that_second_alone() -> None:
    """`_SECOND` answers for a UTC datetime from its second's first microsecond to its last, never for the
    next second's first nor the last of the one before, whichever second it holds when asked; nor for the
    same instant in another zone, or a naive datetime, whose texts are their own fields'. Each microsecond's
    three digits and three more are written as `isoformat` writes them, every one of the thousand of each;
    the first and last times there are as well (the last second has no next to end it)."""
    dialect = sqlite_dialect()
    reference = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    stored = storage._stored_datetime(reference)
    second = utcnow().replace(microsecond=0) - timedelta(days=1)  # (past: a second to come is not kept)
    edges = [second, second + timedelta(microseconds=999_999), second + timedelta(seconds=1),
             second - timedelta(microseconds=1), second + timedelta(microseconds=1), second + timedelta(seconds=2)]
    plus_two = timezone(timedelta(hours=2))
    for first in edges:
        storage._SECONDS.clear()  # the second of `first` is formatted again: it is `_SECOND` then
        for value in [first, *edges, *edges[::-1]]:
            for shown in (value, value.astimezone(plus_two), value.replace(tzinfo=None)):
                assert stored(shown) == reference(shown)
            assert iso(value) == value.isoformat().replace("+00:00", "Z")
            assert iso(value.astimezone(plus_two)) == value.astimezone(plus_two).isoformat()
    for micro in [*range(0, 1_000_000, 1001), *range(0, 1000), *range(0, 1_000_000, 1000), 999_999]:
        value = second.replace(microsecond=micro)
        assert stored(value) == reference(value)
        assert iso(value) == value.isoformat().replace("+00:00", "Z")
    for value in (datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC), second):  # the ends too
        assert stored(value) == reference(value)
        assert iso(value) == value.isoformat().replace("+00:00", "Z")


def test_the_kept_second_is_the_newest_past_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_SECOND` is taken by a second formatted that is newer than it and not to come. Not by a second to come
    (a chat delivery key's expiry, formatted as a command is stored): the times of the second now, formatted
    already, would not take it back, and every later one would be looked up field by field. Nor by an older
    one (a page of history, which would pay for moving it at every row)."""
    monkeypatch.setattr(storage, "_SECOND", (datetime.min.replace(tzinfo=UTC),) * 2 + (("", ""),))  # as at start
    storage._SECONDS.clear()
    now = utcnow()
    for value, taken in ((now - timedelta(days=1), True), (now - timedelta(days=2), False), (now, True),
                         (now + timedelta(hours=1), False), (now + timedelta(seconds=2), False),
                         (datetime.max.replace(tzinfo=UTC), False), (now - timedelta(seconds=5), False)):
        kept = storage._SECOND
        assert iso(value) == value.isoformat().replace("+00:00", "Z")
        if taken:
            assert storage._SECOND[0] <= value < storage._SECOND[1]
            assert storage._SECOND[2] == storage._seconds(value)
        else:
            assert storage._SECOND is kept


class _Name(str):
    pass


def test_direct_json_values_are_the_store_s_serializer_s_text(tmp_path: Path) -> None:
    """A JSON value of a direct insert, which `_encode` writes without calling `_fast_json_text`, is
    stored as that writes it: by orjson, or by `json`'s rules for what orjson leaves to them (a str
    subclass, an integer past 64 bits); and what neither takes fails the insert alone, as Core would."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        details = [{"n": 1, "text": "é"}, None, [_Name("a")], {"big": 2**70}, {"nan": float("nan")}]
        for detail in details:
            store._insert(storage.audit, {"event": "e", "detail": detail, "timestamp": utcnow()})
        with pytest.raises(sa.exc.StatementError, match=r"audit: .*not JSON serializable"):
            store._insert(storage.audit, {"event": "e", "detail": {"at": object()}, "timestamp": utcnow()})
        raw = sqlite3.connect(tmp_path / "s.db")
        assert [text for (text,) in raw.execute("SELECT detail FROM audit ORDER BY id")] == \
            [storage._fast_json_text(detail) for detail in details]
        raw.close()
    finally:
        store.close()


def test_utcnow_is_the_time_now_in_utc() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    assert now.tzinfo is UTC and before <= now <= datetime.now(UTC)


def test_direct_inserts_of_one_table_in_other_column_orders_store_each_value_in_its_column(tmp_path: Path) -> None:
    """A shape is made per table and column order: rows of the same table with their columns in another
    order, or fewer of them, get their own SQL and processors (a JSON value in a JSON column, a time
    in a time column), never another shape's."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        when = datetime(2026, 5, 6, 7, 8, 9, 10, tzinfo=UTC)
        store.audit_add("first", "ann", "chat", None, {"n": 1})
        store._insert(storage.audit, {"detail": {"n": 2}, "event": "second", "timestamp": when})
        store._insert(storage.audit, {"event": "third", "detail": None, "actor": "bob", "timestamp": when})
        with store.batch():
            store._insert(storage.audit, {"timestamp": when, "detail": [3], "event": "fourth"})
        raw = sqlite3.connect(tmp_path / "s.db")
        rows = raw.execute("SELECT event, actor, detail, timestamp FROM audit ORDER BY id").fetchall()
        raw.close()
        assert rows[1:] == [("second", None, '{"n":2}', "2026-05-06 07:08:09.000010"),
                            ("third", "bob", "null", "2026-05-06 07:08:09.000010"),
                            ("fourth", None, "[3]", "2026-05-06 07:08:09.000010")]
        assert rows[0][:3] == ("first", "ann", '{"n":1}')
        with pytest.raises(sa.exc.StatementError, match="audit: 'nope'"):  # a column the table has not
            store._insert(storage.audit, {"event": "x", "nope": 1})
        with pytest.raises(sa.exc.StatementError, match="audit"):  # a value its column cannot take
            store._insert(storage.audit, {"event": "x", "detail": {}, "timestamp": object()})
        assert store.audit_list(10)[0]["event"] == "fourth"
    finally:
        store.close()


@pytest.mark.parametrize("nowait", [True, False])
def test_a_group_s_driver_is_its_own_and_only_while_it_lasts(tmp_path: Path, nowait: bool) -> None:
    """The hot writes of a group go on a cursor of the driver connection made when the group began: they
    roll back with it, and one that fails fails alone; after it, a write is its own transaction again
    (committed at once, seen by another connection), never one on the ended group's cursor."""
    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        with pytest.raises(RuntimeError), (store.batch_without_waiting() if nowait else store.batch()):
            store.audit_add("rolled back", "me", "test", None, {})
            store.outbox_add_keyed("e1", "result", [("loopback", "#c", {"text": "r"}, "result", "pending")])
            raise RuntimeError("the group fails")
        assert getattr(store._batch, "cursor", None) is None
        raw = sqlite3.connect(tmp_path / "s.db")
        assert raw.execute("SELECT count(*) FROM audit").fetchone() == (0,)
        assert raw.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        with store.batch_without_waiting() if nowait else store.batch():
            store.audit_add("kept", "me", "test", None, {})
            kept = store.audit_list(1)[0]
            with pytest.raises(sa.exc.IntegrityError):  # fails alone: the group's writes go on after it
                store._insert(storage.audit, {**kept, "event": "a taken id"})
            [(row_id, _)] = store.outbox_add_keyed("e1", "result",  # type: ignore[misc]
                                                   [("loopback", "#c", {"text": "r"}, "result", "pending")])
        store.audit_add("alone", "me", "test", None, {})  # outside any group: committed at once
        store.outbox_update_many([(row_id, {"status": "sent", "sent_at": utcnow()})])
        assert raw.execute("SELECT event FROM audit ORDER BY id").fetchall() == [("kept",), ("alone",)]
        assert raw.execute("SELECT status FROM outbox").fetchall() == [("sent",)]
        raw.close()
    finally:
        store.close()
