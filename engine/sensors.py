"""Sensors (spec §6.4): each StackStorm sensor class in its own supervised child process.

A sensor that raises, exits or hangs only ever costs its own process: the container restarts it
with a growing delay (reset once it has stayed up a while), emits the sensor lifecycle triggers,
and on stop sends SIGTERM, then SIGKILL to one that does not leave. Sensors dispatch through the
parent, which stores every instance before processing it, exactly as webhooks and timers do. Its
output goes to Squall's log, masked of the secrets it was given or has decrypted, its control characters
escaped (`engine.logs.printable`), at most `LOG_LINES_PER_SECOND` lines and `LOG_BYTES_PER_SECOND` bytes
a second, so a sensor stuck printing holds neither the log nor the loop. A sensor whose `setup()` has not
returned after `SETUP_WARNING` seconds is said to dispatch nothing yet, and said again when it starts;
meanwhile `SensorContainer.state` tells it "stuck in setup", which the API shows beside `enabled`.

A sensor leads a process group of its own. What it starts (`tail -F`, a watcher) inherits its
output and stays in that group, so the container waits for the sensor process itself to exit,
never for its pipes to close, and then kills what is left of the group: a helper can neither
keep a crashed sensor from being restarted nor outlive it.

A sensor's messages are read only as fast as they are handled, at most `MESSAGE_BACKLOG` bytes ahead:
when serve stores more slowly than a sensor dispatches, the pipe fills and the sensor's `dispatch()`
blocks until serve catches up, as a publish to StackStorm's broker does. What a sensor was told it
dispatched is stored, or in that small backlog: never a burst of any size held in serve's memory,
which a killed serve lost and which a stop or a reload waited to store.

Nothing a sensor dispatched before it exited is lost: once its process has exited (crashed,
returned, or stopped, its `cleanup()` dispatching as it leaves), the container reads its message
pipe to the end, which holds that backlog at most. Only a pipe that makes no progress, and the log
pipe, are given up after `drain_timeout`. Stopping signals every sensor at once and
kills what is left after one `stop_timeout`; one `sync` or `stop` runs at a time, and a `stop`
supersedes a `sync` under way, so no sensor is started out of a later stop's reach.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.executions import scrub, scrubbable
from engine.logs import printable
from engine.metrics import metrics
from engine.pack_config import config_facts, config_value_error, render_dynamic_config
from engine.packs import ContentWarning, Registry, sensor_trigger_types
from engine.processes import LEDGER, descendants, kill_group, start_time
from engine.runners import RunAs
from engine.runners.python import COMPAT_PATH, LINE_LIMIT, spawn_pack_process
from engine.templates import KVNamespace, TemplateRenderError, build_environment, render_template
from engine.triggers import TriggerError
from engine.yamlfile import ContentError

log = logging.getLogger(__name__)

SENSOR_SCRIPT = COMPAT_PATH / "squall_sensor.py"
SPAWN, EXIT = "core.st2.sensor.process_spawn", "core.st2.sensor.process_exit"
#: A line of the sensor's output longer than this is dropped (with a warning), not the relay with it.
_LOG_LINE_LIMIT = 1024 * 1024
#: Bytes of a sensor's messages read ahead of the one being handled; past them the message pipe is not
#: read until serve catches up, so the sensor's `dispatch()` blocks (its write to the full pipe) as a
#: broker's publish would. Read without a bound, a burst of 300,000 dispatches all returned within
#: seconds and waited unstored in serve's memory (up to 128 MiB): a killed serve lost them, a stop or a
#: reload waited to store them all. A message itself may be up to `LINE_LIMIT` long (`_next_line`).
MESSAGE_BACKLOG = 256 * 1024
#: Lines relayed (or messages handled) between two yields to the event loop. A stream reader hands
#: out lines already in its buffer without awaiting anything, and a sensor writing short lines as fast
#: as it can keeps that buffer full: without a yield, serve's loop (API, chat, timers) stalled for seconds.
_YIELD_EVERY = 100
#: Lines of one sensor's output relayed to the log in a second; past it they are dropped and counted.
LOG_LINES_PER_SECOND = 1000
#: Bytes of one sensor's output relayed to the log in a second; past it its lines are dropped and counted, as
#: past `LOG_LINES_PER_SECOND`. Lines alone did not bound the log: a line may be up to `_LOG_LINE_LIMIT`
#: long, and a sensor printing 512 KiB lines in a loop grew serve's log by over 1 GiB in 10 s, unsaid. It is
#: no less than that limit, so any line the relay takes passes alone in its second (a large API response
#: logged once), and it is a thousand of `LOG_LINES_PER_SECOND`'s lines of 1 KiB.
LOG_BYTES_PER_SECOND = _LOG_LINE_LIMIT
#: Seconds after its start by which a sensor is expected to have finished `setup()` (and the `add_trigger()`
#: of the triggers it starts with); one that has not is said once to dispatch nothing yet. A `setup()` stuck
#: (a broker connected to without a timeout) was otherwise never reported: no error, no exit, its triggers
#: silently never came, and the API listed it enabled (its `state` now says "stuck in setup"). Long enough
#: for a slow start's connections and retries.
SETUP_WARNING = 30.0
#: Seconds in which one sensor's same bad dispatch (an unknown trigger, an invalid payload) is logged once;
#: the ones like it are counted and the count logged as they end (`_Repeats`). One line per dispatch made a
#: sensor dispatching in a loop to a misspelt trigger write 37,900 warnings a second to serve's log.
DISPATCH_WARNING_INTERVAL = 10.0
#: Distinct bad dispatches of one sensor said in one interval; past them they are only counted together,
#: so a payload error that names a different value each time cannot flood the log (or memory) either.
_REPEATS_KEPT = 20
#: What a sensor's process imports besides its entry point's folder: the pack folders on its import
#: path (`engine.runners.python._pythonpath`), and the files in them that are code.
_CODE_FOLDERS = ("sensors", "lib", "actions/lib")
_CODE_SUFFIXES = (".py", ".so")
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}
#: A traceback in a sensor's output is relayed as one log record, from its first line to its exception's
#: (one record per line made a dozen `error` records of each crash in JSON logs): its first line and its
#: last ones, at most this many lines and bytes in all, and a line telling how many were left out between.
TRACEBACK_LINES = 200
TRACEBACK_BYTES = 64 * 1024
#: A line of a traceback longer than this is cut (an exception's message may be a whole document).
_TRACEBACK_LINE = 8 * 1024
#: Seconds a traceback's next line is waited for: what came of one cut short is relayed then, as it is.
TRACEBACK_WAIT = 1.0
_TRACEBACK_START = "Traceback (most recent call last):"
#: The lines between the tracebacks of chained exceptions (with a blank line either side): one record.
_CHAINED = ("During handling of the above exception, another exception occurred:",
            "The above exception was the direct cause of the following exception:")
#: Exceptions that mean a sensor's module could not be imported: its code or the pack's virtualenv must
#: change first, so it is started again after `SensorContainer.load_retry`, or when its files change.
LOAD_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "SyntaxError", "IndentationError", "TabError"})


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
    #: The line of `class_name` in the metadata file, for a problem about the class (not what it runs).
    class_line: int | None = field(default=None, compare=False)

    @property
    def ref(self) -> str:
        return f"{self.pack}.{self.class_name}"

    def public(self) -> dict[str, Any]:
        return {"ref": self.ref, "pack": self.pack, "class_name": self.class_name, "enabled": self.enabled,
                "entry_point": self.file.name, "poll_interval": self.poll_interval,
                "trigger_types": list(self.trigger_types), "description": self.description,
                "metadata_file": self.metadata_file}


def entry_point(spec: SensorSpec, registry: Registry) -> str:
    """StackStorm's `entry_point` of a pack sensor: its module under the pack, dotted, then its class
    (`sensors.watch.Watch`), as the API and `squall sensor` show it."""
    pack = registry.packs.get(spec.pack)
    try:
        module = spec.file.relative_to(pack.path.resolve()) if pack is not None else Path(spec.file.name)
    except ValueError:  # the file is a link out of the pack's folder: its own name
        module = Path("sensors") / spec.file.name
    return ".".join((*module.with_suffix("").parts, spec.class_name))


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
                                  description=str(data.get("description") or ""),
                                  class_line=document.lines.line("class_name")))
    return sensors, errors


def startable_sensors(sensors: list[SensorSpec]) -> tuple[list[SensorSpec], list[ContentError]]:
    """The sensors of `sensors` that can start, and a problem (metadata file, class name) for each enabled
    one whose module defines no `class_name` (or, a warning only, does not parse: `class_problem`): started,
    it only failed at its import, with
    a traceback, and was restarted for ever. Read with `ast`, nothing of the pack's runs here; a disabled
    sensor is not looked at (it never starts), and the API lists every sensor (`load_sensors`) as
    StackStorm registers them, unimported. Blocking: it reads the files."""
    startable: list[SensorSpec] = []
    problems: list[ContentError] = []
    for spec in sensors:
        problem = class_problem(spec) if spec.enabled else None
        if problem is None or isinstance(problem, ContentWarning):
            startable.append(spec)
        if problem is not None:
            problems.append(problem)
    return startable, problems


def class_problem(spec: SensorSpec) -> ContentError | None:
    """Why the sensor's entry point cannot give its class, or None: a module that cannot be read, or that
    binds no `class_name` (a class, an import or an assignment of that name, at any level but inside a
    function or class; `from x import *` could bind anything and is taken to). A module that does not parse
    is only a warning (`ContentWarning`), and the sensor starts: it is read with Squall's Python, and the
    pack's virtualenv may run a newer one, whose syntax this one does not know; if it is the same, the
    import fails and the sensor waits for a change (`SensorContainer.load_retry`)."""
    name = f"sensors/{spec.file.name}"
    try:
        tree = ast.parse(spec.file.read_bytes(), filename=str(spec.file))
    except SyntaxError as exc:
        return ContentWarning(spec.metadata_file, spec.class_line,
                              f"the sensor's module {name} does not parse with Squall's Python "
                              f"{sys.version_info.major}.{sys.version_info.minor}: {exc.msg} (line {exc.lineno}); "
                              "it is started all the same, for its pack's interpreter to read")
    except (OSError, ValueError) as exc:  # unreadable; NUL bytes in the source
        return ContentError(spec.metadata_file, spec.class_line,
                            f"the sensor's module {name} cannot be read: {exc}; the sensor is not started")
    if _binds(tree, spec.class_name):
        return None
    classes = sorted(node.name for node in tree.body if isinstance(node, ast.ClassDef))
    has = f"its classes are {', '.join(classes)}" if classes else "it defines no class"
    return ContentError(spec.metadata_file, spec.class_line,
                        f'class_name "{spec.class_name}" is not defined in {name} ({has}); the sensor is not started')


def _binds(tree: ast.Module, name: str) -> bool:
    """Whether the module's top level (its `if`, `try` and `with` blocks included) binds `name`."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ClassDef):
            if node.name == name:
                return True
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name for alias in node.names):
                return True
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(leaf, ast.Name) and leaf.id == name for target in targets for leaf in ast.walk(target)):
                return True
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.expr):
            stack.extend(ast.iter_child_nodes(node))  # a block's statements, an except's, a case's
    return False


