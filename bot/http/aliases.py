"""`/api/v1/actionalias`: the action aliases, one by one, their help, and matching a command against
them, with the process's one alias index (the chat's), so the API and chat agree on what a command means.

`GET /actionalias/help` (err-stackstorm's `!st2help`) is StackStorm's `ActionAliasController.help`: the
display strings of the enabled aliases, filtered and paged as `generate_helpstring_result` does. Squall's
aliases carry permissions (config `auth.aliases`, an alias's own `permissions`) that `/aliasexecution`
applies to whom a request speaks for, so the help lists what that caller may run (`_may_run`). Its path,
and `/actionalias/match`, are routes of their own, declared before `/actionalias/{ref_or_id}`: neither
is taken for an alias's ref.

An alias is addressed by its ref or its `id` (`alias_id`, derived from the ref as an action's is), as
StackStorm's `/actionalias/{ref_or_id}`: `st2 action-alias update|delete` read the alias, then send its
`id`. Aliases are pack content, kept in their packs' files, so those writes, and `st2 action-alias
create`, are refused (405) with what to edit instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel

from adapters.base import Message
from aliases import Alias, AliasMatch, AmbiguousCommand, NoMatch
from bot.http.actions import ALLOW_GET, RELOADED, in_pack, unless_shipped
from bot.http.key_auth import request_user
from bot.http.paging import Paging
from bot.http.state import ApiState, api_state
from engine import patterns
from engine.actions import content_id
from engine.parameters import MAX_INTEGER

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


def alias_id(ref: str) -> str:
    """The `id` of the alias `ref`: derived from it (`content_id`), so every process and restart shows the
    same one; st2client addresses an alias by it once it has read the alias."""
    return content_id("action_alias", ref)


def alias_public(state: ApiState, alias: Alias) -> dict[str, Any]:
    """The alias as StackStorm's `ActionAliasAPI` shows it: its `id` (`alias_id`), its summary,
    `metadata_file` relative to its pack (`aliases/greet.yaml`, `in_pack`)."""
    summary = {"id": alias_id(alias.ref), **alias.summary()}
    if summary.get("metadata_file"):
        summary["metadata_file"] = in_pack(summary["metadata_file"], alias.pack, state.squall.registry)
    return summary


def _sorted(state: ApiState) -> list[Alias]:
    """Every loaded alias, disabled ones too, in StackStorm's order (`query_options`: pack, then name)."""
    return sorted(state.squall.chat.index.aliases.values(), key=lambda alias: (alias.pack, alias.name))


