"""Requests meant for StackStorm's own service URLs, answered with the URL Squall serves them at.

st2client's default API URL is st2api's own, `http://host:9101/v1`; its auth service answers `/tokens` on
port 9100 and its stream `/v1/stream` on port 9102. Squall serves all three on its one port under
`/api/v1`, `/auth/v1` and `/stream/v1`, as StackStorm does behind its nginx. An operator who points st2 or
hubot at Squall as at st2api got a bare "Not Found"; one who left out `/api/v1` sent st2's `GET /actions`,
with its `St2-Api-Key`, to the web UI's page, which answered a redirect to the login page (st2 then said
"unexpected character" of the empty body). hubot-stackstorm's client (st2client.js) adds `/v1` to its
API and stream URLs itself, so it is given `/api` and `/stream`; given st2's `/api/v1` it asks for
`/api/v1/v1/actionalias`, and without `ST2_STREAM_URL` for `/api/v1/stream`.

So such a request gets a JSON 404 fault (StackStorm's shape, which st2 prints) naming the URL
it meant and the settings for st2 and for hubot: a path of StackStorm's direct URLs (`/v1/...`, `/tokens`),
one with `/v1` twice or the stream under the API, and any request an API client sends to a path outside the
API (it carries `St2-Api-Key` or `X-Auth-Token`, or accepts only JSON), when it would have been the router's
404 or 405 or the login redirect. Browsers keep the login page, and a route's own 404 stays as it is.
Nothing is served at those paths: the API is mounted once.

A browser's request (one that accepts HTML, as `bot.web` tells) that no route takes, outside `/api`, `/auth`
and `/stream`, gets the web UI's own 404 page (or 405, for an address of the UI visited that takes a form's
post) instead of the router's JSON; every other request's answer is as it was."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.http.errors import fault
from bot.web.session import LoginRequired

#: The headers by which StackStorm's clients send a credential (st2client, hubot-stackstorm, webhooks).
API_CREDENTIAL_HEADERS = ("st2-api-key", "x-auth-token")
#: StackStorm's direct URL paths and the served prefix each belongs under (`Prefixes` field names).
_DIRECT = (("/v1/stream", "stream"), ("/tokens", "auth"), ("/v1", "api"))

Handler = Callable[[Request, Exception], Awaitable[Response]]


@dataclass(frozen=True)
class Prefixes:
    """Where Squall serves StackStorm's API, auth and stream services (`bot.http.app`)."""

    api: str
    auth: str
    stream: str

    def holding(self, path: str) -> str | None:
        """The one of them `path` is under, or None."""
        return next((p for p in (self.api, self.auth, self.stream) if path == p or path.startswith(p + "/")), None)


def _direct(path: str, prefixes: Prefixes) -> str | None:
    """Where a path of StackStorm's direct URLs is served here (`/v1/actions` → `/api/v1/actions`), or None."""
    for start, service in _DIRECT:
        if path == start or path.startswith(start + "/"):
            rest = path.removeprefix("/v1")  # `/tokens` keeps its name: the auth service's URL has no /v1
            return getattr(prefixes, service) + rest
    return None


def _inside(path: str, prefix: str, prefixes: Prefixes) -> str | None:
    """Where a path under one of the prefixes that no route answers was meant for, when a client's URL setting
    is what went wrong: `/v1` twice (hubot given st2's `/api/v1`), or the stream asked of the API (hubot
    without `ST2_STREAM_URL`); else None, a plain 404 of the API."""
    rest = path[len(prefix):]
    if rest == "/v1" or rest.startswith("/v1/"):
        return prefix + rest.removeprefix("/v1")
    if prefix == prefixes.api and (rest == "/stream" or rest.startswith("/stream/")):
        return prefixes.stream + rest
    return None


