"""From a chat message to an execution: addressing, built-in commands, matching, permissions,
confirmation, the ack, and (when the execution finishes) the result in the same thread.

The message is parsed once, here, by the same `AliasMatcher` the CLI and the API use, so the
bot and the engine can never disagree about what a command means.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.base import Adapter, Message, Reply
from aliases import Alias, AliasMatcher, AmbiguousCommand, NoMatch
from bot.chat.auth import Authorizer
from bot.chat.commands import CommandFailed, CommandRefused, CommandService
from bot.chat.index import AliasIndex
from bot.chat.inquiries import InquiryChat
from bot.chat.outbox import Outbox
from bot.chat.replies import render_result, short, status_line
from engine import tracing
from engine.executions import COMPLETED, ExecutionNotFound, ExecutionStateError, public
from engine.logs import logging_context
from engine.metrics import metrics
from engine.packs import UnknownAction
from engine.parameters import ParameterError

if TYPE_CHECKING:
    from engine.core import Engine

log = logging.getLogger(__name__)
_YES = {"yes", "y", "confirm", "ok"}
_NO = {"no", "n", "cancel", "abort"}
_SPACES = re.compile(r"[\u00a0\u2000-\u200b\u202f\u205f\u3000]")
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"})
MAX_COMMAND = 100_000


@dataclass
class ChatSettings:
    prefix: str = "!"
    bot_name: str = "squall"
    thread_replies: bool = True
    confirm_ttl: float = 60.0

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> ChatSettings:
        return cls(prefix=str(section.get("prefix", "!")), bot_name=str(section.get("bot_name", "squall")),
                   thread_replies=bool(section.get("thread_replies", True)),
                   confirm_ttl=float(section.get("confirm_ttl", 60)))


@dataclass
class PendingConfirmation:
    match: Any
    message: Message
    expires: float


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

    @property
    def matcher(self) -> AliasMatcher:
        return self.index.matcher

    @property
    def aliases(self) -> dict[str, Alias]:
        return self.index.aliases

    # -- entry point -----------------------------------------------------------------------
    async def handle(self, message: Message) -> None:
        """Handle one message; whatever goes wrong, the person gets an answer and the bot stays up."""
        with logging_context(adapter=message.adapter, channel=message.channel, user=message.user), \
                tracing.span("chat.message", adapter=message.adapter, channel=message.channel, user=message.user):
            await self._handle_safely(message)

    async def _handle_safely(self, message: Message) -> None:
        try:
            text = self._addressed(message)
            adapter = self.adapters.get(message.adapter)
            if await self._inquiry_answer(message, text, adapter is None or adapter.capabilities.threads):
                return
            if text is None:
                return  # chatter: the adapters pass every message on, the dispatcher decides
            metrics.count(metrics.chat_messages, message.adapter)
            received = getattr(adapter, "received", None)
            if received is not None:  # the platform's "seen it" mark (Slack's status reaction)
                await received(message)
            await self._handle(message, text)
        except Exception as exc:
            log.exception("handling a message from %s failed", message.user)
            await self.say(message, f"Sorry, something went wrong handling that: {exc}")

    def _addressed(self, message: Message) -> str | None:
        """The command text if the message is for the bot (prefix, mention or DM), else None."""
        text = _SPACES.sub(" ", message.text.translate(_QUOTES)).strip()
        if self.settings.prefix and text.startswith(self.settings.prefix):
            return text[len(self.settings.prefix):].strip()
        if message.mentioned or message.direct:
            for lead in (f"@{self.settings.bot_name}", self.settings.bot_name):
                if text.lower().startswith(lead.lower()):
                    text = text[len(lead):].lstrip(":, ").strip()
                    break
            return text
        return None

    async def _handle(self, message: Message, text: str) -> None:
        key = (message.adapter, message.channel, message.user)
        pending = self._confirmations.get(key)
        if pending is not None and text.lower() in _YES | _NO:
            del self._confirmations[key]
            if time.monotonic() > pending.expires:
                await self.say(message, "That confirmation has expired; send the command again.")
            elif text.lower() in _YES:
                await self._run(pending.match, pending.message)
            else:
                await self.say(message, f"OK, not running {pending.match.alias.action_ref}.")
            return
        if not text:
            await self.say(message, f"Yes? Try `{self.settings.prefix}help`.")
            return
        if len(text) > MAX_COMMAND:
            await self.say(message, f"That command is {len(text):,} characters long; the limit is {MAX_COMMAND:,}.")
            return
        try:
            with tracing.span("alias.match"):
                match = self.commands.match(text)
        except AmbiguousCommand as exc:
            metrics.count(metrics.chat_commands, message.adapter, "ambiguous")
            listed = "\n".join(f"• {c.display or c.representation} ({c.alias.ref})" for c in exc.candidates)
            await self.say(message, f"That matches more than one command equally well:\n{listed}\nPlease be more "
                                    "specific.")
            return
        except NoMatch as exc:
            # Built-in commands answer only words no pack alias claims.
            word, _, rest = text.partition(" ")
            builtin = getattr(self, f"_builtin_{word.lower()}", None) if word.isalpha() else None
            if builtin is not None:
                metrics.count(metrics.chat_commands, message.adapter, "builtin")
                await builtin(message, rest.strip())
                return
            metrics.count(metrics.chat_commands, message.adapter, "unmatched")
            hint = f" Did you mean: {', '.join(f'`{s}`' for s in exc.suggestions)}?" if exc.suggestions else ""
            await self.say(message, f"I don't know `{short(text)}`.{hint} Try `{self.settings.prefix}help`.")
            return
        try:
            await self.commands.authorise(match, Message(**{**message.__dict__, "text": text}), "chat")
        except CommandRefused as exc:
            metrics.count(metrics.chat_commands, message.adapter, "denied")
            await self.say(message, f"Sorry {message.user}, you may not run that: {exc}.")
            return
        metrics.count(metrics.chat_commands, message.adapter, "matched")
        if match.alias.confirm:
            ttl = self.settings.confirm_ttl
            if isinstance(match.alias.confirm, dict):
                ttl = float(match.alias.confirm.get("ttl", ttl))
            self._confirmations[key] = PendingConfirmation(match, message, time.monotonic() + ttl)
            shown = self._masked(match.alias.action_ref, match.parameters)
            await self.say(message, f"About to run {match.alias.action_ref} with "
                                    f"{_params(shown)}. Reply `yes` within {ttl:g}s to go ahead, or `no`.",
                           buttons=[{"text": "Yes", "value": "yes"}, {"text": "No", "value": "no"}])
            return
        await self._run(match, message)

    def _masked(self, action_ref: str, parameters: dict[str, Any]) -> dict[str, Any]:
        action = self.engine.registry.actions.get(action_ref)
        secret = action.secret_names if action is not None else set()
        return {k: ("********" if k in secret else v) for k, v in parameters.items()}

    # -- running -------------------------------------------------------------------------------
    async def _run(self, match: Any, message: Message) -> None:
        where = self._where(message)
        try:
            accepted = await self.commands.run(match, message, "chat", chat=where)
        except CommandFailed as exc:
            await self.say(message, f"I can't run that: {exc}")
            return
        if accepted.ack is not None:
            # Keyed (execution, "ack"): the result's edit of it finds its row in the database, after
            # a restart as well as in this process.
            reply = Reply(adapter=message.adapter, channel=message.channel, thread=where["thread"], text=accepted.ack,
                          extra=accepted.ack_extra)
            await self.outbox.post_keyed(accepted.execution["id"], "ack", [reply])

    def _where(self, message: Message) -> dict[str, Any]:
        """Where an execution's replies go: the message's adapter, channel and thread (and who asked)."""
        return {"adapter": message.adapter, "channel": message.channel, "user": message.user,
                "thread": self._thread(message), "message_id": message.id}

    def on_finished(self, execution: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """Post the result of an execution started from chat, in its channel and thread (None, and
        no task, for the others)."""
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
        with tracing.span("chat.result", tracing.parent_of(execution.get("context")), execution_id=execution["id"],
                          adapter=chat["adapter"], channel=chat["channel"]):
            await self._store_result(execution, chat)

    async def _store_result(self, execution: dict[str, Any], chat: dict[str, Any]) -> None:
        alias = self.aliases.get(chat.get("alias")) if chat.get("alias") else None
        text, extra = render_result(alias, execution)
        where = {"adapter": chat["adapter"], "channel": chat["channel"], "thread": chat.get("thread")}
        edits = self.adapters[chat["adapter"]].capabilities.edits
        status = [Reply(**where, text=status_line(execution))] if edits else []
        replies = [Reply(**where, text=text, extra=extra)] if text is not None else []
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
        # Literal, not a regex: a chat user must not be able to hand the bot a catastrophic pattern.
        entries = self.matcher.help(re.escape(rest) if rest else None,
                                    allowed=lambda alias: self.auth.check(alias, message).allowed)
        builtins = ["help [filter]", "executions", "execution <id>", "cancel <id>", "retry <id>",
                    "respond <inquiry-id> <answer>"]
        prefix = self.settings.prefix
        lines = [f"{prefix}{entry['display']}" + (f" — {entry['description']}" if entry.get("description") else "")
                 for entry in entries]
        if not rest:
            lines += [f"{prefix}{b}" for b in builtins]
        if not lines:
            await self.say(message, f"No commands match `{short(rest)}`.")
            return
        await self.say(message, "\n".join(lines))

    async def _builtin_executions(self, message: Message, rest: str) -> None:
        recent = await self.engine.executions.list(limit=200)
        mine = [e for e in recent if (e["context"].get("chat") or {}).get("channel") == message.channel
                and (e["context"].get("chat") or {}).get("adapter") == message.adapter][:10]
        if not mine:
            await self.say(message, "No executions from this channel yet.")
            return
        await self.say(message, "\n".join(status_line(e) for e in mine))

    async def _builtin_execution(self, message: Message, rest: str) -> None:
        if not rest:
            await self.say(message, f"Which one? `{self.settings.prefix}execution <id>`")
            return
        try:
            execution = await self.engine.executions.get(rest.split()[0])
        except ExecutionNotFound as exc:
            await self.say(message, str(exc))
            return
        await self.say(message, render_result(None, execution)[0] or status_line(execution))

    async def _builtin_cancel(self, message: Message, rest: str) -> None:
        await self._on_execution(message, rest, "cancel")

    async def _builtin_retry(self, message: Message, rest: str) -> None:
        await self._on_execution(message, rest, "retry")

    async def _on_execution(self, message: Message, rest: str, verb: str) -> None:
        if not rest:
            await self.say(message, f"Which one? `{self.settings.prefix}{verb} <id>`")
            return
        try:
            execution = await self.engine.executions.get(rest.split()[0])
            alias_ref = (execution["context"].get("chat") or {}).get("alias")
            alias = self.aliases.get(alias_ref) if alias_ref else None
            if alias is not None and not self.auth.check(alias, message).allowed:
                await self.say(message, f"Sorry {message.user}, you may not {verb} that.")
                return
            if alias is None and not self.auth.is_admin(message) and execution["context"].get("user") != message.user:
                await self.say(message, f"Only admins may {verb} executions not started from chat by you.")
                return
            if verb == "cancel":
                done = await self.engine.executions.cancel(execution["id"])
                await self.say(message, f"{done['id']} is {done['status']}.")
            else:
                context = (self.commands.context(alias, message, "chat", self._where(message)) if alias
                           else {"user": message.user, "source": "chat"})
                again = await self.engine.executions.rerun(execution["id"], context=context)
                await self.say(message, f"Retrying as {again['id']}.")
        except (ExecutionNotFound, ExecutionStateError, ParameterError, UnknownAction) as exc:
            await self.say(message, str(exc))

    async def _builtin_respond(self, message: Message, rest: str) -> None:
        """`respond <inquiry-id> <json or value>`: answer an inquiry (spec §11.2)."""
        await self.say(message, await self.inquiries.respond_command(message, rest, self.settings.prefix))

    async def _inquiry_answer(self, message: Message, text: str | None, threaded: bool) -> bool:
        """A bare answer (or a button's value) in the thread an inquiry was asked in. Where there
        are no threads (IRC), the answer in the question's channel must be addressed to the bot
        (`squall: yes`): a bare "ok" in a busy channel must not approve anything."""
        if threaded and not message.thread:
            return False
        if not threaded and (text is None or not (message.mentioned or message.direct)):
            return False  # `!command` stays a command
        text = message.text.strip() if text is None else text
        inquiry = await self.inquiries.in_thread(message, threaded)
        if inquiry is None:
            return False
        said = await self.inquiries.answer(message, inquiry, text)
        if said is None:
            return False  # chatter in the thread, or a command: handled as usual
        await self.say(message, said)
        return True

    # -- replying ------------------------------------------------------------------------------
    def _thread(self, message: Message) -> str | None:
        adapter = self.adapters.get(message.adapter)
        if adapter is None or not adapter.capabilities.threads or not self.settings.thread_replies:
            return message.thread
        return message.thread or message.id

    async def say(self, message: Message, text: str, *, extra: dict[str, Any] | None = None,
                  buttons: list[dict[str, str]] | None = None) -> int:
        reply = Reply(adapter=message.adapter, channel=message.channel, thread=self._thread(message), text=text,
                      extra=extra or {}, buttons=buttons or [], asker=message.user if buttons else None)
        return await self.outbox.post(reply)


def _params(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short(str(v), 60)}" for k, v in parameters.items()) or "no parameters"