@router.get("/actionalias", tags=["aliases"])
async def list_aliases(request: Request, response: Response, pack: str | None = None, name: str | None = None,
                       paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters: `pack` (`st2 action-alias list -p`) and `name`."""
    state = api_state(request)
    aliases = [alias for alias in _sorted(state) if pack in (None, alias.pack) and name in (None, alias.name)]
    return [alias_public(state, alias) for alias in paging.page(aliases, response)]


def _may_run(request: Request) -> Callable[[Alias], bool]:
    """Whether the caller may run an alias through `/aliasexecution`, as a predicate over aliases. A token or
    a stored API key speaks for its user, who runs commands as themselves in the channel `api` when they name
    none: each alias is checked as `/aliasexecution` checks it (`Authorizer.check`, admins seeing all). A key
    from the config names nobody and may run a command for anyone it names (a bridge such as err-stackstorm
    relays every person's commands), so it gets StackStorm's list: every enabled alias."""
    user = request_user(request)
    if user is None:
        return lambda _alias: True
    auth = api_state(request).squall.chat.commands.auth
    message = Message(adapter="api", channel="api", user=user, text="")
    return lambda alias: auth.check(alias, message).allowed


def _checked_filter(filter_: str) -> None:
    """400 naming `filter_` when it is no regular expression (StackStorm's help took it to `re.search`)."""
    import regex  # loaded by `engine.patterns` with its first pattern

    try:
        patterns.compiled(filter_, patterns.IGNORECASE)
    except regex.error as exc:
        raise HTTPException(400, f"filter {filter_!r} is not a regular expression ({exc}); give one, as "
                                 "StackStorm's help takes (plain words are one)") from exc


def _displayed(filter_: str | None, display: str) -> bool:
    """Whether `display` is listed for `filter_`: StackStorm's `re.search(filter, display, IGNORECASE)`.
    A caller's pattern runs bounded (`engine.patterns`, within the help's `Budget`), so that one that
    backtracks is a 400 instead of holding the event loop."""
    if not filter_:
        return True
    try:
        return patterns.search(filter_, display, patterns.IGNORECASE) is not None
    except TimeoutError as exc:
        raise HTTPException(400, f"filter {filter_!r} took longer than {patterns.TIMEOUT:g} s to match the help "
                                 "strings; give a simpler regular expression (or plain words)") from exc


@router.get("/actionalias/help", tags=["aliases"])
async def alias_help(request: Request, filter_: str | None = Query(None, alias="filter"), pack: str | None = None,
                     limit: int = Query(0, ge=0, le=MAX_INTEGER, description="How many to list; 0 for all."),
                     offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> dict[str, Any]:
    """StackStorm's help (`generate_helpstring_result`): for each enabled alias of `pack` (every pack
    without it) the caller may run (`_may_run`), in the list's order, each format's `display` that
    `filter` (a regular expression, any case) finds, as `{pack, display, description}`; a format without
    a display is not listed. `available` counts them all; `helpstrings` holds those from `offset` on,
    `limit` of them (0: all)."""
    state = api_state(request)
    may_run = _may_run(request)
    if filter_:
        _checked_filter(filter_)
    with patterns.Budget(patterns.TIMEOUT, "the help filter"):
        found = [{"pack": alias.pack, "display": fmt.display, "description": alias.description}
                 for alias in _sorted(state) if alias.enabled and pack in (None, "", alias.pack) and may_run(alias)
                 for fmt in alias.formats if fmt.display and _displayed(filter_, fmt.display)]
    return {"available": len(found), "helpstrings": found[offset:offset + limit] if limit else found[offset:]}


@router.post("/actionalias/match", tags=["aliases"])
async def match_alias(body: AliasMatchRequest, request: Request) -> dict[str, Any]:
    match = match_command(api_state(request), body.command)
    return {"actionalias": alias_public(api_state(request), match.alias), "display": match.display,
            "representation": match.representation, "parameters": match.parameters}


def _find_alias(state: ApiState, ref_or_id: str) -> Alias:
    """The loaded alias `ref_or_id` names (its ref or its `id`), disabled ones too; 404 naming where the
    aliases are listed."""
    aliases = state.squall.chat.index.aliases
    alias = aliases.get(ref_or_id) or next((a for a in aliases.values() if alias_id(a.ref) == ref_or_id), None)
    if alias is None:
        raise HTTPException(404, f'Action alias "{ref_or_id}" is not loaded (no alias has that ref or id); '
                                 "GET /api/v1/actionalias lists the aliases.")
    return alias


@router.get("/actionalias/{ref_or_id}", tags=["aliases"])
async def get_alias(ref_or_id: str, request: Request) -> dict[str, Any]:
    """One alias by its ref or id (`st2 action-alias get PACK.NAME`), disabled ones too, as the list shows
    them."""
    state = api_state(request)
    return alias_public(state, _find_alias(state, ref_or_id))




@router.post("/actionalias", tags=["aliases"])
async def create_alias() -> None:
    """StackStorm's alias create (`st2 action-alias create FILE`): refused (405), since Squall keeps no alias
    the API could store; the answer says where an alias is written instead."""
    raise HTTPException(405, "Action aliases are not created through the API in Squall: they are kept in pack "
                             "files. Write the alias (name, action_ref, formats) as aliases/<name>.yaml in a pack "
                             f"of your own; {RELOADED}.", headers=ALLOW_GET)


@router.put("/actionalias/{ref_or_id}", tags=["aliases"])
async def update_alias(ref_or_id: str, request: Request) -> None:
    """StackStorm's alias update (`st2 action-alias update`): refused (405) with the alias's file to edit, or
    404 for an alias that is not loaded."""
    alias = _find_alias(api_state(request), ref_or_id)
    instead = unless_shipped(request, alias.pack, "alias",
                             f"edit {alias.metadata_file} instead (`enabled: false` there disables it)")
    raise HTTPException(405, f"Action alias {alias.ref} cannot be changed through the API in Squall, where aliases "
                             f"are kept in pack files: {instead}; {RELOADED}.", headers=ALLOW_GET)


@router.delete("/actionalias/{ref_or_id}", tags=["aliases"])
async def delete_alias(ref_or_id: str, request: Request) -> None:
    """StackStorm's alias delete (`st2 action-alias delete`): refused with a 405, never a 404 for a loaded
    alias (st2client takes a 404 for a delete done), naming the file to remove."""
    alias = _find_alias(api_state(request), ref_or_id)
    instead = unless_shipped(request, alias.pack, "alias",
                             f"remove {alias.metadata_file} (or set `enabled: false` there)")
    raise HTTPException(405, f"Action alias {alias.ref} cannot be deleted through the API in Squall, where aliases "
                             f"are kept in pack files: {instead}; {RELOADED}.", headers=ALLOW_GET)
