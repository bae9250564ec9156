"""The outbox's delivery shortcuts: the sent marks of one statement settle through one callback on its
future (`Outbox._mark`), each mark as its own callback settled it, and never with another statement's."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.base import Reply
from adapters.loopback import LoopbackAdapter
from bot.chat.outbox import Outbox

SENT = {"status": "sent"}


class _Rounds:
    """`Database.later_together` as the outbox calls it: the items given until `take` share one future."""

    def __init__(self) -> None:
        self.store = SimpleNamespace(outbox_update_many=lambda items: None)
        self.futures: list[asyncio.Future[Any]] = []
        self.items: list[list[Any]] = []
        self._open: asyncio.Future[Any] | None = None

    def later_together(self, fn: Any, item: Any) -> asyncio.Future[Any]:
        if self._open is None:
            self._open = asyncio.get_running_loop().create_future()
            self.futures.append(self._open)
            self.items.append([])
        self.items[-1].append(item)
        return self._open

    def take(self) -> None:
        """The round's statement goes out: later marks share the next one."""
        self._open = None


async def test_marks_settle_with_their_own_statement_each(caplog: pytest.LogCaptureFixture) -> None:
    db = _Rounds()
    outbox = Outbox(db, {})  # type: ignore[arg-type]
    outbox._pending = 4
    outbox._idle.clear()
    outbox._mark(1, SENT)
    outbox._mark(2, SENT)
    db.take()
    outbox._mark(3, SENT)  # taken, not yet done: a new statement's, not the first one's
    outbox._mark(4, SENT)
    first, second = db.futures
    assert db.items == [[(1, SENT), (2, SENT)], [(3, SENT), (4, SENT)]]
    assert outbox._marks == {first, second}

    first.set_exception(OSError("disk I/O error"))
    await asyncio.sleep(0)
    assert outbox._unmarked == {1: SENT, 2: SENT}  # marked again at the next poll
    assert outbox._settled_ids == [] and outbox.pending == 2 and not outbox._idle.is_set()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"reply {n} was delivered but could not be marked sent (disk I/O error); marking it again at the next poll "
        "(a crash first sends it again at start-up)" for n in (1, 2)]

    db.take()
    second.set_result(None)
    await asyncio.sleep(0)
    assert outbox._settled_ids == [3, 4] and outbox.pending == 0 and outbox._idle.is_set()
    assert outbox._marks == set() and outbox._round is None

    outbox._pending = 1
    outbox._mark(5, SENT)  # a round after those: a statement of its own
    assert len(db.futures) == 3 and outbox._round is not None and outbox._round[0] is db.futures[2]
    db.futures[2].cancel()
    await asyncio.sleep(0)
    assert outbox._settled_ids == [3, 4] and 5 not in outbox._unmarked and outbox.pending == 0


async def test_a_channels_replies_go_out_in_order_whether_its_worker_waits_sends_or_is_held() -> None:
    """The channel's deque and the future its worker waits on (`_Channel`, not an `asyncio.Queue`): a reply
    given to a waiting worker wakes it, those given while it sends follow in order, and a held outbox
    (`hold=True`) sends nothing until `release`."""
    db = _Rounds()
    loopback = LoopbackAdapter()
    outbox = Outbox(db, {"loopback": loopback}, hold=True)  # type: ignore[arg-type]

    def reply(text: str) -> Reply:
        return Reply(adapter="loopback", channel="#order", text=text)

    outbox._enqueue(1, reply("one"))
    outbox._enqueue(2, reply("two"))
    await asyncio.sleep(0.01)
    assert loopback.texts() == [] and outbox.pending == 2  # held
    outbox.release()
    await asyncio.sleep(0.01)
    assert loopback.texts() == ["one", "two"]
    queue = outbox._queues[("loopback", "#order")]
    assert queue.waiter is not None and not queue.items  # its worker waits on the empty channel
    outbox._enqueue(3, reply("three"))  # wakes it
    outbox._enqueue(4, reply("four"))  # taken after, without waiting
    assert queue.waiter is None
    await asyncio.sleep(0.01)
    assert loopback.texts() == ["one", "two", "three", "four"]
    assert [posted.reply.outbox_id for posted in loopback.posted] == [1, 2, 3, 4]
    for future in db.futures:
        future.set_result(None)
    await asyncio.sleep(0)
    assert outbox.pending == 0
    await outbox.close()


async def test_the_outbox_is_idle_exactly_while_no_reply_is_pending() -> None:
    """`_idle` (what `drain` waits on) is cleared by the first reply queued while none is pending, left clear
    by the others (`_enqueue` clears it only then), and set as the last one settles, again after it."""
    db = _Rounds()
    outbox = Outbox(db, {"loopback": LoopbackAdapter()}, hold=True)  # type: ignore[arg-type]
    reply = Reply(adapter="loopback", channel="#idle", text="one")
    assert outbox._idle.is_set()
    for round_ in range(2):
        outbox._enqueue(10 * round_ + 1, reply)
        assert not outbox._idle.is_set()
        outbox._enqueue(10 * round_ + 2, reply)
        assert not outbox._idle.is_set() and outbox.pending == 2
        outbox._settled()
        assert not outbox._idle.is_set()
        outbox._settled()
        assert outbox._idle.is_set() and outbox.pending == 0
        await asyncio.wait_for(outbox.drain(), 1)
    await outbox.close()
