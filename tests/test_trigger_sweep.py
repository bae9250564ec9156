"""A serve node's own trigger instances, looked after by its own sweeps.

Nobody takes over what a live process holds `processing`, so an instance whose task was lost inside a
live node stayed `processing` for as long as that node lived. The node's minute sweep
(`TriggerService.recover`) now takes up again what it holds with no task of its own on it, once two
looks a grace apart found it so (its clock is the test's), resumed: a rule that acted before the task
was lost does not act again. An instance a task still works on is left to it. A claim the database
fails is tried again at once (tests/test_scaleout_triggers.py), and one whose answer it lost after
the commit is found this node's by the next try and processed then, not left to the sweep."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.service import POLL_SECONDS, PURGE_SECONDS, Housekeeping
from engine import triggers
from tests.test_reaper_clock import Monotonic
from tests.test_rules import started
from tests.test_trigger_recovery import RULES, _acted, _instance_row, with_six_rules


@pytest.fixture
def six_rules(home: Path, tmp_path: Path) -> Path:
    """Six rules on `demo.event`, on SQLite."""
    return with_six_rules(home, f"sqlite:///{tmp_path / 'squall.db'}")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Monotonic:
    """The monotonic clock a node's sweeps measure the grace by: the test moves it."""
    moved = Monotonic()
    monkeypatch.setattr(triggers, "time", moved)
    return moved


async def _minute_sweep(housekeeping: Housekeeping, clock: Monotonic) -> None:
    """A minute passes and `squall serve`'s housekeeping makes its minute's tick."""
    clock.now += PURGE_SECONDS
    housekeeping.ticks = int(PURGE_SECONDS / POLL_SECONDS) - 1  # the next tick is the minute's
    await housekeeping.tick()


async def test_the_sweep_takes_up_what_this_node_holds_with_no_task_and_each_rule_acts_once(
        six_rules: Path, clock: Monotonic) -> None:
    """The task processing an instance is lost inside the live node after r1 and r2 acted. The node's
    first minute sweep after that leaves the instance (a task may be about to start on it); the next
    resumes it: r3-r6 act, r1 and r2 do not act again, and the instance is `processed`."""
    squall = await started(six_rules)
    process = squall.rules.process
    calls: list[bool] = []

    async def lost_midway(instance: dict[str, Any], resumed: bool = False) -> None:
        calls.append(resumed)
        if resumed:
            await process(instance, resumed)
            return
        for ref in ("demo.r1", "demo.r2"):
            await squall.rules.enforce(squall.rules.rules[ref], instance)
        raise asyncio.CancelledError  # the task is lost: nothing of it writes the instance's end

    squall.rules.process = lost_midway  # type: ignore[method-assign]
    try:
        record = await squall.triggers.dispatch("demo.event", {"n": 7})
        await squall.triggers.settle()
        await squall.rules.settle()
        row = _instance_row(squall.store, record["id"])
        assert (row["status"], row["owner"]) == ("processing", squall.triggers.owner)
        housekeeping = Housekeeping(squall, [])
        await housekeeping.start()

        await _minute_sweep(housekeeping, clock)
        await squall.triggers.settle()
        assert _instance_row(squall.store, record["id"])["status"] == "processing"

        await _minute_sweep(housekeeping, clock)
        await squall.triggers.settle()
        await squall.rules.settle()
        assert _instance_row(squall.store, record["id"])["status"] == "processed"
        assert calls == [False, True]
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))

        await _minute_sweep(housekeeping, clock)  # processed: later sweeps leave it
        await squall.triggers.settle()
        assert calls == [False, True]
    finally:
        await squall.close()


async def test_the_sweep_leaves_an_instance_a_task_of_this_node_still_works_on(
        six_rules: Path, clock: Monotonic) -> None:
    """However many minutes a slow processing takes, the node's sweeps do not start a second one on the
    instance: its rules act once, when it ends."""
    squall = await started(six_rules)
    process = squall.rules.process
    through = asyncio.Event()
    calls: list[bool] = []

    async def slow(instance: dict[str, Any], resumed: bool = False) -> None:
        calls.append(resumed)
        await through.wait()
        await process(instance, resumed)

    squall.rules.process = slow  # type: ignore[method-assign]
    try:
        record = await squall.triggers.dispatch("demo.event", {"n": 7})
        housekeeping = Housekeeping(squall, [])
        await housekeeping.start()
        for _minute in range(3):
            await _minute_sweep(housekeeping, clock)
            await asyncio.sleep(0)
        assert _instance_row(squall.store, record["id"])["status"] == "processing"
        through.set()
        await squall.triggers.settle()
        await squall.rules.settle()
        assert calls == [False]
        assert _instance_row(squall.store, record["id"])["status"] == "processed"
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))
    finally:
        await squall.close()


async def test_a_claim_whose_answer_was_lost_is_processed_by_the_next_try_not_left_for_the_sweep(
        six_rules: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim commits, then the database fails the call (its answer lost: the server cut the
    connection after the commit). The try after it finds the instance claimed by this node and processes
    it then: it used to return, the instance `processing` with no task on it until the minute sweep's
    second look, one to two minutes later. Each rule acts once."""
    monkeypatch.setattr(triggers, "END_RETRY_SECONDS", (0.01, 0.02))
    squall = await started(six_rules)
    store = squall.store
    claim, answers = store.trigger_instance_claim, []

    def answer_lost(instance_id: str, owner: str) -> bool:
        claimed = claim(instance_id, owner)
        answers.append(claimed)
        if len(answers) == 1:  # committed with its group, then lost on the way back
            raise sa.exc.OperationalError("UPDATE trigger_instances ...", {},
                                          sqlite3.OperationalError("disk I/O error"))
        return claimed

    monkeypatch.setattr(store, "trigger_instance_claim", answer_lost)
    try:
        record = await squall.triggers.dispatch("demo.event", {"n": 7})
        await squall.triggers.settle()
        await squall.rules.settle()
        assert answers == [True, False]  # the second try found it claimed: by this node, it went on
        assert _instance_row(store, record["id"])["status"] == "processed"
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))
    finally:
        await squall.close()
