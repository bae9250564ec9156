"""The engine assembled: one `Engine` object built from configuration — storage, packs, runners,
executions, rules, triggers, timers, sensors, workflows, inquiries and notifications.

It starts without any chat, HTTP or CLI code (a worker needs nothing else), and tells what
happened through `events` (`engine/events.py`); the chat side subscribes there. The CLI,
`squall serve`, the tests and the benchmarks all build it the same way (through
`bot.app.Squall`, the engine with chat in front), so what they exercise is what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa

from engine import audit_sinks, tracing
from engine.config import SYSTEM_PACKS_PATH, Config
from engine.crypto import KeyRing
from engine.datastore import Datastore, st2_ttl
from engine.events import ANNOUNCE, EXECUTION_FINISHED, FORMAT_RESULT, Events
from engine.executions import ExecutionService
from engine.executor import LocalExecutor
from engine.inquiries import InquirerRunner, InquiryService
from engine.jobs import JobExecutor
from engine.leader import leadership, leads
from engine.metrics import metrics
from engine.notifications import Notifier
from engine.packs import ContentWarning, Registry, load_registry
from engine.policies import PolicyExecutor
from engine.processes import owner_file_state, owner_name, process_identity
from engine.rules import RulesEngine
from engine.runners import LazyRunner, RunAs, RunRequest
from engine.runners.announcement import AnnouncementRunner
from engine.runners.noop import NoopRunner
from engine.runners.python import PythonRunner
from engine.runners.shell import LocalShellRunner
from engine.sensors import SensorContainer, load_sensors, startable_sensors
from engine.storage import Database, Store
from engine.templates import configure_limits, stop_renders
from engine.timers import TIMER_TYPES, TimerService, store_history
from engine.triggers import TriggerService
from engine.wakeups import PROCESS_NAME, SQUALL_SESSIONS
from engine.workflows.service import WorkflowService
from engine.yamlfile import ContentError

log = logging.getLogger(__name__)
#: The datastore changes StackStorm emits as `core.st2.key_value_pair.<kind>` triggers.
KV_CHANGES = ("create", "update", "delete", "value_change")
#: How long `close` waits for the trigger instances this process is processing: a rule's enforcement
#: takes milliseconds; what is not done by then is taken up by a `squall serve` (`TriggerService.recover`).
TRIGGER_SETTLE_SECONDS = 5.0
#: How long `close` waits for what the engine's listeners were told (`Events.settle`): a workflow a CLI command
#: canceled cancels its tasks in its listener, a tree of thousands in seconds. What is not done by then is
#: logged; `squall serve`'s next start cancels what an ended workflow left (`ExecutionService.recover`).
LISTENERS_SETTLE_SECONDS = 30.0


class Engine:
    """The running service's engine. Use `await Engine.start(config)` and `await engine.close()`."""

    def __init__(self, config: Config, store: Store, registry: Registry) -> None:
        self.config = config
        # Every render in the process keeps to them (rendering happens deep in the engine, in many places).
        configure_limits(config.template_limits)
        self.store = store
        self.db = Database(store)
        self.keys = KeyRing(config.encryption_key_path)
        self.datastore = Datastore(store, self.keys)
        self.registry = registry
        #: What happened, for whoever listens (the chat side): the one subscription interface.
        self.events = Events()
        metrics.configure(config)
        tracing.configure()  # on only when OTEL_* asks for it
        self.audit_sinks = audit_sinks.install(store, config)
        self.events.subscribe(EXECUTION_FINISHED, metrics.finished)
        #: Who local shell and Python actions start as: `runners.user`, if this process may switch users.
        self.run_as = action_account(config)
        self.python = PythonRunner(config.virtualenvs_path, config.python_workers_per_pack, self.action_call,
                                   self.run_as)
        # The `squall` pack's actions call the CLI against the same config.
        os.environ.setdefault("SQUALL_CLI", str(Path(sys.executable).parent / "squall"))
        if config.path is not None:
            os.environ["SQUALL_CONFIG"] = str(config.path)
        shell = LocalShellRunner(self.run_as, config.virtualenvs_path)
        runners = {
            "local-shell-cmd": shell,
            "local-shell-script": shell,
            "python-script": self.python,
            "http-request": LazyRunner("engine.runners.http", "HttpRunner"),  # requests: ~30 ms at start
            "remote-shell-cmd": (remote := LazyRunner("engine.runners.remote", "RemoteShellRunner")),
            "remote-shell-script": remote,
            "noop": NoopRunner(),
            "announcement": AnnouncementRunner(self._announce),
        }
        self.workflows = WorkflowService()
        self.workflows.max_depth = config.workflow_max_depth
        runners.update(self.workflows.runners)
        runners["inquirer"] = InquirerRunner()
        self.executions = ExecutionService(registry, self.db, self.datastore, self.keys, runners, config.api_url,
                                           self.events)
        #: Under `executor.kind: procrastinate` every process queues jobs (`squall worker`s run them);
        #: otherwise this process runs its executions itself.
        self.jobs = JobExecutor(self.executions, config) if config.executor_kind == "procrastinate" else None
        self.executions.pack_hashes = self.jobs is not None
        runs = self.jobs or LocalExecutor(self.executions.run, config.max_concurrency,
                                          unbounded=self.executions.conducts)
        self.policies = PolicyExecutor(runs, self.executions)
        registry.errors.extend(self.policies.rebuild(registry))
        self.executor = self.policies
        self.triggers = TriggerService(registry, self.db)
        self.notifier = Notifier(lambda: self.registry, self.triggers, self.events, self.executions)
        self.executions.executor = self.executor
        self.workflows.attach(self.executions, self.jobs)
        self.inquiries = InquiryService(self.executions, self.triggers)
        self.rules = RulesEngine(registry, self.db, self.executions, self.triggers, self.datastore)
        self.triggers.processors.append(self.rules)
        #: Of several `squall serve` processes on one database, the one that fires timers and runs sensors.
        self.leader = leadership(store.engine)
        self.sensor_lead = False  # whether this process runs the sensors (it led at the last sync)
        self.timers = TimerService(self.triggers.dispatch, leader=self.leader, history=store_history(self.db))
        self._follow_rules()
        self.sensors = SensorContainer(self.triggers.dispatch, self.datastore_call, config.virtualenvs_path,
                                       run_as=self.run_as)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emitting: set[asyncio.Future[Any]] = set()

    @classmethod
    async def start(cls, config: Config, *, recover: bool = False, log_problems: bool = True,
                    upgrade_in_use: bool = True, **parts: Any) -> Self:
        """Open the database, load the packs, build; with `recover`, recover executions earlier
        runs left. `parts` go to the constructor (the chat side's adapters, for `Squall`).

        With `log_problems` (a service's start), each pack problem is logged once here, the rules' and
        policies' among them; a CLI command leaves them to its own output (`bot.cli.common.with_app`).
        Without `upgrade_in_use` (a CLI command), an older schema another Squall process runs on is
        refused, not upgraded (`engine.storage.SchemaInUse`)."""
        store = Store.open(config.database_url, upgrade_in_use=upgrade_in_use)
        app = cls(config, store, load_packs(config), **parts)
        app._loop = asyncio.get_running_loop()
        if log_problems:
            log_pack_problems(app.registry.errors)
        if recover:
            outcome = await app.executions.recover()
            if any(outcome.values()):
                log.info("recovered executions: %(abandoned)d abandoned, %(started)d started", outcome)
        return app

    def reload(self, registry: Registry | None = None) -> Registry:
        """Use newly loaded packs; the new registry replaces the old one in one step."""
        registry = registry if registry is not None else load_packs(self.config)
        self.registry = registry
        self.executions.registry = registry
        self.triggers.registry = registry
        self.rules.rebuild(registry)
        registry.errors.extend(self.policies.rebuild(registry))
        self._follow_rules()
        return registry

    def hand_off_triggers(self) -> None:
        """A `squall worker`: the trigger instances this process raises are stored for the serve nodes to
        process with their current rules (`TriggerService.hand_off`), of every type the engine raises,
        the datastore's changes included, whatever rules this process loaded."""
        self.triggers.hand_off()
        self._follow_rules()

    async def _announce(self, route: str, params: dict[str, Any], request: RunRequest) -> dict[str, Any]:
        """The `announcement` runner's delivery (chatops.post_message / post_result): whoever
        answers `ANNOUNCE` (the chat side) stores the message for its chat."""
        return await self.events.ask(ANNOUNCE, route, params, request)

    def _datastore_changed(self, kind: str, payload: dict[str, Any]) -> None:
        """Emit `core.st2.key_value_pair.<kind>` when a rule listens; called on whichever thread wrote, once
        the write committed (`Store.after_commit`): a rolled-back `squall key load` fires nothing."""
        ref = f"core.st2.key_value_pair.{kind}"
        if self._loop is None or not self.triggers.wanted(ref):  # a rule may watch another of the four kinds
            return

        def dispatch() -> None:
            task = asyncio.ensure_future(self.triggers.dispatch(ref, payload, validate=False))
            self._emitting.add(task)
            task.add_done_callback(self._emitted)

        self._loop.call_soon_threadsafe(dispatch)

    def _emitted(self, task: asyncio.Future[Any]) -> None:
        self._emitting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a datastore trigger could not be stored: %s", task.exception())

    async def emitted(self) -> None:
        """Wait until the datastore triggers written so far are stored and their rules have acted
        (a CLI command before it exits; `squall serve` recovers what a shutdown interrupts)."""
        while self._emitting:
            await asyncio.gather(*self._emitting, return_exceptions=True)
        await self.triggers.settle()

    async def leading(self) -> bool:
        """Whether this process leads (taking the lead if it is free)."""
        return await leads(self.leader)

    async def sync_sensors(self) -> None:
        """Run the enabled sensors of the current packs (`squall serve` only; restarts changed ones).

        Only the leader runs them: two processes polling the same API would emit every event twice.
        `squall serve` syncs again whenever the lead changes hands (it looks each second)."""
        if not await self.leading():
            if self.sensor_lead:
                log.info("another process leads now; its sensors run there")
                await self.sensors.stop()
            self.sensor_lead = False
            return
        self.sensor_lead = True
        specs, errors = load_sensors(self.registry)
        # A sensor whose file does not parse or has no such class is not started to fail at its import.
        specs, unloadable = await asyncio.to_thread(startable_sensors, specs)
        for error in [*errors, *unloadable]:
            log.warning("sensor %s: %s", "warning" if isinstance(error, ContentWarning) else "skipped", error)
        await self.sensors.sync(self.registry, specs, self.rules.triggers_of)

    def _follow_rules(self) -> None:
        """What the enabled rules ask for: their timers, and datastore triggers only if one listens
        (the datastore's write path then pays one extra read, otherwise none)."""
        self.timers.sync([t for ref in TIMER_TYPES for t in self.rules.triggers_of(ref)])
        watched = any(self.triggers.wanted(f"core.st2.key_value_pair.{kind}") for kind in KV_CHANGES)
        self.datastore.on_change = self._datastore_changed if watched else None

    def other_processes(self) -> list[str]:
        """The other Squall processes using this database now, by name, for a command that must not act
        under a running service (`squall key rotate` retiring the old keys, which such a process may still
        hold secrets sealed under). They are: the one that leads (every `squall serve` takes the lead when
        it is free, `engine.leader`); beside an SQLite database, those holding an owner file (they run or
        claimed work, `engine.processes`); on PostgreSQL, every Squall session on the database (each names
        its process, `engine.wakeups.PROCESS_NAME`), `squall worker`s on other hosts included. Blocking:
        call it on the database thread."""
        names: set[str] = set()
        holder = self.leader.holder()
        if holder is not None and holder != PROCESS_NAME:
            names.add(holder)
        if self.store.is_sqlite:
            for pid in _owner_pids(self.executions.ledger):
                if not any(name.startswith(f"squall {pid}@") for name in names):
                    names.add(f"squall {pid}")
        else:
            with self.store.engine.connect() as conn:
                names.update(conn.execute(sa.text(SQUALL_SESSIONS), {"me": PROCESS_NAME}).scalars())
        return sorted(names)

    async def datastore_call(self, method: str, args: dict[str, Any], request: RunRequest | None = None) -> Any:
        """Datastore calls from Python actions' `action_service` and sensors' `sensor_service`
        (names already pack-local); secrets a Python action decrypts are masked in its output."""
        ds = self.datastore
        if method == "get_value":
            record = await self.db(ds.get, args["name"], decrypt=bool(args.get("decrypt")))
            if record and record["secret"] and args.get("decrypt") and request is not None:
                request.revealed.append(record["value"])
            return record["value"] if record else None
        if method == "set_value":
            await self.db(ds.set, args["name"], args["value"], ttl=st2_ttl(args.get("ttl")),
                          encrypt=bool(args.get("encrypt")))
            return True
        if method == "delete_value":
            return await self.db(ds.delete, args["name"])
        if method == "list_values":
            offset = int(args.get("offset") or 0)
            limit = int(args["limit"]) + offset if args.get("limit") else None  # the page after `offset`
            items = await self.db(ds.list, prefix=args.get("prefix") or None, limit=limit)
            return items[offset:]
        raise ValueError(f"unknown action_service method {method!r}")

    async def action_call(self, method: str, args: dict[str, Any], request: RunRequest | None = None) -> Any:
        """A Python action's `action_service` calls: the datastore's; `format_result`
        (`chatops.format_execution_result`), an execution's result as chat shows it; and `dispatch`
        (`core.inject_trigger`), a
        trigger instance stored as a sensor's is, its type checked (`TriggerError` names one not registered), so
        its rules fire. Its trace tag: the one asked for, else the running execution's (a rule's run carries its
        trigger instance's), else one naming the execution, so the instance leads back to what injected it."""
        if method == "format_result":  # its result as chat shows it: the chat side's to say
            return await self.events.ask(FORMAT_RESULT, str(args["execution_id"]))
        if method != "dispatch":
            return await self.datastore_call(method, args, request)
        tag = args.get("trace_tag")
        if not tag and request is not None:
            tag = (request.context.get("trace_context") or {}).get("trace_tag") or f"execution-{request.execution_id}"
        return await self.triggers.dispatch(str(args["trigger"]), args.get("payload") or {}, trace_tag=tag)

    async def _settle_listeners(self) -> None:
        """Wait, at most `LISTENERS_SETTLE_SECONDS`, for the listeners' tasks (`Events.settle`), before the
        executor and the database close under them. A CLI command's change is heard by its own process's
        listeners: `squall execution cancel` of a paused workflow, or of one whose service is gone, ends it
        here, and its listener cancels its tasks. Dropped with the command's loop, they stayed paused,
        pending or delayed under the canceled workflow, and a restart ran the delayed ones."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTENERS_SETTLE_SECONDS):
                await self.events.settle()
        if self.events.busy:
            log.warning("closing with %d listener task(s) still running after %g s (a canceled workflow's tasks "
                        "being canceled, say): they are dropped; the next start of `squall serve` cancels what "
                        "a workflow that ended left", self.events.busy, LISTENERS_SETTLE_SECONDS)

    async def close(self) -> None:
        await self.triggers.close()  # takes no more instances (a serve node's wake-ups and polls)
        await self.sensors.stop()
        if self._emitting:  # datastore triggers written just before: store them, do not drop them
            await asyncio.gather(*self._emitting, return_exceptions=True)
        if self.events.busy:  # what the listeners were told (a canceled workflow's tasks to cancel): do it
            await self._settle_listeners()
        if self.triggers.busy:  # instances this process claimed (a `squall run`'s action trigger): finish them
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TRIGGER_SETTLE_SECONDS):
                    await self.triggers.settle()
        await self.executor.close()
        stop_renders()  # the executions it stopped may still evaluate on a render thread: they stop too
        self.leader.close()
        await self.inquiries.close()
        await self.python.close()
        self.db.close()  # its last writes' audit events reach the sinks
        for sink in self.audit_sinks:  # before the store: a sink's progress thread reads it (`Delivery.close`)
            sink.close()
        self.store.close()
        tracing.flush()


#: The other Squall processes' sessions on this PostgreSQL database (each names its process).


def _owner_pids(ledger: Path) -> list[int]:
    """The pids of the other processes that hold their owner file in `ledger` (they live): each file is
    named by its owner's identity (`processes.owner_name`), and held under `flock` while it lives."""
    mine = owner_name(process_identity())
    pids = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(ledger):
            parts = entry.name.split("_")
            if entry.name == mine or entry.name.startswith(".") or len(parts) != 4 or not parts[2].isdigit():
                continue
            boot, namespace, pid, started = parts
            identity = {"boot_id": boot, "pid_ns": namespace, "pid": pid, "started": started}
            if owner_file_state(ledger, identity) == "held":
                pids.append(int(pid))
    return pids


def action_account(config: Config) -> RunAs | None:
    """`runners.user` when this process runs as root (only root can switch users), else None:
    actions then run as whoever runs Squall (`squall serve` warns when that is root)."""
    if config.runner_user is None or os.geteuid() != 0:
        return None
    return RunAs.of(config.runner_user)


def load_packs(config: Config) -> Registry:
    return load_registry(config.pack_paths, config.configs_path, SYSTEM_PACKS_PATH)


def log_pack_problems(problems: list[ContentError]) -> None:
    """One warning per pack problem: content skipped, or (`ContentWarning`) content that loads all the same."""
    for problem in problems:
        if isinstance(problem, ContentWarning):
            log.warning("pack content warning: %s", problem)
        else:
            log.warning("pack content skipped: %s", problem)
