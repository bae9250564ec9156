"""Inquiries answered in chat: which inquiry a click or a bare answer answers, and when a message in
a question's thread is a command or chatter rather than an answer (`bot/chat/inquiries.py`,
`Dispatcher._inquiry_answer`)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Capabilities, Message
from adapters.loopback import LoopbackAdapter, Posted
from bot.app import Squall
from engine.config import load_config
from tests.conftest import write
from tests.workflow_helpers import children, workflow_pack

#: A workflow started from chat that asks two yes/no questions at once: both go to the command's thread.
PARALLEL = """
version: 1.0
tasks:
  start:
    action: core.noop
    next: [{do: [ask_db, ask_web]}]
  ask_db:
    action: core.ask
    input:
      schema: {type: object, description: "Migrate the DATABASE?", properties: {db: {type: boolean, required: true}}}
  ask_web:
    action: core.ask
    input:
      schema: {type: object, description: "Restart the WEB tier?", properties: {web: {type: boolean, required: true}}}
"""

#: A workflow started from chat that asks a free-text question (one string) in the command's thread.
WHY = """
version: 1.0
tasks:
  ask:
    action: core.ask
    input:
      users: [alice]
      schema:
        type: object
        properties:
          reason: {type: string, description: "Why deploy now?", required: true}
"""

BOOLEAN = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
FREE_TEXT = {"type": "object", "properties": {"reason": {"type": "string", "required": True}}}


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter]]:
    """A loopback chat (threads, buttons) with the two workflows behind `!release` and `!deploy-why`, and
    `greet <who>` (core.echo); the route `ops` is #ops."""
    write(home / "config.yml", (home / "config.yml").read_text()
          + 'routes:\n  ops: {adapter: loopback, channel: "#ops"}\n')
    workflow_pack(home, {"two": ("orquesta", "", PARALLEL), "why": ("orquesta", "", WHY)})
    write(home / "packs" / "wf" / "aliases" / "two.yaml", "name: two\naction_ref: wf.two\nformats: ['release']\n")
    write(home / "packs" / "wf" / "aliases" / "why.yaml", "name: why\naction_ref: wf.why\nformats: ['deploy-why']\n")
    write(home / "packs" / "wf" / "aliases" / "greet.yaml",
          "name: greet\naction_ref: core.echo\nformats: ['greet {{message}}']\n")
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    assert squall.registry.errors == []
    await squall.chat.start()
    try:
        yield squall, loopback
    finally:
        await squall.chat.stop()
        await squall.close()


async def click(loopback: LoopbackAdapter, posted: Posted, text: str, *, user: str = "alice") -> None:
    """`user` clicks the button labelled `text` on `posted`, as Slack and Mattermost pass a click on:
    the button's value, in the prompt's thread (or the prompt's own, at the top of a channel)."""
    value = next(b["value"] for b in posted.reply.buttons if b["text"] == text)
    await clicked(loopback, value, thread=posted.reply.thread or posted.id, user=user)


async def clicked(loopback: LoopbackAdapter, value: str, *, thread: str, user: str = "alice",
                  channel: str = "#ops", user_id: str | None = None) -> None:
    assert loopback._handler is not None
    await loopback._handler(Message(adapter=loopback.name, channel=channel, user=user, text=value, thread=thread,
                                    mentioned=True, clicked=True, id=f"click-{user}-{value}", user_id=user_id))


async def questions(loopback: LoopbackAdapter, count: int) -> list[Posted]:
    posted = await loopback.wait_for(lambda p: len([x for x in p if "needs an answer" in x.text]) >= count)
    return [p for p in posted if "needs an answer" in p.text]


async def asked(squall: Squall, ref: str) -> dict[str, dict[str, Any]]:
    """The inquiries of the workflow `ref` started from chat, by task, as stored now."""
    (workflow,) = await squall.executions.list(action=ref)
    rows = [c for c in await children(squall, workflow["id"]) if c["runner"] == "inquirer"]
    return {c["context"]["workflow_task"]["task"]: await squall.executions.get(c["id"]) for c in rows}


