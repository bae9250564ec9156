"""The retry policy across crashes: a failure is committed before its retry is requested, so a crash
between the two must not lose the retry (recovery requests it), and no failure is ever retried twice
(the listener, recovery and other processes' recoveries request one retry between them)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.executions import COMPLETED
from engine.policies import HOLD_RETRY_ENV, retry_id
from engine.storage import Store
from tests.conftest import write
from tests.test_crash_ownership import kill_hard, queue, stop, until

SQUALL = Path(sys.executable).parent / "squall"


def _home(home: Path, max_retry_count: int = 1, database_url: str = "sqlite:///data/squall.db") -> Path:
    """A service without chat or API whose `pol.fails` fails every time (a line in `runs` per run),
    retried by policy; returns the `runs` file."""
    write(home / "config.yml", f"database:\n  url: {database_url}\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\nadapters:\n  console:\n    enabled: false\n")
    (home / "data").mkdir(exist_ok=True)
    pack = home / "packs" / "pol"
    write(pack / "pack.yaml", "ref: pol\nname: pol\nversion: 0.1.0\n")
    write(pack / "actions" / "fails.yaml", """
        name: fails
        runner_type: local-shell-cmd
        parameters:
          marker: {type: string}
          cmd: {default: "echo run >> {{marker}}; exit 1", immutable: true}
    """)
    write(pack / "policies" / "retry.yaml", "name: retry\nresource_ref: pol.fails\npolicy_type: action.retry\n"
                                            f"parameters: {{retry_on: failure, max_retry_count: {max_retry_count}}}\n")
    return home / "runs"


def _serve(home: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    with open(home / "serve.log", "a") as log:
        return subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env={**os.environ, **(env or {})})


def _runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def _serving(home: Path, times: int) -> bool:
    """Whether `squall serve` said it serves (after its recovery) `times` times in the log."""
    return (home / "serve.log").read_text().count("Squall is serving") >= times


@pytest.mark.integration
def test_a_retry_lost_to_sigkill_after_the_failure_was_committed_is_requested_at_restart(home: Path) -> None:
    marker = _home(home)
    held = home / "held"
    server = _serve(home, {HOLD_RETRY_ENV: str(held)})
    store = None
    try:
        original = queue(home, "pol.fails", f"marker={marker}")
        # The failure is committed and its listener holds the retry (never requested): kill -9 now.
        until(lambda: held.exists() and held.read_text() == original, "the failure's retry to be held")
        kill_hard(server)
        store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
        assert store.get_execution(original)["status"] == "failed"
        assert [r["id"] for r in store.list_executions(action="pol.fails")] == [original]  # no retry stored

        server = _serve(home)  # without the hold: its recovery finds the failure nothing re-ran
        retry = until(lambda: (r := store.get_execution(retry_id(original))) and r["status"] in COMPLETED and r,
                      "the lost retry to be requested and run")
        assert retry["status"] == "failed"
        assert retry["context"]["re-run"] == {"ref": original}
        assert retry["context"]["policies"]["retry"] == {"retry_count": 1, "applied_policy": "pol.retry"}
        assert _runs(marker) == 2  # the first run and its one retry

        stop(server)  # a clean stop and another start: nothing is retried again
        server = _serve(home)
        until(lambda: _serving(home, 3), "the third start to finish its recovery")
        assert sorted(r["id"] for r in store.list_executions(action="pol.fails")) == sorted([original, retry["id"]])
        assert _runs(marker) == 2
    finally:
        stop(server)
        if store is not None:
            store.close()


async def _start(home: Path) -> Squall:
    return await Squall.start(load_config(home / "config.yml"))


async def _failed_without_retry(home: Path, marker: Path) -> str:
    """An execution that failed in a process that stopped before its retry was requested."""
    first = await _start(home)
    try:
        first.policies._retry = lambda record: None  # type: ignore[method-assign]  # the crash's window
        record = await first.executions.request("pol.fails", {"marker": str(marker)})
        assert (await first.executions.wait(record["id"], timeout=20))["status"] == "failed"
    finally:
        await first.close()
    return record["id"]


async def _ended(app: Squall, execution_id: str) -> dict[str, Any]:
    """The execution once it exists and ended (a retry is requested by a listener's task)."""
    async with asyncio.timeout(30):
        while not await app.db(app.store.get_execution, execution_id):
            await asyncio.sleep(0.02)
    return await app.executions.wait(execution_id, timeout=30)


async def _retries(app: Squall) -> list[dict[str, Any]]:
    return [r for r in await app.executions.list(action="pol.fails") if "re-run" in r["context"]]


async def test_two_processes_recovering_at_once_request_one_retry(home: Path, database_url: str) -> None:
    """Two processes on one database start together: both recoveries find the lost retry, and the
    retry's key lets one of them store it."""
    marker = _home(home, database_url=database_url)
    original = await _failed_without_retry(home, marker)
    one, two = await _start(home), await _start(home)
    try:
        await asyncio.gather(one.executions.recover(), two.executions.recover())
        assert [r["id"] for r in await _retries(one)] == [retry_id(original)]  # both requests are in
        done = await _ended(one, retry_id(original))
        assert done["status"] == "failed" and done["context"]["re-run"] == {"ref": original}
        assert _runs(marker) == 2
    finally:
        await one.close()
        await two.close()


async def test_the_listener_and_another_process_request_one_retry_between_them(home: Path,
                                                                              database_url: str) -> None:
    """The failure's own listener and another node's recovery both ask for the retry at once: one is
    stored. Before a retry had a key of its own, each stored one and the action ran three times."""
    marker = _home(home, database_url=database_url)
    original = await _failed_without_retry(home, marker)
    one, two = await _start(home), await _start(home)
    try:
        record = await one.executions.get(original)
        listener = one.policies._retry(record)  # what the end's listener does, raced with a recovery
        assert listener is not None
        await asyncio.gather(listener, two.policies.recover_retries())
        assert [r["id"] for r in await _retries(one)] == [retry_id(original)]  # both requests are in
        await _ended(one, retry_id(original))
        assert _runs(marker) == 2
    finally:
        await one.close()
        await two.close()


async def test_a_failure_retried_as_usual_is_not_retried_again_by_recovery(home: Path) -> None:
    """The normal path: the listener retries each failure once (count 1, then 2); recoveries after
    that, here and in a new process, request nothing more."""
    marker = _home(home, max_retry_count=2)
    app = await _start(home)
    try:
        record = await app.executions.request("pol.fails", {"marker": str(marker)})
        last = retry_id(retry_id(record["id"]))
        assert (await _ended(app, last))["context"]["policies"]["retry"]["retry_count"] == 2
        await app.executions.recover()
    finally:
        await app.close()
    again = await _start(home)
    try:
        await again.executions.recover()
        assert sorted(r["id"] for r in await _retries(again)) == [retry_id(record["id"]), last]
        assert _runs(marker) == 3
    finally:
        await again.close()


def test_retry_ids_sort_after_the_original_and_do_not_collide() -> None:
    from engine.executions import new_id

    original = new_id()
    first = retry_id(original)
    assert len(first) == 24 and int(first, 16) >= 0
    assert original < first < retry_id(first)
    assert retry_id(original) == first and retry_id(new_id()) != first
    assert len(retry_id("made-by-hand")) == 24
