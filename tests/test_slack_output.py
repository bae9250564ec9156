"""What the Slack adapter posts of what others wrote: an alias's `extra.slack` rendered from a person's words
is escaped as the reply text is; long output is never cut without a note (inlined through a slash command's
response_url, after a refused upload, or too long once escaped); and a person Slack cannot name is told
why their slash command or click did nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from adapters.base import ATTACHED_NOTE, Reply
from adapters.slack_format import (
    MAX_TEXT,
    escape,
    inline_file,
    message_arguments,
    shown_text,
)
from tests.conftest import write
from tests.fake_slack import FakeSlack, fake_slack
from tests.test_slack import _posted, _slack_chat

#: Slack's control sequences: a channel-wide or group ping, a person's mention, a link with its own label.
_MARKUP = re.compile(r"<[!@#]|<https?://")
#: An escape cut in two (`&am`, `&l`): what a cut after escaping left.
_BROKEN_ESCAPE = re.compile(r"&(?!amp;|lt;|gt;)")


fake = fake_slack  # the fixture, under this module's name for it


def _amps_pack(home: Path) -> None:
    """An alias whose output is full of what Slack escapes: each of its lines grows by nine characters."""
    write(home / "packs" / "demo" / "actions" / "amps.yaml", """
        name: amps
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, required: true}
          cmd: {default: 'seq -f "line %04g A&B <tag>" {{n}}', immutable: true}
    """)
    write(home / "packs" / "demo" / "aliases" / "amps.yaml", """
        name: amps
        action_ref: demo.amps
        description: Output Slack must escape.
        formats: ["amps {{n}}"]
        ack: {enabled: false}
        result: {format: "{{ execution.result.stdout }}"}
    """)


def _attachments(message: dict[str, Any]) -> list[dict[str, Any]]:
    found = message.get("attachments")
    return json.loads(found) if isinstance(found, str) else found or []


def _unescaped(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# -- extra.slack is data --------------------------------------------------------------------------

async def test_a_persons_words_in_extra_slack_never_become_a_ping_or_a_mention(home: Path, fake: FakeSlack) -> None:
    """`!fancy <!channel> <@UBOB0001>` typed literally (Slack sends it escaped) renders into the alias's
    `extra.slack.pretext`: it is shown as typed, and notifies no one."""
    typed = "<!channel> <@UBOB0001> <https://evil.example|click>"
    async with _slack_chat(home, fake):
        await fake.push("events_api", fake.event(fake.message_event(f"!fancy {escape(typed)}")))
        posted = await _posted(fake, lambda m: m.get("attachments"), "the attachment")
    [attachment] = _attachments(posted)
    assert not _MARKUP.search(json.dumps(attachment))
    assert _unescaped(attachment["pretext"]) == f"for {typed}"


def test_every_text_an_extra_slack_shows_is_escaped_and_its_urls_are_not() -> None:
    said = "<!here> & <@UBOB0001>"
    url = "https://example.com/run?a=1&b=2"
    slack = {"pretext": said, "title": said, "title_link": url, "author_name": said, "author_link": url,
             "footer": said, "footer_icon": url, "color": "#00ff00",
             "fields": [{"title": said, "value": said, "short": True}]}
    decorated = message_arguments(Reply(adapter="slack", channel="C", text="done", extra={"slack": slack}))
    [attachment] = decorated["attachments"]
    for key in ("pretext", "title", "author_name", "footer"):
        assert attachment[key] == escape(said), key
    assert attachment["fields"] == [{"title": escape(said), "value": escape(said), "short": True}]
    assert (attachment["title_link"], attachment["author_link"], attachment["footer_icon"]) == (url, url, url)

    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": said},
               "fields": [{"type": "mrkdwn", "text": said}]},
              {"type": "context", "elements": [{"type": "mrkdwn", "text": said}]}]
    attachments = [{"pretext": said, "text": said, "fallback": said, "blocks": blocks}]
    own = message_arguments(Reply(adapter="slack", channel="C", text="done",
                                  extra={"slack": {"blocks": blocks, "attachments": attachments}}))
    assert not _MARKUP.search(json.dumps(own))
    assert own["blocks"][1]["elements"][0]["text"] == escape(said)
    assert own["attachments"][0]["fallback"] == escape(said)
    assert blocks[0]["text"]["text"] == said  # the alias's own extra is left as it was


# -- long output is never cut without a note -------------------------------------------------------

def _check_inlined(text: str, content: str, limit: int) -> str:
    """What an inlined file must be: within `limit` once escaped, no attached-note claim, balanced fences,
    the output's start cut at a line, and a note saying how much of it was left out."""
    shown = escape(text)
    assert len(shown) <= limit and not _BROKEN_ESCAPE.search(shown)
    assert ATTACHED_NOTE not in text
    assert text.count("```") == 2
    head = text.split("```\n", 1)[1].rsplit("\n```", 1)[0]
    assert content.startswith(head + "\n")  # whole lines
    assert f"output truncated: the first {len(head):,} of {len(content):,} characters" in text
    return head


