"""`audit.sinks` as a stream: each sink has its own queue and thread, so one that is stuck (a stdout nobody
reads) never holds the others; and a service process delivers at least once: what a `kill -9` left in its
queues is re-sent at the next start, ids and all, and a clean stop re-sends nothing."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine import audit_sinks
from engine.audit_sinks import Delivery, FileSink, StreamSink, install
from engine.config import load_config
from engine.storage import Store
from tests.test_audit_sinks import _event, _Gate, _sink_logs, _with
from tests.test_cli import SQUALL

ROOT = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[dict]:
    """The events a file sink wrote whole. Read while a sink writes, the file may end in part of a line
    (a reader can see a write's first page before its last): that line is not written yet."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def _eventually(check: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_stuck_sink_does_not_hold_another_sinks_events(tmp_path: Path) -> None:
    """A stdout sink whose write waits (its collector stopped reading) held the one thread all the sinks
    shared: the file (and syslog) stopped with it. Now each sink has its own thread: the file takes every
    event while stdout is stuck, and stdout gets them all, in order, once it is read again."""
    gate = _Gate()
    path = tmp_path / "audit.jsonl"
    delivery = Delivery([StreamSink(gate), FileSink(path, 0, 0)])
    try:
        delivery(_event("e0"))
        gate.wait_for("e0")  # stdout's write of e0 has begun, and waits
        for n in range(1, 50):
            delivery(_event(f"e{n}"))
        assert _eventually(lambda: len(_lines(path)) == 50, seconds=10), \
            f"the file got {len(_lines(path))} of 50 events while the stdout sink was stuck"
        assert [entry["target"] for entry in _lines(path)] == [f"e{n}" for n in range(50)]
        assert gate.seen == []  # stdout is still stuck on e0
    finally:
        gate.open()
        delivery.close()
    assert gate.seen == [f"e{n}" for n in range(50)]


def test_closing_ends_the_progress_thread_before_the_store_is_closed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A service process's delivery reads the newest event id from the store about once a second (`_Progress`);
    its owner closes the store right after closing the delivery (`Engine.close`). `close` returned while that
    thread was still reading, so a look begun then went on against the closed store. Now `close` waits for it."""
    from engine import audit

    reading, go_on = threading.Event(), threading.Event()
    newest_id = audit.audit_last_id

    def slow_read(store: Store) -> int | None:
        if threading.current_thread().name == "squall-audit-progress":
            reading.set()
            go_on.wait(10)
        return newest_id(store)

    monkeypatch.setattr(audit, "audit_last_id", slow_read)
    store = Store.open(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        delivery = Delivery([FileSink(tmp_path / "audit.jsonl", 0, 0)],
                            progress=audit_sinks._Progress.claim(tmp_path / "data", store))
        assert reading.wait(10), "the progress thread never looked at the store"
        threading.Timer(0.3, go_on.set).start()  # the look takes a while (a busy database)
        delivery.close()
        assert delivery._saver is not None and not delivery._saver.is_alive(), \
            "the progress thread still reads the store after the delivery closed"
    finally:
        go_on.set()
        store.close()


#: A service process (`squall serve`, `squall worker`: it owns the stream) with `audit.sinks`: it records
#: `add N` commands' events, says `ok`, and lives until killed. argv: config, then module settings (JSON).
_SERVICE = """
import json, sys
from pathlib import Path
from engine import audit_sinks
from engine.config import load_config
from engine.storage import Store
for name, value in json.loads(sys.argv[2]).items():
    setattr(audit_sinks, name, value)
config = load_config(Path(sys.argv[1]))
store = Store.open(config.database_url)
audit_sinks.install(store, config)
print("ok", flush=True)
for command in sys.stdin:
    first, count = map(int, command.split()[1:])
    for n in range(first, first + count):
        store.audit_add("api.key.set", "ann", "api", f"k{n}", {"token": "t-1"})
    print("ok", flush=True)
"""


class _Service:
    """`_SERVICE` in a subprocess, told what to record."""

    def __init__(self, config: Path, **settings: float) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _SERVICE, str(config), json.dumps(settings)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self._answered()

    def add(self, first: int, count: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"add {first} {count}\n")
        self.process.stdin.flush()
        self._answered()

    def _answered(self) -> None:
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ok", "the service process failed"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def service_home(home: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home with a file sink on SQLite or PostgreSQL, seen from a service process (this one, and
    `_Service`'s)."""
    monkeypatch.setattr(audit_sinks._Process, "stdout", True)
    config = _with(home, "    - {type: file, path: data/audit.jsonl}\n")
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", database_url))
    yield home


@contextlib.contextmanager
def _file_locked(home: Path) -> Iterator[None]:
    """The file sink's lock held here, as a hung disk or another process would hold it: every process's file
    sink waits for it."""
    fd = os.open(home / "data" / ".audit.jsonl.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _start_and_close(home: Path) -> None:
    """Start the sinks as a process of this kind does (`install`), and close them cleanly."""
    config = load_config(home / "config.yml")
    store = Store.open(config.database_url)
    try:
        for delivery in install(store, config):
            delivery.close()
    finally:
        store.close()


def _stored_ids(home: Path) -> dict[str, int]:
    """Each stored `k…` event's id, by target."""
    store = Store.open(load_config(home / "config.yml").database_url)
    try:
        return {row["target"]: row["id"] for row in store.audit_list(limit=10_000) if row["event"] == "api.key.set"}
    finally:
        store.close()


def _export(home: Path, *args: str) -> list[dict]:
    done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "audit", "export", *args],
                          capture_output=True, text=True, timeout=60, cwd=home)
    assert done.returncode == 0, done.stderr
    return [json.loads(text) for text in done.stdout.splitlines()]


