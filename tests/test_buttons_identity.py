"""Whose click takes a prompt's buttons off is told by the asker's platform user id (`Reply.asker_id`), as
the dispatcher tells whose answer it is: a name can be renamed away and taken by someone else while the
prompt waits. A namesake's click (refused, running nothing) leaves the asker's buttons; the renamed asker's
click answers, runs the command and takes them off. A prompt posted before prompts carried the id (its
buttons name the asker only) is still taken off by a click under that name."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Reply
from tests.fake_mattermost import FakeMattermost
from tests.fake_slack import FakeSlack, fake_slack
from tests.test_forms_identity import _renamed
from tests.test_mattermost import _with_buttons, replies_to
from tests.test_slack import _posted, _slack_chat

#: What the namesake of the person a confirmation asks is told when they answer it.
NOT_YOURS = "That prompt asks the person who was alice when it was asked, not you; only they can answer it. " \
            "Nothing was run."


# -- Mattermost ------------------------------------------------------------------------------------------

@pytest.fixture
async def mattermost(home: Path) -> AsyncIterator[FakeMattermost]:
    """A Mattermost whose confirming alias demo.careful alice alone may run, named by her user id."""
    server = FakeMattermost()
    await server.start()
    alice = f"mattermost:{server.alice['id']}"
    with (home / "config.yml").open("a") as config:
        config.write(f"auth:\n  aliases:\n    demo.careful:\n      allow: {{users: ['{alice}']}}\n")
    try:
        yield server
    finally:
        await server.stop()


async def _mattermost_prompt(fake: FakeMattermost) -> tuple[dict[str, Any], dict[str, Any]]:
    """alice types the confirming command; back with her post and the bot's prompt with buttons."""
    post = await fake.say(fake.alice, fake.town_square, "@squallbot careful bob")
    [prompt] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                            if p["root_id"] == post["id"]
                                            and (p.get("props") or {}).get("attachments")])
    return post, prompt


def _mattermost_buttons(fake: FakeMattermost, prompt: dict[str, Any]) -> bool:
    """Whether the prompt, as the server holds it now, still shows its buttons."""
    return bool((fake.posts[prompt["id"]].get("props") or {}).get("attachments"))


async def test_mattermost_a_namesake_s_click_leaves_the_asker_s_buttons(home: Path, mattermost: FakeMattermost) -> None:
    """bob, renamed `alice`, clicks Yes on alice's prompt: nothing runs and the buttons stay; alice, renamed
    `alice.old`, clicks Yes on that same prompt: her command runs and the buttons go."""
    fake = mattermost
    async with _with_buttons(home, fake) as (squall, adapter):
        post, prompt = await _mattermost_prompt(fake)
        await _renamed(fake, adapter)
        said = len(fake.bot_posts(fake.town_square["id"]))
        status, answer = await fake.click(prompt, 0, user=fake.bob)
        assert status == 200 and not answer.get("update")
        [told, *_] = await fake.wait_for(lambda: fake.bot_posts(fake.town_square["id"])[said:])
        assert told["message"] == NOT_YOURS
        assert _mattermost_buttons(fake, prompt)  # still alice's to click
        assert await squall.executions.list(action="demo.greet") == []

        status, answer = await fake.click(fake.posts[prompt["id"]], 0, user=fake.alice)
        assert status == 200 and "alice.old chose **Yes**" in answer["update"]["message"]
        assert not _mattermost_buttons(fake, prompt)
        await replies_to(fake, post, "hello bob")
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old"


async def test_mattermost_the_renamed_asker_s_click_takes_the_buttons_off(home: Path,
                                                                          mattermost: FakeMattermost) -> None:
    """alice renamed `alice.old` while asked (nobody took her name) clicks Yes: it runs, the buttons go."""
    fake = mattermost
    async with _with_buttons(home, fake) as (squall, adapter):
        post, prompt = await _mattermost_prompt(fake)
        await fake.rename(fake.alice, "alice.old")
        await fake.wait_for(lambda: fake.alice["id"] not in adapter._usernames)  # `user_updated` was taken
        status, answer = await fake.click(prompt, 0, user=fake.alice)
        assert status == 200 and answer.get("update")
        assert not _mattermost_buttons(fake, prompt)
        await replies_to(fake, post, "hello bob")
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old" and execution["status"] == "succeeded"


