"""The key-value datastore (spec §8): system and user scopes, string values, TTL, encryption.

Methods are synchronous and short; asynchronous callers run them through `storage.Database`.
User-scoped keys are stored as `<user>:<name>`, as StackStorm does, so a user only ever sees
their own. Encrypted values stay ciphertext unless a caller asks for decryption.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from engine.crypto import KeyRing
from engine.storage import Store, utcnow

SCOPES = ("system", "user")


class DatastoreError(ValueError):
    """A datastore request that cannot be done; the message says why."""


def normalise_scope(scope: str | None) -> str:
    value = (scope or "system").removeprefix("st2kv.")
    if value not in SCOPES:
        raise DatastoreError(f"unknown scope '{scope}'; use 'system' or 'user'")
    return value


@dataclass
class Datastore:
    store: Store
    keys: KeyRing

    @staticmethod
    def _stored_name(name: str, scope: str, user: str | None) -> str:
        if scope == "user":
            if not user:
                raise DatastoreError("a user-scoped key needs a user")
            return f"{user}:{name}"
        return name

    def _public(self, record: dict[str, Any], decrypt: bool) -> dict[str, Any]:
        name, user = record["name"], None
        if record["scope"] == "user":
            user, _, name = name.partition(":")
        value = record["value"]
        if record["secret"] and decrypt:
            value = self.keys.decrypt(value)
        return {
            "name": name,
            "value": value,
            "secret": record["secret"],
            "encrypted": bool(record["secret"] and not decrypt),
            "scope": f"st2kv.{record['scope']}",
            "user": user,
            "description": record.get("description"),
            "expire_timestamp": record["expire_at"].isoformat() if record.get("expire_at") else None,
        }

    def get(self, name: str, *, scope: str = "system", user: str | None = None,
            decrypt: bool = False) -> dict[str, Any] | None:
        scope = normalise_scope(scope)
        record = self.store.kv_get(scope, self._stored_name(name, scope, user), utcnow())
        return self._public(record, decrypt) if record else None

    def lookup(self, scope: str, name: str) -> str | None:
        """The raw stored value (ciphertext for secrets), for `st2kv.*` in templates."""
        record = self.store.kv_get(scope, name, utcnow())
        return record["value"] if record else None

    def set(self, name: str, value: Any, *, scope: str = "system", user: str | None = None,
            encrypt: bool = False, ttl: int | None = None, description: str | None = None) -> dict[str, Any]:
        scope = normalise_scope(scope)
        if not name:
            raise DatastoreError("a key needs a name")
        if ttl is not None and int(ttl) <= 0:
            raise DatastoreError(f"ttl must be a positive number of seconds, not {ttl}")
        now = utcnow()
        text = str(value)
        record = {
            "scope": scope,
            "name": self._stored_name(name, scope, user),
            "value": self.keys.encrypt(text) if encrypt else text,
            "secret": bool(encrypt),
            "description": description,
            "expire_at": now + timedelta(seconds=int(ttl)) if ttl else None,
            "updated_at": now,
        }
        self.store.kv_put(record)
        return self._public(record, decrypt=False)

    def delete(self, name: str, *, scope: str = "system", user: str | None = None) -> bool:
        scope = normalise_scope(scope)
        return self.store.kv_delete(scope, self._stored_name(name, scope, user))

    def list(self, *, prefix: str | None = None, scope: str | None = "system", user: str | None = None,
             decrypt: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
        scope = None if scope in (None, "all") else normalise_scope(scope)
        now = utcnow()
        if scope is None and user:
            # Everything this user may see: the system keys and their own, never another user's.
            records = self.store.kv_list("system", prefix, now, limit)
            if not limit or len(records) < limit:
                remaining = limit - len(records) if limit else None
                records += self.store.kv_list("user", f"{user}:{prefix or ''}", now, remaining)
            return [self._public(r, decrypt) for r in records]
        stored_prefix = prefix
        if scope == "user" and user:
            stored_prefix = f"{user}:{prefix or ''}"
        records = self.store.kv_list(scope, stored_prefix, now, limit)
        return [self._public(r, decrypt) for r in records]

    def purge_expired(self) -> int:
        return self.store.kv_purge_expired(utcnow())
