"""Timers (spec §6.2): interval, date and cron, with time zones, on a controllable clock."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.leader import leadership
from engine.rules import load_rules
from engine.storage import Store, create_engine
from engine.timers import CRON, DATE, INTERVAL, TAKEOVER_GRACE, TimerService, schedule
from engine.wakeups import PROCESS_NAME
from tests.conftest import REPO
from tests.test_rules import make_pack, started

T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)  # a Monday


def timer_rule(name: str, trigger: str) -> str:
    return f"""
        name: {name}
        pack: demo
        enabled: true
        trigger: {trigger}
        action: {{ref: demo.take, parameters: {{message: "{{{{ trigger.executed_at }}}}"}}}}
    """


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def with_clock(squall: Squall, clock: Clock) -> TimerService:
    """Replace the app's timers with ones on `clock`, synced to the loaded rules, reading the runs
    stored in the app's database as the app's own read them (`Engine` wires that `history`)."""
    squall.timers = TimerService(squall.triggers.dispatch, clock, history=squall.timers.history)
    squall._follow_rules()
    return squall.timers


async def fired(squall: Squall, rule_ref: str) -> list[dict]:
    await squall.triggers.settle()
    await squall.rules.settle()
    return await squall.rules.enforcements(rule=rule_ref)


async def test_interval_timers_fire_for_their_own_rules_and_never_in_bursts(home: Path) -> None:
    make_pack(home, {
        "every10": timer_rule("every10", "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 10}}"),
        "every60": timer_rule("every60", "{type: core.st2.IntervalTimer, parameters: {unit: minutes, delta: 1}}"),
    })
    squall = await started(home)
    clock = Clock(T0)
    try:
        timers = await with_clock(squall, clock)
        assert len(timers.timers) == 2
        assert timers.next_due() == T0 + timedelta(seconds=10)  # the first run is one interval away
        clock.now = T0 + timedelta(seconds=5)
        assert await timers.fire_due() == 0
        clock.now = T0 + timedelta(seconds=10)
        assert await timers.fire_due() == 1
        runs = await fired(squall, "demo.every10")
        assert len(runs) == 1 and await fired(squall, "demo.every60") == []
        instance = await squall.triggers.get(runs[0]["trigger_instance_id"])
        assert instance["trigger"] == INTERVAL
        assert instance["trigger_parameters"] == {"unit": "seconds", "delta": 10}
        assert instance["payload"] == {"executed_at": str(clock.now), "schedule": None}
        assert instance["trace_tag"].startswith("st2.IntervalTimer-")
        execution = await squall.executions.wait(runs[0]["execution_id"])
        assert execution["parameters"]["message"] == str(clock.now)

        # The loop was stuck (or the host suspended) for 95 s: each timer fires once, not once per missed run.
        clock.now = T0 + timedelta(seconds=105)
        assert await timers.fire_due() == 2
        assert len(await fired(squall, "demo.every10")) == 2
        assert len(await fired(squall, "demo.every60")) == 1
        assert {t.type: t.next_at for t in timers.timers.values()}[INTERVAL] in {
            T0 + timedelta(seconds=110), T0 + timedelta(seconds=120)}
        every10 = next(t for t in timers.timers.values() if t.parameters["unit"] == "seconds")
        assert every10.next_at == T0 + timedelta(seconds=110)
    finally:
        await squall.close()


async def test_reload_keeps_running_schedules_and_drops_removed_ones(home: Path) -> None:
    pack = make_pack(home, {
        "a": timer_rule("a", "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 30}}"),
    })
    squall = await started(home)
    clock = Clock(T0)
    try:
        timers = await with_clock(squall, clock)
        (key,) = timers.timers
        clock.now = T0 + timedelta(seconds=20)
        (pack / "rules" / "b.yaml").write_text(
            timer_rule("b", "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 5}}"))
        squall.reload()
        assert timers.timers[key].next_at == T0 + timedelta(seconds=30)  # not restarted by the reload
        assert len(timers.timers) == 2
        (pack / "rules" / "a.yaml").unlink()
        (pack / "rules" / "b.yaml").unlink()
        squall.reload()
        assert timers.timers == {} and timers.next_due() is None
    finally:
        await squall.close()


async def test_cron_timer_in_a_time_zone_and_a_date_timer_that_fires_once(home: Path) -> None:
    make_pack(home, {
        # 09:30 on weekdays, Paris time: 08:30 UTC in March (before summer time).
        "cron": timer_rule("cron", "{type: core.st2.CronTimer, parameters: "
                                   "{hour: 9, minute: 30, day_of_week: mon-fri, timezone: Europe/Paris}}"),
        "date": timer_rule("date", "{type: core.st2.DateTimer, parameters: "
                                   "{date: '2026-03-02 08:45:00', timezone: UTC}}"),
        "past": timer_rule("past", "{type: core.st2.DateTimer, parameters: {date: '2020-01-01 00:00:00'}}"),
    })
    squall = await started(home)
    clock = Clock(T0)
    try:
        timers = await with_clock(squall, clock)
        by_type = {t.type: t for t in timers.timers.values() if t.next_at is not None}
        assert by_type[CRON].next_at == datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
        assert by_type[DATE].next_at == datetime(2026, 3, 2, 8, 45, tzinfo=UTC)
        assert sum(1 for t in timers.timers.values() if t.next_at is None) == 1  # the past date never fires
        clock.now = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
        assert await timers.fire_due() == 1
        assert by_type[CRON].next_at == datetime(2026, 3, 3, 8, 30, tzinfo=UTC)  # Tuesday
        clock.now = datetime(2026, 3, 2, 8, 45, tzinfo=UTC)
        assert await timers.fire_due() == 1
        assert by_type[DATE].next_at is None
        clock.now = datetime(2026, 3, 6, 9, 0, tzinfo=UTC)  # Friday, after four missed days
        assert await timers.fire_due() == 1
        assert by_type[CRON].next_at == datetime(2026, 3, 9, 8, 30, tzinfo=UTC)  # Monday: weekends skipped
        assert len(await fired(squall, "demo.cron")) == 2
        assert len(await fired(squall, "demo.date")) == 1
        assert await fired(squall, "demo.past") == []
    finally:
        await squall.close()


def test_bad_schedules_are_load_errors_naming_the_file(home: Path) -> None:
    make_pack(home, {
        "good": timer_rule("good", "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 5}}"),
        "zone": timer_rule("zone", "{type: core.st2.CronTimer, parameters: {minute: 5, timezone: Mars/Base}}"),
        "weekday": timer_rule("weekday", "{type: core.st2.CronTimer, parameters: {day_of_week: funday}}"),
        "unit": timer_rule("unit", "{type: core.st2.IntervalTimer, parameters: {unit: fortnights, delta: 1}}"),
        "date": timer_rule("date", "{type: core.st2.DateTimer, parameters: {date: 'not a date'}}"),
    })
    from bot.app import load_packs
    from engine.config import load_config

    rules, errors = load_rules(load_packs(load_config(home / "config.yml")))
    assert [r.name for r in rules if r.pack == "demo"] == ["good"]
    messages = {Path(e.file).stem: e.reason for e in errors}
    assert "Mars/Base" in messages["zone"] and "not a valid" in messages["zone"]
    assert "funday" in messages["weekday"]
    assert "fortnights" in messages["unit"]
    assert "not a date" in messages["date"]


def test_schedule_names_the_problem() -> None:
    with pytest.raises(ValueError, match='"delta" must be a whole number'):
        schedule(INTERVAL, {"unit": "seconds", "delta": 0})
    with pytest.raises(ValueError, match='"date" is required'):
        schedule(DATE, {})


async def test_the_loop_fires_on_the_real_clock(home: Path) -> None:
    make_pack(home, {
        "tick": timer_rule("tick", "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 1}}"),
    })
    squall = await started(home)
    loop = asyncio.create_task(squall.timers.run())
    try:
        for _ in range(200):
            if await fired(squall, "demo.tick"):
                break
            await asyncio.sleep(0.05)
        runs = await fired(squall, "demo.tick")
        assert runs and runs[0]["status"] == "succeeded"
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await squall.close()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


EVERY10 = {"key": "every10", "type": INTERVAL, "parameters": {"unit": "seconds", "delta": 10}}
EVERY5M = {"key": "every5m", "type": INTERVAL, "parameters": {"unit": "minutes", "delta": 5}}


class Lead:
    """A lead the test hands from one node to another (`engine.leader`'s lock does it between processes)."""

    def __init__(self, leads: bool) -> None:
        self.leads = leads

    def lead(self) -> bool:
        return self.leads

    def close(self) -> None:
        self.leads = False

    def holder(self) -> str | None:
        return PROCESS_NAME if self.leads else None


class Node:
    """One `squall serve` process's timers on a shared database: what it fires is stored as
    `TriggerService.dispatch` stored it before instances carried their run's own time (at its clock's
    now, with the timer's parameters), `lag` after it: `dispatch` stamped the instance as it stored it,
    after the look at the lead (37 ms under load). `STORED_LAG` still covers such rows; the tests below
    `led_timers` store through the service itself."""

    def __init__(self, store: Store, clock: Clock, *, leads: bool, lag: timedelta = timedelta(0)) -> None:
        self.store, self.clock, self.lag = store, clock, lag
        self.lead = Lead(leads)
        self.fired: list[datetime] = []
        self.timers = TimerService(self.dispatch, clock, leader=self.lead, history=self.history)

    def start(self, moment: datetime, *wanted: dict) -> Node:
        self.clock.now = moment
        self.timers.sync(wanted or [EVERY10])
        return self

    async def dispatch(self, trigger_ref: str, payload: dict, *, parameters: dict, trace_tag: str,
                       **_run: object) -> None:
        """Stored as an older Squall stored it: stamped `lag` after the run fired, not with its own time
        and id (`_run`, `engine.timers.occurrence`), as the rows `STORED_LAG` still covers were."""
        store_instance(self.store, trigger_ref, parameters, self.clock() + self.lag)
        self.fired.append(self.clock())

    async def history(self, trigger_ref: str, parameters: dict, since: datetime) -> datetime | None:
        return self.store.trigger_instance_latest(trigger_ref, parameters, since)

    async def fire_at(self, moment: datetime) -> int:
        self.clock.now = moment
        return await self.timers.fire_due()


def store_instance(store: Store, trigger_ref: str, parameters: dict | None, when: datetime) -> None:
    store.trigger_instance_add({"id": uuid.uuid4().hex, "trigger": trigger_ref, "occurrence_time": when,
                                "payload": {"executed_at": str(when), "schedule": None}, "status": "processed",
                                "trace_tag": None, "trigger_parameters": parameters or None})


def hand_over(old: Node, new: Node) -> None:
    old.lead.leads, new.lead.leads = False, True


@pytest.fixture
def shared_store(database_url: str):
    store = Store.open(database_url)
    try:
        yield store
    finally:
        store.close()


async def test_a_follower_that_takes_over_fires_one_interval_after_the_leaders_last_run(
        shared_store: Store) -> None:
    """The follower started 3 s after the leader: its own runs would be at 13, 23, 33... It takes the
    lead at 21, after the leader's run at 20: the next run is at 30, not at its own 23."""
    clock = Clock(T0)
    a = Node(shared_store, clock, leads=True).start(T0)
    b = Node(shared_store, clock, leads=False).start(at(3))
    assert await a.fire_at(at(10)) == 1
    assert await b.fire_at(at(13)) == 0
    assert await a.fire_at(at(20)) == 1
    hand_over(a, b)
    assert await b.fire_at(at(23)) == 0  # it leads now, but its own phase is not the timer's
    assert b.timers.next_due() == at(30)
    assert await b.fire_at(at(30)) == 1
    assert await b.fire_at(at(40)) == 1
    assert a.fired == [at(10), at(20)] and b.fired == [at(30), at(40)]


async def test_a_follower_looks_for_the_lead_between_its_own_runs(shared_store: Store) -> None:
    """`run` asks every `FOLLOWER_LOOK` seconds while it follows (`look`): a node that took the lead
    at 21 is in step before its own run at 23, and fires at 30."""
    clock = Clock(T0)
    a = Node(shared_store, clock, leads=True).start(T0)
    b = Node(shared_store, clock, leads=False).start(at(3))
    assert await a.fire_at(at(10)) == 1 and await b.fire_at(at(13)) == 0 and await a.fire_at(at(20)) == 1
    clock.now = at(21)
    assert not await b.timers.look()
    assert b.timers.next_due() == at(23)  # a follower keeps its own schedule
    hand_over(a, b)
    assert await b.timers.look()
    assert b.timers.next_due() == at(30)
    assert await b.fire_at(at(23)) == 0 and await b.fire_at(at(30)) == 1
    assert b.fired == [at(30)]


async def test_a_takeover_just_after_a_missed_run_fires_it_once_within_the_grace(shared_store: Store) -> None:
    """The leader died just before its run at 30; the follower (own runs at 33, 43...) takes over at
    33: 3 s late, within the grace, it fires that run once now and goes on at 40, not at 43."""
    clock = Clock(T0)
    a = Node(shared_store, clock, leads=True).start(T0)
    b = Node(shared_store, clock, leads=False).start(at(3))
    assert await a.fire_at(at(10)) == 1 and await a.fire_at(at(20)) == 1
    assert await b.fire_at(at(23)) == 0
    clock.now = at(29)
    hand_over(a, b)
    assert await b.fire_at(at(33)) == 1
    assert await b.fire_at(at(33)) == 0  # once
    assert b.timers.next_due() == at(40)
    assert await b.fire_at(at(40)) == 1
    assert a.fired == [at(10), at(20)] and b.fired == [at(33), at(40)]


async def test_a_takeover_long_after_a_missed_run_waits_for_the_next_one(shared_store: Store) -> None:
    """Missed by more than the grace, a run is skipped: the next comes on the timer's phase."""
    late = TAKEOVER_GRACE + timedelta(seconds=10)
    assert late < timedelta(minutes=5)  # the follower's own run falls between the timer's two
    clock = Clock(T0)
    a = Node(shared_store, clock, leads=True).start(T0, EVERY5M)
    b = Node(shared_store, clock, leads=False).start(T0 + late, EVERY5M)  # its own runs: 300 s + late...
    assert await a.fire_at(at(300)) == 1
    assert await b.fire_at(at(300) + late) == 0
    clock.now = at(599)
    hand_over(a, b)  # the leader died a second before its run at 600
    assert await b.fire_at(at(600) + late) == 0
    assert b.timers.next_due() == at(900)
    assert await b.fire_at(at(900)) == 1
    assert a.fired == [at(300)] and b.fired == [at(900)]


async def test_with_no_run_of_its_own_stored_a_timer_starts_one_interval_after_now(shared_store: Store) -> None:
    """Runs of other timers of the type (another interval, one more parameter) are not this timer's."""
    store_instance(shared_store, INTERVAL, {"unit": "seconds", "delta": 30}, T0 - timedelta(seconds=5))
    store_instance(shared_store, INTERVAL, {"unit": "seconds", "delta": 10, "timezone": "UTC"},
                   T0 - timedelta(seconds=4))
    store_instance(shared_store, INTERVAL, None, T0 - timedelta(seconds=3))
    clock = Clock(T0)
    node = Node(shared_store, clock, leads=True).start(T0)
    assert await node.timers.look()
    assert node.timers.next_due() == at(10)
    assert await node.fire_at(at(10)) == 1 and node.fired == [at(10)]


async def test_a_restarted_node_keeps_the_phase_and_never_fires_a_missed_run_twice(shared_store: Store) -> None:
    """A single node that restarts takes the lead at its start: the same rule as a takeover."""
    clock = Clock(T0)
    first = Node(shared_store, clock, leads=True).start(T0)
    assert await first.fire_at(at(10)) == 1 and await first.fire_at(at(20)) == 1
    first.lead.close()

    again = Node(shared_store, clock, leads=True).start(at(25))  # restarted between two runs
    assert await again.timers.look() and again.timers.next_due() == at(30)  # not 35
    assert await again.fire_at(at(30)) == 1
    again.lead.close()

    # Down while the runs at 40, 50 and 60 were due: the latest, 2 s ago, fires once; no burst.
    late = Node(shared_store, clock, leads=True).start(at(62))
    assert await late.timers.look()
    assert await late.fire_at(at(62)) == 1
    assert await late.fire_at(at(62)) == 0
    assert late.timers.next_due() == at(70)
    late.lead.close()

    # Down for longer than two intervals and the grace: nothing recent to keep in step with.
    start = at(62) + 2 * timedelta(seconds=10) + TAKEOVER_GRACE + timedelta(seconds=5)
    fresh = Node(shared_store, clock, leads=True).start(start)
    assert await fresh.timers.look() and fresh.timers.next_due() == start + timedelta(seconds=10)
    assert (first.fired, again.fired, late.fired) == ([at(10), at(20)], [at(30)], [at(62)])


#: How much later than a run's own time its instance is stored (`STORED_LAG`), as measured under load.
LAG = timedelta(milliseconds=37)
CRON_EVERY10 = {"key": "cron10", "type": CRON, "parameters": {"second": "*/10"}}


async def test_a_node_that_regains_the_lead_on_its_own_run_fires_it_once(shared_store: Store) -> None:
    """PostgreSQL was away across the run at 20, so the leader could not tell it led and let the run
    pass; back, its first look is at its own run at 30. The stored phase (10.037) put that run 37 ms
    ahead and the one at 20 missed: it fired the missed run at 30 and the next 37 ms later, the action
    twice. The missed run merges with the one due now: one run, and every 10 s from there."""
    clock = Clock(T0)
    node = Node(shared_store, clock, leads=True, lag=LAG).start(T0)
    assert await node.fire_at(at(10)) == 1
    node.lead.leads = False
    assert await node.fire_at(at(20)) == 0
    node.lead.leads = True
    assert await node.fire_at(at(30)) + await node.fire_at(at(30) + LAG) == 1
    assert await node.fire_at(at(30) + 2 * LAG) == 0
    assert node.timers.next_due() == at(40) + LAG
    assert await node.fire_at(at(40) + LAG) == 1
    assert node.fired == [at(10), at(30) + LAG, at(40) + LAG]


async def test_a_takeover_that_looks_just_before_a_stored_runs_tick_fires_once(shared_store: Store) -> None:
    """The leader, cut off from the database at 25, let its run at 30 pass and held the lock until 39;
    the follower's first look as leader (every `FOLLOWER_LOOK`) came at 40, 37 ms before the stored
    phase's run: one run, not the missed one at 40 and the next at 40.037."""
    clock = Clock(T0)
    a = Node(shared_store, clock, leads=True, lag=LAG).start(T0)
    b = Node(shared_store, clock, leads=False, lag=LAG).start(at(3))
    assert await a.fire_at(at(10)) == 1 and await a.fire_at(at(20)) == 1
    a.lead.leads = False
    assert await a.fire_at(at(30)) == 0 and await b.fire_at(at(33)) == 0
    clock.now = at(39)
    b.lead.leads = True
    clock.now = at(40)
    assert await b.timers.look()
    assert await b.fire_at(at(40)) + await b.fire_at(at(40) + LAG) == 1
    assert b.timers.next_due() == at(50) + LAG
    assert a.fired == [at(10), at(20)] and b.fired == [at(40) + LAG]


async def test_a_restart_on_a_stored_runs_tick_fires_the_missed_run_once(shared_store: Store) -> None:
    """A single node down across its run at 30 that starts again at 40, 37 ms before the stored
    phase's run: at most the one run the restart missed, not it and the next 37 ms apart."""
    clock = Clock(T0)
    first = Node(shared_store, clock, leads=True, lag=LAG).start(T0)
    assert await first.fire_at(at(10)) == 1 and await first.fire_at(at(20)) == 1
    first.lead.close()
    again = Node(shared_store, clock, leads=True, lag=LAG).start(at(40))
    assert await again.timers.look()
    assert await again.fire_at(at(40)) + await again.fire_at(at(40) + LAG) == 1
    assert again.timers.next_due() == at(50) + LAG
    assert first.fired == [at(10), at(20)] and again.fired == [at(40) + LAG]


async def test_a_cron_timer_that_regains_the_lead_on_its_own_run_fires_it_once(shared_store: Store) -> None:
    """Cron times are absolute and a takeover reads no stored phase for them: the run due when the
    lead comes back fires once, the one that passed without a leader is let go."""
    clock = Clock(T0)
    node = Node(shared_store, clock, leads=True, lag=LAG).start(at(1), CRON_EVERY10)
    assert await node.fire_at(at(10)) == 1
    node.lead.leads = False
    assert await node.fire_at(at(20)) == 0
    node.lead.leads = True
    assert await node.fire_at(at(30)) + await node.fire_at(at(30) + LAG) == 1
    assert node.timers.next_due() == at(40)
    assert node.fired == [at(10), at(30)]


async def test_serve_picks_the_phase_up_from_the_stored_instances(home: Path) -> None:
    """As `squall serve` builds it (with its database's history), the timer reads the runs that
    another process stored: here one of every 10 s at 20, so a process starting at 27 fires at 30."""
    make_pack(home, {
        "every10": timer_rule("every10", "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 10}}"),
    })
    squall = await started(home)
    try:
        store_instance(squall.db.store, INTERVAL, {"unit": "seconds", "delta": 10}, at(20))
        store_instance(squall.db.store, INTERVAL, {"unit": "seconds", "delta": 30}, at(25))
        timers = await with_clock(squall, Clock(at(27)))
        assert timers.next_due() == at(37)  # its own start's phase, until it knows it leads
        assert await timers.look()
        assert timers.next_due() == at(30)
    finally:
        await squall.close()


@pytest.mark.postgres
async def test_of_several_processes_on_one_database_only_the_leader_fires(database_url: str) -> None:
    """Two `squall serve` processes on one database: the timers fire once, and when the leader
    goes the other takes over with what comes next (not what the old leader already fired)."""
    clock = Clock(T0)
    fired: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(name: str):
        async def dispatch(_type: str, payload: dict, **_kw) -> None:
            fired[name].append(payload["executed_at"])
        return dispatch

    engines = [create_engine(database_url), create_engine(database_url)]
    leads = [leadership(engine) for engine in engines]
    a, b = (TimerService(recorder(n), clock, leader=lead) for n, lead in zip("ab", leads, strict=True))
    wanted = [{"key": "every10", "type": INTERVAL, "parameters": {"unit": "seconds", "delta": 10}}]
    try:
        a.sync(wanted)
        b.sync(wanted)
        clock.now = T0 + timedelta(seconds=10)
        assert await a.fire_due() == 1
        assert await b.fire_due() == 0  # a leads; b only keeps its schedule
        clock.now = T0 + timedelta(seconds=20)
        assert await b.fire_due() == 0
        assert await a.fire_due() == 1
        leads[0].close()  # the leader stops
        clock.now = T0 + timedelta(seconds=30)
        assert await b.fire_due() == 1
        assert fired == {"a": [str(T0 + timedelta(seconds=10)), str(T0 + timedelta(seconds=20))],
                         "b": [str(T0 + timedelta(seconds=30))]}
    finally:
        for lead in leads:
            lead.close()
        for engine in engines:
            engine.dispose()


@pytest.mark.postgres
def test_a_lead_dies_with_its_holder(database_url: str, tmp_path: Path) -> None:
    """A process that dies holding the lead (no clean close) hands it on: the lock is the kernel's
    or the database session's, never a row someone must clean up. Meanwhile the others can name it."""
    script = tmp_path / "hold.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from engine.leader import leadership\n"
        "from engine.storage import create_engine\n"
        "lead = leadership(create_engine(sys.argv[1]))\n"
        "assert lead.lead()\n"
        "print('leading', flush=True)\n"
        "sys.stdin.readline()\n"
        "os._exit(0)\n"
    )
    holder = subprocess.Popen([sys.executable, str(script), database_url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    engine = create_engine(database_url)
    lead = leadership(engine)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leading"
        assert not lead.lead()
        assert lead.holder() == f"squall {holder.pid}@{socket.gethostname()}"[:63]  # named for the status page
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while not lead.lead():  # PostgreSQL notices the dropped session at once or within moments
            assert time.monotonic() < deadline, "the lead was not released when its holder died"
            time.sleep(0.05)
        assert lead.holder() == PROCESS_NAME
    finally:
        holder.kill()
        lead.close()
        engine.dispose()


async def test_an_interval_timer_goes_on_after_the_wall_clock_steps_back() -> None:
    """NTP stepped the wall clock back an hour: an every-10-s timer's next run stayed at the old
    clock's time, and it fired nothing for that hour. A next run more than one interval ahead can only
    come from a clock that went back: it is put one interval after now; the runs go on every 10 s."""
    clock = Clock(T0)
    fired: list[datetime] = []

    async def dispatch(_type: str, payload: dict, **_kw: object) -> None:
        fired.append(clock())

    timers = TimerService(dispatch, clock)
    timers.sync([EVERY10])
    clock.now = at(10)
    assert await timers.fire_due() == 1
    clock.now = at(15) - timedelta(hours=1)  # stepped back
    assert timers.next_due() == at(25) - timedelta(hours=1)  # what `run` sleeps until: one interval away
    assert await timers.fire_due() == 0
    for seconds in (25, 35, 45):
        clock.now = at(seconds) - timedelta(hours=1)
        assert await timers.fire_due() == 1
    assert fired == [at(10), *(at(s) - timedelta(hours=1) for s in (25, 35, 45))]


async def test_a_step_back_shorter_than_the_interval_keeps_the_timers_phase() -> None:
    """A clock that goes back less far than the next run is ahead (a small NTP correction) leaves the
    next run where it was, still within one interval: it comes that much later, as a cron time would."""
    clock = Clock(T0)
    timers = TimerService(lambda *_a, **_kw: asyncio.sleep(0), clock)
    timers.sync([EVERY10])
    clock.now = at(10)
    assert await timers.fire_due() == 1
    clock.now = at(18)
    assert await timers.fire_due() == 0
    clock.now = at(15)  # 3 s back: the next run (20) is 5 s away, within one interval
    assert await timers.fire_due() == 0
    assert timers.next_due() == at(20)


async def test_a_cron_timer_keeps_its_set_time_when_the_wall_clock_steps_back() -> None:
    """Cron and date times are absolute: a clock that went back reaches them again later, as classic
    cron and APScheduler do. Only interval timers are put back one interval from now."""
    clock = Clock(T0)
    timers = TimerService(lambda *_a, **_kw: asyncio.sleep(0), clock)
    clock.now = at(60)
    timers.sync([{"key": "hourly", "type": CRON, "parameters": {"minute": 0}}])
    assert timers.next_due() == T0 + timedelta(hours=1)
    clock.now = at(60) - timedelta(hours=3)
    assert timers.next_due() == T0 + timedelta(hours=1)


# -- one stored instance per scheduled run, whoever fires it and however late its insert comes -----------

TICK_EVERY10 = "{type: core.st2.IntervalTimer, parameters: {unit: seconds, delta: 10}}"
TICK_CRON10 = "{type: core.st2.CronTimer, parameters: {second: '*/10'}}"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The test's clock, which `TriggerService.dispatch` reads too where it stamps an instance by the
    time it stores it (the wall clock, in a running service, that the timers also read)."""
    moved = Clock(T0)
    monkeypatch.setattr("engine.triggers.utcnow", moved)
    return moved


def led_timers(squall: Squall, clock: Clock, stall: timedelta = timedelta(0),
               meanwhile: list[Callable[[], Awaitable[None]]] | None = None) -> TimerService:
    """The app's timers on `clock`, led by its real lead (`engine.leader`'s lock beside the database), storing
    through its `TriggerService`. Each store comes `stall` after the look at the lead (a database that
    stalled): the clock moves on, and the next of `meanwhile` runs then (what another process did)."""

    async def stalled(*args: Any, **kwargs: Any) -> Any:
        clock.now += stall
        if meanwhile:
            await meanwhile.pop(0)()
        return await squall.triggers.dispatch(*args, **kwargs)

    squall.timers = TimerService(stalled, clock, leader=squall.leader, history=squall.timers.history)
    squall._follow_rules()
    return squall.timers


async def stored_runs(*squalls: Squall) -> list[datetime]:
    """When the stored instances of the `tick` rule's timer occurred, oldest first, once its rule acted
    on every one of them (in whichever app processed it)."""
    for squall in squalls:
        await squall.triggers.settle()
        await squall.rules.settle()
    enforcements = await squalls[0].rules.enforcements(rule="demo.tick")
    instances = [await squalls[0].triggers.get(e["trigger_instance_id"]) for e in enforcements]
    return sorted(datetime.fromisoformat(i["occurrence_time"].replace("Z", "+00:00")) for i in instances)


@pytest.mark.parametrize("trigger", [TICK_EVERY10, TICK_CRON10], ids=["interval", "cron"])
async def test_a_run_a_stalled_leader_and_its_successor_both_fire_is_one_instance(
        home: Path, clock: Clock, trigger: str, caplog: pytest.LogCaptureFixture) -> None:
    """Two `squall serve` on one database. The leader looked at the lead for its run at 30, then its
    insert stalled 2 s; meanwhile it lost the lead and the other took it at 32 and fired the run at 30
    (within the takeover's grace: nobody had stored it). The stalled insert then landed: two instances
    of one run, the action twice. Both firings are of the run scheduled at 30: one instance, one run,
    and the second firing is refused as such (said at INFO), not a failed insert."""
    make_pack(home, {"tick": timer_rule("tick", trigger)})
    a, b = await started(home), await started(home)
    try:
        took_over: list[int] = []

        async def b_takes_over() -> None:
            a.leader.close()  # its connection to the database dropped, say
            assert await b.timers.look()  # what `run` asks every `FOLLOWER_LOOK` s while it follows
            took_over.append(await b.timers.fire_due())

        meanwhile: list[Callable[[], Awaitable[None]]] = []
        a_timers = led_timers(a, clock, stall=timedelta(seconds=2), meanwhile=meanwhile)
        clock.now = at(3)
        b_timers = led_timers(b, clock)
        for seconds in (10, 20):
            clock.now = at(seconds)
            assert await a_timers.fire_due() == 1
            clock.now = at(seconds + 3)
            assert await b_timers.fire_due() == 0  # a follower lets its own schedule's runs pass
        clock.now = at(30)
        meanwhile.append(b_takes_over)
        with caplog.at_level(logging.INFO, logger="engine.timers"):
            ran_for_30 = await a_timers.fire_due()
        assert took_over == [1]
        assert ran_for_30 + took_over[0] == 1
        said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "engine.timers"]
        assert [level for level, message in said if "stored already" in message] == [logging.INFO]
        assert not [message for level, message in said if level >= logging.WARNING]
        assert await stored_runs(a, b) == [at(10), at(20), at(30)]
        assert b_timers.next_due() == at(40)
        clock.now = at(40)
        assert await b_timers.fire_due() == 1 and await a_timers.fire_due() == 0
        assert await stored_runs(a, b) == [at(10), at(20), at(30), at(40)]
    finally:
        await a.close()
        await b.close()


async def test_a_lead_regained_after_inserts_that_stalled_past_the_stored_lag_fires_each_run_once(
        home: Path, clock: Clock) -> None:
    """Every insert stalls 1.5 s after the look at the lead, more than `STORED_LAG`. The process lost
    the lead across its run at 20 (another held it) and regained it at 30. Stamped as stored, its run
    at 10 put the phase at 11.5: the missed run fired at 30 and the next at 31.5, the action twice for
    the one run at 30. Each instance carries its scheduled time: the run at 30 fires once, in phase."""
    make_pack(home, {"tick": timer_rule("tick", TICK_EVERY10)})
    squall = await started(home)
    other = leadership(squall.db.store.engine)  # another `squall serve` on the database
    try:
        timers = led_timers(squall, clock, stall=timedelta(milliseconds=1500))
        clock.now = at(10)
        assert await timers.fire_due() == 1
        clock.now = at(15)
        squall.leader.close()
        assert other.lead()
        clock.now = at(20)
        assert await timers.fire_due() == 0
        clock.now = at(29)
        other.close()
        clock.now = at(30)
        ran = await timers.fire_due()
        ran += await timers.fire_due()  # the clock is at 31.5 now, where the stored phase's run would be
        assert ran == 1
        assert timers.next_due() == at(40)
        assert await stored_runs(squall) == [at(10), at(30)]
    finally:
        other.close()
        await squall.close()


async def test_a_coalesced_run_stands_for_the_latest_it_covers(home: Path, clock: Clock) -> None:
    """The leader's loop was held from 10 to 45 (the runs at 20, 30 and 40 came due): it fires once, as
    the run at 40, the latest that came. A process that takes over at 47 goes on at 50: neither the run
    at 40 again (the oldest run covered, 20, would put that within the grace) nor one at 55."""
    make_pack(home, {"tick": timer_rule("tick", TICK_EVERY10)})
    a, b = await started(home), await started(home)
    try:
        a_timers = led_timers(a, clock)
        clock.now = at(3)
        b_timers = led_timers(b, clock)
        clock.now = at(10)
        assert await a_timers.fire_due() == 1
        clock.now = at(45)
        assert await a_timers.fire_due() == 1 and a_timers.next_due() == at(50)
        a.leader.close()
        clock.now = at(47)
        assert await b_timers.look()
        assert await b_timers.fire_due() == 0 and b_timers.next_due() == at(50)
        clock.now = at(50)
        assert await b_timers.fire_due() == 1
        assert await stored_runs(a, b) == [at(10), at(40), at(50)]
    finally:
        await a.close()
        await b.close()
