"""An inquiry left `pending` under a workflow that conducts nothing more is refused an answer, and canceled.

A workflow ended while `squall serve` was down, or by a cancel that failed midway, can leave its inquiry
`pending` (and, in a tree, the workflows between them `paused`) until the next start cancels what is left.
An answer given meanwhile was taken and ran the workflow's branch inside the ended tree. `respond` refuses it
now, naming the workflow and its status, and ends the inquiry `canceled`, as the workflow's cancel would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.executions import COMPLETED
from engine.inquiries import InquiryError
from engine.storage import utcnow
from tests.test_cli_cancel_tree import TREE, _paused_tree
from tests.test_crash_ownership import cli
from tests.test_inquiries import APPROVAL
from tests.workflow_helpers import children, task_names, until, workflow_pack


def _packs(home: Path) -> None:
    """`wf.approval` (asks olivia, then `deploy`) and the three-level tree `wf.outer` -> `wf.mid` -> `wf.inner`
    (which asks, then touches `approved` in the folder it is given)."""
    workflow_pack(home, {"approval": ("orquesta", "", APPROVAL), **TREE})


@pytest.fixture
async def app(home: Path) -> AsyncIterator[Squall]:
    _packs(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    assert squall.registry.errors == []
    try:
        yield squall
    finally:
        await squall.close()


async def _approval_paused(squall: Squall) -> tuple[str, dict[str, Any]]:
    """A run of `wf.approval` paused on its inquiry: the workflow's id and the pending inquiry."""
    record = await squall.executions.request("wf.approval", {}, {"user": "tester"})
    paused = await squall.executions.wait(record["id"], timeout=20)
    assert paused["status"] == "paused", paused
    (inquiry,) = [c for c in await children(squall, record["id"]) if c["runner"] == "inquirer"]
    assert inquiry["status"] == "pending"
    return record["id"], inquiry


async def _end_behind_its_back(squall: Squall, workflow_id: str, status: str) -> None:
    """What a cancel (or an end) that stopped after its first write leaves: the workflow ended, nobody told,
    what is under it as it was."""
    assert await squall.db(squall.store.update_execution, workflow_id, {
        "status": status, "end_timestamp": utcnow(), "result": {"error": f"ended {status} behind its back"}},
        expect=("paused",))


@pytest.mark.parametrize("status", ["canceled", "failed", "succeeded"])
async def test_an_answer_to_an_inquiry_whose_workflow_ended_is_refused_and_the_inquiry_canceled(
        app: Squall, status: str) -> None:
    workflow_id, inquiry = await _approval_paused(app)
    await _end_behind_its_back(app, workflow_id, status)

    with pytest.raises(InquiryError) as refused:
        await app.inquiries.respond(inquiry["id"], {"approved": True}, "olivia")
    assert refused.value.status == 409
    message = str(refused.value)
    assert inquiry["id"] in message and workflow_id in message and "wf.approval" in message
    assert f"is {status}" in message, message
    stored = await app.executions.get(inquiry["id"])
    assert stored["status"] == "canceled"
    assert workflow_id in stored["result"]["error"] and "response" not in stored["result"]
    await _settled(app)
    assert task_names(await children(app, workflow_id)) == ["prepare", "approve"]  # `deploy` never requested
    assert (await app.executions.get(workflow_id))["status"] == status  # as it was ended

    with pytest.raises(InquiryError, match="it is canceled"):  # and so it stays
        await app.inquiries.respond(inquiry["id"], {"approved": True}, "olivia")


async def test_an_answer_under_a_live_workflow_is_still_taken(app: Squall) -> None:
    """The check refuses only what no workflow would act on: the same answer under a paused workflow runs
    its branch, as ever."""
    workflow_id, inquiry = await _approval_paused(app)
    answered = await app.inquiries.respond(inquiry["id"], {"approved": True}, "olivia")
    assert answered["status"] == "succeeded"

    async def done() -> dict[str, Any] | None:
        app.executions._recent.pop(workflow_id, None)
        record = await app.executions.get(workflow_id)
        return record if record["status"] in COMPLETED else None

    assert (await until(done, "the workflow to end"))["status"] == "succeeded"
    assert task_names(await children(app, workflow_id)) == ["prepare", "approve", "deploy"]


async def test_an_inquiry_two_levels_under_a_canceled_root_is_refused_naming_the_root(
        app: Squall, tmp_path: Path) -> None:
    """Root canceled, the two workflows under it still `paused` (a cancel that failed midway): the inquiry's
    own workflow says nothing of the cancel, the root does. The answer is refused naming the root, the
    `approved` branch never runs, and the levels between end canceled too."""
    folder = tmp_path / "work"
    folder.mkdir()
    tree = await _paused_tree(app, folder)
    await _end_behind_its_back(app, tree["outer"], "canceled")

    with pytest.raises(InquiryError) as refused:
        await app.inquiries.respond(tree["ask"], {"ok": True}, "tester")
    message = str(refused.value)
    assert refused.value.status == 409 and tree["outer"] in message and "wf.outer" in message, message
    assert "is canceled" in message and tree["inner"] in message, message
    assert (await app.executions.get(tree["ask"]))["status"] == "canceled"

    async def levels_ended() -> bool:
        return [(await app.executions.get(tree[name]))["status"] for name in ("mid", "inner")] == ["canceled"] * 2

    await until(levels_ended, "the workflows between to end canceled")
    await _settled(app)
    assert task_names(await children(app, tree["inner"])) == ["q"]
    assert not (folder / "approved").exists()


def test_the_cli_refuses_an_answer_under_an_ended_workflow_naming_it(home: Path) -> None:
    """`squall inquiry respond` says why, exit 2, and the inquiry is canceled."""
    _packs(home)

    async def paused() -> tuple[str, str]:
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            workflow_id, inquiry = await _approval_paused(squall)
            await _end_behind_its_back(squall, workflow_id, "canceled")
            return workflow_id, inquiry["id"]
        finally:
            await squall.close()

    workflow_id, inquiry_id = asyncio.run(paused())
    answered = cli(home, "inquiry", "respond", inquiry_id, "-r", '{"approved": true}')
    assert answered.returncode == 2, (answered.stdout, answered.stderr)
    assert workflow_id in answered.stderr and "is canceled" in answered.stderr, answered.stderr
    shown = cli(home, "inquiry", "get", inquiry_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert '"status": "canceled"' in shown.stdout, shown.stdout


async def _settled(squall: Squall) -> None:
    """The listeners that heard of the ends are done: nothing more is coming."""

    async def quiet() -> bool:
        return squall.executions.notifying == 0 and not squall.workflows.flows

    await until(quiet, "the workflows' listeners to finish")