def test_an_inlined_file_fits_once_escaped_and_says_what_was_left_out() -> None:
    content = "".join(f"line {i:04d} A&B <tag>\n" for i in range(1, 2001))
    caption = f"{content.split(chr(10))[0]}\n{ATTACHED_NOTE}"
    text = inline_file(caption, ("output.txt", content), 5000, "it could not be shared")
    head = _check_inlined(text, content, 5000)
    following = content[len(head) + 1:].split("\n", 1)[0]
    assert len(escape(text)) + 1 + len(escape(following)) >= 5000  # the next line would not fit: cut no sooner
    whole = inline_file(caption, ("output.txt", content[:200]), 5000, "it could not be shared")
    assert "output truncated" not in whole and ATTACHED_NOTE not in whole and content[:200] in whole


def test_text_too_long_once_escaped_is_cut_at_a_whole_escape_with_a_note() -> None:
    text = "A&B <tag>\n" * 6000  # 60,000 characters, 114,000 escaped
    shown = message_arguments(Reply(adapter="slack", channel="C", text=text))["text"]
    assert len(shown) <= MAX_TEXT and not _BROKEN_ESCAPE.search(shown)
    kept = _unescaped(shown).rsplit("\n(cut: ", 1)[0]
    assert text.startswith(kept + "\n") and f"the first {len(kept):,} of {len(text):,} characters" in shown
    assert shown_text("A&B") == "A&amp;B"


async def test_a_long_output_through_a_response_url_says_its_start_and_what_was_left_out(home: Path,
                                                                                         fake: FakeSlack) -> None:
    """A slash command in a DM the bot is not in: the upload is refused (`not_in_channel`), so the output
    goes through the command's response_url, as much of its start as fits, with a note, not cut blindly."""
    _amps_pack(home)
    fake.channels["DBOB0001"] = {"name": "", "is_im": True}
    fake.not_member.add("DBOB0001")
    fake.errors["files.completeUploadExternal"] = "not_in_channel"
    async with _slack_chat(home, fake):
        await fake.push("slash_commands", fake.slash("amps 1800", channel="DBOB0001", user="UBOB0001"))
        response = await fake.wait_for(lambda: next((r for r in fake.responses if "line 0001" in r.get("text", "")),
                                                    None), timeout=20, what="the output via response_url")
    content = "".join(f"line {i:04d} A&B <tag>\n" for i in range(1, 1801)).rstrip("\n")
    text = _unescaped(response["text"])
    _check_inlined(text, content, MAX_TEXT)
    assert len(response["text"]) <= MAX_TEXT and "not_in_channel" in text


async def test_a_refused_upload_says_the_start_without_claiming_an_attachment(home: Path, fake: FakeSlack) -> None:
    fake.errors["files.getUploadURLExternal"] = "missing_scope"
    async with _slack_chat(home, fake):
        await fake.push("events_api", fake.event(fake.message_event("!lines 300")))
        posted = await _posted(fake, lambda m: "output truncated" in (m.get("text") or ""), "the inline fallback")
    content = "\n".join(f"line {i:04d} of the long output" for i in range(1, 301))
    text = _unescaped(posted["text"])
    _check_inlined(text, content, 3500)
    assert "missing_scope" in text


async def test_output_too_long_once_escaped_is_uploaded_whole(home: Path, fake: FakeSlack) -> None:
    """With `file_threshold` above what one message holds once escaped, a 36,000-character output with `&`
    and `<` on every line (54,000 escaped) is not cut: it arrives whole, as a file."""
    _amps_pack(home)
    async with _slack_chat(home, fake, file_threshold=100_000):
        await fake.push("events_api", fake.event(fake.message_event("!amps 1800")))
        await fake.wait_for(lambda: fake.shares, timeout=20, what="the upload")
    [uploaded] = fake.uploads.values()
    assert uploaded.decode().rstrip("\n").split("\n")[-1] == "line 1800 A&B <tag>"
    assert fake.shown(fake.shares[0]).startswith("line 0001 A&B <tag>")
    assert not any("line 1800" in (m.get("text") or "") for m in fake.messages)


# -- a person Slack cannot name is told ------------------------------------------------------------

async def test_a_slash_command_from_someone_slack_cannot_name_is_answered(home: Path, fake: FakeSlack) -> None:
    fake.errors["users.info"] = "internal_error"
    async with _slack_chat(home, fake):
        envelope = await fake.push("slash_commands", fake.slash("greet nobody"))
        ack = await fake.wait_for(lambda: next((a for a in fake.acks if a["envelope_id"] == envelope), None),
                                  what="the slash command's ack")
    assert "could not say who you are" in ack["payload"]["text"] and "try again" in ack["payload"]["text"]
    assert not fake.messages


async def test_a_click_from_someone_slack_cannot_name_is_answered(home: Path, fake: FakeSlack) -> None:
    async with _slack_chat(home, fake):
        await fake.push("events_api", fake.event(fake.message_event("!wipe prod")))
        prompt = await _posted(fake, lambda m: m.get("blocks"), "the prompt")
        fake.errors["users.info"] = "internal_error"  # bob was never looked up
        await fake.push("interactive", fake.click(prompt, "yes", user="UBOB0001"))
        told = await fake.wait_for(lambda: fake.responses, what="the answer to the click")
    assert told[0]["response_type"] == "ephemeral" and told[0]["replace_original"] is False
    assert "could not say who you are" in told[0]["text"] and "try again" in told[0]["text"]
