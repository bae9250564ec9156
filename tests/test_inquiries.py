"""Inquiries: core.ask pauses a workflow, the question reaches chat, an allowed person answers."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from adapters.loopback import LoopbackAdapter
from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.inquiries import InquiryError
from engine.parameters import MASK
from tests.conftest import SQUALL, write
from tests.test_api import KEY, disk_full, failing_audit
from tests.test_workflow_secrets import RECORD
from tests.workflow_helpers import children, pending_ask, task_names, workflow_pack

APPROVAL = """
version: 1.0
vars:
  - answer: null
tasks:
  prepare:
    action: core.noop
    next: [{do: approve}]
  approve:
    action: core.ask
    input:
      route: ops
      users: [olivia]
      ttl: 60
      schema:
        type: object
        properties:
          approved: {type: boolean, description: "Deploy to production?", required: true}
    next:
      - when: <% succeeded() and result().response.approved %>
        publish: [answer: <% result().response.approved %>]
        do: deploy
      - when: <% failed() %>
        do: fail
  deploy:
    action: core.noop
output:
  - answer: <% ctx(answer) %>
"""

TWO_PEOPLE = APPROVAL.replace("users: [olivia]",
                              "users: [tester, ann, bea]\n      count: 2\n      self_approval: false")

#: A two-person approval whose answer also carries an optional flag: its `false` is no no.
FLAGGED = TWO_PEOPLE.replace("required: true}",
                             "required: true}\n          notify_team: {type: boolean, default: true}")

CHOICE = """
chain:
  - name: ask
    ref: core.ask
    params:
      route: ops
      schema:
        type: object
        properties:
          colour: {type: string, enum: [red, green], required: true}
    publish:
      colour: "{{ ask.response.colour }}"
    on-success: after
  - name: after
    ref: core.echo
    params: {message: "picked {{ colour }}"}
"""

#: A PIN asked for (`secret: true`), and what the task after the question writes to its marker file (the real
#: value arrived) and echoes (so its output would show it).
PIN = "PIN-at-rest-7731"
PIN_SCHEMA = {"type": "object", "properties": {"pin": {"type": "string", "secret": True, "required": True},
                                               "note": {"type": "string"}}}

#: An ActionChain that hands the PIN to its next task.
PIN_CHAIN = """
chain:
  - name: ask
    ref: core.ask
    params:
      schema: {type: object, properties: {pin: {type: string, secret: true, required: true}}}
    on-success: use
  - name: use
    ref: wf.record
    params:
      text: "{{ ask.response.pin }}"
      marker: "{{ marker }}"
"""

#: An Orquesta workflow asking two people for a PIN each: the next task gets every answer and the merged one.
PIN_TWO = """
version: 1.0
input: [marker]
tasks:
  q:
    action: core.ask
    input:
      users: [ann, bea]
      count: 2
      schema: {type: object, properties: {pin: {type: string, secret: true, required: true}}}
    next:
      - when: <% succeeded() %>
        publish:
          - pins: "{{ result().responses | map(attribute='response') | map(attribute='pin') | join(',') }}"
          - last: <% result().response.pin %>
        do: use
  use:
    action: wf.record text="<% ctx(pins) %>/<% ctx(last) %>" marker="<% ctx(marker) %>"
"""


def _config(home: Path, more: str) -> None:
    """SQLite, the test packs, questions routed to #approvals on the loopback chat, and `more`."""
    (home / "config.yml").write_text("database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                                     'routes:\n  ops: {adapter: loopback, channel: "#approvals"}\n' + more)


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter]]:
    _config(home, "api:\n  keys: [test-key-123456]\n")
    workflow_pack(home, {"approval": ("orquesta", "", APPROVAL), "two": ("orquesta", "", TWO_PEOPLE),
                         "flagged": ("orquesta", "", FLAGGED), "choice": ("action-chain", "", CHOICE),
                         "pin_chain": ("action-chain", "marker: {type: string}", PIN_CHAIN),
                         "pin_two": ("orquesta", "marker: {type: string}", PIN_TWO)})
    write(home / "packs" / "wf" / "actions" / "record.yaml", RECORD)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    assert squall.registry.errors == []
    bot = squall.chat
    await bot.start()
    try:
        yield squall, loopback
    finally:
        await bot.stop()
        await squall.close()


async def _paused(squall: Squall, ref: str) -> tuple[str, dict]:
    record = await squall.executions.request(ref, {}, {"user": "tester"})
    paused = await squall.executions.wait(record["id"], timeout=20)
    assert paused["status"] == "paused", paused
    (inquiry,) = [c for c in await children(squall, record["id"]) if c["runner"] == "inquirer"]
    assert inquiry["status"] == "pending"
    return record["id"], inquiry


async def _final(squall: Squall, workflow_id: str) -> dict:
    squall.executions._recent.pop(workflow_id, None)
    while True:
        done = await squall.executions.wait(workflow_id, timeout=20)
        if done["status"] not in ("paused", "resuming", "running"):
            return done
        squall.executions._recent.pop(workflow_id, None)


