"""`GET /api/v1/packs[/{ref}]`: the loaded packs, with how many actions, aliases, rules... each holds."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from bot.http.actions import RELOADED
from bot.http.paging import Paging
from bot.http.state import api_state

router = APIRouter()


@router.get("/packs", tags=["packs"])
async def list_packs(request: Request, response: Response, paging: Paging = Depends()) -> list[dict[str, Any]]:
    registry = api_state(request).squall.registry
    return [registry.packs[ref].summary(registry.counts(ref)) for ref in paging.page(sorted(registry.packs), response)]


@router.get("/packs/{ref}", tags=["packs"])
async def get_pack(ref: str, request: Request) -> dict[str, Any]:
    registry = api_state(request).squall.registry
    pack = registry.packs.get(ref)
    if pack is None:
        raise HTTPException(404, f'Pack "{ref}" is not loaded; loaded: {", ".join(sorted(registry.packs))}.')
    return pack.summary(registry.counts(ref))


# StackStorm's pack management (`st2 pack install|remove|register|search|show`) is the `squall` CLI's on the
# Squall host: installing builds virtualenvs and runs pip, which the API does not do for whoever holds a key.
_ALLOW_GET = {"Allow": "GET"}


@router.post("/packs/install", tags=["packs"])
async def install_packs() -> None:
    """`st2 pack install`: refused (405) with the command that installs a pack."""
    raise HTTPException(405, "Packs are not installed through the API in Squall: run `squall pack install "
                             "<folder|git url>` on the Squall host (`<git url>=<ref>` for a branch, tag or commit); "
                             f"{RELOADED}.", headers=_ALLOW_GET)


@router.post("/packs/uninstall", tags=["packs"])
async def uninstall_packs() -> None:
    """`st2 pack remove`: refused (405) with the command that removes a pack."""
    raise HTTPException(405, "Packs are not removed through the API in Squall: run `squall pack remove <pack>` on "
                             f"the Squall host; {RELOADED}.", headers=_ALLOW_GET)


@router.post("/packs/register", tags=["packs"])
async def register_packs() -> None:
    """`st2 pack register`: refused (405); Squall registers a pack's content by reading its files."""
    raise HTTPException(405, "Packs need no registering in Squall: their files are their content, and "
                             f"{RELOADED}.", headers=_ALLOW_GET)


@router.post("/packs/index/search", tags=["packs"])
async def search_pack_index() -> None:
    """`st2 pack search|show`: Squall reads no pack index (StackStorm Exchange), so there is nothing to search."""
    raise HTTPException(404, "Squall has no pack index to search (StackStorm Exchange's): find a pack's git URL at "
                             "https://exchange.stackstorm.org or on GitHub and install it with `squall pack install "
                             "<git url>` on the Squall host; GET /api/v1/packs lists the packs loaded here.")
