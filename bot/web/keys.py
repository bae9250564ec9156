"""`/keys`: the datastore's keys by scope, with expiry; set and delete (admin). In the user scope a person
sees their own keys only, as the API's rule has it, and an admin every user's (`_reader`).

Reads and writes go through the engine's `Datastore` (`squall.datastore`), as `/api/v1/keys` and
`squall key ...` do, so a write fires the `core.st2.key_value_pair.*` triggers as theirs do. The
page never shows an encrypted value, not even as ciphertext: a secret is `********`, and a value
typed into the form is never written to the audit log. A set or a deletion is stored with its audit
event (`web.key.set`, `web.key.delete`), in one transaction: neither is stored without the other.

A key the engine refuses (a TTL too long, a name too long, a user it cannot have) comes back as the
keys page with the engine's message beside its field and what was typed kept, but never the value of
a key to encrypt: that field comes back empty (and a password field, as `static/keys.js` makes it
while Encrypt is ticked).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import admin, form_fields, viewer
from engine.crypto import CryptoError
from engine.datastore import MAX_KEY_TTL, SCOPES, DatastoreError, check_key, check_ttl, owner
from engine.executions import AuditEntry
from engine.identity import acting_as
from engine.parameters import MASK

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: Keys a page lists at most (per scope).
MAX_KEYS = 1000
#: The set form's fields that can be wrong, in the form's order, as their labels name them.
LABELS = {"name": "Name", "user": "User", "value": "Value", "ttl": "TTL"}
#: What the set form shows back after a refusal: what was typed, but never a value to encrypt.
KEPT = ("name", "user", "value", "ttl", "description")


def _scope(value: str | None) -> str:
    scope = (value or "system").removeprefix("st2kv.")
    if scope not in SCOPES:
        raise PageError(f"unknown scope {value!r}: one of {', '.join(SCOPES)}")
    return scope


def _ttl(value: str) -> int | None:
    """The TTL field as the datastore takes it: None when empty (never expires), else checked by the
    engine (`check_ttl`); a ValueError that says what is wrong."""
    if not value.strip():
        return None
    try:
        ttl = int(value)
    except ValueError:
        raise ValueError(f"TTL must be a whole number of seconds up to {MAX_KEY_TTL} (100 years), or empty "
                         f"for a key that never expires, not {value!r}") from None
    return check_ttl(ttl)


async def _datastore(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A datastore call on the database thread; its refusals (a bad name, scope or TTL) are 400s."""
    squall = request.app.state.squall
    try:
        return await squall.db(fn, *args, **kwargs)
    except (DatastoreError, CryptoError) as exc:
        raise PageError(str(exc)) from exc


def _reader(session: Session) -> str | None:
    """Whose user-scoped keys `session` may read: the API's rule (`engine.identity.acting_as`, which
    `bot/http/keys.py` reads by), with the web's admin in the place of a key from the config file. A token or
    a stored API key reads its own user's keys only, and naming another user is refused; only the config's
    key, which names nobody, sees every user's. An account is a person, as a token's holder is: a viewer
    listed every user's keys and values at `/keys?scope=user`, which the API refused the same person. An
    admin, who may set and delete anyone's keys here, speaks for nobody and sees them all (None: no owner,
    `Datastore.list`'s administrator's view)."""
    return acting_as(None if session.account.may("admin") else session.account.name, None)


async def _page(request: Request, session: Session, scope: str, form: Mapping[str, Any] | None = None,
                errors: Mapping[str, str] | None = None, problem: str | None = None, status: int = 200) -> Response:
    """The scope's keys (of the user scope, only the reader's own unless an admin reads: `_reader`) and, for
    admins, the set form: empty, or as it was sent with what is wrong."""
    squall = request.app.state.squall
    reader = _reader(session)
    items = await _datastore(request, squall.datastore.list, scope=scope, user=reader, limit=MAX_KEYS + 1)
    shown = [{**item, "value": MASK} if item["secret"] else item for item in items[:MAX_KEYS]]
    return render(request, "keys.html", {
        "session": session, "scope": scope, "scopes": SCOPES, "keys": shown, "more": len(items) > MAX_KEYS,
        "may_edit": session.account.may("admin"), "form": form or {}, "errors": errors or {},
        "labels": LABELS, "problem": problem, "max_ttl": MAX_KEY_TTL, "own_only": reader}, status_code=status)


@router.get("/keys")
async def key_list(request: Request, scope: str = "system", session: Session = Depends(viewer)) -> Response:
    return await _page(request, session, _scope(scope))


