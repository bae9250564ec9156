"""Action `notify` (spec §4, `engine/notifications.py`): what its messages and data may read, which
workflow tasks send one, and the action and notify triggers a crash must not lose.

Real components: `Squall` on SQLite with the loopback chat, the packs written as authors write them,
the rules engine consuming the triggers.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.app import Squall
from engine.events import EXECUTION_FINISHED
from engine.executions import COMPLETED
from engine.notifications import ACTION_TRIGGER, NOTIFY_TRIGGER, trigger_key
from engine.storage import Store, utcnow
from tests.conftest import write
from tests.test_chat import loopback_chat, settle

NOTED_RULE = """
    name: noted
    pack: demo
    enabled: true
    trigger: {type: core.st2.generic.notifytrigger}
    action: {ref: core.noop}
"""
ACTED_RULE = """
    name: acted
    pack: demo
    enabled: true
    trigger: {type: core.st2.generic.actiontrigger}
    criteria: {trigger.action_ref: {type: equals, pattern: demo.job}}
    action: {ref: core.noop}
"""


def _pack(home: Path) -> Path:
    write(home / "config.yml", """
        database: {url: sqlite:///data/squall.db}
        packs: {paths: [packs]}
        routes:
          ops: {adapter: loopback, channel: "#alerts"}
          kv: {adapter: loopback, channel: "#kv"}
          flow: {adapter: loopback, channel: "#flow"}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "noisy.yaml", """
        name: noisy
        runner_type: noop
        notify: {on-complete: {message: "noisy done in {{ action_context.workflow_task.task }}", routes: [ops]}}
    """)
    write(pack / "actions" / "job.yaml", """
        name: job
        runner_type: noop
        notify: {on-complete: {routes: [email]}}
    """)
    return pack


