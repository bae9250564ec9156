"""From a chat message to an execution: addressing, built-in commands, matching, permissions,
confirmation, the ack, and (when the execution finishes) the result in the same thread.

The message is parsed once, here, by the same `AliasMatcher` the CLI and the API use, so the
bot and the engine can never disagree about what a command means.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from adapters.base import Adapter, Message, Reply
from adapters.markup import code_span
from aliases import Alias, AliasMatch, AliasMatcher, AmbiguousCommand, CommandTooComplex, NoMatch
from aliases.grammar import normalise
from aliases.rank import RANKERS, Ranked, Ranker, make_ranker
from bot.chat import help as chat_help
from bot.chat import sessions
from bot.chat.approvals import APPROVE, DENY, ApprovalChat
from bot.chat.auth import Authorizer, platform_id, same_person, same_sender
from bot.chat.commands import (
    MAX_COMMAND,
    CommandFailed,
    CommandRefused,
    CommandService,
    CommandTooLong,
    Held,
    NeedsApproval,
)
from bot.chat.flood import FloodGate
from bot.chat.forms import CANCEL, ChatForms
from bot.chat.forms import WORD as FORM_WORD
from bot.chat.index import AliasIndex
from bot.chat.inquiries import InquiryChat
from bot.chat.outbox import Keyed, Outbox
from bot.chat.replies import capped, render_result, status_line
from bot.forms import short
from engine import tracing
from engine.config import DEFAULT_CONFIRM_TTL, ConfigError, chat_confirm_ttl, chat_flood
from engine.executions import (
    COMPLETED,
    ID_PREFIX,
    AmbiguousExecution,
    CompletionWrite,
    ExecutionNotFound,
    ExecutionStateError,
    public,
)
from engine.logs import log_context
from engine.metrics import metrics
from engine.packs import UnknownAction
from engine.parameters import MASK, ParameterError, mask_value
from engine.storage import DuplicateDelivery, database_trouble
from engine.templates import TooLongForTheLoop, briefly, rendered

if TYPE_CHECKING:
    from engine.core import Engine

log = logging.getLogger(__name__)
_YES = {"yes", "y", "confirm", "ok"}
_NO = {"no", "n", "cancel", "abort"}
#: Either answer to a confirmation: asked of every command's text, so made once, not a union per command.
_ANSWERS = frozenset(_YES | _NO)
#: What a person at a terminal types to end the session: taken only where the message's adapter has one to
#: end (the console's `leave`) and no alias claims the word, as a built-in; elsewhere it stays unknown.
_LEAVE = {"quit", "exit"}
#: A confirmation button's value: the answer and the token of the prompt it sits on (`PendingConfirmation.token`),
#: so a click on an older prompt can never confirm whatever the person was asked last.
_CLICKED = re.compile(r"(yes|no):([0-9a-f]{16})")
#: A span with tracing off (`tracing.span`'s own no-op is one reusable `nullcontext` too): the spans every
#: command opens here are not asked for, nor their attributes gathered, when no span is recorded. The hot
#: path (`handle`, `_Lookup.matches`, `completing`) does not even enter it: a `with` of it calls its Python
#: `__enter__` and `__exit__`, about 2,200 instructions (callgrind) against a branch on `tracing.enabled()`;
#: the three: about -5,000 instructions a command at 100 in flight.
_NO_SPAN = contextlib.nullcontext()


@dataclass(slots=True)
class _Taken:
    """What became of the message `Dispatcher.handle` is handling: `stored` until `say_unstored` tells its
    sender the database took nothing of it; its delivery key (`Message.delivery`) and how many answers
    `say` gave it so far, which key them (`_answer_key`)."""

    delivery: str | None = None
    stored: bool = True
    said: int = 0


#: The `execution_id` the answers to a delivered message are keyed under (`Dispatcher.say`): no execution's
#: id, so retention purges them by age, as every reply of no execution (`engine.retention.replies_batch`).
ANSWERS = "@"


#: The message being handled (`Dispatcher.handle`), for `say_unstored`, however deep it is called.
_handling: ContextVar[_Taken | None] = ContextVar("handling", default=None)


def _log_context(message: Message) -> dict[str, Any]:
    """What `message`'s handling logs with (`engine.logs.logging_context(adapter=, channel=, user=)`'s context,
    None values left out as it leaves them), made as one dict display and set by `Dispatcher.handle` itself:
    not a `logging_context` with its keywords, comprehension, `__enter__` and `__exit__` for every message."""
    adapter, channel, user = message.adapter, message.channel, message.user
    if adapter is None or channel is None or user is None:  # (no adapter makes one so: each is text)
        given = {"adapter": adapter, "channel": channel, "user": user}
        return {**log_context.get(), **{key: value for key, value in given.items() if value is not None}}
    return {**log_context.get(), "adapter": adapter, "channel": channel, "user": user}


def _delivered(message: Message) -> _Taken | None:
    """What became of `message` so far while it is the message being handled and carries a delivery key (its
    platform may hand it over again); None otherwise (a command a confirmation held, answered by another)."""
    taken = _handling.get()
    if taken is None or taken.delivery is None or message.delivery != taken.delivery:
        return None
    return taken


def _answer_key(message: Message, *, keyed: bool) -> str | None:
    """The key of the next answer to `message` (`Dispatcher.say`) while it is the message being handled
    and carries a delivery key: `answer:<adapter> <delivery> <n>`, the n-th answer of its handling. Every
    answer counts, `keyed` or not, so a second handling numbers its answers as the first did."""
    taken = _delivered(message)
    if taken is None:
        return None
    taken.said += 1
    return f"answer:{message.adapter} {message.delivery} {taken.said}" if keyed else None


def _prompt_key(message: Message) -> str | None:
    """The key of the prompt `message` is held with (a confirmation, a "did you mean" offer: one at most per
    message) while it is the message being handled and carries a delivery key: `prompt:<adapter> <delivery>`,
    whatever was said before it. Stored with the prompt (`Dispatcher.say`), it tells a second handling of the
    message that it was asked (`Dispatcher._asked_before`)."""
    return None if _delivered(message) is None else f"prompt:{message.adapter} {message.delivery}"


@dataclass
class ChatSettings:
    prefix: str = "!"
    bot_name: str = "squall"
    thread_replies: bool = True
    confirm_ttl: float = DEFAULT_CONFIRM_TTL
    #: `chat.suggest`: which ranker answers free text, and when its best alias stands out enough to be
    #: offered (None: the ranker's own defaults, which suit its scale of scores).
    suggest_ranker: str = "lexical"
    suggest_threshold: float | None = None
    suggest_margin: float | None = None
    #: `chat.favourites`: alias or action refs the Slack App Home tab offers first, in this order
    #: (empty: every command the person may run there).
    favourites: tuple[str, ...] = ()
    #: `chat.flood`: (commands, seconds), at most that many commands per person in any that many seconds
    #: (`FloodGate`); None: no limit.
    flood: tuple[int, float] | None = None

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> ChatSettings:
        ranker, threshold, margin = _suggest_settings(section.get("suggest"))
        return cls(prefix=str(section.get("prefix", "!")), bot_name=str(section.get("bot_name", "squall")),
                   thread_replies=bool(section.get("thread_replies", True)),
                   confirm_ttl=chat_confirm_ttl(section), suggest_ranker=ranker,
                   suggest_threshold=threshold, suggest_margin=margin,
                   favourites=_favourites(section.get("favourites")), flood=chat_flood(section))


def _favourites(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(ref, str) and ref for ref in value):
        raise ConfigError("'chat.favourites' must be a list of alias or action refs, such as [linux.restart]")
    return tuple(value)


_SUGGEST_KEYS = {"ranker", "threshold", "margin"}


def _suggest_settings(section: Any) -> tuple[str, float | None, float | None]:
    """`chat.suggest.{ranker,threshold,margin}`, checked: a typo must not silently keep a default."""
    if section is None:
        return "lexical", None, None
    if not isinstance(section, dict):
        raise ConfigError(f"'chat.suggest' must be a mapping with {', '.join(sorted(_SUGGEST_KEYS))}, "
                          f"not {type(section).__name__}")
    for key in section:
        if key not in _SUGGEST_KEYS:
            raise ConfigError(f"unknown key 'chat.suggest.{key}'; allowed: {', '.join(sorted(_SUGGEST_KEYS))}")
    ranker = section.get("ranker", "lexical")
    if ranker not in RANKERS:
        raise ConfigError(f"'chat.suggest.ranker' must be one of {', '.join(RANKERS)}, not {ranker!r}")
    if ranker == "embedding" and importlib.util.find_spec("wordllama") is None:
        raise ConfigError("'chat.suggest.ranker: embedding' needs the optional model: pip install 'squall[nl]'")
    numbers = []
    for key in ("threshold", "margin"):
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 <= value <= 1):
            raise ConfigError(f"'chat.suggest.{key}' must be a number from 0 to 1, not {value!r}")
        numbers.append(None if value is None else float(value))
    return str(ranker), numbers[0], numbers[1]


class _EveryName(frozenset[str]):
    """Holds every name: the secret parameters of an alias whose action is not loaded (none can be told)."""

    def __contains__(self, name: object) -> bool:
        return True


_EVERY_NAME = _EveryName()


@dataclass
class PendingConfirmation:
    """A command held until its sender says `yes`: a matched alias, or (for a "did you mean"
    suggestion) the filled command text, which is matched and authorised again when confirmed.
    `expires` is wall-clock time (`time.time()`): it must mean the same after a restart. A match is
    authorised again when confirmed, with its alias as loaded then (`run_matched`): a pack reload or
    a restart may have changed its permissions, disabled it or removed it meanwhile."""

    match: AliasMatch | None
    message: Message
    expires: float
    command: str | None = None
    #: Names this prompt: its buttons carry it (`yes:<token>`), so a click answers this prompt and no
    #: other. None for one stored before tokens existed (its buttons say a bare `yes`, as typed).
    token: str | None = field(default_factory=lambda: secrets.token_hex(8))
    #: The other fits of a `match_multiple` command, confirmed and run together with `match`.
    more: tuple[AliasMatch, ...] = ()
    #: The execution a `retry` of a `confirm:` alias's command re-runs once confirmed (`match` and
    #: `command` are None): looked up and authorised again then, as a typed `retry` is.
    retry: str | None = None

    def buttons(self, yes: str, no: str) -> list[dict[str, str]]:
        """The prompt's two buttons, each naming this prompt."""
        return [{"text": yes, "value": f"yes:{self.token}"}, {"text": no, "value": f"no:{self.token}"}]


