"""Timers: `core.st2.IntervalTimer`, `DateTimer` and `CronTimer`, fired for the rules that use them.

Each distinct parameter set that enabled rules give a timer type is one timer; its instances carry
those parameters, so a rule on "every 10 s" never fires for "every 60 s". APScheduler's triggers
compute the fire times (time zones, cron strings such as `*/5` and `mon-fri`); the loop here only
sleeps until the soonest one. Runs missed while the service was down or the loop was busy are
coalesced into one: a timer fires at most once per wake-up, as the latest run that came (`coalesced`),
and then looks ahead from *now*, so a restart never replays a burst of old runs.

Each firing is one run of the schedule, named by the time the schedule gave it, not by when it fired:
its trigger instance's `occurrence_time` is that time, and its id and delivery key are derived from the
timer and that time (`occurrence`). So a run fired twice, in one process or two (a leader whose insert
stalled while the lead passed to another process, which fired the run too), is one stored instance,
and its rules act once; the second firing is refused (`DuplicateDelivery`) and said at INFO.

With several `squall serve` processes on one database, each keeps every schedule but only the
leader (`engine.leader`) dispatches; the others let their timers' runs pass. An interval timer's
phase is the time its schedule started, which differs from process to process, so a process that
takes the lead (from a leader that went, or at its own start) first puts each interval timer back
in step with its newest stored run (`TimerService.look`): it fires what comes next, one interval
after what the old leader fired, never again what the old leader already fired. A run that came
due while nobody led fires once at the takeover if it is less than `TAKEOVER_GRACE` late, and is
let go otherwise; if the run after it is due within `STORED_LAG` (instances stored before they carried
their run's time lag it), the two are one run, fired once when that one comes. A single process that
restarts is the same case: rather than starting its interval timers over one interval after the restart, it keeps
their phase and fires at most the one run the restart made it miss, never a burst. Cron and date
timers keep their absolute times, and the same rule: a process that takes the lead (or starts) fires
the latest run of each that came due less than `TAKEOVER_GRACE` ago and that no process stored
(`missed_run`, checked against the stored history as for interval timers), once, at once, as that run
(`occurrence`: two processes that both fire it store it once). A run missed by more is not replayed,
nor any run before that latest one: a long outage ends without a burst, and a date timer whose time is
further back says at WARNING that it will not fire (`TimerService.sync`). Cron and date timers do not
need the one thing a wall clock that steps back (NTP) asks of interval timers: a next run more than one
interval ahead is put one interval after now (`TimerService._rewound`); it waited for the old clock's time.

Daylight saving changes are cron's (cron(8)): a cron timer set at wall-clock times (no `*` in its
hour, minute or second) runs once on the night the clocks go back, at the first of the two times the
repeated hour shows (`WallClockCronTrigger`); one with a `*` there runs by real time, in both.

A cron or date timer without `timezone` runs in UTC, where StackStorm (APScheduler's default) runs it
in the host's local zone: UTC does not move when a host's zone is changed. Where the host's zone is not
UTC, a pack moved from such a host would run hours off, so `squall serve` says each such timer once
(`TimerService.say_zones`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.expressions import AllExpression
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine.leader import Leadership, leads
from engine.storage import Database, DuplicateDelivery
from engine.triggers import binding

log = logging.getLogger(__name__)

INTERVAL, DATE, CRON = "core.st2.IntervalTimer", "core.st2.DateTimer", "core.st2.CronTimer"
TIMER_TYPES = (INTERVAL, DATE, CRON)
_CRON_FIELDS = ("year", "month", "day", "week", "day_of_week", "hour", "minute", "second")
#: The fields a `*` in which makes a cron job run by real time in a repeated hour (cron(8): hour, minute).
_CLOCK_FIELDS = ("hour", "minute", "second")
#: A date string that names its own offset (APScheduler's forms): no time zone applies to it.
_OWN_OFFSET = re.compile(r"(Z|[+-]\d\d:\d\d)$")
#: The longest the loop sleeps at once, so a changed wall clock is noticed within this many seconds.
MAX_SLEEP = 60.0
#: While another process leads, how often (seconds) the loop asks whether this one leads now, so a
#: takeover is in step with the old leader's runs before the next is due, not at this process's own.
FOLLOWER_LOOK = 5.0
#: How late a process that takes the lead (or starts) may be for a timer's run nobody fired and still
#: fire it (once, at once); a run missed by more is let go, and the timer waits for its next one. It is the
#: longest a takeover should take: a crashed leader's lock is free at once, and one cut off from the
#: database is dropped within ~25 s (`engine.leader`, with the server keepalives docs/scale-out.md
#: asks for); the others look each second (`squall serve`) and this loop every `FOLLOWER_LOOK`; a
#: restarted process needs some seconds of its own. Not min(interval, ...): the run that passed last
#: is less than one interval ago anyway, so a timer of a minute or less always fires its missed run.
TAKEOVER_GRACE = timedelta(seconds=60)
#: How much later than its run's own time a timer's instance stored by an older Squall may be, and so how
#: late the phase a takeover reads from it (`_catch_up`) may be: `TriggerService.dispatch` stamped
#: `occurrence_time` as it stored, after `fire_due`'s look at the lead (a database round trip), a
#: takeover's reads and the dispatches of the timers due before it in the same wake-up (37 ms was seen
#: under load). A run the stored phase puts less than this after now is the run due now (`resumed`):
#: fired apart from the run missed before it, the two were a burst, the action run twice 37 ms apart.
#: Instances now carry their run's own time (`occurrence`), however late they are stored: this is for the
#: rows stored before, and still merges a missed run into the one due within a second after it.
STORED_LAG = timedelta(seconds=1)
#: How long a run's delivery key (`occurrence`) is kept after its time: a second firing of a run comes
#: within `TAKEOVER_GRACE` of it (a takeover) or one stalled insert after it (SQLite's lock waits give up
#: after `LOCK_WAIT_SECONDS`); `TriggerService.purge_deliveries` forgets the key once the day is over.
RUN_KEPT = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICK = timedelta(microseconds=1)

#: `(trigger type, parameters, since)` → when the newest stored instance of that timer (same type,
#: same parameters) occurred, if at or after `since`; None if none did.
History = Callable[[str, dict[str, Any], datetime], Awaitable[datetime | None]]


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
            return WallClockCronTrigger(**fields, timezone=timezone)
    except ValueError:
        raise
    except Exception as exc:  # unknown time zones and the like: the library's message says which
        raise ValueError(f"{exc.__class__.__name__}: {exc}") from exc
    raise ValueError(f'"{trigger_ref}" is not a timer type')


def repeated(moment: datetime) -> bool:
    """Whether `moment` is the second time its zone's wall clock shows its local time: the clocks went
    back in between (01:30 EST on the night New York leaves summer time, after 01:30 EDT)."""
    return moment.replace(fold=0).astimezone(UTC) < moment.astimezone(UTC)


def repeat_end(moment: datetime) -> datetime:
    """The first instant after the repeated time `moment` at which the wall clock shows times once again
    (02:00 EST, for 01:30 EST on the night New York leaves summer time). It is at most one repeat's
    length after `moment`; found to the microsecond by halving, without the zone's transition table."""
    repeated_at = moment.astimezone(UTC)  # in UTC: arithmetic in the zone itself would be wall-clock time
    once_at = repeated_at + (repeated_at - moment.replace(fold=0).astimezone(UTC))
    while once_at - repeated_at > _TICK:
        middle = repeated_at + (once_at - repeated_at) / 2
        if repeated(middle.astimezone(moment.tzinfo)):
            repeated_at = middle
        else:
            once_at = middle
    return once_at


