"""Sensors (spec §6.4): each StackStorm sensor class in its own supervised child process.

A sensor that raises, exits or hangs only ever costs its own process: the container restarts it
with a growing delay (reset once it has stayed up a while), emits the sensor lifecycle triggers,
and on stop sends SIGTERM, then SIGKILL to one that does not leave. Sensors dispatch through the
parent, which stores every instance before processing it, exactly as webhooks and timers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.metrics import metrics
from engine.packs import Registry, sensor_trigger_types
from engine.processes import LEDGER
from engine.runners import RunAs
from engine.runners.python import COMPAT_PATH, spawn_pack_process
from engine.triggers import TriggerError
from engine.yamlfile import ContentError

log = logging.getLogger(__name__)

SENSOR_SCRIPT = COMPAT_PATH / "squall_sensor.py"
SPAWN, EXIT = "core.st2.sensor.process_spawn", "core.st2.sensor.process_exit"
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}


@dataclass(frozen=True)
class SensorSpec:
    """A sensor as its metadata file declares it."""

    pack: str
    class_name: str
    file: Path
    metadata_file: str
    poll_interval: float | None = None
    enabled: bool = True
    trigger_types: tuple[str, ...] = ()
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.pack}.{self.class_name}"

    def public(self) -> dict[str, Any]:
        return {"ref": self.ref, "pack": self.pack, "class_name": self.class_name, "enabled": self.enabled,
                "entry_point": self.file.name, "poll_interval": self.poll_interval,
                "trigger_types": list(self.trigger_types), "description": self.description,
                "metadata_file": self.metadata_file}


def load_sensors(registry: Registry) -> tuple[list[SensorSpec], list[ContentError]]:
    """Every sensor of the loaded packs; a bad file is an error naming it, the others load."""
    sensors: list[SensorSpec] = []
    errors: list[ContentError] = []
    for document in registry.documents:
        if document.kind != "sensors":
            continue
        data = document.data
        if not isinstance(data, dict):
            errors.append(ContentError(document.file, 1, "a sensor file must be a mapping"))
            continue
        class_name = data.get("class_name")
        if not isinstance(class_name, str) or not class_name.isidentifier():
            errors.append(ContentError(document.file, document.lines.line("class_name"),
                                       'a sensor needs "class_name", the Python class to run'))
            continue
        pack = registry.packs.get(document.pack)
        entry = data.get("entry_point")
        file = (pack.path / "sensors" / str(entry)) if pack is not None and isinstance(entry, str) else None
        if file is None or not file.is_file():
            errors.append(ContentError(document.file, document.lines.line("entry_point"),
                                       f'entry_point "{entry}" is not a file in the pack\'s sensors/ folder'))
            continue
        poll = data.get("poll_interval")
        if poll is not None and (not isinstance(poll, (int, float)) or isinstance(poll, bool) or poll <= 0):
            errors.append(ContentError(document.file, document.lines.line("poll_interval"),
                                       f"poll_interval must be a positive number of seconds, not {poll!r}"))
            continue
        types = tuple(t.ref for t in sensor_trigger_types(document.pack, data, document.file))
        sensors.append(SensorSpec(pack=document.pack, class_name=class_name, file=file.resolve(),
                                  metadata_file=document.file, poll_interval=poll,
                                  enabled=data.get("enabled", True) is not False, trigger_types=types,
                                  description=str(data.get("description") or "")))
    return sensors, errors


def trigger_object(item: dict[str, Any]) -> dict[str, Any]:
    """A trigger as StackStorm hands it to `add_trigger`: id, ref, uid, name, pack, type, parameters."""
    pack = item["type"].partition(".")[0]
    digest = hashlib.sha1(item["key"].encode()).hexdigest()[:24]
    return {"id": digest, "ref": f"{pack}.{digest}", "uid": f"trigger:{pack}:{digest}", "name": digest,
            "pack": pack, "type": item["type"], "parameters": item["parameters"], "description": ""}


#: `datastore_call(method, args)`: the sensor service's datastore methods, answered by the service.
DatastoreCall = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: `dispatch(trigger_ref, payload, parameters=..., trace_tag=...)`.
Dispatch = Callable[..., Awaitable[Any]]


@dataclass
class _Running:
    spec: SensorSpec
    config: dict[str, Any]
    venv: Path
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.WriteTransport | None = None
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarts: int = 0
    stopping: bool = False

    def send(self, message: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(message, default=str).encode("utf-8") + b"\n")


class SensorContainer:
    """Runs the enabled sensors; `sync` after every reload, `stop` at the end."""

    def __init__(self, dispatch: Dispatch, datastore_call: DatastoreCall, virtualenvs: Path, *,
                 backoff: float = 2.5, max_backoff: float = 60.0, stable_after: float = 10.0,
                 stop_timeout: float = 5.0, run_as: RunAs | None = None) -> None:
        self.dispatch = dispatch
        #: Sensors are pack code like actions: they start as `runners.user` too.
        self.run_as = run_as
        self.datastore_call = datastore_call
        self.virtualenvs = virtualenvs
        self.backoff, self.max_backoff, self.stable_after = backoff, max_backoff, stable_after
        self.stop_timeout = stop_timeout
        self.running: dict[str, _Running] = {}

    # -- what should run ---------------------------------------------------------------------
    async def sync(self, registry: Registry, sensors: list[SensorSpec],
                   triggers_of: Callable[[str], list[dict[str, Any]]]) -> None:
        """Start new and changed sensors, stop removed ones, tell the others about trigger changes."""
        wanted = {}
        for spec in sensors:
            pack = registry.packs.get(spec.pack)
            if spec.enabled and pack is not None:
                wanted[spec.ref] = (spec, pack.config)
        for ref in [r for r in self.running if r not in wanted or wanted[r] != (self.running[r].spec,
                                                                                 self.running[r].config)]:
            await self._stop(self.running.pop(ref))
        for ref, (spec, config) in wanted.items():
            triggers = {item["key"]: trigger_object(item) for ref_ in spec.trigger_types
                        for item in triggers_of(ref_) if item["parameters"]}
            running = self.running.get(ref)
            if running is None:
                running = _Running(spec, config, self.virtualenvs / spec.pack, triggers=triggers)
                self.running[ref] = running
                running.task = asyncio.get_running_loop().create_task(self._supervise(running),
                                                                      name=f"sensor-{ref}")
                continue
            for key in running.triggers.keys() - triggers.keys():
                running.send({"op": "remove_trigger", "trigger": running.triggers[key]})
            for key in triggers.keys() - running.triggers.keys():
                running.send({"op": "add_trigger", "trigger": triggers[key]})
            running.triggers = triggers

    async def stop(self) -> None:
        for running in list(self.running.values()):
            await self._stop(running)
        self.running.clear()

    async def _stop(self, running: _Running) -> None:
        running.stopping = True
        process = running.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.stop_timeout)
            except TimeoutError:
                log.warning("sensor %s did not stop within %gs; killing it", running.spec.ref, self.stop_timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                await process.wait()
        if process is not None and process.returncode is not None:
            LEDGER.untrack(process.pid)
        if running.task is not None:
            running.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running.task

    # -- one sensor's life -------------------------------------------------------------------
    async def _supervise(self, running: _Running) -> None:
        spec = running.spec
        while not running.stopping:
            started = time.monotonic()
            try:
                code = await self._run_once(running)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("sensor %s could not start: %s", spec.ref, exc)
                code = -1
            if running.stopping:
                return
            if code == 0:
                log.info("sensor %s finished (its run() returned)", spec.ref)
                return
            if time.monotonic() - started >= self.stable_after:
                running.restarts = 0
            delay = min(self.backoff * (2 ** running.restarts), self.max_backoff)
            running.restarts += 1
            metrics.count(metrics.sensor_restarts, spec.ref)
            log.warning("sensor %s exited with status %s; restarting in %.1fs (restart %d)", spec.ref, code, delay,
                        running.restarts)
            await asyncio.sleep(delay)

    async def _run_once(self, running: _Running) -> int:
        spec = running.spec
        process, reader, running.writer = await spawn_pack_process(
            SENSOR_SCRIPT, spec.file.parent.parent, running.venv, cwd=spec.file.parent,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, run_as=self.run_as)
        running.process = process
        running.send({"file": str(spec.file), "class_name": spec.class_name, "pack": spec.pack,
                      "config": running.config, "poll_interval": spec.poll_interval,
                      "triggers": list(running.triggers.values())})
        await self._lifecycle(SPAWN, spec, process.pid)
        logs = asyncio.get_running_loop().create_task(self._relay_logs(spec, process))
        try:
            while line := await reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("sensor %s sent a line that is not JSON: %r", spec.ref, line[:200])
                    continue
                await self._handle(running, message)
            code = await process.wait()
        finally:
            running.writer.close()
            await logs
            if process.returncode is not None:
                LEDGER.untrack(process.pid)
        await self._lifecycle(EXIT, spec, process.pid, code)
        return code

    async def _handle(self, running: _Running, message: dict[str, Any]) -> None:
        op = message.get("op")
        spec = running.spec
        if op == "dispatch":
            try:
                await self.dispatch(message.get("trigger"), message.get("payload"),
                                    parameters=message.get("parameters"), trace_tag=message.get("trace_tag")
                                    or f"sensor-{spec.ref}-{os.urandom(8).hex()}")
            except TriggerError as exc:  # as StackStorm: a bad payload is logged, the sensor goes on
                log.warning("sensor %s dispatched an invalid trigger instance: %s", spec.ref, exc)
            except Exception:  # whatever else one instance does, the sensor goes on
                log.exception("sensor %s dispatched a trigger instance that could not be stored", spec.ref)
        elif op == "call":
            reply: dict[str, Any] = {"op": "reply", "id": message.get("id")}
            try:
                reply["result"] = await self.datastore_call(str(message.get("method")), message.get("args") or {})
            except Exception as exc:
                reply["error"] = f"{exc.__class__.__name__}: {exc}"
            running.send(reply)
        elif op == "running":
            log.info("sensor %s is running (pid %s)", spec.ref, message.get("pid"))

    async def _relay_logs(self, spec: SensorSpec, process: asyncio.subprocess.Process) -> None:
        """The sensor's stdout, stderr and logging, as log records of Squall's, levels kept."""
        assert process.stdout is not None
        logger = logging.getLogger(f"squall.sensor.{spec.ref}")
        level = logging.INFO
        while raw := await process.stdout.readline():
            text = raw.decode("utf-8", "replace").rstrip()
            first = text.split(" ", 1)[0]
            if first in _LEVELS:  # a record of the sensor's logging
                level = _LEVELS[first]
            elif text.startswith("Traceback"):  # what killed it: its lines stay errors
                level = logging.ERROR
            elif not text.startswith(" "):
                level = level if level == logging.ERROR and ":" in text else logging.INFO
            logger.log(level, "%s", text)

    async def _lifecycle(self, trigger_ref: str, spec: SensorSpec, pid: int, code: int | None = None) -> None:
        payload = {"object": {"ref": spec.ref, "pack": spec.pack, "class_name": spec.class_name, "pid": pid,
                              **({"exit_code": code} if code is not None else {})}}
        try:
            await self.dispatch(trigger_ref, payload, validate=False)
        except Exception:
            log.exception("could not store the %s trigger for sensor %s", trigger_ref, spec.ref)


__all__ = ["SensorContainer", "SensorSpec", "load_sensors"]
