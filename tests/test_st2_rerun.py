"""StackStorm's execution verbs beyond run and cancel, through the API as st2client calls them:
`st2 execution re-run --tasks/--no-reset/--delay` (`POST /api/v1/executions/{id}/re_run`, spec §10.4),
`st2 execution pause|resume` (`PUT /api/v1/executions/{id}` with a status, spec §10.2), and an
execution's `log`, which must never go backwards in time."""

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
from tests.conftest import write
from tests.test_api import KEY, _home, disk_full, failing_audit
from tests.workflow_helpers import children, task_names, workflow_pack

#: `a` leaves a mark each time it runs; `b` fails until the gate file exists.
TWO_STEPS = """
version: 1.0
input: [marks, gate]
tasks:
  a:
    action: core.local
    input:
      cmd: "echo ran >> {{ ctx('marks') }}"
    next:
      - when: <% succeeded() %>
        do: b
  b:
    action: core.local
    input:
      cmd: "test -f {{ ctx('gate') }}"
"""

#: Every item fails until the gate file exists.
ITEMS = """
version: 1.0
input: [gate]
tasks:
  each:
    with: n in <% [1, 2] %>
    action: core.local
    input:
      cmd: "test -f {{ ctx('gate') }}"
"""

#: Waits for the gate file, then runs `after`.
PAUSABLE = """
version: 1.0
input: [gate]
tasks:
  wait:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 20
    next: [{do: after}]
  after:
    action: core.noop
"""


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    _home(home)
    workflow_pack(home, {"two_steps": ("orquesta", "marks: {type: string}\ngate: {type: string}", TWO_STEPS),
                         "items": ("orquesta", "gate: {type: string}", ITEMS),
                         "pausable": ("orquesta", "gate: {type: string}", PAUSABLE)})
    # The same workflow, gated by approvers: a re-run from its tasks must be refused as a new run is.
    write(home / "packs" / "wf" / "actions" / "gated.yaml", """
        name: gated
        runner_type: orquesta
        entry_point: workflows/two_steps.yaml
        parameters:
          marks: {type: string}
          gate: {type: string}
        approval: {groups: [approvers]}
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                 headers={"St2-Api-Key": KEY}) as c:
        yield c


async def _until(client: httpx.AsyncClient, execution_id: str, *statuses: str) -> dict[str, Any]:
    """The execution once it has one of `statuses`, read through the API (a workflow re-run in place
    or resumed keeps its id, so the engine's memory of its first end must not answer)."""
    for _ in range(2000):
        got = (await client.get(f"/api/v1/executions/{execution_id}")).json()
        if got["status"] in statuses:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"execution {execution_id} never reached {statuses}: {got['status']}")


async def _failed_two_steps(client: httpx.AsyncClient, tmp_path: Path, action: str = "wf.two_steps"
                            ) -> tuple[dict[str, Any], Path, Path]:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    created = await client.post("/api/v1/executions", json={"action": action, "parameters": {
        "marks": str(marks), "gate": str(gate)}})
    assert created.status_code == 201, created.text
    done = await _until(client, created.json()["id"], "succeeded", "failed")
    assert done["status"] == "failed" and marks.read_text() == "ran\n"
    return done, marks, gate


async def test_rerun_from_tasks_reruns_only_those_tasks(squall: Squall, client: httpx.AsyncClient,
                                                        tmp_path: Path) -> None:
    """`st2 execution re-run WF --tasks b` re-ran the whole workflow (task `a` ran twice): `tasks`
    was not read. The workflow is re-run from `b`, keeping `a`'s result."""
    failed, marks, gate = await _failed_two_steps(client, tmp_path)
    gate.touch()
    rerun = await client.post(f"/api/v1/executions/{failed['id']}/re_run",
                              json={"parameters": {}, "tasks": ["b"], "reset": ["b"], "delay": 0})
    assert rerun.status_code == 201, rerun.text
    final = await _until(client, rerun.json()["id"], "succeeded", "failed")
    assert final["status"] == "succeeded", final["result"]
    assert marks.read_text() == "ran\n"  # `a` did not run again
    assert final["context"]["re-run"]["tasks"] == ["b"]
    rows = await children(squall, final["id"])
    assert [(n, r["status"]) for n, r in zip(task_names(rows), rows, strict=True)] == [
        ("a", "succeeded"), ("b", "failed"), ("b", "succeeded")]


async def test_a_rerun_from_tasks_whose_audit_event_fails_re_runs_nothing(
        squall: Squall, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run in place took no event with its change (`WorkflowService.rerun`), so `CommandService.rerun`
    wrote the event after it: when that write failed, the re-run was made all the same, its
    event only logged. The event is stored in the transaction that sets the workflow `resuming` now: an event
    the full disk cannot take re-runs nothing (the 503 is true: the workflow is still failed, its task not run
    again); one that stores says the action, the original, the parameters and the tasks."""
    failed, marks, gate = await _failed_two_steps(client, tmp_path)
    gate.touch()
    tasks_before = await children(squall, failed["id"])
    failing_audit(squall, monkeypatch, "api.execution.rerun", disk_full())
    url = f"/api/v1/executions/{failed['id']}/re_run"
    assert (await client.post(url, json={"tasks": ["b"], "reset": ["b"]})).status_code == 503
    assert (await client.get(f"/api/v1/executions/{failed['id']}")).json()["status"] == "failed"
    assert await children(squall, failed["id"]) == tasks_before
    monkeypatch.undo()
    assert (await client.post(url, json={"tasks": ["b"], "reset": ["b"]})).status_code == 201
    assert (await _until(client, failed["id"], "succeeded", "failed"))["status"] == "succeeded"
    assert marks.read_text() == "ran\n"  # `a` did not run again
    [row] = await squall.db(squall.store.audit_list, 10, "api.execution.rerun")
    assert row["target"] == failed["id"] and row["detail"] == {
        "action": "wf.two_steps", "of": failed["id"], "parameters": failed["parameters"], "tasks": ["b"]}


async def test_rerun_from_tasks_refuses_what_stackstorm_refuses(squall: Squall, client: httpx.AsyncClient,
                                                                tmp_path: Path) -> None:
    failed, marks, _ = await _failed_two_steps(client, tmp_path)
    url = f"/api/v1/executions/{failed['id']}/re_run"
    both = await client.post(url, json={"parameters": {"marks": "x"}, "tasks": ["b"], "reset": ["b"]})
    assert both.status_code == 400
    assert "Parameters override is not supported when re-running task(s) for a workflow." in both.text
    unknown = await client.post(url, json={"tasks": ["nosuch"], "reset": ["nosuch"]})
    assert unknown.status_code == 400 and "no task nosuch ran" in unknown.text and "a, b" in unknown.text
    stray = await client.post(url, json={"tasks": ["b"], "reset": ["a"]})
    assert stray.status_code == 400 and "List of tasks to reset does not match" in stray.text
    delayed = await client.post(url, json={"tasks": ["b"], "reset": ["b"], "delay": 1000})
    assert delayed.status_code == 400 and "delay" in delayed.text

    greet = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}}))
    await _until(client, greet.json()["id"], "succeeded", "failed")
    plain = await client.post(f"/api/v1/executions/{greet.json()['id']}/re_run", json={"tasks": ["b"]})
    assert plain.status_code == 400 and "not a workflow" in plain.text

    items = await client.post("/api/v1/executions", json={"action": "wf.items",
                                                          "parameters": {"gate": str(tmp_path / "nogate")}})
    assert (await _until(client, items.json()["id"], "succeeded", "failed"))["status"] == "failed"
    no_reset = await client.post(f"/api/v1/executions/{items.json()['id']}/re_run", json={"tasks": ["each"]})
    assert no_reset.status_code == 400 and "with-items" in no_reset.text

    gate = tmp_path / "pause-gate"
    running = (await client.post("/api/v1/executions", json={"action": "wf.pausable",
                                                             "parameters": {"gate": str(gate)}})).json()
    busy = await client.post(f"/api/v1/executions/{running['id']}/re_run", json={"tasks": ["wait"]})
    assert busy.status_code == 409 and "has finished" in busy.text
    gate.touch()
    await _until(client, running["id"], "succeeded")
    assert marks.read_text() == "ran\n"  # nothing refused ran anything
    assert (await client.get(f"/api/v1/executions/{failed['id']}")).json()["status"] == "failed"


async def test_rerun_from_tasks_is_no_way_around_approvers(squall: Squall, client: httpx.AsyncClient,
                                                           tmp_path: Path) -> None:
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    record = await squall.executions.request("wf.gated", {"marks": str(marks), "gate": str(gate)}, {"user": "x"})
    assert (await _until(client, record["id"], "succeeded", "failed"))["status"] == "failed"
    gate.touch()
    refused = await client.post(f"/api/v1/executions/{record['id']}/re_run", json={"tasks": ["b"], "reset": ["b"]})
    assert refused.status_code == 403, refused.text
    assert (await client.get(f"/api/v1/executions/{record['id']}")).json()["status"] == "failed"


async def test_rerun_delay_holds_the_new_execution(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 execution re-run ID --delay MS` was ignored: the re-run ran at once."""
    first = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}})).json()
    await _until(client, first["id"], "succeeded", "failed")
    rerun = await client.post(f"/api/v1/executions/{first['id']}/re_run", json={"parameters": {}, "delay": 600_000})
    assert rerun.status_code == 201, rerun.text
    held = rerun.json()
    assert held["status"] == "delayed" and held["id"] != first["id"]
    assert (await client.delete(f"/api/v1/executions/{held['id']}")).json()["status"] == "canceled"