class WallClockCronTrigger(CronTrigger):
    """APScheduler's `CronTrigger`, which runs a job set at wall-clock times once when the clocks go back.

    APScheduler 3.11 (zoneinfo) gives both instants a repeated local time names (01:30 EDT, then 01:30
    EST an hour later), so a nightly job at 01:30 ran twice that night. cron runs it once, at the first
    (cron(8)), and so did StackStorm's APScheduler on pytz: the second is skipped. A job with a `*` (or
    `*/n`) in its hour, minute or second runs by the passing of real time (every hour, every 20 minutes
    of 01:00) and keeps both, as cron's wildcard jobs do. The clocks going forward need nothing: a time
    the skipped hour would have shown comes once, after it (02:30 runs at 03:30 EDT)."""

    @property
    def by_wall_clock(self) -> bool:
        """Whether the job is set at wall-clock times: no `*` in its hour, minute or second field (written,
        or left out before the last field given: APScheduler fills those with `*`)."""
        return not any(type(expression) is AllExpression  # its subclasses (a number, a range) are not `*`
                       for field in self.fields if field.name in _CLOCK_FIELDS for expression in field.expressions)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The next fire time after `previous_fire_time` (from `now` without one), a repeated wall-clock
        time of a job set at wall-clock times skipped."""
        following: datetime | None = super().get_next_fire_time(previous_fire_time, now)
        if not self.by_wall_clock:
            return following
        while following is not None and repeated(following):
            # From where the wall clock shows each time once again: APScheduler asked from inside the
            # repeated hour can give back the time it was asked after.
            following = super().get_next_fire_time(None, repeat_end(following))
        return following


def host_zone() -> str | None:
    """This host's local time zone by its abbreviations (`EST/EDT`): the zone StackStorm (APScheduler's
    default) runs a timer without `timezone` in. None when it keeps UTC's time all year (UTC, GMT)."""
    if time.timezone == 0 and (not time.daylight or time.altzone == 0):
        return None
    standard, summer = time.tzname
    return standard if not time.daylight or summer == standard else f"{standard}/{summer}"


