"""API keys: made once, shown once, stored as SHA-256 hashes (no FastAPI import: the CLI uses this).

A login token (`st2 login`, `POST /auth/v1/tokens`) is obtained with a key and lives only as long as that
key does: the token records it (`key_issuer`, `engine.tokens.issue`) and `authenticate_token` refuses a
token whose key was deleted, disabled or (a configured key) removed from the config. StackStorm's API has
no call that revokes a token, so deleting or disabling its key is how one revokes it (`squall apikey
delete`). The token rows themselves are `engine.tokens`'.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from typing import Any

from engine.executions import new_id
from engine.storage import utcnow
from engine.tokens import authenticate

KEYS_ENV = "SQUALL_API_KEYS"
#: How a token names the configured key it was obtained with: this and the first `CONFIG_DIGITS` hex digits
#: of the key's SHA-256 (a configured key has no id; 96 bits tell the configured keys apart).
CONFIG_KEY_PREFIX = "config:"
CONFIG_DIGITS = 24


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """32 random bytes, URL-safe, never starting with `-`: one in 64 did, and a command line then read the
    key as an option (`st2 login alice --password -Xb...`, `st2 --api-key -Xb...`: "expected one argument")."""
    while (key := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return key


def create_key(store: Any, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """A new key: the clear key (shown once) and the stored record (without the hash)."""
    key = generate_key()
    record = {"id": new_id(), "name": name, "key_hash": hash_key(key), "created_at": utcnow(), "enabled": True}
    store.api_key_add(record)
    return key, public_key(record)


def public_key(record: Mapping[str, Any]) -> dict[str, Any]:
    created = record.get("created_at")
    return {"id": record["id"], "name": record.get("name"), "enabled": bool(record.get("enabled", True)),
            "created_at": created.isoformat().replace("+00:00", "Z") if created else None}


def static_keys(config_section: Mapping[str, Any]) -> list[str]:
    """Keys from config `api.keys` and `$SQUALL_API_KEYS` (comma-separated)."""
    configured = config_section.get("keys") or []
    if isinstance(configured, str):
        configured = [configured]
    env = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",")]
    return [str(k) for k in [*configured, *env] if k]


def key_issuer(record: Mapping[str, Any] | None, key_hash: str) -> str:
    """What a token obtained with this key records (`auth_tokens.api_key_id`): the stored key's id, or
    `config:` and the start of a configured key's hash (`record` None or without an id)."""
    key_id = (record or {}).get("id")
    return str(key_id) if key_id else CONFIG_KEY_PREFIX + key_hash[:CONFIG_DIGITS]


def authenticate_token(store: Any, token: str, static_hashes: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """`engine.tokens.authenticate`, and for a person's token also its key's check: who the token speaks
    for, or None when it is unknown, expired, its execution ended, or the key it was obtained with was
    deleted, disabled or (a configured key) is no longer among `static_hashes`. A token that names no key
    (issued before migration 0020) is left to its expiry."""
    who = authenticate(store, token)
    if who is None or who["execution_id"] is not None or who["api_key_id"] is None:
        return who
    issuer = who["api_key_id"]
    if issuer.startswith(CONFIG_KEY_PREFIX):
        digits = issuer.removeprefix(CONFIG_KEY_PREFIX)
        alive = any(known[:CONFIG_DIGITS] == digits for known in static_hashes)
    else:
        alive = bool(who["api_key_enabled"])  # None: the key was deleted
    return who if alive else None
