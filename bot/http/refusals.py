"""`unserved`: the routes of a StackStorm service Squall does not have, answered with what to use instead.

A plain 404 would not do: st2client turns a 404 on a list into "No matching items found" (so `st2 trace
list` or `st2 role list` would say there is nothing to find, exit 0), and prints a bare "404 Not Found"
for anything else. A read is a 501 (the service is not implemented) and a write a 405, each with a
faultstring st2 prints."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from fastapi import APIRouter, HTTPException

#: The `Allow` header of a 405 from a service whose routes only read (and answer that with a 501).
_ALLOW_GET = {"Allow": "GET"}


def _refusal(status: int, instead: str, headers: dict[str, str] | None = None) -> Callable[[], Awaitable[None]]:
    async def refuse() -> None:
        raise HTTPException(status, instead, headers=headers)

    refuse.__doc__ = instead
    return refuse


def unserved(router: APIRouter, paths: Iterable[str], instead: str, tag: str) -> None:
    """Add `paths` (StackStorm's, path parameters and all) to `router`: a GET answers 501 and a POST, PUT or
    DELETE 405, each saying `instead` (what Squall has in the service's place)."""
    for path in paths:
        router.add_api_route(path, _refusal(501, instead), methods=["GET"], tags=[tag],
                             summary=f"Not in Squall: {tag} (501 saying what to use instead)")
        router.add_api_route(path, _refusal(405, instead, _ALLOW_GET), methods=["POST", "PUT", "DELETE"],
                             tags=[tag], include_in_schema=False)
