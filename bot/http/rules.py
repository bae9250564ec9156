"""`/api/v1/rules` and `/api/v1/ruleenforcements`: the loaded rules and what they did."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from bot.http.paging import Paging
from bot.http.state import api_state
from engine.rules import enforcement_public

router = APIRouter()


@router.get("/rules", tags=["rules"])
async def list_rules(request: Request, response: Response, pack: str | None = None,
                     paging: Paging = Depends()) -> list[dict[str, Any]]:
    rules = api_state(request).squall.rules.rules
    refs = [ref for ref in sorted(rules) if pack in (None, rules[ref].pack)]
    return [rules[ref].public() for ref in paging.page(refs, response)]


@router.get("/rules/{ref}", tags=["rules"])
async def get_rule(ref: str, request: Request) -> dict[str, Any]:
    rule = api_state(request).squall.rules.rules.get(ref)
    if rule is None:
        raise HTTPException(404, f'Rule "{ref}" is not loaded; GET /api/v1/rules lists the rules.')
    return rule.public()


@router.get("/ruleenforcements", tags=["rules"])
async def list_enforcements(request: Request, rule: str | None = None, trigger_instance: str | None = None,
                            execution: str | None = None,
                            limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
    squall = api_state(request).squall
    rows = await squall.db(squall.store.rule_enforcement_list, rule, trigger_instance, execution, limit)
    return [enforcement_public(row) for row in rows]
