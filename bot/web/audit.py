"""`/audit`: the audit log (who ran what from where, refusals, what was done in the web UI), newest
first, with filters and keyset pages.

The log is written by the command path (`<source>.execution`, `<source>.denied`) and the web UI's
actions (`web.*`); `engine.audit.audit_page` reads it. The filters are a plain GET form, so a view
can be bookmarked; an *Older* link continues below the last entry shown.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response

from bot.accounts import Session
from bot.web.pages import PageError, PageRoute, form_time, render, row_number
from bot.web.session import viewer
from engine.audit import AuditFilter, audit_kinds, audit_page

router = APIRouter(route_class=PageRoute, include_in_schema=False)
PAGE_SIZE = 50
#: The filters, in the order the form shows them.
FILTERS = ("user", "kind", "action", "source", "from", "to")


def audit_filter(values: dict[str, str]) -> AuditFilter:
    """The query's filters (blanks ignored) as the reader's; a bad time is a 400 saying why."""
    return AuditFilter(actor=values.get("user") or None, kind=values.get("kind") or None,
                       action=values.get("action") or None, source=values.get("source") or None,
                       since=form_time("from", values["from"]) if values.get("from") else None,
                       until=form_time("to", values["to"]) if values.get("to") else None)


@router.get("/audit")
async def audit_list(request: Request, before: str | None = None, session: Session = Depends(viewer)) -> Response:
    values = {name: request.query_params.get(name, "").strip() for name in FILTERS}
    shown = {name: value for name, value in values.items() if value}
    number = None if before is None else row_number(before)
    if before is not None and number is None:
        raise PageError(f"'before' must be an audit entry's number, not {before!r}")
    squall = request.app.state.squall
    where = audit_filter(values)
    # Both off the loop (`Database.read`): a filter reads entries until the page is full, the kinds every entry.
    rows = await squall.db.read(audit_page, squall.store, where, before=number, limit=PAGE_SIZE + 1)
    older = urlencode({**shown, "before": rows[PAGE_SIZE - 1]["id"]}) if len(rows) > PAGE_SIZE else None
    return render(request, "audit.html", {
        "session": session, "rows": rows[:PAGE_SIZE], "values": values, "filtered": bool(shown), "older": older,
        "newest": urlencode(shown) if before else None, "kinds": await squall.db.read(audit_kinds, squall.store)})
