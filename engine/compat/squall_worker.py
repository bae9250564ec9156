"""A warm fork server for one pack's Python actions (StackStorm's python_action_wrapper, kept warm).

StackStorm starts a fresh interpreter per Python action, paying 0.2-2 s each time (spec §12), and
packs rely on that freshness: module-level code runs once per execution (reading
`ST2_ACTION_EXECUTION_ID` or building clients at import), and globals, `os.environ`, the working
folder and monkeypatches die with the run. Squall keeps one or more of these per pack, each with
the interpreter started, the compat modules and the other packages the pack's actions import
already imported. For each run the parent sends a `fork` line followed by the request, a JSON line,
on a private pipe. The worker reads the `fork` line alone and forks; the child reads the request
itself, imports the action's file, runs it with fd 1 and 2 redirected to the files the parent named,
answers with a JSON line and exits. The worker never reads a request: every later run is a copy of
its memory, so an earlier run's secret parameters or token must never be in it. The worker then
reports the child's exit (`{"op": "exit"}`) and waits for the next run in the state it started in:
nothing a run does reaches the next one. Datastore calls from `action_service` travel the same pipes
between the child and the parent. Standard library only, and Python 3.8 syntax and library: it runs
under the pack's virtualenv (StackStorm 3.8 ships Python 3.8).
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import ctypes
import dataclasses
import datetime
import enum
import gc
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import select
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, NoReturn

import squall_paths
from st2common.runners.base_action import Action
from st2common.runners.utils import get_action_class_instance

INVALID_STATUS_EXIT = 220
AUDIT_LEVEL = 25  # StackStorm's AUDIT, between INFO and WARNING (st2common.log)
#: The format of `self.logger`'s lines: StackStorm's `get_logger_for_python_runner_action`.
ACTION_LOG_FORMAT = "%(name)-12s: %(levelname)-8s %(message)s"


#: The protocol's own JSON coders, bound before any action runs: an action that patches `json.dumps`
#: (or mocks it in a test it runs) must not garble its run's answer to the parent.
_encode = json.JSONEncoder(default=str).encode
_decode = json.JSONDecoder().decode


#: The command that asks the worker for a run's process; the request follows it on the pipe.
FORK = b"fork"


class Channel:
    """The JSON-lines pipes to the parent."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        # The parent passed these inheritable (`pass_fds`); a program the action starts in the
        # background would keep the reply pipe open after this worker died, and the parent, seeing no
        # EOF, would wait out the action's whole timeout. Nothing an action starts may hold them.
        os.set_inheritable(read_fd, False)
        os.set_inheritable(write_fd, False)
        self.read_fd = read_fd
        self.reader = os.fdopen(read_fd, "rb")
        self.writer = os.fdopen(write_fd, "wb")
        #: Held by whoever reads the pipe in a run: one datastore call at a time (an action's threads
        #: calling at once would otherwise read each other's answers: another key's value, or secret),
        #: and by the run's end, so that no thread of it still reads the pipe once it answered.
        self.call_lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(_encode(message).encode("utf-8") + b"\n")
        self.writer.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self.reader.readline()
        return _decode(line.decode("utf-8")) if line else None

    def command(self) -> bytes | None:
        """The worker's next command line (`fork`), or None at the end of the pipe.

        Read a byte at a time straight from the pipe, never through `reader`, whose buffer would read
        ahead into the request behind the command: the worker must hold no request, as every later run
        is a copy of it. Any other line (the answer to a datastore call whose run ended before reading
        it) is skipped byte by byte, only its first bytes kept, so it is never in the worker either."""
        byte = bytearray(1)
        line = bytearray()
        try:
            while os.readv(self.read_fd, [byte]):
                if byte == b"\n":
                    return bytes(line) if len(line) <= len(FORK) else b""
                if len(line) <= len(FORK):
                    line += byte
            return None
        finally:
            byte[0] = 0


class ConfigKeyError(KeyError):
    """A pack config key that is not set: a KeyError, as a plain dict's (StackStorm's config), so a pack's
    `try: self.config["username"] except KeyError:` fallback runs (the jenkins and napalm packs' do); its
    text says which key and where to set it, not KeyError's bare `'username'`. `args[0]` is the key."""

    def __str__(self) -> str:
        return (f'config key "{self.args[0]}" is not set for this pack; set it in configs/<pack>.yaml or give '
                "it a default in config.schema.yaml")


