"""The Slack adapter against a local fake Slack (Web API + Socket Mode), and HTTP mode with signed requests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from adapters.base import AdapterConfigError, Capabilities, DeliveryError, Reply
from adapters.slack import MENTION_LOOKUPS_PER_MINUTE, SlackSettings, create
from adapters.slack_format import ATTACHED_TAIL, escape, mentioned_users, message_arguments, plain_text
from bot.app import Squall
from bot.chat.replies import fit, render_result
from engine.config import load_config
from tests.conftest import REPO, free_port, write
from tests.fake_slack import APP_TOKEN, BOT_TOKEN, BOT_USER, SIGNING_SECRET, FakeSlack, fake_slack


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
        ack: {format: "greeting {{ execution.parameters.who }}"}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    write(pack / "actions" / "lines.yaml", """
        name: lines
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, required: true}
          cmd: {default: 'seq -f "line %04g of the long output" {{n}}', immutable: true}
    """)
    write(pack / "aliases" / "lines.yaml", """
        name: lines
        action_ref: demo.lines
        description: Long output.
        formats: ["lines {{n}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)
    write(pack / "aliases" / "fancy.yaml", """
        name: fancy
        action_ref: demo.greet
        description: Greet, as an attachment.
        formats: ["fancy {{who}}"]
        ack: {enabled: false}
        result:
          format: "fancy {{ execution.result.stdout }}"
          extra:
            slack:
              color: "#00ff00"
              pretext: "for {{ execution.parameters.who }}"
    """)
    write(pack / "aliases" / "blocky.yaml", """
        name: blocky
        action_ref: demo.greet
        description: Greet, as blocks.
        formats: ["blocky {{who}}"]
        ack: {enabled: false}
        result:
          format: "blocky {{ execution.result.stdout }}"
          extra:
            slack:
              blocks:
                - type: header
                  text: {type: plain_text, text: "Greeting {{ execution.parameters.who }}"}
    """)
    write(pack / "aliases" / "wipe.yaml", """
        name: wipe
        action_ref: demo.greet
        description: Asks first.
        formats: ["wipe {{who}}"]
        confirm: true
        ack: {enabled: false}
        result: {format: "wiped {{ execution.parameters.who }}"}
    """)
    write(pack / "aliases" / "restricted.yaml", """
        name: restricted
        action_ref: demo.greet
        description: Operators only.
        formats: ["secret {{who}}"]
        ack: {enabled: false}
        result: {format: "secret ok"}
        permissions:
          allow: {groups: [operators, oncall]}
    """)


fake = fake_slack  # the fixture, under this module's name for it


def _settings(fake: FakeSlack, **extra: Any) -> dict[str, Any]:
    return {"enabled": True, "bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "signing_secret": SIGNING_SECRET,
            "base_url": fake.base_url, **extra}


@contextlib.asynccontextmanager
async def _slack_chat(home: Path, fake: FakeSlack, **extra: Any) -> AsyncIterator[tuple[Any, ...]]:
    """A Squall with the demo pack and a ChatBot whose only adapter is Slack, pointed at the fake."""
    _pack(home)
    config = load_config(home / "config.yml")
    adapter = create(_settings(fake, **extra), config)
    squall = await Squall.start(config, adapters=[adapter])
    bot = squall.chat
    await bot.start()
    try:
        yield squall, bot, adapter
    finally:
        await bot.stop()
        await squall.close()


@pytest.fixture
async def slack(home: Path, fake: FakeSlack, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, ...]]:
    """A Squall with the demo pack and a ChatBot whose only adapter is Slack, pointed at the fake."""
    async with _slack_chat(home, fake, **getattr(request, "param", {})) as chat:
        yield chat


async def _posted(fake: FakeSlack, predicate: Any, what: str) -> dict[str, Any]:
    return await fake.wait_for(lambda: next((m for m in fake.messages if predicate(m)), None), what=what)


# -- Socket Mode: messages in, replies out ----------------------------------------------------------

async def test_mention_is_acked_and_answered_in_its_thread(slack, fake: FakeSlack) -> None:
    event = fake.message_event(f"<@{BOT_USER}> greet world", kind="app_mention")
    envelope = await fake.push("events_api", fake.event(event))
    result = await _posted(fake, lambda m: m.get("text") == "hello world", "the result")
    ack = await _posted(fake, lambda m: m.get("text") == "greeting world", "the ack")
    assert result["channel"] == ack["channel"] == "COPS0001"
    assert result["thread_ts"] == ack["thread_ts"] == event["ts"]  # in the thread of the command
    assert any(a["envelope_id"] == envelope for a in fake.acks)  # the envelope was acknowledged
    await fake.wait_for(lambda: ack["edits"], what="the ack updated with the final status")
    assert "succeeded" in ack["edits"][-1]["text"]
    assert fake.called("users.info")[0].params["user"] == "UALICE01"


async def test_direct_message_needs_no_prefix(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("greet dm", channel="DALICE01")))
    result = await _posted(fake, lambda m: m.get("text") == "hello dm", "the DM result")
    assert result["channel"] == "DALICE01"


async def test_prefixed_channel_message_runs_and_chatter_and_own_messages_do_not(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("greet chatter")))  # no prefix: chatter
    own = fake.message_event("!greet myself", user=BOT_USER, bot_id="BBOT0001")
    await fake.push("events_api", fake.event(own))
    other_bot = fake.message_event("!greet robots", subtype="bot_message", bot_id="BOTHER01")
    await fake.push("events_api", fake.event(other_bot))
    await fake.push("events_api", fake.event(fake.message_event("!greet prefixed")))
    await _posted(fake, lambda m: m.get("text") == "hello prefixed", "the prefixed command's result")
    await fake.wait_for(lambda: len(fake.acks) >= 4, what="all four envelopes acked")
    texts = [m.get("text") for m in fake.messages]
    assert not any("chatter" in (t or "") or "myself" in (t or "") or "robots" in (t or "") for t in texts)
    # chatter reaches the dispatcher (which drops it) but costs no extra lookup: one per person
    assert [c.params["user"] for c in fake.called("users.info")] == ["UALICE01"]


async def test_a_person_is_named_by_users_info_alone_and_never_two_names(slack, fake: FakeSlack) -> None:
    """When users.info fails, the name last looked up stands, and someone never looked up is not
    guessed at (their id here, a payload's `user_name` there made one person two names, who could then
    approve their own request): what they sent is dropped. A Slack Connect member of another
    organisation named like a local user is known by their id, which matches no permission's name."""
    squall, _, adapter = slack
    fake.users["UEVE0001"] = {"name": "alice", "real_name": "Eve (another organisation)", "team_id": "TOTHER01"}
    await fake.push("events_api", fake.event(fake.message_event("!greet stranger", user="UEVE0001")))
    await fake.push("events_api", fake.event(fake.message_event("!greet one")))
    await _posted(fake, lambda m: m.get("text") == "hello one", "alice's first result")
    await _posted(fake, lambda m: m.get("text") == "hello stranger", "the stranger's result")

    fake.errors["users.info"] = "ratelimited"
    adapter._users["UALICE01"] = ("alice", 0.0)  # her name's hour is over; the lookup now fails
    await fake.push("events_api", fake.event(fake.message_event("!greet two")))
    await fake.push("events_api", fake.event(fake.message_event("!greet three", user="UBOB0001")))
    await _posted(fake, lambda m: m.get("text") == "hello two", "alice's second result")
    await fake.wait_for(lambda: fake.methods().count("users.info") >= 4, what="bob's failed lookup")
    await asyncio.sleep(0.3)
    runs = {r["parameters"]["who"]: r["context"]["user"] for r in await squall.executions.list(limit=10)}
    assert runs == {"stranger": "UEVE0001", "one": "alice", "two": "alice"}  # bob's is dropped
    assert "hello three" not in [m.get("text") for m in fake.messages]


