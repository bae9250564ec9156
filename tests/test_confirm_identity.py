"""A confirmation is answered by the person it asks, told by the platform's user id where Slack and Mattermost
say it (`Message.user_id`), never by whoever holds their name now: a name can be renamed away and taken by
someone else while the question is open, and a `yes` runs the command with the rights the opener's id is
granted (`mattermost:<id>`, `slack:U…`). The opener, renamed meanwhile, still answers it. A confirmation
stored by name before ids keyed it is taken up under the id its origin carries."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.chat import sessions
from tests.fake_mattermost import FakeMattermost
from tests.test_chat import _confirmations_stored, loopback_chat, settle
from tests.test_chat_confirm import _asked_by_user_id
from tests.test_forms_identity import _renamed
from tests.test_mattermost import _chat, _with_buttons, replies_to

#: What the namesake of the person a confirmation asks is told when they answer it.
NOT_YOURS = "That prompt asks the person who was alice when it was asked, not you; only they can answer it. " \
            "Nothing was run."


@pytest.fixture
async def fake(home: Path) -> AsyncIterator[FakeMattermost]:
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


async def _asked(fake: FakeMattermost) -> dict[str, Any]:
    """alice types the confirming command; back once she is asked (her post, the thread's root)."""
    post = await fake.say(fake.alice, fake.town_square, "@squallbot careful bob")
    await replies_to(fake, post, "About to run demo.greet")
    return post


async def _answer(fake: FakeMattermost, user: dict[str, Any], post: dict[str, Any], needle: str | None = None) -> str:
    """`user` types `yes` in the thread of `post`; back once the bot's answer holding `needle` is there
    (without one: the bot's next post in the thread, whose text is returned)."""
    def thread() -> list[str]:
        return [p["message"] for p in fake.bot_posts(fake.town_square["id"]) if p["root_id"] == post["id"]]

    said = len(thread())
    await fake.say(user, fake.town_square, "@squallbot yes", root_id=post["id"])
    if needle is not None:
        await replies_to(fake, post, needle)
        return needle
    return (await fake.wait_for(lambda: thread()[said:]))[0]


async def test_a_namesake_s_typed_yes_runs_nothing_and_the_renamed_opener_s_runs_it(home: Path,
                                                                                  fake: FakeMattermost) -> None:
    """alice (allowed demo.careful by her Mattermost id alone) is asked; she is renamed `alice.old` and bob
    given `alice`. bob's `yes` is not hers: it runs nothing and is told whom the prompt asks, and the prompt
    stays hers. Her `yes` as `alice.old` runs the command, as who she is now."""
    squall, bot, adapter = await _chat(home, fake)
    try:
        post = await _asked(fake)
        await _renamed(fake, adapter)
        assert await _answer(fake, fake.bob, post) == NOT_YOURS
        assert await squall.executions.list(action="demo.greet") == []

        await _answer(fake, fake.alice, post, "hello bob")
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old"
        assert _confirmations_stored(squall) == []  # answered once
    finally:
        await bot.stop()
        await squall.close()


async def test_a_renamed_opener_s_typed_yes_runs_their_command(home: Path, fake: FakeMattermost) -> None:
    """alice renamed `alice.old` while asked (nobody took her name) answers her prompt under her new name."""
    squall, bot, adapter = await _chat(home, fake)
    try:
        post = await _asked(fake)
        await fake.rename(fake.alice, "alice.old")
        await fake.wait_for(lambda: fake.alice["id"] not in adapter._usernames)  # `user_updated` was taken
        await _answer(fake, fake.alice, post, "hello bob")
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old" and execution["status"] == "succeeded"
    finally:
        await bot.stop()
        await squall.close()


async def test_a_namesake_s_click_on_the_yes_button_runs_nothing(home: Path, fake: FakeMattermost) -> None:
    """The buttons too: bob, renamed `alice`, clicking Yes on alice's prompt runs nothing and is told so;
    alice's click as `alice.old` runs it."""
    async with _with_buttons(home, fake) as (squall, adapter):
        post = await fake.say(fake.alice, fake.town_square, "@squallbot careful bob")
        [prompt] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                if (p.get("props") or {}).get("attachments")])
        await _renamed(fake, adapter)
        # The adapter takes the buttons off for a click by the name they ask (`asker`), bob's now: alice
        # clicks the prompt as it was, the dispatcher deciding whose click answers it.
        shown = copy.deepcopy(prompt)
        said = len(fake.bot_posts(fake.town_square["id"]))
        status, _answer = await fake.click(prompt, 0, user=fake.bob)
        assert status == 200
        [told, *_] = await fake.wait_for(lambda: fake.bot_posts(fake.town_square["id"])[said:])
        assert told["message"] == NOT_YOURS and told["root_id"] == post["id"]
        assert await squall.executions.list(action="demo.greet") == []

        status, _answer = await fake.click(shown, 0, user=fake.alice)
        assert status == 200
        await replies_to(fake, post, "hello bob")
        [execution] = await squall.executions.list(action="demo.greet")
        assert execution["context"]["user"] == "alice.old"


async def test_a_confirmation_stored_by_name_is_taken_up_by_its_opener_s_id_after_a_restart(home: Path) -> None:
    """A confirmation a Squall stored under its opener's name (before ids keyed them), with her user id in
    its origin, is taken up after the restart under that id: bob, renamed `alice`, cannot answer it; alice,
    renamed `alice.old`, can, once, and the stored one is gone (a later restart does not ask again)."""
    await _asked_by_user_id(home)  # alice, `slack:U0ALICE01`, asked on (a loopback named) slack
    async with loopback_chat(home, "slack") as (squall, _bot, _slack):  # stored as an older Squall kept it
        [(key, token)] = _confirmations_stored(squall)
        state = json.loads(squall.keys.decrypt(token))
        await sessions.drop(squall, key)
        await sessions.keep(squall, sessions.place_key("confirm:", "slack", "#ops", "alice"), state,
                            time.time() + 30, "the older confirmation")
    async with loopback_chat(home, "slack") as (squall, bot, slack):
        await slack.say("!yes", user="alice", user_id="U0BOB0001")
        await settle(squall, bot)
        assert slack.texts()[-1] == NOT_YOURS
        assert await squall.executions.list(action="demo.wipe") == []
        await slack.say("!yes", user="alice.old", user_id="U0ALICE01")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["status"] == "succeeded" and execution["context"]["user"] == "alice.old"
        assert _confirmations_stored(squall) == []
