"""Start the kernel writing a file's dirty pages to disk, without waiting for it (Linux).

SQLite in WAL mode with `synchronous=NORMAL` fsyncs the WAL only when it checkpoints. That fsync
then writes a second's worth of WAL at once, and on ext4 a commit appending to the WAL meanwhile
waits for it: measured here, 20-60 ms stalls of the event loop once a second under load, which
was the chat's p99. Asking the kernel to start writing the WAL back every few dozen milliseconds
(`sync_file_range(SYNC_FILE_RANGE_WRITE)`, what PostgreSQL's `wal_writer_flush_after` and
`checkpoint_flush_after` do) leaves the checkpoint's fsync little to write, so it is short.

It changes no durability guarantee: nothing waits on it, and the checkpoint still fsyncs.
Elsewhere than Linux it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

from engine import libc

#: `SYNC_FILE_RANGE_WRITE` (linux/fs.h): start writing back the dirty pages of the range, do not wait.
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return libc.function("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint),
                         ctypes.c_int)


def available() -> bool:
    """Whether this system can start a write-back (Linux's `sync_file_range`)."""
    return _sync_file_range() is not None


def start(path: str) -> bool:
    """Start writing back what the file at `path` has in the page cache; False if it could not
    (no such file, or not Linux). Returns at once: the writing goes on in the kernel."""
    function = _sync_file_range()
    if function is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return function(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0
    finally:
        os.close(fd)
