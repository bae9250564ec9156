"""The UI's live updates, as server-sent events (`sse-starlette`) that htmx's SSE extension swaps into
the page by event name (`sse-swap`). The one script of Squall's own, `static/live.js`, keeps the
stream's URL at the page's last event, so that a stream htmx opens anew goes on from there, and
keeps what a swap would take from the person (a row's tick, the output box at its newest line).

- `/live/executions/{id}`: a running execution's page. `stdout`/`stderr` carry the output printed
  since the chunk the page showed last (`after`, or the `Last-Event-ID` of a browser that reconnects),
  as escaped HTML with colours (`ansi.py`), appended, each with the id of its last chunk;
  `status` (the head: status, controls, times), `log`, `tasks` (the task list and graph of a
  workflow) and `result` replace their parts when they change; once the execution has ended and all
  its output was sent, `output` puts the stdout and stderr its page then shows (the result's) in place
  of a live copy that stopped at the cap (`engine.output.STREAM_CAP`, then `[output truncated]`),
  without the end, where an error usually is; `end` comes last and closes the stream (`sse-close`).
- `/live/executions`: the list's first page. `new` carries rows newer than the newest shown (`top`,
  or the `Last-Event-ID` of a browser that reconnects; put on top), `row-<id>` a row whose status
  changed (replacing it; an empty one removes a row that no longer matches the page's filter); each
  names the newest row the page then has as its id.

A browser that reconnects by itself names the last event it got; one whose stream failed with an
error status (a proxy's 502) is given a new stream by htmx, from the `sse-connect` URL, which
`live.js` moved along. Either way nothing the page shows is sent again. A tab that is hidden closes
its stream (`live.js`: a browser has only 6 connections to a host) and opens it again from that URL
once shown. The server ends every stream when it stops (`bot.http.server.ApiServer.stop`).

A stream outlives the request that opened it, so it looks at its session again every
`session.RECHECK_SECONDS`: after a logout, a new password or the account's deletion it sends `end`
(data `signed-out`) and closes, instead of going on showing what the person may no longer see, and
`static/live.js` says so on the page, with the way to log in again. A stream asked for without a live
session (htmx opening it again after a proxy's 502 or a restart, once the session ended) is that `end`
alone: the login page's redirect is nothing an EventSource reads, and htmx tried it again for ever.

They read the database, as the pages do, so what a `squall worker` runs shows too; in the process
that runs it, `engine.live.Wakeup` wakes them at once, otherwise they look every `POLL_SECONDS`. A
browser that goes away ends its stream (sse-starlette watches the connection).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse

from bot.accounts import Session, current_session
from bot.web import ansi, origin
from bot.web import session as sessions
from bot.web.executions import (
    EXECUTION_ID,
    FILTERS,
    MAX_CHILDREN,
    PAGE_SIZE,
    STREAMS,
    _ended_streams,
    controls,
    execution_filter,
    execution_view,
    find_execution,
    list_row,
    task_tree,
)
from bot.web.pages import PageError, PageRoute, row_number, templates
from bot.web.session import viewer
from engine.executions import COMPLETED
from engine.live import Wakeup
from engine.output import TRUNCATED
from engine.parameters import MAX_INTEGER
from engine.storage import ExecutionFilter, database_trouble

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: How often a stream looks at the database when nothing in this process woke it.
POLL_SECONDS = 0.5
#: How long a browser waits before it opens a stream the database cut short again (`_until_trouble`).
RECONNECT_MS = 5000
log = logging.getLogger(__name__)
#: Seconds between keep-alive comments, so proxies keep an idle stream open.
PING_SECONDS = 15
_OUTPUT_BATCH = 1000


#: The `end` event's data when the stream's session ended.
SIGNED_OUT = "signed-out"


class _SessionWatch:
    """A stream's session, looked at again in the database every `RECHECK_SECONDS` (the check when the
    stream opened is the request's; a logout or a deleted account must end the stream too)."""

    def __init__(self, squall: Any, session: Session) -> None:
        self.squall = squall
        self.session = session
        self._due = time.monotonic() + sessions.RECHECK_SECONDS

    async def alive(self) -> bool:
        """False once the session ended; otherwise `session` is refreshed (its account's role today)."""
        if time.monotonic() < self._due:
            return True
        current = await self.squall.db.read(current_session, self.squall.store, self.session)  # only reads
        self._due = time.monotonic() + sessions.RECHECK_SECONDS
        if current is None:
            return False
        self.session = current
        return True


def fragment(name: str, **context: Any) -> str:
    """A template rendered alone (the parts of a page that live events replace), autoescaped."""
    return templates.get_template(name).render(**context)


