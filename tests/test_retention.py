"""History retention, StackStorm's st2garbagecollector and `st2-purge-*`: `retention.*` in the config,
`engine/retention.py`'s purges (what goes with an execution, what stays), `squall serve`'s housekeeping
running them on the lead, and `squall execution purge` / `squall trigger-instance purge` / `squall audit purge`.

Real databases throughout: the purges run on SQLite and on PostgreSQL, rows written as Squall's tables hold
them and read back after each purge."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import retention
from engine.config import ConfigError, RetentionSettings, load_config
from engine.executions import COMPLETED, STATUSES
from engine.retention import (
    Purged,
    parse_before,
    purge_audit,
    purge_executions,
    purge_output,
    purge_trigger_instances,
)
from engine.storage import (
    Store,
    action_tokens,
    audit,
    deliveries,
    execution_output,
    executions,
    outbox,
    rule_enforcements,
    trigger_instances,
)
from tests.conftest import write
from tests.pgcluster import free_port
from tests.test_cli import audit_failing, audit_fails, in_process, like_a_process, succeeds

NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=10)
INCOMPLETE = [status for status in STATUSES if status not in COMPLETED]


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def sortable_id(when: datetime, n: int = 0) -> str:
    """An id as `engine.executions.new_id` makes them: sorted by creation time."""
    return f"{int(when.timestamp() * 1_000_000):014x}{n:010x}"


def execution(ident: str, status: str, started: datetime, ended: datetime | None = None, *,
              parent: str | None = None, action: str = "core.local") -> dict[str, Any]:
    return {"id": ident, "action": action, "runner": "local-shell-cmd", "status": status, "parameters": {},
            "spec": {}, "sealed": None, "result": None, "context": {}, "log": [], "parent": parent,
            "runner_info": None, "start_timestamp": started, "end_timestamp": ended}


def done(ident: str, days: float, *, parent: str | None = None, action: str = "core.local",
         status: str = "succeeded") -> dict[str, Any]:
    """An execution that started and ended `days` ago."""
    return execution(ident, status, ago(days), ago(days), parent=parent, action=action)


def reply(execution_id: str | None, kind: str | None, status: str, days: float) -> dict[str, Any]:
    return {"adapter": "slack", "channel": "C1", "payload": {"text": "hi"}, "status": status, "attempts": 0,
            "platform_id": None, "error": None, "created_at": ago(days), "sent_at": None,
            "execution_id": execution_id, "kind": kind}


def chunk(execution_id: str, days: float) -> dict[str, Any]:
    return {"execution_id": execution_id, "stream": "stdout", "data": "line\n", "timestamp": ago(days)}


def insert(store: Store, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with store.engine.begin() as conn:
        conn.execute(table.insert(), rows)


def column(store: Store, table: sa.Table, name: str) -> list[Any]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.select(table.c[name])).scalars())



# -- config ------------------------------------------------------------------------------------------

def test_retention_is_off_unless_configured(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "config.yml", "packs: {paths: []}\n"))
    assert config.retention == RetentionSettings()
    assert not config.retention.enabled
    empty = load_config(write(tmp_path / "empty.yml", "retention:\n"))
    assert empty.retention == RetentionSettings()


def test_retention_settings_are_read(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "config.yml", """
        retention:
          executions_days: 30
          output_days: 2.5
          trigger_instances_days: 7
          audit_days: 365
    """))
    assert config.retention == RetentionSettings(executions_days=30, output_days=2.5, trigger_instances_days=7,
                                                 audit_days=365)
    assert config.retention.enabled
    only_output = load_config(write(tmp_path / "output.yml", "retention: {output_days: 1, executions_days: null}\n"))
    assert only_output.retention == RetentionSettings(output_days=1)


@pytest.mark.parametrize(("text", "expected"), [
    ("retention: {execution_days: 30}", "unknown key 'retention.execution_days' (did you mean "
                                        "'retention.executions_days'?)"),
    ("retention: {executions_days: '30'}", "'retention.executions_days' must be a number of days"),
    ("retention: {executions_days: true}", "'retention.executions_days' must be a number of days"),
    ("retention: {executions_days: -3}", "'retention.executions_days' must be a number of days"),
    ("retention: {executions_days: 3}", "at least 7"),
    ("retention: {trigger_instances_days: 6.5}", "'retention.trigger_instances_days' must be a number of days, "
                                                 "at least 7"),
    ("retention: {output_days: 0}", "'retention.output_days' must be a number of days, at least 1"),
    ("retention: {audit_days: 7}", "'retention.audit_days' must be a number of days, at least 30"),
    ("retention: [30]", "'retention' must be a mapping"),
])
def test_bad_retention_settings_are_refused_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "config.yml", text + "\n"))
    assert expected in str(caught.value)


def test_a_setting_below_stackstorms_minimum_points_at_the_cli(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "config.yml", "retention: {executions_days: 3}\n"))
    assert "squall execution purge --before" in str(caught.value)
    assert "not 3" in str(caught.value)


def test_the_output_and_audit_minimums_say_what_they_are(tmp_path: Path) -> None:
    """No command purges output alone: the hint says the purge it names deletes executions whole. The
    audit's minimum is Squall's own, StackStorm keeping no audit table."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "config.yml", "retention: {output_days: 0}\n"))
    assert "Younger output goes only with its execution" in str(caught.value)
    assert "deletes the executions whole" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path / "config.yml", "retention: {audit_days: 10}\n"))
    assert "at least 30 (Squall's minimum" in str(caught.value) and "StackStorm" not in str(caught.value)


