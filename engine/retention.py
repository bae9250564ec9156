"""History retention: what StackStorm's st2garbagecollector and its `st2-purge-*` tools do, on Squall's tables.

Squall keeps every execution, output chunk, chat reply and trigger instance unless asked to delete
them: by `retention.*` in the config (`RetentionSweep`, run by the lead `squall serve`'s housekeeping
once an hour) or by hand (`squall execution purge`, `squall trigger-instance purge`). What goes:

- An execution that ended (`COMPLETED`) before the cutoff, by its end time (its start when it has none),
  with what belongs to it alone: its workflow's tasks at every depth, their output chunks, their chat
  replies and their action tokens. A workflow goes whole: a task is never deleted while its workflow
  stays, and a task whose workflow is gone counts as a workflow of its own. A workflow with a task that
  has not ended stays whole, unless incomplete executions are asked for too (`--include-incomplete`,
  StackStorm's `--purge-incomplete`: those go by their start time).
- Nothing with a reply still `pending` in the outbox: nothing accepted is lost, and the reply's edit
  of its ack still finds the ack. Such an execution goes at a later purge, once the reply is sent or given up.
- With the executions (unless one action's are asked for), the chat replies that belong to no execution
  (help, errors) or to one that is gone, sent or failed, by their own age; never the outbox's keying
  rows (execution "", kind `keyed_since...`).
- `output_days`: the output chunks of executions that ended before that cutoff; the executions stay.
- Processed (or failed) trigger instances that occurred before the cutoff, with the rule enforcements
  they made (an enforcement is the instance's outcome, and it matters to "a rule acts once an instance"
  only while the instance is `pending` or `processing`, which are never deleted). An enforcement of a
  kept instance stays, even when the execution it names is gone, as with StackStorm's separate TTLs.
- `audit_days` (Squall's own; StackStorm's audit is a log file rotated outside it): audit log entries
  logged before that cutoff, by hand `squall audit purge`. Copy them first if they must be kept
  (`squall audit export`, or `audit.sinks` as they happen). A run that deleted any leaves a
  `retention.purge` entry saying what went and from when, so the trail shows its own gap.
- `deliveries` are never touched here: they expire on their own (`Store.deliveries_purge_expired`),
  and a `notified <trigger> <execution>` key deleted while its execution stays would let the sweep
  fire that execution's triggers a second time.

Each batch is one transaction (`BATCH_SIZE` rows of its kind, `SWEEP_BATCH_SIZE` in `squall serve`; a
workflow is never split), through the `Database` like every other call in `squall serve`, so chat
waits at most one batch, and a purge that fails keeps what its earlier batches did. A purge's audit
event (`retention.purge`, `cli.*.purge`, with its counts) is stored in the transaction of the batch that
ends it, never after it: an event the database does not take puts that batch back. The CLI's purges also
run the batches that end their phases in that transaction (`run`'s `closing`: a batch of each phase at
most), so a purge that fits in one batch a phase deletes nothing without its event; `squall serve`'s run
keeps one batch a call (`RetentionSweep._batch`), its event going with the run's last, tried again at the
next tick. A purge cut short says what its committed batches deleted, `interrupted`, in an event of its
own; one the database does not take either is said whole (the CLI's stderr, serve's log). SQLite reuses the
pages deleted rows leave for later writes; the file does not shrink unless someone runs `VACUUM`,
which Squall never does on its own (it holds the whole database for as long as it copies it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.config import RetentionSettings
from engine.executions import COMPLETED, AuditEntry
from engine.storage import (
    OUTBOX_PENDING,
    Database,
    Store,
    action_tokens,
    as_utc,
    audit,
    database_trouble,
    execution_output,
    executions,
    outbox,
    rule_enforcements,
    trigger_instances,
    utcnow,
)

log = logging.getLogger(__name__)

#: Rows of one kind a batch of the CLI's purges reads and deletes (its transaction): executions (counting a
#: workflow's tasks; a workflow bigger than this goes whole in a batch of its own), output chunks, replies,
#: trigger instances.
BATCH_SIZE = 500
#: `squall serve`'s batches, smaller: on SQLite they run on the event loop (`Database`), which waits for
#: them. 500 executions with their output and two replies each took 70-90 ms here (most of it the commit
#: writing the freed pages to the WAL); 100 take ~20 ms.
SWEEP_BATCH_SIZE = 100
#: How often the lead `squall serve` purges, from the end of one run to the start of the next
#: (StackStorm collects every 600 s; its TTLs count days, and an hour's delay is nothing to them).
RUN_EVERY = 3600.0
#: Batches a run does at each housekeeping tick (one a second): a backlog (the first run over a year's
#: history) goes at ~400 executions a second, while stored requests, the outbox and chat go on between batches.
BATCHES_PER_TICK = 4
#: Trigger instances whose processing ended (StackStorm's statuses); `pending` and `processing` never go.
TRIGGER_INSTANCES_DONE = ("processed", "processing_failed")
_ENDED = sorted(COMPLETED)
#: Ids in one `IN (...)`: well under SQLite's limit on bound values.
_IN_CHUNK = 500


@dataclass
class Purged:
    """What a purge deleted, by kind."""

    #: Executions, a workflow's tasks among them.
    executions: int = 0
    #: Of `executions`, the tasks that went with their workflow.
    tasks: int = 0
    output_chunks: int = 0
    #: Chat replies (outbox rows), sent, failed or skipped.
    replies: int = 0
    trigger_instances: int = 0
    rule_enforcements: int = 0
    audit_entries: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(*(mine + theirs for mine, theirs in zip(dataclasses.astuple(self), dataclasses.astuple(other),
                                                              strict=True)))

    def __bool__(self) -> bool:
        return any(dataclasses.astuple(self))

    def counts(self) -> dict[str, int]:
        """The counts by name, for an audit event."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """For people: "3 executions (2 of them workflow tasks), 4 output chunks", or "nothing"."""
        parts = []
        if self.executions:
            tasks = f" ({self.tasks:,} of them workflow tasks)" if self.tasks else ""
            parts.append(_counted(self.executions, "execution") + tasks)
        for count, noun, nouns in ((self.output_chunks, "output chunk", None),
                                   (self.replies, "chat reply", "chat replies"),
                                   (self.trigger_instances, "trigger instance", None),
                                   (self.rule_enforcements, "rule enforcement", None),
                                   (self.audit_entries, "audit log entry", "audit log entries")):
            if count:
                parts.append(_counted(count, noun, nouns))
        return ", ".join(parts) or "nothing"


def _counted(count: int, noun: str, nouns: str | None = None) -> str:
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


_DAYS_AGO = re.compile(r"(\d+(?:\.\d+)?)d")


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time (`2026-01-31`, `2026-01-31T12:00:00Z`, `...+02:00`) as the UTC time it
    names: UTC when it names no zone, converted when it names one. The database compares it with stored
    UTC times, and SQLite drops a zone without converting: `--since ...T04:31+02:00` selected from 04:31
    UTC, two hours late. Shared by every time a person types: a purge's cutoff, `squall audit export
    --since/--until`, the web UI's filters. ValueError when it is no such time, or past year 1 or 9999
    once in UTC (`0001-01-01T00:00+01:00`)."""
    try:
        when = datetime.fromisoformat(text.strip())
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not an ISO 8601 time in years 1 to 9999 UTC (2026-01-31, "
                         "2026-01-31T12:00:00Z)") from None


