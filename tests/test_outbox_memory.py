"""The outbox's memory of what it sent stays bounded in a process that is never restarted.

The outbox keeps the platform id of each reply it delivered (`Outbox._platform_ids`) so that an
edit of it (the ack's edit to the execution's final status, an inquiry's question put back) costs no
database read. Kept for every reply, that map grew by two or three entries a chat command for as
long as the process ran. Only the most recent `KEEP_PLATFORM_IDS` are kept now; an edit of an older
reply finds its platform id in the database, where the reply's `sent` mark recorded it.

It kept a worker task and a queue per (adapter, channel) for ever too: every Slack or Mattermost DM,
every IRC private exchange (`nick~tag`, a new tag after a quit) added ~6 KB that only `close()` gave
back. A worker waiting on its empty queue for `IDLE_AFTER` ends now, its queue with it; one sending or
retrying a reply does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.base import DeliveryError, Reply
from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat import outbox as outbox_module
from bot.chat.bot import ChatBot
from tests.test_chat import settle
from tests.test_outbox_durability import _chat


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter]]:
    async for started in _chat(home):
        yield started


async def until(check: Callable[[], object], what: str, limit: float = 20.0) -> None:
    """Wait until `check()` holds (a guard against hanging, not an assertion about time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


def _failing_in(monkeypatch: pytest.MonkeyPatch, loopback: LoopbackAdapter, channel: str) -> dict[str, Any]:
    """Make the loopback refuse every send to `channel` (a refusal that may pass, as a 503 is) while
    `state["down"]`; `state["attempts"]` counts the refused sends."""
    state: dict[str, Any] = {"down": True, "attempts": 0}
    real = loopback.send

    async def send(reply: Reply, edit_of: str | None = None) -> str | None:
        if state["down"] and reply.channel == channel:
            state["attempts"] += 1
            raise DeliveryError("injected: HTTP 503", retry_after=0.01)
        return await real(reply, edit_of)

    monkeypatch.setattr(loopback, "send", send)
    return state


def _count_reads(monkeypatch: pytest.MonkeyPatch, squall: Squall) -> list[int]:
    """The outbox ids read back one by one from the database (`Store.outbox_get`) from now on."""
    reads: list[int] = []
    real = squall.store.outbox_get

    def counted(outbox_id: int) -> Any:
        reads.append(outbox_id)
        return real(outbox_id)

    monkeypatch.setattr(squall.store, "outbox_get", counted)
    return reads


async def test_the_platform_ids_kept_for_edits_stay_bounded_over_many_commands(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thirty commands (an ack, its edit, a result and a notification each) leave no more than the
    cap in memory, and every ack is still edited to its final status without a database read."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "KEEP_PLATFORM_IDS", 8)
    reads = _count_reads(monkeypatch, squall)
    for n in range(30):
        await loopback.say(f"!greet n{n}", user="alice", channel="#ops")
        await settle(squall, bot)
        assert len(bot.outbox._platform_ids) <= 8
    acks = [posted for posted in loopback.posted if posted.reply.text.startswith("greeting ")]
    assert len(acks) == 30 and all(ack.edits and "succeeded" in ack.edits[-1] for ack in acks)
    assert reads == []  # the ack's edit found its platform id in memory each time: the hot path reads nothing
    assert bot.outbox._newest in bot.outbox._platform_ids  # the latest sent are the ones kept


async def test_an_edit_of_a_reply_no_longer_kept_finds_its_platform_id_in_the_database(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """The platform id of a reply pushed out of memory by later ones is read from its row: the edit
    changes the post the platform has, it is not posted anew."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "KEEP_PLATFORM_IDS", 3)
    first = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the question"))
    await settle(squall, bot)
    for n in range(5):
        await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text=f"later {n}"))
    await settle(squall, bot)
    assert first not in bot.outbox._platform_ids and len(bot.outbox._platform_ids) == 3
    reads = _count_reads(monkeypatch, squall)
    await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the question, asked again", edit=first))
    await settle(squall, bot)
    assert reads == [first]
    [question] = [posted for posted in loopback.posted if posted.reply.text == "the question"]
    assert question.edits == ["the question, asked again"]
    assert "the question, asked again" not in [posted.reply.text for posted in loopback.posted]


async def test_an_edit_of_a_reply_whose_sent_mark_failed_finds_its_platform_id_after_it_is_no_longer_kept(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply whose `sent` mark did not commit (the database refused it for a moment) has no platform
    id in its row until the next poll marks it again: an edit meanwhile takes it from that pending mark."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "KEEP_PLATFORM_IDS", 2)
    real, refused = squall.store.outbox_update_many, []

    def refuse_once(items: Any) -> Any:
        if not refused:
            refused.append(items)
            raise RuntimeError("injected: database is locked")
        return real(items)

    monkeypatch.setattr(squall.store, "outbox_update_many", refuse_once)
    first = await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the question"))
    await settle(squall, bot)
    for n in range(3):
        await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text=f"later {n}"))
    await settle(squall, bot)
    assert refused and first in bot.outbox._unmarked and first not in bot.outbox._platform_ids
    await bot.outbox.post(Reply(adapter="loopback", channel="#ops", text="the question, asked again", edit=first))
    await settle(squall, bot)
    [question] = [posted for posted in loopback.posted if posted.reply.text == "the question"]
    assert question.edits == ["the question, asked again"]


async def test_the_workers_of_channels_gone_quiet_end_and_their_queues_with_them(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply to each of many channels (DMs): once each worker has waited `IDLE_AFTER` on its empty
    queue, no worker, queue or note of it is left, and every reply was delivered."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 0.05)
    for n in range(60):
        await bot.outbox.post(Reply(adapter="loopback", channel=f"D{n}", text=f"hello {n}"))
    await settle(squall, bot)
    await until(lambda: not bot.outbox._workers and not bot.outbox._queues, "the idle workers to end")
    assert bot.outbox._waiting == {}
    assert sorted(loopback.texts()) == sorted(f"hello {n}" for n in range(60))


async def test_a_channel_whose_worker_ended_gets_its_next_replies_in_order(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """After its worker ended, two replies another process stored for the channel, queued by one poll
    at the same moment, start one fresh worker that sends both, in the order they were stored."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 0.05)
    key = ("loopback", "D1")
    await bot.outbox.post(Reply(adapter="loopback", channel="D1", text="first"))
    await settle(squall, bot)
    ended = bot.outbox._workers[key]
    await until(lambda: key not in bot.outbox._workers, "the channel's worker to end")
    assert ended.done()
    for text in ("second", "third"):
        await bot.outbox.db(bot.outbox.db.store.outbox_add, "loopback", "D1",
                            Reply(adapter="loopback", channel="D1", text=text).to_json())
    assert await bot.outbox.poll() == 2
    assert not bot.outbox._workers[key].done()
    await settle(squall, bot)
    assert loopback.texts("D1") == ["first", "second", "third"]


async def test_a_reply_queued_as_the_idle_check_runs_keeps_the_worker_and_its_order(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply queued to a worker that has waited long enough to end, but not yet taken it when the
    idle check runs, keeps that worker: it is not ended with a reply in its queue (lost until the next
    start), and the channel's replies go out in order."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 3600.0)  # the check runs only when the test calls it
    key = ("loopback", "D1")
    await bot.outbox.post(Reply(adapter="loopback", channel="D1", text="first"))
    await settle(squall, bot)
    worker = bot.outbox._workers[key]
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 0.05)
    loop = asyncio.get_running_loop()
    await until(lambda: loop.time() >= bot.outbox._waiting[key] + 0.05, "the worker to have waited long enough")
    await bot.outbox.post(Reply(adapter="loopback", channel="D1", text="second"))  # queued; not taken yet
    bot.outbox._reap()
    assert bot.outbox._workers[key] is worker and not worker.done()
    await settle(squall, bot)
    await until(lambda: key not in bot.outbox._workers, "the worker to end once idle")
    await bot.outbox.post(Reply(adapter="loopback", channel="D1", text="third"))
    await settle(squall, bot)
    assert loopback.texts("D1") == ["first", "second", "third"]


async def test_a_channel_whose_send_keeps_failing_keeps_its_worker(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker retrying a refused reply is not idle, however long the refusals last: it is not ended
    (other channels' idle workers are), and once the platform takes replies again its channel gets
    the refused one and the one queued behind it, in order."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 0.05)
    monkeypatch.setattr(outbox_module, "MAX_BACKOFF", 0.02)
    state = _failing_in(monkeypatch, loopback, "#down")
    down = ("loopback", "#down")
    await bot.outbox.post(Reply(adapter="loopback", channel="#down", text="refused a while"))
    worker = bot.outbox._workers[down]
    await bot.outbox.post(Reply(adapter="loopback", channel="#up", text="fine"))
    await bot.outbox.post(Reply(adapter="loopback", channel="#down", text="queued behind it"))
    await until(lambda: ("loopback", "#up") not in bot.outbox._queues and state["attempts"] >= 5,
                "the idle channel's worker to end while the refused reply is retried")
    assert bot.outbox._workers[down] is worker and not worker.done()
    state["down"] = False
    await settle(squall, bot)
    assert loopback.texts("#down") == ["refused a while", "queued behind it"]
    assert loopback.texts("#up") == ["fine"]


async def test_shutdown_with_some_workers_ended_and_some_live_is_clean(
        chat, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping the chat with one channel's worker ended, one waiting and one retrying a refused reply
    ends every worker and the idle check, raises nothing, and leaves the refused reply stored pending
    for the next start."""
    squall, bot, loopback = chat
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 0.05)
    await bot.outbox.post(Reply(adapter="loopback", channel="D-ended", text="long ago"))
    await settle(squall, bot)
    await until(lambda: not bot.outbox._workers, "the idle worker to end")
    monkeypatch.setattr(outbox_module, "IDLE_AFTER", 3600.0)
    state = _failing_in(monkeypatch, loopback, "#down")
    await bot.outbox.post(Reply(adapter="loopback", channel="D-waiting", text="just now"))
    refused = await bot.outbox.post(Reply(adapter="loopback", channel="#down", text="refused"))
    await until(lambda: loopback.texts("D-waiting") == ["just now"] and state["attempts"] >= 2,
                "one worker waiting and one retrying")
    workers = list(bot.outbox._workers.values())
    assert len(workers) == 2 and not any(worker.done() for worker in workers)
    await bot.stop()
    assert all(worker.done() for worker in workers)
    assert bot.outbox._reaper is None
    assert [task for task in asyncio.all_tasks() if task.get_name().startswith("outbox-") and not task.done()] == []
    row = await squall.db(squall.store.outbox_get, refused)
    assert row["status"] == "pending"
