"""Ownership and crashes: a real `squall serve` killed with SIGKILL, restarted (under another host
name where a UTS namespace can be made); what it started dies with it, nothing stays `running`,
`requested` or `canceling`, and no action ever runs twice at the same time. Also the parts alone:
the owner of an execution, the owner files and their sweep, the cancel of an orphan."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine import processes
from engine.config import Config, load_config
from engine.executions import new_id
from engine.processes import (
    boot_id,
    owner_file_state,
    owner_name,
    process_identity,
    running_since,
    start_time,
    sweep,
)
from engine.storage import Store, utcnow
from tests.conftest import write
from tests.workflow_helpers import workflow_pack

SQUALL = Path(sys.executable).parent / "squall"
STUCK = ("running", "requested", "canceling", "scheduled", "resuming")

LONG = r"""#!/usr/bin/env bash
# One attempt: "start" when it begins; a child keeps ticking until the time is up, then "end".
# The first attempt in a folder takes $2 seconds, later ones (a retry after a crash) $3.
dir=$1; seconds=$2
if [ -s "$dir/attempts.log" ]; then seconds=$3; fi
echo "start $$ $(date +%s.%N)" >> "$dir/attempts.log"
(
  echo "$BASHPID $$" > "$dir/child.$$"
  end=$(( $(date +%s%N) + seconds * 1000000000 ))
  while [ "$(date +%s%N)" -lt "$end" ]; do
    echo "tick $$ $(date +%s.%N)" >> "$dir/ticks.log"
    sleep 0.05
  done
  echo "end $$ $(date +%s.%N)" >> "$dir/attempts.log"
) &
wait
"""

PIDS = '''
import os

from st2common.runners.base_action import Action


class Pid(Action):
    def run(self, path):
        # The pack's warm worker: each run is a child it forks, and exits when it answers.
        with open(path, "w") as handle:
            handle.write(str(os.getppid()))
        return os.getppid()
'''

IDLE_SENSOR = '''
import threading

from st2reactor.sensor.base import Sensor


class Idle(Sensor):
    def setup(self):
        pass

    def run(self):
        threading.Event().wait()

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''

SLOW_FLOW = """
version: 1.0
input: [dir]
tasks:
  slow:
    action: crash.long
    input: {dir: "<% ctx(dir) %>", first: 30, again: 2}
    next: [{do: after}]
  after:
    action: core.noop