async def test_mattermost_a_prompt_posted_without_the_asker_s_id_goes_by_name(home: Path,
                                                                              mattermost: FakeMattermost) -> None:
    """Buttons signed before their context carried `asker_id` (only `asker`, a name) stay for someone
    else's click and go for a click under the asker's name."""
    fake = mattermost
    async with _with_buttons(home, fake) as (_squall, adapter):
        _post, prompt = await _mattermost_prompt(fake)
        for action in prompt["props"]["attachments"][0]["actions"]:
            context = {k: v for k, v in action["integration"]["context"].items()
                       if k not in ("asker_id", "signature")}
            assert context["asker"] == "alice"
            action["integration"]["context"] = {**context, "signature": adapter._sign(context)}
        status, answer = await fake.click(prompt, 1, user=fake.bob)  # No, by someone else
        assert status == 200 and not answer.get("update") and _mattermost_buttons(fake, prompt)
        status, answer = await fake.click(prompt, 1, user=fake.alice)
        assert status == 200 and answer.get("update") and not _mattermost_buttons(fake, prompt)


# -- Slack -----------------------------------------------------------------------------------------------

slack = fake_slack  # the fixture, under this module's name for it


def _slack_buttons(message: dict[str, Any]) -> bool:
    """Whether a posted message, as last edited, still shows its buttons."""
    blocks = (message["edits"][-1] if message["edits"] else message).get("blocks")
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks or []
    return any(b.get("type") == "actions" for b in blocks)


async def _slack_renamed(fake: FakeSlack, adapter: Any, **names: str) -> None:
    """The people (by user id) renamed as `names` says; the adapter's names looked up anew (their hour over)."""
    for user_id, name in names.items():
        fake.users[user_id]["name"] = name
    adapter._users.clear()


async def test_slack_a_namesake_s_click_leaves_the_asker_s_buttons(home: Path, slack: FakeSlack) -> None:
    """bob, renamed `alice`, clicks Yes on alice's prompt: nothing runs and the buttons stay; alice, renamed
    `alice.old`, clicks Yes: her command runs and the buttons go."""
    fake = slack
    async with _slack_chat(home, fake) as (squall, _bot, adapter):
        await fake.push("events_api", fake.event(fake.message_event("!wipe disk")))
        prompt = await _posted(fake, lambda m: m.get("blocks") and "About to run" in m["text"], "the prompt")
        await _slack_renamed(fake, adapter, UALICE01="alice.old", UBOB0001="alice")
        await fake.push("interactive", fake.click(prompt, "yes", user="UBOB0001"))
        await _posted(fake, lambda m: m["text"] == NOT_YOURS, "bob told the prompt is not his")
        assert not prompt["edits"] and _slack_buttons(prompt)
        assert await squall.executions.list(action="demo.greet") == []

        await fake.push("interactive", fake.click(prompt, "yes"))
        await _posted(fake, lambda m: m.get("text") == "wiped disk", "alice's confirmed result")
        await fake.wait_for(lambda: prompt["edits"], what="the prompt updated")
        assert not _slack_buttons(prompt)
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old"


async def test_slack_the_renamed_asker_s_click_takes_the_buttons_off(home: Path, slack: FakeSlack) -> None:
    """alice renamed `alice.old` while asked (nobody took her name) clicks Yes: it runs, the buttons go."""
    fake = slack
    async with _slack_chat(home, fake) as (squall, _bot, adapter):
        await fake.push("events_api", fake.event(fake.message_event("!wipe disk")))
        prompt = await _posted(fake, lambda m: m.get("blocks") and "About to run" in m["text"], "the prompt")
        await _slack_renamed(fake, adapter, UALICE01="alice.old")
        await fake.push("interactive", fake.click(prompt, "yes"))
        await _posted(fake, lambda m: m.get("text") == "wiped disk", "alice's confirmed result")
        await fake.wait_for(lambda: prompt["edits"], what="the prompt updated")
        assert not _slack_buttons(prompt)
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old" and execution["status"] == "succeeded"


async def test_slack_a_prompt_posted_without_the_asker_s_id_goes_by_name(home: Path, slack: FakeSlack) -> None:
    """A prompt whose buttons ask a name alone (a reply without `asker_id`, as every prompt was before) stays
    for someone else's click and goes for a click under that name."""
    fake = slack
    async with _slack_chat(home, fake) as (_squall, _bot, adapter):
        await adapter.send(Reply(adapter="slack", channel="COPS0001", text="Pick one",
                                 buttons=[{"text": "Yes", "value": "yes"}], asker="alice"))
        prompt = await _posted(fake, lambda m: m.get("text") == "Pick one", "the prompt")
        [block] = [b for b in (json.loads(prompt["blocks"]) if isinstance(prompt["blocks"], str)
                               else prompt["blocks"]) if b.get("type") == "actions"]
        assert block["block_id"].startswith("squall_buttons.asker.")  # by name
        said = len(fake.messages)
        await fake.push("interactive", fake.click(prompt, "yes", user="UBOB0001"))
        await fake.wait_for(lambda: fake.messages[said:], what="bob's click answered")
        assert not prompt["edits"] and _slack_buttons(prompt)
        await fake.push("interactive", fake.click(prompt, "yes"))
        await fake.wait_for(lambda: prompt["edits"], what="the prompt updated")
        assert not _slack_buttons(prompt)
