"""Cron and date timers across a restart of `squall serve`: the run that came due while it was down
fires once at the start if it is less than `TAKEOVER_GRACE` late and nobody stored it, as an interval
timer's does (`engine.timers.TimerService._catch_up`); an older one is not replayed."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.leader import leadership
from engine.timers import DATE, TAKEOVER_GRACE, TimerService
from tests.test_rules import make_pack, started
from tests.test_timers import T0, Clock, led_timers, stored_runs, timer_rule

DUE = T0 + timedelta(seconds=30)
DATE_RULE = f"{{type: core.st2.DateTimer, parameters: {{date: '{DUE:%Y-%m-%d %H:%M:%S}', timezone: UTC}}}}"
CRON15 = "{type: core.st2.CronTimer, parameters: {second: '*/15'}}"
CRON5M = "{type: core.st2.CronTimer, parameters: {minute: '*/5'}}"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The test's clock, read by the timers and by `TriggerService.dispatch` (as `tests.test_timers`')."""
    moved = Clock(T0)
    monkeypatch.setattr("engine.triggers.utcnow", moved)
    return moved


async def serve(home: Path, clock: Clock, moment: datetime) -> tuple[Squall, TimerService]:
    """`squall serve` started at `moment`: its timers synced to the rules and led by its real lead."""
    clock.now = moment
    squall = await started(home)
    return squall, led_timers(squall, clock)


async def test_a_date_timer_due_while_squall_was_stopped_fires_once_after_the_restart(
        home: Path, clock: Clock) -> None:
    """Stopped at 20, its date at 30, started again at 32: the run is 2 s late, within the grace, and
    fires once, at once, as the run at 30. A later restart fires it no more: it is stored."""
    make_pack(home, {"tick": timer_rule("tick", DATE_RULE)})
    squall, timers = await serve(home, clock, T0)
    try:
        assert timers.next_due() == DUE
        clock.now = at(20)
        assert await timers.fire_due() == 0
    finally:
        await squall.close()

    squall, timers = await serve(home, clock, at(32))
    try:
        assert await timers.look()
        assert await timers.fire_due() == 1
        assert await timers.fire_due() == 0
        assert timers.next_due() is None
        assert await stored_runs(squall) == [DUE]
    finally:
        await squall.close()

    squall, timers = await serve(home, clock, at(40))
    try:
        assert await timers.look()
        assert await timers.fire_due() == 0 and timers.next_due() is None
        assert await stored_runs(squall) == [DUE]
    finally:
        await squall.close()


async def test_a_cron_run_due_while_squall_was_stopped_fires_once_after_the_restart(
        home: Path, clock: Clock) -> None:
    """Every 15 s: fired at 15, stopped at 28.5, started at 31.5. The run at 30 fires once, as itself,
    and the timer goes on at 45; a restart at 33 (the run at 30 stored) fires nothing before 45."""
    make_pack(home, {"tick": timer_rule("tick", CRON15)})
    squall, timers = await serve(home, clock, T0)
    try:
        clock.now = at(15)
        assert await timers.fire_due() == 1
        clock.now = at(28.5)
        assert await timers.fire_due() == 0
    finally:
        await squall.close()

    squall, timers = await serve(home, clock, at(31.5))
    try:
        assert timers.next_due() == at(45)  # its own schedule, until it knows it leads
        assert await timers.look()
        assert await timers.fire_due() == 1
        assert await timers.fire_due() == 0
        assert timers.next_due() == at(45)
        assert await stored_runs(squall) == [at(15), at(30)]
    finally:
        await squall.close()

    squall, timers = await serve(home, clock, at(33))
    try:
        assert await timers.look()
        assert await timers.fire_due() == 0 and timers.next_due() == at(45)
        clock.now = at(45)
        assert await timers.fire_due() == 1
        assert await stored_runs(squall) == [at(15), at(30), at(45)]
    finally:
        await squall.close()


