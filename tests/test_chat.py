"""The ChatOps core through the loopback adapter: a person types, Squall answers in the thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import textwrap
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import Capabilities, Reply
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat import commands, dispatcher
from bot.chat.bot import ChatBot
from bot.chat.help import execution_line
from bot.chat.outbox import Outbox
from engine import templates
from engine.config import load_config
from engine.events import EXECUTION_FINISHED
from engine.storage import chat_sessions
from tests.conftest import commit_groups, write
from tests.test_cli import SQUALL


def _config(home: Path, extra: str = "") -> None:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        auth:
          admins: [root-admin]
          groups:
            operators: [olivia]
        routes:
          ops: {{adapter: loopback, channel: "#alerts"}}
        {extra}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          times: {type: integer, default: 1}
          cmd: {default: 'for i in $(seq {{times}}); do echo "hello {{who}}"; done', immutable: true}
        notify:
          on-success:
            message: "greeted {{ action_parameters.who }}"
            routes: [ops]
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        description: Greet someone.
        formats:
          - "greet {{who}}"
          - "greet {{who}} {{times}} times"
        ack:
          format: "greeting {{ execution.parameters.who }}"
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "actions" / "snooze.yaml", """
        name: snooze
        runner_type: local-shell-cmd
        parameters:
          seconds: {type: integer, required: true}
          cmd: {default: "sleep {{ seconds }}", immutable: true}
    """)
    write(pack / "aliases" / "sleepy.yaml", """
        name: sleepy
        action_ref: demo.snooze
        description: Sleep a while.
        formats: ["nap {{seconds}}"]
    """)
    write(pack / "aliases" / "patient.yaml", """
        name: patient
        action_ref: demo.greet
        description: Greet, with a time limit the person may choose.
        formats: ["greet slowly {{who}}"]
        allow_overrides: [timeout]
    """)
    write(pack / "aliases" / "remote_greet.yaml", """
        name: remote_greet
        action_ref: demo.greet
        description: Greet, where the runner's cwd may be named in the command.
        formats: ["greet {{who}} from here", "greet {{who}} from {{cwd}}"]
    """)
    write(pack / "actions" / "wipe.yaml", """
        name: wipe
        runner_type: local-shell-cmd
        parameters:
          target: {type: string, required: true}
          cmd: {default: 'echo wiped {{target}}', immutable: true}
    """)
    write(pack / "aliases" / "dangerous.yaml", """
        name: dangerous
        action_ref: demo.wipe
        description: Wipe something (asks first).
        formats: ["wipe {{target}}"]
        confirm: {ttl: 30}
        immutable_parameters:
          kwarg_op: "--"
    """)


@contextlib.asynccontextmanager
async def loopback_chat(home: Path, name: str = "loopback") -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    """Squall started on `home`'s config with the loopback chat (the test backend) as adapter `name`
    (`console`: the terminal, as permissions see it), stopped after."""
    loopback = LoopbackAdapter(name)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    bot = squall.chat
    await bot.start()
    try:
        yield squall, bot, loopback
    finally:
        await bot.stop()
        await squall.close()


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    _config(home)
    async with loopback_chat(home) as started:
        yield started


async def settle(squall: Squall, bot: ChatBot) -> None:
    """Wait for running executions, their result listeners and the outbox."""
    for _ in range(500):
        await bot.outbox.drain(10)
        if not (squall.executor.running or squall.executions.notifying or bot.outbox.pending):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("chat did not settle")


async def test_command_gets_ack_then_result_in_its_thread(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!greet world", user="alice", channel="#ops")
    await settle(squall, bot)
    texts = [p.reply.text for p in loopback.posted if p.reply.channel == "#ops"]
    assert texts[0] == "greeting world"
    assert "hello world" in texts
    threads = {p.reply.thread for p in loopback.posted if p.reply.channel == "#ops"}
    assert threads == {"m1"}  # all in the thread of the command message
    ack = loopback.posted[0]
    assert ack.edits and "succeeded" in ack.edits[-1]  # the ack now shows the final status

    [execution] = await squall.executions.list(action="demo.greet")
    chat_context = execution["context"]["chat"]
    assert chat_context == {"adapter": "loopback", "channel": "#ops", "user": "alice", "thread": "m1",
                            "message_id": "m1", "alias": "demo.greet"}
    assert execution["context"]["api_user"] == "alice"
    assert execution["context"]["source_channel"] == "#ops"


def _nothing_alias(home: Path) -> None:
    """The config and a `!nothing` alias of core.noop with a text-only result."""
    _config(home)
    write(home / "packs" / "demo" / "aliases" / "nothing.yaml", """
        name: nothing
        action_ref: core.noop
        description: Do nothing.
        formats: ["nothing"]
        result: {format: "did nothing"}
    """)


async def test_a_noop_command_s_ack_request_and_result_share_one_commit_ack_first(home: Path) -> None:
    """A noop ends in its request's commit, and the ack is stored in that transaction, before the
    result: the person sees the ack, edited to the final status, then the result."""
    _nothing_alias(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        with commit_groups(squall) as groups:
            await loopback.say("!nothing", channel="#ops")
            await settle(squall, bot)
        [execution] = await squall.executions.list(action="core.noop")
        ack, result = loopback.posted
        assert ack.reply.text == f"Running core.noop ({execution['id']})" and ack.reply.thread == "m1"
        assert ack.edits and "succeeded" in ack.edits[-1]
        assert result.reply.text == "did nothing" and result.reply.thread == "m1"
        assert ["_store"] in groups  # one write, one commit: the request with its ack, its end and its result
        assert squall.store.outbox_keyed_id(execution["id"], "ack") < squall.store.outbox_keyed_id(execution["id"],
                                                                                                     "result")


def _ticking_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reading of the clock (the engine's and the store's) a microsecond after the one before: two rows
    carry the same time only if they were given one reading."""
    from engine import executions as engine_executions
    from engine import storage

    start, ticks = storage.utcnow(), iter(range(1, 10**9))

    def utcnow() -> datetime:
        return start + timedelta(microseconds=next(ticks))

    monkeypatch.setattr(storage, "utcnow", utcnow)
    monkeypatch.setattr(engine_executions, "utcnow", utcnow)


