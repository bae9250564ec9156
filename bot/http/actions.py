"""`/api/v1/actions`: the registry's actions, with their parameters' defaults masked (`shown_parameters`).

An action is addressed by its ref or its `id` (`Action.id`, derived from the ref), as StackStorm's
`/actions/{ref_or_id}`. Actions are pack content in Squall, kept in their packs' metadata files, so
`st2 action create|update|delete|enable|disable|clone` are answered with what to edit instead: `POST /actions`
and `POST /actions/{ref_or_id}/clone` are a 405 and `PUT`/`DELETE /actions/{ref_or_id}` a 409 naming the
action's file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response

from bot.http.key_auth import request_user
from bot.http.paging import Paging
from bot.http.state import api_state
from engine.actions import Action
from engine.content_files import ContentFileError
from engine.packs import Registry, UnknownAction
from engine.parameters import shown_parameters

router = APIRouter()
#: What `squall serve` does with a changed pack file, said where an API write to pack content (an action, a
#: rule, a policy, a pack) is refused.
RELOADED = ("squall serve reloads the packs when their files change (`squall pack reload` checks them "
            "and lists what did not load)")
#: The `Allow` header of a 405 refusing a write to what the API only reads (pack content, keys kept on the host).
ALLOW_GET = {"Allow": "GET"}
#: Fields of a `PUT` body that are the content's names, which the URL already gives, whatever their value
#: (st2client drops `ref` and sends `id`; StackStorm's documents also carry `uid`).
CONTENT_NAMES = frozenset({"id", "ref", "uid"})


async def write_enabled(request: Request, kind: str, ref: str, pack: str, file: str, enabled: bool) -> None:
    """`enabled` written into the pack file of the action or sensor `ref`, the packs reloaded, audited as
    `api.<kind>.enable|disable`; a 409 for a file Squall will not rewrite (a shipped pack's, one laid out so)."""
    try:
        await api_state(request).squall.set_enabled(kind, ref, pack, file, enabled, default=True,
                                                    event=f"api.{kind}.{'enable' if enabled else 'disable'}",
                                                    actor=request_user(request), source="api")
    except ContentFileError as exc:
        raise HTTPException(409, str(exc)) from exc


def enabled_only(body: Any, shown: dict[str, Any], ignored: frozenset[str]) -> bool | None:
    """The `enabled` a `PUT` body asks for when that is all it changes of the content as GET showed it
    (`shown`: `st2 action|sensor enable|disable` send it back whole, `ref` dropped); None when it asks for
    anything else (or no boolean `enabled`), which pack files alone change. `ignored`: fields never compared."""
    if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
        return None
    missing = object()
    if any(key != "enabled" and key not in ignored and shown.get(key, missing) != value
           for key, value in body.items()):
        return None
    return body["enabled"]


def pack_file(file: str, pack_path: Path) -> str:
    """A content file's `metadata_file` as StackStorm's API shows it: relative to its pack
    (`actions/greet.yaml`, st2's `get_relative_path_to_pack_file`), not the path Squall loaded it by (relative
    to the working folder, or absolute for a shipped pack: a server path no client can use). A file outside
    the pack's folder keeps that path. The refusals that name a file to edit keep the whole path."""
    try:
        return Path(os.path.abspath(file)).relative_to(os.path.abspath(pack_path)).as_posix()
    except ValueError:
        return file


def in_pack(file: str, pack: str, registry: Registry) -> str:
    """`pack_file` for a file of the pack named `pack` (a rule's, an alias's, a policy's, a sensor's); a pack
    no longer in `registry` keeps the path."""
    found = registry.packs.get(pack)
    return pack_file(file, found.path) if found is not None and file else file


def action_public(action: Any) -> dict[str, Any]:
    """The action's summary, its parameters' defaults masked as the web's action page masks them
    (`shown_parameters`): a secret's, and the credentials in `headers`, `cookies` and a URL; its
    `metadata_file` relative to its pack (`pack_file`)."""
    summary = action.summary()
    summary["parameters"] = shown_parameters(summary.get("parameters") or {})
    if summary.get("metadata_file"):
        summary["metadata_file"] = pack_file(summary["metadata_file"], action.pack_path)
    return summary


@router.get("/actions", tags=["actions"])
async def list_actions(request: Request, response: Response, pack: str | None = None, name: str | None = None,
                       paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters: `pack` (`st2 action list -p`) and `name` (the ref after its pack, which
    st2client's `get_by_name` sends and which it expects at most one action of)."""
    actions = sorted(api_state(request).squall.registry.actions.values(), key=lambda a: a.ref)
    chosen = [a for a in actions if pack in (None, a.pack) and name in (None, a.name)]
    return [action_public(a) for a in paging.page(chosen, response)]


def _find_action(request: Request, ref_or_id: str) -> Action:
    """The loaded action `ref_or_id` names (its ref or its `id`), disabled ones included, as StackStorm
    shows them (`st2 action enable` reads the action first); 404 naming the nearest refs."""
    registry = api_state(request).squall.registry
    action = registry.actions.get(ref_or_id) or next(
        (a for a in registry.actions.values() if a.id == ref_or_id), None)
    if action is not None:
        return action
    try:
        registry.action(ref_or_id)  # only for its message, which names the nearest refs
    except UnknownAction as exc:
        raise HTTPException(404, str(exc)) from exc
    raise HTTPException(404, f'Action "{ref_or_id}" is not loaded; GET /api/v1/actions lists the actions.')


@router.get("/actions/{ref_or_id}", tags=["actions"])
async def get_action(ref_or_id: str, request: Request) -> dict[str, Any]:
    return action_public(_find_action(request, ref_or_id))


@router.post("/actions", tags=["actions"])
async def create_action() -> None:
    """StackStorm's action create (`st2 action create FILE`): refused, since Squall keeps no action the API
    could store; the answer says where an action is written instead."""
    raise HTTPException(405, "Actions are not created through the API in Squall: they are kept in pack files. "
                             "Write the action's metadata file (actions/<name>.yaml, with its entry point) in a "
                             f"pack of your own; {RELOADED}. `squall pack install <folder|git url>` installs a "
                             "new pack.", headers=ALLOW_GET)


@router.post("/actions/{ref_or_id}/clone", tags=["actions"])
async def clone_action(ref_or_id: str, request: Request) -> None:
    """StackStorm's action clone (`st2 action clone REF PACK NAME`): refused (405; the path takes no method) with
    the action's files to copy, or 404 for an action that is not loaded."""
    action = _find_action(request, ref_or_id)
    files = action.metadata_file + (f" and its entry point {action.entry_path}" if action.entry_path else "")
    raise HTTPException(405, f"Actions are not cloned through the API in Squall, where actions are kept in pack files: "
                             f"copy {files} into the actions/ folder of the pack you want the copy in, and give it "
                             f"its new name in the copied metadata (`name:`, and `entry_point:` if you renamed that "
                             f"file); {RELOADED}.", headers={"Allow": ""})


def unless_shipped(request: Request, pack_ref: str, kind: str, instead: str) -> str:
    """What a refused API write to pack content of `kind` (an action, an alias, a trigger type) in the pack
    `pack_ref` says to do: `instead` (edit or remove its file), or, for a pack shipped with Squall (core,
    chatops, squall), whose files are Squall's, write one of your own."""
    pack = api_state(request).squall.registry.packs.get(pack_ref)
    if pack is None or pack.system:
        return (f"it belongs to a pack shipped with Squall, whose files are not changed: write the {kind} you want "
                "in a pack of your own")
    return instead


@router.put("/actions/{ref_or_id}", tags=["actions"])
async def update_action(ref_or_id: str, request: Request, body: Any = Body(None)) -> dict[str, Any]:
    """StackStorm's action update. `st2 action enable|disable` (only `enabled` changed, `enabled_only`) write
    `enabled:` into the action's metadata file and reload the packs, answering the action as it is now; a
    pack shipped with Squall, or a file laid out so that it will not be rewritten, is a 409. Any other change
    (`st2 action update`) is refused (409) with the action's metadata file to edit; 404 for an action that
    is not loaded."""
    action = _find_action(request, ref_or_id)
    enabled = enabled_only(body, action_public(action), CONTENT_NAMES)
    if enabled is None:
        instead = unless_shipped(request, action.pack, "action",
                                 f"edit {action.metadata_file} instead (`enabled: false` there disables it)")
        raise HTTPException(409, f"Action {action.ref} cannot be changed through the API in Squall, where actions "
                                 f"are kept in pack files: {instead}; {RELOADED}.")
    squall = api_state(request).squall
    await write_enabled(request, "action", action.ref, action.pack, action.metadata_file, enabled)
    reloaded = squall.registry.actions.get(action.ref)
    if reloaded is None:  # the reload no longer loads it (its file was broken meanwhile): say what was written
        return {**action_public(action), "enabled": enabled}
    return action_public(reloaded)


@router.delete("/actions/{ref_or_id}", tags=["actions"])
async def delete_action(ref_or_id: str, request: Request) -> None:
    """StackStorm's action delete: refused (409, never 404 for a loaded action: st2client takes a 404 for
    a delete done) with the action's metadata file to remove."""
    action = _find_action(request, ref_or_id)
    instead = unless_shipped(request, action.pack, "action",
                             f"remove {action.metadata_file} (and its entry point) from pack {action.pack}, or the "
                             f"whole pack with `squall pack remove {action.pack}`")
    raise HTTPException(409, f"Action {action.ref} cannot be deleted through the API in Squall, where actions are "
                             f"kept in pack files: {instead}; {RELOADED}.")
