"""The web UI: server-rendered pages at `/` on the API's app, for people who do not live in chat.

`mount(app)` adds the pages' routers, the vendored static files at `/static/` and the answers to
`LoginRequired` (a redirect to `/login`) and `PageError` (the error page), and gives `bot.http` the error
page for a browser's address that no route takes (`_missing_page`). Pages are Jinja2 templates
(`templates/`) over the same services as chat and the CLI, and work as plain links and forms. htmx
and its SSE extension (`static/`, vendored from npm, see `static/VENDORED.md`) are loaded on every
page for partial updates and live data, driven by attributes: the Content-Security-Policy forbids
inline script. Accounts and sessions are `bot/accounts.py`; who may see or do what is declared per
route with the dependencies of `session.py`.

This package imports nothing of `bot.http` (the API includes it, not the other way round).
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles

from bot.web import (
    actions,
    aliases,
    audit,
    executions,
    inquiries,
    keys,
    live,
    login,
    oidc,
    packs,
    rules,
    status,
    triggers,
)
from bot.web.pages import STATIC, PageError, error_page, page_fault, secure
from bot.web.session import LoginRequired, is_page, page_routes, signed_in
from bot.web.throttle import LoginThrottle

__all__ = ["mount"]


async def _login_required(_request: Request, exc: LoginRequired) -> Response:
    """To the login page, with where to come back to and, for a form sent without a session, the flag
    that has the login page say the form was not done."""
    query = "&".join(([f"next={exc.next_url}"] if exc.next_url else []) + (["expired=1"] if exc.expired else []))
    return secure(RedirectResponse(f"/login?{query}" if query else "/login", status_code=303))


async def _page_error(request: Request, exc: PageError) -> Response:
    return error_page(request, str(exc), exc.status)


def _browser(request: Request) -> bool:
    """Whether a browser asks: the request accepts HTML (a browser's navigation names `text/html`; st2client,
    hubot and curl name JSON or `*/*`), at a weight above 0."""
    for item in request.headers.get("accept", "").split(","):
        kind, *parameters = (part.strip().lower() for part in item.split(";"))
        weight = next((parameter[2:] for parameter in parameters if parameter.startswith("q=")), "1")
        if kind in ("text/html", "application/xhtml+xml") and weight.strip("0.") != "":  # not q=0, 0.0, 0.000
            return True
    return False


def _of_the_ui(request: Request) -> bool:
    """Whether a route of the UI (`mount` keeps them in the app's state) has the request's address, for
    another method (the router's 405)."""
    scope = {"type": "http", "method": request.method, "path": request.url.path, "root_path": ""}
    routes: tuple[BaseRoute, ...] = getattr(request.app.state, "web_routes", ())
    return any(route.matches(scope)[0] != Match.NONE for route in routes)


def _refused_form(request: Request, status: int, message: str) -> Response | None:
    """The UI's error page for a request the API's body guard refused before any route read it (a form over
    `api.max_body_bytes`), when a route of the UI takes it (`web_routes`, method and all); else None, the API's
    JSON fault. A browser's form got raw JSON on screen and no way back."""
    scope = {"type": "http", "method": request.method, "path": request.url.path, "root_path": ""}
    routes: tuple[BaseRoute, ...] = getattr(request.app.state, "web_routes", ())
    if not any(route.matches(scope)[0] == Match.FULL for route in routes):
        return None
    return error_page(request, message, status)


def _meant(request: Request) -> str | None:
    """The page a mistyped address likely meant: its first part in lower case (`/Executions`) or in the
    plural (`/execution/<id>`), without a final `/`; None when neither is a page."""
    path = request.url.path
    first, _, rest = path.strip("/").partition("/")
    tail = f"/{rest}" if rest else ""
    for meant in (f"/{first.lower()}{tail}", f"/{first.lower()}s{tail}"):
        if meant != path and is_page(request, meant):
            return meant + (f"?{request.url.query}" if request.url.query else "")
    return None


async def _missing_page(request: Request, exc: HTTPException) -> Response | None:
    """The UI's own page for a browser's request that no route takes (the router's 404, or its 405 at an
    address of the UI, a form's visited), else None: the API's JSON stays for everyone else. `bot.http`
    asks (`st2_urls`) for addresses outside the API's, auth's and stream's folders only. A browser got
    `{"faultstring": "Not Found"}` for a mistyped address, and `{"faultstring": "Method Not Allowed"}` for
    `GET /keys/delete`."""
    if not _browser(request) or exc.status_code not in (404, 405) or (
            exc.status_code == 405 and not _of_the_ui(request)):
        return None
    session = await signed_in(request)
    path = request.url.path
    if exc.status_code == 404:
        page = error_page(request, f"Squall has no page at {path}.", 404, session, _meant(request))
    elif request.method in ("GET", "HEAD"):
        page = error_page(request, f"{path} is where a form of Squall's page sends what it does (with its "
                                   "button), not a page to visit.", 405, session)
    else:
        allowed = (exc.headers or {}).get("Allow", "GET")
        page = error_page(request, f"{path} takes no {request.method}, only {allowed}.", 405, session)
    page.headers.update(exc.headers or {})  # 405's Allow
    return page


def mount(app: FastAPI) -> None:
    """Serve the UI from `app` (the API's: same port, same loop, same `app.state.squall`)."""
    app.state.web_throttle = LoginThrottle()
    app.state.page_fault = page_fault  # the API's database faults, on a page of the UI (`bot.http.errors`)
    app.state.page_missing = _missing_page  # a browser's address no route takes (`bot.http.st2_urls`)
    app.state.refused_form = _refused_form  # a form the body guard refused (`bot.http.body_guard`)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageError, _page_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    oidc.install(app)
    routers = (login.router, executions.router, live.router, actions.router, inquiries.router, aliases.router,
               rules.router, triggers.router, packs.router, keys.router, audit.router, status.router)
    for router in routers:
        app.include_router(router)
    # The UI's routes, for a browser's 405 (`_of_the_ui`), and the pages a login goes back to after a form
    # sent without a session (`session._came_from`).
    app.state.web_routes = tuple(route for router in routers for route in router.routes)
    app.state.web_pages = page_routes(app.state.web_routes)
