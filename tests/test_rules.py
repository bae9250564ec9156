"""The rules engine (spec §5): loading with clear errors, criteria, patterns, enforcement, actiontrigger."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import jsonpath_ng
import pytest

from bot.app import Squall
from engine.config import load_config
from engine.rules import compile_key, default_evaluator, load_rules, render_pattern
from engine.templates import build_environment
from tests.conftest import write


def make_pack(home: Path, rules: dict[str, str]) -> Path:
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", """
        ref: demo
        name: demo
        description: Demo pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "actions" / "take.yaml", """
        name: take
        runner_type: noop
        enabled: true
        parameters:
          count: {type: integer}
          message: {type: string}
          items: {type: array}
          env: {type: object}
    """)
    write(pack / "triggers" / "event.yaml", """
        name: event
        pack: demo
        description: Something happened.
        payload_schema: {type: object}
    """)
    for name, text in rules.items():
        write(pack / "rules" / f"{name}.yaml", text)
    return pack


async def started(home: Path) -> Squall:
    return await Squall.start(load_config(home / "config.yml"))


RULE = """
    name: {name}
    pack: demo
    enabled: true
    trigger: {{type: demo.event}}
    criteria: {criteria}
    action:
      ref: demo.take
      parameters: {params}
"""


def rule(name: str, criteria: str = "{}", params: str = "{}", **extra: str) -> str:
    text = RULE.format(name=name, criteria=criteria, params=params)
    return text + "".join(f"    {k}: {v}\n" for k, v in extra.items())


# -- loading -------------------------------------------------------------------------------------

def test_load_errors_name_file_line_and_reason(home: Path) -> None:
    make_pack(home, {
        "good": rule("good", "{trigger.x: {type: exists}}"),
        "bad_op": rule("bad_op", "{trigger.x: {type: equalz, pattern: 1}}"),
        "no_pattern": rule("no_pattern", "{trigger.x: {type: equals}}"),
        "bad_path": rule("bad_path", "{'trigger..x[': {type: equals, pattern: 1}}"),
        "bad_trigger": "name: bad_trigger\ntrigger: {type: demo.evnt}\naction: {ref: demo.take}\n",
        "bad_params": "name: bad_params\ntrigger: {type: core.st2.webhook, parameters: {}}\naction: {ref: demo.take}\n",
        "bad_action": "name: bad_action\ntrigger: {type: demo.event}\naction: {ref: demo.tak}\n",
        "bad_type": "name: bad_type\ntype: {ref: fallback}\ntrigger: {type: demo.event}\naction: {ref: demo.take}\n",
        "disabled": "name: disabled\ntrigger: {type: demo.event}\naction: {ref: demo.take}\n",
    })
    config = load_config(home / "config.yml")
    from bot.app import load_packs
    registry = load_packs(config)
    rules, errors = load_rules(registry)
    by_file = {Path(e.file).stem: e for e in errors}
    assert sorted(r.name for r in rules if r.pack == "demo") == ["disabled", "good"]
    assert not next(r for r in rules if r.name == "disabled").enabled  # enabled defaults to false
    assert "equalz" in by_file["bad_op"].reason and "bad_op.yaml" in by_file["bad_op"].reason
    assert by_file["bad_op"].line == 5
    assert "pattern is required" in by_file["no_pattern"].reason
    assert "invalid JSONPath" in by_file["bad_path"].reason
    assert "did you mean demo.event" in by_file["bad_trigger"].reason and by_file["bad_trigger"].line == 2
    assert "url" in by_file["bad_params"].reason
    assert "demo.take" in by_file["bad_action"].reason and by_file["bad_action"].line == 3
    assert "fallback" in by_file["bad_type"].reason


# -- keys and patterns ---------------------------------------------------------------------------

PAYLOAD = {"headers": {"X-Source": "grafana"}, "list": [{"n": 1}, {"n": 2}], "a": {"b": None}, "id": 7,
           "body": {"value": 95}}


