"""The HTTP API: auth, every route, bad input, webhooks (stored before 202), and `squall serve` over loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.http import create_api, hash_key
from bot.web import origin
from engine.config import load_config
from engine.metrics import source_of
from tests.conftest import free_port, wait_until_answering, write
from tests.test_cli import SQUALL, in_process

KEY = "test-key-123"
HOOK_SECRET = "s3cr3t"


def _home(home: Path, extra: str = "") -> Path:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          keys: [{KEY}]
          render_keys: [deployer]
          max_body_bytes: 4096
          webhooks:
            signed: {{secret: {HOOK_SECRET}}}
        auth:
          aliases:
            demo.locked: {{allow: {{users: [alice]}}}}
        {extra}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          password: {type: string, secret: true}
          cmd: {default: 'echo "hello {{who}}"; echo oops >&2', immutable: true}
    """)
    write(pack / "actions" / "slow.yaml", """
        name: slow
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: 'sleep 30', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        description: Greet someone.
        formats: ["greet {{who}}"]
        ack:
          format: "greeting {{ execution.parameters.who }}"
    """)
    write(pack / "aliases" / "locked.yaml", """
        name: locked
        action_ref: demo.greet
        description: Only alice.
        formats: ["secretgreet {{who}}"]
    """)
    write(pack / "triggers" / "event.yaml", """
        name: event
        pack: demo
        payload_schema:
          type: object
          properties:
            n: {type: integer}
    """)
    for name, url in (("on_build", "ci/build/"), ("on_signed", "signed")):
        write(pack / "rules" / f"{name}.yaml", f"""
            name: {name}
            pack: demo
            enabled: true
            trigger: {{type: core.st2.webhook, parameters: {{url: "{url}"}}}}
            action: {{ref: demo.greet, parameters: {{who: "{{{{ trigger.body.who }}}}"}}}}
        """)
    return home


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    app = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                 headers={"St2-Api-Key": KEY}) as c:
        yield c


