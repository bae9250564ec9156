"""Executors decide where and when a requested execution runs.

The interface is deliberately small, so a Celery executor for several machines can replace the
local one without touching runners or callers: it is handed execution ids that are already
stored as `requested`, and it calls `ExecutionService.run(id)` wherever it runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Executor(Protocol):
    async def submit(self, execution_id: str) -> None:
        """Arrange for a stored, requested execution to run."""

    async def cancel(self, execution_id: str) -> bool:
        """Stop a running execution; False if it is not running here."""

    async def close(self) -> None:
        """Stop accepting work and stop what is running (it is recorded as abandoned)."""


class LocalExecutor:
    """Runs executions as tasks on this process's event loop, at most `max_concurrency` at once.

    `unbounded(id)` names executions that take no slot: workflows, which only wait on their tasks;
    bounding them too would let enough workflows hold every slot while their tasks wait for one."""

    def __init__(self, run: Callable[[str], Awaitable[None]], max_concurrency: int = 64,
                 unbounded: Callable[[str], bool] = lambda _id: False) -> None:
        self._run = run
        self._unbounded = unbounded
        self._slots = asyncio.Semaphore(max_concurrency)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: The runs that took a slot and have not returned (`busy`: those of actions, which `drain` waits for).
        self._busy: set[str] = set()
        #: `close` was called: what is cut short now ends `abandoned` (`ExecutionService._interrupted`).
        self.closing = False
        #: Squall stops gracefully (`drain`): no run starts any more, those running may finish.
        self.draining = False
        #: Told each execution whose run here returned, however it went (`PolicyExecutor` frees its slots:
        #: a run that found nothing to claim, canceled or claimed by another process, ends unheard).
        self.on_done: Callable[[str], None] | None = None

    async def submit(self, execution_id: str) -> None:
        if self.closing or self.draining or execution_id in self._tasks:
            return  # stopping: it stays stored as it is, and the next start's recovery runs it
        task = asyncio.get_running_loop().create_task(self._guarded(execution_id), name=f"execution-{execution_id}")
        self._tasks[execution_id] = task
        task.add_done_callback(lambda _t: self._done(execution_id))

    def _done(self, execution_id: str) -> None:
        self._tasks.pop(execution_id, None)
        if self.on_done is not None:
            self.on_done(execution_id)

    async def _guarded(self, execution_id: str) -> None:
        if self._unbounded(execution_id):
            await self._run(execution_id)
            return
        async with self._slots:
            if self.draining:
                return  # the stop came while it waited for a slot: it never started, the next start runs it
            self._busy.add(execution_id)
            try:
                await self._run(execution_id)
            finally:
                self._busy.discard(execution_id)

    async def cancel(self, execution_id: str) -> bool:
        task = self._tasks.get(execution_id)
        if task is None:
            return False
        if not task.cancelling():  # a second cancel would cut its clean-up short: wait for the first's
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        return True

    @property
    def running(self) -> set[str]:
        return set(self._tasks)

    @property
    def busy(self) -> set[str]:
        """The actions running here now, without the workflows (which only wait on their tasks). A workflow
        another process requested takes a slot all the same: it is known as one only once its run claimed it."""
        return {execution_id for execution_id in self._busy if not self._unbounded(execution_id)}

    async def drain(self, grace: float, now: asyncio.Event) -> set[str]:
        """Squall stops gracefully: start nothing more, and give the actions running here up to `grace`
        seconds to finish, or until `now` is set (asked to stop again); those still running are returned,
        for `close` to cut short (recorded `abandoned`, as every run was at once before: a routine restart
        cut actions that had a second left, and a workflow's task cut so ran again from its start).

        Workflows are not waited for: they do no work of their own, and while Squall stops they start no
        new task (`ExecutionService.stopping`), so one whose next task waits would only hold the stop to
        its end. The tasks that end meanwhile are recorded; the next start conducts them on from there."""
        self.draining = True
        running = self.busy
        if not running or now.is_set():
            return running
        log.info("Squall is stopping: waiting up to %g s for %d running action%s to finish (nothing new starts; "
                 "what is requested meanwhile runs at the next start); stop again (SIGTERM or Ctrl-C) to abandon "
                 "them now", grace, len(running), "" if len(running) == 1 else "s")
        await self._until_idle(grace, now)
        left = self.busy
        if left:
            why = "asked to stop again" if now.is_set() else f"still running after {grace:g} s"
            log.warning("Squall is stopping: %s; abandoning %d action%s: %s", why, len(left),
                        "" if len(left) == 1 else "s", ", ".join(sorted(left)))
        else:
            log.info("Squall is stopping: the running actions finished")
        return left

    async def _until_idle(self, grace: float, now: asyncio.Event) -> None:
        """Wait until no action runs here, `grace` seconds pass, or `now` is set, whichever comes first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        asked = loop.create_task(now.wait(), name="stop-again")
        try:
            while (pending := [self._tasks[i] for i in self.busy if i in self._tasks]) and not now.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    return
                # Looked at again each second too: a workflow another process requested is known as one only
                # once its run claimed it, and a stop that came just before must not wait on it to the end.
                await asyncio.wait([*pending, asked], timeout=min(left, 1.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asked

    async def close(self) -> None:
        self.closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
