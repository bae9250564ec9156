"""`/api/v1/actionalias`: the action aliases and matching a command against them, with the process's
one alias index (the chat's), so the API and chat agree on what a command means."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from aliases import AliasMatch, AmbiguousCommand, NoMatch
from bot.http.paging import Paging
from bot.http.state import ApiState, api_state

router = APIRouter()


class AliasMatchRequest(BaseModel):
    command: str


def match_command(state: ApiState, command: str) -> AliasMatch:
    """The alias match for `command`; 400 with the matcher's words when none or several match, and
    with the chat's when it is past the command path's `MAX_COMMAND` (`CommandTooLong`, a `NoMatch`
    raised before any matching: the 1 MiB body limit is no bound for work done on the event loop)."""
    try:
        return state.squall.chat.commands.match(command)
    except (NoMatch, AmbiguousCommand) as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("/actionalias", tags=["aliases"])
async def list_aliases(request: Request, response: Response, pack: str | None = None, name: str | None = None,
                       paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters: `pack` (`st2 action-alias list -p`) and `name`."""
    aliases = [alias for _ref, alias in sorted(api_state(request).squall.chat.index.aliases.items())
               if pack in (None, alias.pack) and name in (None, alias.name)]
    return [alias.summary() for alias in paging.page(aliases, response)]


@router.post("/actionalias/match", tags=["aliases"])
async def match_alias(body: AliasMatchRequest, request: Request) -> dict[str, Any]:
    match = match_command(api_state(request), body.command)
    return {"actionalias": match.alias.summary(), "display": match.display,
            "representation": match.representation, "parameters": match.parameters}