def _killed_while_the_file_is_stuck(home: Path, delivered: int, stuck: int) -> None:
    """A service process records `delivered` events that reach the file, then `stuck` more while the file's
    lock is held elsewhere, and is killed (`kill -9`) with them still queued."""
    path = home / "data" / "audit.jsonl"
    service = _Service(home / "config.yml")
    try:
        service.add(0, delivered)
        assert _eventually(lambda: len(_lines(path)) == delivered)
        with _file_locked(home):
            service.add(delivered, stuck)
            time.sleep(2.5)  # its progress is recorded meanwhile (each second): the stuck sink's must not move
            service.kill()
    finally:
        if service.process.poll() is None:
            service.kill()
    assert [entry["target"] for entry in _lines(path)] == [f"k{n}" for n in range(delivered)]  # the rest: lost


def _resending(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [text for text in _sink_logs(caplog) if "not closed cleanly" in text]


def test_events_a_killed_service_left_undelivered_are_re_sent_at_the_next_start(
        service_home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kill -9` of a service whose file sink was stuck lost the events still queued, from the file and every
    other sink, and nothing said so. Now the next service start re-sends to the file every event stored after
    the point the sink had reached, before new ones, in id order, each with its id, and says how many from
    which id; none of them comes more than twice. A CLI command re-sends nothing (it does not own the
    stream), and after a clean stop nothing is re-sent."""
    home = service_home
    path = home / "data" / "audit.jsonl"
    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    _killed_while_the_file_is_stuck(home, delivered=5, stuck=20)
    ids = _stored_ids(home)

    monkeypatch.setattr(audit_sinks._Process, "stdout", False)  # a CLI command's sinks
    _start_and_close(home)
    assert len(_lines(path)) == 5 and _resending(caplog) == []
    monkeypatch.setattr(audit_sinks._Process, "stdout", True)  # the next `squall serve`
    _start_and_close(home)

    shown = _lines(path)
    assert {entry["target"] for entry in shown} == set(ids)  # every stored event is in the file now
    times = collections.Counter(entry["target"] for entry in shown)
    assert max(times.values()) <= 2 and all(times[f"k{n}"] == 1 for n in range(5, 25)), times
    assert all(entry["id"] == ids[entry["target"]] for entry in shown)  # each with its own id
    resent = shown[5:]
    assert [entry["id"] for entry in resent] == sorted(entry["id"] for entry in resent)  # in id order
    said = _resending(caplog)
    assert len(said) == 1, said
    found = re.search(r"re-sending the (\d+) events stored after id (\d+) ", said[0])
    assert found and "file " in said[0] and str(path) in said[0], said
    count, after = map(int, found.groups())
    assert after < ids["k5"] and count == len(resent) == sum(1 for n in ids.values() if n > after)
    exported = {entry["id"]: entry for entry in _export(home)}
    assert all(exported[entry["id"]] == entry for entry in shown)  # the export's shape, id and all

    _start_and_close(home)  # after a clean stop
    assert _lines(path) == shown and len(_resending(caplog)) == 1


def test_a_long_gap_is_re_sent_in_part_and_the_rest_is_named(
        service_home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-sending is bounded (`REPLAY_EVENTS`, here 10): the newest events are re-sent, and the log says how
    many older ones were not and the export that prints exactly them."""
    home = service_home
    path = home / "data" / "audit.jsonl"
    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    _killed_while_the_file_is_stuck(home, delivered=0, stuck=30)
    monkeypatch.setattr(audit_sinks, "REPLAY_EVENTS", 10)
    _start_and_close(home)
    assert [entry["target"] for entry in _lines(path)] == [f"k{n}" for n in range(20, 30)]
    said = _resending(caplog)
    assert len(said) == 1 and "re-sending the 10 events" in said[0] and "20 events" in said[0], said
    command = re.search(r"`squall audit export (--since \S+ --until \S+)`", said[0])
    assert command, said
    assert [entry["target"] for entry in _export(home, *command.group(1).split())] == [f"k{n}" for n in range(20)]


def test_an_idle_service_keeps_up_with_other_processes_events(
        service_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A service process that stores no events itself (a worker, mostly) still moves its mark along with the
    log, once its sinks have had everything for `SETTLE_SECONDS`: killed then, it re-sends nothing of what
    other processes (CLI commands, whose own sinks delivered them) stored meanwhile."""
    home = service_home
    caplog.set_level(logging.INFO, logger="engine.audit_sinks")
    service = _Service(home / "config.yml", SETTLE_SECONDS=0.3, SETTLE_SECONDS_SQLITE=0.3, SAVE_SECONDS=0.1)
    try:
        store = Store.open(load_config(home / "config.yml").database_url)
        try:
            for n in range(30):  # another process's
                store.audit_add("api.key.set", "ann", "cli", f"k{n}", {})
        finally:
            store.close()
        newest = max(_stored_ids(home).values())
        state = home / "data" / ".audit-sinks.0.json"

        def marks() -> list[int]:
            sinks = json.loads(state.read_text())["sinks"] if state.exists() else {}
            return [sink["id"] for sink in sinks.values()]

        assert _eventually(lambda: marks() != [] and min(marks()) >= newest), marks()
        service.kill()
    finally:
        if service.process.poll() is None:
            service.kill()
    _start_and_close(home)
    assert _lines(home / "data" / "audit.jsonl") == [] and _resending(caplog) == []


def test_what_a_replay_re_sends_and_leaves_out(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap in the ids after the mark (a rolled-back insert, a purge) leaves nothing out; past the age bound
    (`REPLAY_SECONDS`) everything is left out, and said with the export's `--since` (the first left out)."""
    import sqlalchemy as sa

    from engine.audit_sinks import _replay_plan
    from engine.storage import audit

    store = Store.open(database_url)
    try:
        for n in range(5):
            store.audit_add("api.key.set", "ann", "api", f"k{n}", {})
        ids = sorted(row["id"] for row in store.audit_list())
        with store._write() as conn:
            conn.execute(sa.delete(audit).where(audit.c.id == ids[1]))
        assert _replay_plan(store, ids[0], ids[-1]) == (ids[0], 3, None)  # k2-k4, nothing left out
        monkeypatch.setattr(audit_sinks, "REPLAY_SECONDS", 0.0)  # every event is too old now
        first, count, left_out = _replay_plan(store, ids[0], ids[-1])
        assert (first, count) == (ids[-1], 0) and left_out is not None
        number, since, until = left_out
        oldest = next(row for row in store.audit_list() if row["id"] == ids[2])
        assert number == 3 and until is None
        assert since == audit_sinks.entry(oldest)["time"]
    finally:
        store.close()