def trigger_object(item: dict[str, Any]) -> dict[str, Any]:
    """A trigger as StackStorm hands it to `add_trigger`: id, ref, uid, name, pack, type, parameters."""
    pack = item["type"].partition(".")[0]
    digest = hashlib.sha1(item["key"].encode()).hexdigest()[:24]
    return {"id": digest, "ref": f"{pack}.{digest}", "uid": f"trigger:{pack}:{digest}", "name": digest,
            "pack": pack, "type": item["type"], "parameters": item["parameters"], "description": ""}


def code_fingerprint(spec: SensorSpec) -> str:
    """A summary of the code a sensor's process imports, from the file system alone: path, size,
    mtime, ctime and inode of its entry point and of the code files under its folder and the pack's
    `sensors/`, `lib/` and `actions/lib/` (no file is read; the pack folder is the one `_run_once`
    gives the process). A reload compares it with the one the running sensor started with, so an
    edited sensor is restarted, as StackStorm restarts a sensor registered again, instead of running
    its old code until serve restarts. Only code files count: a sensor that writes its state beside
    its code is not restarted for that."""
    digest = hashlib.sha256()
    _stat_into(digest, spec.file)
    seen: set[str] = set()
    pack_path = spec.file.parent.parent
    for root in (spec.file.parent, *(pack_path / folder for folder in _CODE_FOLDERS)):
        _code_files_into(digest, root, seen)
    return digest.hexdigest()


def _stat_into(digest: Any, path: str | Path, info: os.stat_result | None = None) -> None:
    try:
        info = info or os.stat(path)
    except OSError:  # gone or unreadable: still part of the summary
        digest.update(f"?{path}\0".encode())
        return
    digest.update(f"F{path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\0{info.st_ino}\0".encode())


def _code_files_into(digest: Any, root: Path, seen: set[str]) -> None:
    """`_stat_into` for every code file under `root`, symlinked folders followed, each real folder once."""
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:  # no such folder (most packs have no lib/): nothing it could import
            continue
        for entry in entries:
            try:
                info = entry.stat()  # follows symlinks: a link to a changed file counts as changed
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name != "__pycache__" and not entry.name.startswith("."):
                    stack.append(entry.path)
            elif entry.name.endswith(_CODE_SUFFIXES):
                _stat_into(digest, entry.path, info)


#: A sensor to run: its spec, its pack's config and config schema, and its `code_fingerprint`.
_Wanted = tuple[SensorSpec, dict[str, Any], dict[str, Any], str]


def _wanted(registry: Registry, sensors: list[SensorSpec]) -> dict[str, _Wanted]:
    """The enabled sensors of loaded packs, by ref (a thread's work: it looks at their files)."""
    wanted = {}
    for spec in sensors:
        pack = registry.packs.get(spec.pack)
        if spec.enabled and pack is not None:
            wanted[spec.ref] = (spec, pack.config, pack.config_schema, code_fingerprint(spec))
    return wanted


