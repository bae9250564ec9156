"""Inquiries in chat: the question is posted to its route's channel, and answered there.

The question is a Reply with buttons when the answer is a choice (a boolean, or an enum); a
person answers with a button, with a bare `yes`/`no`/choice (or a JSON object) in the thread of
the question, or anywhere with `respond <inquiry-id> <json or value>`. Where the question was
posted is stored on the inquiry, so answers in its thread still work after a restart.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from adapters.base import Message, Reply
from engine.events import EXECUTION_FINISHED, INQUIRY_PENDING
from engine.inquiries import RUNNER, InquiryError, masked

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from bot.chat.announce import Announcer
    from bot.chat.auth import Authorizer
    from bot.chat.outbox import Outbox
    from engine.core import Engine

_YES = {"yes", "y", "true", "ok", "continue"}
_NO = {"no", "n", "false", "stop"}


def _choice(schema: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The one property a short answer fills in, if the schema asks for just one."""
    properties = schema.get("properties") or {}
    if len(properties) != 1:
        return None
    name, spec = next(iter(properties.items()))
    return (name, spec) if isinstance(spec, dict) else None


def buttons(schema: dict[str, Any]) -> list[dict[str, str]]:
    choice = _choice(schema)
    if choice is None:
        return []
    _, spec = choice
    if spec.get("type") == "boolean":
        return [{"text": "Yes", "value": "yes"}, {"text": "No", "value": "no"}]
    if isinstance(spec.get("enum"), list) and len(spec["enum"]) <= 10:
        return [{"text": str(v), "value": str(v)} for v in spec["enum"]]
    return []