#: Stored confirmations' keys (`bot/chat/sessions.py`): by where they wait, as question exchanges are.
_CONFIRM = "confirm:"
#: How many prompts no longer pending `Dispatcher._settled` remembers (the oldest are forgotten first):
#: enough for the clicks on the buttons of prompts settled in the last while, in a few hundred kilobytes.
SETTLED_KEPT = 1000


@dataclass(frozen=True, slots=True)
class _Settled:
    """A prompt no longer pending (`Dispatcher._settled`, by its token): whom it asked, and why it ended,
    in words that follow "That prompt is no longer pending: ", for a click on its button after."""

    asked: Message
    reason: str


def _place(message: Message) -> tuple[str, str, str]:
    """Where a confirmation waits for `message`'s sender: the adapter, the channel and the sender, by the
    platform's user id where it says one (`platform_id`: `id:U0123ABCD`), which they keep when renamed,
    else by name. A lookup under it is checked all the same (`Dispatcher._pending`): the key finds, only
    `same_sender` decides, so an id read as a name (no Slack or Mattermost name has a colon) grants nothing."""
    user_id = platform_id(message)
    return message.adapter, message.channel, message.user if user_id is None else f"id:{user_id}"


def _click_taken(message: Message, taken: bool | None) -> None:
    """Tell `message`'s adapter whether its click was taken (`Message.click`): it marks the prompt
    "chose …" only then, never over a prompt that expired or was answered already; None for a click that
    answers no confirmation (an inquiry's, an approval's, a form's), which its adapter marks as it always did."""
    if message.click is not None:
        message.click.tell(taken)


def _as_now(asked: Message, sender: Message) -> Message:
    """`asked` (the message a confirmation held) as sent by `sender`, who answered it: the same person
    (`same_sender`), under their name and platform groups now where their user id says it is them. A
    command confirmed after a rename runs as who they are now: never with the rights config grants the
    name they left, which another may hold now. Without ids it is the same name, and stays as it was
    asked (a confirmation stored before ids were kept gets none from its answer)."""
    if platform_id(asked) is None or platform_id(sender) is None:
        return asked
    return replace(asked, user=sender.user, groups=list(sender.groups))


# Made for every message: slotted (see docs/architecture.md, "Value objects").
@dataclass(slots=True)
class _Lookup:
    """One message's alias lookup, made at most once however many steps ask: whether its text is a
    command amid waiting questions (`_names_command`) and which command it is (`_handle`). A match,
    with suggestions ranked when nothing matches, costs tens of microseconds a message: never twice."""

    commands: CommandService
    text: str
    _found: list[AliasMatch] | AmbiguousCommand | NoMatch | None = None

    def matches(self) -> list[AliasMatch]:
        """The commands `text` means (`CommandService.match_all`), or its `NoMatch` / `AmbiguousCommand`."""
        if self._found is None:
            try:
                if tracing.enabled():
                    with tracing.span("alias.match"):
                        self._found = self.commands.match_all(self.text)
                else:  # no no-op span's `with` (`_NO_SPAN`)
                    self._found = self.commands.match_all(self.text)
            except (AmbiguousCommand, NoMatch) as exc:
                self._found = exc
        if isinstance(self._found, Exception):
            raise self._found
        return self._found


