"""`/api/v1/triggertypes` and `/api/v1/triggerinstances`: what can fire, what fired, and firing again
(audited as `api.trigger.re_emit`, as the web UI's re-emit is, the event stored with the new instance).

A trigger type is addressed by its ref or its `id` (derived from the ref, `content_id`, as an action's is):
`st2 trigger update|delete` read it, then send its `id`. Trigger types are declared in pack files (a
pack's `triggers/`, a sensor's `trigger_types`), so those writes, and a create, are refused (405) with
what to edit instead."""

from __future__ import annotations

import difflib
import functools
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from bot.http.actions import ALLOW_GET, RELOADED, unless_shipped
from bot.http.key_auth import request_user
from bot.http.paging import Paging, keyset_pages, page_limit, query_time, streamed_list, tell_page
from bot.http.state import api_state
from engine.actions import content_id
from engine.executions import AuditEntry
from engine.packs import TriggerType
from engine.parameters import MAX_INTEGER
from engine.triggers import public

router = APIRouter()


@router.get("/triggertypes", tags=["triggers"])
async def list_trigger_types(request: Request, response: Response, pack: str | None = None, name: str | None = None,
                             paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters: `pack` (`st2 trigger list -p`) and `name` (the ref after its pack: `st2.webhook`
    of `core.st2.webhook`)."""
    types = [t for _ref, t in sorted(api_state(request).squall.registry.trigger_types.items())
             if pack in (None, t.pack) and name in (None, t.name)]
    return [_trigger_type_public(t) for t in paging.page(types, response)]


def _trigger_type_public(trigger_type: TriggerType) -> dict[str, Any]:
    return {"id": content_id("trigger_type", trigger_type.ref), "ref": trigger_type.ref, "name": trigger_type.name,
            "pack": trigger_type.pack, "description": trigger_type.description,
            "payload_schema": trigger_type.payload_schema, "parameters_schema": trigger_type.parameters_schema}


def _find_trigger_type(request: Request, ref_or_id: str) -> TriggerType:
    """The trigger type `ref_or_id` names (its ref or its `id`); 404 naming the nearest refs."""
    types = api_state(request).squall.registry.trigger_types
    found = types.get(ref_or_id) or next(
        (t for ref, t in types.items() if content_id("trigger_type", ref) == ref_or_id), None)
    if found is None:
        near = difflib.get_close_matches(ref_or_id, list(types), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; GET /api/v1/triggertypes lists them."
        raise HTTPException(404, f'Trigger type "{ref_or_id}" is not registered (no trigger type has that ref or '
                                 f"id){hint}")
    return found


@router.get("/triggertypes/{ref_or_id}", tags=["triggers"])
async def get_trigger_type(ref_or_id: str, request: Request) -> dict[str, Any]:
    """One trigger type by its ref or id (`st2 trigger get core.st2.webhook`)."""
    return _trigger_type_public(_find_trigger_type(request, ref_or_id))




@router.post("/triggertypes", tags=["triggers"])
async def create_trigger_type() -> None:
    """StackStorm's trigger type create: refused (405), with where a trigger type is declared instead."""
    raise HTTPException(405, "Trigger types are not created through the API in Squall: they are kept in pack files. "
                             "Write the trigger type (name, payload_schema) as triggers/<name>.yaml in a pack of "
                             f"your own, or list it in a sensor's trigger_types; {RELOADED}.", headers=ALLOW_GET)


@router.put("/triggertypes/{ref_or_id}", tags=["triggers"])
async def update_trigger_type(ref_or_id: str, request: Request) -> None:
    """StackStorm's trigger type update (`st2 trigger update`): refused (405) with the file declaring it, or 404
    for a trigger type that is not registered."""
    found = _find_trigger_type(request, ref_or_id)
    instead = unless_shipped(request, found.pack, "trigger type",
                             f"edit its declaration in {found.metadata_file} instead")
    raise HTTPException(405, f"Trigger type {found.ref} cannot be changed through the API in Squall, where trigger "
                             f"types are kept in pack files: {instead}; {RELOADED}.", headers=ALLOW_GET)


@router.delete("/triggertypes/{ref_or_id}", tags=["triggers"])
async def delete_trigger_type(ref_or_id: str, request: Request) -> None:
    """StackStorm's trigger type delete (`st2 trigger delete`): refused with a 405, never a 404 for a registered
    one (st2client takes a 404 for a delete done), naming the file declaring it."""
    found = _find_trigger_type(request, ref_or_id)
    instead = unless_shipped(request, found.pack, "trigger type",
                             f"remove its declaration from {found.metadata_file}")
    raise HTTPException(405, f"Trigger type {found.ref} cannot be deleted through the API in Squall, where trigger "
                             f"types are kept in pack files: {instead}; {RELOADED}.", headers=ALLOW_GET)


@router.get("/triggerinstances", tags=["triggers"], response_model=list[dict[str, Any]])
async def list_trigger_instances(request: Request, response: Response, trigger: str | None = None,
                                 status: str | None = None, timestamp_gt: str | None = None,
                                 timestamp_lt: str | None = None, limit: int | None = Depends(page_limit(50, 1000)),
                                 offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> list[dict[str, Any]] | Response:
    """Newest first; `limit=-1` lists them all (`st2 trigger-instance list -n -1`), written a page at a
    time (`keyset_pages`). StackStorm's filters: `trigger`, `status`, and `timestamp_gt`/`timestamp_lt`
    (`-tg`/`-tl`: occurred strictly after/before, ISO 8601, a 400 otherwise, as `/executions` answers),
    applied in SQL. Read on `Database.read`: the count reads every instance the filters select."""
    squall = api_state(request).squall
    read = functools.partial(squall.store.trigger_instance_page, trigger=trigger, status=status,
                             since=query_time("timestamp_gt", timestamp_gt),
                             until=query_time("timestamp_lt", timestamp_lt))
    if limit is None:
        _none, total = await squall.db.read(read, limit=0)
        return streamed_list(keyset_pages(squall.db, read, public, offset, "occurrence_time", total), total)
    records, total = await squall.db.read(read, limit=limit, offset=offset)
    tell_page(response, total, limit)
    return [public(r) for r in records]


@router.get("/triggerinstances/{instance_id}", tags=["triggers"])
async def get_trigger_instance(instance_id: str, request: Request) -> dict[str, Any]:
    try:
        return await api_state(request).squall.triggers.get(instance_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post("/triggerinstances/{instance_id}/re_emit", tags=["triggers"])
async def re_emit(instance_id: str, request: Request) -> dict[str, Any]:
    """StackStorm's re_emit: 200 with its `message` (which `st2 trigger-instance re-emit` prints) and the new
    instance's `payload` (`__context.original_id` names the instance sent again), and the new instance's
    other fields beside them, as Squall's clients read it."""
    squall = api_state(request).squall
    # Stored with the new instance, one transaction (`TriggerService.re_emit`'s `audit`): a re-emit the
    # database did not take is a 503 with nothing fired, so a client's retry fires it once.
    audit = AuditEntry("api.trigger.re_emit", request_user(request), "api", None, {"instance": instance_id})
    try:
        emitted = await squall.triggers.re_emit(instance_id, audit)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    # StackStorm's words, its spelling included: scripts match on them.
    return {**emitted, "message": f"Trigger instance {instance_id} succesfully re-sent."}
