"""Built-in chat commands on executions started elsewhere, and bare commands that miss their values."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.base import Capabilities
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat import forms
from bot.chat.bot import ChatBot
from engine.config import load_config
from tests.conftest import write
from tests.test_api import disk_full, failing_audit
from tests.test_chat import _config, _said_to, loopback_chat, settle
from tests.test_chat_approvals import _approval_config


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    """The demo pack of `tests/test_chat.py` on the loopback chat."""
    _config(home)
    async with loopback_chat(home) as started:
        yield started


async def test_retry_of_an_execution_started_outside_chat_posts_its_result_where_retry_was_typed(chat) -> None:
    """`!retry` of a CLI/API execution (no chat routing of its own) answers in the asker's thread:
    the ack, then the new run's result, as a retry of a chat command does."""
    squall, bot, loopback = chat
    started = await squall.executions.request("core.local", {"cmd": "echo from-cli"}, {"user": "carol"})
    await settle(squall, bot)
    before = len(loopback.posted)
    await loopback.say(f"!retry {started['id']}", user="carol", channel="#ops")
    await settle(squall, bot)
    again = next(e for e in await squall.executions.list(action="core.local") if e["id"] != started["id"])
    said = loopback.posted[before:]
    texts = [p.reply.text for p in said]
    assert f"Retrying as {again['id']}." in texts
    assert any("from-cli" in text for text in texts), texts
    assert {(p.reply.channel, p.reply.thread) for p in said} == {("#ops", "m1")}
    assert again["context"]["chat"] == {"adapter": "loopback", "channel": "#ops", "user": "carol", "thread": "m1",
                                        "message_id": "m1"}
    assert again["context"]["user"] == "carol" and again["context"]["source"] == "chat"


@pytest.fixture
async def slack_and_irc(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter, LoopbackAdapter]]:
    """The demo pack of `tests/test_chat.py` on two chats at once: `slack`, whose platform says who wrote,
    and `irc`, where anyone may take a free nick."""
    _config(home)
    slack = LoopbackAdapter("slack")
    irc = LoopbackAdapter("irc", Capabilities(threads=False, edits=False, rich=False, files=False, max_length=1600))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[slack, irc])
    await squall.chat.start()
    try:
        yield squall, squall.chat, slack, irc
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_an_irc_nick_may_not_see_cancel_or_retry_what_its_namesake_started_elsewhere(slack_and_irc) -> None:
    """Anyone may `/nick carol`: what carol started from the API (or the CLI, the web, Slack) is hers, and
    the nick carol may neither see its output nor cancel or retry it; Slack's carol may."""
    squall, bot, slack, irc = slack_and_irc
    started = await squall.executions.request("core.local", {"cmd": "echo token=abc123"}, {"user": "carol"})
    await settle(squall, bot)
    for verb in ("execution", "cancel", "retry"):
        answer = await _said_to(irc, squall, bot, f"!{verb} {started['id']}", "carol")
        shown = "see" if verb == "execution" else verb
        assert answer == f"Only admins may {shown} executions not started from chat by you."
    assert [e["id"] for e in await squall.executions.list(action="core.local")] == [started["id"]]
    assert "token=abc123" in await _said_to(slack, squall, bot, f"!execution {started['id']}", "carol")
    denied = await squall.db(squall.store.audit_list, 10, "chat.denied")
    assert [(d["actor"], d["source"]) for d in denied] == [("carol", "irc:#ops")] * 3


