"""The Mattermost adapter against a faithful local Mattermost (tests/fake_mattermost.py): REST v4 posts,
the websocket, slash commands through Squall's API server, and `squall serve` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters import mattermost as mattermost_module
from adapters.base import AdapterConfigError, Capabilities, DeliveryError, Reply
from adapters.mattermost import MattermostAdapter, attachments, create, retry_after
from bot.app import Squall
from bot.chat.bot import ChatBot
from bot.chat.outbox import Outbox
from engine.config import load_config
from tests.conftest import free_port, write
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost, fake_mattermost, mmid, now_ms
from tests.test_cli import SQUALL

SLASH_TOKEN = "slash-token"


def _pack(home: Path) -> None:
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          cmd: {default: 'echo "hello {{who}}"', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: demo.greet
        description: Greet someone.
        formats: ["greet {{who}}"]
        ack:
          format: "greeting {{ execution.parameters.who }}"
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "aliases" / "fancy.yaml", """
        name: fancy
        action_ref: demo.greet
        description: Greet with an attachment.
        formats: ["fancy {{who}}"]
        result:
          format: "{{ execution.result.stdout }}"
          extra:
            mattermost:
              color: "#00aa00"
              title: "Greeting for {{ execution.parameters.who }}"
              fields: [{title: status, value: "{{ execution.status }}", short: true}]
            slack: {color: "red"}
    """)
    write(pack / "aliases" / "plain_extra.yaml", """
        name: plain_extra
        action_ref: demo.greet
        description: Greet with a generic extra.
        formats: ["plain {{who}}"]
        result:
          format: "{{ execution.result.stdout }}"
          extra: {color: "#0000ff", text: "generic"}
    """)
    write(pack / "aliases" / "careful.yaml", """
        name: careful
        action_ref: demo.greet
        description: Greet, once confirmed.
        formats: ["careful {{who}}"]
        confirm: {ttl: 30}
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "actions" / "spew.yaml", """
        name: spew
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, required: true}
          cmd: {default: 'seq 1 {{n}}', immutable: true}
    """)
    write(pack / "aliases" / "spew.yaml", """
        name: spew
        action_ref: demo.spew
        description: Print many lines.
        formats: ["spew {{n}}"]
        result:
          format: "{{ execution.result.stdout }}"
    """)


def _section(fake: FakeMattermost, **more: Any) -> dict[str, Any]:
    return {"enabled": True, "url": fake.url, "token": BOT_TOKEN, "team": "ops", "slash_token": SLASH_TOKEN, **more}


fake = fake_mattermost  # the fixture, under this module's name for it


async def _chat(home: Path, fake: FakeMattermost, **more: Any) -> tuple[Squall, ChatBot, MattermostAdapter]:
    _pack(home)
    config = load_config(home / "config.yml")
    adapter = create(_section(fake, **more), config)
    squall = await Squall.start(config, adapters=[adapter])
    adapter.reconnect_min = 0.05
    adapter.reconnect_max = 0.2
    bot = squall.chat
    await bot.start()
    return squall, bot, adapter


@pytest.fixture
async def chat(home: Path, fake: FakeMattermost) -> AsyncIterator[tuple[FakeMattermost, MattermostAdapter]]:
    squall, bot, adapter = await _chat(home, fake)
    try:
        yield fake, adapter
    finally:
        await bot.stop()
        await squall.close()


async def replies_to(fake: FakeMattermost, post: dict[str, Any], needle: str) -> list[dict[str, Any]]:
    """Wait for the bot's posts in the thread of `post` until one contains `needle`."""
    root = post["root_id"] or post["id"]

    def found() -> list[dict[str, Any]]:
        thread = [p for p in fake.bot_posts(post["channel_id"]) if p["root_id"] == root]
        return thread if any(needle in p["message"] for p in thread) else []

    return await fake.wait_for(found)


# -- chat ----------------------------------------------------------------------------------------------

async def test_mention_answers_in_its_thread_and_edits_the_ack(chat) -> None:
    fake, _adapter = chat
    post = await fake.say(fake.alice, fake.town_square, "@squallbot greet world")
    thread = await replies_to(fake, post, "hello world")
    ack = next(p for p in thread if p["message"].startswith(("greeting world", "✔")))
    assert all(p["root_id"] == post["id"] for p in thread)
    # The ack is edited through the patch API into the execution's status line.
    await fake.wait_for(lambda: ack["message"].startswith("✔ demo.greet succeeded"))
    patches = [c for c in fake.calls if c["method"] == "PUT" and c["path"] == f"/api/v4/posts/{ack['id']}/patch"]
    assert patches and patches[0]["body"]["message"].startswith("✔ demo.greet succeeded")
    assert ack["edit_at"] > 0


async def test_direct_message_needs_no_prefix(chat) -> None:
    fake, _adapter = chat
    post = await fake.say(fake.alice, fake.dm_alice, "greet privately")
    thread = await replies_to(fake, post, "hello privately")
    assert {p["channel_id"] for p in thread} == {fake.dm_alice["id"]}


async def test_prefix_command_answers_and_chatter_and_own_posts_are_ignored(chat) -> None:
    fake, _adapter = chat
    chatter = await fake.say(fake.alice, fake.town_square, "greet nobody, just chatting")
    own = await fake.make_post(fake.bot["id"], fake.town_square["id"], "!greet myself")
    command = await fake.say(fake.alice, fake.town_square, "!greet prefix")
    await replies_to(fake, command, "hello prefix")
    # Events are handled in order, so the two earlier posts were seen (and left alone) before this answer.
    roots = {p["root_id"] for p in fake.bot_posts()}
    assert chatter["id"] not in roots and own["id"] not in roots
    assert not any("myself" in p["message"] for p in fake.bot_posts() if p["id"] != own["id"])


