"""`GET /api/v1/packs[/{ref}]`: the loaded packs, with how many actions, aliases, rules... each holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from bot.http.paging import Paging
from bot.http.state import api_state

router = APIRouter()


@router.get("/packs", tags=["packs"])
async def list_packs(request: Request, response: Response, paging: Paging = Depends()) -> list[dict[str, Any]]:
    registry = api_state(request).squall.registry
    return [registry.packs[ref].summary(registry.counts(ref)) for ref in paging.page(sorted(registry.packs), response)]


@router.get("/packs/{ref}", tags=["packs"])
async def get_pack(ref: str, request: Request) -> dict[str, Any]:
    registry = api_state(request).squall.registry
    pack = registry.packs.get(ref)
    if pack is None:
        raise HTTPException(404, f'Pack "{ref}" is not loaded; loaded: {", ".join(sorted(registry.packs))}.')
    return pack.summary(registry.counts(ref))
