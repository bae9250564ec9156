"""`POST /auth/v1/tokens`: StackStorm's auth service, so `st2 login` (and st2client's token auth) work.

Until Squall has accounts of its own, a person proves who they are with an API key: as the password of
HTTP basic auth (`st2 login NAME --password KEY`, NAME being the stored key's name) or in the
`St2-Api-Key` header. When a request carries both, basic auth decides, as StackStorm's st2auth reads
only the Authorization header: st2client sends an exported `ST2_API_KEY` with every request, `st2 login`'s
too, and a login as bob must not become one as the exported key's alice. The token then speaks for that
name (a key from config names nobody, so the login name is taken) for `api.token_ttl` seconds, or less if
the request's `ttl` asks, and only while that key works: the token records the key
(`bot.apikeys.key_issuer`), so deleting or disabling it (or removing a configured key from the config)
ends every token obtained with it. StackStorm's API has no call that
revokes a token; this is how one is revoked."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from bot.apikeys import hash_key, key_issuer
from bot.http.key_auth import authenticated_key
from bot.http.state import api_state
from engine.tokens import issue

router = APIRouter()
_REALM = {"WWW-Authenticate": 'Basic realm="Squall"'}


class TokenRequest(BaseModel):
    ttl: int | None = None


def _basic(request: Request) -> tuple[str, str] | None:
    """User and password of an `Authorization: Basic` header, or None without one."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise HTTPException(401, "Unauthorized - the Authorization header is not valid Basic credentials "
                                 "(base64 of NAME:PASSWORD).", headers=_REALM) from None
    return (user, password) if sep and user else None


async def _who(request: Request, credentials: tuple[str, str] | None) -> tuple[str, str]:
    """The name a new token speaks for and the key it is obtained with (`key_issuer`: the token works
    only while that key does); 401 unless the request carries a valid API key. `credentials` (`_basic`),
    what was typed at `st2 login`, decide when there are any; header `St2-Api-Key` only without them."""
    state = api_state(request)
    key = credentials[1] if credentials else request.headers.get("st2-api-key")
    if not key:
        raise HTTPException(401, "Unauthorized - log in with HTTP basic auth (user name and an API key as the "
                                 "password: st2 login NAME --password KEY) or send header St2-Api-Key.",
                            headers=_REALM)
    who = await authenticated_key(state, key)
    if who is None:
        where = "the password" if credentials else "header St2-Api-Key"
        raise HTTPException(401, f"Unauthorized - {where} is not a valid API key.", headers=_REALM)
    name = who.get("name")
    login = credentials[0] if credentials else None
    if name and login and login != name:
        raise HTTPException(401, f"Unauthorized - this API key is {name}'s; log in as {name}.", headers=_REALM)
    user = name or login
    if not user:  # only a configured key in header St2-Api-Key: basic auth always carries a user name
        raise HTTPException(401, "Unauthorized - this API key (from config) names nobody, and header St2-Api-Key "
                                 "carries no user name; log in with HTTP basic auth instead, a user name and the "
                                 "key as the password (st2 login NAME --password KEY).", headers=_REALM)
    return user, key_issuer(who, hash_key(key))


@router.post("/tokens", status_code=201, tags=["auth"])
async def create_token(request: Request, body: TokenRequest | None = None) -> dict[str, Any]:
    state = api_state(request)
    limit = state.settings.token_ttl
    ttl = body.ttl if body and body.ttl is not None else limit
    if ttl <= 0 or ttl > limit:
        raise HTTPException(400, f"TTL specified {ttl} is not between 1 and the max allowed {limit} seconds "
                                 "(api.token_ttl).")
    squall = state.squall
    # From where, as the web's logins are audited (`web:<address>`): a guesser's address is what to block.
    source = f"api:{request.client.host if request.client else 'unknown'}"
    credentials: tuple[str, str] | None = None
    try:
        credentials = _basic(request)
        user, issuer = await _who(request, credentials)
    except HTTPException as refused:  # malformed basic auth too: audited, without a name
        await squall.db(squall.store.audit_add, "api.login.failed", credentials[0] if credentials else None, source,
                        None, {"reason": refused.detail})
        raise
    token = await squall.db(issue, squall.store, user, ttl, issuer)
    await squall.db(squall.store.audit_add, "api.login", user, source, None, {"ttl": ttl})
    return token
