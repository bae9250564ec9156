"""Trigger instances after a crash and beside other `squall serve` processes on one database.

A process claims an instance (`pending` → `processing`) with its identity, atomically: of several
processes that try, one processes it. Recovery resumes only what a dead process left `processing`,
and then enforces just the rules that had not acted for it: an enforcement and the execution it
requests have ids derived from (rule, trigger instance), so a second attempt stores nothing."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.app import Squall
from engine import storage
from engine.executions import new_id
from engine.processes import process_identity, start_time
from engine.rules import enforced_execution_id, enforcement_id
from engine.storage import Store, trigger_instances, utcnow
from engine.triggers import encode_owner, public
from tests.conftest import write
from tests.test_migrations_0020 import _alembic
from tests.test_rules import make_pack, rule, started

RULES = [f"demo.r{n}" for n in range(1, 7)]


@pytest.fixture
def six_rules(home: Path, database_url: str) -> Path:
    """Six rules on `demo.event`, on SQLite (where the enforcement commits with its request) and on
    PostgreSQL (where it is stored right after)."""
    return with_six_rules(home, database_url)


def with_six_rules(home: Path, database_url: str) -> Path:
    """`home` with six rules on `demo.event` (`RULES`), on `database_url`, the API off."""
    write(home / "config.yml", f"database:\n  url: '{database_url}'\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\n")
    make_pack(home, {ref.split(".")[1]: rule(ref.split(".")[1], params="{message: '{{ trigger.n }}'}")
                     for ref in RULES})
    return home


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _owner(**changes: Any) -> str:
    """A claiming process's owner record, as `TriggerService` stores it."""
    return encode_owner({"hostname": socket.gethostname(), **process_identity(), **changes})


def _dead_owner() -> str:
    process = subprocess.Popen(["sleep", "60"])
    started_at = start_time(process.pid)
    process.kill()
    process.wait()
    return _owner(pid=process.pid, started=started_at)


async def _stored(squall: Squall, owner: str | None = None) -> dict[str, Any]:
    """An instance of `demo.event` as `dispatch` stores it (not processed); claimed by `owner` if given."""
    record = {"id": new_id(), "trigger": "demo.event", "payload": {"n": 7}, "occurrence_time": utcnow(),
              "status": "pending", "trace_tag": None, "trigger_parameters": None}
    store = squall.store
    await squall.db(store.trigger_instance_add, record)
    if owner is not None:
        assert await squall.db(store.trigger_instance_claim, record["id"], owner)
    return record


async def _acted(squall: Squall, instance_id: str) -> tuple[Counter[str], Counter[str]]:
    """Per rule: how many enforcements, and how many executions it requested, for this instance."""
    enforcements = await squall.rules.enforcements(trigger_instance_id=instance_id, limit=1000)
    executions = await squall.executions.list(trigger_instance=instance_id, limit=1000)
    return (Counter(e["rule"]["ref"] for e in enforcements),
            Counter(e["context"]["rule"]["ref"] for e in executions))


def _instance_row(store: Store, instance_id: str) -> dict[str, Any]:
    row = store.trigger_instance_get(instance_id)
    assert row is not None
    return row


async def test_an_instance_a_live_process_holds_is_left_to_it(six_rules: Path,
                                                              live_process: subprocess.Popen[bytes]) -> None:
    """Node B's start does not process (nor fail) what node A is processing; what a dead process
    held, it does."""
    squall = await started(six_rules)
    try:
        theirs = _owner(pid=live_process.pid, started=start_time(live_process.pid))
        held = await _stored(squall, theirs)
        orphan = await _stored(squall, _dead_owner())
        await squall.triggers.recover()
        await squall.rules.settle()
        row = _instance_row(squall.store, held["id"])
        assert (row["status"], row["owner"]) == ("processing", theirs)
        assert await _acted(squall, held["id"]) == (Counter(), Counter())
        assert _instance_row(squall.store, orphan["id"])["status"] == "processed"
        assert await _acted(squall, orphan["id"]) == (Counter(RULES), Counter(RULES))
    finally:
        await squall.close()


