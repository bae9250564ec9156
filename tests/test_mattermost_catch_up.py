"""Nothing lost on Mattermost: posts made while Squall was stopped or its websocket was down run, once.

Mattermost's websocket replays what a session missed only while the server keeps that session: a
Squall that restarts (or a server that did) begins a new one, and what was posted meanwhile never came.
So at every connect the adapter asks each channel the bot is in for the posts made since the newest it
handed over, at most `catch_up_seconds` back (120 s unless set), and hands them over as if they had
come live. Each post carries its id as its delivery key (`Message.delivery`), stored with the command
it requests, so a post that comes twice (live and caught up, or caught up by a restarted Squall) runs
its command once. The fake lists channels and posts as the server does (tests/fake_mattermost.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import AdapterConfigError
from adapters.mattermost import MattermostAdapter, MattermostSettings
from bot.app import Squall
from bot.chat.bot import ChatBot
from engine.config import ConfigError, check_adapter
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost, fake_mattermost
from tests.test_chat import settle
from tests.test_mattermost import _chat, replies_to

fake = fake_mattermost  # the fixture, under this module's name for it


@contextlib.asynccontextmanager
async def running(home: Path, fake: FakeMattermost, **more: Any) -> AsyncIterator[tuple[Squall, ChatBot,
                                                                                         MattermostAdapter]]:
    """A `squall serve`'s chat with the Mattermost adapter, on the home's database; stopped on leaving."""
    squall, bot, adapter = await _chat(home, fake, **more)
    try:
        yield squall, bot, adapter
    finally:
        await bot.stop()
        await squall.close()


async def whos(squall: Squall) -> list[str]:
    """The `who` of every execution requested, sorted: what ran, as often as it ran."""
    return sorted(e["parameters"]["who"] for e in await squall.executions.list(limit=50))


def said(fake: FakeMattermost, text: str) -> int:
    """How many of the bot's posts read `text` (a result is posted once per run)."""
    return sum(p["message"] == text for p in fake.bot_posts())