@pytest.mark.parametrize("alias", ["nothing", "greet"])
async def test_a_commands_audit_event_and_result_carry_its_request_and_end_times(
        home: Path, monkeypatch: pytest.MonkeyPatch, alias: str) -> None:
    """The audit event stored with a chat command's request carries the request's time, and its result stored
    with the execution's end (as it was stored: a noop; or after its run: a shell command) the end's, not a
    reading of the clock each; the ack, and what other callers store, still read the clock."""
    _nothing_alias(home)
    _ticking_clock(monkeypatch)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!nothing" if alias == "nothing" else "!greet world", channel="#ops")
        await settle(squall, bot)
        [execution] = await squall.executions.list()
        stored = squall.store.get_execution(execution["id"])
        [event] = await squall.db(squall.store.audit_list, 10, "chat.execution")
        ack = squall.store.outbox_get(squall.store.outbox_keyed_id(execution["id"], "ack"))
        result = squall.store.outbox_get(squall.store.outbox_keyed_id(execution["id"], "result"))
        assert event["detail"]["execution"] == execution["id"]
        assert event["timestamp"] == stored["start_timestamp"] < stored["end_timestamp"] == result["created_at"]
        assert ack["created_at"] not in (stored["start_timestamp"], stored["end_timestamp"])
        squall.store.audit_add("test.event", "ann", "test", None, {})
        [other] = await squall.db(squall.store.audit_list, 1)
        [(other_id, _)] = squall.store.outbox_add_keyed("y", "result",
                                                        [("loopback", "#ops", {"text": "y"}, "result", "skipped")])
        assert other["event"] == "test.event" and other["timestamp"] > result["created_at"]
        assert squall.store.outbox_get(other_id)["created_at"] > other["timestamp"]


async def test_a_finished_execution_with_nothing_to_tell_starts_no_task(chat) -> None:
    """Every finished execution is published to every listener: those with nothing to do (no notify, no
    inquiry, no rule on the action trigger, a result already stored) answer None, and no task is made
    for it. A task each would be a cost every command pays."""
    squall, bot, loopback = chat
    await loopback.say("!greet world", channel="#ops")
    await settle(squall, bot)
    [execution] = await squall.executions.list()
    assert execution["status"] == "succeeded"
    # core.noop has no notify, and this one is not from chat: the dispatcher has nothing to post either.
    quiet = {**execution, "action": "core.noop", "runner": "noop", "context": {}}
    squall.events.publish(EXECUTION_FINISHED, quiet)
    assert squall.events.busy == 0
    # The same listeners do start one when there is something to tell: an inquiry that timed out in chat.
    asked = {**quiet, "runner": "inquirer", "status": "timeout",
             "result": {"chat": {"adapter": "loopback", "channel": "#ops", "thread": None}}}
    squall.events.publish(EXECUTION_FINISHED, asked)
    assert squall.events.busy == 1
    await settle(squall, bot)
    assert any("expired before anyone answered" in posted.reply.text for posted in loopback.posted)