async def test_reply_in_a_thread_goes_to_the_thread_root(chat) -> None:
    fake, _adapter = chat
    root = await fake.say(fake.bob, fake.town_square, "deploy went sideways")
    command = await fake.say(fake.alice, fake.town_square, "@squallbot greet thread", root_id=root["id"])
    thread = await replies_to(fake, command, "hello thread")
    assert {p["root_id"] for p in thread} == {root["id"]}


async def test_alias_extra_becomes_message_attachments(chat) -> None:
    fake, _adapter = chat
    post = await fake.say(fake.alice, fake.town_square, "!fancy ann")
    thread = await replies_to(fake, post, "hello ann")
    result = next(p for p in thread if "hello ann" in p["message"])
    assert result["props"]["attachments"] == [{"color": "#00aa00", "title": "Greeting for ann",
                                               "fields": [{"title": "status", "value": "succeeded", "short": True}]}]
    post = await fake.say(fake.alice, fake.town_square, "!plain bo")
    thread = await replies_to(fake, post, "hello bo")
    result = next(p for p in thread if "hello bo" in p["message"])
    assert result["props"]["attachments"] == [{"color": "#0000ff", "text": "generic"}]


async def test_long_output_is_uploaded_as_a_file(chat) -> None:
    fake, _adapter = chat
    expected = "\n".join(str(i) for i in range(1, 5001))
    assert len(expected) > fake.max_post_size
    post = await fake.say(fake.alice, fake.town_square, "!spew 5000")
    thread = await replies_to(fake, post, "(full output attached)")
    result = next(p for p in thread if p["file_ids"])
    assert len(result["message"]) <= fake.max_post_size
    content = fake.files[result["file_ids"][0]]["content"].decode()
    assert content.strip() == expected
    upload = next(c for c in fake.calls if c["path"] == "/api/v4/files")
    assert upload["body"]["channel_id"] == fake.town_square["id"]


async def test_long_output_is_split_at_the_servers_limit(home: Path) -> None:
    fake = FakeMattermost(max_post_size=1000)
    await fake.start()
    squall, bot, adapter = await _chat(home, fake, files=False)
    try:
        assert adapter.capabilities.max_length == 1000  # read from the server's client config
        post = await fake.say(fake.alice, fake.town_square, "!spew 1500")
        await replies_to(fake, post, "\n1500")
        parts = [p for p in fake.bot_posts(fake.town_square["id"]) if p["root_id"] == post["id"]
                 and p["message"][:1].isdigit()]
        assert len(parts) > 1 and all(len(p["message"]) <= 1000 for p in parts)
        assert "\n".join(p["message"] for p in parts).split() == [str(i) for i in range(1, 1501)]
    finally:
        await bot.stop()
        await squall.close()
        await fake.stop()



async def _sends_until_killed(adapter: MattermostAdapter, outbox: Outbox, posts: int) -> None:
    """Run `outbox` until the server took `posts` posts, then leave it as a SIGKILL would: the send
    that took the last of them never returns, so nothing after it is written or posted."""
    real_send, taken, killed = adapter.send, [], asyncio.Event()

    async def send(reply: Reply, edit_of: str | None = None) -> str | None:
        taken.append(await real_send(reply, edit_of))
        if len(taken) == posts:
            killed.set()
            await asyncio.Future()  # dead: no `sent` mark, no next part
        return taken[-1]

    adapter.send = send  # type: ignore[method-assign]
    try:
        await outbox.poll()
        await asyncio.wait_for(killed.wait(), 10)
    finally:
        await outbox.close()
        del adapter.send


@pytest.mark.parametrize(("killed_after", "limit_after"), [(1, 400), (3, 400), (1, 1000), (3, 250)])
async def test_a_long_reply_killed_between_its_parts_goes_on_from_the_next_part(
        squall: Squall, home: Path, killed_after: int, limit_after: int) -> None:
    """A reply stored whole (a CLI run) and split as it is sent (files off): a kill after the server took
    some of its parts leaves the row pending; the next start finds those parts by the outbox id, part
    and end each carries, and posts the rest, every line once, in order, the row marked sent as its
    first part. Also when the post limit differs after the restart (the server's `MaxPostSize`)."""
    fake = FakeMattermost(max_post_size=400)
    await fake.start()
    adapter = create(_section(fake, files=False), load_config(home / "config.yml"))
    try:
        await adapter.start(lambda message: asyncio.sleep(0))
        assert adapter.capabilities.max_length == 400
        db = squall.db
        text = "\n".join(f"line {i:03d} " + "x" * 60 for i in range(30))  # about 2,000 characters: 6 parts
        row = Reply(adapter="mattermost", channel="town-square", text=text)
        outbox_id = await db(db.store.outbox_add, row.adapter, row.channel, row.to_json())
        await _sends_until_killed(adapter, Outbox(db, {"mattermost": adapter}), killed_after)
        assert len(fake.bot_posts()) == killed_after
        assert (await db(db.store.outbox_get, outbox_id))["status"] == "pending"

        fake.max_post_size = limit_after  # read again at the restart's login
        adapter.capabilities = Capabilities(**{**adapter.capabilities.__dict__, "max_length": limit_after})
        outbox = Outbox(db, {"mattermost": adapter})
        await outbox.poll()
        await outbox.drain(10)
        await outbox.close()
        posts = fake.bot_posts(fake.town_square["id"])
        assert "\n".join(post["message"] for post in posts) == text  # every line once, in order
        stored = await db(db.store.outbox_get, outbox_id)
        assert stored["status"] == "sent" and stored["platform_id"] == posts[0]["id"]
    finally:
        await adapter.stop()
        await fake.stop()

