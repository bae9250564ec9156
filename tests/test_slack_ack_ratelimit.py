"""The acknowledgement Slack waits for (3 s, then it sends the event again) never waits out a rate-limited
name lookup: `users.info` answering HTTP 429 with a long `Retry-After` fails the lookup at once, so the
sender not named yet is answered promptly (an event with a 503 that Slack's retry runs once; a slash
command with "try again in a moment" in its ack), while a short `Retry-After` is still waited for.

The bounds below (`PROMPTLY`) are functional: well under the 10 s `Retry-After` the fake answers with,
so an ack held for it cannot pass, and far above what answering takes.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.fake_slack import BOT_USER, FakeSlack
from tests.test_chat import settle
from tests.test_slack import _posted, _signed, _slack_chat, fake, http_mode, slack  # noqa: F401  (fixtures)

#: Seconds within which an answer must come back: below the fake's Retry-After (10 s) and httpx's own 5 s.
PROMPTLY = 4.0


def _limited(fake: FakeSlack) -> list[int]:  # noqa: F811
    return [c.status for c in fake.calls if c.method == "users.info" and c.status == 429]


async def test_an_event_is_answered_at_once_when_users_info_is_rate_limited_and_runs_on_the_retry(
        http_mode: tuple[Any, ...], fake: FakeSlack) -> None:  # noqa: F811
    squall, client = http_mode
    fake.ratelimit("users.info", times=1, retry_after=10)
    body = json.dumps(fake.event(fake.message_event(f"<@{BOT_USER}> greet limited", kind="app_mention"))).encode()
    headers = {**_signed(body), "Content-Type": "application/json"}
    first = await asyncio.wait_for(client.post("/slack/events", content=body, headers=headers), PROMPTLY)
    assert first.status_code == 503, first.text  # not taken: alice is not named yet, and no other name is guessed
    assert "sends it again" in first.json()["faultstring"]
    assert _limited(fake) == [429]
    retry = await asyncio.wait_for(client.post(
        "/slack/events", content=body,
        headers={**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}), PROMPTLY)
    assert retry.status_code == 200, retry.text
    await _posted(fake, lambda m: m.get("text") == "hello limited", "the result of Slack's retry")
    await settle(squall, squall.chat)
    assert [e["context"]["user"] for e in await squall.executions.list(limit=5)] == ["alice"]


async def test_a_short_retry_after_is_still_waited_for_so_the_event_runs_at_once(
        http_mode: tuple[Any, ...], fake: FakeSlack) -> None:  # noqa: F811
    """A name must not flap on a brief 429: a Retry-After the ack can afford is waited out and asked again."""
    _squall, client = http_mode
    fake.ratelimit("users.info", times=1, retry_after=1)
    body = json.dumps(fake.event(fake.message_event(f"<@{BOT_USER}> greet briefly", kind="app_mention"))).encode()
    response = await asyncio.wait_for(client.post("/slack/events", content=body,
                                                  headers={**_signed(body), "Content-Type": "application/json"}),
                                      PROMPTLY)
    assert response.status_code == 200, response.text
    assert _limited(fake) == [429]
    await _posted(fake, lambda m: m.get("text") == "hello briefly", "the result")


async def test_a_slash_command_is_told_to_try_again_in_its_ack_when_users_info_is_rate_limited(
        home: Path, fake: FakeSlack) -> None:  # noqa: F811
    fake.ratelimit("users.info", times=1, retry_after=10)
    async with _slack_chat(home, fake) as (squall, bot, _adapter):
        envelope = await fake.push("slash_commands", fake.slash("greet slashed"))
        ack = await fake.wait_for(lambda: next((a for a in fake.acks if a["envelope_id"] == envelope), None),
                                  timeout=PROMPTLY, what="the slash command's ack")
        text = (ack.get("payload") or {}).get("text") or ""
        assert "could not say who you are" in text and "try again" in text, ack
        assert await squall.executions.list(limit=5) == []
        # Trying again in a moment works: the limit is over.
        await fake.push("slash_commands", fake.slash("greet again"))
        await _posted(fake, lambda m: m.get("text") == "hello again", "the result of trying again")
        await settle(squall, bot)
    assert not any(m.get("text") == "hello slashed" for m in fake.messages)


async def test_a_rate_limited_user_group_lookup_keeps_the_groups_known_and_asks_again_soon(
        slack: tuple[Any, ...], fake: FakeSlack) -> None:  # noqa: F811
    """The user groups are asked for again when their cache runs out; a 429 then keeps the members known so
    far (olivia stays in `oncall`, so its aliases stay hers) and asks again after Slack's `Retry-After`, not
    `GROUPS_TTL`: an empty list for five minutes refused every group member their group-only aliases."""
    _squall, _bot, adapter = slack
    await fake.push("events_api", fake.event(fake.message_event("!secret first", user="UOLIVIA1")))
    await fake.wait_for(lambda: [m["text"] for m in fake.messages].count("secret ok") == 1, what="olivia's result")
    adapter._groups = (adapter._groups[0], 0.0)  # the cache ran out
    fake.ratelimit("usergroups.list", times=1, retry_after=7)
    await fake.push("events_api", fake.event(fake.message_event("!secret again", user="UOLIVIA1")))
    await fake.wait_for(lambda: [m["text"] for m in fake.messages].count("secret ok") == 2,
                        what="olivia's second result, allowed by the groups known")
    assert [c.status for c in fake.calls if c.method == "usergroups.list"][-1] == 429
    assert adapter._groups[1] - time.monotonic() <= 7 + 1  # asked again after the Retry-After, not GROUPS_TTL
    assert not any(m["text"].startswith("Sorry olivia") for m in fake.messages)
