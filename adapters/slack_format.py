"""Slack markup in both directions, kept apart from the adapter's connection logic.

In: Slack escapes `&`, `<`, `>` and wraps links, user and channel references in `<...>`; a command
such as `!http get <https://example.com|example.com>` must reach the alias matcher as the URL
the person typed, not as Slack's markup (a peer pain point: URLs broke st2 aliases).

Out: a `Reply` becomes `chat.postMessage` arguments. Alias `extra.slack` follows StackStorm's
hubot adapter: its keys are attachment fields (`color`, `pretext`, `fields`, ...) merged around the
reply text; `extra.slack.blocks` or `extra.slack.attachments` are passed through as given. Every text an
`extra.slack` shows is escaped as the reply text is (`escaped_extra`): it renders parameters and output. A result
split at hubot's `{~}` (`bot.chat.replies.split_pretext`, which marks it with `ATTACHED_TAIL`) is
posted as hubot's Slack adapter posts it: the pretext as the message, the rest as an attachment
(with `extra.slack`'s keys).
Buttons become an `actions` block whose values are what the person would otherwise have typed
(`yes`/`no`, `approve <id>`), or for a confirmation `yes:<token>`/`no:<token>`, naming the prompt.
A `Form` becomes a modal view of Block Kit inputs (`form_view`), and a submitted modal's state
text per field again (`form_values`); the App Home tab is `home_view`.
"""

from __future__ import annotations

import html
import re
from typing import Any

from adapters.base import Form, FormField, Reply, caption
from adapters.markup import code_block

#: Every button the adapter renders has an action_id with this prefix, so clicks route back to it.
ACTION_PREFIX = "squall_button_"
#: The `callback_id` of Squall's form modals (`open_form`), by which their `view_submission` comes back.
FORM_CALLBACK = "squall_form"
#: The most buttons the App Home tab shows (four actions blocks; a view holds at most 100 blocks).
HOME_BUTTONS = 100
#: Slack refuses a section block's text above 3000 characters, and more than 50 blocks a message.
SECTION_LIMIT = 3000
MAX_BLOCKS = 50
#: chat.postMessage truncates text above 40,000 characters.
MAX_TEXT = 40_000
#: The `extra.slack` key by which a result split at hubot's `{~}` tells how many characters at the end of
#: its text came after the delimiter (the rest follows the pretext and one newline): those become the
#: attachment. A count, not the text, so the outbox stores the output once; checked against the text.
ATTACHED_TAIL = "squall_attached_tail"

#: The text fields of a Slack attachment (besides `fields[].title`/`.value`): Slack reads `<!channel>`,
#: `<@U…>` and `<url|label>` in each, and `escaped_extra` escapes them.
ATTACHMENT_TEXT = ("pretext", "title", "text", "fallback", "author_name", "footer")

_ANGLE = re.compile(r"<([^<>]*)>")


#: A user mention in Slack's markup, `<@U123>` (`<@W123>` on Enterprise Grid; `|label` only in old clients).
_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^<>]*)?>")


def mentioned_users(text: str, limit: int = 20) -> list[str]:
    """The ids of the people `text` mentions, first `limit` distinct ones in order (each costs a lookup)."""
    return list(dict.fromkeys(_USER_MENTION.findall(text)))[:limit]


def _unwrap(match: re.Match[str], names: dict[str, str] | None = None) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):           # <@U123> or <@U123|alice>: the name the person typed
        return f"@{(names or {}).get(target[1:]) or label or target[1:]}"
    if target.startswith("#"):           # <#C123|ops>
        return f"#{label or target[1:]}"
    if target.startswith("!"):           # <!here>, <!subteam^S123|@oncall>
        return label or f"@{target[1:]}"
    if target.startswith("mailto:"):
        return target[len("mailto:"):]
    return target                        # a link: the URL itself, whatever its label


_LEADING_MENTION = re.compile(r"^\s*<@[UW][A-Z0-9]+(?:\|[^>]*)?>[\s:,]*")


