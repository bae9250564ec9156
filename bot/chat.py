"""The chat side of the service: adapters, the dispatcher and the outbox, wired to one Squall."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from adapters.base import Adapter
from aliases import AliasMatcher, load_aliases
from bot.app import Squall
from bot.auth import Authorizer
from bot.dispatcher import ChatSettings, Dispatcher
from bot.notifications import Notifier
from bot.outbox import Outbox
from engine.storage import utcnow

log = logging.getLogger(__name__)
#: At start-up, results are looked for among chat executions started this recently.
RESULT_HORIZON = timedelta(days=7)
#: While running, every this many seconds, among those started within `SWEEP_WINDOW`.
SWEEP_SECONDS = 30.0
SWEEP_WINDOW = timedelta(hours=1)


class ChatBot:
    """Runs the given adapters against `squall`. Call `start()`, and `stop()` at the end."""

    def __init__(self, squall: Squall, adapters: list[Adapter]) -> None:
        self.squall = squall
        self.adapters = {adapter.name: adapter for adapter in adapters}
        self.outbox = Outbox(squall.db, self.adapters, hold=True)  # sends once the adapters are up
        config = squall.config
        self.dispatcher = Dispatcher(
            squall=squall, matcher=AliasMatcher([]), outbox=self.outbox, adapters=self.adapters,
            auth=Authorizer.from_config(config.section("auth")),
            settings=ChatSettings.from_config(config.section("chat")),
        )
        self.reload()
        squall.executions.on_finished(self.dispatcher.on_finished)
        self.notifier = Notifier(squall)  # for the sweep; the listener is the squall's own
        self._began = False
        self._sweeper: asyncio.Task[None] | None = None

    def reload(self) -> None:
        """Rebuild the alias index from the squall's current registry."""
        aliases, errors = load_aliases(self.squall.registry)
        for error in errors:
            log.warning("alias skipped: %s", error)
        self.dispatcher.matcher = AliasMatcher(aliases)
        self.dispatcher.aliases = {alias.ref: alias for alias in aliases}
        self.squall.announcer.aliases = self.dispatcher.aliases

    async def begin(self) -> None:
        """Queue what earlier runs (or other processes) left pending, oldest first, then store the
        results of chat executions that finished with none stored (a crash between the commit of
        the final status and the insert of the reply). `squall serve` calls this before recovering
        executions, so recovery's own results queue behind them; nothing is sent before `start()`."""
        if self._began:
            return
        self._began = True
        self.squall.announcer.outbox = self.outbox
        await self.outbox.poll()
        await self.sweep(RESULT_HORIZON)

    async def start(self) -> None:
        await self.begin()
        for adapter in self.adapters.values():
            await adapter.start(self.dispatcher.handle)
        self.outbox.release()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="chat-result-sweep")

    async def sweep(self, window: timedelta) -> int:
        """Store and queue missing results of chat executions started within `window` (with the
        ack's edit), and missing `notify` messages to chat routes; how many."""
        since = utcnow() - window
        posted = 0
        try:
            posted += await self.dispatcher.post_missing_results(since)
        except Exception:
            log.exception("looking for chat results that were never stored failed; trying again later")
        try:
            posted += await self.notifier.post_missing(since)
        except Exception:
            log.exception("looking for notifications that were never stored failed; trying again later")
        return posted

    async def _sweep_forever(self) -> None:
        """Results a failed insert, or a process without chat (a CLI answer to an inquiry), left unstored."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            await self.sweep(SWEEP_WINDOW)

    async def stop(self) -> None:
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
