"""`/stream/v1/stream`: StackStorm's event stream (`st2 execution tail`, `st2 run --tail`).

StackStorm's stream service relays its message bus as server-sent events (`event: NAME` and `data: JSON`
lines), filtered by `events` (name globs; StackStorm's default list without it), `action_refs` and
`execution_ids`, and ending after the `end_event` of `end_execution_id` in a completed status. Squall
has no bus between processes: the executions and `execution_output` tables are the truth (an action a
`squall worker` runs shows too), so the stream reads them, woken at once by `engine.live.Wakeup` for what
this process does and looking every `POLL_SECONDS` otherwise, as the output tail and the web UI do.

Events sent: `st2.execution__create`, `st2.execution__update` (the execution as `GET /executions/{id}`
gives it, on each change of status) and `st2.execution.output__create` (a stored chunk: `execution_id`,
`action_ref`, `runner_ref`, `timestamp`, `output_type`, `data`; secrets masked as they were stored, as
`GET /executions/{id}/output` gives them), and `st2.announcement__<route>` (what an `announcement` run
published, `chatops.post_message` and `chatops.post_result`: `{"payload": <action parameters>,
"trace_context": ...}`, as StackStorm's, read from the run's stored result by
`engine.runners.announcement.announced`, so one a worker ran is found as its executions are; sent when
the run ended `succeeded`, before its final update). An announcement names no action nor execution, so
a stream given `action_refs` or `execution_ids` carries none, as StackStorm's.

What is followed depends on what was asked:

- `end_execution_id` (what `st2 execution tail` sends): that execution and its descendants (a
  workflow's tasks), from where they are when the stream opens, so nothing printed between st2's
  `GET` and its connection is lost and an execution that ended meanwhile still ends the stream. Each
  execution's update comes before its output (st2 prints a task's output only once it knows the task),
  and an execution's final update after its output and its tasks' (st2 stops at the last).
- `execution_ids` alone: those executions, the same way.
- neither: every execution, from the moment the stream opens.

A stream lasts only as long as the key or token that opened it: `bot.http.key_auth.until_revoked` looks
at it again every few seconds and closes the stream once it was deleted, disabled, expired or its
execution ended (a key from the config file stays valid until a restart).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sse_starlette import EventSourceResponse

from bot.http.executions import MAX_CHILDREN, OUTPUT_CREATE, PING_SECONDS, execution_doc
from bot.http.key_auth import until_revoked
from bot.http.state import api_state
from engine.executions import COMPLETED, STATUSES, ExecutionNotFound, public
from engine.live import POLL_SECONDS, Wakeup
from engine.runners.announcement import announced
from engine.storage import ExecutionFilter, iso

router = APIRouter()

EXECUTION_CREATE = "st2.execution__create"
EXECUTION_UPDATE = "st2.execution__update"
#: StackStorm's events when the request names none (st2stream's `DEFAULT_EVENTS_WHITELIST`): no output.
DEFAULT_EVENTS = ("st2.announcement__*", "st2.execution__create", "st2.execution__update", "st2.execution__delete",
                  "st2.liveaction__create", "st2.liveaction__update", "st2.liveaction__delete")
#: Statuses an execution can still leave.
UNFINISHED = tuple(status for status in STATUSES if status not in COMPLETED)
_BATCH = 1000
#: What the stream may have told of an execution that has not run yet (None: nothing).
_BEFORE_RUNNING = (None, "requested", "scheduled", "delayed")
#: Executions read per page when the stream looks for new ones.
_NEW_PAGE = 100
#: Where a look at a known execution that has not ended is told among the others (`_everything`): last.
_LATEST = datetime.max.replace(tzinfo=UTC)

Event = dict[str, str]


def _names(request: Request, name: str) -> tuple[str, ...]:
    """A list parameter as st2client sends it (`a,b`), or repeated (`name=a&name=b`)."""
    return tuple(part.strip() for value in request.query_params.getlist(name) for part in value.split(",")
                 if part.strip())


@dataclass(frozen=True)
class Wanted:
    """What the client asked for: event name globs, action refs, execution ids (empty: any)."""

    events: tuple[str, ...] = DEFAULT_EVENTS
    action_refs: frozenset[str] = frozenset()
    execution_ids: frozenset[str] = frozenset()

    def named(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, glob) for glob in self.events)

    def takes(self, event: str, action_ref: str, execution_id: str) -> bool:
        return (self.named(event) and (not self.action_refs or action_ref in self.action_refs)
                and (not self.execution_ids or execution_id in self.execution_ids))

    def announces(self, event: str) -> bool:
        """An announcement names no action nor execution: StackStorm's filters on either drop it."""
        return self.named(event) and not self.action_refs and not self.execution_ids


