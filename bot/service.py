"""`squall serve`: the long-running service on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from bot.app import Squall, load_packs
from bot.config import SYSTEM_PACKS_PATH, Config
from engine.packs import fingerprint

log = logging.getLogger("squall")
POLL_SECONDS = 1.0
PURGE_SECONDS = 60.0


async def reload(squall: Squall) -> None:
    """Pick up edited, installed and removed packs without a restart."""
    registry = squall.reload(await asyncio.to_thread(load_packs, squall.config))
    await squall.python.recycle()
    log.info("packs reloaded: %d packs, %d actions", len(registry.packs), len(registry.actions))
    for error in registry.errors:
        log.warning("pack content skipped: %s", error)


async def serve_forever(config: Config, stop_signals: tuple[signal.Signals, ...] = ()) -> None:
    """Start, recover pending work, then keep running stored requests until told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    squall = await Squall.start(config, recover=True)
    log.info("Squall is serving: %d packs, %d actions, database %s", len(squall.registry.packs),
             len(squall.registry.actions), config.database_url.split("@")[-1])
    pack_paths = [SYSTEM_PACKS_PATH, *config.pack_paths, config.configs_path]
    seen = await asyncio.to_thread(fingerprint, pack_paths)
    ticks = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
            try:
                # Packs first: a request stored by the CLI may name an action installed just before.
                current = await asyncio.to_thread(fingerprint, pack_paths)
                if current != seen:
                    seen = current
                    await reload(squall)
                await squall.executions.poll()
                ticks += 1
                if ticks % int(PURGE_SECONDS / POLL_SECONDS) == 0:
                    await squall.db(squall.datastore.purge_expired)
            except Exception:
                log.exception("background housekeeping failed; retrying")
    finally:
        log.info("Squall is stopping")
        await squall.close()
