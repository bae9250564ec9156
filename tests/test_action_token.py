"""`ST2_ACTION_AUTH_TOKEN`: every execution's action may call the API as its user until it ends.

A real API server on a free port (an action is a subprocess: an in-process ASGI transport would not
reach it). The action calls the API with its token during the run and gets 200; the same token gets
401 once the execution has ended, whether it succeeded, was canceled or was abandoned after a crash.
The token is a secret: masked in the result, never in the record, stored only as a hash.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from bot.app import Squall
from bot.http import ApiServer
from engine import executions, tokens
from engine.config import load_config
from engine.executions import new_id
from engine.runners import RUNNER_TYPES
from engine.storage import Store, action_tokens, utcnow
from tests.conftest import free_port, write

KEY = "token-test-key"

#: Calls the API with its own token and prints the answer's status, and the token (which must be masked).
_CALL = """
printf '%s' "$ST2_ACTION_AUTH_TOKEN" > {{ out }}
echo "api=$ST2_ACTION_API_URL"
{{ py }} -c 'import os, urllib.request as u
request = u.Request(os.environ["ST2_ACTION_API_URL"] + "/executions/" + os.environ["ST2_ACTION_EXECUTION_ID"],
                    headers={"X-Auth-Token": os.environ["ST2_ACTION_AUTH_TOKEN"]})
print("status", u.urlopen(request).status)'
echo "token=$ST2_ACTION_AUTH_TOKEN"
"""


def _home(home: Path, port: int) -> Path:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          host: 127.0.0.1
          port: {port}
          keys: [{KEY}]
    """)
    pack = home / "packs" / "tok"
    write(pack / "pack.yaml", "ref: tok\nname: tok\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "call.yaml", yaml.safe_dump({
        "name": "call", "runner_type": "local-shell-cmd",
        "parameters": {"out": {"type": "string", "required": True}, "py": {"type": "string", "required": True},
                       "cmd": {"immutable": True, "default": _CALL.lstrip()}}}))
    write(pack / "actions" / "hold.yaml", """
        name: hold
        runner_type: local-shell-cmd
        parameters:
          out: {type: string, required: true}
          cmd: {default: 'printf "%s" "$ST2_ACTION_AUTH_TOKEN" > {{ out }}; sleep 30', immutable: true}
    """)
    return home


@dataclass
class Env:
    squall: Squall
    api: httpx.AsyncClient
    base: str


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    port = free_port()
    squall = await Squall.start(load_config(_home(tmp_path, port) / "config.yml"))
    server = ApiServer(squall, host="127.0.0.1", port=port)
    await server.start()
    try:
        base = f"http://127.0.0.1:{port}/api/v1"
        async with httpx.AsyncClient(base_url=base, timeout=30) as api:
            yield Env(squall, api, base)
    finally:
        await server.stop()
        await squall.close()


def _token_rows(store: Store, execution_id: str | None = None) -> list[dict]:
    statement = sa.select(action_tokens)
    if execution_id is not None:
        statement = statement.where(action_tokens.c.execution_id == execution_id)
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]