def _counting(squall: Squall, seen: Counter[str]) -> None:
    """Count the instances `squall`'s rules engine is handed (by id)."""
    process = squall.rules.process

    async def counted(instance: dict[str, Any], resumed: bool = False) -> None:
        seen[instance["id"]] += 1
        await process(instance, resumed)

    squall.rules.process = counted  # type: ignore[method-assign]


async def test_a_pending_instance_is_processed_once_when_two_processes_try(six_rules: Path) -> None:
    one = await started(six_rules)
    two = await Squall.start(one.config)
    seen: Counter[str] = Counter()
    for squall in (one, two):
        _counting(squall, seen)
    try:
        record = await _stored(one)
        await asyncio.gather(one.triggers.process(record), two.triggers.process(record))
        racing = await _stored(one)  # and both start at once: each recovery finds it pending
        await asyncio.gather(one.triggers.recover(), two.triggers.recover())
        for squall in (one, two):
            await squall.rules.settle()
        assert seen == Counter({record["id"]: 1, racing["id"]: 1})  # one claim of each won
        for instance in (record, racing):
            row = _instance_row(one.store, instance["id"])
            assert row["status"] == "processed" and row["owner"] == one.triggers.owner
            assert await _acted(one, instance["id"]) == (Counter(RULES), Counter(RULES))
    finally:
        await two.close()
        await one.close()


async def test_a_dead_process_s_instance_is_resumed_with_the_rules_that_had_not_acted(six_rules: Path) -> None:
    """The process died mid-way: r1 and r2 were enforced, r3's action was requested but its
    enforcement not stored yet. Recovery enforces r3 (with the execution requested before), r4-r6."""
    squall = await started(six_rules)
    try:
        record = await _stored(squall, _dead_owner())
        instance = public({**record, "status": "processing"})
        for ref in ("demo.r1", "demo.r2"):
            await squall.rules.enforce(squall.rules.rules[ref], instance)
        early = await squall.executions.request(
            "demo.take", {"message": "7"}, {"rule": {"ref": "demo.r3", "name": "r3"},
                                            "trigger_instance": {"id": record["id"], "name": "demo.event"}},
            execution_id=enforced_execution_id("demo.r3", record["id"]))
        await squall.rules.settle()
        before = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=record["id"])}
        assert set(before) == {"demo.r1", "demo.r2"}

        await squall.triggers.recover()
        await squall.rules.settle()
        assert _instance_row(squall.store, record["id"])["status"] == "processed"
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))
        after = {e["rule"]["ref"]: e for e in await squall.rules.enforcements(trigger_instance_id=record["id"])}
        assert after["demo.r3"]["execution_id"] == early["id"] and after["demo.r3"]["status"] == "succeeded"
        for ref in ("demo.r1", "demo.r2"):
            assert after[ref] == before[ref]  # not enforced again
        for ref, enforcement in after.items():
            assert enforcement["id"] == enforcement_id(ref, record["id"])
            assert enforcement["execution_id"] == enforced_execution_id(ref, record["id"])
            assert len(enforcement["id"]) == 24 and int(enforcement["id"], 16) >= 0
    finally:
        await squall.close()


async def test_recovering_again_enforces_nothing_more(six_rules: Path) -> None:
    """A crash after every rule acted but before the instance was marked processed: the next
    recovery (of this process or another) finds each rule's enforcement and requests nothing."""
    squall = await started(six_rules)
    other = await Squall.start(squall.config)
    try:
        record = await _stored(squall, _dead_owner())
        await squall.triggers.recover()
        await squall.rules.settle()
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))
        with squall.store.engine.begin() as connection:  # as the crash left it
            connection.execute(trigger_instances.update().where(trigger_instances.c.id == record["id"])
                               .values(status="processing", owner=_dead_owner()))
        await asyncio.gather(squall.triggers.recover(), other.triggers.recover())
        for app in (squall, other):
            await app.rules.settle()
        assert _instance_row(squall.store, record["id"])["status"] == "processed"
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))
        await squall.triggers.recover()  # processed: nothing to recover
        await squall.rules.settle()
        assert await _acted(squall, record["id"]) == (Counter(RULES), Counter(RULES))
    finally:
        await other.close()
        await squall.close()


