"""The web UI: server-rendered pages at `/` on the API's app, for people who do not live in chat.

`mount(app)` adds the pages' routers, the vendored static files at `/static/` and the answers to
`LoginRequired` (a redirect to `/login`) and `PageError` (the error page). Pages are Jinja2 templates
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
from bot.web.session import LoginRequired, page_routes
from bot.web.throttle import LoginThrottle

__all__ = ["mount"]


async def _login_required(_request: Request, exc: LoginRequired) -> Response:
    """To the login page, with where to come back to and, for a form sent without a session, the flag
    that has the login page say the form was not done."""
    query = "&".join(([f"next={exc.next_url}"] if exc.next_url else []) + (["expired=1"] if exc.expired else []))
    return secure(RedirectResponse(f"/login?{query}" if query else "/login", status_code=303))


async def _page_error(request: Request, exc: PageError) -> Response:
    return error_page(request, str(exc), exc.status)


def mount(app: FastAPI) -> None:
    """Serve the UI from `app` (the API's: same port, same loop, same `app.state.squall`)."""
    app.state.web_throttle = LoginThrottle()
    app.state.page_fault = page_fault  # the API's database faults, on a page of the UI (`bot.http.errors`)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageError, _page_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    oidc.install(app)
    routers = (login.router, executions.router, live.router, actions.router, inquiries.router, aliases.router,
               rules.router, triggers.router, packs.router, keys.router, audit.router, status.router)
    for router in routers:
        app.include_router(router)
    # The pages a login goes back to after a form sent without a session (`session._came_from`).
    app.state.web_pages = page_routes(route for router in routers for route in router.routes)
