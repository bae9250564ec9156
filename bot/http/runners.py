"""`/api/v1/runnertypes`: the runners actions name, with their parameters.

`st2 run` reads the action's runner here (`?name=`) to cast `key=value` arguments that belong to the
runner (`timeout=30`, `env=...`) before it requests the execution. The list is paged as every list is
(`Paging`: `limit`, `offset`, `X-Total-Count`), so that a client paging by offset stops."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response

from bot.http.paging import Paging
from engine.runners import RUNNER_TYPES, RunnerType

router = APIRouter()


def runner_public(runner: RunnerType) -> dict[str, Any]:
    """A runner as StackStorm's API shows it (`id` and `name` are both the runner's name)."""
    return {"id": runner.name, "name": runner.name, "uid": f"runner_type:{runner.name}",
            "description": runner.description, "enabled": True, "runner_parameters": runner.parameters,
            "output_key": runner.output_key}


@router.get("/runnertypes", tags=["actions"])
async def list_runners(response: Response, name: str | None = None,
                       paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filter `name` (`st2 run` reads the action's runner by it)."""
    runners = [r for r in RUNNER_TYPES.values() if name in (None, r.name)]
    return [runner_public(r) for r in paging.page(runners, response)]


@router.get("/runnertypes/{name}", tags=["actions"])
async def get_runner(name: str) -> dict[str, Any]:
    runner = RUNNER_TYPES.get(name)
    if runner is None:
        raise HTTPException(404, f"Unknown runner type {name!r}; known: {', '.join(sorted(RUNNER_TYPES))}.")
    return runner_public(runner)
