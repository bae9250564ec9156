"""Text that is safe inside chat markup whatever it holds: a person's words or an action's output, put in a
code span or a fenced block that nothing in it can close (so it never renders as markup, nor moves a
mention out of the code). Shared by the chat's replies (`bot.chat.replies`) and the adapters that build
code blocks of their own (Slack's inlined files)."""

from __future__ import annotations

import re

#: Put between the backticks of a run of three or more in a fenced text (`code_block`): unseen, and it
#: keeps every platform from reading a fence there.
ZERO_WIDTH_SPACE = "\u200b"
#: What a backtick becomes in text shown as inline code (`code_span`): MODIFIER LETTER GRAVE ACCENT.
BACKTICK_LOOKALIKE = "\u02cb"
_BACKTICK_RUN = re.compile("`{3,}")


def code_block(text: str) -> str:
    """`text` (an action's output, a person's words) in a ``` fence that nothing in it can close, so it
    never renders as markup nor moves a mention out of the block. CommonMark (Mattermost) would take a
    fence longer than any backtick run inside, but Slack's mrkdwn knows only ``` and closes the block at
    the next three backticks anywhere, and the text is the same for every platform: so each run of
    three or more backticks gets a zero-width space between its backticks instead. It reads the same."""
    return f"```\n{_BACKTICK_RUN.sub(lambda run: ZERO_WIDTH_SPACE.join(run.group()), text)}\n```"


def code_span(text: str) -> str:
    """`text` (a person's command, echoed back) as inline code that nothing in it can end. CommonMark
    would take a longer backtick run around it, but Slack's mrkdwn ends a span at any backtick, so a
    backtick in `text` becomes a look-alike (`BACKTICK_LOOKALIKE`) and a line break a space, keeping
    the span on one line."""
    return "`" + " ".join(text.replace("`", BACKTICK_LOOKALIKE).splitlines()) + "`"
