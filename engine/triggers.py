"""Trigger instances: stored before they are processed, then handed to whoever consumes them.

Webhooks, timers, sensors, the API and the engine itself (action and notify triggers) all call
`TriggerService.dispatch`. The instance is written as `pending` first, so a crash never loses
one; processing moves it to `processing` and then `processed` or `processing_failed`
(StackStorm's statuses). Consumers (the rules engine) register as processors; `wanted(ref)`
lets the engine skip emitting trigger types nobody listens to.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from engine.executions import new_id
from engine.metrics import metrics
from engine.packs import Registry
from engine.storage import Database, iso, utcnow

log = logging.getLogger(__name__)
WEBHOOK = "core.st2.webhook"


def binding(trigger_ref: str, parameters: Mapping[str, Any] | None) -> str:
    """The key that ties an instance to the rules of one trigger: its type plus its parameters.

    StackStorm calls a trigger type with parameters a Trigger: a rule on `core.st2.IntervalTimer`
    every 10 s must not fire for the 60 s timer, nor a webhook rule for another hook's URL.
    """
    if not parameters:
        return trigger_ref
    if trigger_ref == WEBHOOK:
        parameters = {**parameters, "url": str(parameters.get("url", "")).strip("/")}
    return f"{trigger_ref} {json.dumps(parameters, sort_keys=True, default=str)}"


class TriggerError(ValueError):
    """A trigger that cannot be dispatched: unknown type, or a payload its schema refuses."""


class TriggerProcessor(Protocol):
    def interested(self, trigger_ref: str) -> bool:
        """Whether instances of this trigger type matter to this processor."""

    async def process(self, instance: dict[str, Any]) -> None:
        """Handle one stored instance; raising marks it `processing_failed`."""


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "trigger": record["trigger"],
        "payload": record["payload"],
        "occurrence_time": iso(record["occurrence_time"]),
        "status": record["status"],
        "trace_tag": record.get("trace_tag"),
        "trigger_parameters": record.get("trigger_parameters") or {},
    }


class TriggerService:
    def __init__(self, registry: Registry, db: Database) -> None:
        self.registry = registry
        self.db = db
        self.processors: list[TriggerProcessor] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def wanted(self, trigger_ref: str) -> bool:
        return any(processor.interested(trigger_ref) for processor in self.processors)

    def check(self, trigger_ref: str, payload: Any) -> None:
        """Raise `TriggerError` naming the problem if this instance cannot be dispatched."""
        trigger = self.registry.trigger_types.get(trigger_ref)
        if trigger is None:
            near = difflib.get_close_matches(trigger_ref, list(self.registry.trigger_types), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise TriggerError(f'trigger type "{trigger_ref}" is not registered{hint}')
        if trigger.payload_schema:
            import jsonschema  # here, not at the top: ~35 ms that `squall serve` need not pay before it answers

            try:
                error = jsonschema.exceptions.best_match(
                    jsonschema.Draft4Validator(trigger.payload_schema).iter_errors(payload))
            except (jsonschema.exceptions.SchemaError, jsonschema.exceptions.UnknownType) as exc:
                problem = (f"unknown type {exc.type!r}" if isinstance(exc, jsonschema.exceptions.UnknownType)
                           else exc.message)
                raise TriggerError(f'trigger type "{trigger_ref}" has an invalid payload_schema, so no payload can be '
                                   f'checked against it ({problem}): fix {trigger.metadata_file}') from None
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "payload"
                raise TriggerError(f'payload for "{trigger_ref}" is invalid at {where}: {error.message}')

    async def dispatch(self, trigger_ref: str, payload: Any, *, parameters: Mapping[str, Any] | None = None,
                       trace_tag: str | None = None, validate: bool = True,
                       delivery: tuple[str, datetime] | None = None) -> dict[str, Any]:
        """Store one instance (durable before this returns), then process it in the background.

        `parameters` names the trigger it fired for (a hook URL, a schedule): only rules with the
        same trigger parameters see it. Without, only rules on the bare type do. `delivery` (a key
        and when it expires) makes it the only instance of that delivery until then: the same one
        again raises `DuplicateDelivery` (a signed webhook request sent twice fires once)."""
        if validate:
            self.check(trigger_ref, payload)
        record = {"id": new_id(), "trigger": trigger_ref, "payload": payload, "occurrence_time": utcnow(),
                  "status": "pending", "trace_tag": trace_tag, "trigger_parameters": dict(parameters or {}) or None}
        await self.db(self.db.store.trigger_instance_add, record, delivery)
        metrics.count(metrics.trigger_instances, trigger_ref)
        self._spawn(record)
        return public(record)

    async def dispatch_once(self, trigger_ref: str, payloads: list[Any], key: str,
                            expires_at: datetime) -> list[dict[str, Any]]:
        """Store the instances of one occurrence (durable before this returns) under `key`, all or
        none, then process them in the background; [] if `key` was stored before, by anyone (in this
        process or another). With no payloads, only the key is stored: the occurrence owed nothing.
        The payloads are the engine's own (action and notify triggers): not checked."""
        now = utcnow()
        records = [{"id": new_id(), "trigger": trigger_ref, "payload": payload, "occurrence_time": now,
                    "status": "pending", "trace_tag": None, "trigger_parameters": None} for payload in payloads]
        if not await self.db(self.db.store.trigger_instances_add_once, records, key, expires_at):
            return []
        for record in records:
            metrics.count(metrics.trigger_instances, trigger_ref)
            self._spawn(record)
        return [public(record) for record in records]

    def _spawn(self, record: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.process(record), name=f"trigger-{record['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def process(self, record: dict[str, Any]) -> None:
        store = self.db.store
        await self.db(store.trigger_instance_status, record["id"], "processing")
        status = "processed"
        instance = public({**record, "status": "processing"})
        for processor in self.processors:
            if not processor.interested(record["trigger"]):
                continue
            try:
                await processor.process(instance)
            except Exception:
                log.exception("processing trigger instance %s (%s) failed", record["id"], record["trigger"])
                status = "processing_failed"
        await self.db(store.trigger_instance_status, record["id"], status)

    def purge_deliveries(self) -> int:
        """Forget the deliveries whose senders' signatures have expired (on the database's side)."""
        return self.db.store.deliveries_purge_expired(utcnow())

    async def get(self, instance_id: str) -> dict[str, Any]:
        record = await self.db(self.db.store.trigger_instance_get, instance_id)
        if record is None:
            raise LookupError(f'trigger instance "{instance_id}" not found')
        return public(record)

    async def list(self, **filters: Any) -> list[dict[str, Any]]:
        return [public(r) for r in await self.db(self.db.store.trigger_instance_list, **filters)]

    async def page(self, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """One page (`limit`, `offset`) of what `filters` select, and how many they select in all."""
        rows, total = await self.db(self.db.store.trigger_instance_page, **filters)
        return [public(r) for r in rows], total

    async def re_emit(self, instance_id: str) -> dict[str, Any]:
        """A new instance with the same trigger and payload (StackStorm's re_emit). As StackStorm's, a
        mapping payload gets `__context: {original_id: <instance_id>}` (replacing one an earlier re-emit
        set), so rules and their actions can tell a re-sent event from the original (`trigger.__context`)."""
        original = await self.get(instance_id)
        payload = original["payload"]
        if isinstance(payload, dict):
            payload = {**payload, "__context": {"original_id": instance_id}}
        return await self.dispatch(original["trigger"], payload, trace_tag=original["trace_tag"],
                                   parameters=original["trigger_parameters"], validate=False)

    async def recover(self) -> int:
        """Process what a crash left `pending`; what was mid-processing is marked failed (it may have acted)."""
        rows = await self.db(self.db.store.trigger_instance_list, None, ("pending", "processing"), 10_000)
        for row in reversed(rows):
            if row["status"] == "pending":
                self._spawn(row)
            else:
                await self.db(self.db.store.trigger_instance_status, row["id"], "processing_failed")
        return len(rows)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def settle(self) -> None:
        """Wait for instances being processed (for tests and the CLI)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