@pytest.fixture
async def anon(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as c:
        yield c


# -- auth ---------------------------------------------------------------------------------------------

async def test_healthz_and_openapi_need_no_key(anon: httpx.AsyncClient) -> None:
    assert (await anon.get("/healthz")).json()["status"] == "ok"
    spec = (await anon.get("/openapi.json")).json()
    assert "/api/v1/executions" in spec["paths"] and "/api/v1/webhooks/st2" in spec["paths"]


@pytest.mark.parametrize("path", ["/api/v1/executions?offset=99999999999999999999999",
                                  "/api/v1/executions?offset=9223372036854775808",
                                  "/api/v1/keys?limit=99999999999999999999999",
                                  "/api/v1/actions?offset=9223372036854775808",
                                  "/api/v1/actions?limit=99999999999999999999999"])
async def test_a_number_past_64_bits_is_a_4xx_not_a_500(client: httpx.AsyncClient, path: str) -> None:
    """SQLite takes 64-bit integers: a larger offset or limit is refused, named, before any query."""
    answer = await client.get(path)
    assert answer.status_code == 400, answer.text
    assert "less than or equal to 9223372036854775807" in answer.json()["faultstring"]
    assert (await client.get(path.replace("99999999999999999999999", "9223372036854775807")
                             .replace("9223372036854775808", "9223372036854775807"))).status_code == 200


async def test_auth_none_wrong_header_bearer_query(anon: httpx.AsyncClient) -> None:
    missing = await anon.get("/api/v1/actions")
    assert missing.status_code == 401 and "API key required" in missing.json()["faultstring"]
    wrong = await anon.get("/api/v1/actions", headers={"St2-Api-Key": "nope"})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["faultstring"]
    assert (await anon.get("/api/v1/actions", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await anon.get("/api/v1/actions", headers={"St2-Api-Key": KEY})).status_code == 200
    assert (await anon.get("/api/v1/actions", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
    assert (await anon.get("/api/v1/actions", params={"st2-api-key": KEY})).status_code == 200
    assert (await anon.get("/api/v1/actions", headers={"Authorization": f"Basic {KEY}"})).status_code == 401


async def test_env_keys(squall: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUALL_API_KEYS", " one , two ,")
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as c:
        assert (await c.get("/api/v1/packs", headers={"St2-Api-Key": "two"})).status_code == 200
        assert (await c.get("/api/v1/packs", headers={"St2-Api-Key": ""})).status_code == 401


def test_apikey_cli_create_list_delete(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _home(home)
    cli = in_process(home, monkeypatch)
    created = cli("apikey", "create", "--name", "ci", "--json")
    assert created.exit_code == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["name"] == "ci" and len(record["key"]) > 30
    listed = cli("apikey", "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    keys = json.loads(listed.stdout)
    assert [k["id"] for k in keys] == [record["id"]] and "key" not in keys[0] and record["key"] not in listed.stdout
    # only the hash is stored
    engine = sa.create_engine(f"sqlite:///{home / 'data' / 'squall.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM api_keys")).mappings().all()
    engine.dispose()
    assert rows[0]["key_hash"] == hashlib.sha256(record["key"].encode()).hexdigest()
    assert record["key"] not in json.dumps([dict(r) for r in rows], default=str)
    assert cli("apikey", "delete", record["id"]).exit_code == 0
    missing = cli("apikey", "delete", record["id"])
    assert missing.exit_code == 2 and "no API key" in missing.stderr


async def test_created_and_deleted_db_key(squall: Squall, anon: httpx.AsyncClient) -> None:
    from bot.http import create_key

    key, record = await squall.db(create_key, squall.store, "bot")
    assert record["name"] == "bot" and hash_key(key) != key
    assert (await anon.get("/api/v1/packs", headers={"St2-Api-Key": key})).status_code == 200
    assert await squall.db(squall.store.api_key_delete, record["id"])
    assert (await anon.get("/api/v1/packs", headers={"St2-Api-Key": key})).status_code == 401


# -- actions, packs, executions ---------------------------------------------------------------

async def test_actions_and_packs(client: httpx.AsyncClient) -> None:
    actions = (await client.get("/api/v1/actions")).json()
    refs = [a["ref"] for a in actions]
    assert "demo.greet" in refs and "core.local" in refs
    assert [a["ref"] for a in (await client.get("/api/v1/actions", params={"pack": "demo"})).json()] == [
        "demo.greet", "demo.slow"]
    one = (await client.get("/api/v1/actions/demo.greet")).json()
    assert one["runner_type"] == "local-shell-cmd" and one["parameters"]["who"]["required"] is True
    missing = await client.get("/api/v1/actions/demo.nope")
    assert missing.status_code == 404 and "demo.nope" in missing.json()["faultstring"]
    packs = {p["ref"]: p for p in (await client.get("/api/v1/packs")).json()}
    assert {"core", "demo"} <= set(packs) and packs["demo"]["content"]["actions"] == 2


async def test_execution_create_get_list_output_rerun(squall: Squall, client: httpx.AsyncClient) -> None:
    created = await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                            "parameters": {"who": "ann", "password": "hunter2"},
                                                            "context": {"trace": "t1"}})
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["action"]["ref"] == "demo.greet" and record["runner"]["name"] == "local-shell-cmd"
    assert record["context"]["source"] == "api"
    assert record["context"]["trace"] == "t1"
    done = await squall.executions.wait(record["id"], timeout=20)
    assert done["status"] == "succeeded"
    got = (await client.get(f"/api/v1/executions/{record['id']}")).json()
    assert got["status"] == "succeeded" and got["parameters"]["password"] == "********"
    listed = await client.get("/api/v1/executions", params={"action": "demo.greet", "status": "succeeded",
                                                           "limit": 5})
    assert [e["id"] for e in listed.json()] == [record["id"]]
    assert "hunter2" not in listed.text and "hunter2" not in (await client.get("/api/v1/executions")).text
    assert (await client.get("/api/v1/executions", params={"status": "failed"})).json() == []
    output = await client.get(f"/api/v1/executions/{record['id']}/output")
    assert output.status_code == 200 and output.text == "hello ann\noops\n"
    rerun = await client.post(f"/api/v1/executions/{record['id']}/re_run", json={"parameters": {"who": "bob"}})
    assert rerun.status_code == 201
    again = await squall.executions.wait(rerun.json()["id"], timeout=20)
    assert again["result"]["stdout"] == "hello bob" and again["context"]["re-run"]["ref"] == record["id"]


async def test_execution_bad_input(client: httpx.AsyncClient) -> None:
    unknown = await client.post("/api/v1/executions", json={"action": "demo.gret"})
    assert unknown.status_code == 400 and "demo.gret" in unknown.json()["faultstring"]
    missing = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {}})
    assert missing.status_code == 400 and "who" in missing.json()["faultstring"]
    no_action = await client.post("/api/v1/executions", json={"parameters": {}})
    assert no_action.status_code == 400 and "action" in no_action.json()["faultstring"]
    malformed = await client.post("/api/v1/executions", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and "JSON" in malformed.json()["faultstring"]
    assert (await client.get("/api/v1/executions/ffffffffffffffffffffffff")).status_code == 404
    assert (await client.get("/api/v1/executions/ffffffffffffffffffffffff/output")).status_code == 404
    assert (await client.delete("/api/v1/executions/ffffffffffffffffffffffff")).status_code == 404
    assert (await client.post("/api/v1/executions/ffffffffffffffffffffffff/re_run", json={})).status_code == 404
    big = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x" * 5000}})
    assert big.status_code == 413


async def test_cancel_execution(squall: Squall, client: httpx.AsyncClient) -> None:
    record = (await client.post("/api/v1/executions", json={"action": "demo.slow"})).json()
    for _ in range(200):
        if (await squall.executions.get(record["id"]))["status"] == "running":
            break
        await _sleep(0.02)
    canceled = await client.delete(f"/api/v1/executions/{record['id']}")
    assert canceled.status_code == 200 and canceled.json()["status"] in ("canceling", "canceled")
    final = await squall.executions.wait(record["id"], timeout=20)
    assert final["status"] == "canceled"
    again = await client.delete(f"/api/v1/executions/{record['id']}")
    assert again.status_code == 409 and "already canceled" in again.json()["faultstring"]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


# -- aliases ------------------------------------------------------------------------------------------

async def test_alias_list_match_and_execution(squall: Squall, client: httpx.AsyncClient) -> None:
    aliases = (await client.get("/api/v1/actionalias")).json()
    assert {"demo.greet", "demo.locked"} <= {a["ref"] for a in aliases}
    matched = (await client.post("/api/v1/actionalias/match", json={"command": "greet zoe"})).json()
    assert matched["actionalias"]["ref"] == "demo.greet" and matched["parameters"] == {"who": "zoe"}
    assert matched["representation"] == "greet {{who}}"
    nomatch = await client.post("/api/v1/actionalias/match", json={"command": "fly to the moon"})
    assert nomatch.status_code == 400 and "matched no patterns" in nomatch.json()["faultstring"]
    ran = await client.post("/api/v1/aliasexecution", json={"command": "greet zoe", "user": "zed",
                                                            "channel": "#ops"})
    assert ran.status_code == 201, ran.text
    body = ran.json()
    assert body["message"] == "greeting zoe" and body["actionalias"]["ref"] == "demo.greet"
    context = body["execution"]["context"]
    assert context["api_user"] == "zed" and context["source_channel"] == "#ops"
    assert context["action_alias_ref"] == {"id": "demo.greet", "name": "greet"}
    done = await squall.executions.wait(body["execution"]["id"], timeout=20)
    assert done["result"]["stdout"] == "hello zoe"


async def test_alias_execution_checks_permissions_with_bot(squall: Squall) -> None:
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as c:
        denied = await c.post("/api/v1/aliasexecution", json={"command": "secretgreet x", "user": "mallory",
                                                              "channel": "c"})
        assert denied.status_code == 403 and "allowed only for users alice" in denied.json()["faultstring"]
        allowed = await c.post("/api/v1/aliasexecution", json={"command": "secretgreet x", "user": "alice",
                                                               "channel": "c"})
        assert allowed.status_code == 201
        await squall.executions.wait(allowed.json()["execution"]["id"], timeout=20)
    audit = await squall.db(squall.store.audit_list, 10, "api.denied")
    assert audit and audit[0]["actor"] == "mallory"


async def test_a_refused_commands_audit_masks_its_secret_parameters(squall: Squall) -> None:
    """The refusal's audit row keeps the command as typed, and a secret parameter's value with it: the
    row, the audit sinks and the export showed it in clear (the allowed run's audit never holds it)."""
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as c:
        denied = await c.post("/api/v1/aliasexecution", json={
            "command": "secretgreet x password=hunter2-Sx77", "user": "mallory", "channel": "c"})
        assert denied.status_code == 403
    [entry] = await squall.db(squall.store.audit_list, 10, "api.denied")
    assert entry["detail"]["command"] == "secretgreet x password=********"
    assert "hunter2-Sx77" not in json.dumps(await squall.db(squall.store.audit_list, 100), default=str)


# -- rules, triggers, keys -----------------------------------------------------------------------------

async def test_rules_and_enforcements(squall: Squall, client: httpx.AsyncClient) -> None:
    rules = (await client.get("/api/v1/rules")).json()
    rules = [r for r in rules if r["pack"] == "demo"]  # (the shipped chatops pack has its own)
    assert [r["ref"] for r in rules] == ["demo.on_build", "demo.on_signed"]
    assert rules[0]["trigger"] == {"type": "core.st2.webhook", "parameters": {"url": "ci/build/"},
                                   "ref": "core.st2.webhook"}
    assert (await client.get("/api/v1/ruleenforcements")).json() == []
    from engine.storage import utcnow

    await squall.db(squall.store.rule_enforcement_add_once, {
        "id": "e1", "rule": "demo.r", "trigger_instance_id": "t1", "execution_id": None, "status": "failed",
        "failure_reason": "boom", "enforced_at": utcnow()})
    enforcements = (await client.get("/api/v1/ruleenforcements", params={"rule": "demo.r"})).json()
    assert enforcements[0]["failure_reason"] == "boom" and enforcements[0]["enforced_at"].endswith("Z")


async def test_trigger_types_and_instances(squall: Squall, client: httpx.AsyncClient) -> None:
    types = {t["ref"] for t in (await client.get("/api/v1/triggertypes")).json()}
    assert {"demo.event", "core.st2.webhook"} <= types
    instance = await squall.triggers.dispatch("demo.event", {"n": 1})
    listed = (await client.get("/api/v1/triggerinstances", params={"trigger": "demo.event"})).json()
    assert [i["id"] for i in listed] == [instance["id"]]
    got = (await client.get(f"/api/v1/triggerinstances/{instance['id']}")).json()
    assert got["payload"] == {"n": 1}
    assert (await client.get("/api/v1/triggerinstances/nope")).status_code == 404
    emitted = await client.post(f"/api/v1/triggerinstances/{instance['id']}/re_emit")
    assert emitted.status_code == 200 and emitted.json()["id"] != instance["id"]  # StackStorm's 200, not 201
    assert emitted.json()["payload"] == {"n": 1, "__context": {"original_id": instance["id"]}}
    assert (await client.post("/api/v1/triggerinstances/nope/re_emit")).status_code == 404


async def test_keys_crud_and_masking(client: httpx.AsyncClient) -> None:
    put = await client.put("/api/v1/keys/app.token", json={"value": "tok-42", "secret": True})
    assert put.status_code == 200 and put.json()["value"] == "********"
    await client.put("/api/v1/keys/app.name", json={"value": "squall"})
    listed = await client.get("/api/v1/keys", params={"prefix": "app."})
    values = {k["name"]: k["value"] for k in listed.json()}
    assert values == {"app.token": "********", "app.name": "squall"} and "tok-42" not in listed.text
    assert (await client.get("/api/v1/keys/app.token")).json()["value"] == "********"
    assert (await client.get("/api/v1/keys/app.token", params={"decrypt": "true"})).json()["value"] == "tok-42"
    decrypted = await client.get("/api/v1/keys", params={"prefix": "app.", "decrypt": "true"})
    assert {k["name"]: k["value"] for k in decrypted.json()}["app.token"] == "tok-42"
    user = await client.put("/api/v1/keys/pref", json={"value": "dark", "scope": "user", "user": "ann"})
    assert user.json()["scope"] == "st2kv.user"
    assert (await client.get("/api/v1/keys/pref", params={"scope": "user", "user": "ann"})).json()["value"] == "dark"
    bad = await client.put("/api/v1/keys/x", json={"value": "v", "ttl": -1})
    assert bad.status_code == 400 and "ttl" in bad.json()["faultstring"]
    assert (await client.delete("/api/v1/keys/app.name")).status_code == 204
    assert (await client.get("/api/v1/keys/app.name")).status_code == 404
    assert (await client.delete("/api/v1/keys/app.name")).status_code == 404


# -- webhooks ----------------------------------------------------------------------------------------

async def test_a_trigger_type_whose_schema_is_no_schema_is_a_load_problem_and_a_4xx(home: Path) -> None:
    """`payload_schema: {properties: {n: {type: int}}}` (no JSON schema type): named when the pack
    loads, and an instance of it is refused with a 400 that says so, not a 500; other triggers work."""
    _home(home)
    write(home / "packs" / "demo" / "triggers" / "broken.yaml",
          "name: broken\npack: demo\npayload_schema: {type: object, properties: {n: {type: int}}}\n")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        assert [e.reason for e in app.registry.errors if "broken" in e.file] == [
            "trigger type 'demo.broken': payload_schema n: type 'int' is not a JSON schema type; use one of array, "
            "boolean, integer, null, number, object, string"]
        transport = httpx.ASGITransport(app=create_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as c:
            refused = await c.post("/api/v1/webhooks/st2", json={"trigger": "demo.broken", "payload": {"n": 1}})
            assert refused.status_code == 400
            assert ('trigger type "demo.broken" has an invalid payload_schema, so no payload can be checked against '
                    "it (unknown type 'int')") in refused.json()["faultstring"]
            fine = await c.post("/api/v1/webhooks/st2", json={"trigger": "demo.event", "payload": {"n": 1}})
            assert fine.status_code == 202
    finally:
        await app.triggers.settle()
        await app.close()


async def test_a_broken_parameters_schema_costs_only_the_rules_on_it(home: Path) -> None:
    """A trigger type's `parameters_schema` slip (`type: str`, or no mapping at all) reached jsonschema
    when a rule with trigger parameters loaded, and the exception stopped `squall serve` from starting.
    Now the pack load names it, the rules on it are skipped with the reason, and the rest load."""
    _home(home)
    write(home / "packs" / "demo" / "triggers" / "slip.yaml",
          "name: slip\npack: demo\nparameters_schema: {type: object, properties: {path: {type: str}}}\n")
    write(home / "packs" / "demo" / "triggers" / "text.yaml", "name: text\npack: demo\nparameters_schema: oops\n")
    for name in ("slip", "text"):
        write(home / "packs" / "demo" / "rules" / f"on_{name}.yaml",
              f"name: on_{name}\npack: demo\ntrigger: {{type: demo.{name}, parameters: {{path: /x}}}}\n"
              "action: {ref: core.noop}\n")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        reasons = [e.reason for e in app.registry.errors]
        assert ("trigger type 'demo.slip': parameters_schema path: type 'str' is not a JSON schema type; use one of "
                "array, boolean, integer, null, number, object, string") in reasons
        assert "trigger type 'demo.text': parameters_schema must be a mapping (a JSON schema), not str" in reasons
        assert any('trigger type "demo.slip" has a parameters_schema that is not a valid JSON schema' in r
                   for r in reasons), reasons
        loaded = set(app.rules.rules)
        assert "demo.on_slip" not in loaded and "demo.on_text" not in loaded
        assert "demo.on_build" in loaded  # the pack's other rules
    finally:
        await app.close()


async def test_generic_webhook_stores_before_202(squall: Squall, client: httpx.AsyncClient,
                                                 anon: httpx.AsyncClient) -> None:
    body = {"trigger": "demo.event", "payload": {"n": 7}}
    answer = await client.post("/api/v1/webhooks/st2", json=body, headers={"St2-Trace-Tag": "trace-1"})
    assert answer.status_code == 202 and answer.json() == body
    stored = await squall.db(squall.store.trigger_instance_list, "demo.event")  # right away, no waiting
    assert len(stored) == 1 and stored[0]["payload"] == {"n": 7} and stored[0]["trace_tag"] == "trace-1"
    assert (await anon.post("/api/v1/webhooks/st2", json=body)).status_code == 401
    no_trigger = await client.post("/api/v1/webhooks/st2", json={"payload": {}})
    assert no_trigger.status_code == 400 and no_trigger.json()["faultstring"] == "Trigger not specified."
    invalid = await client.post("/api/v1/webhooks/st2", json={"trigger": "demo.event", "payload": {"n": "x"}})
    assert invalid.status_code == 400 and "invalid at n" in invalid.json()["faultstring"]
    unknown = await client.post("/api/v1/webhooks/st2", json={"trigger": "demo.evnt", "payload": {}})
    assert unknown.status_code == 400 and "demo.event" in unknown.json()["faultstring"]
    malformed = await client.post("/api/v1/webhooks/st2", content=b'{"trigger": ',
                                  headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and "Failed to parse request body" in malformed.json()["faultstring"]
    array = await client.post("/api/v1/webhooks/st2", json=[1, 2])
    assert array.status_code == 400
    # `curl -F` sends multipart, which neither StackStorm nor Squall reads: the answer says what to send
    multipart = await client.post("/api/v1/webhooks/st2", files={"trigger": (None, "demo.event")})
    assert multipart.status_code == 400, multipart.text
    assert "multipart/form-data" in multipart.json()["faultstring"]
    assert "application/x-www-form-urlencoded" in multipart.json()["faultstring"]
    big = await client.post("/api/v1/webhooks/st2", json={"trigger": "demo.event", "payload": {"s": "x" * 5000}})
    assert big.status_code == 413


async def test_webhook_body_limit_without_content_length(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    answer = await client.post("/api/v1/webhooks/st2", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413


async def test_custom_webhook(squall: Squall, client: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    unknown = await client.post("/api/v1/webhooks/ci/test", json={"a": 1})
    assert unknown.status_code == 404 and unknown.json()["faultstring"] == "Webhook ci/test not registered"
    assert (await anon.post("/api/v1/webhooks/ci/build", json={"a": 1})).status_code == 401
    answer = await client.post("/api/v1/webhooks/ci/build/", json={"a": 1},
                               headers={"X-Custom": "yes", "Cookie": "c=1"}, params={"st2-api-key": KEY})
    assert answer.status_code == 202 and answer.json() == {"a": 1}
    stored = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    assert len(stored) == 1
    payload = stored[0]["payload"]
    assert payload["body"] == {"a": 1} and payload["headers_lower"]["x-custom"] == "yes"
    assert payload["headers"]["X-Custom"] == "yes" and payload["headers"]["Content-Type"] == "application/json"
    assert stored[0]["trigger_parameters"] == {"url": "ci/build"}
    lowered = {k.lower() for k in payload["headers"]}
    assert not lowered & {"st2-api-key", "cookie", "authorization"}
    assert stored[0]["trace_tag"].startswith("webhook-ci/build-")
    listed = await client.post("/api/v1/webhooks/ci/build", json=[1, 2])
    assert listed.status_code == 202 and listed.json() == [1, 2]
    form = await client.post("/api/v1/webhooks/ci/build", data={"k": "v", "many": ["1", "2"], "blank": ""})
    assert form.status_code == 202
    formed = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    # As StackStorm's parse_qs: every field a list (a rule reads `trigger.body.k[0]`).
    assert {"k": ["v"], "many": ["1", "2"], "blank": [""]} in [row["payload"]["body"] for row in formed]
    malformed = await client.post("/api/v1/webhooks/ci/build", content=b"{oops",
                                  headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and "Failed to parse" in malformed.json()["faultstring"]


async def test_signed_webhook(squall: Squall, anon: httpx.AsyncClient) -> None:
    raw = json.dumps({"event": "push"}).encode()
    good = "sha256=" + hmac.new(HOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json"}
    ok = await anon.post("/api/v1/webhooks/signed", content=raw, headers={**headers, "X-Squall-Signature": good})
    assert ok.status_code == 202, ok.text
    stored = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    assert stored[0]["payload"]["body"] == {"event": "push"}
    assert "x-squall-signature" not in stored[0]["payload"]["headers_lower"]
    bad = await anon.post("/api/v1/webhooks/signed", content=raw + b" ",
                          headers={**headers, "X-Squall-Signature": good})
    assert bad.status_code == 401 and "does not match" in bad.json()["faultstring"]
    unsigned = await anon.post("/api/v1/webhooks/signed", content=raw, headers={**headers, "St2-Api-Key": KEY})
    assert unsigned.status_code == 401 and "X-Squall-Signature" in unsigned.json()["faultstring"]


# -- the real server --------------------------------------------------------------------------------

@pytest.mark.integration
def test_squall_serve_answers_http(home: Path) -> None:
    port = free_port()
    _home(home, """
        adapters:
          console: {enabled: false}
    """)
    text = (home / "config.yml").read_text().replace("max_body_bytes: 4096",
                                                     f"max_body_bytes: 4096\n  host: 127.0.0.1\n  port: {port}")
    (home / "config.yml").write_text(text)
    env = {**os.environ, "SQUALL_API_KEYS": "env-key"}
    server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(base, server, 30)
        headers = {"St2-Api-Key": "env-key"}
        assert httpx.get(f"{base}/api/v1/actions", timeout=5).status_code == 401
        created = httpx.post(f"{base}/api/v1/executions", headers=headers, timeout=5,
                             json={"action": "demo.greet", "parameters": {"who": "net"}})
        assert created.status_code == 201, created.text
        execution_id = created.json()["id"]
        for _ in range(200):
            record = httpx.get(f"{base}/api/v1/executions/{execution_id}", headers=headers, timeout=5).json()
            if record["status"] == "succeeded":
                break
            time.sleep(0.05)
        assert record["result"]["stdout"] == "hello net"
        hook = httpx.post(f"{base}/api/v1/webhooks/st2", headers={"Authorization": "Bearer env-key"}, timeout=5,
                          json={"trigger": "demo.event", "payload": {"n": 3}})
        assert hook.status_code == 202
        instances = httpx.get(f"{base}/api/v1/triggerinstances", headers=headers, timeout=5).json()
        assert instances[0]["payload"] == {"n": 3}
        # A custom webhook end to end: stored, the rule fires, the action runs, the enforcement is recorded.
        fired = httpx.post(f"{base}/api/v1/webhooks/ci/build", headers=headers, timeout=5, json={"who": "hook"})
        assert fired.status_code == 202
        for _ in range(200):
            enforced = httpx.get(f"{base}/api/v1/ruleenforcements", params={"rule": "demo.on_build"},
                                 headers=headers, timeout=5).json()
            if enforced:
                break
            time.sleep(0.05)
        assert enforced[0]["status"] == "succeeded", enforced
        for _ in range(200):
            record = httpx.get(f"{base}/api/v1/executions/{enforced[0]['execution_id']}", headers=headers,
                               timeout=5).json()
            if record["status"] == "succeeded":
                break
            time.sleep(0.05)
        assert record["result"]["stdout"] == "hello hook"
        assert record["context"]["rule"]["ref"] == "demo.on_build"

        # `squall trigger emit` goes through the running service (here with a temporary key, as none is
        # configured for the CLI): the service stored the instance and its rule ran there.
        cli_env = {k: v for k, v in os.environ.items() if k != "SQUALL_API_KEYS"}
        emitted = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "trigger", "emit", "core.st2.webhook",
                                  "--url", "ci/build", "--payload", '{"who": "cli"}'], cwd=home, env=cli_env,
                                 capture_output=True, text=True, timeout=60)
        assert emitted.returncode == 0, emitted.stderr
        instance = json.loads(emitted.stdout)
        assert instance["trace_tag"].startswith("webhook-ci/build-")  # set by the service's webhook route
        assert instance["status"] == "processed" and instance["trigger_parameters"] == {"url": "ci/build"}
        assert "rule demo.on_build: succeeded (execution " in emitted.stderr
        listed = httpx.get(f"{base}/api/v1/triggerinstances/{instance['id']}", headers=headers, timeout=5)
        assert listed.status_code == 200
        keys = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "apikey", "list", "--json"], cwd=home,
                              env=cli_env, capture_output=True, text=True, timeout=60)
        assert json.loads(keys.stdout) == []  # the temporary key is gone
        refused = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "trigger", "emit", "demo.event",
                                  "--payload", '{"n": "x"}'], cwd=home, env=cli_env, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode != 0 and "invalid at n" in refused.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0


async def test_only_keys_named_in_render_keys_may_ask_for_rendering(squall: Squall, anon: httpx.AsyncClient) -> None:
    from bot.http import create_key

    await squall.db(squall.datastore.set, "greeting", "hello")
    body = {"action": "core.local", "parameters": {"cmd": "echo {{ st2kv.system.greeting }}"}}
    # Without `render` the value is data, for any key.
    plain = await anon.post("/api/v1/executions", json=body, headers={"St2-Api-Key": KEY})
    assert plain.status_code == 201
    done = await squall.executions.wait(plain.json()["id"], timeout=30)
    assert done["result"]["stdout"] == "{{ st2kv.system.greeting }}"
    # A configured key, and a stored key not listed, may not ask for rendering.
    refused = await anon.post("/api/v1/executions", json={**body, "render": True}, headers={"St2-Api-Key": KEY})
    assert refused.status_code == 403 and "api.render_keys" in refused.json()["faultstring"]
    other, _ = await squall.db(create_key, squall.store, "someone")
    refused = await anon.post("/api/v1/executions", json={**body, "render": True}, headers={"St2-Api-Key": other})
    assert refused.status_code == 403 and "someone" in refused.json()["faultstring"]
    # The key named in api.render_keys may.
    deployer, _ = await squall.db(create_key, squall.store, "deployer")
    allowed = await anon.post("/api/v1/executions", json={**body, "render": True},
                              headers={"St2-Api-Key": deployer})
    assert allowed.status_code == 201, allowed.text
    assert (await squall.executions.wait(allowed.json()["id"], timeout=30))["result"]["stdout"] == "hello"


# -- what the API audits --------------------------------------------------------------------------------

async def _audited(squall: Squall, event: str) -> list[dict]:
    return await squall.db(squall.store.audit_list, 20, event)


async def test_api_logins_are_audited_with_the_client_s_address(squall: Squall) -> None:
    """`st2 login` tried from where: as the web's logins (`web:<address>`), `api:<address>`, failed or not."""
    import base64

    transport = httpx.ASGITransport(app=create_api(squall), client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as anon:
        guess = base64.b64encode(b"bob:not-a-key").decode()
        assert (await anon.post("/auth/v1/tokens", headers={"Authorization": f"Basic {guess}"})).status_code == 401
        right = base64.b64encode(f"carol:{KEY}".encode()).decode()
        assert (await anon.post("/auth/v1/tokens", headers={"Authorization": f"Basic {right}"})).status_code == 201
    [failed] = await _audited(squall, "api.login.failed")
    assert (failed["actor"], failed["source"]) == ("bob", "api:203.0.113.9")
    [login] = await _audited(squall, "api.login")
    assert (login["actor"], login["source"]) == ("carol", "api:203.0.113.9")


async def test_an_api_re_emit_is_audited_as_the_web_s(squall: Squall, client: httpx.AsyncClient) -> None:
    instance = await squall.triggers.dispatch("demo.event", {"n": 1})
    emitted = (await client.post(f"/api/v1/triggerinstances/{instance['id']}/re_emit")).json()
    [row] = await _audited(squall, "api.trigger.re_emit")
    assert (row["source"], row["target"]) == ("api", "demo.event")
    assert row["detail"] == {"instance": instance["id"], "new_instance": emitted["id"]}
    assert (await client.post("/api/v1/triggerinstances/nope/re_emit")).status_code == 404
    assert len(await _audited(squall, "api.trigger.re_emit")) == 1


async def test_key_set_and_delete_rows_name_the_scope_alike(squall: Squall, client: httpx.AsyncClient) -> None:
    """`api.key.set` and `api.key.delete` say `"scope": "system"` however the request spelled it (as the
    web's rows do), so a search of the audit for one key's scope finds both."""
    for spelled in ("system", "st2kv.system"):
        assert (await client.put("/api/v1/keys/k1", json={"value": "v", "scope": spelled})).status_code == 200
        assert (await client.delete("/api/v1/keys/k1", params={"scope": spelled})).status_code == 204
    rows = await _audited(squall, "api.key.set") + await _audited(squall, "api.key.delete")
    assert [row["detail"]["scope"] for row in rows] == ["system"] * 4


async def test_a_rule_put_that_changes_nothing_writes_no_audit_row(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 rule enable` of an enabled rule changes nothing: no `api.rule.enable` row says it did."""
    rule = {k: v for k, v in (await client.get("/api/v1/rules/demo.on_build")).json().items() if k != "ref"}
    assert rule["enabled"] is True
    assert (await client.put("/api/v1/rules/demo.on_build", json=rule)).status_code == 200
    assert await _audited(squall, "api.rule.enable") == []
    assert (await client.put("/api/v1/rules/demo.on_build", json={**rule, "enabled": False})).status_code == 200
    assert (await client.put("/api/v1/rules/demo.on_build", json={**rule, "enabled": False})).status_code == 200
    [row] = await _audited(squall, "api.rule.disable")
    assert row["target"] == "demo.on_build"


# -- the command path's one length limit -----------------------------------------------------------------

@pytest.fixture
async def roomy(home: Path) -> AsyncIterator[tuple[Squall, httpx.AsyncClient]]:
    """The API with its default 1 MiB body limit, room for a command past the command path's limit."""
    config = _home(home) / "config.yml"
    config.write_text(config.read_text().replace("max_body_bytes: 4096", "max_body_bytes: 1048576"))
    app = await Squall.start(load_config(config))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(app)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            yield app, client
    finally:
        await app.triggers.settle()
        await app.close()


@pytest.mark.parametrize("path", ["/api/v1/actionalias/match", "/api/v1/aliasexecution",
                                  "/api/v1/aliasexecution/match_and_execute"])
async def test_a_command_past_the_chat_s_limit_is_a_400_on_every_alias_route(roomy, path: str) -> None:
    """Chat refuses a command over 100,000 characters before matching it; the API's alias routes took
    one up to the 1 MiB body limit and held the event loop matching it. One limit for the command path."""
    squall, client = roomy
    too_long = "greet " + "x" * (100_001 - len("greet "))
    refused = await client.post(path, json={"command": too_long, "user": "zed"})
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["faultstring"] == "That command is 100,001 characters long; the limit is 100,000."
    assert await squall.executions.list(action="demo.greet") == []


async def test_a_command_at_the_limit_is_still_matched_and_run(roomy) -> None:
    squall, client = roomy
    who = "x" * (100_000 - len("greet "))
    matched = await client.post("/api/v1/actionalias/match", json={"command": f"greet {who}"})
    assert matched.status_code == 200 and matched.json()["parameters"] == {"who": who}
    ran = await client.post("/api/v1/aliasexecution", json={"command": f"greet {who}", "user": "zed"})
    assert ran.status_code == 201, ran.text[:300]
    assert ran.json()["execution"]["parameters"]["who"] == who
    await squall.executions.wait(ran.json()["execution"]["id"], timeout=20)
    refused = await client.post("/api/v1/aliasexecution/match_and_execute",
                                json={"command": f"secretgreet {who[:-6]}", "user": "mallory"})
    assert refused.status_code == 403 and "may not run demo.locked" in refused.json()["faultstring"]  # matched


# -- a change and its audit event commit together --------------------------------------------------------

def disk_full() -> sa.exc.OperationalError:
    """SQLite's SQLITE_FULL as the driver raises it: the database failed, and the whole group with it."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode = 13  # type: ignore[attr-defined]
    return sa.exc.OperationalError("INSERT INTO audit ...", {}, error)


def refused() -> sa.exc.IntegrityError:
    """A statement the database refuses: it fails alone, the rest of its group commits."""
    return sa.exc.IntegrityError("INSERT INTO audit ...", {}, sqlite3.IntegrityError("CHECK constraint failed"))


def failing_audit(squall: Squall, monkeypatch: pytest.MonkeyPatch, event: str, error: Exception,
                  target: str | None = None) -> None:
    """`event`'s audit rows (those about `target` only, if given) fail to store with `error`; every other
    row stores as before."""
    original = squall.store.audit_add

    def audit_add(kind: str, actor: str | None, source: str | None, about: str | None, detail: dict,
                  *at: Any) -> None:
        if kind == event and target in (None, about):
            raise error
        original(kind, actor, source, about, detail, *at)

    monkeypatch.setattr(squall.store, "audit_add", audit_add)


async def test_an_execution_whose_audit_event_fails_is_not_stored(squall: Squall, client: httpx.AsyncClient,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`POST /executions` stored the execution in one commit and its `api.execution` event in the next:
    under a full disk it answered 503 "Try again later" for an execution that was stored and ran, with no
    audit row, and the client's retry ran it twice. Both are one transaction now: nothing is stored."""
    failing_audit(squall, monkeypatch, "api.execution", disk_full())
    answered = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "ann"}})
    assert answered.status_code == 503, answered.text
    assert await squall.executions.list(action="demo.greet") == []
    monkeypatch.undo()
    created = await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                            "parameters": {"who": "bob", "password": "hunter2"}})
    assert created.status_code == 201, created.text
    [row] = await _audited(squall, "api.execution")
    assert (row["actor"], row["source"], row["target"]) == (None, "api", created.json()["id"])
    assert row["detail"] == {"action": "demo.greet", "parameters": created.json()["parameters"]}
    assert row["detail"]["parameters"]["password"] == "********"
    await squall.executions.wait(created.json()["id"], timeout=20)


@pytest.mark.postgres
async def test_on_postgresql_a_change_whose_audit_event_is_refused_is_not_stored(home: Path, postgres_url: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL keeps a group's other writes when one statement is refused (each write has a savepoint of
    its own), so an event refused alone (a value too long for its column) left its change stored: the
    change and its event share a savepoint there (`AuditEntry.together`). A request, a cancel and a key's
    write whose event is refused store nothing."""
    config = _home(home) / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", postgres_url))
    app = await Squall.start(load_config(config))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(app)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            failing_audit(app, monkeypatch, "api.execution", refused())
            answered = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "a"},
                                                                     "delay": 60_000})
            assert answered.status_code == 500, answered.text
            assert await app.executions.list(action="demo.greet") == []
            failing_audit(app, monkeypatch, "api.key.set", refused())
            assert (await client.put("/api/v1/keys/k1", json={"value": "v1"})).status_code == 500
            assert (await client.get("/api/v1/keys/k1")).status_code == 404
            monkeypatch.undo()
            held = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "b"},
                                                                  "delay": 60_000})).json()
            failing_audit(app, monkeypatch, "api.execution.cancel", refused())
            assert (await client.delete(f"/api/v1/executions/{held['id']}")).status_code == 500
            assert (await app.executions.get(held["id"]))["status"] == "delayed"
            monkeypatch.undo()
            assert (await client.delete(f"/api/v1/executions/{held['id']}")).json()["status"] == "canceled"
            assert [row["target"] for row in await _audited(app, "api.execution.cancel")] == [held["id"]]
    finally:
        await app.triggers.settle()
        await app.close()


async def test_a_delayed_execution_is_stored_delayed_in_its_own_commit(squall: Squall, client: httpx.AsyncClient,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`st2 run --delay`: the request was stored, then marked `delayed` in a second write; that write failing
    answered 503 for a stored request (which the poll then ran at once). It is stored `delayed` now."""
    original = squall.store.update_execution

    def update_execution(execution_id: str, fields: dict, **kwargs: Any) -> bool:
        if fields.get("status") == "delayed":
            raise disk_full()
        return original(execution_id, fields, **kwargs)

    monkeypatch.setattr(squall.store, "update_execution", update_execution)
    created = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "ann"},
                                                            "delay": 60_000})
    assert created.status_code == 201, created.text
    stored = squall.store.get_execution(created.json()["id"])
    assert stored["status"] == "delayed" and stored["runner_info"]["delayed_until"]
    assert [e["status"] for e in stored["log"]] == ["delayed"]
    [row] = await _audited(squall, "api.execution")
    assert row["target"] == created.json()["id"]
    monkeypatch.undo()
    assert (await client.delete(f"/api/v1/executions/{created.json()['id']}")).json()["status"] == "canceled"


async def _running(squall: Squall, client: httpx.AsyncClient) -> str:
    record = (await client.post("/api/v1/executions", json={"action": "demo.slow"})).json()
    for _ in range(500):
        if (await squall.executions.get(record["id"]))["status"] == "running":
            return record["id"]
        await _sleep(0.02)
    raise AssertionError(f"{record['id']} never ran")


async def test_a_cancel_whose_audit_event_fails_cancels_nothing(squall: Squall, client: httpx.AsyncClient,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel and its `api.execution.cancel` event are one transaction: an event the disk cannot take
    leaves the execution running (the 503 is true), and the cancel that works is audited with the status
    it wrote."""
    running = await _running(squall, client)
    failing_audit(squall, monkeypatch, "api.execution.cancel", disk_full())
    answered = await client.delete(f"/api/v1/executions/{running}")
    assert answered.status_code == 503, answered.text
    assert (await squall.executions.get(running))["status"] == "running"
    monkeypatch.undo()
    queued = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "a"},
                                                            "delay": 60_000})).json()
    for execution_id in (running, queued["id"]):
        assert (await client.delete(f"/api/v1/executions/{execution_id[:12]}")).status_code == 200
    rows = {row["target"]: row for row in await _audited(squall, "api.execution.cancel")}
    assert rows[running]["detail"] == {"action": "demo.slow", "status": "canceling"}
    assert rows[queued["id"]]["detail"] == {"action": "demo.greet", "status": "canceled"}
    assert (await squall.executions.wait(running, timeout=20))["status"] == "canceled"


async def test_a_cancel_stored_is_answered_though_stopping_the_run_failed(squall: Squall, client: httpx.AsyncClient,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Once `canceling` and its audit event are committed, a database failure while the run is stopped is
    no 503 (a client would be told nothing happened): the answer says `canceling`, and the poll stops it."""
    running = await _running(squall, client)

    async def cancel(_execution_id: str) -> bool:
        raise disk_full()

    monkeypatch.setattr(squall.executions.executor, "cancel", cancel)
    answered = await client.delete(f"/api/v1/executions/{running}")
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "canceling"
    [row] = await _audited(squall, "api.execution.cancel")
    assert row["target"] == running
    monkeypatch.undo()
    await squall.executions.poll()
    assert (await squall.executions.wait(running, timeout=20))["status"] == "canceled"


async def test_a_rerun_whose_audit_event_fails_is_not_stored(squall: Squall, client: httpx.AsyncClient,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run's `api.execution.rerun` event was written after the re-run (`CommandService.rerun` took none):
    a failure between them left a run nobody was audited for. `CommandService.rerun` forwards the event to
    `ExecutionService.rerun` now, which stores it with the re-run, one transaction: under a full disk the
    503 is true (no re-run is stored, so a retry runs it once), and the re-run that works is audited with
    the action, the original and the parameters as stored."""
    first = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "a"}})).json()
    await squall.executions.wait(first["id"], timeout=20)
    failing_audit(squall, monkeypatch, "api.execution.rerun", disk_full())
    failed = await client.post(f"/api/v1/executions/{first['id']}/re_run", json={"parameters": {"who": "b"}})
    assert failed.status_code == 503, failed.text
    assert [e["id"] for e in await squall.executions.list(action="demo.greet")] == [first["id"]]
    monkeypatch.undo()
    again = await client.post(f"/api/v1/executions/{first['id']}/re_run", json={"parameters": {"who": "b"}})
    assert again.status_code == 201, again.text
    assert (await squall.executions.wait(again.json()["id"], timeout=20))["status"] == "succeeded"
    [row] = await _audited(squall, "api.execution.rerun")
    assert (row["actor"], row["source"], row["target"]) == (None, "api", again.json()["id"])
    assert row["detail"] == {"action": "demo.greet", "of": first["id"], "parameters": again.json()["parameters"]}


async def test_a_key_change_whose_audit_event_fails_changes_nothing(squall: Squall, client: httpx.AsyncClient,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`PUT` and `DELETE /keys/{name}` write the pair and its `api.key.*` event in one transaction."""
    failing_audit(squall, monkeypatch, "api.key.set", disk_full())
    assert (await client.put("/api/v1/keys/k1", json={"value": "v1"})).status_code == 503
    assert (await client.get("/api/v1/keys/k1")).status_code == 404
    monkeypatch.undo()
    assert (await client.put("/api/v1/keys/k1", json={"value": "v2", "secret": True, "ttl": 60})).status_code == 200
    failing_audit(squall, monkeypatch, "api.key.delete", disk_full())
    assert (await client.delete("/api/v1/keys/k1")).status_code == 503
    assert (await client.get("/api/v1/keys/k1", params={"decrypt": True})).json()["value"] == "v2"
    monkeypatch.undo()
    wrong = await client.delete("/api/v1/keys/k1", params={"scope": "st2kv.galaxy"})
    assert wrong.status_code == 400 and "unknown scope" in wrong.json()["faultstring"]
    assert (await client.delete("/api/v1/keys/k1", params={"scope": "st2kv.system"})).status_code == 204
    [put] = await _audited(squall, "api.key.set")
    assert (put["target"], put["detail"]) == ("k1", {"scope": "system", "user": None, "secret": True,
                                                     "encrypted": False, "ttl": 60})
    [deleted] = await _audited(squall, "api.key.delete")
    assert (deleted["target"], deleted["detail"]) == ("k1", {"scope": "system", "user": None})


async def test_a_callers_context_does_not_say_where_its_execution_came_from(squall: Squall,
                                                                             client: httpx.AsyncClient) -> None:
    """A caller's `context` named a rule, a parent workflow, a timer's trigger instance or a workflow task,
    and the `source` metric label and the web UI's origin believed it: an API run counted and shown as a
    rule's. Those keys (all `source_of` and `bot.web.origin` read) are Squall's to write; the caller's own
    keys are kept."""
    forged = {"rule": {"ref": "demo.on_build"}, "parent": "0661ede5bd61f4810f4f047c",
              "trigger_instance": {"id": "0661ede5bd61f4810f4f047d", "name": "core.st2.CronTimer"},
              "workflow_task": {"task": "deploy"}, "source_channel": "#ops", "source": "chat",
              "chat": {"adapter": "slack", "channel": "#ops"}, "action_alias_ref": {"id": "demo.greet"},
              "trace": "kept"}
    created = await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "a"},
                                                            "context": forged})
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["context"]["trace"] == "kept" and record["context"]["source"] == "api"
    assert not set(record["context"]) & (set(forged) - {"trace", "source"}), record["context"]
    assert "task" not in record and "parent" not in record
    assert source_of(record["context"]) == "api" and origin.summary(record["context"]) == "api"
    assert [fact.label for fact in origin.details(record)] == ["requested by", "source"]
    await squall.executions.wait(record["id"], timeout=20)