"""


def crash_home(home: Path) -> Path:
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\nadapters:\n  console:\n    enabled: false\n")
    pack = home / "packs" / "crash"
    write(pack / "pack.yaml", "ref: crash\nname: crash\nversion: 0.1.0\n")
    write(pack / "actions" / "long.yaml", """
        name: long
        runner_type: local-shell-script
        entry_point: long.sh
        parameters:
          dir: {type: string, required: true, position: 0}
          first: {type: integer, default: 30, position: 1}
          again: {type: integer, default: 2, position: 2}
          timeout: {default: 120}
    """)
    (pack / "actions" / "long.sh").write_text(LONG)
    (pack / "actions" / "long.sh").chmod(0o755)
    write(pack / "actions" / "pid.yaml", """
        name: pid
        runner_type: python-script
        entry_point: pid.py
        parameters:
          path: {type: string, required: true}
    """)
    (pack / "actions" / "pid.py").write_text(PIDS)
    write(pack / "sensors" / "idle.yaml", "class_name: Idle\nentry_point: idle.py\n")
    (pack / "sensors" / "idle.py").write_text(IDLE_SENSOR)
    workflow_pack(home, {"slow": ("orquesta", "dir: {type: string}", SLOW_FLOW)})
    (home / "work").mkdir()
    return home / "work"


# -- helpers ---------------------------------------------------------------------------------------

def _new_uts_namespace() -> str | None:
    """Why a process cannot be started under another host name here, or None if it can."""
    if os.geteuid() != 0:
        return "a new UTS namespace needs root (unshare --uts)"
    try:
        probe = subprocess.run(["unshare", "--uts", "--", "hostname", "squall-probe"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unshare is not usable here: {exc}"
    return None if probe.returncode == 0 else f"unshare --uts failed: {probe.stderr.strip()}"


RENAMED = "squall-renamed-host"


def serve(home: Path, hostname: str | None = None) -> subprocess.Popen[str]:
    argv = [str(SQUALL), "-c", str(home / "config.yml"), "serve"]
    if hostname is not None:  # the same machine under another name, as after a container restart
        argv = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
    with open(home / "serve.log", "a") as log:
        return subprocess.Popen(argv, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True, text=True,
                          cwd=home, timeout=60)


def queue(home: Path, ref: str, *params: str) -> str:
    done = cli(home, "run", ref, *params, "--async", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]


def until(predicate: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kill_hard(server: subprocess.Popen[str]) -> None:
    os.kill(server.pid, signal.SIGKILL)  # the service alone: its actions must go by themselves
    server.wait(timeout=10)


def stop(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def status(store: Store, execution_id: str) -> str:
    return store.get_execution(execution_id)["status"]


def stuck(store: Store) -> list[tuple[str, str, str]]:
    return [(r["id"], r["action"], r["status"]) for r in store.list_executions(status=list(STUCK), limit=1000)]


def attempts(work: Path) -> dict[str, dict[str, Any]]:
    """Each attempt of crash.long by its shell's pid: when it started, its ticks, whether it ended."""
    found: dict[str, dict[str, Any]] = {}
    for line in (work / "attempts.log").read_text().splitlines():
        kind, pid, when = line.split()
        entry = found.setdefault(pid, {"ticks": []})
        entry[kind] = float(when)
    if (work / "ticks.log").exists():
        for line in (work / "ticks.log").read_text().splitlines():
            _, pid, when = line.split()
            found.setdefault(pid, {"ticks": []})["ticks"].append(float(when))
    return found


def ticking_child(work: Path, shell_pid: str) -> tuple[int, int]:
    """The pid and start time of the child an attempt left ticking (not a child of the service)."""
    pid = int(until(lambda: (work / f"child.{shell_pid}").exists() and (work / f"child.{shell_pid}").read_text()
                    .split()[0], "the attempt's child"))
    started = start_time(pid)
    assert started is not None
    return pid, started


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    work = crash_home(home)
    assert work.is_dir()
    opened: list[Store] = []

    def open_store() -> Store:
        opened.append(Store.open(f"sqlite:///{home / 'data' / 'squall.db'}"))
        return opened[-1]

    (home / "data").mkdir()
    yield open_store()  # creates the database
    for each in opened:
        each.close()
    for marker in work.glob("child.*"):  # a failed test leaves nothing ticking
        processes.kill_group(int(marker.name.split(".")[1]), None, wait=1)


# -- end to end: kill -9 and start again ------------------------------------------------------

@pytest.mark.integration
def test_sigkill_takes_the_services_processes_and_recovery_kills_what_they_left(home: Path, store: Store) -> None:
    work = home / "work"
    server = serve(home)
    try:
        py = queue(home, "crash.pid", f"path={work / 'worker.pid'}")
        until(lambda: status(store, py) == "succeeded", "the Python action")
        long = queue(home, "crash.long", f"dir={work}")
        until(lambda: (work / "attempts.log").exists(), "the shell action to start")
        shell_pid = next(iter(attempts(work)))
        child, child_started = ticking_child(work, shell_pid)
        sensor = until(lambda: [p for p in children_of(server.pid) if "squall_sensor.py" in cmdline(p)],
                       "the sensor process")[0]
        leaders = children_of(server.pid)
        worker = int((work / "worker.pid").read_text())
        assert {int(shell_pid), worker, sensor} <= set(leaders)

        kill_hard(server)
        # Every process the service started itself dies with it (parent-death signal)...
        until(lambda: not any(running_since(pid, None) for pid in leaders), "the service's children to die", 5)
        assert status(store, long) == "running"

        # ...and what they started in turn is killed when a Squall process finds the owner dead.
        server = serve(home)
        until(lambda: status(store, long) == "abandoned", "recovery")
        assert not running_since(child, child_started)
        ticks = len(attempts(work)[shell_pid]["ticks"])
        time.sleep(0.3)
        assert len(attempts(work)[shell_pid]["ticks"]) == ticks
        assert "end" not in attempts(work)[shell_pid]
        assert stuck(store) == []
    finally:
        stop(server)


