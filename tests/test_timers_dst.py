"""Cron timers across daylight saving changes, and the time zone of a cron timer that names none.

Each schedule is driven as `squall serve` drives it (`TimerService.sync`, then `next_due` and
`fire_due` in turn) on a clock that wakes just after each due time."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine import timers as timers_module
from engine.timers import CRON, DATE, INTERVAL, TimerService
from tests.test_timers import Clock

#: How long after a due time the clock wakes (`squall serve`'s loop is a little late, never early).
LATE = timedelta(milliseconds=3)


async def runs(parameters: dict[str, Any], start: datetime, end: datetime) -> list[datetime]:
    """The due times (UTC) at which a cron timer with `parameters` fired from `start` until `end`."""
    clock = Clock(start)
    fired: list[datetime] = []

    async def dispatch(_type: str, _payload: dict, **_kw: object) -> None:
        fired.append(clock() - LATE)

    timers = TimerService(dispatch, clock)
    timers.sync([{"key": "cron", "type": CRON, "parameters": parameters}])
    while (due := timers.next_due()) is not None and due < end:
        clock.now = due.astimezone(UTC) + LATE
        assert await timers.fire_due() == 1
    return fired


def local(times: list[datetime], zone: str) -> list[str]:
    """`times` as the wall clock of `zone` shows them, with the zone's abbreviation (EDT or EST)."""
    return [f"{t.astimezone(ZoneInfo(zone)):%m-%d %H:%M %Z}" for t in times]


async def test_a_daily_cron_timer_runs_once_on_the_night_the_clocks_go_back() -> None:
    """The reviewer's case: 01:30 New York time comes twice on 2027-11-07 (EDT, then EST an hour
    later). A nightly job runs once, at the first, as cron runs it; the next night at 01:30 EST."""
    nightly = {"hour": 1, "minute": 30, "timezone": "America/New_York"}
    fired = await runs(nightly, datetime(2027, 11, 6, 4, tzinfo=UTC), datetime(2027, 11, 9, 12, tzinfo=UTC))
    assert local(fired, "America/New_York") == [
        "11-06 01:30 EDT", "11-07 01:30 EDT", "11-08 01:30 EST", "11-09 01:30 EST"]


async def test_an_hourly_cron_timer_runs_in_the_repeated_hour_too() -> None:
    """`minute: 30` is every hour: the hour the clocks go back is a real hour, so it runs at 01:30
    EDT and again at 01:30 EST, one hour later, as cron runs a job whose hour is `*`."""
    hourly = {"minute": 30, "timezone": "America/New_York"}
    fired = await runs(hourly, datetime(2027, 11, 7, 4, tzinfo=UTC), datetime(2027, 11, 7, 8, tzinfo=UTC))
    assert local(fired, "America/New_York") == ["11-07 00:30 EDT", "11-07 01:30 EDT", "11-07 01:30 EST",
                                                "11-07 02:30 EST"]
    assert [t - fired[0] for t in fired] == [timedelta(hours=h) for h in range(4)]


@pytest.mark.parametrize(("parameters", "expected"), [
    # Hours named (a number, a range, a list) are wall-clock times: each runs once.
    ({"hour": "0-2", "minute": 30}, ["00:30 EDT", "01:30 EDT", "02:30 EST"]),
    ({"hour": "1,2", "minute": "15,45"}, ["01:15 EDT", "01:45 EDT", "02:15 EST", "02:45 EST"]),
    ({"hour": 1, "minute": 30, "second": "0-59/30"}, ["01:30:00 EDT", "01:30:30 EDT"]),
    # A `*` (or `*/n`) in the hour, minute or second is a frequency, as cron's wildcard jobs: both.
    ({"hour": "*/1", "minute": 30}, ["00:30 EDT", "01:30 EDT", "01:30 EST", "02:30 EST"]),
    ({"hour": 1, "minute": "*/20"}, ["01:00 EDT", "01:20 EDT", "01:40 EDT", "01:00 EST", "01:20 EST",
                                     "01:40 EST"]),
    ({"hour": 1, "minute": 30, "second": "*/30"}, ["01:30:00 EDT", "01:30:30 EDT", "01:30:00 EST",
                                                   "01:30:30 EST"]),
])
async def test_which_cron_timers_run_again_in_the_repeated_hour(parameters: dict[str, Any],
                                                                expected: list[str]) -> None:
    """Cron's rule (cron(8)): only a job with a `*` in its hour or minute runs in the repeated time;
    APScheduler's seconds field counts as a third such field."""
    fired = await runs({**parameters, "timezone": "America/New_York"},
                       datetime(2027, 11, 7, 4, tzinfo=UTC), datetime(2027, 11, 7, 8, tzinfo=UTC))
    shown = "%H:%M:%S %Z" if "second" in parameters else "%H:%M %Z"
    assert [f"{t.astimezone(ZoneInfo('America/New_York')):{shown}}" for t in fired] == expected


