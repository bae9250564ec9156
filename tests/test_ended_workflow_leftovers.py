"""What a workflow that ended left under it is ended by `squall serve` as it goes, not only at the next start.

A CLI killed in the middle of a workflow's cancel (or one that ended it while `squall serve` was down) leaves
tasks `requested` and inquiries `pending` under the ended tree. Only recovery at start canceled them
(`ExecutionService._cancel_under_ended`): meanwhile the poll ran the requested task inside the canceled tree,
and the inquiry list showed the inquiry as waiting until an answer to it was refused. The poll now cancels
such a task instead of running it (`_canceled_under_ended`), and the list cancels such an inquiry as an
answer to it would (`InquiryService._cancel_if_workflow_stopped`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.app import Squall
from engine.config import Config
from engine.executions import COMPLETED
from engine.inquiries import InquiryError
from engine.storage import utcnow
from tests.test_cli_cancel_tree import _paused_tree, _tree_pack
from tests.test_inquiries_stopped_workflow import _approval_paused, _end_behind_its_back, _packs
from tests.workflow_helpers import until


async def test_the_poll_cancels_a_task_left_under_an_ended_workflow_instead_of_running_it(
        home: Path, config: Config, caplog: pytest.LogCaptureFixture) -> None:
    """outer (canceled behind its back) -> mid -> inner (both still `paused`, as a cancel that failed midway
    leaves them) -> a `requested` task: one poll cancels the task, naming the root in its warning, and the
    task never runs. The same task under a tree still paused on its inquiry is run, as the poll always ran it."""
    _tree_pack(home)
    folder = home / "work"
    folder.mkdir()
    squall = await Squall.start(config)
    try:
        ended = await _paused_tree(squall, folder)
        live = await _paused_tree(squall, folder)
        executions = squall.executions
        executor, executions.executor = executions.executor, None  # stored, not run, until the poll

        async def held(parent: str, name: str) -> str:
            record = await executions.request("core.local", {"cmd": f"touch {folder / name}"}, {"user": "tester"},
                                              parent=parent)
            assert record["status"] == "requested"
            return record["id"]

        leftover = await held(ended["inner"], "ran-under-canceled-root")
        control = await held(live["inner"], "ran-under-live-tree")
        assert await _end_quietly(squall, ended["outer"], "canceled")
        executions.executor = executor

        with caplog.at_level(logging.WARNING, logger="engine.executions"):
            await executions.poll()
        stored = await squall.db(squall.store.get_execution, leftover)
        assert stored["status"] == "canceled", stored
        warned = [r.getMessage() for r in caplog.records if leftover in r.getMessage()]
        assert len(warned) == 1 and ended["outer"] in warned[0] and "wf.outer" in warned[0], warned
        assert "canceled" in warned[0], warned

        async def control_ended() -> dict | None:
            record = await squall.db(squall.store.get_execution, control)
            return record if record["status"] in COMPLETED else None

        assert (await until(control_ended, "the live tree's task to run"))["status"] == "succeeded"
        assert (await squall.db(squall.store.get_execution, live["outer"]))["status"] == "paused"
    finally:
        await squall.close()
    assert (folder / "ran-under-live-tree").exists()
    assert not (folder / "ran-under-canceled-root").exists()


async def _end_quietly(squall: Squall, workflow_id: str, status: str) -> bool:
    """The workflow ended `status` with nothing under it told (`_end_behind_its_back`, from whatever status)."""
    record = await squall.db(squall.store.get_execution, workflow_id)
    return await squall.db(squall.store.update_execution, workflow_id, {
        "status": status, "end_timestamp": utcnow(), "result": {"error": f"ended {status} behind its back"}},
        expect=(record["status"],))


@pytest.mark.parametrize("status", ["canceled", "failed"])
async def test_the_inquiry_list_cancels_an_inquiry_whose_workflow_ended_and_leaves_it_out(
        home: Path, config: Config, status: str) -> None:
    """Listed, it showed as waiting until someone's answer was refused; now the list ends it `canceled` as that
    answer would, naming the workflow, and every view (the list, the record, an answer) agrees. An inquiry
    under a workflow still waiting on it is listed as ever."""
    _packs(home)
    squall = await Squall.start(config)
    try:
        stopped_workflow, stopped = await _approval_paused(squall)
        _, waiting = await _approval_paused(squall)
        await _end_behind_its_back(squall, stopped_workflow, status)

        listed = [item["id"] for item in await squall.inquiries.list()]
        assert stopped["id"] not in listed and waiting["id"] in listed, listed
        record = await squall.executions.get(stopped["id"])
        assert record["status"] == "canceled", record
        assert stopped_workflow in record["result"]["error"] and f"is {status}" in record["result"]["error"]
        assert (await squall.inquiries.get(waiting["id"]))["status"] == "pending"
        with pytest.raises(InquiryError, match="it is canceled"):
            await squall.inquiries.respond(stopped["id"], {"approved": True}, "olivia")
    finally:
        await squall.close()


async def test_the_inquiry_list_cancels_an_inquiry_under_a_canceled_root(home: Path, config: Config) -> None:
    """Root canceled, the workflows between still `paused`: the inquiry's own workflow says nothing of the
    cancel, the root does, and the list leaves the inquiry out, canceled, its error naming the root."""
    _tree_pack(home)
    folder = home / "work"
    folder.mkdir()
    squall = await Squall.start(config)
    try:
        tree = await _paused_tree(squall, folder)
        assert tree["ask"] in [item["id"] for item in await squall.inquiries.list()]
        assert await _end_quietly(squall, tree["outer"], "canceled")

        assert tree["ask"] not in [item["id"] for item in await squall.inquiries.list()]
        record = await squall.executions.get(tree["ask"])
        assert record["status"] == "canceled" and tree["outer"] in record["result"]["error"], record
    finally:
        await squall.close()
    assert not (folder / "approved").exists()