async def test_pause_and_resume_by_status(squall: Squall, client: httpx.AsyncClient, tmp_path: Path) -> None:
    """`st2 execution pause|resume` send `PUT /executions/{id}` with `pausing`/`resuming` (a 405 before)."""
    gate = tmp_path / "gate"
    record = (await client.post("/api/v1/executions", json={"action": "wf.pausable",
                                                            "parameters": {"gate": str(gate)}})).json()
    while len(await children(squall, record["id"])) < 1:
        await asyncio.sleep(0.02)
    paused = await client.put(f"/api/v1/executions/{record['id']}", json={"status": "pausing"})
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "pausing" and paused.json()["action"]["ref"] == "wf.pausable"
    gate.touch()
    await _until(client, record["id"], "paused")
    assert task_names(await children(squall, record["id"])) == ["wait"]  # `after` did not start
    again = await client.put(f"/api/v1/executions/{record['id']}", json={"status": "pausing"})
    assert again.status_code == 409 and "only a running one pauses" in again.text
    resumed = await client.put(f"/api/v1/executions/{record['id']}", json={"status": "resuming"})
    assert resumed.status_code == 200, resumed.text
    final = await _until(client, record["id"], "succeeded", "failed")
    assert final["status"] == "succeeded"
    assert task_names(await children(squall, record["id"])) == ["wait", "after"]
    ended = await client.put(f"/api/v1/executions/{record['id']}", json={"status": "resuming"})
    assert ended.status_code == 409 and "only a paused one resumes" in ended.text
    events = [row["event"] for row in await squall.db(squall.store.audit_list, limit=100)]
    assert "api.execution.pause" in events and "api.execution.resume" in events