@dataclass
class _Seen:
    """What the stream told of one execution: the status it sent last (None: none yet), the last output
    chunk it sent, and whether its final update went (after which nothing of it or its tasks is read)."""

    status: str | None = None
    after: int = 0
    ended: bool = False


@dataclass
class Follower:
    """The events of the executions a stream follows, one `look` at a time (see the module's docstring)."""

    squall: Any
    wanted: Wanted
    roots: tuple[str, ...] = ()
    #: Follow the roots' descendants too (a tail's workflow tasks).
    descend: bool = False
    end_execution_id: str | None = None
    end_event: str | None = None
    seen: dict[str, _Seen] = field(default_factory=dict)
    #: The newest execution known (every-execution mode): newer ones are new.
    top: str = ""
    done: bool = False

    @property
    def output(self) -> bool:
        return self.wanted.named(OUTPUT_CREATE)

    def _event(self, name: str, action_ref: str, execution_id: str, data: dict[str, Any]) -> list[Event]:
        if not self.wanted.takes(name, action_ref, execution_id):
            return []
        return [{"event": name, "data": json.dumps(data, default=str)}]

    def _announcement(self, record: dict[str, Any]) -> list[Event]:
        """The `st2.announcement__<route>` of an announcement run that ended having published (none of
        any other execution): sent before the run's final update, as StackStorm publishes it while the
        run goes on."""
        told = announced(record)
        if told is None or not self.wanted.announces(told[0]):
            return []
        return [{"event": told[0], "data": json.dumps(told[1], default=str)}]

    def _doc(self, record: dict[str, Any], children: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        shown = public(record)
        if children is not None:
            shown["children"] = [c["id"] for c in children]
        return execution_doc(shown, self.squall.registry)

    async def _chunks(self, record: dict[str, Any], seen: _Seen) -> AsyncIterator[Event]:
        """The execution's chunks stored since the last one sent."""
        if not self.output:
            return
        store = self.squall.store
        while rows := await self.squall.db(store.execution_output_list, record["id"], after=seen.after, limit=_BATCH):
            for row in rows:
                for event in self._event(OUTPUT_CREATE, record["action"], record["id"], {
                        "execution_id": record["id"], "action_ref": record["action"], "runner_ref": record["runner"],
                        "timestamp": iso(row["timestamp"]), "output_type": row["stream"], "data": row["data"]}):
                    yield event
            seen.after = rows[-1]["id"]
            if len(rows) < _BATCH:
                return

    # -- one execution and its tasks --------------------------------------------------------------
    async def _node(self, record: dict[str, Any]) -> AsyncIterator[Event]:
        """One execution's news: its update, its output, its tasks', then (when it ended) its final update.

        An execution that ran but was never told as running (first seen ended, or last seen before it
        ran) shows as running first, so a client learns of it before its output (st2 drops the output of
        a task it was not told about) and prints that it started."""
        seen = self.seen.setdefault(record["id"], _Seen())
        if seen.ended:
            return
        status, ended = record["status"], record["status"] in COMPLETED
        children = await self.squall.db(self.squall.store.list_executions, parent=record["id"], limit=MAX_CHILDREN,
                                        oldest_first=True)
        doc = self._doc(record, children)
        if (seen.status in _BEFORE_RUNNING and ended
                and any(e.get("status") == "running" for e in record.get("log") or [])):
            for event in self._running(record, doc, seen):
                yield event
        elif status != seen.status and not ended:
            for event in self._event(EXECUTION_UPDATE, record["action"], record["id"], doc):
                yield event
            seen.status = status
        async for event in self._chunks(record, seen):
            if seen.status in _BEFORE_RUNNING:  # read before it ran, its output stored since: it runs now
                for update in self._running(record, doc, seen):
                    yield update
            yield event
        for child in children if self.descend else ():
            async for event in self._node(child):
                yield event
        if ended:
            for event in [*self._announcement(record),
                          *self._event(EXECUTION_UPDATE, record["action"], record["id"], doc)]:
                yield event
            seen.status, seen.ended = status, True
            if record["id"] == self.end_execution_id and self.end_event == EXECUTION_UPDATE:
                self.done = True

    def _running(self, record: dict[str, Any], doc: dict[str, Any], seen: _Seen) -> list[Event]:
        """The update telling that `record` runs, as it read while running: no result nor end yet (left
        out, as `execution_doc` leaves them); `seen` notes it was told."""
        was = {**{k: v for k, v in doc.items() if k not in ("result", "end_timestamp", "elapsed_seconds")},
               "status": "running", "liveaction": {**doc["liveaction"], "status": "running"}}
        seen.status = "running"
        return self._event(EXECUTION_UPDATE, record["action"], record["id"], was)

    async def _roots(self) -> AsyncIterator[Event]:
        for root in self.roots:
            record = await self.squall.db(self.squall.store.get_execution, root)
            if record is not None:
                async for event in self._node(record):
                    yield event
                    if self.done:
                        return

    # -- every execution ------------------------------------------------------------------------
    async def start_everything(self) -> None:
        """Every-execution mode begins now: the newest execution and the unfinished ones are known, with
        the output they printed so far (only what comes next is sent)."""
        store = self.squall.store
        newest = await self.squall.db(store.execution_keyset, ExecutionFilter(top_level=False), limit=1)
        self.top = newest[0]["id"] if newest else ""
        for row in await self.squall.db(store.execution_ids_with_status, UNFINISHED):
            seen = self.seen[row["id"]] = _Seen(status=row["status"])
            if self.output:
                while rows := await self.squall.db(store.execution_output_list, row["id"], after=seen.after,
                                                   limit=_BATCH):
                    seen.after = rows[-1]["id"]

    async def _new(self) -> list[dict[str, Any]]:
        """Executions newer than `top`, oldest first (pages of the keyset until `top`)."""
        store, found, before = self.squall.store, [], None
        while True:
            rows = await self.squall.db(store.execution_keyset, ExecutionFilter(top_level=False), before=before,
                                        limit=_NEW_PAGE)
            fresh = [row for row in rows if row["id"] > self.top and row["id"] not in self.seen]
            found.extend(fresh)
            if len(fresh) < len(rows) or len(rows) < _NEW_PAGE:
                break
            before = rows[-1]["id"]
        return sorted(found, key=lambda row: row["id"])

    async def _everything(self) -> AsyncIterator[Event]:
        store = self.squall.store
        unfinished = {row["id"]: row["status"] for row in
                      await self.squall.db(store.execution_ids_with_status, UNFINISHED)}
        # New: newer than the newest known, or unfinished and unknown (another process committed it late).
        fresh = [row["id"] for row in await self._new()]
        fresh += [execution_id for execution_id in unfinished if execution_id not in self.seen and
                  execution_id not in fresh]
        # What happened since the last look, in the order it happened as far as the records tell: a known
        # execution that ended before a new one was requested is told first (its announcement, its end),
        # else a client saw a later run's announcement before an earlier one's.
        looks: list[tuple[Any, int, dict[str, Any], _Seen | None]] = []
        for execution_id in fresh:
            record = await self.squall.db(store.get_execution, execution_id)
            if record is not None:
                looks.append((record["start_timestamp"], len(looks), record, None))
        for execution_id, seen in list(self.seen.items()):
            if execution_id in fresh or seen.ended or (unfinished.get(execution_id) == seen.status and not self.output):
                continue
            record = await self.squall.db(store.get_execution, execution_id)
            if record is not None:
                ended = record["end_timestamp"] if record["status"] in COMPLETED else None
                looks.append((ended or _LATEST, len(looks), record, seen))
        for _when, _order, record, known in sorted(looks, key=lambda look: (look[0], look[1])):
            if known is None:
                self.top = max(self.top, record["id"])
                known = self.seen[record["id"]] = _Seen(status=record["status"])
                for event in self._event(EXECUTION_CREATE, record["action"], record["id"], self._doc(record)):
                    yield event
            async for event in self._changed(record, known):
                yield event

    async def _changed(self, record: dict[str, Any], seen: _Seen) -> AsyncIterator[Event]:
        """A known execution's output since the last look, then its update if its status changed."""
        async for event in self._chunks(record, seen):
            yield event
        if record["status"] in COMPLETED and not seen.ended:
            for event in self._announcement(record):
                yield event
        if record["status"] != seen.status or (record["status"] in COMPLETED and not seen.ended):
            for event in self._event(EXECUTION_UPDATE, record["action"], record["id"], self._doc(record)):
                yield event
            seen.status = record["status"]
        if record["status"] in COMPLETED:
            seen.ended = True
            del self.seen[record["id"]]  # nothing more can happen to it: forget it

    # -- the stream -----------------------------------------------------------------------------------
    async def look(self) -> AsyncIterator[Event]:
        """What happened since the last look."""
        source = self._roots() if self.roots else self._everything()
        async for event in source:
            yield event

    @property
    def idle(self) -> bool:
        """Every execution followed has ended and the stream has nothing more to wait for but its client."""
        return bool(self.roots) and all(self.seen.get(root, _Seen()).ended for root in self.roots)

    async def events(self) -> AsyncIterator[Event]:
        """Until the end event was sent, or for as long as the client stays (sse-starlette ends the
        generator when it goes, or when the server stops: `ApiServer.stop`; its pings keep an idle
        stream open meanwhile)."""
        with Wakeup(self.squall.executions, self.roots[0] if self.roots else None) as wakeup:
            while True:
                async for event in self.look():
                    yield event
                if self.done:
                    return
                if self.idle:
                    await asyncio.Event().wait()  # nothing left to follow; the pings go on until the client leaves
                await wakeup.wait(POLL_SECONDS)


@router.get("/stream", tags=["stream"])
async def stream(request: Request, end_execution_id: str | None = None,
                 end_event: str | None = None) -> EventSourceResponse:
    """StackStorm's event stream (see the module's docstring). `events`, `action_refs` and
    `execution_ids` are comma-separated lists."""
    squall = api_state(request).squall
    # Ids as given may be a unique start of one (as everywhere in the API): the events carry full ids.
    execution_ids = tuple([await _execution_id(request, given) for given in _names(request, "execution_ids")])
    wanted = Wanted(events=_names(request, "events") or DEFAULT_EVENTS,
                    action_refs=frozenset(_names(request, "action_refs")), execution_ids=frozenset(execution_ids))
    ending = await _execution_id(request, end_execution_id) if end_execution_id else None
    roots = (ending,) if ending else tuple(dict.fromkeys(execution_ids))
    follower = Follower(squall, wanted, roots=roots, descend=ending is not None, end_execution_id=ending,
                        end_event=end_event)
    if not roots:
        await follower.start_everything()
    return EventSourceResponse(until_revoked(request, follower.events()), ping=PING_SECONDS,
                               headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})


async def _execution_id(request: Request, given: str) -> str:
    """The full id of an execution the request names (a unique start of one will do), or a 404."""
    try:
        return (await api_state(request).squall.executions.get(given))["id"]
    except ExecutionNotFound as exc:
        raise HTTPException(404, f"{exc}; the stream follows existing executions only") from exc