# -- --before ----------------------------------------------------------------------------------------

def test_before_takes_days_ago_or_an_iso_time() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_before("30d", now) == now - timedelta(days=30)
    assert parse_before("1.5d", now) == now - timedelta(days=1.5)
    assert parse_before("0d", now) == now
    assert parse_before("2026-01-31", now) == datetime(2026, 1, 31, tzinfo=UTC)  # UTC, as the CLI shows times
    assert parse_before("2026-01-31T10:00:00Z", now) == datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert parse_before("2026-01-31T12:00:00+02:00", now) == datetime(2026, 1, 31, 10, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "30", "-3d", "2026-13-01", ""])
def test_a_bad_before_says_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"number of days ago \(30d\).*ISO 8601"):
        parse_before(text, NOW)


def test_a_before_in_the_future_or_before_any_time_is_refused() -> None:
    with pytest.raises(ValueError, match="future"):
        parse_before("2999-01-01", NOW)
    with pytest.raises(ValueError, match="further back than any time"):
        parse_before("99999999999d", NOW)


# -- executions ----------------------------------------------------------------------------------------

def _history(store: Store) -> dict[str, int]:
    """Executions of every age and status, a workflow or three, their output, replies and tokens; the
    outbox ids by name."""
    rows = [
        done("old-ok", 40), done("old-failed", 30, status="failed"),
        execution("old-abandoned", "abandoned", ago(30)),  # ended without an end time: its start counts
        done("late-end", 5) | {"start_timestamp": ago(20)},  # started before the cutoff, ended after
        done("new-ok", 1),
        done("old-unsent", 40),  # its result is still to be sent
        *(execution(f"old-{status}", status, ago(30)) for status in INCOMPLETE),
        # a workflow that ended, with a nested one
        done("wf-done", 40), done("wf-done-a", 40, parent="wf-done"), done("wf-done-b", 40, parent="wf-done"),
        done("wf-done-b-1", 40, parent="wf-done-b"),
        # a workflow that says it ended while one of its tasks has not
        done("wf-open", 40, status="canceled"), execution("wf-open-a", "running", ago(40), parent="wf-open"),
        # a workflow still running: its old finished task stays with it
        execution("wf-running", "running", ago(40)), done("wf-running-a", 40, parent="wf-running"),
        # a task whose workflow is gone
        done("orphan-a", 40, parent="gone"),
    ]
    insert(store, executions, rows)
    insert(store, execution_output, [chunk("old-ok", 40), chunk("old-ok", 40), chunk("wf-done-a", 40),
                                     chunk("old-running", 30), chunk("old-unsent", 40), chunk("new-ok", 1)])
    replies = [
        ("ack-old", reply("old-ok", "ack", "sent", 40)), ("result-old", reply("old-ok", "result", "sent", 40)),
        ("keyed-since", reply("", "keyed_since", "skipped", 40)),
        ("help-old", reply(None, None, "sent", 40)), ("error-old", reply(None, None, "failed", 39)),
        ("orphan-old", reply("vanished", "result", "sent", 39)),  # its execution is gone
        ("stuck-old", reply(None, None, "pending", 38)),
        ("ack-unsent", reply("old-unsent", "ack", "sent", 38)),
        ("result-unsent", reply("old-unsent", "result", "pending", 38)),
        ("help-new", reply(None, None, "sent", 1)), ("result-new", reply("new-ok", "result", "sent", 1)),
    ]
    ids = {}
    with store.engine.begin() as conn:
        for name, row in replies:
            ids[name] = conn.execute(outbox.insert(), row).inserted_primary_key[0]
    insert(store, action_tokens, [{"token_hash": "a" * 64, "execution_id": "old-ok", "user": "me",
                                   "created_at": ago(40), "expires_at": None},
                                  {"token_hash": "b" * 64, "execution_id": "old-running", "user": "me",
                                   "created_at": ago(30), "expires_at": None}])
    insert(store, rule_enforcements, [{"id": "enf-1", "rule": "p.r", "trigger_instance_id": "ti-1",
                                       "execution_id": "old-ok", "status": "succeeded", "failure_reason": None,
                                       "enforced_at": ago(40)}])
    insert(store, deliveries, [{"key": "notified core.st2.generic.actiontrigger old-ok", "trigger_instance_id": "ti-2",
                                "expires_at": NOW + timedelta(days=1)}])
    return ids


