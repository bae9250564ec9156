"""Ctrl-C landing inside a statement of an isolated group in a batch (a purge's batch on SQLite):
SQLAlchemy invalidates the connection, closing the driver's, and the savepoint's clean-up asked the
closed driver whether a transaction was open; its ProgrammingError ("Cannot operate on a closed
database") replaced the interrupt, so `squall audit purge` exited 1 with a traceback instead of 130."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.retention import Purged, purge_audit
from engine.storage import Store, audit

CUTOFF = datetime.now(UTC) - timedelta(days=10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 'squall.db'}")
    try:
        yield opened
    finally:
        opened.close()


def old_entries(store: Store, count: int) -> None:
    when = CUTOFF - timedelta(days=30)
    with store.engine.begin() as conn:
        conn.execute(audit.insert(), [{"timestamp": when, "event": "test.event", "actor": "ann", "source": "cli",
                                       "target": None, "detail": {"n": n}} for n in range(count)])


def interrupt_delete(store: Store, at: int) -> None:
    """Raise KeyboardInterrupt inside the `at`-th DELETE, where SQLAlchemy handles it as a signal arriving
    mid-statement does (it invalidates the connection)."""
    seen = [0]

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen[0] += 1
            if seen[0] == at:
                raise KeyboardInterrupt

    sa.event.listen(store.engine, "before_cursor_execute", before)


def remaining(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one())


def test_an_interrupt_inside_a_purge_statement_is_not_replaced(store: Store) -> None:
    old_entries(store, 10)
    interrupt_delete(store, at=3)
    closed: list[Purged] = []
    with pytest.raises(KeyboardInterrupt):
        purge_audit(store, CUTOFF, batch_size=2, closing=lambda _store, purged: closed.append(purged))
    assert remaining(store) == 6  # the two batches committed before the interrupt stay deleted
    assert closed == []  # the purge did not end: no closing event in its name
