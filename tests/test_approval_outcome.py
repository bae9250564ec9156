"""What each person sees of an approval's decision, and where: the approver learns the true outcome
wherever they decided (a run refused at run time included), and nobody reads a decision twice."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from adapters.loopback import LoopbackAdapter
from tests.test_chat import loopback_chat, settle
from tests.test_chat_approvals import _approval_config, _approval_id

DM = "dm-ann"


def _seen(loopback: LoopbackAdapter) -> dict[tuple[str, str | None], list[str]]:
    """Every post, by the place it is read in (channel, thread)."""
    places: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for posted in loopback.posted:
        places[(posted.reply.channel, posted.reply.thread)].append(posted.text)
    return dict(places)


@contextlib.asynccontextmanager
async def _requested(home: Path, command: str) -> AsyncIterator[tuple[Any, Any, LoopbackAdapter, str]]:
    """A chat with the approval pack, where alice asked `!<command>` in #ops: held, its approval's id."""
    _approval_config(home)
    async with loopback_chat(home) as (squall, bot, loopback):
        await loopback.say(f"!{command}", user="alice", channel="#ops")
        await settle(squall, bot)
        yield squall, bot, loopback, _approval_id(loopback)


def _revoke_restart(home: Path) -> None:
    """Allow `demo.restart` to bob alone: alice, who asked, may no longer run it once approved."""
    alias = home / "packs" / "demo" / "aliases" / "restart.yaml"
    alias.write_text(alias.read_text() + "permissions: {allow: {users: [bob]}}\n")


async def test_an_approver_in_a_direct_message_learns_the_run_was_refused(home: Path) -> None:
    async with _requested(home, "restart web") as (squall, bot, loopback, approval_id):
        _revoke_restart(home)
        await squall.reload_packs()
        await loopback.say(f"!approve {approval_id}", user="ann", channel=DM, direct=True)
        await settle(squall, bot)
        cannot = (f"Cannot run {approval_id}: demo.restart is allowed only for users bob. demo.restart was not run, "
                  "and will not be: send the command again once it can run.")
        seen = _seen(loopback)
        assert seen[("#ops", "m1")][1:] == [cannot]  # never "running" first: the thread reads one outcome too
        assert loopback.texts(DM) == [cannot]
        assert {channel for channel, _ in seen} == {"#ops", DM} and [place for place in seen if place[0] == "#ops"] == [
            ("#ops", "m1")]
        assert await squall.executions.list(action="demo.restart") == []


async def test_an_approver_in_a_direct_message_learns_it_runs(home: Path) -> None:
    async with _requested(home, "restart web") as (squall, bot, loopback, approval_id):
        await loopback.say(f"!approve {approval_id}", user="ann", channel=DM, direct=True)
        await settle(squall, bot)
        approved = f"Approval {approval_id} approved by ann; running demo.restart."
        seen = _seen(loopback)
        assert loopback.texts(DM) == [approved]
        assert seen[("#ops", "m1")].count(approved) == 1
        [execution] = await squall.executions.list(action="demo.restart")
        assert execution["status"] == "succeeded"


async def test_an_approval_typed_in_the_channel_outside_its_thread_is_told_once(home: Path) -> None:
    async with _requested(home, "deploy web1") as (squall, bot, loopback, approval_id):
        await loopback.say(f"!approve {approval_id}", user="ann", channel="#ops")
        await loopback.say(f"!approve {approval_id}", user="bea", channel="#ops")
        await settle(squall, bot)
        seen = _seen(loopback)
        thread = seen[("#ops", "m1")]
        assert thread[1:3] == [f"ann approved {approval_id} (1 of 2).",
                               f"Approval {approval_id} approved by ann, bea; running demo.wipe."]
        told = [t for t in loopback.texts("#ops") if approval_id in t and "approved" in t]
        assert len(told) == 2  # once each, in the requester's thread; no second answer under ann's or bea's message
        assert set(seen) == {("#ops", "m1")}
        [execution] = await squall.executions.list(action="demo.wipe")
        assert execution["status"] == "succeeded"


