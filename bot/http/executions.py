"""`/api/v1/executions`: request, list, read, cancel, pause, resume and re-run executions, and read their
output (stored, or live at `/stream/v1/executions/{id}/output`).

Executions leave here in StackStorm's ActionExecution shape (spec §11): `action` and `runner` are the
full documents and `liveaction` is beside them, so st2client and the `st2` CLI read them as they read
StackStorm's. Lists carry StackStorm's pagination headers (`X-Total-Count`, `X-Limit`)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from bot.chat.commands import CommandRefused, NeedsApproval
from bot.http.actions import action_public
from bot.http.attributes import Projection
from bot.http.key_auth import acting_user, request_user, until_revoked
from bot.http.paging import ALL_ROWS, json_items, page_limit, query_time, streamed_list, tell_page
from bot.http.runners import runner_public
from bot.http.state import api_state
from engine.actions import unapproved
from engine.executions import (
    COMPLETED,
    AuditEntry,
    ExecutionNotFound,
    ExecutionStateError,
    public,
)
from engine.inquiries import shown_execution
from engine.live import follow_output
from engine.packs import Registry, UnknownAction
from engine.parameters import MAX_INTEGER, ParameterError
from engine.runners import RUNNER_TYPES
from engine.storage import iso

if TYPE_CHECKING:
    from bot.app import Squall

log = logging.getLogger(__name__)
router = APIRouter()
#: StackStorm's stream service (`/stream/v1`), keyed like the API.
stream_router = APIRouter()
#: The most children one request lists for one execution (a with-items task over a big list).
MAX_CHILDREN = 10_000


#: The longest `delay` a run or a re-run may ask for (ms, as StackStorm's): 30 days.
MAX_DELAY_MS = 30 * 24 * 3600 * 1000


class ExecutionRequest(BaseModel):
    """StackStorm's LiveAction as `st2 run [-u USER] [--delay MS] ACTION [k=v ...]` sends it."""
    action: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] | None = None
    #: Render the values as Jinja templates, as StackStorm does; only for keys in `api.render_keys`.
    render: bool = False
    #: Whom the run is for (`st2 run -u`; st2client sends null without it): `acting_user`'s rule.
    user: str | None = None
    #: Held `delayed` this many ms first (`st2 run --delay`), bounded as a re-run's.
    delay: int | None = Field(None, ge=0, le=MAX_DELAY_MS)


