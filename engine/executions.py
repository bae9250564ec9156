"""Executions: requested, recorded, run and finished with StackStorm's statuses (spec §10).

Every request is validated and stored as `requested` before anything runs, so a crash loses
nothing: on start-up `recover()` marks what was left running `abandoned` and runs what was
never started. Secret parameters are masked in every stored field people can read; their real
values travel sealed with the datastore key. Values a secret was rendered into, and outputs that
echo a secret, are scrubbed as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import random
import re
import socket
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine import tracing
from engine.actions import Action
from engine.crypto import CryptoError, KeyRing
from engine.datastore import Datastore
from engine.events import EXECUTION_FINISHED, Events
from engine.executor import Executor
from engine.logs import bind, printable
from engine.metrics import metrics
from engine.output import OutputRecorder, OutputSink
from engine.pack_config import PYTHON_RUNNER, config_facts, config_value_error, render_dynamic_config
from engine.packs import Pack, Registry, UnknownAction
from engine.parameters import (
    MASK,
    MIN_REPLACED,
    ParameterError,
    Resolution,
    credential_texts,
    mask,
    needs_rendering,
    rerun_parameters,
    resolve,
)
from engine.processes import LEDGER, ledger_directory, owner_state, process_identity, sweep
from engine.runners import RUNNER_TYPES, WAITING_ON_TASKS, Runner, RunOutcome, RunRequest
from engine.storage import Database, Store, database_failure, database_trouble, iso, utcnow
from engine.templates import KVNamespace, TemplateRenderError, build_environment, render_pool, render_template
from engine.tokens import mint, revoke, revoke_ended

log = logging.getLogger(__name__)

STATUSES = (
    "requested", "scheduled", "delayed", "running", "succeeded", "failed", "timeout", "abandoned",
    "canceling", "canceled", "pending", "pausing", "paused", "resuming",
)
COMPLETED = frozenset({"succeeded", "failed", "timeout", "canceled", "abandoned"})
FAILED = frozenset({"failed", "timeout", "abandoned"})
CANCELABLE = frozenset({"requested", "scheduled", "delayed", "running", "pausing", "paused", "resuming"})
_QUEUED = ("requested", "scheduled", "delayed")
#: A workflow conducted in steps (`executor.kind: procrastinate`) is in one of these between them.
STEPPING = ("running", "pausing", "canceling")
#: The key of an `abandoned` run's result that says it was abandoned because its process or worker went
#: away, not by anything of its own (a shell action killed by SIGTERM ends `abandoned` too): its value
#: says who ended it, `shutdown` (a graceful stop of `squall serve` or a CLI run cut it short:
#: `_interrupted`), `drain` (a `squall worker`'s drain ran out, or a second stop signal ended it),
#: `reaper` (its worker stopped answering or its job ended without it: `engine.jobs`) or `recovery` (its
#: process was gone: `_end_orphaned`). A workflow runs such a task again (`workflows.service._crashed`),
#: as it did only when the error's words said 'Squall s…': a drain's error does not, and the workflow failed.
ABANDONED_BY = "abandoned_by"
_LIVE = ("scheduled", "running", "canceling", "pausing", "paused", "resuming")
#: What the poll's sweep ends when its owner died (`_end_dead_owners`); a `canceling` one it ends at every poll.
_ORPHANABLE = ("running", "pausing")
#: The context keys that say who asked for an execution, from where, and where its replies go.
_ORIGIN = frozenset({"user", "api_user", "source", "source_channel", "action_alias_ref", "chat", "approval",
                     "trace_context", "notify"})
#: The context keys a person's re-run does not carry over: its origin is theirs, and it is a new request, which a
#: retry policy retries as often as any (a re-run of a retry took its `policies.retry.retry_count`, used up).
_NOT_RERUN = _ORIGIN | {"policies"}
#: `poll` also sweeps what dead Squall processes on this machine left running, every this many calls.
_SWEEP_POLLS = 30
#: Polls in a row that find a `canceling` execution of this process with nothing here running it before the
#: poll ends it (`_end_unheld_cancel`): a run's claim and its task are made a moment apart.
UNHELD_POLLS = 3
#: An end the database failed to store (`_stored_end`) is tried again after the first of these many
#: seconds, the wait doubling up to the second, for as long as it takes.
END_RETRY_SECONDS = (0.5, 30.0)
_RECENT = 1024
#: Plaintexts `decrypt_kv` produced while one request's parameters were rendered.
_revealed: contextvars.ContextVar[list[str]] = contextvars.ContextVar("squall_revealed")
#: What no error of a request may quote: those plaintexts, and the ciphertexts of secret keys its templates read.
_sensitive: contextvars.ContextVar[list[str]] = contextvars.ContextVar("squall_sensitive")
#: The procrastinate job a `squall worker` conducts a workflow under (set by `run` and `step` for
#: that task): the workflow's children are requested only while its `runner_info` still names it.
_conducting_job: contextvars.ContextVar[int | None] = contextvars.ContextVar("squall_conducting_job", default=None)


class StaleStep(Exception):
    """A worker's step of a workflow was handed to another worker meanwhile (it stopped answering
    for longer than the heartbeat limit, then came back): it must request and write nothing more,
    or the workflow's next task could run twice."""


#: `AuditEntry.together` on SQLite: one reusable no-op (every chat command enters it).
_NO_SAVEPOINT = contextlib.nullcontext()


# Made for every chat command: slotted, not frozen (see docs/architecture.md, "Value objects").
@dataclass(slots=True)
class AuditEntry:
    """An audit event stored in the transaction of the change it records (`request`, `cancel`, `pause`,
    `resume`, `complete`, and the datastore's and inquiries' writes, each with `audit=`): a change is never
    stored without the event saying who asked, nor an event without its change (`together`), and the pair
    costs one commit, not two. A `target` of None is the execution (or key) changed. Its `detail` gains what the
    change wrote (`add`): a request's action, parameters as stored (secrets masked) and, when the event
    names another target (a chat command's alias), `execution`, the new execution's id; a cancel's status."""

    event: str
    actor: str | None
    source: str | None
    target: str | None
    detail: dict[str, Any]

    def with_facts(self, **facts: Any) -> AuditEntry:
        """This event, its `detail` over `facts` (what the change writes, known before it is written)."""
        return AuditEntry(self.event, self.actor, self.source, self.target, {**facts, **self.detail})

    def add(self, store: Store, target: str, **facts: Any) -> None:
        """Store the event in `store`'s transaction of the moment, the change's own; about `target` unless
        it names its own, its `detail` over `facts` (what the caller said wins)."""
        store.audit_add(self.event, self.actor, self.source, self.target or target, {**facts, **self.detail})

    @staticmethod
    def together(store: Store) -> contextlib.AbstractContextManager[None]:
        """Where a change and then its event are written, so that one failing leaves neither. On PostgreSQL
        a savepoint (`Store.isolated`): a group's calls share one transaction there, each write in a
        savepoint of its own, so the event's insert could fail alone (a value too long for its column).
        On SQLite none: the event's row breaks no constraint, so it fails only when the database does,
        which fails the whole group (`Database`), and a savepoint would cost two statements for nothing."""
        return _NO_SAVEPOINT if store.is_sqlite else store.isolated()


# Made for every chat command: slotted, not frozen (see docs/architecture.md, "Value objects").
@dataclass(slots=True)
class CompletionWrite:
    """What a listener stores in the transaction that stores an execution's end (the chat's result
    reply, from `on_completing`): the end and what it says of it commit together, and a command's
    round trip pays one commit for both instead of one each. `write(store, at)` runs in that
    transaction, `at` the end's time (`end_timestamp`; None for a request's `stored_with` write), for
    what it stores to carry if it will: the chat's result does, so a chat command reads the clock
    once less (with the request's audit event at the request's time, two fewer; callgrind, 100 in
    flight: 763,032 -> 753,477-755,803 instructions); once it committed, `committed(what write
    returned)` runs on the loop, before the `EXECUTION_FINISHED` listeners hear of the end. A write
    that fails is logged and rolled back alone: the end is stored all the same, and its listeners
    store what they owe as before."""

    write: Callable[[Store, datetime | None], Any]
    committed: Callable[[Any], None]
    #: `write` makes a single statement: on SQLite it needs no savepoint to fail alone (`Store.isolated`).
    one_statement: bool = False


#: A stored request (`_store`), with each `stored_with` write and how it went (`_written`), and, for
#: one that ended as it was stored (`_end_at_once`), `_ended`'s arguments after the record.
_Stored = tuple[dict[str, Any], list[tuple[CompletionWrite, tuple[bool, Any]]],
                tuple[dict[str, Any], list[tuple[bool, Any]], list[CompletionWrite], dict[str, Any] | None] | None]


class ExecutionNotFound(LookupError):
    pass


class AmbiguousExecution(ExecutionNotFound):
    """A start of an id that starts several; the message lists them (for the CLI's operator: chat,
    which anyone may type into, says less)."""


class ExecutionStateError(ValueError):
    """An operation the execution's current status does not allow."""


#: An execution id or the start of one: what `_find` looks up (anything else is refused before the query), and
#: what the chat tells apart from text that is no id (`Dispatcher._execution_named`).
ID_PREFIX = re.compile(r"[0-9a-fA-F]{1,24}\Z")


