"""Where audit events go besides the database (`audit.sinks`): a JSON-lines file (rotated), syslog
(RFC 5424, over UDP or a local socket), or standard output.

Every audit event is written by `Store.audit_add`, whoever records it (the chat command path, the
web UI, the API, the CLI), so the sinks hang there: `install(store, config)` makes the store hand
each stored event to them. A sink that fails (a full disk, a syslog host gone) is logged and never
stops the event from being stored or the action from going on: the database copy is the record,
the sinks are its stream. An outage is logged when it begins and when it ends (`_Guarded`), not once
per event, and each event a sink missed counts in `squall_audit_sink_failures_total{sink}`.

The store tells its listeners on whichever thread committed the event, the event loop's included
(`Store.batch_without_waiting`), and every sink can wait on something: a stdout pipe its collector
stopped reading (64 KiB, then `write` waits), the file's `flock` held elsewhere or a hung NFS disk, a
syslog host name's DNS lookup. Any of them, on the loop, froze all of `squall serve`. So the store's
listener is a `Delivery`: it only puts the event on each sink's bounded queue (`QUEUE_EVENTS`), and each
sink has a thread of its own (`_Lane`) that hands it the events, in order. One queue and one thread for
all the sinks let a stdout nobody read hold the file and syslog too (400 events stored, 305 in the file).
A queue that is full (its sink stuck that long) drops the event for that sink, counted and logged once per
outage, as a failed sink is. Closing waits for the queues to drain (`DRAIN_SECONDS` at most, for all of
them), so a CLI command's events reach the sinks before it exits. A thread reads each event after the
caller returned: a caller never changes a detail it recorded (each builds its own for the call).

A service process (`squall serve`, `squall worker`: not a CLI command, `leave_out_stdout`) owns its stream,
and delivers it at least once: what its queues held when it was killed (`kill -9`, the OOM killer, a host
that stopped) was lost to every sink, said nowhere. So it records in the data directory (`_Progress`), about
once a second and when it closes, how far each sink got, and whether it closed cleanly; the next service
process to start there re-sends to a sink that was not closed cleanly every event stored after that point,
before new ones, in id order (`_replay`). Events another process stored meanwhile (a CLI command's, which
its own sinks delivered) may so arrive twice: each entry carries the event's `id`, by which a SIEM drops a
repeat. A CLI command records nothing and re-sends nothing: it never owns the stream.

What leaves through a sink is masked once more: any detail key that names a secret (password,
secret, token, key, credential) or an HTTP header that carries one (authorization, cookie), and
every cookie of a `cookies` object, and the password of a `url` (`https://ann:********@host/`), is
shown as `********`, whatever the caller already masked; a boolean there (a flag such as
`api.key.set`'s `secret`), null or "" is shown as it is.

The stdout sink is the service's (`squall serve`, `squall worker`): a log collector reads their standard
output. A CLI command's standard output is its answer (`--json` prints one JSON document; an action that
runs the CLI returns it as its result, shown in chat), so a CLI process leaves the stdout sink out
(`leave_out_stdout`): its events are stored and go to the other sinks, and the service's stdout carries
the service's own events.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import json
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from engine.files import write_atomically
from engine.parameters import MASK, MASKED_NAMES, mask_value, secret_header

log = logging.getLogger(__name__)

Sink = Callable[[Mapping[str, Any]], None]
KINDS = ("file", "syslog", "stdout")
#: syslog facilities by name (RFC 5424 §6.2.1).
FACILITIES = {"kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10, **{
    f"local{n}": 16 + n for n in range(8)}}
_NOTICE, _WARNING = 5, 4
#: Events that are refusals: sent to syslog as warnings.
_DENIALS = re.compile(r"denied|refused|failed|throttled")
#: The default cap of one syslog message, header included (rsyslog's default `maxMessageSize`): one UDP
#: datagram holds at most 65,507 bytes, and a bigger event failed with "Message too long", lost to the SIEM.
SYSLOG_MAX_BYTES = 8192
#: The least a syslog message may be capped to: room for the header and an event's names.
_SYSLOG_MIN_BYTES = 480
#: How often a syslog host's name is looked up again although sending works: UDP says nothing when the
#: address it has is stale (the SIEM moved), so a failed send alone would never look it up again.
RESOLVE_SECONDS = 300.0
#: Events waiting for one sink at most (`_Lane`): a sink stuck longer than that many events costs memory
#: no more; the events past it are dropped for that sink (the database has them).
QUEUE_EVENTS = 10_000
#: How long closing waits for the sinks to take the events still queued (`Delivery.close`), all sinks together.
DRAIN_SECONDS = 5.0
#: How often a service process looks how far its sinks got and records it if it moved (`_Progress`): the
#: state file is written no more often, but when the process closes.
SAVE_SECONDS = 1.0
#: How long an event may take from getting its id to reaching the sinks' queues: on PostgreSQL ids are taken
#: before commit, in any order, so its transaction's length, then `Store._tell_audited`. A sink that has taken
#: every event it was given knows it has every event of its process up to the newest id stored that long
#: before (`Delivery._advance`): a worker, or a serve beside busy CLI commands, stores few events of its
#: own, and counting only those, a crash re-sent everyone's since its last one. After a crash a sink that
#: kept up is re-sent about that long's events again.
SETTLE_SECONDS = 30.0
#: `SETTLE_SECONDS` on SQLite: one writer at a time, so an id seen stored means every lower one is committed
#: (or rolled back), and only the moment from commit to queue counts.
SETTLE_SECONDS_SQLITE = 2.0
#: At most this many events are re-sent to a sink after an unclean stop (`_replay`), none older than
#: `REPLAY_SECONDS`: the rest are logged with the export that prints them.
REPLAY_EVENTS = 100_000
REPLAY_SECONDS = 24 * 3600.0
#: How many service processes may keep their progress in one data directory at once (`_Progress.claim`).
SLOTS = 64


class _Process:
    """What this process's sinks may be (`leave_out_stdout`)."""

    #: False in a CLI command's process: its standard output is the command's answer, and it does not
    #: own the audit stream (it records no progress and re-sends nothing: `install`).
    stdout = True


