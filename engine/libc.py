"""The C library's functions Python does not wrap (`prctl`, `renameat2`, `sync_file_range`), looked
up once each: None where this system's libc has none, so callers fall back to what works anywhere.
ctypes is imported at the first look-up, not at Squall's start."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def function(name: str, argtypes: tuple[Any, ...], restype: Any) -> Callable[..., int] | None:
    """libc's `name` with its C signature (ctypes types), errno kept for `ctypes.get_errno`; None if absent."""
    import ctypes

    try:
        found = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    found.argtypes = list(argtypes)
    found.restype = restype
    return found
