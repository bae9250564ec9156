"""Leadership: of several `squall serve` processes on one database, one fires timers and runs sensors.

Every process keeps its timers' schedules; only the leader dispatches and runs sensors. The lock dies with its
holder, so when the leader stops or crashes the next process to look takes over, and nothing
needs cleaning up. On PostgreSQL it is a session advisory lock held on a connection of its own
(a dropped connection is a lost lock, noticed at the next check); on SQLite, whose processes
share one machine, an exclusive `flock` on a file beside the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from engine.storage import PG_LIVENESS, database_trouble
from engine.wakeups import PROCESS_NAME

log = logging.getLogger(__name__)
#: The lead's own connection notices a dead peer within ~25 s (TCP keepalives, and `tcp_user_timeout`
#: for a `SELECT 1` sent into a dead network) and never waits long on a statement, so a half-open
#: connection cannot stall the timers and the service's housekeeping.
_LEAD_CONNECTION = {**PG_LIVENESS, "keepalives_idle": 10, "keepalives_interval": 5, "tcp_user_timeout": 25_000,
                    "connect_timeout": 10, "options": "-c statement_timeout=5000"}
_LOCK_KEY = 0x5371_7561_6C6C_01  # "Squall" + 1: the lead's advisory lock (0x…6C6C is migrations')
#: Who holds a bigint advisory lock: PostgreSQL keeps its high and low halves, and objsubid 1.
_HOLDER = sa.text("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                  "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low "
                  "AND l.objsubid = 1")


class Leadership(Protocol):
    def lead(self) -> bool:
        """Whether this process leads now, taking the lead if nobody holds it (never blocks long)."""

    def close(self) -> None:
        """Give the lead up, so another process can take it at once."""

    def holder(self) -> str | None:
        """Which process leads now (`engine.wakeups.PROCESS_NAME`: `squall PID@HOST`), None if none
        does; for people (the status page), never for deciding anything."""


class Alone:
    """A database only this process can use (SQLite in memory): it always leads."""

    def lead(self) -> bool:
        return True

    def holder(self) -> str | None:
        return PROCESS_NAME

    def close(self) -> None:
        pass


class _Held:
    """A lead held by one object that timers and sensors ask from worker threads: one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def lead(self) -> bool:
        with self._lock:
            return self._lead()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _lead(self) -> bool:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class FileLock(_Held):
    """SQLite: an exclusive `flock` on `<database>.leader`, released by the kernel if we die."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    def _lead(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, PROCESS_NAME.encode(), 0)  # who leads, for the status page of the others
        log.info("this process now leads: timers and sensors run here (it holds %s)", self.path)
        return True

    def holder(self) -> str | None:
        """The name the leader wrote in the lock file, while the lock is held (a shared lock taken
        for a moment tells: it is refused while the leader holds its exclusive one)."""
        if self._fd is not None:
            return PROCESS_NAME
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it: the name in it is a dead leader's
        finally:
            os.close(fd)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class AdvisoryLock(_Held):
    """PostgreSQL: `pg_try_advisory_lock` on a connection kept for it; a lost connection is a lost lead."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        self.engine = sa.create_engine(engine.url, poolclass=sa.pool.NullPool,
                                       connect_args={**_LEAD_CONNECTION, "application_name": PROCESS_NAME})
        self._conn: sa.Connection | None = None

    def _lead(self) -> bool:
        if self._conn is not None:
            try:
                self._conn.exec_driver_sql("SELECT 1")
                return True
            except sa.exc.DBAPIError as exc:
                log.warning("lost the connection that held the lead (%s); trying to take it again",
                            exc.orig.__class__.__name__ if exc.orig else exc)
                self._close()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            took = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}).scalar()
        except BaseException:
            conn.close()
            raise
        if not took:
            conn.close()
            return False
        self._conn = conn
        log.info("this process now leads: timers and sensors run here (it holds advisory lock %d)", _LOCK_KEY)
        return True

    def close(self) -> None:
        super().close()
        self.engine.dispose()

    def holder(self) -> str | None:
        """The `application_name` of the session that holds the lead's advisory lock (every Squall
        connection names its process), None when nobody holds it."""
        if self._conn is not None:
            return PROCESS_NAME
        with self.engine.connect() as conn:
            return conn.execute(_HOLDER, {"high": _LOCK_KEY >> 32, "low": _LOCK_KEY & 0xFFFF_FFFF}).scalar()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sa.exc.DBAPIError):
                self._conn.invalidate()  # a discarded session: PostgreSQL releases its locks
            self._conn.close()
            self._conn = None


async def leads(lead: Leadership) -> bool:
    """Whether this process leads, asked off the event loop; a database it cannot reach means no. Said
    once an outage (housekeeping asks every second): then at debug, until it can tell again."""
    try:
        held = await asyncio.to_thread(lead.lead)
    except Exception as exc:
        level = logging.DEBUG if getattr(lead, "unsure", False) else logging.WARNING
        log.log(level, "could not tell whether this process leads (%s); acting as a follower for now",
                database_trouble(exc) or exc)
        with contextlib.suppress(AttributeError):
            lead.unsure = True  # type: ignore[attr-defined]
        return False
    if getattr(lead, "unsure", False):
        log.info("this process can tell whether it leads again")
        lead.unsure = False  # type: ignore[attr-defined]
    return held


def leadership(engine: sa.Engine) -> Leadership:
    """The lock that fits the database `engine` is on."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLock(engine)
    database = engine.url.database
    if not database or database == ":memory:":
        return Alone()
    return FileLock(Path(f"{database}.leader"))