def leave_out_stdout() -> None:
    """Build no stdout sink in this process from now on: a CLI command's standard output is its answer
    (`bot.cli.common`), not the service's log stream; `squall serve` and `squall worker` keep theirs. Nor
    does it own the stream: its sinks deliver its own events, and record nothing for a later start."""
    _Process.stdout = False


def _maskable(v: Any) -> bool:
    """Whether a value under a secret-named key could hold a secret: not null, "" or a boolean. A
    boolean is a flag about a secret (`api.key.set`'s `"secret": true`), and the database keeps it:
    masked, every export said `"secret": "********"` of secret and plain keys alike."""
    return v is not None and v != "" and not isinstance(v, bool)


def masked(value: Any) -> Any:
    """`value` with every mapping entry whose key names a secret masked, at any depth (flags and
    empty values kept: `_maskable`): a key `SECRET_NAME` finds (`engine.parameters`) or an HTTP
    header that carries a credential (`Authorization`, `Cookie`: `secret_header`), every cookie
    of a `cookies` object and a `url`'s password. Parameters arrive masked by whoever recorded them;
    this is the sinks' net."""
    if isinstance(value, Mapping):
        return {k: _masked_entry(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


def _masked_entry(key: Any, value: Any) -> Any:
    """One mapping entry's value as `masked` shows it: a `headers` or `cookies` object keeps its shape
    with its credentials masked, a `url` its password (as the execution's stored parameters show them),
    a secret-named key's value is `********`, anything else is masked inside."""
    if not isinstance(key, str):
        return masked(value)
    if key in MASKED_NAMES:
        return masked(mask_value(key, value))
    return MASK if secret_header(key) and _maskable(value) else masked(value)


def entry(record: Mapping[str, Any]) -> dict[str, Any]:
    """The audit event as every sink and `squall audit export` shows it. `id` is the stored event's: a
    receiver drops by it an event that came twice (re-sent after an unclean stop, `_replay`)."""
    stamp = record.get("timestamp")
    return {"id": record.get("id"),
            "time": stamp.isoformat().replace("+00:00", "Z") if isinstance(stamp, datetime) else stamp,
            "event": record.get("event"), "actor": record.get("actor"), "source": record.get("source"),
            "target": record.get("target"), "detail": masked(record.get("detail") or {})}


def line(record: Mapping[str, Any]) -> str:
    return json.dumps(entry(record), default=str, ensure_ascii=False, sort_keys=False)


class FileSink:
    """JSON lines appended to `path`, rotated at `max_bytes` keeping `backups` old files (all 0600).

    Several processes write the same file: `squall serve`, its workers on the same host and every
    CLI command that records an event (`squall key set`, `squall user add`). logging's rotating handler
    rotates from what its own process saw: a second process's rename left the first writing into a
    backup, which it then rotated again over newer ones, and four writers kept 62% of their lines
    (the rest overwritten or renamed away). So each write takes an exclusive `flock` on a lock file
    beside it (`.audit.jsonl.lock`: hidden, so a shipper's `audit.jsonl*` does not read it), reopens
    `path` if another process (or logrotate) moved it since, rotates by the file's real size, then
    appends the line with one `write`: every process's line lands once, in a file no bigger than
    `max_bytes` (unless one line is). A write that fails halfway (a full disk) is cut off again
    (`_cut_back`): each event is a whole line of its own, or not in the file. `backups: 0` or
    `max_bytes: 0` never rotates (leave it to logrotate). Who ran what is for the operators, not every
    local user: every file is 0600.

    A reopen can fail (a full disk, EACCES, a directory now at `path`). The sink then holds no file
    (`_fd` None) until an event finds it can open one: kept, the closed number went to whatever the
    process opened next (an accepted socket, an action's pipe, a database file), and the next event
    fstat()ed, closed or wrote audit lines into that. Meanwhile each event fails, and `_Guarded`
    counts and logs it.
    """

    #: The `sink` label of `squall_audit_sink_failures_total`.
    kind = "file"

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._threads = threading.Lock()
        #: The lock file's descriptor; None once closed (`close`).
        self._lock: int | None = os.open(path.with_name(f".{path.name}.lock"),
                                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        #: Whether the file this process writes ends in part of a line it could not cut off (`_cut_back`).
        self._torn = False
        #: The open `path`; None while this sink holds no file (a reopen failed, or closed).
        self._fd: int | None = None
        try:
            self._fd = self._open()
        except BaseException:  # the start fails (`_sink`: a config error): nobody can close this sink's lock
            self.close()
            raise

    def _open(self) -> int:
        """`path` opened for appending, 0600; a descriptor it opened and could not make private is closed."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:  # made by someone else, or by an older Squall: private now
                os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        self._torn = False
        return fd

    def _let_go(self) -> None:
        """Close the file this sink holds and hold none: its number is free for the process's next open
        at once, so this sink must not keep it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _reopen(self) -> int:
        """Close the file held, if any, then open `path` again; if opening fails this sink holds no file,
        and the next event tries again."""
        self._let_go()
        self._fd = self._open()
        return self._fd

    def __call__(self, record: Mapping[str, Any]) -> None:
        data = (line(record) + "\n").encode("utf-8")
        # The thread lock first: threads of one process share the flock (it belongs to the open file).
        with self._threads:
            if self._lock is None:
                raise RuntimeError(f"the audit file sink for {self.path} is closed; events after its close "
                                   f"need a new sink (`install`)")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            try:
                self._append(data)
            finally:
                fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _append(self, data: bytes) -> None:
        """Rotate if `data` would pass `max_bytes`, then append it whole, or leave the file as it was."""
        fd, size = self._current()
        if 0 < self.max_bytes < size + len(data) and self.backups > 0 and size > 0:
            fd = self._rotate()
            size = 0
        left = memoryview(b"\n" + data if self._torn else data)  # a torn line left: begin a line of our own
        try:
            while left:
                left = left[os.write(fd, left):]
        except OSError:
            self._cut_back(fd, size)
            raise
        self._torn = False

    def _cut_back(self, fd: int, size: int) -> None:
        """Cut the file back to `size`, where a failed write began: the part of a line it left (a full disk),
        with the next event appended onto it, was two events lost to a JSON-lines reader. If even the cut
        fails, this process begins its next line with a newline, so that line is whole."""
        try:
            os.ftruncate(fd, size)
        except OSError:
            self._torn = True

    def _current(self) -> tuple[int, int]:
        """The file at `path` now and its size, reopened first if another process rotated (or someone
        removed) it, or if this sink holds none (a reopen failed before)."""
        if self._fd is not None:
            opened = os.fstat(self._fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_ino, named.st_dev) == (opened.st_ino, opened.st_dev):
                return self._fd, opened.st_size
        fd = self._reopen()
        return fd, os.fstat(fd).st_size

    def _rotate(self) -> int:
        """`path.N-1` → `path.N` … `path` → `path.1` (the oldest beyond `backups` replaced), then a new `path`,
        which it returns."""
        for n in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        return self._reopen()

    def close(self) -> None:
        """Close the file and the lock file, once: a second close must not close the numbers the process
        has since given to something else."""
        with self._threads:
            lock, self._lock = self._lock, None
            with contextlib.suppress(OSError):  # closing never fails the command that ends
                self._let_go()
            if lock is not None:
                with contextlib.suppress(OSError):
                    os.close(lock)


class SyslogSink:
    """RFC 5424 messages: `<PRI>1 TIME HOST squall PID EVENT - JSON`, over UDP to `host:port` or to a
    local datagram socket (`/dev/log`). Refusals go at warning severity, the rest at notice.

    A message is at most `max_bytes` long (`fitted`): an event bigger than a datagram (a 70 kB parameter)
    failed to send and never reached the SIEM, so its long detail values are cut, each marked, and its
    event, actor, source and target always arrive.

    A host is looked up (`_destination`) on the sinks' thread: when it starts (`prepare`), again after a
    lookup or a send failed, and every `RESOLVE_SECONDS`; `sendto` given the name looked it up for every
    event, on the event loop, where a dead DNS held `squall serve` for the resolver's timeout each time."""

    kind = "syslog"

    def __init__(self, facility: int, address: tuple[str, int] | str, max_bytes: int = SYSLOG_MAX_BYTES) -> None:
        self.facility = facility
        self.address = address
        self.max_bytes = max_bytes
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET6 if ":" in address[0] \
            else socket.AF_INET
        self.socket = _datagram_socket(family)
        self.host = socket.gethostname() or "-"
        #: The address looked up, and when (`time.monotonic`); None until looked up, or after a failure.
        self._target: tuple[Any, ...] | None = None
        self._looked_up = 0.0

    def prepare(self) -> None:
        """Look the host up before the first event (on the sinks' thread); a failure is said with the first
        event, which looks it up again."""
        with contextlib.suppress(OSError):
            self._destination()

    def __call__(self, record: Mapping[str, Any]) -> None:
        target = self._destination()
        try:
            self.socket.sendto(self.message(record), target)
        except OSError as exc:
            self._target = None  # a stale address, maybe: look it up again for the next event
            raise OSError(exc.errno, f"syslog at {self.where} {_why_unsent(exc)}") from None

    def _destination(self) -> tuple[Any, ...] | str:
        """Where to send: the local socket's path, or the host's address, looked up when there is none
        yet or it is `RESOLVE_SECONDS` old (then the old one serves on if the lookup fails)."""
        if isinstance(self.address, str):
            return self.address
        if self._target is None:
            self._look_up(self.address)
        elif time.monotonic() - self._looked_up > RESOLVE_SECONDS:
            with contextlib.suppress(OSError):  # the DNS is down: the address it gave is likelier right
                self._look_up(self.address)
        assert self._target is not None
        return self._target

    def _look_up(self, address: tuple[str, int]) -> None:
        """The host's first address; the socket remade for its family (a name that has only IPv6)."""
        try:
            family, _, _, _, target = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0]
        except OSError as exc:
            raise OSError(exc.errno, f"syslog at {self.where} could not be looked up: {exc.strerror or exc}; "
                                     f"check the host name in audit.sinks and this host's DNS") from None
        if family != self.socket.family:
            self.socket.close()
            self.socket = _datagram_socket(family)
        self._target, self._looked_up = target, time.monotonic()

    @property
    def where(self) -> str:
        """The address, as an operator writes it in `audit.sinks`."""
        return self.address if isinstance(self.address, str) else f"{self.address[0]}:{self.address[1]}"

    def message(self, record: Mapping[str, Any]) -> bytes:
        """The datagram for `record`: header, a space, the event's JSON, in at most `max_bytes`."""
        shown = entry(record)
        severity = _WARNING if _DENIALS.search(str(shown["event"] or "")) else _NOTICE
        msgid = re.sub(r"[^!-~]", "_", str(shown["event"] or "-"))[:32]
        header = f"<{self.facility * 8 + severity}>1 {shown['time'] or '-'} {self.host} squall {os.getpid()} {msgid} -"
        return f"{header} {fitted(shown, self.max_bytes - len(header.encode()) - 1)}".encode()

    def close(self) -> None:
        self.socket.close()


def _datagram_socket(family: int) -> socket.socket:
    """A datagram socket that never waits for its receiver: a local syslog that stopped reading (its socket
    queues ~10 messages) held `sendto`, and with it every sink's events, until it read."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def _why_unsent(exc: OSError) -> str:
    """Why a syslog message was not sent, for the log: a full queue (the receiver is not reading, or not
    as fast as events come) is said as such, rather than as "Resource temporarily unavailable"."""
    if isinstance(exc, BlockingIOError) or exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
        return "is not reading fast enough: its queue is full, so the event was not sent"
    return f"could not be sent to: {exc.strerror or exc}"


def _dumps(value: Any) -> str:
    """JSON as syslog carries it: ASCII only, so its length is its size in bytes."""
    return json.dumps(value, default=str)


def _cut(value: Any, keep: int) -> Any:
    """`value` with every string longer than `keep` characters cut to its first `keep`, marked with how
    much was cut (where the mark is shorter than what it replaces), at any depth."""
    if isinstance(value, str):
        mark = f"...[{len(value) - keep} more characters cut]"
        return value[:keep] + mark if len(value) > keep + len(mark) else value
    if isinstance(value, Mapping):
        return {k: _cut(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(item, keep) for item in value]
    return value


def _longest(value: Any) -> int:
    """The length of the longest string in `value`, at any depth."""
    if isinstance(value, str):
        return len(value)
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else ()
    return max((_longest(item) for item in items), default=0)


def _largest_cut(make: Callable[[int], str], longest: int, budget: int) -> str | None:
    """`make(keep)` for the largest `keep` (0 … `longest`) whose JSON fits `budget`; None if none does."""
    best, low, high = None, 0, longest
    while low <= high:
        keep = (low + high) // 2
        body = make(keep)
        if len(body) <= budget:
            best, low = body, keep + 1
        else:
            high = keep - 1
    return best


def fitted(shown: Mapping[str, Any], budget: int) -> str:
    """The JSON of the event `shown` in at most `budget` bytes where it can be: as it is if it fits; else
    with the detail's strings cut to the longest length that fits; else with the detail left out (said
    in `detail.truncated`); else (a target of kilobytes) with every string cut. Event, actor, source and
    target are kept whole while the detail alone can make room."""
    body = _dumps(shown)
    if len(body) <= budget:
        return body
    detail = shown.get("detail") or {}
    cut = _largest_cut(lambda keep: _dumps({**shown, "detail": _cut(detail, keep)}), _longest(detail), budget)
    if cut is not None:
        return cut
    bare = {**shown, "detail": {"truncated": f"{len(_dumps(detail))} bytes of detail left out"}}
    body = _dumps(bare)
    if len(body) <= budget:
        return body
    return _largest_cut(lambda keep: _dumps(_cut(bare, keep)), _longest(bare), budget) or body


class StreamSink:
    """JSON lines on a stream (standard output by default), for a container's log collector. A collector
    that stops reading holds `write` once the pipe is full: the sinks' thread waits, never the loop."""

    kind = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def __call__(self, record: Mapping[str, Any]) -> None:
        stream = self.stream or sys.stdout
        stream.write(line(record) + "\n")
        stream.flush()

    def close(self) -> None:
        pass


def build(config: Any) -> list[Any]:
    """The sinks config `audit.sinks` lists; `ConfigError` naming the entry and key that is wrong."""
    from engine.config import ConfigError

    section = config.section("audit")
    unknown = sorted(set(section) - {"sinks"})
    if unknown:
        raise ConfigError(f"{config.path}: unknown key 'audit.{unknown[0]}'; known: sinks")
    listed = section.get("sinks") or []
    if not isinstance(listed, list):
        raise ConfigError(f"{config.path}: 'audit.sinks' must be a list such as [{{type: file, path: "
                          f"data/audit.jsonl}}], not {type(listed).__name__}")
    sinks = []
    for index, spec in enumerate(listed):
        where = f"audit.sinks[{index}]"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in KINDS:
            raise ConfigError(f"{config.path}: '{where}.type' must be one of {', '.join(KINDS)}, not {kind!r}")
        sink = _sink(config, where, kind, spec)  # checked in every process, built where it belongs
        if kind != "stdout" or _Process.stdout:
            sinks.append(sink)
    return sinks


def _sink(config: Any, where: str, kind: str, spec: dict[str, Any]) -> Any:
    from engine.config import ConfigError

    known = {"file": {"type", "path", "max_bytes", "backups"},
             "syslog": {"type", "host", "port", "socket", "facility", "max_bytes"}, "stdout": {"type"}}[kind]
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"{config.path}: unknown key '{where}.{unknown[0]}' for a {kind} sink; known: "
                          f"{', '.join(sorted(known))}")
    try:
        if kind == "file":
            # No path: `audit.jsonl` in `data_dir`, where the rest of the service's state is.
            path = config.base_dir / spec["path"] if spec.get("path") else config.data_dir / "audit.jsonl"
            return FileSink(path, int(spec.get("max_bytes", 10 * 1024 * 1024)), int(spec.get("backups", 5)))
        if kind == "syslog":
            facility = spec.get("facility", "auth")
            if facility not in FACILITIES:
                raise ConfigError(f"{config.path}: '{where}.facility' must be one of {', '.join(FACILITIES)}, "
                                  f"not {facility!r}")
            address = spec["socket"] if "socket" in spec else (str(spec.get("host", "127.0.0.1")),
                                                               _syslog_port(config, where, spec))
            return SyslogSink(FACILITIES[facility], address, _syslog_max_bytes(config, where, spec))
    except (TypeError, ValueError, OSError) as exc:
        raise ConfigError(f"{config.path}: '{where}': {exc}") from None
    return StreamSink()


