"""StackStorm's read routes for what Squall loads and runs, which st2client showed as nothing: `/policies`
and `/policytypes` (`st2 policy list|get`, `st2 policy-type list|get`), `/timers` (`st2 timer list|get`) and
`GET /webhooks` (`st2 webhook list|get`); and `/traces`, which Squall keeps none of, refused with a 501 that
says what to use instead (st2client turns a list's 404 into "No matching items found", exit 0).

The API through httpx first, then the real `st2` client (test_st2_cli.py's st2client) against `squall serve`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.conftest import free_port, wait_until_answering, write
from tests.test_api import HOOK_SECRET, KEY, _home
from tests.test_cli import SQUALL
from tests.test_st2_cli import CONFIG_KEY, Server

POLICIES = {
    "one_slow": """
        name: one_slow
        description: One slow run at a time.
        resource_ref: demo.slow
        policy_type: action.concurrency
        parameters: {threshold: 1, action: delay}
    """,
    "greet_again": """
        name: greet.again
        resource_ref: demo.greet
        policy_type: action.retry
        parameters: {retry_on: failure, max_retry_count: 2}
    """,
    "paused": """
        name: paused
        description: Switched off in its file.
        enabled: false
        resource_ref: demo.greet
        policy_type: action.concurrency
        parameters: {threshold: 5}
    """,
    "broken": """
        name: broken
        resource_ref: demo.greet
        policy_type: action.nonsense
    """,
}
TIMER_RULES = {
    "hourly_a": ("core.st2.IntervalTimer", "{unit: hours, delta: 1}", "true"),
    "hourly_b": ("core.st2.IntervalTimer", "{unit: hours, delta: 1}", "true"),
    "someday": ("core.st2.DateTimer", "{date: '2099-01-01 00:00:00'}", "true"),
    "idle": ("core.st2.CronTimer", "{hour: 3, minute: 0}", "false"),
}


def _content(pack: Path) -> None:
    """Policies (two enforced, one disabled, one that does not load) and timer rules (two sharing one
    interval timer, a date timer, a disabled cron timer) in the pack `pack`."""
    for name, text in POLICIES.items():
        write(pack / "policies" / f"{name}.yaml", text)
    for name, (trigger, parameters, enabled) in TIMER_RULES.items():
        write(pack / "rules" / f"{name}.yaml", f"""
            name: {name}
            pack: {pack.name}
            enabled: {enabled}
            trigger: {{type: {trigger}, parameters: {parameters}}}
            action: {{ref: core.noop}}
        """)


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    """The API tests' home (webhook rules on `ci/build/` and the signed `signed`) with `_content`."""
    _home(home)
    _content(home / "packs" / "demo")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    """Following redirects as st2client does: its filtered lists ask `/policies/?pack=...`, which the router
    sends to `/policies?pack=...`."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                 headers={"St2-Api-Key": KEY}, follow_redirects=True) as c:
        yield c


@pytest.fixture
async def anon(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                 base_url="http://squall") as c:
        yield c


async def _refs(client: httpx.AsyncClient, path: str, **params: str) -> list[str]:
    answer = await client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return [item["ref"] for item in answer.json()]


# -- policies ------------------------------------------------------------------------------------

async def test_policies_are_listed_filtered_and_got_as_stackstorm_shows_them(client: httpx.AsyncClient) -> None:
    """`st2 policy list` said "No matching items found" though a concurrency policy was loaded and
    enforced: the enforced policies and those their files disable are listed; one that does not load is not."""
    listed = (await client.get("/api/v1/policies")).json()
    assert [p["ref"] for p in listed] == ["demo.greet.again", "demo.one_slow", "demo.paused"]
    one_slow = next(p for p in listed if p["ref"] == "demo.one_slow")
    assert one_slow == {
        "id": one_slow["id"], "uid": "policy:demo:one_slow", "ref": "demo.one_slow", "pack": "demo",
        "name": "one_slow", "description": "One slow run at a time.", "enabled": True, "resource_ref": "demo.slow",
        "policy_type": "action.concurrency", "parameters": {"threshold": 1, "action": "delay"},
        "metadata_file": one_slow["metadata_file"]}
    # relative to its pack, as StackStorm shows it (and as an action's is), not the path Squall loaded it by
    assert len(one_slow["id"]) == 24 and one_slow["metadata_file"] == "policies/one_slow.yaml"
    assert next(p for p in listed if p["ref"] == "demo.paused")["enabled"] is False

    assert await _refs(client, "/api/v1/policies", pack="demo", resource_ref="demo.greet") == [
        "demo.greet.again", "demo.paused"]
    assert await _refs(client, "/api/v1/policies/", policy_type="action.retry") == ["demo.greet.again"]
    assert await _refs(client, "/api/v1/policies", pack="core") == []

    assert (await client.get("/api/v1/policies/demo.one_slow")).json() == one_slow
    assert (await client.get(f"/api/v1/policies/{one_slow['id']}")).json() == one_slow
    missing = await client.get("/api/v1/policies/demo.one_slo")
    assert missing.status_code == 404
    assert 'Policy "demo.one_slo" is not loaded' in missing.json()["faultstring"]
    assert "did you mean demo.one_slow" in missing.json()["faultstring"]
    assert (await client.get("/api/v1/policies/demo.broken")).status_code == 404


async def test_policy_writes_are_refused_with_a_405_naming_the_file(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 policy update|delete` must not read as done (st2client takes a delete's 404 so): a 405 that
    names the file to edit or remove, by the path Squall loaded it by."""
    got = (await client.get("/api/v1/policies/demo.one_slow")).json()
    loaded = next(d.file for d in squall.registry.documents if d.file.endswith("one_slow.yaml"))
    for answer in (await client.put(f"/api/v1/policies/{got['id']}", json={**got, "enabled": False}),
                   await client.delete(f"/api/v1/policies/{got['id']}"),
                   await client.delete("/api/v1/policies/demo.one_slow")):
        assert answer.status_code == 405 and answer.headers["Allow"] == "GET"
        assert got["metadata_file"] in answer.json()["faultstring"] and loaded in answer.json()["faultstring"]
        assert "Policy demo.one_slow cannot be" in answer.json()["faultstring"]
    created = await client.post("/api/v1/policies", json={"name": "new", "resource_ref": "demo.greet"})
    assert created.status_code == 405 and "policies/<name>.yaml" in created.json()["faultstring"]
    assert (await client.delete("/api/v1/policies/demo.nothing")).status_code == 404


