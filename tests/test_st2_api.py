"""What st2client needs of the API beyond Squall's own routes: StackStorm's execution shape, runner
types, pagination headers, single rules and packs, workflow children, `match_and_execute`, the auth
service (`POST /auth/v1/tokens`) and `GET /user`. The real `st2` CLI drives these in test_st2_cli.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.storage import auth_tokens, utcnow
from engine.tokens import revoke_ended
from tests.test_api import KEY, _home
from tests.workflow_helpers import children, workflow_pack

ASK = """
version: 1.0
tasks:
  question:
    action: core.ask
    next:
      - when: <% succeeded() %>
        do: hello
  hello:
    action: core.noop
"""


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    config = _home(home) / "config.yml"
    config.write_text(config.read_text().replace("api:\n", "api:\n  token_ttl: 600\n", 1))
    workflow_pack(home, {"ask": ("orquesta", "", ASK)})
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


def _client(squall: Squall, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                             headers=headers)


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(squall, **{"St2-Api-Key": KEY}) as c:
        yield c


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_executions_have_stackstorms_shape_and_pagination(squall: Squall, client: httpx.AsyncClient) -> None:
    ids = []
    for who in ("a", "b", "c"):
        created = (await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                                 "parameters": {"who": who}})).json()
        ids.append(created["id"])
        await squall.executions.wait(created["id"], timeout=20)
    got = (await client.get(f"/api/v1/executions/{ids[0]}")).json()
    assert got["action"]["ref"] == "demo.greet" and got["action"]["runner_type"] == "local-shell-cmd"
    assert got["action"]["parameters"]["password"]["secret"] is True
    assert got["runner"]["name"] == "local-shell-cmd" and "cmd" in got["runner"]["runner_parameters"]
    assert got["liveaction"]["id"] == ids[0] and got["liveaction"]["action"] == "demo.greet"
    assert got["children"] == []

    page = await client.get("/api/v1/executions", params={"limit": 2, "parent": "null"})
    assert page.headers["X-Total-Count"] == "3" and page.headers["X-Limit"] == "2"
    assert [e["id"] for e in page.json()] == ids[:0:-1]  # newest first
    rest = await client.get("/api/v1/executions", params={"limit": 2, "offset": 2})
    assert [e["id"] for e in rest.json()] == [ids[0]]
    oldest = await client.get("/api/v1/executions", params={"limit": 1, "sort_asc": "true"})
    assert [e["id"] for e in oldest.json()] == [ids[0]]


async def test_workflow_children_are_listed_with_their_task(squall: Squall, client: httpx.AsyncClient) -> None:
    workflow = await squall.executions.request("wf.ask", {})
    for _ in range(400):
        if [c for c in await children(squall, workflow["id"]) if c["runner"] == "inquirer"]:
            break
        await asyncio.sleep(0.05)
    top = await client.get("/api/v1/executions", params={"parent": "null"})
    assert [e["id"] for e in top.json()] == [workflow["id"]]  # the inquiry is a child: not top-level
    listed = (await client.get(f"/api/v1/executions/{workflow['id']}/children", params={"depth": -1})).json()
    assert [(c["task"], c["action"]["ref"], c["parent"]) for c in listed] == [
        ("question", "core.ask", workflow["id"])]
    got = (await client.get(f"/api/v1/executions/{workflow['id']}")).json()
    assert got["children"] == [listed[0]["id"]]
    assert (await client.get("/api/v1/executions/ffffffffffffffffffffffff/children")).status_code == 404


async def test_runner_types_rules_and_packs_one_by_one(client: httpx.AsyncClient) -> None:
    named = (await client.get("/api/v1/runnertypes", params={"name": "local-shell-cmd"})).json()
    assert [r["name"] for r in named] == ["local-shell-cmd"] and named[0]["runner_parameters"]["cmd"]
    assert (await client.get("/api/v1/runnertypes/orquesta")).json()["output_key"] == "output"
    unknown = await client.get("/api/v1/runnertypes/mistral-v9")
    assert unknown.status_code == 404 and "local-shell-cmd" in unknown.json()["faultstring"]
    rule = (await client.get("/api/v1/rules/demo.on_build")).json()
    assert rule["action"]["ref"] == "demo.greet" and rule["trigger"]["type"] == "core.st2.webhook"
    assert (await client.get("/api/v1/rules/demo.nope")).status_code == 404
    assert [r["ref"] for r in (await client.get("/api/v1/rules", params={"pack": "demo"})).json()] == [
        "demo.on_build", "demo.on_signed"]
    pack = (await client.get("/api/v1/packs/demo")).json()
    assert pack["ref"] == "demo" and pack["content"]["actions"] == 2
    missing = await client.get("/api/v1/packs/nopack")
    assert missing.status_code == 404 and "demo" in missing.json()["faultstring"]
    actions = await client.get("/api/v1/actions", params={"limit": 1, "offset": 1})
    assert len(actions.json()) == 1 and int(actions.headers["X-Total-Count"]) > 2
    everything = await client.get("/api/v1/actions")
    assert len(everything.json()) == int(everything.headers["X-Total-Count"])


async def test_a_callers_context_cannot_break_a_run_or_speak_for_squall(squall: Squall,
                                                                       client: httpx.AsyncClient) -> None:
    """A malformed `trace_context` left the execution `running` for good (its run raised before the
    runner), and a caller's `chat` would have sent the result into a chat thread of its choosing."""
    for context in ({"trace_context": 5}, {"trace_context": {"traceparent": ["x"]}},
                    {"chat": {"adapter": "loopback", "channel": "#ops"}, "approval": "yes", "team": "blue"}):
        created = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"},
                                                                "context": context})
        assert created.status_code == 201, created.text
        done = await squall.executions.wait(created.json()["id"], timeout=20)
        assert done["status"] == "succeeded", done["result"]
        assert "chat" not in done["context"] and "approval" not in done["context"]
    assert done["context"]["team"] == "blue"  # the caller's own keys are kept, as StackStorm keeps them


