"""What st2client needs of the API beyond Squall's own routes: StackStorm's execution shape, runner
types, pagination headers, single rules and packs, workflow children, `match_and_execute`, the auth
service (`POST /auth/v1/tokens`) and `GET /user`. The real `st2` CLI drives these in test_st2_cli.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.apikeys import KEYS_ENV, create_key
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.parameters import MASK
from engine.storage import Store, api_keys, auth_tokens, utcnow
from engine.tokens import revoke_ended
from tests.conftest import write
from tests.test_api import KEY, _home
from tests.workflow_helpers import children, pending_ask, until, workflow_pack

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
    assert "children" not in got  # none: StackStorm leaves an empty list out, as every attribute without a value

    page = await client.get("/api/v1/executions", params={"limit": 2, "parent": "null"})
    assert page.headers["X-Total-Count"] == "3" and page.headers["X-Limit"] == "2"
    assert [e["id"] for e in page.json()] == ids[:0:-1]  # newest first
    rest = await client.get("/api/v1/executions", params={"limit": 2, "offset": 2})
    assert [e["id"] for e in rest.json()] == [ids[0]]
    oldest = await client.get("/api/v1/executions", params={"limit": 1, "sort_asc": "true"})
    assert [e["id"] for e in oldest.json()] == [ids[0]]


async def test_an_execution_leaves_out_what_it_does_not_have_yet_as_stackstorm_does(
        squall: Squall, client: httpx.AsyncClient) -> None:
    """StackStorm's ActionExecutionAPI keeps only the attributes that have a value (`if value`): a running
    execution has no `end_timestamp`, `elapsed_seconds` or `parent` key, and no empty `children` or
    `result`. Squall answered them as null, so the st2 pack's `{% if 'end_timestamp' in exe %}
    {{ exe.end_timestamp[:19] }}` failed on every `!st2 list executions` (its own run is always listed)."""
    created = await client.post("/api/v1/executions", json={"action": "demo.slow"})
    assert created.status_code == 201, created.text
    running = created.json()
    for _ in range(400):
        if (await squall.executions.get(running["id"]))["status"] == "running":
            break
        await asyncio.sleep(0.05)
    got = (await client.get(f"/api/v1/executions/{running['id']}")).json()
    listed = (await client.get("/api/v1/executions", params={"action": "demo.slow"})).json()
    aliased = (await client.post("/api/v1/aliasexecution", json={"command": "greet ann"})).json()["execution"]
    assert got["status"] == "running" and got["start_timestamp"]
    for doc in (running, got, *listed, aliased):
        assert not {"end_timestamp", "elapsed_seconds", "parent"} & set(doc), doc
        assert all(value not in (None, "", [], {}, 0, False) for value in doc.values()), doc
        assert doc["id"] and doc["status"] and doc["action"]["ref"] and doc["liveaction"]["id"] == doc["id"]
    canceled = (await client.delete(f"/api/v1/executions/{running['id']}")).json()
    assert canceled["status"] in ("canceling", "canceled")
    done = await squall.executions.wait(running["id"], timeout=20)
    ended = (await client.get(f"/api/v1/executions/{done['id']}")).json()
    assert ended["end_timestamp"] and ended["elapsed_seconds"] > 0 and "parent" not in ended


async def test_a_nul_in_the_url_is_a_400_naming_it(client: httpx.AsyncClient) -> None:
    """PostgreSQL refuses NUL in text, so a filter or id holding one was a 500 there; no id, name or filter
    holds one, so any URL with one is refused before a route runs, on every database."""
    for url, params in (("/api/v1/executions", {"user": "a\x00b"}), ("/api/v1/executions", {"action": "x\x00"}),
                        ("/api/v1/executions/abc%00def", {}), ("/api/v1/keys/k%00", {})):
        answer = await client.get(url, params=params)
        assert answer.status_code == 400, (url, params, answer.text)
        assert "NUL character (%00)" in answer.json()["faultstring"]
    assert (await client.get("/api/v1/executions", params={"user": "a%00b"})).status_code == 200  # "%" is fine


async def test_execution_list_takes_st2s_user_time_and_trigger_instance_filters(
        squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 execution list --user/--timestamp-gt/--timestamp-lt/--trigger_instance` send `user`,
    `timestamp_gt`, `timestamp_lt` and `trigger_instance`; they were ignored, so every execution was listed
    and counted in `X-Total-Count`."""
    bob_key, _record = await squall.db(create_key, squall.store, "bob")
    async with _client(squall, **{"St2-Api-Key": bob_key}) as bob:
        by_bob = (await bob.post("/api/v1/executions", json={"action": "demo.greet",
                                                             "parameters": {"who": "b"}})).json()
    await squall.executions.wait(by_bob["id"], timeout=20)
    hooked = await client.post("/api/v1/webhooks/ci/build/", json={"who": "hook"})
    assert hooked.status_code == 202
    await squall.triggers.settle()
    (instance,) = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    by_rule = [e for e in await squall.executions.list(limit=10) if e["context"].get("trigger_instance")]
    assert [e["context"]["trigger_instance"]["id"] for e in by_rule] == [instance["id"]]
    await squall.executions.wait(by_rule[0]["id"], timeout=20)

    async def listed(**params: str) -> tuple[list[str], str]:
        page = await client.get("/api/v1/executions", params={"parent": "null", **params})
        assert page.status_code == 200, page.text
        return [e["id"] for e in page.json()], page.headers["X-Total-Count"]

    assert await listed(user="bob") == ([by_bob["id"]], "1")
    assert await listed(user="nobody") == ([], "0")
    assert await listed(trigger_instance=instance["id"]) == ([by_rule[0]["id"]], "1")
    assert await listed(trigger_instance="000000000000000000000000") == ([], "0")
    assert await listed(timestamp_gt="2999-01-01T00:00:00.000Z") == ([], "0")
    assert await listed(timestamp_lt="2000-01-01T00:00:00Z") == ([], "0")
    both = ([by_rule[0]["id"], by_bob["id"]], "2")
    assert await listed(timestamp_gt="2000-01-01T00:00:00.000Z", timestamp_lt="2999-01-01T00:00:00Z") == both
    assert await listed(timestamp_gt=by_bob["start_timestamp"]) == ([by_rule[0]["id"]], "1")  # strictly after
    assert await listed(timestamp_lt=by_rule[0]["start_timestamp"].replace("Z", "+00:00")) == ([by_bob["id"]], "1")
    assert await listed(timestamp_gt="2000-01-01T02:00:00+02:00", user="bob", limit="1") == ([by_bob["id"]], "1")
    for name, value in (("timestamp_gt", "yesterday"), ("timestamp_lt", "2024-13-01T00:00:00Z"),
                        ("timestamp_lt", "9999-12-31T23:59:59-23:00")):
        bad = await client.get("/api/v1/executions", params={name: value})
        assert bad.status_code == 400 and name in bad.json()["faultstring"] and value in bad.json()["faultstring"]


async def test_include_and_exclude_attributes_project_executions_as_stackstorm_does(
        squall: Squall, client: httpx.AsyncClient) -> None:
    """st2web's history and `st2 execution list` ask for the attributes they show
    (`include_attributes=id,status,action.ref,...`) so that no result is shipped to a list; they
    were ignored, and each listed execution came with its whole result (up to 2 MiB of output)."""
    created = (await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                             "parameters": {"who": "ann"}})).json()
    await squall.executions.wait(created["id"], timeout=20)
    listed = await client.get("/api/v1/executions",
                              params={"include_attributes": "status,action.ref,action.name,context.user,rule.ref"})
    assert listed.status_code == 200, listed.text
    (shown,) = listed.json()
    assert shown == {"id": created["id"], "status": "succeeded", "action": {"ref": "demo.greet", "name": "greet"},
                     "context": {"user": "squall"}}
    one = (await client.get(f"/api/v1/executions/{created['id']}", params={"include_attributes": "result"})).json()
    assert set(one) == {"id", "result"} and "hello ann" in one["result"]["stdout"]
    without = (await client.get("/api/v1/executions", params={"exclude_attributes": "result,liveaction"})).json()
    assert "result" not in without[0] and "liveaction" not in without[0] and without[0]["status"] == "succeeded"
    for params, named in (({"include_attributes": "status,nosuch.field"}, "nosuch.field"),
                          ({"exclude_attributes": "resul"}, "resul"),
                          ({"include_attributes": "status", "exclude_attributes": "result"}, "mutually exclusive")):
        bad = await client.get("/api/v1/executions", params=params)
        assert bad.status_code == 400 and named in bad.json()["faultstring"], bad.text
        bad_one = await client.get(f"/api/v1/executions/{created['id']}", params=params)
        assert bad_one.status_code == 400 and named in bad_one.json()["faultstring"], bad_one.text


def test_execution_list_filters_on_sqlite_and_postgresql(database_url: str) -> None:
    """The filters of `st2 execution list` as SQL on both databases (PostgreSQL reads `context.user` by
    the expression of migration 0019's index)."""
    store = Store.open(database_url)
    try:
        start = datetime(2025, 1, 1, tzinfo=UTC)
        rows = [("e1", "ann", None, start), ("e2", "bob", "ti-1", start + timedelta(hours=1)),
                ("e3", "bob", "ti-2", start + timedelta(hours=2)), ("e4", "bob", None, start + timedelta(hours=3))]
        for execution_id, user, instance, started in rows:
            context = {"user": user, **({"trigger_instance": {"id": instance, "name": "t"}} if instance else {})}
            store.insert_execution({
                "id": execution_id, "action": "core.noop", "runner": "noop", "status": "succeeded",
                "parameters": {}, "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
                "context": context, "log": [], "parent": "e1" if execution_id == "e4" else None,
                "runner_info": None, "start_timestamp": started, "end_timestamp": None})

        def ids(**filters: Any) -> tuple[list[str], int]:
            found, total = store.page_executions(limit=2, offset=0, oldest_first=False, **filters)
            return [r["id"] for r in found], total

        assert ids(user="bob") == (["e4", "e3"], 3)
        assert ids(user="bob", parent="null") == (["e3", "e2"], 2)
        assert ids(trigger_instance="ti-2") == (["e3"], 1)
        assert ids(since=start + timedelta(hours=1)) == (["e4", "e3"], 2)  # strictly after
        assert ids(until=start + timedelta(hours=1)) == (["e1"], 1)  # strictly before
        later = (start + timedelta(minutes=90)).astimezone(timezone(timedelta(hours=-5)))  # the same instant
        assert ids(since=later, user="bob", status="succeeded", action="core.noop") == (["e4", "e3"], 2)
    finally:
        store.close()


async def test_key_put_stores_encrypted_values_as_given_and_never_the_mask_over_a_secret(
        squall: Squall, client: httpx.AsyncClient) -> None:
    """StackStorm's backup and restore (`st2 key list -j` then `st2 key load`): `encrypted: true` means the
    value is ciphertext already, checked and stored as given (it was encrypted again, or stored plain by
    `st2 key set --encrypted`); Squall's export shows a secret as the mask, which loaded back replaced the
    secret with eight asterisks. Only an export with `--decrypt` restores secrets, encrypted again here."""
    sealed = squall.datastore.keys.encrypt("hunter2")
    for body in ({"value": sealed, "encrypted": True}, {"value": sealed, "secret": True, "encrypted": True}):
        put = await client.put("/api/v1/keys/dbpass", json=body)
        assert put.status_code == 200 and put.json()["secret"] is True, put.text
        assert await squall.db(squall.datastore.lookup, "system", "dbpass") == sealed  # as given, not sealed again
        shown = await client.get("/api/v1/keys/dbpass", params={"decrypt": "true"})
        assert shown.json()["value"] == "hunter2"
    forged = await client.put("/api/v1/keys/k2", json={"value": "not-a-ciphertext", "encrypted": True})
    assert forged.status_code == 400 and "not valid ciphertext" in forged.json()["faultstring"]
    assert (await client.get("/api/v1/keys/k2")).status_code == 404

    (exported,) = (await client.get("/api/v1/keys")).json()  # `st2 key list -j`
    assert exported["value"] == MASK and exported["encrypted"] is True
    for body in (exported, {"value": MASK, "secret": True}, {"value": MASK}):
        refused = await client.put("/api/v1/keys/dbpass", json=body)
        assert refused.status_code == 400 and "--decrypt" in refused.json()["faultstring"], refused.text
    assert (await client.delete("/api/v1/keys/dbpass")).status_code == 204
    refused = await client.put("/api/v1/keys/dbpass", json=exported)  # restoring into an empty datastore
    assert refused.status_code == 400 and "--decrypt" in refused.json()["faultstring"]
    assert (await client.get("/api/v1/keys/dbpass")).status_code == 404

    await client.put("/api/v1/keys/dbpass", json={"value": "hunter2", "secret": True})
    (clear,) = (await client.get("/api/v1/keys", params={"decrypt": "true"})).json()  # `st2 key list -d -j`
    assert (await client.delete("/api/v1/keys/dbpass")).status_code == 204
    restored = await client.put("/api/v1/keys/dbpass", json=clear)
    assert restored.status_code == 200 and restored.json()["value"] == MASK
    assert (await client.get("/api/v1/keys/dbpass", params={"decrypt": "true"})).json()["value"] == "hunter2"
    assert await squall.db(squall.datastore.lookup, "system", "dbpass") != "hunter2"
    plain = await client.put("/api/v1/keys/stars", json={"value": MASK})  # not a secret, over none: just text
    assert plain.status_code == 200 and (await client.get("/api/v1/keys/stars")).json()["value"] == MASK


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


async def test_the_chatops_pack_ships_stackstorms_result_rules(client: httpx.AsyncClient) -> None:
    """hubot-stackstorm and err-stackstorm get their commands' results through these two rules of
    StackStorm's chatops pack (spec §3.2): without them a relayed command's notify trigger fired unheard."""
    rules = {r["ref"]: r for r in (await client.get("/api/v1/rules", params={"pack": "chatops"})).json()}
    assert sorted(rules) == ["chatops.notify", "chatops.notify-errbot"]
    passed = {"channel": "{{trigger.data.source_channel}}", "user": "{{trigger.data.user}}",
              "execution_id": "{{trigger.execution_id}}", "context": "{{trigger.data.source_context}}"}
    for ref, route, extra in (("chatops.notify", "hubot", {}),
                              ("chatops.notify-errbot", "errbot", {"route": "{{trigger.route}}"})):
        rule = rules[ref]
        assert rule["enabled"] is True and rule["trigger"]["type"] == "core.st2.generic.notifytrigger"
        assert rule["criteria"] == {"trigger.route": {"pattern": route, "type": "equals"}}
        assert rule["action"] == {"ref": "chatops.post_result", "parameters": {**passed, **extra}}


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
    """A 201, as StackStorm's (and `POST /aliasexecution`): err-stackstorm reads the JSON of a 201 or a 400
    only, and posted a 200's whole text into chat in place of the ack. Each result is shaped as
    `/aliasexecution`'s answer."""
    answer = await client.post("/api/v1/aliasexecution/match_and_execute",
                               json={"command": "greet zed", "user": "", "source_channel": "cli"})
    assert answer.status_code == 201, answer.text
    assert set(answer.json()) == {"results"}
    (result,) = answer.json()["results"]
    assert result["actionalias"]["ref"] == "demo.greet" and result["execution"]["action"]["ref"] == "demo.greet"
    single = await client.post("/api/v1/aliasexecution", json={"command": "greet amy", "source_channel": "cli"})
    assert single.status_code == 201, single.text
    assert set(result) == set(single.json()) == {"execution", "actionalias", "message"}
    assert set(result["execution"]) == set(single.json()["execution"])
    assert (result["message"], single.json()["message"]) == ("greeting zed", "greeting amy")
    await squall.executions.wait(single.json()["execution"]["id"], timeout=20)
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


async def test_run_delay_holds_the_execution_delayed(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 run --delay MS` sends `delay` (ms) beside the action, as StackStorm's LiveAction has it; it was
    dropped, so the action ran at once. Held `delayed` now, within the bounds `re-run --delay` has, and
    refused past them in the same words."""
    held = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"},
                                                         "delay": 600_000})
    assert held.status_code == 201, held.text
    assert held.json()["status"] == "delayed"
    stored = await squall.executions.get(held.json()["id"])
    assert stored["status"] == "delayed" and "delayed_until" in stored["runner_info"]
    assert (await client.delete(f"/api/v1/executions/{held.json()['id']}")).json()["status"] == "canceled"
    done = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "y"},
                                                          "delay": None})).json()  # what st2client may send
    assert (await squall.executions.wait(done["id"], timeout=20))["status"] == "succeeded"
    for delay in (-1, 30 * 24 * 3600 * 1000 + 1, "soon"):
        refused = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "z"},
                                                                 "delay": delay})
        again = await client.post(f"/api/v1/executions/{done['id']}/re_run", json={"delay": delay})
        assert refused.status_code == again.status_code == 400, (refused.text, again.text)
        assert refused.json()["faultstring"] == again.json()["faultstring"]
        assert "delay" in refused.json()["faultstring"]
    assert {e["parameters"]["who"] for e in await squall.executions.list(limit=10)} == {"x", "y"}


async def test_run_as_another_user_needs_a_key_from_the_config(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 run -u bob` sends `"user": "bob"`; it was dropped, so the run was recorded as the key's user (or,
    for a key from the config, the server's login name). As `action-alias execute -u`: a key from the config
    names nobody and may name anyone; a stored key or a token only its own user (403 otherwise)."""
    as_bob = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"},
                                                           "user": "bob"})
    assert as_bob.status_code == 201, as_bob.text
    assert as_bob.json()["context"]["user"] == "bob"
    nobody = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "y"},
                                                            "user": None, "context": {"user": "carol"}})).json()
    assert nobody["context"]["user"] == "carol"  # st2client's null: the config key's context, as before
    key, _record = await squall.db(create_key, squall.store, "alice")
    async with _client(squall) as anon:
        token = (await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": key}, json={})).json()["token"]
    for headers in ({"St2-Api-Key": key}, {"X-Auth-Token": token}):
        async with _client(squall, **headers) as alice:
            forged = await alice.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "z"},
                                                                  "user": "bob"})
            assert forged.status_code == 403, forged.text
            assert "speaks for alice; it may not act as bob" in forged.json()["faultstring"]
            own = await alice.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "a"},
                                                               "user": "alice"})
            assert own.status_code == 201 and own.json()["context"]["user"] == "alice", own.text
            await squall.executions.wait(own.json()["id"], timeout=20)
    for record in (as_bob.json(), nobody):
        await squall.executions.wait(record["id"], timeout=20)
    assert "z" not in {e["parameters"]["who"] for e in await squall.executions.list(limit=10)}
    audited = await squall.db(squall.store.audit_list, 10, "api.execution")
    assert {(a["target"], a["detail"].get("user")) for a in audited} >= {(as_bob.json()["id"], "bob")}

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


async def test_a_login_token_ends_with_the_api_key_it_was_obtained_with(squall: Squall,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall apikey delete` promises that requests with the key are refused from now on: that includes
    the tokens `st2 login` obtained with it, which outlived it until they expired. StackStorm's API has no
    call that revokes a token, so deleting or disabling its key (or removing a configured key from the
    config) is how one is revoked; tokens of other keys go on working."""
    monkeypatch.setenv(KEYS_ENV, "bridge-key-1")  # a configured key, as api.keys: in this app only
    keys = {name: await squall.db(create_key, squall.store, name) for name in ("bob", "dan", "ann")}
    tokens = {}
    async with _client(squall) as anon:
        for name, (key, _record) in keys.items():
            login = await anon.post("/auth/v1/tokens", headers={"Authorization": _basic(name, key)}, json={})
            assert login.status_code == 201, login.text
            tokens[name] = login.json()["token"]
        for name, key in (("carol", KEY), ("bridge", "bridge-key-1")):
            login = await anon.post("/auth/v1/tokens", headers={"Authorization": _basic(name, key)}, json={})
            assert login.status_code == 201, login.text
            tokens[name] = login.json()["token"]

    await squall.db(squall.store.api_key_delete, keys["bob"][1]["id"])  # what `squall apikey delete` does
    await squall.db(_disable_key, squall, keys["dan"][1]["id"])
    monkeypatch.delenv(KEYS_ENV)  # the configured key is gone from the config: apps made now lack it
    for name, works in (("bob", False), ("dan", False), ("bridge", False), ("ann", True), ("carol", True)):
        async with _client(squall, **{"X-Auth-Token": tokens[name]}) as holder:
            me = await holder.get("/api/v1/user")
            ran = await holder.post("/api/v1/executions", json={"action": "demo.greet",
                                                                "parameters": {"who": f"after-{name}"}})
        if works:
            assert me.status_code == 200 and me.json()["username"] == name, (name, me.text)
            assert ran.status_code == 201, ran.text
            await squall.executions.wait(ran.json()["id"], timeout=20)
        else:
            assert me.status_code == 401 and "deleted or disabled" in me.json()["faultstring"], (name, me.text)
            assert ran.status_code == 401, (name, ran.text)
    assert {e["parameters"]["who"] for e in await squall.executions.list(limit=10)} == {"after-ann", "after-carol"}


def _disable_key(squall: Squall, key_id: str) -> None:
    with squall.store._write() as conn:
        conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(enabled=False))


def _expire_all(squall: Squall) -> None:
    with squall.store._write() as conn:
        conn.execute(auth_tokens.update().values(expires_at=utcnow() - timedelta(seconds=1)))


def _count_tokens(squall: Squall) -> int:
    with squall.store._read() as conn:
        rows = conn.execute(auth_tokens.select()).fetchall()
    assert all(len(row.token_hash) == 64 for row in rows)
    return len(rows)


#: Every list route with a `limit`, and whether it tells the total in `X-Total-Count`.
#: Every list with a `limit`; True for those read in SQL, whose default page is 50.
LIMITED_LISTS = {"/api/v1/executions": True, "/api/v1/rules": False, "/api/v1/triggertypes": False,
                 "/api/v1/triggerinstances": True, "/api/v1/ruleenforcements": True, "/api/v1/actions": False,
                 "/api/v1/actionalias": False, "/api/v1/packs": False}


async def test_limit_minus_one_lists_everything_on_every_list_route(squall: Squall,
                                                                    client: httpx.AsyncClient) -> None:
    """StackStorm's `limit=-1` is the full result set (`st2 execution|rule|trigger-instance list -n -1`,
    hubot-stackstorm's `GET /actionalias?limit=-1`); it was a 400 ("greater than or equal to 1")
    everywhere. 0 and below -1 stay refused, with what to send instead."""
    for who in ("a", "b"):
        assert (await client.post("/api/v1/webhooks/ci/build/", json={"who": who})).status_code == 202
    await squall.triggers.settle()
    for execution in await squall.executions.list(limit=10):
        await squall.executions.wait(execution["id"], timeout=20)
    for path, in_sql in LIMITED_LISTS.items():
        everything = await client.get(path, params={"limit": -1})
        assert everything.status_code == 200, (path, everything.text)
        unpaged = await client.get(path, params={"limit": 1000} if in_sql else {})
        assert everything.json() == unpaged.json() and len(everything.json()) >= 2, path
        assert "X-Limit" not in everything.headers, path  # StackStorm sends none for the whole set
        assert everything.headers["X-Total-Count"] == str(len(everything.json())), path  # st2's "Only first N"
        one = await client.get(path, params={"limit": 1})
        assert len(one.json()) == 1 and one.headers.get("X-Limit", "1") == "1", path
        assert one.headers["X-Total-Count"] == everything.headers["X-Total-Count"], path
        second = await client.get(path, params={"limit": 1, "offset": 1})
        assert second.json() == everything.json()[1:2], path
        for wrong in (0, -2):
            refused = await client.get(path, params={"limit": wrong})
            assert refused.status_code == 400, (path, wrong, refused.text)
            assert "-1 for the full result set" in refused.json()["faultstring"], path
    skipped = await client.get("/api/v1/actions", params={"limit": -1, "offset": 1})
    assert len(skipped.json()) == int(skipped.headers["X-Total-Count"]) - 1
    ordered = await client.get("/api/v1/executions", params={"limit": -1, "offset": 1, "sort_asc": "true"})
    assert len(ordered.json()) == int(ordered.headers["X-Total-Count"]) - 1


async def test_put_rule_turns_it_on_and_off_in_its_file_at_once(squall: Squall, home: Path,
                                                                client: httpx.AsyncClient) -> None:
    """`st2 rule enable|disable` read the rule, then `PUT /rules/{id}` the whole document (less `ref`) with
    `enabled` changed; rules had no `id` and no PUT route (405). The change is written to the rule's pack
    file and used at once; any other change is refused, since rules are edited in their pack files."""
    rule = (await client.get("/api/v1/rules/demo.on_build")).json()
    assert len(rule["id"]) == 24 and int(rule["id"], 16) >= 0
    assert (await client.get(f"/api/v1/rules/{rule['id']}")).json() == rule
    assert rule["id"] != (await client.get("/api/v1/rules/demo.on_signed")).json()["id"]
    sent = {k: v for k, v in rule.items() if k != "ref"}

    off = await client.put(f"/api/v1/rules/{rule['id']}", json={**sent, "enabled": False})
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False and off.json()["id"] == rule["id"]
    rule_file = home / "packs" / "demo" / "rules" / "on_build.yaml"
    assert "enabled: false" in rule_file.read_text()
    assert squall.rules.rules["demo.on_build"].enabled is False
    assert (await client.post("/api/v1/webhooks/ci/build/", json={"who": "x"})).status_code == 404  # not live
    on = await client.put("/api/v1/rules/demo.on_build", json={**sent, "enabled": True})
    assert on.status_code == 200 and on.json()["enabled"] is True and "enabled: true" in rule_file.read_text()
    assert (await client.post("/api/v1/webhooks/ci/build/", json={"who": "y"})).status_code == 202
    events = [e["event"] for e in await squall.db(squall.store.audit_list, 10)]
    assert "api.rule.disable" in events and "api.rule.enable" in events

    renamed = await client.put(f"/api/v1/rules/{rule['id']}", json={**sent, "enabled": False, "description": "x",
                                                                    "action": {"ref": "core.local"}})
    assert renamed.status_code == 400
    assert "edited in their pack files" in renamed.json()["faultstring"]
    assert "action, description" in renamed.json()["faultstring"]
    unsaid = await client.put("/api/v1/rules/demo.on_build", json={"description": rule["description"]})
    assert unsaid.status_code == 400 and '"enabled": true or false' in unsaid.json()["faultstring"]
    assert "enabled: true" in rule_file.read_text() and squall.rules.rules["demo.on_build"].enabled
    missing = await client.put("/api/v1/rules/demo.nope", json={"enabled": False})
    assert missing.status_code == 404 and "GET /api/v1/rules" in missing.json()["faultstring"]
    async with _client(squall) as anon:
        assert (await anon.put("/api/v1/rules/demo.on_build", json={"enabled": False})).status_code == 401
    assert squall.rules.rules["demo.on_build"].enabled


async def test_match_and_execute_runs_a_match_multiple_alias_once_per_fit(home: Path) -> None:
    """StackStorm's `match_and_execute` runs one execution per fit of a `match_multiple` format and answers
    one result each (err-stackstorm and `st2 action-alias execute` rely on it); Squall ran the first fit
    alone. `POST /aliasexecution` answers one execution, as StackStorm's (its `results[0]`)."""
    _home(home)
    write(home / "packs" / "demo" / "aliases" / "duplicate.yaml", r"""
        name: duplicate
        action_ref: demo.greet
        description: One execution per issue key.
        formats:
          - display: "duplicate of <issue>"
            representation: ["(?:\\b|^)duplicate of (?P<who>[A-Z][A-Z0-9]+-[0-9]+)(?:\\b|$)"]
            match_multiple: true
        ack: {format: "noting {{ execution.parameters.who }}"}
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        async with _client(app, **{"St2-Api-Key": KEY}) as client:
            command = "this is a duplicate of ABC-1 and also duplicate of ABC-2"
            answer = await client.post("/api/v1/aliasexecution/match_and_execute",
                                       json={"command": command, "user": "zed", "source_channel": "cli"})
            assert answer.status_code == 201, answer.text
            results = answer.json()["results"]
            assert [r["message"] for r in results] == ["noting ABC-1", "noting ABC-2"]
            assert {r["actionalias"]["ref"] for r in results} == {"demo.duplicate"}
            for result, who in zip(results, ("ABC-1", "ABC-2"), strict=True):
                done = await app.executions.wait(result["execution"]["id"], timeout=20)
                assert done["parameters"]["who"] == who and done["context"]["api_user"] == "zed"
            audited = await app.db(app.store.audit_list, 10, "api.execution")
            assert sorted(e["detail"]["execution"] for e in audited) == sorted(r["execution"]["id"] for r in results)
            single = await client.post("/api/v1/aliasexecution", json={"command": command, "user": "zed"})
            assert single.status_code == 201 and single.json()["message"] == "noting ABC-1"
            assert len(await app.executions.list(action="demo.greet")) == 3
    finally:
        await app.triggers.settle()
        await app.close()


#: StackStorm's API, auth and stream URLs as Squall serves them, on the test client's base URL: for st2
#: (st2client takes them whole) and for hubot (st2client.js adds /v1 to the API's and the stream's itself).
ST2_URLS = "ST2_API_URL=http://squall/api/v1 ST2_AUTH_URL=http://squall/auth/v1 ST2_STREAM_URL=http://squall/stream/v1"
HUBOT_URLS = "ST2_API_URL=http://squall/api ST2_STREAM_URL=http://squall/stream ST2_AUTH_URL=http://squall/auth/v1"


def _names_the_right_urls(answer: httpx.Response, right: str) -> None:
    """A JSON 404 fault that names where the request should have gone and the settings for st2 and hubot."""
    assert answer.status_code == 404, (answer.request.url, answer.status_code, answer.headers, answer.text)
    assert answer.headers["content-type"] == "application/json"
    said = answer.json()["faultstring"]
    assert f"serves this at {right}." in said and ST2_URLS in said and HUBOT_URLS in said, said


async def test_stackstorms_direct_urls_are_a_404_naming_squalls(squall: Squall, client: httpx.AsyncClient) -> None:
    """st2client's default API URL is st2api's own, `http://host:9101/v1`; Squall serves StackStorm's API
    under /api/v1, as StackStorm does behind its nginx. `GET /v1/actions` answered a bare "Not Found", so
    an operator pointing st2 at Squall as at st2api was told nothing of where to point it. The auth
    service's `/tokens` and the stream's `/v1/stream` on this port are said the same way, with or without
    a credential; nothing is served there twice."""
    async with _client(squall) as anonymous:
        for asking in (client, anonymous):
            for method in ("GET", "POST"):
                _names_the_right_urls(await asking.request(method, "/v1/actions", params={"pack": "demo"}),
                                      "http://squall/api/v1/actions")
                _names_the_right_urls(await asking.request(method, "/tokens"), "http://squall/auth/v1/tokens")
            _names_the_right_urls(await asking.get("/v1/stream"), "http://squall/stream/v1/stream")
            _names_the_right_urls(await asking.get("/v1"), "http://squall/api/v1")
    assert (await client.get("/api/v1/actions", params={"pack": "demo"})).status_code == 200
    unknown = await client.get("/api/v1/nothing")  # a route the API does not have is only that
    assert unknown.status_code == 404 and "ST2_API_URL" not in unknown.text


async def test_hubot_given_st2s_urls_is_told_its_own(client: httpx.AsyncClient) -> None:
    """hubot-stackstorm's client adds /v1 itself: given st2's `ST2_API_URL=.../api/v1` it asks for
    `/api/v1/v1/actionalias`, and without `ST2_STREAM_URL` it listens on `/api/v1/stream`; both were a bare
    "Not Found". A route's own 404 is still its own."""
    _names_the_right_urls(await client.get("/api/v1/v1/actionalias", params={"limit": "-1"}),
                          "http://squall/api/v1/actionalias")
    _names_the_right_urls(await client.post("/api/v1/v1/aliasexecution", json={"command": "greet x"}),
                          "http://squall/api/v1/aliasexecution")
    _names_the_right_urls(await client.get("/stream/v1/v1/stream"), "http://squall/stream/v1/stream")
    _names_the_right_urls(await client.get("/api/v1/stream"), "http://squall/stream/v1/stream")
    missing = await client.get("/api/v1/actions/demo.nothing")
    assert missing.status_code == 404 and "not found" in missing.json()["faultstring"], missing.text
    assert "ST2_API_URL" not in missing.text


async def test_an_api_request_to_a_web_page_is_a_404_not_a_login_redirect(squall: Squall) -> None:
    """`ST2_API_URL=http://host:port` (no /api/v1) sent st2's `GET /actions` with its `St2-Api-Key` to the
    web UI's page, which answered a 303 to /login, and st2 printed "unexpected character". A request that
    carries an API credential (`St2-Api-Key`, `X-Auth-Token`) or asks only for JSON is an API client's: it
    gets the JSON 404 naming the right URL. A browser still goes to the login page."""
    for headers in ({"St2-Api-Key": KEY}, {"X-Auth-Token": "a-token"}, {"Accept": "application/json"}):
        async with _client(squall, **headers) as api_client:
            _names_the_right_urls(await api_client.get("/actions", params={"pack": "demo"}),
                                  "http://squall/api/v1/actions")
            _names_the_right_urls(await api_client.get("/executions"), "http://squall/api/v1/executions")
            _names_the_right_urls(await api_client.post("/aliasexecution", json={"command": "greet x"}),
                                  "http://squall/api/v1/aliasexecution")  # hubot, on a path with no page
    async with _client(squall, Accept="text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8") as browser:
        page = await browser.get("/actions")
        assert page.status_code == 303 and page.headers["location"].startswith("/login"), page.text
        missing = await browser.get("/nothing")  # the web UI's own 404 page, not the API's JSON
        assert missing.status_code == 404 and "<h1>Not found</h1>" in missing.text


async def test_a_refused_stackstorm_ciphertext_names_no_server_path(squall: Squall,
                                                                    client: httpx.AsyncClient) -> None:
    """`st2 key load` of an export without --decrypt sends StackStorm's keyczar ciphertext with `encrypted:
    true`; the 400 quoted this server's key file path to the API client. The refusal still says why and
    the way out; the server's paths stay on the server."""
    export = {"name": "inventory_token", "scope": "st2kv.system", "secret": True, "encrypted": True,
              "value": "0000000000859D2FC526843DC47609114154BAC717EE6C63A6F92C6D50DAF4F64DAB93F988630C6951D81E9E"}
    refused = await client.put("/api/v1/keys/inventory_token", json=export)
    assert refused.status_code == 400, refused.text
    said = refused.json()["faultstring"]
    key_file = squall.datastore.keys.path
    assert str(key_file) not in said and str(key_file.parent) not in said, said
    assert str(squall.config.data_dir) not in said and "datastore.key" not in said, said
    assert "the server's key file" in said and "--decrypt" in said and "inventory_token" in said
    assert (await client.get("/api/v1/keys/inventory_token")).status_code == 404


def _help_pack(home: Path) -> None:
    """`tests.test_api`'s demo pack (`greet`; `locked`, alice's only) with an alias of several formats (one
    with no display, which help leaves out) and a disabled one (which help leaves out too)."""
    _home(home)
    write(home / "packs" / "demo" / "aliases" / "multi.yaml", """
        name: multi
        action_ref: demo.greet
        description: Deploy things.
        formats:
          - display: "deploy <app> to <env>"
            representation: ["deploy {{who}} to {{env}}"]
          - representation: ["ship {{who}}"]
          - "rollback {{who}}"
    """)
    write(home / "packs" / "demo" / "aliases" / "retired.yaml", """
        name: retired
        action_ref: demo.greet
        description: Disabled.
        enabled: false
        formats: ["never {{who}}"]
    """)


async def test_one_alias_by_its_ref_as_st2_action_alias_get_reads_it(home: Path) -> None:
    """`st2 action-alias get PACK.NAME` reads `GET /actionalias/{ref_or_id}`; it was a bare 404, so st2 said
    the alias it had just listed was not found. `help` and `match` stay routes of their own."""
    _help_pack(home)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        async with _client(app, **{"St2-Api-Key": KEY}) as client:
            listed = {a["ref"]: a for a in (await client.get("/api/v1/actionalias")).json()}
            for ref in ("demo.greet", "demo.retired", "demo.multi"):
                got = await client.get(f"/api/v1/actionalias/{ref}")
                assert got.status_code == 200, got.text
                assert got.json() == listed[ref]
            assert listed["demo.retired"]["enabled"] is False
            missing = await client.get("/api/v1/actionalias/demo.nope")
            assert missing.status_code == 404 and "GET /api/v1/actionalias" in missing.json()["faultstring"]
            assert "demo.nope" in missing.json()["faultstring"]
            help_ = await client.get("/api/v1/actionalias/help")
            assert help_.status_code == 200 and set(help_.json()) == {"available", "helpstrings"}
            matched = await client.post("/api/v1/actionalias/match", json={"command": "rollback web"})
            assert matched.status_code == 200 and matched.json()["actionalias"] == listed["demo.multi"]
    finally:
        await app.close()


async def test_alias_help_is_stackstorms_for_what_the_caller_may_run(home: Path) -> None:
    """err-stackstorm's `!st2help` reads `GET /actionalias/help` (StackStorm's `generate_helpstring_result`):
    each display of the enabled aliases, pack then name, filtered by `pack` and by `filter` (a regular
    expression, any case), `available` counting them all and `limit`/`offset` paging them. It was a 404.
    A stored key's user sees what `/aliasexecution` lets them run; a key from the config, which may run
    commands for anyone, sees them all, as StackStorm lists them."""
    _help_pack(home)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        async with _client(app, **{"St2-Api-Key": KEY}) as client:
            demo = (await client.get("/api/v1/actionalias/help", params={"pack": "demo"})).json()
            assert demo == {"available": 4, "helpstrings": [
                {"pack": "demo", "display": "greet {{who}}", "description": "Greet someone."},
                {"pack": "demo", "display": "secretgreet {{who}}", "description": "Only alice."},
                {"pack": "demo", "display": "deploy <app> to <env>", "description": "Deploy things."},
                {"pack": "demo", "display": "rollback {{who}}", "description": "Deploy things."}]}
            every = (await client.get("/api/v1/actionalias/help")).json()
            enabled = [a for a in (await client.get("/api/v1/actionalias")).json() if a["enabled"]]
            displays = [(a["pack"], f["display"]) for a in enabled for f in a["formats"] if f["display"]]
            assert every["available"] == len(every["helpstrings"]) == len(displays)
            assert [(h["pack"], h["display"]) for h in every["helpstrings"]] == displays  # the list's order

            async def helped(**params: Any) -> tuple[int, list[str]]:
                answer = await client.get("/api/v1/actionalias/help", params={"pack": "demo", **params})
                assert answer.status_code == 200, answer.text
                return answer.json()["available"], [h["display"] for h in answer.json()["helpstrings"]]

            shown = [h["display"] for h in demo["helpstrings"]]
            assert await helped(filter="DEPLOY|^rollback") == (2, shown[2:])
            assert await helped(limit=2, offset=1) == (4, shown[1:3])
            assert await helped(limit=2) == (4, shown[:2])
            assert await helped(offset=3) == (4, shown[3:])
            assert await helped(filter="greet", limit=1, offset=1) == (2, shown[1:2])
            assert await helped(pack="nope") == (0, [])
            for bad in ({"filter": "(unclosed"}, {"limit": -1}, {"offset": -2}, {"limit": "ten"}):
                refused = await client.get("/api/v1/actionalias/help", params=bad)
                assert refused.status_code == 400, (bad, refused.text)
                assert next(iter(bad)) in refused.json()["faultstring"], refused.json()
        for user, sees_locked in (("mallory", False), ("alice", True)):
            key, _record = await app.db(create_key, app.store, user)
            async with _client(app, **{"St2-Api-Key": key}) as own:
                answer = (await own.get("/api/v1/actionalias/help", params={"pack": "demo"})).json()
                expected = [d for d in shown if sees_locked or not d.startswith("secretgreet")]
                assert (answer["available"], [h["display"] for h in answer["helpstrings"]]) == (
                    len(expected), expected), user
                ran = await own.post("/api/v1/aliasexecution", json={"command": "secretgreet x"})
                assert (ran.status_code == 201) is sees_locked, ran.text  # help shows what it runs
                if sees_locked:
                    await app.executions.wait(ran.json()["execution"]["id"], timeout=20)
    finally:
        await app.triggers.settle()
        await app.close()


async def test_metadata_files_are_relative_to_their_pack_as_stackstorms(squall: Squall,
                                                                        client: httpx.AsyncClient) -> None:
    """StackStorm shows an action's and an alias's `metadata_file` relative to its pack (`actions/greet.yaml`);
    Squall showed the path it loaded it by, relative to its working folder or, for a shipped pack, the
    server's absolute path."""
    for ref, pack_path in (("demo.greet", squall.registry.packs["demo"].path),
                           ("core.local", squall.registry.packs["core"].path)):
        shown = (await client.get(f"/api/v1/actions/{ref}")).json()["metadata_file"]
        assert shown == f"actions/{ref.split('.')[1]}.yaml", shown
        assert (pack_path / shown).is_file()
    listed = {a["ref"]: a for a in (await client.get("/api/v1/actions", params={"pack": "demo"})).json()}
    assert listed["demo.greet"]["metadata_file"] == "actions/greet.yaml"
    created = (await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                             "parameters": {"who": "x"}})).json()
    assert created["action"]["metadata_file"] == "actions/greet.yaml"
    alias = (await client.get("/api/v1/actionalias", params={"pack": "demo", "name": "greet"})).json()
    assert [a["metadata_file"] for a in alias] == ["aliases/greet.yaml"]
    await squall.executions.wait(created["id"], timeout=20)