def _where_rendered(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(ack or result, the thread it was rendered on) of each render of an alias's replies."""
    seen: list[tuple[str, str]] = []
    for module, name in ((commands, "render_ack"), (dispatcher, "render_result")):
        def spy(*args: Any, _real: Any = getattr(module, name), _name: str = name) -> Any:
            seen.append((_name, threading.current_thread().name))
            return _real(*args)
        monkeypatch.setattr(module, name, spy)
    return seen


async def test_ack_and_result_render_on_the_loop_when_brief(chat, monkeypatch: pytest.MonkeyPatch) -> None:
    squall, bot, loopback = chat
    seen = _where_rendered(monkeypatch)
    await loopback.say("!greet world", channel="#ops")
    await settle(squall, bot)
    assert [p.reply.text for p in loopback.posted if p.reply.thread == "m1"] == ["greeting world", "hello world"]
    assert seen == [("render_ack", "MainThread"), ("render_result", "MainThread")]  # no thread hop


async def test_a_render_too_long_for_the_loop_is_done_on_a_render_thread(home: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack's slow result format (or a loop over a huge result) would stop every other command for up
    to templates.max_seconds: past templates.BRIEF_SECONDS it is given up on the loop and rendered on a
    render thread instead, with the whole limit, and the reply is the same, posted once."""
    _config(home)
    write(home / "packs" / "demo" / "aliases" / "slow.yaml", """
        name: slow
        action_ref: demo.greet
        description: A result format that takes a while.
        formats: ["slowly greet {{who}}"]
        ack: {enabled: false}
        result:
          format: "{% for i in range(300) %}{% for j in range(1000) %}{% endfor %}{% endfor %}done {{
            execution.parameters.who }}"
    """)
    seen = _where_rendered(monkeypatch)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!slowly greet world", channel="#ops")
        await settle(squall, bot)
        assert [p.reply.text for p in loopback.posted if p.reply.thread == "m1"] == ["done world"]
        results = [thread for what, thread in seen if what == "render_result"]
        assert results[0] == "MainThread" and results[-1].startswith("squall-render")  # given up on the loop
        assert "render_ack" not in {what for what, _thread in seen}  # acks off: nothing to render or store

        seen.clear()
        monkeypatch.setattr(templates, "BRIEF_SECONDS", 0.0)  # every render is too long for the loop
        await loopback.say("!greet you", channel="#ops")
        await settle(squall, bot)
        [thread] = {p.reply.thread for p in loopback.posted if p.reply.text == "greeting you"}
        assert [p.reply.text for p in loopback.posted if p.reply.thread == thread] == ["greeting you", "hello you"]
        assert [(what, thread.startswith("squall-render")) for what, thread in seen] == [
            ("render_ack", False), ("render_ack", True),
            ("render_result", False), ("render_result", True)]  # tried once on the loop, then on a thread
        [ack] = [p for p in loopback.posted if p.reply.text == "greeting you"]
        assert ack.edits and "succeeded" in ack.edits[-1]  # the result stored by the listener edits the ack


async def test_most_specific_format_wins_and_typed_values_cast(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!greet bob 3 times")
    await settle(squall, bot)
    assert "hello bob\nhello bob\nhello bob" in loopback.texts()


async def test_only_addressed_messages_are_handled(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("greet nobody")  # no prefix, no mention: chatter
    await loopback.say("squall: greet mentioned", mentioned=True)
    await loopback.say("greet direct", direct=True, channel="D1")
    await settle(squall, bot)
    texts = loopback.texts()
    assert not any("nobody" in t for t in texts)
    assert "hello mentioned" in texts and "hello direct" in texts


async def test_unknown_command_suggests(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!gret world")
    await settle(squall, bot)
    [answer] = loopback.texts()
    assert "I don't know" in answer and "greet" in answer


async def test_help_lists_only_what_the_user_may_run(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!help", user="bob", channel="#ops")
    await settle(squall, bot)
    bob_help = loopback.texts()[-1]
    assert "greet <who>" in bob_help or "greet {{who}}" in bob_help
    assert "run {{cmd}}" not in bob_help  # squall.run is for operators and the console only
    await loopback.say("!help", user="olivia", channel="#ops")
    await settle(squall, bot)
    assert "run {{cmd}}" in loopback.texts()[-1]
    await loopback.say("!help greet", user="bob")
    await settle(squall, bot)
    assert "echo" not in loopback.texts()[-1]


async def test_denial_is_answered_and_audited(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!run id", user="bob", channel="#ops")
    await settle(squall, bot)
    assert "may not run" in loopback.texts()[-1]
    assert await squall.executions.list(action="core.local") == []
    [entry] = await squall.db(squall.store.audit_list, 10, "chat.denied")
    assert entry["actor"] == "bob" and entry["target"] == "squall.run"
    assert entry["detail"]["command"] == "run id"  # what was typed, without the prefix

    await loopback.say("!run echo allowed", user="olivia", channel="#ops")  # operators group
    await settle(squall, bot)
    assert any("allowed" in t for t in loopback.texts())


async def test_confirmation_needs_yes_from_the_same_user(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!wipe db1", user="alice")
    await settle(squall, bot)
    assert "Reply `!yes`" in loopback.texts()[-1]  # as it reaches Squall in a channel: addressed
    assert loopback.posted[-1].reply.buttons  # buttons where the platform has them
    await loopback.say("!yes", user="mallory")  # someone else cannot confirm it
    await settle(squall, bot)
    assert await squall.executions.list(action="demo.wipe") == []
    await loopback.say("!yes", user="alice")
    await settle(squall, bot)
    assert any("wiped db1" in t for t in loopback.texts())

    await loopback.say("wipe db3", user="alice", channel="alice", direct=True)
    await settle(squall, bot)
    assert "Reply `yes`" in loopback.texts("alice")[-1]  # in a private message a bare `yes` reaches Squall
    await loopback.say("no", user="alice", channel="alice", direct=True)

    await loopback.say("!wipe db2", user="alice")
    await loopback.say("!no", user="alice")
    await settle(squall, bot)
    assert not any("wiped db2" in t for t in loopback.texts())


def _confirmations_stored(squall: Squall) -> list[tuple[str, str]]:
    with squall.store.engine.connect() as db:
        return [(key, state) for key, state in db.execute(sa.select(chat_sessions.c.key, chat_sessions.c.state))
                if key.startswith("confirm:")]


async def _asked_to_wipe(home: Path) -> None:
    """alice types a command of a confirming alias; Squall stops before her answer (a restart)."""
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe db1", user="alice")
        await settle(squall, bot)
        assert "Reply `!yes`" in loopback.texts()[-1]
        [(key, state)] = _confirmations_stored(squall)
        assert json.loads(key.removeprefix("confirm:")) == ["loopback", "#ops", "alice"]
        # parameters may be secrets; quoted, as a random token can hold db1 but never a quote
        assert '"db1"' not in state and '"db1"' in squall.keys.decrypt(state)


async def test_a_confirmation_asked_before_a_restart_is_answered_after_it(home: Path) -> None:
    await _asked_to_wipe(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="mallory")  # still only the one asked may confirm it
        await settle(squall, bot)
        assert await squall.executions.list(action="demo.wipe") == []
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert any("wiped db1" in t for t in loopback.texts())
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["parameters"]["target"] == "db1" and execution["context"]["user"] == "alice"
        assert _confirmations_stored(squall) == []  # taken once
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="alice")  # nothing is held any more: it does not run again
        await settle(squall, bot)
        assert len(await squall.executions.list(action="demo.wipe")) == 1


async def test_a_confirmation_taken_up_after_a_restart_is_authorised_again(home: Path) -> None:
    await _asked_to_wipe(home)
    config = (home / "config.yml").read_text()  # the restart brings a rule that denies alice the alias
    rule = "  aliases:\n    demo.dangerous: {deny: {users: [alice]}}\n"
    (home / "config.yml").write_text(config.replace("  admins: [root-admin]\n", "  admins: [root-admin]\n" + rule))
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert loopback.texts()[-1].startswith("Sorry alice, you may not run that: alice is denied demo.dangerous")
        assert await squall.executions.list(action="demo.wipe") == []
        [denied] = await squall.db(squall.store.audit_list, 10, "chat.denied")
        assert denied["actor"] == "alice" and denied["target"] == "demo.dangerous"


async def test_a_confirmation_whose_alias_changed_over_a_restart_is_dropped(home: Path, caplog) -> None:
    await _asked_to_wipe(home)
    alias = home / "packs" / "demo" / "aliases" / "dangerous.yaml"
    alias.write_text(alias.read_text().replace("wipe {{target}}", "erase {{target}}"))
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!yes", user="alice")
        await settle(squall, bot)
        assert await squall.executions.list(action="demo.wipe") == []
        assert _confirmations_stored(squall) == []
    assert 'demo.dangerous no longer has the format "wipe {{target}}"' in caplog.text


async def test_builtins_executions_cancel_retry(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!nap 30", user="alice")
    for _ in range(1500):  # up to 30 s on a busy machine
        running = await squall.executions.list(status="running")
        if running:
            break
        await asyncio.sleep(0.02)
    [execution] = running
    await loopback.say("!executions", user="alice")
    await loopback.say(f"!cancel {execution['id']}", user="alice")
    await settle(squall, bot)
    assert (await squall.executions.get(execution["id"]))["status"] == "canceled"
    assert any(execution["id"] in t for t in loopback.texts())

    await loopback.say("!greet again")
    await settle(squall, bot)
    [greet] = await squall.executions.list(action="demo.greet")
    await loopback.say(f"!retry {greet['id']}")
    await settle(squall, bot)
    assert len(await squall.executions.list(action="demo.greet")) == 2
    await loopback.say(f"!execution {greet['id']}")
    await settle(squall, bot)
    assert "hello again" in loopback.texts()[-1]


def _stored_execution(squall: Squall, number: int, start: datetime, context: dict[str, Any]) -> str:
    """An execution row as the engine stores one, started at `start` with `context`; its id."""
    execution_id = f"{number:024x}"
    squall.store.insert_execution({
        "id": execution_id, "action": "core.noop", "runner": "noop", "status": "succeeded", "parameters": {},
        "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None, "context": context, "log": [],
        "parent": None, "runner_info": None, "start_timestamp": start, "end_timestamp": start})
    return execution_id


async def test_executions_finds_this_channel_s_own_however_many_others_came_since(chat) -> None:
    """`!executions` lists what was started from this channel: 201 executions since from the API,
    another channel and a channel of the same name on another adapter must not hide it."""
    squall, bot, loopback = chat
    await loopback.say("!greet world", user="alice", channel="#ops")
    await settle(squall, bot)
    [mine] = await squall.executions.list(action="demo.greet")
    later = datetime.now(UTC) + timedelta(minutes=1)
    others = [{"source": "api", "user": "ci"},
              {"source": "chat", "user": "alice", "chat": {"adapter": "loopback", "channel": "#dev"}},
              {"source": "chat", "user": "alice", "chat": {"adapter": "irc", "channel": "#ops"}}]
    for number in range(1, 202):
        _stored_execution(squall, number, later + timedelta(seconds=number), others[number % 3])
    answer = await _said_to(loopback, squall, bot, "!executions", "alice")
    assert answer.splitlines() == [execution_line(mine)]


async def test_executions_lists_the_ten_newest_from_this_channel_newest_first(chat) -> None:
    squall, bot, loopback = chat
    start = datetime.now(UTC) - timedelta(hours=1)
    here = {"source": "chat", "user": "alice", "chat": {"adapter": "loopback", "channel": "#ops", "thread": "t"}}
    ids = [_stored_execution(squall, number, start + timedelta(seconds=number), here) for number in range(1, 13)]
    answer = await _said_to(loopback, squall, bot, "!executions", "alice")
    assert [line.rsplit("(", 1)[1].rstrip(")") for line in answer.splitlines()] == ids[:1:-1]


async def _said_to(loopback: LoopbackAdapter, squall: Squall, bot: ChatBot, text: str, user: str) -> str:
    """What the bot answers `user` typing `text`."""
    before = len(loopback.posted)
    await loopback.say(text, user=user)
    await settle(squall, bot)
    [answer] = loopback.texts()[before:]
    return answer


async def test_execution_shows_a_chat_command_s_output_only_to_who_may_run_its_alias(chat) -> None:
    """`!run` is for operators: its output (a password echoed) is not for bob, who may not run it,
    by full id or by prefix; olivia (an operator) and an admin see it, as they may retry it."""
    squall, bot, loopback = chat
    await loopback.say("!run echo db_password: hunter2", user="olivia")
    await settle(squall, bot)
    [record] = await squall.executions.list(action="core.local")
    for typed in (record["id"], record["id"][:6]):
        answer = await _said_to(loopback, squall, bot, f"!execution {typed}", "bob")
        assert "hunter2" not in answer
        assert answer == "Sorry bob, you may not see that."
    for user in ("olivia", "root-admin"):
        assert "db_password: hunter2" in await _said_to(loopback, squall, bot, f"!execution {record['id']}", user)


async def test_execution_not_from_chat_shows_only_to_its_user_or_an_admin(chat) -> None:
    """An execution started outside chat (the API, the CLI) names no alias to check: only the person
    who started it and admins see its output, as only they may cancel or retry it."""
    squall, bot, loopback = chat
    started = await squall.executions.request("core.local", {"cmd": "echo token=abc123"}, {"user": "carol"})
    await settle(squall, bot)
    answer = await _said_to(loopback, squall, bot, f"!execution {started['id']}", "olivia")
    assert "abc123" not in answer
    assert answer == "Only admins may see executions not started from chat by you."
    for user in ("carol", "root-admin"):
        assert "token=abc123" in await _said_to(loopback, squall, bot, f"!execution {started['id']}", user)


async def test_an_ambiguous_execution_prefix_names_no_execution_in_chat(chat) -> None:
    """A prefix that starts several ids says so without listing them: the list would let anyone
    walk every execution's id, whoever started it."""
    squall, bot, loopback = chat
    ids = ["abcd" + "0" * 19 + "1", "abcd" + "0" * 19 + "2"]
    for execution_id in ids:
        await squall.executions.request("core.local", {"cmd": "true"}, {"user": "carol"}, execution_id=execution_id)
    await settle(squall, bot)
    for command in ("execution", "cancel", "retry"):
        answer = await _said_to(loopback, squall, bot, f"!{command} abcd", "root-admin")
        assert not any(execution_id in answer for execution_id in ids), answer
        assert answer == '"abcd" starts more than one execution id; type more of it.'
    too_long = "abcd" + "0" * 26  # not an id: the engine's own answer, which echoes only what was typed
    assert "is not an execution id" in await _said_to(loopback, squall, bot, f"!execution {too_long}", "root-admin")