async def test_match_and_execute_answers_results_like_stackstorm(squall: Squall, client: httpx.AsyncClient) -> None:
    answer = await client.post("/api/v1/aliasexecution/match_and_execute",
                               json={"command": "greet zed", "user": "", "source_channel": "cli"})
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    assert result["actionalias"]["ref"] == "demo.greet" and result["execution"]["action"]["ref"] == "demo.greet"
    done = await squall.executions.wait(result["execution"]["id"], timeout=20)
    assert done["result"]["stdout"] == "hello zed"
    refused = await client.post("/api/v1/aliasexecution/match_and_execute",
                                json={"command": "secretgreet x", "user": "mallory"})
    assert refused.status_code == 403 and "mallory" in refused.json()["faultstring"]


async def test_a_users_own_key_runs_commands_only_as_that_user(squall: Squall) -> None:
    """`user` in the body is for a bridge holding the config's key (which names nobody); mallory's own
    key naming alice would pass the alias's permission as alice's."""
    key, _record = await squall.db(create_key, squall.store, "mallory")
    async with _client(squall, **{"St2-Api-Key": key}) as mallory:
        forged = await mallory.post("/api/v1/aliasexecution", json={"command": "secretgreet x", "user": "alice"})
        assert forged.status_code == 403 and "speaks for mallory" in forged.json()["faultstring"]
        own = await mallory.post("/api/v1/aliasexecution", json={"command": "secretgreet x"})
        assert own.status_code == 403 and "mallory may not run" in own.json()["faultstring"]
        allowed = await mallory.post("/api/v1/aliasexecution", json={"command": "greet zed", "user": "mallory"})
        assert allowed.status_code == 201, allowed.text
        assert allowed.json()["execution"]["context"]["user"] == "mallory"
    assert [r for r in await squall.executions.list(limit=100) if r["action"] == "demo.secretgreet"] == []


async def test_login_with_an_api_key_gives_a_token_that_speaks_for_its_name(squall: Squall) -> None:
    key, _record = await squall.db(create_key, squall.store, "alice")
    async with _client(squall) as anon:
        login = await anon.post("/auth/v1/tokens", headers={"Authorization": _basic("alice", key)}, json={})
        assert login.status_code == 201, login.text
        token = login.json()
        assert token["user"] == "alice" and token["expiry"].endswith("Z") and len(token["token"]) > 30
        wrong_name = await anon.post("/auth/v1/tokens", headers={"Authorization": _basic("bob", key)})
        assert wrong_name.status_code == 401 and "log in as alice" in wrong_name.json()["faultstring"]
        bad = await anon.post("/auth/v1/tokens", headers={"Authorization": _basic("alice", "guess")})
        assert bad.status_code == 401 and "not a valid API key" in bad.json()["faultstring"]
        nothing = await anon.post("/auth/v1/tokens")
        assert nothing.status_code == 401 and "st2 login" in nothing.json()["faultstring"]
        too_long = await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": key}, json={"ttl": 601})
        assert too_long.status_code == 400 and "600" in too_long.json()["faultstring"]
        by_header = await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": key}, json={"ttl": 60})
        assert by_header.status_code == 201 and by_header.json()["user"] == "alice"
        configured = await anon.post("/auth/v1/tokens", headers={"Authorization": _basic("carol", KEY)})
        assert configured.status_code == 201 and configured.json()["user"] == "carol"

    async with _client(squall, **{"X-Auth-Token": token["token"]}) as alice:
        me = (await alice.get("/api/v1/user")).json()
        assert me["username"] == "alice" and me["authentication"]["method"] == "authentication token"
        assert me["authentication"]["token_expire"] == token["expiry"]
        mine = await alice.put("/api/v1/keys/fav", json={"value": "tea", "scope": "user"})
        assert mine.status_code == 200 and mine.json()["user"] == "alice"
        assert (await alice.get("/api/v1/keys/fav", params={"scope": "user"})).json()["value"] == "tea"
        created = (await alice.post("/api/v1/executions", json={"action": "demo.greet",
                                                                "parameters": {"who": "x"}})).json()
        assert created["context"]["user"] == "alice"
        await squall.executions.wait(created["id"], timeout=20)
        # An expired token stops working at once.
        await squall.db(_expire_all, squall)
        gone = await alice.get("/api/v1/user")
        assert gone.status_code == 401 and "expired" in gone.json()["faultstring"]
    async with _client(squall, **{"St2-Api-Key": key}) as by_key:
        assert (await by_key.get("/api/v1/user")).json() == {
            "username": "alice", "authentication": {"method": "api key", "location": "header"},
            "rbac": {"enabled": False, "roles": [], "is_rbac_admin": True}}
    assert await squall.db(_count_tokens, squall) == 3  # stored hashed until recovery sweeps the expired
    assert await squall.db(revoke_ended, squall.store) == 3
    assert await squall.db(_count_tokens, squall) == 0


def _expire_all(squall: Squall) -> None:
    with squall.store._write() as conn:
        conn.execute(auth_tokens.update().values(expires_at=utcnow() - timedelta(seconds=1)))


def _count_tokens(squall: Squall) -> int:
    with squall.store._read() as conn:
        rows = conn.execute(auth_tokens.select()).fetchall()
    assert all(len(row.token_hash) == 64 for row in rows)
    return len(rows)
