"""StackStorm's pagination for the lists the API holds in memory (actions, packs, rules, aliases,
trigger and runner types): `limit` and `offset` query parameters, and the total in `X-Total-Count`,
which st2client reads to say "only the first N are displayed"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from fastapi import Query, Response

from engine.parameters import MAX_INTEGER

T = TypeVar("T")


class Paging:
    """A route's `Depends(Paging)`: without `limit`, everything (what Squall's API always answered)."""

    def __init__(self, limit: int | None = Query(None, ge=1, le=MAX_INTEGER),
                 offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> None:
        self.limit = limit
        self.offset = offset

    def page(self, items: Sequence[T], response: Response) -> list[T]:
        """The requested slice of `items`; the headers tell the whole count and the limit."""
        response.headers["X-Total-Count"] = str(len(items))
        if self.limit is None:
            return list(items[self.offset:])
        response.headers["X-Limit"] = str(self.limit)
        return list(items[self.offset:self.offset + self.limit])
