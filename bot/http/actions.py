"""`/api/v1/actions`: the registry's actions, with secret parameters' defaults masked."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from bot.http.paging import Paging
from bot.http.state import api_state
from engine.packs import UnknownAction
from engine.parameters import MASK

router = APIRouter()


def action_public(action: Any) -> dict[str, Any]:
    """The action's summary; a secret parameter's default shows as the mask (it may be a password)."""
    summary = action.summary()
    summary["parameters"] = {
        name: ({**spec, "default": MASK} if spec.get("secret") and spec.get("default") is not None else spec)
        for name, spec in (summary.get("parameters") or {}).items()}
    return summary


@router.get("/actions", tags=["actions"])
async def list_actions(request: Request, response: Response, pack: str | None = None,
                       paging: Paging = Depends()) -> list[dict[str, Any]]:
    actions = sorted(api_state(request).squall.registry.actions.values(), key=lambda a: a.ref)
    return [action_public(a) for a in paging.page([a for a in actions if pack in (None, a.pack)], response)]


@router.get("/actions/{ref}", tags=["actions"])
async def get_action(ref: str, request: Request) -> dict[str, Any]:
    try:
        return action_public(api_state(request).squall.registry.action(ref))
    except UnknownAction as exc:
        raise HTTPException(404, str(exc)) from exc