async def _two_questions(squall: Squall, loopback: LoopbackAdapter) -> tuple[Posted, Posted]:
    await loopback.say("!release", user="alice", channel="#ops")
    posted = await questions(loopback, 2)
    db = next(p for p in posted if "DATABASE" in p.text)
    web = next(p for p in posted if "WEB" in p.text)
    assert db.reply.thread == web.reply.thread is not None  # both in the command's thread
    return db, web


async def test_a_click_answers_the_inquiry_its_button_names_not_the_newest_in_the_thread(chat) -> None:
    squall, loopback = chat
    db, _web = await _two_questions(squall, loopback)
    inquiries = await asked(squall, "wf.two")
    # Each button names its inquiry, within Slack's 2,000 characters for a button's value.
    assert db.reply.buttons == [{"text": "Yes", "value": f"yes:inquiry:{inquiries['ask_db']['id']}"},
                                {"text": "No", "value": f"no:inquiry:{inquiries['ask_db']['id']}"}]
    await click(loopback, db, "No")
    await loopback.wait_for(lambda p: any(x.text.startswith("Thanks alice") for x in p))
    inquiries = await asked(squall, "wf.two")
    assert inquiries["ask_db"]["status"] == "succeeded" and inquiries["ask_db"]["result"]["response"] == {"db": False}
    assert inquiries["ask_web"]["status"] == "pending"
    thanks = next(p for p in loopback.posted if p.text.startswith("Thanks alice"))
    assert inquiries["ask_db"]["id"] in thanks.text and thanks.reply.thread == db.reply.thread
    assert thanks.reply.buttons == []  # answered: no buttons come back


async def test_a_bare_answer_where_several_questions_wait_answers_none_and_names_them(chat) -> None:
    squall, loopback = chat
    db, _web = await _two_questions(squall, loopback)
    ids = {task: row["id"] for task, row in (await asked(squall, "wf.two")).items()}
    await loopback.say("no", user="alice", channel="#ops", thread=db.reply.thread)
    said = (await loopback.wait_for(lambda p: any("Several questions" in x.text for x in p)))[-1]
    assert ids["ask_db"] in said.text and ids["ask_web"] in said.text and "respond" in said.text
    assert said.reply.thread == db.reply.thread
    assert {row["status"] for row in (await asked(squall, "wf.two")).values()} == {"pending"}
    # Chatter that answers neither gets no reply; `respond <id>` names the one meant.
    await loopback.say("lunch first?", user="alice", channel="#ops", thread=db.reply.thread)
    await loopback.say(f"!respond {ids['ask_web']} yes", user="alice", channel="#ops", thread=db.reply.thread)
    await loopback.wait_for(lambda p: any(x.text.startswith("Thanks alice") for x in p))
    # Replies in a channel are sent in order: one to the chatter would be posted by now.
    assert [p.text for p in loopback.posted[loopback.posted.index(said) + 1:]
            if p.reply.thread == db.reply.thread and not p.text.startswith("Thanks alice")] == []
    inquiries = await asked(squall, "wf.two")
    assert inquiries["ask_web"]["result"]["response"] == {"web": True}
    assert inquiries["ask_db"]["status"] == "pending"


async def test_a_plain_button_value_posted_before_buttons_named_their_inquiry_still_answers(chat) -> None:
    """A question posted before an upgrade has buttons whose values are a bare `yes`/`no`: a click on
    one answers the question in the thread it was clicked in, as before."""
    squall, loopback = chat
    record = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN})
    (question,) = await questions(loopback, 1)
    await clicked(loopback, "no", thread=question.id)
    answered = await squall.executions.wait(record["id"], timeout=10)
    assert answered["status"] == "succeeded" and answered["result"]["response"] == {"continue": False}


