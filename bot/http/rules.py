"""`/api/v1/rules` and `/api/v1/ruleenforcements`: the loaded rules and what they did."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from bot.http.state import api_state
from engine.rules import enforcement_public

router = APIRouter()


@router.get("/rules", tags=["rules"])
async def list_rules(request: Request) -> list[dict[str, Any]]:
    rules = api_state(request).squall.rules.rules
    return [rules[ref].public() for ref in sorted(rules)]


@router.get("/ruleenforcements", tags=["rules"])
async def list_enforcements(request: Request, rule: str | None = None, trigger_instance: str | None = None,
                            execution: str | None = None,
                            limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
    squall = api_state(request).squall
    rows = await squall.db(squall.store.rule_enforcement_list, rule, trigger_instance, execution, limit)
    return [enforcement_public(row) for row in rows]
