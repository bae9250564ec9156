"""`st2 execution re-run ID --tasks T` waits for the re-run, as st2client waits for any run it starts.

The in-place re-run was answered `resuming`, which st2client does not wait on: the command returned at once
with exit 0 even when the re-run then failed. StackStorm's re-run of tasks answers a new execution,
`requested`; Squall's answers its workflow `requested` until it is claimed, and stores `resuming` as
before (the status a claim and recovery take up)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.test_api import KEY, _home
from tests.workflow_helpers import children, task_names, workflow_pack

#: The statuses st2client 3.9.0 keeps polling on (`ActionRunCommandMixin._get_execution_result`'s
#: `pending_statuses`, which `st2 execution re-run` uses), and its interval between polls (`poll_interval`).
ST2CLIENT_WAITS_ON = ("requested", "scheduled", "running", "canceling")
ST2CLIENT_POLL_SECONDS = 2

#: One task that fails every time it runs, after a moment (so a client that waits sees it run).
FAILS = """
version: 1.0
tasks:
  boom:
    action: core.local
    input:
      cmd: "sleep 0.3; exit 1"
"""


@pytest.fixture
async def client(home: Path) -> AsyncIterator[tuple[Squall, httpx.AsyncClient]]:
    _home(home)
    workflow_pack(home, {"fails": ("orquesta", "", FAILS)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as c:
            yield squall, c
    finally:
        await squall.triggers.settle()
        await squall.close()


async def _as_st2client_waits(client: httpx.AsyncClient, answer: dict[str, Any]) -> dict[str, Any]:
    """What `st2 execution re-run` ends with: it polls while the status is one it waits on, every
    `ST2CLIENT_POLL_SECONDS` (with a bound, so a hang fails the test instead of stalling it)."""
    execution = answer
    for _ in range(30):
        if execution["status"] not in ST2CLIENT_WAITS_ON:
            return execution
        await asyncio.sleep(ST2CLIENT_POLL_SECONDS)
        execution = (await client.get(f"/api/v1/executions/{execution['id']}")).json()
    raise AssertionError(f"the re-run never ended: {execution['status']}")


async def test_a_rerun_of_tasks_is_answered_with_a_status_st2client_waits_on(
        client: tuple[Squall, httpx.AsyncClient]) -> None:
    squall, api = client
    created = await api.post("/api/v1/executions", json={"action": "wf.fails", "parameters": {}})
    assert created.status_code == 201, created.text
    first = await squall.executions.wait(created.json()["id"], timeout=30)
    assert first["status"] == "failed"

    rerun = await api.post(f"/api/v1/executions/{first['id']}/re_run", json={"tasks": ["boom"], "reset": ["boom"]})
    assert rerun.status_code == 201, rerun.text
    answer = rerun.json()
    assert answer["id"] == first["id"]  # re-run in place
    assert answer["status"] in ST2CLIENT_WAITS_ON, answer["status"]

    final = await _as_st2client_waits(api, answer)
    assert final["status"] == "failed", final  # as the re-run ended, not as the client was first told
    rows = await children(squall, final["id"])
    assert [(name, row["status"]) for name, row in zip(task_names(rows), rows, strict=True)] == [
        ("boom", "failed"), ("boom", "failed")]
    # What is stored is as before: `resuming` for the claim to take up, then `running`, never `requested` again.
    statuses = [entry["status"] for entry in final["log"]]
    assert statuses[statuses.index("resuming"):] == ["resuming", "running", "failed"], statuses
