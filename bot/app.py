"""The application: the engine with chat in front.

`Squall` is the `Engine` plus its chat side (`bot/chat/`), built together once: `squall serve`
gives it the configured adapters, a CLI command none (what it posts is stored for `squall
serve` to send), the tests a loopback. Everything that needs the chat side (the dispatcher, the
HTTP `aliasexecution` route, the web UI) reaches it as `squall.chat`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from adapters.base import Adapter
from bot.chat.bot import ChatBot
from engine.config import Config
from engine.core import Engine, load_packs
from engine.packs import Registry
from engine.storage import Store

__all__ = ["Squall", "load_packs"]


class Squall(Engine):
    """Use `await Squall.start(config, adapters=[...])`, `await squall.chat.start()` to connect the
    adapters, and `await squall.close()`."""

    def __init__(self, config: Config, store: Store, registry: Registry, adapters: Sequence[Adapter] = ()) -> None:
        super().__init__(config, store, registry)
        self.chat = ChatBot(self, adapters)

    def reload(self, registry: Registry | None = None) -> Registry:
        registry = super().reload(registry)
        self.chat.reload()
        return registry

    async def reload_packs(self) -> Registry:
        """Load the pack folders again and use them: packs, rules, aliases, warm Python workers and the
        sensors. `squall serve` calls it when pack files change; the web UI's Reload and its pack
        install call it too, so a reload means the same from either."""
        registry = self.reload(await asyncio.to_thread(load_packs, self.config))
        await self.python.recycle()
        await self.sync_sensors()
        return registry

    async def close(self) -> None:
        await self.chat.stop()
        await super().close()
