"""A workflow task a `squall worker`'s drain cut short is run again, as one a crash or a reaper abandoned.
(With a real worker and SIGTERM: `tests/test_worker_stop.py`.)

A task cut short so ends `abandoned` with the worker's reason (`its worker host:pid was stopped and its
drain (3 s) ran out while it ran`). The workflow ran a task again only when its abandoned child's error
said 'Squall s…' (`Squall stopped …`, `Squall shut down …`): a drain's error does not, so the workflow
failed (an ActionChain ended `abandoned`) where a kill -9 of the same worker had the task run again. The
end of a run that went away is now marked in its result (`ABANDONED_BY`), and the workflow reads that."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.worker import Worker
from engine.config import load_config
from engine.executions import ABANDONED_BY
from engine.processes import process_identity
from engine.storage import Store
from tests.conftest import write
from tests.test_crash_ownership import _dead_pid
from tests.test_workflow_cut_while_canceling import GATED, GATED_CHAIN
from tests.workflow_helpers import children, task_names, until, workflow_pack


async def _drained_mid_task(home: Path, gate: Path) -> str:
    """A run of `wf.gated` whose `wait` task a worker's drain cut short (`Worker.cut_short`, then the
    stop's cut, `executor.shutdown_grace: 0`), its process then gone: what a `squall worker` stopped with
    SIGTERM leaves for another to conduct on. Its id."""
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("wf.gated", {"gate": str(gate)}, {"user": "tester"})

        async def waiting() -> list[dict[str, Any]]:
            rows = await children(squall, record["id"])
            return [row for row in rows if task_names([row]) == ["wait"] and row["status"] == "running"]

        [task] = await until(waiting, "the `wait` task to run")
        Worker(squall).cut_short([task["id"]], 3.0)  # the drain ran out with it still running
    finally:
        await squall.close()  # the task ends `abandoned`; the workflow stays `running`, to be conducted on
    store = Store.open(load_config(home / "config.yml").database_url)
    try:
        assert store.get_execution(record["id"])["status"] == "running"
        gone = {"hostname": socket.gethostname(), **process_identity(), "pid": _dead_pid()}
        assert store.update_execution(record["id"], {"runner_info": gone}, expect=("running",))
    finally:
        store.close()
    return str(record["id"])


@pytest.mark.parametrize("kind", ["orquesta", "action-chain"])
async def test_a_task_a_drain_cut_short_runs_again_and_the_workflow_succeeds(
        home: Path, tmp_path: Path, kind: str) -> None:
    write(home / "config.yml", (home / "config.yml").read_text() + "executor:\n  shutdown_grace: 0\n")
    workflow_pack(home, {"gated": (kind, "gate: {type: string}", GATED if kind == "orquesta" else GATED_CHAIN)})
    gate = tmp_path / "gate"
    workflow_id = await _drained_mid_task(home, gate)
    gate.touch()
    squall = await Squall.start(load_config(home / "config.yml"), recover=True)
    try:
        squall.executions._recent.pop(workflow_id, None)
        done = await squall.executions.wait(workflow_id, timeout=30)
        rows = await children(squall, workflow_id)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert [(task_names([row])[0], row["status"]) for row in rows] == [
        ("first", "succeeded"), ("wait", "abandoned"), ("wait", "succeeded")]  # cut short, so run again
    cut = rows[1]["result"]
    assert "was stopped and its drain (3 s) ran out while it ran" in cut["error"], cut  # the words people see
    assert cut[ABANDONED_BY] == "drain"


def test_an_end_a_stopping_worker_could_not_store_is_said_to_be_left_to_the_reaper(
        squall: Squall, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stop's end that the database failed to store is given up: a worker's job (`job_id` in its owner)
    is ended by a reaper once the database is back, as no start ends it; the log said the next start did."""
    monkeypatch.setattr(squall.executions, "executor", SimpleNamespace(closing=True))
    down = sa.exc.OperationalError("UPDATE executions", {}, Exception("connection refused"))
    caplog.set_level(logging.WARNING, logger="engine.executions")
    for owner in ({"worker": "vm:9367", "job_id": 12}, {"pid": 4242}):
        assert not squall.executions._end_tried_again({"id": "cut", "runner_info": owner}, "abandoned", down, 1, 0.5)
    said = [r.getMessage() for r in caplog.records if "the end of cut (abandoned) was not stored" in r.getMessage()]
    assert len(said) == 2 and said[0].endswith("a reaper ends it abandoned once the database is back"), said
    assert said[1].endswith("the next start ends it abandoned"), said
