"""Action policies (spec §11.1): concurrency (delay or cancel) before a run, retry after one.

Policies come from packs' `policies/*.yaml` (parsed by the pack loader). Concurrency sits in
front of the executor: every concurrency policy of an action counts its runs under a key of its
own (the action, and for `.attr` the hashed values of its attributes, secrets unsealed); a run is
admitted only while each of its keys is under its threshold, and holds a slot under each. One over
a threshold is marked `delayed` and queued (or canceled, as the first full policy says), and the
moment one of that action's runs ends, the queued ones whose keys all have room are admitted, in
order (no polling). A pack reload (`rebuild`) recounts the runs queued and holding slots under the
policies as they are now, and admits what then has room, in order. A run admitted here and then
canceled from another process, or claimed by another, before its claim ends unheard here: its slots
are freed when its run returns (`LocalExecutor.on_done`).
Delayed executions are stored as such, so after a restart `recover()` submits them again and the
policy decides anew. A run under way when it is submitted (a workflow resumed, re-run, or conducted on
after a crash: `resuming`) takes its slots whatever the count: it runs already, and the runs that wait
are admitted as slots free. After a crash the count starts from the workflows a dead process left
running, which recovery conducts on: read from the database before the first run is admitted
(`_left_running`), since recovery submits them after the `delayed` and `requested` ones; those it did
not take on after all give their slots back at its end (`_recovered`).
Retry listens for finished executions and re-requests a failed (or timed out) one with
`context.policies.retry.retry_count` counted up.

A failure is committed before its retry is requested, so a crash between the two would lose the
retry: at recovery (`recover_retries`) the failures of the last `RETRY_LOOKBACK` that were never
re-run have their retry requested then. A retry's id is derived from the failed execution's
(`retry_id`), so it is one row whoever requests it: the listener, a recovery of this process or of
another node on the same database; a second request conflicts on the key and stores nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import hashlib
import hmac
import json
import logging
import os
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from engine.crypto import CryptoError
from engine.executions import COMPLETED, FAILED, until_due
from engine.packs import ContentWarning
from engine.storage import as_utc, iso, utcnow
from engine.yamlfile import ContentError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from engine.executions import ExecutionService
    from engine.executor import Executor
    from engine.packs import Registry

log = logging.getLogger(__name__)
_THRESHOLD = {"type": "integer", "required": True, "minimum": 0, "description": "Concurrency threshold."}
_ON_FULL = {"type": "string", "default": "delay", "enum": ["delay", "cancel"],
            "description": "What happens to an execution once the threshold is reached."}
#: Each policy type Squall enforces: its description and its parameters' schema, as `_check` below takes
#: them (StackStorm's `policies/meta/*.yaml`, with Squall's bounds), shown by the API's `/policytypes`.
POLICY_TYPE_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "action.concurrency": ("Limits the concurrent executions for the action.",
                           {"threshold": _THRESHOLD, "action": _ON_FULL}),
    "action.concurrency.attr": (
        "Limits the concurrent executions for the action with the same values of the given parameters.",
        {"threshold": _THRESHOLD, "action": _ON_FULL,
         "attributes": {"type": "array", "required": True, "items": {"type": "string"},
                        "description": "The parameters whose values are counted apart."}}),
    "action.retry": ("Retry (re-run) failed or timed out action.", {
        "retry_on": {"type": "string", "required": True, "enum": ["failure", "timeout"],
                     "description": "Condition to retry on."},
        "max_retry_count": {"type": "integer", "default": 2, "minimum": 0, "maximum": 5,
                            "description": "Maximum number of times to retry before giving up."},
        "delay": {"type": "number", "minimum": 0, "maximum": 120,
                  "description": "Number of seconds to wait before retrying the execution."}}),
}
POLICY_TYPES = tuple(POLICY_TYPE_SPECS)
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
    file: str = ""  # where it is written, for the problems reported about it
    line: int | None = None  # of its `resource_ref`

    @property
    def concurrency(self) -> bool:
        return self.policy_type.startswith("action.concurrency")


#: Keys hash attribute values with this process's own secret: a key in memory tells no secret parameter
#: (a bare hash of a short secret is guessed by trying values). Keys are compared within one process only
#: (the shared count reads the holding rows' values and hashes them here, in the same call).
_KEY_SECRET = os.urandom(32)


@dataclass(frozen=True)
class Limit:
    """One concurrency policy as it applies to one execution: the key it counts that execution under."""

    policy: Policy
    key: tuple[str, ...]

    @property
    def threshold(self) -> int:
        return int(self.policy.parameters["threshold"])


def concurrency_key(policy: Policy, action: str, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The key `policy` counts a run of `action` under: the policy and the action, and for `.attr`
    each attribute's value (`values`: the real ones, secrets unsealed) as an HMAC-SHA256, so no
    secret is kept. The policy is part of it: two policies never share a count."""
    key = (policy.ref, action)
    if not policy.policy_type.endswith(".attr"):
        return key
    return key + tuple(_hashed(values.get(name)) for name in policy.parameters["attributes"])


