"""API auth tokens: an execution's (`ST2_ACTION_AUTH_TOKEN`, valid while it runs) and a person's
(`st2 login`, valid until it expires or is revoked).

StackStorm gives every action an auth token of the execution's user so the action can call the API
(st2client, the `st2` pack) as that user, and revokes it when the execution completes. Here a token is
minted in the transaction that claims the execution, handed to the runner in `RunRequest.auth_token`,
and only its SHA-256 hash is stored (as API keys are: a leaked database row cannot be replayed).

A token is valid while its row exists, it has not expired, *and* its execution is still running: the
last condition is checked against the executions table at each use, so a token dies in the very
transaction that records the final status, even where the row's deletion (done in that transaction
too) never ran: a crash, another process's recovery writing `abandoned`. `revoke_ended` clears those
rows at recovery. No import of `bot/`: the HTTP API's key check calls `authenticate` from there.

A person's token (`issue`) is what StackStorm's auth service hands `st2 login`: it speaks for its user
until `expires_at`; expired rows are deleted when recovery runs `revoke_ended`. It records the API key
it was obtained with (`api_key_id`, migration 0020), and `authenticate` says whether that key still
exists and is enabled: the HTTP API refuses a token whose key is gone (`bot.apikeys.authenticate_token`).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.storage import Store, _execute, action_tokens, api_keys, as_utc, auth_tokens, executions, iso, utcnow

#: Statuses in which an execution's action may still be running and so may use its token.
LIVE_STATUSES = ("running", "pausing", "canceling")
#: How long past the runner's `timeout` a token outlives a claim whose end was never recorded
#: (a process killed on another host, say): the status check normally ends it long before.
EXPIRY_GRACE = timedelta(minutes=5)

_DELETE_SQL = 'DELETE FROM "action_tokens" WHERE "execution_id" = ?'
_LOOKUP = (
    sa.select(action_tokens.c.execution_id, action_tokens.c.user, action_tokens.c.expires_at)
    .select_from(action_tokens.join(executions, executions.c.id == action_tokens.c.execution_id))
    .where(action_tokens.c.token_hash == sa.bindparam("token_hash"),
           executions.c.status.in_(LIVE_STATUSES))
)

#: A person's token, with the stored key it was obtained with (`enabled` NULL: deleted, or not a stored key).
_PERSON = (
    sa.select(sa.null().label("execution_id"), auth_tokens.c.user, auth_tokens.c.expires_at,
              auth_tokens.c.api_key_id, api_keys.c.enabled)
    .select_from(auth_tokens.outerjoin(api_keys, api_keys.c.id == auth_tokens.c.api_key_id))
    .where(auth_tokens.c.token_hash == sa.bindparam("token_hash"))
)


def hash_token(token: str) -> str:
    """The stored form of a token (SHA-256 hex, as `bot.apikeys.hash_key` stores API keys)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def expiry(timeout: Any, now: datetime) -> datetime | None:
    """When a token of a run limited to `timeout` seconds stops working at the latest; None (only the
    execution's end) for runs without a limit, such as workflows, which may wait days on an inquiry."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        return None
    return now + timedelta(seconds=float(timeout)) + EXPIRY_GRACE


def mint(store: Store, execution_id: str, user: str | None, timeout: Any = None) -> str:
    """A new token for this execution, its hash stored; call it in the claim's transaction (the
    database thread), so a claimed execution never runs without a valid token or vice versa.

    SQLite goes through the store's direct insert: this is on every execution's hot path.
    """
    token = secrets.token_urlsafe(32)
    now = utcnow()
    record = {"token_hash": hash_token(token), "execution_id": execution_id,
              "user": None if user is None else str(user)[:255], "created_at": now,
              "expires_at": expiry(timeout, now)}
    store._insert(action_tokens, record)
    return token


def revoke(store: Store, execution_id: str) -> None:
    """Delete the execution's tokens (it ended, or paused: a resumed run gets a new one)."""
    with store._write() as conn:
        if store.is_sqlite:
            _execute(conn, _DELETE_SQL, [execution_id])  # every execution's end: skip Core's overhead
        else:
            conn.execute(action_tokens.delete().where(action_tokens.c.execution_id == execution_id))


def revoke_ended(store: Store) -> int:
    """Delete the tokens of executions no longer running (and of executions that are gone): what a
    crash or another process's status write left behind; and people's tokens that expired. Recovery
    calls this; returns how many."""
    live = sa.select(executions.c.id).where(executions.c.status.in_(LIVE_STATUSES))
    with store._write() as conn:
        ended = conn.execute(action_tokens.delete().where(action_tokens.c.execution_id.not_in(live))).rowcount
        return ended + conn.execute(auth_tokens.delete().where(auth_tokens.c.expires_at <= utcnow())).rowcount


def issue(store: Store, user: str, ttl: float, api_key_id: str | None = None) -> dict[str, Any]:
    """A new token for `user`, valid `ttl` seconds: `{"id", "user", "token", "expiry"}` as StackStorm's
    auth service answers `st2 login` (the token is in this answer only; its hash is stored). `api_key_id`
    names the key it was obtained with (`bot.apikeys.key_issuer`): the token works only while that does."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    record = {"token_hash": hash_token(token), "id": secrets.token_hex(12), "user": user[:255], "created_at": now,
              "expires_at": now + timedelta(seconds=ttl), "api_key_id": api_key_id}
    with store._write() as conn:
        conn.execute(auth_tokens.insert().values(**record))
    return {"id": record["id"], "user": record["user"], "token": token, "expiry": iso(record["expires_at"]),
            "metadata": {}}


def authenticate(store: Store, token: str) -> dict[str, Any] | None:
    """Who a presented token speaks for, `{"execution_id", "user", "expires_at"}`, or None when it is
    unknown, revoked, expired, or its execution is no longer running. A person's token (`execution_id`
    None) also has `api_key_id`, the key it was obtained with, and `api_key_enabled`: whether that stored
    key still exists and is enabled (None when it names a configured key, or none; the caller knows the
    configured ones)."""
    if not token:
        return None
    digest = hash_token(token)
    with store._read() as conn:
        row = conn.execute(_LOOKUP, {"token_hash": digest}).first()
        if row is None:
            row = conn.execute(_PERSON, {"token_hash": digest}).first()
    if row is None:
        return None
    expires = as_utc(row.expires_at)
    if expires is not None and expires <= utcnow():
        return None
    who = {"execution_id": row.execution_id, "user": row.user, "expires_at": expires}
    if row.execution_id is None:
        who.update(api_key_id=row.api_key_id, api_key_enabled=None if row.enabled is None else bool(row.enabled))
    return who