def _syslog_port(config: Any, where: str, spec: dict[str, Any]) -> int:
    """A syslog sink's `port`: 1 to 65535 (514 when not given); `ConfigError` naming the entry otherwise. Out of
    that range the sink loaded, then failed to send every audit event."""
    from engine.config import ConfigError

    value = spec.get("port", 514)
    port = int(value) if isinstance(value, str) and value.strip().isdigit() else value
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{config.path}: '{where}.port' must be a port number from 1 to 65535, not {value!r}")
    return port


def _syslog_max_bytes(config: Any, where: str, spec: dict[str, Any]) -> int:
    """A syslog sink's `max_bytes`: a whole number from 480 (a header and the event's names) to 65,507 (one
    UDP datagram); `ConfigError` naming the entry otherwise."""
    from engine.config import ConfigError

    value = spec.get("max_bytes", SYSLOG_MAX_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or not _SYSLOG_MIN_BYTES <= value <= 65507:
        raise ConfigError(f"{config.path}: '{where}.max_bytes' must be a whole number of bytes from "
                          f"{_SYSLOG_MIN_BYTES} to 65507 (one UDP datagram), not {value!r}")
    return value


def install(store: Any, config: Any) -> list[Delivery]:
    """Hand every audit event `store` records to the configured sinks, each through a thread of its own
    (`Delivery`); what to close: one delivery, or none (and no thread) when no sink is configured. A service
    process's delivery records how far its sinks got in `data_dir` and first re-sends what the last unclean
    stop left undelivered (`_Progress`); a CLI command's does neither (`leave_out_stdout`)."""
    sinks = build(config)
    if not sinks:
        return []
    progress = _Progress.claim(Path(config.data_dir), store) if _Process.stdout else None
    delivery = Delivery(sinks, progress=progress)
    store.audit_listeners.append(delivery)
    return [delivery]


def _identity(sink: Any) -> str:
    """How the progress file and the log name a sink: its kind and where it writes (`file /srv/audit.jsonl`,
    `syslog siem:514`, `stdout`)."""
    kind = getattr(sink, "kind", type(sink).__name__)
    where = getattr(sink, "path", None) or getattr(sink, "where", None)
    return f"{kind} {where}" if where else str(kind)


#: What tells a sink's thread to close its sink and end (`Delivery.close`).
_STOP: Mapping[str, Any] = {}


class Delivery:
    """The store's audit listener: it puts each event on every sink's queue, and each sink's own thread
    (`_Lane`) hands them to it, in order: a sink that waits holds its own events only. The caller (the event
    loop, a database thread) never waits: a queue holding `capacity` events (its sink stuck that long) drops
    the event for that sink, counted and said (`_Lane.put`). With `progress` (a service process) each sink
    first re-sends what the last unclean stop left it (`_replay`), and a thread records how far each got
    (`_advance`), about once a second and when it closes."""

    def __init__(self, sinks: list[Any], capacity: int = QUEUE_EVENTS, drain_seconds: float = DRAIN_SECONDS,
                 progress: _Progress | None = None) -> None:
        self.sinks = sinks
        self.capacity, self.drain_seconds = capacity, drain_seconds
        self._progress = progress
        self._closed = False
        self._late = 0
        self._lanes = [self._lane(sink) for sink in sinks]
        self._stopping = threading.Event()
        self._settle = SETTLE_SECONDS_SQLITE if progress is not None and progress.store.is_sqlite else SETTLE_SECONDS
        self._saver: threading.Thread | None = None
        if progress is not None:
            self._save()  # unclean from now on, until it closes
            self._saver = threading.Thread(target=self._save_forever, name="squall-audit-progress", daemon=True)
            self._saver.start()
        for lane in self._lanes:
            lane.thread.start()

    def _lane(self, sink: Any) -> _Lane:
        """`sink`'s lane: in a service process, from the point its last unclean stop left it (re-sending what
        follows first), or from the newest event there is (none of this process's is older)."""
        progress = self._progress
        if progress is None:
            return _Lane(sink, self.capacity, 0, None)
        name = _identity(sink)
        if name not in progress.unclean:
            return _Lane(sink, self.capacity, progress.start, None)
        after = min(progress.unclean[name], progress.start)  # higher: a database restored from an older copy
        return _Lane(sink, self.capacity, after,
                     lambda deliver: _replay(progress.store, name, after, progress.start, deliver))

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Queue `record` for each sink; never waits (a full queue or a closed delivery drops it)."""
        if self._closed:
            self._after_close(record)
            return
        for lane in self._lanes:
            lane.put(record)

    def _after_close(self, record: Mapping[str, Any]) -> None:
        self._late += 1
        for sink in self.sinks:
            _count_missed(sink)
        if self._late == 1:
            log.warning("%s came after the audit sinks closed: it is not streamed; the database keeps it",
                        record.get("event"))

    def _save_forever(self) -> None:
        """The progress thread: about once a second, note the newest event id and record how far each sink
        got (`_advance`), until `close`."""
        from engine.audit import audit_last_id

        assert self._progress is not None
        samples: collections.deque[tuple[float, int]] = collections.deque()
        while not self._stopping.wait(SAVE_SECONDS):
            now = time.monotonic()
            try:
                samples.append((now, audit_last_id(self._progress.store) or 0))
            except Exception:  # the database away for a moment (or closing): the marks wait for the next look
                log.debug("audit sinks' progress: the newest event id could not be read", exc_info=True)
            self._advance(samples, now)
            self._save()

    def _advance(self, samples: collections.deque[tuple[float, int]], now: float) -> None:
        """Move each sink's mark to the newest event id seen `SETTLE_SECONDS` before the sink last had every
        event it was given: every event of this process up to that id had reached its queue by then, so the
        sink has it. Counting only the ids it delivered, a worker (it stores few events) or a serve beside
        busy CLI commands stayed behind, and a crash re-sent everyone's events since."""
        for lane in self._lanes:
            if not lane.replayed:  # what it re-sends is not all handed over yet: its mark stays
                continue
            settled = lane.caught_up - self._settle
            newest = None
            for taken, last in samples:
                if taken > settled:
                    break
                newest = last
            if newest is not None and newest > lane.mark:
                lane.mark = newest
        while len(samples) > 1 and samples[1][0] <= now - self._settle - 5 * SAVE_SECONDS:
            samples.popleft()  # the newest sample older than any sink can still use stays

    def _save(self, closing: bool = False) -> None:
        """Record each sink's mark; `closing`: and, for each sink that took all its events, a clean stop."""
        assert self._progress is not None
        self._progress.save({lane.name: lane.mark for lane in self._lanes},
                            {lane.name: closing and lane.finished for lane in self._lanes}, final=closing)

    def close(self) -> None:
        """Deliver what is queued, waiting `drain_seconds` at most for all the sinks together (a CLI command's
        events reach the sinks before it exits), then close the sinks; an event recorded later is dropped. A
        sink stuck past the wait keeps its thread (a daemon: it ends with the process) and closes when it is
        done. A service process records which sinks took all their events: a stuck one's undelivered events
        are re-sent at the next start, once its progress thread has ended (waited for `drain_seconds` at most):
        that thread reads the store, which the owner closes next, and kept at it after this returned."""
        if self._closed:
            return
        for lane in self._lanes:
            lane.resumed("closes")  # drops not yet said: said now, or never
        self._closed = True
        for lane in self._lanes:
            lane.stop()
        deadline = time.monotonic() + self.drain_seconds
        for lane in self._lanes:
            lane.thread.join(max(0.0, deadline - time.monotonic()))
        for lane in self._lanes:
            if lane.thread.is_alive():
                log.warning("the audit sink %s did not take its last events within %g s (it is stuck: a stdout "
                            "nobody reads, a file lock held elsewhere, a hung disk); about %d events were not "
                            "delivered%s: the database has them (`squall audit export`)", lane.name,
                            self.drain_seconds, lane.waiting(),
                            ", and are re-sent when a service process starts here again" if self._progress else "")
        if self._progress is not None:
            self._stopping.set()
            if self._saver is not None:
                self._saver.join(self.drain_seconds)
            self._save(closing=True)


class _Lane:
    """One sink's queue and the thread that empties it into the sink, in order (`Delivery`). When `capacity`
    events are waiting, an event is dropped for this sink, counted in `squall_audit_sink_failures_total`,
    and logged when the drops begin and when they end, with how many and since when: the database has them
    (`squall audit export --since`). They end when the queue is half empty again, not at its first free
    place: a sink a little slower than the events filled and freed that place by turns, two warnings a turn.

    `replay`, given, hands the sink what the last unclean stop left it before the queue's events
    (`_replay`); `mark` is the id up to which the sink has every event of this process (`Delivery._advance`)."""

    def __init__(self, sink: Any, capacity: int, mark: int,
                 replay: Callable[[Sink], int | None] | None) -> None:
        self.sink, self.capacity, self.name = sink, capacity, _identity(sink)
        self.mark = mark
        self._guarded = _Guarded(sink)
        # SimpleQueue: `put` and `qsize` are a few hundred nanoseconds, the loop's whole share of an event.
        self._queue: queue.SimpleQueue[Mapping[str, Any]] = queue.SimpleQueue()
        self._state = threading.Lock()  # the event loop and the database threads both drop
        self._dropped = 0
        self._since: Any = None
        self._replay = replay
        #: Whether what `replay` re-sends is all handed over (or there was none): only then may `mark` move.
        self.replayed = replay is None
        #: When (`time.monotonic`) the sink last had every event queued before then.
        self.caught_up = time.monotonic()
        self.thread = threading.Thread(target=self._deliver, name=f"squall-audit-sink {self.name}", daemon=True)

    @property
    def finished(self) -> bool:
        """Whether the sink took everything it was given, and its thread has ended (`Delivery.close`)."""
        return self.replayed and not self.thread.is_alive()

    def waiting(self) -> int:
        """How many events wait for the sink (about: the thread may be taking one)."""
        return self._queue.qsize()

    def put(self, record: Mapping[str, Any]) -> None:
        if self._queue.qsize() >= self.capacity:
            self._drop(record)
            return
        self._queue.put(record)
        if self._dropped and self._queue.qsize() <= self.capacity // 2:
            self.resumed()

    def stop(self) -> None:
        self._queue.put(_STOP)

    def _deliver(self) -> None:
        """The sink's thread: prepare the sink (look a syslog host up), re-send what it missed, then hand it
        each event in turn until `stop`; then close it, here, where no write of its can still be under way."""
        with contextlib.suppress(Exception):  # said by the first event it fails: this thread must go on
            getattr(self.sink, "prepare", lambda: None)()
        if self._replay is not None and (upto := self._replay(self._guarded)) is not None:
            self.mark = max(self.mark, upto)
            self.replayed = True
        while True:
            now = time.monotonic()
            if self._queue.empty():  # every event queued before `now` is handed over
                self.caught_up = now
            try:
                record = self._queue.get(timeout=SAVE_SECONDS)
            except queue.Empty:
                continue
            if record is _STOP:
                break
            self._guarded(record)
        with contextlib.suppress(Exception):  # closing never fails the command that ends
            self.sink.close()

    def _drop(self, record: Mapping[str, Any]) -> None:
        with self._state:
            self._dropped += 1
            first = self._dropped == 1
            if first:
                self._since = entry(record)["time"]
        _count_missed(self.sink)
        if first:
            log.warning("the audit sink %s has a full queue (%d events wait: it is stuck or slow): %s and the "
                        "events after it are not streamed to it until it has room (logged then); the database "
                        "keeps every event", self.name, self.capacity, record.get("event"))

    def resumed(self, now: str = "has room again") -> None:
        """Log how many events this sink was not given since the drops began, and where they are."""
        with self._state:
            dropped, since, self._dropped = self._dropped, self._since, 0
        if dropped:
            log.warning("the audit sink %s's queue %s; the %d events it dropped since %s are in the database "
                        "(`squall audit export --since %s`)", self.name, now, dropped, since, since)


class _Progress:
    """How far a service process's sinks got, kept in the data directory for the next start: for each sink
    its mark (every event of this process with an id up to it was handed to the sink) and whether it closed
    cleanly (took all it was given), in `.audit-sinks.N.json`, written whole (`write_atomically`) when it
    changed, at most every `SAVE_SECONDS`, and when the process closes.

    Slot N is the process's for its life: it holds `.audit-sinks.N.lock` under `flock`, which the kernel
    lets go however the process ends. A process starting takes first a slot that a dead one left unclean,
    so the first service process to start here after a crash (serve or worker) re-sends what it missed;
    several running at once (serve and its workers on one host) take a slot each."""

    def __init__(self, path: Path, lock: int, store: Any, start: int, previous: Mapping[str, Any]) -> None:
        self.path, self._lock, self.store = path, lock, store
        #: The newest event id when this process started: none of its own events is older.
        self.start = start
        #: The marks of the sinks the slot's last owner did not close cleanly: what to re-send from.
        self.unclean = _unclean(previous)
        self._writing = threading.Lock()
        self._written: Any = None
        self._failing = False
        self._released = False

    @classmethod
    def claim(cls, directory: Path, store: Any) -> _Progress | None:
        """A free slot in `directory`, one left unclean first, with its previous state and the newest event id
        now; None (said) if every slot is held or the directory cannot hold one: the sinks then stream
        without recording how far they got."""
        from engine.audit import audit_last_id

        try:
            directory.mkdir(parents=True, exist_ok=True)
            left = {n for n in range(SLOTS) if _unclean(_read_state(directory / f".audit-sinks.{n}.json"))}
            for n in sorted(range(SLOTS), key=lambda n: n not in left):
                lock = os.open(directory / f".audit-sinks.{n}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a running process's
                    os.close(lock)
                    continue
                path = directory / f".audit-sinks.{n}.json"
                try:
                    return cls(path, lock, store, audit_last_id(store) or 0, _read_state(path))
                except BaseException:
                    os.close(lock)
                    raise
        except OSError as exc:  # the sinks still stream; only a crash's gap is not made up for
            log.warning("the audit sinks cannot record how far they got in %s (%s): they stream all the same, "
                        "but what a crash of this process leaves undelivered is not re-sent; make the data "
                        "directory writable by Squall's user", directory, exc)
            return None
        except Exception as exc:  # the database, read for the newest event id
            log.warning("the audit sinks cannot record how far they got: the newest audit event id could not be "
                        "read (%s); they stream all the same, but what a crash of this process leaves undelivered "
                        "is not re-sent", exc)
            return None
        log.warning("the audit sinks cannot record how far they got: all %d slots in %s are held by running "
                    "processes; they stream all the same, but what a crash of this process leaves undelivered is "
                    "not re-sent", SLOTS, directory)
        return None

    def save(self, marks: Mapping[str, int], clean: Mapping[str, bool], final: bool = False) -> None:
        """Write the state if it changed; `final` (closing): the last write, and the slot is let go."""
        state = {name: {"id": marks[name], "clean": clean[name]} for name in marks}
        with self._writing:
            if self._released:
                return
            if state != self._written:
                body = {"pid": os.getpid(), "saved": datetime.now(UTC).isoformat(), "sinks": state}
                try:
                    write_atomically(self.path, json.dumps(body, indent=1).encode())
                except OSError as exc:
                    if not self._failing:
                        log.warning("the audit sinks' progress could not be written to %s: %s; if this process "
                                    "stops uncleanly, what its sinks missed may not be re-sent; make the data "
                                    "directory writable by Squall's user", self.path, exc)
                    self._failing = True
                else:
                    self._written, self._failing = state, False
            if final:
                self._released = True
                os.close(self._lock)


def _read_state(path: Path) -> dict[str, Any]:
    """The sinks' states a progress file holds; none if it is missing or is not one."""
    try:
        sinks = json.loads(path.read_bytes()).get("sinks")
    except (OSError, ValueError, AttributeError):
        return {}
    return sinks if isinstance(sinks, dict) else {}


def _unclean(sinks: Mapping[str, Any]) -> dict[str, int]:
    """The marks of the sinks a state says did not close cleanly."""
    return {name: int(state.get("id") or 0) for name, state in sinks.items()
            if isinstance(state, Mapping) and not state.get("clean") and isinstance(state.get("id", 0), int)}


def _replay(store: Any, name: str, after: int, upto: int, deliver: Sink) -> int | None:
    """Re-send to sink `name` (`deliver`) the events stored after id `after` up to `upto` (the newest when this
    process started), in id order: the newest `REPLAY_EVENTS` at most, none older than `REPLAY_SECONDS`. One
    line says how many from which id, and what was left out with the export that prints it. `upto` once all
    are handed over; None if reading them failed (said: the next start tries again)."""
    from engine.audit import AuditFilter, audit_forward

    try:
        first, count, left_out = _replay_plan(store, after, upto)
    except Exception as exc:
        log.warning("the audit sink %s was not closed cleanly when Squall last ran here, and what it missed "
                    "after event %d cannot be read to re-send: %s; `squall audit export` prints it", name,
                    after, exc)
        return None
    if count or left_out:
        skipped = ""
        if left_out:
            number, since, until = left_out
            skipped = (f"; {number} events stored before those (more than {REPLAY_EVENTS}, or older than "
                       f"{REPLAY_SECONDS / 3600:g} h) are not re-sent: `squall audit export --since {since}"
                       f"{f' --until {until}' if until else ''}` prints them")
        log.warning("the audit sink %s was not closed cleanly when Squall last ran here (killed, or the host "
                    "stopped): re-sending the %d events stored after id %d (to id %d), before new ones; a "
                    "receiver drops any it has by `id`%s", name, count, first, upto, skipped)
    cursor, sent = first, 0
    try:
        while page := audit_forward(store, AuditFilter(), after=cursor, upto=upto, limit=1000):
            for row in page:
                deliver(row)
            cursor, sent = page[-1]["id"], sent + len(page)
    except Exception as exc:
        log.warning("re-sending to the audit sink %s stopped after %d of %d events: %s; the events after id %d "
                    "are in the database (`squall audit export`), and the next start tries again", name, sent,
                    count, exc, cursor)
        return None
    return upto


def _replay_plan(store: Any, after: int, upto: int) -> tuple[int, int, tuple[int, str, str | None] | None]:
    """Where `_replay` begins: the id after which it re-sends, how many it re-sends, and what it leaves out
    (how many, and the `--since` and `--until` of the export that prints them), if anything."""
    import sqlalchemy as sa

    from engine.storage import audit

    within = sa.and_(audit.c.id > after, audit.c.id <= upto)
    cutoff = datetime.now(UTC) - timedelta(seconds=REPLAY_SECONDS)
    with store._read() as conn:
        total = _count_after(conn, after, upto)
        first = after
        if total > REPLAY_EVENTS:  # the newest REPLAY_EVENTS: those after the one before them
            first = conn.execute(sa.select(audit.c.id).where(within).order_by(audit.c.id.desc())
                                 .offset(REPLAY_EVENTS).limit(1)).scalar() or after
        recent = conn.execute(sa.select(sa.func.min(audit.c.id)).where(within, audit.c.timestamp >= cutoff)).scalar()
        first = max(first, recent - 1 if recent is not None else upto)
        if first > after and (sent := _count_after(conn, first, upto)) < total:  # not just a gap in the ids
            since = _time_after(conn, after, upto)
            assert since is not None  # `total` counts events after `after`
            return first, sent, (total - sent, since, _time_after(conn, first, upto))
        return after, total, None


def _count_after(conn: Any, after: int, upto: int) -> int:
    """How many events are stored after id `after`, up to `upto`."""
    import sqlalchemy as sa

    from engine.storage import audit

    return conn.execute(sa.select(sa.func.count()).select_from(audit)
                        .where(audit.c.id > after, audit.c.id <= upto)).scalar() or 0


def _time_after(conn: Any, after: int, upto: int) -> str | None:
    """The time of the first event stored after id `after` (up to `upto`), as `entry` shows it; None if none."""
    import sqlalchemy as sa

    from engine.storage import as_utc, audit

    stamp = conn.execute(sa.select(audit.c.timestamp).where(audit.c.id > after, audit.c.id <= upto)
                         .order_by(audit.c.id).limit(1)).scalar()
    return entry({"timestamp": as_utc(stamp)})["time"] if stamp is not None else None


def _count_missed(sink: Any) -> None:
    """One more event `sink` missed, in `squall_audit_sink_failures_total{sink}` (its kind)."""
    from engine.metrics import metrics

    metrics.count(metrics.audit_sink_failures, getattr(sink, "kind", type(sink).__name__))


def _guarded(sink: Sink) -> Sink:
    """`sink` as the store calls it (`_Guarded`)."""
    return _Guarded(sink)


class _Guarded:
    """A sink that never stops anything: the database has the event, and the stream missing one must not
    stop the action. An outage is logged twice, when it begins and when it ends, with how many events the
    sink missed and since when: a syslog that stopped reading, or a full disk, logged every event."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._state = threading.Lock()  # alone (`_guarded`), a sink may be called from several threads
        self._missed = 0
        self._since: Any = None

    def __call__(self, record: Mapping[str, Any]) -> None:
        try:
            self.sink(record)
        except Exception as exc:  # whatever it was: the event is stored, the action goes on
            self._failed(record, exc)
        else:
            if self._missed:
                self._recovered()

    def _failed(self, record: Mapping[str, Any], exc: Exception) -> None:
        _count_missed(self.sink)
        with self._state:
            self._missed += 1
            first = self._missed == 1
            if first:
                self._since = entry(record)["time"]
        if first:
            log.warning("the %s audit sink could not take %s: %s; it skips events until it can take one again "
                        "(logged then); the database keeps every event", type(self.sink).__name__,
                        record.get("event"), exc)

    def _recovered(self) -> None:
        with self._state:
            missed, since, self._missed = self._missed, self._since, 0
        if missed:
            log.warning("the %s audit sink takes events again; the %d it missed since %s are in the database "
                        "(`squall audit export --since %s`)", type(self.sink).__name__, missed,
                        since or "it failed", since or "TIME")
