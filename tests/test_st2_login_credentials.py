"""`st2 login` decides by what was typed, and `GET /api/v1/executions` never ignores a filter.

st2client sends an exported `ST2_API_KEY` as header `St2-Api-Key` with every request, `st2 login NAME -p
KEY`'s too: the login's basic auth must decide whom the token speaks for, as StackStorm's st2auth reads
only the Authorization header (a login as bob gave a token for the exported key's alice, while st2 said
"Logged in as bob"). StackStorm's execution filters apply (`runner`, `rule`, `trigger_type`), and those
Squall cannot apply (`trigger`, `liveaction`) are a 400 naming them, where the list answered every
execution as if all had matched."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.test_api import KEY, _home


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    app = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        yield app
    finally:
        await app.close()


def _client(squall: Squall, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                             headers=headers)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _login(squall: Squall, **headers: str) -> httpx.Response:
    async with _client(squall) as anon:
        return await anon.post("/auth/v1/tokens", headers=headers, json={})


async def _token_user(squall: Squall, login: httpx.Response) -> str:
    """Whom the token speaks for, as the API sees it (not what the login answer says)."""
    async with _client(squall, **{"X-Auth-Token": login.json()["token"]}) as holder:
        return (await holder.get("/api/v1/user")).json()["username"]


async def test_a_login_s_basic_auth_decides_over_an_exported_api_key(squall: Squall) -> None:
    alice_key, _ = await squall.db(create_key, squall.store, "alice")
    bob_key, _ = await squall.db(create_key, squall.store, "bob")
    as_bob = await _login(squall, **{"Authorization": _basic("bob", bob_key), "St2-Api-Key": alice_key})
    assert as_bob.status_code == 201, as_bob.text
    assert as_bob.json()["user"] == "bob" and await _token_user(squall, as_bob) == "bob"
    # A configured key exported (it names nobody) and a login with a name: that name, not a refusal.
    as_carol = await _login(squall, **{"Authorization": _basic("carol", KEY), "St2-Api-Key": KEY})
    assert as_carol.status_code == 201, as_carol.text
    assert await _token_user(squall, as_carol) == "carol"
    # What was typed is wrong: refused, however good the exported key is.
    typo = await _login(squall, **{"Authorization": _basic("bob", "not-bobs-key"), "St2-Api-Key": alice_key})
    assert typo.status_code == 401 and "the password is not a valid API key" in typo.json()["faultstring"]
    # The header alone still logs in as its key's user.
    by_header = await _login(squall, **{"St2-Api-Key": alice_key})
    assert by_header.status_code == 201 and await _token_user(squall, by_header) == "alice"


async def test_a_refused_login_says_what_was_wrong_with_what_was_sent(squall: Squall) -> None:
    nameless = await _login(squall, **{"St2-Api-Key": KEY})
    fault = nameless.json()["faultstring"]
    assert nameless.status_code == 401 and "St2-Api-Key carries no user name" in fault
    assert "st2 login NAME --password KEY" in fault
    bad_header = await _login(squall, **{"St2-Api-Key": "not-a-key"})
    assert bad_header.status_code == 401 and "header St2-Api-Key is not a valid API key" in bad_header.text


async def test_a_malformed_basic_login_is_audited(squall: Squall) -> None:
    """The refusal's audit read the header again and raised again, so nothing was audited."""
    refused = await _login(squall, Authorization="Basic !!not-base64!!")
    assert refused.status_code == 401 and "not valid Basic credentials" in refused.json()["faultstring"]
    [failed] = await squall.db(squall.store.audit_list, 10, "api.login.failed")
    assert failed["actor"] is None and "not valid Basic credentials" in failed["detail"]["reason"]


@pytest.mark.parametrize("name", ["trigger", "liveaction"])
async def test_an_execution_filter_squall_cannot_apply_is_refused(squall: Squall, name: str) -> None:
    async with _client(squall, **{"St2-Api-Key": KEY}) as client:
        ran = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}})
        assert ran.status_code == 201
        await squall.executions.wait(ran.json()["id"], timeout=20)
        listed = await client.get("/api/v1/executions", params={name: "nothing.matches"})
        fault = listed.json()["faultstring"] if listed.status_code == 400 else listed.text[:300]
        assert listed.status_code == 400, fault
        assert f"filtered by {name} " in fault and "action, status, parent, user, trigger_instance" in fault
        assert ("GET /executions?trigger_type=REF" in fault) == (name == "trigger")
        every = await client.get("/api/v1/executions", params={name: "x", "limit": "-1"})
        assert every.status_code == 400
        assert (await client.get("/api/v1/executions", params={"user": "nobody"})).json() == []


async def test_executions_are_filtered_by_runner_rule_and_trigger_type(squall: Squall) -> None:
    """st2web's history filters and StackStorm's `supported_filters`: `runner` (the runner type), `rule` (by
    ref, or by name as StackStorm matches it) and `trigger_type` (by ref, or by name: the ref less its pack),
    each on a page, its count and a `limit=-1` answer; a value nothing has lists nothing."""
    timer = {"rule": {"ref": "demo.hourly", "name": "hourly"},
             "trigger_instance": {"id": "t1", "name": "core.st2.IntervalTimer"}}
    hook = {"rule": {"ref": "demo.on_build", "name": "on_build"},
            "trigger_instance": {"id": "t2", "name": "core.st2.webhook"}}
    ids = {}
    for name, context in (("timer", timer), ("hook", hook), ("plain", None)):
        made = await squall.executions.request("core.noop", context=context)
        ids[name] = (await squall.executions.wait(made["id"], timeout=20))["id"]
    async with _client(squall, **{"St2-Api-Key": KEY}) as client:
        shell = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}})
        assert shell.status_code == 201
        ids["shell"] = (await squall.executions.wait(shell.json()["id"], timeout=20))["id"]

        async def listed(**params: str) -> tuple[set[str], set[str], str]:
            page = await client.get("/api/v1/executions", params=params)
            every = await client.get("/api/v1/executions", params={**params, "limit": "-1"})
            assert page.status_code == every.status_code == 200, (page.text, every.text)
            return ({e["id"] for e in page.json()}, {e["id"] for e in every.json()},
                    page.headers["X-Total-Count"])

        assert await listed(runner="noop") == ({ids["timer"], ids["hook"], ids["plain"]},) * 2 + ("3",)
        assert await listed(runner="local-shell-cmd") == ({ids["shell"]},) * 2 + ("1",)
        for rule in ("demo.hourly", "hourly"):
            assert await listed(rule=rule) == ({ids["timer"]},) * 2 + ("1",)
        for trigger_type in ("core.st2.webhook", "st2.webhook"):
            assert await listed(trigger_type=trigger_type) == ({ids["hook"]},) * 2 + ("1",)
        assert await listed(rule="demo.hourly", runner="local-shell-cmd") == (set(), set(), "0")
        assert await listed(trigger_type="webhook") == (set(), set(), "0")  # a name is the ref less its pack
