"""The outbox's memory of what it sent stays bounded in a process that is never restarted.

The outbox keeps the platform id of each reply it delivered (`Outbox._platform_ids`) so that an
edit of it (the ack's edit to the execution's final status, an inquiry's question put back) costs no
database read. Kept for every reply, that map grew by two or three entries a chat command for as
long as the process ran. Only the most recent `KEEP_PLATFORM_IDS` are kept now; an edit of an older
reply finds its platform id in the database, where the reply's `sent` mark recorded it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.base import Reply
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
