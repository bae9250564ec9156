"""`squall worker`: runs the executions `squall serve` nodes queue (`executor.kind: procrastinate`).

A worker is the engine with its chat side but no HTTP API. Its adapters are built from config, never
connected: what its executions owe chat (results in their thread, questions, `notify` messages,
`chatops.post_*`) is fitted to them and stored in the durable outbox, which stays held here; the
`squall serve` nodes deliver it as soon as it commits (PostgreSQL notifies them, `engine/wakeups.py`).
It takes jobs from its queues through procrastinate (woken by `LISTEN/NOTIFY`, polling as a safety
net), at most `concurrency` at once: an action's run, or one step of a workflow (whose tasks are
jobs of their own, on their queues).
Every worker also ends what workers that stopped answering left (`engine.jobs.reap_stalled`) and
submits what waits for a node to (`_poll_forever`: delays that are over, what a policy delayed).
At its start it expires the questions whose TTL ran out while the worker that asked them was gone,
and arms timers for the rest (`InquiryService.recover`).

SIGTERM or SIGINT stops taking jobs; running actions get up to `drain` seconds to finish (what
still runs then ends `abandoned`). Workflows need no hand-back: between steps no worker holds
them. A second signal stops at once (the reaper of another node then ends its executions within
`engine.jobs.STALLED_SECONDS`).
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
from bot.service import configured_adapters, settle_heap
from engine.config import Config, ConfigError
from engine.executions import STEPPING
from engine.jobs import HEARTBEAT_SECONDS, REAP_SECONDS, STALLED_SECONDS, pack_mismatch, reap_forever, worker_app

log = logging.getLogger("squall.worker")


def worker_name() -> str:
    """How this worker shows in logs and in its executions' `runner_info`."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """One `squall worker` process: the engine, its procrastinate App, and what ends its work."""

    def __init__(self, squall: Squall, queues: list[str] | None = None) -> None:
        self.squall = squall
        self.executions = squall.executions
        self.name = worker_name()
        self.queues = queues
        self.stopping = False
        self.running: set[str] = set()  # the executions whose jobs run here now

    async def run_job(self, execution_id: str, owner: dict[str, Any]) -> None:
        """A job's body: refuse a request made with other pack content, else claim and run it, or
        conduct the workflow it names one step on."""
        executions, store = self.executions, self.executions.db.store
        record = await executions.db(store.get_execution, execution_id)
        if record is None:
            return
        # Not yet run (a delayed one too): a resumed workflow runs on what it started with.
        queued = ("requested", "scheduled", "delayed")
        refused = pack_mismatch(self.squall.registry, record) if record["status"] in queued else None
        if refused is not None:
            log.error("execution %s refused: %s", execution_id, refused)
            await executions.complete(execution_id, "failed", {"error": refused}, queued)
            return
        self.running.add(execution_id)
        try:
            if record["status"] in STEPPING and executions.resumable(record["runner"]):
                await executions.step(execution_id, owner)
            else:
                await executions.run(execution_id, owner)
        finally:
            self.running.discard(execution_id)

    def stop(self, jobs: asyncio.Task[None], drain: float | None) -> None:
        """A stop signal: the first drains (see the module's docstring), another stops at once."""
        if self.stopping:
            log.warning("squall worker %s: stopping now", self.name)
        else:
            log.info("squall worker %s: stopping (running actions get up to %s s)", self.name, drain)
            self.stopping = True
            self.squall.jobs.closing = True  # type: ignore[union-attr]  # what is cut short ends `abandoned`
        jobs.cancel()  # procrastinate takes no new job and gives running ones `drain` seconds


async def _poll_forever(squall: Squall) -> None:
    """Every `REAP_SECONDS`, submit what waits for a node to do it, as serve's poll does: what a
    concurrency policy delayed (admitted once a slot is free), workflow tasks whose `delay` is over
    (their step's worker may be gone), requests whose job was never written. So a cluster runs them
    with no serve node up."""
    while True:
        await asyncio.sleep(REAP_SECONDS)
        try:
            await squall.executions.poll()
        except Exception:  # the next pass tries again; a worker must not die of it
            log.exception("could not look for executions waiting to be submitted")


async def work(config: Config, queues: list[str] | None, concurrency: int, drain: float | None = 600.0,
               health: tuple[str, int] | None = None) -> None:
    """Run jobs of `queues` (all when None) until a stop signal; `health`: where to answer `/healthz`."""
    if config.executor_kind != "procrastinate":
        raise ConfigError(f"{config.path}: squall worker runs the jobs of 'executor.kind: procrastinate' (with "
                          f"PostgreSQL); this config's executor is {config.executor_kind!r}, whose executions "
                          "squall serve runs itself")
    squall = await Squall.start(config, adapters=configured_adapters(config))
    # Each pack's content hash now, as loaded: a pack edited on disk later is not what runs here.
    await asyncio.to_thread(lambda: [pack.content_hash() for pack in squall.registry.packs.values()])
    # Questions whose TTL timer went with a worker that stopped: the overdue expire now, the others get a
    # timer here (the lead's minute sweep does the same; one query over what is pending).
    await squall.inquiries.recover()
    worker = Worker(squall, queues)
    app = worker_app(config, worker.run_job)
    helpers = [asyncio.create_task(reap_forever(squall.executions, squall.jobs), name="squall-reaper"),
               asyncio.create_task(_poll_forever(squall), name="squall-poll")]
    server = None
    if health is not None:
        from bot.http.health import worker_api
        from bot.http.server import ApiServer

        server = ApiServer(squall, host=health[0], port=health[1], app=worker_api(worker))
        try:
            await server.start()
        except (OSError, RuntimeError, SystemExit) as exc:
            await squall.close()
            raise ConfigError(f"--health-port {health[1]}: cannot listen on {health[0]}:{health[1]} (in use, or "
                              f"not this machine's address): {exc}") from None
        log.info("squall worker %s: health at http://%s:%d/healthz", worker.name, *health)
    log.info("squall worker %s: queues %s, %d at once, %d packs, %d actions", worker.name,
             ", ".join(queues) if queues else "all", concurrency, len(squall.registry.packs),
             len(squall.registry.actions))
    settle_heap()  # as squall serve does once it is up
    try:
        async with app.open_async():
            jobs = asyncio.create_task(app.run_worker_async(
                queues=queues, concurrency=concurrency, name=worker.name, shutdown_graceful_timeout=drain,
                install_signal_handlers=False, update_heartbeat_interval=HEARTBEAT_SECONDS,
                stalled_worker_timeout=STALLED_SECONDS))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop, jobs, drain)
            with contextlib.suppress(asyncio.CancelledError):
                await jobs
    finally:
        log.info("squall worker %s is stopping", worker.name)
        if server is not None:
            await server.stop()
        for task in helpers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await squall.close()
