"""What the bot echoes (a person's command, an action's output) can neither notify a whole channel on
Mattermost nor end the code Squall shows it in, on Mattermost (CommonMark) or Slack (mrkdwn).

The reviewer's transcripts (tests/fake_mattermost.py, tests/fake_slack.py), and unit tests of the
helpers. Whether a post notifies a channel is judged by `channel_mentions`, a port of Mattermost's own
mention parser (server/channels/app/mention_parser_standard.go, after its Markdown decoded escapes and
character references), kept stricter than the server: it looks inside code too."""

from __future__ import annotations

import html
import re
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.markup import BACKTICK_LOOKALIKE, code_block, code_span
from adapters.mattermost import ZERO_WIDTH_SPACE, _inline, attachments, create, quiet_mentions
from adapters.slack import create as create_slack
from bot.app import Squall
from bot.chat.replies import default_result
from engine.config import load_config
from tests.conftest import write
from tests.fake_mattermost import FakeMattermost
from tests.fake_slack import FakeSlack
from tests.test_mattermost import _section, replies_to
from tests.test_slack import _settings

markdown_it = pytest.importorskip("markdown_it")

SYSTEM_MENTIONS = {"@all", "@channel", "@here"}

#: A channel-wide mention in each of the shapes Mattermost reads as one.
LIVE = ["@all", "@ALL please", "hey @channel!", "(@here)", "@here.", "@all_", "@channel:", "x.@here",
        "_@all", "\\@here", "&#64;all", "&#x40;channel", "&commat;here", "@al&#108;", "@&#104;ere",
        "`code` @all `code`", "@Here\u0301"]


def _decoded(text: str) -> str:
    """`text` as Mattermost's Markdown hands it to the mention parser: a backslash before ASCII
    punctuation dropped, a character reference (`&#64;`, `&commat;`) replaced by its character."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in string.punctuation:
            out.append(text[i + 1])
            i += 2
            continue
        end = text.find(";", i) if text[i] == "&" else -1
        reference = text[i:end + 1]
        if end != -1 and html.unescape(reference) != reference:
            out.append(html.unescape(reference))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def channel_mentions(message: str) -> set[str]:
    """The channel-wide mentions Mattermost finds in `message`, as `StandardMentionParser.ProcessText`
    finds them: words split at anything but letters, digits and `:._-@`, leading `:.-_` trimmed, a
    trailing `.-:_` tried off, a word not starting with `@` split at `.-:`. Code is not skipped."""
    found: set[str] = set()

    def check(word: str) -> None:
        if word.lower() in SYSTEM_MENTIONS:
            found.add(word.lower())

    words = "".join(c if c in ":._-@" or c.isalpha() or c.isnumeric() else " " for c in _decoded(message)).split()
    for word in words:
        if word[0] == ":" and word[-1] == ":":
            continue
        word = word.lstrip(":.-_")
        check(word)
        trimmed = word
        while trimmed and trimmed[-1] in ".-:_":
            trimmed = trimmed[:-1]
            check(trimmed)
        if word.lower() not in SYSTEM_MENTIONS and word.startswith("@"):
            continue
        for piece in re.split(r"[.:-]", word):
            check(piece)
    return found


def _fences(text: str) -> list[Any]:
    return [t for t in markdown_it.MarkdownIt("commonmark").parse(text) if t.type == "fence"]


def _inline_tokens(text: str) -> list[Any]:
    return [child for t in markdown_it.MarkdownIt("commonmark").parse(text) if t.type == "inline"
            for child in t.children or []]


# -- the helpers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", LIVE)
def test_quiet_mentions_leaves_no_channel_wide_mention(text: str) -> None:
    assert channel_mentions(text), f"the test's parser should read {text!r} as a channel mention"
    quiet = quiet_mentions(text)
    assert channel_mentions(quiet) == set()
    assert quiet.replace(ZERO_WIDTH_SPACE, "") == text  # it reads the same
    assert quiet_mentions(quiet) == quiet


@pytest.mark.parametrize("text", ["@alice, look", "@allison", "@channel5", "@heres", "ops@example.com",
                                  "no mention at all", "&amp; @bob", "\\@alice"])
def test_quiet_mentions_leaves_people_and_other_text_alone(text: str) -> None:
    assert quiet_mentions(text) == text


def test_attachments_are_quieted_where_mattermost_reads_mentions() -> None:
    fields = [{"title": "who", "value": "@channel", "short": True}, {"title": "n", "value": 3}]
    extra = {"mattermost": {"pretext": "@here", "text": "&#64;all", "title": "t", "fields": fields}}
    [attachment] = attachments(extra)
    shown = [attachment["pretext"], attachment["text"], attachment["fields"][0]["value"]]
    assert all(channel_mentions(text) == set() for text in shown)
    assert attachment["fields"][1] == {"title": "n", "value": 3}
    assert extra["mattermost"]["pretext"] == "@here"  # the alias's rendered extra itself is left as it was


BREAKOUTS = ["a\n```\n@here **outside the code block**\n```\nb", "```", "x ```y``` z", "````\n*a*\n````",
             "   ```\n_b_", "ends with a fence\n```"]


@pytest.mark.parametrize("text", BREAKOUTS)
def test_code_block_cannot_be_closed_by_its_text(text: str) -> None:
    block = code_block(text)
    [fence] = _fences(block)  # CommonMark (Mattermost): one block, holding all of the text
    assert fence.content.rstrip("\n").replace(ZERO_WIDTH_SPACE, "") == text
    assert block.count("```") == 2 and block.endswith("```")  # Slack's mrkdwn: no three backticks inside


@pytest.mark.parametrize("text", ["zzz` @all `zzz", "a``b", "`*x*`", "line\n*two*"])
def test_code_span_cannot_be_ended_by_its_text(text: str) -> None:
    span = code_span(text)
    [code] = _inline_tokens(span)
    assert code.type == "code_inline"
    assert code.content.replace(BACKTICK_LOOKALIKE, "`") == " ".join(text.splitlines())
    assert span.count("`") == 2  # Slack's mrkdwn ends a span at any backtick


def test_default_result_fences_output_that_holds_a_fence() -> None:
    output = "a\n```\n@here **outside the code block**\n```\nb\n"
    text = default_result({"id": "e1", "action": "misc.say", "status": "succeeded", "runner": "local-shell-cmd",
                           "result": {"stdout": output, "stderr": "", "return_code": 0}})
    [fence] = _fences(text)
    assert fence.content.replace(ZERO_WIDTH_SPACE, "").rstrip("\n") == output.rstrip("\n")
    assert not any(t.type == "strong_open" for t in _inline_tokens(text))


def test_an_inlined_file_keeps_its_fence_on_mattermost() -> None:
    content = "1\n```\n**loud**\n````\n2"
    text = _inline("caption", ("output.txt", content), 16383)
    [fence] = _fences(text)
    assert fence.content.rstrip("\n") == content


# -- the reviewer's transcripts ------------------------------------------------------------------------

def _pack(home: Path) -> None:
    pack = home / "packs" / "misc"
    write(pack / "pack.yaml", "ref: misc\nname: misc\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          name: {type: string, required: true}
          cmd: {default: 'echo "hello {{name}}"', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: misc.greet
        description: Greet someone.
        formats: ["greet {{name}}"]
        result:
          format: "{{ execution.result.stdout }}"
    """)
    write(pack / "actions" / "say.yaml", """
        name: say
        runner_type: local-shell-cmd
        parameters:
          text: {type: string, required: true}
          cmd: {default: 'printf "%s\\n" "{{text}}"', immutable: true}
    """)
    write(pack / "aliases" / "shout.yaml", """
        name: shout
        action_ref: misc.say
        description: Repeat text in the default result format.
        formats: ["shout {{text}}"]
    """)


