"""`squall rule | trigger | trigger-instance | rule-enforcement` through the console script."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import write
from tests.test_cli import audit_failing, audit_fails, audit_log, in_process, squall, statuses, succeeds
from tests.test_rules import make_pack

ALERT = """
    name: alert
    pack: demo
    enabled: true
    trigger: {type: demo.event}
    criteria:
      trigger.metric: {type: equals, pattern: cpu}
      trigger.value: {type: gt, pattern: 90}
    action: {ref: demo.take, parameters: {count: "{{ trigger.value }}"}}
"""


def test_rule_list_get_and_errors(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pack(home, {"alert": ALERT, "broken": ALERT.replace("name: alert", "name: broken").replace("gt", "bigger")})
    cli = in_process(home, monkeypatch)
    done = cli("rule", "list", "--json")
    assert done.exit_code == 0, done.stderr
    assert [r["ref"] for r in json.loads(done.stdout) if r["pack"] == "demo"] == ["demo.alert"]
    assert "bigger" in done.stderr and "broken.yaml" in done.stderr
    assert "demo.alert" in cli("rule", "list", "--pack", "demo").stdout
    got = json.loads(cli("rule", "get", "demo.alert", "--json").stdout)
    assert got["trigger"]["type"] == "demo.event" and got["enabled"] is True
    missing = cli("rule", "get", "demo.nope")
    assert missing.exit_code == 2 and "not found" in missing.stderr
    # Empty listings say so on standard error; standard output stays empty for scripts.
    empty = cli("rule", "list", "--pack", "other")
    assert empty.exit_code == 0 and empty.stdout == "" and "no rules loaded from pack other" in empty.stderr
    empty = cli("trigger-instance", "list")
    assert empty.stdout == "" and "no trigger instances" in empty.stderr


def test_rule_test_explains_and_exits_0_or_1(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pack(home, {})
    cli = in_process(home, monkeypatch)
    rule_file = write(home / "rule.yaml", ALERT)
    hit = write(home / "hit.json", json.dumps({"trigger": "demo.event", "payload": {"metric": "cpu", "value": 95}}))
    miss = write(home / "miss.yaml", "trigger: demo.event\npayload: {metric: cpu, value: 5}\n")
    done = cli("rule", "test", "--rule", str(rule_file), "--trigger-instance", str(hit))
    assert done.exit_code == 0, done.stderr
    assert "PASS  trigger.value  greaterthan  pattern=90  value=95" in done.stdout and "MATCHES" in done.stdout
    done = cli("rule", "test", "--rule", str(rule_file), "--trigger-instance", str(miss), "--json")
    assert done.exit_code == 1
    outcome = json.loads(done.stdout)
    assert outcome["matched"] is False
    assert outcome["criteria"][-1] == {"key": "trigger.value", "operator": "greaterthan", "pattern": 90, "value": 5,
                                       "result": False}
    bad = write(home / "bad.json", "{not json")
    done = cli("rule", "test", "--rule", str(rule_file), "--trigger-instance", str(bad))
    assert done.exit_code == 2 and "not valid JSON or YAML" in done.stderr
    bad_rule = write(home / "bad.yaml", ALERT.replace("gt", "gtx"))
    done = cli("rule", "test", "--rule", str(bad_rule), "--trigger-instance", str(hit))
    assert done.exit_code == 2 and "gtx" in done.stderr


HOOK = """
    name: hook
    pack: demo
    enabled: true
    trigger: {type: core.st2.webhook, parameters: {url: hook}}
    criteria:
      trigger.headers.X-Hook-Token:
        type: equals
        pattern: "{{ st2kv.system.hook_token | decrypt_kv }}"
      trigger.body.tag:
        type: contains
        pattern: "v-{{ st2kv.system.pin | decrypt_kv }}"
    action: {ref: core.noop}