@pytest.mark.integration
@pytest.mark.parametrize("restart", ["same host name", "another host name"])
def test_a_workflow_task_interrupted_by_sigkill_never_runs_beside_its_next_attempt(
        home: Path, store: Store, restart: str) -> None:
    renamed = None
    if restart == "another host name":
        if (reason := _new_uts_namespace()) is not None:
            pytest.skip(reason)
        renamed = RENAMED
    work = home / "work"
    server = serve(home)
    try:
        flow = queue(home, "wf.slow", f"dir={work}")
        until(lambda: (work / "attempts.log").exists(), "the task to start")
        first = next(iter(attempts(work)))
        ticking_child(work, first)
        time.sleep(0.2)
        kill_hard(server)
        time.sleep(0.3)  # the old attempt's child ticks on until a Squall process kills it

        server = serve(home, renamed)
        done = until(lambda: (r := store.get_execution(flow))["status"] not in STUCK and r, "the workflow", 40)
        assert done["status"] == "succeeded", done["result"]
    finally:
        stop(server)
    runs = attempts(work)
    assert len(runs) == 2
    second = next(pid for pid in runs if pid != first)
    assert "end" not in runs[first] and "end" in runs[second]
    # Not one tick of the interrupted attempt after the next one started.
    assert max(runs[first]["ticks"]) < runs[second]["start"]
    kids = sorted(store.list_executions(parent=flow), key=lambda r: r["id"])
    assert [(k["context"]["workflow_task"]["task"], k["status"]) for k in kids] == [
        ("slow", "abandoned"), ("slow", "succeeded"), ("after", "succeeded")]
    if renamed is not None:
        assert kids[0]["runner_info"]["hostname"] == socket.gethostname()
        assert kids[1]["runner_info"]["hostname"] == renamed
        assert done["runner_info"]["hostname"] == renamed
    assert stuck(store) == []


