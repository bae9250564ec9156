"""What the engine tells whoever listens: the one subscription interface between the engine and
the rest (the chat side, the web UI, tests).

The engine never calls chat code. It publishes what happened — an execution finished, an
inquiry waits for an answer, a notification is due, a pack asks to post to chat — and whoever
subscribed acts on it. A process without chat (a `squall worker`, a CLI command without chat
routes) simply has nobody subscribed: what the chat side would have stored, its sweep in
`squall serve` stores later, so nothing depends on the subscriber being in the same process.

Handlers are called in the publisher's loop, in subscription order. A handler returning a
coroutine has it run as a task tracked here (`busy`), so a publisher on the hot path
(every finished execution) pays one call per subscriber and no task when there is nothing to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: An execution finished (or paused, or waits as an inquiry): the public record.
EXECUTION_FINISHED = "execution.finished"
#: An inquiry was created and waits for an answer: its record.
INQUIRY_PENDING = "inquiry.pending"
#: An execution's `notify` owes messages to routes: the record and [(route, message), ...].
NOTIFICATION_DUE = "notification.due"
#: A running execution's output was stored (`engine/output.py`): its id; read the rows from the table.
EXECUTION_OUTPUT = "execution.output"
#: The `announcement` runner (chatops.post_message / post_result) asks for delivery: answered by one handler.
ANNOUNCE = "announce"
#: `chatops.format_execution_result` asks for an execution's result as chat shows it: answered by one handler.
FORMAT_RESULT = "format_result"

Handler = Callable[..., Any]


class NobodyListens(LookupError):
    """`ask` found no handler: the process has no part that can answer (no chat side, say)."""


class Events:
    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler(*args)` on every `publish(topic, *args)` (until `unsubscribe`)."""
        self._handlers.setdefault(topic, []).append(handler)

    def unsubscribe(self, topic: str, handler: Handler) -> None:
        """Stop calling `handler` for `topic` (nothing happens if it was not subscribed)."""
        handlers = self._handlers.get(topic, [])
        if handler in handlers:
            handlers.remove(handler)

    def publish(self, topic: str, *args: Any) -> None:
        """Tell every handler; a failing handler is logged and the others still hear it."""
        for handler in self._handlers.get(topic, ()):
            try:
                outcome = handler(*args)
                # Most handlers return None: asyncio.iscoroutine on it walks an ABC's instance check.
                if outcome is not None and asyncio.iscoroutine(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            except Exception:
                log.exception("a handler of %s failed", topic)

    async def ask(self, topic: str, *args: Any) -> Any:
        """The answer of the topic's one handler (awaited if it is a coroutine)."""
        handlers = self._handlers.get(topic)
        if not handlers:
            raise NobodyListens(f"nothing in this process answers {topic!r}")
        outcome = handlers[0](*args)
        return await outcome if asyncio.iscoroutine(outcome) else outcome

    @property
    def busy(self) -> int:
        """Handlers' tasks still running (results being posted, say)."""
        return len(self._tasks)

    async def settle(self) -> None:
        """Wait until the handlers' tasks are done, and those their work published in turn (a workflow
        canceled here cancels its tasks from its handler; their ends are published again): a process
        about to close (a CLI command) carries out what it told, instead of its loop dropping it. A
        caller that bounds the wait leaves the tasks running: `asyncio.wait` cancels none of them."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a handler failed: %s", task.exception(), exc_info=task.exception())