"""


def test_rule_test_masks_what_decrypt_kv_revealed(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/security.md: decrypted datastore values are masked everywhere. `rule test` printed the secret a
    pattern decrypted, and the payload's value when it was the secret (a token that matches)."""
    make_pack(home, {})
    cli = in_process(home, monkeypatch)
    secret, pin = "Xk9-super-secret", "12"  # a short one is masked whole, wherever it shows
    for name, value in (("hook_token", secret), ("pin", pin)):
        assert cli("key", "set", name, value, "--encrypt").exit_code == 0
    rule_file = write(home / "hook.yaml", HOOK)
    for token, tag, matched in (("wrong", "v-12", False), (secret, "release-v-12", True)):
        instance = write(home / "ti.json", json.dumps({"trigger": "core.st2.webhook", "payload": {
            "headers": {"X-Hook-Token": token}, "body": {"tag": tag}}}))
        text = cli("rule", "test", "--rule", str(rule_file), "--trigger-instance", str(instance))
        done = cli("rule", "test", "--rule", str(rule_file), "--trigger-instance", str(instance), "--json")
        assert (text.exit_code, done.exit_code) == ((0, 0) if matched else (1, 1)), text.stderr + done.stderr
        for output in (text.stdout, done.stdout):
            assert secret not in output and "v-12" not in output, output
        criteria = json.loads(done.stdout)["criteria"]
        assert criteria[0]["pattern"] == "********"
        assert criteria[0]["value"] == ("********" if matched else "wrong")
        if matched:
            assert criteria[1] == {"key": "trigger.body.tag", "operator": "contains", "pattern": "********",
                                   "value": "********", "result": True}
            assert 'pattern="********"  value="********"' in text.stdout


