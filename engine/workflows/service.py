"""The workflow host: runs a conductor's calls as child executions, in-process, event-driven.

Durable state is the children themselves. Each child records its parent and the key of the
call it answers (`context.workflow_task.key`); conducting a workflow always starts by listing
its children and replaying their outcomes, in the order they finished, through a fresh
conductor. A call whose key already has a finished child is answered from it and never runs
again; a live child is waited for; only calls without one are requested. So a first run, a
resume after a pause, a restart after a crash and a re-run from failed tasks are one code path.
The conductor is always built from the definition the run started with: its first conduct stores the
workflow file's text and the action with the run (`spec.workflow`, `WorkflowService._definition`), as
StackStorm's workflow execution keeps its spec, so a pack updated or broken meanwhile changes new runs only.

Children are awaited through the `on_finished` listener: no polling, no sleeps; a task costs
its child's own writes and nothing more. Under the scale-out executor (`executor.kind:
procrastinate`) the same replay runs in steps instead: the tasks run as jobs on any worker of
their queues, and a step ends as soon as the workflow waits on them (`WAITING_ON_TASKS`); each
task that ends queues the next step (`JobExecutor.advance`), which any worker may take. Pauses and
cancels are then read from the workflow's stored status at each step.

A conductor's steps (its start, each outcome fed to it, its outcome), Orquesta's, ActionChain's and
Mistral's alike, run on a render thread (`templates.render_pool`), not on the event loop: they evaluate
the workflow's YAQL and Jinja, whose cost its data chooses (a loop over a list from a webhook body), all
of a step's expressions together within `templates.max_seconds`. No step is tried on the loop first
(`templates.briefly`): a step changes its conductor as it goes, so one given up midway could not be
taken again elsewhere. The flow awaits each step, so the conductor is still used by one step at a
time: an Orquesta cancel asked meanwhile is applied to it once the step returns
(`Flow.cancel_conductor`); the pauses Mistral's conductor asks for are carried out on the loop once
the step's calls are requested (`mistral.DeferredPause`); and an ActionChain canceled during a step
(its task is) keeps what it did once that step returned, taken in a step of its own
(`Flow.interrupted_result`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import dataclasses
import functools
import heapq
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from engine.actions import Action
from engine.config import DEFAULT_WORKFLOW_MAX_DEPTH
from engine.crypto import CryptoError
from engine.executions import ABANDONED_BY, AuditEntry, canceled_result, held_texts, scrub, scrubbable
from engine.inquiries import RUNNER as INQUIRER
from engine.inquiries import answered_with, masked
from engine.parameters import MASK, credential_texts, holds_secret
from engine.runners import SHELL_COMMAND_RUNNERS, WAITING_ON_TASKS, RunOutcome, RunRequest
from engine.storage import as_utc, iso
from engine.templates import KVNamespace, end_budget, render_pool, start_budget
from engine.workflows import chain
from engine.workflows.model import COMPLETED, NO_DEFAULT, Conductor, TaskCall
from engine.yamlfile import ContentError, ContentInvalid, LineMap, load_yaml
from engine.yamlfile import parse as parse_yaml

if TYPE_CHECKING:
    from engine.executions import ExecutionService
    from engine.jobs import JobExecutor
    from engine.storage import Store

log = logging.getLogger(__name__)
_LIVE = frozenset({"requested", "scheduled", "delayed", "running", "canceling", "pausing", "resuming"})
_WAITING = frozenset({"pending", "paused"})
#: How the errors of children abandoned by a stop, a reaper or a recovery began before their results were
#: marked (`ABANDONED_BY`): such a child, stored by an earlier Squall (a rolling upgrade), still runs again.
_STOPPED_BEFORE = ("Squall shut down while it was running", "Squall stopped while this execution was running",
                   "Squall stopped running it: its worker")
_SPEC_CACHE: dict[tuple[str, str, int], Any] = {}
#: Definitions kept with runs, parsed (`kept_spec`), by kind, file and text: each step of a run, and each
#: run started from one version of a file, parses it once. The oldest is dropped past `_KEPT_SPECS_HELD`.
_KEPT_SPECS: dict[tuple[str, str, str], Any] = {}
_KEPT_SPECS_HELD = 256
#: The key of an execution's `spec` under which a workflow run keeps its definition and its action.
KEPT = "workflow"


@dataclass
class _CancelWalk:
    """The descendants a cancel still has to reach, breadth-first (`WorkflowService.cancel_all`)."""

    queue: collections.deque[tuple[str, bool]]
    open: bool = True


#: The cancel walk under way in this task: a workflow canceled during it hands its children to the walk
#: instead of canceling them itself, so a tree of any depth costs one Python call level, not one per level.
_CANCEL_WALK: contextvars.ContextVar[_CancelWalk | None] = contextvars.ContextVar("cancel_walk", default=None)
T = TypeVar("T")


def _parse(kind: str, data: Any, lines: LineMap, display: str) -> Any:
    """A workflow document checked and built by its kind's parser; `ContentInvalid` if bad."""
    # Orquesta and Mistral (and YAQL under them, ~30 ms) load with the first such workflow, not at start.
    if kind == "action-chain":
        return chain.parse(data, lines, display)
    if kind == "mistral-v2":
        from engine.workflows import mistral

        return mistral.parse(data, lines, display)
    from engine.workflows import orquesta

    return orquesta.parse(data, lines, display)


#: The runners whose definitions `load_spec` reads: their executions have tasks (child executions) of their own.
WORKFLOW_RUNNERS = frozenset({"orquesta", "action-chain", "mistral-v2"})


def load_spec(kind: str, path: Path, display: str) -> Any:
    """Parse and check a workflow file (cached by modification time); `ContentInvalid` if bad."""
    stamp = path.stat().st_mtime_ns
    key = (kind, str(path), stamp)
    spec = _SPEC_CACHE.get(key)
    if spec is None:
        data, lines = load_yaml(path, display)
        spec = _SPEC_CACHE[key] = _parse(kind, data, lines, display)
    return spec


def kept_spec(kind: str, text: str, display: str) -> Any:
    """Parse and check a workflow definition given as text (a run's, `WorkflowService._definition`),
    named `display` in its errors; cached by its text. `ContentInvalid` if bad."""
    key = (kind, display, text)
    spec = _KEPT_SPECS.get(key)
    if spec is None:
        try:
            data, node, _ = parse_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ContentInvalid(ContentError(display, mark.line + 1 if mark else None,
                                              f"invalid YAML: {getattr(exc, 'problem', None) or exc}")) from exc
        spec = _parse(kind, data, LineMap(node), display)
        if len(_KEPT_SPECS) >= _KEPT_SPECS_HELD:
            del _KEPT_SPECS[next(iter(_KEPT_SPECS))]
        _KEPT_SPECS[key] = spec
    return spec


def _action_record(action: Action) -> dict[str, Any]:
    """`action` as a run keeps it in its `spec` (JSON: its folder as text, a value JSON has no type for,
    a date written in its metadata, as text)."""
    fields = {field.name: getattr(action, field.name) for field in dataclasses.fields(action)}
    fields["pack_path"] = str(action.pack_path)
    return json.loads(json.dumps(fields, default=str))


def kept_action(record: Mapping[str, Any]) -> Action | None:
    """The action a workflow run started as, kept with it (`_action_record`); None when it kept none
    (a run started before runs kept theirs, or a record no longer fitting `Action`)."""
    kept = ((record.get("spec") or {}).get(KEPT) or {}).get("action")
    if not isinstance(kept, dict) or not isinstance(kept.get("pack_path"), str):
        return None
    names = {field.name for field in dataclasses.fields(Action)}
    try:
        return Action(**{**{k: v for k, v in kept.items() if k in names}, "pack_path": Path(kept["pack_path"])})
    except TypeError:  # a field it lacks
        return None


def check_entry_point(kind: str, path: Path, display: str) -> None:
    """At pack load: reject a workflow file with a syntax error, an unknown task, or a cycle without
    exit (raises `ContentInvalid` naming file, task and reason). An unreachable task is refused in
    Orquesta and Mistral, and only logged as a warning in an ActionChain, as StackStorm loads those."""
    load_spec(kind, path, display)


def _waited(record: Mapping[str, Any] | None) -> bool:
    """Whether a task's child waited before it ended: `pending` (an inquiry until its answer) or `paused`
    (a sub-workflow), so its workflow paused on it and went on after a resume."""
    return record is not None and any(isinstance(entry, dict) and entry.get("status") in _WAITING
                                      for entry in record.get("log") or [])


def _cancel_asked_at(record: Mapping[str, Any]) -> datetime | None:
    """When the workflow's cancel was asked (its log's last `canceling`), or None: the tasks that ended later
    are replayed to a canceled conductor, so they start nothing."""
    asked = [e["timestamp"] for e in record.get("log") or [] if e.get("status") == "canceling"]
    return datetime.fromisoformat(asked[-1].replace("Z", "+00:00")) if asked else None


