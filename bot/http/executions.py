"""`/api/v1/executions`: request, list, read, cancel and re-run executions, and read their output."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from bot.http.state import api_state
from engine.executions import ExecutionNotFound, ExecutionStateError
from engine.packs import UnknownAction
from engine.parameters import ParameterError

router = APIRouter()


class ExecutionRequest(BaseModel):
    action: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] | None = None
    #: Render the values as Jinja templates, as StackStorm does; only for keys in `api.render_keys`.
    render: bool = False


class RerunRequest(BaseModel):
    parameters: dict[str, Any] = Field(default_factory=dict)


@router.get("/executions", tags=["executions"])
async def list_executions(request: Request, action: str | None = None, status: str | None = None,
                          limit: int = Query(50, ge=1, le=1000)) -> list[dict[str, Any]]:
    return await api_state(request).squall.executions.list(action=action, status=status, limit=limit)


async def _find_execution(request: Request, execution_id: str) -> dict[str, Any]:
    try:
        return await api_state(request).squall.executions.get(execution_id)
    except ExecutionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc


@router.get("/executions/{execution_id}", tags=["executions"])
async def get_execution(execution_id: str, request: Request) -> dict[str, Any]:
    return await _find_execution(request, execution_id)


@router.post("/executions", status_code=201, tags=["executions"])
async def create_execution(body: ExecutionRequest, request: Request) -> dict[str, Any]:
    state = api_state(request)
    context = {"source": "api", **(body.context or {})}
    key_name = request.state.api_key_name
    if body.render and key_name not in state.settings.render_keys:
        raise HTTPException(403, f"This API key ({key_name or 'a configured key'}) may not ask for parameters "
                                 "to be rendered as templates; list a stored key's name in api.render_keys "
                                 "to allow it, or send the values as data.")
    try:
        return await state.squall.executions.request(body.action, body.parameters, context, render=body.render)
    except (ParameterError, UnknownAction, ValueError) as exc:
        raise HTTPException(400, str(exc)) from exc


@router.delete("/executions/{execution_id}", tags=["executions"])
async def cancel_execution(execution_id: str, request: Request) -> dict[str, Any]:
    try:
        return await api_state(request).squall.executions.cancel(execution_id)
    except ExecutionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except ExecutionStateError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/executions/{execution_id}/output", tags=["executions"], response_class=PlainTextResponse)
async def execution_output(execution_id: str, request: Request) -> str:
    # stdout then stderr; empty for a result without streams (a docstring would change the OpenAPI description)
    result = (await _find_execution(request, execution_id)).get("result")
    if not isinstance(result, dict):
        return ""
    streams = [str(result.get(name) or "") for name in ("stdout", "stderr")]
    return "\n".join(text.rstrip("\n") for text in streams if text) + ("\n" if any(streams) else "")


@router.post("/executions/{execution_id}/re_run", status_code=201, tags=["executions"])
async def rerun_execution(execution_id: str, request: Request, body: RerunRequest | None = None) -> dict[str, Any]:
    try:
        return await api_state(request).squall.executions.rerun(execution_id, body.parameters if body else None)
    except ExecutionNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (ParameterError, UnknownAction, ValueError) as exc:
        raise HTTPException(400, str(exc)) from exc