async def _stream_session(request: Request) -> Session | None:
    """The stream's session (`viewer`), or None when there is none (ended, or never there)."""
    try:
        return await viewer(request)
    except sessions.LoginRequired:
        return None


async def _signed_out() -> AsyncIterator[dict[str, str]]:
    yield {"event": "end", "data": SIGNED_OUT}


@router.get("/live/executions/{execution_id}")
async def execution_events(request: Request, execution_id: str, after: int = Query(0, ge=0, le=MAX_INTEGER),
                           session: Session | None = Depends(_stream_session)) -> EventSourceResponse:
    if session is None:  # before anything of the execution is looked at
        return EventSourceResponse(_signed_out())
    squall = request.app.state.squall
    record = await find_execution(request, execution_id)
    # A browser that lost the connection reconnects by itself, naming the last chunk it got.
    after = max(after, row_number(request.headers.get("last-event-id", "")) or 0)
    return EventSourceResponse(_until_trouble(_execution_stream(squall, session, record["id"], after)),
                               ping=PING_SECONDS)


async def _until_trouble(events: AsyncIterator[dict[str, str]]) -> AsyncIterator[dict[str, Any]]:
    """`events`, ended cleanly when the database fails or is locked under a look (`database_trouble`): the
    browser is told to come back in `RECONNECT_MS` and opens the stream again from the last event it had
    (its `Last-Event-ID`), as after any drop. Let out, the error cut the response off mid-body, and uvicorn
    logged each stream's traceback ("Exception in ASGI application") through an outage."""
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                yield event
        except Exception as exc:
            trouble = database_trouble(exc)
            if trouble is None:
                raise
            log.debug("a live view ended, to come back in %d ms: %s", RECONNECT_MS, trouble)
            yield {"retry": RECONNECT_MS, "comment": "the database failed; reconnecting"}


async def _execution_stream(squall: Any, session: Session, execution_id: str,
                            after: int) -> AsyncIterator[dict[str, str]]:
    store = squall.store
    watch = _SessionWatch(squall, session)
    renderers, cut = await _renderers_at(squall, execution_id, after)
    shown: tuple[Any, ...] | None = None
    with Wakeup(squall.executions, execution_id) as wakeup:
        while True:
            if not await watch.alive():
                yield {"event": "end", "data": SIGNED_OUT}
                return
            session = watch.session
            record = await squall.executions.get(execution_id)
            ended = record["status"] in COMPLETED
            rows = await squall.db(store.execution_output_list, execution_id, after=after, limit=_OUTPUT_BATCH)
            for stream, text, last in _runs(rows):
                yield {"event": stream, "data": renderers[stream].feed(text), "id": str(last)}
                if text.endswith(TRUNCATED):
                    cut.add(stream)
            if rows:
                after = rows[-1]["id"]
            children = await squall.executions.list(parent=execution_id, limit=MAX_CHILDREN, oldest_first=True)
            tasks = await task_tree(squall, children)
            state = (record["status"], len(record["log"]), tuple((c["id"], c["status"]) for _, c in tasks))
            if state != shown:
                view = execution_view(squall, record, children, tasks)
                yield {"event": "status", "data": fragment("_execution_status.html", record=record, session=session,
                                                           origin=origin.details(record),
                                                           **controls(squall, session, record))}
                yield {"event": "log", "data": fragment("_execution_log.html", record=record)}
                if children:
                    yield {"event": "tasks", "data": fragment("_execution_tasks.html", **view)}
                if ended:
                    yield {"event": "result", "data": fragment("_execution_result.html", **view)}
                shown = state
            if ended and len(rows) < _OUTPUT_BATCH:
                if cut:  # the page's copy stops at the cap: the result has the rest, its end
                    yield {"event": "output", "data": fragment("_execution_output.html", live=False,
                                                               streams=await _ended_streams(squall, record))}
                yield {"event": "end", "data": record["status"]}
                return
            if len(rows) < _OUTPUT_BATCH:
                await wakeup.wait(POLL_SECONDS)


async def _renderers_at(squall: Any, execution_id: str,
                        upto: int) -> tuple[dict[str, ansi.AnsiRenderer], set[str]]:
    """Each stream's renderer as the output up to chunk `upto` left it (what the page showed, or the
    browser had before it reconnected): a colour set there, or an escape sequence cut at that chunk's
    end, carries on into what the stream sends next. And the streams whose output there stopped at the
    cap (`TRUNCATED`), which the result replaces once the execution has ended."""
    renderers = {name: ansi.AnsiRenderer() for name in STREAMS}
    cut: set[str] = set()
    after = 0
    while after < upto:
        rows = await squall.db(squall.store.execution_output_list, execution_id, after=after, limit=_OUTPUT_BATCH)
        taken = [row for row in rows if row["id"] <= upto]
        for stream, text, _last in _runs(taken):
            renderers[stream].feed(text)
            if text.endswith(TRUNCATED):
                cut.add(stream)
        if len(taken) < _OUTPUT_BATCH:
            break
        after = taken[-1]["id"]
    return renderers, cut