async def test_a_post_made_while_squall_was_stopped_runs_once_after_start(home: Path, fake: FakeMattermost,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The reported case: commands sent while the only serve was restarting. Addressed ones and direct
    messages run, in their threads; chatter is passed on and stays chatter."""
    root = await fake.say(fake.bob, fake.town_square, "deploy went sideways")
    missed = await fake.say(fake.alice, fake.town_square, "!greet missed")
    threaded = await fake.say(fake.alice, fake.town_square, "@squallbot greet threaded", root_id=root["id"])
    private = await fake.say(fake.alice, fake.dm_alice, "greet privately")
    await fake.say(fake.alice, fake.town_square, "greet nobody, just chatting")
    caplog.set_level(logging.INFO, logger="adapters.mattermost")
    async with running(home, fake) as (squall, bot, _adapter):
        await replies_to(fake, missed, "hello missed")
        assert {p["root_id"] for p in await replies_to(fake, threaded, "hello threaded")} == {root["id"]}
        assert {p["channel_id"] for p in await replies_to(fake, private, "hello privately")} == {fake.dm_alice["id"]}
        await settle(squall, bot)
        assert await whos(squall) == ["missed", "privately", "threaded"]
        assert [said(fake, f"hello {who}") for who in ("missed", "threaded", "privately")] == [1, 1, 1]
    caught = [r.getMessage() for r in caplog.records if "caught up" in r.getMessage()]
    assert caught == ["Mattermost: caught up 5 post(s) sent while disconnected"]  # bob's root too: chatter


async def test_a_post_seen_live_and_listed_again_after_a_restart_runs_once(home: Path, fake: FakeMattermost,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A restarted Squall remembers no post it saw, so its catch-up hands over again the one the first
    process ran live: the delivery key stored with that command runs it once, while the one posted
    during the restart runs."""
    async with running(home, fake) as (squall, bot, _adapter):
        live = await fake.say(fake.alice, fake.town_square, "!greet live")
        await replies_to(fake, live, "hello live")
        await settle(squall, bot)
    meanwhile = await fake.say(fake.alice, fake.town_square, "!greet meanwhile")
    caplog.set_level(logging.INFO)
    async with running(home, fake) as (squall, bot, _adapter):
        await replies_to(fake, meanwhile, "hello meanwhile")
        await settle(squall, bot)
        assert await whos(squall) == ["live", "meanwhile"]
        assert said(fake, "hello live") == 1 and said(fake, "hello meanwhile") == 1
    messages = [r.getMessage() for r in caplog.records]
    # Both were handed over again (with the bot's answers, which it skips), and the live one ran nothing.
    assert "Mattermost: caught up 2 post(s) sent while disconnected" in messages
    assert any("command came again" in m for m in messages)


async def test_a_post_answered_live_that_runs_nothing_is_not_answered_again_after_a_restart(
        home: Path, fake: FakeMattermost) -> None:
    """A `help` or a mistyped command requests no execution, so no stored command tells that it was handled:
    its answers are keyed by its delivery key instead (`Dispatcher.say`). Listed again by a restarted
    Squall's catch-up, it is answered once, and what was posted during the restart is answered."""
    async with running(home, fake) as (squall, bot, _adapter):
        live = await fake.say(fake.alice, fake.town_square, "!grete live")
        answered = await replies_to(fake, live, "grete")
        await settle(squall, bot)
    meanwhile = await fake.say(fake.alice, fake.town_square, "!grete meanwhile")
    async with running(home, fake) as (squall, bot, _adapter):
        assert len(await replies_to(fake, meanwhile, "grete")) == len(answered)
        await settle(squall, bot)
        thread = [p for p in fake.bot_posts(fake.town_square["id"]) if p["root_id"] == live["id"]]
        assert [p["message"] for p in thread] == [p["message"] for p in answered]
        assert await whos(squall) == []


async def test_a_post_whose_command_was_not_stored_before_the_stop_runs_after_the_restart(
        home: Path, fake: FakeMattermost, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop (or a crash) after the post arrived and before its command was stored: the restart's
    catch-up hands it over again, and this time it runs, once."""
    async with running(home, fake) as (squall, _bot, _adapter):
        waiting = asyncio.Event()

        async def never_stored(*_args: Any, **_kwargs: Any) -> Any:
            waiting.set()
            await asyncio.Event().wait()  # storing hangs until the process goes

        monkeypatch.setattr(squall.executions, "request", never_stored)
        lost = await fake.say(fake.alice, fake.town_square, "!greet lost")
        await asyncio.wait_for(waiting.wait(), 30)
    monkeypatch.undo()
    async with running(home, fake) as (squall, bot, _adapter):
        await replies_to(fake, lost, "hello lost")
        await settle(squall, bot)
        assert await whos(squall) == ["lost"] and said(fake, "hello lost") == 1


async def test_a_post_made_while_the_websocket_could_not_resume_runs_on_reconnect(home: Path,
                                                                                 fake: FakeMattermost) -> None:
    """A server restart forgets the session, so nothing is replayed on the reconnect: the catch-up
    finds the post, and the posts handed over live before the drop do not run again."""
    async with running(home, fake) as (squall, bot, adapter):
        before = await fake.say(fake.alice, fake.town_square, "!greet before")
        await replies_to(fake, before, "hello before")
        fake.refuse_websockets = True
        await fake.drop_websockets(forget=True)
        during = await fake.say(fake.alice, fake.town_square, "!greet during")
        fake.refuse_websockets = False
        await replies_to(fake, during, "hello during")
        await settle(squall, bot)
        assert adapter.connections >= 2
        assert await whos(squall) == ["before", "during"]
        assert said(fake, "hello before") == 1 and said(fake, "hello during") == 1


async def test_a_post_older_than_the_bound_does_not_run(home: Path, fake: FakeMattermost) -> None:
    """`catch_up_seconds` bounds how far back a connect looks: a command older than that is not run."""
    stale = await fake.say(fake.alice, fake.town_square, "!greet stale")
    fake.backdate(stale, 60)
    fresh = await fake.say(fake.alice, fake.town_square, "!greet fresh")
    fake.backdate(fresh, 10)
    async with running(home, fake, catch_up_seconds=30) as (squall, bot, _adapter):
        await replies_to(fake, fresh, "hello fresh")
        await settle(squall, bot)
        assert await whos(squall) == ["fresh"]
        assert not [p for p in fake.bot_posts() if p["root_id"] == stale["id"]]
        listed = [c for c in fake.calls if c["path"] == f"/api/v4/channels/{fake.town_square['id']}/posts"]
        assert listed and all(int(c["query"]["since"]) > stale["create_at"] for c in listed)


async def test_the_bots_own_posts_system_posts_and_edits_are_not_run(home: Path, fake: FakeMattermost) -> None:
    """What the live websocket would not run is not run caught up either: the bot's own post, a system
    post, and an old post edited into a command while Squall was stopped (its listing shows it, changed
    since, and so does the root of a thread answered since)."""
    old = await fake.say(fake.alice, fake.town_square, "nothing to see")
    fake.backdate(old, 600)
    await fake.make_post(fake.bot["id"], fake.town_square["id"], "!greet myself")
    system = await fake.make_post(fake.alice["id"], fake.town_square["id"], "!greet system")
    system["type"] = "system_join_channel"
    await fake.edit(old, "!greet edited")
    fresh = await fake.say(fake.alice, fake.town_square, "@squallbot greet fresh", root_id=old["id"])
    async with running(home, fake) as (squall, bot, _adapter):
        await replies_to(fake, fresh, "hello fresh")
        await settle(squall, bot)
        assert await whos(squall) == ["fresh"]
        assert said(fake, "hello myself") == said(fake, "hello system") == said(fake, "hello edited") == 0


async def test_a_failing_catch_up_is_said_once_tried_again_and_never_stops_the_websocket(
        home: Path, fake: FakeMattermost, caplog: pytest.LogCaptureFixture) -> None:
    missed = await fake.say(fake.alice, fake.town_square, "!greet missed")
    fake.rate_limit(times=2, retry_after=1, method="GET", path="/api/v4/users/me/channels")
    caplog.set_level(logging.INFO, logger="adapters.mattermost")
    async with running(home, fake) as (squall, bot, _adapter):
        live = await fake.say(fake.alice, fake.town_square, "!greet live")
        await replies_to(fake, live, "hello live")  # the websocket works while the catch-up waits
        await replies_to(fake, missed, "hello missed")
        await settle(squall, bot)
        assert await whos(squall) == ["live", "missed"]
    messages = [r.getMessage() for r in caplog.records]
    failures = [m for m in messages if m.startswith("Mattermost: cannot catch up")]
    assert len(failures) == 1 and "rate limited" in failures[0] and "trying again in a moment" in failures[0]
    assert [c["status"] for c in fake.calls if c["path"] == "/api/v4/users/me/channels"] == [429, 429, 200]
    # The live post, handed over while the catch-up waited, is listed too: known by its id, it is skipped.
    assert "Mattermost: caught up 1 post(s) sent while disconnected" in messages


async def test_catch_up_seconds_zero_turns_it_off(home: Path, fake: FakeMattermost) -> None:
    await fake.say(fake.alice, fake.town_square, "!greet missed")
    async with running(home, fake, catch_up_seconds=0) as (squall, bot, _adapter):
        live = await fake.say(fake.alice, fake.town_square, "!greet live")
        await replies_to(fake, live, "hello live")
        await settle(squall, bot)
        assert await whos(squall) == ["live"]
        assert not [c for c in fake.calls if c["path"] == "/api/v4/users/me/channels"]


@pytest.mark.parametrize("value", [-1, "soon", True, 3601, float("nan")])
def test_catch_up_seconds_must_be_seconds_within_the_bound(value: Any) -> None:
    section = {"url": "http://chat.example.com", "token": BOT_TOKEN, "catch_up_seconds": value}
    with pytest.raises(AdapterConfigError, match=r"adapters\.mattermost\.catch_up_seconds must be a number of "
                                                 r"seconds from 0 \(no catch-up\) to 3600, not"):
        MattermostSettings.from_section(section)


def test_catch_up_seconds_is_a_known_key_with_its_default() -> None:
    section = {"url": "http://chat.example.com", "token": BOT_TOKEN}
    assert MattermostSettings.from_section(section).catch_up_seconds == 120
    assert MattermostSettings.from_section({**section, "catch_up_seconds": 45}).catch_up_seconds == 45
    # `squall serve` checks every adapter section's keys, enabled or not, before it builds any.
    assert check_adapter("mattermost", {"enabled": False, "catch_up_seconds": 60}) is False
    with pytest.raises(ConfigError, match=r"did you mean 'adapters\.mattermost\.catch_up_seconds'"):
        check_adapter("mattermost", {"enabled": False, "catchup_seconds": 60})