def test_ended_executions_go_with_their_tasks_output_and_sent_replies(store: Store) -> None:
    """Only what ended before the cutoff goes: with its workflow's tasks, its output, its replies once none
    of them waits to be sent, its tokens; never a live execution, a task whose workflow stays, a pending
    reply, the outbox's keying row, a rule enforcement or a run-once delivery key. Old replies that belong
    to no execution (or to one that is gone) go too."""
    ids = _history(store)
    purged = purge_executions(store, CUTOFF)

    gone = {"old-ok", "old-failed", "old-abandoned", "wf-done", "wf-done-a", "wf-done-b", "wf-done-b-1", "orphan-a"}
    assert set(column(store, executions, "id")) == {
        "late-end", "new-ok", "old-unsent", "wf-open", "wf-open-a", "wf-running", "wf-running-a",
        *(f"old-{status}" for status in INCOMPLETE)}
    assert not gone & set(column(store, executions, "id"))
    assert column(store, execution_output, "execution_id") == ["new-ok", "old-running", "old-unsent"]
    assert set(column(store, outbox, "id")) == {ids[name] for name in (
        "keyed-since", "stuck-old", "ack-unsent", "result-unsent", "help-new", "result-new")}
    assert column(store, action_tokens, "execution_id") == ["old-running"]
    assert column(store, rule_enforcements, "id") == ["enf-1"]
    assert column(store, deliveries, "trigger_instance_id") == ["ti-2"]
    assert purged == Purged(executions=8, tasks=3, output_chunks=3, replies=5)


def test_a_second_purge_finds_nothing_more(store: Store) -> None:
    _history(store)
    purge_executions(store, CUTOFF)
    assert purge_executions(store, CUTOFF) == Purged()


def test_one_action_and_incomplete_executions_on_request(store: Store) -> None:
    """`--action` and `--include-incomplete`, as `st2-purge-executions --action-ref --purge-incomplete`:
    executions that never ended go by their start; a pending reply still keeps its execution; replies
    that belong to no execution are left to a purge of every action."""
    insert(store, executions, [
        execution("a-old-running", "running", ago(40)), execution("a-old-requested", "requested", ago(40)),
        done("a-old-ok", 40), done("a-old-unsent", 40), execution("a-new-running", "running", ago(5)),
        execution("b-old-running", "running", ago(40), action="core.http"),
        execution("a-wf", "running", ago(40)), execution("a-wf-1", "running", ago(40), parent="a-wf",
                                                          action="core.http"),
    ])
    insert(store, outbox, [reply("a-old-unsent", "result", "pending", 40), reply(None, None, "sent", 40)])
    purged = purge_executions(store, CUTOFF, action="core.local", include_incomplete=True)
    assert column(store, executions, "id") == ["a-new-running", "a-old-unsent", "b-old-running"]
    assert purged == Purged(executions=5, tasks=1)
    assert len(column(store, outbox, "id")) == 2


