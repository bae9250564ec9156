"""The chat side of the service: adapters, the dispatcher and the outbox, wired to one Squall."""

from __future__ import annotations

import logging

from adapters.base import Adapter
from aliases import AliasMatcher, load_aliases
from bot.app import Squall
from bot.auth import Authorizer
from bot.dispatcher import ChatSettings, Dispatcher
from bot.outbox import Outbox

log = logging.getLogger(__name__)


class ChatBot:
    """Runs the given adapters against `squall`. Call `start()`, and `stop()` at the end."""

    def __init__(self, squall: Squall, adapters: list[Adapter]) -> None:
        self.squall = squall
        self.adapters = {adapter.name: adapter for adapter in adapters}
        self.outbox = Outbox(squall.db, self.adapters)
        config = squall.config
        self.dispatcher = Dispatcher(
            squall=squall, matcher=AliasMatcher([]), outbox=self.outbox, adapters=self.adapters,
            auth=Authorizer.from_config(config.section("auth")),
            settings=ChatSettings.from_config(config.section("chat")),
        )
        self.reload()
        squall.executions.on_finished(self.dispatcher.on_finished)

    def reload(self) -> None:
        """Rebuild the alias index from the squall's current registry."""
        aliases, errors = load_aliases(self.squall.registry)
        for error in errors:
            log.warning("alias skipped: %s", error)
        self.dispatcher.matcher = AliasMatcher(aliases)
        self.dispatcher.aliases = {alias.ref: alias for alias in aliases}
        self.squall.announcer.aliases = self.dispatcher.aliases

    async def start(self) -> None:
        self.squall.announcer.outbox = self.outbox
        await self.outbox.poll()  # what an earlier run (or another process) left to send
        for adapter in self.adapters.values():
            await adapter.start(self.dispatcher.handle)

    async def stop(self) -> None:
        for adapter in self.adapters.values():
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping adapter %s failed", adapter.name)
        await self.outbox.close()