def _owner(scope: str, fields: Mapping[str, str]) -> str | None:
    """The user a user-scoped key belongs to (None in the system scope); a ValueError naming the problem.
    Taken as posted, as `_name` is: a delete form's hidden field holds the stored user, and `ann ` stripped
    named ann's keys."""
    user = fields.get("user") or None
    if scope != "user":
        return None
    if user is None:
        raise ValueError("A user-scoped key needs the user it belongs to.")
    return owner(user)


def _name(fields: Mapping[str, str]) -> str:
    """The key's name exactly as posted. A delete form's hidden field holds the stored name, and the API and
    `squall key set` store names as given: stripped, deleting `deploy_token ` deleted `deploy_token`, another
    key, and setting it wrote that other key."""
    return fields.get("name", "")


def _checked(scope: str, fields: Mapping[str, str]) -> tuple[dict[str, str], str | None, int | None]:
    """What is wrong with the set form, per field (the engine's words: `engine.datastore`'s checks, as
    `Datastore.set` makes them), with the key's user and TTL."""
    errors: dict[str, str] = {}
    user = ttl = None
    try:
        user = _owner(scope, fields)
    except ValueError as exc:
        errors["user"] = str(exc)
    try:  # without a user (wrong), the name alone: its length counts the user's prefix only with one
        check_key(_name(fields), scope="system" if "user" in errors else scope, user=user)
    except DatastoreError as exc:  # the name's problem, or the user's a look at the stored name found (a NUL)
        errors["user" if exc.field == "user" else "name"] = str(exc)
    try:
        ttl = _ttl(fields.get("ttl", ""))
    except ValueError as exc:
        errors["ttl"] = str(exc)
    return errors, user, ttl


async def _refused(request: Request, session: Session, scope: str, fields: Mapping[str, str],
                   errors: Mapping[str, str], problem: str | None = None) -> Response:
    """The keys page with the set form as it was sent, but a value to encrypt, and what is wrong."""
    secret = fields.get("secret") in ("on", "true", "1")
    form = {name: "" if name == "value" and secret else fields.get(name, "") for name in KEPT} | {"secret": secret}
    ordered = {name: errors[name] for name in LABELS if name in errors}
    return await _page(request, session, scope, form, ordered, problem, status=400)


@router.post("/keys")
async def key_set(request: Request, session: Session = Depends(admin)) -> Response:
    """Form fields `name`, `value`, `scope`, `user` (user scope), `secret` (encrypt), `ttl`, `description`."""
    fields = await form_fields(request)
    scope = _scope(fields.get("scope"))
    name = _name(fields)
    errors, user, ttl = _checked(scope, fields)
    if errors:
        return await _refused(request, session, scope, fields, errors)
    squall = request.app.state.squall
    secret = fields.get("secret") in ("on", "true", "1")
    # Stored with the key, one transaction (`Datastore.set`): its detail gains the scope, the user and
    # whether it is a secret, as stored; never the value.
    audit = AuditEntry("web.key.set", session.account.name, "web", None, {})
    try:
        await squall.db(squall.datastore.set, name, fields.get("value", ""), scope=scope, user=user, encrypt=secret,
                        ttl=ttl, description=fields.get("description", "").strip() or None, audit=audit)
    except DatastoreError as exc:  # what the checks above leave: the mask over a secret, a NUL in a text
        if exc.field == "description":  # the form has no place for its error: said above it
            return await _refused(request, session, scope, fields, {}, str(exc))
        return await _refused(request, session, scope, fields, {"value": str(exc)})
    except (CryptoError, OverflowError) as exc:  # no key to encrypt with; a TTL past the year 9999
        problem = str(exc) if isinstance(exc, CryptoError) else "TTL is too long: the key would expire after 9999."
        return await _refused(request, session, scope, fields, {}, problem)
    return RedirectResponse(f"/keys?scope={scope}", status_code=303)


@router.post("/keys/delete")
async def key_delete(request: Request, session: Session = Depends(admin)) -> Response:
    """Form fields `name`, `scope`, `user` (user scope)."""
    fields = await form_fields(request)
    scope = _scope(fields.get("scope"))
    name = _name(fields)
    try:
        user = _owner(scope, fields)
    except ValueError as exc:
        raise PageError(str(exc)) from None
    squall = request.app.state.squall
    # Stored with the deletion, one transaction, only if a key was deleted (`Datastore.delete`: its detail
    # gains the scope).
    audit = AuditEntry("web.key.delete", session.account.name, "web", None, {"user": user})
    if not await _datastore(request, squall.datastore.delete, name, scope=scope, user=user, audit=audit):
        raise PageError(f"No {scope} key named {name!r}{f' of {user}' if user else ''}: it may have expired or "
                        "been deleted already.", 404)
    return RedirectResponse(f"/keys?scope={scope}", status_code=303)
