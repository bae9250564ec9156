"""The cyclic garbage collector around a long-running process's start (`squall serve`, `squall worker`).

Imports only the standard library, so a command can hold the collector off before it imports the service.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations between two collections of young objects (`gc.set_threshold`'s first number).
YOUNG_OBJECTS = 50_000
#: Whether a start holds the collector off (`collections_held`) and has not settled the heap yet.
_held = False


@contextlib.contextmanager
def collections_held() -> Iterator[None]:
    """No cyclic collection while the process starts, until `settle_heap` enables it once up; at the
    block's end the collector is as it was before, should the start fail first (a command the tests run
    in-process went on without a collector).

    Start-up builds ~200k objects that live as long as the process (modules, FastAPI's routes and
    pydantic's schemas, SQLAlchemy's tables, the packs) and leaves only ~300 unreachable ones. The
    collector ran ~280 times meanwhile (two or three of them full), and `settle_heap`'s full collection
    walked the whole heap once more before the first request could be answered: together 0.2 s of
    `squall serve`'s ~1.4 s start.
    """
    global _held
    enabled = gc.isenabled()
    gc.disable()
    _held = True
    try:
        yield
    finally:
        _held = False
        if enabled:
            gc.enable()


def settle_heap() -> None:
    """Put what start-up (or a pack reload) built out of the garbage collector's sight.

    Packs, templates, SQLAlchemy's and the adapters' objects live as long as the process; a full
    collection walking all of them stopped the event loop for ~50 ms now and then, which was the
    chat's p99. Frozen, a full collection walks only what came after (~10 ms). Unfreezing first
    lets a reload's discarded packs be collected instead of kept forever. After a start that held the
    collector off (`collections_held`) the heap is frozen as it stands, without the full collection,
    and the collector runs again: the few hundred unreachable objects it would free are not worth
    0.1 s before the first answer, and the next reload's collection frees them. Otherwise (a reload,
    or serve run in-process by errbot's plugin or the tests) the collector is left on or off as it was.

    Young objects are collected every `YOUNG_OBJECTS` allocations (net: the collector counts the objects
    it tracks made, less those freed) instead of Python's 700: with a hundred commands in flight their
    objects outlived the young collections, were promoted, and every tenth promotion walked the whole
    heap (25 full collections per 20,000 commands, 9% of the chat's throughput); at 10,000 it is one.
    At 50,000 a fresh process also collects less while its caches fill (the last 10,000 replies' ids,
    the recent executions): 9,500 instructions a chat command fewer over its first 300 commands and
    4,100 over the next 1,000 (callgrind, 100 in flight). Once they are full, a command frees what it
    made and neither threshold is reached (one young collection in 30,000 commands at 10,000). What
    waits longer is cyclic garbage only: the peak RSS over 12,000 commands stayed at 66 MB.
    """
    global _held
    gc.unfreeze()
    if _held:
        _held = False
        gc.enable()
    else:
        gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
