"""`POST /api/v1/aliasexecution`: run a chat command over HTTP (what `st2 action-alias execute` calls),
through the same command path as chat (`bot/chat/commands.py`): match, permission, request, audit, ack."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from adapters.base import Message
from bot.chat.commands import Accepted, CommandFailed, CommandRefused
from bot.http.aliases import match_command
from bot.http.executions import execution_doc
from bot.http.key_auth import acting_user
from bot.http.state import api_state

router = APIRouter()


class AliasExecutionRequest(BaseModel):
    command: str
    #: Who runs it; empty (as `st2 action-alias execute` sends without `-u`): the requester.
    user: str = ""
    channel: str | None = None
    #: StackStorm's name for `channel`.
    source_channel: str | None = None


async def _execute(request: Request, body: AliasExecutionRequest) -> dict[str, Any]:
    """Match, authorise and run `body.command` as chat would; 403 when its user may not run it."""
    state = api_state(request)
    commands = state.squall.chat.commands
    match = match_command(state, body.command)
    user = acting_user(request, body.user)
    message = Message(adapter="api", channel=body.channel or body.source_channel or "api", user=user,
                      text=body.command)
    try:
        await commands.authorise(match, message, "api")
        accepted = await commands.run(match, message, "api")  # never Held: without chat it is refused
        assert isinstance(accepted, Accepted)
    except CommandRefused as exc:
        raise HTTPException(403, f"{user} may not run {match.alias.ref}: {exc}") from exc
    except CommandFailed as exc:
        raise HTTPException(400, str(exc)) from exc
    return {"execution": execution_doc(accepted.execution, state.squall.registry),
            "actionalias": match.alias.summary(), "message": accepted.ack}


@router.post("/aliasexecution", status_code=201, tags=["aliases"])
async def alias_execution(body: AliasExecutionRequest, request: Request) -> dict[str, Any]:
    return await _execute(request, body)


@router.post("/aliasexecution/match_and_execute", tags=["aliases"])
async def match_and_execute(body: AliasExecutionRequest, request: Request) -> dict[str, Any]:
    """StackStorm's `{"results": [...]}` (one: the command path runs the one best match)."""
    return {"results": [await _execute(request, body)]}
