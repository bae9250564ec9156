"""Approvals (issue 20 item 2): a command held for approvers from chat groups, through the loopback chat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapters.loopback import LoopbackAdapter, Posted
from aliases.model import load_aliases
from bot.app import Squall
from bot.chat.bot import ChatBot
from engine.config import load_config
from engine.core import load_packs
from engine.crypto import KeyRing
from engine.datastore import RotationReport, rotate_key
from engine.storage import Store, utcnow
from tests.conftest import write
from tests.test_chat import _config, loopback_chat, settle


def _approval_config(home: Path, ttl: str = "1h") -> None:
    _config(home)
    config = (home / "config.yml").read_text()
    line = next(line for line in config.splitlines() if line.strip() == "operators: [olivia]")
    approvers = line.replace("operators: [olivia]", "approvers: [ann, bea]")
    (home / "config.yml").write_text(config.replace(line, f"{line}\n{approvers}"))
    pack = home / "packs" / "demo"
    write(pack / "aliases" / "deploy.yaml", f"""
        name: deploy
        action_ref: demo.wipe
        description: Two approvers needed.
        formats: ["deploy {{{{target}}}}"]
        approval: {{groups: [approvers], count: 2, ttl: {ttl}}}
    """)
    write(pack / "actions" / "restart.yaml", """
        name: restart
        runner_type: local-shell-cmd
        parameters:
          service: {type: string, required: true}
          cmd: {default: 'echo restarted {{service}}', immutable: true}
        approval: {groups: [approvers]}
    """)
    write(pack / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          token: {type: string, secret: true, required: true}
          cmd: {default: 'test "{{token}}" = "s3cret-value-9" && echo token-ok', immutable: true}
        approval: {groups: [approvers]}
    """)
    write(pack / "aliases" / "login.yaml", """
        name: login
        action_ref: demo.login
        formats: ["login {{token}}"]
    """)
    write(pack / "aliases" / "restart.yaml", """
        name: restart
        action_ref: demo.restart
        description: The action asks one approver.
        formats: ["restart {{service}}"]
    """)


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    _approval_config(home)
    async with loopback_chat(home) as started:
        yield started


def _prompt(loopback: LoopbackAdapter) -> Posted:
    return next(p for p in loopback.posted if p.reply.buttons)


def _approval_id(loopback: LoopbackAdapter) -> str:
    return _prompt(loopback).reply.buttons[0]["value"].split()[1]


async def _events(squall: Squall, event: str) -> list[dict]:
    return await squall.db(squall.store.audit_list, 100, event)


