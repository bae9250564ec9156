"""`chat.flood`: one person's burst of commands must not cost everyone in the channel.

Replies go out at the platform's pace per channel (Slack: about one a second), so 40 `!ping`s held
everybody's next answer there for 40 s, and a held-Enter burst of 5,000 for over an hour. With
`chat.flood: {commands: N, seconds: S}` a person (per adapter) runs at most N commands in any S
seconds; past that they are told once per window (or per command of theirs that ran since) and the
rest are dropped, never run or stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.base import Message
from bot.chat.dispatcher import ChatSettings
from bot.chat.flood import FloodGate
from engine.config import ConfigError, load_config
from tests.test_chat import _config, loopback_chat, settle

FLOOD = "chat: {flood: {commands: 3, seconds: 60}}"


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _warnings(loopback: Any, user: str = "alice") -> list[str]:
    return [text for text in loopback.texts() if text.startswith(f"{user}, you have sent")]


async def _flood_audits(squall: Any) -> list[dict[str, Any]]:
    return await squall.db(squall.store.audit_list, 100, "chat.flood")


# -- the setting -----------------------------------------------------------------------------------

def test_flood_is_off_unless_configured(home: Path) -> None:
    _config(home)
    assert ChatSettings.from_config(load_config(home / "config.yml").section("chat")).flood is None
    _config(home, FLOOD)
    assert ChatSettings.from_config(load_config(home / "config.yml").section("chat")).flood == (3, 60.0)


@pytest.mark.parametrize(("flood", "named"), [
    ("{commands: 3}", "'chat.flood.seconds' is missing"),
    ("{commands: 0, seconds: 60}", "'chat.flood.commands' must be a whole number from 1"),
    ("{commands: 2.5, seconds: 60}", "'chat.flood.commands' must be a whole number from 1"),
    ("{commands: true, seconds: 60}", "'chat.flood.commands' must be a whole number from 1"),
    ("{commands: 3, seconds: 0}", "'chat.flood.seconds' must be a number of seconds above 0"),
    ("{commands: 3, seconds: 1m}", "'chat.flood.seconds' must be a number of seconds above 0"),
    ("{command: 3, seconds: 60}", "unknown key 'chat.flood.command' (did you mean 'chat.flood.commands'?)"),
    ("12", "'chat.flood' must be a mapping such as {commands: 12, seconds: 60}"),
])
def test_a_malformed_flood_setting_stops_the_load_naming_the_key(home: Path, flood: str, named: str) -> None:
    _config(home, f"chat: {{flood: {flood}}}")
    with pytest.raises(ConfigError) as caught:
        load_config(home / "config.yml")
    assert named in str(caught.value)


# -- the window ------------------------------------------------------------------------------------

def test_the_window_slides_and_the_answer_comes_once_per_window() -> None:
    clock = Clock()
    gate = FloodGate(3, 60.0, clock)
    for step in range(3):
        clock.now = 1000.0 + 10 * step  # 1000, 1010, 1020
        assert gate.check("loopback", "alice") is None
    clock.now = 1030.0
    first = gate.check("loopback", "alice")
    assert first is not None and first.tell and first.wait == pytest.approx(30.0)  # 1000 leaves at 1060
    again = gate.check("loopback", "alice")
    assert again is not None and not again.tell  # dropped without a word
    assert gate.check("slack", "alice") is None  # another adapter's alice is someone else
    assert gate.check("loopback", "bob") is None
    clock.now = 1060.0  # the first command left the window: one more fits
    assert gate.check("loopback", "alice") is None
    assert gate.check("loopback", "alice") is not None
    clock.now = 1091.0  # a window after the answer: the next refusal is said again
    assert gate.check("loopback", "alice") is None  # 1010 and 1020 left: room again
    clock.now = 1092.0
    assert gate.check("loopback", "alice") is None
    late = gate.check("loopback", "alice")
    assert late is not None and late.tell


def test_who_waited_as_told_is_told_again_when_refused_again() -> None:
    """Told to wait 19 s, bob waits, his next command runs and the one after it is refused: he is told
    so, not dropped without a word because his first refusal's quiet had not run out (at most one
    answer per command that ran)."""
    clock = Clock()
    gate = FloodGate(3, 60.0, clock)
    for at in (1000.0, 1020.0, 1040.0):
        clock.now = at
        assert gate.check("irc", "bob") is None
    clock.now = 1041.0
    told = gate.check("irc", "bob")
    assert told is not None and told.tell and told.wait == pytest.approx(19.0)
    clock.now = 1060.5  # waited as told: runs
    assert gate.check("irc", "bob") is None
    clock.now = 1070.0  # 1020, 1040 and 1060.5 in the window: refused, and said
    again = gate.check("irc", "bob")
    assert again is not None and again.tell and again.wait == pytest.approx(10.0)  # 1020 leaves at 1080
    clock.now = 1071.0
    dropped = gate.check("irc", "bob")
    assert dropped is not None and not dropped.tell  # once per command that ran, not once per refusal


def test_idle_senders_are_forgotten() -> None:
    clock = Clock()
    gate = FloodGate(3, 60.0, clock)
    for n in range(1000):
        gate.check("loopback", f"user{n}")
    assert gate.senders == 1000
    clock.now += 61
    gate.check("loopback", "alice")
    assert gate.senders == 1  # memory is bounded by who sent something in the last window


# -- through the chat ------------------------------------------------------------------------------

async def test_over_the_limit_one_answer_no_executions_and_others_unaffected(home: Path) -> None:
    _config(home, FLOOD)
    async with loopback_chat(home) as (squall, bot, loopback):
        for n in range(8):
            await loopback.say(f"!greet a{n}", user="alice", channel="#ops")
        await loopback.say("!greet bob", user="bob", channel="#ops")
        await settle(squall, bot)
        ran = sorted(e["parameters"]["who"] for e in await squall.executions.list(action="demo.greet"))
        assert ran == ["a0", "a1", "a2", "bob"]  # alice's 5 extra stored nothing; bob ran
        [warning] = _warnings(loopback)
        assert "you have sent more than 3 commands in 60 s (the limit here)" in warning
        assert "dropped, not run. Wait 60 s" in warning
        [audited] = await _flood_audits(squall)  # one event for the window, not one per dropped command
        assert audited["actor"] == "alice" and audited["source"] == "loopback:#ops"
        assert audited["detail"]["commands"] == 3 and audited["detail"]["seconds"] == 60


async def test_builtins_count_answers_and_clicks_do_not(home: Path) -> None:
    _config(home, "chat: {flood: {commands: 2, seconds: 60}}")
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!wipe disk1", user="alice")  # 1: asks for confirmation
        await loopback.say("!yes", user="alice")  # the answer: not a new command
        await bot.dispatcher.handle(Message(adapter="loopback", channel="#ops", user="alice", text="approve x",
                                            mentioned=True, clicked=True, id="click-1"))  # a button's click
        await loopback.say("!help", user="alice")  # 2: a built-in counts
        await settle(squall, bot)
        assert _warnings(loopback) == []
        [wiped] = await squall.executions.list(action="demo.wipe")
        assert wiped["status"] == "succeeded"
        await loopback.say("!executions", user="alice")  # 3: over
        await settle(squall, bot)
        assert len(_warnings(loopback)) == 1


async def test_admins_are_limited_too(home: Path) -> None:
    """A channel's replies are paced the same whoever sent the commands."""
    _config(home, "chat: {flood: {commands: 1, seconds: 60}}")
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say("!executions", user="root-admin")
        await loopback.say("!executions", user="root-admin")
        await settle(squall, bot)
        assert len(_warnings(loopback, "root-admin")) == 1


async def test_the_window_slides_through_the_chat(home: Path) -> None:
    _config(home, "chat: {flood: {commands: 2, seconds: 60}}")
    async with loopback_chat(home) as (squall, bot, loopback):
        clock = Clock()
        assert bot.dispatcher._flood is not None
        bot.dispatcher._flood.clock = clock
        for _ in range(4):
            await loopback.say("!executions", user="alice")
        clock.now += 61
        await loopback.say("!executions", user="alice")
        await settle(squall, bot)
        answered = [t for t in loopback.texts() if t.startswith("No executions")]
        assert len(answered) == 3 and len(_warnings(loopback)) == 1


async def test_no_limit_by_default(home: Path) -> None:
    _config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        assert bot.dispatcher._flood is None  # the hot path pays one attribute check
        for _ in range(30):
            await loopback.say("!executions", user="alice")
        await settle(squall, bot)
        assert len([t for t in loopback.texts() if t.startswith("No executions")]) == 30
        assert _warnings(loopback) == [] and await _flood_audits(squall) == []
