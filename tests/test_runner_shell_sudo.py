"""`sudo: true` in a service that is not root: a timeout or cancel still ends the command.

A service running as an ordinary user (a systemd `User=squall`) cannot signal what `sudo` started as
root, so `os.killpg` alone left the command running and the run waiting for it: 25 s for a 2 s
timeout, forever for a command that never ends. The runner kills the group through `sudo -n kill`
(StackStorm: `sudo pkill -TERM -s <pid>`), and stops waiting a few seconds after a kill in any case.

These tests need root (to write a sudoers entry and switch to the test user) and the `sudo` package
(Debian's `sudo`; .ci/run installs it). The service side runs in a child process that drops to the
user `squall-sudo` before it starts the command, as the reviewer's reproduction did.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import server_missing

#: One user per pytest-xdist worker, so two workers never race to create it.
USER = "squall-sudo" + (f"-{os.environ['PYTEST_XDIST_WORKER']}" if "PYTEST_XDIST_WORKER" in os.environ else "")
ROOT = Path(__file__).resolve().parents[1]
#: The sudoers entries of the tests: everything, or bash alone (so `sudo -n kill` is refused).
ALL = "ALL"
BASH_ONLY = "/usr/bin/bash, /bin/bash"

#: Run by the child as USER: start the command through sudo as LocalShellRunner does, end it by the
#: run's timeout or by a cancel, and print the result (or what went wrong) as JSON.
CHILD = """
import asyncio, json, os, pwd, subprocess, sys
import engine.runners.shell as shell

mode, pid_file, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
shell.KILL_GRACE = grace
user = pwd.getpwnam(sys.argv[4])
os.setgroups([]); os.setgid(user.pw_gid); os.setuid(user.pw_uid)
argv = ["sudo", "-E", "-n", "--", "bash", "-c", f"echo $$ > {pid_file}; exec sleep 600"]


async def started() -> None:
    while not os.path.exists(pid_file) or not open(pid_file).read().strip():
        await asyncio.sleep(0.02)


async def main() -> dict:
    run = asyncio.ensure_future(shell.run_process(argv, env=dict(os.environ), cwd="/",
                                                  timeout=60 if mode == "cancel" else 1))
    if mode == "timeout":
        return {"result": await asyncio.wait_for(run, 20)}
    try:
        await asyncio.wait_for(started(), 60)
    except TimeoutError:  # sudo never ran the command: say so apart from a cancel that hung
        return {"never started": True}
    run.cancel()
    done, _ = await asyncio.wait([run], timeout=60)  # its kill takes at most ~11 s (KILL_GRACE twice, then 1 s)
    if not done:  # say what it still waits for, and what still runs: two CI runs saw only "hung"
        ps = subprocess.run(["ps", "-eo", "pid,ppid,pgid,user,stat,etime,args"], capture_output=True, text=True)
        return {"hung": True, "waiting": [awaiting(task.get_coro()) for task in asyncio.all_tasks()], "ps": ps.stdout}
    if run.cancelled():
        return {"canceled": True}
    run.result()  # raises what the run raised instead
    return {"canceled": False}


def awaiting(coro) -> list:  # where a task's coroutine waits, down the chain of what each awaits
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


try:
    print(json.dumps(asyncio.run(main())))
except TimeoutError:
    print(json.dumps({"hung": True}))
"""


def _need_sudo() -> str:
    if os.geteuid() != 0:
        server_missing("the sudo tests write a sudoers entry and switch users: they need root (CI runs as root)")
    sudo = shutil.which("sudo")
    if sudo is None or not os.path.isdir("/etc/sudoers.d"):
        server_missing("sudo is not installed (Debian package 'sudo'; .ci/run installs it)")
    return sudo


def _user() -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(USER)
    if shutil.which("useradd") is None:
        server_missing("cannot create the test user: useradd is missing")
    subprocess.run(["useradd", "-M", "-s", "/bin/bash", USER], check=True, capture_output=True)
    return pwd.getpwnam(USER)


@contextlib.contextmanager
def _sudoers(commands: str) -> Iterator[None]:
    """A sudoers entry for USER, removed afterwards (a name with a dot would be ignored by sudo)."""
    entry = Path("/etc/sudoers.d") / f"squall-test-{os.getpid()}"
    entry.write_text(f"{USER} ALL=(root) NOPASSWD:SETENV: {commands}\n")
    entry.chmod(0o440)
    try:
        check = subprocess.run(["visudo", "-c", "-f", str(entry)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        yield
    finally:
        entry.unlink(missing_ok=True)


@pytest.fixture
def pid_file() -> Iterator[Path]:
    """Where the command (root, through sudo) writes its pid; whatever it names is killed afterwards."""
    _need_sudo()
    _user()
    folder = Path(subprocess.run(["mktemp", "-d", "/tmp/squall-sudo-test.XXXXXX"], check=True, capture_output=True,
                                 text=True).stdout.strip())
    folder.chmod(0o755)
    path = folder / "command.pid"
    try:
        yield path
    finally:
        if path.exists() and path.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(path.read_text()), signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


def _as_user(mode: str, pid_file: Path, grace: float = 5.0) -> dict[str, Any]:
    """Run CHILD as USER; the 180 s bound only keeps a hung child from stopping the suite."""
    done = subprocess.run([sys.executable, "-c", CHILD, mode, str(pid_file), str(grace), USER], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _root_alive(pid_file: Path) -> bool:
    """Whether the command sudo started as root (its pid in `pid_file`) still runs, zombies aside."""
    pid = int(pid_file.read_text())
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_timeout_kills_the_root_command_through_sudo(pid_file: Path) -> None:
    with _sudoers(ALL):
        outcome = _as_user("timeout", pid_file)
    assert "hung" not in outcome, "the run waited for the root command to end by itself"
    result = outcome["result"]
    assert result["return_code"] == -9
    assert result["error"] == "Action failed to complete in 1 seconds"
    assert not _root_alive(pid_file), "the command sudo started as root outlived the timeout"


def test_cancel_kills_the_root_command_through_sudo(pid_file: Path) -> None:
    with _sudoers(ALL):
        outcome = _as_user("cancel", pid_file)
    assert outcome == {"canceled": True}, outcome
    assert not _root_alive(pid_file), "the command sudo started as root outlived the cancel"


def test_a_refused_kill_still_ends_the_run_and_says_what_is_left(pid_file: Path) -> None:
    """sudoers allows bash but not kill: the root command survives, the run ends all the same (after
    the grace) and its error says what may still run and what sudo answered."""
    with _sudoers(BASH_ONLY):
        outcome = _as_user("timeout", pid_file, grace=0.5)
    assert "hung" not in outcome, "the run waited for the root command to end by itself"
    result = outcome["result"]
    assert result["return_code"] == -9
    error = result["error"]
    assert error.startswith("Action failed to complete in 1 seconds; ")
    assert "may still be running" in error
    assert "sudo -n kill" in error and "password is required" in error, error
    assert _root_alive(pid_file)  # the fixture kills it
