"""`POST /api/v1/webhooks/...`: StackStorm's generic hook (`st2`) and the hooks rules declare. No
router-wide API key: a hook with a secret is signed instead (`webhook_signatures`).

`GET /api/v1/webhooks` and `GET /api/v1/webhooks/{url}` (`st2 webhook list|get`) show the hooks enabled rules
are registered on, as StackStorm's Trigger objects (`bot.http.timers.trigger_public`); being reads of the
API, they need its key like every other read."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from bot.headers import INSTANCE_HEADER
from bot.http.json_body import NOT_JSON, JsonBodyError, decode_json
from bot.http.key_auth import require_key
from bot.http.state import api_state
from bot.http.timers import rule_triggers
from bot.http.webhook_signatures import SIGNATURE_HEADER, HookAuth, authorize_hook
from engine import tracing
from engine.rules import Rule
from engine.storage import DuplicateDelivery
from engine.triggers import WEBHOOK, TriggerError

#: Removed from the headers a webhook passes on in its payload (spec §6.3).
_SECRET_HEADERS = {"x-auth-token", "st2-api-key", "authorization", "cookie", SIGNATURE_HEADER}

#: On the answer to a signed request that came before: it was accepted then and fires nothing now.
DUPLICATE_HEADER = "X-Squall-Duplicate"

router = APIRouter()
log = logging.getLogger(__name__)


async def _read_body(request: Request) -> bytes:
    """The raw body (signatures cover its exact bytes), held to `api.max_body_bytes`."""
    max_body = api_state(request).settings.max_body
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body:
            raise HTTPException(413, f"Request body is over the limit of {max_body} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_body(request: Request, raw: bytes) -> Any:
    """Form data as StackStorm parses it (`parse_qs`: each field a list, `body.form[0]`), an empty body
    as `{}`, anything else as JSON (what the body guard decoded)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type == "application/x-www-form-urlencoded":
        return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    if content_type == "multipart/form-data":  # `curl -F`: StackStorm does not read it either
        raise HTTPException(400, "A multipart/form-data body is not read: send JSON (UTF-8) or "
                                 "application/x-www-form-urlencoded form data (`curl --data a=1`, not `-F`).")
    if not raw.strip():
        return {}
    decoded = getattr(request.state, "json_body", NOT_JSON)  # the body guard decoded it already
    if decoded is not NOT_JSON:
        return decoded
    try:
        return decode_json(raw)
    except JsonBodyError as exc:
        raise HTTPException(400, str(exc)) from exc
    except ValueError as exc:  # UnicodeDecodeError too
        raise HTTPException(400, f"Failed to parse request body: {exc}; send JSON (UTF-8) or "
                                 "application/x-www-form-urlencoded form data.") from exc


def _trace_tag(request: Request, hook: str) -> str:
    return request.headers.get("st2-trace-tag") or f"webhook-{hook}-{uuid.uuid4().hex}"


def _accepted(body: Any, instance_id: str, auth: HookAuth) -> JSONResponse:
    return JSONResponse(body, status_code=202, headers={INSTANCE_HEADER: instance_id, **auth.headers})


def _accepted_before(hook: str, body: Any, duplicate: DuplicateDelivery, auth: HookAuth) -> JSONResponse:
    """A signed request sent again (a sender's retry, or a replay): 200 with the instance it made the
    first time, and nothing fired again."""
    log.warning("webhook %s: a signed request accepted before (trigger instance %s) came again; it fires "
                "nothing", hook, duplicate.instance_id)
    return JSONResponse(body, status_code=200, headers={INSTANCE_HEADER: duplicate.instance_id,
                                                        DUPLICATE_HEADER: "true", **auth.headers})


def _not_registered(rules: Iterable[Rule], hook: str) -> str:
    """StackStorm's 404 text for `hook`, with why each loaded rule naming it takes nothing (disabled,
    or waiting for a pack), also logged: a rule written without `enabled: true` (StackStorm's default
    is false) must not be a silent 404. Said only to an authenticated caller."""
    said = f"Webhook {hook} not registered"
    reasons = [_not_live(rule) for rule in rules if rule.webhook_url == hook and not rule.live]
    if not reasons:
        return said
    said = f"{said}: {'; '.join(reasons)}"
    log.warning("webhook request answered 404: %s", said)
    return said