class ConfigDict(dict):
    """A pack config that says which key is missing, where a plain dict's KeyError names only the key."""

    def __missing__(self, key: str) -> Any:
        raise ConfigKeyError(key)


class KeyValuePair:
    """What `list_values` returns, shaped like st2client's KeyValuePair."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"<KeyValuePair name={self.name!r}>"


class ActionService:
    """`self.action_service`: StackStorm's datastore methods, answered by the Squall service."""

    def __init__(self, channel: Channel, pack: str, class_name: str, user: str | None) -> None:
        self._channel = channel
        self._prefix = f"{pack}.{class_name}:"
        self._user = user

    @property
    def datastore_service(self) -> ActionService:
        return self

    def _name(self, name: str, local: bool) -> str:
        return f"{self._prefix}{name}" if local else name

    @staticmethod
    def _check_scope(scope: str) -> None:
        if scope not in ("system", "st2kv.system"):
            raise ValueError(f"Scope {scope} is unsupported.")

    def _call(self, method: str, **arguments: Any) -> Any:
        with self._channel.call_lock:
            self._channel.send({"op": "call", "method": method, "args": arguments})
            reply = self._channel.receive()
        if reply is None:
            raise SystemExit(0)
        if reply.get("error"):
            raise RuntimeError(reply["error"])
        return reply.get("result")

    def get_user_info(self) -> dict[str, Any]:
        return {"username": self._user}

    def list_values(
        self, local: bool = True, prefix: str | None = None, limit: int | None = None, offset: int | None = None
    ) -> list[KeyValuePair]:
        full_prefix = self._name(prefix or "", local)
        items = self._call("list_values", prefix=full_prefix, limit=limit, offset=offset)
        return [KeyValuePair(**item) for item in items]

    def get_value(self, name: str, local: bool = True, scope: str = "system", decrypt: bool = False) -> Any:
        self._check_scope(scope)
        return self._call("get_value", name=self._name(name, local), decrypt=decrypt)

    def set_value(
        self, name: str, value: Any, ttl: int | None = None, local: bool = True, scope: str = "system",
        encrypt: bool = False,
    ) -> bool:
        self._check_scope(scope)
        return self._call("set_value", name=self._name(name, local), value=str(value), ttl=ttl, encrypt=encrypt)

    def delete_value(self, name: str, local: bool = True, scope: str = "system") -> bool:
        self._check_scope(scope)
        return self._call("delete_value", name=self._name(name, local))

    def format_result(self, execution_id: str) -> dict[str, Any]:
        """Squall's addition, for `chatops.format_execution_result`: `{message, extra?}`, the execution's result
        as Squall's chat shows it (its alias's `result` format, else StackStorm's default); StackStorm's action
        reads the execution and the alias through st2client and renders them itself."""
        return self._call("format_result", execution_id=execution_id)

    def dispatch(self, trigger: str, payload: dict[str, Any] | None = None, trace_tag: str | None = None) -> Any:
        """Squall's addition, for `core.inject_trigger`: a trigger instance of the registered type `trigger`,
        stored by the service (its rules fire) and returned; StackStorm's goes through st2client's webhooks."""
        return self._call("dispatch", trigger=trigger, payload=payload or {}, trace_tag=trace_tag)


def load_module(path: str, prefix: str) -> Any:
    """Import a pack's Python file by path, its folder importable (as StackStorm's wrappers do)."""
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.append(folder)
    name = prefix + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _implements_run(cls: type) -> bool:
    """StackStorm's test for an action class: `run` is a plain function that is not abstract."""
    run = inspect.getattr_static(cls, "run", None)
    return inspect.isfunction(run) and not getattr(run, "__isabstractmethod__", False)


