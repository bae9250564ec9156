"""What every chat adapter speaks: `Message` in, `Reply` out, and what the platform can do.

Adapters stay thin: they turn a platform event into a `Message` and a `Reply` into platform calls.
Everything else (addressing, matching, permissions, acks, results, help) lives in `bot/`, which
reads `Capabilities` to degrade gracefully: threads where there are threads, edits where
messages can be edited, files where long output can be uploaded, plain split text elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Capabilities:
    threads: bool = False
    edits: bool = False
    rich: bool = False
    files: bool = False
    buttons: bool = False
    #: Longest text one message may carry; longer replies are split (or uploaded as a file).
    max_length: int = 4000


@dataclass(slots=True)
class ClickOutcome:
    """What became of a button click (`Message.click`), for its adapter to mark the prompt by: `taken` is
    True once the click answered a live confirmation (its Yes runs, its No declines), False once it was told
    the prompt expired, was answered already, replaced or is someone else's (nothing ran: the prompt's text
    stays as it is, as the bot's reply says why), None where the bot does not classify it (an inquiry's, an
    approval's or a form's button): the adapter marks it as it always did, before the bot handles it further
    (an inquiry that refuses the click edits its question back after that mark)."""

    taken: bool | None = None
    told: asyncio.Event = field(default_factory=asyncio.Event)

    def tell(self, taken: bool | None) -> None:
        """The bot says what became of the click: as soon as it knows, before it runs anything."""
        self.taken = taken
        self.told.set()

    async def known(self, handling: asyncio.Future[Any], within: float | None = None) -> bool | None:
        """`taken`, once the bot told it (`tell`), `handling` (the click handed on) ended, or `within`
        seconds passed, whichever comes first; `handling` goes on either way."""
        told = asyncio.ensure_future(self.told.wait())
        try:
            await asyncio.wait({told, handling}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            told.cancel()
        return self.taken


@dataclass
class Message:
    """One chat message as the bot sees it, whatever the platform."""

    adapter: str
    channel: str
    user: str
    text: str
    thread: str | None = None
    #: The bot was @mentioned (or addressed as `nick:`), so no prefix is needed.
    mentioned: bool = False
    #: A direct (private) message: no prefix needed either.
    direct: bool = False
    #: Platform groups the user belongs to, mapped onto Squall groups by the adapter.
    groups: list[str] = field(default_factory=list)
    id: str | None = None
    #: The platform's payload as it came: never read for who wrote (`user_id` says that), nor stored with
    #: a session.
    raw: Any = None
    #: The platform's stable id of the sender (Slack's `U…`, Mattermost's 26 characters), which no one
    #: can change or choose, where the user name may change: set by the adapter from what the server
    #: said, so `auth` and an inquiry's `users` may name the person by it (`slack:U0123ABCD`). Kept
    #: wherever the bot keeps the message (sessions, an approval's requester); None where the platform
    #: says none (IRC, the console, the API) and in state stored before it was kept.
    user_id: str | None = None
    #: The channel's human name where `channel` is a platform id (Slack `C0123`): auth lists may use either.
    channel_name: str | None = None
    #: What lets the bot open a form for this person now (Slack's and Mattermost's `trigger_id` of a
    #: slash command or a button click; valid for seconds), None where the platform gave none.
    trigger: str | None = None
    #: A button click: `text` is the button's value, an answer to the prompt it sits on, never a command
    #: typed (a stale inquiry's `yes` must not confirm what the person was asked since, nor run an alias).
    clicked: bool = False
    #: Where the platform may send this message again (Slack retries an event whose acknowledgement it
    #: did not get, after a restart too): the key it comes again under, unique on the adapter for as long
    #: as that (Slack's `channel:ts`). The command it requests is stored with it (`context.chat.delivery`),
    #: so a second delivery runs nothing. None where the platform never sends a message twice, or its ids
    #: are this process's own (IRC, the console): such an id would name another message after a restart.
    delivery: str | None = None
    #: A button click's outcome, set by the adapter (`ClickOutcome()`) and told by the dispatcher
    #: (`Dispatcher.handle` returns only whether the message was stored): this one delivery's, never stored
    #: with a session (`bot.chat.sessions.origin`), nor compared.
    click: ClickOutcome | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Part:
    """One post of a reply too long for its platform, sent in several (`Reply.part`): its number (from
    1) of `count`, and `end`, where it ends in the stored reply's text. Adapters with `find_sent` carry
    it on the post beside the outbox id, so after a crash the outbox goes on after the last part the
    platform has, from that point of the text even if the split changed since (another post limit)."""

    number: int
    count: int
    end: int

    def to_json(self) -> dict[str, int]:
        return {"part": self.number, "parts": self.count, "end": self.end}

    @classmethod
    def from_json(cls, data: Any) -> Part | None:
        """The part `to_json` wrote into `data` (a post's metadata); None where it names none."""
        if not isinstance(data, dict):
            return None
        values = (data.get("part"), data.get("parts"), data.get("end"))
        return cls(*values) if all(isinstance(value, int) for value in values) else None


#: A post `find_sent` found of a reply: its platform id, and the `Part` it is (None: the whole reply).
FoundPost = tuple[str, Part | None]


@dataclass
class Reply:
    """Something to post. `edit` names the outbox id of an earlier reply to replace, if possible;
    `asker` is whom its buttons ask (a name as in `Message.user`), None when anyone may answer;
    `asker_id` is that person's platform user id (`Message.user_id`) where the platform gives one: a
    name can be renamed away and taken by someone else while the prompt waits, an id cannot, so an
    adapter that has it takes the buttons off for that person's click alone."""

    adapter: str
    channel: str
    text: str
    thread: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    file: tuple[str, str] | None = None
    buttons: list[dict[str, str]] = field(default_factory=list)
    edit: int | None = None
    asker: str | None = None
    asker_id: str | None = None
    #: The reply's outbox id, set by the outbox as it sends (not stored in the payload): adapters
    #: that can look their posts up again carry it on the post (see `Adapter.find_sent`).
    outbox_id: int | None = None
    #: Set by the outbox, not stored either: which post of a reply sent in parts this is, carried
    #: beside `outbox_id` so `find_sent` can tell how far the reply got.
    part: Part | None = None
    #: With tracing on, the traceparent of the span that stored it: its sending is a child span there.
    trace: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"adapter": self.adapter, "channel": self.channel, "text": self.text, "thread": self.thread,
                "extra": self.extra, "file": list(self.file) if self.file else None, "buttons": self.buttons,
                "edit": self.edit, "asker": self.asker}
        if self.asker_id is not None:
            data["asker_id"] = self.asker_id
        if self.trace is not None:
            data["trace"] = self.trace
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reply:
        file = data.get("file")
        return cls(adapter=data["adapter"], channel=data["channel"], text=data["text"], thread=data.get("thread"),
                   extra=data.get("extra") or {}, file=(file[0], file[1]) if file else None,
                   buttons=data.get("buttons") or [], edit=data.get("edit"), asker=data.get("asker"),
                   asker_id=data.get("asker_id"), trace=data.get("trace"))


