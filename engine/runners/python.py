"""`python-script`: StackStorm Python actions, run unmodified, each in a fresh process.

Each pack gets a small pool of long-lived `squall_worker.py` fork servers under the pack's
virtualenv interpreter (or Squall's own when the pack has none), with the interpreter started and
shared packages imported. A run is a pipe round trip and a fork: the worker's child imports the
action, runs it, answers and exits, so no module state, environment change or working folder of one
run reaches the next (StackStorm's fresh interpreter per run, without its start-up cost). A worker
serves one run at a time; a timeout or cancel kills that worker and its run, a crash of the run
retires that worker, and the pool starts another when it is next needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import secrets
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.processes import LEDGER, dying_with_service
from engine.runners import OUTPUT_LIMIT, RunAs, RunOutcome, RunRequest, truncation
from engine.runners.environment import action_variables, inherited_environment

COMPAT_PATH = Path(__file__).resolve().parent.parent / "compat"
#: The variable naming the pack's folder to `compat/squall_paths.py` (which removes it at start).
PACK_PATH_VARIABLE = "_SQUALL_PACK_PATH"
WORKER_SCRIPT = COMPAT_PATH / "squall_worker.py"
#: The longest line read from a pack process (an action's result, a sensor's message), and the default
#: limit of the reader of its message pipe (`spawn_pack_process`).
LINE_LIMIT = 64 * 1024 * 1024

#: Answers a datastore call from an action: (method, arguments, request) -> result.
CallHandler = Callable[[str, dict[str, Any], RunRequest], Awaitable[Any]]


class WorkerDied(Exception):
    """The process running an action ended without answering (the run's child, or the worker)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        #: The run's exit code, when the worker reported it (None when the worker itself ended).
        self.code = code


class Worker:
    """One live worker process and the pipes to it."""

    def __init__(self, process: asyncio.subprocess.Process, reader: asyncio.StreamReader,
                 writer: asyncio.WriteTransport) -> None:
        self.process = process
        self.reader = reader
        self.writer = writer
        self.stderr_tail = bytearray()
        #: The last run answered, and the worker's report of its process's exit is still to be read.
        self.settling = False
        self._drain = asyncio.ensure_future(self._keep_stderr())

    async def _keep_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(4096):
            self.stderr_tail = (self.stderr_tail + chunk)[-4096:]

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message).encode("utf-8") + b"\n")

    def start_run(self, request: dict[str, Any]) -> None:
        """Ask the worker for a run's process (`fork`) and hand that process the request.

        The worker reads only the `fork` line; the forked child reads the request behind it, so the
        worker, which every later run copies, never holds a request's secrets (squall_worker.py)."""
        self.writer.write(b"fork\n" + json.dumps(request).encode("utf-8") + b"\n")

    async def receive(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line:
            await self.process.wait()
            raise WorkerDied(f"the worker exited with code {self.process.returncode}")
        try:
            return json.loads(line)
        except ValueError as exc:  # a run killed halfway through writing its answer
            raise WorkerDied(f"the worker sent a garbled message ({exc}): {line[:200]!r}") from exc

    def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.writer.close()

    async def close(self) -> None:
        """Kill the process and wait until its pipes are closed, so no transport outlives it."""
        self.kill()
        await asyncio.shield(self.process.wait())
        LEDGER.untrack(self.process.pid)
        try:
            await asyncio.wait_for(asyncio.shield(self._drain), 2)
        except TimeoutError:
            self._drain.cancel()


def interpreter(venv: Path) -> str:
    """The python of the pack virtualenv `venv`, Squall's own where it has none (a pack without requirements):
    what runs a pack's Python actions, and a shell script that names StackStorm's interpreter."""
    candidate = venv / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


#: Packages StackStorm's own environment gives every action, which Exchange packs import without
#: declaring them; found wherever Squall's interpreter has them (docs/stackstorm-compat.md).
ST2_RUNTIME_PACKAGES = ("six",)


def _runtime_package_folders() -> list[str]:
    """The import-path folders holding `ST2_RUNTIME_PACKAGES` for Squall's interpreter.

    Located by import spec rather than assumed in `purelib`, so a user or system install of Squall
    (where the packages may sit in another site folder) still hands them to actions.
    """
    folders: list[str] = []
    for name in ST2_RUNTIME_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            continue
        folder = Path(spec.origin).parent
        if spec.submodule_search_locations:  # a package: its folder's parent is on the path
            folder = folder.parent
        if str(folder) not in folders:
            folders.append(str(folder))
    return folders


def _pythonpath(pack_path: Path, venv: Path | None = None) -> str:
    """Compat package, the pack's lib folders, the pack's virtualenv, then Squall's own site-packages
    and StackStorm's runtime packages (as st2 does).

    The pack's site-packages is named before Squall's: PYTHONPATH comes ahead of the interpreter's
    own site folder, so without it Squall's copy of a library would shadow the version the pack's
    requirements pinned (StackStorm also puts the pack's virtualenv first).
    """
    parts = [str(COMPAT_PATH), str(pack_path / "actions" / "lib"), str(pack_path / "lib")]
    if venv is not None:
        parts.extend(sorted(str(site) for site in venv.glob("lib/python*/site-packages")))
    for folder in [sysconfig.get_paths()["purelib"], *_runtime_package_folders()]:
        if folder not in parts:
            parts.append(folder)
    return os.pathsep.join(parts)


async def spawn_pack_process(script: Path, pack_path: Path, venv: Path, *, cwd: Path,
                             stdout: int, stderr: int, run_as: RunAs | None = None, limit: int = LINE_LIMIT,
                             ) -> tuple[asyncio.subprocess.Process, asyncio.StreamReader, asyncio.WriteTransport]:
    """Start `script` (an action worker, a sensor) under the pack's interpreter, with the compat path
    and the credentials withheld from every action, talking JSON lines on two private pipes.

    `limit` is the message reader's: asyncio stops reading the pipe while more than twice that is
    buffered unread (the process's writes then block), and its `readline` takes no longer line. The
    sensor container passes a small one, so a sensor that dispatches faster than serve stores waits,
    and gathers longer lines itself (`engine.sensors._next_line`).

    With `run_as` the process starts as that user and its groups (the service must be root). It
    dies with the service (`shell.dying_with_service`) and is in this process's owner file until the
    caller waited for it and called `LEDGER.untrack(pid)`."""
    loop = asyncio.get_running_loop()
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    env = inherited_environment(run_as)
    # The pack virtualenv's tools first, as st2's sandbox PATH puts them: the Exchange `ansible` pack runs
    # `ansible-playbook` by name, which its requirements installed there.
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH") or os.defpath])
    env["PYTHONPATH"] = _pythonpath(pack_path, venv)
    env[PACK_PATH_VARIABLE] = str(pack_path)  # for /opt/stackstorm/packs/<pack> paths (squall_paths.py)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    argv, dying = dying_with_service([interpreter(venv), "-u", str(script), str(request_read), str(reply_write)])
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr, limit=LINE_LIMIT,
            pass_fds=(request_read, reply_write), env=env, cwd=str(cwd), start_new_session=True, **dying,
            **(run_as.process_options() if run_as is not None else {}),
        )
        LEDGER.track(process.pid)
    except BaseException:
        for fd in (request_write, reply_read):
            os.close(fd)
        raise
    finally:
        os.close(request_read)
        os.close(reply_write)
    reader = asyncio.StreamReader(limit=limit)
    request_file = os.fdopen(request_write, "wb")
    read_transport: asyncio.BaseTransport | None = None
    try:
        read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                         os.fdopen(reply_read, "rb"))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, request_file)
    except BaseException:
        # Cancelled (a sensor stopped while starting) or failed after the fork: nobody else knows
        # of this process, so it is killed, with its group, and reaped here, and its pipes closed.
        # A `connect_*_pipe` that did not finish closes its transport, and with it the pipe, itself.
        if read_transport is not None:
            read_transport.close()
        else:
            request_file.close()  # not handed to a transport yet
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # not reaped yet: the group is still this process's
        try:
            await process.wait()
        finally:
            LEDGER.untrack(process.pid)
        raise
    return process, reader, writer  # type: ignore[return-value]