def new_id() -> str:
    """24 hex digits like StackStorm's ids, sortable by creation time: the microsecond, then 40 random
    bits. They come from Python's generator, seeded from the system's and seeded again in a forked
    child, not from `os.urandom`: that is a system call for every execution, trigger instance and
    enforcement, and an id names a record; it guards nothing. (One number written out once: the two halves
    formatted apiece took 40% longer, and its 12 bytes' `hex` takes 40% less than formatting it with `%024x`,
    the same 24 digits: the microseconds fit in 56 bits until the year 4253.)"""
    return (time.time_ns() // 1000 << 40 | random.getrandbits(40)).to_bytes(12, "big").hex()


def canceled_result(record: Mapping[str, Any]) -> dict[str, Any]:
    """The result of a paused (or waiting) run canceled where it stood: what it kept of its work, without
    why it had paused (`paused_by`: it no longer is), and StackStorm's error."""
    kept = {key: value for key, value in (record.get("result") or {}).items() if key != "paused_by"}
    return {**kept, "error": "canceled by request"}


def _scrubbable(values: list[Any], revealed: list[str]) -> list[str]:
    """Secret texts long enough to scrub from output without mangling it, longest first."""
    if not values and not revealed:  # most requests: no secret parameter, nothing decrypted
        return []
    texts = {str(v) for v in [*values, *revealed] if v not in (None, "")}
    return sorted((t for t in texts if len(t) >= MIN_REPLACED), key=len, reverse=True)


def _scrubbed_error(exc: Exception, sensitive: list[str]) -> Exception:
    """`exc`, or a `ParameterError` saying the same with every `sensitive` text masked when it or its
    causes quote one: a request's error goes to whoever asked (API, chat, CLI), the rule's enforcement, the
    logs and the trace. `resolve` quotes no such value; this catches any other message that does."""
    texts = [text for text in sensitive if len(text) >= MIN_REPLACED]  # `resolve` masks shorter ones whole
    if not texts:
        return exc
    told = "".join(traceback.format_exception(exc))  # its causes too: a traceback or a span shows them
    if not any(text in told for text in texts):
        return exc
    message = str(exc)
    for text in sorted(texts, key=len, reverse=True):
        message = message.replace(text, MASK)
    return ParameterError(message)


def scrub(value: Any, secrets: list[str]) -> Any:
    """Replace every occurrence of a secret value, recursively: inside strings, dict keys included.

    A number, boolean or null whose text holds a secret becomes the masked string: the shell runner
    JSON-decodes an action's stdout, so an echoed numeric PIN arrives here as an int, and a key is as
    visible in the stored record as a value (two keys masked alike keep the later value).
    """
    if not secrets:  # most executions: return at once
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    if value is None or isinstance(value, (int, float)):  # bool is an int
        return _scrub_scalar(value, secrets)
    return value


def _scrub_scalar(value: float | None, secrets: list[str]) -> Any:
    """`value`, or the mask when a secret is in its text: Python's (`str`) or the JSON the action printed."""
    texts = (str(value), json.dumps(value))
    return MASK if any(secret in text for secret in secrets for text in texts) else value


def held_texts(values: Mapping[str, Any], texts: list[str]) -> list[str]:
    """Those of `texts` that `scrub` would mask somewhere in `values`: a request's (`_resolve`) or a workflow
    task's (`engine.workflows.service.Flow`) values that hold a secret config value count it as revealed."""
    return [text for text in texts if scrub(values, [text]) != values]


def _shown_values(action: Action, values: Mapping[str, Any], revealed: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A request's `values` as stored and shown: its secrets masked (`mask`), and the secret parameters' values,
    the credentials of `headers`, `cookies` and URLs (`credential_texts`) and what `revealed` holds scrubbed
    wherever else they show, a rendered `cmd` among them. What differs from `values` is what is sealed
    (`ExecutionService._store`, `record_refused`). Also those texts, for what else must not quote them (an error)."""
    secret_names = action.secret_names
    secrets = _scrubbable([*(v for k, v in values.items() if k in secret_names), *credential_texts(values)],
                          revealed)
    return scrub(mask(values, secret_names), secrets), secrets


def scrubbable(values: Sequence[Any]) -> list[str]:
    """`values` as texts to scrub (`scrub`): those long enough not to mangle output, longest first."""
    return _scrubbable(list(values), [])


def _tokened(record: Mapping[str, Any]) -> bool:
    """Whether the execution's runs get an API token (its runner's `token`; an unknown runner: yes)."""
    runner = RUNNER_TYPES.get(record.get("runner") or "")
    return runner is None or runner.token


#: How early a delayed request counts as due: the timer that holds it fires on the monotonic clock, a
#: hair before the wall one.
DUE_SLACK = timedelta(milliseconds=100)


def until_due(row: Mapping[str, Any]) -> float:
    """Seconds until a `delayed` request's `runner_info.delayed_until` is reached (within `DUE_SLACK`);
    0 when it is due, or when it has none (a concurrency policy holds it, not a clock)."""
    until = (row.get("runner_info") or {}).get("delayed_until") if row.get("status") == "delayed" else None
    if not isinstance(until, str):
        return 0.0
    try:
        left = datetime.fromisoformat(until.replace("Z", "+00:00")) - utcnow() - DUE_SLACK
    except ValueError:
        return 0.0
    return max(0.0, left.total_seconds())


def public(record: Mapping[str, Any]) -> dict[str, Any]:
    """The execution as the CLI, the API and chat show it (StackStorm's ActionExecution shape)."""
    end = record.get("end_timestamp")
    return _public(record, iso(record["start_timestamp"]), iso(end) if end else None)


def _public(record: Mapping[str, Any], started: str | None, ended: str | None) -> dict[str, Any]:
    """`public(record)`, its start and end times as `iso` wrote them already: a request run as it was
    stored (`ExecutionService._end_at_once`) is shown twice, ended and requested, and formatting one
    time costs more than a thousand instructions. `elapsed_seconds` is `total_seconds()` as it is: that is
    the microseconds over 10**6 correctly rounded, which `round(..., 6)` gave back unchanged (for any span
    under 285 years) at the cost of a decimal conversion, which took three times as long as the subtraction."""
    start, end = record["start_timestamp"], record.get("end_timestamp")
    return {
        "id": record["id"],
        "action": record["action"],
        "runner": record["runner"],
        "status": record["status"],
        "parameters": record["parameters"],
        "result": record.get("result"),
        "context": record["context"],
        "parent": record.get("parent"),
        "start_timestamp": started,
        "end_timestamp": ended,
        "elapsed_seconds": (end - start).total_seconds() if end else None,
        "log": [{"status": "requested", "timestamp": started}, *(record.get("log") or [])],
        "runner_info": record.get("runner_info"),
    }


#: The ends said in the log at INFO with why (`_why_it_failed`): an operator's log pipeline hears of a
#: failure without reading the execution; a success or a cancel someone asked for stays at DEBUG.
_SAID_IN_THE_LOG = frozenset({"failed", "timeout", "abandoned"})
#: The most of a failure's reason a log line quotes.
_WHY_CHARS = 300


def _why_it_failed(result: Any) -> str:
    """A failed run's reason as its result stores it (masked and scrubbed of its secrets, as the API shows
    it), on one line of the log: the runner's `error`, else the last line of `stderr`, else a Python action's
    message (`return (False, "key 'x' does not exist")`: its `result`, when text), else the exit code."""
    why: Any = None
    if isinstance(result, dict):
        stderr = result.get("stderr")
        last = stderr.strip().splitlines()[-1] if isinstance(stderr, str) and stderr.strip() else None
        said = result.get("result") if isinstance(result.get("result"), str) else None
        code = result.get("return_code", result.get("exit_code"))
        why = result.get("error") or last or said or (f"exit code {code}" if code is not None else None)
    text = printable(" ".join(str(why).split())) if why else "its result gives no reason"
    return text if len(text) <= _WHY_CHARS else text[:_WHY_CHARS - 1] + "…"


class ExecutionService:
    """The one way anything in Squall asks for, runs, cancels or re-runs an action."""

    #: Why a stop cut runs short, when the process knows better than "Squall shut down" (a `squall worker`
    #: whose drain ran out, `bot.worker.Worker.cut_short`): their error (`_interrupted`), as their audit says.
    stopped_why: str | None = None
    #: Who cuts runs short when Squall stops (`ABANDONED_BY` in their result): a `squall worker` says `drain`.
    stopped_by: str = "shutdown"

    def __init__(self, registry: Registry, db: Database, datastore: Datastore, keys: KeyRing,
                 runners: Mapping[str, Runner], api_url: str = "", events: Events | None = None) -> None:
        self.registry = registry
        #: Where `EXECUTION_FINISHED` is published (the engine's one subscription interface).
        self.events = events if events is not None else Events()
        self.db = db
        #: Live output of the runs of this process, batched into `execution_output` (`engine/output.py`).
        self.output = OutputRecorder(db, self.events)
        self.datastore = datastore
        self.keys = keys
        self.runners = dict(runners)
        self.api_url = api_url
        self.executor: Executor | None = None
        self.jinja = build_environment(decrypt=self._decrypt_revealing)
        self.host = socket.gethostname()
        #: Who runs what this process claims (`runner_info`): on one machine the process is the owner
        #: (pid, start time, boot, pid namespace), not the host name, which a restart may change.
        self.owner: dict[str, Any] = {"hostname": self.host, **process_identity()}
        store = getattr(db, "store", None)
        self.ledger = ledger_directory(store.engine.url.database if getattr(store, "is_sqlite", False) else None)
        LEDGER.register(self.ledger, self)
        #: Executions `recover` left to Squall processes of other hosts (PostgreSQL): host -> how many.
        self.foreign_owners: dict[str, int] = {}
        self._polls = 0
        #: `canceling` executions of this process the last polls found nothing here running: id -> polls.
        self._unheld: dict[str, int] = {}
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        # Finished here lately: wait() answers from memory instead of reading the record back.
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        #: Workflow executions (conductors) handed to the executor: they do not take a slot.
        self.conducting: set[str] = set()
        # Requested here and not yet claimed: the claim need not read back what this process wrote.
        self._prepared: dict[str, dict[str, Any]] = {}
        self._held: set[asyncio.Future[None]] = set()  # delayed requests' submits, kept from collection
        #: The `delayed` requests a timer of this process hands on when due (`_submit_later`): the poll leaves them.
        self._timed: set[str] = set()
        #: `squall serve` stops gracefully (`executor.shutdown_grace`): its running actions may finish, but no
        #: run starts here any more: a request is stored for the next start (none is run in the call that
        #: stores it), and a workflow requests no next task (the next start conducts it on from its tasks).
        self.stopping = False
        #: Store the action's pack content hash with each request (`executor.kind: procrastinate`).
        self.pack_hashes = False
        #: Load the pack folders again (`squall serve`): a request another process stored (the CLI's
        #: `--async`) may name an action installed after this process last loaded them.
        self.reload_packs: Callable[[], Awaitable[Any]] | None = None
        self._completing: list[Callable[[dict[str, Any]], CompletionWrite | None]] = []
        #: What `recover` runs once it is done (the retry policy's look for retries a crash lost).
        self._after_recovery: list[Callable[[], Awaitable[Any]]] = []
        #: Per pack ref: the Pack read, whether its config is dynamic, its secret config values (`config_facts`).
        self._config_facts: dict[str, tuple[Pack, bool, list[Any]]] = {}

    # -- listening -----------------------------------------------------------------------
    def on_finished(self, listener: Callable[[dict[str, Any]], Any]) -> None:
        """Call `listener(public_record)` whenever an execution finishes in this process (a
        subscription to `EXECUTION_FINISHED`; a coroutine it returns runs as a task)."""
        self.events.subscribe(EXECUTION_FINISHED, listener)

    def on_completing(self, hook: Callable[[dict[str, Any]], CompletionWrite | None]) -> None:
        """Call `hook(public_record)` as a run's end is about to be stored; a `CompletionWrite` it
        returns is stored with that end (see there). Only ends a runner reported take this path."""
        self._completing.append(hook)

    def after_recovery(self, hook: Callable[[], Awaitable[Any]]) -> None:
        """Await `hook()` at the end of every `recover`, once what the crash left running has ended
        (abandoned) and its listeners heard of it: work a crash may have lost after an end was
        committed (a retry policy's retry) is looked for then."""
        self._after_recovery.append(hook)

    @property
    def notifying(self) -> int:
        """Listeners' tasks still running (results being posted, say)."""
        return self.events.busy

    def resumable(self, runner: str) -> bool:
        """Whether executions of `runner` conduct on from stored state (workflows)."""
        return _resumable(self.runners.get(runner))

    def conducts(self, execution_id: str) -> bool:
        """Whether the execution is a workflow conducting children: it waits on them, it does no work,
        so it must not hold one of the executor's slots (64 workflows would starve their own tasks)."""
        return execution_id in self.conducting

    def _finished(self, record: dict[str, Any], shown: dict[str, Any] | None = None) -> None:
        execution_id = record["id"]
        self._prepared.pop(execution_id, None)  # never claimed (a policy canceled it): forget it here
        if record.get("status") != "paused":
            self.conducting.discard(execution_id)
        shown = shown if shown is not None else public(record)
        recent = self._recent
        recent[execution_id] = shown
        if len(recent) > _RECENT:
            recent.popitem(last=False)
        for future in self._waiters.pop(execution_id, ()):
            if not future.done():
                future.set_result(shown)
        self.events.publish(EXECUTION_FINISHED, shown)

    # -- template context --------------------------------------------------------------------
    def template_context(self, pack_config: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """What parameter templates may refer to besides other parameters (spec §1.3)."""
        user = context.get("api_user") or context.get("user")
        datastore = self.datastore

        def lookup(scope: str, name: str) -> str | None:
            """A key's stored value; a secret's ciphertext, which Squall shows nobody, is noted for
            `_resolve`, so that no error of the request quotes it."""
            read = _sensitive.get(None)
            return datastore.lookup(scope, name, read.append if read is not None else None)

        return {
            "st2kv": {
                "system": KVNamespace(lambda key: lookup("system", key), label="st2kv.system"),
                "user": KVNamespace(lambda key: lookup("user", Datastore.stored_name(key, "user", user))
                                    if user else None, label="st2kv.user"),
            },
            "action_context": dict(context),
            "config_context": dict(pack_config),
        }

    # -- requesting ----------------------------------------------------------------------
    async def request(self, ref: str, parameters: Mapping[str, Any] | None = None,
                      context: Mapping[str, Any] | None = None, *, parent: str | None = None,
                      extra_template_context: dict[str, Any] | None = None,
                      render: bool | Collection[str] = (), delay: float = 0.0,
                      audit: AuditEntry | None = None,
                      stored_with: Callable[[dict[str, Any]], CompletionWrite | None] | None = None,
                      execution_id: str | None = None, secrets: Sequence[str] = ()) -> dict[str, Any]:
        """Validate, store as `requested`, and hand to the executor. Raises on bad input. A request
        whose runner has nothing to wait for (core.noop) ends in the call that stores it instead
        (`_end_at_once`); it is answered as requested all the same.

        `delay` (an Orquesta task's `delay`, `st2 run --delay`) stores it `delayed` (`_held`: in the
        request's own write, so no second write can fail after the request was stored) and hands it over
        that many seconds later, so it is there to see and cancel meanwhile, as StackStorm's scheduler
        holds it.

        `parameters` are data, taken as given, except those `render` names (True: all), which are
        templates a pack author wrote: a rule's action parameters, an alias format's defaults.
        `extra_template_context` adds names those templates may use (rules pass `trigger`).
        `audit` is stored with the request, in its transaction, the two rolled back together if either
        fails (`AuditEntry.together`). So is what `stored_with(the request
        as shown)` returns (the chat's ack), on SQLite with tracing off, where that transaction is the
        event loop's: stored first, it comes before anything the run stores (a noop's result ends in
        the same commit). Elsewhere it is not called, and the caller stores its part after.

        `execution_id` names the new execution instead of a fresh id: a retry policy's retry
        (`engine.policies.retry_id`), which is then one row whoever requests it; a second request
        of it raises `sqlalchemy.exc.IntegrityError` and stores nothing.

        `secrets` are plaintexts the caller decrypted into `parameters` (a workflow's `decrypt_kv` or
        `st2kv(..., decrypt=>true)`): a value holding one is masked and sealed, and its run's output and
        result are scrubbed of them, as of what `decrypt_kv` reveals in the request's own templates."""
        action = self.registry.action(ref)
        context = {**(context or {}), "pack": action.pack}
        if "user" not in context:  # (looked up only then: a missing variable raises a KeyError inside os.environ)
            context = {"user": os.environ.get("USER", "squall"), **context}
        traces = tracing.enabled()
        traced = tracing.traceparent() if traces else None
        if traced:  # its run joins this trace, wherever and whenever it happens
            context["trace_context"] = {**(context.get("trace_context") or {}), "traceparent": traced}
        supplied = dict(parameters or {})
        execution_id = execution_id or new_id()
        # When it was requested, taken before anything may claim it: an early claim (below) stamps its
        # `scheduled`/`running` when it runs, which may be before the store step gets to the request.
        requested_at = utcnow()
        inline = self.db.store.is_sqlite and not traces  # the request's transaction is the loop's
        if not inline:
            stored_with = None
        # This process's executor claims an action's request in the transaction that stores it: its
        # claim is queued while the request still waits in the group (a failed request leaves it nothing
        # to claim). Workflows (whose slots depend on the stored row), delays and executors of other
        # processes (which must not see the job before the row) wait for the request's commit.
        runner = self.runners.get(action.runner_type)
        early = (delay <= 0 and self.executor is not None and not getattr(self.executor, "shared", False)
                 and not getattr(runner, "resumable", False))  # (`_resumable`'s look, without its call)
        at_once = self._at_once(action, runner) if early and inline else None
        fence = _conducting_job.get() if parent is not None else None
        held = _held(requested_at, delay) if delay > 0 else None
        # (most requests: no templated default and nothing that renders, so nothing to ask `needs_rendering`)
        if (action.templated_defaults or render) and needs_rendering(action, supplied, render):
            # Templates render on threads of their own, never on the event loop nor the database thread: one
            # may take up to templates.max_seconds. Their st2kv reads take a pooled connection of their own.
            resolution, revealed = await asyncio.get_running_loop().run_in_executor(
                render_pool(), self._resolve, action, supplied, context, extra_template_context, render)
            revealed = [*secrets, *revealed]
        else:
            # Nothing to render: resolved here, without a thread hop, and nothing reads a template context, so
            # none is built (nor can a `decrypt_kv` reveal anything; `secrets` are what the caller decrypted into
            # the values: a value holding one is quoted in no error, as a workflow task's parameter refused for a
            # secret its workflow handed it). (Resolved in the store's call, by a call of its own, the request's
            # 14 arguments were passed twice; a refused one is refused before its call and claim are queued.
            # With `new_id`'s bytes, `_public`'s round and `TriggerService.wanted`'s loop: callgrind, chat at
            # 100 in flight, about -4,000 instructions a command.)
            resolution = resolve(action, supplied, {}, env=self.jinja, render=render, sensitive=secrets)
            revealed = list(secrets)
        stored = self.db.submit(self._store, action, supplied, context, parent, extra_template_context, resolution,
                                revealed, audit, execution_id, fence, stored_with, at_once, requested_at, held)
        if early and at_once is None:
            try:
                await self.executor.submit(execution_id)  # type: ignore[union-attr]
            except sa.exc.DBAPIError as exc:  # (a policy's read of it) in the request's group, or alone
                self._not_claimed(execution_id, exc)
        record, told, ended = await stored  # raises when the request was not stored
        for write, (ok, value) in told:
            if ok:
                write.committed(value)
        if ended is not None:  # answered as requested; its listeners hear of the end
            finished, shown = ended[0], ended[3]
            metrics.started(finished)
            self._ended(finished, *ended)
            # as requested, its start as its end's view wrote it (`_public`)
            return public(record) if shown is None else _public(record, shown["start_timestamp"], None)
        if held is not None:
            self._submit_later(record["id"], delay)
        elif self.executor is not None and not early:
            try:
                await self.executor.submit(record["id"])
            except sa.exc.DBAPIError as exc:  # the request is stored: the poll submits it, so it was accepted
                self._not_claimed(record["id"], exc)
        return public(record)

    def _submit_later(self, execution_id: str, delay: float) -> None:
        """Hand a `delayed` request to the executor in `delay` seconds (none: nothing runs here)."""
        if self.executor is None:
            return
        executor = self.executor
        self._timed.add(execution_id)

        def submit() -> None:
            self._timed.discard(execution_id)
            task = asyncio.ensure_future(executor.submit(execution_id))
            self._held.add(task)
            task.add_done_callback(self._held.discard)

        asyncio.get_running_loop().call_later(delay, submit)

    def _resolve(self, action: Action, supplied: dict[str, Any], context: dict[str, Any],
                 extra_template_context: dict[str, Any] | None,
                 render: bool | Collection[str]) -> tuple[Resolution, list[str]]:
        """The request's parameters checked, rendered and cast, and the plaintexts `decrypt_kv` revealed.
        Runs on a render thread, for requests with templates (st2kv reads are synchronous: thread-safe,
        each read takes a connection of the store's pool); `request` resolves the others itself.

        The pack's secret config values (`config_facts`), which `config_context` shows its templates, are
        sensitive from the start: a parameter holding one is quoted in no error, and what the values hold
        of them counts as revealed, so `_store` masks and seals them as it does what `decrypt_kv` revealed
        (a pack token handed to a shell action is an ordinary parameter's default)."""
        pack = self.registry.packs[action.pack]
        revealed: list[str] = []
        config_secrets = [str(v) for v in self._pack_config_facts(pack)[1] if v != ""]  # most packs: none
        sensitive: list[str] = [*config_secrets]
        token, read = _revealed.set(revealed), _sensitive.set(sensitive)
        try:
            template_context = {**self.template_context(pack.config, context), **(extra_template_context or {})}
            resolution = resolve(action, supplied, template_context, env=self.jinja, render=render,
                                 sensitive=sensitive)
            if config_secrets:
                revealed.extend(held_texts(resolution.values, _scrubbable([], config_secrets)))
        except Exception as exc:
            problem = _scrubbed_error(exc, sensitive)
            if problem is exc:
                raise
            # not `from exc`: its message, and its cause's, hold the clear text (tracebacks, spans, logs)
            raise problem from None
        finally:
            _revealed.reset(token)
            _sensitive.reset(read)
        return resolution, revealed

    def _store(self, action: Action, supplied: dict[str, Any], context: dict[str, Any], parent: str | None,
               extra_template_context: dict[str, Any] | None, resolution: Resolution,
               revealed: list[str], audit: AuditEntry | None = None,
               execution_id: str | None = None, fence: int | None = None,
               stored_with: Callable[[dict[str, Any]], CompletionWrite | None] | None = None,
               at_once: Callable[[], RunOutcome] | None = None,
               requested_at: datetime | None = None, held: dict[str, Any] | None = None) -> _Stored:
        """Store a resolved request as `requested` (on the database's side of `Database`), with its
        audit event and what `stored_with` makes of it (`request`); with `at_once`, as it ended
        (`_end_at_once`); with `held` (`_held`), as `delayed`. With `fence` (a worker's job conducting
        the `parent` workflow), only while that job still conducts it (`StaleStep` otherwise).
        `requested_at` (`request`'s clock, read before anything could claim it) is its `start_timestamp`,
        the log's `requested` entry: read here instead, it could come after the `running` an early claim
        had already stamped."""
        if fence is not None and parent is not None and not self.db.store.conducts(parent, fence, starting=True):
            raise StaleStep(f"workflow {parent}: another worker conducts it now, or it was canceled meanwhile; "
                            "this step stops")
        values = resolution.values
        if revealed or not action.shown_as_given:
            shown, _texts = _shown_values(action, values, revealed)
            sealed_values = {k: v for k, v in values.items() if shown[k] != v}
            revealed = _scrubbable([], revealed)
        else:  # most requests: nothing to mask, scrub nor seal (`Action.shown_as_given`); no copy to compare
            shown, sealed_values = values, {}
        templates = resolution.templates
        spec = {"values": shown, "templates": templates, "supplied": [k for k in supplied if supplied[k] is not None],
                "supplied_templates": {k: supplied[k] for k in templates if supplied.get(k) is not None}
                if templates else {}}
        if templates and extra_template_context:
            # A runner renders a `cmd` template again at run time (quoting each value for
            # the shell), so names such as a rule's `trigger` must be there then too.
            spec["extra_context"] = extra_template_context
        if self.pack_hashes:  # Under the scale-out executor a worker checks it holds the same pack (`engine.jobs`).
            spec["pack_hash"] = self.registry.packs[action.pack].content_hash()
        record = {
            "id": execution_id or new_id(),
            "action": action.ref,
            "runner": action.runner_type,
            "status": "requested",
            "parameters": {k: shown[k] for k in resolution.live},
            "spec": spec,
            "sealed": self._seal(sealed_values, revealed) if sealed_values or revealed else None,
            "result": None,
            "context": context,
            "log": [],
            "parent": parent,
            "runner_info": None,
            "start_timestamp": requested_at or utcnow(),
            "end_timestamp": None,
        }
        if held is not None:  # (its keys are the record's: each keeps its place)
            record.update(held)
        ending = self._end_at_once(record, at_once) if at_once is not None else None
        store = self.db.store
        if audit is None:
            store.insert_execution(record if ending is None else ending[0])
        elif store.is_sqlite:  # `AuditEntry.together` is no savepoint there: not entered (every chat command)
            store.insert_execution(record if ending is None else ending[0])
            _add_request_audit(store, audit, record)
        else:
            with audit.together(store):  # one fails, neither is stored
                store.insert_execution(record if ending is None else ending[0])
                _add_request_audit(store, audit, record)
        told = []
        if stored_with is not None:
            try:
                write = stored_with(public(record))
            except Exception:
                log.exception("what to store with the request %s could not be made; its caller stores it", record["id"])
                write = None
            if write is not None:
                told.append((write, _written(write, store, record["id"])))
        if ending is not None:  # what the end's listeners store with it, after the ack
            ended, shown, writes = ending
            at = ended["end_timestamp"]
            return record, told, (ended, [_written(w, store, record["id"], at) for w in writes], writes, shown)
        # Kept for this process's claim; not where other processes run what it requests (they finish it).
        # A `delayed` one is claimed from the table once due, as a policy's `delayed` is.
        if self.executor is not None and not getattr(self.executor, "shared", False):
            if held is None:
                self._prepared[record["id"]] = record
            if _resumable(self.runners.get(record["runner"])):
                self.conducting.add(record["id"])
        return record, told, None

    # -- running -----------------------------------------------------------------------------
    async def run(self, execution_id: str, owner: Mapping[str, Any] | None = None) -> None:
        """Run one requested execution to its end (the executor calls this). `owner` adds to this
        process's identity in `runner_info` (a `squall worker` names the job and the worker)."""
        bind(execution_id=execution_id)  # every line logged for this run names it (its task's context)
        now = utcnow()
        LEDGER.ensure()  # the owner file says this process lives (to other containers) before it owns anything
        runner_info = {**self.owner, **(owner or {})}
        if owner is not None and "job_id" in owner:  # a worker's job: the workflow it conducts is fenced by it
            _conducting_job.set(owner["job_id"])
        at = iso(now)
        transitions = [{"status": "scheduled", "timestamp": at}, {"status": "running", "timestamp": at}]
        # Queued now, not at a task's first step: with its request's store when that is still queued.
        claim = self.db.submit_firm(self._claim, execution_id,
                                    {"status": "running", "runner_info": runner_info, "log": transitions})
        try:
            claimed = await claim
        except asyncio.CancelledError:
            # The claim goes through all the same (its future is firm, and done by now): record how
            # it ended, never leave it `running`.
            claimed = claim.result()
            if claimed is not None:
                await asyncio.shield(self._finish(claimed[0], self._interrupted(), []))
            return
        except sa.exc.DBAPIError as exc:
            self._not_claimed(execution_id, exc)
            return
        if claimed is None:
            return  # canceled meanwhile, or claimed by another process
        record, prepared = claimed
        if _resumable(self.runners.get(record["runner"])):
            # Known as a workflow here now, though another process requested it (the CLI's `--async`): a
            # graceful stop waits for the actions running here, never for a workflow (`LocalExecutor.drain`).
            self.conducting.add(execution_id)
        bind(action=record["action"], user=(record.get("context") or {}).get("user"))
        metrics.started(record)
        if isinstance(prepared, UnknownAction) and self.reload_packs is not None:
            await self.reload_packs()
            prepared = await self.db(self._prepare_run, record)
        if isinstance(prepared, Exception):
            await self._finish(record, RunOutcome("failed", {"error": str(prepared)}), [])
            return
        request, secrets = prepared
        await self._traced("execution.run", record, request, secrets)

    def _not_claimed(self, execution_id: str, exc: sa.exc.DBAPIError) -> None:
        """A claim, or a policy's look at a request before it, that the database failed (or another call
        of its group did, at COMMIT): nothing of it took effect, a stored request is still `requested`,
        and the poll submits it again. Not raised: nobody awaits a run's task (asyncio would only log
        "Task exception was never retrieved"), and `request` tells whether the request itself was
        stored. Logged at debug while the database fails (`Database` says so once an outage)."""
        failure = database_failure(exc)
        level = logging.DEBUG if failure is not None else logging.WARNING
        log.log(level, "execution %s was not claimed, as %s; if its request is stored, the next poll submits it "
                "again", execution_id, database_trouble(exc) or f"the database refused it ({type(exc).__name__})")

    async def step(self, execution_id: str, owner: Mapping[str, Any] | None = None) -> None:
        """Conduct a workflow one step on from its stored tasks (`executor.kind: procrastinate`: one
        of its tasks ended, or it was asked to pause or cancel). The job's lock keeps steps of one
        workflow apart; `owner` names the job and worker in its `runner_info`."""
        runner_info = {**self.owner, **(owner or {})}
        if owner is not None and "job_id" in owner:
            _conducting_job.set(owner["job_id"])
        record = await self.db(self._take_step, execution_id, runner_info)
        if record is None:
            return
        bind(execution_id=execution_id, action=record["action"], user=(record.get("context") or {}).get("user"))
        try:
            request, secrets = self._run_request(record)
        except (CryptoError, ParameterError, LookupError) as exc:
            await self._finish(record, RunOutcome("failed", {"error": str(exc)}), [])
            return
        await self._traced("workflow.step", record, request, secrets)

    def _take_step(self, execution_id: str, runner_info: dict[str, Any]) -> dict[str, Any] | None:
        store = self.db.store
        record = store.get_execution(execution_id)
        if record is None or record["status"] not in STEPPING or not _resumable(self.runners.get(record["runner"])):
            return None
        if not store.update_execution(execution_id, {"runner_info": runner_info}, expect=(record["status"],)):
            return None
        return {**record, "runner_info": runner_info}

    async def _traced(self, name: str, record: dict[str, Any], request: RunRequest, secrets: list[str]) -> None:
        """`_conduct` in a span of the trace that asked for the execution (its context's traceparent)."""
        with tracing.span(name, tracing.parent_of(record["context"]), execution_id=record["id"],
                          action=record["action"], runner=record["runner"]) as current:
            await self._conduct(record, request, secrets)
            if current is not None:
                current.set_attribute("squall.status", record["status"])

    async def _conduct(self, record: dict[str, Any], request: RunRequest, secrets: list[str]) -> None:
        """Run a claimed execution's runner and record how it ended; a workflow that conducts in
        steps and now waits on tasks running elsewhere is let go, to be stepped on when one ends."""
        runner = self.runners.get(record["runner"])
        # The sink holds the revealed list, not the request that holds the sink: a cycle would leave every
        # run's request to the garbage collector, whose collections then stall the loop for milliseconds.
        revealed = request.revealed
        sink = request.on_output = self.output.sink(record["id"], lambda: _scrubbable(secrets, revealed))
        try:
            if runner is None:
                outcome = RunOutcome("failed", {"error": f'runner "{record["runner"]}" is not available'})
            else:
                outcome = await runner.run(request)
        except StaleStep as exc:  # another worker conducts it on from what is stored: leave it all to that one
            log.warning("%s", exc)
            await sink.close()
            return
        except asyncio.CancelledError:
            if _resumable(runner) and getattr(self.executor, "closing", False):
                return  # a workflow stays `running`: it is conducted on from its stored children
            kept = getattr(runner, "interrupted_result", None)  # what a workflow did so far (tasks, output)

            async def cut_short() -> None:
                await sink.close()
                await self._finish(record, self._interrupted(kept(record["id"]) if kept else None),
                                   _scrubbable(secrets, request.revealed))

            # One shield for both: a second cancel (the poll's `_cancel_here`, seeing `canceling`) landing
            # between two of them skipped `_finish`, and the execution stayed `canceling` for ever.
            await asyncio.shield(cut_short())
            return
        except Exception as exc:
            outcome = RunOutcome("failed", {"error": str(exc), "traceback": traceback.format_exc()})
        # The run is over: its end is recorded whatever lands on its task now, as a cancel's end is above. A
        # cancel that reaches a workflow whose conductor has just returned finds no flow to cancel and cancels
        # its task (`_cancel_here`): cut there, the end was stored or not, but never told, and the workflow
        # above it waited `canceling` for ever.
        await asyncio.shield(self._ran(record, outcome, sink, _scrubbable(secrets, request.revealed)))

    async def _ran(self, record: dict[str, Any], outcome: RunOutcome, sink: OutputSink, secrets: list[str]) -> None:
        """Record how a run ended once its runner returned (`_conduct`): its live output first, then its end;
        a workflow conducted in steps that now waits on its tasks is let go instead."""
        await sink.close()  # the live output is all stored before the execution ends
        if outcome.status == WAITING_ON_TASKS:
            info = record.get("runner_info") or {}
            between = {"between_steps": True, **{k: info[k] for k in ("worker", "hostname", "job_id") if k in info}}
            await self.db(self._let_go, record["id"], between)
            return
        await self._finish(record, outcome, secrets)

    def _let_go(self, execution_id: str, between: dict[str, Any]) -> None:
        """A workflow waits on its tasks: say so in its `runner_info`, unless a worker's step was
        handed to another meanwhile (whose step this must not overwrite: it fences that one's requests)."""
        job = between.get("job_id")
        if job is not None and not self.db.store.conducts(execution_id, job):
            log.warning("workflow %s: another worker conducts it now; this step stops", execution_id)
            return
        self.db.store.update_execution(execution_id, {"runner_info": between}, expect=STEPPING)

    def _interrupted(self, kept: dict[str, Any] | None = None) -> RunOutcome:
        """How a run that was stopped midway ends: shut down with Squall (`stopped_why`, when known), or
        canceled (with what the runner `kept` of its work, as a canceled ActionChain keeps its `tasks`)."""
        if self.executor is not None and getattr(self.executor, "closing", False):
            return RunOutcome("abandoned", {"error": self.stopped_why or "Squall shut down while it was running",
                                            ABANDONED_BY: self.stopped_by})
        return RunOutcome("canceled", {**(kept or {}), "error": "canceled by request"})

    def _claim(self, execution_id: str, fields: dict[str, Any]) -> tuple[dict[str, Any], Any] | None:
        """Claim a queued execution and build its run request, in one trip to the database thread."""
        store = self.db.store
        known = self._prepared.pop(execution_id, None)
        if known is None:
            record = store.claim_execution(execution_id, fields, ("requested", "scheduled"))
        elif store.update_execution(execution_id, fields, expect=("requested", "scheduled")):
            record = {**known, **fields}
        else:
            record = None
        if record is None:
            record = self._claim_resuming(execution_id, fields)
            if record is None:
                return None
        return record, self._prepare_run(record)

    def _at_once(self, action: Action, runner: Runner | None) -> Callable[[], RunOutcome] | None:
        """The runner's `run_at_once` when a request of `action` may be run and ended inside the call
        that stores it (`_end_at_once`): without an API token to mint and revoke, and unless a
        concurrency policy may hold or refuse it (the executor `holds` it: then it waits for a claim), nor
        while Squall stops (`stopping`, `closing`: it is stored `requested` for the next start).
        (`runner` is `action`'s, which `request` looked up already.)"""
        at_once = getattr(runner, "run_at_once", None)
        if at_once is None:
            return None
        known = RUNNER_TYPES.get(action.runner_type)  # (`_tokened`'s look, without a record to look in)
        executor = self.executor
        holds = getattr(executor, "holds", None)
        if (known is None or known.token or getattr(executor, "closing", False)
                or self.stopping or (holds is not None and holds(action.ref))):
            return None
        return at_once

    def _end_at_once(self, requested: dict[str, Any], run_at_once: Callable[[], RunOutcome]
                     ) -> tuple[dict[str, Any], dict[str, Any] | None, list[CompletionWrite]]:
        """Claim, run and end a request before it is first stored, when its runner has nothing to wait
        for and no effect outside the store (core.noop): its row is stored as it ended, and its request,
        audit event, ack, end and chat result commit together: one write and one commit a command, and
        nothing was done that a crash could leave unrecorded. (The row as it ended, the end as its
        listeners see it, and what they store with it.) Such a run's outcome depends on nothing it is
        asked, so no run request is built for it (no values unsealed, no pack config read): that was a
        twentieth of a chat command's instructions; and there is nothing of its parameters in its result
        to scrub. Such a run takes no time worth telling (core.noop's: microseconds), so it is scheduled,
        running and ended at one reading of the clock, written once: a second reading and its text cost
        about 12,000 instructions a chat command (callgrind, 100 in flight: 798,076 -> 785,549)."""
        now = utcnow()
        at = iso(now)
        try:
            outcome = run_at_once()
        except Exception as exc:
            outcome = RunOutcome("failed", {"error": str(exc), "traceback": traceback.format_exc()})
        # `_ending`'s, made here: nothing to scrub, and its fields go straight into the row
        status = outcome.status
        entry = {"status": status, "timestamp": at}
        # As claimed (`running`, this process's), then ended: made at once, not claimed first and ended
        # from that (every key is the request's, so the order is its own either way).
        ended = {**requested, "runner_info": dict(self.owner), "status": status, "result": outcome.result,
                 "end_timestamp": now, "log": [{"status": "scheduled", "timestamp": at},
                                               {"status": "running", "timestamp": at}, entry]}
        if not self._completing:
            return ended, None, []
        # (its end's time as its log entry wrote it)
        shown = _public(ended, iso(requested["start_timestamp"]), entry["timestamp"])
        return ended, shown, self._completing_writes(shown)

    def _prepare_run(self, record: dict[str, Any]) -> tuple[RunRequest, list[str]] | Exception:
        """The claimed execution's run request with its API token (on the database thread: the
        token is stored in the caller's transaction), or why it cannot run."""
        try:
            request, secrets = self._run_request(record)
        except (CryptoError, ParameterError, LookupError) as exc:
            return exc
        # The action's API token; scrubbed from the result like a secret.
        if _tokened(record):
            context = record["context"]
            runner = RUNNER_TYPES.get(record["runner"])
            limit = (runner.longest(request.runner_parameters) if runner is not None
                     else request.runner_parameters.get("timeout"))
            request.auth_token = mint(self.db.store, record["id"], context.get("user") or context.get("api_user"),
                                      limit)
            request.revealed.append(request.auth_token)
        return request, secrets

    def _claim_resuming(self, execution_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """A workflow marked `resuming` (paused, recovered or re-run), or an execution a policy
        `delayed`, is claimed like a request, keeping its log."""
        store = self.db.store
        current = store.get_execution(execution_id)
        if current is None or current["status"] not in ("resuming", "delayed"):
            return None
        entries = fields["log"] if current["status"] == "delayed" else fields["log"][-1:]
        update = {"status": "running", "runner_info": fields["runner_info"], "end_timestamp": None,
                  "log": [*(current.get("log") or []), *entries]}
        if not store.update_execution(execution_id, update, expect=(current["status"],)):
            return None
        return {**current, **update}

    def _run_request(self, record: dict[str, Any]) -> tuple[RunRequest, list[str]]:
        """The run's request and the secret texts to scrub from what it shows: its secret parameters,
        what `decrypt_kv` revealed in them, and its pack's secret config values. A Python action gets
        its pack's config with the dynamic values rendered (`_render_config`); what that reveals is in
        the request's `revealed`, scrubbed as well."""
        action = self._action_of(record)
        pack = self.registry.packs.get(action.pack)
        if pack is None:  # a workflow run kept its action while its pack went (removed, or its pack.yaml broken)
            pack = Pack(action.pack, action.pack_path, {}, system=False)  # it goes on, with no pack config
        sealed, revealed = self._unseal(record)
        values = {**record["spec"]["values"], **sealed}
        runner_names = action.runner_parameter_names
        dynamic, config_secrets = self._pack_config_facts(pack)
        secrets = _scrubbable([*(values.get(k) for k in action.secret_names), *config_secrets,
                               *credential_texts(values)], revealed)
        context = record["context"]
        pack_config, config_revealed = pack.config, []
        if dynamic and action.runner_type == PYTHON_RUNNER:
            pack_config = self._render_config(pack, context, config_revealed)
        templates = record["spec"].get("templates") or {}
        template_context = {}
        if templates:
            template_context = {**self.template_context(pack.config, context),
                                **(record["spec"].get("extra_context") or {}), **values}
        request = RunRequest(
            execution_id=record["id"],
            action=action,
            runner_parameters={k: v for k, v in values.items() if k in runner_names},
            action_parameters={k: v for k, v in values.items() if k not in runner_names},
            context=context,
            pack_config=pack_config,
            templates=templates,
            template_context=template_context,
            api_url=self.api_url,
            jinja=self.jinja,
            revealed=config_revealed,
        )
        return request, secrets

    def _action_of(self, record: Mapping[str, Any]) -> Action:
        """The action `record` runs: the one its runner kept with it, if it keeps one (a workflow run keeps
        the action it started as, so a pack updated or broken meanwhile changes new runs only), else the
        registry's (`UnknownAction` if it has none)."""
        kept = getattr(self.runners.get(record["runner"]), "kept_action", None)
        action = kept(record) if kept is not None else None
        return action if action is not None else self.registry.action(record["action"])

    def config_secrets(self, pack_ref: str) -> list[str]:
        """The secret config values of pack `pack_ref` (`config_facts`) as texts to mask (`_scrubbable`);
        none for a pack without (most) or no longer loaded. An ActionChain's templates see them as
        `config_context`, as a request's do (`_resolve`): its workflow service hands those its tasks'
        parameters hold (`held_texts`) to them as revealed (`engine.workflows.service.Flow`)."""
        pack = self.registry.packs.get(pack_ref)
        return _scrubbable([], self._pack_config_facts(pack)[1]) if pack is not None else []

    def _pack_config_facts(self, pack: Pack) -> tuple[bool, list[Any]]:
        """`config_facts` of the pack's config, worked out once per loaded pack (a reload makes new ones)."""
        known = self._config_facts.get(pack.ref)
        if known is None or known[0] is not pack:
            known = (pack, *config_facts(pack.config, pack.config_schema))
            self._config_facts[pack.ref] = known
        return known[1], known[2]

    def _render_config(self, pack: Pack, context: Mapping[str, Any], revealed: list[str]) -> dict[str, Any]:
        """The pack's config as the run's action gets it: each dynamic value rendered with `st2kv.system`,
        `st2kv.user` (the execution's user) and `decrypt_kv`, as StackStorm renders it per run; a value at
        or under a `secret: true` item that renders to a secret key's ciphertext is decrypted, as StackStorm
        decrypts those. What is decrypted goes to `revealed`. On the database thread (`_claim`), whose
        connection its datastore reads take."""
        st2kv = self.template_context({}, context)["st2kv"]
        return render_dynamic_config(pack.ref, pack.config, pack.config_schema,
                                     lambda template, secret: self._config_value(template, st2kv, secret, revealed))

    def _config_value(self, template: str, st2kv: Mapping[str, Any], secret: bool, revealed: list[str]) -> Any:
        """One dynamic config value rendered (None when it renders empty, as in StackStorm's loader)."""
        read: list[str] = []  # the ciphertexts of the secret keys it reads, and what decrypt_kv reveals
        shown: list[str] = []  # what decrypt_kv reveals
        tokens = _sensitive.set(read), _revealed.set(shown)
        try:
            text = render_template(template, {"st2kv": st2kv}, self.jinja)
        except TemplateRenderError as exc:
            raise config_value_error(exc, template, secret, read) from None
        finally:
            _revealed.reset(tokens[1])
            _sensitive.reset(tokens[0])
        revealed.extend(shown)
        if secret and text in read and text not in shown:  # a secret key's ciphertext, as it is stored
            text = self.keys.decrypt(text)
        if secret and text:  # whatever a secret item renders to is masked, as its written values are
            revealed.append(text)
        return text or None

    def _decrypt_revealing(self, token: str) -> str:
        """`decrypt_kv` for parameter templates: what it reveals is scrubbed like a secret, and quoted in
        no error of the request (`_resolve`)."""
        plaintext = self.keys.decrypt(token)
        bucket = _revealed.get(None)
        if bucket is not None:
            bucket.append(plaintext)
        read = _sensitive.get(None)
        if read is not None:
            read.append(plaintext)
        return plaintext

    def _seal(self, values: dict[str, Any], revealed: list[str], answers: Any = None) -> str | None:
        if not values and not revealed and answers is None:
            return None
        return self.keys.encrypt(json.dumps({"values": values, "revealed": revealed,
                                             **({"answers": answers} if answers is not None else {})}))

    def _sealed_document(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """What `record` holds sealed: its secret parameters' `values`, the decrypted datastore values it
        `revealed`, and an inquiry's real `answers` (`seal_answers`); raises CryptoError if it cannot be read."""
        if not record.get("sealed"):
            return {"values": {}, "revealed": []}
        document: dict[str, Any] = json.loads(self.keys.decrypt(record["sealed"]))
        return document

    def seal_answers(self, record: Mapping[str, Any], answers: Any) -> str | None:
        """`record`'s sealed column with an inquiry's real `answers` in it (what it seals already kept): its
        `result` stores them masked, so a copied database file shows no PIN given as an answer; the workflow
        that asked reads them back (`unseal_answers`). `engine.inquiries` decides what they are."""
        document = self._sealed_document(record)
        return self._seal(document["values"], document["revealed"], answers)

    def unseal_answers(self, record: Mapping[str, Any]) -> Any:
        """The inquiry's real answers sealed with `record` (`seal_answers`); None for a row that has none (no
        secret asked, or stored before answers were sealed: its `result` holds them as given)."""
        return self._sealed_document(record).get("answers")

    def unseal(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The real values of `record`'s secret parameters, which its `spec` holds masked: a concurrency
        policy keyed on one (`engine.policies`) must tell two values apart."""
        return self._unseal(record)[0]

    def _unseal(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The real values of sealed parameters, and the decrypted datastore values to scrub."""
        document = self._sealed_document(record)
        return document["values"], document["revealed"]

    def revealed(self, record: Mapping[str, Any]) -> list[str]:
        """The decrypted datastore values sealed with `record`: a workflow hands them to its tasks as
        `secrets` (`request`), since its parameters, and so its tasks' parameters, may hold them."""
        return self._unseal(record)[1]

    @contextlib.contextmanager
    def revealing(self, bucket: list[str]) -> Iterator[None]:
        """Inside, what `decrypt_kv` reveals goes to `bucket`: a workflow's own renders (an ActionChain's
        vars, task parameters and publish), whose plaintexts its tasks and its result must not show."""
        token = _revealed.set(bucket)
        try:
            yield
        finally:
            _revealed.reset(token)

    def seal_revealed(self, execution_id: str, revealed: Sequence[str]) -> bool:
        """Add `revealed` to the decrypted values sealed with the execution (on the database thread), so
        a workflow's later steps, on any worker or after a restart, scrub them from what they store and
        hand them to the tasks they request. False when there was nothing new to seal."""
        record = self.db.store.get_execution(execution_id)
        if record is None:
            return False
        document = self._sealed_document(record)
        known = document["revealed"]
        texts = _scrubbable([], [*known, *revealed])
        if set(texts) <= set(known):
            return False
        return self.db.store.update_execution(execution_id, {"sealed": self._seal(document["values"], texts,
                                                                                  document.get("answers"))})

    async def _finish(self, record: dict[str, Any], outcome: RunOutcome, secrets: list[str]) -> None:
        fields, entry = _ending(outcome, secrets)
        shown, writes = self._completion_writes(record, fields, entry)
        stored = await self._stored_end(record, fields, entry, writes)
        if stored is not None:
            self._ended(record, *stored, writes, shown)

    async def _stored_end(self, record: dict[str, Any], fields: dict[str, Any], entry: dict[str, Any],
                          writes: list[CompletionWrite]
                          ) -> tuple[dict[str, Any] | None, list[tuple[bool, Any]] | None] | None:
        """`_complete` a run's end, tried again until the database stores it.

        Nothing else would ever store it: the run is over, and the periodic sweep ends only runs whose
        process died, so an end lost to a full disk left the execution `running` (its chat result never
        posted, its waiters waiting) until a restart. A database error (a full disk, a database not
        writable or unreachable, another call of its group failing the COMMIT) is tried again, after
        `END_RETRY_SECONDS[0]`, the wait doubling up to `END_RETRY_SECONDS[1]`; once space is back the
        run ends as it did, with what `writes` store with it. Logged once (a warning naming the run), its
        tries after at debug, and once more when stored, or when the status guard kept it out as the
        execution had ended meanwhile (`_end_not_written`). Should Squall stop meanwhile, it stops trying
        (None): the next start's `recover` ends the run `abandoned`, as any run whose process stopped, or,
        a `squall worker`'s job, a reaper (`engine.jobs.reap_stalled`), as no start ends those."""
        wait, longest = END_RETRY_SECONDS
        tries = 0
        while True:
            try:
                stored = await self.db(self._complete, record, fields, entry, ("running", "canceling", "pausing"),
                                       writes)
            except sa.exc.DBAPIError as exc:
                tries += 1
                if not self._end_tried_again(record, fields["status"], exc, tries, wait):
                    return None
                await asyncio.sleep(wait)
                wait = min(wait * 2, longest)
                continue
            if stored[0] is None:
                await self._end_not_written(record, fields["status"], tries)
            elif tries:
                log.info("the end of %s (%s) is stored, after %d failed tries", record["id"], fields["status"], tries)
            return stored

    async def _end_not_written(self, record: dict[str, Any], status: str, tries: int) -> None:
        """Log a run's end that the status guard kept out (`_stored_end`): the execution had ended
        meanwhile, on another node's word (a reaper took its worker for stalled) or a cancel's, and
        what was decided stands. Logged as 'is stored' before, though nothing was written."""
        try:
            current = await self.db(self.db.store.get_execution, record["id"])
        except sa.exc.DBAPIError:
            current = None
        log.warning("execution %s ended meanwhile as %s; this run's end (%s) was not written%s", record["id"],
                    (current or {}).get("status", "something else"), status,
                    f" (after {tries} failed tries to store it)" if tries else "")

    def _end_tried_again(self, record: dict[str, Any], status: str, exc: sa.exc.DBAPIError, tries: int,
                         wait: float) -> bool:
        """Log a failed try at storing an end (`_stored_end`); False when it is not tried again (stopping).
        Who then ends it `abandoned`: a worker's job (`job_id` in its owner) a reaper, once the database is
        back (`recover` leaves those to it: the log said the next start did, which none does); else the
        next start."""
        why = database_failure(exc) or type(exc).__name__
        if getattr(self.executor, "closing", False):
            later = ("a reaper ends it abandoned once the database is back" if "job_id" in (
                record.get("runner_info") or {}) else "the next start ends it abandoned")
            log.warning("the end of %s (%s) was not stored (%s) and Squall is stopping: %s", record["id"], status,
                        why, later)
            return False
        if tries == 1:
            log.warning("the end of %s (%s) was not stored, as the database failed (%s); it is tried again until "
                        "stored", record["id"], status, why)
        else:
            log.debug("the end of %s was not stored again (%s); tried again in %.2f s", record["id"], why, wait)
        return True

    def _ended(self, record: dict[str, Any], finished: dict[str, Any] | None,
               written: list[tuple[bool, Any]] | None, writes: list[CompletionWrite],
               shown: dict[str, Any] | None) -> None:
        """Once an end is committed: what was stored with it is told, then the end's listeners."""
        if finished is not None:
            if finished["status"] in _SAID_IN_THE_LOG:
                log.info("%s %s (execution %s): %s", record["action"], finished["status"], record["id"],
                         _why_it_failed(finished.get("result")))
            elif log.isEnabledFor(logging.DEBUG):  # (`debug` would ask the same, one call deeper: every end)
                log.debug("%s %s", record["action"], finished["status"])
            if record is not finished:  # (a request ended as it was stored is its own end)
                record.update(finished)
            if writes:  # (most ends: none, and no zip made)
                for write, (ok, value) in zip(writes, written or (), strict=False):
                    if ok:
                        write.committed(value)
            self._finished(record, shown if written is not None else None)

    def _completion_writes(self, record: dict[str, Any], fields: dict[str, Any],
                           entry: dict[str, Any]) -> tuple[dict[str, Any] | None, list[CompletionWrite]]:
        """The end as it will read once stored as claimed (the common case), and what the
        `on_completing` hooks store with it."""
        if not self._completing or record["status"] != "running":
            return None, []
        shown = public({**record, **fields, "log": [*(record.get("log") or []), entry]})
        return shown, self._completing_writes(shown)

    def _completing_writes(self, shown: dict[str, Any]) -> list[CompletionWrite]:
        """What the `on_completing` hooks store with the end that reads `shown` once stored."""
        writes = []
        for hook in self._completing:
            try:
                write = hook(shown)
            except Exception:
                log.exception("what to store with the end of %s could not be made; its listeners store it",
                              shown["id"])
                continue
            if write is not None:
                writes.append(write)
        return writes

    def _complete(self, known: dict[str, Any], fields: dict[str, Any], entry: dict[str, Any],
                  expect: tuple[str, ...], writes: Sequence[CompletionWrite] = (), audit: AuditEntry | None = None
                  ) -> tuple[dict[str, Any] | None, list[tuple[bool, Any]] | None]:
        """Finish an execution, appending to the log as stored now: a `canceling` another caller
        recorded meanwhile stays in it (compare-and-set on the status, retried if it moved).
        `writes` are stored with it only if it was still as claimed (what they say was made from
        that): then with (True, what each returned) or (False, None) for one that failed; with None
        if it had moved. `audit` is stored with the end (`_change`)."""
        store = self.db.store
        execution_id = known["id"]
        if known["status"] == "running":  # the common case: still as we claimed it, one write
            complete = {**fields, "log": [*(known.get("log") or []), entry]}
            if self._change(execution_id, complete, ("running",), audit):
                if _tokened(known):
                    revoke(store, execution_id)  # its API token ends with the run, in the same transaction
                at = fields["end_timestamp"]
                return {**known, **complete}, [_written(write, store, execution_id, at) for write in writes]
        while True:
            current = store.get_execution(execution_id)
            if current is None or current["status"] not in expect:
                return None, None
            complete = {**fields, "log": [*(current.get("log") or []), entry]}
            if self._change(execution_id, complete, (current["status"],), audit):
                if _tokened(current):
                    revoke(store, execution_id)
                return {**current, **complete}, None

    def _change(self, execution_id: str, fields: dict[str, Any], expect: tuple[str, ...],
                audit: AuditEntry | None = None) -> bool:
        """Write `fields` while the execution's status is one of `expect` (on the database's side of
        `Database`), with `audit` (about the execution) in the same transaction: both are stored or
        neither (`AuditEntry.together`). False, and no event, if its status had moved on."""
        store = self.db.store
        if audit is None:
            return store.update_execution(execution_id, fields, expect=expect)
        with audit.together(store):
            if not store.update_execution(execution_id, fields, expect=expect):
                return False
            audit.add(store, execution_id)
            return True

    async def change(self, execution_id: str, fields: dict[str, Any], expect: tuple[str, ...],
                     audit: AuditEntry | None = None) -> bool:
        """`fields` written while the execution's status is one of `expect`, with `audit` in the same
        transaction (`_change`): an inquiry's answer short of its count. False if its status had moved on."""
        return await self.db(self._change, execution_id, fields, expect, audit)

    async def complete(self, execution_id: str, status: str, result: Any,
                       expect: tuple[str, ...], audit: AuditEntry | None = None,
                       sealed: str | None = None) -> dict[str, Any] | None:
        """Finish an execution no runner is running (an answered or expired inquiry, a paused
        workflow canceled); listeners hear of it as of any other. None if it was not in `expect`.
        `audit` (who answered, who canceled) is stored in the end's transaction (`_change`), and so is
        `sealed`, the new sealed column (an inquiry's secret answers, `seal_answers`), when given."""
        record = await self.db(self._find, execution_id)
        now = utcnow()
        fields = {"status": status, "result": result, "end_timestamp": now,
                  **({"sealed": sealed} if sealed is not None else {})}
        finished, _ = await self.db(self._complete, record, fields, {"status": status, "timestamp": iso(now)}, expect,
                                    (), audit)
        if finished is None:
            return None
        record.update(finished)
        self._finished(record)
        return public(record)

    async def pause(self, execution_id: str, audit: AuditEntry | None = None) -> dict[str, Any]:
        """Ask a running workflow to pause: it starts nothing new and pauses once its running tasks end.
        `audit` is stored with the `pausing` it writes (`_audited_as`); what follows is `_then`'s."""
        record = await self.db(self._find, execution_id)
        runner = self.runners.get(record["runner"])
        if not _resumable(runner):
            raise ExecutionStateError(f'execution {record["id"]} is a {record["runner"]} action; only workflows pause')
        if record["status"] != "running":
            raise ExecutionStateError(f'execution {record["id"]} is {record["status"]}; only a running one pauses')
        fields = {"status": "pausing", "log": [*(record.get("log") or []),
                                               {"status": "pausing", "timestamp": iso(utcnow())}]}
        if not await self.db(self._change, record["id"], fields, ("running",), _audited_as(audit, record, fields)):
            return await self.get(record["id"])

        async def pause_it() -> None:  # (what the runner's pause returns is no record)
            await runner.pause(record["id"])  # type: ignore[union-attr]

        return await self._then(record, fields, "pausing it", pause_it)

    async def resume(self, execution_id: str, audit: AuditEntry | None = None) -> dict[str, Any]:
        """Conduct a paused workflow on (here, or by `squall serve` when this process has no executor).
        `audit` is stored with the `resuming` it writes (`_audited_as`); what follows is `_then`'s."""
        record = await self.db(self._find, execution_id)
        if record["status"] != "paused":
            raise ExecutionStateError(f'execution {record["id"]} is {record["status"]}; only a paused one resumes')
        fields = {"status": "resuming", "end_timestamp": None,
                  "log": [*(record.get("log") or []), {"status": "resuming", "timestamp": iso(utcnow())}]}
        if not await self.db(self._change, record["id"], fields, ("paused",), _audited_as(audit, record, fields)):
            return await self.get(record["id"])
        return await self._then(record, fields, "resuming it", lambda: self._resume_here(record))

    async def _resume_here(self, record: dict[str, Any]) -> None:
        """What follows a `resuming` stored: the sub-workflows its pause paused resume, and it is conducted."""
        runner = self.runners.get(record["runner"])
        if hasattr(runner, "resume"):
            await runner.resume(record["id"])
        if self.executor is not None:
            self.conducting.add(record["id"])
            await self.executor.submit(record["id"])

    async def _then(self, record: dict[str, Any], fields: dict[str, Any], what: str,
                    step: Callable[[], Awaitable[dict[str, Any] | None]]) -> dict[str, Any]:
        """`step`, what follows a change (`fields`) already committed with its audit event, then the
        execution as it is now (or as `step` returned it). A database failure there is logged, not raised:
        the change holds, the poll and recovery take it up, and raised it would tell the caller that
        nothing happened (the API's 503), whose retry would ask again for what was done. The execution is
        then answered as the change left it."""
        try:
            done = await step()
            return done if done is not None else await self.get(record["id"])
        except sa.exc.DBAPIError as exc:
            why = database_trouble(exc) or f"the database refused it ({type(exc).__name__})"
            log.warning("execution %s is %s as asked, but %s failed, as %s; the poll takes it up", record["id"],
                        fields["status"], what, why)
            return public({**record, **fields})

    # -- reading -------------------------------------------------------------------------
    async def get(self, execution_id: str) -> dict[str, Any]:
        record = await self.db(self._find, execution_id)
        return public(record)

    def _find(self, execution_id: str) -> dict[str, Any]:
        if not ID_PREFIX.match(execution_id):
            shown = execution_id if len(execution_id) <= 40 else execution_id[:40] + "…"
            raise ExecutionNotFound(f'"{shown}" is not an execution id: ids are 24 hexadecimal digits '
                                    "(a unique start of one will do; see `squall execution list`)")
        execution_id = execution_id.lower()  # ids are lowercase: "ABC" finds "abc…" on every database
        store = self.db.store
        record = store.get_execution(execution_id)
        if record is None and len(execution_id) >= 4:
            matches = store.find_executions(execution_id)
            if len(matches) == 1:
                record = store.get_execution(matches[0])
            elif len(matches) > 1:
                raise AmbiguousExecution(
                    f'execution id "{execution_id}" is ambiguous: it starts {", ".join(matches)}; type more of it'
                )
        if record is None:
            raise ExecutionNotFound(f'execution "{execution_id}" not found (see `squall execution list`)')
        return record

    async def list(self, **filters: Any) -> list[dict[str, Any]]:
        return [public(r) for r in await self.db(self.db.store.list_executions, **filters)]

    async def page(self, *, limit: int, offset: int = 0, oldest_first: bool = False,
                   **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """One page of the executions `filters` select, and how many they select in all (the API's
        `X-Total-Count`). `parent="null"` selects executions without a parent, as StackStorm's API;
        `user`, `trigger_instance`, `since` and `until` are `st2 execution list`'s other filters
        (`Store._execution_filters`)."""
        records, total = await self.db(self.db.store.page_executions, limit=limit, offset=offset,
                                       oldest_first=oldest_first, **filters)
        return [public(r) for r in records], total

    async def wait(self, execution_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The finished execution; waits for one that runs in this process."""
        if execution_id in self._recent:
            return self._recent[execution_id]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiters.setdefault(execution_id, []).append(future)
        deadline = None if timeout is None else loop.time() + timeout
        running_here = execution_id in getattr(self.executor, "running", ())
        try:
            while True:
                if not running_here:
                    current = await self.get(execution_id)
                    if current["status"] in COMPLETED:
                        return current
                running_here = False
                # Another process may run it (a server picked up our request): look again now and then.
                step = 0.5 if deadline is None else min(0.5, deadline - loop.time())
                if step <= 0:
                    raise TimeoutError(f"execution {execution_id} did not finish within {timeout} seconds")
                try:
                    return await asyncio.wait_for(asyncio.shield(future), step)
                except TimeoutError:
                    continue
        finally:
            waiters = self._waiters.get(execution_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(execution_id, None)

    # -- cancel and re-run -------------------------------------------------------------
    async def cancel(self, execution_id: str, audit: AuditEntry | None = None) -> dict[str, Any]:
        """Cancel an execution: `canceled` at once while it waits its turn or when its owner is gone, else
        `canceling` for whoever runs it. `audit` is stored in the transaction of that change, its detail
        gaining the action and the status written (`_audited_as`); once it is committed, stopping the run
        here is `_then`'s, which a database failure does not make a failed cancel."""
        record = await self.db(self._find, execution_id)
        status = record["status"]
        if status in COMPLETED:
            raise ExecutionStateError(f'execution {record["id"]} is already {status}; it cannot be canceled')
        if (status in ("running", "canceling", "pausing", "resuming")
                and record["id"] not in getattr(self.executor, "running", ())
                and self.owner_state_of(record.get("runner_info")) == "gone"):
            # Nobody runs it any more (its process died, or the host was renamed and restarted):
            # canceled at once, instead of `canceling` for an owner that never looks again.
            done = await self._cancel_orphan(record, _audited_as(audit, record, {"status": "canceled"}))
            return done if done is not None else await self.cancel(execution_id, audit)  # it moved meanwhile
        if status == "canceling":
            return await self._cancel_again(record, audit)
        if status not in CANCELABLE:
            raise ExecutionStateError(f'execution {record["id"]} is {status}, which cannot be canceled')
        now = utcnow()
        entries = [*(record.get("log") or [])]
        if status in _QUEUED:
            entries.append({"status": "canceled", "timestamp": iso(now)})
            fields = {"status": "canceled", "end_timestamp": now, "log": entries,
                      "result": {"error": "canceled before it started"}}
            if await self.db(self._change, record["id"], fields, _QUEUED, _audited_as(audit, record, fields)):
                record.update(fields)
                self._finished(record)
                return public(record)
            return await self.cancel(execution_id, audit)  # it started meanwhile
        entries.append({"status": "canceling", "timestamp": iso(now)})
        fields = {"status": "canceling", "log": entries}
        if not await self.db(self._change, record["id"], fields, (status,), _audited_as(audit, record, fields)):
            return await self.cancel(execution_id, audit)  # it moved meanwhile (claimed, ended): look again
        return await self._then(record, fields, "stopping it", lambda: self._stop_canceling(record, status))

    async def _cancel_again(self, record: dict[str, Any], audit: AuditEntry | None = None) -> dict[str, Any]:
        """A second cancel of a `canceling` workflow takes its cancel up again (its runner's `cancel_again`:
        the tree under it, which a cancel that failed midway or a crash left live, is canceled), where a
        refusal would leave that tree running for ever; any other `canceling` execution is refused.

        A person's cancel is audited as the first one is: `audit` (who asked) is stored with a write of
        `canceling` while the workflow still is (`_change`), so the event is stored only while there is a
        cancel to take up, and before any of it is taken up (an event that failed takes nothing up). No log
        entry: the log's last `canceling` is when the cancel was asked, which a step reads (`canceled_at`).
        Without `audit` (the cancel walk reaching a sub-workflow canceling already) nothing is written."""
        again = getattr(self.runners.get(record["runner"]), "cancel_again", None)
        if again is None:
            raise ExecutionStateError(f'execution {record["id"]} is already canceling; it cannot be canceled')
        fields = {"status": "canceling"}
        if audit is not None and not await self.db(self._change, record["id"], fields, ("canceling",),
                                                   _audited_as(audit, record, fields)):
            return await self.cancel(record["id"], audit)  # it ended meanwhile: refused as ended

        async def take_up() -> None:
            await again(record["id"])

        return await self._then(record, fields, "canceling its tasks again", take_up)

    async def _stop_canceling(self, record: dict[str, Any], status: str) -> dict[str, Any] | None:
        """Stop what `cancel` marked `canceling` (it was `status`): here if it runs here; a paused workflow,
        or one marked `resuming` and not claimed yet, nobody conducts, so it ends here (its children still
        live are canceled by the workflows' listener). Otherwise it runs in another process, whose owner
        sees `canceling`. The execution as it ended, or None to read it again."""
        if await self._cancel_here(record["id"]):
            return None
        if status in ("paused", "resuming") and _resumable(self.runners.get(record["runner"])):
            return await self.complete(record["id"], "canceled", canceled_result(record), ("canceling",))
        return None

    async def _cancel_here(self, execution_id: str) -> bool:
        """Stop a `canceling` execution run by this process; False if it does not run here. A workflow
        runner that cancels gracefully (Orquesta: running tasks finish first) does it its own way."""
        if self.executor is None:
            return False
        for runner in {id(r): r for r in self.runners.values() if _resumable(r)}.values():
            cancel = getattr(runner, "cancel", None)
            if cancel is not None and await cancel(execution_id):
                return True
        return await self.executor.cancel(execution_id)

    async def rerun(self, execution_id: str, parameters: Mapping[str, Any] | None = None,
                    context: Mapping[str, Any] | None = None, *, delay: float = 0.0,
                    rerun_id: str | None = None, audit: AuditEntry | None = None,
                    dropped: Collection[str] = ()) -> dict[str, Any]:
        """A new execution of the same action with the original parameters, overridden by `parameters`.

        Without `context` it is the same request again (a retry policy): the original's context, so
        its result goes where the original's went. With one, it is that requester's request: who
        asked and where replies go (`_ORIGIN`) are theirs, never the original's (a re-run from the web
        of a chat command must not post into that chat thread), and a retry policy counts its retries
        afresh (`_NOT_RERUN`). `delay` holds it `delayed` that long
        (a retry policy's delay), stored so that a restart meanwhile still runs it. `rerun_id` names the
        re-run (see `request`'s `execution_id`); `audit` is stored with it (see `request`).

        What `parameters` show masked (`headers` edited as shown) gets the original's credentials back, and the
        original's sealed values are carried, to the same target only: a re-run given a new `url` host, proxy
        or `hosts` is refused naming the credentials to give again (`rerun_parameters`, docs/security.md).

        `dropped` names parameters of the original not to give again: the web's re-run form drops those a pack
        update took out of the action, which it cannot show. Without it such a parameter is refused by name,
        as StackStorm's re_run refuses it (it validates the merged parameters against the action as it is)."""
        record = await self.db(self._find, execution_id)
        spec = record["spec"]
        supplied = spec.get("supplied", list(record["parameters"]))
        original = {k: v for k, v in spec["values"].items() if k in supplied and k not in dropped}
        # What was decrypted into them (a workflow's `decrypt_kv`, its `st2kv`) is masked again (`secrets`).
        sealed, revealed = self._unseal(record)
        original.update({k: v for k, v in sealed.items() if k in original})
        parameters = rerun_parameters(parameters or {}, {**spec["values"], **sealed},
                                      [k for k in sealed if k in original])
        # A supplied template is supplied again, not what it rendered to: the rendering is stale,
        # and a `cmd` must get values through the shell runner's quoting, never pasted into its text.
        raw_templates = spec.get("supplied_templates") or {}
        templates = spec.get("templates") or {}
        rendered: set[str] = set()
        for name in original:
            if name in raw_templates:
                original[name] = raw_templates[name]
                rendered.add(name)
            elif name in templates:
                original[name] = templates[name]
                rendered.add(name)
        merged = {**original, **(parameters or {})}
        kept = record["context"] if context is None else {
            k: v for k, v in record["context"].items() if k not in _NOT_RERUN}
        new_context = {**kept, **(context or {}), "re-run": {"ref": record["id"]}}
        new_context.pop("pack", None)
        # What rendered the first time renders again; whatever the caller now gives is data.
        return await self.request(record["action"], merged, new_context,
                                  extra_template_context=spec.get("extra_context"),
                                  render=rendered - set(parameters or {}), delay=delay, execution_id=rerun_id,
                                  secrets=revealed, audit=audit)

    # -- ownership ---------------------------------------------------------------------
    def owner_state_of(self, info: Mapping[str, Any] | None) -> str:
        """Who holds an execution this process did not start: "here" (this process), "alive" (a
        live process on this machine), "gone", "elsewhere" (another host's, PostgreSQL only), or
        "queued" (a workflow between steps under the scale-out executor: no process holds it).
        Owners are told apart as `engine.processes.owner_state` says (trigger instances' too)."""
        info = info or {}
        if info.get("between_steps"):
            return "queued"  # a workflow between steps: its next step is a job any worker may take
        return owner_state(info, self.owner, self.ledger, one_machine=self.db.store.is_sqlite)

    async def _sweep(self) -> int:
        """Kill what dead Squall processes on this machine left running (their owner files say what)."""
        killed = await asyncio.to_thread(sweep, self.ledger)
        if killed:
            log.info("killed %d process group(s) left running by Squall processes that died", killed)
        return killed

    async def _cancel_orphan(self, record: dict[str, Any], audit: AuditEntry | None = None) -> dict[str, Any] | None:
        """Cancel an execution whose owner is gone, at once: nobody else would ever end it. What its
        processes left is killed first. A workflow's live children follow (its finished listener).
        `audit` is stored with the end."""
        await self._sweep()
        info = record.get("runner_info") or {}
        owner = f'{info.get("hostname") or "?"} pid {info.get("pid")}'
        return await self._end_canceled(record, f"canceled by request; the process that ran it ({owner}) was gone",
                                        audit)

    async def _end_canceled(self, record: dict[str, Any], why: str,
                            audit: AuditEntry | None = None) -> dict[str, Any] | None:
        """End `record`, which nothing runs any more, `canceled` with the error `why`, keeping what it had done
        (its result, a workflow's `_kept_result`); None if its status moved meanwhile."""
        return await self.complete(record["id"], "canceled", {
            **(record.get("result") or {}), **(await self._kept_result(record) or {}), "error": why},
            (record["status"],), audit)

    async def _kept_result(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """What a workflow ended `canceled` without its process had done (its runner's `kept_result`: an
        ActionChain's `tasks`, an Orquesta workflow's `output`), as its own cancel stores it; None for
        anything else. Stored while it runs, its result is empty: ended with the error alone, it lost them."""
        kept = getattr(self.runners.get(record["runner"]), "kept_result", None)
        return await kept(record) if kept is not None else None

    # -- recovery ----------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """After a crash: end what dead owners left running, and run what never started.

        First the process groups dead Squall processes on this machine left are killed, so no next
        attempt (a re-requested workflow task, a re-run) ever runs beside the previous one. What a
        workflow that ended left unfinished under it is canceled (`_cancel_under_ended`). Then an
        execution whose owner is gone is abandoned (a workflow is conducted on instead, a
        `canceling` one ends `canceled`); those of live owners and of other hosts are left alone, and a
        `squall worker`'s job (`job_id` in its owner) is left to `engine.jobs.reap_stalled`, as the poll's
        sweep leaves it (`_end_dead_owners`): ended here, a worker killed on this host had its actions
        abandoned as if Squall had stopped, with no audit event and no line naming the worker. What
        never started is submitted last, once the workflows this ended `canceled` had their tasks canceled."""
        await self._sweep()
        await self._cancel_under_ended()
        rows = await self.db(self.db.store.execution_ids_with_status, (*_LIVE, *_QUEUED))
        abandoned = started = 0
        running_here: set[str] = getattr(self.executor, "running", set())
        resumed: list[str] = []
        foreign: dict[str, int] = {}
        queued: list[Mapping[str, Any]] = []
        canceled = False  # a workflow `canceling` whose owner is gone ended `canceled` here
        for row in rows:
            if row["status"] in _QUEUED:
                queued.append(row)
                continue
            if row["id"] in running_here:
                continue
            info = row.get("runner_info") or {}
            if "job_id" in info:
                continue  # a worker's job: the reaper ends it by the worker's heartbeat, and says so
            state = self.owner_state_of(info)
            if state in ("alive", "queued"):
                continue  # another Squall process on this machine (a CLI run) still owns it, or a job
            if state == "elsewhere":
                host = str(info.get("hostname"))
                foreign[host] = foreign.get(host, 0) + 1
                continue
            ended = await self._end_orphaned(row)
            if ended == "abandoned":
                abandoned += 1
            elif ended == "resuming":
                resumed.append(row["id"])
            canceled |= ended == "canceled"
        dropped = await self._cancel_under_ended() if canceled else set()
        for row in queued:
            if self.executor is not None and row["id"] not in running_here and row["id"] not in dropped:
                wait = until_due(row)
                if wait > 0:  # held for a delay (a task's `delay`, a retry policy's) that is not over
                    self._submit_later(row["id"], wait)
                else:
                    await self.executor.submit(row["id"])
                started += 1
        self.foreign_owners = foreign
        # API tokens of what the crash left (abandoned above, resuming, or ended by another process).
        await self.db(revoke_ended, self.db.store)
        await self._conduct_on(resumed)
        await self._run_after_recovery()
        return {"abandoned": abandoned, "started": started + len(resumed)}

    async def _cancel_under_ended(self) -> set[str]:
        """Cancel what is unfinished under a workflow that has ended (canceled, or any end), at every depth:
        tasks held `requested` or `delayed` (by a concurrency policy, by a task's `delay`), paused
        sub-workflows, pending inquiries, live tasks (their owner cancels them, or, gone, they end
        `canceled` at once). A workflow ended while `squall serve` was down (`squall execution cancel` of
        an orphan), or by a CLI command stopped before its listener canceled the tasks, leaves them: a
        restart then ran the delayed ones inside the canceled tree, and the paused and pending ones waited
        for ever, an answer to the inquiry running its branch. A workflow conducts nothing after it ended,
        so nothing under one is still wanted. Top-down, so no sub-workflow is woken by its task's end.
        The ids of those it found there (canceled here, or by a listener meanwhile)."""
        store = self.db.store
        unfinished = await self.db(store.list_executions, status=[*_LIVE, *_QUEUED, "pending"],
                                   limit=10_000_000, oldest_first=True)
        known = {row["id"] for row in unfinished}
        children: dict[str, list[dict[str, Any]]] = {}
        for row in unfinished:
            if row.get("parent"):
                children.setdefault(row["parent"], []).append(row)
        walk: deque[tuple[dict[str, Any], str]] = deque()
        for parent_id, rows in children.items():
            if parent_id in known:
                continue  # it has not ended itself
            parent = await self.db(store.get_execution, parent_id)
            if parent is not None and parent["status"] in COMPLETED:
                walk.extend((row, parent["status"]) for row in rows)
        found: set[str] = set()
        while walk:
            row, ended = walk.popleft()
            walk.extend((child, ended) for child in children.get(row["id"], ()))
            found.add(row["id"])
            with contextlib.suppress(ExecutionStateError, LookupError):  # it ended meanwhile (a listener's cancel)
                if row["status"] == "pending":  # an inquiry: nothing runs it, so it ends here
                    await self.complete(row["id"], "canceled", {
                        **(row.get("result") or {}), "error": f"the workflow it belongs to ended {ended}"},
                        ("pending",))
                else:
                    await self.cancel(row["id"])
        if found:
            log.warning("canceled %d execution(s) left unfinished under workflows that had ended", len(found))
        return found

    async def _end_orphaned(self, row: Mapping[str, Any]) -> str | None:
        """End a live execution whose owner is gone, as nothing else ever would (at start, and in the
        poll's sweep): a `canceling` one ends `canceled`, a workflow is marked `resuming` (the caller
        submits it, `_conduct_on`), anything else ends `abandoned` and its listeners hear of it (retry
        policies, chat). What became of it, or None when it changed meanwhile (another process took
        it on, or ended it)."""
        record = await self.db(self.db.store.get_execution, row["id"])
        if record is None or record["status"] != row["status"] or record.get("runner_info") != row.get("runner_info"):
            return None
        now = utcnow()
        if row["status"] == "canceling":  # asked to cancel, and its owner is gone: it is
            await self.complete(row["id"], "canceled", {
                **(record.get("result") or {}), **(await self._kept_result(record) or {}),
                "error": "canceled by request; Squall stopped while it was running"}, ("canceling",))
            return "canceled"
        if _resumable(self.runners.get(record["runner"])):
            # A workflow's state is its stored children: conduct it on instead of abandoning it. A
            # `pausing` one is marked `resuming` too (the one status a claim takes); its log still shows
            # the pause, which `WorkflowService.run` reads and stores `pausing` again.
            if row["status"] != "paused" and await self.db(
                    self.db.store.update_execution, row["id"],
                    {"status": "resuming", "log": [*(record.get("log") or []),
                                                   {"status": "resuming", "timestamp": iso(now)}]},
                    expect=(row["status"],)):
                return "resuming"
            return None
        fields = {"status": "abandoned", "end_timestamp": now,
                  "result": {**(record.get("result") or {}),
                             "error": "Squall stopped while this execution was running; it was abandoned",
                             ABANDONED_BY: "recovery"},
                  "log": [*(record.get("log") or []), {"status": "abandoned", "timestamp": iso(now)}]}
        if not await self.db(self.db.store.update_execution, row["id"], fields, expect=(row["status"],)):
            return None
        self._ended(record, fields, None, [], None)  # said in the log, as every abandoned run is
        return "abandoned"

    async def _conduct_on(self, resumed: list[str]) -> None:
        """Submit the workflows `_end_orphaned` marked `resuming`: after their children were abandoned,
        so their conductors see it."""
        if self.executor is None:
            return
        for execution_id in resumed:
            self.conducting.add(execution_id)
            await self.executor.submit(execution_id)

    async def _run_after_recovery(self) -> None:
        """The `after_recovery` hooks, each on its own: one that fails is logged, the start goes on
        (the next start looks again)."""
        for hook in self._after_recovery:
            try:
                await hook()
            except Exception:
                log.exception("a step of recovery after the executions' own failed: %r", hook)

    def foreign_note(self) -> str | None:
        """What `squall serve` says at start about executions other hosts' processes hold, if any."""
        if not self.foreign_owners:
            return None
        total = sum(self.foreign_owners.values())
        hosts = ", ".join(f"{host} ({count})" for host, count in sorted(self.foreign_owners.items()))
        return (f"{total} running execution(s) belong to Squall processes on other hosts: {hosts}; "
                "they are left to those hosts")

    async def poll(self) -> None:
        """Pick up work other processes stored (CLI `--async` requests, cancels of our executions),
        and end cancels whose owner is gone; every `_SWEEP_POLLS`, end what dead owners left running."""
        if self.executor is None:
            return
        self._polls += 1
        if self._polls % _SWEEP_POLLS == 0:
            await self._sweep()
            await self._end_dead_owners()
        # Where other processes run the executions (`squall worker`s), what a policy delayed or admitted
        # is submitted again too: the policy's count is the database's, and a run that ended elsewhere
        # frees its slot only there.
        shared = ("scheduled", "delayed") if getattr(self.executor, "shared", False) else ()
        taken = ("requested", "resuming", *shared)
        rows = await self.db(self.db.store.execution_ids_with_status, ("canceling", "pausing", *taken))
        if not shared:
            await self._submit_due_elsewhere()
        ended_above_parent: dict[str, dict[str, Any] | None] = {}  # this poll's answers: siblings ask once
        unheld, self._unheld = self._unheld, {}
        for row in rows:
            if row["status"] in taken:
                if row.get("parent") and await self._canceled_under_ended(row, ended_above_parent):
                    continue
                if row["status"] == "resuming":  # only workflows resume
                    self.conducting.add(row["id"])
                await self.executor.submit(row["id"])
            elif row["status"] == "pausing":
                if (row.get("runner_info") or {}).get("pid") == os.getpid():
                    for runner in {id(r): r for r in self.runners.values() if _resumable(r)}.values():
                        await runner.pause(row["id"])
            elif (row.get("runner_info") or {}).get("pid") == os.getpid():
                if not await self._cancel_here(row["id"]):
                    await self._end_unheld_cancel(row, unheld.get(row["id"], 0) + 1)
            elif self.owner_state_of(row.get("runner_info")) == "gone":
                record = await self.db(self.db.store.get_execution, row["id"])
                if record is not None and record["status"] == "canceling":
                    await self._cancel_orphan(record)

    async def _end_unheld_cancel(self, row: Mapping[str, Any], polls: int) -> None:
        """End `canceled` a `canceling` execution this process owns that nothing here runs, once `polls` (the
        polls in a row that found it so) reaches `UNHELD_POLLS`. Its run's task is gone without writing the end (a
        second cancel once cut a clean-up short so): nobody else ends what a live process owns, and it stayed
        `canceling` for ever. Under the scale-out executor the jobs' reaper ends what a worker left."""
        if getattr(self.executor, "shared", False) or self.owner_state_of(row.get("runner_info")) != "here":
            return
        if polls < UNHELD_POLLS:
            self._unheld[row["id"]] = polls
            return
        record = await self.db(self.db.store.get_execution, row["id"])
        if record is None or record["status"] != "canceling" or row["id"] in self.executor.running:  # type: ignore[union-attr]
            return
        log.warning("execution %s was canceling, and nothing in this process ran it any more; it ends canceled",
                    row["id"])
        await self._end_canceled(record, "canceled by request; its run in this process had stopped without "
                                         "recording its end")

    async def _submit_due_elsewhere(self) -> None:
        """Submit the top-level `delayed` rows whose clock is due and that no timer here holds (`_due_elsewhere`):
        each is claimed only while still `delayed`, so one its own process's timer hands on too runs once."""
        assert self.executor is not None
        for row in await self.db(self.db.store.delayed_on_a_clock):
            if self._due_elsewhere(row):
                await self.executor.submit(row["id"])

    def _due_elsewhere(self, row: Mapping[str, Any]) -> bool:
        """Whether the poll submits a `delayed` row (local executor): one held by a clock
        (`runner_info.delayed_until`: a retry policy's delay, a task's `delay`) that is due, and that no timer
        of this process holds. Another process stored it (a plain `squall run` whose run failed: its retry),
        and only that process's timer would hand it on; gone, the retry waited for the next restart. Rows a
        concurrency policy delayed have no `delayed_until`: the policy here admits them as slots free. Top-level
        ones only: a workflow's task is its conductor's, which a live process holds and a dead one's sweep
        conducts on."""
        if until_due(row) > 0:  # (`delayed_on_a_clock`: top-level rows with a `delayed_until` only)
            return False
        return row["id"] not in self._timed and row["id"] not in getattr(self.executor, "running", ())

    async def _canceled_under_ended(self, row: Mapping[str, Any],
                                    known: dict[str, dict[str, Any] | None]) -> bool:
        """Cancel a task the poll was about to run if a workflow above it, at any height, has ended, as
        recovery cancels what is left under one (`_cancel_under_ended`); whether it found one. A CLI killed
        in the middle of a workflow's cancel (or one that ended it while `squall serve` was down) leaves its
        tasks `requested` or `delayed`: submitted, they ran inside the canceled tree, and only the next start
        would have canceled them. One database call whatever the depth (`ended_above`), once a poll for the
        tasks of one workflow (`known`: a policy may hold hundreds `delayed` under one, resubmitted each poll)."""
        from engine.workflows.service import ended_above  # that module imports this one

        parent = row["parent"]
        if parent not in known:
            known[parent] = await self.db(ended_above, self.db.store, parent)
        ended = known[parent]
        if ended is None:
            return False
        log.warning("execution %s (%s) was not run but canceled: workflow %s (%s) above it had ended %s",
                    row["id"], row["status"], ended["id"], ended["action"], ended["status"])
        with contextlib.suppress(ExecutionStateError, LookupError):  # it ended meanwhile (a listener's cancel)
            await self.cancel(row["id"])
        return True

    async def _end_dead_owners(self) -> None:
        """The sweep's second half, after their process groups were killed: end the runs of owners
        that died, as `recover` does at start. A `squall run` killed by SIGKILL or the OOM killer left
        its execution `running`, and nothing else would ever end it before the next restart. Only
        owners known dead: a live one's (a CLI run, a worker's: the owner ledger tells), a workflow's
        between steps and another host's are theirs. A `squall worker`'s job (`job_id` in its owner) is
        left to `engine.jobs.reap_stalled`, which ends it by the worker's heartbeat on any host and tells
        its chat thread that the worker stopped answering."""
        rows = await self.db(self.db.store.execution_ids_with_status, _ORPHANABLE)
        running_here: set[str] = getattr(self.executor, "running", set())
        resumed: list[str] = []
        ended = 0
        for row in rows:
            info = row.get("runner_info") or {}
            if row["id"] in running_here or "job_id" in info or self.owner_state_of(info) != "gone":
                continue
            outcome = await self._end_orphaned(row)
            if outcome is not None:
                ended += 1
            if outcome == "resuming":
                resumed.append(row["id"])
        if ended:
            log.warning("ended %d execution(s) whose Squall process died while running them", ended)
            await self.db(revoke_ended, self.db.store)  # their API tokens
        await self._conduct_on(resumed)

    # -- a request refused before it ran -------------------------------------------------------
    async def record_refused(self, ref: str, parameters: Mapping[str, Any] | None, context: Mapping[str, Any] | None,
                             error: Exception, *, extra_template_context: dict[str, Any] | None = None,
                             render: bool | Collection[str] = (), execution_id: str | None = None,
                             stored_with: Callable[[dict[str, Any]], CompletionWrite | None] | None = None
                             ) -> dict[str, Any]:
        """Store a request that `request` refused for its parameters (a template that did not render, a
        value its type or schema refuses) as an execution that failed before it ran, `error` its result.

        StackStorm's rules engine does so (`st2reactor/rules/enforcer.py`: the request is created, then
        marked failed): a rule's failure then shows in the execution list, and its end fires the action
        trigger, `notify` and the policies as any failed run's end does, so a rule alerting on failed
        executions hears of it. The parameters are stored as given, masked as `_store` masks a request's
        (what masking hid is sealed), and the error quotes none of them; the templates among them
        (`render`) and `extra_template_context` are kept in its `spec`, so a re-run renders them again.

        `execution_id` and `stored_with` as for `request`: a second use of the id raises
        `sqlalchemy.exc.IntegrityError` and stores nothing, and what `stored_with` returns is stored in
        the execution's transaction, always. Raises `UnknownAction` for an action no longer loaded."""
        action = self.registry.action(ref)
        context = {**(context or {}), "pack": action.pack}
        if "user" not in context:  # as `request` says who asked
            context = {"user": os.environ.get("USER", "squall"), **context}
        supplied = {k: v for k, v in (parameters or {}).items() if v is not None}
        shown, secrets = _shown_values(action, supplied, [])
        renders = set(supplied) if render is True else set(render or ()) & set(supplied)
        now = utcnow()
        record = {
            "id": execution_id or new_id(),
            "action": action.ref,
            "runner": action.runner_type,
            "status": "failed",
            "parameters": shown,
            "spec": {"values": shown, "templates": {}, "supplied": list(supplied),
                     # a masked value is sealed, and given again as data: only a clear template renders again
                     "supplied_templates": {k: supplied[k] for k in renders if shown[k] == supplied[k]},
                     **({"extra_context": extra_template_context} if renders and extra_template_context else {})},
            "sealed": self._seal({k: v for k, v in supplied.items() if shown[k] != v}, []),
            "result": {"error": scrub(str(error), secrets)},
            "context": context,
            "log": [{"status": "failed", "timestamp": iso(now)}],
            "parent": None,
            "runner_info": None,
            "start_timestamp": now,
            "end_timestamp": now,
        }
        write = stored_with(public(record)) if stored_with is not None else None

        def store_it() -> tuple[bool, Any]:
            self.db.store.insert_execution(record)
            return _written(write, self.db.store, record["id"]) if write is not None else (False, None)

        ok, value = await self.db(store_it)
        if write is not None and ok:
            write.committed(value)
        metrics.started(record)
        self._finished(record)  # its end's listeners: the action trigger, notify, policies, waiters
        return public(record)


def _ending(outcome: RunOutcome, secrets: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An execution's end as stored: its fields (the result scrubbed of `secrets`) and its log entry."""
    now = utcnow()
    return ({"status": outcome.status, "result": scrub(outcome.result, secrets), "end_timestamp": now},
            {"status": outcome.status, "timestamp": iso(now)})


def _held(requested_at: datetime, delay: float) -> dict[str, Any] | None:
    """What a request held for `delay` seconds is stored with (`request`): `delayed`, and when it is due
    (`runner_info.delayed_until`), so under the scale-out executor any node's poll submits it once due,
    should this process stop meanwhile; a cancel meanwhile ends it `canceled`, and the claim then finds
    nothing to run. None for no delay."""
    if delay <= 0:
        return None
    return {"status": "delayed", "log": [{"status": "delayed", "timestamp": iso(requested_at)}],
            "runner_info": {"delayed_until": iso(requested_at + timedelta(seconds=delay))}}


def _audited_as(audit: AuditEntry | None, record: Mapping[str, Any], fields: Mapping[str, Any]) -> AuditEntry | None:
    """`audit` (of a cancel, a pause, a resume) saying what it changed: the execution's action and the
    status written (`fields`)."""
    return None if audit is None else audit.with_facts(action=record["action"], status=fields["status"])


def _add_request_audit(store: Store, audit: AuditEntry, record: dict[str, Any]) -> None:
    """A request's audit event, in its transaction: with the action and the parameters as stored (secrets
    masked) unless the caller's detail says them its own way, and the new execution's id when the event is
    about something else (a chat command's alias). Stored in the request's call, it carries the request's time
    (`start_timestamp`), not a reading of the clock of its own (~2,500 instructions a chat command)."""
    detail = {"action": record["action"], "parameters": record["parameters"], **audit.detail}
    if audit.target is not None:
        detail = {"execution": record["id"], **detail}
    # (`AuditEntry.add`'s write, without its keywords packed and unpacked: every chat command stores one)
    store.audit_add(audit.event, audit.actor, audit.source, audit.target or record["id"], detail,
                    record["start_timestamp"])


def _written(write: CompletionWrite, store: Store, execution_id: str,
             at: datetime | None = None) -> tuple[bool, Any]:
    """Run one `CompletionWrite` in the end's transaction (given its time `at`), or a request's; a failure
    rolls back its own writes alone, unless the database itself failed: then the end's call fails
    with it (see `Database`)."""
    try:
        if write.one_statement and store.is_sqlite:  # `Store.isolated` isolates nothing then: not entered
            # (every chat command's result)
            return True, write.write(store, at)
        with store.isolated(write.one_statement):
            return True, write.write(store, at)
    except Exception as exc:
        if database_failure(exc) is not None:
            raise  # the database failed, not this write: the end's transaction may be gone with it
        log.exception("storing what is owed with the end of %s failed; its listeners store it", execution_id)
        return False, None


def _resumable(runner: Any) -> bool:
    """Workflow runners conduct on from stored state after a pause, a crash or a shutdown."""
    return bool(getattr(runner, "resumable", False))