@pytest.mark.parametrize("key", [
    "trigger.headers['X-Source']", "trigger.headers.'X-Source'", 'trigger.headers["X-Source"]', "trigger.list[0].n",
    "trigger.list[1].n", "trigger.list[5].n", "trigger.list[*].n", "trigger.a.b", "trigger.a.b.c", "trigger.id",
    "trigger.body.value", "trigger.missing", "trigger.list.n", "trigger", "trigger.id.x", "trigger.headers.X-Source.y",
])
def test_compiled_keys_agree_with_jsonpath(key: str) -> None:
    context = {"trigger": PAYLOAD}
    matches = jsonpath_ng.parse(key).find(context)
    assert compile_key(key)(context) == (matches[0].value if matches else None)


def test_patterns_keep_types_and_read_the_datastore() -> None:
    env = build_environment()
    evaluator = default_evaluator({"threshold": "90", "dotted.key": "v"})
    context = evaluator.context({"int": 5, "s": "x", "list": [1]})
    assert render_pattern("{{ trigger.int }}", context, env) == 5
    assert render_pattern("{{ trigger.list }}", context, env) == [1]
    assert render_pattern("{{ trigger.s }}", context, env) == "x"
    assert render_pattern("pre{{ trigger.s }}post", context, env) == "prexpost"
    assert render_pattern("{{ st2kv.system.threshold }}", context, env) == "90"
    assert render_pattern("{{ st2kv.system.threshold | int }}", context, env) == 90
    assert render_pattern("{{ system.dotted.key }}", context, env) == "v"
    assert render_pattern(5, context, env) == 5 and render_pattern(None, context, env) is None


# -- the engine end to end -----------------------------------------------------------------------

async def test_rules_fire_with_criteria_tags_backstop_and_typed_parameters(home: Path) -> None:
    make_pack(home, {
        "alert": rule("alert", """
          trigger.body.metric: {type: equals, pattern: cpu}
          trigger.body.value: {type: gt, pattern: 90}
          trigger.body.value#cap: {type: lessthan, pattern: 101}
          trigger.headers['X-Source']: {type: IEQUALS, pattern: grafana}
          trigger.body.host: {type: exists}
        """, "{count: '{{ trigger.body.value }}', message: 'CPU {{ trigger.body.value }}% on {{ trigger.body.host }}',"
             " items: ['{{ trigger.body.host }}']}"),
        "kv": rule("kv", "{trigger.body.value: {type: greaterthan, pattern: '{{ st2kv.system.limit }}'}}"),
        "typed": rule("typed", "{trigger.body.metric#2: {type: equals, pattern: '{{ trigger.body.metric }}'},"
                      " trigger.body.value: {type: lt, pattern: '{{ trigger.body.max }}'}}"),
        "fallback": rule("fallback", type="{ref: backstop}"),
        "off": "name: 'off'\ntrigger: {type: demo.event}\naction: {ref: demo.take}\n",
    })
    squall = await started(home)
    try:
        await squall.db(squall.datastore.set, "limit", "50")  # datastore values are strings: int > str raises
        body = {"metric": "cpu", "value": 95, "host": "web1", "max": 100}
        instance = await squall.triggers.dispatch("demo.event", {"headers": {"X-Source": "Grafana"}, "body": body})
        await squall.rules.settle()
        found = await squall.rules.enforcements(trigger_instance_id=instance["id"])
        enforcements = {e["rule"]["ref"]: e for e in found}
        assert set(enforcements) == {"demo.alert", "demo.kv", "demo.typed"}
        assert "demo.off" in squall.rules.rules and not squall.rules.rules["demo.off"].enabled
        assert enforcements["demo.alert"]["status"] == "succeeded"
        assert enforcements["demo.typed"]["status"] == "succeeded"
        # int payload vs the datastore's string value: StackStorm raises TypeError -> failed enforcement
        failed = enforcements["demo.kv"]
        assert failed["status"] == "failed" and failed["execution_id"] is None
        assert failed["failure_reason"].startswith(
            f'Failed to match rule "demo.kv" against trigger instance "{instance["id"]}": '
            "There might be a problem with the criteria in rule demo.kv: '>' not supported")
        execution = await squall.executions.get(enforcements["demo.alert"]["execution_id"])
        assert execution["parameters"] == {"count": 95, "message": "CPU 95% on web1", "items": ["web1"]}
        assert execution["context"]["rule"] == {"ref": "demo.alert", "name": "alert"}
        assert execution["context"]["trigger_instance"] == {"id": instance["id"], "name": "demo.event"}
        assert execution["context"]["user"] == "squall"
        assert (await squall.triggers.get(instance["id"]))["status"] == "processed"

        # nothing standard matches -> the backstop rule fires (and only it)
        other = await squall.triggers.dispatch("demo.event", {"body": {"metric": "disk"}})
        await squall.rules.settle()
        found = await squall.rules.enforcements(trigger_instance_id=other["id"])
        assert [e["rule"]["ref"] for e in found if e["status"] == "succeeded"] == ["demo.fallback"]
        # criteria that raised are a non-match (and a failed record), as in StackStorm
        assert sorted(e["rule"]["ref"] for e in found if e["status"] == "failed") == ["demo.kv", "demo.typed"]
    finally:
        await squall.close()


