"""`create_api`: the FastAPI app, assembled from the routers of this package.

It checks config `api.*` once (`ApiSettings`), puts the state the routes share on `app.state.api`,
installs the body guard and StackStorm-shaped errors (and, `st2_urls`, a 404 naming the right URL for a
request sent where only StackStorm serves it), and decides which routers need an API key: all
under `/api/v1` but the webhooks (signed instead); `/auth/v1/tokens` checks its own credentials.
Adapters that platforms call over HTTP mount their own routes last."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request

from bot.http import (
    actions,
    alias_execution,
    aliases,
    apikeys,
    configs,
    docs_pages,
    executions,
    health,
    inquiries,
    keys,
    metrics,
    packs,
    policies,
    rbac,
    rules,
    runners,
    sensors,
    service_registry,
    stream,
    timers,
    tokens,
    traces,
    triggers,
    user,
    webhooks,
    workflows,
)
from bot.http.body_guard import BodyGuard
from bot.http.errors import install_error_handlers
from bot.http.key_auth import require_key
from bot.http.st2_urls import Prefixes
from bot.http.st2_urls import install as point_misdirected
from bot.http.state import ApiSettings, ApiState
from bot.web import mount as mount_web

if TYPE_CHECKING:
    from bot.app import Squall

API_PREFIX = "/api/v1"
#: Where StackStorm's auth service answers behind its usual proxy (`ST2_AUTH_URL=http://host:9101/auth/v1`).
AUTH_PREFIX = "/auth/v1"
#: StackStorm's stream service (server-sent events), on the API's port and keys.
STREAM_PREFIX = "/stream/v1"
#: The API's description (OpenAPI), which the /docs and /redoc pages read.
OPENAPI_URL = "/openapi.json"
#: Routers under `API_PREFIX` whose every route needs an API key, in the order they are matched.
KEYED_ROUTERS = (actions.router, runners.router, packs.router, executions.router, aliases.router,
                 alias_execution.router, rules.router, triggers.router, sensors.router, keys.router, inquiries.router,
                 user.router, apikeys.router, configs.router, policies.router, timers.router, traces.router,
                 workflows.router, rbac.router, service_registry.router)


async def openapi(request: Request) -> dict[str, Any]:
    """The API's description, behind a key (`api.public_docs: false`)."""
    return request.app.openapi()


def create_api(squall: Squall) -> FastAPI:
    """The HTTP API over `squall` (its chat side gives the alias index, the command path and the
    routes of platforms that call Squall over HTTP)."""
    settings = ApiSettings.from_config(squall.config.section("api"))
    # The API's description answers without a key unless api.public_docs is false: then /openapi.json
    # needs one, and the /docs and /redoc pages (which a browser loads without a key) and their files are
    # not served. The pages are ours (`docs_pages`), not FastAPI's, which load their files from a CDN.
    public_docs = settings.public_docs
    app = FastAPI(title="Squall API", version="1.0", description="StackStorm-compatible ChatOps automation API.",
                  openapi_url=OPENAPI_URL if public_docs else None, docs_url=None, redoc_url=None)
    app.add_middleware(BodyGuard, limit=settings.max_body)
    app.add_middleware(metrics.RequestMetrics, prefixes=(API_PREFIX, AUTH_PREFIX, STREAM_PREFIX))
    app.state.squall = squall
    app.state.api = ApiState(squall=squall, settings=settings)
    install_error_handlers(app)

    app.include_router(health.router)
    app.include_router(metrics.router, dependencies=[] if squall.config.metrics_public else [Depends(require_key)])
    if public_docs:
        docs_pages.install(app, OPENAPI_URL)
    else:
        app.add_api_route(OPENAPI_URL, openapi, methods=["GET"], include_in_schema=False,
                          dependencies=[Depends(require_key)])
    for router in KEYED_ROUTERS:
        app.include_router(router, prefix=API_PREFIX, dependencies=[Depends(require_key)])
    app.include_router(executions.stream_router, prefix=STREAM_PREFIX, dependencies=[Depends(require_key)])
    app.include_router(stream.router, prefix=STREAM_PREFIX, dependencies=[Depends(require_key)])
    app.include_router(webhooks.router, prefix=API_PREFIX)
    app.include_router(tokens.router, prefix=AUTH_PREFIX)
    mount_web(app)
    # StackStorm's direct URLs (`/v1/...`, `/tokens`) and an API client's request to a page: a 404 naming the URL
    point_misdirected(app, Prefixes(api=API_PREFIX, auth=AUTH_PREFIX, stream=STREAM_PREFIX))
    _mount_adapters(app, squall)
    return app


def _mount_adapters(app: FastAPI, squall: Squall) -> None:
    """Platforms that call Squall over HTTP (Slack's Events API, Mattermost's slash commands) mount
    their own routes; they verify the platform's signature or token instead of an API key."""
    for adapter in squall.chat.adapters.values():
        mount = getattr(adapter, "mount", None)
        if mount is not None:
            mount(app)
