"""What the client raises: one base class, so a caller can catch everything Squall-related at once,
and an `ApiError` that keeps the server's own words (`faultstring`), which say what to fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from squall_client.models import Execution

__all__ = ["ApiConnectionError", "ApiError", "ConfigError", "ResponseError", "SquallError", "WaitTimeout"]


class SquallError(Exception):
    """Base of everything this package raises on purpose."""


class ConfigError(SquallError, ValueError):
    """The client's settings cannot work (an API URL that is not http(s), a timeout below zero)."""


class ApiError(SquallError):
    """The API answered with an error status.

    `faultstring` is the server's message (StackStorm's error shape, `{"faultstring": "..."}`); for an
    answer without one (a proxy's HTML page) it is the body's text, cut short, so it is never empty."""

    def __init__(self, status: int, faultstring: str, *, method: str = "", url: str = "") -> None:
        super().__init__(status, faultstring)
        self.status = status
        self.faultstring = faultstring
        self.method = method
        self.url = url

    def __str__(self) -> str:
        where = f" ({self.method} {self.url})" if self.method else ""
        return f"{self.status}: {self.faultstring}{where}"


class ApiConnectionError(SquallError, ConnectionError):
    """The API could not be reached (refused, DNS, TLS, timed out): no answer, so no status. The
    original httpx exception is the `__cause__`."""


class ResponseError(SquallError):
    """The API answered with success but a body this client cannot read (not JSON, a field missing):
    a proxy's page in place of the API, or a server of another version."""


class WaitTimeout(SquallError, TimeoutError):
    """`wait` (or `follow`) gave up before the execution finished; `execution` is the last state seen,
    so a caller can report it or cancel it."""

    def __init__(self, message: str, execution: Execution) -> None:
        super().__init__(message)
        self.execution = execution