async def test_datastore_patterns_work_and_parameter_errors_are_recorded(home: Path) -> None:
    make_pack(home, {
        "kv": rule("kv", "{trigger.level: {type: equals, pattern: '{{ st2kv.system.level }}'}}"),
        "badparam": rule("badparam", "{trigger.level: {type: exists}}", "{count: '{{ trigger.level }}'}"),
    })
    squall = await started(home)
    try:
        await squall.db(squall.datastore.set, "level", "high")
        instance = await squall.triggers.dispatch("demo.event", {"level": "high"})
        await squall.rules.settle()
        found = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])}
        assert found["demo.kv"]["status"] == "succeeded" and found["demo.kv"]["execution_id"]
        assert found["demo.badparam"]["status"] == "failed"
        assert 'count' in found["demo.badparam"]["failure_reason"]
        # StackStorm stores the refused request as a failed execution, its error the result (spec §5.4)
        refused = await squall.executions.get(found["demo.badparam"]["execution_id"])
        assert refused["status"] == "failed" and 'parameter "count"' in refused["result"]["error"]
    finally:
        await squall.close()


async def test_a_rule_runs_a_shell_command_built_from_the_payload_safely(home: Path) -> None:
    """The classic webhook → command rule: the `cmd` template sees `trigger` when the shell runner
    renders it (again on a re-run), and payload text stays data, never shell syntax."""
    marker = home / "pwned"
    make_pack(home, {
        "shell": """
            name: shell
            pack: demo
            enabled: true
            trigger: {type: demo.event}
            action: {ref: core.local, parameters: {cmd: "echo deploying {{ trigger.service }}"}}
        """,
    })
    squall = await started(home)
    try:
        payload = {"service": f"web; touch {marker}"}
        instance = await squall.triggers.dispatch("demo.event", payload)
        await squall.rules.settle()
        [enforcement] = await squall.rules.enforcements(trigger_instance_id=instance["id"])
        execution = await squall.executions.get(enforcement["execution_id"])
        assert execution["status"] == "succeeded", execution["result"]
        assert execution["result"]["stdout"] == f"deploying web; touch {marker}"
        again = await squall.executions.rerun(execution["id"])
        again = await squall.executions.wait(again["id"])
        assert again["status"] == "succeeded", again["result"]
        assert again["result"]["stdout"] == f"deploying web; touch {marker}"
        assert not marker.exists()
    finally:
        await squall.close()


async def test_actiontrigger_drives_a_rule(home: Path) -> None:
    make_pack(home, {
        "after": """
            name: after
            pack: demo
            enabled: true
            trigger: {type: core.st2.generic.actiontrigger}
            criteria:
              trigger.action_ref: {type: equals, pattern: core.noop}
              trigger.status: {type: equals, pattern: succeeded}
            action: {ref: demo.take, parameters: {message: "{{ trigger.action_ref }} {{ trigger.status }}"}}
        """,
    })
    squall = await started(home)
    try:
        assert squall.triggers.wanted("core.st2.generic.actiontrigger")
        first = await squall.executions.request("core.noop", {})
        await squall.executions.wait(first["id"])
        await squall.rules.settle()
        enforcements = await squall.rules.enforcements(rule="demo.after")
        assert len(enforcements) == 1 and enforcements[0]["status"] == "succeeded"
        execution = await squall.executions.get(enforcements[0]["execution_id"])
        assert execution["parameters"]["message"] == "core.noop succeeded"
        # the rule's own demo.take execution emits an actiontrigger too, which does not match
        assert len(await squall.rules.enforcements(rule="demo.after")) == 1
    finally:
        await squall.close()