async def test_key_commands_run_in_the_service_and_never_show_a_secret(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!key set deploy.env prod", user="olivia")  # an operator
    await loopback.say("!key set api.token s3cr3t-value encrypt=true", user="olivia")
    await settle(squall, bot)
    assert {"set st2kv.system key deploy.env", "set st2kv.system key api.token (encrypted)"} <= set(loopback.texts())
    assert (await squall.db(squall.datastore.get, "api.token"))["secret"] is True
    for name in ("deploy.env", "api.token", "nope"):
        await loopback.say(f"!key get {name}", user="olivia")
        await settle(squall, bot)
    texts = loopback.texts()
    assert texts[-5::2] == ["prod", "********", "key 'nope' does not exist in scope system"]  # each after its ack
    assert texts[-2].startswith("✖ squall.key_get failed")
    assert not any("s3cr3t-value" in text for text in texts)


async def test_outbox_retries_in_order(chat) -> None:
    squall, bot, loopback = chat
    loopback.failures_to_inject = 3
    for n in range(5):
        await loopback.say(f"!greet n{n}", user="alice", channel="#ordered")
    await settle(squall, bot)
    acks = [p.reply.text for p in loopback.posted
            if p.reply.channel == "#ordered" and p.reply.text.startswith("greeting")]
    assert acks == [f"greeting n{n}" for n in range(5)]
    rows = await squall.db(squall.store.outbox_pending, ["loopback"])
    assert rows == []


async def test_a_refused_reply_fails_at_once_and_does_not_hold_up_the_channel(chat) -> None:
    squall, bot, loopback = chat
    loopback.refusals_to_inject = 1
    await loopback.say("!greet first", user="alice", channel="#refused")
    await loopback.say("!greet second", user="alice", channel="#refused")
    await settle(squall, bot)
    acks = [p.reply.text for p in loopback.posted if p.reply.channel == "#refused" and p.reply.text.startswith("gr")]
    assert acks == ["greeting second"]
    with squall.store.engine.connect() as conn:
        failed = conn.execute(sa.text("SELECT attempts, error FROM outbox WHERE status = 'failed'")).all()
    assert [(row.attempts, row.error) for row in failed] == [(1, "loopback: injected refusal")]


async def test_a_delivered_reply_that_cannot_be_marked_sent_is_not_lost_or_blocking(chat, caplog) -> None:
    """The sent mark is written in the background; if it fails, the reply was still delivered, the
    channel goes on, and the row stays pending so a restart sends it again (at least once)."""
    squall, bot, loopback = chat
    real_update = squall.store.outbox_update_many
    refused: list[int] = []

    def update(updates: list) -> None:
        if not refused:  # the first round of sent marks
            assert all(fields["status"] == "sent" for _, fields in updates)
            refused.extend(outbox_id for outbox_id, _ in updates)
            raise sa.exc.OperationalError("UPDATE outbox", {}, Exception("disk I/O error"))
        real_update(updates)

    squall.store.outbox_update_many = update  # type: ignore[method-assign]
    await loopback.say("!greet one", user="alice", channel="#marks")
    await loopback.say("!greet two", user="alice", channel="#marks")
    await settle(squall, bot)
    acks = [p.reply.text for p in loopback.posted if p.reply.channel == "#marks" and p.reply.text.startswith("gr")]
    assert acks == ["greeting one", "greeting two"]
    assert all(f"reply {outbox_id} was delivered but could not be marked sent" in caplog.text for outbox_id in refused)
    pending = await squall.db(squall.store.outbox_pending, ["loopback"])
    assert refused and [row["id"] for row in pending] == refused


async def test_a_reply_posted_while_shutting_down_is_sent_at_the_next_start(chat) -> None:
    """An execution that ends as the service stops still posts its result: it is stored, not sent
    by a closed outbox (whose worker would outlive the event loop), and the next start sends it."""
    squall, bot, loopback = chat
    await bot.outbox.close()
    outbox_id = await bot.outbox.post(Reply(adapter="loopback", channel="#late", text="late result"))
    await asyncio.sleep(0.05)
    assert "late result" not in loopback.texts()
    assert [row["id"] for row in await squall.db(squall.store.outbox_pending, ["loopback"])] == [outbox_id]
    restarted = Outbox(squall.db, {"loopback": loopback})
    assert await restarted.poll() == 1
    await restarted.drain(10)
    assert "late result" in loopback.texts()
    await restarted.close()


async def test_long_output_is_split_or_uploaded(home: Path) -> None:
    _config(home)
    small = LoopbackAdapter("small", Capabilities(max_length=300))
    files = LoopbackAdapter("files", Capabilities(files=True, max_length=300))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[small, files])
    bot = squall.chat
    await bot.start()
    try:
        await small.say("!greet x 40 times")
        await files.say("!greet y 40 times")
        await settle(squall, bot)
        assert all(len(t) <= 300 for t in small.texts())
        assert "".join(small.texts()).count("hello x") == 40
        uploaded = [p for p in files.posted if p.reply.file]
        assert len(uploaded) == 1 and uploaded[0].reply.file[1].count("hello y") == 40
    finally:
        await bot.stop()
        await squall.close()