async def test_a_pause_or_resume_whose_audit_event_fails_changes_nothing(squall: Squall, client: httpx.AsyncClient,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`PUT /executions/{id}`'s change and its `api.execution.<change>` event are one transaction: an event the
    full disk cannot take leaves the workflow as it was (the 503 is true); the change that works is audited
    with the status it wrote."""
    gate = tmp_path / "gate"
    record = (await client.post("/api/v1/executions", json={"action": "wf.pausable",
                                                            "parameters": {"gate": str(gate)}})).json()
    while len(await children(squall, record["id"])) < 1:
        await asyncio.sleep(0.02)
    url = f"/api/v1/executions/{record['id']}"
    failing_audit(squall, monkeypatch, "api.execution.pause", disk_full())
    assert (await client.put(url, json={"status": "pausing"})).status_code == 503
    assert (await client.get(url)).json()["status"] == "running"
    monkeypatch.undo()
    assert (await client.put(url, json={"status": "pausing"})).json()["status"] == "pausing"
    gate.touch()
    await _until(client, record["id"], "paused")
    failing_audit(squall, monkeypatch, "api.execution.resume", disk_full())
    assert (await client.put(url, json={"status": "resuming"})).status_code == 503
    assert (await client.get(url)).json()["status"] == "paused"
    monkeypatch.undo()
    assert (await client.put(url, json={"status": "resuming"})).status_code == 200
    assert (await _until(client, record["id"], "succeeded", "failed"))["status"] == "succeeded"
    rows = [row for row in await squall.db(squall.store.audit_list, limit=100) if row["target"] == record["id"]]
    assert [(row["event"], row["detail"]) for row in reversed(rows) if row["event"] != "api.execution"] == [
        ("api.execution.pause", {"action": "wf.pausable", "status": "pausing"}),
        ("api.execution.resume", {"action": "wf.pausable", "status": "resuming"})]


async def test_status_changes_refused(squall: Squall, client: httpx.AsyncClient) -> None:
    greet = (await client.post("/api/v1/executions", json={"action": "demo.greet", "parameters": {"who": "x"}})).json()
    await _until(client, greet["id"], "succeeded", "failed")
    not_workflow = await client.put(f"/api/v1/executions/{greet['id']}", json={"status": "pausing"})
    assert not_workflow.status_code == 400 and "only workflows" in not_workflow.text
    engine_only = await client.put(f"/api/v1/executions/{greet['id']}", json={"status": "succeeded"})
    assert engine_only.status_code == 400 and "pausing" in engine_only.text
    missing = await client.put("/api/v1/executions/0123456789abcdef01234567", json={"status": "pausing"})
    assert missing.status_code == 404
    anonymous = await httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                        base_url="http://squall").put(f"/api/v1/executions/{greet['id']}",
                                                                      json={"status": "pausing"})
    assert anonymous.status_code == 401


async def test_an_executions_log_never_goes_backwards(squall: Squall, client: httpx.AsyncClient) -> None:
    """`scheduled`/`running` were stamped before `requested` (the start_timestamp the store step took,
    after an early claim had stamped its own)."""
    for who in ("a", "b", "c", "d", "e"):
        created = (await client.post("/api/v1/executions", json={"action": "demo.greet",
                                                                 "parameters": {"who": who}})).json()
        done = await _until(client, created["id"], "succeeded", "failed")
        stamps = [entry["timestamp"] for entry in done["log"]]
        assert [e["status"] for e in done["log"]][:3] == ["requested", "scheduled", "running"]
        assert stamps == sorted(stamps), done["log"]
        assert done["start_timestamp"] == stamps[0]