#: Handles one message; answers False when what it carries could not be stored (the database failed or
#: was locked: the person was told so), else True or None. A platform that sends again what was not
#: acknowledged (Slack) is then left unacknowledged, and its next delivery is handled anew.
MessageHandler = Callable[[Message], Awaitable[bool | None]]


@dataclass(frozen=True)
class FormField:
    """One input of a form, as the bot asks for it: `kind` is one of `bot.forms.KINDS`; `options`
    the texts an enum offers; `initial` the text the input starts with (never a secret's)."""

    name: str
    label: str
    kind: str
    required: bool
    hint: str = ""
    initial: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Form:
    """A form to open: `state` is the bot's own (opaque to the adapter), handed back on submission."""

    title: str
    fields: tuple[FormField, ...]
    state: str
    submit: str = "Run"


@dataclass
class FormSubmission:
    """What a person sent back from a form: the text of each field (a ticked checkbox is "true", an
    unticked one absent), and who sent it, with their platform groups for the permission check.
    Where the form was opened from is the bot's to remember (by `state`), not the platform's to say."""

    adapter: str
    user: str
    state: str
    values: dict[str, str]
    groups: list[str] = field(default_factory=list)
    #: The sender's platform user id, as `Message.user_id` (set by the adapter from what the server said):
    #: a form is its opener's by it, not by a name they may be renamed out of (or someone else into), and
    #: their rights granted by it (`slack:U0123ABCD`) hold for what they send. None where the platform says
    #: none.
    user_id: str | None = None
    #: The person closed the form without sending it (Slack's `view_closed`, Mattermost's `cancelled: true`):
    #: `values` is empty, and the bot tells them nothing was run and forgets the form.
    cancelled: bool = False


