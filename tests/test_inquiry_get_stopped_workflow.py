"""An inquiry whose workflow conducts nothing more is shown `canceled` by `get`, as `list` and `respond` end it.

`list` left such an inquiry out, ending it `canceled`, and `respond` refused an answer to it and ended it so;
`get` (the web's inquiry page, GET /api/v1/inquiries/<id>, `squall inquiry get`) still showed it `pending`,
waiting for an answer nothing would act on. It ends it `canceled` now and shows it so; an inquiry its
workflow still waits on is shown `pending`, as ever."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.app import Squall
from engine.config import Config, load_config
from engine.inquiries import InquiryError
from tests.test_cli_cancel_tree import _paused_tree, _tree_pack
from tests.test_crash_ownership import cli
from tests.test_inquiries_stopped_workflow import _approval_paused, _end_behind_its_back, _packs


@pytest.mark.parametrize("status", ["canceled", "failed", "succeeded"])
async def test_get_shows_an_inquiry_whose_workflow_ended_canceled(home: Path, config: Config, status: str) -> None:
    _packs(home)
    squall = await Squall.start(config)
    try:
        stopped_workflow, stopped = await _approval_paused(squall)
        waiting_workflow, waiting = await _approval_paused(squall)
        await _end_behind_its_back(squall, stopped_workflow, status)

        shown = await squall.inquiries.get(stopped["id"])
        assert shown["status"] == "canceled", shown
        stored = await squall.executions.get(stopped["id"])
        assert stored["status"] == "canceled", stored
        assert stopped_workflow in stored["result"]["error"] and f"is {status}" in stored["result"]["error"]
        assert "response" not in stored["result"]
        assert (await squall.inquiries.get(stopped["id"]))["status"] == "canceled"  # and so it stays
        with pytest.raises(InquiryError, match="it is canceled") as refused:  # every view agrees
            await squall.inquiries.respond(stopped["id"], {"approved": True}, "olivia")
        assert refused.value.status == 409
        assert stopped["id"] not in [item["id"] for item in await squall.inquiries.list()]

        assert (await squall.inquiries.get(waiting["id"]))["status"] == "pending"  # its workflow waits on it
        assert (await squall.executions.get(waiting_workflow))["status"] == "paused"
    finally:
        await squall.close()


async def test_get_shows_an_inquiry_under_a_canceled_root_canceled(home: Path, config: Config) -> None:
    """Root canceled, the workflows between still `paused`: the inquiry's own workflow says nothing of the
    cancel, the root does; `get` ends the inquiry `canceled`, its error naming the root."""
    _tree_pack(home)
    folder = home / "work"
    folder.mkdir()
    squall = await Squall.start(config)
    try:
        tree = await _paused_tree(squall, folder)
        assert (await squall.inquiries.get(tree["ask"]))["status"] == "pending"
        await _end_behind_its_back(squall, tree["outer"], "canceled")

        assert (await squall.inquiries.get(tree["ask"]))["status"] == "canceled"
        record = await squall.executions.get(tree["ask"])
        assert record["status"] == "canceled" and tree["outer"] in record["result"]["error"], record
    finally:
        await squall.close()
    assert not (folder / "approved").exists()


def test_the_cli_shows_an_inquiry_whose_workflow_ended_canceled(home: Path) -> None:
    """`squall inquiry get` of an inquiry nobody tried to answer: canceled, not pending."""
    _packs(home)

    async def ended_behind_its_back() -> str:
        squall = await Squall.start(load_config(home / "config.yml"))
        try:
            workflow_id, inquiry = await _approval_paused(squall)
            await _end_behind_its_back(squall, workflow_id, "canceled")
            return str(inquiry["id"])
        finally:
            await squall.close()

    inquiry_id = asyncio.run(ended_behind_its_back())
    shown = cli(home, "inquiry", "get", inquiry_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "canceled", shown.stdout