def say_utc(trigger_ref: str, parameters: Mapping[str, Any]) -> None:
    """Warn, on a host whose zone is not UTC, that a cron or date timer without `timezone` runs in UTC
    (StackStorm ran it in the host's zone), and what to write instead."""
    if trigger_ref not in (CRON, DATE) or parameters.get("timezone"):
        return
    if trigger_ref == DATE and _OWN_OFFSET.search(str(parameters.get("date", "")).strip()):
        return
    zone = host_zone()
    if zone is None:
        return
    log.warning('%s %s has no "timezone": Squall runs it in UTC, where StackStorm ran it in the host\'s '
                "local zone (%s here), so its times differ from StackStorm's by that zone's offset. Add "
                "`timezone:` with the zone its times are meant in (an IANA name such as America/New_York, "
                "or UTC to keep these times) to the trigger parameters of the rules that use it "
                "(docs/migrating-from-stackstorm.md)",
                trigger_ref, json.dumps(dict(parameters), sort_keys=True, default=str), zone)


@dataclass
class Timer:
    key: str
    type: str
    parameters: dict[str, Any]
    trigger: BaseTrigger
    next_at: datetime | None
    #: The refs of the rules that use it (`sync`'s "rules"), so what is said of a run names whose action it was.
    rules: tuple[str, ...] = ()


def interval_of(parameters: Mapping[str, Any]) -> timedelta:
    """An interval timer's interval (its parameters were checked by `schedule`)."""
    return timedelta(**{parameters["unit"]: parameters["delta"]})


def utc_now() -> datetime:
    return datetime.now(UTC)


