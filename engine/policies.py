"""Action policies (spec §11.1): concurrency (delay or cancel) before a run, retry after one.

Policies come from packs' `policies/*.yaml` (parsed by the pack loader). Concurrency sits in
front of the executor: an execution over its action's threshold is marked `delayed` and
queued, and the moment one of that action's runs ends the next queued one is admitted (no
polling). Delayed executions are stored as such, so after a restart `recover()` submits them
again and the policy decides anew. Retry listens for finished executions and re-requests a
failed (or timed out) one with `context.policies.retry.retry_count` counted up.

A failure is committed before its retry is requested, so a crash between the two would lose the
retry: at recovery (`recover_retries`) the failures of the last `RETRY_LOOKBACK` that were never
re-run have their retry requested then. A retry's id is derived from the failed execution's
(`retry_id`), so it is one row whoever requests it: the listener, a recovery of this process or of
another node on the same database; a second request conflicts on the key and stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.executions import FAILED, until_due
from engine.storage import as_utc, utcnow
from engine.yamlfile import ContentError

if TYPE_CHECKING:
    from engine.executions import ExecutionService
    from engine.executor import Executor
    from engine.packs import Registry

log = logging.getLogger(__name__)
POLICY_TYPES = ("action.concurrency", "action.concurrency.attr", "action.retry")
#: How far back recovery looks for failures whose retry was never requested (by their start: the
#: range of an index, however big the table).
RETRY_LOOKBACK = timedelta(days=1)
#: With workers (`executor.kind: procrastinate`) the lead looks for lost retries while it runs, not only
#: at its start: a worker killed between a failure's commit and its retry's request has no restart of
#: its own to recover it. A failure younger than this is left to its worker's listener, still at work.
RETRY_SETTLE = timedelta(minutes=1)
#: Tests only: a file path. The retry listener writes the failed execution's id there and then waits
#: for ever instead of requesting the retry, holding open the window a crash falls into.
HOLD_RETRY_ENV = "SQUALL_TEST_HOLD_RETRY"


def retry_id(original_id: str) -> str:
    """The id of the retry a policy requests for `original_id`: the same whoever requests it, so the
    execution table's primary key lets only one of them store it. It sorts just after the original
    (its creation microsecond plus one, then 40 bits of a hash of the original's id), as a retry's
    own fresh id would have."""
    digest = hashlib.sha256(f"retry:{original_id}".encode()).hexdigest()
    try:
        micros = int(original_id[:14], 16) + 1
    except ValueError:  # not one of Squall's ids (made by hand): a hash alone
        return digest[:24]
    return f"{micros:014x}{digest[:10]}"


@dataclass
class Policy:
    name: str
    ref: str
    resource_ref: str
    policy_type: str
    parameters: dict[str, Any] = field(default_factory=dict)


def load_policies(registry: Registry) -> tuple[dict[str, list[Policy]], list[ContentError]]:
    """Policies by action ref, and the files that could not be used (with line and reason)."""
    found: dict[str, list[Policy]] = defaultdict(list)
    errors: list[ContentError] = []
    for document in registry.documents:
        if document.kind != "policies":
            continue
        data, lines = document.data, document.lines

        def bad(reason: str, key: str | None = None, _file: str = document.file, _lines: Any = lines) -> None:
            errors.append(ContentError(_file, _lines.line(key) if key else 1, reason))

        if not isinstance(data, dict):
            bad("a policy must be a mapping with name, resource_ref, policy_type and parameters")
            continue
        if data.get("enabled", True) is False:
            continue
        name, resource, kind = data.get("name"), data.get("resource_ref"), data.get("policy_type")
        params = data.get("parameters") or {}
        if not isinstance(name, str) or not name:
            bad("'name' is required", "name")
            continue
        if not isinstance(resource, str) or "." not in resource:
            bad(f"policy '{name}': 'resource_ref' must be an action ref", "resource_ref")
            continue
        if kind not in POLICY_TYPES:
            bad(f"policy '{name}': unknown policy_type {kind!r} (known: {', '.join(POLICY_TYPES)})", "policy_type")
            continue
        if not isinstance(params, dict):
            bad(f"policy '{name}': 'parameters' must be a mapping", "parameters")
            continue
        problem = _check(kind, params)
        if problem:
            bad(f"policy '{name}': {problem}", "parameters")
            continue
        found[resource].append(Policy(name, f"{document.pack}.{name}", resource, kind, dict(params)))
    return dict(found), errors


def _check(kind: str, params: dict[str, Any]) -> str | None:
    if kind.startswith("action.concurrency"):
        threshold = params.get("threshold")
        if not isinstance(threshold, int) or threshold < 0:
            return "'threshold' (a whole number >= 0) is required"
        if params.get("action", "delay") not in ("delay", "cancel"):
            return "'action' must be delay or cancel"
        if kind.endswith(".attr") and not isinstance(params.get("attributes"), list):
            return "'attributes' (a list of parameter names) is required"
        return None
    if params.get("retry_on") not in ("failure", "timeout"):
        return "'retry_on' must be failure or timeout"
    count = params.get("max_retry_count", 2)
    if not isinstance(count, int) or not 0 <= count <= 5:
        return "'max_retry_count' must be 0..5"
    delay = params.get("delay", 0)
    if not isinstance(delay, int | float) or not 0 <= delay <= 120:
        return "'delay' must be 0..120 seconds"
    return None


class PolicyExecutor:
    """An `Executor` that applies concurrency policies before handing executions on."""

    def __init__(self, inner: Executor, executions: ExecutionService) -> None:
        self.inner = inner
        self.executions = executions
        self.policies: dict[str, list[Policy]] = {}
        self._admitted: dict[tuple[Any, ...], set[str]] = defaultdict(set)
        self._key_of: dict[str, tuple[Any, ...]] = {}
        self._queues: dict[tuple[Any, ...], deque[str]] = defaultdict(deque)
        #: Each queued execution's key: one that ends while it waits (canceled) leaves its queue.
        self._queued: dict[str, tuple[Any, ...]] = {}
        #: Failed executions whose retry this process is requesting now (the listener's or recovery's).
        self._retrying: set[str] = set()
        executions.on_finished(self._on_finished)
        executions.after_recovery(self.recover_retries)

    def rebuild(self, registry: Registry) -> list[ContentError]:
        self.policies, errors = load_policies(registry)
        return errors

    # -- the Executor interface -------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return bool(getattr(self.inner, "closing", False))

    @property
    def running(self) -> set[str]:
        return getattr(self.inner, "running", set())

    @property
    def shared(self) -> bool:
        """Whether other processes run what this one submits (then concurrency counts in the database)."""
        return bool(getattr(self.inner, "shared", False))

    def holds(self, action_ref: str) -> bool:
        """Whether a concurrency policy may delay or cancel runs of `action_ref`: those are submitted,
        never run in the call that stores them (`ExecutionService._at_once`)."""
        return any(p.policy_type.startswith("action.concurrency") for p in self.policies.get(action_ref, ()))

    async def cancel(self, execution_id: str) -> bool:
        return await self.inner.cancel(execution_id)

    async def close(self) -> None:
        await self.inner.close()

    async def submit(self, execution_id: str) -> None:
        if not self.policies or execution_id in self._key_of:
            await self.inner.submit(execution_id)
            return
        db = self.executions.db
        record = await db(db.store.get_execution, execution_id)
        policy = next((p for p in self.policies.get(record["action"], []) if p.policy_type.startswith(
            "action.concurrency")), None) if record else None
        if record is None or policy is None or record["status"] not in ("requested", "delayed"):
            await self.inner.submit(execution_id)
            return
        if until_due(record) > 0:  # held by a clock (a retry's or a task's delay): its timer, or a poll, brings it back
            return
        key: tuple[Any, ...] = (record["action"],)
        if policy.policy_type.endswith(".attr"):
            values = record["spec"]["values"]
            key += tuple(repr(values.get(name)) for name in policy.parameters["attributes"])
        if getattr(self.inner, "shared", False):
            await self._submit_shared(record, policy, key)
            return
        if len(self._admitted[key]) < policy.parameters["threshold"]:
            self._admit(key, execution_id)
            await self.inner.submit(execution_id)
            return
        if policy.parameters.get("action", "delay") == "cancel":
            await self.executions.complete(execution_id, "canceled", {
                "error": f'canceled by policy "{policy.ref}": {policy.parameters["threshold"]} of '
                         f'{record["action"]} already running'}, ("requested", "delayed"))
            return
        if record["status"] == "requested":
            from engine.storage import iso, utcnow

            log_entries = [*(record.get("log") or []), {"status": "delayed", "timestamp": iso(utcnow())}]
            await db(db.store.update_execution, execution_id, {"status": "delayed", "log": log_entries},
                     expect=("requested",))
        if execution_id not in self._queues[key]:
            self._queues[key].append(execution_id)
            self._queued[execution_id] = key

    async def _submit_shared(self, record: dict[str, Any], policy: Policy, key: tuple[Any, ...]) -> None:
        """Several processes share the executions (`squall worker`s): the count is the database's,
        taken under a lock per key, and admitting is moving the execution to `scheduled` in that
        transaction. A delayed one is admitted when the poll submits it again after a run ended."""
        db = self.executions.db
        admitted = await db(admit_shared, db.store, record, key, policy.parameters.get("attributes") or [],
                            policy.parameters["threshold"])
        if admitted:
            await self.inner.submit(record["id"])
        elif policy.parameters.get("action", "delay") == "cancel":
            await self.executions.complete(record["id"], "canceled", {
                "error": f'canceled by policy "{policy.ref}": {policy.parameters["threshold"]} of '
                         f'{record["action"]} already running'}, ("requested", "delayed"))

    def _admit(self, key: tuple[Any, ...], execution_id: str) -> None:
        self._admitted[key].add(execution_id)
        self._key_of[execution_id] = key

    # -- after a run ------------------------------------------------------------------------------
    def _on_finished(self, record: dict[str, Any]) -> Any:
        key = self._key_of.pop(record["id"], None)
        tasks = []
        waited = self._queued.pop(record["id"], None)
        if waited is not None:  # ended while it waited for a slot (canceled): it leaves the queue
            with contextlib.suppress(ValueError):
                self._queues[waited].remove(record["id"])
        if key is not None:
            self._admitted[key].discard(record["id"])
            if self._queues.get(key):
                tasks.append(self._admit_next(key))
        retry = self._retry(record)
        if retry is not None:
            tasks.append(retry)
        if not tasks:
            return None
        return _all(tasks)

    async def _admit_next(self, key: tuple[Any, ...]) -> None:
        """Give the freed slot to the first queued execution still waiting. One canceled from another
        process (a CLI) ended there, unheard here: it is skipped, or the slot would stay taken by a
        run whose claim finds nothing, and the queue behind it would wait until a restart."""
        db, queue = self.executions.db, self._queues.get(key)
        while queue:
            next_id = queue.popleft()
            self._queued.pop(next_id, None)
            self._admit(key, next_id)  # taken before looking, so no new request slips past the queue
            record = await db(db.store.get_execution, next_id)
            if record is not None and record["status"] in ("requested", "delayed"):
                await self.inner.submit(next_id)
                return
            self._admitted[key].discard(next_id)
            self._key_of.pop(next_id, None)

    def _retry(self, record: dict[str, Any]) -> Any:
        found = self._retry_policy(record)
        if found is None or record["id"] in self._retrying:
            return None
        self._retrying.add(record["id"])  # before any await: recovery skips it meanwhile
        return self._retry_later(record, *found)

    def _retry_policy(self, record: dict[str, Any]) -> tuple[Policy, int] | None:
        """The retry policy that retries this ended execution, and the retry's count; None if none does."""
        if record.get("parent"):
            return None  # inside workflows, retry is the workflow's (`retry:` on the task)
        for policy in self.policies.get(record["action"], []):
            if policy.policy_type != "action.retry":
                continue
            wanted = {"failure": ("failed", "abandoned"), "timeout": ("timeout",)}[policy.parameters["retry_on"]]
            if record["status"] not in wanted:
                continue
            done = int(((record.get("context") or {}).get("policies") or {}).get("retry", {}).get("retry_count", 0))
            if done >= int(policy.parameters.get("max_retry_count", 2)):
                continue
            return policy, done + 1
        return None

    async def _retry_later(self, record: dict[str, Any], policy: Policy, count: int) -> None:
        """Request the retry now, held `delayed` for the policy's delay: stored, so a restart during the
        delay runs it still (a retry waiting in memory was lost with the process). Its id is
        `retry_id(original)`: if it is stored already (another node's recovery), nothing is."""
        delay = float(policy.parameters.get("delay", 0) or 0)
        # The same request again: who asked and where its replies go (a chat thread) are the original's.
        context = {**(record.get("context") or {}),
                   "policies": {"retry": {"retry_count": count, "applied_policy": policy.ref}}}
        try:
            if hold := os.environ.get(HOLD_RETRY_ENV):
                await _hold_for_tests(hold, record["id"])
            await self.executions.rerun(record["id"], context=context, delay=delay, rerun_id=retry_id(record["id"]))
        except sa.exc.IntegrityError:
            log.info("retry policy %s: the retry of %s (%s) was requested already", policy.ref, record["id"],
                     retry_id(record["id"]))
        except Exception:
            log.exception("retry policy %s could not re-run %s", policy.ref, record["id"])
        finally:
            self._retrying.discard(record["id"])

    async def recover_retries(self, settled: timedelta = timedelta(0)) -> int:
        """Request the retries a crash lost: top-level executions started within `RETRY_LOOKBACK` that
        ended at least `settled` ago in a status their action's retry policy retries, below its count,
        and that nothing re-ran (no execution's `context.re-run.ref` names them). Run at the end of
        `ExecutionService.recover`, after the executions it abandoned were heard of (those retries are
        this process's listener's, and under way), and by the lead of workers every minute with
        `settled=RETRY_SETTLE`. Returns how many it requested."""
        actions = sorted(ref for ref, policies in self.policies.items()
                         if any(p.policy_type == "action.retry" for p in policies))
        if not actions:
            return 0
        db = self.executions.db
        rows = await db(db.store.recent_top_level, actions, utcnow() - RETRY_LOOKBACK)
        rerun = {row["rerun_of"] for row in rows if row["rerun_of"]}
        ended_before = utcnow() - settled
        requested = 0
        for row in rows:
            if row["status"] not in FAILED or row["id"] in rerun or row["id"] in self._retrying:
                continue
            if row["end_timestamp"] is not None and as_utc(row["end_timestamp"]) > ended_before:
                continue  # its own process's listener may be requesting it right now
            record = await db(db.store.get_execution, row["id"])
            found = self._retry_policy(record) if record is not None else None
            if found is None or row["id"] in self._retrying:
                continue
            self._retrying.add(row["id"])
            log.warning("execution %s of %s ended %s and its retry (policy %s) was never requested: "
                        "the process that ran it stopped first; requesting it now", row["id"], record["action"],
                        record["status"], found[0].ref)
            await self._retry_later(record, *found)
            requested += 1
        return requested


async def _all(awaitables: list[Any]) -> None:
    """Await each in turn; one that fails (a slot's admission) must not keep the next (a retry) from running."""
    for awaitable in awaitables:
        try:
            await awaitable
        except Exception:
            log.exception("a policy's step after a run ended failed")


async def _hold_for_tests(path: str, execution_id: str) -> None:
    """Tests only (`HOLD_RETRY_ENV`): say which failure's retry is held, then hold it for ever, so a
    test can kill the process between the failure's commit and its retry's request."""
    Path(path).write_text(execution_id)
    log.warning("%s is set: the retry of %s is held and never requested", HOLD_RETRY_ENV, execution_id)
    await asyncio.Event().wait()


#: Statuses that hold a slot of a concurrency policy when the count is shared between processes.
SHARED_HOLDING = ("scheduled", "running", "pausing", "canceling", "resuming")


def admit_shared(store: Any, record: dict[str, Any], key: tuple[Any, ...], attributes: list[str],
                 threshold: int) -> bool:
    """Admit `record` under its policy if fewer than `threshold` executions of its key hold a slot:
    counted and moved to `scheduled` in one PostgreSQL transaction under an advisory lock on the key,
    so two serve nodes never both admit the last slot; otherwise it is marked `delayed`."""
    import sqlalchemy as sa

    from engine.storage import executions, iso, utcnow

    values = record["spec"]["values"]
    mine = tuple(repr(values.get(name)) for name in attributes)
    with store._write() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": repr(key)})
        rows = conn.execute(sa.select(executions.c.spec).where(
            executions.c.action == record["action"], executions.c.status.in_(SHARED_HOLDING))).all()
        holding = sum(1 for (spec,) in rows
                      if tuple(repr((spec or {}).get("values", {}).get(name)) for name in attributes) == mine)
        status = "scheduled" if holding < threshold else "delayed"
        if status == record["status"]:
            return False
        entries = [*(record.get("log") or []), {"status": status, "timestamp": iso(utcnow())}]
        changed = conn.execute(executions.update().where(
            executions.c.id == record["id"], executions.c.status.in_(("requested", "delayed"))).values(
            status=status, log=entries)).rowcount
        return bool(changed) and status == "scheduled"
