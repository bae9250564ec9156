"""Squall as an errbot plugin, driven through errbot's own test backend (`errbot.backends.test.TestBot`).

errbot runs its backend in a thread and the plugin runs Squall on a loop in another thread, so these
tests are plain (synchronous) tests: nothing here touches pytest-asyncio's loop.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import errbot.backends.test as errbot_test  # a test dependency: installed with .[test]
import pytest

from tests.conftest import REPO, write


def _home(home: Path) -> Path:
    config = write(home / "config.yml", """
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          enabled: false
        routes:
          ops: {adapter: errbot, channel: "ops-room"}
    """)
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          cmd: {default: 'echo "hello {{who}}"', immutable: true}
        notify:
          on-success:
            message: "greeted {{ action_parameters.who }}"
            routes: [ops]
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        description: Greet someone.
        formats: ["greet {{who}}"]
        ack:
          format: "greeting {{ execution.parameters.who }}"
        result:
          format: "{{ execution.result.stdout }}"
    """)
    return config


@pytest.fixture
def testbot(home: Path) -> Iterator[errbot_test.TestBot]:
    """errbot's TestBot with the plugin folder loaded and Squall pointed at the test home."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    bot = errbot_test.TestBot(extra_plugin_dir=str(REPO / "errbot_squall"), loglevel=logging.INFO,
                              extra_config={"SQUALL_CONFIG": str(_home(home)), "SUPPRESS_CMD_NOT_FOUND": True})
    bot.start(timeout=10)
    try:
        yield bot
    finally:
        bot.stop()
        for handler in root.handlers:  # TestBot adds a log file handler to the root logger; close it
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)


def _collect(bot: errbot_test.TestBot, wanted: list[str], timeout: float = 20) -> list[str]:
    """Pop messages until each of `wanted` appears in one of them; return all popped."""
    seen: list[str] = []
    missing = list(wanted)
    while missing:
        try:
            seen.append(bot.pop_message(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"never got {missing}; got {seen}") from None
        missing = [w for w in missing if not any(w in text for text in seen)]
    return seen


def _plugin(bot: errbot_test.TestBot):
    return bot.bot.plugin_manager.get_plugin_obj_by_name("Squall")


def _delivered(bot: errbot_test.TestBot, predicate, count: int = 1) -> list[tuple[str, Any]]:
    """(channel, identifier) of the adapter's deliveries whose text matches; the adapter records one just
    after errbot's send returns, which can be a moment after the test popped the message."""
    for _ in range(100):
        found = [(channel, ident) for channel, ident, text in _plugin(bot).adapter.delivered if predicate(text)]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return found


def test_squall_help_through_errbot(testbot) -> None:
    testbot.push_message("!squall help")
    reply = testbot.pop_message(timeout=20)
    assert "!squall greet {{who}} — Greet someone." in reply  # in the form errbot users type
    assert "executions" in reply  # Squall's built-ins, not errbot's help


def test_alias_command_gets_ack_and_result_in_the_same_conversation(testbot) -> None:
    testbot.push_message("!greet world")  # no errbot command is called greet: Squall answers
    texts = _collect(testbot, ["greeting world", "hello world"])
    assert texts.index(next(t for t in texts if "greeting world" in t)) < texts.index(
        next(t for t in texts if "hello world" in t))
    sender = testbot.bot.sender
    replies = _delivered(testbot, lambda text: "world" in text and not text.startswith("greeted"), count=2)
    assert replies and all(channel == str(sender) and ident is sender for channel, ident in replies)


def test_errbot_commands_stay_errbots(testbot) -> None:
    testbot.push_message("!echo plain errbot")  # errbot's own echo: Squall must not answer too
    assert testbot.pop_message(timeout=10) == "plain errbot"
    testbot.push_message("!squall echo through squall")  # Squall's echo alias, by name
    _collect(testbot, ["through squall"])
    with pytest.raises(queue.Empty):
        testbot.pop_message(timeout=1, block=True)  # and nothing else (no second answer, no "not found")


def test_notification_route_reaches_errbot(testbot) -> None:
    testbot.push_message("!squall greet routes")
    _collect(testbot, ["greeted routes", "hello routes"])
    notes = _delivered(testbot, lambda text: "greeted" in text)
    assert [(channel, str(ident)) for channel, ident in notes] == [("ops-room", "ops-room")]
    assert type(notes[0][1]).__name__ == "TestPerson"  # errbot's build_identifier made it from the route


def test_unknown_command_gets_squalls_answer(testbot) -> None:
    testbot.push_message("!frobnicate now")
    reply = testbot.pop_message(timeout=10)
    assert "I don't know frobnicate now. Try !squall help." in reply  # errbot renders markdown to text


def test_room_message_addressed_by_name_is_answered_in_the_room(testbot) -> None:
    """The test backend only delivers direct messages, so this one is handed to errbot as a backend
    with rooms would: a message in a room, from an occupant, run through errbot's own callback."""
    from errbot.backends.base import Message as ErrbotMessage

    room = errbot_test.TestRoom("#ops", bot=testbot.bot)
    message = ErrbotMessage("squall: greet room", frm=errbot_test.TestOccupant("alice", room), to=room)
    testbot.bot.callback_message(message)
    _collect(testbot, ["greeting room", "hello room", "greeted room"])  # ack, result, and the notify route's
    replies = _delivered(testbot, lambda text: text in ("greeting room", "hello room"), count=2)
    assert len(replies) == 2 and all(ident is room for _, ident in replies)
    chatter = ErrbotMessage("nothing for squall here", frm=errbot_test.TestOccupant("alice", room), to=room)
    testbot.bot.callback_message(chatter)
    with pytest.raises(queue.Empty):
        testbot.pop_message(timeout=1)
