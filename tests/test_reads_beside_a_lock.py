"""What a request only reads to let it in or to answer, it reads on `Database.read`, never in a write
group: a signed-in web page, an API request with a stored key or a login token, and `GET /api/v1/apikeys`
answer while another process holds SQLite's write lock (a CLI's `squall key set` or `execution purge` in
progress) and one of Squall's own writes waits for it. They used to queue behind that write, up to
`LOCK_WAIT_SECONDS`. A session's last use, when due, is recorded beside the page (`Database.later`), once
the lock is let go. A re-run from tasks reads the workflow's children on a reader thread too.

What is asserted is the order things happened in (answered while the write still waits), never how long
they took."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.accounts import TOUCH_EVERY, token_hash
from bot.apikeys import create_key
from bot.app import Squall
from engine.executions import new_id
from engine.storage import utcnow
from tests.test_web_auth import Web, started_web


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


@contextlib.asynccontextmanager
async def another_process_writing(squall: Squall) -> AsyncIterator[asyncio.Future[Any]]:
    """Another process holds SQLite's write lock (`BEGIN IMMEDIATE` on a connection of its own) and a
    write of Squall's waits for it on the database thread; yields that write's future. The lock is let
    go on leaving, and the write then stored."""
    blocker = sqlite3.connect(squall.store.engine.url.database or "", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        write = squall.db.submit(squall.store.audit_add, "test.write", "tester", "test", None, {})
        for _ in range(200):  # the loop's try is refused at once; the group goes to the database thread
            if squall.db._draining:
                break
            await asyncio.sleep(0.01)
        assert squall.db._draining and not write.done()
        yield write
        assert not write.done()  # still waiting for the lock when the requests were answered
    finally:
        blocker.rollback()
        blocker.close()
    await write


# -- the web UI's session ----------------------------------------------------------------------------------

@pytest.mark.parametrize("touch_due", [True, False])
async def test_a_signed_in_page_answers_while_another_process_holds_the_write_lock(web: Web,
                                                                                 touch_due: bool) -> None:
    """The session is read beside the lock; its last use, when due (`TOUCH_EVERY`), is recorded once the
    lock is let go, and left as it was when not."""
    squall, store = web.squall, web.squall.store
    client, _csrf = await web.signed_in("vic", "viewer")
    hashed = token_hash(client.cookies["squall_session"])
    if touch_due:
        store.web_session_touch(hashed, utcnow() - 2 * TOUCH_EVERY)
    before = store.web_session_get(hashed)["last_seen"]
    async with another_process_writing(squall):
        page = await client.get("/executions")
        assert page.status_code == 200 and "vic" in page.text and "(viewer)" in page.text
        assert store.web_session_get(hashed)["last_seen"] == before  # nothing written past the lock
    after = (await squall.db(store.web_session_get, hashed))["last_seen"]  # queued behind the touch, if any
    if touch_due:
        assert before + 2 * TOUCH_EVERY <= after <= utcnow()
    else:
        assert after == before


async def test_a_session_that_ended_is_refused_while_another_process_holds_the_write_lock(web: Web) -> None:
    """Reading beside the lock keeps the session's rules: an idle one is refused, and not touched."""
    from bot.accounts import SESSION_IDLE

    squall, store = web.squall, web.squall.store
    client, _csrf = await web.signed_in("vic", "viewer")
    hashed = token_hash(client.cookies["squall_session"])
    idle_since = utcnow() - SESSION_IDLE - timedelta(seconds=1)
    store.web_session_touch(hashed, idle_since)
    async with another_process_writing(squall):
        page = await client.get("/executions")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert (await squall.db(store.web_session_get, hashed))["last_seen"] == idle_since


# -- the API's keys and tokens -------------------------------------------------------------------------------

async def _alice(web: Web) -> tuple[str, dict[str, dict[str, str]]]:
    """alice's stored key, and the headers of it and of her login token (`st2 login` with that key)."""
    alice_key, _ = await web.squall.db(create_key, web.squall.store, "alice")
    login = await web.client().post("/auth/v1/tokens", headers={"St2-Api-Key": alice_key}, json={})
    assert login.status_code == 201, login.text
    return alice_key, {"key": {"St2-Api-Key": alice_key}, "token": {"X-Auth-Token": login.json()["token"]}}


