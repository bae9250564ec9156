"""`GET /metrics` (Prometheus text format) and the middleware that times every HTTP request.

`/metrics` needs an API key unless `metrics.public: true`: the label values (action refs, rule
refs, adapters) describe the installation. The gauges that are states (executions running, the
outbox's backlog, queue depths) are read from the database when scraped, on its thread.

Requests are labelled with their route's template (`/api/v1/executions/{execution_id}`), never
the path itself, so ids and hook names people invent cannot grow the label set without bound; a
request no route matched counts as `unmatched`. A webhook's hook name is a route parameter, but
only names the config or the rules declare reach a 2xx, so `squall_webhook_requests_total` keeps
the name for answered hooks and `other` for the rest.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.metrics import CONTENT_TYPE_LATEST, metrics

router = APIRouter()
#: The route templates of webhooks (bot/http/webhooks.py): their requests also count by hook.
_WEBHOOKS = {"/api/v1/webhooks/st2": "st2", "/api/v1/webhooks/{name:path}": None}


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    squall = request.app.state.squall
    adapters = {name: bool(getattr(adapter, "online", True)) for name, adapter in squall.chat.adapters.items()}
    await squall.db(metrics.observe, squall.store, leader=squall.sensor_lead, adapters=adapters,
                    queues=squall.config.executor_kind == "procrastinate")
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Pure ASGI middleware (no per-request task or body copy): route, method, status and time.

    FastAPI hands the matched route of an included router as declared there (`/webhooks/st2`), without
    the prefix it was included under: `prefixes` are those prefixes, tried longest first."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.prefixes = tuple(sorted(prefixes, key=len, reverse=True))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not metrics.enabled:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what an exception that escapes every handler becomes

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = self._template(scope)
            metrics.request(template, scope["method"], status, time.perf_counter() - started)
            if template in _WEBHOOKS:
                metrics.webhook_requests.labels(_hook(template, scope, status), str(status)).inc()


    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path is None:
            return "unmatched"
        full = scope["path"]
        for prefix in self.prefixes:
            if full.startswith(prefix) and route.path_regex.match(full[len(prefix):]):  # type: ignore[union-attr]
                return prefix + path
        return path


def _hook(template: str, scope: dict[str, Any], status: int) -> str:
    # As the route reads it: `ci/build`, `ci/build/` and `ci/build//` are one hook, so one series.
    name = _WEBHOOKS[template] or str((scope.get("path_params") or {}).get("name") or "").strip("/")
    return name if 200 <= status < 300 else "other"
