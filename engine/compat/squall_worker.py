"""A warm worker for one pack's Python actions (StackStorm's python_action_wrapper, kept alive).

StackStorm starts a fresh interpreter per Python action, paying 0.2-2 s each time (spec §12).
Squall keeps one or more of these per pack: the parent sends one request at a time as a JSON
line on a private pipe, the worker runs the action with fd 1 and 2 redirected to the files the
parent named, and answers with a JSON line. Datastore calls from `action_service` travel the
same pipes back to the parent. Standard library only: it runs under the pack's virtualenv.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import importlib.util
import inspect
import json
import logging
import math
import os
import sys
import traceback
import uuid
from typing import Any

import squall_paths
from st2common.runners.base_action import Action
from st2common.runners.utils import get_action_class_instance

INVALID_STATUS_EXIT = 220
AUDIT_LEVEL = 25  # StackStorm's AUDIT, between INFO and WARNING (st2common.log)


class Channel:
    """The JSON-lines pipes to the parent."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        # The parent passed these inheritable (`pass_fds`); a program the action starts in the
        # background would keep the reply pipe open after this worker died, and the parent, seeing no
        # EOF, would wait out the action's whole timeout. Nothing an action starts may hold them.
        os.set_inheritable(read_fd, False)
        os.set_inheritable(write_fd, False)
        self.reader = os.fdopen(read_fd, "rb")
        self.writer = os.fdopen(write_fd, "wb")

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message, default=str).encode("utf-8") + b"\n")
        self.writer.flush()

    def receive(self) -> dict[str, Any] | None:
        line = self.reader.readline()
        return json.loads(line) if line else None


class ConfigDict(dict):
    """A pack config that says which key is missing, instead of a bare KeyError."""

    def __missing__(self, key: str) -> Any:
        raise ValueError(
            f'config key "{key}" is not set for this pack; set it in configs/<pack>.yaml or give it a '
            "default in config.schema.yaml"
        )


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


_modules: dict[tuple[str, float], Any] = {}


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
    """
    key = (path, os.stat(path).st_mtime)
    module = _modules.get(key)
    if module is None:
        module = _modules[key] = load_module(path, "squall_action_")
    classes = sorted((obj for obj in vars(module).values() if inspect.isclass(obj)), key=lambda obj: obj.__name__)
    own = [obj for obj in classes if obj.__module__ == module.__name__ and _implements_run(obj)]
    if own:
        return own[0]
    imported = [obj for obj in classes if issubclass(obj, Action) and obj is not Action and _implements_run(obj)]
    if not imported:
        raise ImportError(f"{path} defines no action class: StackStorm takes the first class of the file that "
                          "implements run() (derived from st2common.runners.base_action.Action or not)")
    return imported[0]


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


def _restore_environment(saved: dict[str, str]) -> None:
    """Undo what the run changed in os.environ, touching only the variables that differ."""
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def run_one(channel: Channel, request: dict[str, Any]) -> dict[str, Any]:
    saved_env = os.environ.copy()
    os.environ.update(request.get("env") or {})
    level_name = str(request.get("log_level", "DEBUG")).upper()
    level = AUDIT_LEVEL if level_name == "AUDIT" else getattr(logging, level_name, logging.DEBUG)
    logging.getLogger().setLevel(level)
    try:
        cls = load_action_class(request["file"])
        service = ActionService(channel, request["pack"], cls.__name__, request.get("user"))
        action = get_action_class_instance(cls, config=ConfigDict(request.get("config") or {}),
                                           action_service=service)
        returned = action.run(**(request.get("parameters") or {}))
    except BaseException as exc:  # the action's failure, whatever it is, belongs to the execution
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        sys.stderr.flush()
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
        return {"op": "done", "status": None, "result": "None", "exit_code": code or 1}
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        _restore_environment(saved_env)
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
    """In a child the action forks without exec (os.fork, multiprocessing): point the worker's own
    descriptors (the protocol pipes, the saved stdout and stderr pipe) at /dev/null.

    Non-inheritable descriptors survive a fork that never execs; a child outliving the worker would
    hold the pipes open as above. The numbers stay taken, so the worker's file objects, copied into the
    child, can never close a descriptor the child opens later.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd, inheritable=False)
    os.close(null)


def main() -> None:
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
    squall_paths.install_from_environment()
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channel.send({"op": "ready", "pid": os.getpid()})
    original_out, original_err = os.dup(1), os.dup(2)  # not inheritable (os.dup's default)
    own = (channel.reader.fileno(), channel.writer.fileno(), original_out, original_err)
    os.register_at_fork(after_in_child=lambda: _release_in_forked_child(own))
    captures: dict[str, int] = {}
    while (request := channel.receive()) is not None:
        # The parent names one pair of capture files per worker; they are reused, emptied each time.
        for path in (request["stdout_path"], request["stderr_path"]):
            if path not in captures:
                captures[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            else:
                os.ftruncate(captures[path], 0)
                os.lseek(captures[path], 0, os.SEEK_SET)
        os.dup2(captures[request["stdout_path"]], 1)
        os.dup2(captures[request["stderr_path"]], 2)
        try:
            reply = run_one(channel, request)
        finally:
            os.dup2(original_out, 1)
            os.dup2(original_err, 2)
        reply["stdout_size"] = os.fstat(captures[request["stdout_path"]]).st_size
        reply["stderr_size"] = os.fstat(captures[request["stderr_path"]]).st_size
        channel.send(reply)


if __name__ == "__main__":
    main()
