"""Writing a file so that no reader ever sees half of it: the one home for Squall's atomic writes.

Pack configs, rule files, the pack cache and the key ring are read by other processes while Squall
writes them. Each is written to a temporary file of its own beside the target (`mkstemp`: 0600 and a
unique name, so two writers never share one), synced when asked, then renamed over the target; a
failure removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes, *, mode: int | None = None, sync: bool = True,
                     exclusive: bool = False) -> bool:
    """Write `data` to `target` whole. `mode`: the file's permissions (default 0600, as the file may hold
    secrets); `sync`: fsync before the rename, so a machine crash leaves the old file or the new one,
    never an empty one (a cache that can be rebuilt skips it). `exclusive`: create `target` only if it
    does not exist (a hard link, which fails if it does); False then says another writer came first and
    its file stands."""
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    renamed = False
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        if not exclusive:
            os.replace(temporary, target)
            renamed = True
            return True
        try:
            os.link(temporary, target)
        except FileExistsError:
            return False
        return True
    finally:
        if not renamed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
