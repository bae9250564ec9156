"""`GET /api/v1/user`: who the request's key or token speaks for (what `st2 whoami` prints)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bot.http.key_auth import request_user
from engine.storage import iso

router = APIRouter()


@router.get("/user", tags=["auth"])
async def current_user(request: Request) -> dict[str, Any]:
    method = request.state.auth_method
    authentication: dict[str, Any] = {"method": method, "location": "header"}
    if method == "authentication token":
        authentication["token_expire"] = iso(request.state.auth_expires)
    return {"username": request_user(request) or "api", "authentication": authentication,
            "rbac": {"enabled": False, "roles": [], "is_rbac_admin": True}}