class RerunRequest(BaseModel):
    """StackStorm's re-run body (`st2 execution re-run ID [k=v ...] [--tasks T ...] [--no-reset T ...]
    [--delay MS]`): st2client sends `reset` = tasks minus `--no-reset`."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] = Field(default_factory=list)
    reset: list[str] = Field(default_factory=list)
    delay: int | None = Field(None, ge=0, le=MAX_DELAY_MS)


class ExecutionUpdate(BaseModel):
    """StackStorm's `PUT /executions/{id}` body, as `st2 execution pause|resume` send it (other
    LiveAction fields are ignored): only `status` is read."""
    status: str


def execution_doc(record: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """An execution as StackStorm's API shows it; an action whose pack is gone keeps its ref, pack
    and name (the record outlives the pack). An inquiry's secret answers are masked (`shown_execution`).

    Only the attributes that have a value are there, as StackStorm's `ActionExecutionAPI.from_model`
    keeps them (`if value`, at the top level only): a running execution has no `end_timestamp`,
    `elapsed_seconds` or `parent`, and an empty `result`, `parameters` or `children` is left out.
    Pack templates test for the key (`{% if 'end_timestamp' in exe %}`), which a null passed.

    An execution that has not completed has no end either, whatever its stored record holds: StackStorm
    sets `end_timestamp` only on a completed status, and Squall's record keeps the time a paused
    workflow paused, or a `core.ask` began waiting (`pending`), as their end until they go on; shown, st2
    printed a frozen elapsed time for them."""
    record = shown_execution(record)
    ref, runner_name = record["action"], record["runner"]
    action = registry.actions.get(ref)
    pack, _, name = ref.partition(".")
    runner = RUNNER_TYPES.get(runner_name)
    document = {
        **record,
        "action": action_public(action) if action is not None else
        {"ref": ref, "pack": pack, "name": name, "runner_type": runner_name},
        "runner": runner_public(runner) if runner is not None else {"name": runner_name},
        "liveaction": {"id": record["id"], "action": ref, "status": record["status"],
                       "parameters": record["parameters"], "context": record["context"],
                       "runner_info": record.get("runner_info") or {}},
        "children": record.get("children") or [],
        **({"task": task} if (task := (record["context"].get("workflow_task") or {}).get("task")) else {}),
    }
    if record["status"] not in COMPLETED:
        document["end_timestamp"] = document["elapsed_seconds"] = None
    return {key: value for key, value in document.items() if value}


def _doc(request: Request, record: dict[str, Any]) -> dict[str, Any]:
    return execution_doc(record, api_state(request).squall.registry)


#: The filters `list_executions` selects by, as StackStorm's API spells them.
_FILTERS = ("action", "status", "parent", "user", "trigger_instance", "timestamp_gt", "timestamp_lt", "runner",
            "rule", "trigger_type")
#: StackStorm's other execution filters (`ActionExecutionsController.supported_filters`), which the store
#: cannot select by (`Store.list_executions`): refused, since a list that ignored one answered every
#: execution as if all had matched. `trigger` is StackStorm's trigger object, named by a hash Squall has no
#: record of; `liveaction` the execution's own id.
_UNSUPPORTED_FILTERS = ("trigger", "liveaction")
#: Where what an unsupported filter would select can be found instead.
_INSTEAD = {"trigger": "a trigger's executions are those of its trigger type: GET /executions?trigger_type=REF",
            "liveaction": "a liveaction's id is its execution's: GET /executions/ID"}


@router.get("/executions", tags=["executions"], response_model=list[dict[str, Any]])
async def list_executions(request: Request, response: Response, action: str | None = None,
                          status: str | None = None, parent: str | None = None, user: str | None = None,
                          trigger_instance: str | None = None, timestamp_gt: str | None = None,
                          timestamp_lt: str | None = None, runner: str | None = None, rule: str | None = None,
                          trigger_type: str | None = None,
                          limit: int | None = Depends(page_limit(50, 1000)),
                          offset: int = Query(0, ge=0, le=MAX_INTEGER),
                          sort_asc: bool = False, shown: Projection = Depends()) -> list[dict[str, Any]] | Response:
    """Newest first (`sort_asc=true` for oldest first); `parent=null` keeps top-level executions only,
    as `st2 execution list` asks. Its other filters are StackStorm's too: `user` (who asked, the
    execution's `context.user`), `trigger_instance` (the id of the trigger instance a rule ran it for),
    `timestamp_gt`/`timestamp_lt` (started strictly after/before, ISO 8601), `runner` (the runner type),
    `rule` (the ref or, as StackStorm matches it, the name of the rule that ran it) and `trigger_type` (the
    ref or, as StackStorm, the name of the trigger type whose instance it ran for). `limit=-1` lists them all
    (`st2 execution list -n -1`), as StackStorm does for an admin, written a page at a time
    (`_all_executions`). `include_attributes` and `exclude_attributes` answer with some attributes only
    (`bot/http/attributes.py`). Read on `Database.read`: a filter no index serves scans the table.
    StackStorm's filters Squall cannot apply (`_UNSUPPORTED_FILTERS`) are a 400 naming them."""
    if unsupported := [name for name in _UNSUPPORTED_FILTERS if name in request.query_params]:
        instead = "".join(f"; {_INSTEAD[name]}" for name in unsupported if name in _INSTEAD)
        raise HTTPException(400, f"executions cannot be filtered by {', '.join(unsupported)} in Squall; the filters "
                                 f"are {', '.join(_FILTERS)}{instead}")
    squall = api_state(request).squall
    filters = {"action": action, "status": status, "parent": parent, "user": user,
               "trigger_instance": trigger_instance, "since": query_time("timestamp_gt", timestamp_gt),
               "until": query_time("timestamp_lt", timestamp_lt), "runner": runner, "rule": rule,
               "trigger_types": _trigger_type_refs(squall.registry, trigger_type) if trigger_type else None}
    if limit is None:
        return await _all_executions(request, shown, offset, sort_asc, filters)
    records, total = await squall.db.read(squall.store.page_executions, limit=limit, offset=offset,
                                          oldest_first=sort_asc, **filters)
    tell_page(response, total, limit)
    return [shown(_doc(request, public(r))) for r in records]