async def test_rate_limit_is_honoured(chat) -> None:
    fake, adapter = chat
    fake.rate_limit(times=1, retry_after=3)
    with pytest.raises(DeliveryError) as refused:
        await adapter.send(Reply(adapter="mattermost", channel=fake.town_square["id"], text="hi"))
    assert refused.value.retry_after == 3
    # Through the outbox: the refused post is sent again after the wait the server asked for.
    fake.rate_limit(times=1, retry_after=1)
    post = await fake.say(fake.alice, fake.town_square, "!greet patience")
    await replies_to(fake, post, "hello patience")
    statuses = [c["status"] for c in fake.calls if c["path"] == "/api/v4/posts"
                and c["body"].get("root_id") == post["id"]]
    assert statuses[0] == 429 and 201 in statuses


async def test_dropped_websocket_reconnects_resumes_and_answers_again(chat) -> None:
    fake, adapter = chat
    first = await fake.say(fake.alice, fake.town_square, "!greet before")
    await replies_to(fake, first, "hello before")
    session = fake.live_connections(fake.bot["id"])[0].id
    # Drop the socket and keep it down while alice speaks: only a resumed session can deliver her post.
    fake.refuse_websockets = True
    await fake.drop_websockets()
    during = await fake.say(fake.alice, fake.town_square, "!greet during")
    fake.refuse_websockets = False
    await replies_to(fake, during, "hello during")
    assert fake.ws_connects[-1].get("connection_id") == session
    # A server restart forgets the session: the bot starts a new one and still answers.
    await fake.drop_websockets(forget=True)
    await fake.wait_for(lambda: fake.live_connections(fake.bot["id"]))
    after = await fake.say(fake.alice, fake.town_square, "!greet after")
    await replies_to(fake, after, "hello after")
    assert adapter.connections >= 3


async def test_websocket_authenticates_by_challenge_and_a_wrong_team_is_not_fatal(home: Path,
                                                                                   fake: FakeMattermost) -> None:
    fake.websocket_header_auth = False  # a proxy dropped the header: the authentication_challenge must do
    squall, bot, adapter = await _chat(home, fake, team="no-such-team")
    try:
        post = await fake.say(fake.alice, fake.town_square, "@squallbot greet challenger")
        await replies_to(fake, post, "hello challenger")
        assert adapter.team_id is None
        with pytest.raises(DeliveryError, match="no Mattermost channel or user named 'ops-room'"):
            await adapter.send(Reply(adapter="mattermost", channel="ops-room", text="lost"))
    finally:
        await bot.stop()
        await squall.close()


async def test_a_malformed_event_does_not_stop_the_adapter(chat) -> None:
    fake, _adapter = chat
    await fake._publish("posted", {"post": "{not json", "channel_type": "O"}, {}, fake.town_square["id"])
    await fake._publish("posted", {"post": json.dumps(["a list"])}, {}, fake.town_square["id"])
    post = await fake.say(fake.alice, fake.town_square, "!greet still-here")
    await replies_to(fake, post, "hello still-here")


async def test_channel_names_and_users_resolve_for_notifications(chat) -> None:
    fake, adapter = chat
    await adapter.send(Reply(adapter="mattermost", channel="town-square", text="to the square"))
    await adapter.send(Reply(adapter="mattermost", channel="@alice", text="just for alice"))
    assert [p["message"] for p in fake.bot_posts(fake.town_square["id"])] == ["to the square"]
    assert [p["message"] for p in fake.bot_posts(fake.dm_alice["id"])] == ["just for alice"]
    with pytest.raises(DeliveryError, match="no-such-place"):
        await adapter.send(Reply(adapter="mattermost", channel="no-such-place", text="lost"))


async def test_a_reply_to_a_vanished_thread_goes_to_the_channel(chat) -> None:
    fake, adapter = chat
    gone = "a" * 26
    await adapter.send(Reply(adapter="mattermost", channel=fake.town_square["id"], thread=gone, text="late result"))
    [post] = fake.bot_posts(fake.town_square["id"])
    assert post["message"] == "late result" and post["root_id"] == ""
    assert [c["status"] for c in fake.calls if c["path"] == "/api/v4/posts"] == [400, 201]


async def test_start_while_the_server_is_down_connects_when_it_comes_up(home: Path, monkeypatch) -> None:
    import adapters.mattermost as module

    monkeypatch.setattr(module, "START_WAIT", 0.2)
    port = free_port()
    fake = FakeMattermost()
    fake.url = f"http://127.0.0.1:{port}"
    _pack(home)
    config = load_config(home / "config.yml")
    adapter = create(_section(fake), config)
    squall = await Squall.start(config, adapters=[adapter])
    adapter.reconnect_min, adapter.reconnect_max = 0.05, 0.2
    bot = squall.chat
    try:
        await bot.start()  # returns although nothing listens yet
        assert not adapter.connected.is_set()
        await fake.start(port)
        await fake.wait_for(lambda: fake.live_connections(fake.bot["id"]))
        post = await fake.say(fake.alice, fake.town_square, "!greet latecomer")
        await replies_to(fake, post, "hello latecomer")
    finally:
        await bot.stop()
        await squall.close()
        await fake.stop()


# -- slash commands --------------------------------------------------------------------------------------

@pytest.fixture
async def api(home: Path, fake: FakeMattermost) -> AsyncIterator[tuple[FakeMattermost, str]]:
    from bot.http import ApiServer

    squall, bot, _adapter = await _chat(home, fake)
    server = ApiServer(squall, host="127.0.0.1", port=free_port())
    await server.start()
    try:
        yield fake, f"http://127.0.0.1:{server.port}/mattermost/command"
    finally:
        await server.stop()
        await bot.stop()
        await squall.close()


