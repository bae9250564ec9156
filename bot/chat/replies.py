"""What the bot says: acks and results rendered from alias templates, fitted to the platform.

Templates render in the sandboxed StackStorm environment with `execution` and `actionalias`
(StackStorm's ack context) plus `alias` (its result context). As in StackStorm, the ack's `format`
and `extra` and the result's `extra` render strictly (a missing value is an error), and the result's
`format` leniently (a missing value renders empty): `chatops.format_execution_result` renders it so,
and a run that was abandoned or timed out has no `stdout` for `{{ execution.result.stdout }}`: a result
of a run that did not succeed that renders nothing is the default text instead, so its sender learns how it
ended. A template that fails to render never loses the reply: the person gets the default text and the reason.

A result is split at its first `{~}`, hubot-stackstorm's pretext delimiter (`splitMessage`): every
platform gets the pretext and the rest joined by a newline, and Slack, which shows the rest as an
attachment under the pretext (as hubot's Slack adapter does), is told where the rest starts
(`extra.slack`'s `ATTACHED_TAIL`). An announcement of the result (`chatops.post_result` on the stream, for
hubot-stackstorm and err-stackstorm, which split it themselves) carries it unsplit (`result_message`), as
StackStorm's does. Acks are posted as rendered, as hubot posts them (`msg.send`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from adapters.base import Adapter, Capabilities, Reply, attached, line_breaks
from adapters.markup import code_block
from adapters.slack_format import ATTACHED_TAIL
from engine.inquiries import shown_execution
from engine.templates import (
    TemplateRenderError,
    build_environment,
    render_template,
    render_value,
    to_human_time_from_seconds,
)

log = logging.getLogger(__name__)

DEFAULT_ACK = "Running {{ execution.action }} ({{ execution.id }})"
#: hubot-stackstorm's delimiter between a message's pretext and its text (src/lib/utils.js).
PRETEXT_DELIMITER = "{~}"
_MARK = {"succeeded": "✔", "failed": "✖", "timeout": "⏱", "canceled": "⊘", "abandoned": "✖"}
_SHOWN_KEYS = ("stdout", "stderr", "return_code", "error", "result", "exit_code", "body", "status_code")


def status_line(execution: dict[str, Any]) -> str:
    elapsed = execution.get("elapsed_seconds")
    took = ""
    if elapsed:
        took = f" in {elapsed * 1000:.0f} ms" if elapsed < 1 else f" in {to_human_time_from_seconds(int(elapsed))}"
    mark = _MARK.get(execution["status"], "•")
    return f"{mark} {execution['action']} {execution['status']}{took} ({execution['id']})"


def _result_body(execution: dict[str, Any]) -> str:
    """StackStorm's default result template, per runner: the keys people read, non-empty only."""
    result = execution.get("result")
    if result in (None, "", {}):
        return ""
    runner = execution.get("runner", "")
    if runner.startswith("remote-shell") and isinstance(result, dict):
        parts = []
        for host, outcome in result.items():
            shown = outcome if not isinstance(outcome, dict) else _pick(outcome)
            parts.append(f"{host}:\n{_text(shown)}")
        return "\n".join(parts)
    if isinstance(result, dict) and runner not in ("http-request",):
        picked = _pick(result)
        if set(picked) == {"stdout"}:
            return _text(picked["stdout"])
        return _text(picked)
    return _text(result)


def _pick(result: dict[str, Any]) -> dict[str, Any]:
    picked = {k: result[k] for k in _SHOWN_KEYS if result.get(k) not in (None, "", [], {})}
    if picked.get("return_code") == 0 or picked.get("exit_code") == 0:
        picked.pop("return_code", None)
        picked.pop("exit_code", None)
    return picked or result


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, default=str, ensure_ascii=False)


def default_result(execution: dict[str, Any]) -> str:
    body = _result_body(execution)
    return status_line(execution) + (f"\n{code_block(body)}" if body else "")


