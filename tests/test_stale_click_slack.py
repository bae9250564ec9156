"""Slack: a click on a confirmation prompt marks it "<name> chose *Yes*" only when the click was taken. A
click on a prompt that expired, or was answered already, runs nothing and leaves the prompt as it is:
the bot's reply says why, and the prompt must not claim a choice that was never taken."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.fake_slack import FakeSlack, fake_slack
from tests.test_slack import _posted, _slack_chat

fake = fake_slack  # the fixture, under this module's name for it


def _blocks(edit: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = edit.get("blocks")
    return json.loads(blocks) if isinstance(blocks, str) else blocks or []


async def _clicked(fake: FakeSlack, prompt: dict[str, Any], value: str) -> None:
    """Click `value` on `prompt` and wait for the click's acknowledgement: the adapter handled it, and
    would have updated the prompt by then."""
    envelope = await fake.push("interactive", fake.click(prompt, value))
    await fake.wait_for(lambda: fake.acked(envelope), what="the click acknowledged")


async def _prompt(fake: FakeSlack, who: str) -> dict[str, Any]:
    await fake.push("events_api", fake.event(fake.message_event(f"!wipe {who}")))
    return await _posted(fake, lambda m: bool(m.get("blocks")) and f"who={who}" in (m.get("text") or ""),
                         f"the prompt to wipe {who}")


async def test_a_fresh_click_marks_the_choice_and_a_second_click_leaves_it(home: Path, fake: FakeSlack) -> None:
    """Yes on a live prompt runs its command once and marks who chose what; a second Yes on that prompt (a
    stale client still shows the buttons) is told it was answered already, runs nothing, and adds no mark."""
    async with _slack_chat(home, fake) as (squall, _, _):
        prompt = await _prompt(fake, "disk")
        await _clicked(fake, prompt, "yes")
        await _posted(fake, lambda m: m.get("text") == "wiped disk", "the confirmed result")
        assert len(prompt["edits"]) == 1 and "alice chose *Yes*" in json.dumps(_blocks(prompt["edits"][0]))
        assert not any(b["type"] == "actions" for b in _blocks(prompt["edits"][0]))

        await _clicked(fake, prompt, "yes")
        await _posted(fake, lambda m: (m.get("text") or "").startswith(
            "That prompt is no longer pending: you answered it already (yes)"), "the second click refused")
        assert len(prompt["edits"]) == 1  # no second "chose" over the answered prompt
        assert len(await squall.executions.list(action="demo.greet")) == 1


async def test_a_click_on_an_expired_prompt_leaves_it_as_it_is(home: Path, fake: FakeSlack) -> None:
    """Yes on a prompt whose time ran out runs nothing, says it expired, and never marks "alice chose *Yes*"."""
    async with _slack_chat(home, fake) as (squall, bot, _):
        prompt = await _prompt(fake, "disk")
        [waiting] = bot.dispatcher._confirmations.values()
        waiting.expires = time.time() - 1
        await _clicked(fake, prompt, "yes")
        await _posted(fake, lambda m: m.get("text") == "That confirmation has expired; send the command again.",
                      "the expiry told")
        assert prompt["edits"] == []
        assert await squall.executions.list(action="demo.greet") == []

        await _clicked(fake, prompt, "yes")  # a click once it is settled as expired: told so, no mark either
        await _posted(fake, lambda m: (m.get("text") or "").startswith(
            "That prompt is no longer pending: it expired before it was answered."), "the expired prompt told")
        assert prompt["edits"] == []
        assert await squall.executions.list(action="demo.greet") == []


async def test_a_click_on_a_replaced_prompt_leaves_it_and_the_newer_one_runs(home: Path, fake: FakeSlack) -> None:
    """Yes on an older prompt, replaced by the person's newer command, marks nothing; the newer prompt's
    Yes is marked and runs its own command."""
    async with _slack_chat(home, fake) as (squall, _, _):
        older = await _prompt(fake, "staging")
        newer = await _prompt(fake, "production")
        await _clicked(fake, older, "yes")
        await _posted(fake, lambda m: "replaced it" in (m.get("text") or ""), "the older prompt's Yes refused")
        assert older["edits"] == []
        await _clicked(fake, newer, "yes")
        await _posted(fake, lambda m: m.get("text") == "wiped production", "the newer prompt's command")
        assert "alice chose *Yes*" in json.dumps(_blocks(newer["edits"][-1]))
        assert [r["parameters"]["who"] for r in await squall.executions.list(action="demo.greet")] == ["production"]


async def test_an_inquiry_button_is_marked_as_before(home: Path, fake: FakeSlack) -> None:
    """A question's button is no confirmation's (the bot does not classify it): its click is marked
    "alice chose *Yes*" as it always was, and answers the inquiry."""
    with (home / "config.yml").open("a") as config:
        config.write("routes:\n  ops: {adapter: slack, channel: COPS0001}\n")
    async with _slack_chat(home, fake) as (squall, _, _):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema})
        question = await _posted(fake, lambda m: bool(m.get("blocks")), "the question")
        await _clicked(fake, question, f"yes:inquiry:{record['id']}")
        await _posted(fake, lambda m: (m.get("text") or "").startswith("Thanks alice"), "the answer taken")
        assert "alice chose *Yes*" in json.dumps(_blocks(question["edits"][0]))
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["result"]["response"] == {"continue": True}