def api_client(request: Request) -> bool:
    """Whether the request is an API client's: it carries an API credential, or accepts nothing but JSON."""
    if any(request.headers.get(name) for name in API_CREDENTIAL_HEADERS):
        return True
    accepted = [item.split(";")[0].strip().lower() for item in request.headers.get("accept", "").split(",")]
    accepted = [item for item in accepted if item]
    return bool(accepted) and all(item == "application/json" or item.endswith("+json") for item in accepted)


def meant(request: Request, prefixes: Prefixes) -> str | None:
    """The path of Squall's API the request was meant for, when it went where only StackStorm serves it, by a
    client's wrong URL setting, or is an API client's outside the API; else None (answered as it would be)."""
    path = request.url.path
    prefix = prefixes.holding(path)
    if prefix is not None:
        return _inside(path, prefix, prefixes)
    direct = _direct(path, prefixes)
    if direct is not None:
        return direct
    return prefixes.api + path.rstrip("/") if api_client(request) else None


def misdirected(request: Request, path: str, prefixes: Prefixes) -> Response:
    """The 404 fault naming `path` on this server and the URLs st2 and hubot are to be given."""
    base = str(request.base_url).rstrip("/")
    api, auth, stream = (base + prefix for prefix in (prefixes.api, prefixes.auth, prefixes.stream))
    return fault(404, (
        f"Not Found: {request.url.path} is not a URL of Squall's API, which serves this at {base}{path}. Squall "
        f"answers StackStorm's API, auth and stream on this one port under {prefixes.api}, {prefixes.auth} and "
        f"{prefixes.stream}, as StackStorm does behind its nginx, not on st2api's /v1 (port 9101). For st2: "
        f"export ST2_API_URL={api} ST2_AUTH_URL={auth} ST2_STREAM_URL={stream}. For hubot, whose client adds "
        f"/v1 itself: ST2_API_URL={api.removesuffix('/v1')} ST2_STREAM_URL={stream.removesuffix('/v1')} "
        f"ST2_AUTH_URL={auth}"))


def _no_route(exc: StarletteHTTPException) -> bool:
    """Whether the error is the router's: no route for the path (404) or the method (405), said in the
    status's own words; a route's own 404 ("Action x is not loaded") is its answer."""
    return exc.status_code in (404, 405) and exc.detail == HTTPStatus(exc.status_code).phrase


def _services_hold(path: str, prefixes: Prefixes) -> bool:
    """Whether `path` is under the top folder of the API's, the auth's or the stream's prefix (`/api`, `/auth`,
    `/stream`): there every answer is a client's, JSON, whoever asks."""
    tops = {"/" + prefix.strip("/").split("/")[0] for prefix in (prefixes.api, prefixes.auth, prefixes.stream)}
    return any(path == top or path.startswith(top + "/") for top in tops)


def _pointing(answer: Handler, prefixes: Prefixes) -> Handler:
    """`answer` (the app's handler of a routing error or of `LoginRequired`), but for a misdirected request,
    and for a browser's request that no route takes outside the services' folders, the web UI's own page
    (`app.state.page_missing`, set by `bot.web`; None when it is not a browser's), not the API's JSON: a
    mistyped address of a page answered a signed-in browser `{"faultstring": "Not Found"}`."""

    async def handler(request: Request, exc: Exception) -> Response:
        routing = not isinstance(exc, StarletteHTTPException) or _no_route(exc)
        path = meant(request, prefixes) if routing else None
        if path is not None:
            return misdirected(request, path, prefixes)
        page = getattr(request.app.state, "page_missing", None)
        if routing and page is not None and isinstance(exc, StarletteHTTPException) \
                and not _services_hold(request.url.path, prefixes):
            shown: Response | None = await page(request, exc)
            if shown is not None:
                return shown
        return await answer(request, exc)

    return handler


def install(app: FastAPI, prefixes: Prefixes) -> None:
    """Answer misdirected requests on `app`, after its error handlers and the web UI's are installed."""
    for kind in (StarletteHTTPException, LoginRequired):
        app.add_exception_handler(kind, _pointing(app.exception_handlers[kind], prefixes))
