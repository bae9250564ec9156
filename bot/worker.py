"""`squall worker`: runs the executions `squall serve` nodes queue (`executor.kind: procrastinate`).

A worker is the engine with its chat side but no HTTP API. Its adapters are built from config, never
connected: what its executions owe chat (results in their thread, questions, `notify` messages,
`chatops.post_*`) is fitted to them and stored in the durable outbox, which stays held here; the
`squall serve` nodes deliver it on their next outbox poll. It takes jobs from its queues through
procrastinate (woken by `LISTEN/NOTIFY`, polling as a safety net), at most `concurrency` at once;
a workflow is conducted where its job runs and its tasks run beside it. Every worker also ends
what workers that stopped answering left (`engine.jobs.reap_stalled`).

SIGTERM or SIGINT stops taking jobs and starting tasks; running actions get up to `drain` seconds
to finish (what still runs then ends `abandoned`), and a workflow, once its running tasks ended, is
handed back to the queue for another worker to conduct on. A second signal stops at once (the
reaper of another node then ends its executions within `engine.jobs.STALLED_SECONDS`).
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
from bot.service import POLL_SECONDS, configured_adapters
from engine.config import Config, ConfigError
from engine.jobs import HEARTBEAT_SECONDS, STALLED_SECONDS, defer, pack_mismatch, reap_forever, worker_app

log = logging.getLogger("squall.worker")


def worker_name() -> str:
    """How this worker shows in logs and in its executions' `runner_info`."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """One `squall worker` process: the engine, its procrastinate App, and what ends its work."""

    def __init__(self, squall: Squall, drain: float | None) -> None:
        self.squall = squall
        self.executions = squall.executions
        self.local = squall.policies.inner  # runs what this worker's workflows request
        self.drain = drain
        self.name = worker_name()
        self.conducting: dict[str, asyncio.Task[Any]] = {}  # workflow id -> the job task conducting it
        self.stopping: asyncio.Task[None] | None = None

    async def run_job(self, execution_id: str, owner: dict[str, Any]) -> None:
        """A job's body: refuse a request made with other pack content, else claim and run it."""
        executions, store = self.executions, self.executions.db.store
        record = await executions.db(store.get_execution, execution_id)
        if record is None:
            return
        queued = ("requested", "scheduled")  # not yet run: a resumed workflow runs on what it started with
        refused = pack_mismatch(self.squall.registry, record) if record["status"] in queued else None
        if refused is not None:
            log.error("execution %s refused: %s", execution_id, refused)
            await executions.complete(execution_id, "failed", {"error": refused}, queued)
            return
        if executions.resumable(record["runner"]):
            self.conducting[execution_id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            await executions.run(execution_id, owner)
        finally:
            self.conducting.pop(execution_id, None)
        if self.local.closing:
            await self.hand_back(execution_id)

    async def hand_back(self, execution_id: str) -> None:
        """A workflow this worker stopped conducting goes back to the queue, `resuming`."""
        store = self.executions.db.store
        if await self.executions.db(store.update_execution, execution_id, {"status": "resuming"},
                                    expect=("running", "pausing")):
            record = await self.executions.db(store.get_execution, execution_id)
            await self.executions.db(defer, store, execution_id, self.squall.config.queue_for(record["action"]))
            log.info("workflow %s handed back to the queue", execution_id)

    async def watch(self) -> None:
        """Pauses and cancels of what runs here (a workflow, or a task inside one) come as statuses."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.executions.poll(take=False)
            except Exception:  # the next round tries again; a worker must not die of it
                log.exception("could not look for pauses and cancels")

    def stop(self, jobs: asyncio.Task[None]) -> None:
        """A stop signal: the first drains (see the module's docstring), another stops at once."""
        if self.stopping is not None:
            log.warning("squall worker %s: stopping now", self.name)
            jobs.cancel()
            for task in self.conducting.values():
                task.cancel()
            return
        log.info("squall worker %s: stopping (running actions get up to %s s)", self.name, self.drain)
        self.local.closing = True  # no new task starts here
        jobs.cancel()  # procrastinate takes no new job and gives running ones `drain` seconds
        self.stopping = asyncio.get_running_loop().create_task(self._hand_back_workflows())

    async def _hand_back_workflows(self) -> None:
        """Once the tasks running here ended (or `drain` passed), stop conducting: the workflows go
        back to the queue, where another worker starts the tasks they still need."""
        loop = asyncio.get_running_loop()
        deadline = None if self.drain is None else loop.time() + self.drain
        while self.local.running and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.1)
        for task in list(self.conducting.values()):
            task.cancel()


async def work(config: Config, queues: list[str] | None, concurrency: int, drain: float | None = 600.0) -> None:
    """Run jobs of `queues` (all when None) until a stop signal."""
    if config.executor_kind != "procrastinate":
        raise ConfigError(f"{config.path}: squall worker runs the jobs of 'executor.kind: procrastinate' (with "
                          f"PostgreSQL); this config's executor is {config.executor_kind!r}, whose executions "
                          "squall serve runs itself")
    squall = await Squall.start(config, runs_jobs=True, adapters=configured_adapters(config))
    # Each pack's content hash now, as loaded: a pack edited on disk later is not what runs here.
    await asyncio.to_thread(lambda: [pack.content_hash() for pack in squall.registry.packs.values()])
    worker = Worker(squall, drain)
    app = worker_app(config, worker.run_job)
    helpers = [asyncio.create_task(reap_forever(squall.executions), name="squall-reaper"),
               asyncio.create_task(worker.watch(), name="squall-watch")]
    log.info("squall worker %s: queues %s, %d at once, %d packs, %d actions", worker.name,
             ", ".join(queues) if queues else "all", concurrency, len(squall.registry.packs),
             len(squall.registry.actions))
    try:
        async with app.open_async():
            jobs = asyncio.create_task(app.run_worker_async(
                queues=queues, concurrency=concurrency, name=worker.name, shutdown_graceful_timeout=drain,
                install_signal_handlers=False, update_heartbeat_interval=HEARTBEAT_SECONDS,
                stalled_worker_timeout=STALLED_SECONDS))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop, jobs)
            with contextlib.suppress(asyncio.CancelledError):
                await jobs
    finally:
        log.info("squall worker %s is stopping", worker.name)
        for task in helpers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await squall.close()