def acks(alias: Any) -> bool:
    """Whether the alias acknowledges its commands (`ack: {enabled: false}` turns that off)."""
    return (alias.ack or {}).get("enabled") is not False


def render_ack(alias: Any, execution: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The ack text (None when the alias turns acks off) and its rendered `extra`, both strict, as
    StackStorm's alias execution renders them (spec §3.1): a `format` that fails is StackStorm's
    `Cannot render "format" in field "ack" for alias. <error>`, followed by the default ack so the
    execution's id is still said; an `extra` that fails is left out and logged with StackStorm's words
    (`_extra_failed`), the text kept (StackStorm answers the format and the extra apart: one's failure is
    not the other's; it puts its words in place of the extra, a string no platform shows)."""
    if not acks(alias):
        return None, {}
    ack = alias.ack or {}
    context = {"execution": execution, "actionalias": _alias_dict(alias)}
    try:
        text = render_template(ack.get("format") or DEFAULT_ACK, context)
    except TemplateRenderError as exc:
        text = f'Cannot render "format" in field "ack" for alias. {exc}\n' + render_template(DEFAULT_ACK, context)
    try:
        extra = render_value(ack.get("extra") or {}, context)
    except TemplateRenderError as exc:
        _extra_failed("ack", alias, exc)
        return text, {}
    return text, extra if isinstance(extra, dict) else {}


def render_result(alias: Any | None, execution: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The result as Squall's chat posts it: `result_message` split at its pretext (`split_pretext`)."""
    text, extra = result_message(alias, execution)
    return (None, {}) if text is None else split_pretext(text, extra)


def result_message(alias: Any | None, execution: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The result text (None when the alias turns results off) and its rendered `extra`, as StackStorm's
    `chatops.post_result` formats them: a `{~}` left in the text, and `extra` the alias's own. This is what
    an announcement carries (`st2.announcement__<route>`, where hubot-stackstorm and err-stackstorm split
    it themselves); Squall's chat splits it (`render_result`). An inquiry's secret answers are masked
    (`shown_execution`): a row stored before answers were sealed holds them in clear."""
    result = (alias.result if alias is not None else None) or {}
    if result.get("enabled") is False:
        return None, {}
    execution = shown_execution(execution)
    if not result.get("format"):
        return default_result(execution), _extra(result, execution, alias)
    shown = _alias_dict(alias)
    context = {"execution": execution, "alias": shown, "actionalias": shown}
    try:  # lenient, as StackStorm's chatops.format_execution_result renders it: a missing value is empty
        text = render_template(result["format"], context, build_environment(lenient=True))
    except TemplateRenderError as exc:
        text = f"{default_result(execution)}\n(the alias's result format failed: {exc})"
    if execution.get("status") != "succeeded" and not text.strip():
        # `{{ execution.result.stdout }}` of a run abandoned, timed out or failed before any output renders
        # nothing: posted so, the person who typed the command never learnt how it ended. A success that
        # renders nothing stays as rendered (a format may choose to say nothing of a success).
        text = default_result(execution)
    return text, _extra(result, execution, alias)


def split_pretext(text: str, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`text` split at its first `{~}` as hubot-stackstorm splits every result: the pretext and the rest
    joined by one newline (the newlines around the delimiter are the template's layout, not content),
    and `extra.slack` told how long the rest is, for Slack's attachment. Only the first `{~}` splits;
    hubot keeps only what lies between the first and a second one, which would lose the rest of the
    output, so a later one stays as written. Either part empty: the other alone, with no attachment."""
    pretext, found, rest = text.partition(PRETEXT_DELIMITER)
    if not found:
        return text, extra
    pretext, rest = pretext.rstrip("\r\n"), rest.lstrip("\r\n")
    if not (pretext and rest):
        return pretext or rest, extra
    slack = extra.get("slack", {})
    if not isinstance(slack, dict):  # a pack's own extra.slack of another shape: Slack gets the text whole
        return f"{pretext}\n{rest}", extra
    return f"{pretext}\n{rest}", {**extra, "slack": {**slack, ATTACHED_TAIL: len(rest)}}


def _extra(section: dict[str, Any], execution: dict[str, Any], alias: Any) -> dict[str, Any]:
    """The result's `extra`, rendered strictly (StackStorm's `render_values`). One that fails is left out,
    the text kept, and logged with the alias's ref and the reason (`_extra_failed`), so the pack's author can
    find why their attachment is missing. StackStorm's `format_execution_result` fails the whole result
    there, so it has no text to put in its place; Squall's own (`Cannot render "extra" in field "result"`,
    as the ack's) would be a string where every consumer takes a mapping (`split_pretext`'s `extra.slack`)."""
    if not section.get("extra"):
        return {}
    try:
        extra = render_value(section["extra"], {"execution": execution, "alias": _alias_dict(alias)})
    except TemplateRenderError as exc:
        _extra_failed("result", alias, exc)
        return {}
    return extra if isinstance(extra, dict) else {}


def _extra_failed(field: str, alias: Any, exc: TemplateRenderError) -> None:
    """Log an alias's `extra` that failed to render at WARNING, with the alias's ref and StackStorm's words
    (st2api's alias execution: `Cannot render "extra" in field "ack" for alias. <error>`): no platform
    shows an extra as text, so the log is where the pack's author finds why their attachment is missing.
    The error is the template's (`TemplateRenderError`), rendered against the execution as stored, whose
    secret parameters are masked (as a result format's error, `result_message`): it quotes no secret's value."""
    log.warning("alias %s: Cannot render \"extra\" in field \"%s\" for alias. %s", getattr(alias, "ref", None),
                field, exc)


def _alias_dict(alias: Any) -> dict[str, Any]:
    if alias is None:
        return {}
    return {"ref": alias.ref, "name": alias.name, "pack": alias.pack, "action_ref": alias.action_ref,
            "description": alias.description}


#: About the UTF-8 bytes of text one IRC line carries (`adapters/irc.py` `line_budget`: 512 less the
#: relayed prefix, about 400 to 450): a longer line of a result is counted as the lines it becomes.
REPLY_LINE_BYTES = 400

#: Where the whole of a cut text is, as its last line says (`cap_result`), followed by the execution's id:
#: a result's output (a command's, `!execution`'s, `chatops.post_result`'s), `chatops.post_message`'s
#: `message` parameter, and the execution a `notify` route's message tells of (rendered from it).
WHOLE_OUTPUT = "the whole output is execution"
WHOLE_MESSAGE = "the whole message is a parameter of execution"
WHOLE_NOTICE = "the notification tells of execution"


def capped(adapter: Adapter | None, text: str, extra: dict[str, Any], execution_id: str,
           where: str = WHOLE_OUTPUT) -> tuple[str, dict[str, Any]]:
    """`text` and `extra` as `adapter` should post them, the one cap decision of the chat side (a
    command's result, `!execution`, `chatops.post_*`, `notify` routes): cut to the adapter's
    `max_result_lines` (an optional attribute; IRC's `adapters.irc.max_result_lines`) where it can
    attach no file (`cap_result`), since every line costs every channel its pace; as they are
    elsewhere. A platform with files attaches a long text whole, one that sets no cap (the console)
    splits it as before, and an adapter this process does not hold (None: a CLI run) is not known."""
    if adapter is None or adapter.capabilities.files:
        return text, extra
    return cap_result(text, extra, getattr(adapter, "max_result_lines", 0), execution_id, where)


def cap_result(text: str, extra: dict[str, Any], max_lines: int, execution_id: str,
               where: str = WHOLE_OUTPUT) -> tuple[str, dict[str, Any]]:
    """A result (`text`, `extra`) cut to its first `max_lines` lines for a platform that sends every
    line at its pace and can attach no file (IRC: about two lines a second for the whole connection,
    where a 10,000-line result held every channel for 83 minutes), ending with one line saying how
    many were left out and where the whole is (`where` and `execution_id`); as it is when it fits or
    `max_lines` is 0. Lines are counted as the platform breaks them (`line_breaks`: a bare `\\r` is a
    break, the newlines around the text are not lines), and a line longer than `REPLY_LINE_BYTES`
    counts as the lines the platform cuts it into: a one-line JSON of a megabyte is thousands of IRC
    lines. Cut, it loses its pretext split (`_unsplit`)."""
    if max_lines <= 0:
        return text, extra
    lines = line_breaks(text)
    shown, whole, cut = _first_lines(lines, max_lines)
    if shown is None:
        return text, extra
    total = lines.count("\n") + 1
    part = " (the first of them shown in part)" if cut else ""
    trailer = (f"[{total - whole} of {total} lines left out here{part}; {where} {execution_id}: "
               f"`squall execution get {execution_id}`, or its page in the web UI]")
    return f"{shown}\n{trailer}", _unsplit(extra)


def _first_lines(text: str, budget: int) -> tuple[str | None, int, bool]:
    """(what of `text` fits `budget` platform lines, how many of its lines it holds whole, whether it
    ends in part of the next one); None for the text when all of it fits. `text` is broken as the
    platform breaks it (`line_breaks`: `\\n` alone). Reads no further than the budget reaches."""
    start, whole, kept = 0, 0, []
    while budget > 0:
        end = text.find("\n", start)
        line = text[start:] if end < 0 else text[start:end]
        size = len(line.encode("utf-8", "replace"))
        cost = max(1, -(-size // REPLY_LINE_BYTES))
        if cost > budget:  # as much of it as the lines left carry, cut between characters
            head = line.encode("utf-8", "replace")[:budget * REPLY_LINE_BYTES].decode("utf-8", "ignore")
            return "\n".join([*kept, head + "…"]), whole, True
        if end < 0:
            return None, whole + 1, False
        kept.append(line)
        whole, budget, start = whole + 1, budget - cost, end + 1
    return "\n".join(kept), whole, False


def fit(reply: Reply, capabilities: Capabilities) -> list[Reply]:
    """Split text longer than the platform allows, or upload it as a file where files exist. A reply
    cut so loses its pretext split (`split_pretext`): the attachment's length no longer fits its text."""
    limit = max(200, capabilities.max_length)
    if len(reply.text) <= limit:
        return [reply]
    reply = Reply(**{**reply.__dict__, "extra": _unsplit(reply.extra)})
    if capabilities.files and reply.file is None:
        return [attached(reply, limit - 40)]
    chunks: list[str] = []
    current = ""
    for line in reply.text.split("\n"):
        while len(line) > limit:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current:
        chunks.append(current)
    first = Reply(**{**reply.__dict__, "text": chunks[0]})
    return [first, *(later_part(reply, chunk) for chunk in chunks[1:])]


def later_part(reply: Reply, text: str) -> Reply:
    """A part of `reply` after its first, holding `text`: the edit, extra, buttons and file ride on the
    first part only (each part is a post of its own, and uploads what it holds)."""
    return Reply(**{**reply.__dict__, "text": text, "edit": None, "extra": {}, "buttons": [], "file": None})


def _unsplit(extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` without the pretext split's mark (`split_pretext`), the pack's own `extra.slack` kept."""
    slack = extra.get("slack") if isinstance(extra, dict) else None
    if not isinstance(slack, dict) or ATTACHED_TAIL not in slack:
        return extra
    kept = {k: v for k, v in slack.items() if k != ATTACHED_TAIL}
    return {**{k: v for k, v in extra.items() if k != "slack"}, **({"slack": kept} if kept else {})}
