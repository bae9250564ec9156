"""`/api/v1/timers`: the timers `squall serve` runs (`st2 timer list|get`), as StackStorm's TimersController
lists them: Trigger objects (`TriggerAPI`), one per timer type and parameter set that enabled rules give it.

StackStorm makes a Trigger when a rule names a trigger type with parameters (an `IntervalTimer` every 10 s,
the webhook `deploy`) and names it with a UUID; Squall keeps none, so a trigger's name is a UUID derived from
its type and parameters (`engine.triggers.binding`), and its `id` from the same: every process and restart
shows the same ones, and `st2 timer get` finds a timer by the ref or id `st2 timer list` printed. The
`description` names the rules that use it, which StackStorm's empty one leaves to `st2 rule list`. Webhooks
are listed the same way (`bot/http/webhooks.py`)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from bot.http.paging import Paging
from bot.http.state import api_state
from engine.actions import content_id
from engine.rules import Rule
from engine.timers import TIMER_TYPES
from engine.triggers import binding

router = APIRouter()
#: The namespace of the UUIDs that name Squall's triggers (a fixed random value: names never collide with
#: another scheme's).
_TRIGGER_NAMES = uuid.UUID("6f1d4a52-5b0e-4c2a-9a57-0c2f3e1d9b84")


def trigger_public(trigger_type: str, parameters: dict[str, Any], rules: Iterable[Rule]) -> dict[str, Any]:
    """The Trigger of `trigger_type` with `parameters` in StackStorm's `TriggerAPI` shape (pack `core`, as
    StackStorm's rule-made triggers), its description naming the `rules` that use it."""
    key = binding(trigger_type, parameters)
    name = str(uuid.uuid5(_TRIGGER_NAMES, key))
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:32]
    refs = sorted(rule.ref for rule in rules)
    return {"id": content_id("trigger", key), "uid": f"trigger:core:{name}:{digest}",
            "ref": f"core.{name}", "name": name, "pack": "core", "type": trigger_type, "parameters": parameters,
            "description": f"Fires rule{'s' if len(refs) > 1 else ''} {', '.join(refs)}."}


def rule_triggers(rules: Iterable[Rule], types: Iterable[str]) -> list[dict[str, Any]]:
    """The Triggers the live `rules` (enabled, nothing they name missing) give the trigger types `types`: one per
    type and parameter set, however many rules share it, sorted by type, then parameters."""
    wanted = set(types)
    sharing: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.live and rule.trigger_type in wanted:
            sharing.setdefault(rule.binding, []).append(rule)
    return [trigger_public(found[0].trigger_type, found[0].trigger_parameters, found)
            for _key, found in sorted(sharing.items())]


def _timers(request: Request) -> list[dict[str, Any]]:
    return rule_triggers(api_state(request).squall.rules.rules.values(), TIMER_TYPES)


@router.get("/timers", tags=["timers"])
async def list_timers(request: Request, response: Response, timer_type: str | None = None,
                      name: str | None = None, paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filter: `timer_type` (`st2 timer list -ty core.st2.CronTimer`), one of the three timer
    types, else a 400 naming them, as StackStorm answers; and `name`, which `st2 timer get NAME` asks first
    (it tries the id only when no timer has that name)."""
    if timer_type is not None and timer_type not in TIMER_TYPES:
        raise HTTPException(400, f"Timer type {timer_type} is not a timer type; the timer types are "
                                 f"{', '.join(TIMER_TYPES)}.")
    timers = [t for t in _timers(request) if timer_type in (None, t["type"]) and name in (None, t["name"])]
    return paging.page(timers, response)


@router.get("/timers/{ref_or_id}", tags=["timers"])
async def get_timer(ref_or_id: str, request: Request) -> dict[str, Any]:
    """One timer by the ref, id or name `st2 timer list` shows; 404 saying where the timers come from."""
    found = next((t for t in _timers(request) if ref_or_id in (t["ref"], t["id"], t["name"])), None)
    if found is None:
        raise HTTPException(404, f'Timer "{ref_or_id}" is not running (no timer has that ref or id): a timer runs '
                                 "for each enabled rule on core.st2.IntervalTimer, DateTimer or CronTimer; GET "
                                 "/api/v1/timers lists them.")
    return found
