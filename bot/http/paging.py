"""StackStorm's pagination: `limit` and `offset` query parameters, and the total in `X-Total-Count`,
which st2client reads to say "only the first N are displayed".

`limit=-1` is StackStorm's "the full result set" (`st2 … list -n -1`; hubot-stackstorm loads its
aliases with `GET /actionalias?limit=-1`): StackStorm's `validate_limit_query_param` turns it into no
limit (for an admin, which every caller is without RBAC) and refuses 0 and anything below -1. Both
kinds of list take it the same way here: those the API holds in memory (actions, packs, rules,
aliases, trigger and runner types) through `Paging`, those read in SQL (executions, trigger
instances, rule enforcements) through `page_limit`. A whole set is answered without `X-Limit`, as
StackStorm does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from fastapi import HTTPException, Query, Response

from engine.parameters import MAX_INTEGER

T = TypeVar("T")

#: StackStorm's `limit` for "all of them".
ALL = -1
#: The SQL `LIMIT` of a whole result set (the stores take an int; no table holds this many rows).
ALL_ROWS = MAX_INTEGER


def checked_limit(limit: int | None) -> int | None:
    """`limit` as given, None for `-1` (everything) or when none was given; 400 for 0 or below -1, with
    StackStorm's meaning of the values, so a caller learns what to send instead."""
    if limit == ALL:
        return None
    if limit is not None and limit < 1:
        raise HTTPException(400, f'limit must be a positive number, or -1 for the full result set, not {limit}')
    return limit


class Paging:
    """A route's `Depends(Paging)` over a list held in memory: without `limit` or with `limit=-1`,
    everything (what Squall's API always answered); `self.limit` is None then."""

    def __init__(self, limit: int | None = Query(None, le=MAX_INTEGER,
                                                 description="How many to list; -1 (or none) for all."),
                 offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> None:
        self.limit = checked_limit(limit)
        self.offset = offset

    def page(self, items: Sequence[T], response: Response) -> list[T]:
        """The requested slice of `items`; the headers tell the whole count and the limit."""
        response.headers["X-Total-Count"] = str(len(items))
        if self.limit is None:
            return list(items[self.offset:])
        response.headers["X-Limit"] = str(self.limit)
        return list(items[self.offset:self.offset + self.limit])


def page_limit(default: int, maximum: int) -> Callable[[int], int | None]:
    """A `Depends(...)` for the `limit` of a list read in SQL: `default` when none is given, at most
    `maximum` per page, and `-1` for the whole set, which the dependency gives as None (pass `ALL_ROWS`
    to the store, and send no `X-Limit`)."""

    def limit(limit: int = Query(default, le=maximum,
                                 description=f"How many to list (at most {maximum}); -1 for all.")) -> int | None:
        return checked_limit(limit)

    return limit


def tell_page(response: Response, total: int, limit: int | None) -> None:
    """The headers of a page of a list read in SQL: the whole count, and the limit unless it was `-1`."""
    response.headers["X-Total-Count"] = str(total)
    if limit is not None:
        response.headers["X-Limit"] = str(limit)