async def test_slash_command_answers_at_once_and_later_through_response_url(api) -> None:
    fake, url = api
    status, answer = await fake.slash(url, "greet slash")
    assert status == 200
    assert answer["response_type"] in ("in_channel", "ephemeral") and answer["text"]
    await fake.wait_for(lambda: any("hello slash" in r["payload"].get("text", "") for r in fake.responses))
    delayed = [r for r in fake.responses if "hello slash" in r["payload"].get("text", "")]
    assert delayed[0]["via"] == "response_url" and delayed[0]["payload"]["response_type"] == "in_channel"
    hook_calls = [c for c in fake.calls if c["path"].startswith("/hooks/commands/")]
    assert hook_calls and all(c["status"] == 200 for c in hook_calls)
    # The ack was either the immediate answer or a response_url post; either way the channel saw it.
    texts = [answer["text"]] + [r["payload"].get("text", "") for r in fake.responses]
    assert "greeting slash" in texts
    # In-channel answers become posts in the command's channel as the server makes them: by the person
    # who ran the command, marked `from_webhook`.
    answers = [p for p in fake.posts_by(fake.alice["id"], fake.town_square["id"]) if "hello slash" in p["message"]]
    assert answers and all(p["props"].get("from_webhook") == "true" for p in answers)


async def test_a_slash_commands_answers_are_not_taken_for_its_users_commands(api) -> None:
    """The server posts a slash command's answers as the person who ran it: `/squall echo !greet eve`
    answers `!greet eve` in alice's name, which must not run as alice's command; in a direct channel
    the bot would answer its own answers without end."""
    fake, url = api
    await fake.slash(url, "echo !greet eve")
    await fake.slash(url, "greet dm", channel=fake.dm_alice)
    await fake.wait_for(lambda: any("hello dm" in r["payload"].get("text", "") for r in fake.responses))
    await fake.wait_for(lambda: any("!greet eve" in p["message"] for p in fake.posts_by(fake.alice["id"])))
    await asyncio.sleep(1)  # what a re-run would have posted by now
    assert not any("hello eve" in p["message"] for p in fake.posts.values())
    assert not fake.bot_posts(fake.dm_alice["id"])


async def test_slash_command_with_a_bad_or_missing_token_is_refused(api) -> None:
    fake, url = api
    status, _answer = await fake.slash(url, "greet intruder", token="wrong")
    assert status == 401
    status, _answer = await fake.slash(url, "greet intruder", token=None)
    assert status == 401
    assert not fake.bot_posts() and all("intruder" not in json.dumps(r) for r in fake.responses)


async def test_a_slash_commands_long_result_reaches_a_channel_the_bot_is_not_in(api) -> None:
    """A slash command in a direct channel between two people: the bot can neither upload the long
    result's file there nor post (403), so the start of it goes through the command's response_url,
    with a note that it was cut; nothing is posted by the bot, and the post fits the server's limit."""
    fake, url = api
    dm_ab = fake.add_channel("alice-bob", "D", [fake.alice["id"], fake.bob["id"]])
    status, _answer = await fake.slash(url, "spew 5000", channel=dm_ab)
    assert status == 200
    [answer] = await fake.wait_for(lambda: [r for r in fake.responses if "output truncated" in
                                            r["payload"].get("text", "")])
    text = answer["payload"]["text"]
    assert answer["via"] == "response_url" and answer["payload"]["response_type"] == "in_channel"
    assert text.startswith("```\n1\n2\n3\n") and "output.txt could not be uploaded" in text
    assert len(text) <= fake.max_post_size
    assert text in [p["message"] for p in fake.posts_by(fake.alice["id"], dm_ab["id"])]
    assert [c["status"] for c in fake.calls if c["path"] == "/api/v4/files"] == [403]
    assert not fake.bot_posts(dm_ab["id"])


async def test_confirmation_buttons_answer_for_the_person_asked(home: Path, fake: FakeMattermost) -> None:
    """With `actions_url`, a confirmation is a pair of buttons: someone else's click leaves them, the
    asker's click runs the command and the prompt keeps a line saying who chose what; a context
    this Squall did not sign is refused."""
    from bot.http import ApiServer

    port = free_port()
    squall, bot, adapter = await _chat(home, fake, actions_url=f"http://127.0.0.1:{port}/mattermost/actions")
    server = ApiServer(squall, host="127.0.0.1", port=port)
    await server.start()
    try:
        assert adapter.capabilities.buttons
        post = await fake.say(fake.alice, fake.town_square, "@squallbot careful bob")
        [prompt] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                if (p.get("props") or {}).get("attachments")])
        names = [a["name"] for a in prompt["props"]["attachments"][0]["actions"]]
        assert names == ["Yes", "No"] and prompt["root_id"] == post["id"]

        status, answer = await fake.click(prompt, 0, user=fake.bob)  # not the one asked
        assert status == 200 and "update" not in answer
        assert fake.posts[prompt["id"]]["props"]["attachments"]
        thread = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                              if p["root_id"] == post["id"] and p["id"] != prompt["id"]])
        assert not any("hello bob" in p["message"] for p in thread)  # bob's "yes" confirmed nothing

        forged = json.loads(json.dumps(prompt))
        forged["props"]["attachments"][0]["actions"][1]["integration"]["context"]["value"] = "yes"
        status, answer = await fake.click(forged, 1)
        assert status == 401 and "not made by this Squall" in answer["error"]["message"]
        forged["props"]["attachments"][0]["actions"][1]["integration"]["context"]["signature"] = "é"
        status, answer = await fake.click(forged, 1)
        assert status == 401  # not a 500 from comparing non-ASCII text

        status, answer = await fake.click(prompt, 0)
        assert status == 200
        await replies_to(fake, post, "hello bob")
        answered = fake.posts[prompt["id"]]
        assert answered["props"] == {} and "alice chose **Yes**" in answered["message"]
        assert answered["message"].startswith(prompt["message"])
    finally:
        await server.stop()
        await bot.stop()
        await squall.close()


