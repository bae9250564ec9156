"""The API-key check that protected routes depend on (`Depends(require_key)`); webhooks without a
secret call it too. Keys are stored and made by `bot.apikeys`, which the CLI shares without FastAPI."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import HTTPException, Request

from bot.apikeys import hash_key
from bot.http.state import ApiState, api_state


async def _authenticated(state: ApiState, key: str | None) -> dict[str, Any] | None:
    """Who the key is: `{"name": ...}` of a stored key, `{"name": None}` for a configured one."""
    if not key:
        return None
    digest = hash_key(key)
    found = False
    for known in state.settings.static_hashes:  # constant time, whichever matches
        found |= hmac.compare_digest(digest, known)
    if found:
        return {"name": None}
    squall = state.squall
    record = await squall.db(squall.store.api_key_by_hash, digest)
    return record if record and record.get("enabled", True) else None


def _presented_key(request: Request) -> str | None:
    """The key in header `St2-Api-Key`, `Authorization: Bearer <key>` or query `st2-api-key`, in that order."""
    key = request.headers.get("st2-api-key")
    if not key:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            key = value.strip()
    return key or request.query_params.get("st2-api-key")


async def require_key(request: Request) -> None:
    """401 unless the request carries a valid key; the stored key's name goes to `request.state.api_key_name`
    (None for a configured key), which `render: true` is checked against."""
    key = _presented_key(request)
    if not key:
        raise HTTPException(401, "Unauthorized - API key required: send header St2-Api-Key, "
                                 "Authorization: Bearer <key> or query parameter st2-api-key.",
                            headers={"WWW-Authenticate": "Bearer"})
    who = await _authenticated(api_state(request), key)
    if who is None:
        raise HTTPException(401, "Unauthorized - the API key is not valid.",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.api_key_name = who.get("name")