async def test_webhook_rules_are_routed_by_url(home: Path) -> None:
    make_pack(home, {
        "hook": """
            name: hook
            enabled: true
            trigger: {type: core.st2.webhook, parameters: {url: /alerts/}}
            action: {ref: demo.take}
        """,
        "other": """
            name: other
            enabled: true
            trigger: {type: core.st2.webhook, parameters: {url: other}}
            action: {ref: demo.take}
        """,
    })
    squall = await started(home)
    try:
        assert squall.rules.hooks() == ["alerts", "other"]
        assert [r.ref for r in squall.rules.webhook_rules("/alerts")] == ["demo.hook"]
        instance = await squall.rules.dispatch_webhook("alerts", {"headers": {}, "headers_lower": {}, "body": {}})
        await squall.rules.settle()
        refs = [e["rule"]["ref"] for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])]
        assert refs == ["demo.hook"]
        with pytest.raises(LookupError, match="Webhook nope not registered"):
            await squall.rules.dispatch_webhook("nope", {})
        # The hook is stored with the instance: a re-emit (or a recovery after a crash) reaches the same rule.
        again = await squall.triggers.re_emit(instance["id"])
        assert again["trigger_parameters"] == {"url": "alerts"}
        await squall.rules.settle()
        refs = [e["rule"]["ref"] for e in await squall.rules.enforcements(trigger_instance_id=again["id"])]
        assert refs == ["demo.hook"]
        # An instance of the bare type (no URL) belongs to no hook's rules.
        bare = await squall.triggers.dispatch("core.st2.webhook", {"headers": {}, "headers_lower": {}, "body": {}})
        await squall.rules.settle()
        assert await squall.rules.enforcements(trigger_instance_id=bare["id"]) == []
    finally:
        await squall.close()


async def test_a_payload_cannot_add_keys_to_an_object_parameter(home: Path) -> None:
    """A rule's `env: {BRANCH: "{{ trigger.body.branch }}"}`: a branch with quotes in it is the value
    of BRANCH, whole. (StackStorm renders the object as JSON text, so such a branch adds keys: a
    `GIT_SSH_COMMAND` that a git-using action then runs.) A quote no longer breaks the enforcement."""
    make_pack(home, {"hook": """
        name: hook
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: deploy}}
        action:
          ref: demo.take
          parameters:
            env: {BRANCH: "{{ trigger.body.branch }}", FROM: "{{trigger}}"}
            items: ["{{ trigger.body.branch }}", "{{ trigger.body.n }}"]
    """})
    squall = await started(home)
    try:
        hostile = 'x", "GIT_SSH_COMMAND": "touch pwned #'
        for branch in (hostile, 'say "hi"\n\\'):
            instance = await squall.rules.dispatch_webhook("deploy", {"headers": {}, "headers_lower": {},
                                                                      "body": {"branch": branch, "n": 5}})
            await squall.rules.settle()
            [enforcement] = await squall.rules.enforcements(trigger_instance_id=instance["id"])
            assert enforcement["status"] == "succeeded", enforcement
            record = await squall.executions.get(enforcement["execution_id"])
            env = record["parameters"]["env"]
            assert set(env) == {"BRANCH", "FROM"} and env["BRANCH"] == branch
            assert env["FROM"]["body"]["branch"] == branch  # a whole reference keeps its type
            assert record["parameters"]["items"] == [branch, "5"]
    finally:
        await squall.close()


