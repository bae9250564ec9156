"""st2client's resource verbs beyond reading lists: actions by id and the writes Squall refuses with what to do
instead (actions live in pack files), `st2 pack install|remove|register|search`, `st2 apikey ...` (read from
the stored keys, managed by `squall apikey`), `st2 trigger get`, `st2 rule-enforcement get` and
`st2 trigger-instance re-emit`, and the list filters StackStorm's controllers apply (`supported_filters`).
The real `st2` CLI drives the API in test_st2_cli.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

import bot.http.paging
from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api
from engine.actions import action_id
from engine.config import load_config
from engine.executions import new_id
from engine.parameters import MASK
from engine.rules import rule_id
from engine.storage import utcnow
from tests.conftest import write
from tests.test_api import KEY, _home


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    app = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.rules.settle()
        await app.close()


def _client(squall: Squall, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                             headers={"St2-Api-Key": key})


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(squall, KEY) as c:
        yield c


# -- actions -------------------------------------------------------------------------------------------

async def test_actions_have_a_stable_id_and_are_read_by_ref_or_id(client: httpx.AsyncClient) -> None:
    listed = {a["ref"]: a for a in (await client.get("/api/v1/actions", params={"pack": "demo"})).json()}
    greet = listed["demo.greet"]
    assert greet["id"] == action_id("demo.greet") and len(greet["id"]) == 24
    assert greet["id"] != listed["demo.slow"]["id"]
    by_id = (await client.get(f"/api/v1/actions/{greet['id']}")).json()
    assert by_id == (await client.get("/api/v1/actions/demo.greet")).json() == greet


async def test_a_disabled_action_is_still_read(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 action enable` reads the action first: a disabled one must be found, showing `enabled: false`."""
    squall.registry.actions["demo.slow"].enabled = False
    got = await client.get(f"/api/v1/actions/{action_id('demo.slow')}")
    assert got.status_code == 200 and got.json()["enabled"] is False


async def test_action_writes_are_refused_naming_the_file_to_edit(squall: Squall, client: httpx.AsyncClient) -> None:
    greet = (await client.get("/api/v1/actions/demo.greet")).json()
    file = squall.registry.actions["demo.greet"].metadata_file
    created = await client.post("/api/v1/actions", json={"name": "made", "pack": "demo",
                                                         "runner_type": "local-shell-cmd"})
    assert created.status_code == 405 and created.headers["allow"] == "GET"
    assert "pack files" in created.json()["faultstring"] and "actions/<name>.yaml" in created.json()["faultstring"]
    for ref_or_id in ("demo.greet", greet["id"]):
        # `st2 action update`: more than `enabled` changed (enable|disable alone: test_content_enable.py)
        updated = await client.put(f"/api/v1/actions/{ref_or_id}",
                                   json={**greet, "enabled": False, "description": "changed"})
        assert updated.status_code == 409 and file in updated.json()["faultstring"]
        assert "enabled: false" in updated.json()["faultstring"]
        deleted = await client.delete(f"/api/v1/actions/{ref_or_id}")
        assert deleted.status_code == 409 and file in deleted.json()["faultstring"]
        assert "squall pack remove demo" in deleted.json()["faultstring"]
    assert squall.registry.actions["demo.greet"].enabled is True  # nothing was changed
    shipped = await client.delete("/api/v1/actions/core.local")
    assert shipped.status_code == 409 and "shipped with Squall" in shipped.json()["faultstring"]
    assert (await client.put("/api/v1/actions/demo.nope", json={})).status_code == 404


# -- packs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/api/v1/packs/install", {"packs": ["aws"], "force": False, "skip_dependencies": False}, 405,
     "squall pack install <folder|git url>"),
    ("/api/v1/packs/uninstall", {"packs": ["demo"]}, 405, "squall pack remove <pack>"),
    ("/api/v1/packs/register", {"packs": ["demo"]}, 405, "squall pack reload"),
    ("/api/v1/packs/index/search", {"query": "aws"}, 404, "squall pack install <git url>"),
    ("/api/v1/packs/index/search", {"pack": "aws"}, 404, "no pack index"),
])
async def test_pack_management_points_to_the_squall_cli(client: httpx.AsyncClient, path: str, body: dict,
                                                        status: int, says: str) -> None:
    answered = await client.post(path, json=body)
    assert answered.status_code == status and says in answered.json()["faultstring"]