def load_action_class(path: str) -> type:
    """The action class of a file, chosen as StackStorm's python runner chooses it (cached until the file
    changes): among the classes defined in the file itself, ordered by name, the first whose `run()` is
    implemented, whether or not it derives from `Action` (the jira pack's classes do not). A file whose
    only action class is imported from elsewhere, which StackStorm refuses, keeps working as before.
    Imported afresh by every run (each runs in a new child), so its module-level code runs per execution.
    """
    module = load_module(path, "squall_action_")
    classes = sorted((obj for obj in vars(module).values() if inspect.isclass(obj)), key=lambda obj: obj.__name__)
    own = [obj for obj in classes if obj.__module__ == module.__name__ and _implements_run(obj)]
    if own:
        return own[0]
    imported = [obj for obj in classes if issubclass(obj, Action) and obj is not Action and _implements_run(obj)]
    if not imported:
        raise ImportError(f"{path} defines no action class: StackStorm takes the first class of the file that "
                          "implements run() (derived from st2common.runners.base_action.Action or not)")
    return imported[0]


def log_level(name: Any) -> int:
    """The run's `log_level` runner parameter as a logging level (DEBUG for a name logging does not know,
    as StackStorm's wrapper reads it)."""
    level_name = str(name or "DEBUG").upper()
    return AUDIT_LEVEL if level_name == "AUDIT" else getattr(logging, level_name, logging.DEBUG)


