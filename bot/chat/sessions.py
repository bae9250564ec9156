"""Chat exchanges that outlive a restart: open forms, question exchanges, confirmations and "did you
mean" offers, each stored as it changes in `chat_sessions` under a key naming its kind and where
it waits (`place_key`: adapter, channel and person), or for a platform's form its random state.

A session's state is encrypted with the datastore key: answers, a command's parameters and the
message that asked may hold secrets. The owner of each kind (`bot/chat/forms.py`, the dispatcher)
keeps its sessions in memory and takes up its own keys from the rows the dispatcher reads once at
the chat's start (`stored`); a row past its expiry is deleted then, unread. Storing is best effort:
a failure is logged and the exchange goes on in this process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from adapters.base import Message

if TYPE_CHECKING:
    from engine.core import Engine

log = logging.getLogger(__name__)


def place_key(kind: str, adapter: str, channel: str, user: str) -> str:
    """The key of a session held for one person in one channel (a question exchange, a confirmation)."""
    return kind + json.dumps([adapter, channel, user])


#: What of a message a session does not keep: the platform's payload, and a click's outcome (this delivery's).
_NOT_STORED = frozenset({"raw", "click"})


def origin(message: Message) -> dict[str, Any]:
    """A message as stored with its session (not the platform's raw payload: only what Squall reads). The
    sender's platform user id (`Message.user_id`) is kept with it: a command allowed only to
    `slack:U0123ABCD` is authorised again by it when the session is taken up, after a restart too. A
    message stored before it was kept has none and loads with None (`Message(**origin)`)."""
    return {f.name: getattr(message, f.name) for f in dataclasses.fields(Message) if f.name not in _NOT_STORED}



async def keep(engine: Engine, key: str, state: dict[str, Any], expires: float, what: str) -> None:
    """Store (or replace) the session `key` until `expires` (wall clock, `time.time()`). `what` names
    it in the warning a failure logs."""
    try:
        token = engine.keys.encrypt(json.dumps(state))
        await engine.db(engine.store.chat_session_put, key, token, datetime.fromtimestamp(expires, UTC))
    except Exception as exc:
        log.warning("%s could not be stored (a restart would end it): %s", what, exc)


async def drop(engine: Engine, key: str) -> None:
    """Forget the session `key` (answered, cancelled or replaced)."""
    try:
        await engine.db(engine.store.chat_session_delete, key)
    except Exception as exc:  # it expires in the table all the same
        log.warning("a closed chat session could not be removed from the database: %s", exc)


#: What each kind of session is called in a log, by its key's prefix (`bot/chat/forms.py`, the dispatcher).
_KINDS = {"ask:": "the question-by-question form", "confirm:": "the confirmation",
          "form:": "a platform form (modal or dialog)"}


def described(key: str) -> str:
    """The session `key` as a log names it: its kind, and for one held in a place whose person and
    channel (never a platform form's random state, which a submission presents)."""
    kind = next((prefix for prefix in _KINDS if key.startswith(prefix)), None)
    if kind is None:
        return "a chat session"
    try:
        adapter, channel, user = json.loads(key.removeprefix(kind))
    except ValueError:
        return _KINDS[kind]
    return f"{_KINDS[kind]} of {user} in {channel} on {adapter}"


async def stored(engine: Engine) -> list[tuple[str, dict[str, Any], float]]:
    """The open sessions, as (key, state, expires); one that cannot be read (the key that sealed it
    is gone from the key file) is dropped and logged, naming it and why: nobody reads it again."""
    rows = []
    for key, token, expires_at in await engine.db(engine.store.chat_sessions_open, datetime.now(UTC)):
        try:
            rows.append((key, json.loads(engine.keys.decrypt(token)), expires_at.timestamp()))
        except Exception as exc:
            log.warning("%s, stored before the restart, was dropped: its stored state cannot be read (%s); "
                        "its person must start it again", described(key), exc)
            await drop(engine, key)
    return rows