def _trigger_type_refs(registry: Any, given: str) -> list[str]:
    """The trigger type refs `given` names: itself (a ref, of a type loaded or no longer), and the loaded
    types whose name it is (StackStorm's `trigger_type` filter matches the name: `st2.IntervalTimer`, the
    ref `core.st2.IntervalTimer` less its pack)."""
    return [given, *(ref for ref in registry.trigger_types if ref != given and ref.partition(".")[2] == given)]


#: Executions a `limit=-1` answer reads, renders and writes at a time (`_all_executions`).
ALL_PAGE = 500
#: The stored times' resolution: bounds a tick either side of a time select that time alone.
_TICK = timedelta(microseconds=1)


async def _all_executions(request: Request, shown: Projection, offset: int, oldest_first: bool,
                          filters: dict[str, Any]) -> Response:
    """Every execution `filters` select from `offset` on, as one JSON array written `ALL_PAGE` at a time
    (`streamed_list`), each page read and rendered on `Database.read`: memory and the loop's share stay
    a page's however many there are. The total is counted first, for `X-Total-Count`, and the answer
    holds no more than it counted: executions requested meanwhile wait for the next list."""
    squall = api_state(request).squall
    _none, total = await squall.db.read(squall.store.page_executions, limit=0, oldest_first=oldest_first, **filters)
    return streamed_list(_all_pages(request, shown, offset, total - offset, oldest_first, filters), total)


def _rendered(request: Request, shown: Projection, read: Callable[..., list[dict[str, Any]]],
              **query: Any) -> tuple[list[datetime], bytes]:
    """A page of `read(**query)` as the answer writes it (`json_items`; rendering 500 executions takes
    tens of milliseconds, kept off the loop) and the executions' start times, where the next page starts."""
    records = read(**query)
    return [r["start_timestamp"] for r in records], json_items(shown(_doc(request, public(r))) for r in records)


async def _all_pages(request: Request, shown: Projection, offset: int, wanted: int, oldest_first: bool,
                     filters: dict[str, Any]) -> AsyncIterator[bytes]:
    """`_all_executions`' pages, in the list's order (start time, then id), `wanted` executions at most.
    The first is an OFFSET's; each after it starts where the one before ended (keyset pages: an OFFSET of
    299,500 reads and drops that many rows first, each page more than the last). The stores bound the start
    time only strictly (`timestamp_gt`/`timestamp_lt`), so a page first takes the rest of the executions
    that started in the last one's microsecond (in id order, past those sent), then goes on strictly
    beyond it."""
    squall = api_state(request).squall

    async def page(**query: Any) -> tuple[list[datetime], bytes]:
        return await squall.db.read(_rendered, request, shown, squall.store.list_executions,
                                    oldest_first=oldest_first, **query)

    if wanted <= 0:
        return
    starts, text = await page(**filters, limit=min(ALL_PAGE, wanted), offset=offset)
    last, sent = datetime.min.replace(tzinfo=UTC), 0  # the last start time written, and how many of it were
    while True:
        yield text
        wanted -= len(starts)
        if len(starts) < ALL_PAGE or wanted <= 0:
            return
        for start in starts:
            last, sent = (last, sent + 1) if start == last else (start, 1)
        size = min(ALL_PAGE, wanted)
        starts, text = await page(**{**filters, "since": last - _TICK, "until": last + _TICK}, limit=size,
                                  offset=sent)
        if len(starts) < size:
            beyond = {"since": last} if oldest_first else {"until": last}
            more, more_text = await page(**{**filters, **beyond}, limit=size - len(starts))
            starts, text = starts + more, b",".join(t for t in (text, more_text) if t)