def parse_before(text: str, now: datetime | None = None) -> datetime:
    """A purge's cutoff as people write it: a number of days ago (`30d`, `1.5d`) or an ISO 8601 time
    (`2026-01-31`, `2026-01-31T12:00:00Z`, `...+02:00`; UTC when it names no zone, as the CLI shows
    times). A time in the future is refused: it would delete what has just ended, and is a typo."""
    now = now or utcnow()
    text = text.strip()
    if (days := _DAYS_AGO.fullmatch(text)) is not None:
        try:
            return now - timedelta(days=float(days.group(1)))
        except OverflowError:
            raise ValueError(f"{text!r} is further back than any time: give fewer days") from None
    try:
        when = parse_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a number of days ago (30d) nor an ISO 8601 time (2026-01-31, "
                         "2026-01-31T12:00:00Z)") from None
    if when > now:
        raise ValueError(f"{text!r} is in the future; give a time before now, or a number of days ago (30d)")
    return when


def _chunks(ids: Iterable[Any]) -> Iterator[list[Any]]:
    batch = list(ids)
    for start in range(0, len(batch), _IN_CHUNK):
        yield batch[start:start + _IN_CHUNK]


@dataclass
class Batch:
    """What one batch deleted, where the next one starts, and whether none is left."""

    purged: Purged
    cursor: Any
    done: bool


