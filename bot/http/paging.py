"""StackStorm's pagination: `limit` and `offset` query parameters, and the total in `X-Total-Count`,
which st2client reads to say "only the first N are displayed".

`limit=-1` is StackStorm's "the full result set" (`st2 … list -n -1`; hubot-stackstorm loads its
aliases with `GET /actionalias?limit=-1`): StackStorm's `validate_limit_query_param` turns it into no
limit (for an admin, which every caller is without RBAC) and refuses 0 and anything below -1. Both
kinds of list take it the same way here: those the API holds in memory (actions, packs, rules,
aliases, trigger and runner types) through `Paging`, those read in SQL (executions, trigger
instances, rule enforcements) through `page_limit`. A whole set is answered without `X-Limit`, as
StackStorm does; one read in SQL is written a page at a time (`streamed_list`), each page read and
rendered on `Database.read`, so that neither memory nor the event loop's time grows with the table, and
each page after the first read by keyset (executions in `bot.http.executions`, the logs by
`keyset_pages`), so that rows stored or deleted while it is written neither repeat rows nor skip them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from engine.parameters import MAX_INTEGER

if TYPE_CHECKING:
    from engine.storage import Database

T = TypeVar("T")

#: Rows a `keyset_pages` page reads, renders and writes at a time.
LOG_PAGE = 500
#: How `json_items` writes an item.
_JSON: TypeAdapter[Any] = TypeAdapter(Any)
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
    """A `Depends(...)` for the `limit` of a list read in SQL: `default` when none is given, and `-1` for
    the whole set, which the dependency gives as None (pass `ALL_ROWS` to the store, and send no `X-Limit`).
    A limit above `maximum` is that page's size, not a 400: StackStorm (RBAC off) takes any limit, so
    `st2 execution list -n 2000` lists, and `X-Total-Count` still tells st2client there are more."""

    def limit(limit: int = Query(default, le=MAX_INTEGER, description=f"How many to list (a page holds at "
                                 f"most {maximum}); -1 for all.")) -> int | None:
        checked = checked_limit(limit)
        return None if checked is None else min(checked, maximum)

    return limit


def tell_page(response: Response, total: int, limit: int | None) -> None:
    """The headers of a page of a list read in SQL: the whole count, and the limit unless it was `-1`."""
    response.headers["X-Total-Count"] = str(total)
    if limit is not None:
        response.headers["X-Limit"] = str(limit)


def json_items(items: Iterable[Any]) -> bytes:
    """`items` as the inside of a JSON array (comma-separated, no brackets), written as FastAPI writes a
    route's `list[dict[str, Any]]` answer (pydantic's serializer: FastAPI's `jsonable_encoder` took 0.4 s
    for 500 executions, this 20 ms): a page of `streamed_list`, made where it is read. One item at a time,
    so that a thread writing it lets the event loop have the GIL between items."""
    return b",".join(_JSON.dump_json(item) for item in items)


async def keyset_pages(db: Database, read: Callable[..., tuple[list[dict[str, Any]], int]],
                       render: Callable[[dict[str, Any]], Any], offset: int, time: str,
                       total: int) -> AsyncIterator[bytes]:
    """The pages of a whole log (`limit=-1` of trigger instances, rule enforcements: `read(limit=, offset=,
    before=, known_total=)` gives a page, newest first by `time` then id, and the count), `LOG_PAGE` rows at
    a time, each read and rendered (`render`, then `json_items`) on `db.read`. The count is the caller's
    `total`, read once for `X-Total-Count` and given to each read as `known_total`, which it then does not
    count again: a count reads every row the filters select, and ran on every page. The first page starts
    at the request's `offset`; each after it just below the last row written (`before`: its `time` and id),
    not at the next OFFSET, which rows stored meanwhile (an alert storm) pushed the written rows down into,
    to be written again, and rows deleted meanwhile (a retention purge) pulled unread rows up out of, to be
    left out. Rows stored once the answer has begun are newer than the rows still to read, so it has none of them
    past its first page; and a late page costs what the first does."""
    text, last = await db.read(_rendered_page, read, render, time, {"offset": offset, "known_total": total})
    while True:
        yield text
        if last is None:
            return
        text, last = await db.read(_rendered_page, read, render, time, {"before": last, "known_total": total})


def _rendered_page(read: Callable[..., tuple[list[dict[str, Any]], int]], render: Callable[[dict[str, Any]], Any],
                   time: str, start: dict[str, Any]) -> tuple[bytes, tuple[datetime, str] | None]:
    """A page of `keyset_pages` on the reader thread, from `start` (its `offset` or `before`, and the
    `known_total` that spares its count): its rows as `json_items`, and where the next page starts, the
    last row's `time` and id (None after a page of fewer than `LOG_PAGE` rows: the log's last)."""
    rows, _total = read(limit=LOG_PAGE, **start)
    last = (rows[-1][time], rows[-1]["id"]) if len(rows) == LOG_PAGE else None
    return json_items(render(r) for r in rows), last


def streamed_list(pages: AsyncIterator[bytes], total: int) -> StreamingResponse:
    """A whole result set (`limit=-1`) as the one JSON array StackStorm's clients read, written a page at a
    time as `pages` gives them (`json_items`'s text, empty for a page of none): the answer holds one page
    in memory, not the whole set (the 300,000 executions of `st2 execution list -n -1` took 3.6 GB as one
    list). Headers as `tell_page` sets them for a whole set. A read that fails once the array has begun
    can no longer change the status: the answer is cut off unfinished, which a client's JSON parser
    refuses, rather than ended as if it were whole."""

    async def body() -> AsyncIterator[bytes]:
        yield b"["
        before = b""
        async for page in pages:
            if page:
                yield before + page
                before = b","
        yield b"]"

    return StreamingResponse(body(), media_type="application/json", headers={"X-Total-Count": str(total)})


def query_time(name: str, value: str | None) -> datetime | None:
    """A time filter's query value (`timestamp_gt`, `enforced_at_lt`...: ISO 8601, `Z` or an offset; UTC
    when it names no zone), or a 400 naming the parameter and the form st2client documents."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset that moves it past year 9999 in UTC
        raise HTTPException(400, f"{name} must be an ISO 8601 date and time such as 2000-01-01T12:00:00.000Z, "
                                 f"not {value!r}") from None
