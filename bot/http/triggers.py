"""`/api/v1/triggertypes` and `/api/v1/triggerinstances`: what can fire, what fired, and firing again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from bot.http.paging import ALL_ROWS, Paging, page_limit, tell_page
from bot.http.state import api_state
from engine.parameters import MAX_INTEGER

router = APIRouter()


@router.get("/triggertypes", tags=["triggers"])
async def list_trigger_types(request: Request, response: Response,
                             paging: Paging = Depends()) -> list[dict[str, Any]]:
    types = sorted(api_state(request).squall.registry.trigger_types.items())
    return [{"ref": t.ref, "name": t.name, "pack": t.pack, "description": t.description,
             "payload_schema": t.payload_schema, "parameters_schema": t.parameters_schema}
            for _ref, t in paging.page(types, response)]


@router.get("/triggerinstances", tags=["triggers"])
async def list_trigger_instances(request: Request, response: Response, trigger: str | None = None,
                                 status: str | None = None, limit: int | None = Depends(page_limit(50, 1000)),
                                 offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> list[dict[str, Any]]:
    """Newest first; `limit=-1` lists them all (`st2 trigger-instance list -n -1`)."""
    records, total = await api_state(request).squall.triggers.page(
        trigger=trigger, status=status, limit=ALL_ROWS if limit is None else limit, offset=offset)
    tell_page(response, total, limit)
    return records


@router.get("/triggerinstances/{instance_id}", tags=["triggers"])
async def get_trigger_instance(instance_id: str, request: Request) -> dict[str, Any]:
    try:
        return await api_state(request).squall.triggers.get(instance_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc


@router.post("/triggerinstances/{instance_id}/re_emit", status_code=201, tags=["triggers"])
async def re_emit(instance_id: str, request: Request) -> dict[str, Any]:
    try:
        return await api_state(request).squall.triggers.re_emit(instance_id)
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
