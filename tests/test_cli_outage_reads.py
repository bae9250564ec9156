"""What `squall run` and `squall execution re-run` read after their execution's end rides out a database outage, as
their wait for that end does (`tests/test_cli_wait_outage.py`): the retry its retry policy runs at once, and the
inquiries a paused workflow waits on. An outage at that moment exited 3 ("cannot reach the database", a setup
error) for an execution that was fine, and a script that retries on a non-zero exit ran the action twice.

The outage is the driver's error (SQLITE_IOERR) raised by every database call the command's own task makes after
its wait (`waited`) returned, for a given number of calls: the engine's own tasks (the retry listener, the run of
the retry) are left alone, so the test tells exactly which read the command rides out.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.policies import retry_id
from tests.test_cli import _ASKS, in_process, succeeds
from tests.test_cli_policies import _flaky_pack
from tests.workflow_helpers import workflow_pack

#: Set in the command's task once its wait for an end returned: the database calls the outage fails.
_after_the_wait: contextvars.ContextVar[bool] = contextvars.ContextVar("after_the_wait", default=False)


@contextlib.contextmanager
def down_after_the_wait(monkeypatch: pytest.MonkeyPatch, failures: int) -> Iterator[None]:
    """The database fails the next `failures` calls the command's task makes once a wait for an end returned,
    as a disk I/O error fails them (the database failed, `database_trouble`); then it is back."""
    import sqlalchemy as sa

    import bot.cli.executions as executions
    from engine.storage import Database

    waited = executions.waited
    call = Database.__call__
    left = [failures]

    async def waited_then_down(*args: Any, **kwargs: Any) -> dict[str, Any]:
        record = await waited(*args, **kwargs)
        _after_the_wait.set(True)  # the command's own task, and what it awaits from here on
        return record

    async def failing(self: Database, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if _after_the_wait.get() and left[0] > 0:
            left[0] -= 1
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = 10  # type: ignore[attr-defined]  # SQLITE_IOERR
            raise sa.exc.OperationalError("SELECT ...", {}, error)
        return await call(self, fn, *args, **kwargs)

    monkeypatch.setattr(executions, "OUTAGE_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(executions, "waited", waited_then_down)
    monkeypatch.setattr(Database, "__call__", failing)
    yield


def test_run_rides_out_an_outage_at_its_retry_lookup(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run failed and its retry policy retries it at once: the database went away as the command looked
    for that retry. It says so once, with the execution and the retry it reads, waits, then waits for the
    retry as ever and exits with its end: 0, the action run twice (the failure and its retry), not thrice."""
    _flaky_pack(home, max_retry_count=1)
    cli = in_process(home, monkeypatch)
    with down_after_the_wait(monkeypatch, failures=2):
        done = cli("run", "pol.flaky", f"marker={home / 'marker'}", "passes_on=2", "--json")
    assert done.exit_code == 0, (done.stdout, done.stderr, done.exception)
    last = json.loads(done.stdout)
    original = last["context"]["re-run"]["ref"]
    assert last["status"] == "succeeded" and last["id"] == retry_id(original), last
    said = (f"the database is full, not writable or unreachable (disk I/O error); execution {original} failed: "
            f"waiting for the database to read its retry {last['id']} (Ctrl-C stops the wait)")
    assert done.stderr.count(said) == 1, done.stderr
    assert f"the database is back; execution {original} failed" in done.stderr
    assert (home / "marker").read_text() == "run\n" * 2


