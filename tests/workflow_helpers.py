"""Helpers for workflow tests: a pack of workflow actions written the way authors write them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.app import Squall
from tests.conftest import write


def workflow_pack(home: Path, workflows: dict[str, tuple[str, str, str]], pack: str = "wf") -> None:
    """`workflows`: name -> (runner_type, parameters YAML block, workflow file text)."""
    write(home / "packs" / pack / "pack.yaml", f"ref: {pack}\nname: {pack}\nversion: 0.1.0\n")
    for name, (runner, parameters, text) in workflows.items():
        folder = "chains" if runner == "action-chain" else "workflows"
        params = ("parameters:\n" + "\n".join("  " + line for line in parameters.strip().splitlines())
                  if parameters.strip() else "")
        write(home / "packs" / pack / "actions" / f"{name}.yaml",
              f"name: {name}\nrunner_type: {runner}\nentry_point: {folder}/{name}.yaml\n{params}\n")
        write(home / "packs" / pack / "actions" / folder / f"{name}.yaml", text)


async def run(squall: Squall, ref: str, parameters: dict[str, Any] | None = None,
              timeout: float = 30) -> dict[str, Any]:
    record = await squall.executions.request(ref, parameters or {}, {"user": "tester"})
    return await squall.executions.wait(record["id"], timeout=timeout)


async def children(squall: Squall, execution_id: str) -> list[dict[str, Any]]:
    """The children of a workflow, oldest first."""
    rows = await squall.executions.list(parent=execution_id, limit=100_000)
    return sorted(rows, key=lambda r: r["id"])


def task_names(rows: list[dict[str, Any]]) -> list[str]:
    return [r["context"]["workflow_task"]["task"] for r in rows]


async def until(check: Callable[[], Awaitable[Any]], what: str, seconds: float = 20) -> Any:
    """Poll `check` until it returns something true (a deadline, not a timing assertion)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not (value := await check()):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return value


async def pending_ask(squall: Squall, execution_id: str) -> dict[str, Any]:
    """The workflow's inquiry once it waits for an answer."""

    async def asked() -> dict[str, Any] | None:
        rows = [r for r in await children(squall, execution_id) if r["action"] == "core.ask"]
        return rows[-1] if rows and rows[-1]["status"] == "pending" else None

    return await until(asked, f"workflow {execution_id} to ask")


async def settled(squall: Squall, execution_id: str, answered: str) -> dict[str, Any]:
    """The workflow once it ended, or once it waits on an inquiry other than the `answered` one."""

    async def check() -> dict[str, Any] | None:
        record = await squall.executions.get(execution_id)
        if record["status"] in ("succeeded", "failed", "canceled", "timeout", "abandoned"):
            return record
        asks = [r for r in await children(squall, execution_id) if r["action"] == "core.ask"]
        return record if any(r["id"] != answered and r["status"] == "pending" for r in asks) else None

    return await until(check, f"workflow {execution_id} to go on after its answer")


def rewrite(path: Path, text: str) -> None:
    """A pack's file updated in place (a `git pull`), its modification time moved on so that nothing
    keyed on the time takes it for the old one."""
    before = path.stat().st_mtime_ns
    write(path, text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


async def answer_after_an_edit(squall: Squall, ref: str, workflow_file: Path, edited: str,
                               effects: Path) -> tuple[dict[str, Any], list[str]]:
    """Run `ref` (prep, approve, deploy) until it asks, rewrite its file as `edited`, answer yes: the
    workflow as it went on, and the side effects its tasks wrote to `effects`."""
    record = await squall.executions.request(ref, {"effects": str(effects)}, {"user": "tester"})
    ask = await pending_ask(squall, record["id"])
    rewrite(workflow_file, edited)
    await squall.inquiries.respond(ask["id"], {"ok": True}, "tester")
    done = await settled(squall, record["id"], ask["id"])
    return done, effects.read_text().split()
