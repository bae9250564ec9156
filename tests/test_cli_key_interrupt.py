"""A Ctrl-C against `squall key set` and `squall key delete`, told the truth of their one write: one that comes just
after the write committed lets the command say what it did (exit 0); one that comes before it began leaves the
key as it was, no audit event, and `interrupted` (130). Each command runs as the console script does, in a
process of its own that a real SIGINT reaches, sent at the chosen instant by `HOOKED` (below)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_interrupts import squall

#: `squall` with a SIGINT sent to itself at one instant of the write: `after` once the group holding the key's
#: write committed (`Database._note`, before the write's caller hears of it: on the database thread it waits
#: until the loop took the signal, so the command is cancelled before the outcome reaches it); `before` while
#: the command still prepares it (`audit_entry`, the database call ahead of the write), once the signal
#: handler ran, as a person's Ctrl-C would have it.
HOOKED = """
import os, signal, sys, threading

from bot.cli import common, keys, main
from engine.datastore import Datastore
from engine.storage import Database

when = sys.argv.pop(1)
arrived, received, written = threading.Event(), threading.Event(), []


def ctrl_c(wait_for):
    os.kill(os.getpid(), signal.SIGINT)
    if not wait_for.wait(30):
        raise SystemExit("the SIGINT never reached the command")


def hooked(original, event):
    def hook(self, *args, **kwargs):
        original(self, *args, **kwargs)
        event.set()
    return hook


common._Stop._arrived = hooked(common._Stop._arrived, arrived)
common._Stop._received = hooked(common._Stop._received, received)


def writing(original):
    def write(self, *args, **kwargs):
        outcome = original(self, *args, **kwargs)
        written.append(outcome)
        return outcome
    return write


Datastore.set, Datastore.delete = writing(Datastore.set), writing(Datastore.delete)
if when == "after":
    noted = Database._note

    def note(self, outcomes, *, committed):
        noted(self, outcomes, committed=committed)
        if committed and written and not arrived.is_set():
            on_loop = threading.current_thread() is threading.main_thread()
            ctrl_c(arrived if on_loop else received)  # the loop cannot take it while this holds it
    Database._note = note
else:
    entry = keys.audit_entry

    def audit_entry(*args):
        made = entry(*args)
        ctrl_c(arrived)
        return made
    keys.audit_entry = audit_entry
sys.argv[0] = "squall"
main()
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, home: Path) -> Path:
    """`home` on SQLite (the write runs on the loop) and on PostgreSQL (on the database thread)."""
    if request.param == "postgresql":
        config = home / "config.yml"
        config.write_text(config.read_text().replace("sqlite:///data/squall.db",
                                                     request.getfixturevalue("postgres_url")))
    return home


def interrupted_at(home: Path, when: str, *args: str) -> subprocess.CompletedProcess[str]:
    (home / "hooked.py").write_text(HOOKED)
    return subprocess.run([sys.executable, str(home / "hooked.py"), when, "-c", str(home / "config.yml"), *args],
                          capture_output=True, text=True, timeout=120, cwd=home)


def key_events(home: Path) -> list[str]:
    events = [json.loads(line) for line in squall(home, "audit", "export").stdout.splitlines()]
    return [event["event"] for event in events if event["event"].startswith("cli.key.")]


def stored(home: Path) -> dict[str, str]:
    return {key["name"]: key["value"] for key in json.loads(squall(home, "key", "list", "--json").stdout)}


def test_ctrl_c_just_after_key_set_committed_says_it_was_set(database: Path) -> None:
    done = interrupted_at(database, "after", "key", "set", "greeting", "hello")
    assert (done.returncode, done.stdout.strip()) == (0, "set st2kv.system key greeting"), done.stderr
    assert "interrupted" not in done.stderr
    assert stored(database) == {"greeting": "hello"}
    assert key_events(database) == ["cli.key.set"]


def test_ctrl_c_just_after_key_delete_committed_says_it_was_deleted(database: Path) -> None:
    assert squall(database, "key", "set", "greeting", "hello").returncode == 0
    done = interrupted_at(database, "after", "key", "delete", "greeting")
    assert (done.returncode, done.stdout.strip()) == (0, "deleted greeting"), done.stderr
    assert "interrupted" not in done.stderr
    assert stored(database) == {}
    assert key_events(database) == ["cli.key.set", "cli.key.delete"]


def test_ctrl_c_before_key_set_wrote_stores_nothing_and_says_interrupted(database: Path) -> None:
    done = interrupted_at(database, "before", "key", "set", "greeting", "hello")
    assert done.returncode == 128 + signal.SIGINT, (done.stdout, done.stderr)
    assert done.stdout == "" and done.stderr.strip().splitlines()[-1] == "interrupted", (done.stdout, done.stderr)
    assert stored(database) == {}
    assert key_events(database) == []


def test_ctrl_c_before_key_delete_wrote_keeps_the_key_and_says_interrupted(database: Path) -> None:
    assert squall(database, "key", "set", "greeting", "hello").returncode == 0
    done = interrupted_at(database, "before", "key", "delete", "greeting")
    assert done.returncode == 128 + signal.SIGINT, (done.stdout, done.stderr)
    assert done.stdout == "" and done.stderr.strip().splitlines()[-1] == "interrupted", (done.stdout, done.stderr)
    assert stored(database) == {"greeting": "hello"}
    assert key_events(database) == ["cli.key.set"]
