"""Chat's `!executions` says who asked for each run and when: in an incident a channel reads "who ran what,
when" from it, one line an execution (IRC sends each line at its connection's pace), no secret shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Capabilities
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat.bot import ChatBot
from bot.chat.replies import REPLY_LINE_BYTES
from engine.config import load_config
from tests.fake_slack import FakeSlack
from tests.test_chat import _config, _said_to, settle
from tests.test_slack import _posted, _slack_chat

SECRET = "hunter2-do-not-show"


def _id_of(line: str) -> str:
    """The execution id a line of `!executions` ends with, in parentheses."""
    return line.rsplit("(", 1)[1].removesuffix(")")


def _clock(stamp: str) -> str:
    """An execution's `start_timestamp` as the hour and minute of its start in UTC (`11:42 UTC`)."""
    return f"{datetime.fromisoformat(stamp).astimezone(UTC):%H:%M} UTC"


async def test_executions_on_slack_names_who_asked_for_each_run_and_when_it_started(home: Path) -> None:
    fake = await FakeSlack().start()
    try:
        async with _slack_chat(home, fake) as (squall, bot, _adapter):
            for user, who in (("UALICE01", "world"), ("UBOB0001", "there")):
                await fake.push("events_api", fake.event(fake.message_event(f"!greet {who}", user=user)))
                await _posted(fake, lambda m, who=who: m.get("text") == f"hello {who}", f"the result for {who}")
            await settle(squall, bot)
            runs = {e["id"]: e for e in await squall.executions.list(action="demo.greet")}
            await fake.push("events_api", fake.event(fake.message_event("!executions", user="UALICE01")))
            listing = await _posted(fake, lambda m: any(i in m.get("text", "") for i in runs), "the listing")
    finally:
        await fake.close()
    lines = fake.shown(listing).splitlines()
    assert sorted(_id_of(line) for line in lines) == sorted(runs)
    for line in lines:
        run = runs[_id_of(line)]
        assert run["context"]["user"] in ("alice", "bob")
        assert f"by {run['context']['user']} at {_clock(run['start_timestamp'])}" in line, line
        assert line.startswith("✔ demo.greet succeeded")  # the shape it had: what, and how it went


@pytest.fixture
async def irc(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    """The demo pack of `tests/test_chat.py` on a chat with IRC's capabilities: no threads, no files."""
    _config(home)
    adapter = LoopbackAdapter("irc", Capabilities(threads=False, edits=False, rich=False, files=False,
                                                  max_length=1600))
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    await squall.chat.start()
    try:
        yield squall, squall.chat, adapter
    finally:
        await squall.chat.stop()
        await squall.close()


def _stored(squall: Squall, number: int, start: datetime, user: str | None) -> str:
    """A chat execution of #ops on irc, started at `start` by `user` (none: no `user` in its context),
    with a secret among its parameters; its id."""
    execution_id = f"{number:024x}"
    context: dict[str, Any] = {"source": "chat", "chat": {"adapter": "irc", "channel": "#ops"}}
    if user is not None:
        context["user"] = user
    squall.store.insert_execution({
        "id": execution_id, "action": "core.noop", "runner": "noop", "status": "succeeded",
        "parameters": {"token": SECRET}, "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
        "context": context, "log": [], "parent": None, "runner_info": None, "start_timestamp": start,
        "end_timestamp": start})
    return execution_id


async def test_on_irc_each_run_is_one_line_whatever_its_requester_s_name_holds(irc) -> None:
    """A `user` is any text an API caller gave: a line break or a very long name still makes one line of
    IRC's length; a run of another day says its date, one with no user says only when; no parameter shows."""
    squall, bot, adapter = irc
    now = datetime.now(UTC)
    long_ago = datetime(2024, 1, 1, 9, 5, tzinfo=UTC)
    people = {_stored(squall, 1, long_ago, "carol"): "by carol at 2024-01-01 09:05 UTC",
              _stored(squall, 2, now - timedelta(seconds=5), "mallory\r\nPRIVMSG #ops :" + "x" * 600): "by mallory",
              _stored(squall, 3, now - timedelta(seconds=1), None): f", at {now - timedelta(seconds=1):%H:%M} UTC"}
    answer = await _said_to(adapter, squall, bot, "!executions", "alice")
    lines = answer.splitlines()
    assert len(lines) == len(people)  # one line a run: the name's line break is none of the reply's
    assert sorted(_id_of(line) for line in lines) == sorted(people)
    for line in lines:
        assert people[_id_of(line)] in line, line
        assert len(line.encode()) < REPLY_LINE_BYTES
    assert SECRET not in answer and "token" not in answer
