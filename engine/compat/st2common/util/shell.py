"""`st2common.util.shell`: StackStorm's subprocess and quoting helpers, as pack code calls them."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Sequence
from subprocess import list2cmdline
from typing import IO, Any

__all__ = ["kill_process", "on_parent_exit", "quote_unix", "quote_windows", "run_command"]

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def run_command(cmd: str | Sequence[str], stdin: int | IO[Any] | None = None,
                stdout: int | IO[Any] | None = subprocess.PIPE, stderr: int | IO[Any] | None = subprocess.PIPE,
                shell: bool = False, cwd: str | None = None, env: dict[str, str] | None = None,
                ) -> tuple[int, Any, Any]:
    """Run `cmd` to its end: `(exit_code, stdout, stderr)`, output decoded to str as StackStorm's.

    Without `env` the command inherits this process's environment.
    """
    if not isinstance(cmd, (list, tuple, str)):
        raise TypeError(f"Command must be a type of list, tuple, or string, not '{type(cmd)}'.")
    process = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env or os.environ.copy(),
                               cwd=cwd, shell=shell)
    out, err = process.communicate()
    decode: Callable[[Any], Any] = lambda data: data.decode() if isinstance(data, bytes) else data  # noqa: E731
    return process.returncode, decode(out), decode(err)


def kill_process(process: subprocess.Popen[Any]) -> int | None:
    """Send TERM to the process's session with `pkill -s`, as StackStorm does (without its `sudo`:
    actions run as `runners.user`, for whom sudo would ask a password)."""
    try:
        return subprocess.call(shlex.split(f"pkill -TERM -s {process.pid}"), timeout=100)
    except (OSError, subprocess.SubprocessError):
        return None


def quote_unix(value: str) -> str:
    """`value` quoted as one token of a POSIX shell command line."""
    return shlex.quote(value)


def quote_windows(value: str) -> str:
    """`value` quoted as one token of a Windows command line (MS C runtime rules)."""
    return list2cmdline([value])


def on_parent_exit(signame: str) -> Callable[[], None]:
    """A `preexec_fn` that makes the child get `signame` when its parent dies (Linux), else a no-op."""
    try:
        prctl = ctypes.CDLL("libc.so.6").prctl
    except (OSError, AttributeError):
        return lambda: None
    signum = getattr(signal, signame)

    def set_parent_exit_signal() -> None:
        result = prctl(PR_SET_PDEATHSIG, signum)
        if result != 0:
            raise Exception(f"prctl failed with error code {result}")

    return set_parent_exit_signal
