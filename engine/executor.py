"""Executors decide where and when a requested execution runs.

The interface is deliberately small, so a Celery executor for several machines can replace the
local one without touching runners or callers: it is handed execution ids that are already
stored as `requested`, and it calls `ExecutionService.run(id)` wherever it runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol


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
        self.closing = False
        #: Told each execution whose run here returned, however it went (`PolicyExecutor` frees its slots:
        #: a run that found nothing to claim, canceled or claimed by another process, ends unheard).
        self.on_done: Callable[[str], None] | None = None

    async def submit(self, execution_id: str) -> None:
        if self.closing or execution_id in self._tasks:
            return
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
            await self._run(execution_id)

    async def cancel(self, execution_id: str) -> bool:
        task = self._tasks.get(execution_id)
        if task is None:
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        return True

    @property
    def running(self) -> set[str]:
        return set(self._tasks)

    async def close(self) -> None:
        self.closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
