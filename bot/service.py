"""`squall serve`: the long-running service on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from bot.app import Squall
from bot.config import Config

log = logging.getLogger("squall")
POLL_SECONDS = 1.0
PURGE_SECONDS = 60.0


async def serve_forever(config: Config, stop_signals: tuple[signal.Signals, ...] = ()) -> None:
    """Start, recover pending work, then keep running stored requests until told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stop.set)
    squall = await Squall.start(config, recover=True)
    log.info("Squall is serving: %d packs, %d actions, database %s", len(squall.registry.packs),
             len(squall.registry.actions), config.database_url.split("@")[-1])
    ticks = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
            try:
                await squall.executions.poll()
                ticks += 1
                if ticks % int(PURGE_SECONDS / POLL_SECONDS) == 0:
                    await squall.db(squall.datastore.purge_expired)
            except Exception:
                log.exception("background housekeeping failed; retrying")
    finally:
        log.info("Squall is stopping")
        await squall.close()
