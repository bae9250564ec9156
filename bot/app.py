"""The application: the engine with chat in front.

`Squall` is the `Engine` plus its chat side (`bot/chat/`), built together once: `squall serve`
gives it the configured adapters, a CLI command none (what it posts is stored for `squall
serve` to send), the tests a loopback. Everything that needs the chat side (the dispatcher, the
HTTP `aliasexecution` route, the web UI) reaches it as `squall.chat`.
"""

from __future__ import annotations

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

    async def close(self) -> None:
        await self.chat.stop()
        await super().close()
