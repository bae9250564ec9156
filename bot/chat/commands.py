"""The one command path: "this command text, from this person, in this place" → an execution.

Chat messages (the dispatcher), `POST /api/v1/aliasexecution`, and next the web UI's run forms
and chat forms all come through here, so a command means the same, is authorised the same and
is audited the same whoever typed it and wherever: match against the process's one alias index,
check the person's permission (a refusal is audited), build StackStorm's context, take the
parameters (what a person typed is data; only the format's own defaults are rendered; immutable
parameters win), request the execution, audit it, and render the ack.

Confirmation and where the ack goes are the caller's: the chat holds a command until `yes` and
posts the ack in the thread; the API returns the ack's text. A command whose alias (or action)
declares `approval:` is held after authorisation by `holder` (`bot/chat/approvals.py`) and requested
later through `request`, with the parameters and context taken here; where there is no chat to ask
approvers in (the API), it is refused rather than run unapproved. Where a relaying bot wants the result
(hubot-stackstorm's `notification_route`), the caller passes the execution's `notify` to `run`, which
stores it as StackStorm's alias execution does; Squall's own chat passes none, as its replies are its own.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from adapters.base import Message, Reply
from aliases import Alias, AliasMatch, CommandTooComplex
from aliases.model import immutable_names
from bot.chat.auth import Authorizer
from bot.chat.help import closed_parameters
from bot.chat.index import AliasIndex
from bot.chat.replies import acks, render_ack
from bot.forms import short
from engine.actions import Action, unapproved
from engine.executions import AuditEntry, CompletionWrite
from engine.packs import UnknownAction
from engine.parameters import MASK, ParameterError, check_unrendered, mask_value
from engine.templates import TooLongForTheLoop, briefly, rendered

if TYPE_CHECKING:
    from datetime import datetime

    from bot.chat.outbox import Outbox
    from engine.core import Engine
    from engine.storage import Store


#: The longest command the command path matches, whoever typed it (chat, the API, the web): matching and
#: ranking run on the event loop, and the API's 1 MiB body would otherwise hold it for a third of a second.
MAX_COMMAND = 100_000


class CommandTooLong(CommandTooComplex):
    """A command past `MAX_COMMAND`, refused before matching: a `NoMatch` with no suggestions (as
    `CommandTooComplex`, whose callers say this exception's text to the person)."""

    def __init__(self, command: str) -> None:
        super().__init__(command)
        self.args = (f"That command is {len(command):,} characters long; the limit is {MAX_COMMAND:,}.",)


class CommandRefused(Exception):
    """The person may not run the command (the reason says who may); the refusal was audited."""


class NeedsApproval(CommandRefused):
    """A re-run of what needs approval (`CommandService.rerun`): the alias or action that asks for
    it, and its approval policy, for the caller to say how to get it."""

    def __init__(self, ref: str, policy: dict[str, Any]) -> None:
        super().__init__(unapproved(ref, policy))
        self.ref = ref
        self.policy = policy


class CommandFailed(Exception):
    """The command matched, but its request was refused (a bad parameter, an unknown action)."""


# Made for every chat command: slotted, not frozen (see docs/architecture.md, "Value objects").
@dataclass(slots=True)
class Accepted:
    """A requested execution and its ack (None when the alias turns acks off); `ack_stored` when the
    ack (and the `preface` given to `CommandService.request`) was stored with the request
    (`CommandService.outbox`), else its caller posts them."""

    execution: dict[str, Any]
    ack: str | None
    ack_extra: dict[str, Any]
    ack_stored: bool = False


@dataclass
class _Ack:
    """What became of an ack offered to the request's transaction (`CommandService._ack`)."""

    rendered: tuple[str | None, dict[str, Any]] | None = None
    too_long: bool = False
    stored: bool = False


@dataclass(frozen=True)
class Held:
    """A command waiting for approvers: the stored approval row."""

    approval: dict[str, Any]


@dataclass(frozen=True)
class HeldRequest:
    """What an approved command will be requested with: the command path's parameters (the
    alias author's templates named in `render`; everything typed is data) and its context."""

    alias: Alias
    message: Message
    parameters: dict[str, Any]
    render: list[str]
    context: dict[str, Any]
    policy: dict[str, Any]


Holder = Callable[[HeldRequest], Awaitable[Held]]


class CommandService:
    def __init__(self, engine: Engine, index: AliasIndex, auth: Authorizer) -> None:
        self.engine = engine
        self.index = index
        self.auth = auth
        #: Holds commands that need approval (the chat side sets it); None refuses them.
        self.holder: Holder | None = None
        #: Where a chat command's ack is stored with its request (the chat side sets it): in that
        #: transaction it comes before the result, which a noop stores in the same commit.
        self.outbox: Outbox | None = None

    def match(self, text: str) -> AliasMatch:
        """The alias `text` means; `NoMatch` (with suggestions), `AmbiguousCommand`, or `CommandTooLong`
        past `MAX_COMMAND` otherwise."""
        _within_limit(text)
        return self.index.matcher.match(text)

    def match_all(self, text: str) -> list[AliasMatch]:
        """The commands `text` means: one match, or one per fit of a `match_multiple` format, each a
        command of its own (spec §2.4 step 5: StackStorm runs one execution per fit). Costs what
        `match` costs for every other format: the same first pass, one match in a list. Refused as
        `match` refuses."""
        _within_limit(text)
        return self.index.matcher.match_all(text)

    async def authorise(self, match: AliasMatch, message: Message, source: str,
                        command: str | None = None) -> AliasMatch:
        """`match` with its alias as loaded now, if `message`'s sender may run it (`allowed_alias`);
        `CommandRefused` (audited) otherwise. Run what this returns: a match held across a pack
        reload (a confirmation, a form) names a copy of the alias the reload may have disabled,
        removed or given other permissions. What the refusal's audit shows (`masked`) is made only for
        a refusal, and an allowed command awaits nothing here."""
        alias = self._allowed(match.alias.ref, message, match.representation)
        if isinstance(alias, str):
            shown = self.masked(match, command or message.text)
            await self.refused(message, source, match.alias.ref, shown or message.text, alias)
            raise CommandRefused(alias)
        return match if alias is match.alias else replace(match, alias=alias)

    def allowed(self, match: AliasMatch, message: Message) -> AliasMatch | None:
        """`authorise`'s answer where `message`'s sender may run `match` (with its alias as loaded now),
        without starting a coroutine; None where they may not, for `authorise` to refuse and audit."""
        alias = self._allowed(match.alias.ref, message, match.representation)
        if isinstance(alias, str):
            return None
        return match if alias is match.alias else replace(match, alias=alias)

    async def authorise_all(self, matches: list[AliasMatch], message: Message, source: str,
                            command: str | None = None) -> list[AliasMatch]:
        """The fits of one `match_multiple` command, each authorised as `authorise` does; the first
        refusal (`CommandRefused`, audited once) refuses them all, as they share one alias and one
        sender. Its audited command masks every fit's secret values, not only the refused one's."""
        shown = command or message.text
        for match in matches:
            shown = self.masked(match, shown)
        return [await self.authorise(match, message, source, shown) for match in matches]

    def masked(self, match: AliasMatch, command: str) -> str:
        """`command` as a refusal's audit or a reply shows it (a "did you mean" offer): the values it gives
        secret parameters masked (the audit row, its sinks, `squall audit export` and the outbox keep it).
        Every value, when the action is not loaded and which are secret cannot be told. An action with
        no secret parameter (most) shows the command as typed, without a look at each value."""
        action = self.engine.registry.actions.get(match.alias.action_ref)
        if action is not None and not action.secret_names:
            return command
        for name, value in match.parameters.items():
            secret = action is None or name in action.secret_names
            if secret and isinstance(value, str) and value:
                command = command.replace(value, MASK)
        return command

    async def allowed_alias(self, ref: str, message: Message, source: str, command: str | None = None,
                            representation: str = "") -> Alias:
        """The alias `ref` as loaded now, if it is enabled (with the format `representation`, when one
        is named) and `message`'s sender may run it; else `CommandRefused`, audited as
        `<source>.denied` with `command` (else the message's text) and the reason. Looked up at every
        use, never taken from a caller's copy: commands held for an answer, a form or approvers are
        refused as a newly typed one would be, whatever a pack reload changed meanwhile."""
        alias = self._allowed(ref, message, representation)
        if isinstance(alias, str):
            await self.refused(message, source, ref, command or message.text, alias)
            raise CommandRefused(alias)
        return alias

    def _allowed(self, ref: str, message: Message, representation: str) -> Alias | str:
        """`allowed_alias`'s decision: the alias `ref` as loaded now, or why `message`'s sender may not run it."""
        alias = self.index.aliases.get(ref)
        if alias is None:
            return f"the alias {ref} is no longer loaded (a pack reload removed it)"
        if not alias.enabled:
            return f"the alias {ref} is disabled (enabled: false)"
        if representation and representation not in alias.representations:
            return f'{ref} no longer has the format "{representation}"; send the command again'
        decision = self.auth.check(alias, message)
        return alias if decision.allowed else decision.reason

    def run(self, match: AliasMatch, message: Message, source: str, chat: dict[str, Any] | None = None,
            notify: dict[str, Any] | None = None) -> Awaitable[Accepted | Held]:
        """Request the execution `match` means for `message`'s sender (audited as `<source>.execution`),
        or hold it for approvers (`Held`). `chat` is where results go back (adapter, channel, thread…),
        for commands from chat; `notify`, the execution's own notify for a relaying bot's route (the
        API's `notification_route`), unless the action has one (`_notified`). Await what it returns;
        it refuses (`CommandRefused`, `CommandFailed`) as it is called. Not a coroutine of its own
        around `request`'s or the holder's: every chat command comes here."""
        alias = match.alias
        context = self.context(alias, message, source, chat)
        action, parameters, render = self._parameters(match, context)
        _notified(context, notify, action.notify)
        policy = alias.approval or action.approval
        if policy is not None:
            if self.holder is None or chat is None:
                raise CommandRefused(unapproved(alias.ref, policy))
            # a command that cannot run is refused now, not after its approvers said yes
            _checked(action, parameters, render)
            return self.holder(HeldRequest(alias, message, parameters, sorted(render), context, policy))
        return self.request(alias, message, source, parameters, render, context)

    def check(self, match: AliasMatch, message: Message, source: str) -> None:
        """`CommandFailed` (in the request's words) when `match`'s parameters could not run: the check a
        command held for approvers gets in `run`, without requesting anything. For what is held for an
        answer first (a confirmation, a "did you mean" offer): a `yes` to a command that cannot run
        could only be refused, so it is refused before anyone is asked."""
        action, parameters, render = self._parameters(match, self.context(match.alias, message, source))
        _checked(action, parameters, render)

    def _parameters(self, match: AliasMatch, context: dict[str, Any]) -> tuple[Action, dict[str, Any], set[str]]:
        """`match`'s action and what to request it with (`AliasMatch.request_parameters`), or
        `CommandFailed`: a key=value pair naming no parameter (`_unknown_pairs`), an override the alias
        does not open, an action not loaded."""
        try:
            action = self.engine.registry.action(match.alias.action_ref)
            _unknown_pairs(match, action)
            parameters, render = match.request_parameters(action, context)
        except (ParameterError, UnknownAction, ValueError) as exc:
            raise CommandFailed(str(exc)) from exc
        return action, parameters, render

    def approval_for(self, record: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The approval a new run of `record` would need, with the alias or action that declares it:
        the alias's it came through (chat, the alias API), else its action's; None if neither has one."""
        context = record.get("context") or {}
        alias_ref = (context.get("chat") or {}).get("alias") or (context.get("action_alias_ref") or {}).get("id")
        alias = self.index.aliases.get(alias_ref) if alias_ref else None
        if alias is not None and alias.approval is not None:
            return alias.ref, alias.approval
        action = self.engine.registry.actions.get(record["action"])
        if action is not None and action.approval is not None:
            return action.ref, action.approval
        return None

    async def rerun(self, execution_id: str, parameters: dict[str, Any] | None,
                    context: dict[str, Any], *, tasks: list[str] | None = None,
                    delay: float = 0.0, audit: AuditEntry | None = None, dropped: Collection[str] = ()
                    ) -> dict[str, Any]:
        """A person's re-run (chat `retry`, the API's re_run, the web's re-run) as `context`'s requester:
        `NeedsApproval` when it needs approval, as a new request of it would (a re-run, with edited
        parameters or not, whole or from some of a workflow's `tasks`, is never a way around the
        approvers). With `tasks`, the finished workflow is re-run in place from them
        (`WorkflowService.rerun`); otherwise a new execution, `delay` seconds from now.

        `audit` (who asked, from where) is stored with the new execution, in its transaction
        (`ExecutionService.rerun`): a re-run the database did not take leaves no event, and none is
        stored without its event; its detail gains the action and the parameters as stored. A re-run in
        place stores it with the workflow's reset (`WorkflowService.rerun`), as surely. `dropped`: parameters
        of the original not given again (the web's form drops those a pack update took out of the action)."""
        record = await self.engine.executions.get(execution_id)
        needed = self.approval_for(record)
        if needed is not None:
            raise NeedsApproval(*needed)
        if tasks:
            return await self.engine.workflows.rerun(record["id"], tasks, audit=audit)  # its event with its reset
        # The engine puts back what `parameters` show masked (`headers` edited as shown), and carries the
        # original's credentials to the same target only (`ExecutionService.rerun`, `rerun_parameters`).
        return await self.engine.executions.rerun(record["id"], parameters, context, delay=delay, audit=audit,
                                                  dropped=dropped)

    async def request(self, alias: Alias, message: Message, source: str, parameters: dict[str, Any],
                      render: Iterable[str], context: dict[str, Any], preface: Reply | None = None) -> Accepted:
        """The request step: the execution, its audit event and its ack (also for an approved command).
        The alias's immutable templates among `render` (a shell runner's `cmd`, what reads the datastore)
        render in the engine with the names of `context` (`immutable_names`): a `cmd`'s values then reach
        bash as quoted variables, never as its text; an approved command's are its requester's. `preface`
        (an approval's "running" post) is stored just before the ack, with it: told only of a command that
        was requested, and read before its ack and result."""
        render = set(render)
        audit = AuditEntry(f"{source}.execution", message.user, f"{message.adapter}:{message.channel}", alias.ref,
                           {"action": alias.action_ref, "parameters": _audited(parameters, alias.action_ref,
                                                                               self.engine)})
        chat = context.get("chat")
        ack = _Ack() if acks(alias) else None  # acks off: nothing to render or store
        stored_with = None if ack is None or not chat or self.outbox is None else self._ack(alias, chat, ack, preface)
        try:
            execution = await self.engine.executions.request(
                alias.action_ref, parameters, context, render=render, audit=audit, stored_with=stored_with,
                extra_template_context=immutable_names(alias, render, context))
        except (ParameterError, UnknownAction, ValueError) as exc:
            raise CommandFailed(str(exc)) from exc
        if ack is None:
            return Accepted(execution, None, {})
        if ack.rendered is None:  # not offered, or too long for the request's transaction (then not on the loop)
            ack.rendered = await rendered(render_ack, alias, execution, on_loop=not ack.too_long)
        text, extra = ack.rendered
        return Accepted(execution, text, extra or {}, ack_stored=ack.stored)

    def _ack(self, alias: Alias, chat: dict[str, Any], ack: _Ack,
             preface: Reply | None = None) -> Callable[[dict[str, Any]], CompletionWrite | None]:
        """What stores the ack with the request, in the command's thread, after `preface` if any (`ack`
        tells what became of them). It stores nothing, and the caller posts them after, when the ack's
        format takes too long to render inside the request's transaction. Only offered when the alias
        acknowledges (`acks`)."""
        assert self.outbox is not None
        outbox = self.outbox

        def write(execution: dict[str, Any]) -> CompletionWrite | None:
            try:
                text, extra = ack.rendered = briefly(render_ack, alias, execution)
            except TooLongForTheLoop:
                ack.too_long = True
                return None
            assert text is not None  # the alias acknowledges: there is always a text
            reply = Reply(adapter=chat["adapter"], channel=chat["channel"], thread=chat.get("thread"), text=text,
                          extra=extra or {})
            keyed = outbox.keyed(execution["id"], "ack", [reply])
            assert keyed is not None  # a reply: always a row to store
            before = outbox.keyed(execution["id"], "preface", [preface]) if preface is not None else None
            groups = [keyed] if before is None else [before, keyed]

            def write_all(store: Store, at: datetime | None) -> list[Any]:
                return [group.store(store, at) for group in groups]

            def committed(stored: list[Any]) -> None:
                for group, rows in zip(groups, stored, strict=True):
                    group.queue(rows)
                ack.stored = True

            return CompletionWrite(write_all, committed, before is None and keyed.one_statement)

        return write

    @staticmethod
    def context(alias: Alias, message: Message, source: str, chat: dict[str, Any] | None = None) -> dict[str, Any]:
        """StackStorm's context of an alias execution (api_user, source_channel, action_alias_ref),
        plus, for chat, where the replies go (`chat`, naming the alias for the result's format)."""
        context: dict[str, Any] = {"user": message.user, "api_user": message.user, "source": source,
                                   "source_channel": message.channel,
                                   "action_alias_ref": {"id": alias.ref, "name": alias.name}}
        if chat is not None:
            context["chat"] = {**chat, "alias": alias.ref}
        return context

    async def refused(self, message: Message, source: str, subject: str, command: str, reason: str) -> None:
        """Audit a refusal of what `message`'s sender asked as `<source>.denied`: `subject` (an alias, an
        execution), what they typed (`command`, secrets already masked by the caller) and why. One shape
        for every refusal of a chat person, a command's or a built-in's (`!cancel`, `!retry`)."""
        await self.audit(f"{source}.denied", message, subject, {"command": short(command, 500), "reason": reason})

    async def audit(self, kind: str, message: Message, subject: str, detail: dict[str, Any]) -> None:
        """An audit event of `message`'s sender, from where they typed it (`<adapter>:<channel>`), that
        records no change of state (a refusal): a change's event goes with it (`audit_entry`)."""
        db = self.engine.db
        await db(db.store.audit_add, kind, message.user, f"{message.adapter}:{message.channel}", subject, detail)

    @staticmethod
    def audit_entry(kind: str, message: Message, detail: dict[str, Any] | None = None) -> AuditEntry:
        """`audit`'s event, for the engine to store in the transaction of the change it records (`audit=`
        of a cancel, a re-run, an inquiry's answer), about what that changes: stored apart, a failure
        between the two left a change nobody was audited for, or told a person it failed when it was made."""
        return AuditEntry(kind, message.user, f"{message.adapter}:{message.channel}", None, detail or {})


def _notified(context: dict[str, Any], notify: dict[str, Any] | None, own: dict[str, Any]) -> None:
    """Put a relayed command's `notify` in its execution's context (where `engine.notifications` reads an
    execution's own), as StackStorm's alias execution does, unless the action declares a `notify` of its
    own (`own`): StackStorm's `create_request` then puts the action's in its place, and so does Squall, so
    an action's notify means the same whoever starts it. Squall's own chat passes none: its result is the
    dispatcher's reply, never a second announcement through a route."""
    if notify and not own:
        context["notify"] = notify


def _unknown_pairs(match: AliasMatch, action: Action) -> None:
    """`ParameterError` when a key=value pair of the command names no parameter of `action`, listing
    the parameters a command through the alias may set, as help lists them (`closed_parameters`: not the
    alias's immutable ones, nor runner parameters it neither opens nor names in a format; nor the
    action's immutable ones). Checked before the engine, whose error lists every parameter of the action
    and its runner: `!greet bob level=x` offered `cmd`, which the command path then refuses
    (`check_overrides`). A request through the API (`st2 run`) keeps the engine's error."""
    pairs = match.pairs
    if not pairs:  # most commands give none
        return
    unknown = sorted(name for name in pairs if name not in action.parameters)
    if not unknown:
        return
    closed = closed_parameters(match.alias, action)
    settable = sorted(name for name, spec in action.parameters.items()
                      if name not in closed and not spec.get("immutable"))
    hints = []
    for name in unknown:
        near = difflib.get_close_matches(name, settable, n=1)
        hints.append(f'"{name}"' + (f' (did you mean "{near[0]}"?)' if near else ""))
    raise ParameterError(
        f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for action \"{action.ref}\"; "
        f"a command of the alias {match.alias.ref} may set: {', '.join(settable) or 'none'}")


def _checked(action: Action, parameters: dict[str, Any], render: set[str]) -> None:
    """What the engine's request would refuse of `parameters` without rendering any (`check_unrendered`:
    unknown names, a required one missing, a value its schema refuses), as `CommandFailed`."""
    try:
        check_unrendered(action, parameters, render)
    except ParameterError as exc:
        raise CommandFailed(str(exc)) from exc


def _within_limit(text: str) -> None:
    """`CommandTooLong` when `text` is past `MAX_COMMAND`: every caller of the command path gets the
    chat's limit and words, before anything spends time on the text."""
    if len(text) > MAX_COMMAND:
        raise CommandTooLong(text)


def _audited(parameters: dict[str, Any], action_ref: str, engine: Engine) -> dict[str, Any]:
    """A request's parameters as its audit row shows them: secret ones (the action's `secret: true`;
    all of them when the action is not loaded) as `********`, and the credentials of `headers` and
    `cookies` (`mask_value`, as the execution record shows them); a template (`render`) as written,
    since what rendering reveals (`decrypt_kv`) must stay out of the audit. One pass over what was
    given, on the chat's hot path: no copy of the action's schema, no JSON round trip (but to read a
    `headers` or `cookies` object given as text). An action with nothing to mask (`Action.shown_as_given`,
    made once per loaded action), given only parameters it declares (most commands): a copy, with no look
    at each value (about -50 bytecodes executed a chat command, a traced count)."""
    action = engine.registry.actions.get(action_ref)
    if action is None:
        return {name: MASK if value is not None else mask_value(name, value) for name, value in parameters.items()}
    if action.shown_as_given and parameters.keys() <= action.parameters.keys():
        return dict(parameters)
    secret = action.secret_names
    return {name: (MASK if value is not None and name in secret else mask_value(name, value))
            for name, value in parameters.items()}