# -- executions ------------------------------------------------------------------------------------------

def _roots(cutoff: datetime, action: str | None) -> list[Any]:
    """The conditions on the executions a purge starts from, as SQL: top-level (or whose workflow is gone),
    begun before the cutoff, of `action` if given. Their age is `_aged`'s, checked on the rows read: with
    the status in SQL the planner walked the status index, every finished execution ever stored, where
    the start time's reads only the window (`Store.executions_owing_results` says the same)."""
    c = executions.c
    parent = executions.alias("parent_row")
    top = sa.or_(c.parent.is_(None), ~sa.exists().where(parent.c.id == c.parent))
    where = [c.start_timestamp < cutoff, top]
    if action is not None:
        where.append(c.action == action)
    return where


def _aged(status: str, started: datetime, ended: datetime | None, cutoff: datetime, include_incomplete: bool) -> bool:
    """Whether an execution is old enough to go: ended before the cutoff (by its start when it has no end),
    or with `include_incomplete` never ended and begun before it."""
    if status not in COMPLETED:
        return include_incomplete
    return as_utc(ended or started) < cutoff  # type: ignore[operator]


def _families(conn: sa.Connection, roots: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each root's tasks at every depth, as (id, status)."""
    c = executions.c
    family_of = {root: root for root in roots}
    members: dict[str, list[tuple[str, str]]] = {root: [] for root in roots}
    level = roots
    while level:
        below = []
        for chunk in _chunks(level):
            for ident, status, parent in conn.execute(sa.select(c.id, c.status, c.parent).where(c.parent.in_(chunk))):
                if ident in family_of:  # a parent chain that loops: each execution once
                    continue
                family_of[ident] = family_of[parent]
                members[family_of[ident]].append((ident, status))
                below.append(ident)
        level = below
    return members


def _replying(conn: sa.Connection, ids: list[str]) -> set[str]:
    """Those of `ids` with a reply still to send."""
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(conn.execute(sa.select(outbox.c.execution_id)
                                  .where(outbox.c.execution_id.in_(chunk), OUTBOX_PENDING)).scalars())
    return found


def _delete_executions(conn: sa.Connection, ids: list[str], tasks: int) -> Purged:
    """Delete these executions and what belongs to them alone (`tasks` of them are workflow tasks)."""
    purged = Purged(tasks=tasks)
    for chunk in _chunks(ids):
        purged.output_chunks += conn.execute(
            execution_output.delete().where(execution_output.c.execution_id.in_(chunk))).rowcount
        purged.replies += conn.execute(  # none is pending (checked), and one that became so meanwhile stays
            outbox.delete().where(outbox.c.execution_id.in_(chunk), ~OUTBOX_PENDING)).rowcount
        conn.execute(action_tokens.delete().where(action_tokens.c.execution_id.in_(chunk)))
        purged.executions += conn.execute(executions.delete().where(executions.c.id.in_(chunk))).rowcount
    return purged


@dataclass
class _Taken:
    """The families a batch deletes, and where the next batch starts."""

    ids: list[str]
    tasks: int
    last: tuple[datetime, str] | None
    full: bool


def _take(page: list[Any], families: dict[str, list[tuple[str, str]]], replying: set[str], limit: int,
          cursor: tuple[datetime, str] | None, include_incomplete: bool) -> _Taken:
    """Of the `page` of roots read (in order), the families to delete while they fit in `limit` rows (the
    first always, however big): those old enough (in `families`), with no reply still to send, and all
    ended unless `include_incomplete`. The others are passed over: they stay."""
    taken = _Taken([], 0, cursor, False)
    for root in page:
        members = families.get(root.id)
        if members is not None and taken.ids and len(taken.ids) + 1 + len(members) > limit:
            taken.full = True
            break
        taken.last = (root.start_timestamp, root.id)
        if members is None:  # not old enough, or not ended
            continue
        ids = [root.id, *(ident for ident, _status in members)]
        if replying.intersection(ids) or (
                not include_incomplete and any(status not in COMPLETED for _ident, status in members)):
            continue
        taken.ids.extend(ids)
        taken.tasks += len(members)
    return taken


def executions_batch(store: Store, cursor: tuple[datetime, str] | None, limit: int, *, cutoff: datetime,
                     action: str | None = None, include_incomplete: bool = False) -> Batch:
    """One batch of the executions purge, in one transaction: the next workflows (and lone executions)
    after `cursor` (start time, id) that `_take` takes. `limit` bounds the rows read and deleted."""
    c = executions.c
    where = _roots(cutoff, action)
    if cursor is not None:
        where.append(sa.tuple_(c.start_timestamp, c.id) > sa.tuple_(sa.literal(cursor[0], c.start_timestamp.type),
                                                                    sa.literal(cursor[1], c.id.type)))
    statement = (sa.select(c.id, c.status, c.start_timestamp, c.end_timestamp).where(*where)
                 .order_by(c.start_timestamp, c.id).limit(limit))
    with store.isolated(), store._write() as conn:
        page = conn.execute(statement).all()
        roots = [root.id for root in page
                 if _aged(root.status, root.start_timestamp, root.end_timestamp, cutoff, include_incomplete)]
        families = _families(conn, roots)
        replying = _replying(conn, [*roots, *(ident for root in roots for ident, _status in families[root])])
        taken = _take(page, families, replying, limit, cursor, include_incomplete)
        purged = _delete_executions(conn, taken.ids, taken.tasks) if taken.ids else Purged()
    return Batch(purged, taken.last, done=not taken.full and len(page) < limit)


def count_executions(store: Store, cutoff: datetime, *, action: str | None = None,
                     include_incomplete: bool = False) -> int:
    """How many top-level executions a purge would start from (their tasks not counted; those still
    replying, or with a task still running, are kept when it comes to them)."""
    c = executions.c
    ended = sa.and_(c.status.in_(_ENDED), sa.func.coalesce(c.end_timestamp, c.start_timestamp) < cutoff)
    aged = sa.or_(ended, c.status.not_in(_ENDED)) if include_incomplete else ended
    statement = sa.select(sa.func.count()).select_from(executions).where(*_roots(cutoff, action), aged)
    with store._read() as conn:
        return int(conn.execute(statement).scalar_one())


# -- pages of rows by id: output, replies, trigger instances --------------------------------------------

def _page(conn: sa.Connection, table: sa.Table, columns: list[str], cursor: Any, limit: int) -> list[Any]:
    """The next `limit` rows of `table` after `cursor`, by id: a batch reads a bounded slice (its primary
    key's index), whatever it then deletes. Ids grow with time (autoincrement, `new_id`), so a page with
    nothing older than the cutoff ends the purge, and later runs walk only what earlier ones kept."""
    return conn.execute(sa.select(*(table.c[name] for name in columns)).where(table.c.id > cursor)
                        .order_by(table.c.id).limit(limit)).all()


def _delete_ids(conn: sa.Connection, table: sa.Table, ids: list[Any]) -> int:
    return sum(conn.execute(table.delete().where(table.c.id.in_(chunk))).rowcount for chunk in _chunks(ids))


def _ended_before(conn: sa.Connection, ids: Iterable[str], cutoff: datetime) -> set[str]:
    """Those of `ids` that are executions which ended before `cutoff`."""
    c = executions.c
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(conn.execute(sa.select(c.id).where(
            c.id.in_(chunk), c.status.in_(_ENDED),
            sa.func.coalesce(c.end_timestamp, c.start_timestamp) < cutoff)).scalars())
    return found


def _existing(conn: sa.Connection, ids: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(conn.execute(sa.select(executions.c.id).where(executions.c.id.in_(chunk))).scalars())
    return found


def output_batch(store: Store, cursor: int, limit: int, *, cutoff: datetime) -> Batch:
    """One batch of the output purge: of the next `limit` chunks, those of executions that ended before
    `cutoff`. A running (or paused) execution's output stays."""
    with store.isolated(), store._write() as conn:
        page = _page(conn, execution_output, ["id", "execution_id", "timestamp"], cursor, limit)
        old = [row for row in page if as_utc(row.timestamp) < cutoff]
        ended = _ended_before(conn, {row.execution_id for row in old}, cutoff)
        deleted = _delete_ids(conn, execution_output, [row.id for row in old if row.execution_id in ended])
    return Batch(Purged(output_chunks=deleted), page[-1].id if page else cursor, done=len(page) < limit or not old)


def replies_batch(store: Store, cursor: int, limit: int, *, cutoff: datetime) -> Batch:
    """One batch of the purge of replies that belong to no execution (none named, or one that is gone),
    stored before `cutoff` and sent, failed or skipped. Never a pending one, nor the keying rows
    (execution ""), which say since when results are keyed."""
    with store.isolated(), store._write() as conn:
        page = _page(conn, outbox, ["id", "execution_id", "status", "created_at"], cursor, limit)
        old = [row for row in page if as_utc(row.created_at) < cutoff and row.status != "pending"
               and row.execution_id != ""]
        named = _existing(conn, {row.execution_id for row in old if row.execution_id is not None})
        deleted = _delete_ids(conn, outbox, [row.id for row in old if row.execution_id not in named])
        older = any(as_utc(row.created_at) < cutoff for row in page)
    return Batch(Purged(replies=deleted), page[-1].id if page else cursor, done=len(page) < limit or not older)


def trigger_instances_batch(store: Store, cursor: str, limit: int, *, cutoff: datetime) -> Batch:
    """One batch of the trigger instances purge: of the next `limit` instances, those processed (or
    failed) that occurred before `cutoff`, with the rule enforcements they made."""
    with store.isolated(), store._write() as conn:
        page = _page(conn, trigger_instances, ["id", "status", "occurrence_time"], cursor, limit)
        old = [row for row in page if as_utc(row.occurrence_time) < cutoff]
        ids = [row.id for row in old if row.status in TRIGGER_INSTANCES_DONE]
        enforcements = sum(conn.execute(rule_enforcements.delete().where(
            rule_enforcements.c.trigger_instance_id.in_(chunk))).rowcount for chunk in _chunks(ids))
        deleted = _delete_ids(conn, trigger_instances, ids)
    return Batch(Purged(trigger_instances=deleted, rule_enforcements=enforcements),
                 page[-1].id if page else cursor, done=len(page) < limit or not old)


def count_trigger_instances(store: Store, cutoff: datetime) -> int:
    """How many trigger instances a purge would delete."""
    c = trigger_instances.c
    statement = sa.select(sa.func.count()).select_from(trigger_instances).where(
        c.status.in_(TRIGGER_INSTANCES_DONE), c.occurrence_time < cutoff)
    with store._read() as conn:
        return int(conn.execute(statement).scalar_one())


def audit_batch(store: Store, cursor: int, limit: int, *, cutoff: datetime) -> Batch:
    """One batch of the audit log purge: of the next `limit` entries, those logged before `cutoff`."""
    with store.isolated(), store._write() as conn:
        page = _page(conn, audit, ["id", "timestamp"], cursor, limit)
        old = [row.id for row in page if as_utc(row.timestamp) < cutoff]
        deleted = _delete_ids(conn, audit, old)
    return Batch(Purged(audit_entries=deleted), page[-1].id if page else cursor, done=len(page) < limit or not old)


def count_audit(store: Store, cutoff: datetime) -> int:
    """How many audit log entries a purge would delete."""
    statement = sa.select(sa.func.count()).select_from(audit).where(audit.c.timestamp < cutoff)
    with store._read() as conn:
        return int(conn.execute(statement).scalar_one())


# -- whole purges --------------------------------------------------------------------------------------

@dataclass
class Phase:
    """One kind of row to purge: its batch (`step(store, cursor, limit)`) and where the next one starts."""

    step: Callable[[Store, Any, int], Batch]
    cursor: Any


def execution_phases(cutoff: datetime, *, action: str | None = None, include_incomplete: bool = False) -> list[Phase]:
    """The executions purge; with every action's, the replies that belong to no execution too."""
    phases = [Phase(functools.partial(executions_batch, cutoff=cutoff, action=action,
                                      include_incomplete=include_incomplete), None)]
    if action is None:
        phases.append(Phase(functools.partial(replies_batch, cutoff=cutoff), 0))
    return phases


def output_phases(cutoff: datetime) -> list[Phase]:
    return [Phase(functools.partial(output_batch, cutoff=cutoff), 0)]


def trigger_instance_phases(cutoff: datetime) -> list[Phase]:
    return [Phase(functools.partial(trigger_instances_batch, cutoff=cutoff), "")]


def audit_phases(cutoff: datetime) -> list[Phase]:
    return [Phase(functools.partial(audit_batch, cutoff=cutoff), 0)]


def configured_phases(settings: RetentionSettings, now: datetime) -> list[Phase]:
    """What `retention.*` asks for at `now`: executions first, so that output purged with them is not
    walked again, then output alone, then trigger instances, then the audit log."""
    phases: list[Phase] = []
    if settings.executions_days is not None:
        phases += execution_phases(now - timedelta(days=settings.executions_days))
    if settings.output_days is not None:
        phases += output_phases(now - timedelta(days=settings.output_days))
    if settings.trigger_instances_days is not None:
        phases += trigger_instance_phases(now - timedelta(days=settings.trigger_instances_days))
    if settings.audit_days is not None:
        phases += audit_phases(now - timedelta(days=settings.audit_days))
    return phases


#: What closes a purge, in the transaction of its last batch: its audit event (`run`).
Closing = Callable[[Store, Purged], None]


def run(store: Store, phases: list[Phase], *, batch_size: int = BATCH_SIZE,
        progress: Callable[[Purged], None] | None = None, closing: Closing | None = None) -> Purged:
    """Every batch of `phases` in turn on `store` outside any `Database` (a CLI command), each batch its
    own transaction; `progress` is told the running total after each transaction that deleted something.

    `closing(store, total)` (the purge's audit event) runs in the transaction of the batch that ends the
    purge, which then commits with it or not at all; and a batch that ends its phase shares its transaction
    with the next phase's first batch, and on while each ends its phase (`_batches`): a purge whose phases
    each fit in one batch (any but a backlog's) is one transaction with its event, so an event the database
    does not take deletes nothing. A longer one keeps what its earlier transactions deleted."""
    total = Purged()
    left = list(phases)
    while left:
        with store.batch() if closing is not None else contextlib.nullcontext():
            purged = _batches(store, left, batch_size, chained=closing is not None)
            if closing is not None and not left:
                closing(store, total + purged)
        total += purged
        if purged and progress is not None:
            progress(total)
    return total


def _batches(store: Store, left: list[Phase], batch_size: int, *, chained: bool) -> Purged:
    """The next batch of the first phase `left`, and (`chained`) the next phases' batches after it while each
    batch ends its phase, made as one transaction by the caller; the phases they end are taken off `left`.
    What they deleted. Chained, a transaction holds at most a batch of each phase (two for the executions)."""
    purged = Purged()
    while left:
        phase = left[0]
        batch = phase.step(store, phase.cursor, batch_size)
        phase.cursor = batch.cursor
        purged += batch.purged
        if not batch.done:
            break
        left.pop(0)
        if not chained:
            break
    return purged


def purge_executions(store: Store, cutoff: datetime, *, action: str | None = None, include_incomplete: bool = False,
                     batch_size: int = BATCH_SIZE, progress: Callable[[Purged], None] | None = None,
                     closing: Closing | None = None) -> Purged:
    """`squall execution purge` (StackStorm's `st2-purge-executions`): see the module's doc."""
    return run(store, execution_phases(cutoff, action=action, include_incomplete=include_incomplete),
               batch_size=batch_size, progress=progress, closing=closing)


def purge_output(store: Store, cutoff: datetime, *, batch_size: int = BATCH_SIZE,
                 progress: Callable[[Purged], None] | None = None, closing: Closing | None = None) -> Purged:
    """The output chunks of executions that ended before `cutoff` (`retention.output_days`)."""
    return run(store, output_phases(cutoff), batch_size=batch_size, progress=progress, closing=closing)


def purge_trigger_instances(store: Store, cutoff: datetime, *, batch_size: int = BATCH_SIZE,
                            progress: Callable[[Purged], None] | None = None, closing: Closing | None = None) -> Purged:
    """`squall trigger-instance purge` (StackStorm's `st2-purge-trigger-instances`)."""
    return run(store, trigger_instance_phases(cutoff), batch_size=batch_size, progress=progress, closing=closing)


def purge_audit(store: Store, cutoff: datetime, *, batch_size: int = BATCH_SIZE,
                progress: Callable[[Purged], None] | None = None, closing: Closing | None = None) -> Purged:
    """`squall audit purge`: the audit log entries logged before `cutoff`."""
    return run(store, audit_phases(cutoff), batch_size=batch_size, progress=progress, closing=closing)


# -- squall serve ----------------------------------------------------------------------------------------

class RetentionSweep:
    """`squall serve`'s purge of what `retention.*` no longer keeps (StackStorm's st2garbagecollector),
    a step of its housekeeping that does something on the lead alone: several processes on one
    database would otherwise race each other over the same rows.

    A run starts at the first tick after the start, then `RUN_EVERY` seconds after the last one ended.
    It does at most `batches_per_tick` batches a tick, each through the `Database` like any other call,
    and goes on at the next tick: purging a year's history never holds up stored requests, the outbox or
    chat for longer than one batch. When it ends having deleted something it says what, in one line.

    A batch the database fails (down, full, locked elsewhere) fails the step, which the housekeeping says
    once; the run goes on from that batch at the next tick. Any other failure (a bug) gives the run up
    until the next is due, rather than failing at every tick."""

    def __init__(self, settings: RetentionSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.batch_size = SWEEP_BATCH_SIZE
        self.batches_per_tick = BATCHES_PER_TICK
        self._clock = clock
        #: When the next run may start, on `clock`: at the first tick.
        self.due_at = 0.0
        #: The phases of the run under way still to do (none between runs), and what it deleted so far.
        self._phases: list[Phase] = []
        self._purged = Purged()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    async def tick(self, db: Database, leading: Callable[[], bool]) -> None:
        """The housekeeping step: a few batches of the run under way, or of a new one when due, if this
        process leads (`leading()`, as the housekeeping's lead step just found)."""
        if not self.settings.enabled or not leading():
            return
        if not self._phases:
            if self._clock() < self.due_at:
                return
            self._phases = configured_phases(self.settings, utcnow())
        try:
            await self._advance(db)
        except Exception as exc:
            if database_trouble(exc) is None:
                with contextlib.suppress(Exception):  # what it deleted before the bug is on record all the same
                    await self._audited(db, interrupted=True)
                self._end()
            raise

    async def stop(self, db: Database) -> None:
        """`squall serve` is stopping: a run under way that deleted something says so in the audit log
        now, as it would at its end (the next start's run begins again and says its own part)."""
        if self._phases and self._purged:
            await self._audited(db, interrupted=True)
            self._end()

    async def _advance(self, db: Database) -> None:
        for _ in range(self.batches_per_tick):
            phase = self._phases[0]
            batch = await db(self._batch, db.store, phase, len(self._phases) == 1)
            phase.cursor = batch.cursor
            self._purged += batch.purged
            if batch.done:
                self._phases.pop(0)
                if not self._phases:
                    self._end()
                    return

    def _batch(self, store: Store, phase: Phase, last: bool) -> Batch:
        """One batch of `phase`; the run's last (of its `last` phase, and done) with the run's `retention.purge`
        event in its transaction (`AuditEntry.together`): an event the database does not take puts that batch
        back, and the next tick does it again, event and all. Written after the run's end, an event that failed
        left its history deleted with no word of it in the audit log."""
        if not last:
            return phase.step(store, phase.cursor, self.batch_size)
        with AuditEntry.together(store):
            batch = phase.step(store, phase.cursor, self.batch_size)
            if batch.done and (self._purged + batch.purged):
                event = self._event(self._purged + batch.purged)
                store.audit_add(event.event, event.actor, event.source, event.target, event.detail)
        return batch

    def _event(self, purged: Purged, *, interrupted: bool = False) -> AuditEntry:
        """The `retention.purge` audit entry of a run that deleted `purged`: its counts and the settings it kept
        to, so the audit log says when history went, and why, even once its own old entries are gone with it."""
        kept = {key: days for key, days in dataclasses.asdict(self.settings).items() if days is not None}
        return AuditEntry("retention.purge", None, "serve", None,
                          {**kept, **purged.counts(), **({"interrupted": True} if interrupted else {})})

    async def _audited(self, db: Database, *, interrupted: bool = False) -> None:
        """A run cut short (`interrupted`: a stop, a bug) that deleted something says what its committed batches
        did, in an entry of its own; one the database does not take is logged whole, never raised: the
        batches hold, and the stop or the bug goes on being handled."""
        if not self._purged:
            return
        event = self._event(self._purged, interrupted=interrupted)
        try:
            await db(db.store.audit_add, event.event, event.actor, event.source, event.target, event.detail)
        except sa.exc.DBAPIError as exc:
            log.error("history retention deleted %s, and its audit event could not be stored (%s): %s",
                      self._purged.describe(), database_trouble(exc) or type(exc).__name__,
                      json.dumps({"event": event.event, "detail": event.detail}))

    def _end(self) -> None:
        """The run is over (or given up): say what it deleted, and when the next one is due."""
        if self._purged:
            log.info("history retention deleted %s", self._purged.describe())
        self._phases, self._purged = [], Purged()
        self.due_at = self._clock() + RUN_EVERY
