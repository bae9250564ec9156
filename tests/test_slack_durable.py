"""Nothing Slack sent is acknowledged before it is durable, and what Slack sends again runs once.

Slack sends an event again when its envelope (Socket Mode) or request (HTTP mode) got no acknowledgement,
and never again once it got one: an ack sent before the command was stored, then a crash, lost the
command without a trace (kills 10-80 ms after a message lost 4 of 10). So the adapter answers an event
once the dispatcher stored what it carries (its request, with its ack in the outbox) or decided it is no
command, and a second delivery, in this process or after a restart, requests nothing: the message's
key is stored with its command (`deliveries`). The fake sends unacknowledged events again as Slack does
(`FakeSlack.retry_after`). Where a test must know that an ack was *not* sent, it sends a chatter
message after it and waits for that one's ack: the socket keeps its frames in order, so an ack sent
before would have arrived before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import adapters.slack
from tests.conftest import free_port, write
from tests.fake_slack import BOT_USER, FakeSlack, fake_slack
from tests.test_chat import settle
from tests.test_slack import _pack, _posted, _settings, _signed, _slack_chat

fake = fake_slack  # the fixture, under this module's name for it


@pytest.fixture
async def http_slack(home: Path, fake: FakeSlack) -> AsyncIterator[tuple[Any, ...]]:
    """Squall with the Slack adapter in HTTP mode, and a client of its API server (`/slack/events`)."""
    from bot.app import Squall
    from bot.http import ApiServer
    from engine.config import load_config

    _pack(home)
    config = load_config(home / "config.yml")
    adapter = adapters.slack.create({**_settings(fake), "mode": "http", "app_token": None}, config)
    squall = await Squall.start(config, adapters=[adapter])
    await squall.chat.start()
    api = ApiServer(squall, host="127.0.0.1", port=free_port())
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}") as client:
            yield squall, client
    finally:
        await api.stop()
        await squall.chat.stop()
        await squall.close()


def _disk_full() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT INTO executions ...", {},
                                   sqlite3.OperationalError("database or disk is full"))


async def _acked(fake: FakeSlack, envelope: str) -> None:
    await fake.wait_for(lambda: fake.acked(envelope), what=f"the ack of envelope {envelope}")


async def _not_acked_yet(fake: FakeSlack, envelope: str) -> bool:
    """Whether `envelope` is unacknowledged, for sure: a chatter message sent now is acknowledged once
    the dispatcher dropped it, and an ack of `envelope` sent before that one would have arrived first."""
    chatter = await fake.push("events_api", fake.event(fake.message_event("just chatting")))
    await _acked(fake, chatter)
    return not fake.acked(envelope)


def _held(squall: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Requests wait at the door until the first event is set (`squall.executions.request`): storing is slow.
    The second is set once a request waits there."""
    gate, waiting = asyncio.Event(), asyncio.Event()
    request = squall.executions.request

    async def slow(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        await gate.wait()
        return await request(*args, **kwargs)

    monkeypatch.setattr(squall.executions, "request", slow)
    return gate, waiting


def _failing_once(squall: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first request finds the disk full (nothing stored); the others are stored. Counts the calls."""
    request = squall.executions.request
    calls: list[int] = []

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise _disk_full()
        return await request(*args, **kwargs)

    monkeypatch.setattr(squall.executions, "request", failing_once)
    return calls


async def _whos(squall: Any) -> list[str]:
    return sorted(e["parameters"]["who"] for e in await squall.executions.list(limit=50))


def _texts(fake: FakeSlack) -> list[str | None]:
    return [m.get("text") for m in fake.messages]


async def test_an_event_is_acknowledged_only_once_its_command_is_stored(home: Path, fake: FakeSlack,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async with _slack_chat(home, fake) as (squall, _bot, _adapter):
        gate, waiting = _held(squall, monkeypatch)
        envelope = await fake.push("events_api", fake.event(fake.message_event("!greet stored")))
        await asyncio.wait_for(waiting.wait(), 30)
        assert await _not_acked_yet(fake, envelope)  # bolt's default had acknowledged it on arrival
        gate.set()
        await _acked(fake, envelope)
        assert await _whos(squall) == ["stored"]  # stored before the ack, not after
        await _posted(fake, lambda m: m.get("text") == "hello stored", "the result")


async def test_an_event_the_database_did_not_take_is_sent_again_and_runs_once(home: Path, fake: FakeSlack,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The person is told the database took nothing; Slack, which got no ack, sends the event again, and
    that delivery runs the command, once."""
    fake.retry_after = 1.5  # Slack's is 3 s
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        calls = _failing_once(squall, monkeypatch)
        envelope = await fake.push("events_api", fake.event(fake.message_event("!greet again")))
        await _posted(fake, lambda m: m.get("text") == "hello again", "the result of Slack's retry")
        await settle(squall, bot)
        assert await _whos(squall) == ["again"] and len(calls) == 2
        assert not fake.acked(envelope) and any(fake.acked(retried) for retried in fake.retried)
        told = [t for t in _texts(fake) if (t or "").startswith("Squall could not store that command")]
        assert len(told) == 1 and "database or disk is full" in told[0]
        assert _texts(fake).count("hello again") == 1


async def test_an_event_sent_again_after_a_restart_runs_once(home: Path, fake: FakeSlack) -> None:
    """A crash after the command was stored and before Slack got the ack: Slack sends the event again,
    to a new process that remembers nothing (nor does it remember the mention's `message` twin)."""
    payload = fake.event(fake.message_event(f"<@{BOT_USER}> greet once", kind="app_mention"), event_id="EvAGAIN01")
    twin = fake.event({**payload["event"], "type": "message", "channel_type": "channel"}, event_id="EvTWIN001")
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        await fake.push("events_api", payload)
        await _posted(fake, lambda m: m.get("text") == "hello once", "the result")
        await settle(squall, bot)
    async with _slack_chat(home, fake) as (squall, bot, _adapter):  # a fresh Squall on the same database
        again = await fake.push("events_api", payload, retry_attempt=1, retry_reason="timeout")
        late_twin = await fake.push("events_api", twin)
        await _acked(fake, again)
        await _acked(fake, late_twin)
        await fake.push("events_api", fake.event(fake.message_event("!greet after")))
        await _posted(fake, lambda m: m.get("text") == "hello after", "a new command's result")
        await settle(squall, bot)
        assert await _whos(squall) == ["after", "once"]
        assert _texts(fake).count("hello once") == 1 and _texts(fake).count("greeting once") == 1


async def test_chatter_own_messages_and_edits_are_still_acknowledged(home: Path, fake: FakeSlack) -> None:
    async with _slack_chat(home, fake) as (squall, _bot, _adapter):
        original = fake.message_event("!greet first")
        sent = [fake.event(fake.message_event("greet chatter")),
                fake.event(fake.message_event("!greet myself", user=BOT_USER, bot_id="BBOT0001")),
                fake.event(fake.message_event("!greet robots", subtype="bot_message", bot_id="BOTHER01")),
                fake.event({**original, "text": "!greet edited", "edited": {"user": "UALICE01", "ts": "1.0"}}),
                fake.event({"type": "message", "subtype": "message_changed", "channel": "COPS0001",
                            "hidden": True, "ts": original["ts"], "message": {"text": "!greet changed"}}),
                fake.event({"type": "reaction_added", "user": "UALICE01", "reaction": "eyes"})]
        envelopes = [await fake.push("events_api", payload) for payload in sent]
        for envelope in envelopes:
            await _acked(fake, envelope)
        assert await _whos(squall) == []


async def test_a_person_slack_cannot_name_yet_is_not_acknowledged_and_runs_on_the_retry(
        home: Path, fake: FakeSlack) -> None:
    """users.info failing for someone never looked up: nothing is handed on (a guessed name could be
    someone else), and the event is left to Slack's retry rather than dropped."""
    fake.retry_after = 1.5  # Slack's is 3 s
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        await _acked(fake, await fake.push("events_api", fake.event(fake.message_event("hello"))))  # alice is known
        fake.errors["users.info"] = "ratelimited"
        envelope = await fake.push("events_api", fake.event(fake.message_event("!greet named", user="UBOB0001")))
        await fake.wait_for(lambda: any(c.method == "users.info" and c.status != 200 for c in fake.calls),
                            what="bob's failed lookup")
        assert await _not_acked_yet(fake, envelope)
        del fake.errors["users.info"]
        await _posted(fake, lambda m: m.get("text") == "hello named", "the result of Slack's retry")
        await settle(squall, bot)
        assert [e["context"]["user"] for e in await squall.executions.list(limit=5)] == ["bob"]


async def test_an_event_from_someone_slack_says_does_not_exist_is_acknowledged_and_runs_nothing(
        home: Path, fake: FakeSlack) -> None:
    """users.info answering `user_not_found` is final: Slack's retries would name no one either, so the
    event is taken (acknowledged) and dropped with a line saying why, not answered 503 three times."""
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        fake.errors["users.info"] = "user_not_found"
        envelope = await fake.push("events_api", fake.event(fake.message_event("!greet nobody", user="UGHOST01")))
        await _acked(fake, envelope)
        await settle(squall, bot)
        assert await squall.executions.list(limit=5) == []


async def test_a_slash_command_is_acknowledged_once_stored_or_within_ack_within(
        home: Path, fake: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slack never sends a slash command again, and shows the person "operation_timeout" after 3 s: it
    is acknowledged once stored (a crash before that shows the error instead of losing it silently), or
    after ACK_WITHIN if storing takes longer (it is stored then, and answered in the channel)."""
    monkeypatch.setattr(adapters.slack, "ACK_WITHIN", 60.0)
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        gate, waiting = _held(squall, monkeypatch)
        envelope = await fake.push("slash_commands", fake.slash("greet slashed"))
        await asyncio.wait_for(waiting.wait(), 30)
        assert await _not_acked_yet(fake, envelope)
        gate.set()
        await _acked(fake, envelope)
        assert await _whos(squall) == ["slashed"]

        monkeypatch.setattr(adapters.slack, "ACK_WITHIN", 0.05)
        gate, waiting = _held(squall, monkeypatch)
        late = await fake.push("slash_commands", fake.slash("greet late"))
        await _acked(fake, late)  # while its request still waits at the gate
        assert waiting.is_set() and not gate.is_set()
        gate.set()
        await _posted(fake, lambda m: m.get("text") == "hello late", "the late command's result")
        await settle(squall, bot)
        assert await _whos(squall) == ["late", "slashed"]


def _multiple(home: Path) -> None:
    write(home / "packs" / "demo" / "aliases" / "duplicate.yaml", r"""
        name: duplicate
        action_ref: demo.greet
        description: One execution per issue.
        formats:
          - display: "duplicate of <issue>"
            representation: ["(?:\\b|^)duplicate of (?P<who>[A-Z][A-Z0-9]+-[0-9]+)(?:\\b|$)"]
            match_multiple: true
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)


async def test_each_command_of_a_match_multiple_message_runs_once_however_often_it_comes(
        home: Path, fake: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    """Each fit is a command of its own, stored under a key of its own: the second is no repeat of the
    first, and a second delivery of the message after a restart repeats neither."""
    caplog.set_level(logging.INFO, logger="bot.chat.dispatcher")
    payload = fake.event(fake.message_event("!duplicate of ABC-1 and duplicate of ABC-2"), event_id="EvMULTI01")
    _multiple(home)
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        await fake.push("events_api", payload)
        await fake.wait_for(lambda: {"hello ABC-1", "hello ABC-2"} <= set(_texts(fake)), what="both results")
        await settle(squall, bot)
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        again = await fake.push("events_api", payload, retry_attempt=1, retry_reason="timeout")
        await _acked(fake, again)
        await fake.wait_for(lambda: sum("came again" in r.getMessage() for r in caplog.records) >= 2,
                            what="both commands of the message told apart as come again")
        await settle(squall, bot)
        assert await _whos(squall) == ["ABC-1", "ABC-2"]


async def test_a_retry_policy_or_a_chat_retry_is_no_second_delivery_of_the_command(home: Path,
                                                                                  fake: FakeSlack) -> None:
    """A re-run keeps the context it re-runs (a retry policy's, the chat among it): it is stored under a
    key of its own, never refused as the first message coming again. A chat `retry` sent twice re-runs once."""
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        await fake.push("events_api", fake.event(fake.message_event("!greet first")))
        await _posted(fake, lambda m: m.get("text") == "hello first", "the result")
        await settle(squall, bot)
        first = (await squall.executions.list(limit=5))[0]
        rerun = await squall.executions.rerun(first["id"])  # as a retry policy re-runs: the original's context
        assert rerun["context"]["chat"]["delivery"] == first["context"]["chat"]["delivery"]
        retry = fake.event(fake.message_event(f"!retry {first['id']}"), event_id="EvRETRY01")
        await fake.push("events_api", retry)
        await _posted(fake, lambda m: (m.get("text") or "").startswith("Retrying as"), "the retry's answer")
        again = await fake.push("events_api", retry, retry_attempt=1, retry_reason="timeout")
        await _acked(fake, again)
        await settle(squall, bot)
        assert await _whos(squall) == ["first", "first", "first"]  # the original, the policy's, the chat's
        assert len([t for t in _texts(fake) if (t or "").startswith("Retrying as")]) == 1


async def test_http_mode_answers_503_until_the_command_is_stored_and_runs_it_once(
        http_slack: tuple[Any, ...], fake: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    squall, client = http_slack
    calls = _failing_once(squall, monkeypatch)
    body = json.dumps(fake.event(fake.message_event(f"<@{BOT_USER}> greet http", kind="app_mention"))).encode()
    headers = {**_signed(body), "Content-Type": "application/json"}
    first = await client.post("/slack/events", content=body, headers=headers)
    assert first.status_code == 503, first.text  # not a 200, which tells Slack it was taken
    assert "sends it again" in first.json()["faultstring"]
    retry = await client.post("/slack/events", content=body,
                              headers={**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"})
    assert retry.status_code == 200
    again = await client.post("/slack/events", content=body,
                              headers={**headers, "X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"})
    assert again.status_code == 200
    await _posted(fake, lambda m: m.get("text") == "hello http", "the result")
    assert await _whos(squall) == ["http"] and len(calls) == 2