async def test_result_comes_back_despite_action_notify_and_route_is_told(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!greet routes", channel="#ops")
    await settle(squall, bot)
    assert "hello routes" in loopback.texts("#ops")  # StackStorm would drop it: the action has notify
    assert loopback.texts("#alerts") == ["greeted routes"]


async def test_post_message_reaches_chat(chat) -> None:
    squall, bot, loopback = chat
    record = await squall.executions.request("chatops.post_message", {
        "message": "deploy finished", "adapter": "loopback", "channel": "#deploys"})
    record = await squall.executions.wait(record["id"])
    assert record["status"] == "succeeded", record
    await settle(squall, bot)
    assert loopback.texts("#deploys") == ["deploy finished"]
    routed = await squall.executions.wait((await squall.executions.request(
        "chatops.post_message", {"message": "via route"}, {})) ["id"])
    assert routed["status"] == "failed" and "routes" in routed["result"]["error"]


_HOSTILE = st.sampled_from(["$(touch /tmp/squall-fuzz)", "`id`", "; rm -rf /", '"unbalanced', "'", "a=b=c",
                            "\x00\x1b[31m", "greet", "help", "yes", "\u201cquoted\u201d", "x" * 5000])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(st.text(max_size=200), _HOSTILE,
                                st.lists(_HOSTILE, max_size=4).map(" ".join)), min_size=1, max_size=25))
