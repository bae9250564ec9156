"""Python actions run as if each had a fresh interpreter, as in StackStorm, though workers are warm.

StackStorm starts a new process per Python run and packs rely on it: module-level code reads the
execution's variables at import, globals start empty, a `chdir`, an `os.environ` change or a
monkeypatch dies with the run. Squall's warm worker forks a child per run (`squall_worker.py`), so
nothing of one run reaches the next, while packages from outside the pack stay imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from tests.conftest import write

PACK = "isolated"

STATEFUL = """
import json
import os
import sys

# Whether the warm worker imported this package ahead of the run (the action file names it).
PRELOADED = "colorsys" in sys.modules
import colorsys  # noqa: E402

from st2common.runners.base_action import Action

from settings import EXECUTION_AT_IMPORT, remember

# Module-level code: StackStorm runs it once per execution, in that execution's process.
EXECUTION_HERE = os.environ.get("ST2_ACTION_EXECUTION_ID")
TOKEN_HERE = os.environ.get("ST2_AUTH_TOKEN")
SEEN = []


class Stateful(Action):
    def run(self, who, mess=False):
        SEEN.append(who)
        out = {
            "execution_now": os.environ.get("ST2_ACTION_EXECUTION_ID"),
            "execution_at_import": EXECUTION_HERE,
            "lib_execution_at_import": EXECUTION_AT_IMPORT,
            "token_matches": TOKEN_HERE == os.environ.get("ST2_AUTH_TOKEN"),
            "seen": list(SEEN),
            "lib_seen": remember(who),
            "leaked_variable": os.environ.get("LEFT_BY_A_RUN"),
            "dumps_patched": json.dumps(1) == "patched",
            "colorsys_patched": getattr(colorsys, "LEFT_BY_A_RUN", False),
            "preloaded": PRELOADED,
            "cwd": os.getcwd(),
        }
        if mess:  # what a careless action leaves behind
            os.chdir("/")
            os.environ["LEFT_BY_A_RUN"] = "yes"
            json.dumps = lambda *args, **kwargs: "patched"
            colorsys.LEFT_BY_A_RUN = True
        return out
"""

SETTINGS = """
import os

EXECUTION_AT_IMPORT = os.environ.get("ST2_ACTION_EXECUTION_ID")
_SEEN = []


def remember(who):
    _SEEN.append(who)
    return list(_SEEN)
"""

READS_RELATIVE = """
from st2common.runners.base_action import Action


class ReadsRelative(Action):
    def run(self):
        with open("data.txt") as handle:  # relative to the pack folder, where StackStorm runs it
            return handle.read().strip()
"""

SLEEPS = """
import os
import time

from st2common.runners.base_action import Action


class Sleeps(Action):
    def run(self, path):
        with open(path, "w") as handle:
            handle.write(f"{os.getpid()} {os.getppid()}")
        time.sleep(60)
"""

SECRETIVE = """
from st2common.runners.base_action import Action


class Secretive(Action):
    def run(self, padding, password):
        return len(password)
"""

SCANS_MEMORY = r"""
import re

from st2common.runners.base_action import Action


# Every readable mapping of this process searched for `prefix` and 24 hex digits (the shape of the
# test's secrets); with `plant`, one made here first, to show the search finds what is in memory.
class ScansMemory(Action):
    def run(self, prefix, plant=False):
        planted = prefix + "".join(["ab"] * 12) if plant else None
        pattern = re.compile(re.escape(prefix.encode()) + rb"[0-9a-f]{24}")
        found = set()
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
            for line in maps:
                fields = line.split()
                if "r" not in fields[1] or line.rstrip().endswith(("[vvar]", "[vvar_vclock]", "[vsyscall]")):
                    continue
                start, end = (int(part, 16) for part in fields[0].split("-"))
                if end - start > 1 << 28:
                    continue
                try:
                    mem.seek(start)
                    data = mem.read(end - start)
                except (OSError, ValueError, OverflowError):
                    continue
                found.update(match.group().decode() for match in pattern.finditer(data))
        return {"found": sorted(found), "planted": planted}
"""

LEAVES_A_WRITER = """
import subprocess

from st2common.runners.base_action import Action

