"""`/api/v1/apikeys`: StackStorm's API key resource, as `st2 apikey ...` calls it.

Reading is StackStorm's (`GET /apikeys`, `GET /apikeys/{id_or_key}`) over the keys stored by `squall
apikey create` (`bot/apikeys.py`), in StackStorm's shape: the key's name is its `user`, and `key_hash` is
always the mask, as StackStorm shows it (the clear key is shown once, when it is made, and never stored).
A key from the config names nobody and sees every stored key; a stored key or a login token sees its own
user's keys only, as on `/keys` it may name no other user. The keys configured in `api.keys` are not
listed: they have no id and are the config's.

Making, deleting, enabling and disabling keys stay on the Squall host (`squall apikey ...`), whose
shell access is what guards them: `POST`, `PUT` and `DELETE` answer 405 saying so."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from bot.apikeys import hash_key, public_key
from bot.http.actions import ALLOW_GET
from bot.http.key_auth import request_user
from bot.http.state import api_state
from engine.parameters import MASK

router = APIRouter()
_ON_THE_HOST = ("API keys are managed on the Squall host, not through the API: `squall apikey create --name <user>` "
                "makes one (its key is shown once), `squall apikey list` lists them and `squall apikey delete <id>` "
                "deletes one, which also ends the login tokens obtained with it (Squall has no disabled keys: "
                "delete the key, and create another when it is wanted again).")


def apikey_public(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored key in StackStorm's `ApiKeyAPI` shape, with `key_hash` masked as StackStorm masks it."""
    shown = public_key(record)
    return {"id": shown["id"], "user": shown["name"], "name": shown["name"], "key_hash": MASK, "metadata": {},
            "enabled": shown["enabled"], "created_at": shown["created_at"]}


async def _visible_keys(request: Request) -> list[dict[str, Any]]:
    """The stored keys this request may see: all for a key from the config, else its own user's. Read on
    `Database.read`, as every read here is: beside the write groups, so a lock another process holds
    (a CLI's `squall key set`) does not hold the answer."""
    squall = api_state(request).squall
    own = request_user(request)
    rows = await squall.db.read(squall.store.api_key_list)
    return [row for row in rows if own is None or row.get("name") == own]


@router.get("/apikeys", tags=["apikeys"])
async def list_apikeys(request: Request, user: str | None = None) -> list[dict[str, Any]]:
    """`st2 apikey list [-u USER]`: oldest first."""
    return [apikey_public(row) for row in await _visible_keys(request) if user in (None, row.get("name"))]


@router.get("/apikeys/{id_or_key}", tags=["apikeys"])
async def get_apikey(id_or_key: str, request: Request) -> dict[str, Any]:
    """`st2 apikey get ID_OR_KEY`: a key by its id, or by the key itself (looked up by its hash)."""
    squall = api_state(request).squall
    visible = await _visible_keys(request)
    found = next((row for row in visible if row["id"] == id_or_key), None)
    if found is None:
        by_hash = await squall.db.read(squall.store.api_key_by_hash, hash_key(id_or_key))
        found = next((row for row in visible if by_hash is not None and row["id"] == by_hash["id"]), None)
    if found is None:
        raise HTTPException(404, "No stored API key has that id or key (or it is another user's); GET /api/v1/apikeys "
                                 "lists the keys this request may see.")
    return apikey_public(found)


@router.post("/apikeys", tags=["apikeys"])
async def create_apikey() -> None:
    raise HTTPException(405, _ON_THE_HOST, headers=ALLOW_GET)


@router.put("/apikeys/{id_or_key}", tags=["apikeys"])
async def update_apikey(id_or_key: str) -> None:
    """`st2 apikey enable|disable`: refused, with the commands that manage keys."""
    raise HTTPException(405, _ON_THE_HOST, headers=ALLOW_GET)


@router.delete("/apikeys/{id_or_key}", tags=["apikeys"])
async def delete_apikey(id_or_key: str) -> None:
    """`st2 apikey delete`: refused with a 405, never a 404 (st2client takes a 404 for a delete done)."""
    raise HTTPException(405, _ON_THE_HOST, headers=ALLOW_GET)
