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
listener is a `Delivery`: it only puts the event on a bounded queue (`QUEUE_EVENTS`), and one thread of
its own hands the events to the sinks, in order. A queue that is full (a sink stuck that long) drops the
event for the sinks, counted and logged once per outage, as a failed sink is. Closing waits for the
queue to drain (`DRAIN_SECONDS` at most), so a CLI command's events reach the sinks before it exits.
The thread reads each event after the caller returned: a caller never changes a detail it recorded
(each builds its own for the call). The syslog socket still never blocks, so a syslog that stopped
reading does not hold the other sinks' events.

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
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

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
#: Events waiting for the sinks at most (`Delivery`): a sink stuck longer than that many events costs
#: memory no more; the events past it are dropped for the sinks (the database has them).
QUEUE_EVENTS = 10_000
#: How long closing waits for the sinks to take the events still queued (`Delivery.close`).
DRAIN_SECONDS = 5.0


class _Process:
    """What this process's sinks may be (`leave_out_stdout`)."""

    #: False in a CLI command's process: its standard output is the command's answer.
    stdout = True


def leave_out_stdout() -> None:
    """Build no stdout sink in this process from now on: a CLI command's standard output is its answer
    (`bot.cli.common`), not the service's log stream; `squall serve` and `squall worker` keep theirs."""
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
    """The audit event as every sink and `squall audit export` shows it."""
    stamp = record.get("timestamp")
    return {"time": stamp.isoformat().replace("+00:00", "Z") if isinstance(stamp, datetime) else stamp,
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
    """

    #: The `sink` label of `squall_audit_sink_failures_total`.
    kind = "file"

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._threads = threading.Lock()
        self._lock = os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        #: Whether the file this process writes ends in part of a line it could not cut off (`_cut_back`).
        self._torn = False
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_mode & 0o077:  # made by someone else, or by an older Squall: private now
            os.fchmod(fd, 0o600)
        self._torn = False
        return fd

    def __call__(self, record: Mapping[str, Any]) -> None:
        data = (line(record) + "\n").encode("utf-8")
        # The thread lock first: threads of one process share the flock (it belongs to the open file).
        with self._threads:
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            try:
                self._append(data)
            finally:
                fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _append(self, data: bytes) -> None:
        """Rotate if `data` would pass `max_bytes`, then append it whole, or leave the file as it was."""
        size = self._current_size()
        if 0 < self.max_bytes < size + len(data) and self.backups > 0 and size > 0:
            self._rotate()
            size = 0
        left = memoryview(b"\n" + data if self._torn else data)  # a torn line left: begin a line of our own
        try:
            while left:
                left = left[os.write(self._fd, left):]
        except OSError:
            self._cut_back(size)
            raise
        self._torn = False

    def _cut_back(self, size: int) -> None:
        """Cut the file back to `size`, where a failed write began: the part of a line it left (a full disk),
        with the next event appended onto it, was two events lost to a JSON-lines reader. If even the cut
        fails, this process begins its next line with a newline, so that line is whole."""
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            self._torn = True

    def _current_size(self) -> int:
        """The size of `path` now, reopened first if another process rotated (or someone removed) it."""
        opened = os.fstat(self._fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        if named is None or (named.st_ino, named.st_dev) != (opened.st_ino, opened.st_dev):
            os.close(self._fd)
            self._fd = self._open()
            return os.fstat(self._fd).st_size
        return opened.st_size

    def _rotate(self) -> None:
        """`path.N-1` → `path.N` … `path` → `path.1` (the oldest beyond `backups` replaced), then a new `path`."""
        for n in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        os.close(self._fd)
        self._fd = self._open()

    def close(self) -> None:
        with self._threads:
            for fd in (self._fd, self._lock):
                with contextlib.suppress(OSError):  # closed already
                    os.close(fd)


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
    """Hand every audit event `store` records to the configured sinks, through their own thread
    (`Delivery`); what to close: one delivery, or none (and no thread) when no sink is configured."""
    sinks = build(config)
    if not sinks:
        return []
    delivery = Delivery(sinks)
    store.audit_listeners.append(delivery)
    return [delivery]


#: What tells the sinks' thread to close the sinks and end (`Delivery.close`).
_STOP: Mapping[str, Any] = {}


class Delivery:
    """The store's audit listener: it puts each event on a queue and one thread of its own hands them to
    the sinks (`_Guarded`), in order. The caller (the event loop, a database thread) never waits: when
    `capacity` events are waiting (a sink stuck that long), the event is dropped for the sinks, counted
    in `squall_audit_sink_failures_total` for each, and logged when the drops begin and when they end,
    with how many and since when: the database has them (`squall audit export --since`). They end when
    the queue is half empty again, not at its first free place: a sink a little slower than the events
    filled and freed that place by turns, two warnings a turn."""

    def __init__(self, sinks: list[Any], capacity: int = QUEUE_EVENTS, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.sinks = sinks
        self.capacity, self.drain_seconds = capacity, drain_seconds
        self._guarded = [_Guarded(sink) for sink in sinks]
        # SimpleQueue: `put` and `qsize` are a few hundred nanoseconds, the loop's whole share of an event.
        self._queue: queue.SimpleQueue[Mapping[str, Any]] = queue.SimpleQueue()
        self._closed = False
        self._state = threading.Lock()  # the event loop and the database threads both drop
        self._dropped = 0
        self._since: Any = None
        self._thread = threading.Thread(target=self._deliver, name="squall-audit-sinks", daemon=True)
        self._thread.start()

    def __call__(self, record: Mapping[str, Any]) -> None:
        """Queue `record` for the sinks; never waits (a full queue or a closed delivery drops it)."""
        if self._closed or self._queue.qsize() >= self.capacity:
            self._drop(record)
            return
        self._queue.put(record)
        if self._dropped and self._queue.qsize() <= self.capacity // 2:
            self._resumed()

    def _deliver(self) -> None:
        """The sinks' thread: prepare the sinks (look syslog hosts up), then hand them each event in
        turn until `close`; then close them, here, where no write of theirs can still be under way."""
        for sink in self.sinks:
            with contextlib.suppress(Exception):  # said by the first event it fails: this thread must go on
                getattr(sink, "prepare", lambda: None)()
        while (record := self._queue.get()) is not _STOP:
            for deliver in self._guarded:
                deliver(record)
        for sink in self.sinks:
            with contextlib.suppress(Exception):  # closing never fails the command that ends
                sink.close()

    def _drop(self, record: Mapping[str, Any]) -> None:
        with self._state:
            self._dropped += 1
            first = self._dropped == 1
            if first:
                self._since = entry(record)["time"]
        for sink in self.sinks:
            _count_missed(sink)
        if first and self._closed:
            log.warning("%s came after the audit sinks closed: it is not streamed; the database keeps it",
                        record.get("event"))
        elif first:
            log.warning("the audit sinks' queue is full (%d events wait for a sink that is stuck or slow): %s and "
                        "the events after it are not streamed until it has room (logged then); the database keeps "
                        "every event", self.capacity, record.get("event"))

    def _resumed(self, now: str = "has room again") -> None:
        """Log how many events the sinks were not given since the drops began, and where they are."""
        with self._state:
            dropped, since, self._dropped = self._dropped, self._since, 0
        if dropped:
            log.warning("the audit sinks' queue %s; the %d events it dropped since %s are in the database "
                        "(`squall audit export --since %s`)", now, dropped, since, since)

    def close(self) -> None:
        """Deliver what is queued, waiting `drain_seconds` at most (a CLI command's events reach the sinks
        before it exits), then close the sinks; an event recorded later is dropped. A sink stuck past the
        wait keeps its thread (a daemon: it ends with the process) and closes when it is done."""
        if self._closed:
            return
        self._resumed("closes")  # drops not yet said: said now, or never
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(self.drain_seconds)
        if self._thread.is_alive():
            log.warning("the audit sinks did not take their last events within %g s (a sink is stuck: a stdout "
                        "nobody reads, a file lock held elsewhere, a hung disk); about %d events were not "
                        "delivered: the database has them (`squall audit export`)", self.drain_seconds,
                        self._queue.qsize())


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