async def test_two_approvers_needed_and_the_execution_names_them(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!deploy web1", user="alice", channel="#ops")
    await settle(squall, bot)
    prompt = _prompt(loopback)
    approval_id = _approval_id(loopback)
    assert "waiting for 2 approvals from approvers" in prompt.text
    assert prompt.reply.thread == "m1" and prompt.reply.asker is None  # anyone may click; approvers decide
    assert [b["value"] for b in prompt.reply.buttons] == [f"approve {approval_id}", f"deny {approval_id}"]
    assert await squall.executions.list(action="demo.wipe") == []

    await loopback.say(f"approve {approval_id}", user="ann", channel="#ops", thread="m1", mentioned=True)  # a click
    await loopback.say(f"approve {approval_id}", user="ann", channel="#ops", thread="m1", mentioned=True)  # again
    await settle(squall, bot)
    assert await squall.executions.list(action="demo.wipe") == []  # one approver counts once
    assert "counts once" in loopback.texts()[-1]
    partial = next(p for p in loopback.posted if "(1 of 2)" in p.text)
    assert partial.reply.buttons == prompt.reply.buttons  # fresh buttons: platforms clear clicked ones

    await loopback.say(f"!approve {approval_id}", user="bea", channel="#elsewhere")  # typed anywhere
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.wipe")
    assert execution["status"] == "succeeded"
    thread = [p.text for p in loopback.posted if p.reply.thread == "m1"]
    assert any("wiped web1" in t for t in thread)  # the result in the requester's thread
    assert any("approved by ann, bea" in t for t in loopback.texts("#elsewhere"))
    context = execution["context"]
    assert context["user"] == "alice" and context["chat"]["thread"] == "m1"
    decisions = context["approval"]["decisions"]
    assert [(d["user"], d["verdict"], d["channel"]) for d in decisions] == [
        ("ann", "approve", "#ops"), ("bea", "approve", "#elsewhere")]
    assert all(d["at"] for d in decisions)
    assert len(await _events(squall, "chat.approval.approve")) == 2
    [run] = await _events(squall, "chat.approval.run")
    assert run["detail"]["execution"] == execution["id"] and run["detail"]["approvers"] == ["ann", "bea"]
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["status"] == "approved" and row["execution_id"] == execution["id"]


async def test_a_command_that_cannot_run_is_refused_before_its_approvers_are_asked(home: Path) -> None:
    _approval_config(home)
    write(home / "packs" / "demo" / "actions" / "scale.yaml", """
        name: scale
        runner_type: local-shell-cmd
        parameters:
          replicas: {type: integer, required: true}
          cmd: {default: 'echo scaled to {{replicas}}', immutable: true}
        approval: {groups: [approvers]}
    """)
    write(home / "packs" / "demo" / "aliases" / "scale.yaml", """
        name: scale
        action_ref: demo.scale
        formats: ["scale to {{replicas}}"]
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!scale to many", user="alice", channel="#ops")
        await settle(squall, bot)
        assert 'parameter "replicas"' in loopback.texts()[-1] and "many" in loopback.texts()[-1]
        assert not any(p.reply.buttons and "approval" in p.text for p in loopback.posted)  # nobody was asked
        assert await _events(squall, "chat.approval.request") == []
        await loopback.say("!scale to 3", user="alice", channel="#ops")
        await settle(squall, bot)
        assert "waiting for 1 approval from approvers" in _prompt(loopback).text


async def test_help_names_the_approvals_and_the_commands_that_decide_them(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!help deploy", user="alice")
    await settle(squall, bot)
    assert "held until 2 of approvers approve it (not the requester)" in loopback.texts()[-1]
    await loopback.say("!help restart", user="alice")  # the action's approval, the alias has none
    await settle(squall, bot)
    assert "held until 1 of approvers approve it" in loopback.texts()[-1]
    await loopback.say("!help", user="alice")
    await settle(squall, bot)
    listed = "\n".join(loopback.texts())
    assert "!approve <approval-id>" in listed and "!deny <approval-id> <reason>" in listed
    assert "!run-form [command]" in listed


async def test_retry_of_an_approved_command_asks_for_approval_again(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!restart web", user="alice", channel="#ops")
    await settle(squall, bot)
    await loopback.say(f"!approve {_approval_id(loopback)}", user="ann", channel="#ops")
    await settle(squall, bot)
    [done] = await squall.executions.list(action="demo.restart")
    await squall.executions.wait(done["id"], timeout=30)
    await loopback.say(f"!retry {done['id']}", user="alice", channel="#ops")
    await settle(squall, bot)
    assert "demo.restart needs approval from approvers: type the command again" in loopback.texts()[-1]
    assert len(await squall.executions.list(action="demo.restart")) == 1


async def test_self_approval_is_refused_and_an_action_can_ask_for_approval(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!restart nginx", user="ann")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    assert "waiting for 1 approval from approvers" in _prompt(loopback).text
    await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
    await settle(squall, bot)
    assert "someone else" in loopback.texts()[-1]
    # A click takes a prompt's buttons off (Slack, Mattermost): the refusal brings them back for the approvers.
    assert loopback.posted[-1].reply.buttons == _prompt(loopback).reply.buttons
    assert loopback.posted[-1].reply.thread == "m1"
    assert await squall.executions.list(action="demo.restart") == []
    [refused] = await _events(squall, "chat.approval.refused")
    assert refused["actor"] == "ann" and "someone else" in refused["detail"]["reason"]

    await loopback.say(f"!approve {approval_id}", user="root-admin", thread="m1")  # admins are approvers
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.restart")
    assert execution["context"]["approval"]["decisions"][0]["user"] == "root-admin"


async def test_a_non_member_is_refused_and_audited(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!deploy web2", user="alice")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    await loopback.say(f"!approve {approval_id}", user="mallory", groups=["operators"])
    await settle(squall, bot)
    assert "only approvers may decide" in loopback.texts()[-1]
    [refused] = await _events(squall, "chat.approval.refused")
    assert refused["actor"] == "mallory" and refused["detail"]["approval"] == approval_id
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["status"] == "pending" and row["decisions"] == []


async def test_a_denial_ends_it_and_tells_the_thread_who_and_why(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!deploy web3", user="alice")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    await loopback.say(f"!deny {approval_id} not during the {{{{ freeze }}}}", user="bea", channel="#elsewhere")
    await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
    await settle(squall, bot)
    told = [p.text for p in loopback.posted if p.reply.thread == "m1"]
    assert any("denied by bea: not during the {{ freeze }}" in t for t in told)  # shown as typed, not rendered
    assert "already denied" in told[-1]
    assert await squall.executions.list(action="demo.wipe") == []
    [denied] = await _events(squall, "chat.approval.deny")
    assert denied["actor"] == "bea" and denied["detail"]["reason"] == "not during the {{ freeze }}"


async def test_expiry_across_a_restart_is_told_once(home: Path) -> None:
    _approval_config(home, ttl="1")
    config = load_config(home / "config.yml")
    first = LoopbackAdapter()
    squall = await Squall.start(config, adapters=[first])
    await squall.chat.start()
    await first.say("!deploy web4", user="alice")
    await settle(squall, squall.chat)
    approval_id = _approval_id(first)
    row = await squall.db(squall.store.approval_get, approval_id)
    await squall.chat.stop()
    await squall.close()
    while utcnow() <= row["expires_at"]:  # wait out the 1 s ttl while nothing runs
        await asyncio.sleep(0.05)

    second = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[second])
    try:
        await squall.chat.start()  # its first sweep expires what waited
        await settle(squall, squall.chat)
        await squall.chat.sweep(timedelta(0))  # a later sweep finds nothing left to tell
        await settle(squall, squall.chat)
        expired = [p for p in second.posted if "expired" in p.text]
        assert len(expired) == 1 and approval_id in expired[0].text and expired[0].reply.thread == "m1"
        assert len(await _events(squall, "chat.approval.expire")) == 1
        assert (await squall.db(squall.store.approval_get, approval_id))["status"] == "expired"
        await second.say(f"!approve {approval_id}", user="ann")
        await settle(squall, squall.chat)
        assert "already expired" in second.texts()[-1]
        assert await squall.executions.list(action="demo.wipe") == []
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_one_approval_before_a_restart_and_one_after_run_it_once(home: Path) -> None:
    _approval_config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!deploy web5", user="alice")
        await settle(squall, bot)
        approval_id = _approval_id(loopback)
        await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
        await settle(squall, bot)
        assert "(1 of 2)" in loopback.texts()[-1]
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say(f"!approve {approval_id}", user="ann")  # still counts once
        await settle(squall, bot)
        assert "counts once" in loopback.texts()[-1] and await squall.executions.list(action="demo.wipe") == []
        await loopback.say(f"!approve {approval_id}", user="bea")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.wipe")
        assert (await squall.executions.wait(execution["id"], timeout=30))["status"] == "succeeded"
        assert [d["user"] for d in execution["context"]["approval"]["decisions"]] == ["ann", "bea"]
        assert execution["context"]["chat"]["thread"] == "m1"  # the result goes to the thread asked in


async def test_the_requester_may_withdraw_their_own_request(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!deploy web6", user="alice")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    await loopback.say(f"!deny {approval_id} changed my mind", user="alice", thread="m1")
    await settle(squall, bot)
    assert "was denied by alice: changed my mind" in loopback.texts()[-1]
    assert (await squall.db(squall.store.approval_get, approval_id))["status"] == "denied"
    await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
    await settle(squall, bot)
    assert "already denied" in loopback.texts()[-1] and await squall.executions.list(action="demo.wipe") == []


async def test_a_hostile_value_is_stored_and_run_as_data(chat, tmp_path: Path) -> None:
    squall, bot, loopback = chat
    marker = tmp_path / "marker"
    hostile = f"{{{{ 7 * 7 }}}}$(touch {marker});touch {marker}`touch {marker}`"
    await loopback.say(f"!deploy {hostile}", user="alice")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["parameters"]["target"] == hostile and "target" not in row["render"]
    for approver in ("ann", "bea"):
        await loopback.say(f"!approve {approval_id}", user=approver, thread="m1")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.wipe")
    assert execution["parameters"]["target"] == hostile
    assert "49" not in execution["result"]["stdout"] and "{{ 7 * 7 }}" in execution["result"]["stdout"]
    assert not marker.exists()


async def test_a_secret_waits_sealed_and_reaches_the_action_once_approved(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!login s3cret-value-9", user="alice")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    with squall.store.engine.connect() as conn:
        stored = json.dumps([list(r) for r in conn.execute(sa.text("SELECT * FROM approvals"))], default=str)
        audited = json.dumps([list(r) for r in conn.execute(sa.text("SELECT * FROM audit"))], default=str)
    assert "s3cret-value-9" not in stored + audited + json.dumps(loopback.texts())
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["parameters"] == {"token": "********"} and row["sealed"]
    await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.login")
    assert execution["status"] == "succeeded" and "token-ok" in execution["result"]["stdout"]
    assert execution["parameters"]["token"] == "********"


def _rotate_with_serve_stopped(home: Path) -> RotationReport:
    """`squall key rotate` while nothing else runs: the old keys are retired."""
    config = load_config(home / "config.yml")
    store = Store.open(config.database_url)
    try:
        return rotate_key(store, KeyRing(config.encryption_key_path), others=list)
    finally:
        store.close()


async def test_a_secret_held_for_approval_survives_a_key_rotation(home: Path) -> None:
    """The rotation once left `approvals.sealed` under the key it retired: the approved command then
    never ran ("ciphertext was sealed under key ..., which ... no longer holds"), every sweep again."""
    _approval_config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!login s3cret-value-9", user="alice")
        await settle(squall, bot)
        approval_id = _approval_id(loopback)
    report = _rotate_with_serve_stopped(home)
    assert (report.reencrypted, report.retired, report.unreadable) == (1, 1, [])
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.login")
        assert (await squall.executions.wait(execution["id"], timeout=30))["status"] == "succeeded"
        assert "token-ok" in (await squall.executions.get(execution["id"]))["result"]["stdout"]
        assert (await squall.db(squall.store.approval_get, approval_id))["execution_id"] == execution["id"]


async def test_an_approved_command_whose_secret_cannot_be_decrypted_fails_once_saying_why(
        home: Path, monkeypatch) -> None:
    """The key that sealed a held secret is gone (the key file replaced): the approved command ends
    `failed` once, its thread told why, instead of raising at every sweep until it is called "expired"."""
    from bot.chat import approvals

    _approval_config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!login s3cret-value-9", user="alice")
        await settle(squall, bot)
        approval_id = _approval_id(loopback)
    ring = KeyRing(load_config(home / "config.yml").encryption_key_path)
    ring.add_key()
    ring.retire_old_keys()  # the key that sealed it, gone without a re-encryption
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
        await settle(squall, bot)
        told = [t for t in loopback.texts() if t.startswith(f"Cannot run {approval_id}")]
        assert told == [f"Cannot run {approval_id}: {approvals.UNREADABLE}. demo.login was not run, and will not "
                        "be: send the command again once it can run."]
        assert not any("went wrong" in t for t in loopback.texts())
        row = await squall.db(squall.store.approval_get, approval_id)
        assert row["status"] == "failed" and row["execution_id"] is None
        assert row["decisions"][-1]["reason"] == approvals.UNREADABLE
        [failed] = await _events(squall, "chat.approval.failed")
        assert failed["detail"]["reason"] == approvals.UNREADABLE

        monkeypatch.setattr(approvals, "RUN_GRACE", timedelta(0))  # every sweep may take it for lost
        for _ in range(3):
            await bot.approvals.sweep()
        await settle(squall, bot)
        assert len([t for t in loopback.texts() if t.startswith("Cannot run")]) == 1
        assert not any("expired" in t for t in loopback.texts())
        assert (await squall.db(squall.store.approval_get, approval_id))["revision"] == row["revision"]
        assert await squall.executions.list(action="demo.login") == []


def test_a_bad_approval_is_refused_at_load_naming_file_and_key(home: Path) -> None:
    _approval_config(home)
    pack = home / "packs" / "demo"
    write(pack / "aliases" / "typo.yaml", """
        name: typo
        action_ref: demo.wipe
        formats: ["typo {{target}}"]
        approval: {groups: [approvers], cuont: 2}
    """)
    write(pack / "aliases" / "forever.yaml", """
        name: forever
        action_ref: demo.wipe
        formats: ["forever {{target}}"]
        approval: {groups: [approvers], ttl: soon}
    """)
    registry = load_packs(load_config(home / "config.yml"))
    aliases, errors = load_aliases(registry)
    assert {a.ref for a in aliases} >= {"demo.deploy", "demo.restart"}
    assert registry.actions["demo.restart"].approval == {"groups": ["approvers"], "count": 1,
                                                          "self_approval": False, "ttl": 3600}
    problems = {Path(e.file).name: str(e) for e in errors}
    assert "unknown approval attribute 'cuont'" in problems["typo.yaml"]
    assert "did you mean 'count'" in problems["typo.yaml"]
    assert "'approval.ttl'" in problems["forever.yaml"]


def _guarded_home(home: Path) -> None:
    """test_api's home and demo pack, with an action that needs approval (`demo.guarded`)."""
    from tests.test_api import _home

    _home(home)
    write(home / "packs" / "demo" / "actions" / "guarded.yaml", """
        name: guarded
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: 'echo ran', immutable: true}
        approval: {groups: [approvers]}
    """)


async def test_the_api_and_the_web_refuse_what_needs_approval(home: Path) -> None:
    """Where nobody can be asked (the API, the web UI), an approval-gated action or alias is refused,
    never run unapproved."""
    from tests.test_api import KEY
    from tests.test_web_auth import started_web

    _guarded_home(home)
    write(home / "packs" / "demo" / "aliases" / "guarded.yaml", """
        name: guarded
        action_ref: demo.guarded
        formats: ["guarded"]
    """)
    async with started_web(home) as web:
        api = web.client()
        api.headers["St2-Api-Key"] = KEY
        direct = await api.post("/api/v1/executions", json={"action": "demo.guarded"})
        assert direct.status_code == 403 and "needs approval from approvers" in direct.text
        typed = await api.post("/api/v1/aliasexecution", json={"command": "guarded", "user": "zed"})
        assert typed.status_code == 403 and "needs approval from approvers" in typed.text
        browser, csrf = await web.signed_in("olga", "operator")
        page = (await browser.get("/actions/demo.guarded")).text
        assert "needs approval from approvers" in page and "Run demo.guarded</button>" not in page  # said at once
        form = await browser.post("/actions/demo.guarded", data={"csrf_token": csrf})
        assert form.status_code == 403 and "needs approval from approvers" in form.text
        assert await web.squall.executions.list(action="demo.guarded") == []


async def test_a_rerun_is_never_a_way_around_the_approvers(home: Path) -> None:
    """Re-running what needs approval (an action's `approval:`, or the alias's the original came
    through) is refused by the API and the web, edited parameters or not; what needs none re-runs."""
    from tests.test_api import KEY
    from tests.test_web_auth import started_web

    _guarded_home(home)
    write(home / "packs" / "demo" / "aliases" / "gated_noop.yaml", """
        name: gated_noop
        action_ref: core.noop
        formats: ["gated noop"]
        approval: {groups: [approvers]}
    """)
    async with started_web(home) as web:
        squall = web.squall
        approved = [  # as an approved command's run is requested: by the engine, once approvers said yes
            await squall.executions.request("demo.guarded", context={"user": "alice"}),
            await squall.executions.request("core.noop", context={
                "user": "alice", "action_alias_ref": {"id": "demo.gated_noop", "name": "gated_noop"}})]
        free = await squall.executions.request("core.noop", context={"user": "alice"})
        for record in (*approved, free):
            await squall.executions.wait(record["id"], timeout=30)
        api = web.client()
        api.headers["St2-Api-Key"] = KEY
        browser, csrf = await web.signed_in("olga", "operator")
        for record in approved:
            again = await api.post(f"/api/v1/executions/{record['id']}/re_run", json={"parameters": {}})
            assert again.status_code == 403 and "needs approval from approvers" in again.text
            assert 'href="/executions/' + record["id"] + '/rerun"' not in (
                await browser.get(f"/executions/{record['id']}")).text
            assert (await browser.get(f"/executions/{record['id']}/rerun")).status_code == 403
            posted = await browser.post(f"/executions/{record['id']}/rerun", data={"csrf_token": csrf})
            assert posted.status_code == 403 and "needs approval from approvers" in posted.text
        assert len(await squall.executions.list(action="demo.guarded")) == 1
        assert len(await squall.executions.list(action="core.noop")) == 2
        again = await api.post(f"/api/v1/executions/{free['id']}/re_run", json={})
        assert again.status_code == 201 and again.json()["context"]["source"] == "api"
        assert f'href="/executions/{free["id"]}/rerun"' in (await browser.get(f"/executions/{free['id']}")).text


async def test_an_approved_command_a_crash_left_unrun_runs_once_after_a_restart(home: Path) -> None:
    """The crash windows between the last approval and the run: before the request (it runs at the
    next start) and between the request and its record (the execution is found, not run again)."""
    from engine.storage import approvals, iso

    _approval_config(home)
    first = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[first])
    await squall.chat.start()
    await first.say("!deploy web5", user="alice")
    await first.say("!deploy web6", user="alice")
    await settle(squall, squall.chat)
    lost, recorded = [p.reply.buttons[0]["value"].split()[1] for p in first.posted if p.reply.buttons]
    long_ago = iso(utcnow() - timedelta(minutes=5))

    async def approved_then_crashed(approval_id: str) -> None:  # as if the process died before running it
        row = await squall.db(squall.store.approval_get, approval_id)
        decisions = [{"user": u, "at": long_ago, "adapter": "loopback", "channel": "#general", "thread": None,
                      "verdict": "approve", "reason": None} for u in ("ann", "bea")]
        assert await squall.db(squall.store.approval_update, approval_id, row["revision"],
                               {"decisions": decisions, "status": "approved"})

    await approved_then_crashed(recorded)
    await squall.chat.sweep(timedelta(0))  # it runs; then "crashes" before its execution is recorded
    await settle(squall, squall.chat)
    ran = (await squall.db(squall.store.approval_get, recorded))["execution_id"]
    assert ran is not None
    with squall.store.engine.begin() as conn:
        conn.execute(sa.update(approvals).where(approvals.c.id == recorded).values(execution_id=None))
    await approved_then_crashed(lost)
    await squall.chat.stop()
    await squall.close()

    second = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[second])
    try:
        await squall.chat.start()  # its first sweep recovers both
        await settle(squall, squall.chat)
        await squall.chat.sweep(timedelta(0))
        await settle(squall, squall.chat)
        executions = await squall.executions.list(action="demo.wipe")
        assert sorted(e["parameters"]["target"] for e in executions) == ["web5", "web6"]  # each once
        assert all(e["status"] == "succeeded" for e in executions)
        assert (await squall.db(squall.store.approval_get, recorded))["execution_id"] == ran
        by_target = {e["parameters"]["target"]: e["id"] for e in executions}
        assert by_target["web6"] == ran
        assert (await squall.db(squall.store.approval_get, lost))["execution_id"] == by_target["web5"]
    finally:
        await squall.chat.stop()
        await squall.close()