async def test_policy_types_are_the_ones_squall_enforces(client: httpx.AsyncClient) -> None:
    """`st2 policy-type list` got a bare 404."""
    types = (await client.get("/api/v1/policytypes")).json()
    assert [t["ref"] for t in types] == ["action.concurrency", "action.concurrency.attr", "action.retry"]
    concurrency = types[0]
    assert concurrency["name"] == "concurrency" and concurrency["resource_type"] == "action"
    assert concurrency["uid"] == "policy_type:action:concurrency" and concurrency["enabled"] is True
    assert concurrency["parameters"]["threshold"]["required"] is True
    assert types[1]["parameters"]["attributes"]["type"] == "array"
    assert await _refs(client, "/api/v1/policytypes", resource_type="action") == [t["ref"] for t in types]
    assert await _refs(client, "/api/v1/policytypes", resource_type="rule") == []
    assert (await client.get("/api/v1/policytypes/action.retry")).json() == types[2]
    assert (await client.get(f"/api/v1/policytypes/{types[2]['id']}")).json() == types[2]
    unknown = await client.get("/api/v1/policytypes/action.executions")
    assert unknown.status_code == 404 and "action.concurrency, action.concurrency.attr, action.retry" in (
        unknown.json()["faultstring"])


# -- timers --------------------------------------------------------------------------------------