def test_trigger_emit_instances_and_enforcements(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_pack(home, {"alert": ALERT})
    cli = in_process(home, monkeypatch)
    types = json.loads(cli("trigger", "list", "--json").stdout)
    assert {"demo.event", "core.st2.webhook"} <= {t["ref"] for t in types}
    done = cli("trigger", "emit", "demo.event", "--payload", '{"metric": "cpu", "value": 97}')
    assert done.exit_code == 0, done.stderr
    instance = json.loads(done.stdout)
    assert instance["status"] == "processed" and instance["payload"]["value"] == 97
    assert "rule demo.alert: succeeded" in done.stderr

    enforcements = json.loads(cli("rule-enforcement", "list", "--rule", "demo.alert", "--json").stdout)
    assert len(enforcements) == 1 and enforcements[0]["trigger_instance_id"] == instance["id"]
    execution = json.loads(cli("execution", "get", enforcements[0]["execution_id"], "--json").stdout)
    assert execution["status"] == "succeeded" and execution["parameters"] == {"count": 97}

    listed = json.loads(cli("trigger-instance", "list", "--json").stdout)
    assert instance["id"] in [i["id"] for i in listed]
    got = json.loads(cli("trigger-instance", "get", instance["id"], "--json").stdout)
    assert got["enforcements"][0]["rule"]["ref"] == "demo.alert"
    again = json.loads(cli("trigger-instance", "re-emit", instance["id"], "--json").stdout)
    assert again["id"] != instance["id"]
    assert again["payload"] == {**instance["payload"], "__context": {"original_id": instance["id"]}}
    assert len(json.loads(cli("rule-enforcement", "list", "--json").stdout)) == 2

    assert cli("trigger-instance", "get", "nope").exit_code == 2
    bad = cli("trigger", "emit", "demo.event", "--payload", "{nope")
    assert bad.exit_code == 2 and "not valid JSON" in bad.stderr
    unknown = cli("trigger", "emit", "demo.evnt", "--payload", "{}")
    assert unknown.exit_code == 2 and "did you mean demo.event" in unknown.stderr


def test_a_rules_id_is_the_same_in_every_process(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`st2 rule enable` reads a rule's `id` from one request and updates `PUT /rules/{id}` in the next,
    which another `squall serve` on the database may answer, after a restart even: the id is derived
    from the ref, so every process shows the same one, and differs between rules."""
    make_pack(home, {"alert": ALERT, "other": ALERT.replace("name: alert", "name: other")})
    # Listed in this process, got in another: the console script's.
    listed = {r["ref"]: r["id"] for r in json.loads(in_process(home, monkeypatch)("rule", "list", "--json").stdout)}
    assert listed["demo.alert"] == json.loads(squall(home, "rule", "get", "demo.alert", "--json").stdout)["id"]
    assert len(listed["demo.alert"]) == 24 and int(listed["demo.alert"], 16) >= 0
    assert listed["demo.alert"] != listed["demo.other"]


#: A webhook's rule: `squall trigger emit core.st2.webhook --url deploy` fires it.
HOOKED = """
    name: hooked
    pack: demo
    enabled: true
    trigger: {type: core.st2.webhook, parameters: {url: deploy}}
    action: {ref: demo.take}
"""


def test_an_emit_or_re_emit_whose_audit_event_fails_fires_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`trigger emit` and `trigger-instance re-emit` stored the instance and processed it (its rules ran their
    actions), then wrote their `cli.trigger.*` event apart: under a full disk the command failed (exit 3) for
    an instance it had fired, and nobody was audited for it; run again, it fired twice. The instance is
    stored with its event now, one transaction, before anything processes it: a failed command fired nothing."""
    make_pack(home, {"alert": ALERT, "hooked": HOOKED})
    cli = in_process(home, monkeypatch)
    hot = '{"metric": "cpu", "value": 97}'
    audit_fails(cli, "cli.trigger.emit", "trigger", "emit", "demo.event", "--payload", hot)
    audit_fails(cli, "cli.trigger.emit", "trigger", "emit", "core.st2.webhook", "--url", "deploy")
    assert json.loads(succeeds(cli, "trigger-instance", "list", "--json").stdout) == []
    assert statuses(cli) == {}
    instance = json.loads(succeeds(cli, "trigger", "emit", "demo.event", "--payload", hot).stdout)
    hooked = json.loads(succeeds(cli, "trigger", "emit", "core.st2.webhook", "--url", "/deploy/").stdout)
    assert (instance["status"], hooked["status"], hooked["trigger_parameters"]) == ("processed", "processed",
                                                                                  {"url": "deploy"})
    assert sorted(statuses(cli).values()) == ["succeeded", "succeeded"]  # one execution per rule
    audit_fails(cli, "cli.trigger.re_emit", "trigger-instance", "re-emit", instance["id"])
    listed = json.loads(succeeds(cli, "trigger-instance", "list", "--json").stdout)
    assert sorted(i["id"] for i in listed) == sorted([instance["id"], hooked["id"]])
    assert len(statuses(cli)) == 2
    again = json.loads(succeeds(cli, "trigger-instance", "re-emit", instance["id"], "--json").stdout)
    assert again["status"] == "processed" and again["payload"]["__context"] == {"original_id": instance["id"]}
    assert len(statuses(cli)) == 3
    assert [(e["event"], e["target"], e["detail"]) for e in audit_log(cli) if e["event"].startswith("cli.trigger")] == [
        ("cli.trigger.emit", "demo.event", {"instance": instance["id"]}),
        ("cli.trigger.emit", "core.st2.webhook", {"instance": hooked["id"], "url": "/deploy/"}),
        ("cli.trigger.re_emit", "demo.event", {"instance": instance["id"], "new_instance": again["id"]})]



@pytest.mark.postgres
def test_on_postgresql_an_emit_whose_audit_event_is_refused_fires_nothing(home: Path, postgres_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL keeps a group's other writes when one statement is refused: the instance and its event share
    a savepoint there (`AuditEntry.together`), so an event refused alone stores no instance."""
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", postgres_url))
    make_pack(home, {"alert": ALERT})
    cli = in_process(home, monkeypatch)
    with audit_failing("cli.trigger.emit", refused=True):
        assert cli("trigger", "emit", "demo.event", "--payload", '{"metric": "cpu", "value": 97}').exit_code != 0
    assert json.loads(succeeds(cli, "trigger-instance", "list", "--json").stdout) == []
    assert statuses(cli) == {}

async def test_an_api_re_emit_whose_audit_event_fails_fires_nothing(home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`POST /api/v1/triggerinstances/{id}/re_emit` stored the new instance (its rules fired), then its
    `api.trigger.re_emit` event apart: under a full disk it answered 503 for an instance it had fired, and a
    client's retry fired it again. The instance and its event are one transaction now: the 503 is true."""
    from bot.http import create_api
    from tests.test_api import KEY, _home, disk_full, failing_audit
    from tests.test_rules import started

    _home(home)
    make_pack(home, {"alert": ALERT})
    app = await started(home)
    try:
        instance = await app.triggers.dispatch("demo.event", {"metric": "cpu", "value": 97})
        await app.rules.settle()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(app)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            url = f"/api/v1/triggerinstances/{instance['id']}/re_emit"
            failing_audit(app, monkeypatch, "api.trigger.re_emit", disk_full())
            assert (await client.post(url)).status_code == 503
            assert [i["id"] for i in await app.triggers.list()] == [instance["id"]]
            monkeypatch.undo()
            again = await client.post(url)
            assert again.status_code == 200, again.text
        await app.rules.settle()
        assert (await app.triggers.get(again.json()["id"]))["status"] == "processed"
        assert len(await app.rules.enforcements()) == 2
        [row] = await app.db(app.store.audit_list, 10, "api.trigger.re_emit")
        assert (row["target"], row["detail"]) == ("demo.event", {"instance": instance["id"],
                                                                 "new_instance": again.json()["id"]})
    finally:
        await app.close()



async def test_an_api_re_emit_stored_with_its_event_is_answered_though_processing_it_fails(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the new instance and its event are committed, a database failure while processing it answers no
    503: the re-emit holds (the sweep of instances left behind processes it), and a client told it failed would
    fire it again."""
    from bot.http import create_api
    from tests.test_api import KEY, _home, disk_full
    from tests.test_rules import started

    _home(home)
    make_pack(home, {"alert": ALERT})
    app = await started(home)
    try:
        instance = await app.triggers.dispatch("demo.event", {"metric": "cpu", "value": 97})
        await app.rules.settle()

        async def process(_record: dict, resumed: bool = False) -> None:
            raise disk_full()

        monkeypatch.setattr(app.triggers, "process", process)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(app)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            again = await client.post(f"/api/v1/triggerinstances/{instance['id']}/re_emit")
        assert again.status_code == 200, again.text
        assert (await app.triggers.get(again.json()["id"]))["status"] == "pending"
        [row] = await app.db(app.store.audit_list, 10, "api.trigger.re_emit")
        assert row["detail"]["new_instance"] == again.json()["id"]
    finally:
        await app.close()

class _Serving:
    """A running `squall serve`'s API as `squall trigger emit` sees it: the instance stored, its id answered."""

    base = "http://squall.test"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def request(self, method: str, path: str, **_options: object) -> httpx.Response:
        from bot.headers import INSTANCE_HEADER

        self.asked.append((method, path))
        return httpx.Response(202, headers={INSTANCE_HEADER: "0661f0e0303800000000beef"}, json={})


def test_an_emit_through_serve_whose_audit_event_fails_says_the_instance_it_fired(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a running `squall serve` the instance is stored by the service (its webhook route takes no
    event), so the command's `cli.trigger.emit` event follows it. One the database did not take was said as the
    database's failure alone, which read as if nothing had fired: a retry fired it again. The command says which
    instance it fired, with the event whole, and exits 3."""
    import contextlib

    from bot.cli import client

    make_pack(home, {"alert": ALERT})
    serving = _Serving()
    monkeypatch.setattr(client, "running_service", lambda _config: contextlib.nullcontext(serving))
    cli = in_process(home, monkeypatch)
    done = audit_fails(cli, "cli.trigger.emit", "trigger", "emit", "demo.event", "--payload", '{"value": 1}')
    said = done.stderr.replace("\n", " ")
    assert serving.asked == [("POST", "/webhooks/st2")]
    assert ("trigger instance 0661f0e0303800000000beef was fired through the running service, but its audit event "
            "could not be stored") in said, said
    assert '"detail": {"instance": "0661f0e0303800000000beef"}' in said, said