@contextlib.asynccontextmanager
async def _with_buttons(home: Path, fake: FakeMattermost) -> AsyncIterator[tuple[Squall, MattermostAdapter]]:
    """A chat whose Mattermost adapter has buttons: `actions_url` on Squall's API server."""
    from bot.http import ApiServer

    port = free_port()
    squall, bot, adapter = await _chat(home, fake, actions_url=f"http://127.0.0.1:{port}/mattermost/actions")
    server = ApiServer(squall, host="127.0.0.1", port=port)
    await server.start()
    try:
        yield squall, adapter
    finally:
        await server.stop()
        await bot.stop()
        await squall.close()


async def test_a_click_on_an_older_confirmation_runs_nothing(home: Path, fake: FakeMattermost) -> None:
    """Each prompt's buttons name it (a token in their signed context's value): Yes on an older prompt,
    replaced by the person's newer command in the same channel, runs neither, and says so."""
    async with _with_buttons(home, fake) as (squall, _adapter):
        posts, prompts = [], []
        for who in ("staging", "production"):
            posts.append(await fake.say(fake.alice, fake.town_square, f"@squallbot careful {who}"))
            prompts.append((await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                         if p["root_id"] == posts[-1]["id"]
                                                         and (p.get("props") or {}).get("attachments")]))[0])
        status, _answer = await fake.click(prompts[0], 0)
        assert status == 200
        thread = await replies_to(fake, posts[0], "no longer pending")
        refusal = next(p for p in thread if "no longer pending" in p["message"])
        assert "your newer command (demo.greet) replaced it" in refusal["message"]
        assert await squall.executions.list(action="demo.greet") == []
        await fake.click(prompts[1], 0)
        await replies_to(fake, posts[1], "hello production")
        assert [r["parameters"]["who"] for r in await squall.executions.list(action="demo.greet")] == ["production"]


async def test_a_button_on_a_top_level_inquiry_question_answers_it(home: Path, fake: FakeMattermost) -> None:
    """A question asked through a route is a post at the top of its channel: the click's post id names
    it (its thread's root), so Yes answers it rather than being taken for the command `yes`."""
    with (home / "config.yml").open("a") as config:
        config.write(f"routes:\n  ops: {{adapter: mattermost, channel: {fake.town_square['id']}}}\n")
    async with _with_buttons(home, fake) as (squall, _adapter):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema})
        [question] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                  if (p.get("props") or {}).get("attachments")])
        assert question["root_id"] == ""
        status, _answer = await fake.click(question, 0)
        assert status == 200
        await replies_to(fake, question, "Thanks alice")
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["status"] == "succeeded" and answered["result"]["response"] == {"continue": True}


async def test_a_refused_click_on_a_question_puts_its_buttons_back(home: Path, fake: FakeMattermost) -> None:
    """The click's answer takes a question's buttons off (`_bob chose **Yes**_`): bob may not answer, so the
    question is edited back as it was asked, buttons (each naming the inquiry) and all, before his refusal
    shows; alice's click on them answers it."""
    with (home / "config.yml").open("a") as config:
        config.write(f"routes:\n  ops: {{adapter: mattermost, channel: {fake.town_square['id']}}}\n")
    async with _with_buttons(home, fake) as (squall, _adapter):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema, "users": ["alice"]})
        [question] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                  if (p.get("props") or {}).get("attachments")])
        asked = question["message"]
        status, answer = await fake.click(question, 0, user=fake.bob)
        assert status == 200 and "bob chose" in answer["update"]["message"]
        thread = await replies_to(fake, question, "Sorry bob")
        assert "may not respond" in next(p["message"] for p in thread if "Sorry bob" in p["message"])
        stored = fake.posts[question["id"]]
        assert stored["message"] == asked
        actions = [a for attachment in stored["props"]["attachments"] for a in attachment["actions"]]
        assert [a["integration"]["context"]["value"] for a in actions] == [
            f"yes:inquiry:{record['id']}", f"no:inquiry:{record['id']}"]
        assert (await squall.executions.get(record["id"]))["status"] == "pending"
        await fake.click(stored, 0)
        await replies_to(fake, question, "Thanks alice")
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["result"]["response"] == {"continue": True} and answered["result"]["responder"] == "alice"


async def test_a_click_and_a_slash_command_carry_the_user_id_an_inquiry_may_name(home: Path,
                                                                                fake: FakeMattermost) -> None:
    """A click and a slash command reach the bot with the sender's user id (`Message.user_id`), as a post
    does: an inquiry whose `users` name alice by hers (`mattermost:<id>`) takes her click, renamed or not,
    and refuses bob's."""
    with (home / "config.yml").open("a") as config:
        config.write(f"routes:\n  ops: {{adapter: mattermost, channel: {fake.town_square['id']}}}\n")
    async with _with_buttons(home, fake) as (squall, adapter):
        seen = await _names_seen(fake, adapter)
        actions_url = adapter.settings.actions_url
        assert actions_url is not None
        status, _answer = await fake.slash(actions_url.replace("/actions", "/command"), "greet slashed",
                                           user=fake.bob)
        assert status == 200
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema,
                                                              "users": [f"mattermost:{fake.alice['id']}"]})
        [question] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                  if (p.get("props") or {}).get("attachments")])
        await fake.click(question, 0, user=fake.bob)
        await replies_to(fake, question, "Sorry bob")
        assert (await squall.executions.get(record["id"]))["status"] == "pending"
        await fake.rename(fake.alice, "alice.old")
        await fake.click(fake.posts[question["id"]], 0)
        await replies_to(fake, question, "Thanks alice.old")
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["result"]["response"] == {"continue": True} and answered["result"]["responder"] == "alice.old"
        assert seen == [(fake.bob["id"], "bob"), (fake.bob["id"], "bob"), (fake.alice["id"], "alice.old")]