async def test_a_refused_click_puts_the_question_back_as_asked(chat) -> None:
    """Slack and Mattermost take a clicked question's buttons off: a click that is refused (bob may not
    answer) edits the question back as it was asked, before the refusal is told, so the inquiry that
    still waits keeps its buttons; alice then answers with them, and an accepted answer edits nothing."""
    squall, loopback = chat
    record = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "users": ["alice"]})
    (question,) = await questions(loopback, 1)
    await click(loopback, question, "Yes", user="bob")
    refusal = (await loopback.wait_for(lambda p: any(x.text.startswith("Sorry bob") for x in p)))[-1]
    assert "may not respond" in refusal.text and refusal.reply.buttons == [] and refusal.reply.thread == question.id
    assert question.edits == [question.reply.text]  # edited back (the outbox sends a channel's replies in order)
    (edit,) = [row for row in await squall.db(squall.store.outbox_get_many, range(1, 100))
               if (row["payload"] or {}).get("edit") is not None]
    assert edit["payload"]["buttons"] == question.reply.buttons and edit["payload"]["asker"] is None
    assert (await squall.executions.get(record["id"]))["status"] == "pending"
    await click(loopback, question, "Yes", user="alice")
    answered = await squall.executions.wait(record["id"], timeout=10)
    assert answered["result"]["response"] == {"continue": True} and answered["result"]["responder"] == "alice"
    await loopback.wait_for(lambda p: any(x.text.startswith("Thanks alice") for x in p))
    assert question.edits == [question.reply.text]


async def test_a_click_that_leaves_the_inquiry_waiting_for_more_people_puts_the_question_back(chat) -> None:
    """`count: 2`: alice's click is recorded (1 of 2), and the question is edited back with its buttons
    (the platform took them off) for the second person, whose click then answers it."""
    squall, loopback = chat
    record = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "count": 2})
    (question,) = await questions(loopback, 1)
    await click(loopback, question, "Yes", user="alice")
    await loopback.wait_for(lambda p: any("recorded (1 of 2)" in x.text for x in p))
    assert question.edits == [question.reply.text]
    await click(loopback, question, "Yes", user="bob")
    answered = await squall.executions.wait(record["id"], timeout=10)
    assert [r["user"] for r in answered["result"]["responses"]] == ["alice", "bob"]
    await loopback.wait_for(lambda p: any(x.text.startswith("Thanks bob") for x in p))
    assert question.edits == [question.reply.text]  # answered: left as the platform shows it


async def test_a_click_on_an_answered_question_runs_nothing(chat) -> None:
    squall, loopback = chat
    record = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN})
    (question,) = await questions(loopback, 1)
    await squall.inquiries.respond(record["id"], {"continue": False}, "bob")
    await click(loopback, question, "Yes")
    stale = (await loopback.wait_for(lambda p: any("no longer waiting" in x.text for x in p)))[-1]
    assert "Nothing was run" in stale.text and stale.reply.buttons == []
    assert (await squall.executions.get(record["id"]))["result"]["response"] == {"continue": False}


async def test_a_command_typed_in_a_free_text_questions_thread_runs_as_the_command(chat) -> None:
    """`!help` (a built-in) or `!greet bob` (an alias) typed where a free-text question waits is the
    command, never the answer; text that names no command is the answer."""
    squall, loopback = chat
    await loopback.say("!deploy-why", user="alice", channel="#ops")
    (question,) = await questions(loopback, 1)
    thread = question.reply.thread
    await loopback.say("!help", user="alice", channel="#ops", thread=thread)
    await loopback.say("@squall greet bob", user="alice", channel="#ops", thread=thread, mentioned=True)
    await loopback.wait_for(lambda p: any("core.echo succeeded" in x.text and "bob" in x.text for x in p))
    assert any("respond" in p.text and "help" in p.text for p in loopback.posted)  # help's listing
    assert (await asked(squall, "wf.why"))["ask"]["status"] == "pending"
    await loopback.say("!hotfix for the login outage", user="alice", channel="#ops", thread=thread)
    await loopback.wait_for(lambda p: any(x.text.startswith("Thanks alice") for x in p))
    assert (await asked(squall, "wf.why"))["ask"]["result"]["response"] == {"reason": "hotfix for the login outage"}