async def test_runs_older_than_the_grace_are_not_replayed(
        home: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """Down from 20 s to 5 min + the grace + 30 s: the cron run at 5 min and the date at 30 s are
    more than `TAKEOVER_GRACE` late, so neither fires; the cron timer waits for 10 min, and the date
    timer is said at WARNING as a run that will not fire, naming the grace."""
    make_pack(home, {"tick": timer_rule("tick", CRON5M), "once": timer_rule("once", DATE_RULE)})
    squall, timers = await serve(home, clock, at(1))  # the cron's first run is at 5 min
    try:
        clock.now = at(20)
        assert await timers.fire_due() == 0  # stopped before the date at 30 s
    finally:
        await squall.close()
    back = at(300) + TAKEOVER_GRACE + timedelta(seconds=30)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.timers"):
        squall, timers = await serve(home, clock, back)
    try:
        assert await timers.look()
        assert await timers.fire_due() == 0
        assert timers.next_due() == at(600)
        assert await stored_runs(squall) == []  # the `tick` rule's cron timer never fired
        said = [r for r in caplog.records if DUE.strftime("%Y-%m-%d %H:%M:%S") in r.getMessage()]
        assert said and all(r.levelno == logging.WARNING for r in said)
        assert "TAKEOVER_GRACE" in said[0].getMessage() and "will not fire" in said[0].getMessage()
        assert "(used by rule demo.once)" in said[0].getMessage()  # whose action did not run
    finally:
        await squall.close()


async def test_the_timer_loop_catches_a_date_timer_up_at_its_start() -> None:
    """`TimerService.run` of a process with no interval timer looks at the lead at its start, not only
    at a timer's run: a date timer 5 s past at the start fires once, without waiting for anything."""
    fired: list[datetime] = []
    done = asyncio.Event()

    async def dispatch(_type: str, _payload: dict[str, Any], *, occurred_at: datetime, **_kw: Any) -> None:
        fired.append(occurred_at)
        done.set()

    async def history(_type: str, _parameters: dict[str, Any], _since: datetime) -> datetime | None:
        return None

    clock = Clock(DUE + timedelta(seconds=5))
    timers = TimerService(dispatch, clock, history=history)
    timers.sync([{"key": "once", "type": DATE, "parameters": {"date": f"{DUE:%Y-%m-%d %H:%M:%S}"}}])
    loop = asyncio.create_task(timers.run())
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert fired == [DUE.astimezone(UTC)]


async def test_a_cron_run_that_passed_while_nobody_led_fires_once_across_two_nodes(
        home: Path, clock: Clock) -> None:
    """Two `squall serve` on one database. The leader fired at 15 and was cut off at 28; its lock was
    held (a dead connection not yet dropped) until 34, so the other let the run at 30 pass and took the
    lead at 35: it fires that run once, as itself. The first node, started again at 37 when the second
    stopped, finds it stored and fires nothing before 45."""
    make_pack(home, {"tick": timer_rule("tick", CRON15)})
    a, a_timers = await serve(home, clock, T0)
    b, b_timers = await serve(home, clock, at(3))
    held = leadership(a.db.store.engine)  # the old leader's lock, not yet freed
    try:
        clock.now = at(15)
        assert await a_timers.fire_due() == 1
        clock.now = at(28)
        a.leader.close()
        assert held.lead()
        clock.now = at(30)
        assert await b_timers.fire_due() == 0  # it does not lead: the run passes
        clock.now = at(34)
        held.close()
        clock.now = at(35)
        assert await b_timers.look()
        assert await b_timers.fire_due() == 1 and await b_timers.fire_due() == 0
        assert b_timers.next_due() == at(45)
        await b.close()
        await a.close()
        a, a_timers = await serve(home, clock, at(37))
        assert await a_timers.look()
        assert await a_timers.fire_due() == 0 and a_timers.next_due() == at(45)
        assert await stored_runs(a) == [at(15), at(30)]
    finally:
        held.close()
        await a.close()
        await b.close()


async def test_a_new_cron_rule_s_first_start_fires_no_run_from_before_it(home: Path, clock: Clock) -> None:
    """A cron timer none of whose runs was ever stored is a new rule's: at its first start, 1.5 s after a
    run of its schedule, that run is no missed one (nothing was there to miss it); its first run is its next."""
    make_pack(home, {"tick": timer_rule("tick", CRON15)})
    squall, timers = await serve(home, clock, at(31.5))
    try:
        assert await timers.look()
        assert await timers.fire_due() == 0
        assert timers.next_due() == at(45)
        assert await stored_runs(squall) == []
    finally:
        await squall.close()


async def test_a_date_timer_that_fired_in_its_time_says_nothing_at_later_starts(
        home: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A date timer long past that fired when it was due is no lost run: a later start says nothing of it
    (each start warned that its run "will not fire", as if it had been lost)."""
    make_pack(home, {"tick": timer_rule("tick", DATE_RULE)})
    squall, timers = await serve(home, clock, T0)
    try:
        clock.now = DUE
        assert await timers.fire_due() == 1
    finally:
        await squall.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.timers"):
        squall, timers = await serve(home, clock, DUE + TAKEOVER_GRACE + timedelta(minutes=5))
    try:
        assert await timers.look()
        assert await timers.fire_due() == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert await stored_runs(squall) == [DUE]
    finally:
        await squall.close()


async def test_a_lost_date_run_names_the_rules_that_use_the_timer(caplog: pytest.LogCaptureFixture) -> None:
    """The WARNING that a date timer's run is lost names the rules using it, as the latest sync gave them (a
    reload that adds a rule to a kept timer counts): the timer's key alone does not tell whose action did
    not run."""
    async def history(_type: str, _parameters: dict[str, Any], _since: datetime) -> datetime | None:
        return None  # no process stored the run

    async def dispatch(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a run more than TAKEOVER_GRACE late is not fired")

    timers = TimerService(dispatch, Clock(DUE + TAKEOVER_GRACE + timedelta(seconds=30)), history=history)
    item = {"key": "once", "type": DATE, "parameters": {"date": f"{DUE:%Y-%m-%d %H:%M:%S}"}}
    timers.sync([{**item, "rules": ["demo.first"]}])
    timers.sync([{**item, "rules": ["demo.second", "demo.first"]}])  # a reload: one more rule on the kept timer

    with caplog.at_level(logging.WARNING, logger="engine.timers"):
        assert await timers.look()
        assert await timers.fire_due() == 0

    said = [r.getMessage() for r in caplog.records if "will not fire" in r.getMessage()]
    assert len(said) == 1 and "once" in said[0]
    assert "demo.first" in said[0] and "demo.second" in said[0]