def plain_text(text: str, bot_user_id: str | None = None, addressed: bool = False,
               names: dict[str, str] | None = None) -> tuple[str, bool]:
    """Slack markup → what the person typed; also whether it @mentioned the bot.

    A leading `<@BOT>` is removed (it addresses the bot, it is not part of the command); in an
    `app_mention` (`addressed`) any leading mention is, since that event exists only for the bot.
    Any other mention becomes `@name` by `names` (user id → name, the adapter's lookups of
    `mentioned_users`), as hubot-slack and st2chatops give it to aliases; an id not in `names`
    stays `@U123`."""
    mentioned = False
    if bot_user_id:
        mention = re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>")
        mentioned = bool(mention.search(text))
        text = mention.sub("", text, count=1) if mention.match(text.lstrip()) else text
    if addressed and not mentioned:
        text = _LEADING_MENTION.sub("", text, count=1)
    text = _ANGLE.sub(lambda match: _unwrap(match, names), text)
    return html.unescape(text).strip(), mentioned


def escape(text: str) -> str:
    """Slack wants only `&`, `<` and `>` escaped in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shown_text(text: str, limit: int = MAX_TEXT) -> str:
    """`text` escaped (`escape`) in at most `limit` characters, as a message says it: Slack cuts a longer text
    wherever it falls, so it is cut here, at a line where one fits, never inside an escape (`&am`), with a
    note saying how much was left out. Callers fit their text first (`SlackAdapter.send` uploads what is too
    long); this is the last guard, so nothing is lost without a word."""
    shown = escape(text)
    if len(shown) <= limit:
        return shown

    def said(head: str) -> str:
        return escape(f"{head}\n(cut: the first {len(head):,} of {len(text):,} characters; the rest does not fit "
                      "one Slack message)")

    return said(_longest_start(text, lambda head: len(said(head)) <= limit, limit))


def inline_file(text: str, file: tuple[str, str], limit: int, why: str) -> str:
    """A reply's text with its file's content inline, for a file that cannot be shared: as much of the
    start as fits `limit` characters once escaped (as `message_arguments` sends it), cut at a line, in a
    code block whose fences stay balanced, then a note saying how much was left out and `why`. The reply's
    "(full output attached)" line goes (`ATTACHED_NOTE`): nothing is attached. As Mattermost's `_inline`."""
    name, content = file
    words = caption(text, content)

    def said(head: str) -> str:
        note = "" if len(head) == len(content) else (
            f"\n(output truncated: the first {len(head):,} of {len(content):,} characters of {name}; {why})")
        return f"{words}\n{code_block(head)}{note}".lstrip("\n")

    return said(_longest_start(content, lambda head: len(escape(said(head))) <= limit, limit))


def _longest_start(text: str, fits: Any, limit: int) -> str:
    """The longest start of `text` that `fits` (a check that holds for any shorter start, too): whole lines
    where at least one line fits, else the first line cut between characters. Escaping never shortens a
    text, so no more than its first `limit` characters are looked at."""
    if fits(text):
        return text
    window = text[:limit + 1]
    ends = [index for index, char in enumerate(window) if char == "\n"]
    low, high = 0, len(ends)  # how many of the lines ending at `ends` fit: the first `low` do
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(text[:ends[middle - 1]]) else (low, middle - 1)
    if low:
        return text[:ends[low - 1]]
    low, high = 0, len(window)  # no whole line fits: as many characters as do
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(text[:middle]) else (low, middle - 1)
    return text[:low]


def escaped_extra(slack: dict[str, Any]) -> dict[str, Any]:
    """`extra.slack` with every text Slack shows escaped as the reply text is (`escape`): an attachment's
    text fields (`ATTACHMENT_TEXT`, its `fields`' titles and values), its own and the pack's attachments',
    and the `mrkdwn` texts of blocks. A pack's `extra` renders a person's parameters and an action's output
    there, and `<!channel>` or `<@U…>` in them must not notify anyone, nor `<url|label>` become a link,
    any more than in the reply text (Mattermost's `quiet_mentions` does the same for its mentions). URLs,
    colours and ids are left as they are: Slack reads no markup in them."""
    escaped = _escaped_attachment(slack)
    if isinstance(slack.get("attachments"), list):
        escaped["attachments"] = [_escaped_attachment(item) if isinstance(item, dict) else item
                                  for item in slack["attachments"]]
    return escaped