def resumed(last: datetime, every: timedelta, now: datetime) -> datetime:
    """When an interval timer whose newest stored run was at `last` runs next, in step with it.

    One interval after `last` if that is still ahead. Otherwise the runs since went unfired (the lead
    was changing hands, or the only process was down): the latest of them, if it passed less than
    `TAKEOVER_GRACE` ago (a time not after `now`: it fires at once, once), else the one after it.

    `last` is that run's own time (`occurrence_time`, `fire_due`'s scheduled time); an instance an older
    Squall stored carries when it was stored, up to `STORED_LAG` after that, so a run it puts less than
    that after `now` is by its own time due now: that run is returned, and the one missed before it is
    merged into it rather than fired a moment before it (a burst of two). Half an interval
    at most counts as that lag, so a short timer's missed run is not merged into one that is far off."""
    following = last + every
    if following > now:
        return following
    passed = last + every * ((now + min(STORED_LAG, every / 2) - last) // every)
    if passed > now:  # due within the stored lag: the run missed before it merges into it
        return passed
    return passed if now - passed < TAKEOVER_GRACE else passed + every


def coalesced(trigger: BaseTrigger, due: datetime, now: datetime) -> tuple[datetime, datetime | None]:
    """For a timer whose run at `due` has come (not after `now`): the run it fires now, and its next.

    Runs that came due since `due` (the loop was held, the host suspended) coalesce into one firing,
    which stands for the latest of them, as APScheduler's coalescing does. Stored as that run
    (`occurrence`), it is the run a takeover would fire for them (the same key), and a takeover's phase
    goes on one interval after it; stored as the oldest, the takeover would fire the latest again. A
    trigger tells only the first run from a moment on, so the latest is found by halving between `due`
    and `now`: some 40 looks after a day's stall, not one per run missed."""
    following = trigger.get_next_fire_time(due, now)
    if following is None or following > now:
        return due, following
    low, high = due, now + _TICK  # from `low` on, the first run is not after `now`; from `high` on, it is
    while high - low > _TICK:
        middle = low + (high - low) / 2
        first = trigger.get_next_fire_time(None, middle)
        if first is not None and first <= now:
            low = middle
        else:
            high = middle
    return trigger.get_next_fire_time(None, low) or due, trigger.get_next_fire_time(None, now + _TICK)


def occurrence(trigger_ref: str, parameters: Mapping[str, Any], scheduled: datetime) -> tuple[str, str]:
    """The trigger instance id and the delivery key of a timer's run at `scheduled` (its time by the
    schedule, whenever it fired): the same in every process and at every firing, so a run fired twice is
    stored once (the key makes the second `DuplicateDelivery`, the id is the primary key's as well) and
    its rules act once (their enforcements' ids derive from the instance's). The id is shaped as
    `engine.executions.new_id`'s and sorts by the run's time: its microsecond, then 40 bits of a hash of
    the timer (`engine.triggers.binding`, as rules name it) and the run."""
    at = scheduled.astimezone(UTC)
    digest = hashlib.sha256(f"{binding(trigger_ref, parameters)}\n{at.isoformat()}".encode()).hexdigest()
    return f"{(at - _EPOCH) // _TICK:014x}{digest[:10]}", f"timer {trigger_ref} {at.isoformat()} {digest}"


def missed_run(trigger: BaseTrigger, next_at: datetime | None, now: datetime) -> datetime | None:
    """The run of a cron or date timer that a process taking the lead (or starting) at `now` may still
    fire: the latest that came due less than `TAKEOVER_GRACE` before `now` (`coalesced`: the runs
    before it in the grace are one with it), None if there is none or it is the timer's own `next_at`
    (due anyway). Older runs are not replayed: a long outage ends without a burst of them."""
    first = trigger.get_next_fire_time(None, now - TAKEOVER_GRACE + _TICK)
    if first is None or first > now or now - first >= TAKEOVER_GRACE:  # a date timer's date, whenever it is
        return None
    latest, _following = coalesced(trigger, first, now)
    return None if next_at is not None and next_at <= latest else latest


def store_history(db: Database) -> History:
    """The `History` of the trigger instances stored in `db` (`Store.trigger_instance_latest`)."""

    async def latest(trigger_ref: str, parameters: dict[str, Any], since: datetime) -> datetime | None:
        return await db(db.store.trigger_instance_latest, trigger_ref, parameters, since)

    return latest


class TimerService:
    """The timers enabled rules ask for; `sync` on every reload, `run` in `squall serve`.

    `history` tells when each timer last fired (`store_history`); without it, interval timers keep
    their own start's phase."""

    def __init__(self, dispatch: Callable[..., Any], clock: Callable[[], datetime] = utc_now,
                 leader: Leadership | None = None, history: History | None = None) -> None:
        self.dispatch = dispatch
        self.clock = clock
        self.leader = leader
        self.history = history
        self.timers: dict[str, Timer] = {}
        self._changed = asyncio.Event()
        #: Whether this process led when it last looked: when that turns true, the timers catch up (`look`).
        self._led = False
        #: The timers `say_zones` has looked at: each is said at most once in the process's life.
        self._said: set[str] = set()

    def sync(self, wanted: Iterable[Mapping[str, Any]]) -> None:
        """Keep timers whose rules remain (their schedule goes on), add new ones, drop the rest.

        An item's optional "rules" (the refs of the rules that use it) is taken afresh at every sync, a kept
        timer's too: a reload can add or remove a rule on a timer that stays."""
        now = self.clock()
        timers: dict[str, Timer] = {}
        for item in wanted:
            key = item["key"]
            rules = tuple(sorted(item.get("rules") or ()))
            if key in self.timers:
                timers[key] = self.timers[key]
                timers[key].rules = rules
                continue
            try:
                trigger = schedule(item["type"], item["parameters"], start=now)
            except ValueError as exc:  # rules are checked at load; this is a last guard
                log.warning("timer %s skipped: %s", key, exc)
                continue
            first = trigger.get_next_fire_time(None, now)
            if item["type"] == DATE and first is not None and first < now - timedelta(seconds=1):
                # Within the grace, a start or takeover still fires it if nobody stored it; further back, it
                # says at WARNING that the run is lost if nobody did (`_catch_up`, which reads the history).
                if self._led:
                    log.info("date timer %s is in the past; it will not fire (a rule added while Squall runs "
                             "fires no run that came before it)", key)
                first = None
            timers[key] = Timer(key, item["type"], dict(item["parameters"]), trigger, first, rules)
        self.timers = timers
        self._changed.set()

    def next_due(self) -> datetime | None:
        """When the soonest timer runs (what `run` sleeps until), after `_rewound`."""
        self._rewound(self.clock())
        due = [t.next_at for t in self.timers.values() if t.next_at is not None]
        return min(due) if due else None

    def _due(self, now: datetime) -> list[Timer]:
        self._rewound(now)
        return [t for t in self.timers.values() if t.next_at is not None and t.next_at <= now]

    def _rewound(self, now: datetime) -> None:
        """Put each interval timer whose next run is more than one interval ahead one interval after
        `now`. Only a wall clock that went back (an NTP step) leaves a run that far ahead; the timer
        waited for the old clock's time and fired nothing for as long as the clock went back. Its new
        run is still at least one interval after its last by real time. Cron and date times are
        absolute and stay: the clock reaches them again, later."""
        for timer in self.timers.values():
            if timer.type != INTERVAL or timer.next_at is None:
                continue
            every = interval_of(timer.parameters)
            if timer.next_at - now > every:
                log.info("timer %s: the wall clock went back (its next run, %s, is more than one interval away); "
                         "it runs one interval from now", timer.key, timer.next_at.isoformat())
                timer.trigger = schedule(timer.type, timer.parameters, start=now)
                timer.next_at = now + every

    async def fire_due(self) -> int:
        """Fire every timer whose time has come (once each, however late, as its latest run: `coalesced`),
        and schedule its next run. Each firing is stored as its run (`occurrence`): one that this process
        or another stored already (a takeover while this one's insert stalled) is not stored again."""
        now = self.clock()
        fired = 0
        if not self._due(now):
            return 0
        leading = await self.look()
        for timer in self._due(now):  # a takeover may have moved them (`look`)
            scheduled, timer.next_at = coalesced(timer.trigger, timer.next_at or now, now)
            if not leading:
                continue
            payload = {"executed_at": str(now.astimezone(UTC)), "schedule": None}
            trace_tag = f"{timer.type.removeprefix('core.')}-{uuid.uuid4().hex}"
            run_at = scheduled.astimezone(UTC)  # as stored: SQLite keeps no zone
            instance_id, key = occurrence(timer.type, timer.parameters, run_at)
            try:
                await self.dispatch(timer.type, payload, parameters=timer.parameters, trace_tag=trace_tag,
                                    instance_id=instance_id, occurred_at=run_at, delivery=(key, run_at + RUN_KEPT))
                fired += 1
            except DuplicateDelivery as duplicate:
                log.info("timer %s: its run of %s was stored already (trigger instance %s), by this process or "
                         "another that led meanwhile; it is not fired again", timer.key, run_at.isoformat(),
                         duplicate.instance_id)
            except Exception:
                log.exception("timer %s could not dispatch its trigger instance", timer.key)
        return fired

    async def _leading(self) -> bool:
        return self.leader is None or await leads(self.leader)

    async def look(self) -> bool:
        """Whether this process leads. When it has just taken the lead (the first time too: a
        process that starts alone takes it at its start), each interval timer is first put in step
        with its newest stored run (`resumed`), so that a restart or a takeover neither fires early
        on this process's own phase nor late, and never fires again what was fired; a cron or date
        timer's run that nobody fired within the grace is made due (`missed_run`)."""
        leading = await self._leading()
        if leading and not self._led:
            await self._catch_up()
        self._led = leading
        return leading

    async def _catch_up(self) -> None:
        """Move each interval timer onto the phase of its newest run stored within the last two
        intervals and `TAKEOVER_GRACE`: enough for a takeover however late it comes, and only that
        many runs' rows to read. With none (a new timer; all processes down for longer), it keeps
        the phase of its own start: its first run one interval after that, as it always had.

        Make each cron or date timer's `missed_run` due now unless a run at or after it is stored (the
        old leader, or this process before its restart, fired it), and, for a cron timer, unless none of
        its runs ever was (a rule new at this start: its first run is its next one): fired as that run
        (`occurrence`), it is stored once even if another process catching up fires it too. Without a
        history, what was fired cannot be told: nothing is replayed."""
        if self.history is None:
            return
        for timer in list(self.timers.values()):
            now = self.clock()
            try:
                await (self._resume(timer, now) if timer.type == INTERVAL else self._fire_missed(timer, now))
            except Exception as exc:  # the schedule it has is the next best
                log.warning("timer %s keeps its own schedule: could not read when it last fired (%s)", timer.key, exc)

    async def _resume(self, timer: Timer, now: datetime) -> None:
        """An interval timer put on the phase of its newest run stored lately (`_catch_up`), if any."""
        assert self.history is not None
        every = interval_of(timer.parameters)
        last = await self.history(timer.type, timer.parameters, now - 2 * every - TAKEOVER_GRACE)
        if last is not None:
            timer.next_at = resumed(last, every, now)
            timer.trigger = schedule(timer.type, timer.parameters, start=timer.next_at - every)

    async def _fire_missed(self, timer: Timer, now: datetime) -> None:
        """A cron or date timer's `missed_run` made due now, unless it is stored or, for a cron timer, none of
        its runs ever was (a new rule: nothing missed it); a date too late for that is said (`_lost_date`)."""
        assert self.history is not None
        missed = missed_run(timer.trigger, timer.next_at, now)
        if missed is None:
            if timer.type == DATE and timer.next_at is None:
                await self._lost_date(timer, now)
            return
        if timer.type == CRON:  # its newest run whenever it was
            last = await self.history(timer.type, timer.parameters, _EPOCH)
            if last is None or last >= missed:
                return
        elif await self.history(timer.type, timer.parameters, missed) is not None:
            return
        log.info("timer %s: its run of %s came due while no process led (Squall stopped or restarting, or the "
                 "lead changing hands) and is not stored; less than TAKEOVER_GRACE late, it fires once, now",
                 timer.key, missed.astimezone(UTC).isoformat())
        timer.next_at = missed

    async def _lost_date(self, timer: Timer, now: datetime) -> None:
        """Say at WARNING a date timer's run that no process stored and that is too late to fire (more than
        `TAKEOVER_GRACE` past at a start or takeover): the run is lost. One stored in its time says nothing,
        however often Squall starts again."""
        date = timer.trigger.get_next_fire_time(None, now)
        if date is None or date > now - TAKEOVER_GRACE:
            return
        try:
            if await self.history(timer.type, timer.parameters, date) is not None:  # type: ignore[misc]
                return
        except Exception:  # the history's reader says nothing: nor need this
            return
        # The rules are named: the timer's key (type and parameters) does not tell whose action did not run.
        plural = "s" if len(timer.rules) > 1 else ""
        used_by = f" (used by rule{plural} {', '.join(timer.rules)})" if timer.rules else ""
        log.warning("date timer %s%s is more than %d s in the past and never fired; it will not fire: Squall fires "
                    "a run that came due while it was stopped or changing leader only if it is less than "
                    "TAKEOVER_GRACE (%d s) late, and replays none older (set a future date to run it)", timer.key,
                    used_by, TAKEOVER_GRACE.total_seconds(), TAKEOVER_GRACE.total_seconds())

    def say_zones(self) -> None:
        """Say each cron or date timer that runs in UTC for want of `timezone`, on a host whose zone is not
        UTC (`say_utc`), once: `run` calls it at each turn, so `squall serve` says a timer as its rule is
        loaded, and not again at every reload; a command that only loads the rules says nothing."""
        for timer in self.timers.values():
            if timer.key not in self._said:
                self._said.add(timer.key)
                say_utc(timer.type, timer.parameters)

    async def run(self) -> None:
        """Sleep until the soonest timer, fire, repeat; a `sync` wakes it to look again (and to say the
        timers it added that run in UTC for want of `timezone`: `say_zones`). While it
        does not lead, it asks every `FOLLOWER_LOOK` seconds, so a takeover catches up at once."""
        while True:
            self._changed.clear()
            self.say_zones()
            # Every timer type catches up when the lead comes (`_catch_up`), so look now, not at its run.
            following = not self._led and bool(self.timers)
            if following:
                following = not await self.look()
            due = self.next_due()
            delay = MAX_SLEEP if due is None else (due - self.clock()).total_seconds()
            if delay > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives
                # as the wait ends, and this loop would then outlive the service's shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, FOLLOWER_LOOK if following else MAX_SLEEP)):
                        await self._changed.wait()
                continue
            await self.fire_due()
