"""`/keys`: the datastore's keys by scope, with expiry; set and delete (admin).

Reads and writes go through the engine's `Datastore` (`squall.datastore`), as `/api/v1/keys` and
`squall key ...` do, so a write fires the `core.st2.key_value_pair.*` triggers as theirs do. The
page never shows an encrypted value, not even as ciphertext: a secret is `********`, and a value
typed into the form is never echoed back nor written to the audit log.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import admin, form_fields, viewer
from engine.crypto import CryptoError
from engine.datastore import SCOPES, DatastoreError
from engine.parameters import MASK

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: Keys a page lists at most (per scope).
MAX_KEYS = 1000


def _scope(value: str | None) -> str:
    scope = (value or "system").removeprefix("st2kv.")
    if scope not in SCOPES:
        raise PageError(f"unknown scope {value!r}: one of {', '.join(SCOPES)}")
    return scope


def _ttl(value: str) -> int | None:
    if not value.strip():
        return None
    try:
        ttl = int(value)
    except ValueError:
        raise PageError(f"TTL must be a whole number of seconds, or empty for a key that never expires, "
                        f"not {value!r}") from None
    return ttl


async def _datastore(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A datastore call on the database thread; its refusals (a bad name, scope or TTL) are 400s."""
    squall = request.app.state.squall
    try:
        return await squall.db(fn, *args, **kwargs)
    except (DatastoreError, CryptoError) as exc:
        raise PageError(str(exc)) from exc
    except OverflowError:
        raise PageError("TTL is too long: the key would expire after the year 9999.") from None


@router.get("/keys")
async def key_list(request: Request, scope: str = "system", session: Session = Depends(viewer)) -> Response:
    scope = _scope(scope)
    squall = request.app.state.squall
    items = await _datastore(request, squall.datastore.list, scope=scope, limit=MAX_KEYS + 1)
    shown = [{**item, "value": MASK} if item["secret"] else item for item in items[:MAX_KEYS]]
    return render(request, "keys.html", {"session": session, "scope": scope, "scopes": SCOPES, "keys": shown,
                                         "more": len(items) > MAX_KEYS, "may_edit": session.account.may("admin")})


def _owner(scope: str, fields: dict[str, str]) -> str | None:
    user = fields.get("user", "").strip() or None
    if scope == "user" and user is None:
        raise PageError("A user-scoped key needs the user it belongs to.")
    return user if scope == "user" else None


@router.post("/keys")
async def key_set(request: Request, session: Session = Depends(admin)) -> Response:
    """Form fields `name`, `value`, `scope`, `user` (user scope), `secret` (encrypt), `ttl`, `description`."""
    fields = await form_fields(request)
    scope = _scope(fields.get("scope"))
    name = fields.get("name", "").strip()
    user = _owner(scope, fields)
    squall = request.app.state.squall
    secret = fields.get("secret") in ("on", "true", "1")
    await _datastore(request, squall.datastore.set, name, fields.get("value", ""), scope=scope, user=user,
                     encrypt=secret, ttl=_ttl(fields.get("ttl", "")),
                     description=fields.get("description", "").strip() or None)
    await squall.db(squall.store.audit_add, "web.key.set", session.account.name, "web", name,
                    {"scope": scope, "user": user, "secret": secret})
    return RedirectResponse(f"/keys?scope={scope}", status_code=303)


@router.post("/keys/delete")
async def key_delete(request: Request, session: Session = Depends(admin)) -> Response:
    """Form fields `name`, `scope`, `user` (user scope)."""
    fields = await form_fields(request)
    scope = _scope(fields.get("scope"))
    name = fields.get("name", "").strip()
    user = _owner(scope, fields)
    squall = request.app.state.squall
    if not await _datastore(request, squall.datastore.delete, name, scope=scope, user=user):
        raise PageError(f"No {scope} key named {name!r}{f' of {user}' if user else ''}: it may have expired or "
                        "been deleted already.", 404)
    await squall.db(squall.store.audit_add, "web.key.delete", session.account.name, "web", name,
                    {"scope": scope, "user": user})
    return RedirectResponse(f"/keys?scope={scope}", status_code=303)