async def test_a_pattern_that_backtracks_without_end_fails_its_rule_not_the_service(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`^(a|aa)+$` over forty `a`s and a `b` backtracks for minutes in Python's `re`, on the event
    loop. The match stops at `engine.patterns.TIMEOUT`: that rule's enforcement fails and says why,
    and the other rule on the same instance, and the next instance, are enforced as usual."""
    from engine import patterns

    monkeypatch.setattr(patterns, "TIMEOUT", 0.2)
    make_pack(home, {
        "slow": """
            name: slow
            enabled: true
            trigger: {type: core.st2.webhook, parameters: {url: text}}
            criteria: {trigger.body.text: {type: regex, pattern: '^(a|aa)+$'}}
            action: {ref: demo.take}
        """,
        "plain": """
            name: plain
            enabled: true
            trigger: {type: core.st2.webhook, parameters: {url: text}}
            criteria: {trigger.body.text: {type: iregex, pattern: 'B$'}}
            action: {ref: demo.take, parameters: {message: "{{ trigger.body.text | regex_replace('^(a|aa)+$', 'x') }}"}}
        """,
    })
    squall = await started(home)
    try:
        instance = await squall.rules.dispatch_webhook("text", {"headers": {}, "headers_lower": {},
                                                                "body": {"text": "a" * 40 + "b"}})
        await squall.rules.settle()
        by_rule = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])}
        assert by_rule["demo.slow"]["status"] == "failed"
        assert "regex timed out" in by_rule["demo.slow"]["failure_reason"]
        assert by_rule["demo.plain"]["status"] == "failed"  # its parameter's filter timed out in turn
        assert "regex timed out" in by_rule["demo.plain"]["failure_reason"]
        fine = await squall.rules.dispatch_webhook("text", {"headers": {}, "headers_lower": {},
                                                            "body": {"text": "aab"}})
        await squall.rules.settle()
        [plain] = await squall.rules.enforcements(trigger_instance_id=fine["id"])
        assert plain["rule"]["ref"] == "demo.plain" and plain["status"] == "succeeded"
        assert (await squall.executions.get(plain["execution_id"]))["parameters"]["message"] == "aab"
    finally:
        await squall.close()


async def test_a_search_over_too_many_items_fails_its_rule_with_the_reason(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One payload's list cannot hold every rule (a 1 MiB body of empty objects took 5 s of the loop):
    a `search` over more than `SEARCH_MAX_ITEMS` fails that rule's enforcement and says why."""
    from engine import operators

    monkeypatch.setattr(operators, "SEARCH_MAX_ITEMS", 5)
    make_pack(home, {"alerts": """
        name: alerts
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: alerts}}
        criteria:
          trigger.body.alerts:
            type: search
            condition: any
            pattern: {item.status: {type: equals, pattern: firing}}
        action: {ref: demo.take}
    """})
    squall = await started(home)
    try:
        results = {}
        for count in (5, 6):
            alerts = [{"status": "resolved"}] * (count - 1) + [{"status": "firing"}]
            instance = await squall.rules.dispatch_webhook("alerts", {"headers": {}, "headers_lower": {},
                                                                      "body": {"alerts": alerts}})
            await squall.rules.settle()
            [results[count]] = await squall.rules.enforcements(trigger_instance_id=instance["id"])
        assert results[5]["status"] == "succeeded"
        assert results[6]["status"] == "failed"
        assert "the search is over 6 items, more than the 5 one criterion may check" in results[6]["failure_reason"]
    finally:
        await squall.close()


async def test_a_rule_acts_once_per_trigger_instance(home: Path) -> None:
    """Enforcing a rule again for the same instance (a recovery after a crash) stores no second
    enforcement and requests no second execution (nor a second failed one, for refused parameters)."""
    make_pack(home, {"once": rule("once", params="{message: '{{ trigger.level }}'}"),
                     "bad": rule("bad", params="{count: '{{ trigger.level }}'}")})
    squall = await started(home)
    try:
        instance = await squall.triggers.dispatch("demo.event", {"level": "high"})
        await squall.rules.settle()
        first = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])}
        assert first["demo.once"]["status"] == "succeeded" and first["demo.bad"]["status"] == "failed"
        for ref in ("demo.once", "demo.bad"):
            again = await squall.rules.enforce(squall.rules.rules[ref], instance)
            assert again["id"] == first[ref]["id"] and again["execution_id"] == first[ref]["execution_id"]
        await squall.rules.settle()
        assert sorted(e["id"] for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])) == \
            sorted(e["id"] for e in first.values())
        executions = await squall.executions.list(trigger_instance=instance["id"])
        assert first["demo.bad"]["execution_id"] is not None
        assert sorted(e["id"] for e in executions) == sorted(e["execution_id"] for e in first.values())
    finally:
        await squall.close()