@pytest.fixture
async def mattermost(home: Path) -> AsyncIterator[FakeMattermost]:
    fake = FakeMattermost()
    await fake.start()
    _pack(home)
    config = load_config(home / "config.yml")
    squall = await Squall.start(config, adapters=[create(_section(fake), config)])
    await squall.chat.start()
    try:
        yield fake
    finally:
        await squall.chat.stop()
        await squall.close()
        await fake.stop()


SHOUT = "shout a\n```\n@here **outside the code block**\n```\nb"


async def test_mattermost_echoes_no_channel_mention_from_a_command(mattermost: FakeMattermost) -> None:
    """bob's `@all` sat inside his own code span; the bot's "I don't know" moved it out of one."""
    fake = mattermost
    post = await fake.say(fake.bob, fake.town_square, "!zzz` @all `zzz")
    [answer] = await replies_to(fake, post, "I don't know")
    assert "zzz" in answer["message"]
    assert channel_mentions(answer["message"]) == set()
    # His backticks end nothing: the bot's span holds his whole command, `@all` inside it.
    assert f"`zzz{BACKTICK_LOOKALIKE} @{ZERO_WIDTH_SPACE}all {BACKTICK_LOOKALIKE}zzz`" in answer["message"]


async def test_mattermost_echoes_no_channel_mention_from_a_result(mattermost: FakeMattermost) -> None:
    fake = mattermost
    post = await fake.say(fake.bob, fake.town_square, "!greet @channel")
    thread = await replies_to(fake, post, "hello")
    result = next(p for p in thread if "hello" in p["message"])
    assert result["message"].replace(ZERO_WIDTH_SPACE, "").strip() == "hello @channel"
    assert all(channel_mentions(p["message"]) == set() for p in fake.bot_posts())


async def test_mattermost_result_fence_is_not_closed_by_the_output(mattermost: FakeMattermost) -> None:
    fake = mattermost
    post = await fake.say(fake.bob, fake.town_square, f"!{SHOUT}")
    thread = await replies_to(fake, post, "outside the code block")
    result = next(p["message"] for p in thread if "outside the code block" in p["message"])
    [fence] = _fences(result)
    assert "**outside the code block**" in fence.content
    assert not any(t.type == "strong_open" for t in _inline_tokens(result))
    assert all(channel_mentions(p["message"]) == set() for p in fake.bot_posts())


async def test_slack_result_fence_is_not_closed_by_the_output(home: Path) -> None:
    fake = await FakeSlack().start()
    _pack(home)
    config = load_config(home / "config.yml")
    squall = await Squall.start(config, adapters=[create_slack(_settings(fake), config)])
    await squall.chat.start()
    try:
        await fake.push("events_api", fake.event(fake.message_event(f"!{SHOUT}")))
        result = await fake.wait_for(lambda: next((m for m in fake.messages if "outside the code block"
                                                   in (m.get("text") or "")), None), what="the result")
        text = result["text"]
        # mrkdwn: a block opens and closes at three backticks, wherever they are; this one ends the text.
        assert text.count("```") == 2 and text.endswith("```")
        assert "**outside the code block**" in text.split("```")[1]
    finally:
        await squall.chat.stop()
        await squall.close()
        await fake.close()
