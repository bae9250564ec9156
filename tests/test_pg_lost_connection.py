"""A PostgreSQL connection lost under a group of calls (the server restarting, or ending it): the group
fails whole with the driver's error, a database failure, and the API answers 503 for it.

The review's restart: one call of a group met the connection ended, SQLAlchemy invalidated it, and the
calls after it, then the group's commit, met `PendingRollbackError` ("Can't reconnect until invalid
transaction is rolled back"). That was every call's answer, and `database_failure` did not know it:
`POST /api/v1/executions` answered a plain-text 500 with uvicorn's traceback where the others got 503.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.storage import Database, Store, database_failure, utcnow
from tests.test_scaleout_triggers import _connections_cut
from tests.test_storage import _kv


@pytest.mark.postgres
async def test_a_call_that_loses_the_connection_fails_its_whole_group_as_the_database_failing(
        postgres_url: str) -> None:
    """Each call of the group is told the driver's error, which names the failure; what the call before
    the loss wrote is not stored (its transaction went with the connection), and the next group works."""
    store = Store.open(postgres_url)
    db = Database(store)
    try:
        gate = threading.Event()

        def cut_then_read() -> Any:
            _connections_cut(postgres_url)
            return store.kv_get("system", "before", utcnow())

        held = db.submit(gate.wait)  # the thread waits here while the group behind it is queued
        group = [db.submit(store.kv_put, _kv("before", "x")), db.submit(cut_then_read),
                 db.submit(store.kv_put, _kv("after", "y"))]
        gate.set()
        await held
        told = await asyncio.gather(*group, return_exceptions=True)
        for answer in told:
            assert isinstance(answer, sa.exc.OperationalError), told
            assert database_failure(answer) == "AdminShutdown (SQLSTATE 57P01)", told
        assert db.failing is not None
        assert await db(store.kv_get, "system", "before", utcnow()) is None
        await db(store.kv_put, _kv("again", "z"))
        assert db.failing is None
    finally:
        db.close()
        store.close()


def test_pending_rollback_is_a_database_failure() -> None:
    raised = sa.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")
    assert database_failure(raised) == "PendingRollbackError"


async def test_the_api_answers_503_for_a_connection_lost_in_a_transaction(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a DBAPIError, it escaped the API's database handler: 500 in text/plain, and uvicorn's traceback."""
    from tests.test_api import KEY
    from tests.test_web_auth import started_web

    async with started_web(home) as web:
        async def lost(*_args: Any, **_kwargs: Any) -> Any:
            raise sa.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")

        monkeypatch.setattr(web.squall.executions, "request", lost)
        answer = await web.client().post("/api/v1/executions", json={"action": "core.noop"},
                                         headers={"St2-Api-Key": KEY})
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json" and answer.headers["retry-after"]
    assert "unreachable (PendingRollbackError)" in answer.json()["faultstring"]