def _hashed(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hmac.new(_KEY_SECRET, text.encode(), hashlib.sha256).hexdigest()


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
        found[resource].append(Policy(name, f"{document.pack}.{name}", resource, kind, dict(params), document.file,
                                      lines.line("resource_ref") if lines is not None else None))
    return dict(found), errors


def unbound_policies(policies: Mapping[str, list[Policy]], registry: Registry) -> list[ContentError]:
    """A problem per policy whose `resource_ref` names no loaded action: it is kept (a reload that
    brings the action makes it apply), but until then it holds and retries nothing, which its author
    must hear of rather than find out when runs are not limited."""
    problems = []
    for ref, found in policies.items():
        if ref in registry.actions:
            continue
        near = difflib.get_close_matches(ref, list(registry.actions), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        problems.extend(ContentError(policy.file, policy.line, f'policy "{policy.ref}" names action "{ref}", which '
                                     f"is not loaded{hint}: it applies to nothing until an action {ref} is loaded")
                        for policy in found)
    return problems


def unknown_attributes(policies: Mapping[str, list[Policy]], registry: Registry) -> list[ContentError]:
    """A warning per `action.concurrency.attr` attribute that names no parameter of its action: the policy
    loads (the value counted is then always none, so every run shares one count), but its author meant
    another parameter and would only find out when runs with different values wait for each other."""
    problems: list[ContentError] = []
    for ref, found in policies.items():
        action = registry.actions.get(ref)
        if action is None:
            continue  # `unbound_policies` says so
        for policy in found:
            if not policy.policy_type.endswith(".attr"):
                continue
            unknown = [name for name in policy.parameters["attributes"]
                       if not isinstance(name, str) or name not in action.parameters]
            if unknown:
                problems.append(ContentWarning(policy.file, policy.line, (
                    f'policy "{policy.ref}": attributes {", ".join(map(str, unknown))} name no parameter of {ref} '
                    f"(its parameters: {', '.join(sorted(action.parameters)) or 'none'}): every run counts as "
                    "having no value for them")))
    return problems


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
        #: The executions holding a slot under each key (`concurrency_key`).
        self._admitted: dict[tuple[str, ...], set[str]] = defaultdict(set)
        #: Each admitted execution's keys, one per concurrency policy of its action: all freed at its end.
        self._keys_of: dict[str, tuple[tuple[str, ...], ...]] = {}
        #: Each admitted execution's action (whose queue its end looks at).
        self._action_of: dict[str, str] = {}
        #: Each action's delayed executions, in the order they were delayed.
        self._queues: dict[str, deque[str]] = defaultdict(deque)
        #: Each queued execution's action and limits: one that ends while it waits (canceled) leaves its queue.
        self._queued: dict[str, tuple[str, tuple[Limit, ...]]] = {}
        #: Failed executions whose retry this process is requesting now (the listener's or recovery's).
        self._retrying: set[str] = set()
        self._starting: set[asyncio.Task[None]] = set()
        #: Counts the reloads of the policies, so a recount that read the runs under older ones reads again.
        self._generation = 0
        #: From a reload until the runs' limits are recomputed under its policies: nothing is admitted meanwhile.
        self._recounting = False
        #: The task applying reloaded policies to the runs waiting and holding slots (`_recheck`).
        self._rechecking: asyncio.Task[None] | None = None
        #: The workflows a dead process left running are yet to be counted (`_left_running`): by the first
        #: decision, unless recovery ended before it (all it conducts on was submitted then, and holds its slots).
        self._left_unread = True
        #: The runs a dead process left that hold slots here until recovery ends (`_recovered`).
        self._left: set[str] = set()
        executions.on_finished(self._on_finished)
        if hasattr(inner, "on_done"):  # the local executor: it tells each run that returned
            inner.on_done = self._run_returned
        executions.after_recovery(self._recovered)
        executions.after_recovery(self.recover_retries)

    def rebuild(self, registry: Registry) -> list[ContentError]:
        """Use the policies of newly loaded packs, for the runs already waiting or holding slots too."""
        self.policies, errors = load_policies(registry)
        errors.extend(unbound_policies(self.policies, registry))  # logged with the load's other problems
        errors.extend(unknown_attributes(self.policies, registry))
        self._recheck_soon()
        return errors

    def _recheck_soon(self) -> None:
        """After a reload, count the runs this process holds and queues under the new policies
        (`_recheck`). A queued run kept the limits it was delayed under: an edited threshold, a
        policy disabled or removed held it `delayed` until a restart while new requests ran, or ran
        it after newer ones. StackStorm applies the current policy at each scheduler pass. Where
        workers run the executions (`shared`) nothing is held here: the poll submits the `delayed`
        ones again and `submit` applies the policies of the moment."""
        self._generation += 1
        limited = any(policy.concurrency for found in self.policies.values() for policy in found)
        if self.shared or not (self._queued or self._action_of or (limited and self.running)):
            return
        self._recount_soon()

    def _recount_soon(self) -> None:
        """Admit nothing until `_recheck` has counted the runs again (started unless it is under way)."""
        self._recounting = True
        if self._rechecking is None:
            self._rechecking = asyncio.get_running_loop().create_task(self._recheck(), name="policy-recheck")

    async def settled(self) -> None:
        """Return once the policies of the last reload apply to the runs that waited or ran before it:
        a request decided before that could take a slot a waiting run is owed."""
        while (task := self._rechecking) is not None:
            await asyncio.shield(task)

    async def _recheck(self) -> None:
        """Read the runs queued and holding slots here, recompute their limits under the current
        policies, then admit what now has room (and what no policy holds any more), in the order
        they were delayed. Read again if the policies were reloaded meanwhile."""
        try:
            done = -1
            while done != self._generation:
                done = self._generation
                records = await self._read_counted()
                if done == self._generation:
                    await self._apply(records)
        finally:
            self._recounting = False
            self._rechecking = None

    async def _apply(self, records: Mapping[str, dict[str, Any] | None]) -> None:
        """Recount (`_recount`), then hand on each queued run that now has room, action by action in
        queue order. A recount that fails still admits what has room: the queue must not stall."""
        self._recounting = False
        try:
            self._recount(records)
        except Exception:
            log.exception("could not apply the reloaded concurrency policies to the runs waiting or running: "
                          "those not recounted keep the limits they had until they end")
        await _all([self._start(action, ready) for action in list(self._queues) if (ready := self._take_ready(action))])

    async def _read_counted(self) -> dict[str, dict[str, Any] | None]:
        """The records of the runs queued or holding slots here, of those running here unheld (a new
        policy counts them), and, the first time, of the workflows a dead process left running
        (`_left_running`), by id; empty if the database cannot be read (they keep their limits)."""
        db = self.executions.db
        try:
            if self._left_unread:
                self._left_unread = False
                self._left.update(await self._left_running())
            counted = set(self._action_of) | self.running | self._left
            ids = [*self._queued, *sorted(counted - set(self._queued))]
            return await db(_records, db.store, ids)
        except Exception:
            log.exception("could not read the runs waiting or running under concurrency policies to count them "
                          "under the policies loaded: those counted keep the limits they had until they end")
            return {}

    async def _left_running(self) -> list[str]:
        """The workflows of actions under a concurrency policy whose process died while it ran them, or
        before it conducted them on (`resuming`): `ExecutionService.recover` conducts them on, after it
        submitted the `delayed` and `requested` runs, which must find their slots taken. Not an action a dead
        process ran (recovery abandons it), nor a run of a live process (its end is not heard here)."""
        actions = sorted(ref for ref, found in self.policies.items() if any(p.concurrency for p in found))
        if not actions or self.shared:
            return []
        db = self.executions.db
        rows = await db(_live_rows, db.store, actions)
        return [row["id"] for row in rows if self.executions.resumable(row["runner"])
                and self.executions.owner_state_of(row["runner_info"]) == "gone"]

    async def _recovered(self) -> None:
        """At the end of `ExecutionService.recover`: what it conducts on was submitted, and holds its
        slots as any run under way does. The runs a dead process left that this process did not take on
        (another's recovery did, or they ended) give theirs back, and what waits behind them is admitted."""
        self._left_unread = False
        await self.settled()
        gone = {execution_id: action for execution_id in self._left - self.running
                if (action := self._action_of.get(execution_id)) is not None}
        self._left.clear()
        for execution_id in gone:
            self._release(execution_id)
        await _all([self._start(action, ready) for action in sorted(set(gone.values()))
                    if (ready := self._take_ready(action))])

    def _recount(self, records: Mapping[str, dict[str, Any] | None]) -> None:
        """Each queued run's limits and each holding run's keys, under the current policies. A run
        not read keeps what it had; a queued one that ended or is gone is held by nothing (its
        admission finds it gone and gives the slot back). Runs started here before a policy of
        their action existed hold slots under it from now on: their ends free them as any other's, as do
        the workflows a dead process left (`_left`)."""
        for execution_id, (action, _old) in self._queued.items():
            if execution_id in records:
                record = records[execution_id]
                waiting = record is not None and record["status"] in ("requested", "delayed")
                self._queued[execution_id] = (action, self._limits(record) if waiting else ())
        held = {execution_id: (self._action_of[execution_id], self._keys_of.get(execution_id, ()))
                for execution_id in self._action_of}
        for execution_id in (set(self._action_of) | self.running | self._left) - set(self._queued):
            record = records.get(execution_id)
            if record is None or (execution_id not in held and record["status"] in COMPLETED):
                continue
            keys = tuple(limit.key for limit in self._limits(record))
            if keys or execution_id in held:
                held[execution_id] = (record["action"], keys)
        self._admitted.clear()
        self._keys_of.clear()
        self._action_of.clear()
        for execution_id, (action, keys) in held.items():
            self._hold(execution_id, action, keys)

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
        policies = self.policies.get(action_ref)
        return bool(policies) and any(p.concurrency for p in policies)  # (most actions: none, no generator)

    async def cancel(self, execution_id: str) -> bool:
        return await self.inner.cancel(execution_id)

    async def close(self) -> None:
        if self._rechecking is not None:
            self._rechecking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rechecking
        await self.inner.close()

    async def submit(self, execution_id: str) -> None:
        if (not self.policies and not self.shared) or execution_id in self._keys_of:
            await self.inner.submit(execution_id)
            return
        db = self.executions.db
        record = await db(db.store.get_execution, execution_id)
        if self._left_unread and record is not None and not self.shared and self.holds(record["action"]):
            self._generation += 1  # a recount under way reads again, with the runs a crash left
            self._recount_soon()  # those a dead process left count before this one is decided
        await self.settled()  # a reload's recount first: the runs that waited before this one go first
        if execution_id in self._queued:
            return  # waiting for room already (submitted twice: a request's submit and a poll's)
        limits = self._limits(record) if record is not None and record["status"] in ("requested", "delayed") else ()
        if not limits and self.shared and record is not None and _policy_delayed(record):
            await self._submit_shared(record, ())  # its policy is gone: admitted (to `scheduled`) for the workers
            return
        if not limits or execution_id in self._keys_of:
            if (record is not None and not self.shared and record["status"] in SHARED_HOLDING
                    and execution_id not in self._keys_of and (held := self._limits(record))):
                # Under way (a workflow resumed, re-run or recovered): it takes its slots, room or not.
                self._admit(execution_id, record["action"], held)
            await self.inner.submit(execution_id)
            return
        if until_due(record) > 0:  # held by a clock (a retry's or a task's delay): its timer, or a poll, brings it back
            return
        if self.shared:
            await self._submit_shared(record, limits)
            return
        await self._submit_here(record, limits)

    async def _submit_here(self, record: dict[str, Any], limits: tuple[Limit, ...]) -> None:
        """Admit, delay or cancel a run this process counts."""
        execution_id, action = record["id"], record["action"]
        full = self._full(limits)
        if full is None:
            self._admit(execution_id, action, limits)
            await self.inner.submit(execution_id)
        elif full.policy.parameters.get("action", "delay") == "cancel":
            await self._cancel(record, full)
        else:
            # Queued before anything is awaited: a run that ends while the `delayed` mark is stored must
            # find it waiting, or it would free the slot with nobody queued and nothing would admit this one.
            self._enqueue(action, execution_id, limits)
            if record["status"] == "requested":
                entries = [*(record.get("log") or []), {"status": "delayed", "timestamp": iso(utcnow())}]
                db = self.executions.db
                await db(db.store.update_execution, execution_id, {"status": "delayed", "log": entries},
                         expect=("requested",))

    def _limits(self, record: Mapping[str, Any]) -> tuple[Limit, ...]:
        """Every concurrency policy of the record's action, with the key it counts the record under."""
        policies = [p for p in self.policies.get(record["action"], ()) if p.concurrency]
        values = self._values(record) if any(p.policy_type.endswith(".attr") for p in policies) else {}
        return tuple(Limit(p, concurrency_key(p, record["action"], values)) for p in policies)

    def _values(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A run's parameter values as requested: its `spec` holds secrets masked, so they are unsealed
        (each run's mask is the same, and would count every value as one). Sealed values that cannot be
        decrypted (the key file replaced) count as masked: the run's claim fails it saying why, as it
        would without a policy, instead of the error stopping `recover`, a poll or every admit of the action."""
        values = (record.get("spec") or {}).get("values") or {}
        try:
            return {**values, **self.executions.unseal(record)}
        except CryptoError:
            return dict(values)

    async def _cancel(self, record: Mapping[str, Any], full: Limit) -> None:
        params = full.policy.parameters
        which = f" with the same {', '.join(params['attributes'])}" if full.policy.policy_type.endswith(".attr") else ""
        await self.executions.complete(record["id"], "canceled", {
            "error": f'canceled by policy "{full.policy.ref}": {full.threshold} of {record["action"]}{which} '
                     "already running"}, ("requested", "delayed"))

    async def _submit_shared(self, record: dict[str, Any], limits: tuple[Limit, ...]) -> None:
        """Several processes share the executions (`squall worker`s): the count is the database's,
        taken under a lock per action, and admitting is moving the execution to `scheduled` in that
        transaction. A delayed one is admitted when the poll submits it again after a run ended."""
        db = self.executions.db
        admitted, full = await db(admit_shared, db.store, record, limits, self._values)
        if admitted:
            await self.inner.submit(record["id"])
        elif full is not None and full.policy.parameters.get("action", "delay") == "cancel":
            await self._cancel(record, full)

    def _full(self, limits: tuple[Limit, ...]) -> Limit | None:
        """The first of `limits` whose key holds its threshold already; None when all have room."""
        return next((limit for limit in limits if len(self._admitted.get(limit.key, ())) >= limit.threshold), None)

    def _admit(self, execution_id: str, action: str, limits: tuple[Limit, ...]) -> None:
        self._hold(execution_id, action, tuple(limit.key for limit in limits))

    def _hold(self, execution_id: str, action: str, keys: tuple[tuple[str, ...], ...]) -> None:
        for key in keys:
            self._admitted[key].add(execution_id)
        self._keys_of[execution_id] = keys
        self._action_of[execution_id] = action

    def _release(self, execution_id: str) -> None:
        """Free every slot the execution holds (keys of values seen once are dropped, not kept empty)."""
        self._action_of.pop(execution_id, None)
        for key in self._keys_of.pop(execution_id, ()):
            holders = self._admitted.get(key)
            if holders is not None:
                holders.discard(execution_id)
                if not holders:
                    del self._admitted[key]

    def _enqueue(self, action: str, execution_id: str, limits: tuple[Limit, ...]) -> None:
        self._queues[action].append(execution_id)
        self._queued[execution_id] = (action, limits)

    def _dequeue(self, execution_id: str) -> None:
        action, _limits = self._queued.pop(execution_id, (None, ()))
        queue = self._queues.get(action) if action is not None else None
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(execution_id)
        if not queue:
            del self._queues[action]

    # -- after a run ------------------------------------------------------------------------------
    def _on_finished(self, record: dict[str, Any]) -> Any:
        execution_id = record["id"]
        if execution_id not in self._queued and execution_id not in self._keys_of and not self.policies.get(
                record["action"]):
            return None  # most ends: nothing held, queued nor retried (every execution's end asks)
        tasks = []
        self._dequeue(execution_id)  # ended while it waited for a slot (canceled): it leaves the queue
        if execution_id in self._keys_of:
            self._release(execution_id)
            if ready := self._take_ready(record["action"]):
                tasks.append(self._start(record["action"], ready))
        retry = self._retry(record)
        if retry is not None:
            tasks.append(retry)
        if not tasks:
            return None
        return _all(tasks)

    def _run_returned(self, execution_id: str) -> None:
        """A run the local executor ran returned: whatever slots it still holds are freed. Its end freed
        them already, unless it ended unheard here: admitted, then canceled from another process (`squall
        execution cancel`) or claimed by another (a second `squall serve`) before its claim, it found
        nothing to claim, and its slots would stay taken, the runs queued behind them `delayed`, until a
        restart."""
        action = self._action_of.get(execution_id)
        if action is None:
            return
        self._release(execution_id)
        if ready := self._take_ready(action):
            task = asyncio.get_running_loop().create_task(self._start(action, ready))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _take_ready(self, action: str) -> list[str]:
        """Admit each queued execution of `action` whose keys all have room, in the order they wait.
        Done as the slot is freed, before anything is awaited, so no new request slips past the queue.
        None while a reload's recount is under way: their limits may be the old policies'; the
        recount admits them once they are the new ones'."""
        if self._recounting:
            return []
        ready = []
        for execution_id in list(self._queues.get(action, ())):
            limits = self._queued[execution_id][1]
            if self._full(limits) is None:
                self._dequeue(execution_id)
                self._admit(execution_id, action, limits)
                ready.append(execution_id)
        return ready

    async def _start(self, action: str, ready: list[str]) -> None:
        """Hand the admitted executions on. One that ended while it waited, or that another process
        claimed meanwhile (a CLI's cancel, a second `squall serve`'s recovery), is not run here, and its
        end is not heard here: it gives its slots back and the queue is looked at again, or the slots
        would stay taken by a run that never starts here, and the queue behind it would wait until a
        restart."""
        db = self.executions.db
        while ready:
            gone = []
            for execution_id in ready:
                record = await db(db.store.get_execution, execution_id)
                if record is not None and record["status"] in ("requested", "delayed"):
                    await self.inner.submit(execution_id)
                else:
                    gone.append(execution_id)
            for execution_id in gone:
                self._release(execution_id)
            ready = self._take_ready(action) if gone else []

    def _retry(self, record: dict[str, Any]) -> Any:
        found = self._retry_policy(record)
        if found is None or record["id"] in self._retrying:
            return None
        self._retrying.add(record["id"])  # before any await: recovery skips it meanwhile
        return self._retry_later(record, *found)

    def retries(self, record: dict[str, Any]) -> bool:
        """Whether a retry policy requests a retry of the ended execution `record` (the CLI tells of it)."""
        return self._retry_policy(record) is not None

    def _retry_policy(self, record: dict[str, Any]) -> tuple[Policy, int] | None:
        """The retry policy that retries this ended execution, and the retry's count; None if none does."""
        policies = self.policies.get(record["action"])
        if not policies:
            return None  # most actions: no policy (every end asks)
        if record.get("parent"):
            return None  # inside workflows, retry is the workflow's (`retry:` on the task)
        if not _ran(record):
            return None  # refused before it ran (`ExecutionService.record_refused`): a retry is refused the same way
        for policy in policies:
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


def _ran(record: dict[str, Any]) -> bool:
    """Whether `record` got as far as running, or could have (abandoned, or timed out, on its way): a request
    refused for its parameters is stored failed without ever running, and retrying it would only be refused
    again, at every recovery for a day (`recover_retries`)."""
    return record["status"] != "failed" or any(entry.get("status") == "running" for entry in record.get("log") or [])


def _live_rows(store: Any, actions: list[str]) -> list[dict[str, Any]]:
    """The executions of `actions` running, pausing or waiting to be conducted on (`resuming`): their id,
    runner and owner (`runner_info`). Live statuses, which `ix_executions_status` finds."""
    from engine.storage import executions

    c = executions.c
    statement = sa.select(c.id, c.runner, c.runner_info).where(
        c.action.in_(actions), c.status.in_(("running", "pausing", "resuming")))
    with store._read() as conn:
        return [dict(row._mapping) for row in conn.execute(statement)]


def _records(store: Any, ids: list[str]) -> dict[str, dict[str, Any] | None]:
    """Each execution of `ids` by id (None if it is gone), in one trip to the database thread."""
    return {execution_id: store.get_execution(execution_id) for execution_id in ids}


def _policy_delayed(record: Mapping[str, Any]) -> bool:
    """Whether `record` waits `delayed` for a concurrency policy's slot, not for a clock (a retry's or a
    task's delay, `runner_info.delayed_until`), which the executor hands on itself once it is over."""
    return record["status"] == "delayed" and (record.get("runner_info") or {}).get("delayed_until") is None


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


#: Statuses that hold a slot of a concurrency policy: counted in the database when the count is shared between
#: processes; otherwise a run submitted in one (a workflow conducted on) takes its slots as it is handed on.
SHARED_HOLDING = ("scheduled", "running", "pausing", "canceling", "resuming")


def admit_shared(store: Any, record: dict[str, Any], limits: tuple[Limit, ...],
                 values_of: Callable[[Mapping[str, Any]], dict[str, Any]]) -> tuple[bool, Limit | None]:
    """Admit `record` if each of its `limits` has fewer than its threshold executions of its key holding
    a slot: counted and moved to `scheduled` in one PostgreSQL transaction under an advisory lock on the
    action, so two serve nodes never both admit the last slot; otherwise it is marked `delayed`. The
    holding rows' keys are made as the record's (`values_of`: their values, secrets unsealed).

    Older `delayed` runs of the action that a slot would admit now count as holding theirs
    (`_taken`): the slot a worker freed is theirs, and the poll admits them oldest first. Otherwise a
    request made before the poll came round took it, and requests ran out of order. Returns whether
    it was admitted, and the first limit that was full (None if none was)."""
    from engine.storage import executions

    action = record["action"]
    with store._write() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"squall.policy:{action}"})
        rows = [dict(row._mapping) for row in conn.execute(_slot_rows(record))]
        taken = _taken(rows, action, limits, values_of)
        full = next((limit for limit in limits if taken[limit.key] >= limit.threshold), None)
        status = "scheduled" if full is None else "delayed"
        if status == record["status"]:
            return False, full
        entries = [*(record.get("log") or []), {"status": status, "timestamp": iso(utcnow())}]
        changed = conn.execute(executions.update().where(
            executions.c.id == record["id"], executions.c.status.in_(("requested", "delayed"))).values(
            status=status, log=entries)).rowcount
        return bool(changed) and full is None, full


def _slot_rows(record: Mapping[str, Any]) -> Any:
    """One query for what stands before `record` for its action's slots: the executions holding one,
    and the `delayed` ones requested before it, oldest first. Both are live statuses, which
    `ix_executions_status` finds without reading the action's history."""
    from engine.storage import executions

    c = executions.c
    requested = sa.tuple_(sa.literal(record["start_timestamp"], c.start_timestamp.type), sa.literal(record["id"]))
    older = sa.tuple_(c.start_timestamp, c.id) < requested
    return (sa.select(c.id, c.status, c.spec, c.sealed, c.runner_info)
            .where(c.action == record["action"], c.status.in_((*SHARED_HOLDING, "delayed")),
                   sa.or_(c.status != "delayed", older))
            .order_by(c.start_timestamp, c.id))


def _taken(rows: list[dict[str, Any]], action: str, limits: tuple[Limit, ...],
           values_of: Callable[[Mapping[str, Any]], dict[str, Any]]) -> Counter[tuple[str, ...]]:
    """The slots under each key that `rows` (`_slot_rows`) take before the record: every holding row
    one under each of its keys; then, in their order, every older `delayed` row whose keys all have
    room, as the poll will admit it (a local process's `_take_ready` does the same). One waiting on a
    full key of its own (another `.attr` value) takes nothing, nor does one held by a clock (a retry's
    or a task's `delay`): neither would take a slot now."""
    attributes = any(limit.policy.policy_type.endswith(".attr") for limit in limits)
    taken: Counter[tuple[str, ...]] = Counter()
    for row in sorted(rows, key=lambda row: row["status"] == "delayed"):  # stable: the delayed ones stay in order
        waiting = row["status"] == "delayed"
        if waiting and until_due(row) > 0:
            continue
        values = values_of(row) if attributes else {}
        keys = [(concurrency_key(limit.policy, action, values), limit.threshold) for limit in limits]
        if waiting and any(taken[key] >= threshold for key, threshold in keys):
            continue
        for key, _threshold in keys:
            taken[key] += 1
    return taken