async def test_timers_are_the_triggers_of_enabled_timer_rules(client: httpx.AsyncClient) -> None:
    """`st2 timer list` got a bare 404 though rules ran on timers: one Trigger per timer type and parameter
    set (two rules on one interval share it), none for a disabled rule."""
    timers = (await client.get("/api/v1/timers")).json()
    assert [(t["type"], t["parameters"]) for t in timers] == [
        ("core.st2.DateTimer", {"date": "2099-01-01 00:00:00"}),
        ("core.st2.IntervalTimer", {"unit": "hours", "delta": 1})]
    interval = timers[1]
    assert interval["pack"] == "core" and interval["ref"] == f"core.{interval['name']}" and len(interval["id"]) == 24
    assert interval["uid"].startswith(f"trigger:core:{interval['name']}:")
    assert interval["description"] == "Fires rules demo.hourly_a, demo.hourly_b."
    assert (await client.get("/api/v1/timers")).json() == timers  # the same names and ids every time

    by_type = await client.get("/api/v1/timers/", params={"timer_type": "core.st2.IntervalTimer"})
    assert by_type.json() == [interval]
    assert (await client.get("/api/v1/timers/", params={"name": interval["name"]})).json() == [interval]
    assert (await client.get("/api/v1/timers", params={"timer_type": "core.st2.CronTimer"})).json() == []
    bad = await client.get("/api/v1/timers", params={"timer_type": "core.st2.webhook"})
    assert bad.status_code == 400 and "core.st2.IntervalTimer, core.st2.DateTimer, core.st2.CronTimer" in (
        bad.json()["faultstring"])

    assert (await client.get(f"/api/v1/timers/{interval['ref']}")).json() == interval
    assert (await client.get(f"/api/v1/timers/{interval['id']}")).json() == interval
    missing = await client.get("/api/v1/timers/core.nothing")
    assert missing.status_code == 404 and "GET /api/v1/timers lists them" in missing.json()["faultstring"]


# -- webhooks ------------------------------------------------------------------------------------