def _crashed(record: dict[str, Any]) -> bool:
    """A child abandoned because its process or worker went away (a stop, a worker's drain, a reaper, a
    recovery: `ABANDONED_BY` in its result): it did not finish, so it runs again. Read from that mark, not
    the error's words: a drain's error names the worker, not 'Squall s…', and failed its workflow. A child an
    earlier Squall abandoned so, before the mark, is known by the words it then stored (`_STOPPED_BEFORE`)."""
    result = record.get("result")
    if record["status"] != "abandoned" or not isinstance(result, dict):
        return False
    return ABANDONED_BY in result or str(result.get("error") or "").startswith(_STOPPED_BEFORE)


@dataclass
class _Replay:
    order: tuple[Any, str]
    key: str
    record: dict[str, Any]

    def __lt__(self, other: _Replay) -> bool:
        return self.order < other.order


@dataclass
class _Replayed:
    """What `Flow.replay` leaves to do: the calls to request, those to request again (their child was
    abandoned by a stop), the children requested and never claimed, whether a replayed task was canceled,
    and whether the cancel asked of a stepped workflow is still to be applied to its conductor; and (key,
    child) of each child it found not ended (live, waiting) or abandoned by a stop, oldest first."""

    to_request: list[TaskCall]
    again: list[TaskCall]
    unclaimed: list[str]
    canceled_task: bool
    cancel_pending: bool
    unfinished: list[tuple[str, dict[str, Any]]]


