"""`/executions`: the list (filters, keyset pages, bulk cancel), one execution's page, cancel and re-run
with edited parameters (live updates of both pages: `live.py`).

The list reads `Store.execution_keyset` (light rows, the next page below the last row shown: no
OFFSET, so paging through 100,000 executions costs the same on every page); an execution's page and
cancel go through `ExecutionService`, as the API and the CLI do. Parameters are shown as stored,
that is with secrets masked by the engine when the execution was requested.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from markupsafe import Markup

from bot.accounts import Session
from bot.chat.commands import CommandRefused
from bot.forms import Field, action_fields
from bot.web import ansi, graph, origin
from bot.web.actions import admin_only, checked, refusal
from bot.web.inquiries import why_not_answer
from bot.web.pages import PageError, PageRoute, form_time, render
from bot.web.session import admin_to, checked_values, form_fields, operator, viewer
from engine.actions import unapproved
from engine.executions import (
    CANCELABLE,
    COMPLETED,
    STATUSES,
    AuditEntry,
    ExecutionNotFound,
    ExecutionStateError,
)
from engine.inquiries import RUNNER as INQUIRER
from engine.inquiries import shown_execution
from engine.packs import UnknownAction
from engine.parameters import ParameterError
from engine.storage import ExecutionFilter, database_trouble
from engine.workflows.service import KEPT, WORKFLOW_RUNNERS

router = APIRouter(route_class=PageRoute, include_in_schema=False)
PAGE_SIZE = 50
#: The most children an execution's page lists (a with-items task over a long list has thousands).
MAX_CHILDREN = 500
#: The list's filters, in the order the form shows them.
FILTERS = ("status", "action", "pack", "user", "source", "channel", "from", "to")
EXECUTION_ID = re.compile(r"[0-9a-f]{24}\Z")
#: Output the page shows apart from the result's JSON.
STREAMS = ("stdout", "stderr")
#: How deep the task tree opens sub-workflows, and how many rows it lists in all.
MAX_TREE_DEPTH = 4
MAX_TREE_ROWS = 1000
#: The most output chunks a running execution's page shows at first (the live stream goes on from there).
MAX_LIVE_CHUNKS = 5000
#: Output chunks read at a time for an ended execution's page, which shows them all (`_printed`).
OUTPUT_PAGE = 1000
#: Ends whose result holds no output of the run's (only why it ended): the page shows what it printed.
CUT_SHORT = frozenset({"canceled", "abandoned"})
#: Workflow runs' kept definitions (`spec.workflow`) by execution id, as `_remember_definition` read them;
#: the oldest is dropped past `DEFINITIONS_HELD`.
_DEFINITIONS: dict[str, dict[str, Any]] = {}
DEFINITIONS_HELD = 256
#: Whose page of an execution, or live stream of it, this is: `find_execution` sets it from the request's
#: session for `execution_view`, which the stream (`live.py`) calls without one, to link a pending inquiry
#: among the tasks to the accounts that may answer it, on the page and in its live updates alike.
_LOOKING: ContextVar[Session | None] = ContextVar("looking", default=None)


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
        channel=values.get("channel") or None,
        since=form_time("from", values["from"]) if values.get("from") else None,
        until=form_time("to", values["to"]) if values.get("to") else None)


#: The filters that are times, shown in `datetime-local` fields (UTC, as their labels say).
TIME_FILTERS = ("from", "to")


def form_values(values: dict[str, str]) -> dict[str, str]:
    """The list's query as its filter form shows it: a time as its `datetime-local` field takes one, in
    UTC to the second (the field takes no zone and its step is a second; a value it cannot take shows
    empty, and pressing Filter again would drop that filter without a word). Valid times only: the
    query was read by `execution_filter` first."""
    return {**values, **{name: form_time(name, values[name]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
                         for name in TIME_FILTERS if values[name]}}


def list_row(record: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the list shows it (the page and its live updates alike)."""
    start, end = record["start_timestamp"], record["end_timestamp"]
    return {**record, "origin": origin.summary(record["context"] or {}), "user": (record["context"] or {}).get("user"),
            # A paused workflow has its pause's end time stored, but has not ended (as `_execution_status.html`).
            "elapsed": f"{(end - start).total_seconds():.1f} s" if end and record["status"] in COMPLETED else None,
            "cancelable": record["status"] in CANCELABLE}