async def test_question_in_chat_with_buttons_and_only_allowed_users_answer(chat) -> None:
    squall, loopback = chat
    workflow_id, inquiry = await _paused(squall, "wf.approval")
    posted = await loopback.wait_for(lambda p: any(inquiry["id"] in x.text for x in p))
    question = next(p for p in posted if inquiry["id"] in p.text)
    assert question.reply.channel == "#approvals"
    assert "Deploy to production?" in question.text
    assert question.reply.buttons == [{"text": "Yes", "value": f"yes:inquiry:{inquiry['id']}"},
                                      {"text": "No", "value": f"no:inquiry:{inquiry['id']}"}]

    # Mallory may not answer; the workflow stays paused.
    await loopback.say("yes", user="mallory", channel="#approvals", thread=question.id, mentioned=True)
    await loopback.wait_for(lambda p: any("mallory" in x.text and "may not respond" in x.text for x in p))
    assert (await squall.executions.get(inquiry["id"]))["status"] == "pending"

    # Olivia clicks Yes: the adapter turns it into her message, in the question's thread.
    await loopback.say("yes", user="olivia", channel="#approvals", thread=question.id, mentioned=True)
    done = await _final(squall, workflow_id)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"answer": True}
    answered = await squall.executions.get(inquiry["id"])
    assert answered["status"] == "succeeded"
    assert answered["result"]["response"] == {"approved": True} and answered["result"]["responder"] == "olivia"
    assert task_names(await children(squall, workflow_id)) == ["prepare", "approve", "deploy"]
    statuses = [e["status"] for e in done["log"]]
    assert "paused" in statuses and statuses[-1] == "succeeded"
    audited = [(row["event"], row["actor"], row["target"]) for row in reversed(await squall.db(squall.store.audit_list))
               if row["event"].startswith("chat.inquiry.")]
    assert audited == [("chat.inquiry.denied", "mallory", inquiry["id"]), ("chat.inquiry.respond", "olivia",
                                                                             inquiry["id"])]


async def test_respond_command_validates_against_the_schema(chat) -> None:
    squall, loopback = chat
    workflow_id, inquiry = await _paused(squall, "wf.choice")
    await loopback.say(f"!respond {inquiry['id']} purple", user="zed", channel="#ops")
    await loopback.wait_for(lambda p: any("not an answer" in x.text for x in p))
    await loopback.say(f'!respond {inquiry["id"]} {{"colour": "purple"}}', user="zed", channel="#ops")
    await loopback.wait_for(lambda p: any("does not fit the inquiry's schema" in x.text for x in p))
    await loopback.say(f"!respond {inquiry['id']} green", user="zed", channel="#ops")
    done = await _final(squall, workflow_id)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["tasks"][-1]["result"]["stdout"] == "picked green"
    assert done["result"]["published"] == {"colour": "green"}


async def test_api_lists_gets_and_answers_inquiries(chat) -> None:
    squall, _ = chat
    workflow_id, inquiry = await _paused(squall, "wf.approval")
    transport = httpx.ASGITransport(app=create_api(squall))
    headers = {"St2-Api-Key": "test-key-123456"}
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as client:
        listed = (await client.get("/api/v1/inquiries", headers=headers)).json()
        assert [i["id"] for i in listed] == [inquiry["id"]]
        everything = await client.get("/api/v1/inquiries", headers=headers, params={"limit": -1})
        assert everything.status_code == 200 and everything.json() == listed  # StackStorm's -1: all of them
        one = (await client.get(f"/api/v1/inquiries/{inquiry['id']}", headers=headers)).json()
        assert one["route"] == "ops" and one["users"] == ["olivia"] and one["ttl"] == 60
        bad = await client.put(f"/api/v1/inquiries/{inquiry['id']}", headers=headers,
                               json={"id": inquiry["id"], "response": {"approved": "sure"}, "user": "olivia"})
        assert bad.status_code == 400 and "schema" in bad.json()["faultstring"]
        denied = await client.put(f"/api/v1/inquiries/{inquiry['id']}", headers=headers,
                                  json={"response": {"approved": True}, "user": "eve"})
        assert denied.status_code == 403
        ok = await client.put(f"/api/v1/inquiries/{inquiry['id']}", headers=headers,
                              json={"response": {"approved": False}, "user": "olivia"})
        assert ok.status_code == 200, ok.text
        again = await client.put(f"/api/v1/inquiries/{inquiry['id']}", headers=headers,
                                 json={"response": {"approved": True}, "user": "olivia"})
        assert again.status_code == 409
        missing = await client.get("/api/v1/inquiries/ffffffffffffffffffffffff", headers=headers)
        assert missing.status_code == 404
    done = await _final(squall, workflow_id)
    assert done["status"] == "succeeded", done["result"]  # approved: false deploys nothing
    assert task_names(await children(squall, workflow_id)) == ["prepare", "approve"]


async def test_a_key_that_names_a_user_answers_only_as_that_user(chat) -> None:
    """A stored key (or a token) speaks for its user: naming another responder in the body is refused,
    or bob's key could answer an inquiry meant for olivia. The config's key, which names nobody (a
    bridge such as a chat bot), may name the responder (the test above)."""
    squall, _ = chat
    workflow_id, inquiry = await _paused(squall, "wf.approval")
    bob_key, _ = await squall.db(create_key, squall.store, "bob")
    olivia_key, _ = await squall.db(create_key, squall.store, "olivia")
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as client:
        url = f"/api/v1/inquiries/{inquiry['id']}"
        forged = await client.put(url, headers={"St2-Api-Key": bob_key},
                                  json={"response": {"approved": True}, "user": "olivia"})
        assert forged.status_code == 403 and "speaks for bob" in forged.json()["faultstring"]
        own = await client.put(url, headers={"St2-Api-Key": bob_key}, json={"response": {"approved": True}})
        assert own.status_code == 403  # bob is not among the inquiry's users
        assert (await squall.inquiries.get(inquiry["id"]))["status"] == "pending"
        ok = await client.put(url, headers={"St2-Api-Key": olivia_key}, json={"response": {"approved": False}})
        assert ok.status_code == 200, ok.text
    assert (await _final(squall, workflow_id))["status"] == "succeeded"


async def test_expired_inquiry_times_out_and_fails_the_task(chat) -> None:
    squall, _ = chat
    workflow_id, inquiry = await _paused(squall, "wf.approval")
    await squall.inquiries.expire(inquiry["id"])
    with pytest.raises(InquiryError, match="expired"):
        await squall.inquiries.respond(inquiry["id"], {"approved": True}, "olivia")
    done = await _final(squall, workflow_id)
    assert done["status"] == "failed"
    assert (await squall.executions.get(inquiry["id"]))["status"] == "timeout"