# -- approved, but it cannot run ------------------------------------------------------------------------

def _change_deploy(home: Path, change: str) -> None:
    """Change the approval alias `demo.deploy` on disk (a pack reload then loads it)."""
    alias = home / "packs" / "demo" / "aliases" / "deploy.yaml"
    if change == "revoke":
        alias.write_text(alias.read_text() + "permissions: {allow: {users: [bob]}}\n")
    elif change == "disable":
        alias.write_text(alias.read_text() + "enabled: false\n")
    elif change == "delete":
        alias.unlink()


DEPLOY_REFUSED = {"revoke": "demo.deploy is allowed only for users bob",
                  "disable": "the alias demo.deploy is disabled (enabled: false)",
                  "delete": "the alias demo.deploy is no longer loaded (a pack reload removed it)"}


@pytest.mark.parametrize("change", ["revoke", "disable", "delete"])
async def test_an_approved_command_whose_alias_changed_meanwhile_fails_once_and_never_runs(
        home: Path, change: str, monkeypatch) -> None:
    """The requester is authorised again, with the alias as loaded when the last approver says yes; a
    command that cannot start ends `failed` (the reason kept with the decisions), told once: no sweep
    tries it again, and it does not run late when the alias comes back."""
    from bot.chat import approvals

    _approval_config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!deploy web1", user="alice")
        await settle(squall, bot)
        approval_id = _approval_id(loopback)
        original = (home / "packs" / "demo" / "aliases" / "deploy.yaml").read_text()
        _change_deploy(home, change)
        await squall.reload_packs()
        await loopback.say(f"!approve {approval_id}", user="ann")
        await loopback.say(f"!approve {approval_id}", user="bea")
        await settle(squall, bot)
        failure = f"Cannot run {approval_id}: {DEPLOY_REFUSED[change]}. demo.wipe was not run, and will not be"
        assert [t for t in loopback.texts() if t.startswith("Cannot run")] == [
            f"{failure}: send the command again once it can run."]
        row = await squall.db(squall.store.approval_get, approval_id)
        assert row["status"] == "failed" and row["execution_id"] is None
        assert row["decisions"][-1]["verdict"] == "failed"
        assert row["decisions"][-1]["reason"] == DEPLOY_REFUSED[change]
        [failed] = await _events(squall, "chat.approval.failed")
        assert failed["detail"]["reason"] == DEPLOY_REFUSED[change]
        [denied] = await _events(squall, "chat.denied")
        assert denied["actor"] == "alice" and denied["target"] == "demo.deploy"

        monkeypatch.setattr(approvals, "RUN_GRACE", timedelta(0))  # every sweep may take it for lost
        (home / "packs" / "demo" / "aliases" / "deploy.yaml").write_text(original)  # the alias comes back
        await squall.reload_packs()
        for _ in range(3):
            await bot.approvals.sweep()
        await settle(squall, bot)
        assert len([t for t in loopback.texts() if t.startswith("Cannot run")]) == 1
        assert (await squall.db(squall.store.approval_get, approval_id))["revision"] == row["revision"]
        assert await squall.executions.list(action="demo.wipe") == []