async def test_the_repeated_hour_is_found_in_any_zone() -> None:
    """Berlin repeats 02:00-03:00 (2027-10-31), not New York's 01:00: a job at 02:30 runs once."""
    fired = await runs({"hour": 2, "minute": 30, "timezone": "Europe/Berlin"},
                       datetime(2027, 10, 30, 0, tzinfo=UTC), datetime(2027, 11, 1, 12, tzinfo=UTC))
    assert local(fired, "Europe/Berlin") == ["10-30 02:30 CEST", "10-31 02:30 CEST", "11-01 02:30 CET"]


async def test_a_daily_cron_timer_in_the_skipped_hour_still_runs_once_when_the_clocks_go_forward() -> None:
    """02:30 does not exist in New York on 2027-03-14: the job runs at 03:30 EDT that day, once."""
    fired = await runs({"hour": 2, "minute": 30, "timezone": "America/New_York"},
                       datetime(2027, 3, 13, 5, tzinfo=UTC), datetime(2027, 3, 15, 12, tzinfo=UTC))
    assert local(fired, "America/New_York") == ["03-13 02:30 EST", "03-14 03:30 EDT", "03-15 02:30 EDT"]


@pytest.fixture
def host_in_new_york(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `time` says on a host whose local zone is America/New_York (as `TZ=America/New_York`)."""
    monkeypatch.setattr(time, "timezone", 5 * 3600)
    monkeypatch.setattr(time, "altzone", 4 * 3600)
    monkeypatch.setattr(time, "daylight", 1)
    monkeypatch.setattr(time, "tzname", ("EST", "EDT"))


def utc_host(monkeypatch: pytest.MonkeyPatch, tzname: tuple[str, str]) -> None:
    monkeypatch.setattr(time, "timezone", 0)
    monkeypatch.setattr(time, "altzone", 0)
    monkeypatch.setattr(time, "daylight", 0)
    monkeypatch.setattr(time, "tzname", tzname)


def zone_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "engine.timers" and r.levelno == logging.WARNING and "timezone" in r.getMessage()]


NO_ZONE = {"key": f"{CRON} nightly", "type": CRON, "parameters": {"hour": 1, "minute": 30}}
ZONED = {"key": f"{CRON} zoned", "type": CRON, "parameters": {"hour": 1, "minute": 30, "timezone": "UTC"}}
EVERY_MINUTE = {"key": f"{INTERVAL} m", "type": INTERVAL, "parameters": {"unit": "minutes", "delta": 1}}
ONE_DATE = {"key": f"{DATE} d", "type": DATE, "parameters": {"date": "2030-12-31 23:59:59"}}


@pytest.mark.usefixtures("host_in_new_york")
def test_a_cron_timer_without_a_zone_on_a_host_that_is_not_utc_is_said_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """StackStorm runs such a timer in the host's zone, Squall in UTC: a pack moved from a New York
    host would run its jobs four or five hours early. Said once per timer, naming the host's zone and
    what to write; a reload that keeps the timer does not repeat it."""
    caplog.set_level(logging.WARNING, logger="engine.timers")
    timers = TimerService(lambda *_a, **_kw: None, Clock(datetime(2027, 1, 1, tzinfo=UTC)))
    for _reload in range(2):
        timers.sync([NO_ZONE, ZONED, EVERY_MINUTE])
        timers.say_zones()
    said = zone_warnings(caplog)
    assert len(said) == 1, said
    assert '{"hour": 1, "minute": 30}' in said[0]
    assert "UTC" in said[0] and "EST" in said[0] and "timezone:" in said[0]
    assert timers.timers[NO_ZONE["key"]].next_at == datetime(2027, 1, 1, 1, 30, tzinfo=UTC)  # still UTC


@pytest.mark.usefixtures("host_in_new_york")
def test_a_date_timer_without_a_zone_is_said_too(caplog: pytest.LogCaptureFixture) -> None:
    """A DateTimer's date is read in the same zone, so the same move makes it fire hours off; one whose
    date names its own offset is not, whatever the zone."""
    caplog.set_level(logging.WARNING, logger="engine.timers")
    own_offsets = [{"key": f"{DATE} {date}", "type": DATE, "parameters": {"date": date}}
                   for date in ("2030-12-31T23:59:59+02:00", "2030-12-31 23:59:59Z")]
    timers = TimerService(lambda *_a, **_kw: None, Clock(datetime(2027, 1, 1, tzinfo=UTC)))
    timers.sync([ONE_DATE, *own_offsets])
    timers.say_zones()
    said = zone_warnings(caplog)
    assert len(said) == 1 and "2030-12-31 23:59:59" in said[0] and "+02:00" not in said[0]


@pytest.mark.parametrize("tzname", [("UTC", "UTC"), ("GMT", "GMT")])
def test_on_a_utc_host_nothing_is_said(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                      tzname: tuple[str, str]) -> None:
    """A host on UTC (or a zone always at UTC's offset) runs the timer at the same times as StackStorm."""
    utc_host(monkeypatch, tzname)
    caplog.set_level(logging.WARNING, logger="engine.timers")
    timers = TimerService(lambda *_a, **_kw: None, Clock(datetime(2027, 1, 1, tzinfo=UTC)))
    timers.sync([NO_ZONE, ONE_DATE])
    timers.say_zones()
    assert zone_warnings(caplog) == []


@pytest.mark.usefixtures("host_in_new_york")
async def test_only_the_running_loop_says_it(caplog: pytest.LogCaptureFixture) -> None:
    """Every command that loads the rules syncs the timers; only `squall serve` runs them (`run`), and
    only it says the zone, at its first turn: `squall rule list` stays quiet."""
    caplog.set_level(logging.WARNING, logger="engine.timers")
    timers = TimerService(lambda *_a, **_kw: None, Clock(datetime(2027, 1, 1, tzinfo=UTC)))
    timers.sync([NO_ZONE])
    assert zone_warnings(caplog) == []
    said = asyncio.Event()

    class Listen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "timezone" in record.getMessage():
                said.set()

    listener = Listen()
    logging.getLogger("engine.timers").addHandler(listener)
    loop = asyncio.create_task(timers.run())
    try:
        await asyncio.wait_for(said.wait(), timeout=10)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        logging.getLogger("engine.timers").removeHandler(listener)
    assert len(zone_warnings(caplog)) == 1


def test_a_host_on_london_time_is_not_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """London is at UTC's offset in winter only: its summer times differ, so it counts as not UTC."""
    monkeypatch.setattr(time, "timezone", 0)
    monkeypatch.setattr(time, "altzone", -3600)
    monkeypatch.setattr(time, "daylight", 1)
    monkeypatch.setattr(time, "tzname", ("GMT", "BST"))
    assert timers_module.host_zone() == "GMT/BST"
    utc_host(monkeypatch, ("UTC", "UTC"))
    assert timers_module.host_zone() is None


async def test_a_process_started_in_the_repeated_hour_leaves_the_nights_run_to_the_first_time() -> None:
    """Started at 01:10 EST, after the night's 01:30 EDT had passed while it was down: the job runs the
    next night, not at 01:30 EST, as a cron run missed while Squall was down is never run late."""
    fired = await runs({"hour": 1, "minute": 30, "timezone": "America/New_York"},
                       datetime(2027, 11, 7, 6, 10, tzinfo=UTC), datetime(2027, 11, 9, 0, tzinfo=UTC))
    assert local(fired, "America/New_York") == ["11-08 01:30 EST"]