# Writes to the stdout it inherited (this run's) once the next run has started, then says it did.
WRITER = 'while [ ! -e "$1/go" ]; do sleep 0.01; done; echo LEFT-BEHIND; touch "$1/written"'


class LeavesAWriter(Action):
    def run(self, folder):
        subprocess.Popen(["sh", "-c", WRITER, "sh", folder])
        return "left a writer behind"
"""

PRINTS_WHILE_IT_WRITES = """
import os
import time

from st2common.runners.base_action import Action


class PrintsWhileItWrites(Action):
    def run(self, folder):
        print("own output", flush=True)
        open(os.path.join(folder, "go"), "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(folder, "written")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.path.exists(os.path.join(folder, "written"))
"""


@pytest.fixture
def home(home: Path) -> Path:
    pack = home / "packs" / PACK
    write(pack / "pack.yaml", f"name: {PACK}\ndescription: isolation tests\nversion: 0.1.0\nauthor: tests\n")
    write(pack / "data.txt", "pack data\n")
    write(pack / "actions" / "lib" / "settings.py", SETTINGS)
    write(pack / "actions" / "stateful.py", STATEFUL)
    write(pack / "actions" / "stateful.yaml", """
        name: stateful
        runner_type: python-script
        entry_point: stateful.py
        parameters:
          who: {type: string, required: true}
          mess: {type: boolean, default: false}
    """)
    write(pack / "actions" / "reads_relative.py", READS_RELATIVE)
    write(pack / "actions" / "reads_relative.yaml", """
        name: reads_relative
        runner_type: python-script
        entry_point: reads_relative.py
    """)
    write(pack / "actions" / "sleeps.py", SLEEPS)
    for name, code, parameters in (
        ("secretive", SECRETIVE, "{padding: {type: string}, password: {type: string, secret: true}}"),
        ("scans_memory", SCANS_MEMORY, "{prefix: {type: string}, plant: {type: boolean}}"),
        ("leaves_a_writer", LEAVES_A_WRITER, "{folder: {type: string}}"),
        ("prints_while_it_writes", PRINTS_WHILE_IT_WRITES, "{folder: {type: string}}"),
    ):
        write(pack / "actions" / f"{name}.py", code)
        write(pack / "actions" / f"{name}.yaml",
              f"name: {name}\nrunner_type: python-script\nentry_point: {name}.py\nparameters: {parameters}\n")
    write(pack / "actions" / "sleeps.yaml", """
        name: sleeps
        runner_type: python-script
        entry_point: sleeps.py
        parameters:
          path: {type: string, required: true}
    """)
    return home


async def run(app: Squall, ref: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(ref, params or {})
    done = await app.executions.wait(record["id"], timeout=60)
    assert done["status"] == "succeeded", done["result"]
    return done


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


async def test_module_level_code_runs_per_execution(squall: Squall) -> None:
    first = await run(squall, f"{PACK}.stateful", {"who": "alice"})
    second = await run(squall, f"{PACK}.stateful", {"who": "bob"})
    for done in (first, second):
        out = done["result"]["result"]
        assert out["execution_now"] == done["id"]
        assert out["execution_at_import"] == done["id"]
        assert out["lib_execution_at_import"] == done["id"]  # the pack's own lib is imported afresh too
        assert out["token_matches"] is True
    assert first["result"]["result"]["seen"] == first["result"]["result"]["lib_seen"] == ["alice"]
    assert second["result"]["result"]["seen"] == second["result"]["result"]["lib_seen"] == ["bob"]


async def test_what_a_run_changes_does_not_reach_the_next(squall: Squall) -> None:
    assert (await run(squall, f"{PACK}.reads_relative"))["result"]["result"] == "pack data"
    messy = await run(squall, f"{PACK}.stateful", {"who": "messy", "mess": True})
    assert messy["result"]["result"]["cwd"] == str(squall.registry.packs[PACK].path)
    after = (await run(squall, f"{PACK}.stateful", {"who": "next"}))["result"]["result"]
    assert after["cwd"] == messy["result"]["result"]["cwd"]
    assert after["leaked_variable"] is None
    assert after["dumps_patched"] is False
    assert after["colorsys_patched"] is False
    assert after["seen"] == ["next"]
    assert (await run(squall, f"{PACK}.reads_relative"))["result"]["result"] == "pack data"


async def _preloaded(squall: Squall) -> bool:
    """Whether a run finds `colorsys` imported by its worker: the worker imports the pack's packages in
    its idle time after it started, so the first runs may come before it did."""
    for _ in range(300):
        if (await run(squall, f"{PACK}.stateful", {"who": "x"}))["result"]["result"]["preloaded"]:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_packages_from_outside_the_pack_are_imported_by_the_warm_worker(squall: Squall) -> None:
    assert await _preloaded(squall)


async def test_a_package_whose_import_blocks_delays_no_run(squall: Squall) -> None:
    """An import that blocks (connecting to a host that never answers, say) is tried only in a probe
    process: the worker is ready at once, the pack's actions run within their timeouts, and the other
    packages are still imported (the stuck one is skipped)."""
    site = squall.config.virtualenvs_path / PACK / "lib" / "python3.0" / "site-packages"
    write(site / "aaa_hangs_at_import.py", "import time\ntime.sleep(300)\n")  # tried first, before colorsys
    write(squall.registry.packs[PACK].path / "actions" / "never_run.py", "import aaa_hangs_at_import\n")
    record = await squall.executions.request(f"{PACK}.reads_relative", {"timeout": 20})
    done = await squall.executions.wait(record["id"], timeout=60)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == "pack data"
    assert await _preloaded(squall)


async def test_a_run_holds_no_secret_of_an_earlier_run(squall: Squall) -> None:
    """A run is a fork of its worker: the worker must never have read a request (secret parameters, the
    execution's token), or every later run of the pack could read them in its own memory."""
    secret = "SECRET-MARK-" + secrets.token_hex(12)
    # Padding ahead of the secret (the line still fits a pipe's 4 KiB read buffer), so that the next,
    # shorter request read into the same buffer would not overwrite it: the secret must be absent
    # because the worker never read it, not by chance.
    parameters = {"padding": "x" * 2000, "password": secret}
    assert (await run(squall, f"{PACK}.secretive", parameters))["result"]["result"] == len(secret)
    scan = (await run(squall, f"{PACK}.scans_memory", {"prefix": "SECRET-MARK-", "plant": True}))["result"]
    assert scan["result"]["planted"] in scan["result"]["found"]  # the search does find what is in memory
    assert secret not in scan["result"]["found"]


async def test_a_program_an_earlier_run_left_writes_nothing_into_a_later_runs_output(
        squall: Squall, tmp_path: Path) -> None:
    """Each run has capture files of its own: a background program a run left behind (still holding
    that run's stdout) cannot write into the output of the next run of the same worker."""
    first = await run(squall, f"{PACK}.leaves_a_writer", {"folder": str(tmp_path)})
    second = await run(squall, f"{PACK}.prints_while_it_writes", {"folder": str(tmp_path)})
    assert second["result"]["result"] is True  # the writer did write, while the second run ran
    assert second["result"]["stdout"] == "own output\n"
    assert "LEFT-BEHIND" not in first["result"]["stdout"] + second["result"]["stdout"]


async def test_a_run_dies_with_its_worker(squall: Squall, tmp_path: Path) -> None:
    """A fork does not inherit the worker's parent-death signal: the run sets its own, so killing the
    worker (as the service's death does) takes the run with it, and the execution fails."""
    pidfile = tmp_path / "pids"
    record = await squall.executions.request(f"{PACK}.sleeps", {"path": str(pidfile)})
    text = ""
    for _ in range(400):
        text = pidfile.read_text() if pidfile.exists() else ""
        if text:
            break
        await asyncio.sleep(0.05)
    assert text, "the action never started"
    run_pid, worker_pid = (int(part) for part in text.split())
    # The run's parent must be a worker, never this test process (as it was when runs shared the worker).
    assert worker_pid != os.getpid(), "the action ran in a process the service started itself, not a fork"
    try:
        os.kill(worker_pid, signal.SIGKILL)
        done = await squall.executions.wait(record["id"], timeout=30)
        assert done["status"] == "failed"
        assert "died" in done["result"]["error"]
        for _ in range(100):
            if _gone(run_pid):
                break
            await asyncio.sleep(0.05)
        assert _gone(run_pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run_pid, signal.SIGKILL)
