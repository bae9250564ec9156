"""`squall rule | trigger | trigger-instance | rule-enforcement` through the console script."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write
from tests.test_cli import squall
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


def test_rule_list_get_and_errors(home: Path) -> None:
    make_pack(home, {"alert": ALERT, "broken": ALERT.replace("name: alert", "name: broken").replace("gt", "bigger")})
    done = squall(home, "rule", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["ref"] for r in json.loads(done.stdout) if r["pack"] == "demo"] == ["demo.alert"]
    assert "bigger" in done.stderr and "broken.yaml" in done.stderr
    assert "demo.alert" in squall(home, "rule", "list", "--pack", "demo").stdout
    got = json.loads(squall(home, "rule", "get", "demo.alert", "--json").stdout)
    assert got["trigger"]["type"] == "demo.event" and got["enabled"] is True
    missing = squall(home, "rule", "get", "demo.nope")
    assert missing.returncode == 2 and "not found" in missing.stderr
    # Empty listings say so on standard error; standard output stays empty for scripts.
    empty = squall(home, "rule", "list", "--pack", "other")
    assert empty.returncode == 0 and empty.stdout == "" and "no rules loaded from pack other" in empty.stderr
    empty = squall(home, "trigger-instance", "list")
    assert empty.stdout == "" and "no trigger instances" in empty.stderr


def test_rule_test_explains_and_exits_0_or_1(home: Path) -> None:
    make_pack(home, {})
    rule_file = write(home / "rule.yaml", ALERT)
    hit = write(home / "hit.json", json.dumps({"trigger": "demo.event", "payload": {"metric": "cpu", "value": 95}}))
    miss = write(home / "miss.yaml", "trigger: demo.event\npayload: {metric: cpu, value: 5}\n")
    done = squall(home, "rule", "test", "--rule", str(rule_file), "--trigger-instance", str(hit))
    assert done.returncode == 0, done.stderr
    assert "PASS  trigger.value  greaterthan  pattern=90  value=95" in done.stdout and "MATCHES" in done.stdout
    done = squall(home, "rule", "test", "--rule", str(rule_file), "--trigger-instance", str(miss), "--json")
    assert done.returncode == 1
    outcome = json.loads(done.stdout)
    assert outcome["matched"] is False
    assert outcome["criteria"][-1] == {"key": "trigger.value", "operator": "greaterthan", "pattern": 90, "value": 5,
                                       "result": False}
    bad = write(home / "bad.json", "{not json")
    done = squall(home, "rule", "test", "--rule", str(rule_file), "--trigger-instance", str(bad))
    assert done.returncode == 2 and "not valid JSON or YAML" in done.stderr
    bad_rule = write(home / "bad.yaml", ALERT.replace("gt", "gtx"))
    done = squall(home, "rule", "test", "--rule", str(bad_rule), "--trigger-instance", str(hit))
    assert done.returncode == 2 and "gtx" in done.stderr


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


def test_rule_test_masks_what_decrypt_kv_revealed(home: Path) -> None:
    """docs/security.md: decrypted datastore values are masked everywhere. `rule test` printed the secret a
    pattern decrypted, and the payload's value when it was the secret (a token that matches)."""
    make_pack(home, {})
    secret, pin = "Xk9-super-secret", "12"  # a short one is masked whole, wherever it shows
    for name, value in (("hook_token", secret), ("pin", pin)):
        assert squall(home, "key", "set", name, value, "--encrypt").returncode == 0
    rule_file = write(home / "hook.yaml", HOOK)
    for token, tag, matched in (("wrong", "v-12", False), (secret, "release-v-12", True)):
        instance = write(home / "ti.json", json.dumps({"trigger": "core.st2.webhook", "payload": {
            "headers": {"X-Hook-Token": token}, "body": {"tag": tag}}}))
        text = squall(home, "rule", "test", "--rule", str(rule_file), "--trigger-instance", str(instance))
        done = squall(home, "rule", "test", "--rule", str(rule_file), "--trigger-instance", str(instance), "--json")
        assert (text.returncode, done.returncode) == ((0, 0) if matched else (1, 1)), text.stderr + done.stderr
        for output in (text.stdout, done.stdout):
            assert secret not in output and "v-12" not in output, output
        criteria = json.loads(done.stdout)["criteria"]
        assert criteria[0]["pattern"] == "********"
        assert criteria[0]["value"] == ("********" if matched else "wrong")
        if matched:
            assert criteria[1] == {"key": "trigger.body.tag", "operator": "contains", "pattern": "********",
                                   "value": "********", "result": True}
            assert 'pattern="********"  value="********"' in text.stdout


def test_trigger_emit_instances_and_enforcements(home: Path) -> None:
    make_pack(home, {"alert": ALERT})
    types = json.loads(squall(home, "trigger", "list", "--json").stdout)
    assert {"demo.event", "core.st2.webhook"} <= {t["ref"] for t in types}
    done = squall(home, "trigger", "emit", "demo.event", "--payload", '{"metric": "cpu", "value": 97}')
    assert done.returncode == 0, done.stderr
    instance = json.loads(done.stdout)
    assert instance["status"] == "processed" and instance["payload"]["value"] == 97
    assert "rule demo.alert: succeeded" in done.stderr

    enforcements = json.loads(squall(home, "rule-enforcement", "list", "--rule", "demo.alert", "--json").stdout)
    assert len(enforcements) == 1 and enforcements[0]["trigger_instance_id"] == instance["id"]
    execution = json.loads(squall(home, "execution", "get", enforcements[0]["execution_id"], "--json").stdout)
    assert execution["status"] == "succeeded" and execution["parameters"] == {"count": 97}

    listed = json.loads(squall(home, "trigger-instance", "list", "--json").stdout)
    assert instance["id"] in [i["id"] for i in listed]
    got = json.loads(squall(home, "trigger-instance", "get", instance["id"], "--json").stdout)
    assert got["enforcements"][0]["rule"]["ref"] == "demo.alert"
    again = json.loads(squall(home, "trigger-instance", "re-emit", instance["id"], "--json").stdout)
    assert again["id"] != instance["id"]
    assert again["payload"] == {**instance["payload"], "__context": {"original_id": instance["id"]}}
    assert len(json.loads(squall(home, "rule-enforcement", "list", "--json").stdout)) == 2

    assert squall(home, "trigger-instance", "get", "nope").returncode == 2
    bad = squall(home, "trigger", "emit", "demo.event", "--payload", "{nope")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    unknown = squall(home, "trigger", "emit", "demo.evnt", "--payload", "{}")
    assert unknown.returncode == 2 and "did you mean demo.event" in unknown.stderr


def test_a_rules_id_is_the_same_in_every_process(home: Path) -> None:
    """`st2 rule enable` reads a rule's `id` from one request and updates `PUT /rules/{id}` in the next,
    which another `squall serve` on the database may answer, after a restart even: the id is derived
    from the ref, so every process shows the same one, and differs between rules."""
    make_pack(home, {"alert": ALERT, "other": ALERT.replace("name: alert", "name: other")})
    listed = {r["ref"]: r["id"] for r in json.loads(squall(home, "rule", "list", "--json").stdout)}
    assert listed["demo.alert"] == json.loads(squall(home, "rule", "get", "demo.alert", "--json").stdout)["id"]
    assert len(listed["demo.alert"]) == 24 and int(listed["demo.alert"], 16) >= 0
    assert listed["demo.alert"] != listed["demo.other"]