def _runs(rows: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """Consecutive chunks of one stream joined (one event each instead of one per chunk), with the id of
    the last chunk in each (the event's id, which a reconnecting browser sends back)."""
    runs: list[tuple[str, str, int]] = []
    for row in rows:
        if runs and runs[-1][0] == row["stream"]:
            runs[-1] = (row["stream"], runs[-1][1] + row["data"], row["id"])
        else:
            runs.append((row["stream"], row["data"], row["id"]))
    return runs


@router.get("/live/executions")
async def list_events(request: Request, top: str = "",
                      session: Session | None = Depends(_stream_session)) -> EventSourceResponse:
    """The list's first page as it changes; `top` is the newest id the page showed (new rows are newer),
    or the `Last-Event-ID` of a browser that reconnects, when newer: the rows it prepended since."""
    if session is None:
        return EventSourceResponse(_signed_out())
    if top and not EXECUTION_ID.match(top):
        raise PageError("'top' must be an execution id (24 hexadecimal digits)")
    if EXECUTION_ID.fullmatch(resumed := request.headers.get("last-event-id", "")):
        top = max(top, resumed)
    where = execution_filter({name: request.query_params.get(name, "").strip() for name in FILTERS})
    return EventSourceResponse(_until_trouble(_list_stream(request.app.state.squall, session, where, top)),
                               ping=PING_SECONDS)


async def _list_stream(squall: Any, session: Session, where: ExecutionFilter,
                       top: str) -> AsyncIterator[dict[str, str]]:
    """Each look at the list's first page sends: rows the page does not have yet (`new`, prepended:
    newer than `top`, or new to this page since the last look: a row that came to match the filter,
    or one another process committed late), and rows whose status changed (`row-<id>`). A row that
    left the page unfinished is sent once more (`_left`). Only the rows of the last look are kept.
    Each event's id is `top` once it is applied (`_cursor`)."""
    known: dict[str, tuple[str, Any]] | None = None  # None before the first look: the page's rows
    watch = _SessionWatch(squall, session)
    with Wakeup(squall.executions, None) as wakeup:
        while True:
            if not await watch.alive():
                yield {"event": "end", "data": SIGNED_OUT}
                return
            session = watch.session
            rows = await squall.db(squall.store.execution_keyset, where, limit=PAGE_SIZE)
            fresh = [row for row in rows if row["id"] > top or (known is not None and row["id"] not in known)]
            if fresh:
                top = max(top, *(row["id"] for row in fresh))
                yield _cursor({"event": "new", "data": "".join(_row_html(session, row) for row in fresh)}, top)
            shown = known or {}
            states = {row["id"]: (row["status"], row["end_timestamp"]) for row in rows}
            for row in rows:
                # Every row once at first (it may have changed since the page was made), then on change.
                if row not in fresh and (known is None or shown.get(row["id"]) != states[row["id"]]):
                    yield _cursor({"event": f"row-{row['id']}", "data": _row_html(session, row)}, top)
            for gone, (status, _ended) in shown.items():
                if gone not in states and status not in COMPLETED:
                    record = await squall.db(squall.store.get_execution, gone)
                    if record is not None:
                        yield _cursor(_left(session, where, record), top)
            known = states
            await wakeup.wait(POLL_SECONDS * 2)


def _left(session: Session, where: ExecutionFilter, record: dict[str, Any]) -> dict[str, str]:
    """The event for a row that left the first page unfinished. One that no longer matches the page's
    filter (a list of `running` ones, and it ended) is replaced by nothing: the page drops it, instead
    of showing it running for ever or showing an ended one among running ones. One that still matches
    (newer rows pushed it down) is sent as it is now. Only the status can stop matching: what else the
    filters look at (action, user, source, channel, start) does not change."""
    if where.status is not None and record["status"] != where.status:
        return {"event": f"row-{record['id']}", "data": ""}
    return {"event": f"row-{record['id']}", "data": _row_html(session, record)}


def _cursor(event: dict[str, str], top: str) -> dict[str, str]:
    """`event` with the newest row the page has once it is applied as its id: what a browser that
    reconnects sends back (`Last-Event-ID`) and `static/live.js` puts into the stream's URL, so rows
    prepended already are not sent as new again. None yet (an empty list): no id."""
    return {**event, "id": top} if top else event


def _row_html(session: Session, row: dict[str, Any]) -> str:
    return fragment("_execution_row.html", row=list_row(row), session=session, live=True)