async def test_an_approved_command_recovered_after_its_expiry_is_not_run_late(home: Path) -> None:
    """A crash left an approved command unrun, and its approval expired before the sweep found it:
    it ends `failed`, told once, instead of running long after the approvers' yes."""
    from engine.storage import iso

    _approval_config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!deploy web7", user="alice")
        await settle(squall, bot)
        approval_id = _approval_id(loopback)
        row = await squall.db(squall.store.approval_get, approval_id)
        long_ago = iso(utcnow() - timedelta(hours=2))
        decisions = [{"user": u, "at": long_ago, "adapter": "loopback", "channel": "#ops", "thread": None,
                      "verdict": "approve", "reason": None} for u in ("ann", "bea")]
        assert await squall.db(squall.store.approval_update, approval_id, row["revision"],
                               {"decisions": decisions, "status": "approved",
                                "expires_at": utcnow() - timedelta(hours=1)})
        await bot.approvals.sweep()
        await bot.approvals.sweep()
        await settle(squall, bot)
        assert await squall.executions.list(action="demo.wipe") == []
        row = await squall.db(squall.store.approval_get, approval_id)
        assert row["status"] == "failed" and "expired" in row["decisions"][-1]["reason"]
        told = [t for t in loopback.texts() if t.startswith(f"Cannot run {approval_id}: its approval expired")]
        assert len(told) == 1