async def test_chatter_of_people_not_asked_is_no_answer_to_a_free_text_question(chat) -> None:
    squall, loopback = chat
    await loopback.say("!deploy-why", user="alice", channel="#ops")
    (question,) = await questions(loopback, 1)
    await loopback.say("looks fine to me", user="bob", channel="#ops", thread=question.reply.thread)
    assert (await asked(squall, "wf.why"))["ask"]["status"] == "pending"
    await loopback.say("customers are waiting", user="alice", channel="#ops", thread=question.reply.thread)
    await loopback.wait_for(lambda p: any(x.text.startswith("Thanks alice") for x in p))
    assert (await asked(squall, "wf.why"))["ask"]["result"]["response"] == {"reason": "customers are waiting"}
    # bob is not asked (users: [alice]): his chatter got no reply (one would be posted by now, in order).
    assert not any("bob" in p.text for p in loopback.posted)


async def test_without_threads_a_command_addressed_by_name_runs_and_is_no_answer(home: Path) -> None:
    """On IRC the channel is the question's thread: `squall: greet bob` where a free-text question waits
    runs greet; `squall: <text>` that names no command is the answer."""
    write(home / "config.yml", (home / "config.yml").read_text() + "routes:\n  ops: {adapter: irc, channel: '#ops'}\n")
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 0.1.0\n")
    write(home / "packs" / "demo" / "aliases" / "greet.yaml",
          "name: greet\naction_ref: core.echo\nformats: ['greet {{message}}']\n")
    irc = LoopbackAdapter(name="irc", capabilities=Capabilities(threads=False, edits=False, rich=False, files=False,
                                                                max_length=1600))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[irc])
    await squall.chat.start()
    try:
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": FREE_TEXT}, {"user": "wf"})
        await questions(irc, 1)
        await irc.say("squall: greet bob", user="carol", channel="#ops", mentioned=True)
        await irc.wait_for(lambda p: any("core.echo succeeded" in x.text and "bob" in x.text for x in p))
        assert len(await squall.executions.list(action="core.echo")) == 1
        assert (await squall.executions.get(record["id"]))["status"] == "pending"
        await irc.say("squall: the fix is ready", user="carol", channel="#ops", mentioned=True)
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["result"]["response"] == {"reason": "the fix is ready"}
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_without_threads_a_bare_answer_where_two_questions_wait_names_both(home: Path) -> None:
    write(home / "config.yml", (home / "config.yml").read_text() + "routes:\n  ops: {adapter: irc, channel: '#ops'}\n")
    irc = LoopbackAdapter(name="irc", capabilities=Capabilities(threads=False, edits=False, rich=False, files=False,
                                                                max_length=1600))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[irc])
    await squall.chat.start()
    try:
        first = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN}, {"user": "wf"})
        second = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN}, {"user": "wf"})
        await questions(irc, 2)
        await irc.say("squall: yes", user="carol", channel="#ops", mentioned=True)
        said = (await irc.wait_for(lambda p: any("Several questions" in x.text for x in p)))[-1]
        assert set(re.findall(r"[0-9a-f]{24}", said.text)) == {first["id"], second["id"]}
        assert {(await squall.executions.get(r["id"]))["status"] for r in (first, second)} == {"pending"}
    finally:
        await squall.chat.stop()
        await squall.close()


#: A question whose answer is a choice between two words that are also built-ins' names.
DECISION = {"type": "object", "properties": {"decision": {"type": "string", "enum": ["approve", "deny"],
                                                          "required": True}}}
IRC = Capabilities(threads=False, edits=False, rich=False, files=False, buttons=False, max_length=1600)