async def test_an_execution_started_from_irc_is_the_nick_s_only(slack_and_irc) -> None:
    """What the nick carol started (a `!retry` on IRC records the chat's adapter) is the nick's: it sees and
    retries it, and the retry is the nick's again; Slack's carol, not the nick, may not see either."""
    squall, bot, slack, irc = slack_and_irc
    started = await squall.executions.request("core.local", {"cmd": "echo from-irc"}, {
        "user": "carol", "source": "chat", "chat": {"adapter": "irc", "channel": "#ops", "user": "carol"}})
    await settle(squall, bot)
    assert await _said_to(slack, squall, bot, f"!execution {started['id']}", "carol") == (
        "Only admins may see executions not started from chat by you.")
    assert "from-irc" in await _said_to(irc, squall, bot, f"!execution {started['id']}", "carol")
    await irc.say(f"!retry {started['id']}", user="carol")
    await settle(squall, bot)
    [again] = [e for e in await squall.executions.list(action="core.local") if e["id"] != started["id"]]
    assert again["context"]["chat"]["adapter"] == "irc" and again["context"]["user"] == "carol"
    assert "from-irc" in await _said_to(irc, squall, bot, f"!execution {again['id']}", "carol")
    assert await _said_to(slack, squall, bot, f"!execution {again['id']}", "carol") == (
        "Only admins may see executions not started from chat by you.")


async def _wiped_by_alice(squall: Squall, bot: ChatBot, loopback: LoopbackAdapter) -> dict:
    """alice runs `!wipe db1` (demo.dangerous, a `confirm:` alias) and confirms it: its execution."""
    await loopback.say("!wipe db1", user="alice")
    await loopback.say("!yes", user="alice")
    await settle(squall, bot)
    [wiped] = await squall.executions.list(action="demo.wipe")
    return wiped


async def test_retry_of_a_confirm_alias_s_execution_asks_the_retrying_person_first(chat) -> None:
    """An alias's own `confirm:` always asks, also for `!retry`: bob's retry of alice's confirmed wipe
    runs nothing until bob says yes (alice's yes is not his), then runs as bob, audited as a re-run."""
    squall, bot, loopback = chat
    wiped = await _wiped_by_alice(squall, bot, loopback)
    await loopback.say(f"!retry {wiped['id']}", user="bob")
    await settle(squall, bot)
    asked = loopback.texts()[-1]
    assert asked.startswith(f"About to retry {wiped['id']}: demo.wipe with ") and "target=db1" in asked
    assert asked.endswith("Reply `!yes` within 30s to go ahead, or `!no`.")  # the alias's own ttl
    assert await squall.executions.list(action="demo.wipe") == [wiped]
    await loopback.say("!yes", user="alice")  # not asked: her yes confirms nothing of bob's
    await settle(squall, bot)
    assert await squall.executions.list(action="demo.wipe") == [wiped]
    await loopback.say("!yes", user="bob")
    await settle(squall, bot)
    [again] = [e for e in await squall.executions.list(action="demo.wipe") if e["id"] != wiped["id"]]
    assert again["parameters"]["target"] == "db1" and again["context"]["user"] == "bob"
    assert f"Retrying as {again['id']}." in loopback.texts()
    [rerun] = await squall.db(squall.store.audit_list, 10, "chat.execution.rerun")
    assert (rerun["actor"], rerun["target"], rerun["detail"]["of"]) == ("bob", again["id"], wiped["id"])


async def test_a_retry_answered_no_runs_nothing(chat) -> None:
    squall, bot, loopback = chat
    wiped = await _wiped_by_alice(squall, bot, loopback)
    await loopback.say(f"!retry {wiped['id']}", user="bob")
    await loopback.say("!no", user="bob")
    await settle(squall, bot)
    assert loopback.texts()[-1] == f"OK, not retrying {wiped['id']}."
    assert await squall.executions.list(action="demo.wipe") == [wiped]


