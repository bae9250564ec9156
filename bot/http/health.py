"""`GET /healthz`: for load balancers and probes, so it needs no API key and touches no database."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bot.http.state import api_state

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz(request: Request) -> dict[str, Any]:
    registry = api_state(request).squall.registry
    return {"status": "ok", "packs": len(registry.packs), "actions": len(registry.actions)}