@pytest.mark.integration
def test_cancel_of_an_execution_whose_service_died_ends_it_at_once(home: Path, store: Store) -> None:
    work = home / "work"
    server = serve(home)
    try:
        long = queue(home, "crash.long", f"dir={work}")
        until(lambda: (work / "attempts.log").exists(), "the shell action to start")
        shell_pid = next(iter(attempts(work)))
        child, child_started = ticking_child(work, shell_pid)
        other = queue(home, "crash.long", f"dir={work}", "again=30")
        until(lambda: status(store, other) == "running", "the second action to run")
    finally:
        kill_hard(server)

    done = cli(home, "execution", "cancel", long, "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "canceled"
    assert "was gone" in record["result"]["error"]
    assert not running_since(child, child_started)  # what it left is killed first

    # A cancel recorded while the owner lived, which it never saw: ended by the next start.
    store.update_execution(other, {"status": "canceling"}, expect=("running",))
    server = serve(home)
    try:
        until(lambda: status(store, other) == "canceled", "recovery to end the cancel")
        assert stuck(store) == []
    finally:
        stop(server)


# -- the parts ---------------------------------------------------------------------------------

def _record(info: dict[str, Any], status: str = "running", action: str = "core.noop",
            runner: str = "noop") -> dict[str, Any]:
    now = utcnow()
    return {
        "id": new_id(), "action": action, "runner": runner, "status": status, "parameters": {},
        "spec": {"values": {}, "templates": {}}, "sealed": None, "result": None,
        "context": {"user": "tester", "pack": "core"},
        "log": [{"status": "running", "timestamp": now.isoformat()}],
        "parent": None, "runner_info": info, "start_timestamp": now, "end_timestamp": None,
    }


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _owner(**changes: Any) -> dict[str, Any]:
    return {"hostname": socket.gethostname(), **process_identity(), **changes}


async def test_the_owner_is_the_process_not_the_host_name(squall: Squall) -> None:
    executions = squall.executions
    live = subprocess.Popen(["sleep", "30"])
    try:
        mine = _owner()
        assert executions.owner_state_of(mine) == "here"
        assert executions.owner_state_of(_owner(pid=live.pid, started=start_time(live.pid))) == "alive"
        renamed = _owner(hostname="another-name", pid=live.pid, started=start_time(live.pid))
        assert executions.owner_state_of(renamed) == "alive"
        # The same pid started at another time is another process: its owner is gone.
        assert executions.owner_state_of(_owner(pid=live.pid, started=start_time(live.pid) - 1)) == "gone"
        assert executions.owner_state_of(_owner(pid=_dead_pid())) == "gone"
        assert executions.owner_state_of(_owner(boot_id="another-boot")) == "gone"
        assert executions.owner_state_of({"hostname": "another-name", "pid": _dead_pid()}) == "gone"  # before
        assert executions.owner_state_of(None) == "gone"
        squall.db.store.is_sqlite = False  # PostgreSQL: another host's processes are not ours to judge
        try:
            assert executions.owner_state_of(_owner(hostname="another-name", boot_id="another-boot")) == "elsewhere"
            assert executions.owner_state_of(_owner(boot_id="another-boot")) == "gone"  # this host, rebooted
            assert executions.owner_state_of(renamed) == "alive"  # this machine, renamed
            assert executions.owner_state_of({"hostname": "another-name", "pid": 1}) == "elsewhere"
        finally:
            squall.db.store.is_sqlite = True
    finally:
        live.kill()
        live.wait()


async def test_another_containers_owner_is_alive_while_it_holds_its_owner_file(squall: Squall,
                                                                              tmp_path: Path) -> None:
    executions = squall.executions
    other = _owner(pid_ns="4026500000", pid=1, started=12)
    path = executions.ledger / owner_name(other)
    executions.ledger.mkdir(exist_ok=True)
    path.write_text("")
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print(flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"\n"
        assert owner_file_state(executions.ledger, other) == "held"
        assert executions.owner_state_of(other) == "alive"
    finally:
        holder.kill()
        holder.communicate()
    assert owner_file_state(executions.ledger, other) == "free"
    assert executions.owner_state_of(other) == "gone"
    path.unlink()
    assert executions.owner_state_of(other) == "gone"  # SQLite: one machine, so a missing file is a dead owner


def _group(seconds: int = 30) -> subprocess.Popen[bytes]:
    """A process group like an action's: a leader and a child that outlives it."""
    return subprocess.Popen(["bash", "-c", f"sleep {seconds} & echo $!; wait"], stdout=subprocess.PIPE,
                            start_new_session=True)


def test_sweep_kills_the_groups_of_dead_owners_only(tmp_path: Path) -> None:
    ours, spared, alive_owner = _group(), _group(), _group()
    leftovers = [int(p.stdout.readline()) for p in (ours, spared, alive_owner)]  # type: ignore[union-attr]
    try:
        dead = _owner(pid=_dead_pid(), started=1)
        (tmp_path / owner_name(dead)).write_text(
            f"{ours.pid} {start_time(ours.pid)}\n"
            f"{spared.pid} {start_time(spared.pid) + 1}\n")  # a reused pid: another process's group
        living = _owner(pid=alive_owner.pid, started=start_time(alive_owner.pid))
        held = tmp_path / owner_name(living)
        held.write_text(f"{alive_owner.pid} {start_time(alive_owner.pid)}\n")
        fd = os.open(held, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # its owner lives (here: this test holds its lock)
        assert sweep(tmp_path) == 1
        ours.wait(timeout=5)
        assert not running_since(leftovers[0], None)
        assert spared.poll() is None and running_since(leftovers[1], None)
        assert alive_owner.poll() is None and running_since(leftovers[2], None)
        assert sorted(p.name for p in tmp_path.iterdir()) == [held.name]  # the dead owner's file is gone
        # Another boot's file names nothing that still runs: it goes, nothing is killed.
        other_boot = _owner(boot_id="0" * 8, pid=1, started=1)
        (tmp_path / owner_name(other_boot)).write_text(f"{spared.pid} {start_time(spared.pid)}\n")
        assert sweep(tmp_path) == 0
        assert spared.poll() is None and not (tmp_path / owner_name(other_boot)).exists()
        os.close(fd)
    finally:
        for process in (ours, spared, alive_owner):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert boot_id()


async def test_poll_ends_a_cancel_its_dead_owner_never_saw(squall: Squall, config: Config) -> None:
    orphan = _record(_owner(pid=_dead_pid()), status="canceling")
    mine = _record(_owner(), status="running")
    store = Store.open(config.database_url)
    try:
        store.insert_execution(orphan)
        store.insert_execution(mine)
    finally:
        store.close()
    await squall.executions.poll()
    done = await squall.executions.get(orphan["id"])
    assert done["status"] == "canceled"
    assert [e["status"] for e in done["log"]][-1] == "canceled"
    assert (await squall.executions.get(mine["id"]))["status"] == "running"


async def test_cancel_of_an_orphan_ends_it_at_once_and_its_workflow_children_too(home: Path, config: Config) -> None:
    workflow_pack(home, {"flow": ("orquesta", "", "version: 1.0\ntasks:\n  one:\n    action: core.noop\n")})
    dead = _owner(pid=_dead_pid())
    flow = _record(dead, action="wf.flow", runner="orquesta")
    child = {**_record(dead), "parent": flow["id"]}
    store = Store.open(config.database_url)
    try:
        store.insert_execution(flow)
        store.insert_execution(child)
    finally:
        store.close()
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        done = await squall.executions.cancel(flow["id"])
        assert done["status"] == "canceled"
        assert "was gone" in done["result"]["error"]
        for _ in range(100):
            if (await squall.executions.get(child["id"]))["status"] == "canceled":
                break
            await asyncio.sleep(0.05)
        assert (await squall.executions.get(child["id"]))["status"] == "canceled"
        await _cancel_with_a_live_owner_then_without(squall, config)
    finally:
        await squall.close()


async def _cancel_with_a_live_owner_then_without(squall: Squall, config: Config) -> None:
    # A live owner's execution is asked, as before: it stays `canceling` until its owner ends it.
    live = subprocess.Popen(["sleep", "30"])
    try:
        store = Store.open(config.database_url)
        try:
            owned = _record(_owner(pid=live.pid, started=start_time(live.pid)))
            store.insert_execution(owned)
        finally:
            store.close()
        assert (await squall.executions.cancel(owned["id"]))["status"] == "canceling"
    finally:
        live.kill()
        live.wait()
    # ...and once that owner is gone, a second cancel ends it.
    assert (await squall.executions.cancel(owned["id"]))["status"] == "canceled"


async def test_recovery_on_postgresql_names_other_hosts_it_leaves_alone(squall: Squall, config: Config) -> None:
    store = Store.open(config.database_url)
    theirs = _record(_owner(hostname="far-away", boot_id="another-boot", pid=1))
    try:
        store.insert_execution(theirs)
    finally:
        store.close()
    squall.db.store.is_sqlite = False
    try:
        await squall.executions.recover()
    finally:
        squall.db.store.is_sqlite = True
    assert (await squall.executions.get(theirs["id"]))["status"] == "running"
    assert squall.executions.foreign_owners == {"far-away": 1}
    note = squall.executions.foreign_note()
    assert note is not None and "far-away (1)" in note


@pytest.mark.parametrize("how", ["setpriv", "prctl"])
def test_a_process_dies_with_the_thread_that_started_it(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "prctl":
        monkeypatch.setattr(processes, "_setpriv", lambda: None)
    elif processes._setpriv() is None:
        pytest.skip("setpriv with --pdeathsig is not installed here")
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:  # as the event loop's thread does; the thread then ends, as the service would
        argv, options = processes.dying_with_service(["sleep", "30"])
        assert (argv[0].endswith("setpriv")) == (how == "setpriv") and ("preexec_fn" in options) == (how == "prctl")
        started.append(subprocess.Popen(argv, start_new_session=True, **options))
        # setpriv sets the signal once it runs, a moment after the start: a service dying within that
        # moment leaves the group to the owner file (the ledger) instead.
        time.sleep(0.3)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    process = started[0]
    try:
        assert process.wait(timeout=5) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