class Flow:
    """One workflow execution being conducted in this process."""

    def __init__(self, service: WorkflowService, request: RunRequest, conductor: Conductor,
                 revealed: list[str] | None = None) -> None:
        self.service = service
        self.request = request
        self.id = request.execution_id
        self.conductor = conductor
        #: A step is running on a render thread: a cancel asked meanwhile is applied after it (`cancel_conductor`).
        self._in_step = False
        self._cancel_after_step = False
        #: The last step handed to a render thread: it runs on there if its task is canceled (`_step_ended`).
        self._running: Future[Any] | None = None
        #: The values of its own `secret: true` parameters and the credentials of its `headers` and `cookies`
        #: (sealed with it, so no step seals them again): its tasks get them as secrets to mask, as they get
        #: `revealed`, for a task's own parameter (a `cmd`, a `message`, a `body`) that the workflow hands
        #: them to is not secret.
        self.secrets: tuple[str, ...] = tuple(_secret_texts(request))
        #: The datastore values decrypted for this workflow: sealed with it (what earlier steps, its own
        #: parameters and its parent revealed), then what its conductor decrypts (`decrypt_kv`, `st2kv`)
        #: and its pack's secret config values its tasks are handed (`_config_secrets_held`).
        #: Its tasks get them as secrets to mask; its result is scrubbed of them.
        self.revealed: list[str] = revealed if revealed is not None else []
        #: Those its record holds sealed already, and how long `revealed` was when they were (`_seal_revealed`).
        self._sealed: set[str] = set(self.revealed)
        self._seen = len(self.revealed)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.live: dict[str, str] = {}  # child id -> key
        self.waiting: dict[str, str] = {}  # child id -> key: pending inquiries, paused sub-workflows
        self.waiting_status: dict[str, str] = {}  # child id -> `pending` or `paused`: why it pauses (`paused_by`)
        self.calls: dict[str, TaskCall] = {}  # key -> the call a live or waiting child answers
        self.pausing = False
        self.pause_requested = False
        #: Canceled (Orquesta): nothing new starts, running actions finish, then it ends `canceled`.
        self.cancel_requested = False
        #: When a cancel was asked for, for a step: tasks that ended later are replayed as canceled.
        self.canceled_at: datetime | None = None

    # -- requesting children -------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """How many workflows this one is nested in (0: a root); its children are one deeper."""
        depth = (self.request.context.get("parent") or {}).get("depth", 0)
        return depth if isinstance(depth, int) and not isinstance(depth, bool) else 0

    def _too_deep(self, call: TaskCall) -> str | None:
        """Why `call` may not be requested: it would start a workflow nested deeper than the limit
        (`WorkflowService.max_depth`), which only a workflow that calls itself without end reaches."""
        limit = self.service.max_depth
        if self.depth + 1 <= limit or not self.service._is_workflow(call):
            return None
        return (f'task "{call.task}" would start workflow {call.ref} nested {self.depth + 1} deep, past the '
                f"limit of {limit} nested workflows (workflows.max_depth): does a workflow call itself "
                "without an end? Give it a condition that stops the recursion, or raise the limit")

    def _child_context(self, call: TaskCall) -> dict[str, Any]:
        parent = self.request.context
        user = parent.get("user")
        context: dict[str, Any] = {
            "user": user,
            "parent": {"execution_id": self.id, "root_id": (parent.get("parent") or {}).get("root_id", self.id),
                       "user": user, "chat": parent.get("chat") or (parent.get("parent") or {}).get("chat"),
                       "depth": self.depth + 1},
            "workflow_task": {"key": call.key, "task": call.task},
            **call.context,
        }
        for name in ("api_user", "source_channel", "trace_context"):
            if name in parent:
                context[name] = parent[name]
        notify = self._child_notify(call)
        if notify is not None:
            context["notify"] = notify
        if "orquesta" in context:
            context["orquesta"]["workflow_execution_id"] = self.id
        return context

    def _child_notify(self, call: TaskCall) -> dict[str, Any] | None:
        """A task's `notify` as StackStorm decides it (spec §4); None leaves it to the task's action.

        What the workflow hands a task: Action-chain, nothing to tasks in `skip_notify`, else the
        task's own `notify` or the chain's; Orquesta, the workflow's to the tasks its `notify`
        parameter lists, nothing to the others; Mistral, the workflow's to tasks not in `skip_notify`.
        Then, as in StackStorm's `action_service.create_request`, the task's action's own `notify`
        wins unless the task is skipped (`_is_notify_skipped`: a chain's `skip_notify` task, an
        unlisted Orquesta task; never a Mistral task, whose `skip_notify` drops only the workflow's):
        a skipped task gets {}, which keeps its action's own `notify` from applying."""
        request = self.request
        runner_parameters = request.runner_parameters
        inherited = request.context.get("notify", request.action.notify)  # a nested workflow's own is inherited
        child = self.service.executions.registry.actions.get(call.ref)
        # For a skipped task: {} silences its action's own notify; None where it has none (no key stored).
        skipped: dict[str, Any] | None = {} if child is not None and child.notify else None
        runner = request.action.runner_type
        if runner == "action-chain":
            if call.task in (runner_parameters.get("skip_notify") or []):
                return skipped
            handed = call.context.get("notify") or inherited
        elif runner == "mistral-v2":  # a marker (a pause or a wait that happened) is no task of Mistral's
            marker = (call.context.get("mistral") or {}).get("marker")
            handed = None if marker or call.task in (runner_parameters.get("skip_notify") or []) else inherited
        else:
            if call.task not in (runner_parameters.get("notify") or []):
                return skipped
            handed = inherited
        if skipped is not None:  # not skipped: the action's own wins (over a chain task's, which its call carries)
            return child.notify  # type: ignore[union-attr]
        return handed or None

    async def _request(self, calls: list[TaskCall], crashed: bool = False) -> None:
        """Request children for new calls at once (their inserts share one commit); a call that
        cannot be requested (unknown action, bad parameters) fails its task right away. A call with
        a `delay` is a child `delayed` that long (seen, and cancelable, meanwhile). `crashed` calls
        replace children a stop abandoned mid-run: they were running, and a pause lets running tasks
        finish, so they are requested even while pausing (what they lead to is not). Once a cancel was
        asked, nothing new starts (StackStorm's `canceling`): a step that was running when it was asked
        (on a render thread) may have returned calls its conductor, canceled after it, would not make.
        Nor while Squall stops (`ExecutionService.stopping`): a task asked for now could not start before
        the stop anyway; the tasks that end meanwhile are stored, and the next start's conductor, replaying
        them, asks for what follows."""
        while calls:
            if self.service.executions.stopping:
                return  # Squall stops: the next start conducts it on from its stored tasks
            if self.cancel_requested and not crashed:
                return  # canceled: what never started never will
            if self.pausing and not crashed:
                return  # they are asked for again when the workflow resumes
            crashed = False
            self._config_secrets_held(calls)
            await self._seal_revealed()
            secrets = (*self.secrets, *self.revealed)
            deep = {call.key: why for call in calls if (why := self._too_deep(call)) is not None}
            requests = asyncio.gather(*(
                self._refused(deep[c.key]) if c.key in deep else self.service.executions.request(
                    c.ref, c.parameters, self._child_context(c), parent=self.id, delay=c.delay, secrets=secrets)
                for c in calls), return_exceptions=True)
            try:
                outcomes = await asyncio.shield(requests)
            except asyncio.CancelledError:
                self._known_live(calls, await requests)
                raise
            self._pauses_asked()
            requested, calls, fresh = calls, [], []
            for call, outcome in zip(requested, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    from engine.executions import StaleStep

                    if isinstance(outcome, (asyncio.CancelledError, StaleStep)):  # a stale step stops whole
                        raise outcome
                    calls += await self._answer(call.key, "failed", {"error": str(outcome)}, None)
                elif outcome["status"] in COMPLETED:  # canceled at once (a policy), or finished already
                    calls += await self._answer(call.key, outcome["status"], outcome["result"], outcome)
                else:
                    self.live[outcome["id"]] = call.key
                    self.calls[call.key] = call
                    fresh.append(outcome["id"])
            if self.cancel_requested and fresh:  # canceled while they were requested: they stop too
                await self.service.cancel_all(fresh, graceful=True)

    def _known_live(self, calls: list[TaskCall], outcomes: list[Any]) -> None:
        """The run's task was canceled while these calls were requested (an ActionChain's cancel stops its
        task): the requests complete (shielded), and the children they stored are known live, so the
        cancel's `cancel_children` reaches them. Interrupted instead, a child stored but not yet handed
        over stayed `requested` under its canceled workflow, neither run nor canceled."""
        for call, outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, dict) and outcome["status"] not in COMPLETED:
                self.live[outcome["id"]] = call.key

    def _config_secrets_held(self, calls: list[TaskCall]) -> None:
        """Join to `revealed` the secret config values of the workflow's pack that the calls' parameters hold,
        as a request's own do (`ExecutionService._resolve`): an ActionChain's templates see the pack's config
        as `config_context`, and a task's action, of another pack or not, is told of them only as revealed
        (its parameters masked and sealed, its output scrubbed). A pack with none costs a look-up; texts
        revealed already (a workflow parameter's default read them) are not looked for again."""
        texts = [text for text in self.service.executions.config_secrets(self.request.action.pack)
                 if text not in self.revealed]
        if not texts:  # most workflows
            return
        held = {text for call in calls for text in held_texts(call.parameters, texts)}
        self.revealed.extend(text for text in texts if text in held)

    @staticmethod
    async def _refused(why: str) -> dict[str, Any]:
        """A call refused before its request (`_too_deep`): its task fails with `why`."""
        raise ValueError(why)

    async def _answer(self, key: str, status: str, result: Any, child: dict[str, Any] | None) -> list[TaskCall]:
        """Tell the conductor a task ended; `child` is its execution (None: it could not be requested). An
        inquiry's secret answers, stored masked, are unsealed first (`_given_answers`): they are the workflow's."""
        if child is not None and child.get("runner") == INQUIRER:
            status, result = await self._given_answers(child, status, result)
        return await self._step(self._answering(key, status, result, child))

    async def _given_answers(self, child: dict[str, Any], status: str, result: Any) -> tuple[str, Any]:
        """The inquiry's (status, result) with its secret answers as they were given: its row stores them
        masked and sealed (`engine.inquiries.sealing`), `child` is the row (replayed) or the record its end
        published, which has no `sealed`. A row stored before answers were sealed has them in clear. Answers
        the key file can no longer unseal fail the task, saying so: the workflow must not go on with `********`
        for a PIN."""
        if not isinstance(result, dict) or not holds_secret(result.get("schema")):
            return status, result
        executions = self.service.executions
        row = child if "sealed" in child else await executions.db(executions.db.store.get_execution, child["id"])
        try:
            return status, answered_with(result, executions.unseal_answers(row or {}))
        except CryptoError as exc:
            return "failed", {**result, "error": f"the answers to inquiry {child['id']} are sealed under a key the "
                                                 f"key file no longer holds ({exc}): restore the key file that "
                                                 "sealed them"}

    def _answering(self, key: str, status: str, result: Any,
                   child: dict[str, Any] | None) -> Callable[[], list[TaskCall]]:
        """The conductor's step for a task that ended. An ActionChain's also records when the child was
        requested and last changed (`created_at`, `updated_at` in its `tasks`, as StackStorm's).
        An inquiry's secret answers join `revealed` first (`_answered_secrets`)."""
        if child is not None and child.get("runner") == INQUIRER:
            self.revealed.extend(_answered_secrets(result))
        child_id = child["id"] if child is not None else None
        if not isinstance(self.conductor, chain.ChainConductor):
            return functools.partial(self.conductor.on_done, key, status, result, child_id)
        if child is None:  # refused at once: requested and ended now
            created = updated = _stamp(_now())
        else:
            created = _stamp(child.get("start_timestamp"))
            updated = _stamp(child.get("end_timestamp")) or created
        return functools.partial(self.conductor.on_done, key, status, result, child_id, created_at=created,
                                 updated_at=updated, resumed=_waited(child))

    async def _step(self, step: Callable[..., T], *args: Any) -> T:
        """One step of the conductor (`start`, `on_done`, `outcome`), on a render thread, so the
        expressions it evaluates never hold the event loop. If the flow's task is canceled meanwhile, a
        step not started yet never starts, and one under way runs on (`_step_ended` waits for it)."""
        self._in_step = True
        try:
            context = contextvars.copy_context()  # the log context, and `_revealing`'s bucket set in the thread
            self._running = render_pool().submit(context.run, self._budgeted_step, step, *args)
            return await asyncio.wrap_future(self._running)
        finally:
            self._in_step = False
            if self._cancel_after_step:
                self._cancel_after_step = False
                self.conductor.cancel()  # type: ignore[attr-defined]

    def _budgeted_step(self, step: Callable[..., T], *args: Any) -> T:
        """The step on its render thread, within one `templates.max_seconds` for all the expressions it
        evaluates (each nested in its budget shares it): one step evaluates any number of them (a
        with-items builds every item's input at once), and a limit per expression would let it hold a
        render thread, and so every other workflow's steps, for as long as its data chose."""
        budget = start_budget()
        try:
            return self._revealed_step(step, *args)
        finally:
            end_budget(budget)

    def _revealed_step(self, step: Callable[..., T], *args: Any) -> T:
        """The step, with what it decrypts collected into `revealed` (`_revealing`)."""
        with self._revealing():
            return step(*args)

    async def _step_ended(self) -> None:
        """Wait for the step that was under way when the flow's task was canceled (it runs on, on its
        render thread): whatever reads the conductor next must not read it while that step changes it."""
        running = self._running
        if running is not None and not running.done():
            await asyncio.wait([asyncio.wrap_future(running)])

    def _pauses_asked(self) -> None:
        """Carry out the pauses its conductor asked for in its steps (Mistral's `pause-before` and `pause`,
        `mistral.DeferredPause`): here on the loop, between steps, once their calls were requested."""
        fire = getattr(getattr(self.conductor, "request_pause", None), "fire", None)
        if fire is not None:
            fire()

    def cancel_conductor(self) -> None:
        """Cancel the conductor (Orquesta's: nothing new starts); while a step runs on a render thread,
        once it returns, so that only one thread at a time ever uses the conductor."""
        if self._in_step:
            self._cancel_after_step = True
        else:
            self.conductor.cancel()  # type: ignore[attr-defined]

    def _revealing(self) -> contextlib.AbstractContextManager[None]:
        """Around the conductor's work: what its templates' `decrypt_kv` reveals (an ActionChain's) joins
        `revealed` (Orquesta's and Mistral's `st2kv` lookups add theirs themselves, `WorkflowService._st2kv`)."""
        return self.service.executions.revealing(self.revealed)

    async def _seal_revealed(self) -> None:
        """Seal what the conductor revealed since with the workflow's record, before a task that may hold
        it is requested: a later step (another worker's, or after a restart) starts from it."""
        if len(self.revealed) == self._seen:
            return
        self.revealed[:] = dict.fromkeys(self.revealed)  # in place: a text decrypted again on each replay, once
        fresh = [text for text in self.revealed if text not in self._sealed]
        if fresh:
            executions = self.service.executions
            await executions.db(executions.seal_revealed, self.id, fresh)
            self._sealed.update(fresh)
        self._seen = len(self.revealed)

    async def interrupted_result(self) -> dict[str, Any] | None:
        """A workflow stopped by a cancel keeps what it did, as a cancel it saw to its end stores it: an
        ActionChain its `tasks` (and `published`), as StackStorm's does, an Orquesta workflow its `output`
        so far (`_kept`). Once the step under way when it was canceled returned (`_step_ended`), the
        children the cancel just ended are recorded too, in one step on a render thread (each may publish);
        nothing starts any more. An Orquesta workflow `canceling` whose task was cut (a worker's drain that
        ran out) ended with the error alone, its `output` lost. None for Mistral (its result on a cancel is
        its own runner's business)."""
        from engine.workflows.orquesta import OrquestaConductor  # loaded already: a workflow runs

        if not isinstance(self.conductor, chain.ChainConductor | OrquestaConductor):
            return None
        await self._step_ended()
        ended: list[Callable[[], list[TaskCall]]] = []
        while not self.events.empty():
            event = self.events.get_nowait()
            key = self.live.pop(event["id"], None) or self.waiting.pop(event["id"], None)
            if key is not None and event.get("status") in COMPLETED:
                ended.append(self._answering(key, event["status"], event.get("result"), event))
        return await self._step(self._kept, ended)

    def _kept(self, ended: list[Callable[[], list[TaskCall]]]) -> dict[str, Any]:
        """`interrupted_result`'s step: the conductor told what `ended` (the calls it returns never start), then
        what it did, without its error (the cancel is the error): a chain's snapshot; an Orquesta workflow's
        canceled outcome (`{"output": ...}`, as its cancel seen to the end stores it), its conductor canceled
        first, if it was not, so that it renders the output of a cancel."""
        for answer in ended:
            answer()
        if not isinstance(self.conductor, chain.ChainConductor):
            self.conductor.cancel()  # type: ignore[attr-defined]
            return dict(self.conductor.outcome().result)
        snapshot: dict[str, Any] = self.conductor.snapshot()
        snapshot.pop("error", None)
        return snapshot

    # -- conducting ---------------------------------------------------------------------------
    async def conduct(self) -> RunOutcome:
        replayed = await self.replay()
        if self.waiting:
            self.pausing = True
        to_request, again = replayed.to_request, replayed.again
        self._start_nothing_if_canceled(replayed.cancel_pending, to_request, again)
        if replayed.canceled_task and self.service.stepping:
            await self._canceled_task()
        await self._request(again, crashed=True)
        await self._request(to_request)
        executor = self.service.executions.executor
        for child_id in replayed.unclaimed if executor is not None else ():
            await executor.submit(child_id)
        return await self._loop()

    async def replay(self) -> _Replayed:
        """The conductor started and told every stored child that ended, in the order they ended (the first
        half of `conduct`, which requests what it returns; `WorkflowService.kept_result` requests nothing):
        the live and waiting children noted in `live` and `waiting`, the calls still to make returned."""
        store = self.service.executions.db.store
        children = await self.service.executions.db(store.list_executions, parent=self.id, limit=10_000_000)
        reset = set(self.request.context.get("workflow_reset") or [])
        existing: dict[str, dict[str, Any]] = {}
        for child in sorted(children, key=lambda c: c["id"]):
            key = (child.get("context") or {}).get("workflow_task", {}).get("key")
            if key and child["id"] not in reset:
                existing[key] = child  # the latest child of a key wins
        replay: list[_Replay] = []
        to_request: list[TaskCall] = []
        again: list[TaskCall] = []  # their child was abandoned by a stop: they were running
        unclaimed: list[str] = []  # requested before a crash and never started: started here (claimed once)
        unfinished: list[tuple[str, dict[str, Any]]] = []

        def launch(calls: list[TaskCall]) -> None:
            for call in calls:
                self.calls[call.key] = call
                child = existing.pop(call.key, None)
                if child is None:
                    to_request.append(call)
                    continue
                if _crashed(child) or child["status"] not in COMPLETED:
                    unfinished.append((call.key, child))
                if _crashed(child):
                    again.append(call)
                elif child["status"] in COMPLETED:
                    order = (child.get("end_timestamp") or child["start_timestamp"], child["id"])
                    heapq.heappush(replay, _Replay(order, call.key, child))
                elif child["status"] in _WAITING:
                    self.waiting[child["id"]] = call.key
                    self.waiting_status[child["id"]] = child["status"]
                else:
                    self.live[child["id"]] = call.key
                    if child["status"] == "requested":
                        unclaimed.append(child["id"])

        launch(await self._step(self.conductor.start))
        canceled_task, cancel_pending = False, self.cancel_requested  # a step of a workflow canceled meanwhile
        while replay:
            item = heapq.heappop(replay)
            child = item.record
            if cancel_pending and (self.canceled_at is None or as_utc(item.order[0]) >= self.canceled_at):
                cancel_pending = False
                self.conductor.cancel()  # type: ignore[attr-defined]  # what ended since starts nothing
            canceled_task |= child["status"] == "canceled"
            launch(await self._answer(item.key, child["status"], child.get("result"), child))
        return _Replayed(to_request, again, unclaimed, canceled_task, cancel_pending, unfinished)

    def _start_nothing_if_canceled(self, cancel_pending: bool, *to_request: list[TaskCall]) -> None:
        """A step of a workflow canceled meanwhile starts no task: what ended after the cancel was
        replayed to a canceled conductor already; the conductor is canceled now for what ended
        before it, and no call is requested (a cancel that landed between a task's end and the
        next task's request must not start that next task)."""
        if not self.cancel_requested:
            return
        if cancel_pending:
            self.conductor.cancel()  # type: ignore[attr-defined]
        for calls in to_request:
            calls.clear()

    def _done(self) -> bool:
        if self.cancel_requested:  # what never started never will
            return not self.live and not self.waiting
        return self.conductor.finished and not self.live

    def _pause_first(self) -> bool:
        """A pause asked for wins over success: a workflow whose last tasks end while it is `pausing`
        ends `paused` (and a resume completes it), as StackStorm's Orquesta state machine has it."""
        from engine.workflows.orquesta import OrquestaConductor  # loaded already: a workflow runs

        conductor = self.conductor
        return (isinstance(conductor, OrquestaConductor) and self.pause_requested
                and not self.cancel_requested and not conductor.failing)

    async def _loop(self) -> RunOutcome:
        while True:
            if self._done() and not self._pause_first():
                return await self._outcome()
            if self.pausing and not self.live:
                return RunOutcome("paused", {**self.conductor.snapshot(), "paused_by": self._paused_by()})
            self._pauses_asked()  # before the loop's next turn, where they took effect when steps ran on it
            if self.service.stepping and self.events.empty():
                return RunOutcome(WAITING_ON_TASKS, None)  # the next step is queued when a task ends
            event = await self.events.get()
            await self._handle(event)

    async def _outcome(self) -> RunOutcome:
        """The conductor's outcome. A cancel asked while it was taken on a render thread is applied
        after (`cancel_conductor`): the outcome is taken again from the canceled conductor, so that a
        workflow shown `canceling` ends `canceled`, never `succeeded`."""
        canceled = self.cancel_requested
        outcome = await self._step(self.conductor.outcome)
        if self.cancel_requested and not canceled:
            outcome = await self._step(self.conductor.outcome)
        return RunOutcome(outcome.status, outcome.result)

    def _paused_by(self) -> str:
        """Why it pauses, stored as `paused_by`: `request` (a pause asked of it: only a resume goes on),
        `inquiry` (a task of its own waits for an answer), or `child` (a sub-workflow of its own is
        paused). Only a `request` pause pauses sub-workflows, so only its resume resumes them."""
        if self.pause_requested:
            return "request"
        waiting = [self.waiting_status.get(child_id) for child_id in self.waiting]
        return "child" if waiting and "pending" not in waiting else "inquiry"

    async def _handle(self, event: dict[str, Any]) -> None:
        child_id = event["id"]
        key = self.live.pop(child_id, None) or self.waiting.pop(child_id, None)
        if key is None:
            return
        status = event["status"]
        if status in _WAITING:
            self.waiting[child_id] = key
            self.waiting_status[child_id] = status
            self.pausing = True
            return
        if _crashed(event) and key in self.calls:
            await self._request([self.calls[key]], crashed=True)
            return
        self.calls.pop(key, None)
        calls = await self._answer(key, status, event.get("result"), event)
        if not self.waiting and not self.pause_requested:
            self.pausing = False  # the answer came while other branches still ran
        if status == "canceled":
            await self._canceled_task()
        await self._request(calls)

    async def _canceled_task(self) -> None:
        """A task was canceled while others still run: the workflow shows `canceling` until they end
        (StackStorm's Orquesta does; the other tasks are not canceled)."""
        from engine.storage import iso, utcnow
        from engine.workflows.orquesta import OrquestaConductor  # loaded already: a workflow runs

        if self.cancel_requested or not self.live or not isinstance(self.conductor, OrquestaConductor):
            return
        self.cancel_requested = True
        executions = self.service.executions
        record = await executions.db(executions._find, self.id)
        entries = [*(record.get("log") or []), {"status": "canceling", "timestamp": iso(utcnow())}]
        await executions.db(executions.db.store.update_execution, self.id, {"status": "canceling", "log": entries},
                            expect=("running",))

    async def cancel_children(self, graceful: bool = False) -> None:
        """Cancel the children; `graceful` (an Orquesta cancel) leaves running actions to finish, as
        StackStorm does, and cancels only sub-workflows, queued or delayed tasks and inquiries."""
        await self.service.cancel_all([*self.live, *self.waiting], graceful=graceful)


