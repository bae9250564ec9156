"""`/triggers`: recent trigger instances with their payloads, re-emitting one (admin), and the webhooks
rules declare, each with its URL and a sample `curl`.

Instances and re-emit go through `TriggerService` (`squall.triggers`), as `GET /api/v1/triggerinstances`,
`POST .../re_emit` and `squall trigger-instance re-emit` do. A webhook's sample says how the API will
check it: signed (`api.webhooks.<hook>.secret`, shown only as `$SECRET`) or with an API key.
"""

from __future__ import annotations

import shlex
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from bot.accounts import Session
from bot.web.pages import PageError, PageRoute, render
from bot.web.session import admin, viewer
from engine.executions import AuditEntry
from engine.triggers import public

router = APIRouter(route_class=PageRoute, include_in_schema=False)
#: Instances the page lists, newest first.
RECENT = 50
#: StackStorm's generic hook: the body names the trigger.
GENERIC_HOOK = "st2"
_SAMPLE_BODY = '{"example": "value"}'


def _signed(request: Request, hook: str) -> bool:
    settings = (request.app.state.squall.config.section("api").get("webhooks") or {}).get(hook) or {}
    return bool(isinstance(settings, dict) and settings.get("secret"))


def curl_sample(url: str, signed: bool, body: str) -> str:
    """A shell sample that calls the hook at `url`, signed as README's "signed webhook" says (the
    secret as `$SECRET`), or with an API key (`$ST2_API_KEY`). No secret is ever put in it."""
    data = shlex.quote(body)
    if not signed:
        return (f"curl -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
                f"-H \"St2-Api-Key: $ST2_API_KEY\" --data {data}")
    return (f"body={data}; ts=$(date +%s)\n"
            "sig=$(printf '%s.%s' \"$ts\" \"$body\" | openssl dgst -sha256 -hmac \"$SECRET\" -r | cut -d' ' -f1)\n"
            f"curl -X POST {shlex.quote(url)} -H 'Content-Type: application/json' "
            "-H \"X-Squall-Timestamp: $ts\" -H \"X-Squall-Signature: v1=$sig\" --data \"$body\"")


def _hooks(request: Request) -> list[dict[str, Any]]:
    base = str(request.base_url).rstrip("/") + "/api/v1/webhooks/"
    squall = request.app.state.squall
    hooks = []
    for hook in [GENERIC_HOOK, *squall.rules.hooks()]:
        signed = _signed(request, hook)
        body = '{"trigger": "<pack>.<trigger>", "payload": {"example": "value"}}' if hook == GENERIC_HOOK \
            else _SAMPLE_BODY
        url = base + hook
        hooks.append({"name": hook, "url": url, "signed": signed, "curl": curl_sample(url, signed, body),
                      "rules": [r.ref for r in squall.rules.webhook_rules(hook)]})
    return hooks


@router.get("/triggers")
async def trigger_list(request: Request, trigger: str | None = None, session: Session = Depends(viewer)) -> Response:
    squall = request.app.state.squall
    # Off the loop (`Database.read`): a trigger's newest instances may lie far down the table.
    instances = [public(r) for r in await squall.db.read(squall.store.trigger_instance_list,
                                                          trigger=trigger or None, limit=RECENT)]
    return render(request, "triggers.html", {"session": session, "instances": instances, "trigger": trigger or "",
                                             "hooks": _hooks(request),
                                             "may_emit": session.account.may("admin")})


@router.post("/triggers/{instance_id}/re-emit")
async def trigger_re_emit(request: Request, instance_id: str, session: Session = Depends(admin)) -> Response:
    squall = request.app.state.squall
    audit = AuditEntry("web.trigger.re_emit", session.account.name, "web", None, {"instance": instance_id})
    try:  # stored with its event, one transaction: a re-emit the database did not take fires nothing
        emitted = await squall.triggers.re_emit(instance_id, audit)
    except LookupError as exc:
        raise PageError(str(exc), 404) from exc
    return RedirectResponse(f"/triggers#instance-{emitted['id']}", status_code=303)
