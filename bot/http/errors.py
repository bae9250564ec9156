"""How the API answers an error: `{"faultstring": "..."}`, as StackStorm does, so st2 clients read it,
also for FastAPI's own errors (an unknown route, a body that does not fit the model)."""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.storage import database_trouble

log = logging.getLogger(__name__)
#: What a 503 for a failing or locked database asks a client to wait before it tries again.
RETRY_AFTER_SECONDS = 10


def fault(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in StackStorm's shape."""
    return JSONResponse({"faultstring": message}, status_code=status, headers=headers)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """`HTTPException`s (ours and FastAPI's), with FastAPI's vague body error said plainly."""
    message = str(exc.detail)
    if exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's words
        cause = exc.__cause__
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        message = f"The body could not be read{reason}: send JSON, as UTF-8, with Content-Type: application/json."
    response = fault(exc.status_code, message)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A request that does not fit a route's parameters or body model: 400 (FastAPI says 422) naming
    each field, as StackStorm does."""
    problems = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return fault(400, f"Malformed JSON body: {reason}".rstrip(": "))
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {error.get('msg')}")
    return fault(400, "Invalid request: " + "; ".join(problems))


class DatabaseErrors:
    """The database's errors a route did not handle, answered as faults rather than let out of the app.

    Let out, Starlette answered them `500 Internal Server Error` in text/plain and raised them on, uvicorn
    logged each with its traceback and closed the connection (an app that raised after answering), so a
    client's next request on that keep-alive connection was reset. A failing database (down, full, not
    writable) or SQLite locked by another process is answered 503 with why (`database_trouble`: the
    driver's words or the lock, never the statement) and `Retry-After`, as `/healthz` says 503 meanwhile;
    logged in one line, at WARNING the first of an outage (`Database.failing`, which `Database` logs
    itself) and at DEBUG the others. Any other database error is a bug: 500, named by its kind, with its
    traceback in the log."""

    def __init__(self) -> None:
        #: Since when the outage was that a request last logged at WARNING.
        self._logged: datetime | None = None

    async def __call__(self, request: Request, exc: Exception) -> Response:
        trouble = database_trouble(exc)
        if trouble is None:
            kind = type(getattr(exc, "orig", None) or exc).__name__
            log.error("%s %s failed: the database refused it (%s)", request.method, request.url.path, kind,
                      exc_info=exc)
            return self._answer(request, 500, f"The database refused it ({kind}; Squall's log has the details).")
        self._log(request, trouble)
        return self._answer(request, 503, f"Squall could not do that: {trouble}. Try again later.",
                            {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @staticmethod
    def _answer(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """A fault, or on a page of the web UI its error page (`app.state.page_fault`, set by `bot.web`)."""
        page = getattr(request.app.state, "page_fault", None)
        answer = page(request, status, message) if page is not None else None
        if answer is None:
            return fault(status, message, headers=headers)
        answer.headers.update(headers or {})
        return answer

    def _log(self, request: Request, trouble: str) -> None:
        squall = getattr(request.app.state, "squall", None)
        failing = getattr(getattr(squall, "db", None), "failing", None)
        since = failing[1] if failing is not None else None
        if since is not None and since == self._logged:
            log.debug("%s %s answered 503: %s", request.method, request.url.path, trouble)
            return
        self._logged = since
        further = "; further such answers are logged at debug until it works again" if since is not None else ""
        log.warning("%s %s answered 503: %s%s", request.method, request.url.path, trouble, further)


def install_error_handlers(app: FastAPI) -> None:
    """Make every error `app` answers a StackStorm fault."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    database_errors = DatabaseErrors()
    app.add_exception_handler(sa.exc.DBAPIError, database_errors)
    # A connection lost inside a transaction, met again before its rollback: no DBAPIError, the same outage.
    app.add_exception_handler(sa.exc.PendingRollbackError, database_errors)