async def _find_execution(request: Request, execution_id: str) -> dict[str, Any]:
    try:
        return await api_state(request).squall.executions.get(execution_id)
    except ExecutionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc


async def _children(request: Request, execution_id: str) -> list[dict[str, Any]]:
    """The execution's children, oldest first (one query)."""
    return await api_state(request).squall.executions.list(parent=execution_id, limit=MAX_CHILDREN,
                                                           oldest_first=True)


@router.get("/executions/{execution_id}", tags=["executions"])
async def get_execution(execution_id: str, request: Request, shown: Projection = Depends()) -> dict[str, Any]:
    record = await _find_execution(request, execution_id)
    record["children"] = [c["id"] for c in await _children(request, execution_id)]
    return shown(_doc(request, record))


@router.get("/executions/{execution_id}/children", tags=["executions"])
async def execution_children(execution_id: str, request: Request, depth: int = -1) -> list[dict[str, Any]]:
    """Children depth-first, each followed by its own down to `depth` levels (-1: all), as
    `st2 execution get --show-tasks` lists a workflow's tasks; one query per execution listed."""
    await _find_execution(request, execution_id)
    found: list[dict[str, Any]] = []

    async def walk(children: list[dict[str, Any]], level: int) -> None:
        for child in children:
            own = await _children(request, child["id"])
            found.append(_doc(request, {**child, "children": [c["id"] for c in own]}))
            if own and (depth < 0 or level < depth):
                await walk(own, level + 1)

    await walk(await _children(request, execution_id), 1)
    return found


#: Context keys only Squall writes: a chat command's thread (a caller's would post its result into any
#: channel, and a malformed one broke the result hooks), its approval, the alias and the API user; and
#: where an execution came from, which the `source` metric label (`engine.metrics.source_of`) and the web
#: UI's origin (`bot.web.origin`) read: the rule and trigger instance that fired it, the workflow and task
#: it runs for, the chat channel. A caller's `{"rule": ...}` counted and showed an API run as a rule's.
_SQUALLS_OWN = frozenset({"chat", "approval", "api_user", "action_alias_ref", "source_channel", "rule",
                          "trigger_instance", "parent", "workflow_task"})


def _run_as(request: Request, body: ExecutionRequest) -> str | None:
    """Who a run is recorded as (`context.user`), by `acting_user`'s rule, as `action-alias execute -u`:
    a stored key or a token runs as its own user and may name only that one in `user` (403 otherwise); a
    key from the config names nobody, so it runs as whoever `user` names. None for a config key that names
    no one: its run keeps the `context.user` it sent, else the engine's default, as before `user` was read."""
    if body.user is None and request_user(request) is None:
        return None
    return acting_user(request, body.user)


@router.post("/executions", status_code=201, tags=["executions"])
async def create_execution(body: ExecutionRequest, request: Request) -> dict[str, Any]:
    """StackStorm's `st2 run`: the action requested as `_run_as`'s user, held `delayed` for `delay` ms
    first when asked (as `re_run`'s `delay`). Its `api.execution` event is stored with it, in one
    transaction: a request the database did not take is not stored, so a client told to try again runs
    it once, and nothing runs that the audit log does not show."""
    state = api_state(request)
    # Who asks and from where is the API's to say, not the caller's (`source` is a metric's label too),
    # and where a chat command's replies go or what approved it is Squall's own record, never a caller's.
    given = {k: v for k, v in (body.context or {}).items() if k not in _SQUALLS_OWN}
    who = _run_as(request, body)
    context = {**given, "source": "api", **({"user": who} if who else {})}
    key_name = request.state.api_key_name
    if body.render and key_name not in state.settings.render_keys:
        raise HTTPException(403, f"This API key ({key_name or 'a configured key'}) may not ask for parameters "
                                 "to be rendered as templates; list a stored key's name in api.render_keys "
                                 "to allow it, or send the values as data.")
    action = state.squall.registry.actions.get(body.action)
    if action is not None and action.approval is not None:
        raise HTTPException(403, unapproved(action.ref, action.approval))
    audit = _audit(request, "api.execution", **({"user": who} if body.user else {}))
    try:
        record = await state.squall.executions.request(body.action, body.parameters, context, render=body.render,
                                                       delay=(body.delay or 0) / 1000, audit=audit)
    except (ParameterError, UnknownAction, ValueError) as exc:
        raise HTTPException(400, str(exc)) from exc
    return _doc(request, record)