@router.get("/executions")
async def execution_list(request: Request, before: str | None = None,
                         session: Session = Depends(viewer)) -> Response:
    values = {name: request.query_params.get(name, "").strip() for name in FILTERS}
    shown = {name: value for name, value in values.items() if value}
    if before is not None and not EXECUTION_ID.match(before):
        raise PageError("'before' must be an execution id (24 hexadecimal digits)")
    squall = request.app.state.squall
    # Off the loop (`Database.read`): a filter no index serves reads executions until the page is full.
    rows = await squall.db.read(squall.store.execution_keyset, execution_filter(values), before=before,
                                limit=PAGE_SIZE + 1)
    older = urlencode({**shown, "before": rows[PAGE_SIZE - 1]["id"]}) if len(rows) > PAGE_SIZE else None
    return render(request, "executions.html", {
        "session": session, "rows": [list_row(r) for r in rows[:PAGE_SIZE]], "values": form_values(values),
        "filtered": bool(shown),
        "older": older, "newest": urlencode(shown) if before else None, "statuses": STATUSES,
        "sources": list(origin.SOURCES),
        # The first page follows new and changed executions (`live.py`); older pages stay as they were.
        "live": None if before else urlencode({**shown, "top": rows[0]["id"] if rows else ""})})


async def find_execution(request: Request, execution_id: str) -> dict[str, Any]:
    """The execution as `ExecutionService.get` shows it (a 404 page if there is none). A workflow run's
    kept definition is remembered on the way (`_remember_definition`), for its graph, and whose page it is
    (`_LOOKING`), for its tasks."""
    _LOOKING.set(getattr(request.state, "session", None))
    squall = request.app.state.squall
    try:
        record = await squall.executions.get(execution_id)
    except ExecutionNotFound as exc:
        raise PageError(str(exc), 404) from exc
    await _remember_definition(squall, record)
    return record


async def _remember_definition(squall: Any, record: dict[str, Any]) -> None:
    """Keep a workflow run's definition (its `spec.workflow`, which the record shown leaves out) in
    `_DEFINITIONS`, for `execution_view` to draw its graph from what the engine conducts it from, not
    from the file a pack update may have changed since. Read here, off the loop, because the page and
    its live stream (`live.py`) both find the execution here before `execution_view`, which is not
    async, draws it. A run keeps one definition to its end, so one read is never stale; a run without
    one (not conducted yet, or from before runs kept theirs) is read again the next time."""
    if record["runner"] not in WORKFLOW_RUNNERS or record["id"] in _DEFINITIONS:
        return
    stored = await squall.db.read(squall.store.get_execution, record["id"])
    kept = ((stored or {}).get("spec") or {}).get(KEPT)
    if isinstance(kept, dict):
        if len(_DEFINITIONS) >= DEFINITIONS_HELD:
            del _DEFINITIONS[next(iter(_DEFINITIONS))]
        _DEFINITIONS[record["id"]] = kept