async def test_a_rules_metadata_file_is_relative_to_its_pack_as_stackstorms(squall: Squall,
                                                                           client: httpx.AsyncClient) -> None:
    """A rule's `metadata_file` (`rules/on_build.yaml`), as an action's: the API showed the path Squall loaded it
    by, a shipped pack's the server's absolute path. `st2 rule disable` sends it back whole, which is no change;
    the refusal that names the file to remove keeps the path Squall loaded it by."""
    for ref in ("demo.on_build", "chatops.notify"):
        rule = squall.rules.rules[ref]
        shown = (await client.get(f"/api/v1/rules/{ref}")).json()
        assert not Path(shown["metadata_file"]).is_absolute(), shown["metadata_file"]
        assert Path(shown["metadata_file"]).parts[0] == "rules", shown["metadata_file"]
        assert (squall.registry.packs[rule.pack].path / shown["metadata_file"]).samefile(rule.file)
        listed = (await client.get("/api/v1/rules", params={"pack": rule.pack})).json()
        assert next(r for r in listed if r["ref"] == ref)["metadata_file"] == shown["metadata_file"]
    rule = (await client.get("/api/v1/rules/demo.on_build")).json()
    off = await client.put(f"/api/v1/rules/{rule['id']}", json={**rule, "enabled": False})
    assert off.status_code == 200 and off.json() == {**rule, "enabled": False}, off.text
    refused = await client.delete("/api/v1/rules/demo.on_build")
    assert refused.status_code == 409 and squall.rules.rules["demo.on_build"].file in refused.json()["faultstring"]


