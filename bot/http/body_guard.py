"""The ASGI middleware that reads every request's body once, before any route (ours or an adapter's) sees
it, so size limits and JSON rules hold everywhere, not only where a route remembered them. It also
refuses a NUL character in the URL, which no id, name or filter holds and PostgreSQL refuses in text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from bot.http.errors import fault
from bot.http.json_body import JsonBodyError, checked_json

#: How much of a body over `api.max_body_bytes` is read and dropped before the 413 goes out: a client
#: sends its whole body before it reads the answer, and a server that closes on unread data resets the
#: connection, so the client never sees the 413. Past this much the 413 goes out at once.
MAX_DRAIN_BYTES = 64 * 1024 * 1024
_CLOSE = {"Connection": "close"}


class _Refused(Exception):
    """Raised while reading a request, carrying why it is refused: the API's fault, or, for a form of the web
    UI, the UI's error page (`answer`)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers

    def answer(self, scope: dict[str, Any]) -> Response:
        """The API's fault (`fault`), or the UI's error page when a route of the UI takes the request
        (`app.state.refused_form`, set by `bot.web`): a browser's form over the limit got a bare JSON document
        with no way back. Asked only here, on a refusal: routing is the app's, after this guard."""
        refused_form = getattr(getattr(scope.get("app"), "state", None), "refused_form", None)
        page = refused_form(Request(scope), self.status, self.message) if refused_form is not None else None
        if page is None:
            return fault(self.status, self.message, self.headers)
        page.headers.update(self.headers or {})
        return page


@dataclass(frozen=True, slots=True)
class _BodyHeaders:
    """What the request's headers say about its body."""

    declared: int | None  # Content-Length
    content_type: str
    expects_continue: bool


def _content_length(value: bytes) -> int:
    """Content-Length as a number; 400 for anything but digits (a sign, spaces inside, a list)."""
    text = value.decode("latin-1").strip()
    if not text.isascii() or not text.isdigit():
        raise _Refused(400, f"Content-Length must be a whole number of bytes, not {text[:40]!r}.", _CLOSE)
    return int(text) if len(text) <= 18 else 10 ** 18  # int() refuses 4,300+ digits


def _body_headers(scope: dict[str, Any]) -> _BodyHeaders:
    declared: int | None = None
    content_type = ""
    expects_continue = False
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            declared = _content_length(value)
        elif name == b"content-type":
            content_type = value.decode("latin-1").split(";")[0].strip().lower()
        elif name == b"expect":
            expects_continue = value.strip().lower() == b"100-continue"
    return _BodyHeaders(declared, content_type, expects_continue)


async def _drain(receive: Any, size: int) -> tuple[int, bool]:
    """Read and drop the rest of a body (up to `MAX_DRAIN_BYTES` in all): the bytes seen, and whether
    more was left unread."""
    while size <= MAX_DRAIN_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            return size, True
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            return size, False
    return size, True


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI `receive` that gives the route the body read already, then whatever the client sends next."""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, for a route that listens for it

    return replay


class BodyGuard:
    """Every HTTP request's body, checked once before any route sees it.

    Over `limit` bytes is 413, whether Content-Length says so or the bytes are counted as they come
    (chunked, or a Content-Length that lies); what comes past the limit is read and dropped (up to
    `MAX_DRAIN_BYTES`) so the client can read the 413. A JSON body that `decode_json` refuses (NaN,
    Infinity, nesting past `MAX_JSON_DEPTH`) is 400, for every route: webhooks, executions, keys,
    inquiries, Slack's and Mattermost's endpoints."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"").lower():
            await fault(400, "The URL holds a NUL character (%00); no id, name or filter value may contain one.")(
                scope, receive, send)
            return
        try:
            body = await self._checked_body(scope, receive)
        except _Refused as refused:
            await refused.answer(scope)(scope, receive, send)
            return
        if body is None:
            return  # the client went away: nobody to answer
        await self.app(scope, _replay(body, receive), send)

    async def _checked_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        """The whole body, its JSON decoded into the scope's state; None if the client went away."""
        headers = _body_headers(scope)
        if headers.declared is not None and headers.declared > self.limit:
            if not headers.expects_continue:  # the client waits for "100 Continue" otherwise, and sends nothing
                await _drain(receive, 0)
            raise self._too_large(f"is {headers.declared} bytes")
        body = await self._read(receive)
        if body is None:
            return None
        if headers.declared is not None and len(body) != headers.declared:
            raise _Refused(400, f"The body is {len(body)} bytes but Content-Length said {headers.declared}: "
                                "send the exact length, or no Content-Length with chunked transfer encoding.", _CLOSE)
        try:
            decoded = checked_json(body, headers.content_type)
        except JsonBodyError as exc:
            raise _Refused(400, str(exc)) from None
        # Decoded once, here: a route that takes the raw body (webhooks) reads it from request.state.
        scope.setdefault("state", {})["json_body"] = decoded
        return body

    async def _read(self, receive: Any) -> bytes | None:
        """The body as it comes, counted against the limit; None if the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body"))
            if size > self.limit:
                if more:
                    size, more = await _drain(receive, size)
                raise self._too_large(f"is at least {size} bytes" if more else f"is {size} bytes")
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)

    def _too_large(self, size: str) -> _Refused:
        return _Refused(413, f"Request body {size}; the limit is {self.limit} bytes (config api.max_body_bytes): "
                             "send less.", _CLOSE)
