"""Following a running execution's output until it ends: what the API's and the web UI's streams read.

The output table (`engine/output.py`) is the truth, so a reader sees the same chunks whichever
process ran the action. In the process that runs it, `EXECUTION_OUTPUT` and `EXECUTION_FINISHED`
wake the reader at once; otherwise (a `squall worker` runs it) the reader looks every
`POLL_SECONDS`. The status is read before the chunks, so the read that sees the execution ended also
sees all its output: the runner stores the last of it before the execution ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from engine.events import EXECUTION_FINISHED, EXECUTION_OUTPUT
from engine.executions import COMPLETED, ExecutionService

#: How often a reader looks at the table when no event of this process woke it.
POLL_SECONDS = 0.25
_BATCH = 1000


class Wakeup:
    """An event set whenever this process stores output for, or finishes, one execution or one of its
    tasks (or finishes any execution, with `execution_id=None`); a context manager, so the subscriptions
    end with the reader."""

    def __init__(self, service: ExecutionService, execution_id: str | None) -> None:
        self.events = service.events
        self.execution_id = execution_id
        self.event = asyncio.Event()

    def _output(self, execution_id: str) -> None:
        if execution_id == self.execution_id:
            self.event.set()

    def _finished(self, record: dict[str, Any]) -> None:
        if self.execution_id in (None, record["id"], record.get("parent")):
            self.event.set()

    def __enter__(self) -> Wakeup:
        if self.execution_id is not None:
            self.events.subscribe(EXECUTION_OUTPUT, self._output)
        self.events.subscribe(EXECUTION_FINISHED, self._finished)
        return self

    def __exit__(self, *_: object) -> None:
        self.events.unsubscribe(EXECUTION_OUTPUT, self._output)
        self.events.unsubscribe(EXECUTION_FINISHED, self._finished)

    async def wait(self, seconds: float) -> None:
        """Until woken or `seconds` passed, whichever is first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), seconds)
        self.event.clear()


async def follow_output(service: ExecutionService, execution_id: str, *, stream: str | None = None,
                        after: int = 0) -> AsyncIterator[dict[str, Any]]:
    """The execution's output chunks after chunk id `after` (`stream` only, if given), as they are
    stored, until the execution has ended and every chunk was given."""
    store = service.db.store
    with Wakeup(service, execution_id) as wakeup:
        while True:
            record = await service.db(store.get_execution, execution_id)
            ended = record is None or record["status"] in COMPLETED
            rows = await service.db(store.execution_output_list, execution_id, after=after, stream=stream,
                                    limit=_BATCH)
            for row in rows:
                yield row
            if rows:
                after = rows[-1]["id"]
                if len(rows) == _BATCH:
                    continue
            if ended:
                return
            await wakeup.wait(POLL_SECONDS)
