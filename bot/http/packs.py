"""`GET /api/v1/packs[/{ref_or_id}]`: the loaded packs, with how many actions, aliases, rules... each holds.

A pack carries an `id` derived from its ref (`content_id`, as an action's), by which it is also read, as
StackStorm's `/packs/{ref_or_id}`; the list takes StackStorm's filters `name` and `ref`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from bot.http.actions import ALLOW_GET, RELOADED
from bot.http.paging import Paging
from bot.http.state import api_state
from engine.actions import content_id
from engine.packs import Registry

router = APIRouter()


def pack_id(ref: str) -> str:
    """The `id` of the pack `ref`: derived from it, the same in every process and restart (a pack is its
    folder here, with no row to number)."""
    return content_id("pack", ref)


def _pack_public(registry: Registry, ref: str) -> dict[str, Any]:
    """The pack as StackStorm's `PackAPI` shows it: its `id`, then its summary with its content's counts."""
    return {"id": pack_id(ref), **registry.packs[ref].summary(registry.counts(ref))}


@router.get("/packs", tags=["packs"])
async def list_packs(request: Request, response: Response, name: str | None = None, ref: str | None = None,
                     paging: Paging = Depends()) -> list[dict[str, Any]]:
    """StackStorm's filters: `name` (pack.yaml's `name`, which st2client's `get_by_name` sends) and `ref`."""
    registry = api_state(request).squall.registry
    refs = [r for r in sorted(registry.packs)
            if ref in (None, r) and name in (None, registry.packs[r].metadata.get("name", r))]
    return [_pack_public(registry, r) for r in paging.page(refs, response)]


@router.get("/packs/{ref_or_id}", tags=["packs"])
async def get_pack(ref_or_id: str, request: Request) -> dict[str, Any]:
    """One pack by its ref or its `id` (`st2 pack get`)."""
    registry = api_state(request).squall.registry
    ref = ref_or_id if ref_or_id in registry.packs else next(
        (r for r in registry.packs if pack_id(r) == ref_or_id), None)
    if ref is None:
        raise HTTPException(404, f'Pack "{ref_or_id}" is not loaded (no pack has that ref or id); loaded: '
                                 f'{", ".join(sorted(registry.packs))}.')
    return _pack_public(registry, ref)


# StackStorm's pack management (`st2 pack install|remove|register|search|show`) is the `squall` CLI's on the
# Squall host: installing builds virtualenvs and runs pip, which the API does not do for whoever holds a key.


@router.post("/packs/install", tags=["packs"])
async def install_packs() -> None:
    """`st2 pack install`: refused (405) with the command that installs a pack."""
    raise HTTPException(405, "Packs are not installed through the API in Squall: run `squall pack install "
                             "<folder|git url>` on the Squall host (`<git url>=<ref>` for a branch, tag or commit); "
                             f"{RELOADED}.", headers=ALLOW_GET)


@router.post("/packs/uninstall", tags=["packs"])
async def uninstall_packs() -> None:
    """`st2 pack remove`: refused (405) with the command that removes a pack."""
    raise HTTPException(405, "Packs are not removed through the API in Squall: run `squall pack remove <pack>` on "
                             f"the Squall host; {RELOADED}.", headers=ALLOW_GET)


@router.post("/packs/register", tags=["packs"])
async def register_packs() -> None:
    """`st2 pack register`: refused (405); Squall registers a pack's content by reading its files."""
    raise HTTPException(405, "Packs need no registering in Squall: their files are their content, and "
                             f"{RELOADED}.", headers=ALLOW_GET)


@router.post("/packs/index/search", tags=["packs"])
async def search_pack_index() -> None:
    """`st2 pack search|show`: Squall reads no pack index (StackStorm Exchange), so there is nothing to search."""
    raise HTTPException(404, "Squall has no pack index to search (StackStorm Exchange's): find a pack's git URL at "
                             "https://exchange.stackstorm.org or on GitHub and install it with `squall pack install "
                             "<git url>` on the Squall host; GET /api/v1/packs lists the packs loaded here.")