# -- API keys ------------------------------------------------------------------------------------------

async def test_apikeys_are_listed_and_read_without_their_secret(squall: Squall, client: httpx.AsyncClient) -> None:
    alice_key, alice = create_key(squall.store, "alice")
    bob_key, bob = create_key(squall.store, "bob")
    listed = await client.get("/api/v1/apikeys")
    assert listed.status_code == 200
    assert [(k["id"], k["user"], k["enabled"]) for k in listed.json()] == [(alice["id"], "alice", True),
                                                                            (bob["id"], "bob", True)]
    assert all(k["key_hash"] == MASK and k["created_at"].endswith("Z") for k in listed.json())
    assert alice_key not in listed.text and bob_key not in listed.text
    assert [k["user"] for k in (await client.get("/api/v1/apikeys", params={"user": "bob"})).json()] == ["bob"]
    by_id = (await client.get(f"/api/v1/apikeys/{alice['id']}")).json()
    by_key = (await client.get(f"/api/v1/apikeys/{alice_key}")).json()
    assert by_id == by_key == listed.json()[0]
    assert alice_key not in str(by_key)
    missing = await client.get("/api/v1/apikeys/nope")
    assert missing.status_code == 404 and "nope" not in missing.json()["faultstring"]  # it may be a key
    # A stored key speaks for its user, and sees that user's keys only.
    async with _client(squall, alice_key) as as_alice:
        assert [k["user"] for k in (await as_alice.get("/api/v1/apikeys")).json()] == ["alice"]
        assert (await as_alice.get(f"/api/v1/apikeys/{bob['id']}")).status_code == 404


async def test_apikey_changes_point_to_the_squall_cli(squall: Squall, client: httpx.AsyncClient) -> None:
    _key, alice = create_key(squall.store, "alice")
    for method, path in (("POST", "/api/v1/apikeys"), ("PUT", f"/api/v1/apikeys/{alice['id']}"),
                         ("DELETE", f"/api/v1/apikeys/{alice['id']}")):
        answered = await client.request(method, path, json={"user": "alice", "enabled": False})
        assert answered.status_code == 405, (method, answered.text)
        fault = answered.json()["faultstring"]
        assert "squall apikey create" in fault and "squall apikey delete <id>" in fault
    assert [k["enabled"] for k in squall.store.api_key_list()] == [True]  # still there, still enabled


# -- trigger types, enforcements, re-emit --------------------------------------------------------------

async def test_trigger_type_by_ref(client: httpx.AsyncClient) -> None:
    listed = {t["ref"]: t for t in (await client.get("/api/v1/triggertypes")).json()}
    got = await client.get("/api/v1/triggertypes/core.st2.webhook")
    assert got.status_code == 200 and got.json() == listed["core.st2.webhook"]
    missing = await client.get("/api/v1/triggertypes/core.st2.webhok")
    assert missing.status_code == 404 and "did you mean core.st2.webhook" in missing.json()["faultstring"]


async def test_rule_create_and_delete_are_refused_saying_what_to_do(client: httpx.AsyncClient) -> None:
    """`st2 rule create FILE` and `st2 rule delete REF` got a bare 405 "Method Not Allowed": rules are pack
    files, and the answer says so, as an action's create and delete do (a delete of a loaded rule is never
    a 404, which st2client takes for done)."""
    created = await client.post("/api/v1/rules", json={"name": "x", "pack": "demo"})
    assert created.status_code == 405 and created.headers["Allow"] == "GET"
    assert "Rules are not created through the API" in created.json()["faultstring"]
    assert "rules/<name>.yaml" in created.json()["faultstring"]
    deleted = await client.delete("/api/v1/rules/demo.on_build")
    assert deleted.status_code == 409
    said = deleted.json()["faultstring"]
    assert "on_build.yaml" in said and "st2 rule disable demo.on_build" in said, said
    assert (await client.delete("/api/v1/rules/demo.nope")).status_code == 404
    assert (await client.get("/api/v1/rules/demo.on_build")).json()["ref"] == "demo.on_build"  # still there


