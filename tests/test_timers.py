"""Timers (spec §6.2): interval, date and cron, with time zones, on a controllable clock."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.app import Squall
from engine.leader import leadership
from engine.rules import load_rules
from engine.storage import create_engine
from engine.timers import CRON, DATE, INTERVAL, TimerService, schedule
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
    """Replace the app's timers with ones on `clock`, synced to the loaded rules."""
    squall.timers = TimerService(squall.triggers.dispatch, clock)
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
    assert [r.name for r in rules] == ["good"]
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