async def test_an_approved_command_runs_for_a_requester_allowed_by_a_platform_group(home: Path) -> None:
    """The requester is authorised again once approved with the platform groups their command came
    with (kept with the approval), so a permission by such a group still holds."""
    _approval_config(home)
    _change_deploy(home, "revoke")
    alias = home / "packs" / "demo" / "aliases" / "deploy.yaml"
    alias.write_text(alias.read_text().replace("users: [bob]", "groups: [platform-sre]"))
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!deploy web8", user="alice", groups=["platform-sre"])
        await settle(squall, bot)
        approval_id = _approval_id(loopback)
        await loopback.say(f"!approve {approval_id}", user="ann")
        await loopback.say(f"!approve {approval_id}", user="bea")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["status"] == "succeeded" and execution["parameters"]["target"] == "web8"
        assert "approval_asked" not in execution["context"]  # what was checked is no part of the run


async def test_an_approved_command_runs_for_a_requester_allowed_only_by_their_platform_user_id(home: Path) -> None:
    """An alias allowed only to `slack:U0ALICE01` (the user id Slack says wrote, which no one can change
    or choose; her name alone is not allowed) still runs once approved, also when the approvers decide
    after a restart: the requester is authorised again with the user id kept with the approval."""
    _approval_config(home)
    _change_deploy(home, "revoke")
    alias = home / "packs" / "demo" / "aliases" / "deploy.yaml"
    alias.write_text(alias.read_text().replace("users: [bob]", 'users: ["slack:U0ALICE01"]'))
    async with loopback_chat(home, "slack") as (squall, bot, slack):
        await slack.say("!deploy web3", user="alice")  # by name only: not her
        await settle(squall, bot)
        assert slack.texts()[-1] == ("Sorry alice, you may not run that: demo.deploy is allowed only for users "
                                     "slack:U0ALICE01.")
        await slack.say("!deploy web3", user="alice", user_id="U0ALICE01")
        await settle(squall, bot)
        approval_id = _approval_id(slack)
        row = await squall.db(squall.store.approval_get, approval_id)
        assert row["context"]["approval_asked"]["user_id"] == "U0ALICE01"
    async with loopback_chat(home, "slack") as (squall, bot, slack):  # restarted before the approvers decide
        await slack.say(f"!approve {approval_id}", user="ann", user_id="U0ANN0001")
        await slack.say(f"!approve {approval_id}", user="bea", user_id="U0BEA0001")
        await settle(squall, bot)
        assert not [t for t in slack.texts() if t.startswith("Cannot run")]
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["status"] == "succeeded" and execution["parameters"]["target"] == "web3"
        assert execution["context"]["user"] == "alice" and "approval_asked" not in execution["context"]


