"""The chat side of the service: one object owns the adapters, the dispatcher, the outbox, the
alias index, announcements, `notify` messages and inquiries in chat, all built here from the
engine and subscribed to its events (`engine/events.py`); nothing is rewired afterwards.

A process with no adapter (a CLI command) has a chat side too: what it posts is stored in the
outbox and `squall serve` sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from adapters.base import Adapter
from bot.chat.announce import Announcer
from bot.chat.approvals import ApprovalChat
from bot.chat.auth import CHOSEN_NAMES, Authorizer
from bot.chat.commands import CommandService
from bot.chat.dispatcher import ChatSettings, Dispatcher
from bot.chat.index import AliasIndex
from bot.chat.inquiries import InquiryChat
from bot.chat.notices import Notices
from bot.chat.outbox import Outbox
from engine.events import EXECUTION_FINISHED
from engine.storage import Trouble, utcnow

if TYPE_CHECKING:
    from engine.core import Engine

log = logging.getLogger(__name__)
#: At start-up, results are looked for among chat executions started this recently.
RESULT_HORIZON = timedelta(days=7)
#: While running, every this many seconds, among those started within `SWEEP_WINDOW`.
SWEEP_SECONDS = 30.0
SWEEP_WINDOW = timedelta(hours=1)


class ChatBot:
    """Chat in front of `engine` through `adapters` (none: store only). Call `start()` to connect
    the adapters and send, and `stop()` at the end."""

    def __init__(self, engine: Engine, adapters: Sequence[Adapter] = ()) -> None:
        self.engine = engine
        self.adapters = {adapter.name: adapter for adapter in adapters}
        self.outbox = Outbox(engine.db, self.adapters, hold=True)  # sends once the adapters are up
        self.index = AliasIndex(engine.registry)
        config = engine.config
        settings = ChatSettings.from_config(config.section("chat"))
        self.announcer = Announcer(engine, self.outbox, self.index)
        self.notices = Notices(engine, self.announcer, self.outbox)
        #: Who may run what, one for every part of the chat side (the IRC warning is said once: `start`).
        self.auth = auth = Authorizer.from_config(config.section("auth"))
        self.inquiries = InquiryChat(engine, self.announcer, self.outbox, auth, settings.prefix)
        #: The one command path (chat, the HTTP API, forms): match, authorise, request, audit, ack.
        self.commands = CommandService(engine, self.index, auth)
        self.commands.outbox = self.outbox
        #: Commands held for approvers; it sets itself as the command path's holder.
        self.approvals = ApprovalChat(engine, self.commands, self.outbox, auth, settings.prefix)
        self.dispatcher = Dispatcher(engine=engine, index=self.index, outbox=self.outbox, adapters=self.adapters,
                                     inquiries=self.inquiries, commands=self.commands, auth=auth, settings=settings,
                                     approvals=self.approvals)
        for adapter in adapters:  # an adapter where names change hands says when someone leaves one
            if hasattr(adapter, "on_gone"):
                adapter.on_gone = self.gone  # type: ignore[attr-defined]
        engine.executions.on_completing(self.dispatcher.completing)
        engine.events.subscribe(EXECUTION_FINISHED, self.dispatcher.on_finished)
        self._began = False
        self._stopped = False
        self._sweeper: asyncio.Task[None] | None = None
        #: What the sweep's steps say of their failures: a database outage once, and once when it is over.
        self.trouble = Trouble(log, f"at the next sweep (every {SWEEP_SECONDS:g} s)")

    def reload(self) -> None:
        """Rebuild the alias index from the engine's current registry."""
        self.index.rebuild(self.engine.registry)

    async def begin(self) -> None:
        """Queue what earlier runs (or other processes) left pending, oldest first, then store the
        results of chat executions that finished with none stored (a crash between the commit of
        the final status and the insert of the reply). `squall serve` calls this before recovering
        executions, so recovery's own results queue behind them; nothing is sent before `start()`."""
        if self._began:
            return
        self._began = True
        await self.outbox.poll()
        await self.sweep(RESULT_HORIZON)
        waiting = await self.approvals.pending()
        if waiting:
            log.info("%d held command(s) wait for approvers", waiting)
        forms, confirmations = await self.dispatcher.restore()
        if forms:
            log.info("%d chat form(s) opened before the restart are still open", forms)
        if confirmations:
            log.info("%d confirmation(s) asked before the restart still wait for their answer", confirmations)

    async def gone(self, adapter: str, user: str) -> None:
        """The person known as `user` on `adapter` left that name (IRC: renamed away or quit; the adapter's
        `on_gone`): close the forms, question exchanges, confirmations and "did you mean" offers held for
        it, stored ones too, so whoever takes the name next cannot answer them and run a command as
        them. Nobody is told (they are gone); it is logged."""
        forms = await self.dispatcher.forms.close(adapter, user)
        confirmations = await self.dispatcher.close_confirmations(adapter, user)
        if forms or confirmations:
            log.info("%s on %s renamed away or quit: closed the %d form(s) and %d confirmation(s) held for that "
                     "name, which its next holder must not answer", user, adapter, forms, confirmations)

    async def start(self) -> None:
        """Connect the adapters and send. With IRC among them, say first which bare names in `auth` grant
        nothing there (`Authorizer.warn_irc`, once): whoever reads the log after an upgrade learns it as
        the service starts, before anyone on IRC is refused, however quiet IRC is."""
        if any(name in CHOSEN_NAMES for name in self.adapters):
            self.auth.warn_irc()
        await self.begin()
        for adapter in self.adapters.values():
            await adapter.start(self.dispatcher.handle)
        self.outbox.release()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="chat-result-sweep")

    async def sweep(self, window: timedelta) -> int:
        """Store and queue missing results of chat executions started within `window` (with the
        ack's edit), and missing `notify` messages to chat routes; how many. A step that fails is tried
        again at the next sweep; a database outage is said once, without a traceback (`Trouble`)."""
        since = utcnow() - window
        posted = 0
        for what, step in (("looking for chat results that were never stored", self.dispatcher.post_missing_results),
                           ("looking for notifications that were never stored", self.notices.post_missing)):
            try:
                posted += await step(since)
            except Exception as exc:
                self.trouble.failed(what, exc)
            else:
                self.trouble.worked(what)
        try:  # approvals past their time: told in their thread once (the row's status guards it)
            await self.approvals.sweep()
        except Exception as exc:
            self.trouble.failed("expiring approvals", exc)
        else:
            self.trouble.worked("expiring approvals")
        return posted

    async def _sweep_forever(self) -> None:
        """Results a failed insert, or a process without chat (a CLI answer to an inquiry), left unstored."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            await self.sweep(SWEEP_WINDOW)

    async def stop(self) -> None:
        """Disconnect and stop sending (what is stored stays for the next start); safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for adapter in self.adapters.values():
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping adapter %s failed", adapter.name)
        await self.outbox.close()
