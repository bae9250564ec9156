"""`/opt/stackstorm/packs/<pack>` read from the pack's own folder, in action and sensor processes.

Some Exchange packs hard-code StackStorm's install folder (templates, inventories, playbooks beside
the code). Squall keeps packs elsewhere and runs without root, so it cannot create that folder;
instead the process that runs pack code translates such paths when it opens or inspects files:
`/opt/stackstorm/packs/<name>/...` becomes `<folder of the running pack>/...` when `<name>` is that
pack's folder name, or `<folder holding the running pack>/<name>/...` for another pack installed
beside it. A real `/opt/stackstorm/packs/<name>` (a symlink an administrator made) wins. Only
Python file access is covered (open, os.stat and what uses it, listdir, scandir, access, chdir):
paths handed to other programs are not (docs/stackstorm-compat.md), but for the shell runners' `cwd`,
which the engine maps with `under_squall` before it starts the command, and a script's `#!` line naming
StackStorm's own interpreter (in `ST2_BIN`), which the engine replaces with the pack's. Standard library only.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
from collections.abc import Callable
from typing import Any

ST2_PACKS = "/opt/stackstorm/packs"
#: Where StackStorm keeps each pack's virtualenv (`<root>/<pack ref>`); Squall's is `packs.virtualenvs_path`.
#: A script whose first line names a python there is run with that pack's (engine/runners/shell.py).
ST2_VIRTUALENVS = "/opt/stackstorm/virtualenvs"
#: The folder of StackStorm's own interpreter, which Exchange scripts name in their first line
#: (`#!/opt/stackstorm/st2/bin/python`); Squall runs them with the pack's (engine/runners/shell.py).
ST2_BIN = "/opt/stackstorm/st2/bin"
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
    if not isinstance(text, str):
        return path
    mapped = under_squall(text, ST2_PACKS, _pack_path)
    return path if mapped is text else mapped


def under_squall(text: str, root: str, folder: str, name: str | None = None) -> str:
    """`text` with a leading StackStorm `root` (`ST2_PACKS`, `ST2_VIRTUALENVS`) mapped to where Squall keeps
    what it holds: `root/<n>/...` is `folder/...` when `<n>` is the running pack's (`folder`'s own name, or
    `name`, its ref), else `<folder's parent>/<n>/...` (another pack's, beside it), and `root` itself is
    `folder`'s parent. `text` itself (the same object) when it is elsewhere, really exists, or maps to a
    folder Squall does not have. `translate` for Python file access; the shell runners' `cwd` too."""
    if not (text == root or text.startswith(root + "/")) or _exists(text):
        return text
    first, _, tail = text[len(root):].strip("/").partition("/")
    folder = folder.rstrip("/")
    if not first:
        return os.path.dirname(folder)
    target = folder if first in (os.path.basename(folder), name) else os.path.join(os.path.dirname(folder), first)
    if not _exists(target):
        return text
    return os.path.join(target, tail) if tail else target


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