async def _rerun_in_place(squall: Squall, execution_id: str, tasks: list[str], audit: AuditEntry) -> dict[str, Any]:
    """The finished workflow re-run in place from `tasks` (`WorkflowService.rerun`), `audit` stored in the
    transaction of its reset, once the approval check every re-run gets has passed (`NeedsApproval`, as
    `CommandService.rerun` refuses: re-running some tasks is no way around the approvers). Not through
    `CommandService.rerun`, which writes a re-run in place's event after the change."""
    record = await squall.executions.get(execution_id)
    needed = squall.chat.commands.approval_for(record)
    if needed is not None:
        raise NeedsApproval(*needed)
    return await squall.workflows.rerun(record["id"], tasks, audit=audit)


def _audit(request: Request, event: str, **detail: Any) -> AuditEntry:
    """Who asked for what through the API, as the chat and the web UI record theirs: stored by the engine
    in the transaction of the change, about the execution changed, its detail gaining what the change
    wrote (a request's action and parameters as stored, secrets masked; a cancel's status)."""
    return AuditEntry(event, request_user(request), "api", None, detail)


@router.delete("/executions/{execution_id}", tags=["executions"])
async def cancel_execution(execution_id: str, request: Request) -> dict[str, Any]:
    """The cancel and its `api.execution.cancel` event are one transaction (`ExecutionService.cancel`)."""
    audit = _audit(request, "api.execution.cancel")
    try:
        record = await api_state(request).squall.executions.cancel(execution_id, audit)
    except ExecutionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except ExecutionStateError as exc:
        raise HTTPException(409, str(exc)) from exc
    except (HTTPException, sa.exc.DBAPIError):
        raise  # a database failure is the app's 503 with why (`bot/http/errors.py`)
    except Exception as exc:  # a bare 500 told nothing; the cancel may be stored already: say so, and what to do
        log.exception("the cancel of execution %s failed", execution_id)
        raise HTTPException(500, f"the cancel of execution {execution_id} failed midway "
                                 f"({type(exc).__name__}: {exc}); it may show canceling already: ask again to take "
                                 "the cancel up, and see the server's log for the failure") from exc
    return _doc(request, record)


#: StackStorm's `output_type` values of the output routes.
OUTPUT_TYPES = ("all", "stdout", "stderr")
#: Seconds between the stream's keep-alive comments, so proxies keep a quiet tail open.
PING_SECONDS = 15
#: A stored output chunk's event, on this live tail and on the event stream (`bot/http/stream.py`).
OUTPUT_CREATE = "st2.execution.output__create"


def _output_type(output_type: str) -> str | None:
    if output_type not in OUTPUT_TYPES:
        raise HTTPException(400, f"output_type must be one of {', '.join(OUTPUT_TYPES)}, not {output_type!r}")
    return None if output_type == "all" else output_type