async def test_rule_enforcement_by_id(squall: Squall, client: httpx.AsyncClient) -> None:
    hook = await client.post("/api/v1/webhooks/ci/build", json={"who": "x"})
    assert hook.status_code == 202, hook.text
    await squall.rules.settle()
    listed = (await client.get("/api/v1/ruleenforcements")).json()
    assert [e["rule"]["ref"] for e in listed] == ["demo.on_build"]
    got = await client.get(f"/api/v1/ruleenforcements/{listed[0]['id']}")
    assert got.status_code == 200 and got.json() == listed[0]
    newer = new_id()
    squall.store.rule_enforcement_add_once({"id": newer, "rule": "demo.on_signed", "trigger_instance_id": "t",
                                       "execution_id": None, "status": "failed", "failure_reason": "x",
                                       "enforced_at": utcnow()})
    assert (await client.get(f"/api/v1/ruleenforcements/{listed[0]['id']}")).json() == listed[0]
    assert (await client.get(f"/api/v1/ruleenforcements/{newer}")).json()["failure_reason"] == "x"
    for unknown in (new_id(), "0" * 24, "nope"):
        missing = await client.get(f"/api/v1/ruleenforcements/{unknown}")
        assert missing.status_code == 404 and "GET /api/v1/ruleenforcements" in missing.json()["faultstring"]


