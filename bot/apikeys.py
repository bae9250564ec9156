"""API keys: made once, shown once, stored as SHA-256 hashes (no FastAPI import: the CLI uses this)."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from typing import Any

from engine.executions import new_id
from engine.storage import utcnow

KEYS_ENV = "SQUALL_API_KEYS"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return secrets.token_urlsafe(32)


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