async def _run(squall: Squall, ref: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    done = await squall.executions.wait((await squall.executions.request(ref, parameters or {}, {}))["id"], 30)
    assert done["status"] == "succeeded", done["result"]
    return done


async def _notified(squall: Squall, trigger: str) -> list[dict[str, Any]]:
    return [row["payload"] for row in await squall.triggers.list(trigger=trigger, limit=1000)]


async def test_notify_message_and_data_read_st2kv_and_mask_what_decrypt_kv_reveals(home: Path) -> None:
    """StackStorm renders `message` and `data` with `st2kv.system`; a secret decrypted there is masked
    in what is posted and in the notify trigger, as in results."""
    pack = _pack(home)
    write(pack / "actions" / "kvnote.yaml", """
        name: kvnote
        runner_type: noop
        notify:
          on-complete:
            message: "deployed to {{ st2kv.system.env_name }} with {{ st2kv.system.pw | decrypt_kv }}"
            data: {env: "{{ st2kv.system.env_name }}", token: "pw={{ st2kv.system.pw | decrypt_kv }}"}
            routes: [kv]
    """)
    write(pack / "rules" / "noted.yaml", NOTED_RULE)
    async with loopback_chat(home) as (squall, bot, loopback):
        assert not squall.registry.errors, squall.registry.errors
        await squall.db(squall.datastore.set, "env_name", "prod")
        await squall.db(squall.datastore.set, "pw", "s3cr3t-hunter2", encrypt=True)
        done = await _run(squall, "demo.kvnote")
        await settle(squall, bot)
        await squall.triggers.settle()
        assert loopback.texts("#kv") == ["deployed to prod with ********"]
        [payload] = [p for p in await _notified(squall, NOTIFY_TRIGGER) if p["execution_id"] == done["id"]]
        assert payload["message"] == "deployed to prod with ********"
        assert payload["data"]["env"] == "prod"
        assert payload["data"]["token"] == "pw=********"


async def test_workflow_tasks_send_their_actions_notify_only_as_stackstorm_does(home: Path) -> None:
    """`action_service._is_notify_skipped`: an Orquesta task its workflow's `notify` parameter does not
    list, and a chain task in `skip_notify`, send none, not even their action's own; a listed task or
    an unskipped chain task sends its action's own, which wins over what the workflow hands it. Mistral
    hands its `notify` to every task not in `skip_notify`, whose action's own `notify` still applies."""
    pack = _pack(home)
    write(pack / "actions" / "flow.yaml", """
        name: flow
        runner_type: orquesta
        entry_point: workflows/flow.yaml
        notify: {on-complete: {message: "flow says", routes: [flow]}}
        parameters: {notify: {default: [listed]}}
    """)
    write(pack / "actions" / "workflows" / "flow.yaml", """
        version: 1.0
        tasks:
          unlisted: {action: demo.noisy, next: [{do: listed}]}
          listed: {action: demo.noisy}
    """)
    write(pack / "actions" / "chained.yaml", """
        name: chained
        runner_type: action-chain
        entry_point: chains/chained.yaml
        parameters: {skip_notify: {default: [quiet]}}
    """)
    write(pack / "actions" / "chains" / "chained.yaml", """
        chain:
          - {name: quiet, ref: demo.noisy, on-success: loud}
          - {name: loud, ref: demo.noisy, notify: {on-complete: {message: "task says", routes: [flow]}}}
    """)
    write(pack / "actions" / "mistral.yaml", """
        name: mistral
        runner_type: mistral-v2
        entry_point: workflows/mistral.yaml
        notify: {on-complete: {message: "mistral says", routes: [flow]}}
        parameters: {skip_notify: {default: [skipped, skipped_noisy]}}
    """)
    write(pack / "actions" / "workflows" / "mistral.yaml", """
        version: '2.0'
        demo.mistral:
          type: direct
          tasks:
            handed:
              action: core.noop
              on-success: [skipped]
            skipped:
              action: core.noop
              on-success: [skipped_noisy]
            skipped_noisy:
              action: demo.noisy
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        assert not squall.registry.errors, squall.registry.errors
        await _run(squall, "demo.flow")
        await settle(squall, bot)
        assert loopback.texts("#alerts") == ["noisy done in listed"]  # `unlisted` is skipped
        assert loopback.texts("#flow") == ["flow says"]  # the workflow's own end
        await _run(squall, "demo.chained")
        await settle(squall, bot)
        assert loopback.texts("#alerts")[1:] == ["noisy done in loud"]  # its action's own beats its task's
        assert loopback.texts("#flow") == ["flow says"]
        await _run(squall, "demo.mistral")
        await settle(squall, bot)
        assert loopback.texts("#flow") == ["flow says", "mistral says", "mistral says"]  # `handed`, the workflow
        assert loopback.texts("#alerts")[2:] == ["noisy done in skipped_noisy"]  # its action's own


async def test_triggers_a_crash_kept_from_firing_are_fired_once_by_the_sweep(home: Path) -> None:
    """A kill between an execution's committed end and the Notifier: after the restart, the sweep fires
    its action and notify triggers; a second sweep, or the late listener, fires nothing more."""
    pack = _pack(home)
    write(pack / "rules" / "noted.yaml", NOTED_RULE)
    write(pack / "rules" / "acted.yaml", ACTED_RULE)
    async with loopback_chat(home) as (squall, bot, _loopback):
        squall.events.unsubscribe(EXECUTION_FINISHED, squall.notifier.on_finished)  # the process "dies" here
        lost = await _run(squall, "demo.job")
    async with loopback_chat(home) as (squall, bot, _loopback):  # the restart: `begin` sweeps
        for _ in range(2):
            await bot.sweep(timedelta(days=1))
        await squall.triggers.settle()
        await squall.rules.settle()
        assert [p["execution_id"] for p in await _notified(squall, NOTIFY_TRIGGER)] == [lost["id"]]
        assert [p["route"] for p in await _notified(squall, NOTIFY_TRIGGER)] == ["email"]
        assert [p["execution_id"] for p in await _notified(squall, ACTION_TRIGGER)
                if p["action_ref"] == "demo.job"] == [lost["id"]]
        await squall.notifier.on_finished(await squall.executions.get(lost["id"]))  # a late listener
        await squall.triggers.settle()
        assert len(await _notified(squall, NOTIFY_TRIGGER)) == 1
        assert len([p for p in await _notified(squall, ACTION_TRIGGER) if p["action_ref"] == "demo.job"]) == 1
        await squall.rules.settle()
        enforced = sorted(e["rule"] for e in await squall.db(squall.store.rule_enforcement_list))
        assert enforced == ["demo.acted", "demo.noted"]  # each rule once

        told = await _run(squall, "demo.job")  # the listener fired these: the sweep must not again
        await settle(squall, bot)
        await squall.triggers.settle()
        await bot.sweep(timedelta(days=1))
        await squall.triggers.settle()
        assert [p["execution_id"] for p in await _notified(squall, NOTIFY_TRIGGER)].count(told["id"]) == 1
        assert [p["execution_id"] for p in await _notified(squall, ACTION_TRIGGER)].count(told["id"]) == 1


async def test_the_sweep_fires_nothing_for_executions_that_ended_before_a_rule_listened(home: Path) -> None:
    """An execution that ended while no rule listened to the action trigger was owed none: a rule
    added later must not fire for it at the next sweep."""
    _pack(home)
    async with loopback_chat(home) as (squall, bot, _loopback):
        await _run(squall, "demo.job")
        await settle(squall, bot)
    write(home / "packs" / "demo" / "rules" / "acted.yaml", ACTED_RULE)
    async with loopback_chat(home) as (squall, bot, _loopback):
        assert squall.triggers.wanted(ACTION_TRIGGER)
        await bot.sweep(timedelta(days=1))
        await squall.triggers.settle()
        assert await _notified(squall, ACTION_TRIGGER) == []
        done = await _run(squall, "demo.job")  # from now on it is owed, and fired
        await settle(squall, bot)
        await squall.triggers.settle()
        assert [p["execution_id"] for p in await _notified(squall, ACTION_TRIGGER)
                if p["action_ref"] == "demo.job"] == [done["id"]]


def test_trigger_keys_are_stored_once_and_owed_executions_found_on_both_databases(database_url: str) -> None:
    """The storage under the sweep, on SQLite and PostgreSQL: a key stores its instances once; the
    owing query finds the completed executions with no key (by notify, when asked); the start of
    keying is forgotten while nobody listens."""
    store = Store.open(database_url)
    try:
        now = utcnow()
        for execution_id, action, context, status in (("a" * 24, "demo.job", {}, "succeeded"),
                                                      ("b" * 24, "core.noop", {"notify": {}}, "failed"),
                                                      ("c" * 24, "core.noop", {}, "succeeded"),
                                                      ("d" * 24, "demo.job", {}, "running")):
            store.insert_execution({
                "id": execution_id, "action": action, "runner": "noop", "status": status, "parameters": {},
                "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None, "context": context,
                "log": [], "parent": None, "runner_info": None, "start_timestamp": now - timedelta(seconds=2),
                "end_timestamp": now - timedelta(seconds=1)})
        prefix = trigger_key(NOTIFY_TRIGGER, "")
        since = now - timedelta(hours=1)

        def owing(actions: list[str] | None) -> list[str]:
            return [row["id"] for row in store.executions_owing_trigger(prefix, since, since, sorted(COMPLETED),
                                                                        actions)]

        assert owing(None) == ["a" * 24, "b" * 24, "c" * 24]
        assert owing(["demo.job"]) == ["a" * 24, "b" * 24]  # by action, or by the notify in its context
        instance = {"id": "i" * 24, "trigger": NOTIFY_TRIGGER, "payload": {"x": 1}, "occurrence_time": now,
                    "status": "pending", "trace_tag": None, "trigger_parameters": None}
        expires = now + timedelta(days=1)
        assert store.trigger_instances_add_once([instance], trigger_key(NOTIFY_TRIGGER, "a" * 24), expires)
        assert not store.trigger_instances_add_once([{**instance, "id": "j" * 24}],
                                                    trigger_key(NOTIFY_TRIGGER, "a" * 24), expires)
        assert store.trigger_instances_add_once([], trigger_key(NOTIFY_TRIGGER, "b" * 24), expires)  # owed none
        assert [row["id"] for row in store.trigger_instance_list(NOTIFY_TRIGGER)] == ["i" * 24]
        assert owing(None) == ["c" * 24]
        assert store.keyed_since_while("keyed_since:test", False) is None
        began = store.keyed_since_while("keyed_since:test", True)
        assert store.keyed_since_while("keyed_since:test", True) == began
        assert store.keyed_since_while("keyed_since:test", False) is None  # forgotten: a new start next time
        assert store.keyed_since_while("keyed_since:test", True) >= began
    finally:
        store.close()


async def test_a_secret_inquiry_answer_is_masked_in_the_action_and_notify_triggers(home: Path) -> None:
    """An answer to a `secret: true` property (a PIN) is `********` in what rules and routes are told,
    as in the API: the action and notify triggers' payloads are stored and readable at
    `/api/v1/triggerinstances`, and a rule's action gets them. The inquiry keeps it sealed for its workflow."""
    pack = _pack(home)
    write(pack / "rules" / "noted.yaml", NOTED_RULE)
    write(pack / "rules" / "asked.yaml", ACTED_RULE.replace("name: acted", "name: asked").replace(
        "trigger.action_ref: {type: equals, pattern: demo.job}",
        "trigger.runner_ref: {type: equals, pattern: inquirer}"))
    pin = "PIN-4711-secret"
    schema = {"type": "object", "properties": {"pin": {"type": "string", "secret": True, "required": True},
                                               "note": {"type": "string"}}}
    notify = {"on-complete": {"message": "pin {{ action_results.response.pin }}", "routes": ["ops"],
                              "data": {"pin": "{{ action_results.response.pin }}"}}}
    async with loopback_chat(home) as (squall, bot, loopback):
        assert not squall.registry.errors, squall.registry.errors
        record = await squall.executions.request("core.ask", {"schema": schema}, {"user": "wf", "notify": notify})
        assert (await squall.executions.wait(record["id"], 10))["status"] == "pending"
        await squall.inquiries.respond(record["id"], {"pin": pin, "note": "on call"}, "ann")
        await settle(squall, bot)
        await squall.triggers.settle()
        await squall.rules.settle()
        acted = [p for p in await _notified(squall, ACTION_TRIGGER) if p["execution_id"] == record["id"]]
        assert sorted(p["status"] for p in acted) == ["pending", "succeeded"] and pin not in str(acted)
        [answered] = [p for p in acted if p["status"] == "succeeded"]
        assert answered["result"]["response"] == {"pin": "********", "note": "on call"}
        noted = [p for p in await _notified(squall, NOTIFY_TRIGGER) if p["execution_id"] == record["id"]]
        [told] = [p for p in noted if p["status"] == "succeeded"]  # (a pending inquiry is told too)
        assert pin not in str(noted) and '"pin": "********"' in told["data"]["result"]
        assert told["message"] == "pin ********" and told["data"]["pin"] == "********"
        assert pin not in str(loopback.texts("#alerts"))
        enforced = {e["rule"] for e in await squall.db(squall.store.rule_enforcement_list)}
        assert enforced == {"demo.asked", "demo.noted"}  # the rules were handed the masked payloads
        stored = await squall.db(squall.store.get_execution, record["id"])
        assert stored["result"]["response"]["pin"] == "********" and pin not in str(stored["result"])
        assert squall.executions.unseal_answers(stored)["response"]["pin"] == pin  # sealed for its workflow
