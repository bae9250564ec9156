"""Mattermost: the answer to a click on a confirmation prompt marks it "alice chose **Yes**" only when the
click was taken. A click on a prompt that expired, or was answered already, runs nothing and answers no
`update`: the prompt stays as it is, and the bot's reply in its thread says why."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.fake_mattermost import FakeMattermost, fake_mattermost
from tests.test_mattermost import _with_buttons, replies_to

fake = fake_mattermost  # the fixture, under this module's name for it


async def _prompt(fake: FakeMattermost, who: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """alice's command and a copy of its prompt as first posted (buttons and all: a stale client's view)."""
    post = await fake.say(fake.alice, fake.town_square, f"@squallbot careful {who}")
    [prompt] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                            if p["root_id"] == post["id"]
                                            and (p.get("props") or {}).get("attachments")])
    return post, json.loads(json.dumps(prompt))


async def test_a_fresh_click_marks_the_choice_and_a_second_click_does_not(home: Path, fake: FakeMattermost) -> None:
    """Yes on a live prompt runs its command once and the answer marks who chose what; a second Yes on the
    prompt as first shown is told it was answered already, runs nothing, and its answer updates nothing."""
    async with _with_buttons(home, fake) as (squall, _adapter):
        post, prompt = await _prompt(fake, "disk")
        status, answer = await fake.click(prompt, 0)
        assert status == 200 and "alice chose **Yes**" in answer["update"]["message"]
        await replies_to(fake, post, "hello disk")
        marked = dict(fake.posts[prompt["id"]])
        assert marked["props"] == {} and "alice chose **Yes**" in marked["message"]

        status, answer = await fake.click(prompt, 0)
        assert status == 200 and "update" not in answer
        await replies_to(fake, post, "you answered it already (yes)")
        assert fake.posts[prompt["id"]]["message"] == marked["message"]
        assert len(await squall.executions.list(action="demo.greet")) == 1


async def test_a_click_on_an_expired_prompt_leaves_it_as_it_is(home: Path, fake: FakeMattermost) -> None:
    """Yes on a prompt whose time ran out runs nothing, says it expired, and the prompt keeps its text."""
    async with _with_buttons(home, fake) as (squall, _adapter):
        post, prompt = await _prompt(fake, "disk")
        [waiting] = squall.chat.dispatcher._confirmations.values()
        waiting.expires = time.time() - 1
        status, answer = await fake.click(prompt, 0)
        assert status == 200 and "update" not in answer
        await replies_to(fake, post, "That confirmation has expired")
        stored = fake.posts[prompt["id"]]
        assert stored["message"] == prompt["message"] and "chose" not in stored["message"]

        status, answer = await fake.click(prompt, 1)  # No, once it is settled as expired: no mark either
        assert status == 200 and "update" not in answer
        await replies_to(fake, post, "it expired before it was answered")
        assert "chose" not in fake.posts[prompt["id"]]["message"]
        assert await squall.executions.list(action="demo.greet") == []


async def test_an_inquiry_button_is_marked_as_before(home: Path, fake: FakeMattermost) -> None:
    """A question's button is no confirmation's (the bot does not classify it): the click's answer marks
    "alice chose **Yes**" as it always did, and answers the inquiry."""
    with (home / "config.yml").open("a") as config:
        config.write(f"routes:\n  ops: {{adapter: mattermost, channel: {fake.town_square['id']}}}\n")
    async with _with_buttons(home, fake) as (squall, _adapter):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema})
        [question] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                  if (p.get("props") or {}).get("attachments")])
        status, answer = await fake.click(question, 0)
        assert status == 200 and "alice chose **Yes**" in answer["update"]["message"]
        await replies_to(fake, question, "Thanks alice")
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["result"]["response"] == {"continue": True}