async def test_approval_buttons_ask_the_approvers_and_a_refused_click_brings_them_back(home: Path,
                                                                                      fake: FakeMattermost) -> None:
    """An approval's Approve/Deny are buttons anyone may click: a click from outside the approvers is
    refused and (Mattermost took the clicked prompt's buttons off) the answer carries them again; an
    approver's click runs the command, whose result goes to the thread it was asked in."""
    from bot.http import ApiServer

    write(home / "config.yml", (home / "config.yml").read_text() + "auth:\n  groups:\n    approvers: [bob]\n")
    write(home / "packs" / "demo" / "aliases" / "guarded.yaml", """
        name: guarded
        action_ref: demo.greet
        formats: ["guarded greet {{who}}"]
        result:
          format: "{{ execution.result.stdout }}"
        approval: {groups: [approvers]}
    """)
    port = free_port()
    squall, bot, _adapter = await _chat(home, fake, actions_url=f"http://127.0.0.1:{port}/mattermost/actions")
    server = ApiServer(squall, host="127.0.0.1", port=port)
    await server.start()
    try:
        post = await fake.say(fake.alice, fake.town_square, "@squallbot guarded greet carol")

        def prompts() -> list[dict[str, Any]]:
            return [p for p in fake.bot_posts(fake.town_square["id"]) if p["root_id"] == post["id"]
                    and (p.get("props") or {}).get("attachments")]

        [prompt] = await fake.wait_for(prompts)
        assert "waiting for 1 approval from approvers" in prompt["message"]
        assert [a["name"] for a in prompt["props"]["attachments"][0]["actions"]] == ["Approve", "Deny"]
        status, _answer = await fake.click(prompt, 0)  # alice, no approver, approves her own request
        assert status == 200
        again = await fake.wait_for(lambda: [p for p in prompts() if p["id"] != prompt["id"]])
        assert "only approvers may decide" in again[0]["message"]  # the refusal, with buttons for the approvers
        assert squall.store.list_executions(action="demo.greet") == []
        status, _answer = await fake.click(again[0], 0, user=fake.bob)
        assert status == 200
        await replies_to(fake, post, "hello carol")
        [execution] = squall.store.list_executions(action="demo.greet")
        assert [d["user"] for d in execution["context"]["approval"]["decisions"]] == ["bob"]
    finally:
        await server.stop()
        await bot.stop()
        await squall.close()


# -- configuration ---------------------------------------------------------------------------------------

def test_missing_url_and_token_name_the_key_and_the_environment_variable(monkeypatch) -> None:
    monkeypatch.delenv("MATTERMOST_URL", raising=False)
    monkeypatch.delenv("MATTERMOST_TOKEN", raising=False)
    with pytest.raises(AdapterConfigError, match=r"adapters\.mattermost\.url.*MATTERMOST_URL"):
        create({"enabled": True, "token": "t"}, None)
    with pytest.raises(AdapterConfigError, match=r"adapters\.mattermost\.token.*MATTERMOST_TOKEN"):
        create({"enabled": True, "url": "http://127.0.0.1:8065"}, None)
    with pytest.raises(AdapterConfigError, match="http"):
        create({"enabled": True, "url": "chat.example.com", "token": "t"}, None)
    monkeypatch.setenv("MATTERMOST_URL", "https://chat.example.com:8443/")
    monkeypatch.setenv("MATTERMOST_TOKEN", "from-env")
    adapter = create({"enabled": True}, None)
    assert adapter.settings.url == "https://chat.example.com:8443" and adapter.settings.token == "from-env"
    assert adapter.ws_url == "wss://chat.example.com:8443/api/v4/websocket"
    assert "from-env" not in repr(adapter.settings)


async def test_a_refused_token_is_a_clear_error_without_the_token(fake: FakeMattermost) -> None:
    adapter = create({"url": fake.url, "token": "not-the-bot-token-secret"}, None)

    async def ignore(_message: Any) -> None:
        return None

    with pytest.raises(AdapterConfigError) as refused:
        await adapter.start(ignore)
    assert "adapters.mattermost.token" in str(refused.value)
    assert "not-the-bot-token-secret" not in str(refused.value)
    await adapter.stop()


def test_extra_and_rate_limit_headers() -> None:
    assert attachments({"mattermost": [{"text": "a"}, "junk"], "slack": {}}) == [{"text": "a"}]
    assert attachments({"mattermost": {"attachments": [{"text": "b"}]}}) == [{"text": "b"}]
    assert attachments({"slack": {"color": "red"}}) == []
    assert retry_after({"X-RateLimit-Reset": "7"}) == 7
    assert retry_after({"Retry-After": "2", "X-RateLimit-Reset": "9"}) == 2
    assert retry_after({}) == 1.0


# -- the real service ------------------------------------------------------------------------------------

async def test_squall_serve_answers_a_mention_and_a_slash_command(home: Path, fake: FakeMattermost) -> None:
    port = free_port()
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          port: {port}
        adapters:
          console: {{enabled: false}}
          mattermost:
            enabled: true
            url: "{fake.url}"
            token: "{BOT_TOKEN}"
            team: ops
            slash_token: "{SLASH_TOKEN}"
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATTERMOST_")}
    process = await asyncio.create_subprocess_exec(str(SQUALL), "-c", str(home / "config.yml"), "serve",
                                                   stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                   env=env, start_new_session=True)
    try:
        await fake.wait_for(lambda: fake.live_connections(fake.bot["id"]) or process.returncode is not None, 60)
        assert process.returncode is None, "squall serve exited"
        post = await fake.say(fake.alice, fake.town_square, "@squallbot echo from the service")
        await replies_to(fake, post, "from the service")
        status, _answer = await _slash_when_up(fake, f"http://127.0.0.1:{port}/mattermost/command")
        assert status == 200
        await fake.wait_for(lambda: any("via slash" in r["payload"].get("text", "") for r in fake.responses)
                            or any("via slash" in p["message"] for p in fake.bot_posts()))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), 30)
        except TimeoutError:
            process.kill()
            output, _ = await process.communicate()
    log = output.decode(errors="replace")
    assert BOT_TOKEN not in log and "Traceback" not in log, log


