"""A run's task cancelled a second time while its first cancel is being recorded (the serve loop's poll sees the
row `canceling` and calls `_cancel_here` again) still records its end. Before, the second cancel landed between
the live output's close and `_finish`, which it skipped: the task ended, nothing wrote the end, and every later
poll found no task to stop, so the execution stayed `canceling` for ever (seen once in CI, through the web UI's
bulk cancel). And the poll's safety net for what such a race leaves: a `canceling` execution of this process
that nothing here runs any more."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import engine.executions as executions_module
import engine.output as output
from bot.app import Squall
from tests.conftest import write


async def _status(squall: Squall, execution_id: str, wanted: set[str], seconds: float = 15) -> dict:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        record = await squall.executions.get(execution_id)
        if record["status"] in wanted or asyncio.get_running_loop().time() > deadline:
            return record
        await asyncio.sleep(0.02)


async def test_a_second_cancel_during_the_first_ones_clean_up_still_ends_the_run(
        config_home: Path, squall: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    close = output.OutputSink.close
    again: list[bool] = []

    async def cancelled_again(self: output.OutputSink) -> None:
        """The poll's cancel, landing as the first cancel's clean-up closes the live output."""
        task = squall.executions.executor.inner._tasks.get(self.execution_id)  # type: ignore[union-attr]
        if task is not None and task.cancelling():
            again.append(True)
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(
                squall.executions._cancel_here(self.execution_id)))
        await close(self)

    monkeypatch.setattr(output.OutputSink, "close", cancelled_again)
    record = await squall.executions.request("slow.sleep", {})
    assert (await _status(squall, record["id"], {"running"}))["status"] == "running"
    await squall.executions.cancel(record["id"])
    ended = await _status(squall, record["id"], {"canceled", "succeeded", "failed", "abandoned"})
    assert again == [True]
    assert ended["status"] == "canceled", ended
    assert record["id"] not in squall.executions.executor.running


@pytest.fixture
def config_home(home: Path) -> Path:
    write(home / "packs" / "slow" / "pack.yaml", "ref: slow\nname: slow\nversion: 0.1.0\n")
    write(home / "packs" / "slow" / "actions" / "sleep.yaml", """
        name: sleep
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: sleep 60, immutable: true}
    """)
    return home


async def test_a_canceling_execution_this_process_no_longer_runs_is_ended_by_the_poll(squall: Squall) -> None:
    # What that race left: `canceling`, owned by this very process, and no task here to stop. Nobody else
    # ends what a live process owns; the poll ends it once a few polls in a row found nothing running it.
    done = await squall.executions.wait((await squall.executions.request("core.noop", {}))["id"])
    store = squall.executions.db.store
    stored = await squall.executions.db(store.get_execution, done["id"])
    left = {**stored, "id": "0" * 23 + "1", "status": "canceling", "end_timestamp": None,
            "runner_info": dict(squall.executions.owner), "result": None}
    await squall.executions.db(store.insert_execution, left)
    for _ in range(executions_module.UNHELD_POLLS - 1):
        await squall.executions.poll()
        # a claim and its task are made a moment apart: not yet
        assert (await squall.executions.get(left["id"]))["status"] == "canceling"
    await squall.executions.poll()
    ended = await squall.executions.get(left["id"])
    assert ended["status"] == "canceled"
    assert "stopped without recording its end" in ended["result"]["error"]
    assert ended["log"][-1]["status"] == "canceled"
