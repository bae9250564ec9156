"""`/login` and `/logout`, `/login/oidc` and its callback (when `web.oidc` is configured), and `/` (the
executions).

The login form is protected against cross-site posts too (a forged login would sign a victim in as
the attacker): `GET /login` sets a random cookie and puts the same value in the form, and the post
must carry both (double submit; there is no session yet to hold a token). Failed logins are counted
per name and per address (`throttle.py`), each from before its password check, so logins sent at once
cannot all be checked; a name that does not exist costs the same argon2 check as a wrong password, so
timing does not tell which names exist. A login the throttle refuses is audited (`web.login.throttled`),
but once per limit reached in the throttle's window (`_newly_throttled`): a flood of guesses cannot flood
the audit.

An OpenID Connect login (`oidc.py`) ends as a password login does: a session in the same cookie,
with its CSRF token, and the browser sent to `next` (a path of this site only). Its failures (the
provider refused, the login expired, no group gives a role) are shown on the login page.

A logout ends the session in the browser whatever the database does: when the database fails or is
locked, the cookie is cleared all the same, the login page says the person is logged out on this
browser, and the session is refused from then on and deleted once the database works again
(`session.EndedSessions`). Its CSRF token is checked as on any post; when the database cannot even
read the session (so not its token either), the browser's word that the post came from this site
(`session.from_this_site`) stands in for it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import (
    SESSION_LIFETIME,
    Account,
    AccountError,
    close_sessions,
    open_session,
    password_matches,
    provision_external,
    token_hash,
)
from bot.web.oidc import PENDING_SECONDS, OidcError, OidcLogin
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import (
    COOKIE,
    CSRF_FIELD,
    LoginRequired,
    ended_sessions,
    form_fields,
    from_this_site,
    safe_next,
    set_cookie,
    viewer,
)
from bot.web.throttle import MAX_KEYS, LoginThrottle
from engine.storage import database_trouble

log = logging.getLogger(__name__)
router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: The double-submit cookie of the login form.
LOGIN_COOKIE = "squall_login"
#: The `state` of the OpenID Connect login this browser started (its callback must bring the same).
OIDC_COOKIE = "squall_oidc"


def _throttle(request: Request) -> LoginThrottle:
    return request.app.state.web_throttle


def _newly_throttled(request: Request, keys: tuple[str, ...]) -> list[str] | None:
    """The limits (`user`, `address`) a refused login reached, when one of them has not been audited
    yet in the throttle's window; None when all have (that refusal writes no row). Keyed by the
    throttle's own keys, so a flood spread over many names from one address writes one row for the
    address, and one over many addresses for one name one row for the name, per window. Remembers at
    most `MAX_KEYS` keys, as the throttle does."""
    throttle = _throttle(request)
    state = request.app.state
    noted: dict[str, float] | None = getattr(state, "web_throttle_noted", None)
    if noted is None:
        noted = state.web_throttle_noted = {}
    now = throttle.clock()
    reached = [key for key in keys if throttle.wait(key)]
    fresh = [key for key in reached if now - noted.get(key, -math.inf) >= throttle.window]
    for key in fresh:
        noted.pop(key, None)
        noted[key] = now  # (re-)inserted last: the dict's order is staleness
    while len(noted) > MAX_KEYS:
        del noted[next(iter(noted))]
    return [key.partition(":")[0] for key in reached] if fresh else None


#: What the login page says when a form was sent after its session ended (`session.LoginRequired.expired`).
EXPIRED = "Your session expired; log in again to continue. What that form sent was not done."


def _login_page(request: Request, status: int = 200, error: str | None = None, username: str = "",
                next_url: str | None = None, notice: str | None = None) -> Response:
    """The form, with a fresh double-submit token in it and in its cookie."""
    token = secrets.token_urlsafe(24)
    oidc: OidcLogin | None = request.app.state.web_oidc
    response = render(request, "login.html", {"error": error, "notice": notice, "username": username,
                                              "login_token": token, "next": safe_next(next_url),
                                              "oidc_label": oidc and oidc.label}, status_code=status)
    set_cookie(request, response, LOGIN_COOKIE, token)
    return response


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/executions", status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str | None = None, expired: str = "") -> Response:
    return _login_page(request, next_url=next, notice=EXPIRED if expired else None)


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await form_fields(request)
    name, password, next_url = fields.get("username", "").strip(), fields.get("password", ""), fields.get("next")
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), fields.get(CSRF_FIELD, "").encode()):
        return _login_page(request, 403, "This login form expired or did not come from Squall's own page: "
                                         "try again.", name, next_url)
    address = request.client.host if request.client else "unknown"
    keys = (f"user:{name.lower()}", f"address:{address}")
    throttle = _throttle(request)
    # Counted as a failure before the password is checked (given back if right): logins sent at once
    # would otherwise all pass the limit while their checks run.
    wait, stamp = throttle.reserve(*keys)
    if wait:
        if (limits := _newly_throttled(request, keys)) is not None:
            squall = request.app.state.squall
            await squall.db(squall.store.audit_add, "web.login.throttled", name or None, f"web:{address}", None,
                            {"method": "password", "limits": limits, "retry_after": wait})
        response = _login_page(request, 429, f"Too many failed logins for this user or from this address: "
                                             f"try again in {wait} seconds.", name, next_url)
        response.headers["Retry-After"] = str(wait)
        return response
    squall = request.app.state.squall
    record = await squall.db(squall.store.web_user_get, name) if name else None
    if not await asyncio.to_thread(password_matches, record, password):
        await squall.db(squall.store.audit_add, "web.login.failed", name or None, f"web:{address}", None,
                        {"method": "password"})
        return _login_page(request, 401, "Wrong user name or password.", name, next_url)
    throttle.release(stamp, keys[1])
    throttle.succeeded(keys[0])
    return await _signed_in(request, Account(record["name"], record["role"]), next_url, "password")


async def _signed_in(request: Request, account: Account, next_url: str | None, method: str) -> Response:
    """A new session for `account`, and the browser sent on to `next` (password and OIDC logins alike)."""
    squall = request.app.state.squall
    token, _ = await squall.db(open_session, squall.store, account)
    address = request.client.host if request.client else "unknown"
    await squall.db(squall.store.audit_add, "web.login", account.name, f"web:{address}", None,
                    {"method": method, "role": account.role})
    response = RedirectResponse(safe_next(next_url), status_code=303)
    set_cookie(request, response, COOKIE, token, max_age=int(SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


def _oidc(request: Request) -> OidcLogin:
    oidc: OidcLogin | None = request.app.state.web_oidc
    if oidc is None:
        raise PageError("Logging in through OpenID Connect is not configured here (web.oidc).", 404)
    return oidc


@router.get("/login/oidc")
async def oidc_login(request: Request, next: str | None = None) -> Response:
    """Send the browser to the provider, remembering this login (`state` in its cookie too)."""
    oidc = _oidc(request)
    try:
        state, url = await oidc.begin(str(request.url_for("oidc_callback")), safe_next(next))
    except OidcError as exc:
        return _login_page(request, exc.status, str(exc), next_url=next)
    response = RedirectResponse(url, status_code=303)
    set_cookie(request, response, OIDC_COOKIE, state, max_age=PENDING_SECONDS)
    return response


@router.get("/login/oidc/callback")
async def oidc_callback(request: Request, state: str = "", code: str = "", error: str = "",
                        error_description: str = "") -> Response:
    """Where the provider sends the browser back: a session, or the login page saying what went wrong."""
    oidc = _oidc(request)
    pending = oidc.take(state, request.cookies.get(OIDC_COOKIE, ""))
    try:
        if pending is None:  # a provider's error is shown only for this browser's own login (no text injection)
            raise OidcError("This login expired, was already used, or was started in another browser: "
                            "log in again.", 400)
        if error:
            detail = f": {error_description[:200]}" if error_description else ""
            raise OidcError(f"{oidc.host} did not log you in ({error[:60]}{detail}).")
        if not code:
            raise OidcError(f"{oidc.host} sent the browser back without a login code: log in again.", 400)
        identity = await oidc.finish(pending, code)
        squall = request.app.state.squall
        account = await squall.db(provision_external, squall.store, identity.name, identity.role, identity.marker)
    except (OidcError, AccountError) as exc:
        status = exc.status if isinstance(exc, OidcError) else 403
        message = str(exc) if isinstance(exc, OidcError) else f"Login refused: {exc}."
        squall = request.app.state.squall
        await squall.db(squall.store.audit_add, "web.login.failed", None,
                        f"web:{request.client.host if request.client else 'unknown'}", None,
                        {"method": "oidc", "reason": message})
        response = _login_page(request, status, message, next_url=pending.next_url if pending else None)
    else:
        response = await _signed_in(request, account, pending.next_url, "oidc")
    if pending is not None:  # spent; a callback that is not this browser's leaves its own login going
        response.delete_cookie(OIDC_COOKIE, path="/")
    return response


#: What the login page says after a logout the database failed or was locked under (`_logged_out_anyway`).
LOGGED_OUT_ANYWAY = ("You are logged out on this browser. Squall could not record that in its database yet: "
                     "{trouble}. It will forget your session once the database works again.")


@router.get("/logout")
async def logout_page(request: Request) -> Response:
    """`/logout` visited (typed, bookmarked, a link): the page with the button that logs out. A logout is a
    post with the session's CSRF token, so no other site's link or image can log anyone out; the visit
    answered the API's 405 JSON. Without a session there is nothing to end: the login page."""
    try:
        session = await viewer(request)
    except LoginRequired:
        return RedirectResponse("/login", status_code=303)
    return render(request, "logout.html", {"session": session})


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session: its row deleted and the logout audited, or, when the database fails or is
    locked, the session remembered as ended (`_logged_out_anyway`); the cookie is cleared either way."""
    try:
        session = await viewer(request)  # the CSRF token checked against the stored session
    except sa.exc.DBAPIError as exc:  # not even read: the browser's word that the post is this site's
        token, trouble = request.cookies.get(COOKIE), database_trouble(exc)
        if not token or trouble is None or not from_this_site(request):
            raise
        return _logged_out_anyway(request, token_hash(token), "a logout (its session unread)", trouble)
    squall = request.app.state.squall
    try:
        await squall.db(close_sessions, squall.store, [session.token_hash], {})
    except sa.exc.DBAPIError as exc:
        trouble = database_trouble(exc)
        if trouble is None:
            raise
        return _logged_out_anyway(request, session.token_hash, f"the logout of {session.account.name}", trouble)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _logged_out_anyway(request: Request, hashed: str, what: str, trouble: str) -> Response:
    """A logout the database did not take (`trouble`): the session refused from now on and deleted
    later (`session.EndedSessions`), the cookie cleared, and the login page saying so."""
    ended_sessions(request).add(hashed)
    log.warning("%s is not in the database yet (%s): its session is refused from now on, and deleted once "
                "the database works again", what, trouble)
    response = _login_page(request, notice=LOGGED_OUT_ANYWAY.format(trouble=trouble))
    response.delete_cookie(COOKIE, path="/")
    return response
