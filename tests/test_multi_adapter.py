"""Several chat platforms in one Squall: Slack, Mattermost, IRC and the loopback together.

A command from any of them is answered where it came from (and nowhere else); notification
routes in config send to the platform and channel they name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import adapters.irc
import adapters.mattermost
import adapters.slack
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from engine.config import load_config
from tests import fake_mattermost, fake_slack
from tests.conftest import write
from tests.ircd import IrcServer, Person
from tests.ircd import ircd as ircd_fixture

ircd = ircd_fixture  # the fixture from tests/ircd.py, by the name tests ask for


@pytest.fixture
async def slack_fake() -> AsyncIterator[fake_slack.FakeSlack]:
    server = await fake_slack.FakeSlack().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def mattermost_fake() -> AsyncIterator[fake_mattermost.FakeMattermost]:
    server = fake_mattermost.FakeMattermost()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def everything(home: Path, ircd: IrcServer, slack_fake: fake_slack.FakeSlack,
                     mattermost_fake: fake_mattermost.FakeMattermost) -> AsyncIterator[dict[str, Any]]:
    write(home / "config.yml", """
        database: {url: "sqlite:///data/squall.db"}
        packs: {paths: [packs]}
        api: {enabled: false}
        routes:
          ops: {adapter: irc, channel: "#ops"}
          town: {adapter: mattermost, channel: town-square}
    """)
    pack = home / "packs" / "asking"
    write(pack / "pack.yaml", "ref: asking\nname: asking\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "aliases" / "approve.yaml", """
        name: approve
        action_ref: core.ask
        description: Ask the channel to go ahead.
        formats: ["approval please"]
        ack: {enabled: false}
    """)
    config = load_config(home / "config.yml")
    slack = adapters.slack.create({"enabled": True, "bot_token": fake_slack.BOT_TOKEN,
                                   "app_token": fake_slack.APP_TOKEN, "base_url": slack_fake.base_url}, config)
    mattermost = adapters.mattermost.create({"enabled": True, "url": mattermost_fake.url,
                                             "token": fake_mattermost.BOT_TOKEN, "team": "ops"}, config)
    irc = adapters.irc.create({"enabled": True, "server": "127.0.0.1", "port": ircd.port, "nick": "squall",
                               "channels": ["#ops"], "flood_interval": 0.05}, config)
    loopback = LoopbackAdapter()
    squall = await Squall.start(config, adapters=[slack, mattermost, irc, loopback])
    bot = squall.chat
    await bot.start()
    alice = await Person("alice").connect(ircd.port)
    try:
        await alice.join("#ops", wait_for="squall")
        yield {"squall": squall, "bot": bot, "slack": slack_fake, "mattermost": mattermost_fake, "irc": alice,
               "loopback": loopback}
    finally:
        await alice.close()
        await bot.stop()
        await squall.close()


async def test_each_platform_gets_its_own_answers(everything: dict[str, Any]) -> None:
    slack, mattermost, alice, loopback = (everything[k] for k in ("slack", "mattermost", "irc", "loopback"))
    mark = len(alice.lines)
    await slack.push("events_api", slack.event(slack.message_event("!echo from-slack")))
    await mattermost.say(mattermost.alice, mattermost.town_square, "!echo from-mattermost")
    await alice.say("#ops", "!echo from-irc")
    await loopback.say("!echo from-loopback")

    await slack.wait_for(lambda: any(m.get("text") == "from-slack" for m in slack.messages), what="slack's answer")
    await mattermost.wait_for(lambda: any(p["message"] == "from-mattermost"
                                          for p in mattermost.bot_posts(mattermost.town_square["id"])))
    await alice.wait_for(lambda words, raw: b"from-irc" in raw and raw.startswith(b":squall!"), start=mark)
    await loopback.wait_for(lambda posted: any(p.text == "from-loopback" for p in posted))

    # Nothing crossed over: every platform saw only its own command's replies.
    slack_texts = " ".join(str(m.get("text")) for m in slack.messages)
    mattermost_texts = " ".join(p["message"] for p in mattermost.bot_posts())
    irc_texts = " ".join(alice.privmsgs("squall"))
    loopback_texts = " ".join(loopback.texts())
    for name, texts in (("slack", slack_texts), ("mattermost", mattermost_texts), ("irc", irc_texts),
                        ("loopback", loopback_texts)):
        others = {"slack", "mattermost", "irc", "loopback"} - {name}
        assert f"from-{name}" in texts
        assert not any(f"from-{other}" in texts for other in others), (name, texts)


async def test_notification_routes_reach_the_platform_they_name(everything: dict[str, Any]) -> None:
    squall, mattermost, alice = everything["squall"], everything["mattermost"], everything["irc"]
    mark = len(alice.lines)
    for route, text in (("ops", "deploy finished (to irc)"), ("town", "deploy finished (to mattermost)")):
        execution = await squall.executions.request("chatops.post_message", {"route": route, "message": text})
        done = await squall.executions.wait(execution["id"])
        assert done["status"] == "succeeded", done
    await alice.wait_for(lambda words, raw: b"deploy finished (to irc)" in raw, start=mark)
    await mattermost.wait_for(lambda: any(p["message"] == "deploy finished (to mattermost)"
                                          for p in mattermost.bot_posts(mattermost.town_square["id"])))
    assert not any("to mattermost" in text for text in alice.privmsgs("squall"))
    assert not any("to irc" in p["message"] for p in mattermost.bot_posts())


async def _answered(squall: Squall, before: set[str]) -> dict[str, Any]:
    """The inquiry started since `before`, once it is no longer pending."""
    for _ in range(400):
        inquiries = [e for e in await squall.executions.list(action="core.ask") if e["id"] not in before]
        if inquiries and inquiries[0]["status"] != "pending":
            return inquiries[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the inquiry was not answered: {inquiries}")


async def _asked(squall: Squall, before: set[str]) -> dict[str, Any]:
    for _ in range(400):
        inquiries = [e for e in await squall.executions.list(action="core.ask") if e["id"] not in before]
        if inquiries and (inquiries[0].get("result") or {}).get("chat", {}).get("outbox_id"):
            return inquiries[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the inquiry was never asked in chat")


async def test_a_bare_answer_where_the_question_was_asked_answers_it_on_every_platform(
        everything: dict[str, Any]) -> None:
    """The adapters pass every message on and the dispatcher decides: a bare `yes` in the question's
    thread (Slack, Mattermost) or addressed to the bot in its channel (IRC, which has no threads)."""
    squall, slack, mattermost, alice = everything["squall"], everything["slack"], everything["mattermost"], \
        everything["irc"]
    seen: set[str] = set()

    command = slack.message_event("!approval please")
    await slack.push("events_api", slack.event(command))
    asked = await _asked(squall, seen)
    assert asked["result"]["chat"]["thread"] == command["ts"]
    await slack.push("events_api", slack.event(slack.message_event("yes", thread_ts=command["ts"])))
    answered = await _answered(squall, seen)
    assert answered["status"] == "succeeded" and answered["result"]["response"] == {"continue": True}
    seen.add(answered["id"])

    post = await mattermost.say(mattermost.alice, mattermost.town_square, "!approval please")
    await _asked(squall, seen)
    await mattermost.say(mattermost.alice, mattermost.town_square, "yes", root_id=post["id"])
    answered = await _answered(squall, seen)
    assert answered["status"] == "succeeded" and answered["result"]["response"] == {"continue": True}
    seen.add(answered["id"])

    await alice.say("#ops", "!approval please")
    await _asked(squall, seen)
    await alice.say("#ops", "yes")  # not addressed to the bot: chatter on a platform without threads
    await alice.say("#ops", "squall: no")
    answered = await _answered(squall, seen)
    assert answered["status"] == "succeeded" and answered["result"]["response"] == {"continue": False}