@router.get("/executions/{execution_id}/output", tags=["executions"], response_class=PlainTextResponse)
async def execution_output(execution_id: str, request: Request, output_type: str = "all") -> str:
    # The stored chunks, in the order printed (StackStorm's ActionExecutionOutput); an execution from
    # before they were stored, or of a runner that streams nothing, gives its result's stdout then stderr.
    stream = _output_type(output_type)
    record = await _find_execution(request, execution_id)
    squall = api_state(request).squall
    chunks = [row["data"] async for row in _stored_chunks(squall, record["id"], stream)]
    if chunks:
        return "".join(chunks)
    result = record.get("result")
    if not isinstance(result, dict):
        return ""
    streams = [str(result.get(name) or "") for name in ((stream,) if stream else ("stdout", "stderr"))]
    return "\n".join(text.rstrip("\n") for text in streams if text) + ("\n" if any(streams) else "")


async def _stored_chunks(squall: Any, execution_id: str, stream: str | None) -> AsyncIterator[dict[str, Any]]:
    """Every chunk stored so far, a page at a time."""
    after = 0
    while rows := await squall.db(squall.store.execution_output_list, execution_id, after=after, stream=stream):
        for row in rows:
            yield row
        after = rows[-1]["id"]


@stream_router.get("/executions/{execution_id}/output", tags=["stream"])
async def execution_output_stream(execution_id: str, request: Request, output_type: str = "all") -> EventSourceResponse:
    """StackStorm's live tail (spec §10.3): one `st2.execution.output__create` event per chunk (the name
    StackStorm's st2stream sends and st2web listens for), its data the chunk as JSON (`execution_id`,
    `output_type`, `data`, `timestamp`), ending when the execution ends, or when the key or token that
    opened it no longer holds (`until_revoked`)."""
    stream = _output_type(output_type)
    record = await _find_execution(request, execution_id)
    squall = api_state(request).squall

    async def events() -> AsyncIterator[dict[str, str]]:
        async for row in follow_output(squall.executions, record["id"], stream=stream):
            yield {"event": OUTPUT_CREATE, "id": str(row["id"]),
                   "data": json.dumps({"execution_id": row["execution_id"], "action_ref": record["action"],
                                       "runner_ref": record["runner"], "output_type": row["stream"],
                                       "data": row["data"], "timestamp": iso(row["timestamp"])})}

    return EventSourceResponse(until_revoked(request, events()), ping=PING_SECONDS)


#: `PUT /executions/{id}` statuses (StackStorm's): what each asks for, and its audit event.
_STATUS_CHANGES = {"pausing": "pause", "paused": "pause", "resuming": "resume", "canceling": "cancel",
                   "canceled": "cancel"}


@router.put("/executions/{execution_id}", tags=["executions"])
async def update_execution(execution_id: str, body: ExecutionUpdate, request: Request) -> dict[str, Any]:
    """StackStorm's pause, resume and cancel by status (spec §10.2): `{"status": "pausing"}` asks a running
    workflow to pause, `{"status": "resuming"}` resumes a paused one, `canceling` cancels (as DELETE).
    Other statuses are the engine's to set, never a caller's (400); an execution in the wrong state is a 409.
    The change and its `api.execution.<change>` event are one transaction."""
    change = _STATUS_CHANGES.get(body.status)
    if change is None:
        raise HTTPException(400, f"status {body.status!r} cannot be asked for: send pausing (pause a running "
                                 "workflow), resuming (resume a paused one) or canceling (cancel it)")
    squall = api_state(request).squall
    record = await _find_execution(request, execution_id)
    if change != "cancel" and record["runner"] not in squall.workflows.runners:
        raise HTTPException(400, f"execution {record['id']} is a {record['runner']} action; only workflows "
                                 f"({', '.join(sorted(squall.workflows.runners))}) pause and resume")
    try:
        record = await getattr(squall.executions, change)(record["id"], _audit(request, f"api.execution.{change}"))
    except ExecutionStateError as exc:
        raise HTTPException(409, str(exc)) from exc
    return _doc(request, record)