#: Checks a submission and takes it; returns a message per wrong field (empty: accepted).
FormHandler = Callable[[FormSubmission], Awaitable[dict[str, str]]]


#: The buttons a person's home on the platform shows (Slack's App Home tab): the commands they may run.
HomeHandler = Callable[[Message], Awaitable[list[dict[str, str]]]]

#: Told (adapter name, user) when `user` may no longer be the person the bot knew by that name.
GoneHandler = Callable[[str, str], Awaitable[None]]


class AdapterConfigError(Exception):
    """An adapter's settings cannot be used (a missing token, a refused login): nothing will ever
    work, so `squall serve` stops with this message, which names the key (and the variable) to fix."""


class DeliveryError(Exception):
    """The platform did not take the reply now; the outbox will try again (after `retry_after`).

    `permanent` says trying again cannot help (an unknown channel, a refused scope): the reply is
    recorded as failed at once, and the channel's later replies are not held up behind it.

    `maybe_taken` says the platform may have stored the reply all the same: the request went out and
    no answer came back (the connection dropped, no answer in time, a 5xx). Before sending it again,
    the outbox asks the adapter's `find_sent` whether the post is there, so it is not posted twice. A
    refusal (a 429, a reason given) stored nothing and is sent again without asking. Left out, it is
    true for a refusal that may pass and names no wait: when unsure, asking costs one lookup, while
    not asking may cost a duplicate post."""

    def __init__(self, message: str, retry_after: float | None = None, *, permanent: bool = False,
                 maybe_taken: bool | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent
        self.maybe_taken = (not permanent and retry_after is None) if maybe_taken is None else maybe_taken


class Adapter(Protocol):
    name: str
    capabilities: Capabilities

    async def start(self, on_message: MessageHandler) -> None:
        """Connect and start handing messages to `on_message`; return once connected. Where the platform
        waits for an acknowledgement of what it sent (Slack's envelopes), acknowledge a message once
        `on_message` returned (what it carries is stored, or was no command), never before: a crash in
        between would lose what the platform then never sends again."""

    async def send(self, reply: Reply, edit_of: str | None = None) -> str | None:
        """Post (or, with `edit_of`, edit) a message; returns the platform's id for it.

        Raises `DeliveryError` when the platform cannot take it now.
        """

    async def stop(self) -> None:
        """Disconnect."""

    # Optional: `reaches(channel) -> bool` says whether a private channel stored before a restart still
    # reaches the person it was opened with (IRC's `nick~tag`, which a restart cannot prove: False).

    # Optional: `received(message) -> None` is called once the dispatcher took `message` as a
    # command (adapters pass every message on and never decide that themselves): a platform's
    # "seen it" mark, such as Slack's `:eyes:` status reaction.

    # Optional: `find_sent(replies: Sequence[Reply], since: datetime) -> dict[int, list[FoundPost]]`
    # finds, among replies (each with its `outbox_id`) an earlier run may have posted after `since`,
    # those the platform already has, by the outbox id the post carries: for each, its posts' platform
    # ids with the `Part` each carries (None: the reply went out in one post). The outbox asks it at
    # start-up before sending again what a crash left unmarked, so a reply the platform took just
    # before a kill is not posted twice, and a reply killed between its parts goes on after the last
    # part the platform has; and, for one reply, after a send that failed with `DeliveryError.maybe_taken`
    # (or an exception that is no `DeliveryError`), before sending it again, so a post the platform
    # stored without its answer reaching Squall is not posted twice. Never on a send that succeeded.
    # Adapters without it deliver at least once.

    # Optional: `online: bool`, a property: whether the adapter holds its connection to the platform
    # now (the web UI's status page shows it; adapters without a connection of their own leave it out).

    # Optional, together: `open_form(trigger: str, form: Form) -> None` opens `form` for the person whose
    # interaction gave `trigger` (`Message.trigger`; Slack modal, Mattermost dialog), raising
    # `DeliveryError` when the platform refuses; and `on_form: FormHandler | None`, set by the bot,
    # which the adapter calls with each submission before it answers the platform, so the errors go
    # back on the fields. Adapters without them get forms as questions in chat (`bot/chat/forms.py`).

    # Optional: `on_home: HomeHandler | None`, set by the bot: the adapter asks it for the buttons of a
    # person's home on the platform (Slack's App Home tab) when they open it; a click there is a
    # message from them in their private channel with the app, with a trigger to open a form.

    # Optional: `private_channel(user: str) -> str`: the channel of a private exchange with `user` (IRC:
    # their nick), where a form without `open_form` asks its questions; without it, in the same channel.

    # Optional: `on_gone: GoneHandler | None`, set by the bot: where anyone may take a name another
    # person let go of (an IRC nick), the adapter awaits it with (its name, the user) when it sees that
    # person leave the name (renamed away, quit) or a name change hands, in order with the messages it
    # hands on, so nothing still open for the old holder (a form's questions, a confirmation) can be
    # answered by the next one.

    # Optional: `mount(app: FastAPI) -> None` adds the platform's HTTP routes (signed or token-checked
    # by the adapter, not by API key) to Squall's API server.


#: The line under the head of an output sent as a file (`attached`); an adapter that says the start of the
#: file inline instead (its upload failed) drops it: nothing is attached then.
ATTACHED_NOTE = "(full output attached)"


def attached(reply: Reply, head_chars: int) -> Reply:
    """`reply` with its text sent as a file, `output.txt`, and its first line (at most `head_chars`) with
    `ATTACHED_NOTE` under it as the message: how an output too long for a platform's message goes (the
    chat's `fit`, and Slack's adapter for a text only too long once escaped)."""
    head = reply.text.split("\n", 1)[0][:head_chars]
    return Reply(**{**reply.__dict__, "text": f"{head}\n{ATTACHED_NOTE}", "file": ("output.txt", reply.text)})


def caption(text: str, content: str) -> str:
    """What a reply sent with a file says besides the file, for an adapter that puts the file's start inline
    instead (its upload failed): its text without `ATTACHED_NOTE` (nothing is attached then), or nothing when
    that is the start of `content`, which follows anyway."""
    said = "\n".join(line for line in text.split("\n") if line.strip() != ATTACHED_NOTE).strip()
    return "" if said and content.startswith(said) else said


def line_breaks(text: str) -> str:
    """`text` broken into lines as a line-based platform sends it (IRC: `adapters/irc.py` `split_lines`),
    every break written `\\n`: a `\\r\\n`, and a bare `\\r` too (a progress meter's output, which has no
    newline), is one break, and the breaks around the text are dropped (no empty line is sent first or
    last). The one rule of both the sending and the chat side's count of what it sends (`bot/chat/
    replies.py` `cap_result`): a cap counting newlines alone let 5,000 `\\r` steps through as 1,522 lines."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
