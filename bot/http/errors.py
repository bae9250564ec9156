"""How the API answers an error: `{"faultstring": "..."}`, as StackStorm does, so st2 clients read it,
also for FastAPI's own errors (an unknown route, a body that does not fit the model)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


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


def install_error_handlers(app: FastAPI) -> None:
    """Make every error `app` answers a StackStorm fault."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