async def test_webhooks_list_and_get_need_the_key_and_posting_still_works(
        squall: Squall, client: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    """`st2 webhook list` got a bare 405 and `st2 webhook get HOOK` "not found" for a hook a rule was
    registered on. The reads need the API key; posting to a signed hook still needs only its signature."""
    hooks = (await client.get("/api/v1/webhooks")).json()
    assert [(h["type"], h["parameters"]) for h in hooks] == [("core.st2.webhook", {"url": "ci/build/"}),
                                                             ("core.st2.webhook", {"url": "signed"})]
    assert hooks[0]["description"] == "Fires rule demo.on_build."
    # st2client's `webhook list` asks with a trailing slash and include_attributes
    asked = await client.get("/api/v1/webhooks/", params={"include_attributes": "url,type,description"})
    assert asked.json() == hooks
    assert (await client.get("/api/v1/webhooks/ci/build")).json() == hooks[0]
    assert (await client.get("/api/v1/webhooks/signed")).json() == hooks[1]
    missing = await client.get("/api/v1/webhooks/nothing")
    assert missing.status_code == 404 and missing.json()["faultstring"] == "Webhook nothing not registered"

    for path in ("/api/v1/webhooks", "/api/v1/webhooks/", "/api/v1/webhooks/signed", "/api/v1/webhooks/nothing"):
        assert (await anon.get(path)).status_code == 401, path
    raw = json.dumps({"event": "push"}).encode()
    signature = "sha256=" + hmac.new(HOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    posted = await anon.post("/api/v1/webhooks/signed", content=raw,
                             headers={"Content-Type": "application/json", "X-Squall-Signature": signature})
    assert posted.status_code == 202, posted.text
    assert (await client.post("/api/v1/webhooks/ci/build", json={"who": "x"})).status_code == 202
    stored = await squall.db(squall.store.trigger_instance_list, "core.st2.webhook")
    assert sorted(row["trigger_parameters"]["url"] for row in stored) == ["ci/build", "signed"]


# -- traces --------------------------------------------------------------------------------------

async def test_traces_are_refused_naming_what_to_use_instead(client: httpx.AsyncClient) -> None:
    """`st2 trace list [--trace-tag TAG]` said "No matching items found" (a 404) though trigger instances
    carry their trace tags: a 501 that st2 prints, naming the commands that show what a trace would."""
    for path, params in (("/api/v1/traces", {}), ("/api/v1/traces/", {"trace_tag": "deploy-42"}),
                         ("/api/v1/traces/5f0c0ffee0000000000000aa", {})):
        answer = await client.get(path, params=params)
        assert answer.status_code == 501, path
        said = answer.json()["faultstring"]
        assert said.startswith("Squall keeps no traces") and "st2 trigger-instance list" in said
        assert "--trigger_instance" in said and "st2 rule-enforcement list" in said
    for method in ("POST", "PUT", "DELETE"):
        answer = await client.request(method, "/api/v1/traces/5f0c0ffee0000000000000aa")
        assert answer.status_code == 405 and answer.headers["Allow"] == "GET", method
        assert answer.json()["faultstring"].startswith("Squall keeps no traces")


# -- the real st2 client -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(st2_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`squall serve` with a pack holding a webhook rule and `_content`."""
    home = tmp_path_factory.mktemp("st2routes")
    port = free_port()
    write(home / "config.yml", f"""
        database: {{url: "sqlite:///data/squall.db"}}
        packs: {{paths: [packs]}}
        api: {{host: 127.0.0.1, port: {port}, keys: [{CONFIG_KEY}]}}
        adapters: {{console: {{enabled: false}}}}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    for name in ("greet", "slow"):
        write(pack / "actions" / f"{name}.yaml", f"name: {name}\nrunner_type: noop\n")
    write(pack / "rules" / "on_hook.yaml", """
        name: on_hook
        pack: demo
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: deploy}}
        action: {ref: core.noop}
    """)
    _content(pack)
    (home / "user").mkdir()
    process = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(url, process)
        yield Server(home, url, CONFIG_KEY, st2_binary)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.integration
@pytest.mark.slow
def test_st2_lists_policies_timers_and_webhooks_and_says_why_there_are_no_traces(server: Server) -> None:
    assert [p["ref"] for p in server.json("policy", "list", "-p", "demo")] == [
        "demo.greet.again", "demo.one_slow", "demo.paused"]
    assert server.json("policy", "get", "demo.one_slow")["resource_ref"] == "demo.slow"
    assert [t["ref"] for t in server.json("policy-type", "list", "-a", "ref")] == [
        "action.concurrency", "action.concurrency.attr", "action.retry"]
    deleted = server.run("policy", "delete", "demo.one_slow", check=False)
    assert deleted.returncode != 0 and "policies/one_slow.yaml" in deleted.stdout + deleted.stderr

    timers = server.json("timer", "list")
    assert {t["type"] for t in timers} == {"core.st2.IntervalTimer", "core.st2.DateTimer"}
    for timer in timers:  # `timer get` asks by the name `timer list` shows, then by id
        assert server.json("timer", "get", timer["name"])["parameters"] == timer["parameters"]
        assert server.json("timer", "get", timer["id"])["type"] == timer["type"]
    assert [h["url"] for h in server.json("webhook", "list")] == ["deploy"]
    assert server.json("webhook", "get", "deploy")["description"] == "Fires rule demo.on_hook."

    traces = server.run("trace", "list", "--trace-tag", "deploy-42", check=False)
    said = traces.stdout + traces.stderr
    assert traces.returncode != 0 and "Squall keeps no traces" in said
    # what the refusal points to shows the tag a webhook was sent with
    assert "st2 trigger-instance list -a id trigger trace_tag" in said
    sent = httpx.post(f"{server.url}/api/v1/webhooks/deploy", json={}, headers={
        "St2-Api-Key": server.key, "St2-Trace-Tag": "deploy-42"})
    assert sent.status_code == 202
    instances = server.json("trigger-instance", "list", "-a", "id", "trigger", "trace_tag")
    assert [(i["trigger"], i["trace_tag"]) for i in instances] == [("core.st2.webhook", "deploy-42")]