def _what_changed(running: _Running, now: _Wanted) -> str:
    """What differs between a running sensor and the one to run now ("" when nothing does)."""
    spec, config, schema, code = now
    parts = []
    if running.spec != spec:
        parts.append("its metadata")
    if (running.config, running.schema) != (config, schema):
        parts.append("its pack's config")
    if running.code != code:
        parts.append("its code")
    return ", ".join(parts)


#: `datastore_call(method, args)`: the sensor service's datastore methods, answered by the service.
DatastoreCall = Callable[[str, dict[str, Any]], Awaitable[Any]]
#: `dispatch(trigger_ref, payload, parameters=..., trace_tag=...)`.
Dispatch = Callable[..., Awaitable[Any]]


#: Most datastore values the dynamic values of one sensor's config may read.
_CONFIG_READS = 100


class _Unread(Exception):
    """A datastore value a config template asks for that `_SensorConfig` has not read yet."""

    def __init__(self, name: str, decrypt: bool) -> None:
        super().__init__(name)
        self.wanted = (name, decrypt)


class _SensorConfig:
    """A sensor's pack config with its dynamic values rendered, as StackStorm's sensor wrapper loads it
    at the sensor's start: `st2kv.system` and `decrypt_kv`; `st2kv.user` reads nothing (a sensor runs
    for no user of Squall's; StackStorm's reads its system user's keys). A value at or under a
    `secret: true` item that renders to an encrypted key's stored value is decrypted.

    The values are read through the sensor service's datastore calls, which are asynchronous, and Jinja
    renders synchronously: a render that asks for a value not read yet stops (`_Unread`), the value is
    read, and the whole config is rendered again, until every value it asks for was read."""

    def __init__(self, datastore_call: DatastoreCall) -> None:
        self.datastore_call = datastore_call
        self.values: dict[tuple[str, bool], Any] = {}
        #: Every value read, to the key it was read from: what `decrypt_kv` and a secret item decrypt.
        self.names: dict[str, str] = {}
        self.revealed: list[str] = []
        self.env = build_environment(decrypt=self._decrypt)
        self.context = {"st2kv": {"system": KVNamespace(self._lookup, label="st2kv.system"),
                                  "user": KVNamespace(lambda _name: None, label="st2kv.user")}}

    async def render(self, pack: str, config: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
        for _ in range(_CONFIG_READS + 1):
            self.revealed = []
            try:
                return render_dynamic_config(pack, config, schema, self._value)
            except _Unread as unread:
                name, decrypt = unread.wanted
                self.values[unread.wanted] = await self.datastore_call("get_value", {"name": name, "decrypt": decrypt})
        raise ValueError(f'the dynamic values of pack "{pack}"\'s config read more than {_CONFIG_READS} '
                         "datastore values; a sensor's config reads fewer")

    def _read(self, name: str, decrypt: bool = False) -> Any:
        if (name, decrypt) not in self.values:
            raise _Unread(name, decrypt)
        return self.values[(name, decrypt)]

    def _lookup(self, name: str) -> str | None:
        value = self._read(name)
        if isinstance(value, str) and value:
            self.names.setdefault(value, name)
        return value

    def _decrypt(self, text: str) -> str:
        """`decrypt_kv` of a value this config read: its key read again, decrypted."""
        name = self.names.get(text)
        if name is None:
            raise ValueError("decrypt_kv decrypts a datastore value: write {{ st2kv.system.<key> | decrypt_kv }}")
        plain = self._read(name, decrypt=True)
        if plain == text:
            raise ValueError(f'datastore item "st2kv.system.{name}" is not encrypted: drop decrypt_kv')
        self.revealed.append(plain)
        return plain

    def _value(self, template: str, secret: bool) -> Any:
        """One dynamic value rendered (None when it renders empty, as in StackStorm's loader)."""
        try:
            text = render_template(template, self.context, self.env)
        except TemplateRenderError as exc:
            if isinstance(exc.__cause__, _Unread):
                raise exc.__cause__ from None
            raise config_value_error(exc, template, secret, [*self.names, *self.revealed]) from None
        if secret and text in self.names:
            plain = self._read(self.names[text], decrypt=True)
            if plain != text:  # the key is encrypted: StackStorm decrypts a secret item's value
                text = plain
        if secret and text:  # whatever a secret item renders to is masked, as its written values are
            self.revealed.append(text)
        return text or None


@dataclass
class _Running:
    spec: SensorSpec
    config: dict[str, Any]
    venv: Path
    #: The pack's config schema (which values are secret).
    schema: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.WriteTransport | None = None
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarts: int = 0
    stopping: bool = False
    #: The process's start time, so its group is never confused with a later one of the same pid.
    started: int | None = None
    #: Since when the message reader has waited for a line (None while it handles one): after the
    #: sensor exited, a pipe that stays silent this long is held by something else and given up.
    waiting_since: float | None = None
    #: `code_fingerprint` of the files it was started from: a reload that finds other ones restarts it.
    code: str = ""
    #: The plaintexts of encrypted datastore values it was handed (`get_value(..., decrypt=True)`); grows.
    revealed: list[str] = field(default_factory=list)
    #: What its log lines are scrubbed of, longest first: its pack's secret config values, what rendering
    #: its config decrypted, and `revealed`. Replaced (not changed) as it grows; the relay reads it per line.
    secrets: list[str] = field(default_factory=list)
    #: Whether this life's run() returned (the wrapper says so): only then is an exit 0 the sensor's end.
    returned: bool = False
    #: Whether this life got as far as running (the wrapper says so after `setup()`).
    ran: bool = False
    #: When this life's process started (the loop's clock), and whether it was said not to have finished
    #: its `setup()` (`SETUP_WARNING`): its start is then said too, with how long setup() took.
    spawned: float = 0.0
    setup_late: bool = False
    #: The exception line of the last traceback this life wrote (`ModuleNotFoundError: No module named 'x'`).
    failure: str | None = None
    #: Its bad dispatches said so far (`_Repeats`), made at the first; kept across its lives.
    repeats: _Repeats | None = None
    #: Whether it waits to be started again after a life that ended other than by a stop or its run()
    #: returning (a crash, a signal, a start that failed): `SensorContainer.state`'s "failed".
    restarting: bool = False
    #: Its lives that ended other than by a stop or its run() returning, since this container started it (never
    #: reset, unlike `restarts`, the backoff's count), how the last one ended (`_exit_reason`, with the exception
    #: its traceback ended on), and when (wall clock) it starts again while it waits: what the API shows beside
    #: `state` (`SensorContainer.health`), so a crash-looping sensor's "failed" says why and how often.
    exits: int = 0
    last_exit: str | None = None
    retry_at: datetime | None = None

    def send(self, message: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(message, default=str).encode("utf-8") + b"\n")


class SensorContainer:
    """Runs the enabled sensors; `sync` after every reload, `stop` at the end."""

    def __init__(self, dispatch: Dispatch, datastore_call: DatastoreCall, virtualenvs: Path, *,
                 backoff: float = 2.5, max_backoff: float = 60.0, stable_after: float = 10.0,
                 stop_timeout: float = 5.0, drain_timeout: float = 5.0, run_as: RunAs | None = None,
                 log_lines_per_second: int = LOG_LINES_PER_SECOND, load_retry: float = 600.0,
                 traceback_wait: float = TRACEBACK_WAIT,
                 dispatch_warning_interval: float = DISPATCH_WARNING_INTERVAL,
                 log_bytes_per_second: int = LOG_BYTES_PER_SECOND, setup_warning: float = SETUP_WARNING) -> None:
        self.dispatch = dispatch
        #: Seconds after which a sensor still in `setup()` is said to dispatch nothing yet (`SETUP_WARNING`).
        self.setup_warning = setup_warning
        #: Seconds in which one sensor's same bad dispatch is logged once (`_Repeats`).
        self.dispatch_warning_interval = dispatch_warning_interval
        #: Seconds before a sensor whose module could not be imported (`LOAD_ERRORS`) is tried again: a
        #: missing library stays missing, and each try logged a traceback every `max_backoff` for ever. A
        #: change of its files restarts it at once (`sync`), so a fix is picked up without the wait.
        self.load_retry = load_retry
        #: How long the relay waits for a traceback's next line (`TRACEBACK_WAIT`).
        self.traceback_wait = traceback_wait
        #: Lines and bytes of one sensor's output relayed a second (`_LineBudget`).
        self.log_lines_per_second = log_lines_per_second
        self.log_bytes_per_second = log_bytes_per_second
        #: Sensors are pack code like actions: they start as `runners.user` too.
        self.run_as = run_as
        self.datastore_call = datastore_call
        self.virtualenvs = virtualenvs
        self.backoff, self.max_backoff, self.stable_after = backoff, max_backoff, stable_after
        self.stop_timeout = stop_timeout
        #: How long what an exited sensor wrote is still read, for a helper that left its group.
        self.drain_timeout = drain_timeout
        self.running: dict[str, _Running] = {}
        #: The registered trigger type refs (the registry's, updated at each `sync`).
        self.trigger_types: Collection[str] = ()
        #: One `sync` or `stop` at a time: a sync interleaved with a stop started sensors that the
        #: stop then forgot, and that no later stop could reach.
        self._lock = asyncio.Lock()
        #: How many stops were asked for: a sync asked for before the last of them starts nothing.
        self._stops = 0

    # -- what should run ---------------------------------------------------------------------
    async def sync(self, registry: Registry, sensors: list[SensorSpec],
                   triggers_of: Callable[[str], list[dict[str, Any]]]) -> None:
        """Start new and changed sensors, stop removed ones, tell the others about trigger changes.

        A `stop()` asked for while this sync waits for its turn or stops removed sensors wins: the
        sync starts nothing (the lead may be lost, and the stop would not see what it started). A
        sync asked for after a stop began runs once that stop is over."""
        asked = self._stops
        async with self._lock:
            if self._stops == asked:
                await self._sync(registry, sensors, triggers_of, asked)

    async def _sync(self, registry: Registry, sensors: list[SensorSpec],
                    triggers_of: Callable[[str], list[dict[str, Any]]], asked: int) -> None:
        self.trigger_types = registry.trigger_types.keys()
        wanted = await asyncio.to_thread(_wanted, registry, sensors)
        await self._stop_all([self.running.pop(ref) for ref in self._changed(wanted)])
        if self._stops != asked:
            return  # a stop() came while the removed sensors stopped: it stops the rest, nothing starts
        for ref, (spec, config, schema, code) in wanted.items():
            triggers = {item["key"]: trigger_object(item) for ref_ in spec.trigger_types
                        for item in triggers_of(ref_) if item["parameters"]}
            running = self.running.get(ref)
            if running is None:
                running = _Running(spec, config, self.virtualenvs / spec.pack, schema, code=code, triggers=triggers)
                self.running[ref] = running
                running.task = asyncio.get_running_loop().create_task(self._supervise(running),
                                                                      name=f"sensor-{ref}")
                continue
            for key in running.triggers.keys() - triggers.keys():
                running.send({"op": "remove_trigger", "trigger": running.triggers[key]})
            for key in triggers.keys() - running.triggers.keys():
                running.send({"op": "add_trigger", "trigger": triggers[key]})
            running.triggers = triggers

    def _changed(self, wanted: dict[str, _Wanted]) -> list[str]:
        """The running sensors to stop: those no longer wanted, and those whose metadata, pack config or
        code (`code_fingerprint`) changed since they started, which are then started again."""
        changed = []
        for ref, running in self.running.items():
            now = wanted.get(ref)
            if now is None:
                log.info("sensor %s was removed or disabled; stopping it", ref)
            elif what := _what_changed(running, now):
                log.info("sensor %s changed; restarting (%s)", ref, what)
            else:
                continue
            changed.append(ref)
        return changed

    def state(self, ref: str) -> str:
        """What the sensor `ref` is doing in this container, which `enabled` (what its pack file asks) does not
        tell: a sensor stuck in `setup()` was listed `enabled: true` by the API, with nothing saying it
        dispatched nothing. "starting" (its process starting, or in `setup()` for less than `setup_warning`),
        "stuck in setup" (in `setup()` for longer, as `_setup_slow` warns), "running" (`setup()` returned),
        "failed" (its process ended otherwise than by a stop or its run() returning, or could not start, and it
        waits to be started again) or "stopped" (not run here: disabled, not startable, its run() returned,
        being stopped). Only the process that leads runs sensors: in any other, every one is "stopped"."""
        running = self.running.get(ref)
        if running is None or running.stopping or running.task is None or running.task.done():
            return "stopped"
        process = running.process
        if process is not None and process.returncode is None:
            if running.ran:
                return "running"
            return "stuck in setup" if running.setup_late else "starting"
        if process is not None and process.returncode == 0 and running.returned:
            return "stopped"  # its run() returned: its supervisor reads what it left, then ends
        return "failed" if running.restarting or process is not None else "starting"

    def health(self, ref: str) -> dict[str, Any]:
        """How the sensor `ref` fared in this container, for the API beside `state`: `restart_count` (its lives
        that ended otherwise than by a stop or its run() returning), `last_exit` (how the last such one ended,
        as the log's "exited with status N" says it, with the exception its traceback ended on) and, while it
        waits to start again, `restart_at` (a UTC datetime). Empty for a sensor not run here or never restarted."""
        running = self.running.get(ref)
        if running is None or not running.exits:
            return {}
        return {"restart_count": running.exits, "last_exit": running.last_exit,
                **({"restart_at": running.retry_at} if running.retry_at is not None else {})}

    async def stop(self) -> None:
        """Stop every sensor (serve's end, the lead lost); a sync under way first gives up."""
        self._stops += 1
        async with self._lock:
            await self._stop_all(list(self.running.values()))
            self.running.clear()

    async def _stop_all(self, sensors: list[_Running]) -> None:
        """SIGTERM all of `sensors` at once, wait for them together and kill those still there after
        one `stop_timeout`: K sensors that ignore SIGTERM cost one timeout, not K (a reload's sync
        blocks serve's poll loop meanwhile). Returns once every supervisor has ended, what each
        sensor dispatched before it exited handled."""
        for running in sensors:
            self._ask_to_stop(running)
        if sensors:
            deadline = asyncio.get_running_loop().time() + self.stop_timeout
            await asyncio.gather(*(self._stopped(running, deadline) for running in sensors))

    def _ask_to_stop(self, running: _Running) -> None:
        running.stopping = True
        process = running.process
        if process is not None:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()  # the sensor alone first: its cleanup() may stop its helpers itself
        elif running.task is not None:
            # No process: starting (`spawn_pack_process` kills what it forked when cancelled) or
            # waiting to restart. A process, once there, is never cancelled away from its supervisor.
            running.task.cancel()

    async def _stopped(self, running: _Running, deadline: float) -> None:
        """Wait for one sensor asked to stop: kill its group at `deadline`, then let its supervisor
        finish (it reads the message pipe to its end, kills the group's rest, closes the pipes)."""
        process = running.process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError:
                log.warning("sensor %s did not stop within %gs; killing it", running.spec.ref, self.stop_timeout)
                # Its helpers in other groups first, found while the sensor lives to have them as descendants.
                for pid in await asyncio.to_thread(descendants, process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # not waited for yet: the pid is still its own
                await process.wait()
        task = running.task
        if task is not None:
            await asyncio.wait((task,))
            if not task.cancelled() and task.exception() is not None:
                log.error("the supervisor of sensor %s failed", running.spec.ref, exc_info=task.exception())

    async def _end_group(self, running: _Running, process: asyncio.subprocess.Process) -> None:
        """Kill what the exited sensor left in its process group (helpers it started, which would
        otherwise be orphans holding its output pipe), then take the group off the owner file."""
        await asyncio.to_thread(kill_group, process.pid, running.started, 1.0)
        LEDGER.untrack(process.pid)

    # -- one sensor's life -------------------------------------------------------------------
    async def _supervise(self, running: _Running) -> None:
        """Run the sensor until it is stopped or its run() returns: any other end (a crash, a signal, a
        SIGTERM from outside Squall) restarts it, after a delay that doubles with each quick restart."""
        try:
            await self._lives(running)
        finally:  # the bad dispatches counted and not yet said, said before the sensor's end
            if running.repeats is not None:
                running.repeats.flush()

    async def _lives(self, running: _Running) -> None:
        """The sensor's processes, one after the other, until it is stopped or its run() returns."""
        spec = running.spec
        while not running.stopping:
            started = time.monotonic()
            try:
                code = await self._run_once(running)
                why = _exit_reason(code)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("sensor %s could not start: %s", spec.ref, exc)
                code, why = None, "could not start"
            if running.stopping:
                return
            if code == 0 and running.returned:
                log.info("sensor %s finished (its run() returned)", spec.ref)
                return
            metrics.count(metrics.sensor_restarts, spec.ref)
            running.exits += 1
            running.last_exit = f"{why}: {running.failure}" if running.failure else why
            delay = self._next_start(running, started, why)
            running.restarting, running.retry_at = True, datetime.now(UTC) + timedelta(seconds=delay)
            try:
                await asyncio.sleep(delay)
            finally:
                running.restarting, running.retry_at = False, None

    def _next_start(self, running: _Running, started: float, why: str) -> float:
        """The seconds before the sensor starts again, said in the log: `load_retry` when its module could not
        be imported (no restart would help until something changes), else a delay that doubles with each
        quick restart and is reset once the sensor has stayed up `stable_after`."""
        spec = running.spec
        if not running.ran and running.failure is not None and running.failure.split(":", 1)[0] in LOAD_ERRORS:
            log.warning("sensor %s cannot be loaded from %s (%s); trying again in %.0fs, or as soon as its files "
                        "change", spec.ref, spec.file, running.failure, self.load_retry)
            return self.load_retry
        if time.monotonic() - started >= self.stable_after:
            running.restarts = 0
        delay = min(self.backoff * (2 ** running.restarts), self.max_backoff)
        running.restarts += 1
        log.warning("sensor %s %s; restarting in %.1fs (restart %d)", spec.ref, why, delay, running.restarts)
        return delay

    async def _config(self, running: _Running) -> tuple[dict[str, Any], list[str]]:
        """The config the sensor starts with (its dynamic values rendered, `_SensorConfig`), and the
        secret texts to scrub from its log lines: its pack's secret config values and what rendering
        decrypted. A value that does not render keeps the sensor from starting (an error naming its key)."""
        dynamic, secrets = config_facts(running.config, running.schema)
        if not dynamic:
            return running.config, scrubbable(secrets)
        rendering = _SensorConfig(self.datastore_call)
        config = await rendering.render(running.spec.pack, running.config, running.schema)
        return config, scrubbable([*secrets, *rendering.revealed])

    async def _run_once(self, running: _Running) -> int:
        """One life of the sensor process: its end is the process's own exit, whoever holds its pipes."""
        spec = running.spec
        loop = asyncio.get_running_loop()
        running.returned = running.ran = running.setup_late = False
        running.failure = None
        config, secrets = await self._config(running)
        running.secrets = scrubbable([*secrets, *running.revealed])
        # The sensor's output goes to a pipe of our own, not to the process's transport: asyncio's
        # `wait()` would otherwise wait for every writer of it, a helper the sensor started included.
        log_read, log_write = os.pipe()
        log_file = os.fdopen(log_read, "rb", buffering=0)
        output = asyncio.StreamReader(limit=_LOG_LINE_LIMIT)
        try:
            log_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(output), log_file)
        except BaseException:
            log_file.close()
            os.close(log_write)
            raise
        try:
            # asyncio stops reading a stream past twice its limit: that is the backlog, not the line's limit.
            process, reader, running.writer = await spawn_pack_process(
                SENSOR_SCRIPT, spec.file.parent.parent, running.venv, cwd=spec.file.parent,
                stdout=log_write, stderr=asyncio.subprocess.STDOUT, run_as=self.run_as, limit=MESSAGE_BACKLOG // 2)
        except BaseException:
            log_transport.close()
            raise
        finally:
            os.close(log_write)
        # Set until this life is over, waited for or not: a stop then lets the supervisor finish
        # instead of cancelling it. Once waited for (`returncode` set) the pid is never signalled.
        running.process = process
        running.started = start_time(process.pid)
        running.spawned = loop.time()
        logs = loop.create_task(self._relay_logs(running, output, log_transport), name=f"sensor-log-{spec.ref}")
        messages = loop.create_task(self._read_messages(running, reader), name=f"sensor-messages-{spec.ref}")
        slow = loop.call_later(self.setup_warning, self._setup_slow, running, process)
        try:
            running.send({"file": str(spec.file), "class_name": spec.class_name, "pack": spec.pack,
                          "config": config, "poll_interval": spec.poll_interval,
                          "triggers": list(running.triggers.values())})
            await self._lifecycle(SPAWN, spec, process.pid)
            code = await process.wait()
            exited = loop.time()
            running.writer.close()
            await self._end_group(running, process)  # its helpers gone, both pipes reach their end
            await self._drain(running, messages, logs, exited)
            if not running.stopping:  # as StackStorm's container: no exit trigger for a sensor it stops
                await self._lifecycle(EXIT, spec, process.pid, code)
        finally:
            slow.cancel()
            running.writer.close()
            for task in (messages, logs):
                task.cancel()
            _close_reader(reader)
            log_transport.close()
            running.process = None
        return code

    def _setup_slow(self, running: _Running, process: asyncio.subprocess.Process) -> None:
        """Say, once a life, that the sensor has not finished its `setup()` within `setup_warning` of its start:
        it dispatches nothing until then, whatever the API lists. Its start is said again when it comes."""
        if running.ran or running.stopping or running.process is not process or process.returncode is not None:
            return
        running.setup_late = True
        log.warning("sensor %s has not finished its setup() %gs after it started (pid %d), so it dispatches nothing "
                    "and the rules on its triggers never fire until it does: a connection made without a timeout? "
                    "(said again when it starts running)", running.spec.ref, self.setup_warning, process.pid)

    async def _drain(self, running: _Running, messages: asyncio.Task[None], logs: asyncio.Task[None],
                     exited: float) -> None:
        """What the exited sensor wrote: every message to the end of the pipe, however long handling
        them takes (each is an instance it dispatched, in `cleanup()` too; no more than the pipe and
        `MESSAGE_BACKLOG` hold, as the sensor waited for serve), and its last log lines.

        The message pipe cannot be held by a helper (the sensor's end of it is not inheritable), so
        its end comes once the buffered lines are read; should a forked child that left the group
        hold it, it is given up after `drain_timeout` without a line. The log pipe, which helpers
        inherit, is read for at most `drain_timeout` after the exit."""
        loop = asyncio.get_running_loop()
        began = loop.time()  # a reader that waited since long before the exit has not been idle since
        while not messages.done():
            idle = 0.0 if running.waiting_since is None else loop.time() - max(running.waiting_since, began)
            if idle >= self.drain_timeout:
                log.warning("sensor %s exited but its message pipe stayed open and silent for %gs (a process it "
                            "forked holds it?); no longer reading it", running.spec.ref, self.drain_timeout)
                break
            await asyncio.wait((messages,), timeout=self.drain_timeout - idle)
        await asyncio.wait((logs,), timeout=max(0.0, exited + self.drain_timeout - loop.time()))

    async def _read_messages(self, running: _Running, reader: asyncio.StreamReader) -> None:
        """The sensor's JSON lines (dispatches, datastore calls) until its end of the pipe closes,
        yielding to the loop every `_YIELD_EVERY` of them (a burst is all in the buffer). Each is
        handled before the next is read, and `reader` reads only `MESSAGE_BACKLOG` ahead: a sensor
        dispatching faster than they are stored waits in its `dispatch()`."""
        spec = running.spec
        loop = asyncio.get_running_loop()
        for count in itertools.count(1):
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            running.waiting_since = loop.time()
            try:
                line = await _next_line(reader, LINE_LIMIT)
            except _LineTooLong:  # that message is dropped, the sensor goes on
                log.warning("sensor %s sent a message longer than %d MiB; it was dropped (a dispatch's payload "
                            "must be smaller)", spec.ref, LINE_LIMIT // (1024 * 1024))
                continue
            finally:
                running.waiting_since = None
            if line is None:
                return
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("sensor %s sent a line that is not JSON: %r", spec.ref, line[:200])
                continue
            await self._handle(running, message)

    async def _handle(self, running: _Running, message: dict[str, Any]) -> None:
        op = message.get("op")
        spec = running.spec
        if op == "dispatch":
            await self._dispatch(running, message)
        elif op == "call":
            reply: dict[str, Any] = {"op": "reply", "id": message.get("id")}
            try:
                reply["result"] = await self._call(running, str(message.get("method")), message.get("args") or {})
            except Exception as exc:
                reply["error"] = f"{exc.__class__.__name__}: {exc}"
            running.send(reply)
        elif op == "running":
            running.ran = True
            pid = running.process.pid if running.process is not None else None
            if running.setup_late:
                log.warning("sensor %s is running (pid %s) after all: its setup() took %.0fs", spec.ref, pid,
                            asyncio.get_running_loop().time() - running.spawned)
            else:
                log.info("sensor %s is running (pid %s)", spec.ref, pid)
        elif op == "returned":
            running.returned = True

    async def _call(self, running: _Running, method: str, args: dict[str, Any]) -> Any:
        """One datastore call of the sensor's. A value it has decrypted is added to what its log lines
        are scrubbed of, before it gets the value (and could log it), when the key is encrypted: read
        as stored, without decrypting, it differs from the plaintext (as `_SensorConfig` tells)."""
        result = await self.datastore_call(method, args)
        if method == "get_value" and args.get("decrypt") and isinstance(result, str) and result \
                and result not in running.revealed:
            stored = await self.datastore_call(method, {**args, "decrypt": False})
            if stored != result:
                running.revealed.append(result)
                running.secrets = scrubbable([*running.secrets, result])
        return result

    def _trigger_named(self, running: _Running, name: str) -> dict[str, Any] | None:
        """The trigger (as given to `add_trigger`) whose ref, uid or id is `name`: this sensor's own
        first, then any other running sensor's, as StackStorm finds any stored Trigger by ref."""
        for candidate in (running, *self.running.values()):
            for trigger in candidate.triggers.values():
                if name in (trigger["ref"], trigger["uid"], trigger["id"]):
                    return trigger
        return None

    async def _dispatch(self, running: _Running, message: dict[str, Any]) -> None:
        """One `sensor_service.dispatch`: `trigger` is a trigger type ref (`pack.name`), or the ref of
        a trigger the sensor was given (StackStorm's FileWatchSensor keeps `trigger["ref"]`), which
        stands for that trigger's type and parameters."""
        spec = running.spec
        name, parameters = str(message.get("trigger")), message.get("parameters")
        trigger_type = name
        if (trigger := self._trigger_named(running, name)) is not None:
            trigger_type, parameters = trigger["type"], parameters or trigger["parameters"]
        elif trigger_type not in self.trigger_types:
            self._repeats(running).say(f'dispatched for an unknown trigger "{name}"',
                                       ": it is neither a registered trigger type (pack.name) nor the ref of a trigger "
                                       "given to the sensor's add_trigger; the instance is dropped")
            return
        try:
            await self.dispatch(trigger_type, message.get("payload"), parameters=parameters,
                                trace_tag=message.get("trace_tag") or f"sensor-{spec.ref}-{os.urandom(8).hex()}")
        except TriggerError as exc:  # as StackStorm: a bad payload is logged, the sensor goes on
            self._repeats(running).say(f"dispatched an invalid trigger instance: {exc}")
        except Exception:  # whatever else one instance does, the sensor goes on
            log.exception("sensor %s dispatched a trigger instance that could not be stored", spec.ref)

    def _repeats(self, running: _Running) -> _Repeats:
        """What says the sensor's bad dispatches (`_Repeats`): made at its first, in the loop."""
        if running.repeats is None:  # what it says quotes the sensor (a trigger's name): `printable`
            ref = running.spec.ref
            running.repeats = _Repeats(self.dispatch_warning_interval,
                                       lambda problem: log.warning("sensor %s %s", ref, printable(problem)))
        return running.repeats

    async def _relay_logs(self, running: _Running, output: asyncio.StreamReader,
                          transport: asyncio.ReadTransport) -> None:
        """The sensor's stdout, stderr and logging, as log records of Squall's, levels kept, and
        `running.secrets` masked: read per line, so a secret the sensor decrypts is masked from then on.
        Control characters are escaped (`printable`): a CR in a line wrote over its logger's name.

        It yields to the loop every `_YIELD_EVERY` lines, and relays at most `log_lines_per_second`
        lines and `log_bytes_per_second` bytes a second: past either, lines are dropped and counted
        (`_LineBudget`)."""
        spec = running.spec
        logger = logging.getLogger(f"squall.sensor.{spec.ref}")
        budget = _LineBudget(self.log_lines_per_second, self.log_bytes_per_second,
                             functools.partial(_report_dropped, spec.ref, self.log_lines_per_second,
                                               self.log_bytes_per_second))
        level = logging.INFO
        trace = _Traceback()
        try:
            for count in itertools.count(1):
                if count % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                try:
                    raw = await self._read_line(output, trace, running, logger)
                except _LineTooLong:
                    logger.warning("a line of the sensor's output longer than %d bytes was dropped", _LOG_LINE_LIMIT)
                    continue
                if raw is None:
                    return
                size = len(raw) - raw.endswith(b"\n")  # without its newline: one of `_LOG_LINE_LIMIT` passes
                if not budget.take(size):
                    continue
                text = printable(scrub(raw.decode("utf-8", "replace").rstrip(), running.secrets))
                if trace.open and not trace.takes(text):
                    _relay_traceback(trace, running, logger)
                    level = logging.ERROR  # what follows a traceback at once is read as part of its message
                if trace.takes(text):
                    trace.add(text)
                    continue
                level = _line_level(text, level)
                logger.log(level, "%s", text)
        finally:
            if trace.open:
                _relay_traceback(trace, running, logger)
            budget.flush()
            transport.close()

    async def _read_line(self, output: asyncio.StreamReader, trace: _Traceback, running: _Running,
                         logger: logging.Logger) -> bytes | None:
        """The next line of the sensor's output (`_next_line`). While a traceback is being read, what came of
        it is relayed once its next line takes longer than `traceback_wait` (a process killed half-way
        through printing one), and the read goes on."""
        if not trace.open:
            return await _next_line(output)
        reading = asyncio.ensure_future(_next_line(output))
        try:
            done, _ = await asyncio.wait((reading,), timeout=self.traceback_wait)
            if not done:
                _relay_traceback(trace, running, logger)
            return await reading
        finally:
            if not reading.done():
                reading.cancel()

    async def _lifecycle(self, trigger_ref: str, spec: SensorSpec, pid: int, code: int | None = None) -> None:
        payload = {"object": {"ref": spec.ref, "pack": spec.pack, "class_name": spec.class_name, "pid": pid,
                              **({"exit_code": code} if code is not None else {})}}
        try:
            await self.dispatch(trigger_ref, payload, validate=False)
        except Exception:
            log.exception("could not store the %s trigger for sensor %s", trigger_ref, spec.ref)


class _Traceback:
    """The lines of a traceback in a sensor's output, gathered to be relayed as one record: from
    `Traceback (most recent call last):` to the exception's line (the first line not indented), with the
    tracebacks of chained exceptions after it. The first line and the last `TRACEBACK_LINES` lines (and
    `TRACEBACK_BYTES`) are kept: the frames nearest the error and the exception are at its end."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.head: str | None = None
        self.lines: deque[str] = deque()
        self.size = 0
        self.left_out = 0
        #: Whether the exception's line was read: a chained traceback, or the end, comes next.
        self.ended = False
        #: The last exception line read (the last raised of chained ones).
        self.exception: str | None = None

    @property
    def open(self) -> bool:
        return self.head is not None

    def takes(self, text: str) -> bool:
        """Whether `text` is part of the traceback being read, or starts one."""
        if not self.open:
            return text.startswith(_TRACEBACK_START)
        return not self.ended or text in ("", *_CHAINED) or text.startswith(_TRACEBACK_START)

    def add(self, text: str) -> None:
        if len(text) > _TRACEBACK_LINE:
            text = text[:_TRACEBACK_LINE] + " …"
        if self.head is None:
            self.head = text
            return
        if text.startswith(_TRACEBACK_START):
            self.ended = False
        elif not self.ended and text and not text[0].isspace():
            self.ended, self.exception = True, text
        self.lines.append(text)
        self.size += len(text) + 1
        while len(self.lines) > TRACEBACK_LINES - 1 or self.size > TRACEBACK_BYTES:
            self.size -= len(self.lines.popleft()) + 1
            self.left_out += 1

    def take(self) -> str:
        """The traceback as one text, and this gatherer emptied for the next one."""
        lines = list(self.lines)
        while lines and not lines[-1]:  # the blank line a chain would have followed
            lines.pop()
        cut = [f"  [… {self.left_out} lines of the traceback left out …]"] if self.left_out else []
        text = "\n".join([self.head or "", *cut, *lines])
        self._reset()
        return text


def _relay_traceback(trace: _Traceback, running: _Running, logger: logging.Logger) -> None:
    """Log the gathered traceback as one error record; its exception is what this life of the sensor died of."""
    if trace.exception is not None:
        running.failure = trace.exception
    logger.error("%s", trace.take())


def _line_level(text: str, previous: int) -> int:
    """The log level of a line of a sensor's output: a record of its logging keeps its own, a traceback
    (what killed it) and the lines that go with it are errors, anything else is INFO."""
    first = text.split(" ", 1)[0]
    if first in _LEVELS:  # a record of the sensor's logging
        return _LEVELS[first]
    if text.startswith("Traceback"):
        return logging.ERROR
    if text.startswith(" "):
        return previous
    return previous if previous == logging.ERROR and ":" in text else logging.INFO


class _LineTooLong(ValueError):
    """A line longer than its reader takes (`_next_line`): read to its end and dropped, all of it."""


async def _next_line(stream: asyncio.StreamReader, longest: int = 0) -> bytes | None:
    """The stream's next line (the last may lack its newline); None at its end.

    A line longer than the stream's limit is gathered from its parts, up to `longest` bytes (0: the
    stream's limit): the message pipe's reader buffers little (`MESSAGE_BACKLOG`), its messages may be
    long (`LINE_LIMIT`). A longer line is read to its newline and dropped whole (`_LineTooLong`):
    `readline` drops only what it has buffered of such a line, so the rest came out as a line."""
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # the end: the last line may lack its newline
            line = exc.partial
        except asyncio.LimitOverrunError as exc:
            part = await stream.readexactly(exc.consumed)  # what is buffered of the line (up to its newline, if there)
            size += len(part)
            if size > longest:
                await _skip_line(stream)
                raise _LineTooLong(f"a line longer than {longest or 'the stream limit'} bytes") from None
            parts.append(part)
            continue
        if not parts:
            return line or None
        if size + len(line) > longest:
            raise _LineTooLong(f"a line longer than {longest} bytes")
        return b"".join([*parts, line])


async def _skip_line(stream: asyncio.StreamReader) -> None:
    """Read the rest of the current line (to its newline, or the stream's end) and drop it."""
    while True:
        try:
            await stream.readuntil(b"\n")
            return
        except asyncio.IncompleteReadError:
            return
        except asyncio.LimitOverrunError as exc:
            await stream.readexactly(exc.consumed)


class _LineBudget:
    """At most `per_second` lines and `bytes_per_second` bytes of a sensor's output relayed a second; the
    lines past either are dropped and counted, and the count (lines, bytes, which budget) is reported as
    that second ends (and at the output's end): one line per second of a flood. A sensor stuck printing
    fills neither serve's log nor its loop: dropping a line costs less than logging it. Lines alone were
    no bound: a line may be up to `_LOG_LINE_LIMIT` long."""

    def __init__(self, per_second: int, bytes_per_second: int, report: Callable[[int, int, bool, bool], None]) -> None:
        self.per_second = per_second
        self.bytes_per_second = bytes_per_second
        self.report = report
        self.loop = asyncio.get_running_loop()
        #: When the current second began, and how many lines and bytes it relayed.
        self.since = -math.inf
        self.used = 0
        self.size = 0
        #: Lines and bytes dropped since the last report, whether for lines or bytes, and the report due
        #: at the end of their second.
        self.dropped = 0
        self.dropped_bytes = 0
        self.over_lines = self.over_bytes = False
        self.reporting: asyncio.TimerHandle | None = None

    def take(self, size: int) -> bool:
        """Whether one more line, of `size` bytes, may be relayed now."""
        now = self.loop.time()
        if now - self.since >= 1.0:
            self.since, self.used, self.size = now, 0, 0
        over_lines = self.used >= self.per_second
        over_bytes = self.size + size > self.bytes_per_second
        if not (over_lines or over_bytes):
            self.used += 1
            self.size += size
            return True
        self.dropped += 1
        self.dropped_bytes += size
        self.over_lines |= over_lines
        self.over_bytes |= over_bytes
        if self.reporting is None:
            self.reporting = self.loop.call_at(self.since + 1.0, self.flush)
        return False

    def flush(self) -> None:
        """Report the lines dropped since the last report, if any."""
        if self.reporting is not None:
            self.reporting.cancel()
            self.reporting = None
        if self.dropped:
            report = (self.dropped, self.dropped_bytes, self.over_lines, self.over_bytes)
            self.dropped = self.dropped_bytes = 0
            self.over_lines = self.over_bytes = False
            self.report(*report)


class _Repeats:
    """A sensor's bad dispatches, each distinct problem said once per `interval`: the first at once, the
    ones like it until the interval ends counted, and the count said then ("... and 37,899 more like it
    in the last 10 s"); a problem that keeps coming is so said once per interval, one that stopped is
    said at once when it comes back. Past `most` distinct problems in an interval, the others are only
    counted together. A sensor dispatching in a loop fills neither the log nor serve's memory."""

    #: The key the problems past `most` are counted under.
    OTHERS = "dispatched other bad trigger instances"

    def __init__(self, interval: float, warn: Callable[[str], None], *, most: int = _REPEATS_KEPT,
                 call_later: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None = None) -> None:
        self.interval, self.warn, self.most = interval, warn, most
        self.call_later = call_later or asyncio.get_running_loop().call_later
        #: Each problem in its interval, and how many more like it came in it; and when each interval ends.
        self.counts: dict[str, int] = {}
        self.ends: dict[str, asyncio.TimerHandle] = {}

    def say(self, problem: str, detail: str = "") -> None:
        """One more `problem` (what is said again with its count); `detail` is said with the first only."""
        if problem in self.counts:
            self.counts[problem] += 1
        elif len(self.counts) < self.most:
            self.warn(problem + detail)
            self._begin(problem, 0)
        elif self.OTHERS in self.counts:
            self.counts[self.OTHERS] += 1
        else:
            self._begin(self.OTHERS, 1)

    def _begin(self, problem: str, count: int) -> None:
        self.counts[problem] = count
        self.ends[problem] = self.call_later(self.interval, functools.partial(self._end, problem))

    def _end(self, problem: str) -> None:
        """The interval of `problem` is over: its count is said, and a new interval counts what comes next
        (a problem that did not come again is forgotten, said at once should it come back)."""
        del self.ends[problem]
        count = self.counts.pop(problem)
        if count:
            self._said(problem, count, f"in the last {self.interval:g} s")
            self._begin(problem, 0)

    def _said(self, problem: str, count: int, when: str) -> None:
        if problem == self.OTHERS:
            self.warn(f"{problem} {when}: {count:,} of them, not logged one by one (more than {self.most} distinct "
                      "problems)")
        else:
            self.warn(f"{problem} ... and {count:,} more like it {when}")

    def flush(self) -> None:
        """Say every count not yet said (the sensor is stopped), and forget them."""
        for problem, count in list(self.counts.items()):
            self.ends.pop(problem).cancel()
            del self.counts[problem]
            if count:
                self._said(problem, count, "until the sensor stopped")


def _report_dropped(ref: str, per_second: int, bytes_per_second: int, dropped: int, dropped_bytes: int,
                    over_lines: bool, over_bytes: bool) -> None:
    """Say the lines of a sensor's output dropped in a second: how many, their size, and which budget."""
    over = " and ".join([*([f"{per_second} lines"] if over_lines else []),
                         *([_size(bytes_per_second)] if over_bytes else [])])
    log.warning("sensor %s writes over %s a second to its output: %d lines suppressed (%s)", ref, over, dropped,
                _size(dropped_bytes))


def _size(count: int) -> str:
    """`count` bytes in words: `512 bytes`, `1 MiB`, `10.5 MiB`."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if count >= unit:
            return f"{count / unit:.4g} {name}"
    return f"{count} bytes"


def _exit_reason(code: int) -> str:
    """How a sensor's process ended, for the log: a signal that ended it is named. The wrapper exits
    with 128 + the signal's number on SIGTERM (after `cleanup()`): an operator's `kill PID`."""
    if code < 0:
        return f"was killed by {_signal_name(-code) or f'signal {-code}'}"
    if code > 128 and (name := _signal_name(code - 128)) is not None:
        return f"ended on {name} (exit status {code})"
    return f"exited with status {code}"


def _signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


def _close_reader(reader: asyncio.StreamReader) -> None:
    """Close the pipe behind a reader of `spawn_pack_process`, which returns the reader only: a
    process that left the sensor's group could otherwise keep the pipe, and its transport, open."""
    transport = getattr(reader, "_transport", None)
    if transport is not None:
        transport.close()


__all__ = ["SensorContainer", "SensorSpec", "load_sensors"]