def test_any_text_gets_an_answer_and_never_crashes(tmp_path_factory: pytest.TempPathFactory,
                                                    texts: list[str]) -> None:
    home = tmp_path_factory.mktemp("fuzz")
    (home / "packs").mkdir()
    _config(home)

    async def scenario() -> None:
        loopback = LoopbackAdapter()
        squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
        bot = squall.chat
        await bot.start()
        try:
            for text in texts:
                before = len(loopback.posted)
                await loopback.say("!" + text, user="fuzzer", channel="#fuzz")
                await settle(squall, bot)
                assert len(loopback.posted) > before, text  # every addressed message gets an answer
                assert not any(t.startswith("Sorry, something went wrong") for t in loopback.texts()), text
        finally:
            await bot.stop()
            await squall.close()

    asyncio.run(scenario())
    assert not Path("/tmp/squall-fuzz").exists()


def test_squall_chat_reads_stdin_and_waits_for_results(home: Path) -> None:
    _config(home)
    done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "chat", "--user", "olivia"],
                          input="!greet piped\n!ping\nhelp\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hello piped" in done.stdout
    assert "pong" in done.stdout
    # help, without a prefix in a DM, grouped by pack
    assert "squall: demo:\n" in done.stdout and "squall:   !greet {{who}} — Greet someone.\n" in done.stdout


async def test_key_value_pairs_set_runner_parameters_only_where_the_alias_opens_them(chat) -> None:
    squall, bot, loopback = chat
    await loopback.say("!greet ann timeout=1")
    await settle(squall, bot)
    assert any(t.startswith("I can't run that: \"timeout\" is a parameter of the local-shell-cmd runner")
               and "allow_overrides" in t for t in loopback.texts())
    assert await squall.executions.list(action="demo.greet") == []

    # a runner parameter one of the alias's formats names may be given as key=value with another:
    # typing that format would set it all the same
    await loopback.say("!greet dee from here cwd=/tmp")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.greet")
    assert execution["parameters"]["cwd"] == "/tmp" and execution["status"] == "succeeded", execution
    await loopback.say("!greet dee from here timeout=1")  # one no format names stays closed
    await settle(squall, bot)
    assert loopback.texts()[-1].startswith('I can\'t run that: "timeout" is a parameter of the local-shell-cmd')
    assert len(await squall.executions.list(action="demo.greet")) == 1

    await loopback.say("!greet slowly bob timeout=7")
    await settle(squall, bot)
    execution = (await squall.executions.list(action="demo.greet"))[0]
    assert execution["parameters"]["timeout"] == 7 and execution["status"] == "succeeded"
    await loopback.say('!greet slowly cy env={"GREETING": "hi"}')
    await settle(squall, bot)
    assert any("\"env\" is a parameter of the local-shell-cmd runner" in t for t in loopback.texts())