def _access_hint(pack_path: Path, venv: Path, run_as: RunAs) -> str:
    """Why a worker started as `runners.user` may not start: what that user must be able to read."""
    python = interpreter(venv)
    real = os.path.realpath(python)
    shown = python if real == python else f"{python} (that is {real})"
    return (f"it runs as user '{run_as.name}' (runners.user), who must be able to read and enter "
            f"the interpreter {shown} and the folders above it, the pack folder {pack_path} and {COMPAT_PATH}")


#: Longest a worker may take to say it is ready (the interpreter and `engine/compat` imported; the
#: pack's packages are imported later, in its idle time), whatever the run's timeout.
START_TIMEOUT = 60.0


class WorkerStartTimeout(WorkerDied):
    """A worker did not say it was ready in time."""


async def spawn_worker(pack_path: Path, venv: Path, run_as: RunAs | None = None,
                       timeout: float = START_TIMEOUT) -> Worker:
    """Start one worker and wait until it says it is ready, at most `timeout` seconds."""
    try:
        process, reader, writer = await spawn_pack_process(
            WORKER_SCRIPT, pack_path, venv, cwd=pack_path, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, run_as=run_as)
    except OSError as exc:
        if run_as is None:
            raise
        raise WorkerDied(f"the Python worker for {pack_path.name} could not start: {exc}; "
                         f"{_access_hint(pack_path, venv, run_as)}") from exc
    worker = Worker(process, reader, writer)
    try:
        hello = await asyncio.wait_for(worker.receive(), timeout)
    except asyncio.CancelledError:
        await worker.close()  # canceled while starting: no half-started worker is left behind
        raise
    except (WorkerDied, TimeoutError) as exc:
        await worker.close()
        hint = f" ({_access_hint(pack_path, venv, run_as)})" if run_as is not None else ""
        tail = worker.stderr_tail.decode("utf-8", "replace").strip()
        output = f"; its last output: {tail}" if tail else "; it wrote nothing on stderr"
        if isinstance(exc, TimeoutError):
            raise WorkerStartTimeout(
                f"the Python worker for {pack_path.name} did not say it was ready within {timeout:g} seconds "
                f"(it runs {interpreter(venv)}: what that interpreter runs as it starts, such as a "
                f"sitecustomize module, must not block){output}"
                f"{hint}") from exc
        raise WorkerDied(f"the Python worker for {pack_path.name} did not start: {exc}{output}{hint}") from exc
    if hello.get("op") != "ready":
        await worker.close()
        raise WorkerDied(f"unexpected first message from the worker: {hello}")
    return worker