@pytest.mark.parametrize("credential", ["key", "token"])
async def test_an_api_request_answers_while_another_process_holds_the_write_lock(web: Web, credential: str) -> None:
    """A stored key or a login token is checked beside the lock, and `GET /api/v1/apikeys` (the list, and
    one key by its id or by the key itself) is read there too."""
    _bob_key, bob = await web.squall.db(create_key, web.squall.store, "bob")
    alice_key, credentials = await _alice(web)
    client = web.client()
    client.headers.update(credentials[credential])
    async with another_process_writing(web.squall):
        listed = await client.get("/api/v1/apikeys")
        by_key = await client.get(f"/api/v1/apikeys/{alice_key}")
        others = await client.get(f"/api/v1/apikeys/{bob['id']}")
        unknown = await web.client().get("/api/v1/apikeys", headers={"St2-Api-Key": "not-a-key"})
    assert listed.status_code == 200 and [k["user"] for k in listed.json()] == ["alice"]
    assert by_key.status_code == 200 and by_key.json() == listed.json()[0]
    assert others.status_code == 404  # bob's: not alice's to see
    assert unknown.status_code == 401


async def test_a_token_whose_key_was_deleted_is_refused_while_another_process_holds_the_write_lock(
        web: Web) -> None:
    """The token's key check holds beside the lock: deleting the key it was obtained with ends it."""
    _alice_key, credentials = await _alice(web)
    [alice] = await web.squall.db(web.squall.store.api_key_list)
    assert await web.squall.db(web.squall.store.api_key_delete, alice["id"])
    async with another_process_writing(web.squall):
        refused = await web.client().get("/api/v1/apikeys", headers=credentials["token"])
        key_refused = await web.client().get("/api/v1/apikeys", headers=credentials["key"])
    assert refused.status_code == 401 and "auth token is not valid" in refused.json()["faultstring"]
    assert key_refused.status_code == 401


# -- a workflow's children, at a re-run from tasks ---------------------------------------------------------------

def _workflow(squall: Squall) -> str:
    """A finished orquesta execution whose tasks `a` and `b` ran; its id."""
    store, now = squall.store, utcnow()

    def row(execution_id: str, parent: str | None, context: dict[str, Any]) -> dict[str, Any]:
        runner = "orquesta" if parent is None else "local-shell-cmd"
        return {"id": execution_id, "action": "demo.greet", "runner": runner,
                "status": "failed", "parameters": {}, "spec": {}, "sealed": None, "result": {}, "context": context,
                "log": [], "parent": parent, "runner_info": None, "start_timestamp": now,
                "end_timestamp": now + timedelta(seconds=1)}

    workflow = new_id()
    store.insert_execution(row(workflow, None, {}))
    for task in ("a", "b"):
        store.insert_execution(row(new_id(), workflow, {"workflow_task": {"task": task, "key": ""}}))
    return workflow


async def test_a_workflow_s_children_are_read_beside_the_write_groups(web: Web,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run from tasks reads the workflow's children on a reader thread, not the loop's group, and
    still refuses a task that never ran, naming those that did."""
    from tests.test_api import KEY

    workflow = _workflow(web.squall)
    threads: list[str] = []
    original: Callable[..., Any] = web.squall.store.list_executions

    def spied(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("parent") == workflow:
            threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(web.squall.store, "list_executions", spied)
    client: httpx.AsyncClient = web.client()
    refused = await client.post(f"/api/v1/executions/{workflow}/re_run", json={"tasks": ["nosuch"]},
                                headers={"St2-Api-Key": KEY})
    assert refused.status_code == 400, refused.text
    assert "no task nosuch ran" in refused.text and "tasks that ran: a, b" in refused.text
    assert threads and all(name.startswith("squall-read") for name in threads), threads