async def test_a_person_is_their_slack_user_name_or_id_never_a_display_name(slack, fake: FakeSlack) -> None:
    """Anyone may set their display name or full name to `carol`: a person is `users.info`'s `name` or,
    where it has none, their user id, never `profile.display_name` nor `real_name`, so no one becomes
    carol (an admin, an approver, an allow list's user) by renaming their profile."""
    squall, _, _ = slack
    fake.users["UMALLORY"] = {"name": "mallory", "real_name": "carol", "display_name": "carol"}
    fake.users["UNONAME1"] = {"name": None, "real_name": "carol", "display_name": "carol"}
    await fake.push("events_api", fake.event(fake.message_event("!greet renamed", user="UMALLORY")))
    await fake.push("events_api", fake.event(fake.message_event("!greet nameless", user="UNONAME1")))
    await _posted(fake, lambda m: m.get("text") == "hello renamed", "mallory's result")
    await _posted(fake, lambda m: m.get("text") == "hello nameless", "the nameless one's result")
    runs = {r["parameters"]["who"]: r["context"]["user"] for r in await squall.executions.list(limit=10)}
    assert runs == {"renamed": "mallory", "nameless": "UNONAME1"}


async def test_a_slack_user_id_in_auth_names_that_person_whatever_their_name(home: Path, fake: FakeSlack) -> None:
    """`slack:UALICE01` in `auth` is alice by her user id, which she cannot change: in a group that an
    allow list names under any name she has, and `slack:UBOB0001` in a deny list refuses bob. A display
    name set to the id grants nothing."""
    with (home / "config.yml").open("a") as config:
        config.write("auth:\n  groups:\n    operators: [slack:UALICE01]\n"
                     "  aliases:\n    demo.greet:\n      deny: {users: [slack:UBOB0001]}\n")
    fake.users["UMALLORY"] = {"name": "mallory", "real_name": "UALICE01", "display_name": "UALICE01"}
    async with _slack_chat(home, fake) as (_squall, _bot, adapter):
        await fake.push("events_api", fake.event(fake.message_event("!secret one", user="UALICE01")))
        await _posted(fake, lambda m: m.get("text") == "secret ok", "alice's result")
        fake.users["UALICE01"]["name"] = "alice.renamed"
        adapter._users.clear()  # her name's hour is over: she is looked up anew
        await fake.push("events_api", fake.event(fake.message_event("!secret two", user="UALICE01")))
        await fake.wait_for(lambda: [m.get("text") for m in fake.messages].count("secret ok") == 2,
                            what="alice's second result, under her new name")
        await fake.push("events_api", fake.event(fake.message_event("!secret three", user="UMALLORY")))
        await _posted(fake, lambda m: (m.get("text") or "").startswith("Sorry mallory"), "mallory's refusal")
        await fake.push("events_api", fake.event(fake.message_event("!greet bob", user="UBOB0001")))
        denied = await _posted(fake, lambda m: (m.get("text") or "").startswith("Sorry bob"), "bob's refusal")
        assert "user slack:UBOB0001" in denied["text"]
        assert "hello bob" not in [m.get("text") for m in fake.messages]


async def test_every_message_slack_hands_on_carries_its_senders_user_id(slack, fake: FakeSlack) -> None:
    """A message, a slash command, a message shortcut and a button click each reach the bot with the
    sender's Slack user id (`Message.user_id`), which `auth` and an inquiry's `users` may name them by."""
    _squall, _bot, adapter = slack
    seen: list[tuple[str, str | None, str]] = []
    handler = adapter._on_message

    async def spy(message: Any) -> None:
        seen.append((message.user, message.user_id, message.text))
        await handler(message)

    adapter._on_message = spy
    event = fake.message_event("hello there")
    await fake.push("events_api", fake.event(event))
    await fake.push("slash_commands", fake.slash("greet slashed", user="UBOB0001"))
    await fake.push("interactive", fake.message_shortcut(event, "greet", user="UBOB0001"))
    prompt = {"channel": "COPS0001", "ts": "1700000000.000100", "text": "Pick one",
              "blocks": [{"type": "actions", "block_id": "squall_buttons_0",
                          "elements": [{"type": "button", "action_id": "squall_button_0", "value": "nothing",
                                        "text": {"type": "plain_text", "text": "Nothing"}}]}]}
    await fake.push("interactive", fake.click(prompt, "nothing"))
    await fake.wait_for(lambda: len(seen) == 4, what="the four messages handed on")
    assert sorted(seen) == [("alice", "UALICE01", "hello there"), ("alice", "UALICE01", "nothing"),
                            ("bob", "UBOB0001", "greet hello there"), ("bob", "UBOB0001", "greet slashed")]


async def test_mention_and_its_message_twin_run_once(slack, fake: FakeSlack) -> None:
    mention = fake.message_event(f"<@{BOT_USER}> greet twins", kind="app_mention")
    twin = {**mention, "type": "message", "channel_type": "channel"}
    await fake.push("events_api", fake.event(mention))
    await fake.push("events_api", fake.event(twin))
    await _posted(fake, lambda m: m.get("text") == "hello twins", "the result")
    await asyncio.sleep(0.3)
    assert [m.get("text") for m in fake.messages].count("hello twins") == 1


async def test_retried_event_runs_once(slack, fake: FakeSlack) -> None:
    payload = fake.event(fake.message_event(f"<@{BOT_USER}> greet once", kind="app_mention"), event_id="EvRETRY1")
    first = await fake.push("events_api", payload)
    second = await fake.push("events_api", payload, retry_attempt=1, retry_reason="timeout")
    await _posted(fake, lambda m: m.get("text") == "hello once", "the result")
    await fake.wait_for(lambda: {first, second} <= {a["envelope_id"] for a in fake.acks}, what="both acks")
    squall, _, _ = slack
    executions = await squall.executions.list(limit=10)
    assert len(executions) == 1
    assert [m.get("text") for m in fake.messages].count("hello once") == 1


async def test_an_edited_mention_never_runs_its_command_again_even_after_a_restart(home: Path,
                                                                                    fake: FakeSlack) -> None:
    """Editing a message that mentions the bot makes Slack send `app_mention` again, with an `edited`
    field, a new event_id and the original's ts (bolt-js #960). Squall's memory of the ts is gone after
    a restart, so the edit itself must say it is no command: fixing a typo in yesterday's
    `@squall deploy prod` must not deploy again."""
    original = fake.message_event(f"<@{BOT_USER}> greet world", kind="app_mention")
    async with _slack_chat(home, fake) as (squall, _, _):
        await fake.push("events_api", fake.event(original))
        await _posted(fake, lambda m: m.get("text") == "hello world", "the original's result")
    async with _slack_chat(home, fake) as (squall, _, _):  # restarted: nothing of the original in memory
        edited = {**original, "text": f"<@{BOT_USER}> greet world!",
                  "edited": {"user": original["user"], "ts": "1800000000.000000"}}
        await fake.push("events_api", fake.event(edited))
        await fake.push("events_api", fake.event(fake.message_event(f"<@{BOT_USER}> greet later",
                                                                    kind="app_mention")))
        await _posted(fake, lambda m: m.get("text") == "hello later", "a new command's result")
        await fake.wait_for(lambda: len(fake.acks) >= 3, what="all three envelopes acked")
        await asyncio.sleep(0.3)
        assert sorted(r["parameters"]["who"] for r in await squall.executions.list(limit=10)) == ["later", "world"]
        assert not any((m.get("text") or "").startswith("hello world!") for m in fake.messages)


async def test_slash_command_is_acked_and_answered_in_the_channel(slack, fake: FakeSlack) -> None:
    envelope = await fake.push("slash_commands", fake.slash("greet slashed"))
    ack = await fake.wait_for(lambda: next((a for a in fake.acks if a["envelope_id"] == envelope), None),
                              what="the slash command's ack")
    assert ack  # acknowledged over the socket (bolt's ack within Slack's 3 seconds)
    result = await _posted(fake, lambda m: m.get("text") == "hello slashed", "the result")
    assert result["channel"] == "COPS0001"
    assert "thread_ts" not in result  # a slash command has no message to thread under


async def test_slash_command_where_the_bot_is_not_a_member_answers_through_response_url(slack, fake) -> None:
    fake.not_member.add("CRANDOM1")
    await fake.push("slash_commands", fake.slash("greet outsider", channel="CRANDOM1"))
    response = await fake.wait_for(lambda: next((r for r in fake.responses if r.get("text") == "hello outsider"),
                                                None), what="the result via response_url")
    assert response["response_type"] == "in_channel"


async def test_thread_reply_stays_in_that_thread(slack, fake: FakeSlack) -> None:
    parent = "1700000000.000100"
    await fake.push("events_api", fake.event(fake.message_event("!greet threaded", thread_ts=parent)))
    result = await _posted(fake, lambda m: m.get("text") == "hello threaded", "the result")
    assert result["thread_ts"] == parent