async def test_an_irc_nick_decides_only_as_the_irc_approver_config_names(home: Path) -> None:
    """Anyone may take the nick `ann` on IRC: Slack's approver ann and the admin are not whoever holds their
    names there, nor is the requester, who alone may withdraw without being an approver. `irc:ivy` is."""
    _approval_config(home)
    config = home / "config.yml"
    config.write_text(config.read_text().replace("approvers: [ann, bea]", 'approvers: [ann, bea, "irc:ivy"]'))
    slack, irc = LoopbackAdapter("slack"), LoopbackAdapter("irc")
    squall = await Squall.start(load_config(config), adapters=[slack, irc])
    bot = squall.chat
    await bot.start()
    try:
        await slack.say("!deploy web9", user="alice", channel="#ops")
        await settle(squall, bot)
        approval_id = _approval_id(slack)
        for nick in ("ann", "root-admin"):
            await irc.say(f"!approve {approval_id}", user=nick, channel="#ops")
            await settle(squall, bot)
            assert irc.texts()[-1] == f"Sorry {nick}, only approvers may decide {approval_id}."
        await irc.say(f"!deny {approval_id} withdrawn", user="alice", channel="#ops")
        await settle(squall, bot)
        assert irc.texts()[-1] == f"Sorry alice, only approvers may decide {approval_id}."
        row = await squall.db(squall.store.approval_get, approval_id)
        assert row["status"] == "pending" and row["decisions"] == []

        await slack.say(f"!approve {approval_id}", user="ann", channel="#ops")
        await irc.say(f"!approve {approval_id}", user="ivy", channel="#ops")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["status"] == "succeeded"
        decisions = execution["context"]["approval"]["decisions"]
        assert [(d["adapter"], d["user"]) for d in decisions] == [("slack", "ann"), ("irc", "ivy")]
    finally:
        await bot.stop()
        await squall.close()