@dataclass
class PackPool:
    """The idle workers of one pack and a bound on how many may run at once."""

    size: int
    idle: list[Worker] = field(default_factory=list)
    slots: asyncio.Semaphore = field(init=False)
    #: Counts `recycle`s: a worker busy through one goes back to no pool (`PythonRunner.run`), since it
    #: holds the pack's old code and packages and may stand in the folder an update replaced.
    generation: int = 0

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.size)


class PythonRunner:
    """Runs Python actions in per-pack worker pools."""

    def __init__(self, virtualenvs: Path, workers_per_pack: int, on_call: CallHandler,
                 run_as: RunAs | None = None) -> None:
        self.virtualenvs = virtualenvs
        self.workers_per_pack = workers_per_pack
        self.on_call = on_call
        #: The user the workers start as (`runners.user`), or None for the service's own.
        self.run_as = run_as
        self._pools: dict[str, PackPool] = {}
        self._capture_dir = Path(tempfile.mkdtemp(prefix="squall-python-"))
        if run_as is not None:  # the workers create their capture files here; still private (0700)
            os.chown(self._capture_dir, run_as.uid, run_as.gid)

    def _pool(self, pack: str) -> PackPool:
        if pack not in self._pools:
            self._pools[pack] = PackPool(self.workers_per_pack)
        return self._pools[pack]

    async def warm(self, pack: str, pack_path: Path) -> None:
        """Start one worker ahead of the first execution (used by `squall serve`)."""
        pool = self._pool(pack)
        if not pool.idle:
            pool.idle.append(await spawn_worker(pack_path, self.virtualenvs / pack, self.run_as))

    async def recycle(self, pack: str | None = None) -> None:
        """Stop idle workers (all, or one pack's) so changed code and venvs are picked up; those running
        an action now stop when it ends (`run`), rather than serve every later run of the old pack."""
        for name, pool in list(self._pools.items()):
            if pack in (None, name):
                pool.generation += 1
                while pool.idle:
                    await pool.idle.pop().close()

    async def close(self) -> None:
        await self.recycle()
        for path in self._capture_dir.glob("*"):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._capture_dir.rmdir()

    async def run(self, request: RunRequest) -> RunOutcome:
        action = request.action
        pool = self._pool(action.pack)
        timeout = float(request.runner_parameters.get("timeout") or 600)
        loop = asyncio.get_running_loop()
        async with pool.slots:
            deadline = loop.time() + timeout  # the run's timeout counts from when it may start
            generation = pool.generation
            worker = pool.idle.pop() if pool.idle else None
            if worker is not None and not worker.alive:  # died while idle: reap it, start another
                await worker.close()
                worker = None
            if worker is None:
                try:
                    worker = await spawn_worker(action.pack_path, self.virtualenvs / action.pack, self.run_as,
                                                min(timeout, START_TIMEOUT))
                except WorkerStartTimeout as exc:
                    if timeout > START_TIMEOUT:
                        raise
                    return RunOutcome("timeout", {"result": None, "stdout": "", "stderr": "", "exit_code": -9,
                                                  "error": f"Action failed to complete in {timeout:g} seconds: {exc}"})
            out_path, err_path = _capture_paths(self._capture_dir, request.execution_id)
            message = {
                "op": "run",
                "file": str(action.entry_path),
                "pack": action.pack,
                "parameters": request.action_parameters,
                "config": request.pack_config,
                "user": request.context.get("api_user") or request.context.get("user"),
                "env": _python_variables(request),
                "log_level": request.runner_parameters.get("log_level", "DEBUG"),
                "stdout_path": str(out_path),
                "stderr_path": str(err_path),
            }
            reusable = False
            error: str | None = None
            status = "failed"
            reply: dict[str, Any] = {}
            tail = _Tail({"stdout": out_path, "stderr": err_path}, request.on_output) if request.on_output else None
            try:
                worker.start_run(message)
                reply = await asyncio.wait_for(self._converse(worker, request), max(deadline - loop.time(), 0))
                reusable = True
            except TimeoutError:
                status, error = "timeout", f"Action failed to complete in {timeout:g} seconds"
                reply = {"exit_code": -9, "result": None}
            except WorkerDied as exc:
                error = f"the action's process died: {exc}"
                code = exc.code if exc.code is not None else worker.process.returncode
                reply = {"exit_code": code or 1, "result": None}
            except asyncio.CancelledError:
                await worker.close()
                raise
            finally:
                if tail is not None:
                    await asyncio.shield(tail.stop())
                keep = reusable and worker.alive and pool.generation == generation
                stdout, stdout_cut = _read_capture(out_path, reply.get("stdout_size"))
                stderr, stderr_cut = _read_capture(err_path, reply.get("stderr_size"))
                if keep:
                    pool.idle.append(worker)
                else:
                    await worker.close()
        exit_code = int(reply.get("exit_code", 1))
        if error is None:
            ok = reply.get("status")
            status = "succeeded" if exit_code == 0 and ok in (True, None) else "failed"
        result: dict[str, Any] = {"result": reply.get("result"), "stdout": stdout, "stderr": stderr,
                                  "exit_code": exit_code}
        if status == "failed" and error is None:
            error = _incomplete_virtualenv_error(action.pack, self.virtualenvs / action.pack, stderr)
        if error:
            result["error"] = error
        cut = [name for name, was_cut in (("stdout", stdout_cut), ("stderr", stderr_cut)) if was_cut]
        if truncated := truncation(cut, OUTPUT_LIMIT):
            result["truncated"] = truncated
        return RunOutcome(status, result)

    async def _converse(self, worker: Worker, request: RunRequest) -> dict[str, Any]:
        """Answer the action's datastore calls until it reports that it is done.

        After `done` the run's process only exits, so the run ends there, and the worker's report of
        that exit is read at the start of the worker's next run (`Worker.settling`), off the run's path.
        An exit without a `done` is the run's crash (`os._exit`, a signal): `WorkerDied` with its code."""
        while worker.settling:  # the previous run's process answered already: its exit comes first
            # A call read here came from a daemon thread of that process, which ended as it exited: no
            # answer (one sent now would reach this run's process, behind its request, as its own).
            worker.settling = (await worker.receive()).get("op") != "exit"
        while True:
            message = await worker.receive()
            if message.get("op") == "done":
                worker.settling = True
                return message
            elif message.get("op") == "exit":
                code = int(message.get("code", 1))
                raise WorkerDied(f"it exited with code {code} before it answered", code)
            elif message.get("op") == "call":
                try:
                    result = await self.on_call(message["method"], message.get("args") or {}, request)
                    worker.send({"op": "reply", "result": result})
                except Exception as exc:  # reported to the action, which may handle it
                    worker.send({"op": "reply", "error": str(exc)})


