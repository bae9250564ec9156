"""`/login` and `/logout`, and `/` (the executions).

The login form is protected against cross-site posts too (a forged login would sign a victim in as
the attacker): `GET /login` sets a random cookie and puts the same value in the form, and the post
must carry both (double submit; there is no session yet to hold a token). Failed logins are counted
per name and per address (`throttle.py`); a name that does not exist costs the same argon2 check as
a wrong password, so timing does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import SESSION_LIFETIME, Account, Session, close_session, open_session, password_matches
from bot.web.pages import PageRoute, render
from bot.web.session import COOKIE, CSRF_FIELD, form_fields, safe_next, set_cookie, viewer
from bot.web.throttle import LoginThrottle

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: The double-submit cookie of the login form.
LOGIN_COOKIE = "squall_login"


def _throttle(request: Request) -> LoginThrottle:
    return request.app.state.web_throttle


def _login_page(request: Request, status: int = 200, error: str | None = None, username: str = "",
                next_url: str | None = None) -> Response:
    """The form, with a fresh double-submit token in it and in its cookie."""
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"error": error, "username": username, "login_token": token,
                                              "next": safe_next(next_url)}, status_code=status)
    set_cookie(request, response, LOGIN_COOKIE, token)
    return response


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/executions", status_code=303)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, next_url=next)


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
    if wait := throttle.wait(*keys):
        response = _login_page(request, 429, f"Too many failed logins for this user or from this address: "
                                             f"try again in {wait} seconds.", name, next_url)
        response.headers["Retry-After"] = str(wait)
        return response
    squall = request.app.state.squall
    record = await squall.db(squall.store.web_user_get, name) if name else None
    if not await asyncio.to_thread(password_matches, record, password):
        throttle.failed(*keys)
        return _login_page(request, 401, "Wrong user name or password.", name, next_url)
    throttle.succeeded(keys[0])
    token, _ = await squall.db(open_session, squall.store, Account(record["name"], record["role"]))
    response = RedirectResponse(safe_next(next_url), status_code=303)
    set_cookie(request, response, COOKIE, token, max_age=int(SESSION_LIFETIME.total_seconds()))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    await squall.db(close_session, squall.store, session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