class WorkflowRunner:
    """The `action-chain` and `orquesta` runners; both conduct through `WorkflowService`."""

    resumable = True

    def __init__(self, service: WorkflowService, kind: str) -> None:
        self.service = service
        self.kind = kind

    async def run(self, request: RunRequest) -> RunOutcome:
        return await self.service.run(self.kind, request)

    async def pause(self, execution_id: str) -> bool:
        if self.service.stepping:
            return await self.service.pause_stepped(execution_id)
        return self.service.pause(execution_id)

    async def cancel(self, execution_id: str) -> bool:
        """Cancel a workflow conducted here the way its kind cancels; False: stop its task instead."""
        if self.service.stepping:
            return await self.service.cancel_stepped(execution_id)
        return await self.service.cancel(execution_id)

    async def cancel_again(self, execution_id: str) -> None:
        """Take up the cancel of a workflow shown `canceling` already (`WorkflowService.cancel_again`)."""
        await self.service.cancel_again(execution_id)

    async def resume(self, execution_id: str) -> None:
        """A workflow resumes the sub-workflows its own pause paused, and the paused workflow above
        it that waited only on it (StackStorm's resume cascades up, never to peers)."""
        await self.service.resume_children(execution_id)
        await self.service.resume_parent(execution_id)

    def interrupted_result(self, execution_id: str) -> dict[str, Any] | None:
        """What a workflow stopped by a cancel had done, for its canceled result (taken once)."""
        return self.service.interrupted.pop(execution_id, None)

    async def kept_result(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """What a workflow ended `canceled` with its process gone had done (`WorkflowService.kept_result`)."""
        return await self.service.kept_result(record)

    def kept_action(self, record: Mapping[str, Any]) -> Action | None:
        """The action the run started as (`kept_action`): a run of an action since changed, or dropped
        from the pack as broken, goes on as it started; None: the registry's."""
        return kept_action(record)


class WorkflowService:
    """Conducts workflows of this process; `attach()` it to the ExecutionService once built."""

    def __init__(self) -> None:
        self.executions: ExecutionService | None = None  # type: ignore[assignment]
        #: The scale-out executor's jobs: workflows then conduct in steps (see the module's docstring).
        self.jobs: JobExecutor | None = None
        self.flows: dict[str, Flow] = {}
        #: What a workflow canceled midway had done, until its canceled result is stored (`interrupted_result`).
        self.interrupted: dict[str, dict[str, Any]] = {}
        self._pausing: set[asyncio.Future[None]] = set()
        #: How deep workflows may nest: a task that would start a workflow deeper fails (`Flow._too_deep`).
        #: How deep workflows may nest (`workflows.max_depth`): StackStorm sets no bound, so a workflow that
        #: calls itself recurses until something breaks; a task that would start a workflow deeper fails instead.
        self.max_depth = DEFAULT_WORKFLOW_MAX_DEPTH
        self.runners = {"action-chain": WorkflowRunner(self, "action-chain"),
                        "orquesta": WorkflowRunner(self, "orquesta"),
                        "mistral-v2": WorkflowRunner(self, "mistral-v2")}

    def attach(self, executions: ExecutionService, jobs: JobExecutor | None = None) -> None:
        self.executions = executions
        self.jobs = jobs
        executions.on_finished(self._on_finished)

    @property
    def stepping(self) -> bool:
        """Whether workflows conduct in steps, their tasks running as jobs on any worker."""
        return self.jobs is not None

    # -- building ----------------------------------------------------------------------------
    def _st2kv(self, user: str | None, revealed: list[str]) -> Any:
        """Orquesta's and Mistral's `st2kv(key, decrypt, default)`; a secret it decrypts joins `revealed`
        (the workflow's `Flow.revealed`), so that its tasks and its result mask it."""
        datastore = self.executions.datastore
        keys = self.executions.keys

        def lookup(key: str, decrypt: bool, default: Any) -> Any:
            bare = key[len("system."):] if key.startswith("system.") else key.removeprefix("user.")
            scope, name = ("system", bare) if key.startswith("system.") else ("user", f"{user}:{bare}")
            record = datastore.store.kv_get(scope, name, _now())
            if record is None:
                if default is not NO_DEFAULT:  # any default given, null too, as StackStorm's st2kv
                    return default
                raise KeyError(f'The key "{bare}" does not exist in the StackStorm datastore.')
            value = record["value"]
            if not (decrypt and record.get("secret")):
                return value
            plaintext = keys.decrypt(value)
            revealed.append(plaintext)
            return plaintext

        return lookup

    def _shell_command(self, ref: str) -> bool:
        action = self.executions.registry.actions.get(ref)
        return action is not None and action.runner_type in SHELL_COMMAND_RUNNERS

    def _conductor(self, kind: str, request: RunRequest, revealed: list[str], spec: Any) -> Conductor:
        """A conductor of `spec` (the run's definition, `_definition`) for this run."""
        context = request.context
        user = context.get("api_user") or context.get("user")
        if kind == "action-chain":
            service = self.executions
            base = service.template_context(request.pack_config, context)
            base["action_context"] = {"parent": {"execution_id": request.execution_id, **context}}
            base["system"] = base["st2kv"]["system"]
            return chain.ChainConductor(spec, dict(request.action_parameters), base, request.jinja,
                                        bool(request.runner_parameters.get("display_published", True)),
                                        shell_command=self._shell_command,
                                        action_exists=lambda ref: ref in service.registry.actions)
        from engine.workflows import mistral, orquesta  # loaded already by `_parse`

        if kind == "mistral-v2":
            return mistral.build(spec, request, self._st2kv(user, revealed), self._shell_command, self.pause)
        return orquesta.OrquestaConductor(spec, dict(request.action_parameters), _st2_context(request),
                                          self._st2kv(user, revealed), shell_command=self._shell_command,
                                          parent=dict(context))

    # -- running -----------------------------------------------------------------------------
    async def run(self, kind: str, request: RunRequest) -> RunOutcome:
        # A pause asked for before a restart (or since the last step) is in the stored status or log.
        record = await self.executions.db(self.executions.db.store.get_execution, request.execution_id) or {}
        revealed = self.executions.revealed(record)
        try:
            spec = await self._definition(kind, request, record)
            conductor = self._conductor(kind, request, revealed, spec)
        except ContentInvalid as exc:
            return RunOutcome("failed", {"error": f"invalid workflow: {exc}"})
        content_errors = await self._content_errors(kind, spec, record)
        if content_errors:  # as StackStorm's Orquesta runner fails a workflow its inspection refuses
            return RunOutcome("failed", {"output": None, "errors": content_errors})
        flow = Flow(self, request, conductor, revealed)
        status = record.get("status")
        if status == "pausing" or _pause_interrupted(record):
            flow.pausing = flow.pause_requested = True
            if status == "running":
                await self._pausing_again(record)
        if self.stepping and status == "canceling":  # a cancel asked for since the last step
            if getattr(conductor, "cancel", None) is None:  # an ActionChain: it keeps the tasks it ran
                kept = await self.kept_result(record)
                return RunOutcome("canceled", {**(kept or {}), "error": "canceled by request"})
            flow.canceled_at = _cancel_asked_at(record)
            flow.cancel_requested = True
        if not flow.cancel_requested and await self._parent_canceled(record):
            if getattr(conductor, "cancel", None) is None:
                return RunOutcome("canceled", {"error": "canceled by request: the workflow that started it was"})
            flow.cancel_requested = True  # it starts no task: what it conducts ends canceled at once
        self.flows[flow.id] = flow
        try:
            return await flow.conduct()
        except asyncio.CancelledError:
            if not getattr(self.executions.executor, "closing", False):
                await asyncio.shield(flow.cancel_children())
                kept = await asyncio.shield(flow.interrupted_result())
                if kept is not None:  # read by the ExecutionService as it records the cancel
                    self.interrupted[flow.id] = kept
            raise
        finally:
            self.flows.pop(flow.id, None)
            # Its result, as it is stored, is scrubbed of them (and of its secret parameters' values within an
            # object or a list, which the runner's own scrub, of each parameter's text, does not find).
            request.revealed.extend([*flow.secrets, *flow.revealed])

    async def kept_result(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """What a workflow ended `canceled` where it stood, its process gone, had done, as its own cancel
        would have stored it: an ActionChain's `tasks` and `published`, an Orquesta workflow's `output` (its
        conductor canceled from when the cancel was asked, `_cancel_asked_at`), replayed from its stored
        children (`Flow.replay`, nothing requested) into a conductor of the definition it kept, scrubbed as its
        end would be. The children it found unfinished are told ended as the cancel ends them: one abandoned
        by the stop as it is stored, one still live or waiting (its process died with the workflow's, or an
        inquiry) `canceled`, as a cancel seen through tells the conductor its tasks' ends. A workflow killed
        while `canceling` (recovery's and the sweep's `_end_orphaned`, a cancel of an orphan) ended with the
        error alone, what it had done lost. None for Mistral (its result on a cancel is its own runner's
        business), or when its run cannot be built again (logged: it ends with the error alone, as before)."""
        kind = record["runner"]
        if kind not in ("orquesta", "action-chain"):
            return None
        executions = self.executions
        try:
            revealed = executions.revealed(record)
            request, secrets = await executions.db(executions._run_request, record)
            conductor = self._conductor(kind, request, revealed, await self._definition(kind, request, record))
            flow = Flow(self, request, conductor, revealed)
            if kind == "orquesta":
                flow.cancel_requested, flow.canceled_at = True, _cancel_asked_at(record)
            replayed = await flow.replay()
            ended = [flow._answering(key, child["status"] if child["status"] in COMPLETED else "canceled",
                                     child.get("result"), child) for key, child in replayed.unfinished]
            kept = await flow._step(flow._kept, ended)
        except Exception:  # what it had done is a courtesy: its end must be stored all the same
            log.exception("workflow %s: what it had done could not be replayed for its canceled result; it ends "
                          "with the error alone", record["id"])
            return None
        return scrub(kept, scrubbable([*secrets, *flow.secrets, *revealed, *request.revealed]))

    async def _content_errors(self, kind: str, spec: Any, record: dict[str, Any]) -> list[dict[str, Any]]:
        """An Orquesta run's content errors (`orquesta.inspect_task_contents`: an action ref badly formed
        or not registered, a required input missing, an input the action does not take), checked at its
        first conduct only, before any task starts, as StackStorm inspects a workflow when it is
        requested. A run that kept its definition started already (a resume, an answer, a re-run, a
        restart): it is not failed afresh by a pack changed since. Nor is a run that stored none but has
        tasks (one started before runs kept theirs): its tasks ran, and what is wrong fails its task."""
        if kind != "orquesta" or KEPT in (record.get("spec") or {}):
            return []
        from engine.workflows import orquesta  # loaded already by `_parse`

        actions = self.executions.registry.actions

        def parameters_of(ref: str) -> orquesta.Parameters | None:
            action = actions.get(ref)
            return None if action is None else action.parameters

        errors = orquesta.inspect_task_contents(spec, parameters_of)
        if errors and record:
            store = self.executions.db.store
            if await self.executions.db(store.list_executions, parent=record["id"], limit=1):
                return []
        return errors

    async def _definition(self, kind: str, request: RunRequest, record: dict[str, Any]) -> Any:
        """The run's workflow definition, parsed. A run keeps the one it started with to its end (a
        resume, an answer, a restart, a re-run of its tasks), stored in its `spec` with its action at its
        first conduct, as StackStorm's workflow execution keeps its spec: a pack updated meanwhile, or
        broken, changes new runs only. A run without one (its first conduct, or a run started before
        runs kept theirs) reads its file, and keeps it from then on."""
        kept = (record.get("spec") or {}).get(KEPT)
        if isinstance(kept, dict) and isinstance(kept.get("definition"), str):
            return kept_spec(kind, kept["definition"], str(kept.get("file") or request.action.ref))
        path = request.action.entry_path
        display = str(path)
        try:
            text = path.read_text(encoding="utf-8")  # type: ignore[union-attr]  # a workflow runner needs one
        except (OSError, UnicodeDecodeError) as exc:
            raise ContentInvalid(ContentError(display, None, f"cannot read file: {exc}")) from exc
        spec = kept_spec(kind, text, display)  # checked at pack load; a file edited since is checked again
        if record:
            await self.executions.db(self._keep, record["id"], {"definition": text, "file": display,
                                                               "action": _action_record(request.action)})
        return spec

    def _keep(self, execution_id: str, kept: dict[str, Any]) -> None:
        """Store the run's definition and action with it (on the database thread), unless it has one."""
        store = self.executions.db.store
        record = store.get_execution(execution_id)
        if record is not None and KEPT not in (record.get("spec") or {}):
            store.update_execution(execution_id, {"spec": {**(record.get("spec") or {}), KEPT: kept}})

    async def _pausing_again(self, record: dict[str, Any]) -> None:
        """A workflow asked to pause when Squall stopped is claimed `running` (recovery marks it
        `resuming`, the one status a claim takes): it shows `pausing` again, as it was, so the steps
        after this one, a later restart and whoever looks see the pause still under way."""
        entries = [*(record.get("log") or []), {"status": "pausing", "timestamp": iso(_now())}]
        await self.executions.db(self.executions.db.store.update_execution, record["id"],
                                 {"status": "pausing", "log": entries}, expect=("running",))

    def pause(self, execution_id: str) -> bool:
        """Pause a workflow conducted here (a request, or its conductor's own: Mistral's
        `pause-before`). In steps, the pause is stored so the steps after this one keep it."""
        flow = self.flows.get(execution_id)
        if self.stepping:
            if flow is not None:
                flow.pausing = flow.pause_requested = True
            self._background(self._pause_children([execution_id]))
            return True
        if flow is None:
            return False
        flow.pausing = flow.pause_requested = True
        flow.events.put_nowait({"__wake__": True, "id": ""})
        # Sub-workflows pause with it (as StackStorm's do), or it would wait for them to finish.
        subflows = [child_id for child_id, key in flow.live.items() if self._is_workflow(flow.calls.get(key))]
        if subflows:
            self._background(self._pause_children(subflows))
        return True

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._pausing.add(task)
        task.add_done_callback(self._pausing.discard)

    async def pause_stepped(self, execution_id: str) -> bool:
        """A pause of a workflow conducted in steps (it is `pausing` already): its sub-workflows pause
        with it, and its next step, queued now, pauses it once no task runs."""
        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        if record is None or record["runner"] not in self.runners:
            return False
        children = await self.executions.db(store.list_executions, parent=execution_id, status=["running"],
                                            limit=100_000)
        await self._pause_children([c["id"] for c in children if c["runner"] in self.runners])
        await self.jobs.advance(execution_id)  # type: ignore[union-attr]
        return True

    async def cancel_stepped(self, execution_id: str) -> bool:
        """A cancel of a workflow conducted in steps (it is `canceling` already), the way its kind
        cancels: Orquesta's running actions finish and its next step ends it (see `cancel`); the
        others cancel their tasks and end at once."""
        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        if record is None or record["runner"] not in self.runners:
            return False
        graceful = record["runner"] == "orquesta"
        children = await self.executions.db(store.list_executions, parent=execution_id,
                                            status=[*_LIVE, *_WAITING], limit=100_000)
        await self.cancel_all([child["id"] for child in children], graceful=graceful)
        if not graceful:  # an ActionChain keeps the tasks it ran, as its cancel in one process does
            kept = await self.kept_result(record)
            await self.executions.complete(execution_id, "canceled", {**(kept or {}), **canceled_result(record)},
                                           ("canceling",))
            return True
        await self._cancel_root(record)
        await self.jobs.advance(execution_id)  # type: ignore[union-attr]
        return True

    async def _cancel_root(self, record: dict[str, Any]) -> None:
        """An Orquesta cancel goes up to the root workflow, as StackStorm's does."""
        from engine.executions import ExecutionStateError

        root = ((record.get("context") or {}).get("parent") or {}).get("root_id")
        if not root or root == record["id"]:
            return
        stored = await self.executions.db(self.executions.db.store.get_execution, root)
        if stored is None or stored["status"] == "canceling" or stored["status"] in COMPLETED:
            return  # canceling already (a second cancel of it would walk its whole tree again), or finished
        with contextlib.suppress(ExecutionStateError, LookupError):  # it moved meanwhile
            await self.executions.cancel(root)

    def _is_workflow(self, call: TaskCall | None) -> bool:
        action = self.executions.registry.actions.get(call.ref) if call is not None else None
        return action is not None and action.runner_type in self.runners

    async def _pause_children(self, child_ids: list[str]) -> None:
        from engine.executions import ExecutionStateError

        for child_id in child_ids:
            with contextlib.suppress(ExecutionStateError, LookupError):  # it finished meanwhile
                await self.executions.pause(child_id)

    async def resume_children(self, execution_id: str) -> None:
        """Resume the sub-workflows a pause of this workflow paused, before it conducts on: only when
        its own pause was asked for (`paused_by: request`), and only those paused since (one paused
        on its own before, by a request of its own, stays paused, and this workflow waits for it)."""
        from engine.executions import ExecutionStateError

        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        if record is None or (record.get("result") or {}).get("paused_by") != "request":
            return
        since = _last_entry(record, ("pausing", "running"))  # its pause was asked (Mistral's own: this run)
        for child in await self.executions.db(store.list_executions, parent=execution_id, status="paused",
                                              limit=100_000):
            if (child.get("result") or {}).get("paused_by") != "request":
                continue
            asked = _last_entry(child, ("pausing",))
            if since is not None and (asked is None or asked < since):
                continue
            with contextlib.suppress(ExecutionStateError, LookupError):
                await self.executions.resume(child["id"])

    async def resume_parent(self, execution_id: str) -> None:
        """A sub-workflow resumed: its paused parent goes on too, once nothing else of its own waits
        (a pending inquiry, another paused sub-workflow); the parent then waits for this one to end."""
        from engine.executions import ExecutionStateError

        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        parent_id = (record or {}).get("parent")
        if not parent_id:
            return
        parent = await self.executions.db(store.get_execution, parent_id)
        if parent is None or parent["status"] != "paused" or parent["runner"] not in self.runners:
            return
        if await self.executions.db(store.list_executions, parent=parent_id, status=list(_WAITING), limit=1):
            return
        with contextlib.suppress(ExecutionStateError, LookupError):  # resumed or canceled meanwhile
            await self.executions.resume(parent_id)

    async def cancel(self, execution_id: str) -> bool:
        """An Orquesta cancel, as StackStorm's: the workflow stays `canceling` while its running
        actions finish, its sub-workflows are canceled too, and the cancel goes up to the root
        workflow. False if the workflow is not conducted here or its conductor cancels otherwise."""
        flow = self.flows.get(execution_id)
        cancel = getattr(flow.conductor, "cancel", None) if flow is not None else None
        if flow is None or cancel is None:
            return False
        if flow.cancel_requested:
            return True
        flow.cancel_requested = True
        flow.cancel_conductor()
        flow.events.put_nowait({"__wake__": True, "id": ""})
        await flow.cancel_children(graceful=True)
        await self._cancel_root({"id": execution_id, "context": flow.request.context})
        return True

    async def cancel_again(self, execution_id: str) -> None:
        """A cancel of a workflow `canceling` already (a cancel that failed midway, a crash after it was
        stored) is taken up again: its conductor here is canceled if it was not, and every live
        child stored under it is canceled, down the whole tree (`cancel_all`), instead of a refusal
        ("already canceling") that left the tree under it running for ever."""
        flow = self.flows.get(execution_id)
        if flow is not None and not flow.cancel_requested and getattr(flow.conductor, "cancel", None) is not None:
            await self.cancel(execution_id)
            return
        store = self.executions.db.store
        record = await self.executions.db(store.get_execution, execution_id)
        if record is None or record["status"] != "canceling":
            return
        children = await self.executions.db(store.list_executions, parent=execution_id,
                                            status=[*_LIVE, *_WAITING], limit=100_000)
        await self.cancel_all([child["id"] for child in children], graceful=record["runner"] == "orquesta")

    async def cancel_all(self, child_ids: list[str], graceful: bool = False) -> None:
        """Cancel these children (`cancel_child`), and through them their descendants, breadth-first in
        one loop: a sub-workflow canceled meanwhile hands its own children to this walk (`_CANCEL_WALK`)
        rather than canceling them in a call of its own, so a workflow nested thousands deep (one that
        calls itself) is canceled without one Python call level per nesting level (a RecursionError)."""
        walk = _CANCEL_WALK.get()
        if walk is not None and walk.open:
            walk.queue.extend((child_id, graceful) for child_id in child_ids)
            return
        walk = _CancelWalk(collections.deque((child_id, graceful) for child_id in child_ids))
        token = _CANCEL_WALK.set(walk)
        try:
            while walk.queue:
                child_id, gracefully = walk.queue.popleft()
                await self.cancel_child(child_id, graceful=gracefully)
        finally:
            walk.open = False
            _CANCEL_WALK.reset(token)

    async def _parent_canceled(self, record: Mapping[str, Any]) -> bool:
        """Whether a workflow above this one, at any height, is canceling or canceled: a sub-workflow
        started (or resumed) under it then requests nothing. Not only the workflow that started it: a
        cancel that failed midway, or a crash, leaves the levels between `paused` or `running` under the
        canceled root, and a grandchild resumed meanwhile conducted on inside the canceled tree."""
        if not record.get("parent"):
            return False
        return await self.executions.db(canceled_above, self.executions.db.store, record["parent"]) is not None

    async def cancel_child(self, child_id: str, graceful: bool = False) -> None:
        from engine.executions import ExecutionStateError

        try:
            record = await self.executions.get(child_id)
            if graceful and record["runner"] not in self.runners and record["status"] in ("running", "canceling"):
                return  # a running action finishes (StackStorm lets it exit gracefully)
            if record["status"] == "pending":
                await self.executions.complete(child_id, "canceled", {**(record.get("result") or {}),
                                                                      "error": "the workflow was canceled"},
                                               ("pending",))
            elif record["status"] not in COMPLETED:
                await self.executions.cancel(child_id)
        except (ExecutionStateError, LookupError):
            pass

    def _on_finished(self, record: dict[str, Any]) -> Any:
        parent = record.get("parent")
        if parent and self.stepping:
            return self._step_on(parent, record)
        if parent:
            flow = self.flows.get(parent)
            if flow is not None:
                flow.events.put_nowait(record)
                return None
            if record["status"] in COMPLETED:
                return self._child_ended(parent, record)
        if record["runner"] in self.runners and record["status"] == "canceled":
            return self._cancel_leftovers(record["id"])
        if record["runner"] in self.runners and record["status"] == "paused":
            # An answer given in another process (`squall inquiry respond`) while other tasks still ran
            # was heard only there: if nothing is pending any more, conduct it on now.
            return self._wake_paused(record["id"])
        return None

    async def _step_on(self, parent_id: str, record: dict[str, Any]) -> None:
        """A task of a workflow conducted in steps ended (or waits for an answer): queue the
        workflow's next step, or wake it if it is paused and this was the answer it waited for."""
        parent = await self.executions.db(self.executions.db.store.get_execution, parent_id)
        if parent is None:
            return
        if parent["status"] == "paused":
            if record["status"] in COMPLETED:
                await self._wake_paused(parent_id)
        else:
            await self.jobs.advance(parent_id)  # type: ignore[union-attr]
        if record["runner"] in self.runners and record["status"] == "canceled":
            await self._cancel_leftovers(record["id"])

    async def _child_ended(self, parent_id: str, record: dict[str, Any]) -> None:
        """A child of a workflow no flow here conducts ended: its paused parent is woken, and a
        sub-workflow canceled with its parent cancels its own children, or a paused one among them
        would wait for ever (`_step_on` does both, in steps)."""
        await self._wake_paused(parent_id)
        if record["runner"] in self.runners and record["status"] == "canceled":
            await self._cancel_leftovers(record["id"])

    async def _wake_paused(self, parent_id: str) -> None:
        """A child of a paused workflow finished (an inquiry was answered): conduct it on, unless
        something of its own still waits: a pending inquiry, or a paused sub-workflow (for an answer
        further down, or paused by request). Resumed while one waits, it would pause again at once,
        and its pause would wake it again: a loop until the answer came."""
        from engine.executions import ExecutionStateError

        try:
            parent = await self.executions.get(parent_id)
            if parent["status"] != "paused" or parent["runner"] not in self.runners:
                return
            store = self.executions.db.store
            children = await self.executions.db(store.list_executions, parent=parent_id, status=list(_WAITING),
                                                limit=1)
            if children:
                return  # still waiting on another answer, or on a paused sub-workflow
            if (parent.get("result") or {}).get("paused_by") == "request":
                return
            await self.executions.resume(parent_id)
        except (ExecutionStateError, LookupError):
            log.debug("workflow %s was not resumed", parent_id, exc_info=True)

    async def _cancel_leftovers(self, workflow_id: str) -> None:
        store = self.executions.db.store
        children = await self.executions.db(store.list_executions, parent=workflow_id,
                                            status=[*_LIVE, *_WAITING], limit=100_000)
        await self.cancel_all([child["id"] for child in children])

    # -- re-run from failed tasks -----------------------------------------------------------------
    async def rerun(self, execution_id: str, tasks: list[str] | None = None,
                    audit: AuditEntry | None = None) -> dict[str, Any]:
        """Conduct a finished workflow again, in place: children of `tasks` (default: the tasks
        whose latest run failed) are forgotten and run again; every other finished task is kept. The
        workflow is answered `requested` while it waits for its claim (stored `resuming`), as a client
        that waits for a re-run waits for StackStorm's new execution.

        `audit` (who asked, from where) is stored in the transaction that sets the workflow `resuming`
        (`_reset_with`): a re-run the database did not take leaves no event and conducts nothing, and none
        is made without its event. Written after it, an event that failed left a re-run nobody was audited
        for, logged whole, and a retry of a caller told it failed re-ran the workflow again."""
        from engine.executions import ExecutionStateError
        from engine.storage import iso, utcnow

        executions = self.executions
        record = await executions.db(executions._find, execution_id)
        if record["runner"] not in self.runners:
            raise ExecutionStateError(f'execution {record["id"]} is not a workflow; re-run it whole instead')
        if record["status"] not in ("failed", "timeout", "canceled", "abandoned", "succeeded"):
            raise ExecutionStateError(f'execution {record["id"]} is {record["status"]}; it has not finished')
        store = executions.db.store
        children = await executions.db(store.list_executions, parent=record["id"], limit=10_000_000)
        latest: dict[str, dict[str, Any]] = {}
        for child in sorted(children, key=lambda c: c["id"]):
            task = (child.get("context") or {}).get("workflow_task", {}).get("task")
            if task:
                latest.setdefault(task, child)
                if child["status"] != "succeeded" or latest[task]["status"] == "succeeded":
                    latest[task] = child
        if tasks is None:
            tasks = [t for t, c in latest.items() if c["status"] != "succeeded"]
        unknown = [t for t in tasks if t not in latest]
        if unknown:
            raise ExecutionStateError(f"no task {', '.join(unknown)} ran in workflow {record['id']} "
                                      f"(tasks: {', '.join(sorted(latest))})")
        reset = [c["id"] for c in children
                 if (c.get("context") or {}).get("workflow_task", {}).get("task") in set(tasks)]
        context = {**record["context"], "workflow_reset": [*(record["context"].get("workflow_reset") or []), *reset],
                   "re-run": {"ref": record["id"], "tasks": tasks}}
        log_entries = [*(record.get("log") or []), {"status": "resuming", "timestamp": iso(utcnow())}]
        fields = {"status": "resuming", "context": context, "log": log_entries, "end_timestamp": None}
        if not await executions.db(_reset_with, store, record, fields, audit):
            raise ExecutionStateError(f"execution {record['id']} changed meanwhile; try again")

        async def conduct() -> None:
            if executions.executor is not None:
                executions.conducting.add(record["id"])
                await executions.executor.submit(record["id"])

        # Committed with its event: a database failure from here on is logged (the poll takes `resuming` up),
        # never answered as if nothing had been re-run.
        answer = await executions._then(record, fields, "conducting its re-run", conduct)
        # Stored `resuming`, the status a claim and recovery take up, but answered `requested` until claimed:
        # StackStorm's re-run of tasks answers a new execution, `requested`, and st2client waits only while an
        # execution is requested, scheduled, running or canceling (`_get_execution_result`): told `resuming`,
        # `st2 execution re-run --tasks` returned at once, exit 0, however the re-run then ended.
        return {**answer, "status": "requested"} if answer["status"] == "resuming" else answer


def canceled_above(store: Store, execution_id: str | None) -> dict[str, Any] | None:
    """The first of `execution_id` and the workflows above it, up to its root, that is canceling or
    canceled (its record), or None. On the database thread, one call whatever the depth (`_first_above`)."""
    return _first_above(store, execution_id, ("canceling", "canceled"))


def ended_above(store: Store, execution_id: str | None) -> dict[str, Any] | None:
    """The first of `execution_id` and the workflows above it, up to its root, that has ended (any end:
    `COMPLETED`), or None: what the poll asks before it runs a task stored under them, as recovery cancels
    whatever is left under a workflow that ended (`ExecutionService._cancel_under_ended`). On the database
    thread, one call whatever the depth (`_first_above`)."""
    return _first_above(store, execution_id, COMPLETED)


def _first_above(store: Store, execution_id: str | None, statuses: frozenset[str] | tuple[str, ...]
                 ) -> dict[str, Any] | None:
    """The first of `execution_id` and the executions above it, up to its root, whose status is one of
    `statuses` (its record), or None. A loop over `parent` ids, one lookup each, no recursion, for a tree (a
    workflow that calls itself) may be thousands deep. An id met twice (a corrupt loop of parents) ends the walk."""
    seen: set[str] = set()
    while execution_id and execution_id not in seen:
        seen.add(execution_id)
        record = store.get_execution(execution_id)
        if record is None:
            return None
        if record["status"] in statuses:
            return record
        execution_id = record.get("parent")
    return None


def _reset_with(store: Store, record: dict[str, Any], fields: dict[str, Any], audit: AuditEntry | None) -> bool:
    """A finished workflow's `fields` for its re-run in place (`WorkflowService.rerun`), while its status is
    still the one read, and `audit` about it, with the action and the parameters as stored (secrets masked),
    as a request's event says them: one transaction (`AuditEntry.together`), so one failing leaves neither.
    False, and no event, if the workflow moved on meanwhile."""
    if audit is None:
        return store.update_execution(record["id"], fields, expect=(record["status"],))
    with AuditEntry.together(store):
        if not store.update_execution(record["id"], fields, expect=(record["status"],)):
            return False
        audit.add(store, record["id"], action=record["action"], parameters=record["parameters"])
    return True


def _secret_texts(request: RunRequest) -> list[str]:
    """The texts its tasks must mask of the workflow's own parameters: its `secret: true` parameters'
    values, every value inside an object or a list included (all of it is secret), and the credentials
    of its `headers` and `cookies` (`credential_texts`, which its own record shows masked: a task handed
    `ctx().headers.Authorization` in a `cmd` must not show it either). The request holds them unsealed
    already (`_run_request`), so a step reads and decrypts nothing for them, and a workflow with neither
    costs a look-up or two."""
    names = request.action.secret_names
    given = {**request.runner_parameters, **request.action_parameters}
    return [*credential_texts(given), *_leaf_texts([given[name] for name in names if name in given])]


def _leaf_texts(values: list[Any]) -> list[str]:
    """The texts of every string and number in `values`, inside objects and lists too (a secret object's
    values are all secret): what a workflow's tasks and its result must mask."""
    texts: list[str] = []
    pending = list(values)
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != "":
            texts.append(str(value))
    return texts


def _answered_secrets(result: Any) -> list[str]:
    """The values an inquiry's answers give to its schema's `secret: true` properties (a PIN asked for),
    its `response` and every answer in its `responses`. The inquiry shows them masked (`inquiries.shown`)
    and hands them to its workflow as given: the workflow masks them as it masks a datastore value it
    decrypted, in its tasks' parameters, output and result, and seals them with itself (`Flow.revealed`)."""
    if not isinstance(result, dict) or not holds_secret(result.get("schema")):
        return []
    schema = result["schema"]
    answers = [result.get("response"), *(entry.get("response") for entry in result.get("responses") or []
                                         if isinstance(entry, dict))]
    return _leaf_texts([hidden for answer in answers for hidden in _hidden(answer, masked(schema, answer))])


def _hidden(value: Any, shown: Any) -> list[Any]:
    """The parts of `value` that `shown` (it, as `inquiries.masked` shows it) masks."""
    if shown is MASK and value is not MASK:
        return [value]
    if isinstance(value, dict) and isinstance(shown, dict):
        return [part for key, item in value.items() for part in _hidden(item, shown.get(key))]
    if isinstance(value, list) and isinstance(shown, list):
        return [part for item, mask in zip(value, shown, strict=False) for part in _hidden(item, mask)]
    return []


def _st2_context(request: RunRequest) -> dict[str, Any]:
    """`ctx().st2` with the keys StackStorm's Orquesta runner gives it."""
    context = request.context
    action = request.action
    st2 = {"action_execution_id": request.execution_id, "workflow_execution_id": request.execution_id,
           "api_url": request.api_url, "user": context.get("user"), "pack": context.get("pack", action.pack),
           "action": action.ref, "runner": action.runner_type}
    for name in ("api_user", "source_channel"):
        if context.get(name):
            st2[name] = context[name]
    return st2


def _pause_interrupted(record: dict[str, Any]) -> bool:
    """Whether a pause was asked and Squall stopped before it was done: the log's last `pausing` is
    followed only by what recovery (`resuming`) and a claim (`running`) write."""
    for entry in reversed(record.get("log") or []):
        status = entry.get("status")
        if status not in ("requested", "scheduled", "running", "resuming"):
            return status == "pausing"
    return False


def _last_entry(record: dict[str, Any], statuses: tuple[str, ...]) -> datetime | None:
    """When the record's log last shows one of `statuses` (None if never)."""
    for entry in reversed(record.get("log") or []):
        if entry.get("status") in statuses and entry.get("timestamp"):
            return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00"))
    return None


def _now() -> Any:
    from engine.storage import utcnow

    return utcnow()


def _stamp(value: datetime | str | None) -> str | None:
    """A child's time as StackStorm's chain shows it: ISO 8601 UTC (a stored row has datetimes, a
    finished record's event has them as text already)."""
    if value is None or isinstance(value, str):
        return value
    return iso(as_utc(value))


__all__ = ["KVNamespace", "WorkflowService", "check_entry_point", "kept_spec", "load_spec"]
