"""The API-key check that protected routes depend on (`Depends(require_key)`); webhooks without a
secret call it too. Keys are stored and made by `bot.apikeys`, which the CLI shares without FastAPI.

An auth token (header `X-Auth-Token`, as st2client sends it) is accepted in place of a key: a running
execution's (`ST2_ACTION_AUTH_TOKEN`) until the execution ends, a person's (`st2 login`) until it
expires or the API key it was obtained with is deleted or disabled. `engine.tokens` mints and checks
both; `bot.apikeys.authenticate_token` adds the key's check. Both checks only read, on `Database.read`:
an API request is let in while another process holds SQLite's write lock.

A stream (`/stream/v1/...`) outlives the request that opened it, so `until_revoked` looks at its key or
token again every `RECHECK_SECONDS` and ends the stream once it no longer holds, as the web UI's live
streams do with their session: a deleted key, an expired login or an ended execution reads no more."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import HTTPException, Request

from bot.apikeys import authenticate_token, hash_key
from bot.http.state import ApiState, api_state
from engine.identity import ImpersonationError, acting_as

log = logging.getLogger(__name__)


#: Who a stored API key made without a name speaks for (what a request of a configured key runs as, too).
UNNAMED_KEY_USER = "api"
#: How often an open stream looks again at what authenticated it (`until_revoked`): one query per stream,
#: however many events it sends. 0 (tests) looks before every event.
RECHECK_SECONDS = 5.0
#: The shortest wait between two looks of a quiet stream, so that a `RECHECK_SECONDS` of 0 does not spin.
_QUIET_WAIT = 0.05
_END = object()
Item = TypeVar("Item")


async def authenticated_key(state: ApiState, key: str | None) -> dict[str, Any] | None:
    """Who the key is: `{"name": ...}` of a stored key, `{"name": None}` for a configured one. A stored key
    made without a name (`squall apikey create`) speaks for the user `UNNAMED_KEY_USER`: only the config's
    keys name nobody, and so may name anyone (`acting_user`); an unnamed stored key could otherwise log in
    as, read the datastore of, and answer inquiries for anyone."""
    if not key:
        return None
    digest = hash_key(key)
    found = False
    for known in state.settings.static_hashes:  # constant time, whichever matches
        found |= hmac.compare_digest(digest, known)
    if found:
        return {"name": None}
    squall = state.squall
    record = await squall.db.read(squall.store.api_key_by_hash, digest)  # beside the write groups, as `token_holder`
    if not record or not record.get("enabled", True):
        return None
    return record if record.get("name") else {**record, "name": UNNAMED_KEY_USER}


async def token_holder(state: ApiState, token: str) -> dict[str, Any] | None:
    """Whom `token` speaks for (`bot.apikeys.authenticate_token`), or None. Read on `Database.read`, as
    a stored key is: checking a credential writes nothing, and in a write group every API request would
    wait behind a write that waits for another process's SQLite lock (a CLI's `squall key set`)."""
    squall = state.squall
    return await squall.db.read(authenticate_token, squall.store, token, state.settings.static_hashes)


def _presented_key(request: Request) -> str | None:
    """The key in header `St2-Api-Key`, `Authorization: Bearer <key>` or query `st2-api-key`, in that order."""
    key = request.headers.get("st2-api-key")
    if not key:
        auth = request.headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            key = value.strip()
    return key or request.query_params.get("st2-api-key")


async def _require_token(request: Request, token: str) -> None:
    """401 unless `token` is a live execution's, or an unexpired login's whose API key still works; it acts
    as an anonymous key (no `render: true`).

    Who it speaks for goes to `request.state.auth_user` and `auth_execution`, and to the log at debug:
    StackStorm records a token's user on what it does; routes that audit may read it from there."""
    who = await token_holder(api_state(request), token)
    if who is None:
        raise HTTPException(401, "Unauthorized - the auth token is not valid (unknown, expired, its "
                                 "execution has ended, or the API key it was obtained with was deleted or "
                                 "disabled); log in again (st2 login) or send an API key.",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.api_key_name = None
    request.state.credential = Credential("token", token)
    request.state.auth_user = who["user"]
    request.state.auth_execution = who["execution_id"]
    request.state.auth_expires = who["expires_at"]
    request.state.auth_method = "authentication token"
    log.debug("API %s %s with the token of execution %s (user %s)", request.method, request.url.path,
              who["execution_id"], who["user"])


async def require_key(request: Request) -> None:
    """401 unless the request carries a valid key or action token; the stored key's name goes to
    `request.state.api_key_name` (None for a configured key or a token), which `render: true` is checked
    against. A token is tried only without a key: st2client sends one or the other."""
    key = _presented_key(request)
    # The query parameter as StackStorm takes it: st2client's stream reader (`st2 execution tail` after
    # `st2 login`) sends the token there, as it sends a key as `st2-api-key`.
    token = request.headers.get("x-auth-token") or request.query_params.get("x-auth-token")
    if token and not key:
        await _require_token(request, token)
        return
    if not key:
        raise HTTPException(401, "Unauthorized - API key required: send header St2-Api-Key, "
                                 "Authorization: Bearer <key> or query parameter st2-api-key "
                                 "(or a token: header X-Auth-Token or query parameter x-auth-token).",
                            headers={"WWW-Authenticate": "Bearer"})
    who = await authenticated_key(api_state(request), key)
    if who is None:
        raise HTTPException(401, "Unauthorized - the API key is not valid.",
                            headers={"WWW-Authenticate": "Bearer"})
    request.state.api_key_name = who.get("name")
    request.state.credential = Credential("key", key)
    request.state.auth_user = who.get("name")
    request.state.auth_method = "api key"


def request_user(request: Request) -> str | None:
    """Who a request speaks for, as StackStorm records it: an auth token's user, else the stored API
    key's name (StackStorm's keys belong to a user); None for a key from config, which names nobody."""
    return getattr(request.state, "auth_user", None)


def speaking_as(request: Request, named: str | None) -> str | None:
    """Whom a request acts as when it names `named` (`engine.identity.acting_as`, the web's rule too): a token
    or a stored key its own user (`request_user`), a key from config, which names nobody, whoever it names
    (None when it names no one: of user-scoped keys, every user's). 403 when a token or a stored key names
    someone else."""
    try:
        return acting_as(request_user(request), named)
    except ImpersonationError as exc:
        raise HTTPException(403, f"this credential speaks for {exc.own}; it may not act as {exc.named} (only a "
                                 "key from the config file, which names nobody, may name another user)") from None


def acting_user(request: Request, named: str | None) -> str:
    """Who a request acts as when its body may name a person (an inquiry's responder, an alias
    execution's user), by `speaking_as`: a key from config names nobody, so a bridge holding one (a chat
    bot relaying its users, as hubot does) may name anyone, and naming no one acts as `api`; a token or a
    stored key speaks for its own user and may name only that user, or the checks made per person (an
    inquiry's `users` and `self_approval`, an alias's permissions) would be anyone's to pass. 403 when it
    names someone else."""
    acting = speaking_as(request, named)
    return "api" if acting is None else acting


@dataclass(frozen=True)
class Credential:
    """What authenticated a request (`require_key` keeps it in `request.state.credential`), so that a
    stream can ask again whether it still holds. Kept in memory for the request only, as its headers are."""

    kind: Literal["key", "token"]
    secret: str = field(repr=False)

    async def holds(self, state: ApiState) -> bool:
        """Whether it would be accepted now (one query; none for a key from the config, which stays
        valid until a restart)."""
        if self.kind == "key":
            return await authenticated_key(state, self.secret) is not None
        return await token_holder(state, self.secret) is not None


class CredentialWatch:
    """A stream's credential, looked at again once `RECHECK_SECONDS` have passed since the last look
    (the request's own check counts as the first)."""

    def __init__(self, state: ApiState, credential: Credential) -> None:
        self.state = state
        self.credential = credential
        self._due = time.monotonic() + RECHECK_SECONDS

    def wait_seconds(self) -> float:
        """How long a quiet stream may wait before its next look."""
        return max(self._due - time.monotonic(), _QUIET_WAIT)

    async def alive(self) -> bool:
        """False once the credential no longer holds; True without a query until the next look is due."""
        if time.monotonic() < self._due:
            return True
        holds = await self.credential.holds(self.state)
        self._due = time.monotonic() + RECHECK_SECONDS
        return holds


def until_revoked(request: Request, source: AsyncGenerator[Item, None]) -> AsyncIterator[Item]:
    """`source`'s items (a stream's events) for as long as the key or token that opened the request
    holds: looked at again every `RECHECK_SECONDS`, before the next item and while none comes, and
    the stream ends (closes, without an event: st2client reads every event's data as an execution's
    or a chunk's, and `st2 execution tail` would fail on another) once it is deleted, disabled, expired,
    or its execution ended. A request that `require_key` did not authenticate passes as it came."""
    credential = getattr(request.state, "credential", None)
    if credential is None:
        return source
    return _guarded(CredentialWatch(api_state(request), credential), source, request.url.path)


async def _guarded(watch: CredentialWatch, source: AsyncGenerator[Item, None], path: str) -> AsyncIterator[Item]:
    """The next item is awaited in a task of its own, kept across looks, so a quiet source (a tail
    waiting for output) is neither cut off mid-read nor left unchecked."""
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source, _END))
            await asyncio.wait({pending}, timeout=watch.wait_seconds())
            if not await watch.alive():
                log.info("API stream %s ended: the %s that opened it is no longer valid (deleted, disabled, "
                         "expired, or its execution ended)", path, watch.credential.kind)
                return
            if pending.done():
                item, pending = pending.result(), None
                if item is _END:
                    return
                yield item
    finally:
        if pending is not None and not pending.done():
            # Its task throws the cancellation into the source, which ends it (its `with` blocks exit);
            # nothing is awaited here: the stream's own cancellation (its client left) may be under way.
            pending.cancel()
        else:
            await source.aclose()
