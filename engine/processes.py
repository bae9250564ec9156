"""Processes that die with the service: parent-death signals, owner files and sweeps (spec: durability).

Every action, Python worker and sensor process leads a process group (a session) of its own, and
none may outlive the Squall process that started it:
 1. the leader gets SIGKILL when the thread that started it ends (the kernel's parent-death
    signal: `setpriv --pdeathsig KILL`, or prctl in the child where setpriv is missing). Processes
    started from the event loop's thread therefore die with the loop's thread (the service). A
    sensor process trades it for SIGTERM, to end the helpers it is the subreaper of first
    (engine/compat/squall_sensor.py);
 2. every live group is written to this process's owner file (`LEDGER`), held under `flock`
    while the process lives. The leader's children do not inherit the parent-death signal, so
    whoever finds an owner dead (recovery, a cancel) kills what is left of its groups, checking
    each leader's start time so a reused pid is never hit, before anything runs again.
An execution's owner is this process's identity (`process_identity`: pid, start time, boot id,
pid namespace), not its hostname, so a container restarted under a new name still recovers.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from engine import libc

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_SLOT = 32  # bytes per live group in an owner file: "<pid> <start>", padded, one line
#: How long a sweep waits for a killed group to be gone (a process in the kernel dies when it leaves).
KILL_WAIT = 5.0
#: How long the owner file of a dead process of another pid namespace (container) is kept for its own.
_FOREIGN_KEPT = 86400.0


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of /proc/<pid>/stat (state, ppid, pgrp, session, …, start time at [19])."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    return data.rsplit(b")", 1)[-1].decode("ascii", "replace").split()


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None if
    there is no such process. With the boot id it tells a process from a later one with its pid."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def running_since(pid: int, started: int | None) -> bool:
    """Whether the process `pid` that started at `started` still runs (a zombie runs nothing)."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20 or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == str(started)


@functools.cache
def boot_id() -> str:
    """This boot of this kernel: pids and start times mean something only within one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@functools.cache
def _pid_namespace(pid: int) -> str:
    """The pid namespace (a container) pids are numbered in: its inode number."""
    del pid  # cached per process: a forked child keeps its parent's namespace unless it made one
    try:
        return os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        return ""


def process_identity() -> dict[str, Any]:
    """Who this process is on this machine, for as long as it lives: pid, start time, boot, pid namespace."""
    pid = os.getpid()
    return {"pid": pid, "started": start_time(pid), "boot_id": boot_id(), "pid_ns": _pid_namespace(pid)}


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_state(info: Mapping[str, Any] | None, me: Mapping[str, Any], ledger: Path, *, one_machine: bool) -> str:
    """Whether the process an owner record names (`me` is this process's: its hostname plus
    `process_identity()`) still lives: "here" (this process), "alive", "gone", or "elsewhere" (of
    another host, whose processes nobody here can see). Without a pid it is "gone".

    On one machine a process is told apart from a later one with its pid by its start time, the boot
    and the pid namespace; the host name plays no part (a container restart may change it). One in
    another pid namespace (container) lives while it holds its owner file in `ledger`. With
    `one_machine` (an SQLite file) every owner is of this machine; otherwise (PostgreSQL) an owner of
    another boot is another host's unless it has this host's name (this host, rebooted). These are
    the rules `ExecutionService` applies to an execution's `runner_info`; trigger instances' owners use
    this function."""
    info = info or {}
    pid = info.get("pid")
    if not isinstance(pid, int):
        return "gone"
    if not info.get("boot_id"):  # recorded where /proc told no boot: the host and the pid alone
        if not one_machine and info.get("hostname") not in (None, me.get("hostname")):
            return "elsewhere"
        return "here" if pid == os.getpid() else "alive" if alive(pid) else "gone"
    if info["boot_id"] != me.get("boot_id"):
        return "gone" if one_machine or info.get("hostname") == me.get("hostname") else "elsewhere"
    if info.get("pid_ns") == me.get("pid_ns"):
        if pid == os.getpid() and info.get("started") == me.get("started"):
            return "here"
        if info.get("started") is None:
            return "alive" if pid != os.getpid() and alive(pid) else "gone"
        return "alive" if running_since(pid, info["started"]) else "gone"
    held = owner_file_state(ledger, dict(info))
    if held == "held":
        return "alive"
    return "gone" if held == "free" or one_machine else "elsewhere"


def owner_name(identity: dict[str, Any]) -> str:
    """The name of an owner file: identity in a form `sweep` parses back."""
    return f"{identity.get('boot_id')}_{identity.get('pid_ns')}_{identity.get('pid')}_{identity.get('started')}"


@functools.cache
def _setpriv() -> str | None:
    """util-linux's `setpriv` if it knows `--pdeathsig` (2.33 and later)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        usage = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in usage else None


