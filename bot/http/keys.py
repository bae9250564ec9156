"""`/api/v1/keys`: the datastore's key-value pairs; secret values show masked unless `decrypt` is asked.

A `ttl` of 0 (or null) is a key that never expires, as StackStorm's API reads it.

A PUT with `encrypted: true` (`st2 key set --encrypted`, `st2 key load` of a ciphertext export) stores
the value as given once it decrypts under this server's key, as StackStorm does; anything else is a 400.
The mask a secret shows as is never written over a secret (a masked export loaded back): a 400 says to
export with `--decrypt` instead. `engine.datastore.Datastore.set` makes both checks, and those of the
name's length and the ttl. A refusal names no path of the server (`_for_client`).

A credential speaks for its own user (docs/security.md): a token or a stored API key reads and writes its
own user-scoped keys, and naming another `user` is a 403; only a key from the config file, which names
nobody, may name anyone (and, naming nobody, lists every user's keys). A value is a string, as in
StackStorm's schema: anything else is a 400 (`st2 key load -c` sends JSON as a string).

The audit rows (`api.key.set`, `api.key.delete`) name the scope as the web's and the CLI's do, `system` or
`user`, however the request spelled it (`st2kv.system`). Each is stored with its change, in one transaction
(`Datastore.set` and `delete`'s `audit`): a change the database did not take leaves no row, and no change
is stored without its row."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel

from bot.http.key_auth import request_user, speaking_as
from bot.http.paging import checked_limit, tell_page
from bot.http.state import api_state
from engine.crypto import CryptoError
from engine.datastore import MAX_KEY_TTL as MAX_KEY_TTL  # re-exported by bot.http; `Datastore.set` checks it
from engine.datastore import Datastore, DatastoreError, st2_ttl
from engine.executions import AuditEntry
from engine.parameters import MASK, MAX_INTEGER
from engine.storage import iso

router = APIRouter()


class KeyRequest(BaseModel):
    value: Any
    secret: bool = False
    encrypt: bool = False
    #: The value is ciphertext under this server's key already: stored as given (implies a secret).
    encrypted: bool = False
    ttl: int | None = None
    scope: str = "system"
    user: str | None = None
    description: str | None = None


def _shown(item: dict[str, Any], decrypt: bool) -> dict[str, Any]:
    """A key as the API answers it: a secret's value masked unless `decrypt` is asked, and
    `expire_timestamp` in the one ISO form of the API's times (`engine.storage.iso`: UTC with a `Z`, as
    StackStorm's `isotime.format` writes them), where the datastore gives Python's `+00:00`."""
    expires = item.get("expire_timestamp")
    if expires:
        item = {**item, "expire_timestamp": iso(datetime.fromisoformat(expires))}
    if item["secret"] and not decrypt and item.get("error") is None:
        return {**item, "value": MASK}
    return item


def _user(request: Request, scope: str | None, user: str | None) -> str | None:
    """The user whose keys a request reads or writes: the one named, else the requester (as `st2 key set
    --scope user`), by `speaking_as` (`engine.identity.acting_as`, the web's rule too). A token or a stored key
    may name only its own user (its 403), whatever the scope, or bob's key could read and overwrite alice's
    secrets; a key from the config names nobody, so it may name anyone, and naming nobody it sees every
    user's keys. Of the system scope, naming no one, nobody's."""
    if not user and (scope or "").removeprefix("st2kv.") not in ("user", "all"):
        return user
    return speaking_as(request, user)


_JSON_TYPES = ((type(None), "null"), (bool, "a boolean"), ((int, float), "a number"), (dict, "an object"),
               (list, "an array"))


def _string_value(value: Any) -> str:
    """The value of a PUT, which StackStorm's schema requires to be a string: anything else was stored as
    Python's repr ("{'a': 1}", "None", "True"), which no reader could parse back."""
    if isinstance(value, str):
        return value
    kind = next((name for types, name in _JSON_TYPES if isinstance(value, types)), type(value).__name__)
    raise HTTPException(400, f"value must be a string, not {kind}: a key's value is stored as a string (as "
                             "StackStorm's API requires); to store JSON, send it encoded as a string, as "
                             "st2 key load -c (--convert) and squall key load --convert do")


def _for_client(squall: Any, message: str) -> str:
    """A datastore's or key ring's refusal as an API client may read it: the engine's words name the key file
    (and its lock file) by path, for the operator at the CLI or in the log; a client of the API learns
    nothing of the server's file system, so the paths become words (the CLI still says them)."""
    key_file = Path(squall.datastore.keys.path)
    named = [(os.path.abspath(f"{key_file}.lock"), "the server's key file's lock file"),
             (f"{key_file}.lock", "the server's key file's lock file"),
             (os.path.abspath(key_file), "the server's key file"), (str(key_file), "the server's key file"),
             (str(squall.config.data_dir), "the server's data folder")]
    for path, words in sorted(named, key=lambda pair: -len(pair[0])):  # the longest first: a file before its folder
        if path.strip("/"):  # never `/` itself
            message = message.replace(path, words)
    return message


async def _datastore(squall: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn` (a datastore method) on the database thread; its refusals (a bad scope, no key to decrypt) are 400,
    said without the server's paths (`_for_client`)."""
    try:
        return await squall.db(fn, *args, **kwargs)
    except (DatastoreError, CryptoError) as exc:
        raise HTTPException(400, _for_client(squall, str(exc))) from exc


@router.get("/keys", tags=["keys"])
async def list_keys(request: Request, response: Response, prefix: str | None = None, scope: str = "system",
                    user: str | None = None, decrypt: bool = False,
                    limit: int | None = Query(None, le=MAX_INTEGER),
                    offset: int = Query(0, ge=0, le=MAX_INTEGER)) -> list[dict[str, Any]]:
    """StackStorm's paging, as `bot.http.paging` gives the lists held in memory: `limit` (-1 or none: all,
    as `st2 key list -n -1`), `offset`, and the whole count in `X-Total-Count` (st2 prints "Only first N"
    from it). Paged in SQL, so a page decrypts only its own secrets."""
    page = checked_limit(limit)
    squall = api_state(request).squall
    owner = _user(request, scope, user)

    def read(datastore: Datastore) -> tuple[int, list[dict[str, Any]]]:
        total = datastore.count(prefix=prefix, scope=scope, user=owner)
        return total, datastore.list(prefix=prefix, scope=scope, user=owner, decrypt=decrypt, limit=page,
                                     offset=offset)

    total, items = await _datastore(squall, read, squall.datastore)
    tell_page(response, total, page)
    return [_shown(item, decrypt) for item in items]


@router.get("/keys/{name}", tags=["keys"])
async def get_key(name: str, request: Request, scope: str = "system", user: str | None = None,
                  decrypt: bool = False) -> dict[str, Any]:
    squall = api_state(request).squall
    item = await _datastore(squall, squall.datastore.get, name, scope=scope, user=_user(request, scope, user),
                            decrypt=decrypt)
    if item is None:
        raise HTTPException(404, f'Resource with a name "{name}" not found')
    return _shown(item, decrypt)


@router.put("/keys/{name}", tags=["keys"])
async def put_key(name: str, body: KeyRequest, request: Request) -> dict[str, Any]:
    value = _string_value(body.value)
    squall = api_state(request).squall
    owner = _user(request, body.scope, body.user)
    ttl = st2_ttl(body.ttl)  # 0, as null: no expiry, as StackStorm's API reads it
    # Its detail gains the scope, the user and whether it is a secret, as stored (`Datastore.set`).
    audit = AuditEntry("api.key.set", request_user(request), "api", None, {"encrypted": body.encrypted, "ttl": ttl})
    item = await _datastore(squall, squall.datastore.set, name, value, scope=body.scope, user=owner,
                            encrypt=body.secret or body.encrypt, encrypted=body.encrypted, ttl=ttl,
                            description=body.description, audit=audit)
    return _shown(item, False)


@router.delete("/keys/{name}", status_code=204, tags=["keys"])
async def delete_key(name: str, request: Request, scope: str = "system", user: str | None = None) -> None:
    squall = api_state(request).squall
    owner = _user(request, scope, user)
    # Its detail gains the scope, checked and named as `Datastore.delete` stores it (`system`, `user`).
    audit = AuditEntry("api.key.delete", request_user(request), "api", None, {"user": owner})
    if not await _datastore(squall, squall.datastore.delete, name, scope=scope, user=owner, audit=audit):
        raise HTTPException(404, f'Resource with a name "{name}" not found')