def test_batches_commit_one_by_one_and_never_split_a_workflow(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch is its own transaction: a purge that fails half-way keeps what its earlier batches
    deleted, and the next one goes on. A workflow is deleted whole, in one batch, however small."""
    insert(store, executions, [done(f"e{n}", 40 - n) for n in range(5)])
    insert(store, executions, [done("wf", 30), *(done(f"wf-{n}", 30, parent="wf") for n in range(3))])
    real = retention._delete_executions
    calls: list[list[str]] = []
    failing = [True]

    def failing_second(conn: sa.Connection, ids: list[str], tasks: int) -> Purged:
        calls.append(sorted(ids))
        if failing[0] and len(calls) == 2:
            raise RuntimeError("the disk went away")
        return real(conn, ids, tasks)

    monkeypatch.setattr(retention, "_delete_executions", failing_second)
    with pytest.raises(RuntimeError):
        purge_executions(store, CUTOFF, batch_size=2)
    assert column(store, executions, "id") == ["e2", "e3", "e4", "wf", "wf-0", "wf-1", "wf-2"]

    calls.clear()
    failing[0] = False
    seen: list[Purged] = []
    purged = purge_executions(store, CUTOFF, batch_size=2, progress=seen.append)
    assert column(store, executions, "id") == []
    assert ["wf", "wf-0", "wf-1", "wf-2"] in calls  # the workflow whole, though the batch size is 2
    assert purged == Purged(executions=7, tasks=3)
    assert [p.executions for p in seen] == [2, 3, 7]  # running totals, one per batch


# -- output -----------------------------------------------------------------------------------------

def test_output_purge_keeps_executions_and_live_output(store: Store) -> None:
    """`output_days`: the chunks of executions that ended before the cutoff; the executions stay, and so
    does what a running (or late-ending) execution printed."""
    insert(store, executions, [done("old-ok", 40), execution("old-running", "running", ago(40)),
                               done("late-end", 5) | {"start_timestamp": ago(20)}, done("new-ok", 1),
                               execution("old-paused", "paused", ago(40))])
    insert(store, execution_output, [chunk("old-ok", 40), chunk("old-running", 40), chunk("old-paused", 39),
                                     chunk("old-ok", 39), chunk("late-end", 20), chunk("new-ok", 1)])
    purged = purge_output(store, CUTOFF, batch_size=2)
    assert purged == Purged(output_chunks=2)
    assert column(store, execution_output, "execution_id") == ["late-end", "new-ok", "old-paused", "old-running"]
    assert len(column(store, executions, "id")) == 5


# -- trigger instances -------------------------------------------------------------------------------

def instance(ident: str, status: str, days: float) -> dict[str, Any]:
    return {"id": ident, "trigger": "core.st2.webhook", "payload": {}, "occurrence_time": ago(days),
            "status": status, "trace_tag": None, "trigger_parameters": None, "owner": None}


def test_processed_trigger_instances_go_with_their_enforcements(store: Store) -> None:
    """Processed (or failed) instances older than the cutoff, with the rule enforcements they made;
    never one still pending or processing, nor a delivery key (those expire on their own)."""
    rows = [instance(sortable_id(ago(40), 1), "processed", 40), instance(sortable_id(ago(39), 2), "pending", 39),
            instance(sortable_id(ago(38), 3), "processing_failed", 38),
            instance(sortable_id(ago(37), 4), "processing", 37), instance(sortable_id(ago(36), 5), "processed", 36),
            instance(sortable_id(ago(1), 6), "processed", 1)]
    insert(store, trigger_instances, rows)
    old, pending, failed, processing, older, new = (row["id"] for row in rows)
    insert(store, rule_enforcements, [
        {"id": f"enf-{n}", "rule": "p.r", "trigger_instance_id": ident, "execution_id": None, "status": "succeeded",
         "failure_reason": None, "enforced_at": ago(1)} for n, ident in enumerate((old, old, processing, new))])
    insert(store, deliveries, [{"key": "webhook sig", "trigger_instance_id": old, "expires_at": NOW}])
    purged = purge_trigger_instances(store, CUTOFF, batch_size=2)
    assert purged == Purged(trigger_instances=3, rule_enforcements=2)
    assert column(store, trigger_instances, "id") == sorted([pending, processing, new])
    assert column(store, rule_enforcements, "trigger_instance_id") == sorted([processing, new])
    assert column(store, deliveries, "key") == ["webhook sig"]
    assert failed and older  # named above for the reader: both went


# -- the audit log -------------------------------------------------------------------------------------

def entry(event: str, days: float) -> dict[str, Any]:
    return {"timestamp": ago(days), "event": event, "actor": "ann", "source": "slack", "target": None,
            "detail": {}}


def test_audit_entries_older_than_the_cutoff_go(store: Store) -> None:
    """By their time, oldest first in batches; the young ones stay, whatever their kind."""
    insert(store, audit, [entry("chat.command", 40), entry("web.login", 35), entry("chat.command", 20),
                          entry("chat.command", 3), entry("web.login", 1)])
    assert retention.count_audit(store, CUTOFF) == 3
    purged = purge_audit(store, CUTOFF, batch_size=2)
    assert purged == Purged(audit_entries=3)
    assert purged.describe() == "3 audit log entries"
    with store.engine.connect() as conn:
        kept = conn.execute(sa.select(audit.c.event, audit.c.timestamp).order_by(audit.c.id)).all()
    assert [event for event, _ in kept] == ["chat.command", "web.login"]
    assert all(retention.as_utc(when) > CUTOFF for _, when in kept)
    assert purge_audit(store, CUTOFF) == Purged()


def test_a_purge_whose_closing_fails_deletes_nothing_of_its_last_transaction(store: Store) -> None:
    """`run`'s `closing` (a CLI purge's audit event) runs in the transaction of the batches that end the
    purge: when it fails, they delete nothing, the executions' last batch and the replies' after it alike (a
    purge that fits in one batch a phase is one transaction). A longer one keeps the batches it committed."""
    insert(store, executions, [done("old-a", 40), done("old-b", 39), done("old-c", 38), done("new", 1)])
    insert(store, outbox, [reply(None, None, "sent", 40)])

    def refused(_store: Store, _purged: Purged) -> None:
        raise sa.exc.DataError("INSERT INTO audit ...", {}, ValueError("value too long"))

    with pytest.raises(sa.exc.DataError):
        purge_executions(store, CUTOFF, closing=refused)
    assert len(column(store, executions, "id")) == 4 and len(column(store, outbox, "id")) == 1
    with pytest.raises(sa.exc.DataError):
        purge_executions(store, CUTOFF, batch_size=2, closing=refused)
    kept = column(store, executions, "id")  # the first batch (two) committed; the last (one, and the reply) not
    assert len(kept) == 2 and "new" in kept and len(column(store, outbox, "id")) == 1
    closed: list[Purged] = []
    assert purge_executions(store, CUTOFF, closing=lambda _store, purged: closed.append(purged)) == closed[0]
    assert closed == [Purged(executions=1, replies=1)] and column(store, executions, "id") == ["new"]


@pytest.mark.postgres
async def test_on_postgresql_a_serve_purge_whose_audit_event_is_refused_deletes_nothing(postgres_url: str) -> None:
    """PostgreSQL keeps a group's other writes when one statement is refused: the run's last batch and its
    event share a savepoint there (`AuditEntry.together`), so an event refused alone deletes nothing."""
    from engine.retention import RetentionSweep
    from engine.storage import Database

    store = Store.open(postgres_url)
    db = Database(store)
    try:
        insert(store, audit, [entry("chat.command", 40), entry("chat.command", 2)])
        sweep = RetentionSweep(RetentionSettings(audit_days=30))
        with audit_failing("retention.purge", refused=True), pytest.raises(sa.exc.DataError):
            await sweep.tick(db, lambda: True)
        assert len(store.audit_list(event="chat.command")) == 2 and store.audit_list(event="retention.purge") == []
        sweep.due_at = 0.0
        await sweep.tick(db, lambda: True)
        assert len(store.audit_list(event="chat.command")) == 1
        [purge] = store.audit_list(event="retention.purge")
        assert purge["detail"]["audit_entries"] == 1
    finally:
        db.close()
        store.close()


# -- squall serve's housekeeping -----------------------------------------------------------------------

@pytest.fixture
def retained_config(home: Path) -> Path:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          port: {free_port()}
        retention:
          executions_days: 7
          output_days: 1
          trigger_instances_days: 7
    """)
    return home / "config.yml"