async def test_slack_markup_reaches_the_alias_as_typed(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!greet <https://example.com/a?b=1&amp;c=2|x>")))
    await _posted(fake, lambda m: m.get("text") == "hello https://example.com/a?b=1&amp;c=2", "the result")


@pytest.mark.parametrize("slack", [{"thread_replies": False}], indirect=True)
async def test_thread_replies_off_answers_in_the_channel(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!greet flat")))
    result = await _posted(fake, lambda m: m.get("text") == "hello flat", "the result")
    assert "thread_ts" not in result


async def test_alias_extra_slack_becomes_an_attachment(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!fancy bob")))
    posted = await _posted(fake, lambda m: m.get("attachments"), "the attachment")
    attachments = json.loads(posted["attachments"]) if isinstance(posted["attachments"], str) else \
        posted["attachments"]
    assert attachments[0]["color"] == "#00ff00"
    assert attachments[0]["pretext"] == "for bob"
    assert attachments[0]["text"] == "fancy hello bob"


async def test_alias_extra_slack_blocks_are_sent_as_blocks(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!blocky carol")))
    posted = await _posted(fake, lambda m: m.get("blocks"), "the blocks")
    blocks = json.loads(posted["blocks"]) if isinstance(posted["blocks"], str) else posted["blocks"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "Greeting carol"}}
    assert posted["text"] == "blocky hello carol"  # the notification / accessibility fallback


async def test_a_result_split_at_the_pretext_delimiter_is_text_and_an_attachment(home: Path, fake: FakeSlack) -> None:
    """hubot-stackstorm's Slack adapter posts a result's part before `{~}` as the message and the rest as an
    attachment (decorated by `extra.slack`'s keys), as the st2 pack's `Found N actions:{~}...` expects; the
    delimiter was posted as typed."""
    for name, extra in (("listing", ""), ("colored", 'extra: {slack: {color: "#00ff00"}}')):
        write(home / "packs" / "demo" / "aliases" / f"{name}.yaml", f"""
            name: {name}
            action_ref: demo.greet
            description: Greet, as a list.
            formats: ["{name} {{{{who}}}}"]
            ack: {{enabled: false}}
            result:
              format: "Found 1 greeting:{{~}}{{{{ execution.result.stdout }}}}"
              {extra}
        """)
    async with _slack_chat(home, fake):
        await fake.push("events_api", fake.event(fake.message_event("!listing ann")))
        await fake.push("events_api", fake.event(fake.message_event("!colored bo&lt;b&gt;")))
        plain = await _posted(fake, lambda m: "ann" in str(m.get("attachments")), "the listing")
        colored = await _posted(fake, lambda m: "bo" in str(m.get("attachments")), "the colored listing")
    for posted, text, color in ((plain, "hello ann", None), (colored, "hello bo&lt;b&gt;", "#00ff00")):
        attachments = json.loads(posted["attachments"]) if isinstance(posted["attachments"], str) else \
            posted["attachments"]
        assert posted["text"] == "Found 1 greeting:"
        assert attachments == [{"mrkdwn_in": ["text", "pretext"], **({"color": color} if color else {}),
                                "text": text, "fallback": text}]


async def test_long_output_is_uploaded_as_a_file(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!lines 300")))  # ~9 KB > file_threshold 4000
    done = await fake.wait_for(lambda: fake.called("files.completeUploadExternal"), what="the upload")
    complete = done[0].params
    assert complete["channel_id"] == "COPS0001"
    [shared] = fake.shares  # the message the upload made says the head of the output, in its thread
    assert "thread_ts" in complete and shared["thread_ts"] == complete["thread_ts"]
    assert fake.shown(shared).startswith("line 0001") and "(full output attached)" in fake.shown(shared)
    file_id = json.loads(complete["files"])[0]["id"]
    uploaded = fake.uploads[file_id].decode()
    assert uploaded.count("\n") >= 299 and "line 0300 of the long output" in uploaded
    assert not any("line 0300" in (m.get("text") or "") for m in fake.messages)  # not pasted into the channel


async def test_refused_upload_posts_the_start_of_the_output(slack, fake: FakeSlack) -> None:
    fake.errors["files.getUploadURLExternal"] = "missing_scope"
    await fake.push("events_api", fake.event(fake.message_event("!lines 300")))
    posted = await _posted(fake, lambda m: "output truncated" in (m.get("text") or ""), "the inline fallback")
    assert "line 0001 of the long output" in posted["text"] and "missing_scope" in posted["text"]
    assert not fake.uploads


async def test_rate_limited_reply_waits_and_keeps_the_channel_order(slack, fake: FakeSlack) -> None:
    fake.ratelimit("chat.postMessage", times=1, retry_after=1)
    await fake.push("events_api", fake.event(fake.message_event("!greet first")))
    await _posted(fake, lambda m: m.get("text") == "hello first", "the first result")
    await fake.push("events_api", fake.event(fake.message_event("!greet second")))
    await _posted(fake, lambda m: m.get("text") == "hello second", "the second result")
    posts = [c for c in fake.calls if c.method == "chat.postMessage"]
    assert posts[0].status == 429 and posts[0].params["text"] == "greeting first"
    texts = [m["text"] for m in fake.messages]
    assert texts.index("greeting first") < texts.index("hello first") < texts.index("greeting second")
    assert texts.index("greeting second") < texts.index("hello second")


async def test_a_5xx_on_an_edit_or_an_upload_is_retried_not_worked_around(fake: FakeSlack, config) -> None:
    """An HTML 503 from Slack's edge is an outage, not a refusal: the send fails to be retried (the
    outbox's DeliveryError), and the retry edits the message and uploads the whole file; nothing is
    posted anew or cut to its first 3,500 characters meanwhile."""
    adapter = create(_settings(fake), config)
    first = await adapter.send(Reply(adapter="slack", channel="COPS0001", text="Running demo.greet (e1)"))
    fake.outage("chat.update")
    with pytest.raises(DeliveryError) as edit:
        await adapter.send(Reply(adapter="slack", channel="COPS0001", text="✔ demo.greet succeeded"), edit_of=first)
    assert not edit.value.permanent and [m["text"] for m in fake.messages] == ["Running demo.greet (e1)"]
    assert await adapter.send(Reply(adapter="slack", channel="COPS0001", text="✔ demo.greet succeeded"),
                              edit_of=first) == first
    assert len(fake.messages) == 1 and [e["text"] for e in fake.messages[0]["edits"]] == ["✔ demo.greet succeeded"]
    output = "\n".join(f"line {i:05d}" for i in range(2000))
    [part] = fit(Reply(adapter="slack", channel="COPS0001", text="✔ demo.dump succeeded\n" + output),
                 adapter.capabilities)
    assert part.file is not None
    fake.outage("files.")
    with pytest.raises(DeliveryError) as upload:
        await adapter.send(part)
    assert not upload.value.permanent and len(fake.messages) == 1 and not fake.uploads
    assert (await adapter.send(part) or "").startswith("file:")
    assert len(fake.messages) == 1 and list(fake.uploads.values()) == [part.file[1].encode()]


async def test_an_edit_slack_refuses_is_posted_as_a_new_message(fake: FakeSlack, config) -> None:
    adapter = create(_settings(fake), config)
    first = await adapter.send(Reply(adapter="slack", channel="COPS0001", text="running"))
    fake.errors["chat.update"] = "cant_update_message"
    again = await adapter.send(Reply(adapter="slack", channel="COPS0001", text="done"), edit_of=first)
    assert again != first and [m["text"] for m in fake.messages] == ["running", "done"]
    assert await adapter.send(Reply(adapter="slack", channel="COPS0001", text="  ")) is None  # Slack: no_text
    assert len(fake.messages) == 2


async def test_a_reply_slack_took_before_a_crash_is_found_and_not_posted_again(fake: FakeSlack, config,
                                                                                squall) -> None:
    """A crash after Slack took a reply and before its `sent` mark: the next start finds it by the
    outbox id in its metadata (in the channel and in a thread) and marks it sent instead of posting it."""
    from bot.chat.outbox import Outbox

    adapter = create(_settings(fake), config)
    db = squall.db
    replies = [Reply(adapter="slack", channel="COPS0001", text="in the channel"),
               Reply(adapter="slack", channel="COPS0001", text="in a thread", thread="1700000000.000001"),
               Reply(adapter="slack", channel="COPS0001", text="never reached Slack")]
    ids = [await db(db.store.outbox_add, r.adapter, r.channel, r.to_json()) for r in replies]
    for outbox_id, reply in zip(ids[:2], replies[:2], strict=True):  # the crashed run's sends
        reply.outbox_id = outbox_id
        await adapter.send(reply)
    taken = {m["text"]: f"COPS0001:{m['ts']}" for m in fake.messages}

    outbox = Outbox(db, {"slack": adapter})
    assert await outbox.poll() == 3
    await outbox.drain(10)
    await outbox.close()
    texts = [m["text"] for m in fake.messages]
    assert sorted(texts) == ["in a thread", "in the channel", "never reached Slack"]  # each once
    rows = {row["payload"]["text"]: row for row in await db(db.store.outbox_get_many, ids)}
    assert {text: rows[text]["platform_id"] for text in taken} == taken
    assert all(row["status"] == "sent" for row in rows.values())
    assert {c.method for c in fake.called("conversations.history")} and fake.called("conversations.replies")



async def test_an_upload_slack_took_before_a_crash_is_found_and_not_uploaded_again(fake: FakeSlack, config,
                                                                                      squall) -> None:
    """A reply with a file that Slack shared before a crash kept its `sent` mark: the next start finds
    the message the upload made (its file, and the outbox id it carries) in the channel and in a
    thread, and records it sent as that file instead of uploading it again. So is one whose upload Slack
    refused and whose start was posted as a message instead."""
    from bot.chat.outbox import Outbox

    adapter = create(_settings(fake), config)
    db = squall.db
    replies = [Reply(adapter="slack", channel="COPS0001", text="in the channel", file=("output.txt", "a\n" * 9)),
               Reply(adapter="slack", channel="COPS0001", text="in a thread", thread="1700000000.000001",
                     file=("output.txt", "b\n" * 9)),
               Reply(adapter="slack", channel="CRANDOM1", text="refused upload", file=("output.txt", "c\n" * 9)),
               Reply(adapter="slack", channel="COPS0001", text="never reached Slack", file=("output.txt", "d\n" * 9))]
    ids = [await db(db.store.outbox_add, r.adapter, r.channel, r.to_json()) for r in replies]
    taken = []
    for outbox_id, reply in zip(ids[:3], replies[:3], strict=True):  # the crashed run's sends
        if reply.channel == "CRANDOM1":
            fake.errors["files.getUploadURLExternal"] = "missing_scope"  # no files:write: the start is posted
        else:
            fake.errors.pop("files.getUploadURLExternal", None)
        reply.outbox_id = outbox_id
        taken.append(await adapter.send(reply))
    fake.errors.pop("files.getUploadURLExternal", None)
    assert [t.startswith("file:") for t in taken] == [True, True, False]

    outbox = Outbox(db, {"slack": adapter})
    assert await outbox.poll() == 4
    await outbox.drain(10)
    await outbox.close()
    assert sorted(fake.shown(share) for share in fake.shares) == ["in a thread", "in the channel",
                                                                  "never reached Slack"]
    assert [m["text"].split("\n")[0] for m in fake.messages] == ["refused upload"]
    rows = {row["payload"]["text"]: row for row in await db(db.store.outbox_get_many, ids)}
    assert {text: rows[text]["platform_id"] for text in ("in the channel", "in a thread", "refused upload")} == {
        "in the channel": taken[0], "in a thread": taken[1], "refused upload": taken[2]}
    assert all(row["status"] == "sent" for row in rows.values())


async def _sends_until_killed(adapter: Any, outbox: Any, posts: int) -> None:
    """Run `outbox` until Slack took `posts` messages, then leave it as a SIGKILL would: the send that
    took the last of them never returns, so nothing after it is written or posted."""
    real_send, taken, killed = adapter.send, [], asyncio.Event()

    async def send(reply: Reply, edit_of: str | None = None) -> str | None:
        taken.append(await real_send(reply, edit_of))
        if len(taken) == posts:
            killed.set()
            await asyncio.Future()  # dead: no `sent` mark, no next part
        return taken[-1]

    adapter.send = send
    try:
        await outbox.poll()
        await asyncio.wait_for(killed.wait(), 10)
    finally:
        await outbox.close()
        del adapter.send


@pytest.mark.parametrize(("killed_after", "limit_after"), [(1, 300), (3, 300), (1, 900), (3, 200)])
@pytest.mark.parametrize("thread", [None, "1700000000.000001"])
async def test_a_long_reply_killed_between_its_parts_goes_on_from_the_next_part(
        fake: FakeSlack, config, squall, killed_after: int, limit_after: int, thread: str | None) -> None:
    """A reply stored whole (a CLI run) and split as it is sent (an adapter without files): a kill after
    Slack took some of its parts leaves the row pending; the next start finds those parts by the
    metadata each carries (outbox id, part, end) and posts the rest, every line once, in order, the row
    marked sent as its first part. Also when the limit differs after the restart."""
    from bot.chat.outbox import Outbox

    adapter = create(_settings(fake), config)
    adapter.capabilities = Capabilities(**{**adapter.capabilities.__dict__, "files": False, "max_length": 300})
    db = squall.db
    text = "\n".join(f"line {i:03d} " + "x" * 60 for i in range(30))  # about 2,000 characters: 8 parts
    row = Reply(adapter="slack", channel="COPS0001", text=text, thread=thread)
    outbox_id = await db(db.store.outbox_add, row.adapter, row.channel, row.to_json())
    await _sends_until_killed(adapter, Outbox(db, {"slack": adapter}), killed_after)
    assert len(fake.messages) == killed_after
    assert (await db(db.store.outbox_get, outbox_id))["status"] == "pending"

    adapter.capabilities = Capabilities(**{**adapter.capabilities.__dict__, "max_length": limit_after})
    outbox = Outbox(db, {"slack": adapter})
    await outbox.poll()
    await outbox.drain(10)
    await outbox.close()
    assert "\n".join(m["text"] for m in fake.messages) == text  # every line once, in order
    assert all(m.get("thread_ts") == thread for m in fake.messages)
    stored = await db(db.store.outbox_get, outbox_id)
    assert stored["status"] == "sent" and stored["platform_id"] == f"COPS0001:{fake.messages[0]['ts']}"

async def test_a_failed_lookup_sends_the_leftover_again(fake: FakeSlack, config, squall) -> None:
    from bot.chat.outbox import Outbox

    adapter = create(_settings(fake), config)
    db = squall.db
    reply = Reply(adapter="slack", channel="COPS0001", text="at least once")
    reply.outbox_id = await db(db.store.outbox_add, reply.adapter, reply.channel, reply.to_json())
    await adapter.send(reply)
    fake.errors["conversations.history"] = "missing_scope"
    outbox = Outbox(db, {"slack": adapter})
    await outbox.poll()
    await outbox.drain(10)
    await outbox.close()
    assert [m["text"] for m in fake.messages] == ["at least once", "at least once"]


async def test_rate_limit_is_a_delivery_error_with_retry_after(fake: FakeSlack, config) -> None:
    from adapters.base import DeliveryError

    adapter = create(_settings(fake), config)
    fake.ratelimit("chat.postMessage", times=1, retry_after=7)
    with pytest.raises(DeliveryError) as caught:
        await adapter.send(Reply(adapter="slack", channel="COPS0001", text="hi"))
    assert caught.value.retry_after == 7
    assert BOT_TOKEN not in str(caught.value)
    assert (await adapter.send(Reply(adapter="slack", channel="COPS0001", text="hi"))).startswith("COPS0001:")


async def test_confirmation_by_button_click(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!wipe disk")))
    prompt = await _posted(fake, lambda m: m.get("blocks") and "About to run" in m["text"], "the prompt")
    await fake.push("interactive", fake.click(prompt, "yes", user="UBOB0001"))  # someone else: not theirs
    await _posted(fake, lambda m: m["text"].startswith("That prompt asks alice, not you, bob"),
                  "bob told the prompt is alice's")
    assert not prompt["edits"]  # bob's click leaves alice's buttons in place
    await fake.push("interactive", fake.click(prompt, "yes"))
    await _posted(fake, lambda m: m.get("text") == "wiped disk", "the confirmed result")
    done = await _posted(fake, lambda m: m is prompt and m["edits"], "the prompt updated")
    blocks = done["edits"][-1]["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    assert not any(b["type"] == "actions" for b in blocks)  # buttons gone once answered
    squall, _, _ = slack
    assert len(await squall.executions.list(limit=10)) == 1


async def test_a_bystanders_click_after_a_restart_leaves_the_askers_buttons(home: Path, fake: FakeSlack) -> None:
    """Whom a prompt asks travels with the prompt (its buttons' block), not in memory: after a restart a
    refused click by someone else still leaves the buttons to the one asked, whose click then answers."""
    def has_buttons(message: dict[str, Any]) -> bool:
        blocks = (message["edits"][-1] if message["edits"] else message).get("blocks")
        blocks = json.loads(blocks) if isinstance(blocks, str) else blocks or []
        return any(b.get("type") == "actions" for b in blocks)

    async with _slack_chat(home, fake):
        await fake.push("events_api", fake.event(fake.message_event("!wipe disk")))
        prompt = await _posted(fake, lambda m: m.get("blocks") and "About to run" in m["text"], "the prompt")
    async with _slack_chat(home, fake) as (squall, _, _):
        await fake.push("interactive", fake.click(prompt, "yes", user="UBOB0001"))
        await _posted(fake, lambda m: m["text"].startswith("That prompt asks alice, not you, bob"),
                      "bob told the prompt is alice's")
        assert not prompt["edits"] and has_buttons(prompt)
        await fake.push("interactive", fake.click(prompt, "yes"))
        await _posted(fake, lambda m: m.get("text") == "wiped disk", "alice's confirmed result")
        await fake.wait_for(lambda: prompt["edits"], what="the prompt updated")
        assert not has_buttons(prompt)  # answered by the one asked: the buttons go
        assert len(await squall.executions.list(action="demo.greet")) == 1


async def test_a_click_on_an_older_confirmation_runs_nothing_and_says_it_was_replaced(slack,
                                                                                     fake: FakeSlack) -> None:
    """A person's prompts in one channel share one pending slot: each prompt's buttons name it, so Yes
    (or No) on an older prompt neither runs nor cancels the newer command; the newest prompt's Yes runs
    exactly its own command."""
    squall, _, _ = slack
    await fake.push("events_api", fake.event(fake.message_event("!wipe staging")))
    older = await _posted(fake, lambda m: "who=staging" in (m.get("text") or ""), "the first prompt")
    await fake.push("events_api", fake.event(fake.message_event("!wipe production")))
    newer = await _posted(fake, lambda m: "who=production" in (m.get("text") or ""), "the second prompt")
    def refusals() -> int:
        return sum("replaced it" in (m.get("text") or "") for m in fake.messages)

    await fake.push("interactive", fake.click(older, "yes"))
    await fake.wait_for(lambda: refusals() == 1, what="the older prompt's Yes refused")
    await fake.push("interactive", fake.click(older, "no"))
    await fake.wait_for(lambda: refusals() == 2, what="the older prompt's No refused")
    refusal = next(m for m in fake.messages if "replaced it" in (m.get("text") or ""))
    assert refusal["text"].startswith("That prompt is no longer pending: your newer command (demo.greet)")
    assert "Nothing was run" in refusal["text"]
    assert await squall.executions.list(action="demo.greet") == []
    await fake.push("interactive", fake.click(newer, "yes"))
    await _posted(fake, lambda m: m.get("text") == "wiped production", "the newest prompt's command")
    assert [r["parameters"]["who"] for r in await squall.executions.list(action="demo.greet")] == ["production"]
    await fake.push("interactive", fake.click(newer, "yes"))  # answered already: runs nothing again
    await _posted(fake, lambda m: (m.get("text") or "").startswith(
        "That prompt is no longer pending: you answered it already (yes)"), "the second click refused")
    assert len(await squall.executions.list(action="demo.greet")) == 1


async def test_yes_typed_still_confirms_the_newest_prompt(slack, fake: FakeSlack) -> None:
    squall, _, _ = slack
    await fake.push("events_api", fake.event(fake.message_event("!wipe staging")))
    await _posted(fake, lambda m: "who=staging" in (m.get("text") or ""), "the first prompt")
    await fake.push("events_api", fake.event(fake.message_event("!wipe production")))
    await _posted(fake, lambda m: "who=production" in (m.get("text") or ""), "the second prompt")
    await fake.push("events_api", fake.event(fake.message_event("!yes")))
    await _posted(fake, lambda m: m.get("text") == "wiped production", "the typed yes's command")
    assert [r["parameters"]["who"] for r in await squall.executions.list(action="demo.greet")] == ["production"]


async def test_a_button_on_a_top_level_inquiry_question_answers_it(home: Path, fake: FakeSlack) -> None:
    """A question asked through a route sits at the top of its channel: the click carries no thread,
    and the question's own ts names it (its thread's root), so Yes answers it rather than being taken
    for the command `yes`."""
    with (home / "config.yml").open("a") as config:
        config.write("routes:\n  ops: {adapter: slack, channel: COPS0001}\n")
    async with _slack_chat(home, fake) as (squall, _, _):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema})
        question = await _posted(fake, lambda m: bool(m.get("blocks")), "the question")
        assert "thread_ts" not in question
        await fake.push("interactive", fake.click(question, "yes"))
        thanks = await _posted(fake, lambda m: (m.get("text") or "").startswith("Thanks alice"), "the answer taken")
        assert thanks["thread_ts"] == question["ts"]  # told in the question's thread
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["status"] == "succeeded" and answered["result"]["response"] == {"continue": True}
        assert not any("I don't know" in (m.get("text") or "") for m in fake.messages)


async def test_a_stale_inquiry_button_confirms_nothing_and_runs_nothing(home: Path, fake: FakeSlack) -> None:
    """An inquiry answered elsewhere keeps its buttons in Slack: a later click on its Yes is an answer to
    nothing, not the person's `yes` to the command they were asked to confirm since."""
    with (home / "config.yml").open("a") as config:
        config.write("routes:\n  ops: {adapter: slack, channel: COPS0001}\n")
    async with _slack_chat(home, fake) as (squall, _, _):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema})
        question = await _posted(fake, lambda m: bool(m.get("blocks")), "the question")
        await squall.inquiries.respond(record["id"], {"continue": False}, "bob")
        await squall.executions.wait(record["id"], timeout=10)
        await fake.push("events_api", fake.event(fake.message_event("!wipe production", channel="COPS0001")))
        await _posted(fake, lambda m: "who=production" in (m.get("text") or ""), "the confirmation prompt")
        await fake.push("interactive", fake.click(question, "yes"))
        stale = await _posted(fake, lambda m: (m.get("text") or "").startswith("That question is no longer waiting"),
                              "the stale click refused")
        assert "Nothing was run" in stale["text"]
        assert await squall.executions.list(action="demo.greet") == []
        await fake.push("events_api", fake.event(fake.message_event("!yes", channel="COPS0001")))  # typed: still ok
        await _posted(fake, lambda m: m.get("text") == "wiped production", "the typed yes's command")


async def test_a_click_on_one_of_two_questions_in_a_thread_answers_that_one(home: Path, fake: FakeSlack) -> None:
    """A workflow started from Slack asks two questions at once, both in the command's thread: No on the
    first answers the first (its button names its inquiry), not the newest question in the thread."""
    from tests.workflow_helpers import children, workflow_pack

    workflow_pack(home, {"two": ("orquesta", "", """
        version: 1.0
        tasks:
          start:
            action: core.noop
            next: [{do: [ask_db, ask_web]}]
          ask_db:
            action: core.ask
            input: {schema: {type: object, description: DATABASE?, properties: {db: {type: boolean}}}}
          ask_web:
            action: core.ask
            input: {schema: {type: object, description: WEB?, properties: {web: {type: boolean}}}}
    """.replace("\n        ", "\n"))})
    write(home / "packs" / "wf" / "aliases" / "two.yaml", "name: two\naction_ref: wf.two\nformats: ['release']\n")
    async with _slack_chat(home, fake) as (squall, _, _):
        await fake.push("events_api", fake.event(fake.message_event("!release")))
        asked = await fake.wait_for(lambda: (lambda q: q if len(q) == 2 else None)(
            [m for m in fake.messages if "needs an answer" in (m.get("text") or "")]), what="the two questions")
        db = next(m for m in asked if "DATABASE" in m["text"])
        assert {m.get("thread_ts") for m in asked} == {db["thread_ts"]}  # one thread
        await fake.push("interactive", fake.click(db, "no"))
        await _posted(fake, lambda m: (m.get("text") or "").startswith("Thanks alice"), "the answer taken")
        (workflow,) = await squall.executions.list(action="wf.two")
        inquiries = {c["context"]["workflow_task"]["task"]: await squall.executions.get(c["id"])
                     for c in await children(squall, workflow["id"]) if c["runner"] == "inquirer"}
        assert inquiries["ask_db"]["status"] == "succeeded" and inquiries["ask_db"]["result"]["response"] == {
            "db": False}
        assert inquiries["ask_web"]["status"] == "pending"


async def test_a_refused_click_on_a_question_puts_its_buttons_back(home: Path, fake: FakeSlack) -> None:
    """A click takes a question's buttons off (`<name> chose *Yes*`): when it is refused (bob is not among
    the inquiry's users) the question is edited back as it was asked, buttons and all, before the refusal
    shows; alice's click then answers it and leaves who chose what."""
    with (home / "config.yml").open("a") as config:
        config.write("routes:\n  ops: {adapter: slack, channel: COPS0001}\n")
    async with _slack_chat(home, fake) as (squall, _, _):
        schema = {"type": "object", "properties": {"continue": {"type": "boolean", "required": True}}}
        record = await squall.executions.request("core.ask", {"route": "ops", "schema": schema, "users": ["alice"]})
        question = await _posted(fake, lambda m: bool(m.get("blocks")), "the question")
        await fake.push("interactive", fake.click(question, "yes", user="UBOB0001"))
        refusal = await _posted(fake, lambda m: (m.get("text") or "").startswith("Sorry bob"), "the refusal")
        assert "may not respond" in refusal["text"] and not refusal.get("blocks")

        def blocks(edit: dict[str, Any]) -> list[dict[str, Any]]:
            return json.loads(edit["blocks"]) if isinstance(edit.get("blocks"), str) else edit.get("blocks") or []

        assert "bob chose" in json.dumps(blocks(question["edits"][0]))  # the click took the buttons off
        back = blocks(question["edits"][-1])
        assert [e["value"] for b in back if b["type"] == "actions" for e in b["elements"]] == [
            f"yes:inquiry:{record['id']}", f"no:inquiry:{record['id']}"]
        assert (await squall.executions.get(record["id"]))["status"] == "pending"
        await fake.push("interactive", fake.click({**question, **question["edits"][-1]}, "yes"))
        await _posted(fake, lambda m: (m.get("text") or "").startswith("Thanks alice"), "the answer taken")
        answered = await squall.executions.wait(record["id"], timeout=10)
        assert answered["result"]["response"] == {"continue": True} and answered["result"]["responder"] == "alice"
        assert "alice chose" in json.dumps(blocks(question["edits"][-1]))


async def test_made_up_mentions_in_chatter_cannot_spend_the_users_info_budget(slack, fake: FakeSlack) -> None:
    """Every message is passed on, chatter too: mentions of people not known yet are looked up at most
    `MENTION_LOOKUPS_PER_MINUTE` a minute, and a failed one is not retried for a while, so made-up
    `<@U…>` cannot use up the rate limit a sender's name needs."""
    _, _, adapter = slack
    junk = " ".join(f"<@U{n:08d}>" for n in range(12))
    for round_ in range(4):  # one message after another, as chatter arrives: each made-up id is asked once
        assert await adapter._mention_names(f"lunch {round_}? {junk} <@U9{round_:07d}>") == {}
    assert len(fake.called("users.info")) == 12 + 4
    await fake.push("events_api", fake.event(fake.message_event("!greet <@UBOB0001>", user="UOLIVIA1")))
    await _posted(fake, lambda m: m.get("text") == "hello @bob", "olivia's command, bob named within the budget")
    await fake.push("events_api", fake.event(fake.message_event(f"lunch again? {junk}")))
    await fake.push("events_api", fake.event(fake.message_event("!greet <@UALICE01>")))
    await _posted(fake, lambda m: m.get("text") == "hello @alice", "alice's command")
    asked = [c.params["user"] for c in fake.called("users.info")]
    assert len(asked) <= MENTION_LOOKUPS_PER_MINUTE + 2  # the budget, and the two senders
    assert asked.count("U00000000") == 1


async def test_a_mention_typed_as_a_parameter_reaches_the_alias_as_the_name(slack, fake: FakeSlack) -> None:
    """`<@U…>` becomes the `@name` the person typed (as hubot-slack and st2chatops give it), looked up
    through the cached users.info; a person Slack cannot name stays their id and the message still runs;
    the bot's own leading mention still addresses it."""
    await fake.push("events_api", fake.event(fake.message_event("!greet <@UBOB0001>")))
    await _posted(fake, lambda m: m.get("text") == "hello @bob", "the result with bob's name")
    await fake.push("events_api", fake.event(fake.message_event("!greet <@UNOBODY1>")))
    await _posted(fake, lambda m: m.get("text") == "hello @UNOBODY1", "the result with the unknown id")
    mention = fake.message_event(f"<@{BOT_USER}> greet <@UBOB0001> <@UOLIVIA1>", kind="app_mention")
    await fake.push("events_api", fake.event(mention))
    await _posted(fake, lambda m: m.get("text") == "hello @bob @olivia", "the mention's result")
    looked_up = [c.params["user"] for c in fake.called("users.info")]
    assert looked_up.count("UBOB0001") == 1 and BOT_USER not in looked_up  # cached; the bot is not looked up


async def test_slack_user_groups_grant_alias_permissions(slack, fake: FakeSlack) -> None:
    await fake.push("events_api", fake.event(fake.message_event("!secret x", user="UALICE01")))
    await fake.push("events_api", fake.event(fake.message_event("!secret y", user="UOLIVIA1")))
    await fake.push("events_api", fake.event(fake.message_event("!secret z", user="UBOB0001")))
    await fake.wait_for(lambda: [m["text"] for m in fake.messages].count("secret ok") == 2, what="two results")
    denied = await _posted(fake, lambda m: m["text"].startswith("Sorry alice"), "alice's denial")
    assert "operators" in denied["text"]
    assert fake.called("usergroups.users.list")  # oncall's members were asked for


async def test_a_slack_channel_named_console_is_not_the_terminal(slack, fake: FakeSlack, tmp_path: Path) -> None:
    """The shipped `!run` (any shell command) is for the terminal and operators: any member may create a
    channel called `console`, and bob is refused there as anywhere; nothing runs."""
    marker = tmp_path / "ran"
    fake.channels["CEVIL001"] = {"name": "console"}
    await fake.push("events_api", fake.event(fake.message_event(f"!run touch {marker}", user="UBOB0001",
                                                                channel="CEVIL001")))
    refusal = await _posted(fake, lambda m: m.get("channel") == "CEVIL001" and "may not run" in (m.get("text") or ""),
                            "the refusal")
    assert "groups operators, adapters console" in refusal["text"]
    assert not marker.exists()
    assert not [m for m in fake.messages if m.get("channel") == "CEVIL001" and "core.local" in (m.get("text") or "")]


async def test_dropped_socket_reconnects_and_answers_again(slack, fake: FakeSlack) -> None:
    assert fake.connections == 1
    await fake.drop_sockets()
    await fake.wait_for(lambda: fake.connections >= 2, what="a new connection")
    assert len(fake.called("apps.connections.open")) >= 2
    await fake.push("events_api", fake.event(fake.message_event(f"<@{BOT_USER}> greet again", kind="app_mention")))
    await _posted(fake, lambda m: m.get("text") == "hello again", "an answer after reconnecting")


@pytest.mark.parametrize("slack", [{"watchdog_seconds": 0.5}], indirect=True)
async def test_watchdog_reconnects_a_silent_socket(slack, fake: FakeSlack) -> None:
    _, _, adapter = slack
    fake.go_silent()  # the socket stays open, but nothing arrives: the connection is a zombie
    await fake.wait_for(lambda: adapter.reconnects >= 1 and "SOCKET_ZOMBIE" in fake.methods(),
                        what="the watchdog reconnecting")
    fake.go_silent(False)
    await fake.wait_for(lambda: fake.connections >= 2, what="a live connection again")
    await fake.push("events_api", fake.event(fake.message_event(f"<@{BOT_USER}> greet awake", kind="app_mention")))
    await _posted(fake, lambda m: m.get("text") == "hello awake", "an answer after the watchdog")


async def test_a_failing_handler_does_not_stop_the_adapter(slack, fake: FakeSlack) -> None:
    _, _, adapter = slack
    real = adapter._on_message
    calls = 0

    async def broken(message):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        await real(message)

    adapter._on_message = broken
    await fake.push("events_api", fake.event(fake.message_event("!greet boom")))
    await fake.push("events_api", {"type": "event_callback", "event": {"type": "message"}})  # malformed
    await fake.push("events_api", fake.event(fake.message_event("!greet survivor")))
    await _posted(fake, lambda m: m.get("text") == "hello survivor", "an answer after a failure")


async def test_slack_down_at_start_is_retried_in_the_background(home: Path) -> None:
    _pack(home)
    port = free_port()
    config = load_config(home / "config.yml")
    adapter = create({"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "base_url": f"http://127.0.0.1:{port}/api/"},
                     config)
    squall = await Squall.start(config, adapters=[adapter])
    bot = squall.chat
    fake = FakeSlack()
    try:
        await bot.start()  # nothing listens there yet: the service must still start
        await fake.start(port=port)
        await fake.wait_for(lambda: fake.connections >= 1, what="the adapter connecting once Slack is up")
        await fake.push("events_api", fake.event(fake.message_event(f"<@{BOT_USER}> greet late", kind="app_mention")))
        await _posted(fake, lambda m: m.get("text") == "hello late", "an answer")
    finally:
        await bot.stop()
        await squall.close()
        await fake.close()


@pytest.mark.parametrize("slack", [{"status_reactions": True}], indirect=True)
async def test_status_reaction_marks_a_command_received(slack, fake: FakeSlack) -> None:
    event = fake.message_event("!greet eyes")
    await fake.push("events_api", fake.event(event))
    await _posted(fake, lambda m: m.get("text") == "hello eyes", "the result")
    reaction = fake.called("reactions.add")[0].params
    assert (reaction["channel"], reaction["timestamp"], reaction["name"]) == ("COPS0001", event["ts"], "eyes")


def test_manifest_matches_the_adapter() -> None:
    import yaml

    manifest = yaml.safe_load((REPO / "docs" / "slack-app-manifest.yml").read_text())
    assert manifest["settings"]["socket_mode_enabled"] is True  # the default mode
    assert manifest["features"]["slash_commands"][0]["command"] == SlackSettings().slash_command
    assert {"app_mention", "message.channels", "message.im"} <= set(manifest["settings"]["event_subscriptions"]
                                                                    ["bot_events"])
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"chat:write", "commands", "files:write", "users:read", "usergroups:read", "app_mentions:read"} <= scopes
    assert manifest["settings"]["interactivity"]["is_enabled"] is True


# -- configuration -------------------------------------------------------------------------------------

def test_missing_tokens_name_the_key_and_the_variable(monkeypatch) -> None:
    for var in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.bot_token .*SLACK_BOT_TOKEN"):
        SlackSettings.from_section({"enabled": True})
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.app_token .*SLACK_APP_TOKEN"):
        SlackSettings.from_section({"bot_token": BOT_TOKEN})
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.signing_secret .*SLACK_SIGNING_SECRET"):
        SlackSettings.from_section({"bot_token": BOT_TOKEN, "mode": "http"})
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.mode"):
        SlackSettings.from_section({"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "mode": "rtm"})
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.app_token .*app-level token"):
        SlackSettings.from_section({"bot_token": BOT_TOKEN, "app_token": BOT_TOKEN})
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.file_treshold"):
        SlackSettings.from_section({"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "file_treshold": 10})


def test_tokens_come_from_the_environment_and_defaults_hold(monkeypatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    settings = SlackSettings.from_section({"enabled": True, "base_url": "http://127.0.0.1:1/api"})
    assert (settings.bot_token, settings.app_token, settings.mode) == (BOT_TOKEN, APP_TOKEN, "socket")
    assert settings.base_url == "http://127.0.0.1:1/api/"  # without the slash, urljoin would drop 'api'
    assert (settings.slash_command, settings.file_threshold, settings.thread_replies) == ("/squall", 4000, True)
    assert BOT_TOKEN not in repr(settings) and APP_TOKEN not in repr(settings)
    assert SlackSettings.from_section({}).base_url == "https://slack.com/api/"


async def test_a_refused_token_is_a_clear_error_without_the_token(fake: FakeSlack, config) -> None:
    adapter = create({**_settings(fake), "bot_token": "xoxb-wrong-token"}, config)
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.bot_token") as caught:
        await adapter.start(lambda m: asyncio.sleep(0))
    assert "xoxb-wrong-token" not in str(caught.value)
    adapter = create({**_settings(fake), "app_token": "xapp-wrong"}, config)
    with pytest.raises(AdapterConfigError, match=r"adapters\.slack\.app_token"):
        await adapter.start(lambda m: asyncio.sleep(0))
    await adapter.stop()


def test_markup_and_rendering() -> None:
    assert plain_text(f"<@{BOT_USER}> run <#C1|ops> &lt;x&gt; <mailto:a@b.c|a@b.c>", BOT_USER) == \
        ("run #ops <x> a@b.c", True)
    assert plain_text("!greet <@U123|bob>", BOT_USER) == ("!greet @bob", False)
    # an app_mention naming the bot by an id auth.test did not give: the leading mention still goes
    assert plain_text("<@UOTHER1> greet x", BOT_USER, addressed=True) == ("greet x", False)
    assert plain_text(f"<@{BOT_USER}> greet <@U123>", BOT_USER, addressed=True) == ("greet @U123", True)
    names = {"U123": "bob", BOT_USER: "squall"}
    assert plain_text(f"<@{BOT_USER}> greet <@U123> <@U999|old>", BOT_USER, addressed=True, names=names) == \
        ("greet @bob @old", True)
    assert mentioned_users("<@U1> <@W2|x> <@U1> <#C3>") == ["U1", "W2"]
    arguments = message_arguments(Reply(adapter="slack", channel="C", text="a < b", buttons=[
        {"text": "Yes", "value": "yes"}, {"text": "No", "value": "no"}]))
    assert arguments["text"] == "a &lt; b"
    actions = arguments["blocks"][-1]
    assert [e["value"] for e in actions["elements"]] == ["yes", "no"]
    tokened = message_arguments(Reply(adapter="slack", channel="C", text="q", buttons=[
        {"text": "Yes", "value": "yes:0123456789abcdef"}, {"text": "No", "value": "no:0123456789abcdef"}]))
    assert [e["style"] for e in tokened["blocks"][-1]["elements"]] == ["primary", "danger"]
    assert arguments["blocks"][0]["text"]["text"] == "a &lt; b"


def test_an_uploads_message_carries_its_outbox_id_and_part_in_its_first_block() -> None:
    """The message an upload shares takes no metadata: its first block's id carries the outbox id and
    the `Part`, read back as a post's metadata is; a block id or metadata of another shape is no tag."""
    from adapters.base import Part
    from adapters.slack import _outbox_payload, _tagged_blocks

    blocks = _tagged_blocks(Reply(adapter="slack", channel="C1", text="a <b> & c\n" * 200, file=("f.txt", "x"),
                                  outbox_id=7, part=Part(1, 3, 120)))
    assert blocks is not None and len(blocks) == 2 and "block_id" not in blocks[1]
    assert blocks[0]["text"]["text"].startswith("a &lt;b&gt; &amp; c")
    assert "".join(block["text"]["text"] for block in blocks) == "a &lt;b&gt; &amp; c\n" * 200  # no escape cut
    assert all(len(block["text"]["text"]) <= 3000 for block in blocks)
    payload = _outbox_payload({"blocks": json.loads(json.dumps(blocks))})
    assert payload == {"outbox_id": 7, "part": 1, "parts": 3, "end": 120}
    assert Part.from_json(payload) == Part(1, 3, 120)
    assert _outbox_payload({"blocks": _tagged_blocks(Reply(adapter="slack", channel="C1", text="t", outbox_id=9))}) \
        == {"outbox_id": 9}
    assert _tagged_blocks(Reply(adapter="slack", channel="C1", text="no outbox")) is None
    for other in ({"blocks": [{"block_id": "squall_reply.7.1"}]}, {"blocks": [{"block_id": "squall_reply.x"}]},
                  {"blocks": ["text"]}, {"blocks": "squall_reply.7"}, {"metadata": "squall_reply"},
                  {"metadata": {"event_type": "squall_reply", "event_payload": {"outbox_id": "7"}}}, {}):
        assert _outbox_payload(other) is None, other


def test_a_long_reply_with_its_own_file_uploads_it_with_its_first_part_only() -> None:
    """A reply that carries a file and text longer than the platform allows is cut into parts: the file
    goes with the first, not uploaded again with every part."""
    reply = Reply(adapter="slack", channel="COPS0001", text="\n".join(f"line {i:03}" for i in range(60)),
                  file=("report.csv", "a,b\n1,2\n"))
    parts = fit(reply, Capabilities(files=True, max_length=200))
    assert len(parts) > 1 and "\n".join(p.text for p in parts) == reply.text
    assert [p.file for p in parts] == [("report.csv", "a,b\n1,2\n")] + [None] * (len(parts) - 1)


def test_only_a_whole_result_split_at_the_pretext_becomes_an_attachment() -> None:
    """The attachment comes of the split `bot.chat.replies` marks, and only of that: a reply cut into parts
    (no marker left) or with its own blocks or attachments keeps its text whole."""
    text = "Found 2:\n• a\n• b"
    split = render_split(text)
    arguments = message_arguments(split)
    assert arguments["text"] == "Found 2:" and arguments["attachments"][0]["text"] == "• a\n• b"
    parts = fit(Reply(**{**split.__dict__, "text": text + "\n" + "x" * 400}), Capabilities(max_length=200))
    assert len(parts) > 1 and all(ATTACHED_TAIL not in str(p.extra) for p in parts)
    assert all("attachments" not in message_arguments(p) for p in parts)
    uploaded = fit(Reply(**{**split.__dict__, "text": text + "\n" + "x" * 400}),
                   Capabilities(files=True, max_length=200))
    assert [ATTACHED_TAIL in str(p.extra) for p in uploaded] == [False]
    blocks = [{"type": "divider"}]
    own = message_arguments(Reply(**{**split.__dict__, "extra": {"slack": {**split.extra["slack"], "blocks": blocks}}}))
    assert own["text"] == escape(text) and own["blocks"] == blocks and "attachments" not in own
    assert message_arguments(Reply(**{**split.__dict__, "text": "edited"}))["text"] == "edited"  # not its text


def render_split(text: str) -> Reply:
    """A reply as `render_result` gives a result whose format wrote `{~}` after its first line."""
    pretext, _, rest = text.partition("\n")
    alias = SimpleNamespace(ref="demo.x", name="x", pack="demo", action_ref="demo.x", description="",
                            result={"format": "{{ execution.result }}"})
    rendered, extra = render_result(alias, {"id": "e1", "action": "demo.x", "status": "succeeded",
                                            "runner": "noop", "result": f"{pretext}{{~}}{rest}"})
    assert rendered == text
    return Reply(adapter="slack", channel="C", text=text, extra=extra)


# -- HTTP mode -------------------------------------------------------------------------------------------

def _signed(body: bytes, secret: str = SIGNING_SECRET, age: float = 0) -> dict[str, str]:
    ts = str(int(time.time() - age))
    signature = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={signature}"}


@pytest.fixture
async def http_mode(home: Path, fake: FakeSlack) -> AsyncIterator[tuple[Any, ...]]:
    from bot.http import ApiServer

    _pack(home)
    config = load_config(home / "config.yml")
    adapter = create({**_settings(fake), "mode": "http", "app_token": None}, config)
    squall = await Squall.start(config, adapters=[adapter])
    bot = squall.chat
    await bot.start()
    api = ApiServer(squall, host="127.0.0.1", port=free_port())
    await api.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}") as client:
            yield squall, client
    finally:
        await api.stop()
        await bot.stop()
        await squall.close()


async def test_http_mode_signed_event_and_slash_command(http_mode, fake: FakeSlack) -> None:
    _, client = http_mode
    body = json.dumps(fake.event(fake.message_event(f"<@{BOT_USER}> greet http", kind="app_mention"))).encode()
    headers = {**_signed(body), "Content-Type": "application/json"}
    response = await client.post("/slack/events", content=body, headers=headers)
    assert response.status_code == 200
    retry = await client.post("/slack/events", content=body,
                              headers={**headers, "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.status_code == 200
    await _posted(fake, lambda m: m.get("text") == "hello http", "the result")
    form = urlencode(fake.slash("greet form")).encode()
    response = await client.post("/slack/events", content=form,
                                 headers={**_signed(form), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    await _posted(fake, lambda m: m.get("text") == "hello form", "the slash command's result")
    await asyncio.sleep(0.3)
    assert [m.get("text") for m in fake.messages].count("hello http") == 1  # the retry ran nothing
    other = json.dumps(fake.event({"type": "reaction_added", "user": "UALICE01", "reaction": "eyes"})).encode()
    response = await client.post("/slack/events", content=other,
                                 headers={**_signed(other), "Content-Type": "application/json"})
    assert response.status_code == 200  # not 404, which would make Slack retry it
    verification = json.dumps({"type": "url_verification", "challenge": "chal-123", "token": "x"}).encode()
    response = await client.post("/slack/events", content=verification,
                                 headers={**_signed(verification), "Content-Type": "application/json"})
    assert response.json() == {"challenge": "chal-123"}


async def test_http_mode_button_click(http_mode, fake: FakeSlack) -> None:
    _, client = http_mode
    body = json.dumps(fake.event(fake.message_event("!wipe http"))).encode()
    await client.post("/slack/events", content=body, headers={**_signed(body), "Content-Type": "application/json"})
    prompt = await _posted(fake, lambda m: m.get("blocks") and "About to run" in m["text"], "the prompt")
    form = urlencode({"payload": json.dumps(fake.click(prompt, "yes"))}).encode()
    response = await client.post("/slack/events", content=form,
                                 headers={**_signed(form), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    await _posted(fake, lambda m: m.get("text") == "wiped http", "the confirmed result")


async def test_http_mode_refuses_bad_signature_and_stale_timestamp(http_mode, fake: FakeSlack) -> None:
    squall, client = http_mode
    body = json.dumps(fake.event(fake.message_event(f"<@{BOT_USER}> greet forged", kind="app_mention"))).encode()
    json_type = {"Content-Type": "application/json"}
    bad = await client.post("/slack/events", content=body, headers={**_signed(body, secret="wrong"), **json_type})
    stale = await client.post("/slack/events", content=body, headers={**_signed(body, age=301), **json_type})
    missing = await client.post("/slack/events", content=body, headers=json_type)
    assert (bad.status_code, stale.status_code, missing.status_code) == (401, 401, 401)
    await asyncio.sleep(0.3)
    assert not fake.messages and not await squall.executions.list(limit=5)


# -- the real `squall serve` ------------------------------------------------------------------------------

async def test_squall_serve_answers_a_mention(tmp_path: Path, fake: FakeSlack) -> None:
    _pack(tmp_path)
    write(tmp_path / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          port: {free_port()}
        adapters:
          console:
            enabled: false
          slack:
            enabled: true
            base_url: {fake.base_url}
    """)
    env = {**os.environ, "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}
    process = await asyncio.create_subprocess_exec(
        str(REPO / ".venv" / "bin" / "squall"), "-c", str(tmp_path / "config.yml"), "serve", cwd=str(tmp_path),
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        await fake.wait_for(lambda: fake.connections >= 1 or process.returncode is not None, timeout=30,
                            what="squall serve to connect")
        assert process.returncode is None
        await fake.push("events_api", fake.event(fake.message_event(f"<@{BOT_USER}> greet serve",
                                                                    kind="app_mention")))
        result = await _posted(fake, lambda m: m.get("text") == "hello serve", "squall serve's answer")
        assert result["channel"] == "COPS0001"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        output = (await process.stdout.read()).decode(errors="replace") if process.stdout else ""
    assert BOT_TOKEN not in output and APP_TOKEN not in output, output

