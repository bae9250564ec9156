"""Timers: `core.st2.IntervalTimer`, `DateTimer` and `CronTimer`, fired for the rules that use them.

Each distinct parameter set that enabled rules give a timer type is one timer; its instances carry
those parameters, so a rule on "every 10 s" never fires for "every 60 s". APScheduler's triggers
compute the fire times (time zones, cron strings such as `*/5` and `mon-fri`); the loop here only
sleeps until the soonest one. Runs missed while the service was down or the loop was busy are
coalesced into one: a timer fires at most once per wake-up and then looks ahead from *now*, so a
restart never replays a burst of old runs.

With several `squall serve` processes on one database, each keeps every schedule but only the
leader (`engine.leader`) dispatches; the others let their timers' runs pass, so one that takes
over fires what comes next, not what the old leader already fired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine.leader import Leadership, leads

log = logging.getLogger(__name__)

INTERVAL, DATE, CRON = "core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer"
TIMER_TYPES = (INTERVAL, DATE, CRON)
_CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
#: The longest the loop sleeps at once, so a changed wall clock is noticed within this many seconds.
MAX_SLEEP = 60.0
_TICK = timedelta(microseconds=1)


def schedule(trigger_ref: str, parameters: Mapping[str, Any], start: datetime | None = None) -> BaseTrigger:
    """The APScheduler trigger for one timer; raises `ValueError` naming the bad parameter."""
    timezone = str(parameters.get("timezone") or "UTC")
    try:
        if trigger_ref == INTERVAL:
            unit, delta = parameters.get("unit"), parameters.get("delta")
            if unit not in ("weeks", "days", "hours", "minutes", "seconds"):
                raise ValueError(f'"unit" must be weeks, days, hours, minutes or seconds, not {unit!r}')
            if not isinstance(delta, int) or isinstance(delta, bool) or delta < 1:
                raise ValueError(f'"delta" must be a whole number of at least 1, not {delta!r}')
            # As StackStorm (APScheduler's default): the first run is one interval after the start.
            first = (start or utc_now()) + timedelta(**{unit: delta})
            return IntervalTrigger(**{unit: delta}, start_date=first, timezone=timezone)
        if trigger_ref == DATE:
            if not parameters.get("date"):
                raise ValueError('"date" is required, e.g. "2030-12-31 23:59:59"')
            try:
                return DateTrigger(run_date=str(parameters["date"]), timezone=timezone)
            except ValueError as exc:
                raise ValueError(f'"date" {parameters["date"]!r} is not a date and time like '
                                 f'"2030-12-31 23:59:59" ({exc})') from exc
        if trigger_ref == CRON:
            fields = {k: parameters[k] for k in _CRON_FIELDS if parameters.get(k) is not None}
            return CronTrigger(**fields, timezone=timezone)
    except ValueError:
        raise
    except Exception as exc:  # unknown time zones and the like: the library's message says which
        raise ValueError(f"{exc.__class__.__name__}: {exc}") from exc
    raise ValueError(f'"{trigger_ref}" is not a timer type')


@dataclass
class Timer:
    key: str
    type: str
    parameters: dict[str, Any]
    trigger: BaseTrigger
    next_at: datetime | None


def utc_now() -> datetime:
    return datetime.now(UTC)


class TimerService:
    """The timers enabled rules ask for; `sync` on every reload, `run` in `squall serve`."""

    def __init__(self, dispatch: Callable[..., Any], clock: Callable[[], datetime] = utc_now,
                 leader: Leadership | None = None) -> None:
        self.dispatch = dispatch
        self.clock = clock
        self.leader = leader
        self.timers: dict[str, Timer] = {}
        self._changed = asyncio.Event()

    def sync(self, wanted: Iterable[Mapping[str, Any]]) -> None:
        """Keep timers whose rules remain (their schedule goes on), add new ones, drop the rest."""
        now = self.clock()
        timers: dict[str, Timer] = {}
        for item in wanted:
            key = item["key"]
            if key in self.timers:
                timers[key] = self.timers[key]
                continue
            try:
                trigger = schedule(item["type"], item["parameters"], start=now)
            except ValueError as exc:  # rules are checked at load; this is a last guard
                log.warning("timer %s skipped: %s", key, exc)
                continue
            first = trigger.get_next_fire_time(None, now)
            if item["type"] == DATE and first is not None and first < now - timedelta(seconds=1):
                log.info("date timer %s is in the past; it will not fire", key)
                first = None
            timers[key] = Timer(key, item["type"], dict(item["parameters"]), trigger, first)
        self.timers = timers
        self._changed.set()

    def next_due(self) -> datetime | None:
        due = [t.next_at for t in self.timers.values() if t.next_at is not None]
        return min(due) if due else None

    async def fire_due(self) -> int:
        """Fire every timer whose time has come (once each, however late), and schedule its next run."""
        now = self.clock()
        fired = 0
        due = [t for t in self.timers.values() if t.next_at is not None and t.next_at <= now]
        if not due:
            return 0
        leading = await self._leading()
        for timer in due:
            scheduled = timer.next_at
            following = timer.trigger.get_next_fire_time(scheduled, now)
            if following is not None and following <= now:  # runs were missed: coalesce, no burst
                following = timer.trigger.get_next_fire_time(None, now + _TICK)
            timer.next_at = following
            if not leading:
                continue
            payload = {"executed_at": str(now.astimezone(UTC)), "schedule": None}
            trace_tag = f"{timer.type.removeprefix('core.')}-{uuid.uuid4().hex}"
            try:
                await self.dispatch(timer.type, payload, parameters=timer.parameters, trace_tag=trace_tag)
                fired += 1
            except Exception:
                log.exception("timer %s could not dispatch its trigger instance", timer.key)
        return fired

    async def _leading(self) -> bool:
        return self.leader is None or await leads(self.leader)

    async def run(self) -> None:
        """Sleep until the soonest timer, fire, repeat; a `sync` wakes it to look again."""
        while True:
            self._changed.clear()
            due = self.next_due()
            delay = MAX_SLEEP if due is None else (due - self.clock()).total_seconds()
            if delay > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives
                # as the wait ends, and this loop would then outlive the service's shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, MAX_SLEEP)):
                        await self._changed.wait()
                continue
            await self.fire_due()
