"""The application: the engine with chat in front.

`Squall` is the `Engine` plus its chat side (`bot/chat/`), built together once: `squall serve`
gives it the configured adapters, a CLI command none (what it posts is stored for `squall
serve` to send), the tests a loopback. Everything that needs the chat side (the dispatcher, the
HTTP `aliasexecution` route, the web UI) reaches it as `squall.chat`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.base import Adapter
from bot.chat.bot import ChatBot
from engine.config import Config
from engine.content_files import ContentFileError, set_enabled
from engine.core import Engine, load_packs
from engine.packs import Registry
from engine.storage import Store

if TYPE_CHECKING:
    from engine.rules import Rule

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

    async def set_rule_enabled(self, rule: Rule, enabled: bool, event: str, actor: str | None, source: str) -> None:
        """Turn `rule` on or off in its pack file and reload the packs, so it fires, or stops, at once: the
        web UI's switch and `st2 rule enable|disable` alike (`set_enabled`)."""
        await self.set_enabled("rule", rule.ref, rule.pack, rule.file, enabled, default=False, event=event,
                               actor=actor, source=source)

    async def set_enabled(self, kind: str, ref: str, pack: str, file: str, enabled: bool, *, default: bool,
                          event: str, actor: str | None, source: str) -> None:
        """Turn the pack content `ref` of `kind` (a rule, an action, a sensor) on or off in its metadata file
        `file` and reload the packs, so it acts, or stops, at once (a sensor is started or stopped, an action
        taken or refused at request); audited as `event` when the state changed. A request for the state it
        is in already (`st2 rule enable` of an enabled rule) changes nothing, and writes no row that would
        say it did. `default` is what the file means without `enabled:` (`content_files.set_enabled`).
        `ContentFileError` for content of a pack shipped with Squall (its files are Squall's), or a file
        laid out so that it will not be rewritten."""
        found = self.registry.packs.get(pack)
        if found is None or found.system:
            raise ContentFileError(f"{ref} belongs to a pack shipped with Squall, whose files are not changed "
                                   f"here: install a pack of your own with the {kind} you want.")
        if await asyncio.to_thread(set_enabled, Path(file), enabled, default):
            await self.reload_packs()
            await self.db(self.store.audit_add, event, actor, source, ref, {"file": file})

    async def close(self) -> None:
        await self.chat.stop()
        await super().close()