def parse_answer(schema: dict[str, Any], text: str) -> dict[str, Any] | None:
    """A chat answer as the response object, or None when it is not an answer at all."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
    choice = _choice(schema)
    if choice is None or not text:
        return None
    name, spec = choice
    kind = spec.get("type")
    if kind == "boolean":
        if text.lower() in _YES:
            return {name: True}
        if text.lower() in _NO:
            return {name: False}
        return None
    if isinstance(spec.get("enum"), list):
        for option in spec["enum"]:
            if str(option) == text or str(option).lower() == text.lower():
                return {name: option}
        return None
    if kind in ("integer", "number"):
        try:
            return {name: int(text) if kind == "integer" else float(text)}
        except ValueError:
            return None
    if kind == "string":
        return {name: text}
    return None


class InquiryChat:
    """Posts questions of new inquiries and turns chat answers into responses."""

    def __init__(self, engine: Engine, announcer: Announcer, outbox: Outbox, auth: Authorizer, prefix: str) -> None:
        self.engine = engine
        self.announcer = announcer
        self.outbox = outbox
        #: An inquiry's `roles` are the chat's groups, as approvals' are: config `auth.groups` and the platform's.
        self.auth = auth
        self.prefix = prefix
        engine.events.subscribe(INQUIRY_PENDING, self.post)
        engine.events.subscribe(EXECUTION_FINISHED, self.expired)

    def expired(self, record: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """An inquiry asked in chat ran out of time unanswered: say so where it was asked, once (keyed
        by the inquiry), as an approval's expiry is told. None, and no task, for every other finished
        execution (this listener hears them all)."""
        if record.get("runner") != RUNNER or record.get("status") != "timeout":
            return None
        where = (record.get("result") or {}).get("chat")
        if not where:
            return None
        return self._tell_expired(record, where)

    async def _tell_expired(self, record: dict[str, Any], where: dict[str, Any]) -> None:
        text = (f"Inquiry {record['id']} expired before anyone answered it; its workflow goes on as its "
                "definition says for a task that failed.")
        await self.outbox.post_keyed(record["id"], "expired", [Reply(adapter=where["adapter"], channel=where["channel"],
                                                                     thread=where.get("thread"), text=text)])

    async def post(self, record: dict[str, Any]) -> None:
        result = record.get("result") or {}
        parent = (record.get("context") or {}).get("parent") or {}
        chat = (record.get("context") or {}).get("chat") or parent.get("chat")
        try:
            adapter, channel, thread = self.announcer.target(result.get("route") or None, None, None, chat)
        except LookupError:
            return  # no chat to ask in: `squall inquiry respond` and the API still work
        schema = result.get("schema") or {}
        text = question_text(record["id"], schema, self.prefix)
        reply = Reply(adapter=adapter, channel=channel, thread=thread, text=text, buttons=buttons(schema))
        # Keyed by the inquiry (kind "question"): asked once, and found again by where it was asked.
        stored = await self.outbox.post_keyed(record["id"], "question", [reply])
        if not stored:
            return
        where = {"adapter": adapter, "channel": channel, "thread": thread, "outbox_id": stored[0]}
        db = self.engine.db
        await db(db.store.update_execution, record["id"], {"result": {**result, "chat": where}}, expect=("pending",))

    async def in_thread(self, message: Message, threaded: bool = True) -> dict[str, Any] | None:
        """The pending inquiry `message` may answer: the one whose question was posted in its thread
        (or is the thread's first message). On a platform without threads (`threaded` false; IRC) the
        channel is the thread: the newest question asked there."""
        if threaded and not message.thread:
            return None
        db = self.engine.db
        for question in await db(db.store.pending_questions, message.adapter, message.channel):
            if not threaded or message.thread in (question["thread"], _post_ts(question["platform_id"])):
                try:
                    return await self.engine.executions.get(question["inquiry"])
                except LookupError:
                    return None
        return None

    async def answer(self, message: Message, inquiry: dict[str, Any], text: str) -> str | None:
        """Respond to `inquiry` with `text`; the words to say back, or None if `text` is no answer."""
        schema = (inquiry.get("result") or {}).get("schema") or {}
        response = parse_answer(schema, text)
        if response is None:
            return None
        where, store = f"{message.adapter}:{message.channel}", self.engine.store
        try:
            answered = await self.engine.inquiries.respond(inquiry["id"], response, message.user,
                                                           sorted(self.auth.groups_of(message)))
        except InquiryError as exc:
            await self.engine.db(store.audit_add, "chat.inquiry.denied", message.user, where, inquiry["id"],
                                 {"reason": str(exc)})
            return f"Sorry {message.user}: {exc}"
        shown = masked(schema, response)
        await self.engine.db(store.audit_add, "chat.inquiry.respond", message.user, where, inquiry["id"],
                             {"response": shown})
        if answered["status"] == "pending":  # `count` people must answer
            return (f"Thanks {message.user}, your answer to inquiry {inquiry['id']} is recorded "
                    f"({len(answered['responses'])} of {answered['count']}): {json.dumps(shown)}")
        return f"Thanks {message.user}, inquiry {inquiry['id']} answered: {json.dumps(answered['response'])}"

    async def respond_command(self, message: Message, rest: str, prefix: str) -> str:
        """`respond <inquiry-id> <json or value>`."""
        inquiry_id, _, text = rest.strip().partition(" ")
        if not inquiry_id or not text.strip():
            return f"Usage: `{prefix}respond <inquiry-id> <json or value>`"
        try:
            inquiry = await self.engine.executions.get(inquiry_id)
        except LookupError as exc:
            return str(exc)
        if inquiry["runner"] != RUNNER:
            return f"{inquiry['id']} is not an inquiry."
        said = await self.answer(message, inquiry, text)
        if said is None:
            schema = (inquiry.get("result") or {}).get("schema") or {}
            return (f"That is not an answer to inquiry {inquiry['id']}; send a JSON object that fits "
                    f"{json.dumps(schema)}")
        return said


def _post_ts(platform_id: str | None) -> str | None:
    """A post's id as threads name it (Slack's "channel:ts" → "ts")."""
    return platform_id.rpartition(":")[2] if platform_id else None


def question_text(inquiry_id: str, schema: dict[str, Any], prefix: str) -> str:
    properties = schema.get("properties") or {}
    asks = [f"• {name}: {spec.get('description') or spec.get('type', 'value')}"
            for name, spec in properties.items() if isinstance(spec, dict)]
    lines = [f"Inquiry {inquiry_id} needs an answer" + (f": {schema['description']}" if schema.get("description")
                                                        else ".")]
    lines += asks
    lines.append(f"Answer in this thread, or with `{prefix}respond {inquiry_id} <json or value>`.")
    return "\n".join(lines)
