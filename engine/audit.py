"""The audit log read back: who did what from where, filtered, in keyset pages (newest first; the
export's oldest first).

`Store.audit_add` writes the log (the command path, the web UI); this is its reader for people
(the web UI's `/audit`) and for `squall audit export`. Pages continue below the last row shown
(`before`: an id), or above it for the export's oldest-first pages (`audit_forward`'s `after`), so
every page costs one indexed range read however far along it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.storage import Store, as_utc, audit


@dataclass(frozen=True)
class AuditFilter:
    """What the audit page asks for; None is "any". `kind` is the event (`chat.execution`, ...);
    `action` matches the target (an alias or execution) or the action an entry names."""

    actor: str | None = None
    kind: str | None = None
    action: str | None = None
    #: Where from: `web`, `api`, `cli`, an adapter (`slack`: all its channels) or one channel (`slack:C1`).
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _narrowed(statement: Any, where: AuditFilter, store: Store) -> Any:
    if where.actor:
        statement = statement.where(audit.c.actor == where.actor)
    if where.kind:
        statement = statement.where(audit.c.event == where.kind)
    if where.source:
        within = where.source.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        statement = statement.where(sa.or_(audit.c.source == where.source, audit.c.source.like(within, escape="\\")))
    if where.action:
        named = (sa.func.json_extract(audit.c.detail, "$.action") if store.is_sqlite
                 else audit.c.detail["action"].as_string())
        statement = statement.where(sa.or_(audit.c.target == where.action, named == where.action))
    if where.since:
        statement = statement.where(audit.c.timestamp >= where.since)
    if where.until:
        statement = statement.where(audit.c.timestamp < where.until)
    return statement


def audit_page(store: Store, where: AuditFilter, *, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Up to `limit` entries matching `where`, newest first, older than entry `before` when given."""
    statement = _narrowed(sa.select(audit), where, store).order_by(audit.c.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(audit.c.id < before)
    with store._read() as conn:
        return [{**row._mapping, "timestamp": as_utc(row.timestamp)} for row in conn.execute(statement)]


def audit_last_id(store: Store) -> int | None:
    """The id of the newest entry (None: the log is empty): where an export of the log as it stands
    now ends, whatever is logged while it runs."""
    with store._read() as conn:
        return conn.execute(sa.select(sa.func.max(audit.c.id))).scalar()


def audit_forward(store: Store, where: AuditFilter, *, after: int | None = None, upto: int | None = None,
                  limit: int = 1000) -> list[dict[str, Any]]:
    """Up to `limit` entries matching `where`, oldest first (by id, the order they were logged in),
    newer than entry `after` and none newer than entry `upto` when given: an export's next page, read
    as it is printed, so an export holds one page in memory, not the range."""
    statement = _narrowed(sa.select(audit), where, store).order_by(audit.c.id).limit(limit)
    if after is not None:
        statement = statement.where(audit.c.id > after)
    if upto is not None:
        statement = statement.where(audit.c.id <= upto)
    with store._read() as conn:
        return [{**row._mapping, "timestamp": as_utc(row.timestamp)} for row in conn.execute(statement)]


def audit_kinds(store: Store) -> list[str]:
    """The kinds of entry the log holds, for the filter's choices."""
    with store._read() as conn:
        return [str(kind) for kind in conn.execute(sa.select(audit.c.event).distinct().order_by(audit.c.event))
                .scalars()]