def test_rerun_rides_out_an_outage_at_its_retry_lookup(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall execution re-run` looks for its failure's retry as `run` does, across an outage too."""
    _flaky_pack(home, max_retry_count=1)
    cli = in_process(home, monkeypatch)
    failed = cli("run", "pol.flaky", f"marker={home / 'marker'}", "passes_on=4", "--json")
    assert failed.exit_code == 1, failed.stderr  # the run and its one retry
    original = json.loads(failed.stdout)["context"]["re-run"]["ref"]
    with down_after_the_wait(monkeypatch, failures=2):
        done = cli("execution", "re-run", original, "--json")
    assert done.exit_code == 0, (done.stdout, done.stderr, done.exception)
    last = json.loads(done.stdout)
    rerun = last["context"]["re-run"]["ref"]
    assert last["status"] == "succeeded" and last["id"] == retry_id(rerun), last
    assert f"execution {rerun} failed: waiting for the database to read its retry {last['id']}" in done.stderr
    assert (home / "marker").read_text() == "run\n" * 4


def test_run_rides_out_an_outage_at_its_inquiries_lookup(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A workflow paused on `core.ask`: the database went away as the command read which inquiries it waits
    on. The command waits it out and names the inquiry, as without an outage."""
    workflow_pack(home, {"asks": ("action-chain", "", _ASKS)})
    cli = in_process(home, monkeypatch)
    with down_after_the_wait(monkeypatch, failures=2):
        done = cli("run", "wf.asks")
    assert done.exit_code == 1, (done.stdout, done.stderr, done.exception)  # paused: not succeeded
    [inquiry] = json.loads(succeeds(cli, "inquiry", "list", "--json").stdout)
    [paused] = [e for e in json.loads(succeeds(cli, "execution", "list", "--json").stdout) if e["action"] == "wf.asks"]
    assert paused["status"] == "paused"
    assert f"waiting on inquiry {inquiry['id']}" in done.stdout
    said = f"execution {paused['id']} paused: waiting for the database to read the inquiries it waits on"
    assert done.stderr.count(said) == 1, done.stderr
    assert f"the database is back; execution {paused['id']} paused" in done.stderr


def test_run_gives_up_a_read_the_outage_outlasts(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outage past `OUTAGE_SECONDS` (none here) at the read after the end exits `OUTAGE_EXIT`, not 3 (a
    setup to check), in a line naming the execution and how to see it once the database is back."""
    import bot.cli.executions as executions

    workflow_pack(home, {"asks": ("action-chain", "", _ASKS)})
    cli = in_process(home, monkeypatch)
    monkeypatch.setattr(executions, "OUTAGE_SECONDS", 0.0)
    with down_after_the_wait(monkeypatch, failures=2):
        done = cli("run", "wf.asks")
    assert done.exit_code == executions.OUTAGE_EXIT, (done.stdout, done.stderr, done.exception)
    [paused] = [e for e in json.loads(succeeds(cli, "execution", "list", "--json").stdout) if e["action"] == "wf.asks"]
    assert (f"gave up reading the inquiries it waits on of execution {paused['id']}, which paused: see it with "
            f"`squall execution get {paused['id']}` once the database is back") in done.stderr


def test_run_async_rides_out_an_outage_at_who_runs_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run --async` asks, after storing its request, whether another process runs it: an outage then exited 3
    for a stored request, and a script retrying on that exit requested the action twice. It waits the outage out
    and answers with the one request, said `requested`."""
    import sqlalchemy as sa

    import bot.cli.executions as executions

    cli = in_process(home, monkeypatch)
    asked = executions.served_elsewhere
    left = [2]

    async def down_twice(squall: Any) -> bool:
        if left[0] > 0:
            left[0] -= 1
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = 10  # type: ignore[attr-defined]  # SQLITE_IOERR
            raise sa.exc.OperationalError("SELECT ...", {}, error)
        return await asked(squall)

    monkeypatch.setattr(executions, "OUTAGE_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(executions, "served_elsewhere", down_twice)
    done = cli("run", "core.noop", "--async", "--json")
    assert done.exit_code == 0, (done.stdout, done.stderr, done.exception)
    stored = json.loads(done.stdout)
    assert stored["status"] == "requested", stored
    assert f"execution {stored['id']} requested: waiting for the database to read who runs it" in done.stderr
    assert [e["id"] for e in json.loads(succeeds(cli, "execution", "list", "--json").stdout)] == [stored["id"]]