async def _slash_when_up(fake: FakeMattermost, url: str) -> tuple[int, Any]:
    """The API server starts just after the chat; retry the connection (not the answer) until it listens."""
    import aiohttp

    for _ in range(100):
        try:
            return await fake.slash(url, "echo via slash")
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("the API server never listened")


async def test_a_user_the_server_cannot_name_now_is_dropped_not_named_by_id_or_by_the_event(chat) -> None:
    """When `GET /users/{id}` fails (a 429) for someone never named, what they sent is dropped: never
    named by the event's `sender_name`, which a webhook's poster chooses (`override_username: alice`
    would get alice's permissions), nor by their id (one person would be two names: the id now, the
    username later, and could approve their own request). Their next message, looked up, goes on."""
    fake, adapter = chat
    seen: list[tuple[str, str]] = []
    handler = adapter._on_message

    async def spy(message: Any) -> None:
        seen.append((message.user, message.text))
        await handler(message)

    adapter._on_message = spy
    mallory = fake.add_user("mallory")
    fake.rate_limit(times=1, retry_after=1, method="GET", path=f"/api/v4/users/{mallory['id']}")
    post = {"id": mmid(), "create_at": now_ms(), "update_at": now_ms(), "edit_at": 0, "delete_at": 0,
            "user_id": mallory["id"], "channel_id": fake.town_square["id"], "root_id": "", "message": "!greet x",
            "type": "", "props": {}}
    await fake._publish("posted", {"channel_type": "O", "channel_name": "town-square", "post": json.dumps(post),
                                   "sender_name": "alice", "team_id": fake.team["id"]},
                        {"channel_id": fake.town_square["id"]}, fake.town_square["id"])
    await fake.say(mallory, fake.town_square, "!greet y")  # events are handled in order: x was handled first
    await fake.wait_for(lambda: seen)
    assert seen == [("mallory", "!greet y")]


async def test_a_failed_lookup_keeps_the_name_so_self_approval_stays_refused(home: Path, fake: FakeMattermost,
                                                                            monkeypatch) -> None:
    """alice's name has expired and the lookup for her request is rate-limited: she is still `alice`
    (the name last looked up stands), so approving her own request is refused (`self_approval: false`)
    rather than her id's request being approved by `alice`."""
    write(home / "config.yml", (home / "config.yml").read_text() + "auth:\n  groups:\n    approvers: [alice, bob]\n")
    write(home / "packs" / "demo" / "aliases" / "guarded.yaml", """
        name: guarded
        action_ref: demo.greet
        formats: ["guarded greet {{who}}"]
        result:
          format: "{{ execution.result.stdout }}"
        approval: {groups: [approvers], self_approval: false}
    """)
    monkeypatch.setattr(mattermost_module, "IDENTITY_TTL", 0.0)  # every name is looked up again
    squall, bot, adapter = await _chat(home, fake)
    try:
        seen = await _names_seen(fake, adapter)
        await fake.say(fake.alice, fake.town_square, "hello")
        await fake.wait_for(lambda: seen)
        fake.rate_limit(times=1, method="GET", path=f"/api/v4/users/{fake.alice['id']}")
        post = await fake.say(fake.alice, fake.town_square, "@squallbot guarded greet carol")
        thread = await replies_to(fake, post, "waiting for 1 approval")
        prompt = next(p for p in thread if "waiting for 1 approval" in p["message"])
        approval = re.search(r"approve (\S+)`", prompt["message"]).group(1)
        await fake.say(fake.alice, fake.town_square, f"@squallbot approve {approval}", root_id=post["id"])
        decided = await fake.wait_for(lambda: [p["message"] for p in fake.bot_posts(fake.town_square["id"])
                                               if p["root_id"] == post["id"] and ("hello carol" in p["message"]
                                               or "someone else from approvers must approve" in p["message"])])
        assert not any("hello carol" in m for m in decided), "alice approved her own request"
        assert [name for _id, name in seen] == ["alice", "alice", "alice"]
        assert squall.store.list_executions(action="demo.greet") == []
    finally:
        await bot.stop()
        await squall.close()


