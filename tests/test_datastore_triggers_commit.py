"""Datastore changes fire `core.st2.key_value_pair.*` only once they committed (`Store.after_commit`):
a `squall key load` rolled back (Ctrl-C, a later item failing) fires no rule for keys never stored."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from bot.cli.keys import _stored_together
from engine.crypto import KeyRing
from engine.datastore import Datastore, DatastoreError
from engine.executions import AuditEntry
from engine.storage import Database, Store
from tests.test_rules import make_pack, started


@pytest.fixture
def told(store: Store, tmp_path: Path) -> tuple[Datastore, list[tuple[str, str, bool]]]:
    """A datastore whose listener notes each change told: its kind, the key, and whether the key was
    committed then (read on a connection of its own, outside the writing transaction)."""
    ds = Datastore(store, KeyRing(tmp_path / "keys" / "datastore.key"))
    reader = Store(store.engine)
    seen: list[tuple[str, str, bool]] = []

    def changed(kind: str, payload: dict[str, Any]) -> None:
        name = payload.get("object", payload.get("new_object", {}))["name"]
        seen.append((kind, name, Datastore(reader, ds.keys).get(name) is not None))

    ds.on_change = changed
    return ds, seen


def _load(ds: Datastore, names: list[str]) -> None:
    """What `squall key load` does in its database call: every key in one savepoint (`Store.isolated`)."""
    with ds.store.isolated():
        for name in names:
            ds.set(name, "v", ttl=0 if name == "bad" else None)


def test_a_group_rolled_back_tells_nothing_and_a_committed_one_tells_after_its_commit(told) -> None:
    ds, seen = told
    with pytest.raises(RuntimeError), ds.store.batch():
        ds.set("a", "1")
        raise RuntimeError("the group fails")
    assert seen == []
    assert ds.get("a") is None

    with ds.store.batch():
        ds.set("a", "1")
        ds.set("b", "2")
        assert seen == []  # not committed yet
    assert seen == [("create", "a", True), ("create", "b", True)]


def test_a_savepoint_rolled_back_inside_a_committed_group_tells_none_of_its_changes(told) -> None:
    ds, seen = told
    with ds.store.batch():
        ds.set("kept", "1")
        with pytest.raises(DatastoreError):
            _load(ds, ["x", "y", "bad"])  # the last item fails: the whole load is undone
    assert [name for _, name, _ in seen] == ["kept"]
    assert ds.get("x") is None and ds.get("y") is None

    with ds.store.batch():
        _load(ds, ["x", "y"])
        ds.delete("kept")
    assert seen[1:] == [("create", "x", True), ("create", "y", True), ("delete", "kept", False)]


def test_a_write_outside_any_group_tells_its_change_at_once(told) -> None:
    ds, seen = told
    ds.set("a", "1")
    ds.set("a", "2")
    assert seen == [("create", "a", True), ("update", "a", True), ("value_change", "a", True)]


class _StopAfter(threading.Event):
    """A stop flag that comes on once `items` items were written (`_stored_together` looks before each)."""

    def __init__(self, items: int) -> None:
        super().__init__()
        self.looks = 0
        self.items = items

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.items or super().is_set()


async def test_a_key_load_stopped_midway_fires_no_rule_and_a_committed_one_fires_once_per_key(home: Path) -> None:
    make_pack(home, {"created": """
        name: created
        pack: demo
        enabled: true
        trigger: {type: core.st2.key_value_pair.create}
        action: {ref: demo.take, parameters: {message: "{{ trigger.object.name }}"}}
    """})
    squall = await started(home)
    try:
        assert isinstance(squall.db, Database)
        audit = AuditEntry("cli.key.load", "tester", "cli", None, {})
        items = [({"name": name, "value": "v"}, {}) for name in ("one", "two", "three")]
        # Ctrl-C after the second key was written: the load's own "stopped" exception (its name is the CLI's).
        with pytest.raises(Exception, match=r"^$") as stopped:
            await squall.db(_stored_together, squall.datastore, items, audit, "keys.yaml", _StopAfter(2))
        assert stopped.type.__name__.endswith("Stopped")
        await squall.emitted()
        assert await squall.db(squall.datastore.list) == []
        assert await squall.triggers.list(trigger="core.st2.key_value_pair.create") == []
        assert await squall.rules.enforcements(rule="demo.created") == []

        await squall.db(_stored_together, squall.datastore, items, audit, "keys.yaml", threading.Event())
        await squall.emitted()
        await squall.rules.settle()
        instances = await squall.triggers.list(trigger="core.st2.key_value_pair.create")
        assert sorted(i["payload"]["object"]["name"] for i in instances) == ["one", "three", "two"]
        assert len(await squall.rules.enforcements(rule="demo.created")) == 3
    finally:
        await squall.close()


def test_an_audit_event_in_a_rolled_back_savepoint_reaches_no_sink(store: Store) -> None:
    """The audit sinks hear of an event through the same hook: one stored in a savepoint that rolls back
    inside a group that commits (a `key load` undone by its last item) is never streamed, and the group's
    other events are, once committed."""
    streamed: list[str] = []
    store.audit_listeners.append(lambda record: streamed.append(record["event"]))
    with store.batch():
        store.audit_add("kept.before", "alice", None, None, {})
        with pytest.raises(RuntimeError), store.isolated():
            store.audit_add("undone", "alice", None, None, {})
            raise RuntimeError("the load fails")
        store.audit_add("kept.after", "alice", None, None, {})
        assert streamed == []  # not committed yet
    assert streamed == ["kept.before", "kept.after"]
    assert [event["event"] for event in reversed(store.audit_list())] == ["kept.before", "kept.after"]
