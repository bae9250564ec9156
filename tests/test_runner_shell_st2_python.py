"""Scripts whose `#!` names StackStorm's own interpreter, run by `local-shell-script` as the Exchange ships them.

The Exchange's ansible pack starts its scripts `#!/opt/stackstorm/st2/bin/python`, an interpreter a Squall host
does not have: the kernel refused to start them (`[Errno 2]`, with Squall's traceback). Such a script runs with
the pack's virtualenv python, else Squall's own, given the script and its parameters as argv entries exactly as
the kernel would have given them, and the pack's file stays as it is."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.compat.squall_paths import ST2_BIN, ST2_VIRTUALENVS
from tests.conftest import write

pytestmark = pytest.mark.skipif(os.path.exists(ST2_BIN), reason="this host has StackStorm's interpreter, "
                                "which runs the script itself")

#: A script telling which interpreter runs it, with which flags, and the argv it got.
REPORT = """
import json
import sys

print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "optimize": sys.flags.optimize,
                  "argv": sys.argv}))
"""


@pytest.fixture
def home(home: Path) -> Path:
    """A pack `playbooks` with two such scripts: one naming `python`, one `python3` with an argument."""
    pack = home / "packs" / "playbooks"
    write(pack / "pack.yaml", """
        name: playbooks
        description: st2 interpreter test pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "actions" / "report.yaml", """
        name: report
        runner_type: local-shell-script
        entry_point: report.py
        parameters:
          who: {type: string}
          check: {type: boolean}
          target: {type: string, position: 0}
    """)
    write(pack / "actions" / "report.py", f"#!{ST2_BIN}/python\n{REPORT}")
    write(pack / "actions" / "flagged.yaml", """
        name: flagged
        runner_type: local-shell-script
        entry_point: flagged.py
    """)
    write(pack / "actions" / "flagged.py", f"#! {ST2_BIN}/python3 -O \r\n{REPORT}")
    for name, venv in (("own", "playbooks"), ("other", "tools")):  # a pack virtualenv's python, under StackStorm's root
        write(pack / "actions" / f"{name}_venv.yaml", f"""
            name: {name}_venv
            runner_type: local-shell-script
            entry_point: {name}_venv.py
            parameters:
              who: {{type: string}}
              target: {{type: string, position: 0}}
        """)
        write(pack / "actions" / f"{name}_venv.py", f"#!{ST2_VIRTUALENVS}/{venv}/bin/python\n{REPORT}")
    for script in ("report.py", "flagged.py", "own_venv.py", "other_venv.py"):
        (pack / "actions" / script).chmod(0o644)  # as a pack unpacked without modes, which Squall used to chmod
    return home


async def run(app: Squall, ref: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(ref, params or {})
    return await app.executions.wait(record["id"], timeout=30)


async def test_a_script_naming_stackstorms_python_runs_with_squalls_own(squall: Squall, home: Path) -> None:
    """Without a virtualenv for the pack, Squall's interpreter runs it; its parameters arrive as the argv
    entries the kernel would have passed (named, then positional), never through a shell, and the pack's
    file is neither rewritten nor made executable."""
    script = home / "packs" / "playbooks" / "actions" / "report.py"
    before = script.read_bytes(), stat.S_IMODE(script.stat().st_mode)
    marker = home / "marker"
    who = f"$(touch {marker}); touch {marker} 'quoted' \"double\""
    target = f"`touch {marker}` two words"
    done = await run(squall, "playbooks.report", {"who": who, "check": True, "target": target})
    assert done["status"] == "succeeded", done["result"]
    shown = done["result"]["stdout"]
    assert os.path.samefile(shown["executable"], sys.executable), shown
    assert os.path.samefile(shown["argv"][0], script), shown
    assert sorted(shown["argv"][1:3]) == sorted([f"--who={who}", "--check"]) and shown["argv"][3:] == [target], shown
    assert not marker.exists()
    assert (script.read_bytes(), stat.S_IMODE(script.stat().st_mode)) == before


async def test_the_packs_virtualenv_python_runs_it_when_the_pack_has_one(squall: Squall, home: Path) -> None:
    venv = squall.config.virtualenvs_path / "playbooks"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    done = await run(squall, "playbooks.report", {"target": "x"})
    assert done["status"] == "succeeded", done["result"]
    assert os.path.samefile(done["result"]["stdout"]["prefix"], venv), done["result"]


async def test_the_argument_of_the_line_is_passed_to_the_interpreter(squall: Squall, home: Path) -> None:
    """`#! /opt/stackstorm/st2/bin/python3 -O` (blanks, a CRLF ending): the kernel passes `-O` to the interpreter
    before the script; so does Squall."""
    done = await run(squall, "playbooks.flagged")
    assert done["status"] == "succeeded", done["result"]
    shown = done["result"]["stdout"]
    assert shown["optimize"] == 1, shown
    assert len(shown["argv"]) == 1 and os.path.samefile(shown["argv"][0], home / "packs/playbooks/actions/flagged.py")


@pytest.mark.skipif(os.path.exists(ST2_VIRTUALENVS), reason="this host has StackStorm's virtualenvs")
async def test_a_script_naming_a_stackstorm_virtualenvs_python_runs_with_squalls_own(squall: Squall,
                                                                                     home: Path) -> None:
    """`#!/opt/stackstorm/virtualenvs/<pack>/bin/python` (Exchange packs' scripts) was not translated, and the
    kernel refused it ("No such file or directory"). Without that virtualenv under `packs.virtualenvs_path`,
    Squall's interpreter runs it, given the script and its parameters as the kernel would have, the pack's
    file neither rewritten nor made executable."""
    script = home / "packs" / "playbooks" / "actions" / "own_venv.py"
    before = script.read_bytes(), stat.S_IMODE(script.stat().st_mode)
    marker = home / "marker"
    who, target = f"$(touch {marker})", f"`touch {marker}` two words"
    done = await run(squall, "playbooks.own_venv", {"who": who, "target": target})
    assert done["status"] == "succeeded", done["result"]
    shown = done["result"]["stdout"]
    assert os.path.samefile(shown["executable"], sys.executable), shown
    assert os.path.samefile(shown["argv"][0], script) and shown["argv"][1:] == [f"--who={who}", target], shown
    assert not marker.exists()
    assert (script.read_bytes(), stat.S_IMODE(script.stat().st_mode)) == before


@pytest.mark.skipif(os.path.exists(ST2_VIRTUALENVS), reason="this host has StackStorm's virtualenvs")
async def test_a_script_naming_a_stackstorm_virtualenv_runs_with_that_packs_virtualenv(squall: Squall) -> None:
    """The virtualenv the line names is the one used, under `packs.virtualenvs_path`: the script's own pack's,
    or another pack's it names (`tools`), not the running pack's."""
    venvs = squall.config.virtualenvs_path
    for pack in ("playbooks", "tools"):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venvs / pack)], check=True)
    for ref, venv in (("playbooks.own_venv", "playbooks"), ("playbooks.other_venv", "tools")):
        done = await run(squall, ref, {"target": "x"})
        assert done["status"] == "succeeded", done["result"]
        assert os.path.samefile(done["result"]["stdout"]["prefix"], venvs / venv), (ref, done["result"])