#: The last line of a traceback that failed on an import (the action's module or one it imports).
_IMPORT_FAILED = re.compile(r"^(ModuleNotFoundError|ImportError): ", re.MULTILINE)
#: The module such a line names as not found (`No module named 'st2client'`).
_MODULE_NOT_FOUND = re.compile(r"^ModuleNotFoundError: No module named '(?P<module>[\w.]+)'", re.MULTILINE)


def _incomplete_virtualenv_error(pack: str, venv: Path, stderr: str) -> str | None:
    """Why an action that failed on an import failed, when Squall knows more than the traceback.

    `squall pack install` keeps a pack whose requirements did not all install (recorded in the
    virtualenv folder); its actions that import a missing package then say which requirement failed
    and what to do, instead of leaving people a bare ImportError. Actions that do not need it run.
    A package StackStorm gives every action (st2client) that the pack's virtualenv lacks is said as
    what it is and how to install it (`engine.pack_manager.import_failure_reason`).
    Read only after such a failure, so a run that succeeds costs nothing."""
    if not _IMPORT_FAILED.search(stderr):
        return None
    from engine.pack_manager import import_failure_reason  # only on this failure path

    missing = _MODULE_NOT_FOUND.findall(stderr)
    return import_failure_reason(pack, venv, missing[-1] if missing else None)


