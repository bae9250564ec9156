"""`squall worker`: runs the executions `squall serve` nodes queue (`executor.kind: procrastinate`).

A worker is the engine with its chat side but no HTTP API. Its adapters are built from config, never
connected: what its executions owe chat (results in their thread, questions, `notify` messages,
`chatops.post_*`) is fitted to them and stored in the durable outbox, which stays held here; the
`squall serve` nodes deliver it on their next outbox poll. It takes jobs from its queues through
procrastinate (woken by `LISTEN/NOTIFY`, polling as a safety net), at most `concurrency` at once;
a workflow is conducted where its job runs and its tasks run beside it. Every worker also ends
what workers that stopped answering left (`engine.jobs.reap_stalled`).

SIGTERM or SIGINT stops taking jobs and lets running ones finish for up to `drain` seconds; what
is still running then ends `abandoned` (a second signal stops at once, and the reaper of another
node ends its executions within `engine.jobs.STALLED_SECONDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from typing import Any

from bot.app import Squall
from bot.service import configured_adapters
from engine.config import Config, ConfigError
from engine.jobs import HEARTBEAT_SECONDS, STALLED_SECONDS, defer, pack_mismatch, reap_forever, worker_app

log = logging.getLogger("squall.worker")


def worker_name() -> str:
    """How this worker shows in logs and in its executions' `runner_info`."""
    return f"{socket.gethostname()}:{os.getpid()}"


async def work(config: Config, queues: list[str] | None, concurrency: int, drain: float | None = 600.0) -> None:
    """Run jobs of `queues` (all when None) until a stop signal."""
    if config.executor_kind != "procrastinate":
        raise ConfigError(f"{config.path}: squall worker runs the jobs of 'executor.kind: procrastinate' (with "
                          f"PostgreSQL); this config's executor is {config.executor_kind!r}, whose executions "
                          "squall serve runs itself")
    squall = await Squall.start(config, runs_jobs=True, adapters=configured_adapters(config))
    executions = squall.executions
    local = squall.policies.inner  # what this worker's workflows request runs here
    store = executions.db.store

    async def run(execution_id: str, owner: dict[str, Any]) -> None:
        record = await executions.db(store.get_execution, execution_id)
        if record is None:
            return
        refused = pack_mismatch(squall.registry, record) if record["status"] == "requested" else None
        if refused is not None:
            log.error("execution %s refused: %s", execution_id, refused)
            await executions.complete(execution_id, "failed", {"error": refused}, ("requested",))
            return
        await executions.run(execution_id, owner)
        if local.closing:  # stopped midway: a workflow left `running` goes to another worker
            moved = await executions.db(store.update_execution, execution_id, {"status": "resuming"},
                                        expect=("running", "pausing"))
            if moved:
                record = await executions.db(store.get_execution, execution_id)
                await executions.db(defer, store, execution_id, config.queue_for(record["action"]))
                log.info("workflow %s handed back to the queue", execution_id)

    app = worker_app(config, run)
    reaper = asyncio.create_task(reap_forever(executions), name="squall-reaper")
    name = worker_name()
    log.info("squall worker %s: queues %s, %d at once, %d packs, %d actions", name,
             ", ".join(queues) if queues else "all", concurrency, len(squall.registry.packs),
             len(squall.registry.actions))
    try:
        async with app.open_async():
            worker = asyncio.create_task(app.run_worker_async(
                queues=queues, concurrency=concurrency, name=name, shutdown_graceful_timeout=drain,
                install_signal_handlers=False, update_heartbeat_interval=HEARTBEAT_SECONDS,
                stalled_worker_timeout=STALLED_SECONDS))

            def stop() -> None:
                """First signal: take no new job and start nothing new; running actions finish (up to
                `drain`), workflows are handed back. Another signal: stop at once."""
                log.info("squall worker %s: stopping (running actions get up to %s s)", name, drain)
                local.closing = True
                worker.cancel()

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop)
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    finally:
        log.info("squall worker %s is stopping", name)
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await squall.close()
