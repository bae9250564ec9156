"""Helpers for workflow tests: a pack of workflow actions written the way authors write them."""

from __future__ import annotations

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