def _python_variables(request: RunRequest) -> dict[str, str]:
    """Every action's variables, plus `ST2_API_URL` and `ST2_AUTH_TOKEN` (the execution's token, as
    StackStorm's Python runner sets them) so st2client works unmodified (spec §1.8).

    The worker inherited the rest of the environment when it started.
    """
    token = {"ST2_AUTH_TOKEN": request.auth_token} if request.auth_token else {}
    return {**action_variables(request), "ST2_API_URL": request.api_url, **token}


#: How often a running Python action's capture files are read for its live output.
TAIL_SECONDS = 0.05


class _Tail:
    """A Python action's live output: its run writes stdout and stderr to capture files (so output
    of C code and subprocesses is kept too), which this reads as they grow, every `TAIL_SECONDS`.

    The files are the run's own (`_capture_paths`), made by its process; a file not made yet is read
    once it appears."""

    def __init__(self, paths: dict[str, Path], on_output: Callable[[str, bytes], None]) -> None:
        self.paths = paths
        self.on_output = on_output
        self.offsets = dict.fromkeys(paths, 0)
        self._stopped = asyncio.Event()
        self._task = asyncio.ensure_future(self._follow())

    def _read_new(self) -> None:
        for stream, path in self.paths.items():
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.offsets[stream])
                    data = handle.read(OUTPUT_LIMIT)
            except OSError:
                continue
            if data:
                self.offsets[stream] += len(data)
                self.on_output(stream, data)

    async def _follow(self) -> None:
        while not self._stopped.is_set():
            self._read_new()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), TAIL_SECONDS)
        self._read_new()  # what the action wrote last

    async def stop(self) -> None:
        self._stopped.set()
        await self._task


def _capture_paths(folder: Path, execution_id: str) -> tuple[Path, Path]:
    """A run's own stdout and stderr capture files, named for it alone (the execution and a random
    part): a program an earlier run left behind still writes to that run's file, never to this one."""
    name = f"{re.sub(r'[^A-Za-z0-9_-]', '_', execution_id)[:64]}-{secrets.token_hex(4)}"
    return folder / f"{name}.out", folder / f"{name}.err"


def _read_capture(path: Path, size: int | None) -> tuple[str, bool]:
    """What the action wrote (at most `OUTPUT_LIMIT` bytes) and whether more was cut off, and the file
    deleted (a program the run left still writes to it, unseen). One byte past the limit is read, the
    sign of more: without it a cut output looked whole.

    A run that answered says how much it wrote, so an empty capture costs no read.
    """
    data = b""
    try:
        if size != 0:
            with open(path, "rb") as handle:
                data = handle.read(OUTPUT_LIMIT + 1)
        path.unlink()
    except FileNotFoundError:
        pass
    return data[:OUTPUT_LIMIT].decode("utf-8", "replace"), len(data) > OUTPUT_LIMIT

