"""A platform form is its opener's by the platform's user id, which no one can change or choose, not by
a name a person may be renamed out of or into (`FormSubmission.user_id`): the person a Slack modal or a
Mattermost dialog was opened for sends it, renamed or not, and their rights granted by id
(`slack:U…`, `mattermost:<id>`) hold; whoever holds their name now sends nothing. A question-by-question
form in chat is answered by its opener alone by the same rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.mattermost import MattermostAdapter
from adapters.mattermost import create as create_mattermost
from adapters.slack import SlackAdapter
from adapters.slack import create as create_slack
from bot.app import Squall
from engine.config import load_config
from tests.conftest import free_port, write
from tests.fake_mattermost import BOT_TOKEN as MM_BOT_TOKEN
from tests.fake_mattermost import FakeMattermost
from tests.fake_slack import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack
from tests.test_chat_forms import SECRET, _open_from_button, _pack, _said, _slack_posted

OPENED_FOR_ALICE = "This form was opened for alice; open your own."


def _allow_only(home: Path, ref: str, user: str) -> None:
    """Allow alias `ref` to `user` alone (an adapter-qualified user id); `_pack` wrote `auth:` last."""
    with (home / "config.yml").open("a") as config:
        config.write(f"  aliases:\n    {ref}:\n      allow: {{users: ['{user}']}}\n")


# -- Slack: a modal -----------------------------------------------------------------------------------

@pytest.fixture
async def slack(home: Path) -> AsyncIterator[tuple[Squall, FakeSlack, SlackAdapter]]:
    """demo.deploy may be run by alice alone, named by her Slack user id."""
    _pack(home)
    _allow_only(home, "demo.deploy", "slack:UALICE01")
    fake = await FakeSlack().start()
    adapter = create_slack({"enabled": True, "bot_token": BOT_TOKEN, "app_token": APP_TOKEN,
                            "signing_secret": SIGNING_SECRET, "base_url": fake.base_url}, None)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    await squall.chat.start()
    try:
        yield squall, fake, adapter
    finally:
        await squall.chat.stop()
        await squall.close()
        await fake.close()


async def test_a_slack_modal_is_sent_by_its_opener_s_user_id_not_by_who_holds_their_name(slack) -> None:
    """alice (allowed demo.deploy by `slack:UALICE01` only) opens its modal; then she is renamed
    `alice.old` and bob takes `alice`. bob's submission is refused, though his name is the one the form
    was opened under, and runs nothing; alice's, under her new name, runs as her, allowed by her id."""
    squall, fake, adapter = slack
    view = await _open_from_button(fake, "!run-form deploy", "demo.deploy")
    fake.users["UALICE01"]["name"] = "alice.old"
    fake.users["UBOB0001"]["name"] = "alice"
    adapter._users.clear()  # the names' hour is over: both are looked up anew

    values = {"host": "web1", "count": "1", "token": SECRET}
    forged = await fake.submit_view(view, values, user="UBOB0001")
    assert forged["errors"] == {"host": OPENED_FOR_ALICE}
    assert await squall.executions.list(limit=5) == []

    assert await fake.submit_view(view, values) == {}
    await _slack_posted(fake, lambda m: m.get("text") == "deployed web1 x1 to dev", "the result")
    [execution] = await squall.executions.list(limit=5)
    assert execution["context"]["user"] == "alice.old"


# -- Mattermost: an interactive dialog, and questions where there are no dialogs -----------------------