async def test_action_calls_the_api_with_its_token_and_the_token_dies_with_the_run(env: Env,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "token.txt"
    requested = await env.squall.executions.request("tok.call", {"out": str(out), "py": sys.executable},
                                                    context={"user": "ann"})
    done = await env.squall.executions.wait(requested["id"], timeout=30)
    assert done["status"] == "succeeded", done["result"]
    stdout = done["result"]["stdout"]
    assert f"api={env.base}" in stdout  # ST2_ACTION_API_URL points at the API
    assert "status 200" in stdout  # authenticated during the run
    assert "token=********" in stdout  # echoed: masked like a secret

    token = out.read_text()
    assert len(token) >= 32
    after = await env.api.get(f"/executions/{requested['id']}", headers={"X-Auth-Token": token})
    assert after.status_code == 401 and "auth token" in after.json()["faultstring"]

    store = env.squall.store
    assert _token_rows(store, requested["id"]) == []  # revoked: the row is gone
    raw = store.get_execution(requested["id"])
    assert token not in repr(raw) and token not in repr(done)  # parameters, spec, result, log, context
    keyed = await env.api.get(f"/executions/{requested['id']}", headers={"St2-Api-Key": KEY})
    assert keyed.status_code == 200 and token not in keyed.text
    stored = [path for path in (tmp_path / "data").glob("squall.db*") if path.is_file()]  # the file, its WAL
    assert stored and all(token.encode() not in path.read_bytes() for path in stored)


async def test_a_canceled_execution_s_token_is_revoked_and_tokens_are_no_api_keys(env: Env,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "token.txt"
    requested = await env.squall.executions.request("tok.hold", {"out": str(out)}, context={"user": "bob"})
    for _ in range(1000):  # until the action wrote its token (a guard against hanging, not a timing)
        if out.exists() and out.read_text():
            break
        await asyncio.sleep(0.02)
    token = out.read_text()
    headers = {"X-Auth-Token": token}
    during = await env.api.get(f"/executions/{requested['id']}", headers=headers)
    assert during.status_code == 200 and during.json()["status"] == "running"
    rows = _token_rows(env.squall.store, requested["id"])
    assert [(r["user"], r["token_hash"]) for r in rows] == [("bob", tokens.hash_token(token))]  # only a hash
    assert rows[0]["expires_at"] is not None  # bounded by the runner's timeout as well

    # A token is no API key with rights of its own: no `render: true`, and only in its header.
    rendered = await env.api.post("/executions", headers=headers,
                                  json={"action": "core.noop", "parameters": {}, "render": True})
    assert rendered.status_code == 403
    assert (await env.api.get("/executions", headers={"St2-Api-Key": token})).status_code == 401
    assert (await env.api.get("/executions", headers={"X-Auth-Token": "not-a-token"})).status_code == 401

    await env.squall.executions.cancel(requested["id"])
    final = await env.squall.executions.wait(requested["id"], timeout=30)
    assert final["status"] == "canceled"
    assert (await env.api.get(f"/executions/{requested['id']}", headers=headers)).status_code == 401
    assert _token_rows(env.squall.store, requested["id"]) == []


def test_a_remote_runs_token_lasts_as_long_as_its_hosts_may_take() -> None:
    """`timeout` bounds each host's connection and command, one host after the other unless
    `parallel`: a token bound by one `timeout` (plus the grace) stopped working under the later hosts
    of a long sequential run."""
    remote, local = RUNNER_TYPES["remote-shell-cmd"], RUNNER_TYPES["local-shell-cmd"]
    assert remote.longest({"timeout": 30, "hosts": "h1, h2,h3,"}) == 180
    assert remote.longest({"timeout": 30, "hosts": "h1,h2,h3", "parallel": True}) == 60
    assert RUNNER_TYPES["remote-shell-script"].longest({"timeout": 10, "hosts": "h1,h2"}) == 40
    assert local.longest({"timeout": 30, "hosts": "h1,h2,h3"}) == 30
    assert local.longest({"timeout": 0}) is None and remote.longest({"hosts": "h1"}) is None


async def test_a_remote_runs_token_is_minted_for_all_its_hosts(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim mints the token with the runner's `longest`: 3 hosts one after the other, 20 s each."""
    limits: list[Any] = []
    mint = executions.mint

    def minting(store: Store, execution_id: str, user: str | None, timeout: Any = None) -> str:
        limits.append(timeout)
        return mint(store, execution_id, user, timeout)

    monkeypatch.setattr(executions, "mint", minting)
    requested = await env.squall.executions.request("core.remote", {
        "hosts": "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "cmd": "true", "timeout": 20})
    await env.squall.executions.wait(requested["id"], timeout=60)
    assert limits == [120.0]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


async def test_recovery_revokes_the_tokens_a_crash_left(tmp_path: Path) -> None:
    """A process died while its execution ran: recovery abandons the execution, and its token, still
    stored, stops working at once (its execution is no longer running) and is deleted."""
    config = load_config(_home(tmp_path, free_port()) / "config.yml")
    now = utcnow()
    execution_id = new_id()
    store = Store.open(config.database_url)
    try:
        store.insert_execution({
            "id": execution_id, "action": "core.noop", "runner": "noop", "status": "running", "parameters": {},
            "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
            "context": {"user": "carol"}, "log": [{"status": "running", "timestamp": now.isoformat()}],
            "parent": None, "runner_info": {"hostname": "gone", "pid": _dead_pid()},
            "start_timestamp": now, "end_timestamp": None})
        token = tokens.mint(store, execution_id, "carol", 60)
        who = tokens.authenticate(store, token)
        assert who is not None and (who["execution_id"], who["user"]) == (execution_id, "carol")
        assert now + timedelta(seconds=60) + tokens.EXPIRY_GRACE <= who["expires_at"] <= utcnow() + timedelta(
            seconds=60) + tokens.EXPIRY_GRACE
    finally:
        store.close()

    app = await Squall.start(config)
    try:
        assert (await app.executions.recover())["abandoned"] == 1
        assert (await app.executions.get(execution_id))["status"] == "abandoned"
        assert tokens.authenticate(app.store, token) is None
        assert _token_rows(app.store) == []
    finally:
        await app.close()


def test_a_token_is_refused_once_expired_or_once_its_execution_ended(database_url: str) -> None:
    """On SQLite (the direct driver path) and PostgreSQL (Core)."""
    store = Store.open(database_url)
    try:
        now = utcnow()
        execution_id = new_id()
        store.insert_execution({
            "id": execution_id, "action": "core.noop", "runner": "noop", "status": "running", "parameters": {},
            "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None, "context": {},
            "log": [], "parent": None, "runner_info": None, "start_timestamp": now, "end_timestamp": None})
        forever = tokens.mint(store, execution_id, None)  # no timeout (a workflow): no expiry
        expired = tokens.mint(store, execution_id, None, 10)
        with store.engine.begin() as conn:
            conn.execute(action_tokens.update().where(action_tokens.c.token_hash == tokens.hash_token(expired))
                         .values(expires_at=now - timedelta(seconds=1)))
        assert tokens.authenticate(store, forever) == {"execution_id": execution_id, "user": None, "expires_at": None}
        assert tokens.authenticate(store, expired) is None
        assert tokens.authenticate(store, "") is None
        assert tokens.expiry(0, now) is None and tokens.expiry(True, now) is None
        assert tokens.expiry(60, now) == now + timedelta(seconds=60) + tokens.EXPIRY_GRACE

        # Ended by a status write that deleted nothing (another process's recovery): refused all the same.
        store.update_execution(execution_id, {"status": "abandoned"})
        assert tokens.authenticate(store, forever) is None
        assert tokens.revoke_ended(store) == 2
        assert _token_rows(store) == []
    finally:
        store.close()