async def test_a_keys_expiry_is_in_the_apis_one_time_format(client: httpx.AsyncClient) -> None:
    """Every time of the API is ISO 8601 in UTC with a `Z`, as StackStorm's (`isotime.format`); a key's
    `expire_timestamp` alone said `+00:00`."""
    put = (await client.put("/api/v1/keys/temp", json={"value": "v", "ttl": 600})).json()
    got = (await client.get("/api/v1/keys/temp")).json()
    (listed,) = (await client.get("/api/v1/keys")).json()
    created = (await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                             "parameters": {"who": "x"}})).json()
    for shown in (put["expire_timestamp"], got["expire_timestamp"], listed["expire_timestamp"]):
        assert shown.endswith("Z") and "+" not in shown, shown
        expires = datetime.fromisoformat(shown)
        assert timedelta(seconds=500) < expires - datetime.now(UTC) <= timedelta(seconds=600)
    assert created["start_timestamp"].endswith("Z")
    forever = (await client.put("/api/v1/keys/forever", json={"value": "v"})).json()
    assert forever["expire_timestamp"] is None


async def test_a_paused_workflow_and_its_pending_question_have_no_end_yet(squall: Squall,
                                                                        client: httpx.AsyncClient) -> None:
    """StackStorm sets `end_timestamp` only on a completed status. A workflow paused on a `core.ask` and the
    `pending` question showed the time they began waiting as their end, so `st2 execution list` printed
    a frozen elapsed time for both; once canceled, the workflow has its end."""
    workflow = await squall.executions.request("wf.ask", {})
    question = await pending_ask(squall, workflow["id"])

    async def paused() -> bool:
        return (await squall.executions.get(workflow["id"]))["status"] == "paused"

    await until(paused, "the workflow to pause on its question")
    listed = {e["id"]: e for e in (await client.get("/api/v1/executions", params={"limit": 10})).json()}
    for execution_id, status in ((workflow["id"], "paused"), (question["id"], "pending")):
        got = (await client.get(f"/api/v1/executions/{execution_id}")).json()
        for doc in (got, listed[execution_id]):
            assert doc["status"] == status and doc["start_timestamp"]
            assert not {"end_timestamp", "elapsed_seconds"} & set(doc), doc
    canceled = await client.delete(f"/api/v1/executions/{workflow['id']}")
    assert canceled.status_code == 200, canceled.text
    done = await squall.executions.wait(workflow["id"], timeout=20)
    ended = (await client.get(f"/api/v1/executions/{done['id']}")).json()
    assert ended["status"] == "canceled" and ended["end_timestamp"] and "elapsed_seconds" in ended