@pytest.fixture
async def retaining(retained_config: Path) -> Any:
    from bot.app import Squall

    app = await Squall.start(load_config(retained_config))
    try:
        yield app
    finally:
        await app.close()


def _old_history(store: Store, tag: str) -> None:
    insert(store, executions, [done(f"{tag}-old", 40), done(f"{tag}-new", 0.5),
                               done(f"{tag}-output", 3)])
    insert(store, execution_output, [chunk(f"{tag}-output", 3)])
    insert(store, trigger_instances, [instance(sortable_id(ago(40)), "processed", 40)])


async def test_serve_purges_on_the_lead_once_an_hour(retaining: Any, caplog: pytest.LogCaptureFixture) -> None:
    from bot.service import Housekeeping

    caplog.set_level(logging.INFO)
    store = retaining.store
    _old_history(store, "a")
    housekeeping = Housekeeping(retaining, [])
    await housekeeping.start()
    await housekeeping.tick()
    assert column(store, executions, "id") == ["a-new", "a-output"]
    assert column(store, execution_output, "id") == []  # ended 3 days ago: past output_days
    assert column(store, trigger_instances, "id") == []
    lines = [r.getMessage() for r in caplog.records if "history retention" in r.getMessage()]
    assert lines == ["history retention deleted 1 execution, 1 output chunk, 1 trigger instance"]
    assert all(r.levelno == logging.INFO for r in caplog.records if "history retention" in r.getMessage())

    _old_history(store, "b")  # not due again before an hour
    await housekeeping.tick()
    assert "b-old" in column(store, executions, "id")
    housekeeping.retention.due_at = 0.0
    await housekeeping.tick()
    assert column(store, executions, "id") == ["a-new", "a-output", "b-new", "b-output"]


async def test_a_run_that_deleted_leaves_an_audit_entry_saying_what_went(retaining: Any) -> None:
    """The audit log's own old entries go too (`audit_days`), and the run says in the log what went and
    the settings it kept to: the gap it made is on the record."""
    from bot.service import Housekeeping

    store = retaining.store
    _old_history(store, "a")
    insert(store, audit, [entry("chat.command", 40), entry("chat.command", 31)])
    housekeeping = Housekeeping(retaining, [])
    housekeeping.retention.settings = dataclasses.replace(housekeeping.retention.settings, audit_days=30)
    await housekeeping.start()
    await housekeeping.tick()
    await housekeeping.tick()  # five kinds of batch: four a tick
    assert store.audit_list(event="chat.command") == []
    [purge] = store.audit_list(event="retention.purge")
    assert (purge["actor"], purge["source"]) == (None, "serve")
    assert purge["detail"] == {"executions_days": 7, "output_days": 1, "trigger_instances_days": 7, "audit_days": 30,
                               "executions": 1, "tasks": 0, "output_chunks": 1, "replies": 0,
                               "trigger_instances": 1, "rule_enforcements": 0, "audit_entries": 2}
    housekeeping.retention.due_at = 0.0
    await housekeeping.tick()  # a run that deleted nothing says nothing
    assert len(store.audit_list(event="retention.purge")) == 1