async def test_a_refused_run_approved_in_the_channel_outside_its_thread_is_told_once(home: Path) -> None:
    async with _requested(home, "restart web") as (squall, bot, loopback, approval_id):
        _revoke_restart(home)
        await squall.reload_packs()
        await loopback.say(f"!approve {approval_id}", user="ann", channel="#ops")
        await settle(squall, bot)
        seen = _seen(loopback)
        assert seen[("#ops", "m1")][1:] == [
            f"Cannot run {approval_id}: demo.restart is allowed only for users bob. demo.restart was not run, "
            "and will not be: send the command again once it can run."]
        assert set(seen) == {("#ops", "m1")}


async def test_an_approver_in_the_thread_sees_only_that_the_run_was_refused(home: Path) -> None:
    """Approved in the request's thread itself, where the run is then refused: the thread (where the approver
    reads) is told that alone, once, never "running demo.restart" before it."""
    async with _requested(home, "restart web") as (squall, bot, loopback, approval_id):
        _revoke_restart(home)
        await squall.reload_packs()
        await loopback.say(f"!approve {approval_id}", user="ann", channel="#ops", thread="m1")
        await settle(squall, bot)
        seen = _seen(loopback)
        assert seen[("#ops", "m1")][1:] == [
            f"Cannot run {approval_id}: demo.restart is allowed only for users bob. demo.restart was not run, "
            "and will not be: send the command again once it can run."]
        assert set(seen) == {("#ops", "m1")}
        assert (await squall.db(squall.store.approval_get, approval_id))["status"] == "failed"
        assert await squall.executions.list(action="demo.restart") == []


async def test_an_approver_in_the_thread_sees_it_runs_before_its_ack_and_result(home: Path) -> None:
    async with _requested(home, "restart web") as (squall, bot, loopback, approval_id):
        await loopback.say(f"!approve {approval_id}", user="ann", channel="#ops", thread="m1")
        await settle(squall, bot)
        [execution] = await squall.executions.list(action="demo.restart")
        assert execution["status"] == "succeeded"
        seen = _seen(loopback)
        thread = seen[("#ops", "m1")][1:]
        assert thread[0] == f"Approval {approval_id} approved by ann; running demo.restart."
        assert all(execution["id"] in t for t in thread[1:]) and len(thread) > 1  # its ack and result, after
        assert set(seen) == {("#ops", "m1")}


async def test_a_denial_typed_in_the_channel_outside_its_thread_is_told_once(home: Path) -> None:
    async with _requested(home, "deploy web1") as (squall, bot, loopback, approval_id):
        await loopback.say(f"!deny {approval_id} not during the freeze", user="bea", channel="#ops")
        await settle(squall, bot)
        seen = _seen(loopback)
        assert seen[("#ops", "m1")][1:] == [
            f"Approval {approval_id} was denied by bea: not during the freeze. Not running demo.wipe."]
        assert set(seen) == {("#ops", "m1")}


async def test_a_withdrawal_typed_in_the_channel_outside_its_thread_is_told_once(home: Path) -> None:
    async with _requested(home, "deploy web1") as (squall, bot, loopback, approval_id):
        await loopback.say(f"!deny {approval_id} changed my mind", user="alice", channel="#ops")
        await settle(squall, bot)
        seen = _seen(loopback)
        assert seen[("#ops", "m1")][1:] == [
            f"Approval {approval_id} was denied by alice: changed my mind. Not running demo.wipe."]
        assert set(seen) == {("#ops", "m1")}
        assert (await squall.db(squall.store.approval_get, approval_id))["status"] == "denied"


async def test_a_denial_in_a_direct_message_is_told_there_and_in_the_thread(home: Path) -> None:
    async with _requested(home, "deploy web1") as (squall, bot, loopback, approval_id):
        await loopback.say(f"!deny {approval_id} not during the freeze", user="bea", channel="dm-bea", direct=True)
        await settle(squall, bot)
        denied = f"Approval {approval_id} was denied by bea: not during the freeze. Not running demo.wipe."
        seen = _seen(loopback)
        assert seen[("#ops", "m1")][1:] == [denied]
        assert loopback.texts("dm-bea") == [denied]
        assert [place for place in seen if place[0] == "#ops"] == [("#ops", "m1")]