async def _mattermost(home: Path, fake: FakeMattermost, **section: Any) -> tuple[Squall, MattermostAdapter]:
    """A chat on `fake` whose demo.deploy and demo.restart (an alias of demo.reboot for anyone) alice
    alone may run, named by her Mattermost user id."""
    _pack(home)
    write(home / "packs" / "demo" / "aliases" / "restart.yaml", """
        name: restart
        action_ref: demo.reboot
        formats: ["restart {{host}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    _allow_only(home, "demo.deploy", f"mattermost:{fake.alice['id']}")
    with (home / "config.yml").open("a") as config:
        config.write(f"    demo.restart:\n      allow: {{users: ['mattermost:{fake.alice['id']}']}}\n")
    adapter = create_mattermost({"enabled": True, "url": fake.url, "token": MM_BOT_TOKEN, "team": "ops",
                                 "slash_token": "slash-token", **section}, None)
    assert isinstance(adapter, MattermostAdapter)
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[adapter])
    await squall.chat.start()
    return squall, adapter


async def _renamed(fake: FakeMattermost, adapter: MattermostAdapter) -> None:
    """alice is renamed `alice.old` and bob given `alice`; back once the adapter names them so."""
    await fake.rename(fake.alice, "alice.old")
    await fake.rename(fake.bob, "alice")

    async def named() -> None:
        while (await adapter._username(fake.alice["id"]), await adapter._username(fake.bob["id"])) != \
                ("alice.old", "alice"):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(named(), 10)


@pytest.fixture
async def mattermost(home: Path) -> AsyncIterator[tuple[Squall, FakeMattermost, MattermostAdapter, str]]:
    """The chat with dialogs: `actions_url` on Squall's API server."""
    from bot.http import ApiServer

    fake = FakeMattermost()
    await fake.start()
    port = free_port()
    squall, adapter = await _mattermost(home, fake, actions_url=f"http://127.0.0.1:{port}/mattermost/actions")
    server = ApiServer(squall, host="127.0.0.1", port=port)
    await server.start()
    try:
        yield squall, fake, adapter, f"http://127.0.0.1:{port}/mattermost/command"
    finally:
        await server.stop()
        await squall.chat.stop()
        await squall.close()
        await fake.stop()


async def test_a_mattermost_dialog_is_sent_by_its_opener_s_user_id_not_by_who_holds_their_name(mattermost) -> None:
    """As in Slack: alice's dialog, allowed to her by `mattermost:<id>`, is refused to bob once he is
    renamed `alice`, and sent by her as `alice.old`."""
    squall, fake, adapter, slash_url = mattermost
    status, _ = await fake.slash(slash_url, "run-form demo.deploy")
    assert status == 200
    [opened] = await fake.wait_for(lambda: fake.dialogs)
    await _renamed(fake, adapter)

    values = {"host": "web1", "count": "1", "token": SECRET}
    status, answer = await fake.submit_dialog(opened, values, user=fake.bob)
    assert (status, answer) == (200, {"error": OPENED_FOR_ALICE})
    assert await squall.executions.list(limit=5) == []

    status, answer = await fake.submit_dialog(opened, values, user=fake.alice)
    assert (status, answer) == (200, {})
    await fake.wait_for(lambda: any("deployed web1 x1 to dev" in t for t in _said(fake)))
    [execution] = await squall.executions.list(limit=5)
    assert execution["context"]["user"] == "alice.old"


async def test_a_mattermost_form_s_question_is_not_answered_by_who_took_its_opener_s_name(home: Path) -> None:
    """Without an `actions_url` no dialog opens: the form's question is asked in the channel, for alice.
    bob, renamed `alice`, answering it there is not her answer (a command then, which names none):
    nothing runs as alice."""
    fake = FakeMattermost()
    await fake.start()
    squall, adapter = await _mattermost(home, fake)
    try:
        await fake.say(fake.alice, fake.town_square, "@squallbot run-form restart")
        await fake.wait_for(lambda: any(p["message"].endswith("host? (string)") for p in fake.bot_posts()))
        await _renamed(fake, adapter)
        said = len(fake.bot_posts())
        await fake.say(fake.bob, fake.town_square, "@squallbot db1")
        await fake.wait_for(lambda: fake.bot_posts()[said:])
        assert not any("rebooted" in p["message"] for p in fake.bot_posts())
        assert await squall.executions.list(limit=5) == []
    finally:
        await squall.chat.stop()
        await squall.close()
        await fake.stop()