def _escaped_attachment(item: dict[str, Any]) -> dict[str, Any]:
    escaped = {k: escape(v) if k in ATTACHMENT_TEXT and isinstance(v, str) else v for k, v in item.items()}
    if isinstance(item.get("fields"), list):
        escaped["fields"] = [{**f, **{k: escape(f[k]) for k in ("title", "value") if isinstance(f.get(k), str)}}
                             if isinstance(f, dict) else f for f in item["fields"]]
    if isinstance(item.get("blocks"), list):
        escaped["blocks"] = _escaped_mrkdwn(item["blocks"])
    return escaped


def _escaped_mrkdwn(value: Any) -> Any:
    """`value` (blocks, or anything in them) with the text of every `mrkdwn` text object escaped."""
    if isinstance(value, list):
        return [_escaped_mrkdwn(item) for item in value]
    if not isinstance(value, dict):
        return value
    escaped = {k: _escaped_mrkdwn(v) for k, v in value.items()}
    if value.get("type") == "mrkdwn" and isinstance(value.get("text"), str):
        escaped["text"] = escape(value["text"])
    return escaped


def _sections(text: str) -> list[dict[str, Any]]:
    parts = [text[i:i + SECTION_LIMIT] for i in range(0, len(text), SECTION_LIMIT)] or [" "]
    return [{"type": "section", "text": {"type": "mrkdwn", "text": part or " "}} for part in parts]


def buttons_block(buttons: list[dict[str, str]]) -> dict[str, Any]:
    elements = []
    for index, button in enumerate(buttons[:25]):
        element: dict[str, Any] = {"type": "button", "action_id": f"{ACTION_PREFIX}{index}",
                                   "text": {"type": "plain_text", "text": str(button.get("text", ""))[:75] or "?"},
                                   "value": str(button.get("value", ""))[:2000]}
        word = str(button.get("value", "")).partition(":")[0].lower()  # a confirmation's `yes:<token>` too
        if word in ("yes", "y", "confirm", "ok"):
            element["style"] = "primary"
        elif word in ("no", "n", "cancel", "abort"):
            element["style"] = "danger"
        elements.append(element)
    return {"type": "actions", "block_id": "squall_buttons", "elements": elements}


def home_view(title: str, buttons: list[dict[str, str]], empty: str) -> dict[str, Any]:
    """The App Home tab (`views.publish`): a title and the buttons, 25 to an actions block."""
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    if not buttons:
        blocks += _sections(escape(empty))
    for start in range(0, min(len(buttons), HOME_BUTTONS), 25):
        blocks.append({**buttons_block(buttons[start:start + 25]), "block_id": f"squall_buttons_{start // 25}"})
    return {"type": "home", "blocks": blocks}


def _pretext_split(reply: Reply, slack: dict[str, Any]) -> tuple[str, str] | None:
    """(pretext, rest) of a result split at `{~}` (`ATTACHED_TAIL`), when the text still ends with the rest
    after a newline; None for any other reply, or one whose pack gave its own blocks, attachments or buttons."""
    size, text = slack.get(ATTACHED_TAIL), reply.text
    if (not isinstance(size, int) or isinstance(size, bool) or not 0 < size < len(text) or text[-size - 1] != "\n"
            or reply.buttons or "blocks" in slack or "attachments" in slack):
        return None
    return text[:-size - 1], text[-size:]