@pytest.fixture
async def irc(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter]]:
    """A chat without threads or buttons (IRC) whose route `ops` is #ops, with the alias `greet <who>`
    and `yes [<what>]` (core.echo): a word a yes/no question's answer starts with."""
    write(home / "config.yml", (home / "config.yml").read_text() + "routes:\n  ops: {adapter: irc, channel: '#ops'}\n")
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 0.1.0\n")
    write(home / "packs" / "demo" / "aliases" / "greet.yaml",
          "name: greet\naction_ref: core.echo\nformats: ['greet {{message}}']\n")
    write(home / "packs" / "demo" / "aliases" / "yes.yaml",
          "name: yes-all\naction_ref: core.echo\nformats: ['yes {{message=all}}']\n")
    adapter = LoopbackAdapter(name="irc", capabilities=IRC)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    assert squall.registry.errors == []
    await squall.chat.start()
    try:
        yield squall, adapter
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_without_threads_a_choice_named_like_a_builtin_answers_the_question_it_asks(irc) -> None:
    """On IRC an answer is addressed to the bot: `squall: approve` where a question offering approve/deny
    waits answers it, although `approve` is a built-in's name too. From someone the question does not
    ask (users: [irc:alice], the nick: a bare name is never an IRC nick) it is no answer but the command,
    as typed anywhere else."""
    squall, adapter = irc
    record = await squall.executions.request("core.ask", {"route": "ops", "schema": DECISION,
                                                          "users": ["irc:alice"]}, {"user": "wf"})
    await questions(adapter, 1)
    await adapter.say("squall: approve", user="bob", channel="#ops", mentioned=True)
    await adapter.wait_for(lambda p: any("approve <approval-id>" in x.text for x in p))  # the built-in's answer
    assert (await squall.executions.get(record["id"]))["status"] == "pending"
    await adapter.say("squall: approve", user="alice", channel="#ops", mentioned=True)
    answered = await squall.executions.wait(record["id"], timeout=10)
    assert answered["result"]["response"] == {"decision": "approve"}
    assert answered["result"]["responder"] == "irc:alice"
    await adapter.wait_for(lambda p: any(x.text.startswith("Thanks alice") for x in p))