async def test_a_click_slash_command_or_dialog_from_someone_unnamed_is_refused(home: Path,
                                                                               fake: FakeMattermost) -> None:
    """A button click, a slash command (without the server's user_name) or a dialog submission from
    someone the server cannot name just now is refused with a word to them, not taken under their id;
    the buttons stay, and a click once the lookup works runs the command."""
    async with _with_buttons(home, fake) as (squall, adapter):
        actions_url = adapter.settings.actions_url
        assert actions_url is not None
        post = await fake.say(fake.alice, fake.town_square, "@squallbot careful bob")
        [prompt] = await fake.wait_for(lambda: [p for p in fake.bot_posts(fake.town_square["id"])
                                                if (p.get("props") or {}).get("attachments")])
        await fake.rename(fake.alice, "alice")  # `user_updated`: the adapter forgets her name
        while fake.alice["id"] in adapter._usernames:
            await asyncio.sleep(0.05)
        fake.rate_limit(times=1, method="GET", path=f"/api/v4/users/{fake.alice['id']}")
        status, answer = await fake.click(prompt, 0)
        assert status == 200 and "update" not in answer and "click again" in answer["ephemeral_text"]
        assert fake.posts[prompt["id"]]["props"]["attachments"]

        dave = fake.add_user("dave")
        for _ in range(2):
            fake.rate_limit(times=1, method="GET", path=f"/api/v4/users/{dave['id']}")
        form = {"token": SLASH_TOKEN, "channel_id": fake.town_square["id"], "user_id": dave["id"],
                "command": "/squall", "text": "greet dave", "response_url": f"{fake.url}/hooks/commands/x"}
        submissions: list[Any] = []

        async def on_form(submission: Any) -> dict[str, str]:
            submissions.append(submission)
            return {}

        adapter.on_form = on_form
        async with aiohttp.ClientSession() as session:
            async with session.post(actions_url.replace("/actions", "/command"), data=form) as response:
                assert response.status == 200
                assert "did not run" in (await response.json())["text"]
            dialog = {"type": "dialog_submission", "user_id": dave["id"], "state": "s", "submission": {"a": "b"},
                      "callback_id": "squall_form", "channel_id": fake.town_square["id"], "cancelled": False}
            async with session.post(actions_url, json=dialog) as response:
                assert response.status == 200
                assert "submit the form again" in (await response.json())["error"]
        assert submissions == []

        status, answer = await fake.click(prompt, 0)  # the lookup works again
        assert status == 200 and "alice chose **Yes**" in answer["update"]["message"]
        await replies_to(fake, post, "hello bob")
        assert [r["parameters"]["who"] for r in await squall.executions.list(action="demo.greet")] == ["bob"]


async def test_another_bot_accounts_posts_are_never_commands(chat) -> None:
    """Mattermost marks a bot account's post `props.from_bot` (app/post.go): another bot's `!greet`
    runs nothing (two bots could answer each other forever); a person's still does."""
    fake, _adapter = chat
    relay = fake.add_user("relaybot", "relay-token-0123456789", is_bot=True)
    await fake.say(relay, fake.town_square, "!greet robots")
    await fake.say(relay, fake.town_square, "@squallbot greet robots")
    post = await fake.say(fake.alice, fake.town_square, "!greet people")
    await replies_to(fake, post, "hello people")
    assert not any("robots" in p["message"] for p in fake.bot_posts())


async def _names_seen(fake: FakeMattermost, adapter: MattermostAdapter) -> list[tuple[str, str]]:
    """Spy on the adapter: (user id, `Message.user`) of each message it hands on, from now."""
    seen: list[tuple[str, str]] = []
    handler = adapter._on_message

    async def spy(message: Any) -> None:
        seen.append((message.user_id, message.user))
        await handler(message)

    adapter._on_message = spy
    return seen


async def test_a_renamed_user_is_named_anew_and_never_shares_a_name(chat) -> None:
    """alice is renamed `alice.old` and bob given `alice` (the server says so on the websocket,
    `user_updated`): alice's next message is from `alice.old`, bob's from `alice`; never both `alice`."""
    fake, adapter = chat
    seen = await _names_seen(fake, adapter)
    await fake.say(fake.alice, fake.town_square, "hello")
    await fake.wait_for(lambda: len(seen) == 1)
    await fake.rename(fake.alice, "alice.old")
    await fake.rename(fake.bob, "alice")
    await fake.say(fake.alice, fake.town_square, "again")
    await fake.say(fake.bob, fake.town_square, "me too")
    await fake.wait_for(lambda: len(seen) == 3)
    assert seen == [(fake.alice["id"], "alice"), (fake.alice["id"], "alice.old"), (fake.bob["id"], "alice")]


async def test_a_rename_the_websocket_missed_is_seen_once_the_name_expires(chat, monkeypatch) -> None:
    """A rename made while the websocket was down sends no event the bot gets: a name is only trusted
    for `IDENTITY_TTL`, then asked for again (here at once)."""
    fake, adapter = chat
    monkeypatch.setattr(mattermost_module, "IDENTITY_TTL", 0.0)
    seen = await _names_seen(fake, adapter)
    await fake.say(fake.alice, fake.town_square, "hello")
    await fake.wait_for(lambda: len(seen) == 1)
    await fake.rename(fake.alice, "alice.old", announce=False)
    await fake.say(fake.alice, fake.town_square, "again")
    await fake.wait_for(lambda: len(seen) == 2)
    assert [name for _id, name in seen] == ["alice", "alice.old"]


async def test_a_mattermost_user_id_in_auth_names_that_person_whatever_their_username(home: Path,
                                                                                     fake: FakeMattermost) -> None:
    """A server may let people change their username: `mattermost:<id>` in `auth` names the person by
    their user id, which they cannot change. alice, allowed by hers, stays allowed as `alice.old`;
    bob, renamed `alice`, is not let in by the name she had."""
    with (home / "config.yml").open("a") as config:
        config.write(f"auth:\n  aliases:\n    demo.greet:\n      allow: {{users: [mattermost:{fake.alice['id']}]}}\n")
    squall, bot, _adapter = await _chat(home, fake)
    try:
        post = await fake.say(fake.alice, fake.town_square, "!greet one")
        await replies_to(fake, post, "hello one")
        await fake.rename(fake.alice, "alice.old")
        await fake.rename(fake.bob, "alice")
        post = await fake.say(fake.alice, fake.town_square, "!greet two")
        await replies_to(fake, post, "hello two")
        post = await fake.say(fake.bob, fake.town_square, "!greet three")
        refused = await replies_to(fake, post, "Sorry alice")
        assert f"mattermost:{fake.alice['id']}" in next(p["message"] for p in refused if "Sorry" in p["message"])
        assert not any("hello three" in p["message"] for p in fake.bot_posts())
    finally:
        await bot.stop()
        await squall.close()