def message_arguments(reply: Reply) -> dict[str, Any]:
    """`chat.postMessage`/`chat.update` arguments (text, blocks, attachments) for a reply."""
    text = shown_text(reply.text)
    slack = reply.extra.get("slack") if isinstance(reply.extra, dict) else None
    arguments: dict[str, Any] = {"text": text}
    blocks: list[dict[str, Any]] | None = None
    if isinstance(slack, dict):
        slack = escaped_extra(slack)
        if isinstance(slack.get("blocks"), list):
            blocks = list(slack["blocks"])
        if isinstance(slack.get("attachments"), list):
            arguments["attachments"] = slack["attachments"]
        fields = {k: v for k, v in slack.items() if k not in ("blocks", "attachments", ATTACHED_TAIL)}
        split = _pretext_split(reply, slack)
        if split is not None:
            # hubot's Slack adapter: the pretext above, the rest in one attachment the extra keys decorate.
            pretext, rest = shown_text(split[0]), shown_text(split[1])
            attachment = {"mrkdwn_in": ["text", "pretext"], **fields, "text": rest, "fallback": rest}
            arguments = {"text": pretext, "attachments": [attachment]}
        elif fields and "attachments" not in arguments and blocks is None:
            # StackStorm's hubot adapter: the extra keys decorate one attachment carrying the text.
            attachment = {"mrkdwn_in": ["text", "pretext"], **fields, "text": text, "fallback": text}
            arguments = {"text": None, "attachments": [attachment]}
    if reply.buttons:
        blocks = (blocks if blocks is not None else _sections(text)) + [buttons_block(reply.buttons)]
    if blocks is not None:
        arguments["blocks"] = blocks[:MAX_BLOCKS]
    return arguments


def clicked_summary(original: str, user: str, choice: str) -> list[dict[str, Any]]:
    """The blocks a confirmation becomes once answered: the question, then who chose what."""
    return [*_sections(original)[: MAX_BLOCKS - 1],
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{escape(user)} chose *{escape(choice)}*"}]}]


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": text[:limit] or " "}


def _element(item: FormField) -> dict[str, Any]:
    """The Block Kit input for a field's kind; a secret is a plain text input that starts empty."""
    element: dict[str, Any] = {"action_id": item.name}
    if item.kind in ("integer", "number"):
        element |= {"type": "number_input", "is_decimal_allowed": item.kind == "number"}
    elif item.kind == "enum":
        options = [{"text": _plain(o, 75), "value": o[:150]} for o in item.options[:100]]
        element |= {"type": "static_select", "options": options}
        chosen = next((o for o in options if o["value"] == item.initial), None)
        if chosen:
            element["initial_option"] = chosen
        return element
    elif item.kind == "boolean":
        element |= {"type": "checkboxes", "options": [{"text": _plain("yes", 75), "value": "true"}]}
        if item.initial == "true":
            element["initial_options"] = element["options"]
        return element
    else:
        element |= {"type": "plain_text_input", "multiline": item.kind in ("array", "object")}
    if item.initial and item.kind != "secret":
        element["initial_value"] = item.initial
    return element


def form_view(form: Form) -> dict[str, Any]:
    """A form as a modal view: one input block per field, named by the field (block and action id)."""
    blocks = []
    for item in form.fields:
        block: dict[str, Any] = {"type": "input", "block_id": item.name, "label": _plain(item.label, 2000),
                                 "optional": not item.required, "element": _element(item)}
        if item.hint:
            block["hint"] = _plain(item.hint, 2000)
        blocks.append(block)
    return {"type": "modal", "callback_id": FORM_CALLBACK, "private_metadata": form.state,
            "title": _plain(form.title, 24), "submit": _plain(form.submit, 24), "close": _plain("Cancel", 24),
            "blocks": blocks}


def form_values(view: dict[str, Any]) -> dict[str, str]:
    """A submitted modal's state as text per field, as every form sends: a select's chosen value, a
    ticked checkbox as "true" (unticked: absent), an input's text."""
    values: dict[str, str] = {}
    for block in ((view.get("state") or {}).get("values") or {}).values():
        for name, state in (block or {}).items():
            if not isinstance(state, dict):
                continue
            if state.get("type") == "static_select":
                chosen = state.get("selected_option") or {}
                if chosen.get("value") is not None:
                    values[name] = str(chosen["value"])
            elif state.get("type") == "checkboxes":
                if state.get("selected_options"):
                    values[name] = "true"
            elif state.get("value") is not None:
                values[name] = str(state["value"])
    return values