def test_instances_stored_before_0021_have_no_owner_and_are_recovered(database_url: str) -> None:
    """A database at 0020 holds instances without an owner; after the upgrade one left `processing`
    counts as a dead process's (as before: nobody could still be processing it), and new claims
    record their process."""
    engine = storage.create_engine(database_url)
    instance_id = new_id()
    try:
        with engine.begin() as connection:
            _alembic(connection, "0020")
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO trigger_instances (id, \"trigger\", payload, occurrence_time, status) "
                "VALUES (:id, 'demo.event', '{}', :now, 'processing')"), {"id": instance_id, "now": utcnow()})
    finally:
        engine.dispose()

    store = Store.open(database_url)  # migrates to the head, as `squall serve` does
    try:
        columns = {c["name"]: c for c in sa.inspect(store.engine).get_columns("trigger_instances")}
        assert columns["owner"]["nullable"] is True
        legacy = store.trigger_instance_get(instance_id)
        assert legacy is not None and legacy["owner"] is None
        mine, theirs = _owner(), _owner(pid=1, started=1)
        assert store.trigger_instance_take_over(instance_id, theirs, mine) is False  # not its owner
        assert store.trigger_instance_take_over(instance_id, None, mine) is True
        assert store.trigger_instance_take_over(instance_id, None, theirs) is False  # taken: once
        assert _instance_row(store, instance_id)["owner"] == mine

        with store.engine.begin() as connection:  # and back: the column goes, the instances stay
            _alembic(connection, "0020", down=True)
        columns_after = {c["name"] for c in sa.inspect(store.engine).get_columns("trigger_instances")}
        assert "owner" not in columns_after
        with store.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT status FROM trigger_instances WHERE id = :id"),
                                      {"id": instance_id}).scalar() == "processing"
    finally:
        store.close()


async def test_serve_takes_up_what_a_dead_process_left_without_restarting(six_rules: Path) -> None:
    """A `squall run` (or any process) that stored or claimed an instance and ended before finishing it
    left it to nobody until the next start. `squall serve`'s housekeeping takes such instances up every
    minute: one a dead process held, and one pending for longer than that; a young pending one is left
    to the process that stored it."""
    from bot.service import POLL_SECONDS, PURGE_SECONDS, Housekeeping

    squall = await started(six_rules)
    try:
        orphan = await _stored(squall, _dead_owner())
        stale = await _stored(squall)
        young = await _stored(squall)
        with squall.store.engine.begin() as connection:
            connection.execute(trigger_instances.update().where(trigger_instances.c.id == stale["id"])
                               .values(occurrence_time=utcnow() - timedelta(seconds=PURGE_SECONDS + 5)))
        housekeeping = Housekeeping(squall, [])
        await housekeeping.start()
        housekeeping.ticks = int(PURGE_SECONDS / POLL_SECONDS) - 1  # the next tick is the minute's
        await housekeeping.tick()
        await squall.triggers.settle()
        await squall.rules.settle()
        for taken in (orphan, stale):
            assert _instance_row(squall.store, taken["id"])["status"] == "processed"
            assert await _acted(squall, taken["id"]) == (Counter(RULES), Counter(RULES))
        assert _instance_row(squall.store, young["id"])["status"] == "pending"
        assert await _acted(squall, young["id"]) == (Counter(), Counter())
    finally:
        await squall.close()


async def test_closing_finishes_the_instances_this_process_is_processing(six_rules: Path) -> None:
    """`squall run` closes as soon as its action ends; the action trigger it dispatched on the way was
    left `processing` under a process about to exit (a rule on it never fired). Closing now waits for
    what this process claimed."""
    squall = await started(six_rules)
    process = squall.rules.process

    async def slow(instance: dict[str, Any], resumed: bool = False) -> None:
        await asyncio.sleep(0.3)
        await process(instance, resumed)

    squall.rules.process = slow  # type: ignore[method-assign]
    record = await squall.triggers.dispatch("demo.event", {"n": 7})
    await squall.close()
    store = Store.open(squall.config.database_url)
    try:
        row = _instance_row(store, record["id"])
        assert row["status"] == "processed"
        enforced = store.rule_enforcement_list(trigger_instance_id=record["id"], limit=100)
        assert sorted(e["rule"] for e in enforced) == RULES
    finally:
        store.close()