@dataclass
class Dispatcher:
    engine: Engine
    index: AliasIndex
    outbox: Outbox
    adapters: dict[str, Adapter]
    inquiries: InquiryChat
    commands: CommandService
    auth: Authorizer = field(default_factory=Authorizer)
    settings: ChatSettings = field(default_factory=ChatSettings)
    _confirmations: dict[tuple[str, str, str], PendingConfirmation] = field(default_factory=dict)
    #: Prompts answered, expired or replaced lately, by token (at most `SETTLED_KEPT`, in memory only):
    #: a click on one of their buttons is told which, never another prompt's story.
    _settled: dict[str, _Settled] = field(default_factory=dict)
    #: (adapter, name in lower case) → the stored keys and prompts a restart closed for that name: asked in a
    #: private channel its adapter no longer reaches (`restore`); its next `yes` or `no` there is told so.
    _lost: dict[tuple[str, str], list[tuple[str, PendingConfirmation]]] = field(default_factory=dict)
    _ranker: Ranker | None = None
    #: Commands held for approvers (`bot/chat/approvals.py`); `approve` / `deny` answer them.
    approvals: ApprovalChat | None = None
    #: Chat forms (`run-form`, and the offer of a form when a typed command misses a parameter).
    forms: ChatForms = field(init=False)
    #: Executions whose result was stored with their end (`completing`): their listener posts nothing.
    _stored_with_end: set[str] = field(default_factory=set)
    #: Executions whose result took too long to render on the loop: their listener renders it on a thread.
    _render_elsewhere: set[str] = field(default_factory=set)
    #: Since when the outage was that a message's failure last logged (`Database.failing`'s time).
    _outage_logged: datetime | None = None
    #: `chat.flood`'s limit per person; None (the default) costs a message this one attribute check.
    _flood: FloodGate | None = field(init=False, default=None)

    @property
    def matcher(self) -> AliasMatcher:
        return self.index.matcher

    @property
    def aliases(self) -> dict[str, Alias]:
        return self.index.aliases

    def __post_init__(self) -> None:
        self.forms = ChatForms(self)
        if self.settings.flood is not None:
            self._flood = FloodGate(*self.settings.flood)
        if self.settings.suggest_ranker != "lexical":
            self.ranker  # noqa: B018 (a model loads at start-up, where a broken install shows, not at a message)

    @property
    def ranker(self) -> Ranker:
        """The `chat.suggest.ranker`, built once (the lexical one at the first message that needs it)."""
        if self._ranker is None:
            self._ranker = make_ranker(self.settings.suggest_ranker)
        return self._ranker

    # -- entry point -----------------------------------------------------------------------
    def handle(self, message: Message) -> Coroutine[Any, Any, bool]:
        """Handle one message; whatever goes wrong, the person gets an answer and the bot stays up.

        Returns once what the message carries is stored (a command's request with its ack, a reply), or
        it was no command: True; False when the database took nothing of it (its sender was told,
        `say_unstored`). The adapter acknowledges the message to its platform then, never before (the
        handler contract, `adapters.base.MessageHandler`): a platform that sends again what it got no
        acknowledgement for (Slack) sends this one again. Never waits for an action to run.

        With tracing off, `_handle_safely` itself, not a coroutine around it: every level of a command's
        coroutines is passed through again as its request waits for the database (twice a command), about
        1,500 instructions a level (callgrind, a chain of coroutines)."""
        if tracing.enabled():
            return self._handle_traced(message)
        return self._handle_safely(message)  # no no-op span to enter and leave (`_NO_SPAN`)

    async def _handle_traced(self, message: Message) -> bool:
        """`_handle_safely` in the message's `chat.message` span."""
        with tracing.span("chat.message", adapter=message.adapter, channel=message.channel, user=message.user):
            return await self._handle_safely(message)

    async def _handle_safely(self, message: Message) -> bool:
        """`handle`'s work, with what became of the message (`_Taken`, `_delivered`) and its log context set
        while it runs."""
        taken = _Taken(message.delivery)
        token = _handling.set(taken)
        logged = log_context.set(_log_context(message))
        try:
            text = self._addressed(message)
            lookup = None if text is None else _Lookup(self.commands, text)
            adapter = self.adapters.get(message.adapter)
            # A confirmation's button click names its prompt: never an inquiry's answer or a form's.
            clicked = text is not None and ":" in text and _CLICKED.fullmatch(text) is not None
            if not clicked:
                _click_taken(message, None)
            threaded = adapter is None or adapter.capabilities.threads
            if not clicked and _may_answer_inquiry(message, text, threaded) \
                    and await self._inquiry_answer(message, text, threaded, lookup):
                return taken.stored
            answers = not clicked and not self._command_amid_questions(message, lookup)
            if answers and self.forms.may_answer(message) and await self.forms.answer(message, text):
                return taken.stored  # a question of a form asked in chat: answers need no prefix
            if text is None:
                return taken.stored  # chatter: the adapters pass every message on, the dispatcher decides
            if self._flood is not None and not (clicked or message.clicked) and await self._flooded(message, text):
                return taken.stored
            metrics.count(metrics.chat_messages, message.adapter)
            received = getattr(adapter, "received", None)
            if received is not None:  # the platform's "seen it" mark (Slack's status reaction)
                await received(message)
            await self._handle(message, text, lookup)
        except DuplicateDelivery as exc:  # a chat `retry` its platform sent twice: it re-ran once
            log.info("%s's message came again (%s); it ran once, not again", message.user, exc)
        except Exception as exc:
            await self.tell_failure(message, exc, f"handling a message from {message.user}")
        finally:
            log_context.reset(logged)
            _handling.reset(token)
        return taken.stored

    async def _flooded(self, message: Message, text: str) -> bool:
        """Whether `message` is a command past its sender's `chat.flood` limit, and so dropped: not
        matched, stored or run. The first one of a window is answered where it was typed and audited
        (`chat.flood`), the others dropped without a word: answering each would be the flood again.
        Built-ins count; answers do not (a typed `yes`/`no` to the sender's pending confirmation here,
        like button clicks and inquiry and form answers, which never reach this check). Admins count
        too: a channel's replies are paced the same whoever sent the commands."""
        assert self._flood is not None
        if text.lower() in _ANSWERS and self._pending(message) is not None:
            return False
        flooded = self._flood.check(message.adapter, message.user)
        if flooded is None:
            return False
        if flooded.tell:
            limit, seconds = self._flood.commands, self._flood.seconds
            wait = math.ceil(flooded.wait)
            await self.say(message, f"{message.user}, you have sent more than {limit} commands in {seconds:g} s "
                                    f"(the limit here); the ones past it are dropped, not run. Wait {wait} s before "
                                    "sending the next.")
            db = self.engine.db
            await db(db.store.audit_add, "chat.flood", message.user, f"{message.adapter}:{message.channel}", None,
                     {"commands": limit, "seconds": seconds, "wait": wait})
        return True

    def _command_amid_questions(self, message: Message, lookup: _Lookup | None) -> bool:
        """Whether `message`, sent while a form's question waits for its sender's answer there, is a
        command rather than the answer: addressed to Squall explicitly (the prefix or a mention; in a
        direct message every line is addressed, so there a bare word is an answer) and naming an
        alias or a built-in. Otherwise `!help` would become the answer, and the form's action would
        run with "help" as its value. The form's own `cancel` stays the form's."""
        if lookup is None or not self.forms.asks(message):
            return False
        text = lookup.text
        if not self._explicit(message) or text.lower() in CANCEL:
            return False
        pending = self._pending(message) is not None
        if text.partition(" ")[0].lower() == FORM_WORD or (pending and text.lower() in _ANSWERS):
            return True
        return self._names_command(lookup) or self._leave(message, text) is not None

    def _leave(self, message: Message, text: str) -> Callable[[], None] | None:
        """How to end `message`'s session when `text` is `quit` or `exit` and its adapter has a session to
        end (the console's `leave`: `squall chat` ends, serve's console stops reading); else None."""
        if text.lower() not in _LEAVE:
            return None
        return getattr(self.adapters.get(message.adapter), "leave", None)

    def _explicit(self, message: Message) -> bool:
        """Whether `message` is addressed to Squall explicitly: the prefix or a mention (in a direct
        message every line is addressed, so there a bare word is no command but an answer)."""
        prefix = self.settings.prefix
        typed = normalise(message.text).strip()
        return (bool(prefix) and typed.startswith(prefix)) or message.mentioned

    def _names_command(self, lookup: _Lookup) -> bool:
        """Whether the text (without its prefix) names an alias, or a built-in no alias claims. The
        match is kept in `lookup`: the command it names is run with it, not matched again."""
        try:
            lookup.matches()
        except AmbiguousCommand:
            return True  # a command, if not a clear one: its answer says so
        except NoMatch:
            word = lookup.text.partition(" ")[0].lower()
            # An alias's words without their values (`!key get`) ask for them: a command too.
            return (word.isalpha() and hasattr(self, f"_builtin_{word}")) or self.forms.names_bare(lookup.text)
        return True

    def _answer(self, message: Message, word: str) -> str:
        """How to say `word` so it reaches Squall where `message` was typed (for a platform without
        buttons): bare in a direct message, else addressed as any command (`_addressed`)."""
        if message.direct:
            return f"`{word}`"
        return f"`{self.settings.prefix}{word}`" if self.settings.prefix else f"`@{self.settings.bot_name} {word}`"

    def _addressed(self, message: Message) -> str | None:
        """The command text if the message is for the bot (prefix, mention or DM), else None. Read as
        the alias grammar reads a message (`normalise`): typographic quotes and odd spaces made plain,
        zero-width spaces and BOMs dropped (`web` U+200B `1`, pasted, is `web1`), also before the prefix."""
        text = normalise(message.text).strip()
        if self.settings.prefix and text.startswith(self.settings.prefix):
            return text[len(self.settings.prefix):].strip()
        if message.mentioned or message.direct:
            for lead in (f"@{self.settings.bot_name}", self.settings.bot_name):
                if text.lower().startswith(lead.lower()):
                    text = text[len(lead):].lstrip(":, ").strip()
                    break
            return text
        return None

    async def _handle(self, message: Message, text: str, lookup: _Lookup | None = None,
                      held: PendingConfirmation | None = None) -> None:
        """Run what `text` (without its prefix) asks; `lookup` holds its alias match if an earlier step
        made it (`_names_command`). `held`: the "did you mean" offer whose `yes` this is (`run_matched`)."""
        clicked = _CLICKED.fullmatch(text) if ":" in text else None  # a button's value has one; commands rarely
        if clicked is not None:  # a confirmation's button: it answers the prompt it sits on, or nothing
            await self._clicked(message, clicked[1] == "yes", clicked[2])
            return
        if message.clicked:
            await self._button(message, text)
            return
        if text.lower() in _ANSWERS and await self._typed_answer(message, text.lower() in _YES):
            return
        if self.forms.names_form(message, text) and await self.forms.command(message, text):
            return
        if not text:
            await self.say(message, f"Yes? Try `{self.settings.prefix}help`.")
            return
        if len(text) > MAX_COMMAND:
            await self.say(message, str(CommandTooLong(text)))
            return
        if lookup is None or lookup.text != text:
            lookup = _Lookup(self.commands, text)
        try:
            matches = lookup.matches()  # several: a `match_multiple` format's fits
        except AmbiguousCommand as exc:
            metrics.count(metrics.chat_commands, message.adapter, "ambiguous")
            listed = "\n".join(f"• {c.display or c.representation} ({c.alias.ref})" for c in exc.candidates)
            await self.say(message, f"That matches more than one command equally well:\n{listed}\nPlease be more "
                                    "specific.")
            return
        except CommandTooComplex as exc:
            # Matching ran past its budget: say so, rather than "I don't know" or a built-in's reading.
            metrics.count(metrics.chat_commands, message.adapter, "unmatched")
            await self.say(message, str(exc))
            return
        except NoMatch as exc:
            # Built-in commands answer only words no pack alias claims.
            word, _, rest = text.partition(" ")
            builtin = getattr(self, f"_builtin_{word.lower()}", None) if word.isalpha() else None
            if builtin is not None:
                metrics.count(metrics.chat_commands, message.adapter, "builtin")
                await builtin(message, rest.strip())
                return
            if (leave := self._leave(message, text)) is not None:
                leave()
                return
            metrics.count(metrics.chat_commands, message.adapter, "unmatched")
            # A format's words without their values (`!echo`): asked for, as a missing parameter is.
            if await self.forms.bare(message, text):
                return
            if text.lower() in _ANSWERS:  # an answer with no prompt of theirs to answer: never "I don't know"
                await self._nothing_pending(message, text.lower())
                return
            await self._unknown(message, text, exc.suggestions)
            return
        await self.run_matched(matches[0], message, text, more=matches[1:], held=held)

    async def run_matched(self, match: Any, message: Message, text: str | None = None,
                          confirmed: bool = False, more: Sequence[AliasMatch] = (),
                          held: PendingConfirmation | None = None) -> None:
        """Authorise, confirm (if the alias asks, unless `confirmed` already) and run a matched command:
        for typed commands (`text` without its prefix) and chat forms (`bot/chat/forms.py`) alike.
        Always authorised here, with the alias as loaded now (`CommandService.authorise`): a confirmed
        or form-filled command may have waited across a pack reload. `more`: the other fits of a
        `match_multiple` format in the same message, each a command of its own (its execution, audit,
        ack and result in the thread), authorised and confirmed together with `match`. `held`: the
        confirmation whose `yes` this is (`_settle`), held again when the database stores nothing of it."""
        try:
            if more:
                fits = await self.commands.authorise_all([match, *more], message, "chat", text)
            else:
                # allowed: no coroutine; refused: `authorise` decides again (nothing awaited between), audits it
                fit = self.commands.allowed(match, message)
                fits = [fit if fit is not None else await self.commands.authorise(match, message, "chat", text)]
        except CommandRefused as exc:
            metrics.count(metrics.chat_commands, message.adapter, "denied")
            await self.say(message, f"Sorry {message.user}, you may not run that: {exc}.")
            return
        if not confirmed:  # a confirmed command was counted when it was typed: one command, not two
            metrics.count(metrics.chat_commands, message.adapter, "matched")
        if fits[0].alias.confirm and not confirmed:
            for fit in fits:  # a `yes` to what cannot run could only be refused: say what is wrong now
                try:
                    self.commands.check(fit, message, "chat")
                except CommandFailed as exc:
                    await self._cannot_run(fit, message, text, exc)
                    return
            await self._ask_to_confirm(fits, message)
            return
        for number, fit in enumerate(fits):
            # Its first fit unstored, none of them ran: all of them wait for the next yes, not tried now.
            if await self._run(fit, message, text, number, confirmed, held if number == 0 else None):
                return

    def _confirm_ttl(self, alias: Alias) -> float:
        """How long `alias`'s confirmation waits: its own `confirm: {ttl: …}`, else `chat.confirm_ttl`."""
        if isinstance(alias.confirm, dict):
            return float(alias.confirm.get("ttl", self.settings.confirm_ttl))
        return self.settings.confirm_ttl

    async def _ask_to_confirm(self, fits: list[AliasMatch], message: Message) -> None:
        """Hold `fits` (one command, or every fit of a `match_multiple` one) for one `yes` of their sender:
        one prompt for them all, since a person has one pending prompt per channel. Not if the message was
        asked before (`_asked_before`): its platform handed it over again."""
        if await self._asked_before(message):
            return
        alias = fits[0].alias
        ttl = self._confirm_ttl(alias)
        pending = PendingConfirmation(fits[0], message, time.time() + ttl, more=tuple(fits[1:]))
        await self._hold(pending)
        shown = [_params(self._masked(alias.action_ref, fit.parameters)) for fit in fits]
        what = (f"{alias.action_ref} with {shown[0]}" if len(fits) == 1 else
                f"{len(fits)} commands: " + "; ".join(f"{alias.action_ref} with {one}" for one in shown))
        await self.say(message, f"About to run {what}. Reply {self._answer(message, 'yes')} within {ttl:g}s to go "
                                f"ahead, or {self._answer(message, 'no')}.",
                       buttons=pending.buttons("Yes", "No"), prompt=True)

    def _pending(self, message: Message) -> PendingConfirmation | None:
        """The confirmation waiting for `message`'s sender in its channel: held under their user id
        (`_place`), so found after a rename, else under their name (one held by name: no id was said).
        Theirs only if they are the person it asks (`same_sender`): by user id where both say one, never
        by the name, which someone else may have taken while it waited."""
        for key in dict.fromkeys((_place(message), (message.adapter, message.channel, message.user))):
            pending = self._confirmations.get(key)
            if pending is not None and same_sender(pending.message, message):
                return pending
        return None

    async def _typed_answer(self, message: Message, yes: bool) -> bool:
        """A typed `yes` or `no`: the answer to the newest prompt asked of its sender here, or (True) the
        refusal of one answering the prompt asked of the person who had their name (renamed into it since),
        which runs nothing; False when neither (no prompt: the word is matched as any command is). True,
        doing nothing, when its platform handed it over again (`_answered_before`)."""
        if await self._answered_before(message):
            return True
        pending = self._pending(message)
        if pending is not None:
            await self._settle(message, pending, yes)
            return True
        asked = next((other.message for other in self._confirmations.values()
                      if (other.message.adapter, other.message.channel, other.message.user)
                      == (message.adapter, message.channel, message.user)), None)
        if asked is None:
            return False
        await self.say(message, _not_yours(asked, message))
        return True

    async def _nothing_pending(self, message: Message, word: str) -> None:
        """A typed `yes` or `no` (`word`) when no prompt waits for its sender here (`_typed_answer` found
        none), nor does an alias or built-in take the word: whose prompt waits here instead, if anyone's
        (the newest still open), or that nothing does. Nothing is run either way."""
        now = time.time()
        lost = self._lost.pop((message.adapter, message.user.lower()), []) if message.direct else []
        for key, _ in lost:
            await sessions.drop(self.engine, key)
        closed = list(dict.fromkeys(_described(pending) for _, pending in lost if now <= pending.expires))
        if closed:
            await self.say(message, f"The prompt to run {' and '.join(closed)} asked here before Squall restarted was "
                                    "closed by the restart (it cannot tell whether you are who had the name "
                                    f"{message.user} then): nothing was run. Send the command again.")
            return
        asked = next((other.message for other in reversed(self._confirmations.values())
                      if (other.message.adapter, other.message.channel) == (message.adapter, message.channel)
                      and now <= other.expires), None)
        if asked is not None:
            await self.say(message, _not_yours(asked, message))
        else:
            await self.say(message, f"Nothing is waiting for your {word} here.")

    async def _settle(self, message: Message, pending: PendingConfirmation, yes: bool) -> None:
        """Take `message`'s sender's answer to `pending` (theirs in that channel, `_pending`): once, restart
        or not. A `yes` runs it as its sender now (`_as_now`), authorised again."""
        key = _place(pending.message)
        del self._confirmations[key]
        await sessions.drop(self.engine, sessions.place_key(_CONFIRM, *key))
        asked = _as_now(pending.message, message)
        expired = time.time() > pending.expires
        _click_taken(message, not expired)  # told before it runs: its adapter marks the prompt meanwhile
        self._note_settled(pending, _EXPIRED if expired else
                           f"you answered it already ({'yes' if yes else 'no'}); this click runs nothing.")
        if expired:
            await self.say(message, "That confirmation has expired; send the command again.")
        elif not yes:
            what = pending.match.alias.action_ref if pending.match is not None else "that"
            await self.say(message, f"OK, not retrying {pending.retry}." if pending.retry is not None
                            else f"OK, not running {what}.")
        elif pending.retry is not None:  # looked up and authorised again now, as a typed `retry` is
            await self._on_execution(asked, pending.retry, "retry", held=pending)
        elif pending.command is not None:
            # A suggestion: the filled text takes the whole command path again (match, authorise,
            # the alias's own confirmation, audit), as if the person had typed it.
            await self._handle(replace(asked, text=pending.command), pending.command, held=pending)
        else:  # authorised again with the alias loaded now (a reload may have disabled it), not asked again
            await self.run_matched(pending.match, asked, confirmed=True, more=pending.more, held=pending)

    async def _clicked(self, message: Message, yes: bool, token: str) -> None:
        """A Yes/No (Run/Cancel) click: it answers the prompt whose token its button carries. A prompt
        replaced by a newer one, answered, expired or asked of someone else runs nothing, and says which
        (`_settled`, while it is remembered): one person's prompts in one channel share one pending slot,
        and an older prompt's Yes must not confirm the newer command."""
        pending = self._pending(message)
        if pending is not None and pending.token == token:
            await self._settle(message, pending, yes)
            return
        _click_taken(message, False)  # the prompt keeps its text: the answer below says why nothing ran
        asked = next((other.message for other in self._confirmations.values() if other.token == token
                      and (other.message.adapter, other.message.channel) == (message.adapter, message.channel)),
                     None)
        settled = self._settled.get(token)
        if asked is None and settled is not None and not same_sender(settled.asked, message):
            asked = settled.asked
        if asked is not None:
            await self.say(message, _not_yours(asked, message))
            return
        newest = f" Your newest prompt here ({_described(pending)}) still waits for its answer." if pending else ""
        if settled is not None:
            await self.say(message, f"That prompt is no longer pending: {settled.reason}{newest}")
        elif pending is not None:  # from before a restart, or long forgotten: which of the three is not known
            await self.say(message, f"That prompt is no longer pending (answered, expired or replaced). Nothing was "
                                    f"run.{newest}")
        else:
            await self.say(message, "That prompt is no longer pending (answered, expired or replaced). Nothing was "
                                    "run; send the command again.")

    def _note_settled(self, pending: PendingConfirmation, reason: str) -> None:
        """Remember why `pending` is no longer pending (`_settled`), forgetting the oldest past `SETTLED_KEPT`."""
        if pending.token is None:
            return
        self._settled.pop(pending.token, None)
        # Who was asked, without what they typed or their platform's payload: a thousand stay small.
        self._settled[pending.token] = _Settled(replace(pending.message, text="", raw=None), reason)
        while len(self._settled) > SETTLED_KEPT:
            del self._settled[next(iter(self._settled))]

    async def _button(self, message: Message, value: str) -> None:
        """Any other click: an Approve/Deny or a form's button does what it says; anything else is the
        answer to a question no longer waiting for one (an inquiry answered elsewhere or expired), and
        runs nothing: neither the person's held confirmation nor an alias named like the value."""
        word, _, rest = value.partition(" ")
        if word.lower() in (APPROVE, DENY):
            await self._decide(message, word.lower(), rest.strip())
        elif not await self.forms.command(message, value):
            await self.say(message, "That question is no longer waiting for an answer (answered, expired or "
                                    "canceled). Nothing was run.")

    # -- confirmations that outlive a restart (`bot/chat/sessions.py`) --------------------------------
    async def _asked_before(self, message: Message) -> bool:
        """Whether `message` is one its platform handed over again (a Mattermost post caught up after a
        restart, a Slack event retried) whose prompt was asked the first time: stored under its key
        (`_prompt_key`), whatever became of it since (pending still, answered, expired or replaced; its
        command run). Asked again, a new prompt would replace the one pending, whose buttons would then
        answer nothing, or ask to run what ran already."""
        key = _prompt_key(message)
        if key is None:
            return False
        db = self.engine.db
        if await db(db.store.outbox_keyed_id, ANSWERS, key) is None:
            return False
        log.info("%s's message came again (delivery %s); it was asked to confirm the first time, not again",
                 message.user, message.delivery)
        return True

    async def _answered_before(self, message: Message) -> bool:
        """Whether `message`, a typed `yes` or `no`, is one its platform handed over again that was taken the
        first time: its key (`answered:<adapter> <delivery>`, an outbox row with nothing to send) is stored as
        it is first taken. Taken again, it would answer whatever its sender was asked since, which they had not
        seen when they typed it."""
        if _delivered(message) is None:
            return False
        stored = await self.outbox.post_keyed(ANSWERS, f"answered:{message.adapter} {message.delivery}", [],
                                              adapter=message.adapter, channel=message.channel)
        if stored is not None:
            return False
        log.info("%s's %r came again (delivery %s); it was taken the first time, not again", message.user,
                 message.text, message.delivery)
        return True

    async def _hold(self, pending: PendingConfirmation) -> None:
        """Hold a command for its sender's `yes` (replacing what they were asked before there), in
        memory and stored: a restart before the answer does not lose it."""
        message = pending.message
        key = _place(message)
        replaced = self._confirmations.get(key)
        if replaced is not None and replaced.token != pending.token:
            self._note_settled(replaced, _EXPIRED if time.time() > replaced.expires else
                               f"your newer command ({_described(pending)}) replaced it. Nothing was run; send the "
                               "command again to run it.")
        self._confirmations[key] = pending
        for stored, _ in self._lost.pop((message.adapter, message.user.lower()), []) if message.direct else []:
            await sessions.drop(self.engine, stored)  # asked anew there: the prompt a restart closed is not told
        await self._keep(pending)

    def _hold_again(self, pending: PendingConfirmation) -> bool:
        """Hold `pending` again in memory after its `yes` stored nothing (`_run`: the database failed, so
        nothing ran): the yes is not lost, and the next one, once the database is back, runs it. Not once it
        expired, nor over a prompt its sender was asked there meanwhile (the newer one stands). Whether held."""
        key = _place(pending.message)
        if time.time() > pending.expires or key in self._confirmations:
            return False
        self._confirmations[key] = pending
        self._settled.pop(pending.token or "", None)  # pending again: its buttons answer it, as before
        return True

    async def _keep_again(self, pending: PendingConfirmation) -> None:
        """Store `pending` again (`_hold_again`), best effort: the database may fail this too, and memory
        holds it meanwhile. Answered while this waited for the database, it is dropped again: a stored
        confirmation answered already would be asked again after a restart, and run twice."""
        await self._keep(pending)
        key = _place(pending.message)
        if self._confirmations.get(key) is not pending:
            await sessions.drop(self.engine, sessions.place_key(_CONFIRM, *key))

    async def _keep(self, pending: PendingConfirmation) -> None:
        """Store `pending` (`bot/chat/sessions.py`, best effort) under where it waits, until it expires."""
        message = pending.message
        key = _place(message)
        state: dict[str, Any] = {"origin": sessions.origin(message), "command": pending.command,
                                 "token": pending.token}
        if pending.match is not None:
            state["match"] = _kept(pending.match)
        if pending.more:
            state["more"] = [_kept(match) for match in pending.more]
        if pending.retry is not None:
            state["retry"] = pending.retry
        await sessions.keep(self.engine, sessions.place_key(_CONFIRM, *key), state, pending.expires,
                            f"the confirmation asked of {message.user}")

    async def close_confirmations(self, adapter: str, user: str) -> int:
        """Forget the confirmation or "did you mean" offer held for `user` in each channel of `adapter` (they
        left that name: its next holder must not say `yes` to it), in memory and stored; how many. Names
        are compared without case, as IRC compares nicks."""
        keys = [key for key, pending in self._confirmations.items()
                if key[0] == adapter and pending.message.user.lower() == user.lower()]
        for key in keys:
            self._note_settled(self._confirmations.pop(key), f"it was closed when {user} left that name. Nothing "
                                                              "was run.")
            await sessions.drop(self.engine, sessions.place_key(_CONFIRM, *key))
        lost = self._lost.pop((adapter, user.lower()), [])  # closed by a restart: nobody is told now
        for stored, _ in lost:
            await sessions.drop(self.engine, stored)
        return len(keys) + len(lost)

    async def restore(self) -> tuple[int, int]:
        """Take up the chat sessions stored before a restart (at the chat's start), read once: open
        forms and question exchanges (`ChatForms.restore`), confirmations and "did you mean" offers.
        How many forms, and how many confirmations. One whose alias or format is gone is dropped and
        logged. One stored under its sender's name whose origin says their user id (stored before ids keyed
        them) is stored again under the id (`_place`), so its renamed sender finds it and it is answered once.
        One asked in a private channel its adapter no longer reaches (`reaches`: an IRC `nick~tag` from
        before the restart, whoever holds the nick now) is not taken up: kept in `_lost` (stored still)
        until a `yes` or `no` from that name there is told so (`_nothing_pending`); logged, not counted."""
        stored = await sessions.stored(self.engine)
        forms = await self.forms.restore([row for row in stored if not row[0].startswith(_CONFIRM)])
        restored = lost = 0
        for key, state, expires in (row for row in stored if row[0].startswith(_CONFIRM)):
            try:
                message = Message(**state["origin"])
                match = self._restored(state["match"]) if state.get("match") is not None else None
                more = tuple(self._restored(kept) for kept in state.get("more") or ())
                pending = PendingConfirmation(match, message, expires, state.get("command"), token=state.get("token"),
                                              more=more, retry=state.get("retry"))
                reaches = getattr(self.adapters.get(message.adapter), "reaches", None)
                if reaches is not None and not reaches(message.channel):
                    self._lost.setdefault((message.adapter, message.user.lower()), []).append((key, pending))
                    lost += 1
                    continue
                if key == sessions.place_key(_CONFIRM, *_place(message)):
                    self._confirmations[_place(message)] = pending
                else:  # stored under the name of a sender whose id it keeps: held and stored under the id
                    await self._hold(pending)
                    await sessions.drop(self.engine, key)
                restored += 1
            except Exception as exc:  # a pack changed under it: the person sends the command again
                log.warning("a confirmation asked before the restart was dropped: %s", exc)
                await sessions.drop(self.engine, key)
        if lost:
            log.info("%d confirmation(s) asked in private messages before the restart were closed by it (it forgot "
                     "who held each nick); each nick is told so at its next yes or no there", lost)
        return forms, restored

    def _restored(self, kept: dict[str, Any]) -> AliasMatch:
        """A match stored with a confirmation (`_kept`), with its alias as loaded now; `LookupError`
        when that alias is gone or disabled, or no longer has the format the command was typed in."""
        alias = self.aliases.get(kept["alias"])
        if alias is None or not alias.enabled:
            state_word = "no longer loaded" if alias is None else "disabled"
            raise LookupError(f'its alias {kept["alias"]} is {state_word}')
        # A typed command's format must still be the alias's (a form's match has none).
        if kept["representation"] and kept["representation"] not in alias.representations:
            raise LookupError(f'{alias.ref} no longer has the format "{kept["representation"]}"')
        return AliasMatch(alias, kept["display"], kept["representation"], kept["parameters"])

    # -- free text -------------------------------------------------------------------------------
    async def _unknown(self, message: Message, text: str, near: list[str]) -> None:
        """Nothing matched: offer the one alias the ranker finds standing out (filled from the
        message, with Run / Cancel), else the display strings near the first word."""
        prefix = self.settings.prefix
        best = self._stand_out(message, text)
        offered = self._runnable(best.filled, best.alias, message) if best is not None and best.filled else None
        if best is not None and best.filled is not None and offered is not None:
            if await self._asked_before(message):
                return
            ttl = self.settings.confirm_ttl
            pending = PendingConfirmation(None, message, time.time() + ttl, best.filled)
            await self._hold(pending)
            # Shown with its secret values masked, as a prompt to confirm shows them: the reply is stored.
            shown_offer = self.commands.masked(offered, best.filled)
            await self.say(message, f"Did you mean `{prefix}{short(shown_offer, 300)}`? ({best.alias.ref}) "
                                    f"Reply {self._answer(message, 'yes')} within {ttl:g}s to run it, or "
                                    f"{self._answer(message, 'no')}.",
                           buttons=pending.buttons("Run", "Cancel"), prompt=True)
            return
        shown = chat_help.displays(best.alias) if best is not None else []
        if best is not None and shown:  # an alias without a display string is kept out of help, and of this
            action = self.engine.registry.actions.get(best.alias.action_ref)
            shown_text = chat_help.masked(shown[0], chat_help.secret_names(action))
            await self.say(message, f"I don't know {code_span(short(text))}. Did you mean `{prefix}{shown_text}`? "
                                    f"`{prefix}help {best.alias.ref}` shows its parameters.")
            return
        allowed = {d for a in chat_help.visible(self.matcher.aliases, self.auth, message)
                   for d in (f.display for f in a.formats) if d}
        near = [s for s in near if s in allowed]
        hint = f" Did you mean: {', '.join(f'`{s}`' for s in near)}?" if near else ""
        await self.say(message, f"I don't know {code_span(short(text))}.{hint} Try `{prefix}help`.")

    def _stand_out(self, message: Message, text: str) -> Ranked | None:
        """The ranker's best alias for `text` if it clears the threshold and the margin over the
        runner-up, and its sender may run it; None otherwise ("I don't know" beats a wrong guess)."""
        ranked = self.ranker.rank(text, self.matcher.aliases, self._secret_names)
        if not ranked:
            return None
        threshold = self.settings.suggest_threshold
        margin = self.settings.suggest_margin
        threshold = self.ranker.threshold if threshold is None else threshold
        margin = self.ranker.margin if margin is None else margin
        best = ranked[0]
        runner_up = ranked[1].score if len(ranked) > 1 else 0.0
        if best.score < threshold or best.score - runner_up < margin:
            return None
        return best if self.auth.check(best.alias, message).allowed else None

    def _runnable(self, command: str, alias: Alias, message: Message) -> AliasMatch | None:
        """`command`'s match if it matches `alias` exactly (and nothing else as well), with parameters that
        would run (`CommandService.check`), else None: an offer whose `yes` could only be refused is no offer."""
        try:
            match = self.commands.match(command)
        except (NoMatch, AmbiguousCommand):
            return None
        if match.alias is not alias:
            return None
        try:
            self.commands.check(match, message, "chat")
        except CommandFailed:
            return None
        return match

    def _secret_names(self, alias: Alias) -> Collection[str]:
        """The secret parameters of `alias`'s action (a suggestion spells none of their defaults)."""
        action = self.engine.registry.actions.get(alias.action_ref)
        return action.secret_names if action is not None else _EVERY_NAME  # which are secret is unknown

    def _masked(self, action_ref: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """`parameters` as a confirmation prompt shows them: secret ones, and the credentials of
        `headers` and `cookies` (`mask_value`), as `********`."""
        action = self.engine.registry.actions.get(action_ref)
        secret = action.secret_names if action is not None else set()
        return {k: (MASK if k in secret else mask_value(k, v)) for k, v in parameters.items()}

    # -- running -------------------------------------------------------------------------------
    async def _run(self, match: Any, message: Message, text: str | None = None, fit: int = 0,
                   confirmed: bool = False, held: PendingConfirmation | None = None) -> bool:
        """Request the command `match` (the `fit`th of its message, `run_matched`) as `message`'s sender.
        `confirmed`: its sender said yes to it; a yes to a command its message had already run is told so.
        `held`: the confirmation of that yes, held again (`_hold_again`) when the database stores nothing of
        the command, so the yes need not be typed with the whole command again: True then, else False."""
        where = self._where(message, fit)
        try:
            accepted = await self.commands.run(match, message, "chat", chat=where)
        except DuplicateDelivery as exc:
            # The platform sent the message again (it missed the acknowledgement, maybe across a restart):
            # its command was stored the first time, with its ack and, in time, its result.
            log.info("%s's command came again (%s); it runs once, not again", message.user, exc)
            if confirmed:  # asked again only if a pack reload added `confirm:` meanwhile: the yes ran nothing
                await self.say(message, f"That command ran already, before it asked to be confirmed (execution "
                                        f"{exc.instance_id}); it runs once, so this yes ran nothing.")
            return False
        except CommandFailed as exc:
            await self._cannot_run(match, message, text, exc)
            return False
        except Exception as exc:
            trouble = database_trouble(exc)
            if trouble is None:
                raise
            # Raised before the request was accepted: its group (request, audit, ack, claim) was not stored.
            return await self._not_stored(message, trouble, held)
        if isinstance(accepted, Held):
            return False  # the approvers were asked in the thread; it runs once they said yes
        if accepted.ack is not None and not accepted.ack_stored:
            # Keyed (execution, "ack"): the result's edit of it finds its row in the database, after
            # a restart as well as in this process.
            reply = Reply(adapter=message.adapter, channel=message.channel, thread=where["thread"], text=accepted.ack,
                          extra=accepted.ack_extra)
            await self.outbox.post_keyed(accepted.execution["id"], "ack", [reply])
        return False

    async def _not_stored(self, message: Message, trouble: str, held: PendingConfirmation | None) -> bool:
        """Tell `message`'s sender that the database stored nothing of their command (`trouble`), so nothing
        ran: with `held`, the confirmation their `yes` answered, held again (`_hold_again`) so that the next
        `yes` runs it rather than the whole command typed again. Whether it was held again."""
        self._log_trouble("a command from %s was not stored, as %s", message.user, trouble)
        if held is None or not self._hold_again(held):
            await self.say_unstored(message, f"Squall could not store that command: {trouble}. Nothing ran.")
            return False
        left = max(1, math.ceil(held.expires - time.time()))
        await self.say_unstored(message, f"Squall could not store that command: {trouble}. Nothing ran; your "
                                         f"confirmation still waits: reply {self._answer(message, 'yes')} again "
                                         f"within {left}s to run it, or {self._answer(message, 'no')}.")
        await self._keep_again(held)
        return True

    async def _cannot_run(self, match: AliasMatch, message: Message, text: str | None, exc: CommandFailed) -> None:
        """Tell `message`'s sender why `match` cannot run (`CommandFailed`): with its form offered when the
        command left out a parameter the form asks, the error saying why."""
        if self.forms.missing(match):
            await self.forms.offer(message, match.alias, f"I can't run that: {exc}", match.parameters, text)
            return
        await self.say(message, f"I can't run that: {exc}")

    def _where(self, message: Message, fit: int = 0) -> dict[str, Any]:
        """Where an execution's replies go: the message's adapter, channel and thread (and who asked).
        With the message's delivery key where its platform may send it again (`Message.delivery`): stored
        with the request (`engine.storage.chat_delivery_key`), it lets the message request each of its
        commands (`fit`, a `match_multiple` format's) once, however often it comes."""
        where = {"adapter": message.adapter, "channel": message.channel, "user": message.user,
                 "thread": self._thread(message), "message_id": message.id}
        if message.delivery:
            where["delivery"] = f"{message.adapter} {message.delivery}" + (f" #{fit}" if fit else "")
        return where

    def completing(self, execution: dict[str, Any]) -> CompletionWrite | None:
        """The result of an execution started from chat, to store with its end (`on_completing`):
        one commit for both, and the result is queued before the end's listeners run."""
        chat = (execution.get("context") or {}).get("chat")
        if not chat or chat.get("adapter") not in self.adapters or execution["status"] not in COMPLETED:
            return None
        if tracing.enabled():
            with _result_span(execution, chat):
                keyed = self._keyed_result(execution, chat)
        else:  # no no-op span's `with` (`_NO_SPAN`)
            keyed = self._keyed_result(execution, chat)
        if keyed is None:
            return None

        def committed(stored: Any) -> None:
            keyed.queue(stored)
            self._stored_with_end.add(execution["id"])

        return CompletionWrite(keyed.store, committed, keyed.one_statement)  # created at the end's time

    def _keyed_result(self, execution: dict[str, Any], chat: dict[str, Any]) -> Keyed | None:
        """`completing`'s result rendered on the loop, ready to store; None when it took too long there."""
        try:
            replies, status = briefly(self._result_replies, execution, chat)
        except TooLongForTheLoop:  # rendered on a render thread by its listener (`on_finished`), stored then
            self._render_elsewhere.add(execution["id"])
            return None
        keyed = self.outbox.keyed(execution["id"], "result", replies, adapter=chat["adapter"],
                                  channel=chat["channel"], status=status)
        assert keyed is not None  # with adapter and channel given, there is always a row to store
        return keyed

    def on_finished(self, execution: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """Post the result of an execution started from chat, in its channel and thread (None, and
        no task, for the others and for results stored with the end: asked first, as most are)."""
        if execution["id"] in self._stored_with_end:
            self._stored_with_end.discard(execution["id"])
            return None
        chat = (execution.get("context") or {}).get("chat")
        if not chat or chat.get("adapter") not in self.adapters:
            return None
        return self._post_result(execution, chat)

    async def _post_result(self, execution: dict[str, Any], chat: dict[str, Any]) -> None:
        """The final result (and the ack's edit to the final status) stored in one transaction,
        keyed by the execution: stored once whether this listener or recovery gets there first.
        The ack's row (kind "ack") is found in that transaction, so a result stored after a restart
        edits the ack too; platforms without edits get no edit. A `paused` or `pending` (inquiry)
        notice is not the result and is posted as it comes."""
        with _result_span(execution, chat):
            await self._store_result(execution, chat)

    def _result_replies(self, execution: dict[str, Any], chat: dict[str, Any]) -> tuple[list[Reply], list[Reply]]:
        """(the result's replies, the ack's edits to the final status) in the command's thread. Every
        chat command's result comes here: each `Reply` made with its fields named, no `where` dict."""
        name = chat.get("alias")
        alias = self.index.aliases.get(name) if name else None
        text, extra = render_result(alias, execution)
        adapter_name, channel, thread = chat["adapter"], chat["channel"], chat.get("thread")
        adapter = self.adapters[adapter_name]
        status = ([Reply(adapter=adapter_name, channel=channel, thread=thread, text=status_line(execution))]
                  if adapter.capabilities.edits else [])
        if text is None:
            return [], status
        text, extra = capped(adapter, text, extra, execution["id"])
        return [Reply(adapter=adapter_name, channel=channel, thread=thread, text=text, extra=extra)], status

    def _capped(self, adapter_name: str, text: str, extra: dict[str, Any],
                execution_id: str) -> tuple[str, dict[str, Any]]:
        """A result as `adapter_name` shows it: the chat side's one cap decision (`replies.capped`:
        IRC's `max_result_lines`) for the adapter of that name."""
        return capped(self.adapters.get(adapter_name), text, extra, execution_id)

    async def _store_result(self, execution: dict[str, Any], chat: dict[str, Any]) -> None:
        elsewhere = execution["id"] in self._render_elsewhere
        self._render_elsewhere.discard(execution["id"])
        replies, status = await rendered(self._result_replies, execution, chat, on_loop=not elsewhere)
        if execution["status"] not in COMPLETED:
            ack = await self.engine.db(self.engine.store.outbox_keyed_id, execution["id"], "ack") if status else None
            for reply in [*(Reply(**{**line.__dict__, "edit": ack}) for line in status if ack is not None), *replies]:
                await self.outbox.post(reply)
            return
        await self.outbox.post_result(execution["id"], chat["adapter"], chat["channel"], replies, status)

    async def post_waiting(self, execution: dict[str, Any], text: str) -> bool:
        """Tell the thread of a chat command that its execution still waits for a worker (once: keyed
        by the execution); False for executions not started from this process's chat."""
        chat = (execution.get("context") or {}).get("chat")
        if not chat or chat.get("adapter") not in self.adapters:
            return False
        reply = Reply(adapter=chat["adapter"], channel=chat["channel"], thread=chat.get("thread"), text=text)
        return bool(await self.outbox.post_keyed(execution["id"], "waiting", [reply]))

    async def post_missing_results(self, since: datetime) -> int:
        """Recovery: store and send the result of every chat execution started since `since` that
        finished with no result stored (the process that finished it died first, or storing it
        failed); returns how many. Safe beside the listener: a result is keyed by its execution.
        Executions that finished before results were keyed (migration 0006) are never looked at,
        so results sent before the upgrade are not sent again."""
        store = self.engine.store
        # Off the event loop: the read spans every execution started in the window.
        rows = await asyncio.to_thread(store.executions_owing_results, list(self.adapters), sorted(COMPLETED), since)
        posted = 0
        for record in rows:
            execution = public(record)
            chat = execution["context"].get("chat") or {}
            if chat.get("adapter") in self.adapters and chat.get("channel"):
                await self._post_result(execution, chat)
                posted += 1
        return posted

    # -- built-in commands ---------------------------------------------------------------------
    async def _builtin_help(self, message: Message, rest: str) -> None:
        """`help`: what the asker may run here, by pack; `help COMMAND`: one alias in full; any
        other word filters the list (literally: a chat user must not hand the bot a regex)."""
        prefix = self.settings.prefix
        mine = chat_help.visible(self.matcher.aliases, self.auth, message)
        if not rest:
            admin = self.auth.is_admin(message)
            hidden = chat_help.hidden_count(self.matcher.aliases, self.auth, message) if admin else None
            withheld = 0 if admin else chat_help.withheld_count(self.matcher.aliases, mine)
            await self._say_blocks(message, chat_help.listing(
                mine, prefix, hidden, self.engine.registry.actions, withheld=withheld,
                admins=chat_help.admin_names(self.auth, message.adapter), adapter=self.adapters.get(message.adapter)))
            return
        named = chat_help.find(mine, rest) or self._typed(rest, mine)
        if len(named) == 1:
            alias = named[0]
            who = chat_help.who_may_run(alias, self.auth)
            await self.say(message, chat_help.details(alias, self.engine.registry.actions.get(alias.action_ref),
                                                      prefix, who))
            return
        refs = {a.ref for a in named} or {e["ref"] for e in self.matcher.help(
            re.escape(rest), allowed=lambda alias: self.auth.check(alias, message).allowed)}
        if not refs:
            await self.say(message, f"No commands match {code_span(short(rest))}.")
            return
        blocks = chat_help.listing([a for a in mine if a.ref in refs], prefix, None,
                                   self.engine.registry.actions)[:-1]
        await self._say_blocks(message, [*blocks, f"`{prefix}help <pack.alias>` shows one in full."])

    def _typed(self, text: str, mine: list[Alias]) -> list[Alias]:
        """The alias a whole command means (`help restart nginx on web1`), if the asker may run it."""
        try:
            alias = self.commands.match(text).alias
        except (NoMatch, AmbiguousCommand):
            return []
        return [alias] if alias in mine else []

    async def _say_blocks(self, message: Message, blocks: list[str]) -> None:
        adapter = self.adapters.get(message.adapter)
        limit = adapter.capabilities.max_length if adapter is not None else 4000
        for text in chat_help.packed(blocks, max(200, limit)):
            await self.say(message, text)

    async def _builtin_executions(self, message: Message, rest: str) -> None:
        """`executions`: the last ten started from this channel (of this adapter), however many others
        were started anywhere since, each with who asked for it and when (`chat_help.execution_line`)."""
        db = self.engine.db
        mine = [public(e) for e in await db(db.store.chat_executions, message.adapter, message.channel, limit=10)]
        if not mine:
            await self.say(message, "No executions from this channel yet.")
            return
        await self.say(message, "\n".join(chat_help.execution_line(e) for e in mine))

    async def _builtin_execution(self, message: Message, rest: str) -> None:
        """`execution <id>`: one execution's result, for those who may cancel or retry it: its output
        may hold what the asker could not have run (a console `!run`'s stdout)."""
        execution = await self._execution_named(message, rest, "execution")
        if execution is None:
            return
        if await self._permitted(message, execution, self._alias_of(execution), "see", f"execution {rest}"):
            text = render_result(None, execution)[0] or status_line(execution)
            await self.say(message, self._capped(message.adapter, text, {}, execution["id"])[0])

    async def _builtin_cancel(self, message: Message, rest: str) -> None:
        await self._on_execution(message, rest, "cancel")

    async def _builtin_retry(self, message: Message, rest: str) -> None:
        await self._on_execution(message, rest, "retry")

    async def _execution_named(self, message: Message, rest: str, command: str) -> dict[str, Any] | None:
        """The execution the first word of `rest` names (an id or a unique start of one), or None
        once the asker is told why not. An ambiguous start is answered without the ids it starts:
        listing them would let anyone walk every execution's id, whoever started it. An id that names
        none is answered in chat's words: the engine's point at the CLI (`squall execution list`), which a
        person in a channel may not have, where the `executions` built-in lists the ones started there."""
        if not rest:
            await self.say(message, f"Which one? `{self.settings.prefix}{command} <id>`")
            return None
        typed = rest.split()[0]
        try:
            return await self.engine.executions.get(typed)
        except AmbiguousExecution:
            await self.say(message, f'"{short(typed, 40)}" starts more than one execution id; type more of it.')
            return None
        except ExecutionNotFound:
            listed = f"{self._answer(message, 'executions')} lists the last ones started here"
            if ID_PREFIX.match(typed):  # an id, or a start of one, that names nothing
                await self.say(message, f'There is no execution "{typed}" (an id, or a unique start of one of 4 '
                                        f"digits or more); {listed}.")
            else:
                await self.say(message, f'"{short(typed, 40)}" is not an execution id: ids are 24 hexadecimal digits '
                                        f"(a unique start of one will do); {listed}.")
            return None

    def _alias_of(self, execution: dict[str, Any]) -> Alias | None:
        """The alias a chat command's execution was started through (None when not from chat)."""
        alias_ref = (execution["context"].get("chat") or {}).get("alias")
        return self.aliases.get(alias_ref) if alias_ref else None

    async def _permitted(self, message: Message, execution: dict[str, Any], alias: Alias | None, verb: str,
                         command: str) -> bool:
        """Whether the asker may `verb` (see, cancel, retry) `execution`, having told them why not and
        audited the refusal (`chat.denied`, with what they typed: `command`): a chat command's alias's
        permission decides; another execution is its own user's and the admins'. Its own user is who
        started it from where (`_started_by`): the IRC nick carol is not the carol of the API or Slack."""
        if alias is not None:
            decision = self.auth.check(alias, message)
            if decision.allowed:
                return True
            said, reason = f"Sorry {message.user}, you may not {verb} that.", decision.reason
        elif self.auth.is_admin(message) or _started_by(execution, message):
            return True
        else:
            said = f"Only admins may {verb} executions not started from chat by you."
            reason = (f"{execution['id']} was not started by {message.user} of {message.adapter}, who is not an "
                      "admin")
        await self.commands.refused(message, "chat", execution["id"], command, reason)
        await self.say(message, said)
        return False

    async def _on_execution(self, message: Message, rest: str, verb: str,
                            held: PendingConfirmation | None = None) -> None:
        """`cancel <id>` / `retry <id>`, for who may run the execution's alias (`_permitted`): audited as
        `chat.execution.cancel` / `chat.execution.rerun` (the new execution, `of` the one re-run) as the
        API's and the web's are, each event in the transaction of its change; a retry that needs approval
        is refused, and audited as refusals are. `held`: the confirmation of the asker's yes to retrying it
        (`_retry`); it is still looked up and authorised again, with the alias as loaded now."""
        execution = await self._execution_named(message, rest, verb)
        if execution is None:
            return
        alias = self._alias_of(execution)
        if not await self._permitted(message, execution, alias, verb, f"{verb} {rest}"):
            return
        try:
            if verb == "cancel":  # its event, stored with the cancel, gains the action and the status written
                done = await self.engine.executions.cancel(
                    execution["id"], self.commands.audit_entry("chat.execution.cancel", message))
                await self.say(message, f"{done['id']} is {done['status']}.")
            else:
                await self._retry(message, execution, alias, held)
        except NeedsApproval as exc:
            await self.commands.refused(message, "chat", execution["id"], f"{verb} {rest}", str(exc))
            await self.say(message, f"{exc.ref} needs approval from {', '.join(exc.policy['groups'])}: "
                                    "type the command again, and its approvers are asked.")
        except (ExecutionNotFound, ExecutionStateError, ParameterError, UnknownAction) as exc:
            await self.say(message, str(exc))

    async def _retry(self, message: Message, execution: dict[str, Any], alias: Alias | None,
                     held: PendingConfirmation | None = None) -> None:
        """A new run of `execution` as `message`'s sender (`CommandService.rerun`), audited. Its result
        goes where `retry` was typed (`_where`), also for an execution started outside chat (the CLI,
        the API): without the chat routing, the result of that retry would be posted nowhere. A `confirm:`
        alias's command asks its retrying sender first, unless `held` (the confirmation they said yes to), as
        the command typed again would: a retry must not be a way around the alias's own confirmation. A yes
        whose re-run the database stored nothing of keeps that confirmation waiting (`_not_stored`), as a
        confirmed command's does: the next yes retries it, once."""
        if alias is not None and alias.confirm and held is None:
            await self._ask_to_confirm_retry(message, execution, alias)
            return
        where = self._where(message)
        context = (self.commands.context(alias, message, "chat", where) if alias
                   else {"user": message.user, "source": "chat", "source_channel": message.channel, "chat": where})
        # Stored with the new execution (`CommandService.rerun`), its detail gaining the action and parameters.
        try:
            again = await self.commands.rerun(execution["id"], None, context,
                                              audit=self.commands.audit_entry("chat.execution.rerun", message,
                                                                              {"of": execution["id"]}))
        except Exception as exc:
            trouble = database_trouble(exc)
            if trouble is None or held is None:
                raise
            # Raised before the re-run was accepted: neither it nor its audit event was stored.
            await self._not_stored(message, trouble, held)
            return
        await self.say(message, f"Retrying as {again['id']}.")

    async def _ask_to_confirm_retry(self, message: Message, execution: dict[str, Any], alias: Alias) -> None:
        """Hold the retry of `execution` (a command of the confirming `alias`) for its sender's `yes`, in the
        one pending slot a typed command's prompt takes. One that needs approval is refused first
        (`NeedsApproval`, as `CommandService.rerun` would): a `yes` to it could only be refused."""
        needed = self.commands.approval_for(execution)
        if needed is not None:
            raise NeedsApproval(*needed)
        if await self._asked_before(message):
            return
        ttl = self._confirm_ttl(alias)
        pending = PendingConfirmation(None, message, time.time() + ttl, retry=execution["id"])
        await self._hold(pending)
        shown = _params(self._masked(execution["action"], execution.get("parameters") or {}))
        await self.say(message, f"About to retry {execution['id']}: {execution['action']} with {shown}. Reply "
                                f"{self._answer(message, 'yes')} within {ttl:g}s to go ahead, or "
                                f"{self._answer(message, 'no')}.",
                       buttons=pending.buttons("Yes", "No"), prompt=True)

    async def _builtin_respond(self, message: Message, rest: str) -> None:
        """`respond <inquiry-id> <json or value>`: answer an inquiry (spec §11.2)."""
        await self.say(message, await self.inquiries.respond_command(message, rest, self.settings.prefix))

    async def _builtin_approve(self, message: Message, rest: str) -> None:
        """`approve <id>` (typed anywhere, or an Approve button): one approver's yes to a held command."""
        await self._decide(message, APPROVE, rest)

    async def _builtin_deny(self, message: Message, rest: str) -> None:
        """`deny <id> <reason>` (or a Deny button): ends a held command at once."""
        await self._decide(message, DENY, rest)

    async def _decide(self, message: Message, verdict: str, rest: str) -> None:
        if self.approvals is None:
            await self.say(message, "Approvals are not handled here.")
            return
        said = await self.approvals.decide(message, verdict, rest)
        if said is not None:
            await self.say(message, said)

    async def _inquiry_answer(self, message: Message, text: str | None, threaded: bool,
                              lookup: _Lookup | None = None) -> bool:
        """A click on a question's button (it answers the inquiry its value names), or a bare answer in
        the thread an inquiry was asked in. Where there are no threads (IRC), the answer in the
        question's channel must be addressed to the bot (`squall: yes`): a bare "ok" in a busy channel
        must not approve anything. A message addressed explicitly (prefix or mention) that names an
        alias or a built-in is that command (`!help` where a free-text question waits), unless it is a
        choice a waiting question offers its sender (`squall: approve` on IRC where approve/deny is
        asked); chatter in the thread is no answer either: both are handled as usual. Whether it names
        a command is asked only where a question waits and the text fits it (`InquiryChat.typed`), and
        the match is kept in `lookup` for `_handle`. Asked only of a message `_may_answer_inquiry` lets through."""
        if message.clicked:
            said = await self.inquiries.clicked(message, threaded)
        else:
            command = functools.partial(self._names_command, lookup) if lookup and self._explicit(message) else None
            said = await self.inquiries.typed(message, message.text.strip() if text is None else text, threaded,
                                              command)
        if said is None:
            return False
        await self.say(message, said)
        return True

    # -- replying ------------------------------------------------------------------------------
    def _thread(self, message: Message) -> str | None:
        adapter = self.adapters.get(message.adapter)
        if adapter is None or not adapter.capabilities.threads or not self.settings.thread_replies:
            return message.thread
        return message.thread or message.id

    async def say(self, message: Message, text: str, *, extra: dict[str, Any] | None = None,
                  buttons: list[dict[str, str]] | None = None, prompt: bool = False) -> int:
        """Answer `message` where it was typed; the outbox id of the answer's first part (0: given before).

        The answers to a message its platform may deliver again (a Mattermost post caught up after a
        restart, a Slack event retried) are keyed by its delivery key and their order, as a command's
        request is (`engine.storage.chat_delivery_key`): a `help` handled twice is answered once. A
        `prompt` (its buttons name the confirmation it holds) is keyed as the message's one prompt
        (`_prompt_key`), which its holder looks for first (`_asked_before`): a second handling of the
        message asks nothing, so the prompt asked the first time is the one that answers."""
        reply = Reply(adapter=message.adapter, channel=message.channel, thread=self._thread(message), text=text,
                      extra=extra or {}, buttons=buttons or [], asker=message.user if buttons else None,
                      asker_id=message.user_id if buttons else None)
        key = _answer_key(message, keyed=not buttons)
        if prompt:
            key = _prompt_key(message)
        if key is None:
            return await self.outbox.post(reply)
        stored = await self.outbox.post_keyed(ANSWERS, key, [reply])
        return stored[0] if stored else 0

    async def tell_failure(self, message: Message, exc: Exception, what: str, doing: str = "handling") -> None:
        """Tell `message`'s sender that `doing` it failed with `exc`, and log it (`what` failed): a
        failing or locked database in one line and through the adapter alone (`say_unstored`), anything
        else with its traceback and the words `_apology` chooses."""
        trouble = database_trouble(exc)
        if trouble is None:
            log.exception("%s failed", what)
            await self.say(message, _apology(exc, doing))
            return
        self._log_trouble("%s failed, as %s", what, trouble)
        await self.say_unstored(message, f"Squall could not do that: {trouble}.")

    async def say_unstored(self, message: Message, text: str) -> None:
        """Tell `message`'s sender that the database took nothing, through the adapter alone
        (`Outbox.send_unstored`): stored first, as every other reply is, this one failed with the
        database, and the person was told nothing at all."""
        taken = _handling.get()
        if taken is not None:  # `handle` answers False: the adapter leaves the message unacknowledged
            taken.stored = False
        reply = Reply(adapter=message.adapter, channel=message.channel, thread=self._thread(message), text=text)
        await self.outbox.send_unstored(reply)

    def _log_trouble(self, what: str, *args: Any) -> None:
        """A message the database failed, in one line without a traceback (its error is the database's, and
        `Database` says the outage once): at WARNING the first of an outage, at INFO the others (a line a
        message, not the traceback and the two further entries each logged during PostgreSQL's outage).
        A lock held elsewhere is no outage: each such message waited `LOCK_WAIT_SECONDS`, and is said."""
        failing = self.engine.db.failing
        since = failing[1] if failing is not None else None
        level = logging.INFO if since is not None and since == self._outage_logged else logging.WARNING
        self._outage_logged = since
        log.log(level, what, *args)


def _may_answer_inquiry(message: Message, text: str | None, threaded: bool) -> bool:
    """Whether `message` may be an inquiry's answer (`Dispatcher._inquiry_answer`): a click, or a message in a
    thread (where there are threads), or one addressed to the bot where there are none (a bare "ok" in a busy
    IRC channel approves nothing; `!command` stays a command). Asked before that coroutine, which most
    messages, in no thread, need not start."""
    if message.clicked:
        return True
    if threaded:
        return bool(message.thread)
    return text is not None and (message.mentioned or message.direct)


def _apology(exc: Exception, doing: str = "handling") -> str:
    """What a person is told when handling their message failed for another reason than a failing or
    locked database (`database_trouble`, said through `say_unstored`): a database error by its kind
    alone, never SQLAlchemy's text, which quotes the statement and its values (a secret parameter among
    them); anything else as it says."""
    if isinstance(exc, sa.exc.DBAPIError):
        return (f"Sorry, something went wrong {doing} that: the database refused it "
                f"({type(exc.orig).__name__}; Squall's log has the details).")
    return f"Sorry, something went wrong {doing} that: {exc}"


def _not_yours(asked: Message, sender: Message) -> str:
    """What `sender` is told who answered a prompt asked of `asked`'s sender, another person: by the name it
    was asked under, or, where that is the sender's own name now (they were renamed into it), by saying so."""
    if asked.user == sender.user:
        return (f"That prompt asks the person who was {asked.user} when it was asked, not you; only they can "
                "answer it. Nothing was run.")
    return f"That prompt asks {asked.user}, not you, {sender.user}; only {asked.user} can answer it. Nothing was run."


#: Why a prompt no longer pending ended, when its time ran out (`_Settled.reason`).
_EXPIRED = "it expired before it was answered. Nothing was run; send the command again."


def _described(pending: PendingConfirmation) -> str:
    """What `pending` holds, as a click on an older prompt names it: the action, the retry or the offer."""
    if pending.match is not None:
        return pending.match.alias.action_ref
    return f"`retry {pending.retry}`" if pending.retry is not None else code_span(short(pending.command or ""))


def _started_by(execution: dict[str, Any], message: Message) -> bool:
    """Whether `message`'s sender started `execution`: its context's user, from the chat adapter its
    context names (`context.chat.adapter`; none outside chat: the API, the CLI, the web). By user and
    adapter (`same_person`): the IRC nick carol owns only what it started on IRC, since anyone may take
    that nick, and never what carol started from the API, the CLI, the web or Slack."""
    context = execution.get("context") or {}
    started_on = (context.get("chat") or {}).get("adapter")
    return same_person(message.adapter, message.user, started_on, context.get("user"))


def _kept(match: AliasMatch) -> dict[str, Any]:
    """A match as a stored confirmation keeps it (`Dispatcher._restored` reads it back)."""
    return {"alias": match.alias.ref, "display": match.display, "representation": match.representation,
            "parameters": match.parameters}


def _params(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(str(v), 60)}" for k, v in parameters.items()) or "no parameters"


def _result_span(execution: dict[str, Any], chat: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """The trace span of storing a chat command's result, a child of the command's trace. With tracing
    off (the default), the one no-op, without looking for the command's trace in its context."""
    if not tracing.enabled():
        return _NO_SPAN
    return tracing.span("chat.result", tracing.parent_of(execution.get("context")), execution_id=execution["id"],
                        adapter=chat["adapter"], channel=chat["channel"])