def _not_live(rule: Rule) -> str:
    if not rule.enabled:
        return (f"rule {rule.ref} uses it but is disabled (enabled: false; rules are disabled unless they say "
                "enabled: true)")
    return f"rule {rule.ref} uses it but waits for {' and '.join(rule.waiting)}"


def _hooks(request: Request) -> list[dict[str, Any]]:
    """The hooks live rules are registered on, one Trigger each (rules on one URL share it), by URL."""
    triggers = rule_triggers(api_state(request).squall.rules.rules.values(), (WEBHOOK,))
    return sorted(triggers, key=_hook_url)


def _hook_url(trigger: dict[str, Any]) -> str:
    """The URL a hook's Trigger answers at, as its rules wrote it without leading or trailing `/`."""
    return str(trigger["parameters"].get("url", "")).strip("/")


@router.get("/webhooks", tags=["webhooks"], dependencies=[Depends(require_key)])
async def list_webhooks(request: Request) -> list[dict[str, Any]]:
    """`st2 webhook list`: every hook a rule is registered on (not the generic `st2`, which takes any trigger)."""
    return _hooks(request)


@router.get("/webhooks/{name:path}", tags=["webhooks"], dependencies=[Depends(require_key)])
async def get_webhook(name: str, request: Request) -> Any:
    """`st2 webhook get URL`: the hook's Trigger; 404 saying why a rule naming it takes nothing. An empty name
    is the list: st2client asks `GET /webhooks/?include_attributes=...` for `st2 webhook list`."""
    hook = name.strip("/")
    if not hook:
        return _hooks(request)
    found = next((t for t in _hooks(request) if _hook_url(t) == hook), None)
    if found is None:
        raise HTTPException(404, _not_registered(api_state(request).squall.rules.rules.values(), hook))
    return found


@router.post("/webhooks/st2", status_code=202, tags=["webhooks"])
async def generic_webhook(request: Request) -> Any:
    squall = api_state(request).squall
    raw = await _read_body(request)
    auth = await authorize_hook(request, "st2", raw)
    body = _parse_body(request, raw)
    if not isinstance(body, dict):
        raise HTTPException(400, "The body must be a JSON object with \"trigger\" and \"payload\".")
    trigger = body.get("trigger")
    if not trigger:
        raise HTTPException(400, "Trigger not specified.")
    try:
        with tracing.span("webhook", hook="st2", trigger=str(trigger)):
            instance = await squall.triggers.dispatch(str(trigger), body.get("payload") or {},
                                                      trace_tag=_trace_tag(request, "st2"), delivery=auth.delivery)
    except TriggerError as exc:
        raise HTTPException(400, str(exc)) from exc
    except DuplicateDelivery as duplicate:
        return _accepted_before("st2", body, duplicate, auth)
    return _accepted(body, instance["id"], auth)


@router.post("/webhooks/{name:path}", status_code=202, tags=["webhooks"])
async def custom_webhook(name: str, request: Request) -> Any:
    squall = api_state(request).squall
    hook = name.strip("/")
    raw = await _read_body(request)
    if not squall.rules.webhook_rules(hook):
        # Authenticate first: an unauthenticated caller must not learn which hooks exist.
        await authorize_hook(request, hook, raw)
        raise HTTPException(404, _not_registered(squall.rules.rules.values(), hook))
    auth = await authorize_hook(request, hook, raw)
    body = _parse_body(request, raw)
    if not isinstance(body, (dict, list)):
        raise HTTPException(400, "The body must be a JSON object or array.")
    # Named as StackStorm's webob names them (`X-Source`, `Content-Type`): rules read `trigger.headers['X-Source']`.
    headers = {k.title(): v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
    payload = {"headers": headers, "headers_lower": {k.lower(): v for k, v in headers.items()}, "body": body}
    try:
        # The instance is tied to this hook's rules only (its trigger parameters are the URL).
        with tracing.span("webhook", hook=hook):
            instance = await squall.rules.dispatch_webhook(hook, payload, trace_tag=_trace_tag(request, hook),
                                                           delivery=auth.delivery)
    except TriggerError as exc:
        raise HTTPException(400, str(exc)) from exc
    except LookupError as exc:  # the rule went away meanwhile
        raise HTTPException(404, _not_registered(squall.rules.rules.values(), hook)) from exc
    except DuplicateDelivery as duplicate:
        return _accepted_before(hook, body, duplicate, auth)
    return _accepted(body, instance["id"], auth)