async def test_reload_rebuilds_rules(home: Path) -> None:
    pack = make_pack(home, {"one": rule("one")})
    squall = await started(home)
    try:
        assert [ref for ref in squall.rules.rules if ref.startswith("demo.")] == ["demo.one"]
        write(pack / "rules" / "two.yaml", rule("two"))
        squall.reload()
        assert sorted(ref for ref in squall.rules.rules if ref.startswith("demo.")) == ["demo.one", "demo.two"]
    finally:
        await squall.close()


def test_search_with_item_keys_and_tags() -> None:
    from engine.packs import Registry, TriggerType
    registry = Registry(trigger_types={"demo.event": TriggerType(name="event", pack="demo")})
    from engine.rules import load_rule
    loaded = load_rule({
        "name": "s", "trigger": {"type": "demo.event"}, "action": {"ref": "x.y"},
        "criteria": {"trigger.issues": {"type": "search", "condition": "any", "pattern": {
            "item.labels#1": {"type": "contains", "pattern": "bug"},
            "item.labels#2": {"type": "contains", "pattern": "{{ trigger.want }}"},
        }}},
    }, "demo", "s.yaml", registry, check_action=False)
    evaluator = default_evaluator()
    payload = {"want": "urgent", "issues": [{"labels": ["bug"]}, {"labels": ["bug", "urgent"]}]}
    assert evaluator.matches(loaded, payload)
    assert not evaluator.matches(loaded, {**payload, "want": "later"})
    assert not evaluator.matches(loaded, {})


