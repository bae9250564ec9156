"""`GET /api/v1/packs`: the loaded packs, with how many actions, aliases, rules... each holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bot.http.state import api_state

router = APIRouter()


@router.get("/packs", tags=["packs"])
async def list_packs(request: Request) -> list[dict[str, Any]]:
    registry = api_state(request).squall.registry
    return [registry.packs[ref].summary(registry.counts(ref)) for ref in sorted(registry.packs)]
