"""Forms in chat (issue 20): `!run-form ACTION_OR_ALIAS` asks for an alias's parameters with a form
built from the action's schema (`bot/forms.py`), and sends what comes back through the one command
path, like a typed command.

Where the platform draws forms (an adapter with `open_form`: Slack modals, Mattermost dialogs) the
form opens on the interaction that allows it (`Message.trigger`: a slash command or a button click);
a typed `!run-form` gets an "Open form" button, whose click is that interaction. Elsewhere (IRC, the
console, loopback) the bot asks for the values one question at a time, in a private message where
the adapter has one (`private_channel`), and each answer is checked as the form would check it; a long
wrong value is quoted cut short in what is said back (`bot.forms.checked`), as the web's forms quote it.

What a form opened for is kept here (by a random `state`), never taken from the platform's payload:
a submission cannot name another channel or alias, and only the person it was opened for may send
it (Mattermost shows the state to the client, which could replay it as someone else): that person by
their platform user id where Slack and Mattermost say it, not by a name they may be renamed out of
(`same_sender`), and a question in chat is answered by them alone alike. A submission
runs as a command of its sender, in the channel the form came from: authorised, confirmed and
audited by the dispatcher as typed commands are. Values are data (the match has no format, so
nothing counts as the alias's own default text and everything passes `check_overrides`); secrets
appear in no reply and no audit. A form its person closes unsent (Slack's `view_closed`, Mattermost's
cancelled dialog: the adapters open forms so that the platform says so) is forgotten, and they are told
that nothing was run (`_cancelled`).

Open forms and question exchanges are also stored (`chat_sessions`, encrypted with the datastore
key, as answers may be secrets), so a restart does not close them: a modal opened before it can
still be sent, and the questions go on where they were. Not in a private channel its adapter no
longer reaches (`reaches`: IRC's `nick~tag`, whose tag a restart forgets, so nobody can tell whether
the nick's holder now is the person asked): that exchange is closed, and the nick's next private
message is no answer and runs nothing, but is told so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from adapters.base import Adapter, DeliveryError, Form, FormField, FormSubmission, Message
from adapters.markup import code_span
from aliases import Alias, AliasMatch, AliasMatcher, AmbiguousCommand, NoMatch
from aliases.grammar import PLACEHOLDER, normalise
from bot.chat import sessions
from bot.chat.auth import Authorizer, same_sender
from bot.chat.commands import CommandRefused, CommandService
from bot.chat.help import closed_parameters, masked, secret_names, visible
from bot.forms import Field, action_fields, checked, parse, short

if TYPE_CHECKING:
    from engine.core import Engine

log = logging.getLogger(__name__)


class Chat(Protocol):
    """What forms use of the dispatcher (which owns them; named by shape, so this module does not
    import it): its adapters, aliases and permissions, its replies and its command path."""

    engine: Engine
    adapters: dict[str, Adapter]
    auth: Authorizer
    commands: CommandService

    @property
    def matcher(self) -> AliasMatcher: ...

    @property
    def aliases(self) -> dict[str, Alias]: ...

    @property
    def settings(self) -> Any: ...

    async def say(self, message: Message, text: str, *, extra: dict[str, Any] | None = None,
                  buttons: list[dict[str, str]] | None = None) -> int: ...

    async def run_matched(self, match: Any, message: Message, text: str | None = None) -> None: ...

#: The built-in command's word (not a valid Python name, so not a `_builtin_` method).
WORD = "run-form"
#: How long an opened form stays answerable (Slack keeps a modal's view for as long).
FORM_TTL = 1800.0
#: How long a question waits for its answer.
ASK_TTL = 600.0
CANCEL = {"cancel", "stop", "abort"}
SKIP = "-"
#: The longest typed command an "Open form" button carries (Slack takes 2,000 characters in a value).
MAX_BUTTON_COMMAND = 1000
#: How many commands `run-form` alone offers as buttons.
PICK = 10
EXPIRED = "This form is no longer open (it expired or was sent already); open it again."


@dataclass
class _Opened:
    """A form handed to a platform: which alias (its ref: the alias is looked up again when the form
    comes back, as a pack reload may have disabled or removed it), and where it came from (channel,
    thread). `expires` is wall-clock time (`time.time()`): it must mean the same after a restart."""

    ref: str
    origin: Message
    expires: float


@dataclass
class _Asking:
    """A question-by-question form: the alias's ref (looked up again at each answer), the fields still
    to ask and the answers so far (text, as a form sends)."""

    ref: str
    origin: Message
    fields: list[Field]
    answers: dict[str, str]
    expires: float
    #: Values the typed command already gave (a form offered for a missing parameter asks only the rest).
    given: dict[str, Any]


@dataclass(frozen=True)
class _Lost:
    """A question exchange stored before a restart in a private channel its adapter no longer reaches
    (`reaches`: IRC's `nick~tag`, whose tag the restart forgot): its stored key, its alias's ref, and
    until when it would have waited. Its nick is told at its next private message (`ChatForms.answer`)."""

    key: str
    ref: str
    expires: float


#: Characters that make a format's literal text a pattern rather than words a person types as shown.
_PATTERN_SIGNS = frozenset("\\^$|?*+()[]{}")


@dataclass(frozen=True)
class _Bare:
    """A typed command that is a format's words without their values (`key get` of `key get {{name}}`):
    the alias, the format as help shows it, and the required placeholders the command left out."""

    alias: Alias
    shown: str
    missing: tuple[str, ...]


#: Seconds a submitted platform form waits for its command to be stored before it is answered anyway:
#: Slack drops a `view_submission` not answered within 3 s (and shows the person an error).
ANSWER_WITHIN = 2.0
#: Stored sessions' keys: a platform form by its state, a question exchange by where it is asked.
_FORM, _ASK = "form:", "ask:"


def _ask_key(adapter: str, channel: str, user: str) -> str:
    return sessions.place_key(_ASK, adapter, channel, user)


class ChatForms:
    """The dispatcher's forms: the ones opened on platforms (by state) and the questions being asked
    (by adapter, channel and person). Both are kept in memory and stored as they change, and
    `restore` takes them up again after a restart."""

    def __init__(self, dispatcher: Chat) -> None:
        self.dispatcher = dispatcher
        self._opened: dict[str, _Opened] = {}
        #: Submitted forms' commands still running (held: a task nobody references may be collected).
        self._running: set[asyncio.Future[None]] = set()
        self._asking: dict[tuple[str, str, str], _Asking] = {}
        #: (adapter, name in lower case) → the exchanges a restart closed for that name (`restore`).
        self._lost: dict[tuple[str, str], list[_Lost]] = {}
        for adapter in dispatcher.adapters.values():
            if hasattr(adapter, "open_form"):
                adapter.on_form = self.submit  # type: ignore[attr-defined]
            if hasattr(adapter, "on_home"):
                adapter.on_home = self.home  # type: ignore[attr-defined]

    # -- entry points from the dispatcher ----------------------------------------------------------
    async def answer(self, message: Message, text: str | None) -> bool:
        """An answer to a question this person is being asked here (addressed to the bot or not: the
        exchange is a conversation); False when none is asked."""
        asking = self._asking.get((message.adapter, message.channel, message.user))
        if asking is None or time.time() > asking.expires or not same_sender(asking.origin, message):
            if not (message.direct and self._lost):  # no form a restart closed: `_closed_by_restart` finds none
                return False
            return await self._closed_by_restart(message)
        await self._answer(message, asking, message.text.strip() if text is None else text)
        return True

    def may_answer(self, message: Message) -> bool:
        """Whether `answer` may take `message`: a question was asked of its sender here (maybe expired), or a
        private message may be told of a form a restart closed. Asked before `answer`'s coroutine, which
        most messages (nobody is being asked) need not start."""
        return (message.direct and bool(self._lost)) or (message.adapter, message.channel, message.user) in self._asking

    def asks(self, message: Message) -> bool:
        """Whether a question of a form waits for `message`'s sender's answer where it was sent, or, in
        a private message, one a restart closed for their name (`_lost`), which their answer is told of."""
        asking = self._asking.get((message.adapter, message.channel, message.user))
        if asking is not None and time.time() <= asking.expires and same_sender(asking.origin, message):
            return True
        return message.direct and any(time.time() <= lost.expires
                                      for lost in self._lost.get((message.adapter, message.user.lower()), ()))

    async def _closed_by_restart(self, message: Message) -> bool:
        """A private message from a name whose question exchange a restart closed (`_lost`): it is no answer
        and runs nothing; its sender is told the form was closed and how to open it again, once. Whoever
        holds the name now is told, without a value given so far: after a restart nobody can tell
        whether they are the person who was asked (`adapters/irc.py`, `reaches`). False otherwise."""
        lost = self._lost.pop((message.adapter, message.user.lower()), []) if message.direct else []
        for item in lost:
            await self._drop(item.key)
        refs = list(dict.fromkeys(item.ref for item in lost if time.time() <= item.expires))
        if not refs:
            return False
        prefix = self.dispatcher.settings.prefix
        again = " or ".join(f"`{prefix}{WORD} {ref}`" for ref in refs)
        await self.dispatcher.say(message, f"The form {' and '.join(refs)} asked here before Squall restarted was "
                                           "closed by the restart (it cannot tell whether you are who had the name "
                                           f"{message.user} then): nothing you sent was taken as its answers, and "
                                           f"nothing was run. Send {again} to fill it in again.")
        return True

    @staticmethod
    def names_form(message: Message, text: str) -> bool:
        """Whether `text` is a `run-form` command (`command` answers it), or an empty slash command with
        its trigger: asked before `command`'s coroutine, which every other command need not start."""
        return (not text and bool(message.trigger)) or text.partition(" ")[0].lower() == WORD

    async def command(self, message: Message, text: str) -> bool:
        """`run-form NAME`: offer its form; `run-form` alone, or an empty slash command (which comes with
        a trigger to open a form), offers a pick of the commands the sender may run there. False for
        any other command."""
        if not self.names_form(message, text):
            return False
        rest = text.partition(" ")[2]
        if not rest.strip():
            await self._pick(message)
            return True
        found = self._resolve(rest.strip(), message)
        if isinstance(found, str):
            await self.dispatcher.say(message, found)
        else:
            alias, given = found
            await self.offer(message, alias, given=given)
        return True

    async def bare(self, message: Message, text: str) -> bool:
        """A command typed without its values (`!echo`, `!key get`: the words of a format the sender
        may run, before its first placeholder or all of them) asks for the values as a missing
        parameter does (`offer`). Where no form can ask them (a value no form asks, such as an
        immutable parameter), or several aliases have those words, it says what the command needs.
        False when `text` is no such command: "I don't know" answers it."""
        dispatcher = self.dispatcher
        fits = self._bare_fits(visible(dispatcher.matcher.aliases, dispatcher.auth, message), text)
        if not fits:
            return False
        prefix = dispatcher.settings.prefix
        first = fits[0]
        if len({fit.alias.ref for fit in fits}) > 1:
            listed = ", ".join(f"`{prefix}{fit.shown}` ({fit.alias.ref})" for fit in fits)
            await dispatcher.say(message, f"{code_span(prefix + short(text))} needs more: one of {listed}.")
            return True
        needs = f"{code_span(prefix + short(text))} needs {', '.join(first.missing)}: `{prefix}{first.shown}`"
        if set(first.missing) <= {f.name for f in self.fields(first.alias)}:
            await self.offer(message, first.alias, needs)
        else:
            await dispatcher.say(message, needs)
        return True

    def names_bare(self, text: str) -> bool:
        """Whether `text` is the bare words of an enabled alias's format, whoever may run it: a command
        (`bare` answers it), never the answer to a question waiting where it was typed."""
        return bool(self._bare_fits([a for a in self.dispatcher.matcher.aliases if a.enabled], text))

    def _bare_fits(self, aliases: Sequence[Alias], text: str) -> list[_Bare]:
        """The formats `text` is the bare words of, among `aliases`."""
        dispatcher = self.dispatcher
        typed = text.split()
        fits = []
        for alias in aliases:
            secrets_of = secret_names(dispatcher.engine.registry.actions.get(alias.action_ref))
            for item in alias.formats:
                for representation in item.representations:
                    missing = _bare_missing(representation, tuple(typed))
                    if missing:
                        fits.append(_Bare(alias, masked(item.display or representation, secrets_of), missing))
                        break
        return fits

    async def offer(self, message: Message, alias: Alias, explanation: str = "",
                    given: dict[str, Any] | None = None, command: str | None = None) -> None:
        """Open `alias`'s form for `message`'s sender: the platform's form when the message came with a
        trigger, an "Open form" button when it did not, questions where there are no forms.
        `explanation` (why a form is offered, e.g. a missing parameter) leads the offer; `given` are
        the values a typed command had, which the questions do not ask again and the form starts
        with; `command` is that command's text, which the button carries to fill the form in too
        (unless it holds a secret: a button's value is in the platform's copy of the message)."""
        lead = f"{explanation}\n" if explanation else ""
        adapter = self.dispatcher.adapters.get(message.adapter)
        # A platform's form needs the platform to reach Squall, as its buttons do (Mattermost: actions_url).
        if adapter is None or not hasattr(adapter, "open_form") or not adapter.capabilities.buttons:
            await self._ask_first(message, alias, lead, given or {})
            return
        if not message.trigger:
            action = self.dispatcher.engine.registry.actions.get(alias.action_ref)
            secret = bool(action is not None and action.secret_names & set(given or {}))
            typed = command if command and not secret and len(command) <= MAX_BUTTON_COMMAND else None
            await self.dispatcher.say(message, f"{lead}Fill in the parameters of {alias.ref} in a form:",
                                      buttons=[_button(alias, "Open form", typed)])
            return
        state = secrets.token_urlsafe(16)
        self._forget_expired()
        opened = self._opened[state] = _Opened(alias.ref, message, time.time() + FORM_TTL)
        await self._keep(_FORM + state, opened)  # before the platform has it: a quick submission finds it
        fields = tuple(_form_field(f, (given or {}).get(f.name)) for f in self.fields(alias))
        form = Form(title=_title(alias), fields=fields, state=state)
        try:
            await adapter.open_form(message.trigger, form)
        except DeliveryError as exc:  # a trigger lives seconds: a slow click or a retry outlives it
            del self._opened[state]
            await self._drop(_FORM + state)
            await self.dispatcher.say(message, f"I could not open the form ({exc}); try again.",
                                      buttons=[_button(alias, "Open form")])

    def _allowed(self, message: Message) -> list[Alias]:
        """The commands `message`'s sender may run where it was sent: `chat.favourites` first, in their
        order (an alias ref, or an action ref for its first alias), then the rest by ref."""
        dispatcher = self.dispatcher
        allowed = sorted((a for a in visible(dispatcher.matcher.aliases, dispatcher.auth, message) if a.enabled),
                         key=lambda a: a.ref)
        favourites = dispatcher.settings.favourites
        rank = {ref: index for index, ref in reversed(list(enumerate(favourites)))}

        def place(alias: Alias) -> tuple[int, bool]:  # an alias named outranks another of a named action
            own, of_action = rank.get(alias.ref, len(rank)), rank.get(alias.action_ref, len(rank))
            return min(own, of_action), own > of_action

        return sorted(allowed, key=place)

    async def home(self, message: Message) -> list[dict[str, str]]:
        """The buttons of `message`'s sender's home on the platform (Slack's App Home tab)."""
        return [_button(alias) for alias in self._allowed(message)]

    async def _pick(self, message: Message) -> None:
        """The commands `message`'s sender may run here, as buttons that open their forms (the first
        `PICK`; the rest by name)."""
        dispatcher = self.dispatcher
        allowed = self._allowed(message)
        prefix = dispatcher.settings.prefix
        if not allowed:
            await dispatcher.say(message, f"There is nothing you may run here, {message.user}.")
            return
        rest = len(allowed) - PICK
        more = f"; or `{prefix}{WORD} <name>` for the {rest} other(s) (`{prefix}help` lists them)" if rest > 0 else ""
        await dispatcher.say(message, f"Which command? Pick one to fill in its form{more}.",
                             buttons=[_button(alias) for alias in allowed[:PICK]])

    async def submit(self, submission: FormSubmission) -> dict[str, str]:
        """A platform form sent back: a message per wrong field (the form stays open to fix them), or
        {} once the command took the dispatcher's path. An unknown state is an error on the form. A
        closed form (`cancelled`) is `_cancelled`."""
        opened = self._opened.get(submission.state)
        if opened is None or time.time() > opened.expires or opened.origin.adapter != submission.adapter:
            return {} if submission.cancelled else {"": EXPIRED}  # closed, sent or expired: nothing is open
        # The sender as they are now: their name, groups and user id (never the opener's id: a namesake
        # would send the form with the rights granted to it).
        sender = replace(opened.origin, user=submission.user, user_id=submission.user_id,
                         groups=list(submission.groups), trigger=None)
        if not same_sender(opened.origin, sender):  # a form is its opener's (a client may see the state)
            return {"": f"This form was opened for {opened.origin.user}; open your own."}
        if submission.cancelled:
            await self._cancelled(submission.state, opened, sender)
            return {}
        alias = self.dispatcher.aliases.get(opened.ref)
        if alias is None or not alias.enabled:  # a reload disabled or removed it: the form is closed, and says why
            del self._opened[submission.state]
            await self._drop(_FORM + submission.state)
            return {"": str(await self._current(opened.ref, sender))}
        # The sender's permission is checked (and a refusal said in the form's channel) by `run_matched`.
        # A long wrong value is quoted cut short (`checked`), as the web's forms quote it.
        fields = self.fields(alias)
        parsed = checked(fields, _as_submitted(fields, submission.values))
        if not parsed.ok:
            return parsed.errors
        del self._opened[submission.state]
        run = asyncio.ensure_future(self._submitted(submission.state, alias, sender, parsed.values))
        self._running.add(run)
        run.add_done_callback(self._running.discard)
        # The form is answered once its command is stored (a crash then loses nothing that was accepted),
        # or after ANSWER_WITHIN if that takes longer: the platform would drop the submission instead.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run), ANSWER_WITHIN)
        return {}

    async def _cancelled(self, state: str, opened: _Opened, sender: Message) -> None:
        """Its person closed the form without sending it: it is forgotten (in memory and stored, so a
        restart does not take it up again) and they are told, where the form came from, that nothing
        ran, as a `cancel` of the questions is; otherwise the platform closes it without a word and
        they may wonder whether the command ran."""
        del self._opened[state]
        try:
            await self._drop(_FORM + state)
            await self.dispatcher.say(sender, f"OK, not running {opened.ref}: the form was closed, so nothing was run.")
        except Exception as exc:  # as `_submitted`: the platform's callback is no place to fail
            await self.dispatcher.tell_failure(sender, exc, f"closing the form of {opened.ref} for {sender.user}",
                                               "closing")

    async def _submitted(self, state: str, alias: Alias, sender: Message, values: dict[str, Any]) -> None:
        """A valid form's command, run as a typed one; what goes wrong is said in its channel (the form
        may be closed already)."""
        try:
            await self._drop(_FORM + state)
            await self._run(alias, sender, values)
        except Exception as exc:
            await self.dispatcher.tell_failure(sender, exc, f"running the form of {alias.ref} for {sender.user}",
                                               "running")

    def missing(self, match: AliasMatch) -> bool:
        """Whether a typed command left out a parameter its form would ask for (then the form is offered)."""
        return any(f.required and f.name not in match.parameters for f in self.fields(match.alias))

    def fields(self, alias: Alias) -> list[Field]:
        """What a form for `alias` asks: the action's parameters, without the alias's immutable ones and
        the runner parameters no chat command may set (those neither opened by `allow_overrides` nor
        named in a format, as `run {{cmd}}` names core.local's `cmd`)."""
        action = self.dispatcher.engine.registry.actions.get(alias.action_ref)
        if action is None:
            return []
        closed = closed_parameters(alias, action)
        return [f for f in action_fields(action) if f.name not in closed]

    # -- the question exchange ---------------------------------------------------------------------
    async def _ask_first(self, message: Message, alias: Alias, lead: str, given: dict[str, Any]) -> None:
        fields = [f for f in self.fields(alias) if f.name not in given]
        asked = [f for f in fields if f.required] or fields
        if not asked:
            await self._run(alias, message, given)
            return
        private = getattr(self.dispatcher.adapters.get(message.adapter), "private_channel", None)
        where = replace(message, channel=private(message.user), thread=None, direct=True) if private else message
        secret = next((f.name for f in asked if f.kind == "secret"), None)
        if secret is not None and not where.direct:  # what a person types there, everyone there reads
            await self.dispatcher.say(message, f"{lead}{alias.ref} needs the secret {secret}, which I will not ask "
                                               "for in a channel others read: send me the command in a direct "
                                               "message, or run it from the web UI's form.")
            return
        if where is not message:
            await self.dispatcher.say(message, f"{lead}I'll ask for the parameters of {alias.ref} in a private "
                                               "message.")
            lead = ""
        asking = _Asking(alias.ref, message, asked, {}, time.time() + ASK_TTL, given)
        self._asking[(where.adapter, where.channel, where.user)] = asking
        for lost in self._lost.pop((where.adapter, where.user.lower()), []):  # asked anew: nothing to tell
            await self._drop(lost.key)
        await self._keep(_ask_key(where.adapter, where.channel, where.user), asking)
        await self.dispatcher.say(where, f"{lead}Running {alias.ref}: {len(asked)} question(s); reply `cancel` to "
                                         f"stop.\n{_question(asked[0])}")

    async def _answer(self, message: Message, asking: _Asking, text: str) -> None:
        key = (message.adapter, message.channel, message.user)
        if text.strip().lower() in CANCEL:
            del self._asking[key]
            await self._drop(_ask_key(*key))
            await self.dispatcher.say(message, f"OK, not running {asking.ref}.")
            return
        alias = await self._current(asking.ref, asking.origin)
        if isinstance(alias, str):  # a reload disabled or removed the alias, or took the person's permission
            del self._asking[key]
            await self._drop(_ask_key(*key))
            await self.dispatcher.say(message, f"{alias} The form is closed; nothing was run.")
            return
        item = asking.fields[len(asking.answers)]
        answer = "" if text.strip() == SKIP and not item.required else text
        # a long value quoted cut short
        error = checked([item], _as_submitted([item], {item.name: answer})).errors.get(item.name)
        if error is not None:
            await self.dispatcher.say(message, f"{error}\n{_question(item)}")
            return
        asking.answers[item.name] = answer
        asking.expires = time.time() + ASK_TTL
        if len(asking.answers) < len(asking.fields):
            await self._keep(_ask_key(*key), asking)
            await self.dispatcher.say(message, _question(asking.fields[len(asking.answers)]))
            return
        del self._asking[key]
        await self._drop(_ask_key(*key))
        await self._run(alias, asking.origin,
                        {**asking.given, **parse(asking.fields, _as_submitted(asking.fields, asking.answers)).values})

    # -- running -----------------------------------------------------------------------------------
    async def _run(self, alias: Alias, sender: Message, values: dict[str, Any]) -> None:
        """The values as a command of `sender` in the form's channel: no format, so every value is a
        key=value pair to `check_overrides` and none is the format's own (rendered) default text.
        `run_matched` authorises it again, with the alias as loaded then."""
        match = AliasMatch(alias=alias, display=None, representation="", parameters=values)
        await self.dispatcher.run_matched(match, replace(sender, text=f"{WORD} {alias.ref}"))

    def _resolve(self, name: str, message: Message) -> tuple[Alias, dict[str, Any]] | str:
        """The alias `name` means (its ref, its name, the ref of its action, or a whole command such as
        `deploy web1`, whose values fill the form in), among those the sender may run here, with the
        form's values; or why there is none, in words."""
        prefix = self.dispatcher.settings.prefix
        name = name.removeprefix(prefix).strip() if prefix else name  # a shortcut on `!deploy web1`
        if not name:
            return f"Which one? `{prefix}{WORD} <action or alias>`"
        aliases = [a for a in self.dispatcher.matcher.aliases if a.enabled]
        named = ([a for a in aliases if a.ref == name] or [a for a in aliases if a.name == name]
                 or [a for a in aliases if a.action_ref == name])
        given: dict[str, Any] = {}
        if not named:
            try:
                match = self.dispatcher.commands.match(name)
            except (NoMatch, AmbiguousCommand):
                return f"No alias runs `{name}`: chat runs actions through their aliases. Try `{prefix}help`."
            named, given = [match.alias], match.parameters
        decisions = [(alias, self.dispatcher.auth.check(alias, message)) for alias in named]
        allowed = [alias for alias, decision in decisions if decision.allowed]
        if not allowed:
            return f"Sorry {message.user}, you may not run {named[0].ref}: {decisions[0][1].reason}."
        return allowed[0], given

    async def _current(self, ref: str, sender: Message) -> Alias | str:
        """The alias `ref` as loaded now if `sender` may run it (an open form holds only the ref), else
        why not, as a newly typed command is refused (audited as `chat.denied`)."""
        try:
            return await self.dispatcher.commands.allowed_alias(ref, sender, "chat", f"{WORD} {ref}")
        except CommandRefused as exc:
            return f"Sorry {sender.user}, you may not run that: {exc}."

    async def close(self, adapter: str, user: str) -> int:
        """Close every form and question exchange held for `user` on `adapter` (they left that name: its
        next holder must not answer them), in memory and stored, saying nothing; how many. Names are
        compared without case, as IRC compares nicks."""
        name = user.lower()
        asking = [key for key in self._asking if key[0] == adapter and key[2].lower() == name]
        for key in asking:
            del self._asking[key]
            await self._drop(_ask_key(*key))
        opened = [state for state, form in self._opened.items()
                  if form.origin.adapter == adapter and form.origin.user.lower() == name]
        for state in opened:
            del self._opened[state]
            await self._drop(_FORM + state)
        lost = self._lost.pop((adapter, name), [])  # closed by a restart: nobody is told now
        for item in lost:
            await self._drop(item.key)
        return len(asking) + len(opened) + len(lost)

    def _forget_expired(self) -> None:
        """Expired forms leave memory here; their rows go at the next start (`restore`)."""
        now = time.time()
        for state in [s for s, opened in self._opened.items() if opened.expires < now]:
            del self._opened[state]

    # -- sessions that outlive a restart (`bot/chat/sessions.py`) --------------------------------------
    async def _keep(self, key: str, session: _Opened | _Asking) -> None:
        """Store a session as it is now."""
        state: dict[str, Any] = {"alias": session.ref, "origin": sessions.origin(session.origin)}
        if isinstance(session, _Asking):
            state.update(fields=[f.name for f in session.fields], answers=session.answers, given=session.given)
        await sessions.keep(self.dispatcher.engine, key, state, session.expires,
                            f"the {session.ref} form of {session.origin.user}")

    async def _drop(self, key: str) -> None:
        await sessions.drop(self.dispatcher.engine, key)

    async def restore(self, stored: list[tuple[str, dict[str, Any], float]]) -> int:
        """Take up the forms and question exchanges among the sessions `stored` before a restart
        (`sessions.stored`, read by the dispatcher at the chat's start); how many. One whose alias
        is gone or disabled is dropped and logged (and every answer looks the alias up again). One asked
        in a private channel its adapter no longer reaches (`reaches`: an IRC `nick~tag` from before the
        restart) is not taken up: kept as `_lost` (stored still) until its nick writes privately again,
        which is told, and logged, not counted."""
        restored = lost = 0
        for key, state, expires in stored:
            try:
                alias = self.dispatcher.aliases.get(state["alias"])
                if alias is None or not alias.enabled:
                    state_word = "no longer loaded" if alias is None else "disabled"
                    raise LookupError(f'its alias {state["alias"]} is {state_word}')
                origin = Message(**state["origin"])
                if key.startswith(_FORM):
                    self._opened[key.removeprefix(_FORM)] = _Opened(alias.ref, origin, expires)
                else:
                    named = {f.name: f for f in self.fields(alias)}
                    fields = [named[name] for name in state["fields"]]
                    adapter, channel, user = json.loads(key.removeprefix(_ASK))
                    reaches = getattr(self.dispatcher.adapters.get(adapter), "reaches", None)
                    if reaches is not None and not reaches(channel):
                        self._lost.setdefault((adapter, user.lower()), []).append(_Lost(key, alias.ref, expires))
                        lost += 1
                        continue
                    self._asking[adapter, channel, user] = _Asking(alias.ref, origin, fields, state["answers"],
                                                                   expires, state["given"])
                restored += 1
            except Exception as exc:  # a pack changed under it: the person opens it again
                log.warning("a chat form stored before the restart was dropped: %s", exc)
                await self._drop(key)
        if lost:
            log.info("%d chat form(s) asked in private messages before the restart were closed by it (it forgot who "
                     "held each nick); each nick is told so when it writes privately again", lost)
        return restored


def _bare_missing(representation: str, typed: tuple[str, ...]) -> tuple[str, ...]:
    """The required placeholders of `representation` that `typed` (a command's words) leaves out when
    it is the format's words before its first placeholder, or all its literal words; () otherwise,
    and for a format whose literal text is a pattern (`(?i)`, `a|b`), which no typed words stand for."""
    lead, words, required = _format_words(representation)
    if not typed or not required or typed not in (lead, words):
        return ()
    return required


@functools.lru_cache(maxsize=4096)
def _format_words(representation: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """A format's literal words before its first placeholder, all its literal words, and its required
    placeholders (those with no default); nothing for a format with no placeholder or a pattern."""
    text = normalise(representation)
    found = list(PLACEHOLDER.finditer(text))
    literal = PLACEHOLDER.sub(" ", text)
    if not found or _PATTERN_SIGNS & set(literal):
        return (), (), ()
    required = tuple(m["name"] for m in found
                     if all(m[group] is None for group in ("empty", "dq", "sq", "brace", "bare")))
    return tuple(text[:found[0].start()].split()), tuple(literal.split()), required


def _button(alias: Alias, text: str | None = None, command: str | None = None) -> dict[str, str]:
    """A button that opens `alias`'s form (its click is the interaction a platform's form needs),
    filled in from `command` (a typed command of the alias) when given."""
    return {"text": text or alias.ref, "value": f"{WORD} {command or alias.ref}"}


def _title(alias: Alias) -> str:
    return alias.name.replace("_", " ")[:24]  # Slack caps a modal's title at 24 characters


def _form_field(item: Field, typed: Any = None) -> FormField:
    """A field as the adapters draw it; `typed` (what a typed command gave) fills it in, a secret aside."""
    initial = str(typed) if typed is not None and item.kind != "secret" else item.initial
    return FormField(name=item.name, label=item.name.replace("_", " "), kind=item.kind, required=item.required,
                     hint=item.description, initial=initial, options=tuple(t for t, _ in item.options))


def _question(item: Field) -> str:
    """One field as a question: its name, what kind of value, the choices, how to skip."""
    what = {"enum": "one of " + ", ".join(f"`{t}`" for t, _ in item.options), "boolean": "yes/no as true or false",
            "secret": "secret", "array": "a JSON array", "object": "a JSON object"}.get(item.kind, item.kind)
    about = f" ({item.description})" if item.description else ""
    skip = f"; `{SKIP}` for the default" if not item.required else ""
    return f"{item.name}{about}? ({what}{skip})"


def _as_submitted(fields: Sequence[Field], values: Mapping[str, str]) -> dict[str, str]:
    """`values`, keyed by parameter name as a chat form's inputs are (`FormField.name`, an answer's
    question), keyed as `bot.forms.parse` reads them (`Field.input_name`): a parameter the web's forms must
    rename (`csrf_token`) would otherwise be read as left empty."""
    return {item.input_name: values[item.name] for item in fields if item.name in values}