def test_cli_lists_and_responds(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_cli import in_process

    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n")
    workflow_pack(home, {"choice": ("action-chain", "", CHOICE)})
    cli = in_process(home, monkeypatch)

    started = cli("run", "wf.choice", "--json")
    assert json.loads(started.stdout)["status"] == "paused", started.stdout + started.stderr
    listed = json.loads(cli("inquiry", "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["schema"]["properties"]["colour"]["enum"] == ["red", "green"]
    bad = cli("inquiry", "respond", listed[0]["id"], "--response", '{"colour": "blue"}')
    assert bad.exit_code == 2 and "schema" in bad.stderr
    good = cli("inquiry", "respond", listed[0]["id"], "--response", '{"colour": "red"}', "--json")
    assert good.exit_code == 0, good.stderr
    assert json.loads(good.stdout)["response"] == {"colour": "red"}
    # No server runs here: the workflow is marked resuming for `squall serve`, not run by the CLI.
    workflow = json.loads(cli("execution", "get", listed[0]["parent"], "--json").stdout)
    assert workflow["status"] == "resuming"


async def test_an_inquiry_that_expires_unanswered_is_told_where_it_was_asked(chat) -> None:
    squall, loopback = chat
    workflow_id, inquiry = await _paused(squall, "wf.approval")
    question = next(p for p in await loopback.wait_for(lambda p: any(inquiry["id"] in x.text for x in p))
                    if inquiry["id"] in p.text)
    await squall.inquiries.expire(inquiry["id"])
    await loopback.wait_for(lambda posted: any("expired before anyone answered" in p.text for p in posted))
    told = [p for p in loopback.posted if "expired before anyone answered" in p.text]
    assert len(told) == 1 and inquiry["id"] in told[0].text
    assert (told[0].reply.channel, told[0].reply.thread) == (question.reply.channel, question.reply.thread)
    assert (await _final(squall, workflow_id))["status"] == "failed"
    await squall.chat.outbox.post_keyed(inquiry["id"], "expired", [told[0].reply])  # told once: a second is refused
    assert len([p for p in loopback.posted if "expired before anyone answered" in p.text]) == 1


async def test_recover_expires_overdue_inquiries(chat) -> None:
    from datetime import timedelta

    squall, _ = chat
    workflow_id, inquiry = await _paused(squall, "wf.approval")
    record = await squall.db(squall.store.get_execution, inquiry["id"])
    await squall.db(squall.store.update_execution, inquiry["id"],
                    {"start_timestamp": record["start_timestamp"] - timedelta(minutes=61)})
    assert await squall.inquiries.recover() == 0  # overdue: expired at once, no timer armed
    assert (await squall.executions.get(inquiry["id"]))["status"] == "timeout"
    assert (await _final(squall, workflow_id))["status"] == "failed"


async def test_an_inquiry_with_approver_rules_needs_two_others_and_one_no_ends_it(chat) -> None:
    """`count` and `self_approval` on core.ask (as chat approvals): the requester may not answer, each
    person counts once, the workflow goes on after the second yes, and a single no ends it."""
    squall, loopback = chat
    workflow_id, inquiry = await _paused(squall, "wf.two")
    with pytest.raises(InquiryError, match="someone else must answer") as own:
        await squall.inquiries.respond(inquiry["id"], {"approved": True}, "tester")
    assert own.value.status == 403
    first = await squall.inquiries.respond(inquiry["id"], {"approved": True}, "ann")
    assert first["status"] == "pending" and [r["user"] for r in first["responses"]] == ["ann"]
    with pytest.raises(InquiryError, match="counts once"):
        await squall.inquiries.respond(inquiry["id"], {"approved": True}, "ann")
    assert (await squall.executions.get(workflow_id))["status"] == "paused"

    question = next(p for p in await loopback.wait_for(lambda p: any(inquiry["id"] in x.text for x in p))
                    if inquiry["id"] in p.text)
    await loopback.say("yes", user="bea", channel="#approvals", thread=question.id, mentioned=True)
    done = await _final(squall, workflow_id)
    assert done["status"] == "succeeded" and done["result"]["output"] == {"answer": True}
    answered = (await squall.executions.get(inquiry["id"]))["result"]
    assert [(r["user"], r["response"]) for r in answered["responses"]] == [
        ("ann", {"approved": True}), ("bea", {"approved": True})]
    assert all(r["at"] for r in answered["responses"]) and answered["responder"] == "bea"
    assert task_names(await children(squall, workflow_id)) == ["prepare", "approve", "deploy"]

    refused_id, refused = await _paused(squall, "wf.two")
    said = await squall.inquiries.respond(refused["id"], {"approved": False}, "bea")  # one no is enough
    assert said["status"] == "succeeded" and said["response"] == {"approved": False}
    ended = await _final(squall, refused_id)
    assert "deploy" not in task_names(await children(squall, refused_id)) and ended["result"]["output"] == {
        "answer": None}


async def test_a_false_optional_flag_does_not_end_a_two_person_approval_early(chat) -> None:
    """Only a no to a field that decides the approval (its required yes/no) ends it at once: ann's
    `notify_team: false` beside her yes leaves it waiting for bea, and deploy runs only after two yeses.
    A no that does end it early tells the workflow no on every yes/no field: one person never says yes
    for two."""
    squall, _ = chat
    workflow_id, inquiry = await _paused(squall, "wf.flagged")
    first = await squall.inquiries.respond(inquiry["id"], {"approved": True, "notify_team": False}, "ann")
    assert first["status"] == "pending" and [r["user"] for r in first["responses"]] == ["ann"]
    assert (await squall.executions.get(workflow_id))["status"] == "paused"
    assert "deploy" not in task_names(await children(squall, workflow_id))
    done = await squall.inquiries.respond(inquiry["id"], {"approved": True, "notify_team": True}, "bea")
    assert done["status"] == "succeeded" and done["response"] == {"approved": True, "notify_team": False}
    final = await _final(squall, workflow_id)
    assert final["result"]["output"] == {"answer": True}
    assert task_names(await children(squall, workflow_id)) == ["prepare", "approve", "deploy"]

    refused_id, refused = await _paused(squall, "wf.flagged")
    said = await squall.inquiries.respond(refused["id"], {"approved": False, "notify_team": True}, "ann")
    assert said["status"] == "succeeded" and said["response"] == {"approved": False, "notify_team": False}
    await _final(squall, refused_id)
    assert "deploy" not in task_names(await children(squall, refused_id))


def test_which_yes_no_fields_decide_and_an_answer_short_of_count_is_never_yes() -> None:
    from engine.inquiries import deciding, merged

    flagged = {"type": "object", "properties": {"approved": {"type": "boolean", "required": True},
                                                "notify": {"type": "boolean"}}}
    assert deciding(flagged, {"approved": True, "notify": False}) == {"approved"}
    listed = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": ["boolean", "null"]},
                                                                  "loud": {"type": "boolean"}}}
    assert deciding(listed, {}) == {"ok"}
    assert deciding({"properties": {"ok": {"type": "boolean"}, "why": {"type": "string"}}}, {}) == {"ok"}
    assert deciding({}, {"continue": False, "note": "x"}) == {"continue"}  # a schema naming no field
    assert merged([{"approved": True, "notify": True}], 2) == {"approved": False, "notify": False}
    assert merged([{"approved": True, "notify": False}, {"approved": True, "notify": True}], 2) == {
        "approved": True, "notify": False}


async def test_an_inquiry_with_users_and_roles_needs_a_listed_user_in_one_of_the_roles(chat) -> None:
    """StackStorm's `check_permission` passes only when both pass: bob in role dba but not among the
    users is refused, as is ann without the role; ann in dba answers. The refusal says both rules."""
    squall, _ = chat
    record = await squall.executions.request("core.ask", {"users": ["ann", "bea"], "roles": ["dba"]}, {"user": "wf"})
    assert (await squall.executions.wait(record["id"], timeout=10))["status"] == "pending"
    rules = f"may not respond to inquiry {record['id']}: only ann or bea (who must also be in role dba) may"
    with pytest.raises(InquiryError) as outsider:
        await squall.inquiries.respond(record["id"], {"continue": True}, "bob", ["dba"])
    assert outsider.value.status == 403
    assert str(outsider.value) == f"bob {rules}, and bob is not one of its users"
    with pytest.raises(InquiryError) as roleless:
        await squall.inquiries.respond(record["id"], {"continue": True}, "ann", ["ops"])
    assert str(roleless.value) == f"ann {rules}, and ann is in none of its roles (in ops)"
    assert (await squall.inquiries.get(record["id"]))["status"] == "pending"
    done = await squall.inquiries.respond(record["id"], {"continue": True}, "ann", ["dba"])
    assert done["status"] == "succeeded"
    assert (await squall.executions.get(record["id"]))["result"]["responder"] == "ann"


async def test_a_roles_only_inquiry_is_answered_through_the_api_by_a_member_of_a_config_group(home: Path) -> None:
    """`roles` are config `auth.groups` outside chat too: bob (in approvers) answers with his own key,
    and a config key naming him answers for him; eve, in no such group, is refused."""
    _config(home, "api:\n  keys: [test-key-123456]\nauth:\n  groups:\n    approvers: [bob]\n")
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        asked = [await squall.executions.request("core.ask", {"roles": ["approvers"]}, {"user": "wf"})
                 for _ in range(2)]
        for record in asked:
            assert (await squall.executions.wait(record["id"], timeout=10))["status"] == "pending"
        bob_key, _ = await squall.db(create_key, squall.store, "bob")
        eve_key, _ = await squall.db(create_key, squall.store, "eve")
        transport = httpx.ASGITransport(app=create_api(squall))
        async with httpx.AsyncClient(transport=transport, base_url="http://squall") as client:
            url = f"/api/v1/inquiries/{asked[0]['id']}"
            own = await client.put(url, headers={"St2-Api-Key": bob_key}, json={"response": {"continue": True}})
            assert own.status_code == 200, own.text
            denied = await client.put(f"/api/v1/inquiries/{asked[1]['id']}", headers={"St2-Api-Key": eve_key},
                                      json={"response": {"continue": True}})
            assert denied.status_code == 403
            assert "eve is in none of its roles" in denied.json()["faultstring"]
            named = await client.put(f"/api/v1/inquiries/{asked[1]['id']}", headers={"St2-Api-Key": "test-key-123456"},
                                     json={"response": {"continue": True}, "user": "bob"})
            assert named.status_code == 200, named.text
        assert [(await squall.executions.get(r["id"]))["result"]["responder"] for r in asked] == ["bob", "bob"]
    finally:
        await squall.close()


def test_cli_answers_a_roles_only_inquiry_for_a_member_of_a_config_group(home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall inquiry respond` answers as the shell's user, in the config `auth.groups` that list them:
    an inquiry for their group is answered, one for another group refused (exit 2, saying why)."""
    import getpass

    from tests.test_cli import in_process

    me = getpass.getuser()
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               f"auth:\n  groups:\n    approvers: [{me}]\n    others: [nobody-else]\n")
    workflow_pack(home, {"mine": ("action-chain", "", CHOICE.replace("route: ops", "roles: [approvers]")),
                         "theirs": ("action-chain", "", CHOICE.replace("route: ops", "roles: [others]"))})

    cli = in_process(home, monkeypatch)
    for ref in ("wf.mine", "wf.theirs"):
        started = cli("run", ref, "--json")
        assert json.loads(started.stdout)["status"] == "paused", started.stdout + started.stderr
    listed = {item["roles"][0]: item["id"] for item in json.loads(cli("inquiry", "list", "--json").stdout)}
    # A process of its own: the table's width comes from its environment (COLUMNS), read once per process.
    table = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "inquiry", "list"], capture_output=True,
                           text=True, timeout=60, cwd=home, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "who may answer" in table and "members of role approvers" in table and "anyone" not in table
    good = cli("inquiry", "respond", listed["approvers"], "--response", '{"colour": "red"}', "--json")
    assert good.exit_code == 0, good.stderr
    assert json.loads(good.stdout)["status"] == "succeeded"
    refused = cli("inquiry", "respond", listed["others"], "--response", '{"colour": "red"}')
    assert refused.exit_code == 2 and f"{me} is in none of its roles (in approvers)" in refused.stderr


async def test_an_inquirys_roles_are_the_chats_groups_config_ones_included(home: Path) -> None:
    """`roles: [approvers]` answered in chat: a member by config `auth.groups` may answer (as with
    approvals), someone outside it may not."""
    _config(home, "auth:\n  groups:\n    approvers: [ann]\n")
    workflow_pack(home, {"roles": ("orquesta", "", APPROVAL.replace("users: [olivia]", "roles: [approvers]"))})
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        workflow_id, inquiry = await _paused(squall, "wf.roles")
        question = next(p for p in await loopback.wait_for(lambda p: any(inquiry["id"] in x.text for x in p))
                        if inquiry["id"] in p.text)
        await loopback.say("yes", user="bea", channel="#approvals", thread=question.id, mentioned=True)
        await loopback.wait_for(lambda posted: any("Sorry bea" in p.text for p in posted))
        assert (await squall.executions.get(inquiry["id"]))["status"] == "pending"
        await loopback.say("yes", user="ann", channel="#approvals", thread=question.id, mentioned=True)
        done = await _final(squall, workflow_id)
        assert done["status"] == "succeeded" and done["result"]["output"] == {"answer": True}
        assert (await squall.executions.get(inquiry["id"]))["result"]["responder"] == "ann"
    finally:
        await squall.chat.stop()
        await squall.close()


def test_secret_answers_are_masked_at_any_depth() -> None:
    from engine.inquiries import masked, shown

    schema = {"type": "object", "properties": {
        "pin": {"type": "string", "secret": True},
        "account": {"type": "object", "properties": {"token": {"secret": True}, "name": {"type": "string"}}},
        "keys": {"type": "array", "items": {"type": "object", "properties": {"value": {"secret": True}}}},
        "ok": {"type": "boolean"}}}
    answer = {"pin": "1234", "account": {"token": "t-1", "name": "ops"}, "keys": [{"value": "k-1"}, {}],
              "ok": True, "unlisted": "kept"}
    assert masked(schema, answer) == {"pin": "********", "account": {"token": "********", "name": "ops"},
                                      "keys": [{"value": "********"}, {}], "ok": True, "unlisted": "kept"}
    assert masked(schema, {"pin": None}) == {"pin": None}  # nothing given: nothing to hide
    result = {"schema": schema, "response": answer, "responses": [{"user": "ann", "response": answer}]}
    assert "1234" not in str(shown(result)) and shown(result)["responses"][0]["user"] == "ann"
    plain = {"schema": {"properties": {"ok": {"type": "boolean"}}}, "response": {"ok": True}}
    assert shown(plain) is plain  # no secret in the schema: shown as stored


def test_secret_items_and_pattern_or_additional_properties_are_masked_too() -> None:
    """A list of secret strings, a map of secrets by any name (`additionalProperties`), one by pattern
    (`patternProperties`) and a positional item: shown in the clear (only a property named in `properties`
    was masked), in the inquiry and in the workflow that asked."""
    from engine.inquiries import masked, shown

    schema = {"type": "object", "properties": {
        "pins": {"type": "array", "items": {"type": "string", "secret": True}},
        "vault": {"type": "object", "additionalProperties": {"type": "string", "secret": True}},
        "by_host": {"type": "object", "patternProperties": {"^db": {"type": "string", "secret": True}}},
        "pair": {"type": "array", "items": [{"type": "string"}, {"type": "string", "secret": True}]}}}
    answer = {"pins": ["1111", "2222"], "vault": {"aws": "AKIA-x"}, "by_host": {"db1": "pw-1", "web1": "plain"},
              "pair": ["user", "pw-2"]}
    assert masked(schema, answer) == {"pins": ["********", "********"], "vault": {"aws": "********"},
                                      "by_host": {"db1": "********", "web1": "plain"}, "pair": ["user", "********"]}
    result = {"schema": {"type": "object", "properties": {"pins": schema["properties"]["pins"]}},
              "response": {"pins": ["1111"]}}
    assert "1111" not in str(shown(result))


SECRET_SCHEMA = {"type": "object", "maxProperties": 2, "properties": {
    "pin": {"type": "string", "pattern": "^[0-9]{4}$", "secret": True, "required": True},
    "account": {"type": "object", "properties": {"token": {"type": "string", "minLength": 8, "secret": True}}},
    "colour": {"type": "string", "enum": ["red", "green"]},
    "vault": {"type": "object", "secret": True, "additionalProperties": {"type": "string", "maxLength": 5}}}}


async def _secret_inquiry(squall: Squall, loopback: LoopbackAdapter) -> dict:
    """A standalone core.ask for a PIN, pending once its question is posted in #approvals."""
    record = await squall.executions.request("core.ask", {"schema": SECRET_SCHEMA, "route": "ops"}, {"user": "wf"})
    await loopback.wait_for(lambda posted: any(record["id"] in p.text for p in posted))
    inquiry = await squall.executions.get(record["id"])
    assert inquiry["status"] == "pending", inquiry
    return inquiry


async def test_a_wrong_secret_answer_is_never_quoted_back(chat) -> None:
    """A mistyped PIN (a `secret: true` property) is refused naming the rule it breaks, never the value:
    the message goes to chat, the API's 400 and the audit log. What is not secret is still quoted."""
    squall, loopback = chat
    inquiry = await _secret_inquiry(squall, loopback)
    cases = [({"pin": "hunter2-SECRET-PIN"}, "at pin: the value breaks 'pattern'"),
             ({"pin": "1234", "account": {"token": "short-S"}}, "at account/token: the value breaks 'minLength'"),
             # the keys inside a secret are part of it: the place named stops at the secret
             ({"pin": "1234", "vault": {"SECRET-name": "too-long"}}, "at vault: the value breaks 'maxLength'"),
             # the whole answer breaks a rule: jsonschema's message would quote every value in it
             ({"pin": "9-SECRET-9", "account": {}, "colour": "red"}, "at response: the value breaks 'maxProperties'")]
    for answer, said in cases:
        with pytest.raises(InquiryError) as refused:
            await squall.inquiries.respond(inquiry["id"], answer, "ann")
        assert said in str(refused.value) and "SECRET" not in str(refused.value) and "short-S" not in str(refused.value)
    with pytest.raises(InquiryError, match="'purple' is not one of"):  # not a secret: quoted, as before
        await squall.inquiries.respond(inquiry["id"], {"pin": "1234", "colour": "purple"}, "ann")
    with pytest.raises(InquiryError, match="'pin' is a required property"):  # names the field, quotes no value
        await squall.inquiries.respond(inquiry["id"], {"colour": "red"}, "ann")
    assert (await squall.executions.get(inquiry["id"]))["status"] == "pending"


async def test_a_wrong_secret_answer_is_not_in_the_api_400_the_chat_reply_or_the_audit(chat) -> None:
    squall, loopback = chat
    inquiry = await _secret_inquiry(squall, loopback)
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall") as client:
        bad = await client.put(f"/api/v1/inquiries/{inquiry['id']}", headers={"St2-Api-Key": "test-key-123456"},
                               json={"response": {"pin": "api-SECRET-PIN-99"}, "user": "ann"})
    assert bad.status_code == 400, bad.text
    assert "at pin: the value breaks 'pattern'" in bad.json()["faultstring"] and "SECRET" not in bad.text
    await loopback.say(f'!respond {inquiry["id"]} {{"pin": "chat-SECRET-PIN"}}', user="bea", channel="#ops")
    reply = next(p for p in await loopback.wait_for(lambda posted: any("Sorry bea" in p.text for p in posted))
                 if "Sorry bea" in p.text)
    assert "the value breaks 'pattern'" in reply.text and "SECRET" not in reply.text
    denied = [row for row in await squall.db(squall.store.audit_list, 100) if row["event"].endswith("inquiry.denied")]
    assert sorted(row["event"] for row in denied) == ["api.inquiry.denied", "chat.inquiry.denied"]
    assert all("the value breaks 'pattern'" in row["detail"]["reason"] for row in denied)
    assert "SECRET" not in json.dumps(denied, default=str)


async def test_an_api_answer_whose_audit_event_fails_is_not_recorded(chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer and its `api.inquiry.respond` event are one transaction, an answer short of the count (a
    write of the responses) as the last one (the inquiry's end): an event the full disk cannot take leaves
    the answer unrecorded, so the 503 is true and the same answer may be given again."""
    squall, _ = chat
    workflow_id, inquiry = await _paused(squall, "wf.two")
    url = f"/api/v1/inquiries/{inquiry['id']}"
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                 headers={"St2-Api-Key": "test-key-123456"}) as client:
        for user, left in (("ann", "pending"), ("bea", "succeeded")):
            failing_audit(squall, monkeypatch, "api.inquiry.respond", disk_full())
            failed = await client.put(url, json={"response": {"approved": True}, "user": user})
            assert failed.status_code == 503, failed.text
            before = (await squall.executions.get(inquiry["id"]))["result"]
            assert user not in [r["user"] for r in before.get("responses") or []]
            monkeypatch.undo()
            answered = await client.put(url, json={"response": {"approved": True}, "user": user})
            assert answered.status_code == 200, answered.text
            assert answered.json()["status"] == left
    rows = list(reversed(await squall.db(squall.store.audit_list, 10, "api.inquiry.respond")))
    assert [(r["actor"], r["target"], r["detail"]) for r in rows] == [
        (user, inquiry["id"], {"response": {"approved": True}}) for user in ("ann", "bea")]
    assert (await _final(squall, workflow_id))["status"] == "succeeded"


async def test_an_api_or_web_answerer_is_named_by_the_rule_chat_uses(home: Path) -> None:
    """An inquiry's `users` name its answerer as `auth` names people (`engine.identity.names_of`): the API's
    and the web's carol are `carol`, never the IRC nick `irc:carol` nor Slack's `slack:carol`; a config key
    acting for a user named `irc:carol` is that user of the API (`api:irc:carol`), not the nick."""
    from tests.test_web_auth import started_web

    async with started_web(home) as web:
        squall: Squall = web.squall
        asked = {users: await squall.executions.request("core.ask", {"users": [users]}, {"user": "wf"})
                 for users in ("irc:carol", "slack:carol", "carol", "api:irc:carol")}
        for record in asked.values():
            assert (await squall.executions.wait(record["id"], timeout=10))["status"] == "pending"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web.app), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            async def answer(users: str, user: str) -> httpx.Response:
                return await client.put(f"/api/v1/inquiries/{asked[users]['id']}",
                                        json={"response": {"continue": True}, "user": user})

            posing = await answer("irc:carol", "irc:carol")
            assert posing.status_code == 403, posing.text
            assert "irc:carol is not one of its users" in posing.json()["faultstring"]
            assert (await answer("irc:carol", "carol")).status_code == 403
            assert (await answer("slack:carol", "carol")).status_code == 403
            assert (await answer("api:irc:carol", "irc:carol")).status_code == 200
        browser, csrf = await web.signed_in("carol", "operator")
        for users, status in (("irc:carol", 403), ("slack:carol", 403), ("carol", 303)):
            page = await browser.post(f"/inquiries/{asked[users]['id']}", data={"csrf_token": csrf, "continue": "true"})
            assert page.status_code == status, (users, page.text)
        assert {users: (await squall.inquiries.get(record["id"]))["status"] for users, record in asked.items()} == {
            "irc:carol": "pending", "slack:carol": "pending", "carol": "succeeded", "api:irc:carol": "succeeded"}


def test_one_rule_names_an_answerer_in_chat_and_outside_it() -> None:
    """`refusal` given the names `names_of` gives (the API, the web) or, without them, chat's `person`
    (`irc:carol` for the nick): a qualified entry names that adapter's person only, a bare one the person a
    platform says wrote, and a name that reads qualified is its own API user only."""
    from engine.identity import names_of
    from engine.inquiries import refusal

    def refused(users: list[str], user: str, names: set[str] | None = None) -> bool:
        return refusal(user, [], users, [], names) is not None

    assert refused(["irc:carol"], "irc:carol", names_of(None, "irc:carol"))  # the API's `irc:carol`
    assert not refused(["api:irc:carol"], "irc:carol", names_of(None, "irc:carol"))
    assert refused(["slack:carol"], "carol", names_of(None, "carol"))
    assert not refused(["carol"], "carol", names_of(None, "carol"))
    assert not refused(["irc:carol"], "irc:carol")  # chat's nick carol
    assert refused(["carol"], "irc:carol")
    assert not refused(["carol"], "carol")  # chat's carol of Slack, Mattermost or the console
    assert refused(["api:carol"], "carol")  # not the API's carol: chat gave no adapter


async def test_why_not_is_the_rule_respond_refuses_by_and_chat_reads_it_by_name(chat) -> None:
    """Who may answer is one rule (`why_not`): the service refuses by it, in its words and status, and the
    chat and the web ask it before they offer or take an answer. Its `users`, then the requester under
    `self_approval: false`, then once per person; `by_name` (chat) compares the requester and the earlier
    answerers by name on any platform, so the nick `irc:ann` counts as the ann who answered elsewhere."""
    from engine.inquiries import why_not

    squall, _ = chat
    _, inquiry = await _paused(squall, "wf.two")

    async def refusal_of(user: str) -> tuple[str, int]:
        with pytest.raises(InquiryError) as refused:
            await squall.inquiries.respond(inquiry["id"], {"approved": True}, user)
        return str(refused.value), refused.value.status

    for user in ("tester", "dave"):  # the requester; someone its `users` do not name
        expected = why_not(await squall.executions.get(inquiry["id"]), user)
        assert expected is not None and await refusal_of(user) == (str(expected), expected.status)
    await squall.inquiries.respond(inquiry["id"], {"approved": True}, "ann")
    record = await squall.executions.get(inquiry["id"])
    expected = why_not(record, "ann")
    assert expected is not None and await refusal_of("ann") == (str(expected), expected.status)
    assert why_not(record, "bea") is None and (await squall.executions.get(inquiry["id"]))["status"] == "pending"

    nicks = {**record, "result": {**record["result"], "users": ["irc:ann", "irc:tester", "irc:bea"]}}
    assert why_not(nicks, "irc:ann") is None and why_not(nicks, "irc:tester") is None  # as given: not ann, tester
    answered, started = why_not(nicks, "irc:ann", by_name="ann"), why_not(nicks, "irc:tester", by_name="tester")
    assert answered is not None and answered.status == 409 and "ann already answered" in str(answered)
    assert started is not None and started.status == 403 and "tester started the workflow" in str(started)
    assert why_not(nicks, "irc:bea", by_name="bea") is None


def _stored(home: Path) -> str:
    """Everything the database file holds, as SQL: what a copy of the file discloses."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(home / "data" / "squall.db")) as db:
        return "\n".join(db.iterdump())


def _stored_row(home: Path, execution_id: str) -> tuple[dict, str | None]:
    """An execution's `result` and `sealed` columns as the database file holds them."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(home / "data" / "squall.db")) as db:
        result, sealed = db.execute("SELECT result, sealed FROM executions WHERE id = ?", (execution_id,)).fetchone()
    return json.loads(result), sealed


async def test_a_secret_answer_is_sealed_at_rest_and_the_chain_that_asked_still_gets_it(chat, home: Path,
                                                                                         tmp_path: Path) -> None:
    """The inquiry's row held the PIN in clear in `result` (`response` and `responses`): a copied database file
    disclosed it. It is masked there and sealed with the datastore key, as a secret parameter is; the next
    task of the chain that asked still gets the real value."""
    squall, _ = chat
    marker = tmp_path / "pin-marker"
    record = await squall.executions.request("wf.pin_chain", {"marker": str(marker)}, {"user": "tester"})
    ask = await pending_ask(squall, record["id"])
    await squall.inquiries.respond(ask["id"], {"pin": PIN}, "ann")
    done = await _final(squall, record["id"])
    assert done["status"] == "succeeded", done["result"]
    assert marker.read_text() == PIN  # the task after the question got the answer as given
    result, sealed = _stored_row(home, ask["id"])
    assert result["response"] == {"pin": MASK} and result["responses"][0]["response"] == {"pin": MASK}
    assert result["responder"] == "ann"
    assert sealed is not None and PIN not in sealed
    assert PIN not in _stored(home)


async def test_every_secret_answer_of_a_count_inquiry_is_sealed_and_reaches_its_workflow(chat, home: Path,
                                                                                        tmp_path: Path) -> None:
    """An answer short of the count is stored too (the inquiry still waits): sealed as well. The workflow gets
    each person's PIN in `result().responses` and the merged `response`, in their order."""
    squall, _ = chat
    marker = tmp_path / "pins-marker"
    record = await squall.executions.request("wf.pin_two", {"marker": str(marker)}, {"user": "tester"})
    ask = await pending_ask(squall, record["id"])
    await squall.inquiries.respond(ask["id"], {"pin": "PIN-of-ann-1"}, "ann")
    waiting, _ = _stored_row(home, ask["id"])
    assert [entry["response"] for entry in waiting["responses"]] == [{"pin": MASK}]
    assert "PIN-of-ann-1" not in _stored(home)
    await squall.inquiries.respond(ask["id"], {"pin": "PIN-of-bea-2"}, "bea")
    done = await _final(squall, record["id"])
    assert done["status"] == "succeeded", done["result"]
    assert marker.read_text() == "PIN-of-ann-1,PIN-of-bea-2/PIN-of-bea-2"
    stored = _stored(home)
    assert "PIN-of-ann-1" not in stored and "PIN-of-bea-2" not in stored


def test_the_cli_shows_a_secret_answer_masked_one_stored_in_clear_before_too(home: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall execution get` and `execution list` printed the inquiry's result as stored: the PIN in clear.
    A row stored before answers were sealed holds it in clear still: it is shown masked all the same, and
    its `get` without `--json` too."""
    import contextlib
    import sqlite3

    from tests.test_cli import in_process

    cli = in_process(home, monkeypatch)
    asked = cli("run", "core.ask", f"schema={json.dumps(PIN_SCHEMA)}", "--json")
    assert json.loads(asked.stdout)["status"] == "pending", asked.output
    ask_id = json.loads(asked.stdout)["id"]
    answered = cli("inquiry", "respond", ask_id, "--response", json.dumps({"pin": PIN, "note": "by phone"}))
    assert answered.exit_code == 0, answered.output

    def shown() -> list[str]:
        got = json.loads(cli("execution", "get", ask_id, "--json").stdout)
        assert got["result"]["response"] == {"pin": MASK, "note": "by phone"}, got["result"]
        assert [entry["response"] for entry in got["result"]["responses"]] == [{"pin": MASK, "note": "by phone"}]
        (listed,) = [row for row in json.loads(cli("execution", "list", "--json").stdout) if row["id"] == ask_id]
        assert listed["result"]["response"]["pin"] == MASK
        return [json.dumps(got), json.dumps(listed), cli("execution", "get", ask_id).stdout]

    assert not any(PIN in text for text in shown())
    result, _ = _stored_row(home, ask_id)
    clear = {**result, "response": {"pin": PIN, "note": "by phone"},
             "responses": [{**result["responses"][0], "response": {"pin": PIN, "note": "by phone"}}]}
    with contextlib.closing(sqlite3.connect(home / "data" / "squall.db")) as db, db:
        db.execute("UPDATE executions SET result = ?, sealed = NULL WHERE id = ?", (json.dumps(clear), ask_id))
    assert not any(PIN in text for text in shown())


async def test_a_secret_answer_stored_in_clear_before_still_reaches_the_workflow_and_is_sealed_now(
        chat, home: Path, tmp_path: Path) -> None:
    """A `count` inquiry whose first answer was stored in clear (before answers were sealed): the next answer
    reads it as it is, both are sealed from then on, and the workflow gets both as they were given."""
    squall, _ = chat
    marker = tmp_path / "old-pins-marker"
    record = await squall.executions.request("wf.pin_two", {"marker": str(marker)}, {"user": "tester"})
    ask = await pending_ask(squall, record["id"])
    old = {**ask["result"], "responses": [{"user": "ann", "at": "2024-01-02T03:04:05Z",
                                           "response": {"pin": "PIN-of-old-ann"}}]}
    assert await squall.executions.change(ask["id"], {"result": old}, ("pending",))  # as answers were stored
    await squall.inquiries.respond(ask["id"], {"pin": "PIN-of-bea-2"}, "bea")
    done = await _final(squall, record["id"])
    assert done["status"] == "succeeded", done["result"]
    assert marker.read_text() == "PIN-of-old-ann,PIN-of-bea-2/PIN-of-bea-2"
    stored = _stored(home)
    assert "PIN-of-old-ann" not in stored and "PIN-of-bea-2" not in stored


async def test_chat_shows_a_secret_answer_stored_in_clear_before_masked(chat, home: Path) -> None:
    """`!execution <id>` of an inquiry printed its result as stored: a row from before answers were sealed
    holds the PIN in clear, and chat showed it."""
    import contextlib
    import sqlite3

    squall, loopback = chat
    ask = await squall.executions.request("core.ask", {"schema": PIN_SCHEMA}, {"user": "ann"})
    assert (await squall.executions.wait(ask["id"], timeout=20))["status"] == "pending"
    await squall.inquiries.respond(ask["id"], {"pin": PIN, "note": "by phone"}, "ann")
    result, _ = _stored_row(home, ask["id"])
    clear = {**result, "response": {"pin": PIN, "note": "by phone"},
             "responses": [{**result["responses"][0], "response": {"pin": PIN, "note": "by phone"}}]}
    with contextlib.closing(sqlite3.connect(home / "data" / "squall.db")) as db, db:
        db.execute("UPDATE executions SET result = ?, sealed = NULL WHERE id = ?", (json.dumps(clear), ask["id"]))
    await loopback.say(f"!execution {ask['id']}", user="ann", channel="#ops")
    (reply,) = await loopback.wait_for(lambda posted: any("by phone" in p.text or "Only admins" in p.text
                                                         for p in posted))
    assert MASK in reply.text and PIN not in reply.text, reply.text
