"""`GET /healthz`: for load balancers and probes, so it needs no API key and touches no database.

`squall serve` answers it beside the API; a `squall worker` started with `--health-port` answers
it alone (`worker_api`), with what the worker runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from bot.http.state import api_state

router = APIRouter()


@router.get("/healthz", tags=["health"])
async def healthz(request: Request) -> dict[str, Any]:
    registry = api_state(request).squall.registry
    return {"status": "ok", "packs": len(registry.packs), "actions": len(registry.actions)}


def worker_api(worker: Any) -> FastAPI:
    """The HTTP face of a `squall worker` (`bot.worker.Worker`): `/healthz` only. It says 503 once
    the worker is stopping, so an orchestrator sees the drain."""
    app = FastAPI(title="Squall worker", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def worker_healthz() -> JSONResponse:
        registry = worker.squall.registry
        body = {"status": "stopping" if worker.stopping else "ok", "worker": worker.name,
                "queues": worker.queues, "running": sorted(worker.running), "packs": len(registry.packs),
                "actions": len(registry.actions)}
        return JSONResponse(body, status_code=503 if worker.stopping else 200)

    return app
