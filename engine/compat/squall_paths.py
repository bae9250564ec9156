"""`/opt/stackstorm/packs/<pack>` read from the pack's own folder, in action and sensor processes.

Some Exchange packs hard-code StackStorm's install folder (templates, inventories, playbooks beside
the code). Squall keeps packs elsewhere and runs without root, so it cannot create that folder;
instead the process that runs pack code translates such paths when it opens or inspects files:
`/opt/stackstorm/packs/<name>/...` becomes `<folder of the running pack>/...` when `<name>` is that
pack's folder name, or `<folder holding the running pack>/<name>/...` for another pack installed
beside it. A real `/opt/stackstorm/packs/<name>` (a symlink an administrator made) wins. Only
Python file access is covered (open, os.stat and what uses it, listdir, scandir, access, chdir):
paths handed to other programs are not (docs/stackstorm-compat.md). Standard library only.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
from collections.abc import Callable
from typing import Any

ST2_PACKS = "/opt/stackstorm/packs"
#: Set by the parent (engine/runners/python.py) to the running pack's folder; removed once read,
#: so pack code never sees it.
PACK_PATH_VARIABLE = "_SQUALL_PACK_PATH"
_PATCHED = ("stat", "lstat", "listdir", "scandir", "access", "chdir", "open")

_pack_path: str | None = None
_lstat = os.lstat  # the original: os.path.lexists would call the patched one and recurse


def _exists(path: str) -> bool:
    try:
        _lstat(path)
    except (OSError, ValueError):
        return False
    return True


def translate(path: Any) -> Any:
    """`path` with a leading `/opt/stackstorm/packs/<name>` mapped to the pack's folder under Squall.

    Anything else (descriptors, bytes, other paths, paths that really exist) is returned unchanged.
    """
    if _pack_path is None or isinstance(path, (int, bytes)):
        return path
    try:
        text = os.fspath(path)
    except TypeError:
        return path
    if not isinstance(text, str) or not (text == ST2_PACKS or text.startswith(ST2_PACKS + "/")) or _exists(text):
        return path
    rest = text[len(ST2_PACKS):].strip("/")
    name, _, tail = rest.partition("/")
    own = os.path.basename(_pack_path.rstrip("/"))
    if not name:
        return os.path.dirname(_pack_path.rstrip("/"))
    folder = _pack_path if name == own else os.path.join(os.path.dirname(_pack_path.rstrip("/")), name)
    if not _exists(folder):
        return path
    return os.path.join(folder, tail) if tail else folder


def _translating(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        if args:
            args = (translate(args[0]), *args[1:])
        for key in ("file", "path"):
            if key in kwargs:
                kwargs[key] = translate(kwargs[key])
        return original(*args, **kwargs)

    call.__squall_translating__ = True  # type: ignore[attr-defined]
    return call


def install(pack_path: str) -> None:
    """Translate StackStorm's pack paths for this process from now on (once; later calls only move it)."""
    global _pack_path
    _pack_path = os.path.abspath(pack_path)
    if getattr(builtins.open, "__squall_translating__", False):
        return
    builtins.open = io.open = _translating(io.open)  # type: ignore[assignment]  # the same function
    for name in _PATCHED:
        setattr(os, name, _translating(getattr(os, name)))


def install_from_environment() -> None:
    """`install` for the folder the parent named, if it named one."""
    pack_path = os.environ.pop(PACK_PATH_VARIABLE, None)
    if pack_path:
        install(pack_path)