async def _check_tasks(request: Request, record: dict[str, Any], tasks: list[str], reset: list[str]) -> None:
    """What StackStorm refuses of a re-run from `tasks` (spec §10.4), and what Squall cannot do: a 400
    for a workflow-less execution, a task that never ran in it, or a with-items task left out of `reset`
    (`--no-reset`: StackStorm would re-run only its failed items; Squall re-runs every item); a 409 for a
    workflow that has not finished (Squall re-runs it in place, so it must have ended)."""
    squall = api_state(request).squall
    if record["runner"] not in squall.workflows.runners:
        raise HTTPException(400, f"execution {record['id']} is a {record['runner']} action, not a workflow: "
                                 "--tasks re-runs tasks of a workflow; re-run it without --tasks")
    if record["status"] not in COMPLETED:
        raise HTTPException(409, f"execution {record['id']} is {record['status']}; a workflow is re-run from "
                                 "tasks once it has finished")
    # A read (of every child: a big with-items workflow has thousands), so beside the write groups.
    children = await squall.db.read(squall.store.list_executions, parent=record["id"], limit=ALL_ROWS)
    keys: dict[str, list[str]] = {}
    for child in children:
        call = (child.get("context") or {}).get("workflow_task") or {}
        if call.get("task"):
            keys.setdefault(call["task"], []).append(str(call.get("key") or ""))
    if unknown := [t for t in tasks if t not in keys]:
        raise HTTPException(400, f"no task {', '.join(unknown)} ran in workflow {record['id']}; "
                                 f"tasks that ran: {', '.join(sorted(keys)) or 'none'}")
    items = sorted(t for t in set(tasks) - set(reset) if any(k.endswith("]") for k in keys[t]))
    if items:
        raise HTTPException(400, f"with-items task(s) {', '.join(items)} are not in reset (--no-reset): Squall "
                                 "re-runs every item of a with-items task, not only the failed ones; "
                                 "re-run them without --no-reset")


@router.post("/executions/{execution_id}/re_run", status_code=201, tags=["executions"])
async def rerun_execution(execution_id: str, request: Request, body: RerunRequest | None = None) -> dict[str, Any]:
    """A new execution of the same action, with `parameters` over the original's and after `delay` ms;
    or, with `tasks`, the finished workflow re-run in place from those tasks, its other finished tasks
    kept (`WorkflowService.rerun`: the same execution is answered, its context's `re-run` naming the
    tasks). Either way what needs approval is refused (`CommandService.rerun`, `_rerun_in_place`). Its
    `api.execution.rerun` event is stored with the new execution, or with the workflow's reset to `resuming`
    for a re-run in place, one transaction (`audit=`): a re-run the database did not take is a 503 with
    nothing stored, so a client's retry runs it once."""
    body = body or RerunRequest()
    if body.tasks or body.reset:
        if body.parameters:
            raise HTTPException(400, "Parameters override is not supported when re-running task(s) for a workflow.")
        if set(body.reset) - set(body.tasks):
            raise HTTPException(400, "List of tasks to reset does not match the tasks to rerun.")
        if body.delay:
            raise HTTPException(400, "delay is not supported when re-running task(s) for a workflow: Squall "
                                     "re-runs the workflow in place at once; leave --delay out")
        await _check_tasks(request, await _find_execution(request, execution_id), body.tasks, body.reset)
    who = request_user(request)
    context = {"source": "api", **({"user": who} if who else {})}
    audit = _audit(request, "api.execution.rerun", of=execution_id, **({"tasks": body.tasks} if body.tasks else {}))
    squall = api_state(request).squall
    try:
        if body.tasks:
            record = await _rerun_in_place(squall, execution_id, body.tasks, audit)
        else:
            record = await squall.chat.commands.rerun(execution_id, body.parameters, context,
                                                      delay=(body.delay or 0) / 1000, audit=audit)
    except ExecutionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except CommandRefused as exc:
        raise HTTPException(403, str(exc)) from exc
    except ExecutionStateError as exc:  # the workflow moved meanwhile (another re-run, a restart)
        raise HTTPException(409, str(exc)) from exc
    except (ParameterError, UnknownAction, ValueError) as exc:
        raise HTTPException(400, str(exc)) from exc
    return _doc(request, record)