async def test_datastore_changes_fire_key_value_triggers(home: Path) -> None:
    make_pack(home, {
        "changed": """
            name: changed
            pack: demo
            enabled: true
            trigger: {type: core.st2.key_value_pair.value_change}
            criteria: {trigger.new_object.name: {type: equals, pattern: deploy.version}}
            action:
              ref: demo.take
              parameters: {message: "{{ trigger.old_object.value }}->{{ trigger.new_object.value }}"}
        """,
        "created": """
            name: created
            pack: demo
            enabled: true
            trigger: {type: core.st2.key_value_pair.create}
            action: {ref: demo.take, parameters: {message: "{{ trigger.object.name }}"}}
        """,
        "deleted": """
            name: deleted
            pack: demo
            enabled: true
            trigger: {type: core.st2.key_value_pair.delete}
            action: {ref: demo.take, parameters: {message: "{{ trigger.object.value }}"}}
        """,
    })
    squall = await started(home)
    try:
        await squall.db(squall.datastore.set, "deploy.version", "1.0")
        await squall.db(squall.datastore.set, "deploy.version", "1.0")  # same value: an update, no change
        await squall.db(squall.datastore.set, "deploy.version", "1.1")
        await squall.db(squall.datastore.set, "other", "x")
        await squall.db(squall.datastore.delete, "deploy.version")

        async def messages(rule_ref: str, count: int) -> list[str]:
            for _ in range(200):
                await squall.triggers.settle()
                await squall.rules.settle()
                found = await squall.rules.enforcements(rule=rule_ref)
                if len(found) >= count:
                    break
                await asyncio.sleep(0.02)
            executions = [await squall.executions.wait(e["execution_id"]) for e in found]
            return sorted(e["parameters"]["message"] for e in executions)

        assert await messages("demo.changed", 1) == ["1.0->1.1"]
        assert await messages("demo.created", 2) == ["deploy.version", "other"]
        assert await messages("demo.deleted", 1) == ["1.1"]
        # Nothing listens to updates: none are stored.
        assert await squall.triggers.list(trigger="core.st2.key_value_pair.update") == []

        # `squall key set` in another process fires the rule there; `squall serve` runs the action.
        done = subprocess.run([str(Path(sys.executable).parent / "squall"), "-c", str(home / "config.yml"),
                               "key", "set", "from.cli", "v"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        [instance] = [i for i in await squall.triggers.list(trigger="core.st2.key_value_pair.create")
                      if i["payload"]["object"]["name"] == "from.cli"]
        assert instance["status"] == "processed"
        [enforcement] = await squall.rules.enforcements(trigger_instance_id=instance["id"])
        assert enforcement["status"] == "succeeded"
        assert (await squall.executions.get(enforcement["execution_id"]))["status"] == "requested"
    finally:
        await squall.close()


# -- one CPU budget for the criteria of one trigger instance ------------------------------------

def _evaluations_seen_from_the_loop(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], list[str]]:
    """Counts how often the event loop ran while a `matching_rules` call was under way (`seen["ticks"]`,
    once `ticking` runs) and the threads those calls ran on: work held on the loop shows no tick."""
    import threading

    from engine.rules import RulesEngine

    seen = {"running": 0, "ticks": 0}
    threads: list[str] = []
    original = RulesEngine.matching_rules

    def watched(self: RulesEngine, *args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        seen["running"] += 1
        try:
            return original(self, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            seen["running"] -= 1

    monkeypatch.setattr(RulesEngine, "matching_rules", watched)
    return seen, threads


async def _ticking(seen: dict[str, int], done: asyncio.Event) -> None:
    while not done.is_set():
        if seen["running"]:
            seen["ticks"] += 1
        await asyncio.sleep(0)


async def _settled_while_ticking(squall: Squall, seen: dict[str, int]) -> None:
    done = asyncio.Event()
    ticker = asyncio.ensure_future(_ticking(seen, done))
    try:
        await squall.rules.settle()
    finally:
        done.set()
        await ticker


async def test_a_slow_criteria_template_renders_off_the_loop_and_fails_its_rule_alone(
        home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A pattern template with a loop that never ends in time rendered on the event loop for the whole
    `templates.max_seconds` (5 s of every chat command and request, per rule, per webhook). It is given
    up on the loop after `templates.BRIEF_SECONDS` and rendered on a render thread while the loop goes
    on; its rule fails with the reason, logged, and the next rule on the same instance still fires."""
    import logging

    from engine.config import TemplateLimits
    from engine.templates import configure_limits

    write(home / "config.yml", (home / "config.yml").read_text() + "templates: {max_seconds: 0.5}\n")
    make_pack(home, {
        "critloop": """
            name: critloop
            enabled: true
            trigger: {type: core.st2.webhook, parameters: {url: crit}}
            criteria:
              trigger.body.a:
                type: equals
                pattern: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
            action: {ref: demo.take}
        """,
        "plain": """
            name: plain
            enabled: true
            trigger: {type: core.st2.webhook, parameters: {url: crit}}
            criteria: {trigger.body.a: {type: equals, pattern: x}}
            action: {ref: demo.take}
        """,
    })
    seen, threads = _evaluations_seen_from_the_loop(monkeypatch)
    squall = await started(home)
    try:
        with caplog.at_level(logging.WARNING, logger="engine.rules"):
            instance = await squall.rules.dispatch_webhook("crit", {"headers": {}, "headers_lower": {},
                                                                    "body": {"a": "x"}})
            await _settled_while_ticking(squall, seen)
        by_rule = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])}
        assert by_rule["demo.critloop"]["status"] == "failed" and by_rule["demo.critloop"]["execution_id"] is None
        assert "templates.max_seconds" in by_rule["demo.critloop"]["failure_reason"]
        assert by_rule["demo.plain"]["status"] == "succeeded" and by_rule["demo.plain"]["execution_id"]
        assert any("demo.critloop" in r.getMessage() and instance["id"] in r.getMessage()
                   and "templates.max_seconds" in r.getMessage() for r in caplog.records)
        assert seen["ticks"] > 0  # the loop ran while the template rendered
        assert threads[0] == "MainThread" and threads[-1].startswith("squall-render")  # given up on the loop
    finally:
        await squall.close()
        configure_limits(TemplateLimits())


ALERTS_RULES = {
    "afirst": """
        name: afirst
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: alerts}}
        criteria: {trigger.body.alerts: {type: exists}}
        action: {ref: demo.take}
    """,
    "alerts": """
        name: alerts
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: alerts}}
        criteria:
          trigger.body.alerts:
            type: search
            condition: any
            pattern:
              item.message:
                type: regex
                pattern: '^.*error.*timeout.*$'
        action: {ref: demo.take}
    """,
    "zlast": """
        name: zlast
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: alerts}}
        criteria: {trigger.body.alerts: {type: exists}}
        action: {ref: demo.take}
    """,
}


async def test_the_criteria_of_one_trigger_instance_share_one_cpu_budget(
        home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An ordinary alert rule (a regex over each alert's message) over a body of long messages took
    ~0.5 s a message, each under `patterns.TIMEOUT`, 6.5 s of the event loop a request, logged nowhere.
    All the criteria of one trigger instance now share `CRITERIA_SECONDS` of CPU time, off the loop
    once they take long: the rules that matched before it ran out fire; the rule it ran out in, and the
    rules after it, do not match, and each gets a failed enforcement and a warning that say why."""
    import logging

    from engine import rules

    monkeypatch.setattr(rules, "CRITERIA_SECONDS", 0.05, raising=False)
    make_pack(home, ALERTS_RULES)
    seen, threads = _evaluations_seen_from_the_loop(monkeypatch)
    squall = await started(home)
    try:
        alerts = [{"message": "error " * 6000} for _ in range(12)] + [{"message": "error: timeout"}]
        with caplog.at_level(logging.WARNING, logger="engine.rules"):
            instance = await squall.rules.dispatch_webhook("alerts", {"headers": {}, "headers_lower": {},
                                                                      "body": {"alerts": alerts}})
            await _settled_while_ticking(squall, seen)
        by_rule = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=instance["id"])}
        assert by_rule["demo.afirst"]["status"] == "succeeded" and by_rule["demo.afirst"]["execution_id"]
        for ref in ("demo.alerts", "demo.zlast"):
            assert by_rule[ref]["status"] == "failed" and by_rule[ref]["execution_id"] is None
            assert "0.05 s of CPU time" in by_rule[ref]["failure_reason"]
            assert instance["id"] in by_rule[ref]["failure_reason"]
            assert any(ref in r.getMessage() and instance["id"] in r.getMessage() and "0.05 s of CPU time"
                       in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        assert "regex" in by_rule["demo.alerts"]["failure_reason"]  # the rule it ran out in says what ran
        [execution] = await squall.executions.list(trigger_instance=instance["id"])
        assert execution["id"] == by_rule["demo.afirst"]["execution_id"]
        assert seen["ticks"] > 0  # the loop ran while the regexes did
        assert threads[0] == "MainThread" and threads[-1].startswith("squall-render")
    finally:
        await squall.close()


async def test_cheap_criteria_are_evaluated_on_the_loop_without_a_thread_hop(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nearly every instance's criteria take microseconds: they are evaluated where they always were,
    with the budget, and a short list of alerts still matches."""
    make_pack(home, ALERTS_RULES)
    _seen, threads = _evaluations_seen_from_the_loop(monkeypatch)
    squall = await started(home)
    try:
        alerts = [{"message": "error: disk"}, {"message": "error: timeout"}]
        instance = await squall.rules.dispatch_webhook("alerts", {"headers": {}, "headers_lower": {},
                                                                  "body": {"alerts": alerts}})
        await squall.rules.settle()
        by_rule = {e["rule"]["ref"]: e["status"] for e in
                   await squall.rules.enforcements(trigger_instance_id=instance["id"])}
        assert by_rule == {"demo.afirst": "succeeded", "demo.alerts": "succeeded", "demo.zlast": "succeeded"}
        assert threads == ["MainThread"]
    finally:
        await squall.close()
