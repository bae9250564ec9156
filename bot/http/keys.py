"""`/api/v1/keys`: the datastore's key-value pairs; secret values show masked unless `decrypt` is asked.

A PUT with `encrypted: true` (`st2 key set --encrypted`, `st2 key load` of a ciphertext export) stores
the value as given once it decrypts under this server's key, as StackStorm does; anything else is a 400.
The mask a secret shows as is never written over a secret (a masked export loaded back): a 400 says to
export with `--decrypt` instead. `engine.datastore.Datastore.set` makes both checks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from bot.http.key_auth import request_user
from bot.http.state import api_state
from engine.crypto import CryptoError
from engine.datastore import DatastoreError
from engine.parameters import MASK, MAX_INTEGER

#: The longest `ttl` of a key (100 years, in seconds): longer ones overflow the expiry date.
MAX_KEY_TTL = 100 * 365 * 24 * 3600

router = APIRouter()


class KeyRequest(BaseModel):
    value: Any
    secret: bool = False
    encrypt: bool = False
    #: The value is ciphertext under this server's key already: stored as given (implies a secret).
    encrypted: bool = False
    ttl: int | None = None
    scope: str = "system"
    user: str | None = None
    description: str | None = None


def _shown(item: dict[str, Any], decrypt: bool) -> dict[str, Any]:
    if item["secret"] and not decrypt and item.get("error") is None:
        return {**item, "value": MASK}
    return item


def _user(request: Request, scope: str | None, user: str | None) -> str | None:
    """The user of a user-scoped key: the one named, else the requester (as `st2 key set --scope user`)."""
    if user or (scope or "").removeprefix("st2kv.") not in ("user", "all"):
        return user
    return request_user(request)


async def _datastore(squall: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn` (a datastore method) on the database thread; its refusals (a bad scope, no key to decrypt) are 400."""
    try:
        return await squall.db(fn, *args, **kwargs)
    except (DatastoreError, CryptoError) as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("/keys", tags=["keys"])
async def list_keys(request: Request, prefix: str | None = None, scope: str = "system", user: str | None = None,
                    decrypt: bool = False,
                    limit: int | None = Query(None, ge=1, le=MAX_INTEGER)) -> list[dict[str, Any]]:
    squall = api_state(request).squall
    items = await _datastore(squall, squall.datastore.list, prefix=prefix, scope=scope,
                             user=_user(request, scope, user), decrypt=decrypt, limit=limit)
    return [_shown(item, decrypt) for item in items]


@router.get("/keys/{name}", tags=["keys"])
async def get_key(name: str, request: Request, scope: str = "system", user: str | None = None,
                  decrypt: bool = False) -> dict[str, Any]:
    squall = api_state(request).squall
    item = await _datastore(squall, squall.datastore.get, name, scope=scope, user=_user(request, scope, user),
                            decrypt=decrypt)
    if item is None:
        raise HTTPException(404, f'Resource with a name "{name}" not found')
    return _shown(item, decrypt)


@router.put("/keys/{name}", tags=["keys"])
async def put_key(name: str, body: KeyRequest, request: Request) -> dict[str, Any]:
    if body.ttl is not None and body.ttl > MAX_KEY_TTL:
        raise HTTPException(400, f"ttl must be at most {MAX_KEY_TTL} seconds (100 years), not {body.ttl}.")
    squall = api_state(request).squall
    item = await _datastore(squall, squall.datastore.set, name, body.value, scope=body.scope,
                            user=_user(request, body.scope, body.user),
                            encrypt=body.secret or body.encrypt, encrypted=body.encrypted, ttl=body.ttl,
                            description=body.description)
    await squall.db(squall.store.audit_add, "api.key.set", request_user(request), "api", item["name"],
                    {"scope": item["scope"], "secret": bool(item["secret"]), "encrypted": body.encrypted,
                     "ttl": body.ttl})
    return _shown(item, False)


@router.delete("/keys/{name}", status_code=204, tags=["keys"])
async def delete_key(name: str, request: Request, scope: str = "system", user: str | None = None) -> None:
    squall = api_state(request).squall
    if not await _datastore(squall, squall.datastore.delete, name, scope=scope, user=_user(request, scope, user)):
        raise HTTPException(404, f'Resource with a name "{name}" not found')
    await squall.db(squall.store.audit_add, "api.key.delete", request_user(request), "api", name, {"scope": scope})
