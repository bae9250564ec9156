"""Inquiries in chat: the question is posted to its route's channel, and answered there.

The question is a Reply with buttons when the answer is a choice (a boolean, or an enum); a
person answers with a button, with a bare `yes`/`no`/choice (or a JSON object) in the thread of
the question, or anywhere with `respond <inquiry-id> <json or value>`. Where the question was
posted is stored on the inquiry, so answers in its thread still work after a restart.

A button names its inquiry (`<choice>:inquiry:<id>`): several questions may sit in one thread (a
workflow's parallel branches), and a click answers the one it sits on. A bare answer that fits
more than one question waiting in the thread answers none: the person is asked for `respond <id>`.

Anyone may `/nick carol` on IRC, so there the answerer is `irc:carol` (`auth.person`): an inquiry's
`users: [carol]` is the platform's carol (Slack's, the API's), and only `users: [irc:carol]` lets the
nick answer, recorded under that name. An inquiry's `users` name the sender as `auth` does
(`auth.sender_names`): also qualified by the adapter (`slack:carol`) and, on Slack and Mattermost, by
their user id (`slack:U0123ABCD`), which names them whatever their name is now. Who started the workflow
(`self_approval`) and who answered already are compared by name, the stricter reading (as approvals'):
the nick carol may be carol.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from adapters.base import Message, Reply
from bot.chat.auth import person, sender_names
from bot.forms import short
from engine.events import EXECUTION_FINISHED, INQUIRY_PENDING
from engine.executions import AmbiguousExecution, AuditEntry
from engine.inquiries import RUNNER, InquiryError, masked, why_not

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

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


#: A button's value: the choice and the inquiry it answers. Slack keeps 2,000 characters of a value
#: (`MAX_VALUE`), Mattermost's signed context more: a choice too long for it is typed instead.
_CLICK = re.compile(r"(?P<choice>.*):inquiry:(?P<id>[0-9a-f]{24})", re.DOTALL)
MAX_VALUE = 2000


def _choices(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """The (label, choice) of each button a question gets: yes/no, or each of up to 10 options."""
    choice = _choice(schema)
    if choice is None:
        return []
    _, spec = choice
    if spec.get("type") == "boolean":
        return [("Yes", "yes"), ("No", "no")]
    if isinstance(spec.get("enum"), list) and len(spec["enum"]) <= 10:
        return [(str(v), str(v)) for v in spec["enum"]]
    return []


def buttons(schema: dict[str, Any], inquiry_id: str) -> list[dict[str, str]]:
    """The question's buttons, each naming the inquiry it answers (`<choice>:inquiry:<id>`): a click
    answers that inquiry, however many others wait in the same thread. None when an option is too
    long to fit a button's value with the id (Slack's limit): then every answer is typed."""
    values = [(label, f"{choice}:inquiry:{inquiry_id}") for label, choice in _choices(schema)]
    if any(len(value) > MAX_VALUE for _, value in values):
        return []
    return [{"text": label, "value": value} for label, value in values]


def _free_text(schema: dict[str, Any], text: str) -> bool:
    """Whether `text` answers `schema` only because any text would: its one property is a string with
    no choices, and `text` is no JSON object (which says explicitly that it is an answer)."""
    choice = _choice(schema)
    return (choice is not None and choice[1].get("type") == "string" and not isinstance(choice[1].get("enum"), list)
            and not text.strip().startswith("{"))


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
        reply = Reply(adapter=adapter, channel=channel, thread=thread, text=text,
                      buttons=buttons(schema, record["id"]))
        # Keyed by the inquiry (kind "question"): asked once, and found again by where it was asked.
        stored = await self.outbox.post_keyed(record["id"], "question", [reply])
        if not stored:
            return
        where = {"adapter": adapter, "channel": channel, "thread": thread, "outbox_id": stored[0]}
        db = self.engine.db
        await db(db.store.update_execution, record["id"], {"result": {**result, "chat": where}}, expect=("pending",))

    async def waiting(self, message: Message, threaded: bool = True) -> list[dict[str, Any]]:
        """The pending inquiries `message` may answer, newest first: those whose question was posted in
        its thread (or is the thread's first message). On a platform without threads (`threaded`
        false; IRC) the channel is the thread: every question asked there."""
        if threaded and not message.thread:
            return []
        db = self.engine.db
        found = []
        for question in await db(db.store.pending_questions, message.adapter, message.channel):
            if not threaded or message.thread in (question["thread"], _post_ts(question["platform_id"])):
                try:
                    found.append(await self.engine.executions.get(question["inquiry"]))
                except LookupError:
                    continue  # gone since: nothing to answer
        return found

    async def typed(self, message: Message, text: str, threaded: bool = True,
                    command: Callable[[], bool] | None = None) -> str | None:
        """A bare answer typed where questions wait: the answer to the one question it fits, what to say
        when it fits several (it answers none; `respond <id>` says which), or None when it is no answer
        (chatter: it fits none, or only a free-text question of people other than its sender).

        `command`, given for a message addressed to Squall explicitly, tells whether its text names an
        alias or a built-in: then it is that command (None), unless it is a choice (yes/no, an option,
        a JSON object) of a question that asks its sender. So `!help` where a free-text question waits
        shows help, while `squall: approve` on IRC where approve/deny is asked answers. It is called
        only when a question waits here and the text fits one: most messages cost no alias match."""
        waiting = await self.waiting(message, threaded)
        fits = [inquiry for inquiry in waiting if self._fits(message, inquiry, text)]
        if fits and command is not None and not any(self._chosen(message, i, text) for i in fits) and command():
            return None
        if len(fits) > 1:
            return self._ambiguous(fits)
        return await self.answer(message, fits[0], text) if fits else None

    async def clicked(self, message: Message, threaded: bool = True) -> str | None:
        """A click on a question's button (`message.text` is its value): it answers the inquiry the
        value names, wherever it was clicked. A plain `yes`/choice (a button posted before values named
        their inquiry) answers the question of the thread it was clicked in, if just one there offers
        it. None when the value is no inquiry's button (an approval's, a form's, a confirmation's)."""
        value = message.text.strip()
        named = _CLICK.fullmatch(value)
        if named is not None:
            return await self._click(message, named["id"], named["choice"])
        offered = [inquiry for inquiry in await self.waiting(message, threaded)
                   if value in (choice for _, choice in _choices(_schema(inquiry)))]
        if len(offered) > 1:
            return self._ambiguous(offered)
        return await self._click(message, offered[0]["id"], value) if offered else None

    async def _click(self, message: Message, inquiry_id: str, choice: str) -> str:
        """Answer `inquiry_id` with a button's `choice`; what to say."""
        try:
            inquiry = await self.engine.executions.get(inquiry_id)
        except LookupError:
            inquiry = None
        if inquiry is None or inquiry["runner"] != RUNNER or inquiry["status"] != "pending":
            return ("That question is no longer waiting for an answer (answered, expired or canceled). "
                    "Nothing was run.")
        said = await self.answer(message, inquiry, choice) or (
            f"Sorry {message.user}: {choice!r} is not an answer to inquiry {inquiry_id}.")
        if (await self.engine.executions.get(inquiry_id))["status"] == "pending":
            await self._ask_again(inquiry)
        return said

    async def _ask_again(self, inquiry: dict[str, Any]) -> None:
        """Slack and Mattermost took the clicked question's buttons off (and said who chose what), yet
        the inquiry still waits: the click was refused, or more people must answer. The question is
        edited back as it was asked, buttons and all; queued before the answer to the click (its
        channel's replies go out in order), it is back by the time that answer shows."""
        where = (inquiry.get("result") or {}).get("chat") or {}
        if not where.get("outbox_id"):
            return  # never posted (no chat to ask in): nothing to put back
        schema = _schema(inquiry)
        await self.outbox.post(Reply(adapter=where["adapter"], channel=where["channel"], thread=where.get("thread"),
                                     text=question_text(inquiry["id"], schema, self.prefix),
                                     buttons=buttons(schema, inquiry["id"]), edit=where["outbox_id"]))

    def _fits(self, message: Message, inquiry: dict[str, Any], text: str) -> bool:
        """Whether `text` from `message`'s sender is an answer to `inquiry`: it parses as one, and any
        text being an answer (a free-text question), the inquiry asks its sender."""
        schema = _schema(inquiry)
        if parse_answer(schema, text) is None:
            return False
        return not _free_text(schema, text) or self._asks(message, inquiry)

    def _chosen(self, message: Message, inquiry: dict[str, Any], text: str) -> bool:
        """Whether `text` (which fits `inquiry`) is one of the answers it offers, not just any text, and
        the inquiry asks `message`'s sender: such a text answers it even if a command has its name."""
        return not _free_text(_schema(inquiry), text) and self._asks(message, inquiry)

    def _asks(self, message: Message, inquiry: dict[str, Any]) -> bool:
        """Whether `inquiry` asks `message`'s sender, by the engine's rule (`_why_not`): its `users` and `roles`
        let them answer (`irc:nick` on IRC), and by name they did not start its workflow if `self_approval` is
        false nor answer it already. Only tells an answer from chatter: answering checks again."""
        return self._why_not(message, inquiry) is None

    def _why_not(self, message: Message, inquiry: dict[str, Any]) -> InquiryError | None:
        """Why `message`'s sender may not answer `inquiry` (the engine's `why_not`), or None: as `answer` names
        them to the engine (`person`, `sender_names`), but compared with its requester and earlier answerers
        by name on any platform (`by_name`), as `answer` has the engine compare them too: compared as given
        (`irc:carol`), the nick carol would be someone else than the carol who started the workflow, or
        answered from Slack or the API; the nick may be her, so it may not."""
        return why_not(inquiry, person(message.adapter, message.user), sorted(self.auth.groups_of(message)),
                       sender_names(message), by_name=message.user)

    def _ambiguous(self, inquiries: list[dict[str, Any]]) -> str:
        """What to say to a bare answer that fits several questions waiting in one thread."""
        ids = ", ".join(inquiry["id"] for inquiry in inquiries)
        return (f"Several questions wait for an answer here (inquiries {ids}), so that answered none: say which "
                f"with `{self.prefix}respond <inquiry-id> <answer>`, such as "
                f"`{self.prefix}respond {inquiries[0]['id']} <answer>`.")

    async def answer(self, message: Message, inquiry: dict[str, Any], text: str) -> str | None:
        """Respond to `inquiry` with `text`; the words to say back, or None if `text` is no answer."""
        schema = _schema(inquiry)
        response = parse_answer(schema, text)
        if response is None:
            return None
        where, store = f"{message.adapter}:{message.channel}", self.engine.store
        # Stored with the answer, one transaction (`InquiryService.respond`): its detail gains the response,
        # secrets masked. Apart, a failure between them told the person it failed for an answer that counted.
        audit = AuditEntry("chat.inquiry.respond", message.user, where, None, {})
        try:
            answerer = person(message.adapter, message.user)  # `irc:carol` on IRC: `users` must name the nick
            answered = await self.engine.inquiries.respond(inquiry["id"], response, answerer,
                                                           sorted(self.auth.groups_of(message)), audit,
                                                           sender_names(message), by_name=message.user)
        except InquiryError as exc:
            await self.engine.db(store.audit_add, "chat.inquiry.denied", message.user, where, inquiry["id"],
                                 {"reason": str(exc)})
            return f"Sorry {message.user}: {exc}"
        shown = masked(schema, response)
        if answered["status"] == "pending":  # `count` people must answer
            return (f"Thanks {message.user}, your answer to inquiry {inquiry['id']} is recorded "
                    f"({len(answered['responses'])} of {answered['count']}): {json.dumps(shown)}")
        return f"Thanks {message.user}, inquiry {inquiry['id']} answered: {json.dumps(answered['response'])}"

    async def respond_command(self, message: Message, rest: str, prefix: str) -> str:
        """`respond <inquiry-id> <json or value>`. An id that names nothing is answered in chat's words:
        the engine's error points at the CLI (`squall execution list`), which a person in a channel may
        not have, and there is no chat command listing inquiries: each question says its id. A start of
        several ids is answered without listing them, as `!execution`'s is (chat is not the place to
        collect other people's execution ids)."""
        inquiry_id, _, text = rest.strip().partition(" ")
        if not inquiry_id or not text.strip():
            return f"Usage: `{prefix}respond <inquiry-id> <json or value>`"
        try:
            inquiry = await self.engine.executions.get(inquiry_id)
        except AmbiguousExecution:
            return f'"{short(inquiry_id, 40)}" starts more than one execution id; type more of the inquiry\'s id.'
        except LookupError:
            return (f'There is no inquiry "{short(inquiry_id, 40)}". Its id is in its question ("Inquiry <id> '
                    f'needs an answer"): answer in the question\'s thread, or with '
                    f"`{prefix}respond <inquiry-id> <json or value>`.")
        if inquiry["runner"] != RUNNER:
            return f"{inquiry['id']} is not an inquiry."
        said = await self.answer(message, inquiry, text)
        if said is None:
            schema = (inquiry.get("result") or {}).get("schema") or {}
            return (f"That is not an answer to inquiry {inquiry['id']}; send a JSON object that fits "
                    f"{json.dumps(schema)}")
        return said


def _schema(inquiry: dict[str, Any]) -> dict[str, Any]:
    return (inquiry.get("result") or {}).get("schema") or {}


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