def _prctl() -> Callable[..., int] | None:
    import ctypes

    return libc.function("prctl", (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong),
                         ctypes.c_int)


def dying_with_service(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """`argv` and `create_subprocess_exec` options that make the process get SIGKILL when the
    thread starting it (the event loop's) ends, however the service ends.

    `setpriv --pdeathsig KILL` costs an exec (~0.5 ms); without it a `preexec_fn` calls prctl in the
    child, which forces a full fork of the service (~15 ms with a large heap) instead of a vfork. It
    runs after the switch to `runners.user` (a change of user clears the signal), touches no lock
    and checks that the parent did not die before the signal was set."""
    setpriv = _setpriv()
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--", *argv], {}
    prctl = _prctl()
    if prctl is None:
        return argv, {}
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(137)

    return argv, {"preexec_fn": die_with_parent}


def _processes() -> Iterator[tuple[int, str, int]]:
    """(pid, state, process group) of every process this namespace shows."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None and len(fields) > 2:
            with contextlib.suppress(ValueError):
                yield int(name), fields[0], int(fields[2])


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc's children lists (empty where the kernel keeps none):
    a sensor's helpers in other process groups, which a sensor process adopts as their subreaper
    (engine/compat/squall_sensor.py has the same walk, without Squall's imports)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                children = [int(child) for child in Path(f"/proc/{parent}/task/{thread}/children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            todo.extend(children)
    return found


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, state, group in _processes() if group == pgid and state not in ("Z", "X")]


def kill_group(pgid: int, started: int | None, wait: float = KILL_WAIT) -> bool:
    """Kill what is left of the process group a leader with this pid and start time made, and wait
    until it is gone. A live leader with another start time means the pid was reused: nothing is
    killed. A leader gone with members left is still ours: the kernel does not reuse a pid while it
    names a group. True if something was killed."""
    leader = start_time(pgid)
    if leader is not None and leader != started:
        return False  # reused (or its start time unknown): not ours to kill
    if not _group_members(pgid):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("process group %d is left from a Squall process that died, but this one may not kill it",
                    pgid)
        return False
    deadline = time.monotonic() + wait
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        log.warning("process group %d (pids %s) is still there %gs after SIGKILL", pgid,
                    ", ".join(map(str, left)), wait)
    return True


def _entries(data: bytes) -> list[tuple[int, int | None]]:
    groups = []
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            groups.append((int(parts[0]), int(parts[1]) if parts[1].isdigit() else None))
    return groups


def owner_file_state(directory: Path, identity: dict[str, Any]) -> str:
    """Whether the process `identity` names holds its owner file in `directory`: "held" (it lives),
    "free" (it died; its file is not swept yet) or "missing" (swept, or it never ran anything here).
    The lock is the kernel's, so this works across pid namespaces (containers) on one machine."""
    try:
        fd = os.open(directory / owner_name(identity), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return "missing"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    finally:
        os.close(fd)
    return "free"


def sweep(directory: Path, wait: float = KILL_WAIT) -> int:
    """Kill the groups that dead owners in `directory` left behind and remove their files; owners
    that live are left alone. Blocks (call it off the event loop). Returns how many groups it killed."""
    mine = owner_name(process_identity())
    killed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if entry.name == mine:
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner lives
            status = os.fstat(fd)
            if status.st_uid not in (os.geteuid(), 0):
                continue  # not written by this user or root: not trusted to name processes to kill
            if entry.name.startswith("."):  # an owner file being made: only one left by a crash goes
                if time.time() - status.st_mtime > 60:
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino != status.st_ino:
                    continue  # replaced meanwhile
            boot, namespace, *_ = [*entry.name.split("_"), "", ""]
            if boot == boot_id() and namespace != _pid_namespace(os.getpid()):
                # Another container's: its pids mean nothing here, and a process of its own
                # namespace may still sweep it. Its processes went with the container, if it is gone.
                if time.time() - status.st_mtime > _FOREIGN_KEPT:
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            if boot == boot_id():
                for pgid, started in _entries(os.pread(fd, 1 << 20, 0)):
                    killed += kill_group(pgid, started, wait)
            with contextlib.suppress(OSError):  # another boot's: its processes are gone
                path.unlink()
        finally:
            os.close(fd)
    return killed


class OwnerLedger:
    """The process groups this process started and that still run, in an owner file per database
    folder (`register`), under an exclusive `flock` held for the process's life. A group is one
    fixed-size slot written in place (`pwrite`, no fsync: only a process death must not lose it,
    and a machine's crash takes the processes with it), so the file never grows past the number
    of groups running at once."""

    def __init__(self) -> None:
        self._owner = os.getpid()
        self._directories: dict[Path, int] = {}  # -> how many registered holders use it
        self._released: list[Path] = []  # holders collected (appended by the garbage collector)
        self._files: dict[Path, int | None] = {}  # None: could not be made (told once)
        self._slots: dict[int, tuple[int, int | None]] = {}  # leader pid -> (slot, start time)
        self._free: list[int] = []

    def _after_fork(self) -> None:
        if self._owner != os.getpid():  # a forked child owns none of its parent's processes or files
            for fd in self._files.values():
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._owner, self._files, self._slots, self._free = os.getpid(), {}, {}, []

    def register(self, directory: Path, holder: object) -> None:
        """Keep an owner file in `directory` (made at the first `ensure`) as long as `holder` (the
        execution service of a database there) lives."""
        self._directories[directory] = self._directories.get(directory, 0) + 1
        weakref.finalize(holder, self._released.append, directory)

    def ensure(self) -> None:
        """Make the owner files not made yet (before this process claims an execution or starts a group)."""
        self._after_fork()
        while self._released:
            directory = self._released.pop()
            self._directories[directory] -= 1
            if self._directories[directory] <= 0:
                del self._directories[directory]
                self._remove(directory)
        for directory in self._directories:
            if directory not in self._files:
                self._files[directory] = self._open(directory)

    def _remove(self, directory: Path) -> None:
        fd = self._files.pop(directory, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                (directory / owner_name(process_identity())).unlink()
            os.close(fd)

    def _open(self, directory: Path) -> int | None:
        name = owner_name(process_identity())
        temporary = directory / f".{name}.{os.urandom(4).hex()}"
        fd = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.stat(directory).st_uid not in (os.geteuid(), 0):
                raise PermissionError(f"{directory} belongs to another user")
            fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for pid, (slot, started) in self._slots.items():
                os.pwrite(fd, _slot_line(pid, started), slot * _SLOT)
            os.rename(temporary, directory / name)  # locked before anyone can see it under its name
            return fd
        except OSError as exc:
            log.warning("could not keep this process's owner file in %s (%s): a crash may leave its "
                        "actions' child processes running until they end", directory, exc)
            if fd is not None:
                os.close(fd)
                with contextlib.suppress(OSError):
                    temporary.unlink()
            return None

    def track(self, pid: int) -> None:
        """A process group `pid` leads was started here (call right after the start)."""
        self.ensure()
        started = start_time(pid)
        slot = self._free.pop() if self._free else len(self._slots) + len(self._free)
        self._slots[pid] = (slot, started)
        self._write(slot, _slot_line(pid, started))

    def untrack(self, pid: int) -> None:
        """The group's leader ended and was waited for."""
        self._after_fork()
        entry = self._slots.pop(pid, None)
        if entry is not None:
            self._write(entry[0], b" " * (_SLOT - 1) + b"\n")
            self._free.append(entry[0])

    def _write(self, slot: int, line: bytes) -> None:
        for fd in self._files.values():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.pwrite(fd, line, slot * _SLOT)

    def close(self) -> None:
        """At exit: groups still running are killed (they would be orphans), the files go."""
        if self._owner != os.getpid():
            return
        for pid, (_, started) in list(self._slots.items()):
            kill_group(pid, started, wait=1.0)
        self._slots.clear()
        for directory in list(self._files):
            self._remove(directory)


def _slot_line(pid: int, started: int | None) -> bytes:
    return f"{pid} {started if started is not None else '-'}".ljust(_SLOT - 1).encode("ascii") + b"\n"


def ledger_directory(database: str | None) -> Path:
    """Where owner files live: beside an SQLite database file (shared by every process and
    container that uses the file), else a private folder of this user's on this machine."""
    if database and database != ":memory:" and not database.startswith("file::memory:"):
        return Path(os.path.abspath(f"{database}.owners"))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and os.path.isdir(runtime) else Path(tempfile.gettempdir())
    return base / f"squall-owners-{os.geteuid()}"


#: This process's owner files and live process groups.
LEDGER = OwnerLedger()
atexit.register(LEDGER.close)