async def test_a_result_is_split_at_the_pretext_delimiter_as_hubot_does(home: Path) -> None:
    """hubot-stackstorm splits a result at `{~}` (the st2, github and networking_utils packs' aliases
    write `Found N actions:{~}...`): the part before is the pretext, the rest the text, joined by a
    newline where the platform has no attachments. It was posted with the delimiter in it. A `{~}` the
    person typed, echoed in the result, splits it too (as in hubot); only the first one splits."""
    _config(home)
    write(home / "packs" / "demo" / "aliases" / "listing.yaml", """
        name: listing
        action_ref: demo.greet
        description: Greet, as a list.
        formats: ["list greetings for {{who}}"]
        ack: {enabled: false}
        result:
          format: |
            Found 1 greeting:{~}
            {{ execution.result.stdout }}
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!list greetings for ann", channel="#ops")
        await loopback.say("!greet bo{~}b", channel="#typed")
        await settle(squall, bot)
        assert loopback.texts("#ops") == ["Found 1 greeting:\nhello ann"]
        posted = next(p for p in loopback.posted if p.reply.channel == "#ops")
        assert "{~}" not in json.dumps(posted.reply.extra)
        assert "hello bo\nb" in loopback.texts("#typed")
        await loopback.say("!list greetings for x{~}y", channel="#both")
        await settle(squall, bot)
        assert loopback.texts("#both") == ["Found 1 greeting:\nhello x{~}y"]  # a second one stays as typed


async def test_cancel_and_retry_in_chat_are_audited_and_so_are_their_refusals(chat) -> None:
    """`!cancel` and `!retry` change what runs, as the API's and the web's do: each is audited
    (`chat.execution.cancel`, `chat.execution.rerun` naming the execution re-run), and a refusal as the
    chat's other refusals are (`chat.denied`, with what was typed and why)."""
    squall, bot, loopback = chat
    await loopback.say("!run echo hi", user="olivia")  # squall.run: for operators
    await settle(squall, bot)
    [ran] = await squall.executions.list(action="core.local")
    for verb in ("retry", "cancel"):
        answer = await _said_to(loopback, squall, bot, f"!{verb} {ran['id']}", "bob")
        assert answer == f"Sorry bob, you may not {verb} that."
    assert len(await squall.executions.list(action="core.local")) == 1
    denied = await squall.db(squall.store.audit_list, 10, "chat.denied")
    assert [(row["actor"], row["source"], row["target"], row["detail"]["command"]) for row in denied] == [
        ("bob", "loopback:#ops", ran["id"], f"cancel {ran['id']}"),
        ("bob", "loopback:#ops", ran["id"], f"retry {ran['id']}")]
    assert all(row["detail"]["reason"].startswith("squall.run is allowed only for") for row in denied)

    await loopback.say(f"!retry {ran['id']}", user="olivia")
    await settle(squall, bot)
    again = next(e for e in await squall.executions.list(action="core.local") if e["id"] != ran["id"])
    assert f"Retrying as {again['id']}." in loopback.texts()
    [rerun] = await squall.db(squall.store.audit_list, 10, "chat.execution.rerun")
    assert (rerun["actor"], rerun["source"], rerun["target"]) == ("olivia", "loopback:#ops", again["id"])
    assert rerun["detail"] == {"action": "core.local", "of": ran["id"], "parameters": again["parameters"]}

    await loopback.say("!nap 30", user="alice")
    for _ in range(1500):  # up to 30 s on a busy machine
        if running := await squall.executions.list(action="demo.snooze", status="running"):
            break
        await asyncio.sleep(0.02)
    [napping] = running
    await loopback.say(f"!cancel {napping['id']}", user="alice")
    await settle(squall, bot)
    [canceled] = await squall.db(squall.store.audit_list, 10, "chat.execution.cancel")
    assert (canceled["actor"], canceled["source"], canceled["target"]) == ("alice", "loopback:#ops", napping["id"])
    # The status the cancel wrote, stored with it (as the API's and the web's rows say it); the run ends after.
    assert canceled["detail"] == {"action": "demo.snooze", "status": "canceling"}
    assert (await squall.executions.get(napping["id"]))["status"] == "canceled"


async def test_a_retry_that_needs_approval_is_a_refusal_audited_as_one(home: Path) -> None:
    """A re-run is never a way around approvers: `!retry` of what needs approval is refused, and
    audited as `chat.denied` as a refused command is."""
    _config(home)
    write(home / "packs" / "demo" / "aliases" / "guarded.yaml", """
        name: guarded
        action_ref: demo.wipe
        description: Wipe, once approved.
        formats: ["guarded wipe {{target}}"]
        approval: {groups: [operators]}
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        wiped = await squall.executions.request("demo.wipe", {"target": "db1"}, {
            "user": "alice", "chat": {"adapter": "loopback", "channel": "#ops", "alias": "demo.guarded"}})
        await settle(squall, bot)
        answer = await _said_to(loopback, squall, bot, f"!retry {wiped['id']}", "alice")
        assert answer.startswith("demo.guarded needs approval from operators")
        [denied] = await squall.db(squall.store.audit_list, 10, "chat.denied")
        assert (denied["actor"], denied["target"]) == ("alice", wiped["id"])
        assert denied["detail"]["command"] == f"retry {wiped['id']}" and "approv" in denied["detail"]["reason"]
        assert len(await squall.executions.list(action="demo.wipe")) == 1


async def test_a_chat_command_s_audit_row_has_its_parameters_with_secrets_masked(home: Path) -> None:
    """The audit says with which parameters a command ran (docs/observability.md), as the API's and the
    CLI's rows do: a secret parameter as ********, and a parameter the engine renders from a template
    (a datastore read) as its template text, never what rendering it revealed."""
    _config(home)
    pack = home / "packs" / "demo"
    write(pack / "actions" / "deploy.yaml", """
        name: deploy
        runner_type: local-shell-cmd
        parameters:
          stage: {type: string, required: true}
          password: {type: string, secret: true, required: true}
          token: {type: string}
          cmd: {default: "echo deployed {{ stage }}", immutable: true}
    """)
    write(pack / "aliases" / "deploy.yaml", """
        name: deploy
        action_ref: demo.deploy
        description: Deploy.
        formats: ["deploy {{stage}} with {{password}}"]
        immutable_parameters:
          token: "{{ st2kv.system.deploy_token | decrypt_kv }}"
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await squall.db(squall.datastore.set, "deploy_token", "kv-Tok-9931", encrypt=True)
        await loopback.say("!deploy prod with hunter2-Pw", user="alice")
        await settle(squall, bot)
        [record] = await squall.executions.list(action="demo.deploy")
        [entry] = await squall.db(squall.store.audit_list, 10, "chat.execution")
        assert entry["detail"] == {"execution": record["id"], "action": "demo.deploy", "parameters": {
            "stage": "prod", "password": "********", "token": "{{ st2kv.system.deploy_token | decrypt_kv }}"}}
        written = json.dumps(entry, default=str)
        assert "hunter2-Pw" not in written and "kv-Tok-9931" not in written


def _duplicates(home: Path, extra: str = "") -> None:
    """A `match_multiple` alias shaped as StackStorm's fixture (alias_match_multiple.yaml): every issue
    key after "duplicate of" in the message is one fit, and StackStorm runs one execution per fit."""
    write(home / "packs" / "demo" / "aliases" / "duplicate.yaml", r"""
        name: duplicate
        action_ref: demo.greet
        description: Mark issues as duplicates, one execution each.
        formats:
          - display: "duplicate of <issue>"
            representation: ["(?:\\b|^)duplicate of (?P<who>[A-Z][A-Z0-9]+-[0-9]+)(?:\\b|$)"]
            match_multiple: true
        ack: {format: "noting {{ execution.parameters.who }}"}
        result: {format: "{{ execution.result.stdout }}"}
    """.rstrip(" ") + textwrap.indent(textwrap.dedent(extra), " " * 8))


async def test_a_match_multiple_alias_runs_one_execution_per_fit_each_acked_in_the_thread(home: Path) -> None:
    """`!… duplicate of ABC-1 and also duplicate of ABC-2` ran ABC-1 alone: the second command was lost
    without a word, while `squall alias match` showed both fits. Each fit is a command of its own:
    requested, audited, acknowledged and answered in the message's thread."""
    _config(home)
    _duplicates(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!this is a duplicate of ABC-1 and also duplicate of ABC-2", user="alice", channel="#ops")
        await settle(squall, bot)
        executions = await squall.executions.list(action="demo.greet")
        assert sorted(e["parameters"]["who"] for e in executions) == ["ABC-1", "ABC-2"]
        assert {(e["context"]["chat"]["alias"], e["context"]["chat"]["thread"], e["status"])
                for e in executions} == {("demo.duplicate", "m1", "succeeded")}
        posted = [p for p in loopback.posted if p.reply.channel == "#ops"]
        assert {p.reply.thread for p in posted} == {"m1"}
        acks = [p for p in posted if p.reply.text.startswith("noting ")]
        assert sorted(p.reply.text for p in acks) == ["noting ABC-1", "noting ABC-2"]
        assert all(p.edits and "succeeded" in p.edits[-1] for p in acks)  # each ack edited by its own result
        assert sorted(p.reply.text for p in posted if p.reply.text.startswith("hello ")) == ["hello ABC-1",
                                                                                           "hello ABC-2"]
        audited = await squall.db(squall.store.audit_list, 10, "chat.execution")
        assert sorted((e["detail"]["execution"], e["detail"]["parameters"]["who"]) for e in audited) == sorted(
            (e["id"], e["parameters"]["who"]) for e in executions)

        await loopback.say("!just a duplicate of ABC-3", user="alice", channel="#ops")  # one fit: one run
        await settle(squall, bot)
        assert len(await squall.executions.list(action="demo.greet")) == 3


async def test_a_refused_match_multiple_command_runs_no_fit_and_masks_every_fits_secret(home: Path) -> None:
    """A person who may not run the alias is refused once for the whole message (every fit is the same
    alias), and the refusal's audit row masks the secret value of every fit, not only the first's."""
    _config(home)
    write(home / "packs" / "demo" / "actions" / "hush.yaml", """
        name: hush
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, secret: true, required: true}
          cmd: {default: "echo hushed", immutable: true}
    """)
    _duplicates(home, "permissions: {allow: {users: [alice]}}\n")
    duplicate = home / "packs" / "demo" / "aliases" / "duplicate.yaml"
    duplicate.write_text(duplicate.read_text().replace("demo.greet", "demo.hush"))
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!duplicate of SEC-11 and duplicate of SEC-22", user="bob", channel="#ops")
        await settle(squall, bot)
        [answer] = loopback.texts()
        assert answer.startswith("Sorry bob, you may not run that")
        assert await squall.executions.list(action="demo.hush") == []
        [entry] = await squall.db(squall.store.audit_list, 10, "chat.denied")
        assert entry["target"] == "demo.duplicate"
        assert "SEC-11" not in entry["detail"]["command"] and "SEC-22" not in entry["detail"]["command"]


async def test_zero_width_spaces_and_boms_are_dropped_not_made_spaces(chat) -> None:
    """The dispatcher turned U+200B into a space before matching, so a pasted `web\u200b1` ran as "web 1",
    while the alias grammar promises zero-width spaces and BOMs are dropped (deviation 5, errbot#1145).
    Odd spaces (no-break, thin) are still spaces, and a zero-width space before the prefix is no text."""
    squall, bot, loopback = chat
    for typed in ("!greet web\u200b1", "!greet web\ufeff2", "\u200b!greet\u2009web3", "\ufeff!greet\u00a0web\u20604"):
        await loopback.say(typed, channel="#ops")
    await settle(squall, bot)
    ran = await squall.executions.list(action="demo.greet")
    assert sorted(e["parameters"]["who"] for e in ran) == ["web1", "web2", "web3", "web4"]


async def test_a_command_too_complex_to_match_is_refused_in_its_thread(home: Path) -> None:
    # A long, repetitive message is stopped at its matching budget (`aliases.grammar`): the sender is
    # told why, not "I don't know" (which reads as a typo) nor anything a built-in makes of it.
    _config(home)
    write(home / "packs" / "demo" / "aliases" / "scale.yaml", """
        name: scale
        action_ref: demo.greet
        description: Scale something.
        formats: ["scale {{who}} {{times}} to {{n:d}}"]
    """)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!scale " + "to " * 13_000 + "5 5")
        await loopback.say("!greet web1")
        await settle(squall, bot)
        texts = loopback.texts()
        assert texts[0] == "That message is too long or too repetitive to match against the aliases; shorten it."
        assert "hello web1" in texts
        [greeted] = await squall.executions.list(action="demo.greet")
        assert greeted["parameters"]["who"] == "web1"