async def test_a_retry_confirmation_outlives_a_restart_and_is_authorised_again(home: Path) -> None:
    """The retry's prompt is stored as a typed command's is: bob's yes after a restart still re-runs it,
    and a yes after his permission was taken (here, a rule that denies him the alias) is refused."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        wiped = await _wiped_by_alice(squall, bot, loopback)
        await loopback.say(f"!retry {wiped['id']}", user="bob")
        await loopback.say(f"!retry {wiped['id']}", user="carol")
        await settle(squall, bot)
    config = (home / "config.yml").read_text()
    rule = "  aliases:\n    demo.dangerous: {deny: {users: [carol]}}\n"
    (home / "config.yml").write_text(config.replace("  admins: [root-admin]\n", "  admins: [root-admin]\n" + rule))
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="carol")
        await settle(squall, bot)
        assert loopback.texts()[-1] == "Sorry carol, you may not retry that."
        await loopback.say("!yes", user="bob")
        await settle(squall, bot)
        ran = await squall.executions.list(action="demo.wipe")
        assert sorted(e["context"]["user"] for e in ran) == ["alice", "bob"]


async def test_a_retry_that_needs_approval_is_refused_before_any_confirmation(home: Path) -> None:
    """A confirming alias that also needs approval: `!retry` is refused at once (type the command again),
    never a prompt whose yes could only be refused."""
    _config(home)
    alias = home / "packs" / "demo" / "aliases" / "dangerous.yaml"
    alias.write_text(alias.read_text() + "approval: {groups: [operators]}\n")
    async with loopback_chat(home) as (squall, bot, loopback):
        wiped = await squall.executions.request("demo.wipe", {"target": "db1"}, {
            "user": "alice", "chat": {"adapter": "loopback", "channel": "#ops", "alias": "demo.dangerous"}})
        await settle(squall, bot)
        await loopback.say(f"!retry {wiped['id']}", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("demo.dangerous needs approval from operators")
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert len(await squall.executions.list(action="demo.wipe")) == 1


async def test_a_retry_prompt_shows_secret_parameters_masked(home: Path) -> None:
    """The retry's prompt names the parameters it re-runs with, as a typed command's prompt does: a
    secret one as ********, never its value."""
    _config(home)
    write(home / "packs" / "demo" / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          token: {type: string, secret: true, required: true}
          cmd: {default: 'echo in', immutable: true}
    """)
    write(home / "packs" / "demo" / "aliases" / "login.yaml", """
        name: login
        action_ref: demo.login
        description: Log in (asks first).
        formats: ["login {{token}}"]
        confirm: true
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        logged = await squall.executions.request("demo.login", {"token": "hunter2"}, {
            "user": "alice", "chat": {"adapter": "loopback", "channel": "#ops", "alias": "demo.login"}})
        await settle(squall, bot)
        await loopback.say(f"!retry {logged['id']}", user="alice")
        await settle(squall, bot)
        asked = loopback.texts()[-1]
        assert asked.startswith(f"About to retry {logged['id']}: demo.login with ") and "token=********" in asked
        assert "hunter2" not in asked


async def test_a_retry_sends_the_original_s_credentials_to_the_same_host_again(chat) -> None:
    """`!retry` changes no parameter, so it goes where the original went, with its credentials: the rule
    that keeps them from another host (`rerun_parameters`) leaves the same request again as it was."""
    from tests.test_http_secret_headers import _echo_server

    squall, bot, loopback = chat
    with _echo_server() as (url, seen):
        started = await squall.executions.request("core.http", {
            "url": url, "headers": {"X-Api-Key": "key-of-carol-0001"}, "password": "pw-of-carol-0002",
            "username": "carol"}, {"user": "carol"})
        await settle(squall, bot)
        await loopback.say(f"!retry {started['id']}", user="carol", channel="#ops")
        await settle(squall, bot)
        [again] = [e for e in await squall.executions.list(action="core.http") if e["id"] != started["id"]]
        done = await squall.executions.wait(again["id"], 30)
    assert done["status"] == "succeeded", done["result"]
    assert len(seen) == 2 and seen[-1]["X-Api-Key"] == "key-of-carol-0001"
    said = " ".join(loopback.texts())
    assert "key-of-carol-0001" not in said and "pw-of-carol-0002" not in said


# -- a command typed without its values ---------------------------------------------------------------

async def test_a_shipped_alias_typed_without_its_value_asks_for_it_and_runs(chat) -> None:
    """`!echo` is `echo {{message}}` without its value: asked for, as a missing parameter is, not
    "I don't know `echo`"."""
    squall, bot, loopback = chat
    await loopback.say("!echo", user="alice", channel="#ops")
    await settle(squall, bot)
    asked = loopback.texts("#ops")[-1]
    assert asked.startswith("`!echo` needs message: `!echo {{message}}`\nRunning squall.echo: 1 question(s)")
    assert asked.endswith("\nmessage (The message that the command will echo.)? (string)")
    await loopback.say("hello there", user="alice", channel="#ops")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="core.echo")
    assert execution["parameters"]["message"] == "hello there"
    assert "hello there" in loopback.texts("#ops")[-1]


async def test_the_words_before_a_format_s_first_value_ask_for_the_values(chat) -> None:
    """`!key get` (of `key get {{name}}`) asks for the name."""
    squall, bot, loopback = chat
    await loopback.say("!key get", user="olivia", channel="#ops")
    await settle(squall, bot)
    assert loopback.texts("#ops")[-1].startswith("`!key get` needs name: `!key get {{name}}`\nRunning squall.key_get")


async def test_a_bare_command_is_not_offered_to_who_may_not_run_it(chat) -> None:
    """bob may not run `!run` (squall.run is for operators): no questions for him, whose answers
    would be refused, but the usual answer; olivia, an operator, is asked."""
    squall, bot, loopback = chat
    await loopback.say("!run", user="bob", channel="#ops")
    await settle(squall, bot)
    assert loopback.texts("#ops")[-1].startswith("I don't know `run`.")
    await loopback.say("id", user="bob", channel="#ops")  # no question waits: chatter
    await settle(squall, bot)
    assert await squall.executions.list(limit=5) == []
    await loopback.say("!run", user="olivia", channel="#ops")
    await settle(squall, bot)
    assert loopback.texts("#ops")[-1].startswith("`!run` needs cmd: `!run {{cmd}}`\nRunning squall.run")


async def test_bare_words_of_several_aliases_say_what_each_needs(chat) -> None:
    """`!greet` is the bare words of demo.greet and demo.remote_greet: no guess, both are shown."""
    squall, bot, loopback = chat
    await loopback.say("!greet", user="alice", channel="#ops")
    await settle(squall, bot)
    said = loopback.texts("#ops")[-1]
    assert said.startswith("`!greet` needs more: one of `!greet {{who}}` (demo.greet)")
    assert "(demo.remote_greet)" in said and await squall.executions.list(limit=5) == []


async def test_bare_words_whose_values_no_form_asks_say_what_is_needed(home: Path) -> None:
    """A value no form asks (here the action's immutable `cmd`) cannot be asked for: the command's
    needs are said instead."""
    _config(home)
    write(home / "packs" / "demo" / "aliases" / "ghost.yaml", """
        name: ghost
        action_ref: demo.wipe
        description: An alias whose format names what no form asks.
        formats: ["haunt {{cmd}}"]
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!haunt", user="alice", channel="#ops")
        await settle(squall, bot)
        assert loopback.texts("#ops")[-1] == "`!haunt` needs cmd: `!haunt {{cmd}}`"


def test_bare_words_are_a_format_s_lead_or_all_its_literal_words() -> None:
    assert forms._bare_missing("restart {{service}} on {{host}}", ("restart",)) == ("service", "host")
    assert forms._bare_missing("restart {{service}} on {{host=web1}}", ("restart", "on")) == ("service",)
    assert forms._bare_missing("restart {{service}} on {{host}}", ("restart", "now")) == ()
    assert forms._bare_missing("(?i)restart {{service}}", ("restart",)) == ()  # a pattern, not words
    assert forms._bare_missing("ping", ("ping",)) == ()


async def test_a_bare_command_typed_while_a_question_waits_is_a_command_not_the_answer(chat) -> None:
    """`!echo` asks for a message; `!key get` typed then is a command of its own (it asks for a name),
    never the echo's message, as `!pack install` must never become a `!run`'s shell command."""
    squall, bot, loopback = chat
    await loopback.say("!echo", user="olivia", channel="#ops")
    await loopback.say("!key get", user="olivia", channel="#ops")
    await settle(squall, bot)
    assert loopback.texts("#ops")[-1].startswith("`!key get` needs name: `!key get {{name}}`")
    assert await squall.executions.list(limit=5) == []


# -- a built-in's change and its audit event: one transaction ------------------------------------------

async def _told_nothing_was_stored(bot: ChatBot, loopback: LoopbackAdapter, text: str, user: str) -> None:
    """`user` types `text`, and is told that the database took nothing (`Dispatcher.tell_failure`), and nothing
    else so far (not waiting for the runs going on: what they would post is the test's to check)."""
    before = len(loopback.posted)
    await loopback.say(text, user=user)
    await loopback.wait_for(lambda posted: len(posted) > before)
    await bot.outbox.drain(10)
    said = loopback.texts()[before:]
    assert len(said) == 1 and said[0].startswith("Squall could not do that: the database is full"), said


async def _napping(squall: Squall, bot: ChatBot, loopback: LoopbackAdapter) -> dict:
    """alice's `!nap 30` (demo.snooze), once it runs."""
    await loopback.say("!nap 30", user="alice")
    for _ in range(1500):  # up to 30 s on a busy machine
        if running := await squall.executions.list(action="demo.snooze", status="running"):
            return running[0]
        await asyncio.sleep(0.02)
    raise AssertionError("demo.snooze never ran")


async def test_a_chat_cancel_whose_audit_event_fails_cancels_nothing(chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """`!cancel` stored the cancel in one commit and its `chat.execution.cancel` event in the next: under a full
    disk the person was told the database failed while the run was being canceled, with no audit row. The
    cancel and its event are one transaction now (`ExecutionService.cancel`'s `audit`): the run goes on, and
    the cancel that works is audited with the status it wrote."""
    squall, bot, loopback = chat
    napping = await _napping(squall, bot, loopback)
    failing_audit(squall, monkeypatch, "chat.execution.cancel", disk_full())
    await _told_nothing_was_stored(bot, loopback, f"!cancel {napping['id']}", "alice")
    assert (await squall.executions.get(napping["id"]))["status"] == "running"
    monkeypatch.undo()
    await loopback.say(f"!cancel {napping['id']}", user="alice")
    assert (await squall.executions.wait(napping["id"], 30))["status"] == "canceled"
    await settle(squall, bot)
    [row] = await squall.db(squall.store.audit_list, 10, "chat.execution.cancel")
    assert (row["actor"], row["source"], row["target"]) == ("alice", "loopback:#ops", napping["id"])
    assert row["detail"] == {"action": "demo.snooze", "status": "canceling"}


async def test_a_chat_retry_whose_audit_event_fails_runs_nothing(chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """`!retry` stored the new execution, then its `chat.execution.rerun` event apart: a failure between them
    ran it unaudited, and the person, told it failed, retried it again. `CommandService.rerun` stores the event
    with the re-run now: nothing runs, and the retry that works is audited as before."""
    squall, bot, loopback = chat
    started = await squall.executions.request("core.local", {"cmd": "echo once"}, {"user": "carol"})
    await settle(squall, bot)
    failing_audit(squall, monkeypatch, "chat.execution.rerun", disk_full())
    await _told_nothing_was_stored(bot, loopback, f"!retry {started['id']}", "carol")
    assert [e["id"] for e in await squall.executions.list(action="core.local")] == [started["id"]]
    monkeypatch.undo()
    await loopback.say(f"!retry {started['id']}", user="carol")
    await settle(squall, bot)
    [again] = [e for e in await squall.executions.list(action="core.local") if e["id"] != started["id"]]
    [row] = await squall.db(squall.store.audit_list, 10, "chat.execution.rerun")
    assert (row["actor"], row["source"], row["target"]) == ("carol", "loopback:#ops", again["id"])
    assert row["detail"] == {"action": "core.local", "of": started["id"], "parameters": again["parameters"]}


async def test_a_chat_answer_whose_audit_event_fails_is_not_recorded(chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """`!respond` stored the answer in one commit and its `chat.inquiry.respond` event in the next: under a full
    disk the person was told the database failed for an answer that counted. The answer and its event are one
    transaction now (`InquiryService.respond`'s `audit`), an answer short of the count as the last one: the
    failed answer is not recorded and may be given again."""
    squall, bot, loopback = chat
    schema = {"type": "object", "properties": {"ok": {"type": "boolean", "required": True},
                                               "pin": {"type": "string", "secret": True}}}
    inquiry = await squall.executions.request("core.ask", {"schema": schema, "count": 2}, {"user": "tester"})
    assert (await squall.executions.wait(inquiry["id"], timeout=20))["status"] == "pending"
    answer = f'!respond {inquiry["id"]} {{"ok": true, "pin": "chat-SECRET"}}'
    for user, left in (("alice", "pending"), ("bea", "succeeded")):
        failing_audit(squall, monkeypatch, "chat.inquiry.respond", disk_full())
        await _told_nothing_was_stored(bot, loopback, answer, user)
        record = await squall.executions.get(inquiry["id"])
        assert user not in [r["user"] for r in record["result"].get("responses") or []], record["result"]
        monkeypatch.undo()
        await loopback.say(answer, user=user)
        await settle(squall, bot)
        assert (await squall.executions.get(inquiry["id"]))["status"] == left
    rows = list(reversed(await squall.db(squall.store.audit_list, 10, "chat.inquiry.respond")))
    assert [(r["actor"], r["source"], r["target"], r["detail"]) for r in rows] == [
        (user, "loopback:#ops", inquiry["id"], {"response": {"ok": True, "pin": "********"}})
        for user in ("alice", "bea")]


@pytest.fixture
async def approvals(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    """`tests/test_chat_approvals.py`'s packs: `!deploy <target>` waits for two of the approvers ann and bea."""
    _approval_config(home)
    async with loopback_chat(home) as started:
        yield started


async def test_an_approval_change_whose_audit_event_fails_is_not_stored(approvals,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A held command, an `!approve` and a `!deny` each stored their change in one commit and their
    `chat.approval.*` event in the next: under a full disk a decision counted that the person was told had
    failed, and the audit log never said who decided. Each change and its event are one transaction now:
    the one whose event fails is not stored, and may be made again."""
    squall, bot, loopback = approvals
    failing_audit(squall, monkeypatch, "chat.approval.request", disk_full())
    await loopback.say("!deploy web1", user="alice")
    await settle(squall, bot)
    assert await squall.db(squall.store.approvals_pending) == []
    monkeypatch.undo()
    await loopback.say("!deploy web1", user="alice")
    await settle(squall, bot)
    [held] = await squall.db(squall.store.approvals_pending)
    for verdict, user, status in (("approve", "ann", "pending"), ("deny", "bea", "denied")):
        failing_audit(squall, monkeypatch, f"chat.approval.{verdict}", disk_full())
        await _told_nothing_was_stored(bot, loopback, f"!{verdict} {held['id']} not now", user)
        row = await squall.db(squall.store.approval_get, held["id"])
        assert user not in [d["user"] for d in row["decisions"]] and row["status"] == "pending", row
        monkeypatch.undo()
        await loopback.say(f"!{verdict} {held['id']} not now", user=user)
        await settle(squall, bot)
        assert (await squall.db(squall.store.approval_get, held["id"]))["status"] == status
    rows = reversed(await squall.db(squall.store.audit_list, 20))
    assert [(r["event"], r["actor"], r["target"], r["detail"].get("status")) for r in rows
            if r["event"].startswith("chat.approval.")] == [
        ("chat.approval.request", "alice", "demo.deploy", None),
        ("chat.approval.approve", "ann", "demo.deploy", "pending"),
        ("chat.approval.deny", "bea", "demo.deploy", "denied")]
    assert await squall.executions.list(action="demo.wipe") == []