def execution_view(squall: Any, record: dict[str, Any], children: list[dict[str, Any]],
                   tasks: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """What an execution's page and its live updates show: the result without the output streams
    (shown apart), and for a workflow the graph of its tasks with their statuses and the task tree
    (`tasks`, from `task_tree`), with the pending inquiries among them the account looking may answer
    (`answer_tasks`). An inquiry's secret answers are masked (`shown_execution`)."""
    record = shown_execution(record)
    result = record.get("result")
    if isinstance(result, dict):
        result = {key: value for key, value in result.items() if key not in STREAMS}
    action = squall.registry.actions.get(record["action"])
    session = _LOOKING.get()
    return {"record": record, "result": result, "children": children,
            "tasks": tasks,
            "answer_tasks": {child["id"] for _, child in tasks
                             if session is not None and _may_answer(squall, session, child)},
            "more_children": len(children) == MAX_CHILDREN,
            "graph": graph.svg(action, children, _DEFINITIONS.get(record["id"]))}


async def task_tree(squall: Any, children: list[dict[str, Any]], depth: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """A workflow's tasks in order, each followed by the tasks of the sub-workflow it ran (as (depth,
    execution) rows, at most `MAX_TREE_DEPTH` deep and `MAX_TREE_ROWS` in all): the whole run on one
    page, where st2web expands one level at a time."""
    rows: list[tuple[int, dict[str, Any]]] = []
    for child in children:
        if len(rows) >= MAX_TREE_ROWS:
            break
        rows.append((depth, child))
        if child["runner"] in WORKFLOW_RUNNERS and depth + 1 < MAX_TREE_DEPTH:
            below = await squall.executions.list(parent=child["id"], limit=MAX_CHILDREN, oldest_first=True)
            rows += await task_tree(squall, below, depth + 1)
    return rows[:MAX_TREE_ROWS]


@router.get("/executions/{execution_id}")
async def execution_page(request: Request, execution_id: str, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    record = await find_execution(request, execution_id)
    children = await squall.executions.list(parent=record["id"], limit=MAX_CHILDREN, oldest_first=True)
    live = record["status"] not in COMPLETED
    after = 0
    if live:  # what was printed so far; the page's stream goes on from the last chunk shown
        rows = await squall.db(squall.store.execution_output_list, record["id"], limit=MAX_LIVE_CHUNKS)
        after = rows[-1]["id"] if rows else 0
        # Not final: an escape sequence cut at the last chunk waits for the stream (`live._renderers_at`).
        streams = {name: ansi.AnsiRenderer().feed("".join(r["data"] for r in rows if r["stream"] == name))
                   for name in STREAMS}
    else:
        streams = await _ended_streams(squall, record)
    return render(request, "execution.html", {
        "session": session, "origin": origin.details(record), "streams": streams, "live": live, "after": after,
        **controls(squall, session, record),
        **execution_view(squall, record, children, await task_tree(squall, children))})


async def _ended_streams(squall: Any, record: dict[str, Any]) -> dict[str, Markup]:
    """An ended execution's output as its page shows it: the result's stdout and stderr when the run
    ended with them; else (canceled or abandoned, whose result holds only why, or a result without them)
    what it printed while it ran, stored as its live page showed it (`execution_output`), so the page
    loaded once it has ended keeps what it showed while it ran. The result's, if any, when nothing was
    stored (a runner that records no output, or output purged by `retention.output_days`)."""
    result = record.get("result")
    shown = {name: str(result[name]) for name in STREAMS if isinstance(result, dict) and result.get(name)}
    if not shown or record["status"] in CUT_SHORT:
        printed = await _printed(squall, record["id"])
        if any(printed.values()):
            shown = printed
    return {name: ansi.render(text) for name, text in shown.items() if text}


async def _printed(squall: Any, execution_id: str) -> dict[str, str]:
    """Everything an execution printed, per stream: all its stored chunks (`engine.output` caps each
    stream), read in pages off the loop (`Database.read`), as the history is."""
    parts: dict[str, list[str]] = {name: [] for name in STREAMS}
    after = 0
    while True:
        rows = await squall.db.read(squall.store.execution_output_list, execution_id, after=after,
                                    limit=OUTPUT_PAGE)
        for row in rows:
            parts.setdefault(row["stream"], []).append(row["data"])
        if len(rows) < OUTPUT_PAGE:
            return {name: "".join(texts) for name, texts in parts.items() if name in STREAMS}
        after = rows[-1]["id"]


def controls(squall: Any, session: Session, record: dict[str, Any]) -> dict[str, bool]:
    """Which buttons the page shows this account: only those it may use, while they apply."""
    operator_ = session.account.may("operator")
    runs_it = session.account.may("admin") or admin_only(record["action"]) is None
    return {"cancelable": operator_ and record["status"] in CANCELABLE,
            "rerunnable": operator_ and runs_it and _not_rerunnable(squall, record) is None,
            "answerable": _may_answer(squall, session, record)}


def _may_answer(squall: Any, session: Session, record: dict[str, Any]) -> bool:
    """Whether `record` is an inquiry still waiting for its answer that the account may give, by the
    inquiries page's rule (`why_not_answer`): its page, and its workflow's task row, link to the answer form."""
    return (record["runner"] == INQUIRER and record["status"] == "pending"
            and why_not_answer(squall, session, record) is None)


def _not_rerunnable(squall: Any, record: dict[str, Any]) -> PageError | None:
    """Why `record` cannot be run again from here (its action gone or disabled, or it needs approval,
    which the web cannot ask for), as the page to show; None if it can."""
    action = squall.registry.actions.get(record["action"])
    if action is None:
        return PageError(f"{record['action']} is no longer loaded (its pack was removed): it cannot run again.", 409)
    if not action.enabled:
        return PageError(f"{record['action']} is disabled (enabled: false in its pack): it cannot run again.", 409)
    if (needed := squall.chat.commands.approval_for(record)) is not None:
        return PageError(unapproved(*needed), 403)
    return None


def _cancel_audit(session: Session) -> AuditEntry:
    """A cancel's `web.execution.cancel` event, stored with the cancel, in its transaction
    (`ExecutionService.cancel`: its detail gains the action and the status the cancel wrote)."""
    return AuditEntry("web.execution.cancel", session.account.name, "web", None, {})


@router.post("/executions/{execution_id}/cancel")
async def execution_cancel(request: Request, execution_id: str, session: Session = Depends(operator)) -> Response:
    squall = request.app.state.squall
    record = await find_execution(request, execution_id)
    try:
        await squall.executions.cancel(record["id"], _cancel_audit(session))
    except ExecutionStateError as exc:
        raise PageError(str(exc), 409) from exc
    return RedirectResponse(f"/executions/{record['id']}", status_code=303)


@router.post("/executions/cancel")
async def bulk_cancel(request: Request, session: Session = Depends(operator)) -> Response:
    """Cancel the executions checked on the list (`execution` fields), each through the service as one
    cancel would be, with its audit event; what could not be canceled is listed with the reason, one the
    database did not take too: the cancels before it are stored, so the page is no error page."""
    squall = request.app.state.squall
    chosen = await checked_values(request, "execution")
    if not chosen:
        raise PageError("Check the executions to cancel first: none was chosen.")
    done, refused = [], []
    for execution_id in dict.fromkeys(chosen):
        try:
            record = await squall.executions.cancel(execution_id, _cancel_audit(session))
        except (ExecutionNotFound, ExecutionStateError) as exc:
            refused.append((execution_id, str(exc)))
            continue
        except sa.exc.DBAPIError as exc:
            why = database_trouble(exc) or f"the database refused it ({type(exc).__name__})"
            refused.append((execution_id, f"Squall could not cancel it: {why}. Try again later."))
            continue
        done.append(record)
    return render(request, "canceled.html", {"session": session, "done": done, "refused": refused},
                  status_code=200 if done else 409)


#: The help a secret the execution was given shows on the re-run form instead of its default's.
KEPT_SECRET = "Left empty, the original execution's value is used again."


def _rerun_form(squall: Any, record: dict[str, Any]) -> tuple[list[Field], dict[str, str]]:
    """The re-run form: the run form's fields (`bot.forms.action_fields`: the same inputs, checked by the
    same `checked`), and the text each shows, the execution's value as the run form's input shows one
    (`Field.text_of`), or for a parameter it was not given what the run form starts with (`_starts_with`),
    which left as shown is still not given. A secret shows nothing; for one the execution was given, left
    empty keeps the original's (`ExecutionService.rerun`), so its field is not required and says so in place
    of what its default would do."""
    given = record["parameters"]
    fields = [_kept_secret(f) if f.kind == "secret" and f.name in given else f
              for f in action_fields(squall.registry.action(record["action"]))]
    return fields, {f.name: f.text_of(given[f.name]) if f.name in given else _starts_with(f) for f in fields}


def _starts_with(field: Field) -> str:
    """What a run form's input shows at first, as the browser sends it back: `Field.initial`, but "false" for
    a yes/no whose default is false, which form_fields.html shows chosen (its `initial` is empty, for chat's
    boxes), so that left as shown it is not taken for a change."""
    return "false" if field.yes_no and field.has_default and field.default is False else field.initial


def _kept_secret(field: Field) -> Field:
    """A secret field the execution was given, as the re-run form asks for it (`_rerun_form`)."""
    said = field.description.strip()
    said = f"{said}{'' if said.endswith(('.', '?', '!')) else '.'} " if said else ""
    return replace(field, required=False, has_default=False, default=None, description=f"{said}{KEPT_SECRET}")


def _gone(squall: Any, record: dict[str, Any]) -> list[str]:
    """The parameters the execution was given that its action no longer has (a pack update took them out).
    The re-run form has no field for them, so nobody could take them out of a re-run that the engine then
    refused by name: the form says each is not sent, and the re-run does not give it again (`dropped`)."""
    accepted = squall.registry.action(record["action"]).parameters
    return sorted(name for name in record["parameters"] if name not in accepted)


def _rerun_page(request: Request, session: Session, record: dict[str, Any], fields: list[Field],
                values: dict[str, str], errors: dict[str, str] | None = None, problem: str | None = None,
                status: int = 200, gone: list[str] | None = None) -> Response:
    return render(request, "rerun.html", {"session": session, "record": record, "fields": fields, "values": values,
                                          "errors": errors or {}, "problem": problem, "gone": gone or []},
                  status_code=status)


@router.get("/executions/{execution_id}/rerun")
async def rerun_form(request: Request, execution_id: str, session: Session = Depends(operator)) -> Response:
    squall = request.app.state.squall
    record = await find_execution(request, execution_id)
    if (doing := admin_only(record["action"])) is not None:
        session = await admin_to(request, doing)
    if (refused := _not_rerunnable(squall, record)) is not None:
        raise refused
    fields, shown = _rerun_form(squall, record)
    return _rerun_page(request, session, record, fields, shown, gone=_gone(squall, record))


@router.post("/executions/{execution_id}/rerun")
async def rerun(request: Request, execution_id: str, session: Session = Depends(operator)) -> Response:
    """A new execution of the same action: the original parameters, overridden by the fields changed
    (`ExecutionService.rerun`, as the API's re_run); an empty secret keeps the original. The fields changed
    are read and checked as the run form's (`bot.web.actions.checked`), each wrong one named beside it, all
    at once; one emptied is not given (None: its default applies, or the engine's "is required")."""
    squall = request.app.state.squall
    record = await find_execution(request, execution_id)
    if (doing := admin_only(record["action"])) is not None:
        session = await admin_to(request, doing)
    if (refused := _not_rerunnable(squall, record)) is not None:
        raise refused
    fields, shown = _rerun_form(squall, record)
    gone = _gone(squall, record)
    form = await form_fields(request)
    # A field not sent at all is as shown (a client posting only what it changes), but for a box: the
    # browser sends a ticked one only.
    submitted = {**{f.input_name: shown[f.name] for f in fields if f.kind != "boolean" or f.yes_no}, **form}
    edited = [f for f in fields if _edited(f, submitted, shown[f.name])]
    # What the person typed goes back into the form on an error, but never a secret.
    typed = {f.name: submitted.get(f.input_name, "") for f in fields if f.kind != "secret"}
    parsed = checked(edited, submitted)
    if not parsed.ok:
        return _rerun_page(request, session, record, fields, typed, parsed.errors, status=400, gone=gone)
    changed = {f.name: parsed.values.get(f.name) for f in edited}
    context = {"user": session.account.name, "source": "web"}
    # Stored with the re-run, one transaction (`CommandService.rerun`): its detail gains the action and
    # the parameters as stored. A re-run the database did not take is the error page, and none is left.
    audit = AuditEntry("web.execution.rerun", session.account.name, "web", None,
                       {"of": record["id"], "changed": sorted(changed), **({"dropped": gone} if gone else {})})
    # The parameters the action no longer has dropped, which the API's re-run refuses, as StackStorm's does.
    try:
        new = await squall.chat.commands.rerun(record["id"], changed, context, audit=audit, dropped=gone)
    except CommandRefused as exc:  # it came to need approval since the form was shown
        raise PageError(str(exc), 403) from exc
    except (ParameterError, UnknownAction, ValueError) as exc:
        errors, problem = refusal(exc, fields, typed)
        return _rerun_page(request, session, record, fields, typed, errors, problem, status=400, gone=gone)
    return RedirectResponse(f"/executions/{new['id']}", status_code=303)


def _edited(field: Field, submitted: dict[str, str], shown: str) -> bool:
    """Whether the person changed a re-run field from the text it showed (`shown`). A box is by being ticked
    or not; a secret by being filled in (left empty, the original's is kept). Line breaks are compared as LF:
    the form shows a multi-line value in a text area, which the browser reads with CR LF and CR as LF and
    sends with CR LF, so a value left as shown compares equal and runs again as it was, CR and all (an edited
    string is sent with LF, `parse`)."""
    if field.kind == "boolean" and not field.yes_no:
        return (field.input_name in submitted) != (shown == "true")
    sent = submitted.get(field.input_name, "")
    if field.kind == "secret":
        return sent != ""
    return _line_breaks_as_lf(sent) != _line_breaks_as_lf(shown)


def _line_breaks_as_lf(text: str) -> str:
    """`text` with every line break (CR LF, CR) as LF, as the HTML parser reads a text area's text."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
