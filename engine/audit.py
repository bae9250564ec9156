"""The audit log read back: who did what from where, filtered, in keyset pages (newest first; the
export's oldest first).

`Store.audit_add` writes the log (the command path, the web UI); this is its reader for people
(the web UI's `/audit`) and for `squall audit export`. Pages continue below the last row shown
(`before`: an id), or above it for the export's oldest-first pages (`audit_forward`'s `after`), so
every page costs one indexed range read however far along it is.

It also stores a trigger instance a person fires (`squall trigger emit`, a re-emit from the CLI or the API)
with its audit event, one transaction (`emit_audited`), as `TriggerService.dispatch` takes no event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.storage import Store, as_utc, audit

if TYPE_CHECKING:
    from engine.executions import AuditEntry
    from engine.triggers import TriggerService

log = logging.getLogger(__name__)


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


# -- trigger instances fired by people, stored with their event ----------------------------------------

async def emit_audited(triggers: TriggerService, trigger_ref: str, payload: Any, event: AuditEntry, *,
                       parameters: Mapping[str, Any] | None = None, trace_tag: str | None = None,
                       validate: bool = True, new_as: str = "instance") -> dict[str, Any]:
    """Fire a trigger instance for a person (`squall trigger emit`): stored `pending` with its audit `event` in one
    transaction (`AuditEntry.together`), then processed here, so its rules have requested their actions when
    this returns; the instance as `TriggerService.dispatch` returns it (its arguments are `dispatch`'s).

    An event the database does not take stores no instance and fires nothing. Stored after the instance
    (`dispatch` takes no event), a failure left an instance fired for nobody, and a caller told it failed
    fired it again. The event is about the trigger type unless it names its own target; its detail gains
    the new instance's id, as `new_as`."""
    from engine.executions import new_id
    from engine.metrics import metrics
    from engine.storage import utcnow
    from engine.triggers import public

    if validate:
        triggers.check(trigger_ref, payload)
    record = {"id": new_id(), "trigger": trigger_ref, "payload": payload, "occurrence_time": utcnow(),
              "status": "pending", "trace_tag": trace_tag, "trigger_parameters": dict(parameters or {}) or None}
    await triggers.db(_instance_with, triggers.db.store, record, event.with_facts(**{new_as: record["id"]}))
    metrics.count(metrics.trigger_instances, trigger_ref)
    if not triggers.handing_off:  # a `squall worker`'s instances are the serve nodes' to process
        await _processed(triggers, record)
    return public(record)


async def _processed(triggers: TriggerService, record: dict[str, Any]) -> None:
    """Process an instance stored with its event. A database failure here is logged, not raised: the
    instance holds (`TriggerService.recover` takes it up: serve's sweep, or the next start), and raised it
    would tell the caller nothing was fired (the API's 503), whose retry would fire it again."""
    try:
        await triggers.process(record)
    except sa.exc.DBAPIError as exc:
        from engine.storage import database_trouble

        why = database_trouble(exc) or f"the database refused it ({type(exc).__name__})"
        log.warning("trigger instance %s (%s) is stored with its audit event, but processing it failed, as %s; "
                    "the sweep of instances left behind takes it up", record["id"], record["trigger"], why)


async def re_emit_audited(triggers: TriggerService, instance_id: str, event: AuditEntry) -> dict[str, Any]:
    """`TriggerService.re_emit` with its audit event (`emit_audited`): a new instance of the same trigger and
    payload, a mapping payload gaining `__context: {original_id: <instance_id>}` as StackStorm's does; the
    event's detail names the new instance as `new_instance`. LookupError if `instance_id` is none."""
    original = await triggers.get(instance_id)
    payload = original["payload"]
    if isinstance(payload, dict):
        payload = {**payload, "__context": {"original_id": instance_id}}
    return await emit_audited(triggers, original["trigger"], payload, event, parameters=original["trigger_parameters"],
                              trace_tag=original["trace_tag"], validate=False, new_as="new_instance")


def _instance_with(store: Store, record: dict[str, Any], event: AuditEntry) -> None:
    """A trigger instance and its audit event, about its trigger type: one transaction, one failing leaves
    neither."""
    from engine.executions import AuditEntry

    with AuditEntry.together(store):
        store.trigger_instance_add(record)
        event.add(store, record["trigger"])