def action_logger(class_name: str, level: int) -> logging.Logger:
    """`self.logger` as StackStorm's Python wrapper makes it: `actions.python.<ClassName>`, with a handler
    of its own to stderr, both at the run's `log_level`.

    Nothing else is configured, the root logger least of all: a library's logger (urllib3, which logs
    each request line, query string and the API key in it included, at DEBUG) has no handler, so only
    its warnings and errors reach stderr, through Python's last resort, as under StackStorm."""
    logger = logging.getLogger(f"actions.python.{class_name}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(ACTION_LOG_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger


def make_action(cls: type, config: dict[str, Any], service: ActionService, level: int) -> Any:
    """The action instance, its `self.logger` StackStorm's (`action_logger`).

    The compat `Action` names its logger after the class's module; until its constructor is done that
    logger logs as the action's own (same handler and level), then `self.logger` becomes StackStorm's.
    An action that set `self.logger` itself keeps its own."""
    logger = action_logger(cls.__name__, level)
    provisional = logging.getLogger(f"{cls.__module__}.{cls.__name__}")
    provisional.handlers, provisional.propagate = list(logger.handlers), False
    provisional.setLevel(level)
    action = get_action_class_instance(cls, config=ConfigDict(config), action_service=service)
    if getattr(action, "logger", None) is provisional:
        action.logger = logger
    return action


def _orjson_like(value: Any) -> Any:
    """`value` as StackStorm's orjson serializes it, or TypeError where orjson refuses it.

    Beyond the json module: datetimes, dates and times as ISO 8601, UUIDs as text, enums as their
    value, dataclasses as objects, NaN and infinities as null. Like orjson: bytes, sets, keys that are
    not strings and integers beyond 64 bits are refused.
    """
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not -(2 ** 63) <= value < 2 ** 64:
            raise TypeError("Integer exceeds 64-bit range")
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("Dict key must be str")
        return {str(k): _orjson_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_orjson_like(item) for item in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return _orjson_like(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _orjson_like(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def stored_result(value: Any) -> Any:
    """The result as StackStorm stores it: serialized as its orjson does, or, when that fails, the
    value's `str()` (so bytes become `"b'...'"`, as in StackStorm, instead of failing the execution).

    StackStorm's wrapper writes `str({'result': ..., 'status': None})` for a result returned without a
    status and its runner cuts the result's text out of that line, leaving the tail `, 'status': None}`
    on it; Squall stores the `str()` alone in both cases (docs/stackstorm-compat.md).
    """
    try:
        return _orjson_like(value)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def exit_status(exc: SystemExit) -> int:
    """The exit status the interpreter gives `sys.exit(code)`, which is how StackStorm's wrapper process
    ends when an action calls it: None is 0 (a success: `sys.exit()` after the work is done), an int is
    that status (modulo 256, as the kernel keeps it), anything else is printed on stderr and is 1. No
    traceback: a deliberate exit is not a crash."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256
    with contextlib.suppress(Exception):  # an object whose str() fails still ends the run with 1
        print(code, file=sys.stderr, flush=True)
    return 1


def run_one(channel: Channel, request: dict[str, Any]) -> dict[str, Any]:
    """Run the requested action in this (forked, single-use) process and say how it ended.

    The execution's variables are set before the action's file is imported, as StackStorm's wrapper
    has them in its environment from the start; nothing is restored: the process ends with the run.
    """
    os.environ.update(request.get("env") or {})
    try:
        cls = load_action_class(request["file"])
        service = ActionService(channel, request["pack"], cls.__name__, request.get("user"))
        action = make_action(cls, request.get("config") or {}, service, log_level(request.get("log_level")))
        returned = action.run(**(request.get("parameters") or {}))
    except SystemExit as exc:  # ends StackStorm's wrapper process as any Python program ends
        return {"op": "done", "status": None, "result": "None", "exit_code": exit_status(exc)}
    except BaseException as exc:  # the action's failure, whatever it is, belongs to the execution
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        sys.stderr.flush()
        return {"op": "done", "status": None, "result": "None", "exit_code": 1}
    finally:
        with contextlib.suppress(Exception):  # a stream the action closed has nothing left to flush
            sys.stdout.flush()
            sys.stderr.flush()
    if isinstance(returned, tuple) and len(returned) == 2:
        status, result = returned
        if isinstance(status, bool):
            return {"op": "done", "status": status, "result": stored_result(result), "exit_code": 0}
        if status is not None:
            print(f"The action returned an invalid status {status!r}: the first item of a (status, result) "
                  "tuple must be True or False", file=sys.stderr, flush=True)
            return {"op": "done", "status": False, "result": None, "exit_code": INVALID_STATUS_EXIT}
        returned = result  # (None, result): no status, as StackStorm's wrapper reads it
    return {"op": "done", "status": None, "result": stored_result(returned), "exit_code": 0}


def _release_in_forked_child(fds: tuple[int, ...]) -> None:
    """In a child the action forks without exec (os.fork, multiprocessing): point the protocol pipes
    at /dev/null.

    Non-inheritable descriptors survive a fork that never execs; a child outliving the run would
    hold the pipes open, and the parent, seeing no EOF, would wait out the action's whole timeout.
    The numbers stay taken, so the run's file objects, copied into the child, can never close a
    descriptor the child opens later.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd, inheritable=False)
    os.close(null)


_PR_SET_PDEATHSIG = 1


def _find_prctl() -> Any:
    """libc's `prctl`, looked up once in the worker (a lookup per run would cost each run ~1 ms)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _find_prctl()
#: Shared with `squall_sensor`, which makes itself the subreaper of what its sensor starts.
prctl = _prctl


def _die_with(parent: int) -> None:
    """Make this run's process get SIGKILL when the worker ends (a fork does not inherit the worker's
    parent-death signal), so a run never outlives the service; exit now if the worker already ended."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


def _end_interpreter() -> None:
    """What the end of StackStorm's interpreter does after the action: wait for the non-daemon threads
    the action left, then run the exit handlers (`atexit`). The child ends with `os._exit`, which does
    neither, so they run here, before the output is measured and the answer sent (the run's timeout
    still bounds them). Their failures are reported on stderr, as at an interpreter's exit."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx calls; 3.8 and later
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()


def _size(fd: int) -> int | None:
    """The size of a capture file by the run's own descriptor of it (None if the action closed that too:
    the parent then reads the file)."""
    try:
        return os.fstat(fd).st_size
    except OSError:
        return None


def _flush() -> None:
    with contextlib.suppress(Exception):  # a stream the action closed has nothing left to flush
        sys.stdout.flush()
        sys.stderr.flush()


def _interrupted() -> NoReturn:
    """End as an interpreter ends on an uncaught KeyboardInterrupt: killed by SIGINT (exit code -2)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    os._exit(128 + signal.SIGINT)  # only if the action blocked SIGINT


def _run_child(channel: Channel, worker: int) -> NoReturn:
    """The forked child: read the request, redirect fd 1 and 2 to this run's capture files, run,
    answer, exit.

    Never returns into the worker's loop, whatever happens: a second copy of the loop would read the
    parent's next command. Exits by `os._exit` once the action's threads and exit handlers are done
    (`_end_interpreter`), so nothing of the worker's own shutdown runs; the worker reports the exit code.
    The capture files are measured through private descriptors: the action may close or redirect fd 1
    and 2 (silencing a noisy library), and what it wrote before still counts."""
    code = 70  # EX_SOFTWARE: the run could not even be set up
    try:
        _die_with(worker)
        own = (channel.read_fd, channel.writer.fileno())
        os.register_at_fork(after_in_child=lambda: _release_in_forked_child(own))
        request = channel.receive()
        if request is None or request.get("op") != "run":
            raise RuntimeError(f"expected a run request after the fork command, got {request!r}")
        captures = []
        for fd, path in ((1, request["stdout_path"]), (2, request["stderr_path"])):
            capture = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.dup2(capture, fd)
            captures.append(capture)  # kept (not inheritable) to measure the file at the end
        try:
            reply = run_one(channel, request)
        except KeyboardInterrupt:
            traceback.print_exc()
            _end_interpreter()
            _flush()
            _interrupted()
        _end_interpreter()
        _flush()
        reply["stdout_size"], reply["stderr_size"] = _size(captures[0]), _size(captures[1])
        # Kept until the process ends: a daemon thread's datastore call still waiting for its answer
        # gets it first, and after the answer below no thread reads the pipe, where the parent may
        # already have written the next run's request.
        channel.call_lock.acquire()
        channel.send(reply)
        code = 0
    except BaseException:  # reported on the run's stderr; the exit code tells the parent
        with contextlib.suppress(BaseException):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_code(status: int) -> int:
    """A wait status as an exit code, negative for a signal (`os.waitstatus_to_exitcode`, which Python
    3.8 lacks)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


#: Most action files scanned for the packages a worker imports ahead of the runs.
_SCAN_LIMIT = 500


def _imported_names(tree: ast.Module) -> set[str]:
    """The modules (dotted names) a module imports absolutely at its top level (try blocks included)."""
    names: set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Try):
            statements.extend([*node.body, *node.orelse, *node.finalbody,
                               *(stmt for handler in node.handlers for stmt in handler.body)])
    return names


def _outside(spec: Any, folder: str) -> bool:
    """Whether a module's files are outside `folder` (the pack): a package from the virtualenv,
    Squall's site-packages or the standard library, not the pack's own code."""
    places = [spec.origin] if spec.origin and spec.origin not in ("built-in", "frozen") else []
    places.extend(spec.submodule_search_locations or [])
    return all(not os.path.realpath(place).startswith(folder + os.sep) for place in places)


def _candidates(folder: str) -> list[str]:
    """The packages the pack's code (`actions/`, `lib/`) imports from outside the pack (`requests`,
    `boto3`, `yaml`...), which the worker imports ahead of the runs.

    Only packages outside the pack: the pack's own modules (`actions/lib`, files beside the actions)
    are imported afresh by every run, as their module-level code may read the execution's variables.
    A name that also names a module beside an action file is skipped (the action may mean its own)."""
    files = sorted(path for sub in ("actions", "lib") for path in (Path(folder) / sub).rglob("*.py"))[:_SCAN_LIMIT]
    names: set[str] = set()
    for path in files:
        with contextlib.suppress(OSError, SyntaxError, ValueError):
            names |= _imported_names(ast.parse(path.read_bytes(), str(path)))
    beside = {path.parent for path in files}
    chosen = []
    for name in sorted(names):
        top = name.partition(".")[0]
        if not any((place / f"{top}.py").exists() or (place / top).is_dir() for place in beside):
            chosen.append(name)
    return chosen


def _import_outside(name: str, folder: str) -> bool:
    """Import `name` if it comes from outside the pack; whether it did. A package that fails to import
    is left for the run, which reports the failure itself."""
    try:
        spec = importlib.util.find_spec(name.partition(".")[0])
        if spec is None or not _outside(spec, folder):
            return False
        importlib.import_module(name)
        return True
    except (Exception, SystemExit):
        return False


def _probe(pack_path: str, skip: set[str], out: int, worker: int, protocol: tuple[int, ...]) -> NoReturn:
    """A forked probe: try each candidate package, writing `?name` before and `+name` after each import
    that worked, then exit. Runs in its own process so that an import that blocks blocks only it."""
    try:
        _die_with(worker)
        _release_in_forked_child(protocol)
        folder = os.path.realpath(pack_path)
        for name in _candidates(folder):
            if name in skip or name in sys.modules:
                continue
            os.write(out, b"?" + name.encode() + b"\n")
            if _import_outside(name, folder):
                os.write(out, b"+" + name.encode() + b"\n")
    finally:
        os._exit(0)


#: Seconds a probe may spend on one package before it counts as stuck (an import that connects to an
#: unreachable host, say): killed, and that package left to the runs.
PROBE_STALL = 5.0


class Warmer:
    """Imports, in the worker's idle time, the packages the pack imports from outside itself, so a run's
    child finds them loaded instead of paying their import, without ever delaying or failing a run.

    An import cannot be interrupted safely, and a package's import-time code may block. So the worker
    sends `ready` first, and a probe (a fork of the worker, `_probe`) tries the packages; the worker
    imports only those the probe imported, one at a time, and only while no command waits (each took
    the probe less than `PROBE_STALL`). A probe silent for `PROBE_STALL` is killed and its package
    skipped, and a new probe goes on with the rest. Meanwhile the worker serves runs as they come; a
    run that comes early imports what it needs itself, as every run does in StackStorm."""

    def __init__(self, pack_path: str, protocol: tuple[int, ...]) -> None:
        self.pack_path = pack_path
        self.folder = os.path.realpath(pack_path)
        self.protocol = protocol
        self.tried: set[str] = set()
        self.to_import: list[str] = []
        self.probe: int | None = None
        self.probe_out = -1
        self.partial = b""
        self.trying: str | None = None
        self.deadline = 0.0
        self.probed = False

    @property
    def done(self) -> bool:
        return self.probed and not self.to_import

    def work(self, command_fd: int) -> None:
        """Warm the worker until a command is waiting on `command_fd`, or there is nothing left to do."""
        while not self.done:
            if self.to_import:
                if select.select([command_fd], [], [], 0)[0]:
                    return
                _import_outside(self.to_import.pop(0), self.folder)
            elif self.probe is None:
                self._start_probe()
            else:
                wait = max(0.0, self.deadline - time.monotonic())
                ready = select.select([command_fd, self.probe_out], [], [], wait)[0]
                if self.probe_out in ready:
                    self._read_probe()
                elif command_fd in ready:
                    return
                else:
                    self._end_probe(stuck=True)

    def _start_probe(self) -> None:
        read, write = os.pipe()
        worker = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _probe(self.pack_path, self.tried, write, worker, self.protocol)
        os.close(write)
        self.probe, self.probe_out, self.partial, self.trying = pid, read, b"", None
        self.deadline = time.monotonic() + PROBE_STALL

    def _read_probe(self) -> None:
        data = os.read(self.probe_out, 65536)
        if not data:
            self._end_probe(stuck=False)
            return
        self.deadline = time.monotonic() + PROBE_STALL
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            name = line[1:].decode()
            if line[:1] == b"?":
                self.tried.add(name)
                self.trying = name
            elif line[:1] == b"+":
                self.to_import.append(name)
                self.trying = None

    def _end_probe(self, stuck: bool) -> None:
        assert self.probe is not None
        if stuck:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.probe, signal.SIGKILL)
        os.waitpid(self.probe, 0)
        os.close(self.probe_out)
        # A probe stuck before it named a package (scanning the pack) would be stuck again: give up.
        self.probed = not stuck or self.trying is None
        self.probe, self.probe_out = None, -1


def serve(channel: Channel, warmer: Warmer) -> None:
    """The fork server's loop: one `fork` command, one child, its exit reported; until the parent closes.

    The collector's objects are frozen across the fork, so the child's collections never walk (and
    copy) the worker's memory."""
    worker = os.getpid()
    while True:
        try:
            warmer.work(channel.read_fd)
        except Exception:  # warming is only an optimization (a fork refused, say): runs go on without it
            traceback.print_exc()
            warmer.probed, warmer.to_import = True, []
        command = channel.command()
        if command is None:
            return
        if command != FORK:  # an answer meant for a run that ended: never a command
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()
        child = os.fork()
        if child == 0:
            _run_child(channel, worker)
        gc.unfreeze()
        _, status = os.waitpid(child, 0)
        channel.send({"op": "exit", "pid": child, "code": _exit_code(status)})


def main() -> None:
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    pack_path = os.environ.get(squall_paths.PACK_PATH_VARIABLE) or os.getcwd()
    squall_paths.install_from_environment()
    channel.send({"op": "ready", "pid": os.getpid()})
    serve(channel, Warmer(pack_path, (channel.read_fd, channel.writer.fileno())))


if __name__ == "__main__":
    main()