async def test_a_long_purge_is_spread_over_ticks_and_logged_once(retaining: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    from bot.service import Housekeeping

    caplog.set_level(logging.INFO)
    store = retaining.store
    insert(store, executions, [done(f"e{n}", 40 - n) for n in range(5)])
    housekeeping = Housekeeping(retaining, [])
    housekeeping.retention.batch_size = 2
    housekeeping.retention.batches_per_tick = 1
    await housekeeping.start()
    await housekeeping.tick()
    assert column(store, executions, "id") == ["e2", "e3", "e4"]  # one batch a tick: chat goes on meanwhile
    for _ in range(6):
        await housekeeping.tick()
    assert column(store, executions, "id") == []
    lines = [r.getMessage() for r in caplog.records if "history retention" in r.getMessage()]
    assert lines == ["history retention deleted 5 executions"]


async def test_only_the_lead_purges(retaining: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.service import Housekeeping

    async def follower() -> bool:
        return False

    monkeypatch.setattr(retaining, "leading", follower)
    _old_history(retaining.store, "a")
    housekeeping = Housekeeping(retaining, [])
    await housekeeping.start()
    await housekeeping.tick()
    assert "a-old" in column(retaining.store, executions, "id")


async def test_nothing_is_purged_unless_configured(squall: Any) -> None:
    from bot.service import Housekeeping

    _old_history(squall.store, "a")
    housekeeping = Housekeeping(squall, [])
    await housekeeping.start()
    await housekeeping.tick()
    assert "a-old" in column(squall.store, executions, "id")
    assert len(column(squall.store, trigger_instances, "id")) == 1


async def test_a_database_outage_is_said_once_without_a_traceback(retaining: Any, monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from bot.service import Housekeeping

    caplog.set_level(logging.INFO)
    _old_history(retaining.store, "a")
    real = retention._delete_executions

    def full(conn: sa.Connection, ids: list[str], tasks: int) -> Purged:
        raise sa.exc.OperationalError("DELETE", [], sqlite3.OperationalError("database or disk is full"))

    monkeypatch.setattr(retention, "_delete_executions", full)
    housekeeping = Housekeeping(retaining, [])
    await housekeeping.start()
    await housekeeping.tick()
    await housekeeping.tick()
    failed = [r for r in caplog.records if "purging old history" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING and failed[0].exc_info is None
    assert "database or disk is full" in failed[0].getMessage()
    assert "a-old" in column(retaining.store, executions, "id")

    monkeypatch.setattr(retention, "_delete_executions", real)  # the disk has room again: the run goes on
    await housekeeping.tick()
    assert "a-old" not in column(retaining.store, executions, "id")
    assert any("purging old history) works again" in r.getMessage() for r in caplog.records)


async def test_a_bug_in_a_purge_is_logged_once_an_hour_not_every_tick(retaining: Any, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A failure that is no database trouble keeps its traceback (a bug to see whole), but gives the run up
    until the next is due: tried again each tick, it would print that traceback every second."""
    from bot.service import Housekeeping

    _old_history(retaining.store, "a")
    real = retention._delete_executions

    def broken(conn: sa.Connection, ids: list[str], tasks: int) -> Purged:
        raise KeyError("a bug")

    monkeypatch.setattr(retention, "_delete_executions", broken)
    housekeeping = Housekeeping(retaining, [])
    await housekeeping.start()
    for _ in range(3):
        await housekeeping.tick()
    failed = [r for r in caplog.records if "purging old history" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.ERROR and failed[0].exc_info is not None

    monkeypatch.setattr(retention, "_delete_executions", real)
    housekeeping.retention.due_at = 0.0  # an hour later
    await housekeeping.tick()
    assert "a-old" not in column(retaining.store, executions, "id")


async def test_a_serve_purge_whose_audit_event_fails_puts_its_last_batch_back(retaining: Any) -> None:
    """`squall serve`'s run wrote its `retention.purge` event apart, after its last batch had committed: under
    a full disk that history went and the audit log never said when. The event is stored with the run's last
    batch now: a run of one batch whose event the database does not take deletes nothing, and the next tick
    deletes it with its event."""
    from bot.service import Housekeeping

    store = retaining.store
    insert(store, audit, [entry("chat.command", 40), entry("chat.command", 31), entry("chat.command", 2)])
    housekeeping = Housekeeping(retaining, [])
    housekeeping.retention.settings = dataclasses.replace(RetentionSettings(), audit_days=30)
    await housekeeping.start()
    with audit_failing("retention.purge"):
        await housekeeping.tick()
    assert len(store.audit_list(event="chat.command")) == 3
    assert store.audit_list(event="retention.purge") == []
    await housekeeping.tick()
    assert len(store.audit_list(event="chat.command")) == 1
    [purge] = store.audit_list(event="retention.purge")
    assert purge["detail"] == {"audit_days": 30, **Purged(audit_entries=2).counts()}


# -- the CLI ---------------------------------------------------------------------------------------------

def _cli_history(home: Path) -> Store:
    store = Store.open(load_config(home / "config.yml").database_url)
    insert(store, executions, [done("old-ok", 40), done("old-http", 40, action="core.http"), done("new-ok", 1),
                               execution("old-running", "running", ago(40))])
    insert(store, execution_output, [chunk("old-ok", 40)])
    insert(store, trigger_instances, [instance(sortable_id(ago(40)), "processed", 40),
                                      instance(sortable_id(ago(40), 1), "pending", 40)])
    return store


def test_cli_execution_purge_asks_for_yes_then_deletes_and_audits(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall_cli = like_a_process(home, monkeypatch)
    store = _cli_history(home)
    try:
        unasked = squall_cli("execution", "purge", "--before", "10d", stdin="")
        assert unasked.returncode == 2
        assert "--yes" in unasked.stderr and "2 executions" in unasked.stderr
        assert len(column(store, executions, "id")) == 4

        one = squall_cli("execution", "purge", "--before", "10d", "--action", "core.http", "--yes")
        assert one.returncode == 0, one.stderr
        assert "deleted 1 execution" in one.stdout
        assert column(store, executions, "id") == ["new-ok", "old-ok", "old-running"]

        rest = squall_cli("execution", "purge", "--before", "10d", "--yes", "--include-incomplete")
        assert rest.returncode == 0, rest.stderr
        assert "deleted 2 executions, 1 output chunk" in rest.stdout
        assert column(store, executions, "id") == ["new-ok"]

        audited = store.audit_list(event="cli.execution.purge")
        assert [(a["detail"]["executions"], a["detail"]["action"], a["detail"]["include_incomplete"])
                for a in reversed(audited)] == [(1, "core.http", False), (2, None, True)]
        assert audited[0]["detail"]["output_chunks"] == 1 and audited[0]["detail"]["before"].endswith("Z")

        nothing = squall_cli("execution", "purge", "--before", "10d", "--yes")
        assert nothing.returncode == 0 and "no executions" in nothing.stdout
    finally:
        store.close()


@pytest.mark.parametrize("before", ["yesterday", "2999-01-01"])
def test_cli_purge_refuses_a_bad_before(home: Path, before: str, monkeypatch: pytest.MonkeyPatch) -> None:
    squall_cli = like_a_process(home, monkeypatch)
    for command in (("execution", "purge"), ("trigger-instance", "purge"), ("audit", "purge")):
        done_ = squall_cli(*command, "--before", before, "--yes")
        assert done_.returncode == 2
        assert "error: --before" in done_.stderr and "Traceback" not in done_.stderr


def test_cli_trigger_instance_purge(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall_cli = like_a_process(home, monkeypatch)
    store = _cli_history(home)
    try:
        unasked = squall_cli("trigger-instance", "purge", "--before", "10d", stdin="")
        assert unasked.returncode == 2 and "--yes" in unasked.stderr
        purged = squall_cli("trigger-instance", "purge", "--before", "10d", "--yes")
        assert purged.returncode == 0, purged.stderr
        assert "deleted 1 trigger instance" in purged.stdout
        assert [row["status"] for row in store.trigger_instance_list()] == ["pending"]
        assert store.audit_list(event="cli.trigger_instance.purge")[0]["detail"]["trigger_instances"] == 1
    finally:
        store.close()


def test_cli_audit_purge_asks_then_deletes_and_leaves_its_own_entry(home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    squall_cli = like_a_process(home, monkeypatch)
    store = _cli_history(home)
    try:
        insert(store, audit, [entry("chat.command", 40), entry("chat.command", 2)])
        unasked = squall_cli("audit", "purge", "--before", "10d", stdin="")
        assert unasked.returncode == 2
        assert "--yes" in unasked.stderr and "1 audit log entry" in unasked.stderr
        purged = squall_cli("audit", "purge", "--before", "10d", "--yes")
        assert purged.returncode == 0, purged.stderr
        assert "deleted 1 audit log entry" in purged.stdout
        assert [a["timestamp"] > CUTOFF for a in store.audit_list(event="chat.command")] == [True]
        [own] = store.audit_list(event="cli.audit.purge")
        assert own["detail"]["audit_entries"] == 1 and own["detail"]["before"].endswith("Z")
        again = squall_cli("audit", "purge", "--before", "10d", "--yes")
        assert again.returncode == 0 and "no audit log entries" in again.stdout
    finally:
        store.close()


async def test_a_purge_cut_short_by_a_stop_says_what_it_deleted(retaining: Any) -> None:
    """`squall serve` stops while a long purge is under way (a deploy): what its batches deleted, audit
    entries among them, is recorded then, marked `interrupted`; at its end the run would have said it."""
    from bot.service import Housekeeping

    store = retaining.store
    insert(store, audit, [entry("chat.command", 40 - n / 10) for n in range(10)])
    housekeeping = Housekeeping(retaining, [])
    housekeeping.retention.settings = dataclasses.replace(RetentionSettings(), audit_days=30)
    housekeeping.retention.batch_size = 2
    housekeeping.retention.batches_per_tick = 1
    await housekeeping.start()
    for _ in range(3):
        await housekeeping.tick()
    assert len(store.audit_list(event="chat.command")) == 4
    await housekeeping.stop()
    [purge] = store.audit_list(event="retention.purge")
    assert purge["detail"]["audit_entries"] == 6 and purge["detail"]["interrupted"] is True
    await housekeeping.stop()  # nothing under way any more: nothing more said
    assert len(store.audit_list(event="retention.purge")) == 1


def test_a_cli_purge_cut_short_audits_what_its_batches_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the middle of `squall audit purge`: the batches before it committed, and the audit log
    says how many entries went, marked `interrupted`, rather than nothing."""
    from bot.cli import executions as cli

    audited: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "with_store", lambda work: work(None, None))
    monkeypatch.setattr(cli, "audit_sinks", lambda _store, _config: contextlib.nullcontext())
    monkeypatch.setattr(cli, "audit", lambda event, _target, detail: audited.append((event, detail)))

    def purge(_store: Any, progress: Any, _closing: Any) -> Purged:
        progress(Purged(audit_entries=500))
        progress(Purged(audit_entries=1000))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cli.purge_history("cli.audit.purge", CUTOFF, noun="audit log entries", what=str, yes=True,
                          count=lambda _store: 2000, purge=purge, detail={})
    [(event, detail)] = audited
    assert event == "cli.audit.purge"
    assert detail["audit_entries"] == 1000 and detail["interrupted"] is True


def test_a_cli_purge_whose_audit_event_fails_deletes_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`execution purge`, `trigger-instance purge` and `audit purge` deleted in batches, then wrote their
    `cli.*.purge` event apart: under a full disk the command failed (exit 3) for history it had deleted, and
    nothing in the audit log said it went. The event is stored with the batch that ends the purge now: a purge
    of one batch whose event the database does not take deletes nothing."""
    store = _cli_history(home)
    try:
        insert(store, audit, [entry("chat.command", 40)])
        kept = [column(store, table, "id") for table in (executions, trigger_instances, execution_output, audit)]
        cli = in_process(home, monkeypatch)
        purges = [("cli.execution.purge", "execution", "purge"),
                  ("cli.trigger_instance.purge", "trigger-instance", "purge"), ("cli.audit.purge", "audit", "purge")]
        for event, *command in purges:
            audit_fails(cli, event, *command, "--before", "10d", "--yes")
        assert [column(store, table, "id") for table in (executions, trigger_instances, execution_output,
                                                         audit)] == kept
        for _event, *command in purges:
            succeeds(cli, *command, "--before", "10d", "--yes")
        assert column(store, executions, "id") == ["new-ok", "old-running"]
        assert [row["status"] for row in store.trigger_instance_list()] == ["pending"]
        audited = {row["event"]: row["detail"] for row in store.audit_list()}
        assert (audited["cli.execution.purge"]["executions"], audited["cli.execution.purge"]["output_chunks"],
                audited["cli.trigger_instance.purge"]["trigger_instances"],
                audited["cli.audit.purge"]["audit_entries"]) == (2, 1, 1, 1)
    finally:
        store.close()


def test_a_cli_purge_whose_closing_audit_event_fails_says_what_its_batches_deleted(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A purge longer than one batch commits each batch as it goes (what waits for the database waits one
    batch at most): the event that closes it goes with its last batch, which the database then refuses with
    it, and the batches before stay deleted. The command says so, with the event it could not store (what
    went, marked `interrupted`), not only that the database failed."""
    store = Store.open(load_config(home / "config.yml").database_url)
    try:
        insert(store, audit, [entry("chat.command", 40) for _ in range(retention.BATCH_SIZE + 1)])
        cli = in_process(home, monkeypatch)
        done = audit_fails(cli, "cli.audit.purge", "audit", "purge", "--before", "10d", "--yes")
        assert len(store.audit_list(event="chat.command")) == 1  # the last batch went back with its event
        assert store.audit_list(event="cli.audit.purge") == []
        said = done.stderr.replace("\n", " ")
        assert f'"audit_entries": {retention.BATCH_SIZE}' in said and '"interrupted": true' in said, said
    finally:
        store.close()


def test_a_purge_beside_a_writer_that_commits_between_its_read_and_its_delete_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall execution purge` beside `squall serve` on SQLite: a batch reads its page, then deletes it. Begun
    deferred, a commit of serve's in between made the delete fail at once (SQLITE_BUSY_SNAPSHOT, no timeout
    waits it out) after a few batches. The batch holds the write lock from its start: the other writer waits
    (here: is refused at once, as it asks not to wait) and every batch deletes what it read."""
    import sqlite3

    store = Store.open(f"sqlite:///{tmp_path / 'squall.db'}")
    try:
        insert(store, executions, [done(sortable_id(ago(40), n), 40) for n in range(6)])
        serve = sqlite3.connect(tmp_path / "squall.db", timeout=0, isolation_level=None)
        writes: list[str] = []
        families = retention._families

        def commit_between(conn: Any, roots: list[str]) -> Any:
            try:  # serve stores something while the batch is between its read and its delete
                serve.execute("INSERT INTO audit (timestamp, event, detail) VALUES ('2026-01-01', 'serve', '{}')")
                writes.append("committed")
            except sqlite3.OperationalError as exc:
                writes.append(str(exc))
            return families(conn, roots)

        monkeypatch.setattr(retention, "_families", commit_between)
        purged = purge_executions(store, CUTOFF, batch_size=2, closing=lambda _store, _purged: None)
        serve.close()
    finally:
        store.close()
    assert purged.executions == 6
    assert writes and set(writes) == {"database is locked"}  # it waited for the batch, which held the lock


def test_a_cli_command_the_lock_outlasts_says_so_not_to_check_permissions(tmp_path: Path) -> None:
    """`squall execution purge` (or any command) that waited out another process's write lock says who holds
    it, not "check that the folder is writable": nothing of the setup is wrong."""
    import sqlite3

    from bot.cli.common import _database_problem
    from engine.config import load_config

    (tmp_path / "config.yml").write_text(f"database: {{url: 'sqlite:///{tmp_path}/squall.db'}}\n")
    config = load_config(tmp_path / "config.yml")
    locked = sa.exc.OperationalError("DELETE …", {}, sqlite3.OperationalError("database is locked"))
    said = _database_problem(config, locked)
    assert said.startswith(f"the SQLite database {tmp_path}/squall.db stayed locked by another process"), said
    assert "writable" not in said and "Try again" in said
    unreadable = sa.exc.OperationalError("SELECT …", {}, sqlite3.OperationalError("unable to open database file"))
    assert "writable by this user" in _database_problem(config, unreadable)