async def test_re_emit_answers_as_stackstorm(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 trigger-instance re-emit` prints `message` only from a 200; the new payload names the original."""
    original = await squall.triggers.dispatch("demo.event", {"n": 1})
    emitted = await client.post(f"/api/v1/triggerinstances/{original['id']}/re_emit")
    assert emitted.status_code == 200
    body = emitted.json()
    assert body["message"] == f"Trigger instance {original['id']} succesfully re-sent."
    assert body["payload"] == {"n": 1, "__context": {"original_id": original["id"]}}
    assert body["id"] != original["id"] and body["trigger"] == "demo.event"
    stored = (await client.get(f"/api/v1/triggerinstances/{body['id']}")).json()
    assert stored["payload"] == body["payload"]
    again = (await client.post(f"/api/v1/triggerinstances/{body['id']}/re_emit")).json()
    assert again["payload"] == {"n": 1, "__context": {"original_id": body["id"]}}


# -- sensor types ------------------------------------------------------------------------------------------

def _sensors(home: Path) -> None:
    """Two sensors of the demo pack (one disabled) and one of another pack."""
    for pack, name, meta in (
            ("demo", "watch", """
                class_name: Watch
                entry_point: watch.py
                description: Watches the thing.
                poll_interval: 30
                trigger_types:
                  - name: tick
                    payload_schema: {type: object}
            """),
            ("demo", "quiet", "class_name: Quiet\nentry_point: quiet.py\nenabled: false\n"),
            ("other", "ping", "class_name: Ping\nentry_point: ping.py\n")):
        folder = home / "packs" / pack
        if not (folder / "pack.yaml").exists():
            write(folder / "pack.yaml", f"ref: {pack}\nname: {pack}\ndescription: d\nversion: 1.0.0\nauthor: t\n")
        write(folder / "sensors" / f"{name}.yaml", meta)
        write(folder / "sensors" / f"{name}.py", "from st2reactor.sensor.base import PollingSensor\n")


async def test_sensor_types_are_listed_filtered_and_read_as_stackstorm_shows_them(home: Path) -> None:
    """`st2 sensor list|get`, st2client's `Client.sensors` (the st2 pack's `st2.sensors.list` and its
    `!st2 list sensors`) read `/sensortypes`, which was a 404 though the sensors ran."""
    _home(home)
    _sensors(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        async with _client(squall, KEY) as client:
            listed = await client.get("/api/v1/sensortypes", params={"pack": "demo"})
            assert listed.status_code == 200, listed.text
            assert listed.headers["X-Total-Count"] == "2" and "X-Limit" not in listed.headers
            quiet, watch = listed.json()
            sensors = home.resolve() / "packs" / "demo" / "sensors"
            assert watch == {
                "id": watch["id"], "uid": "sensor_type:demo:Watch", "ref": "demo.Watch", "pack": "demo",
                "name": "Watch", "class_name": "Watch", "entry_point": "sensors.watch.Watch",
                "artifact_uri": f"file://{sensors / 'watch.py'}", "description": "Watches the thing.",
                "poll_interval": 30, "enabled": True, "trigger_types": ["demo.tick"],
                "metadata_file": "sensors/watch.yaml"}  # relative to its pack, as StackStorm shows it
            assert len(watch["id"]) == 24 and watch["id"] != quiet["id"]
            assert (quiet["ref"], quiet["enabled"], quiet["trigger_types"]) == ("demo.Quiet", False, [])
            assert "poll_interval" not in quiet  # none given: StackStorm shows none

            everything = (await client.get("/api/v1/sensortypes", params={"limit": -1})).json()
            assert [s["ref"] for s in everything] == ["demo.Quiet", "demo.Watch", "other.Ping"]  # by pack, name
            paged = await client.get("/api/v1/sensortypes", params={"limit": 1, "offset": 1})
            assert [s["ref"] for s in paged.json()] == ["demo.Watch"] and paged.headers["X-Total-Count"] == "3"
            for params, refs in (({"name": "Ping"}, ["other.Ping"]), ({"enabled": "false"}, ["demo.Quiet"]),
                                 ({"enabled": "true", "pack": "demo"}, ["demo.Watch"]),
                                 ({"trigger": "demo.tick"}, ["demo.Watch"]), ({"pack": "nopack"}, [])):
                assert [s["ref"] for s in (await client.get("/api/v1/sensortypes", params=params)).json()] == refs

            for ref_or_id in ("demo.Watch", watch["id"]):
                got = await client.get(f"/api/v1/sensortypes/{ref_or_id}")
                assert got.status_code == 200 and got.json() == watch
            missing = await client.get("/api/v1/sensortypes/demo.Wacth")
            assert missing.status_code == 404 and "demo.Watch" in missing.json()["faultstring"]
            assert (await client.get("/api/v1/sensortypes", params={"limit": 0})).status_code == 400

            for ref_or_id in ("demo.Watch", watch["id"]):  # more than `enabled` changed: the file to edit instead
                refused = await client.put(f"/api/v1/sensortypes/{ref_or_id}",
                                           json={**watch, "enabled": False, "poll_interval": 5})
                assert refused.status_code == 405 and refused.headers["allow"] == "GET", refused.text
                fault = refused.json()["faultstring"]
                assert watch["metadata_file"] in fault and "enabled: false" in fault
                assert next(d.file for d in squall.registry.documents if d.file.endswith("watch.yaml")) in fault
            assert (await client.put("/api/v1/sensortypes/demo.nope", json={})).status_code == 404
            assert (await client.get("/api/v1/sensortypes/demo.Watch")).json()["enabled"] is True
    finally:
        await squall.close()


# -- list filters: StackStorm's `supported_filters` of each route --------------------------------------------

def _refs(listed: httpx.Response) -> list[str]:
    assert listed.status_code == 200, listed.text
    return [item.get("ref") or item["rule"]["ref"] for item in listed.json()]


async def test_trigger_types_and_aliases_are_filtered_by_pack_and_name(client: httpx.AsyncClient) -> None:
    """`st2 trigger list -p demo` and `st2 action-alias list -p demo` send `?pack=`; it was ignored and
    every pack's listed (StackStorm's controllers filter `pack` and `name`)."""
    for params, refs in (({"pack": "demo"}, ["demo.event"]), ({"name": "st2.webhook"}, ["core.st2.webhook"]),
                         ({"pack": "core", "name": "st2.webhook"}, ["core.st2.webhook"]),
                         ({"pack": "demo", "name": "st2.webhook"}, []), ({"pack": "nopack"}, [])):
        listed = await client.get("/api/v1/triggertypes", params=params)
        assert _refs(listed) == refs and listed.headers["X-Total-Count"] == str(len(refs)), params
    for params, refs in (({"pack": "demo"}, ["demo.greet", "demo.locked"]), ({"name": "locked"}, ["demo.locked"]),
                         ({"pack": "demo", "name": "greet"}, ["demo.greet"]), ({"pack": "nopack"}, [])):
        listed = await client.get("/api/v1/actionalias", params=params)
        assert _refs(listed) == refs and listed.headers["X-Total-Count"] == str(len(refs)), params
    paged = await client.get("/api/v1/actionalias", params={"pack": "demo", "limit": 1, "offset": 1})
    assert _refs(paged) == ["demo.locked"] and paged.headers["X-Total-Count"] == "2"


async def test_rules_are_filtered_by_action_trigger_enabled_name_and_user(home: Path) -> None:
    """`st2 rule list --action X|--trigger X|--enabled|--disabled` send `action=`, `trigger=` (a trigger type's
    ref) and `enabled=True|False`; they were ignored and every rule listed."""
    _home(home)
    write(home / "packs" / "demo" / "rules" / "tick.yaml", """
        name: tick
        pack: demo
        enabled: false
        context: {user: alice}
        trigger: {type: core.st2.IntervalTimer, parameters: {unit: hours, delta: 1}}
        action: {ref: demo.slow}
    """)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        async with _client(squall, KEY) as client:
            greeters = ["demo.on_build", "demo.on_signed"]
            for params, refs in (({"action": "demo.greet"}, greeters), ({"action": "demo.slow"}, ["demo.tick"]),
                                 ({"trigger": "core.st2.IntervalTimer"}, ["demo.tick"]),
                                 ({"trigger": "core.st2.webhook", "pack": "demo"}, greeters),
                                 ({"enabled": "False"}, ["demo.tick"]), ({"enabled": "false"}, ["demo.tick"]),
                                 ({"enabled": "True", "pack": "demo"}, greeters),
                                 ({"name": "on_signed"}, ["demo.on_signed"]), ({"user": "alice"}, ["demo.tick"]),
                                 ({"action": "no.such"}, []), ({"trigger": "core.st2.CronTimer"}, [])):
                listed = await client.get("/api/v1/rules", params=params)
                assert _refs(listed) == refs and listed.headers["X-Total-Count"] == str(len(refs)), params
            wrong = await client.get("/api/v1/rules", params={"enabled": "maybe"})
            assert wrong.status_code == 400 and "enabled" in wrong.json()["faultstring"]
    finally:
        await squall.close()


#: When the stored log rows of the filter tests happened.
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _enforced(squall: Squall, rule: str, at: datetime) -> str:
    record = {"id": new_id(), "rule": rule, "trigger_instance_id": "t1", "execution_id": None,
              "status": "succeeded", "failure_reason": None, "enforced_at": at}
    squall.store.rule_enforcement_add_once(record)
    return record["id"]


async def test_rule_enforcements_are_filtered_by_rule_ref_rule_id_and_time(squall: Squall, client: httpx.AsyncClient,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`st2 rule-enforcement list --rule R` sends `rule_ref=` (Squall read `rule` only) and `-tg/-tl` send
    `enforced_at_gt`/`enforced_at_lt`: all were ignored. A rule that does not exist lists none."""
    old, new = _enforced(squall, "demo.on_build", T0), _enforced(squall, "demo.on_build", T0 + timedelta(hours=1))
    other = _enforced(squall, "demo.on_signed", T0 + timedelta(hours=2))

    async def ids(**params: str) -> list[str]:
        listed = await client.get("/api/v1/ruleenforcements", params=params)
        assert listed.status_code == 200, listed.text
        assert listed.headers["X-Total-Count"] == str(len(listed.json())), params
        return [e["id"] for e in listed.json()]

    assert await ids() == [other, new, old]
    for params in ({"rule_ref": "demo.on_build"}, {"rule_id": rule_id("demo.on_build")}, {"rule": "demo.on_build"},
                   {"rule": "demo.on_build", "rule_ref": "demo.on_build"}):
        assert await ids(**params) == [new, old], params
    for params in ({"rule_ref": "no.such_rule"}, {"rule_id": "0" * 24}, {"rule_id": rule_id("no.such_rule")},
                   {"rule": "demo.on_build", "rule_ref": "demo.on_signed"},
                   {"rule_ref": "no.such_rule", "limit": "-1"}):
        assert await ids(**params) == [], params
    hour = T0 + timedelta(hours=1)
    assert await ids(enforced_at_gt="2099-01-01T00:00:00.000Z") == []
    assert await ids(enforced_at_gt=hour.isoformat()) == [other]  # strictly after
    assert await ids(enforced_at_lt=hour.isoformat()) == [old]  # strictly before
    assert await ids(enforced_at_gt="2026-03-01T12:30:00+00:00", enforced_at_lt="2026-03-01T15:00:00.000Z") == [
        other, new]
    assert await ids(enforced_at_gt="2026-03-01T07:30:00-05:00", rule_ref="demo.on_build") == [new]  # 12:30 UTC
    assert await ids(enforced_at=hour.isoformat()) == [new]
    monkeypatch.setattr(bot.http.paging, "LOG_PAGE", 1)  # limit=-1 by keyset pages, the time bound kept on each
    assert await ids(enforced_at_gt="2026-03-01T11:00:00Z", limit="-1") == [other, new, old]
    assert await ids(enforced_at_lt="2026-03-01T14:00:00Z", limit="-1") == [new, old]
    for name in ("enforced_at_gt", "enforced_at_lt", "enforced_at"):
        wrong = await client.get("/api/v1/ruleenforcements", params={name: "tomorrow"})
        assert wrong.status_code == 400 and wrong.json()["faultstring"].startswith(f"{name} must be an ISO 8601")


async def test_trigger_instances_are_filtered_by_time(squall: Squall, client: httpx.AsyncClient,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`st2 trigger-instance list -tg/-tl` send `timestamp_gt`/`timestamp_lt`; they were ignored."""
    stored = []
    for hours, trigger in ((0, "demo.event"), (1, "demo.event"), (2, "demo.other")):
        record = {"id": new_id(), "trigger": trigger, "payload": {}, "occurrence_time": T0 + timedelta(hours=hours),
                  "status": "processed", "trace_tag": None, "trigger_parameters": None}
        squall.store.trigger_instance_add(record)
        stored.append(record["id"])
    old, new, other = stored

    async def ids(**params: str) -> list[str]:
        listed = await client.get("/api/v1/triggerinstances", params=params)
        assert listed.status_code == 200, listed.text
        assert listed.headers["X-Total-Count"] == str(len(listed.json())), params
        return [i["id"] for i in listed.json()]

    assert await ids() == [other, new, old]
    assert await ids(timestamp_gt="2099-01-01T00:00:00.000Z") == []
    assert await ids(timestamp_lt="2000-01-01T00:00:00.000Z") == []
    assert await ids(timestamp_gt="2026-03-01T13:00:00Z") == [other]  # strictly after
    assert await ids(timestamp_lt="2026-03-01T13:00:00Z") == [old]  # strictly before
    assert await ids(timestamp_gt="2026-03-01T12:30:00Z", trigger="demo.event") == [new]
    assert await ids(timestamp_gt="2026-03-01T12:30:00Z", timestamp_lt="2026-03-01T14:30:00+01:00") == [new]
    monkeypatch.setattr(bot.http.paging, "LOG_PAGE", 1)  # limit=-1 by keyset pages, the time bound kept on each
    assert await ids(timestamp_gt="2026-03-01T11:00:00Z", limit="-1") == [other, new, old]
    assert await ids(timestamp_lt="2026-03-01T14:00:00Z", limit="-1") == [new, old]
    for name in ("timestamp_gt", "timestamp_lt"):
        wrong = await client.get("/api/v1/triggerinstances", params={name: "tomorrow"})
        assert wrong.status_code == 400 and wrong.json()["faultstring"].startswith(f"{name} must be an ISO 8601")
