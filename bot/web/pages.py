"""How every web page is answered: Jinja2 templates with autoescaping, and the security headers.

Templates autoescape everything (`autoescape=True`, not by file name): execution output, parameters and
chat text are other people's data, and must render as text wherever a template puts them. The
headers forbid inline script and framing, so a value that got past escaping still could not run.
`PageRoute` adds them to every answer of the UI's routers, errors and redirects included, and
nothing else: the API's Swagger pages keep their own needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.templating import Jinja2Templates

from engine.executions import COMPLETED
from engine.parameters import MAX_INTEGER

if TYPE_CHECKING:
    from bot.accounts import Session

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"

#: No inline script or style (htmx is configured by attributes and a meta tag), nothing from elsewhere,
#: no framing; forms post only here.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Pages show parameters and output: no shared or back-button cache keeps them after logout.
    "Cache-Control": "no-store",
}

#: The UI's sections, in the menu's order: (path, the menu's word, what a link back to it calls it).
SECTIONS = (("/executions", "Executions", "the executions"), ("/actions", "Actions", "the actions"),
            ("/inquiries", "Inquiries", "the inquiries"), ("/aliases", "Aliases", "the aliases"),
            ("/rules", "Rules", "the rules"), ("/triggers", "Triggers", "the triggers"),
            ("/packs", "Packs", "the packs"), ("/keys", "Keys", "the keys"),
            ("/audit", "Audit", "the audit log"), ("/status", "Status", "the status"))


def _pretty_json(value: Any) -> str:
    """A value as indented JSON for a <pre> (escaped by the template like any text)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _when(value: datetime | str | None) -> str:
    """A stored time (a datetime, or the ISO text the engine's records carry) as people read it, in UTC."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty_json"] = _pretty_json
    env.filters["when"] = _when
    # `status is ended`: a status nothing follows (a paused workflow has an end time, but goes on).
    env.tests["ended"] = COMPLETED.__contains__
    env.globals["sections"] = SECTIONS
    return env


templates = Jinja2Templates(env=_environment())


class PageError(Exception):
    """A page that cannot be shown as asked: answered with `status` and the message, on the error page."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


def form_time(name: str, value: str) -> datetime:
    """A `datetime-local` field (or any ISO 8601 time), read as UTC when it names no zone and converted to
    UTC when it names one (`engine.retention.parse_time`): SQLite dropped the zone, moving the filter."""
    from engine.retention import parse_time

    try:
        return parse_time(value)
    except ValueError:
        raise PageError(f"'{name}' must be a date and time such as 2026-01-31T14:00 (years 1 to 9999 in UTC), "
                        f"not {value!r}") from None


def row_number(text: str) -> int | None:
    """A row's number as a query or header gives it (an audit entry's, an output chunk's), or None
    when it is none: ASCII digits only (`isdigit` says yes to `²`, which `int` refuses) and at most
    SQLite's largest integer (a larger one makes the query raise)."""
    return int(text) if text.isascii() and text.isdigit() and int(text) <= MAX_INTEGER else None


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """Template `name` with `context`; every page also gets `session` (None on the login page)."""
    return templates.TemplateResponse(request, name, {"session": None, **context}, status_code=status_code)


def section_of(path: str) -> tuple[str, str] | None:
    """The section `path` is in, as (its path, what a link back to it calls it), or None."""
    return next(((start, words) for start, _menu, words in SECTIONS
                 if path == start or path.startswith(start + "/")), None)


def back_link(request: Request) -> tuple[str, str]:
    """Where an error page sends the person back to: the section of the page that failed (a missing pack's
    page goes back to the packs), else that of the page they came from (the Referer, when it is this site's:
    `Referrer-Policy: same-origin` sends no other), else the executions. It always said "Back to the
    executions", whatever the page."""
    found = section_of(request.url.path)
    if found is None:
        referer = urlsplit(request.headers.get("referer", ""))
        if referer.netloc and referer.netloc == request.headers.get("host"):
            found = section_of(referer.path)
    return found or (SECTIONS[0][0], SECTIONS[0][2])


def error_page(request: Request, message: str, status: int, session: Session | None = None,
               suggestion: str | None = None) -> Response:
    """The UI's error page: `message` with `status`, a link back (`back_link`) and, for an address mistyped,
    the `suggestion` of the page it likely meant; the UI's security headers on it. `session`: the signed-in
    one when no page's dependency put it on the request (an address no page has), for the menu."""
    session = getattr(request.state, "session", None) or session
    back, words = back_link(request)
    return secure(render(request, "error.html", {"session": session, "message": message, "status": status,
                                                 "back": back, "back_words": words, "suggestion": suggestion},
                         status_code=status))


def page_fault(request: Request, status: int, message: str) -> Response | None:
    """The error page for a fault a route of the UI met that the API answers as JSON (a database that
    failed or was locked: `bot.http.errors.DatabaseErrors`), else None: a form a browser sent gets a page
    it can go back from, not a bare JSON document without the UI's headers."""
    return error_page(request, message, status) if isinstance(request.scope.get("route"), PageRoute) else None


def secure(response: Response) -> Response:
    """`response` with the UI's security headers."""
    response.headers.update(SECURITY_HEADERS)
    return response


class PageRoute(APIRoute):
    """A route of the web UI: whatever it answers carries `SECURITY_HEADERS`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            return secure(await handler(request))

        return secured
