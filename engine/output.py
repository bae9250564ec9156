"""Live output of running actions, as StackStorm streams it (spec §10.3): what the shell, Python and
remote runners print, stored in `execution_output` while the action runs.

A runner hands each chunk it reads to its request's `on_output` (an `OutputSink`, one per run). The
sink decodes it, scrubs secrets, caps it and queues it on the process's `OutputRecorder`, which
writes what queued in one batch at most `FLUSH_SECONDS` after the first chunk (sooner once
`FLUSH_BYTES` queued) and then publishes `EXECUTION_OUTPUT` with the execution's id: readers in this
process wake at once, readers elsewhere (serve watching a `squall worker`'s run) poll the table. A
chatty action costs a write per batch, never one per line; a quiet one (an `echo`) costs the one
write its end flushes, and an action that prints nothing costs none.

Secrets are scrubbed as the result is (`engine.executions.scrub`: each secret text becomes the
mask). A secret may arrive split across two chunks, so the sink holds back the end of what it has
until it cannot be the start of a secret: text goes out through its last line end, or up to the
last `longest secret - 1` characters, whichever is further, and never through the middle of a
secret it can already see. The end of the run lets the rest out. The result's stdout and stderr are
kept as before; this table is the live view, capped at `STREAM_CAP` characters per stream.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from collections.abc import Callable
from typing import Any

from engine.events import EXECUTION_OUTPUT, Events
from engine.parameters import MASK
from engine.storage import Database, database_trouble, utcnow

log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")
#: The longest a chunk waits in memory before it is written (and seen by other processes).
FLUSH_SECONDS = 0.1
#: Queued characters that make a batch go at once, without waiting for `FLUSH_SECONDS`.
FLUSH_BYTES = 64 * 1024
#: Characters stored per stream and execution (1 MiB of ASCII); the rest is dropped after `TRUNCATED`.
STREAM_CAP = 1024 * 1024
TRUNCATED = "\n[output truncated]\n"


def releasable(text: str, secrets: list[str]) -> int:
    """How much of `text` can go out now without cutting a secret that the next chunk may complete.

    Through the last line end, or all but the last `longest - 1` characters (a secret is no longer than
    that), whichever is further; then moved back before any secret the cut would split. A secret with a
    line end in it holds back by length only."""
    if not secrets:
        return len(text)
    longest = max(len(secret) for secret in secrets)
    cut = len(text) - longest + 1
    if not any("\n" in secret for secret in secrets):
        cut = max(cut, text.rfind("\n") + 1)
    if cut <= 0:
        return 0
    moved = True
    while moved:
        moved = False
        for secret in secrets:
            start = text.find(secret, max(0, cut - len(secret) + 1))
            if start != -1 and start < cut:
                cut, moved = start, True
    return cut


def _scrubbed(text: str, secrets: list[str]) -> str:
    """`text` with every secret masked (the string case of `engine.executions.scrub`, which imports us)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class OutputRecorder:
    """The process's writer of live output: every running execution's chunks share its batches."""

    def __init__(self, db: Database, events: Events) -> None:
        self.db = db
        self.events = events
        self._rows: list[dict[str, Any]] = []
        self._queued = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()  # one batch at a time: rows reach the table in the order they came
        self._tasks: set[asyncio.Task[None]] = set()

    def sink(self, execution_id: str, secrets: Callable[[], list[str]]) -> OutputSink:
        """The `on_output` of one run; `secrets()` says what to scrub now (an action that reads a secret
        from the datastore while it runs adds to it)."""
        return OutputSink(self, execution_id, secrets)

    def queue(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._queued += len(row["data"])
        if self._queued >= FLUSH_BYTES:
            self._cancel_timer()
            self._start_flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._start_flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_flush(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Write what is queued in one batch, then tell this process's readers which executions have more.

        A failed write is logged and its rows dropped: the live view loses them, the result keeps them."""
        self._cancel_timer()
        async with self._lock:
            rows, self._rows, self._queued = self._rows, [], 0
            if not rows:
                return
            try:
                await self.db(self.db.store.execution_output_add, rows)
            except Exception as exc:
                trouble = database_trouble(exc)
                if trouble is None:
                    log.exception("could not store %d chunks of live output (the results keep their output)",
                                  len(rows))
                else:  # the database's outage is said by `Database`: one line, no traceback, per flush
                    log.warning("could not store %d chunks of live output: %s (the results keep their output)",
                                len(rows), trouble)
                return
        for execution_id in dict.fromkeys(row["execution_id"] for row in rows):
            self.events.publish(EXECUTION_OUTPUT, execution_id)


class OutputSink:
    """One run's stdout and stderr on their way to the table: decoded, held back at a possible secret,
    scrubbed and capped. Call it with `(stream, bytes or text)`; `close()` when the run ended."""

    def __init__(self, recorder: OutputRecorder, execution_id: str, secrets: Callable[[], list[str]]) -> None:
        self.recorder = recorder
        self.execution_id = execution_id
        self.secrets = secrets
        #: Made at a stream's first bytes: most runs (noop, Python actions returning a value) print nothing.
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._held = dict.fromkeys(STREAMS, "")
        self._stored = dict.fromkeys(STREAMS, 0)
        self._wrote = False

    def __call__(self, stream: str, data: bytes | str) -> None:
        if stream not in STREAMS:
            raise ValueError(f"output stream must be one of {', '.join(STREAMS)}, not {stream!r}")
        if isinstance(data, bytes):
            decoder = self._decoders.get(stream)
            if decoder is None:
                decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
            text = decoder.decode(data)
        else:
            text = data
        if text:
            self._release(stream, self._held[stream] + text, final=False)

    def _release(self, stream: str, text: str, *, final: bool) -> None:
        if self._stored[stream] > STREAM_CAP:  # truncated already: nothing more is kept
            self._held[stream] = ""
            return
        secrets = self.secrets()
        cut = len(text) if final else releasable(text, secrets)
        self._held[stream] = text[cut:]
        if cut:
            self._store(stream, _scrubbed(text[:cut], secrets))

    def _store(self, stream: str, text: str) -> None:
        room = STREAM_CAP - self._stored[stream]
        if len(text) > room:
            text = text[:room] + TRUNCATED
            self._stored[stream] = STREAM_CAP + 1
        else:
            self._stored[stream] += len(text)
        self._wrote = True
        self.recorder.queue({"execution_id": self.execution_id, "stream": stream, "data": text,
                             "timestamp": utcnow()})

    async def close(self) -> None:
        """Let out what was held and write it, so the table has all of it before the execution ends."""
        for stream in STREAMS:
            decoder = self._decoders.get(stream)
            rest = self._held[stream] + (decoder.decode(b"", final=True) if decoder is not None else "")
            if rest:
                self._release(stream, rest, final=True)
        if self._wrote:
            await self.recorder.flush()
