"""`POST /api/v1/aliasexecution`: run a chat command over HTTP (what `st2 action-alias execute` calls),
through the same command path as chat (`bot/chat/commands.py`): match, permission, request, audit, ack."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from adapters.base import Message
from bot.chat.commands import CommandFailed, CommandRefused
from bot.http.aliases import match_command
from bot.http.state import api_state

router = APIRouter()


class AliasExecutionRequest(BaseModel):
    command: str
    user: str
    channel: str = "api"


@router.post("/aliasexecution", status_code=201, tags=["aliases"])
async def alias_execution(body: AliasExecutionRequest, request: Request) -> dict[str, Any]:
    state = api_state(request)
    commands = state.squall.chat.commands
    match = match_command(state, body.command)
    message = Message(adapter="api", channel=body.channel, user=body.user, text=body.command)
    try:
        await commands.authorise(match, message, "api")
        accepted = await commands.run(match, message, "api")
    except CommandRefused as exc:
        raise HTTPException(403, f"{body.user} may not run {match.alias.ref}: {exc}") from exc
    except CommandFailed as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"execution": accepted.execution, "actionalias": match.alias.summary(), "message": accepted.ack}
