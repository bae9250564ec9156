"""`GET /healthz`: for load balancers and probes, so it needs no API key and touches no database.

`squall serve` answers it beside the API; a `squall worker` started with `--health-port` answers
it (`worker_api`), with what the worker runs, and its `/metrics` beside it (behind an API key unless
`metrics.public`, as on serve).

Both answer 503, `"status": "database failing"` and a `reason` naming the database's failure, while
the database takes no writes (`Database.failing`: the last group of writes failed, a full disk say,
and none has committed since), so an orchestrator sees it rather than a service that answers every
request with an error. It costs no query: a `SELECT 1` would not show a full disk anyway."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from bot.http.key_auth import require_key
from bot.http.state import ApiSettings, ApiState, api_state
from engine.metrics import CONTENT_TYPE_LATEST, metrics
from engine.storage import iso

router = APIRouter()


def database_failing(squall: Any) -> str | None:
    """Why `squall`'s database takes no writes, for `/healthz`; None while it does."""
    failing = getattr(getattr(squall, "db", None), "failing", None)
    if failing is None:
        return None
    reason, since = failing
    return f"the database failed at {iso(since)} ({reason}) and has stored no write since"


@router.get("/healthz", tags=["health"])
async def healthz(request: Request, response: Response) -> dict[str, Any]:
    squall = api_state(request).squall
    registry = squall.registry
    failing = database_failing(squall)
    if failing is None:
        return {"status": "ok", "packs": len(registry.packs), "actions": len(registry.actions)}
    response.status_code = 503
    return {"status": "database failing", "reason": failing, "packs": len(registry.packs),
            "actions": len(registry.actions)}


def worker_api(worker: Any) -> FastAPI:
    """The HTTP face of a `squall worker` (`bot.worker.Worker`): `/healthz`, which says 503 once
    the worker is stopping (an orchestrator sees the drain), and `/metrics`."""
    squall = worker.squall
    app = FastAPI(title="Squall worker", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.api = ApiState(squall=squall, settings=ApiSettings.from_config(squall.config.section("api")))

    @app.get("/metrics", include_in_schema=False,
             dependencies=[] if squall.config.metrics_public else [Depends(require_key)])
    async def worker_metrics() -> Response:
        """The worker's Prometheus metrics (its executions, queues, the process), behind the API's
        keys (config `api.keys`, `$SQUALL_API_KEYS`, the stored ones) unless `metrics.public`, as on
        `squall serve`: its labels describe the installation."""
        await squall.db(metrics.observe, squall.store, leader=squall.sensor_lead, adapters={}, queues=True)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def worker_healthz() -> JSONResponse:
        registry = worker.squall.registry
        failing = database_failing(worker.squall)
        status = "stopping" if worker.stopping else "database failing" if failing is not None else "ok"
        body = {"status": status, "worker": worker.name,
                "queues": worker.queues, "running": sorted(worker.running), "packs": len(registry.packs),
                "actions": len(registry.actions), **({"reason": failing} if failing is not None else {})}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    return app