async def test_without_threads_yes_answers_a_yes_no_question_though_an_alias_is_named_yes(irc) -> None:
    squall, adapter = irc
    assert squall.chat.dispatcher.commands.match("yes").alias.name == "yes-all"  # `yes` alone is that command
    record = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN}, {"user": "wf"})
    await questions(adapter, 1)
    await adapter.say("squall: yes", user="carol", channel="#ops", mentioned=True)
    answered = await squall.executions.wait(record["id"], timeout=10)
    assert answered["result"]["response"] == {"continue": True}
    await adapter.wait_for(lambda p: any(x.text.startswith("Thanks carol") for x in p))
    assert await squall.executions.list(action="core.echo") == []  # the alias did not run as well


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the alias matcher is asked about (`AliasMatcher.match` / `match_all`), one per lookup:
    a `match` that falls back on `match_all` is one."""
    from aliases.matcher import AliasMatcher

    asked: list[str] = []
    depth = [0]

    def counting(original: Any) -> Any:
        def wrapper(self: AliasMatcher, text: str) -> Any:
            if depth[0] == 0:
                asked.append(text)
            depth[0] += 1
            try:
                return original(self, text)
            finally:
                depth[0] -= 1
        return wrapper

    monkeypatch.setattr(AliasMatcher, "match", counting(AliasMatcher.match))
    monkeypatch.setattr(AliasMatcher, "match_all", counting(AliasMatcher.match_all))
    return asked


async def test_a_command_in_a_thread_is_matched_once_whether_or_not_a_question_waits(chat, lookups) -> None:
    """A command typed in a thread looks aliases up once: where no question waits nothing inquiry-related
    matches it, and where a free-text question waits the match that tells it is a command is the one run."""
    squall, loopback = chat
    await loopback.say("!greet ann", user="alice", channel="#ops", thread="elsewhere")
    assert lookups == ["greet ann"]
    await loopback.say("!deploy-why", user="alice", channel="#ops")
    (question,) = await questions(loopback, 1)
    lookups.clear()
    await loopback.say("!greet bob", user="alice", channel="#ops", thread=question.reply.thread)
    assert lookups == ["greet bob"]
    await loopback.wait_for(lambda p: sum("core.echo succeeded" in x.text for x in p) == 2)
    assert (await asked(squall, "wf.why"))["ask"]["status"] == "pending"


async def test_without_threads_a_mention_is_matched_once_when_no_question_waits(irc, lookups) -> None:
    _squall, adapter = irc
    await adapter.say("squall: greet ann", user="carol", channel="#ops", mentioned=True)
    assert lookups == ["greet ann"]
    await adapter.wait_for(lambda p: any("core.echo succeeded" in x.text for x in p))


async def _said(adapter: LoopbackAdapter, text: str, *, user: str, user_id: str | None = None) -> str:
    """What the bot answers `user` (of platform user id `user_id`) typing `text` to it in #ops (addressed
    by name, as on IRC)."""
    before = len(adapter.posted)
    await adapter.say(text, user=user, channel="#ops", mentioned=True, user_id=user_id)
    posted = await adapter.wait_for(lambda p: len(p) > before)
    return posted[before].text


async def test_a_nick_answering_together_with_its_namesake_counts_once(irc) -> None:
    """The chat compared the nick carol with the earlier answerers by name before the service's lock, on the
    inquiry as it read it; the service, under the lock, compared `irc:carol` as given. So carol answering
    through the API while her nick's answer waited for the lock counted twice towards a `count` of 2, one
    person approving alone. The service now compares by name, under the lock, for the chat."""
    squall, adapter = irc
    twice = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "count": 2},
                                            {"user": "wf"})
    await questions(adapter, 1)
    lock = squall.inquiries._answering
    await lock.acquire()
    try:
        api = asyncio.ensure_future(squall.inquiries.respond(twice["id"], {"continue": True}, "carol"))
        nick = asyncio.ensure_future(_said(adapter, f"squall: respond {twice['id']} yes", user="carol"))
        for _ in range(500):  # both answers read the inquiry and wait for the lock, the API's first
            if len(lock._waiters or ()) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(lock._waiters or ()) == 2
    finally:
        lock.release()
    await api
    assert await nick == (f"Sorry carol: carol already answered inquiry {twice['id']} (by that name, on any "
                          "platform); each person counts once")
    answered = await squall.executions.get(twice["id"])
    assert answered["status"] == "pending" and [r["user"] for r in answered["result"]["responses"]] == ["carol"]


async def test_an_irc_nick_answers_only_an_inquiry_that_names_it_qualified(irc) -> None:
    """Anyone may `/nick carol`: an inquiry's `users: [carol]` names the person the platform says wrote
    (Slack's, the API's carol), never the IRC nick, which answers only where the inquiry names it
    `irc:carol`, and is recorded under that name. A free-text question for carol does not take the
    nick's chatter for her answer either."""
    squall, adapter = irc
    carols = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "users": ["carol"]},
                                             {"user": "wf"})
    nicks = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "users": ["irc:carol"]},
                                            {"user": "wf"})
    await questions(adapter, 2)
    said = await _said(adapter, f"squall: respond {carols['id']} yes", user="carol")
    assert said == (f"Sorry carol: irc:carol may not respond to inquiry {carols['id']}: only carol may, and "
                    "irc:carol is not one of its users")
    assert (await squall.executions.get(carols["id"]))["status"] == "pending"
    assert await _said(adapter, f"squall: respond {nicks['id']} yes", user="carol") == (
        f"Thanks carol, inquiry {nicks['id']} answered: {{\"continue\": true}}")
    answered = await squall.executions.get(nicks["id"])
    assert answered["result"]["responder"] == "irc:carol" and answered["result"]["response"] == {"continue": True}
    await squall.inquiries.respond(carols["id"], {"continue": False}, "carol")  # the API's carol
    assert (await squall.executions.get(carols["id"]))["result"]["responder"] == "carol"
    free = await squall.executions.request("core.ask", {"route": "ops", "schema": FREE_TEXT, "users": ["carol"]},
                                           {"user": "wf"})
    await questions(adapter, 3)
    assert not (await _said(adapter, "squall: ship it", user="carol")).startswith("Thanks")  # no such command
    assert (await squall.executions.get(free["id"]))["status"] == "pending"


