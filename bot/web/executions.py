"""`/executions`: the list (filters, keyset pages), one execution's page, and cancel.

The list reads `Store.execution_keyset` (light rows, the next page below the last row shown: no
OFFSET, so paging through 100,000 executions costs the same on every page); an execution's page and
cancel go through `ExecutionService`, as the API and the CLI do. Parameters are shown as stored,
that is with secrets masked by the engine when the execution was requested.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.web import origin
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import operator, viewer
from engine.executions import CANCELABLE, STATUSES, ExecutionNotFound, ExecutionStateError
from engine.storage import ExecutionFilter

router = APIRouter(route_class=PageRoute, include_in_schema=False)
PAGE_SIZE = 50
#: The most children an execution's page lists (a with-items task over a long list has thousands).
MAX_CHILDREN = 500
#: The list's filters, in the order the form shows them.
FILTERS = ("status", "action", "pack", "user", "source", "from", "to")
_ID = re.compile(r"[0-9a-f]{24}\Z")
#: Output the page shows apart from the result's JSON.
STREAMS = ("stdout", "stderr")


def _time(name: str, value: str) -> datetime:
    """A `datetime-local` field (or any ISO 8601 time), read as UTC when it names no zone."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise PageError(f"'{name}' must be a date and time such as 2026-01-31T14:00, not {value!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def execution_filter(values: dict[str, str]) -> ExecutionFilter:
    """The list's query (`FILTERS`, blanks ignored) as a store filter; a bad value is a 400 saying why."""
    status, source = values.get("status"), values.get("source")
    if status and status not in STATUSES:
        raise PageError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    if source and source not in origin.SOURCES:
        raise PageError(f"unknown source {source!r}: one of {', '.join(origin.SOURCES)}")
    return ExecutionFilter(
        action=values.get("action") or None, pack=values.get("pack") or None, status=status or None,
        user=values.get("user") or None, **(origin.SOURCES[source] if source else {}),
        since=_time("from", values["from"]) if values.get("from") else None,
        until=_time("to", values["to"]) if values.get("to") else None)


def _row(record: dict[str, Any]) -> dict[str, Any]:
    start, end = record["start_timestamp"], record["end_timestamp"]
    return {**record, "origin": origin.summary(record["context"] or {}), "user": (record["context"] or {}).get("user"),
            "elapsed": f"{(end - start).total_seconds():.1f} s" if end else None}


@router.get("/executions")
async def execution_list(request: Request, before: str | None = None,
                         session: Session = Depends(viewer)) -> Response:
    values = {name: request.query_params.get(name, "").strip() for name in FILTERS}
    shown = {name: value for name, value in values.items() if value}
    if before is not None and not _ID.match(before):
        raise PageError("'before' must be an execution id (24 hexadecimal digits)")
    squall = request.app.state.squall
    rows = await squall.db(squall.store.execution_keyset, execution_filter(values), before=before,
                           limit=PAGE_SIZE + 1)
    older = urlencode({**shown, "before": rows[PAGE_SIZE - 1]["id"]}) if len(rows) > PAGE_SIZE else None
    return render(request, "executions.html", {
        "session": session, "rows": [_row(r) for r in rows[:PAGE_SIZE]], "values": values, "filtered": bool(shown),
        "older": older, "newest": urlencode(shown) if before else None, "statuses": STATUSES,
        "sources": list(origin.SOURCES)})


async def _execution(request: Request, execution_id: str) -> dict[str, Any]:
    try:
        return await request.app.state.squall.executions.get(execution_id)
    except ExecutionNotFound as exc:
        raise PageError(str(exc), 404) from exc


@router.get("/executions/{execution_id}")
async def execution_page(request: Request, execution_id: str, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    record = await _execution(request, execution_id)
    children = await squall.executions.list(parent=record["id"], limit=MAX_CHILDREN, oldest_first=True)
    result = record.get("result")
    streams = {name: str(result[name]) for name in STREAMS if isinstance(result, dict) and result.get(name)}
    if isinstance(result, dict):
        result = {key: value for key, value in result.items() if key not in streams}
    return render(request, "execution.html", {
        "session": session, "record": record, "origin": origin.details(record), "result": result,
        "streams": streams, "children": children, "more_children": len(children) == MAX_CHILDREN,
        "cancelable": record["status"] in CANCELABLE and session.account.may("operator")})


@router.post("/executions/{execution_id}/cancel")
async def execution_cancel(request: Request, execution_id: str, session: Session = Depends(operator)) -> Response:
    squall = request.app.state.squall
    record = await _execution(request, execution_id)
    try:
        await squall.executions.cancel(record["id"])
    except ExecutionStateError as exc:
        raise PageError(str(exc), 409) from exc
    await squall.db(squall.store.audit_add, "web.execution.cancel", session.account.name, "web", record["id"], {})
    return RedirectResponse(f"/executions/{record['id']}", status_code=303)