async def test_an_irc_nick_counts_as_its_namesake_for_self_approval_and_once_each(irc) -> None:
    """By name, the stricter reading (as approvals): the nick carol, though `irc:carol` to an inquiry's
    `users`, may not answer what carol started when `self_approval` is false, nor answer again what carol
    answered elsewhere (the API), since it may be her."""
    squall, adapter = irc
    own = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "users": ["irc:carol"],
                                                       "self_approval": False}, {"user": "carol"})
    twice = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN, "count": 2},
                                            {"user": "wf"})
    await questions(adapter, 2)
    assert await _said(adapter, f"squall: respond {own['id']} yes", user="carol") == (
        f"Sorry carol: carol started the workflow of inquiry {own['id']} (by that name, on any platform): someone "
        "else must answer it")
    await squall.inquiries.respond(twice["id"], {"continue": True}, "carol")
    assert await _said(adapter, f"squall: respond {twice['id']} yes", user="carol") == (
        f"Sorry carol: carol already answered inquiry {twice['id']} (by that name, on any platform); each person "
        "counts once")
    await _said(adapter, f"squall: respond {twice['id']} yes", user="dave")
    answered = await squall.executions.get(twice["id"])
    assert [r["user"] for r in answered["result"]["responses"]] == ["carol", "irc:dave"]
    assert (await squall.executions.get(own["id"]))["status"] == "pending"
    [denied, *_] = await squall.db(squall.store.audit_list, 10, "chat.inquiry.denied")
    assert denied["actor"] == "carol" and denied["target"] == twice["id"] and "already answered" in \
        denied["detail"]["reason"]


@pytest.fixture
async def slack(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter]]:
    """The loopback chat (threads, buttons) as the adapter `slack`, which says who wrote by user id too
    (`Message.user_id`); its route `ops` is #ops."""
    write(home / "config.yml",
          (home / "config.yml").read_text() + "routes:\n  ops: {adapter: slack, channel: '#ops'}\n")
    adapter = LoopbackAdapter(name="slack")
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    await squall.chat.start()
    try:
        yield squall, adapter
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_a_slack_user_answers_an_inquiry_naming_them_qualified_or_by_user_id_and_no_one_else(slack) -> None:
    """An inquiry's `users` name a Slack person as `auth` does: `slack:carol` by her name there, and
    `slack:U0CAROL01` by her user id whatever her name now, whether she answers with `respond`, a
    button or a bare answer in the question's thread. dave is refused both, and his chatter in a
    free-text question's thread is no answer."""
    squall, adapter = slack
    by_name = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN,
                                                           "users": ["slack:carol"]}, {"user": "wf"})
    by_id = await squall.executions.request("core.ask", {"route": "ops", "schema": BOOLEAN,
                                                         "users": ["slack:U0CAROL01"]}, {"user": "wf"})
    free = await squall.executions.request("core.ask", {"route": "ops", "schema": FREE_TEXT,
                                                        "users": ["slack:U0CAROL01"]}, {"user": "wf"})
    posted = await questions(adapter, 3)
    for inquiry in (by_name, by_id):
        said = await _said(adapter, f"!respond {inquiry['id']} yes", user="dave", user_id="U0DAVE001")
        assert said.startswith(f"Sorry dave: dave may not respond to inquiry {inquiry['id']}: only ")
        assert said.endswith("and dave is not one of its users")
    assert await _said(adapter, f"!respond {by_name['id']} yes", user="carol", user_id="U0CAROL01") == (
        f"Thanks carol, inquiry {by_name['id']} answered: {{\"continue\": true}}")
    question = next(p for p in posted if by_id["id"] in p.text)
    await clicked(adapter, f"yes:inquiry:{by_id['id']}", thread=question.id, user="carol.renamed",
                  user_id="U0CAROL01")
    answered = await squall.executions.wait(by_id["id"], timeout=10)
    assert answered["result"]["responder"] == "carol.renamed" and answered["result"]["response"] == {"continue": True}
    thread = next(p for p in posted if free["id"] in p.text).id
    await adapter.say("lunch?", user="dave", channel="#ops", thread=thread, user_id="U0DAVE001")
    await adapter.say("the freeze ends today", user="carol", channel="#ops", thread=thread, user_id="U0CAROL01")
    answered = await squall.executions.wait(free["id"], timeout=10)
    assert answered["result"]["response"] == {"reason": "the freeze ends today"}
    assert [r["user"] for r in answered["result"]["responses"]] == ["carol"]
