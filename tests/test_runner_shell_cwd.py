"""The shell runners' `cwd` as StackStorm's packs write it, and the commands that cannot start at all.

The Exchange's ansible pack defaults every action's `cwd` to `/opt/stackstorm/packs/{{ pack }}`, StackStorm's
install folder, which a Squall host does not have: each of its actions failed with Squall's own traceback
(`[Errno 2] No such file or directory: '/opt/stackstorm/packs/ansible'`). Such a folder is read where Squall
keeps the pack (or its virtualenv), as a Python action's own paths are (`squall_paths.under_squall`), and a
`cwd` that is no folder fails the run saying which, with no traceback of Squall's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.compat.squall_paths import ST2_PACKS
from tests.conftest import write

#: The ansible pack's `cwd` default, word for word.
ANSIBLE_CWD = ("/opt/stackstorm/packs/{% if action_context.parent is defined %}{{ action_context.parent.pack }}"
               "{% else %}{{ action_context.pack }}{% endif %}")

pytestmark = pytest.mark.skipif(os.path.exists("/opt/stackstorm"), reason="this host has StackStorm's folder, "
                                "which wins over the translation")


def _pack(home: Path, name: str, actions: dict[str, str]) -> Path:
    pack = home / "packs" / name
    write(pack / "pack.yaml", f"""
        name: {name}
        description: cwd test pack
        version: 0.1.0
        author: tests
    """)
    for action, text in actions.items():
        write(pack / "actions" / f"{action}.yaml", text)
    return pack


@pytest.fixture
def home(home: Path) -> Path:
    """Two packs side by side: `playbooks` (the ansible-like one) and `beside`."""
    _pack(home, "playbooks", {
        "here": f"""
            name: here
            runner_type: local-shell-cmd
            parameters:
              cmd: {{default: "pwd -P"}}
              cwd: {{type: string, default: "{ANSIBLE_CWD}"}}
        """,
    })
    (home / "packs" / "playbooks" / "inventories").mkdir()
    _pack(home, "beside", {})
    return home


async def run(app: Squall, ref: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(ref, params or {})
    return await app.executions.wait(record["id"], timeout=30)


async def test_the_ansible_packs_default_cwd_is_the_packs_own_folder(squall: Squall, home: Path) -> None:
    """`/opt/stackstorm/packs/{{ pack }}` failed with `[Errno 2]` and Squall's traceback: the run is in the
    pack's folder, as under StackStorm."""
    done = await run(squall, "playbooks.here")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == str((home / "packs" / "playbooks").resolve())
    assert done["parameters"].get("cwd", f"{ST2_PACKS}/playbooks") == f"{ST2_PACKS}/playbooks"  # stored as asked


@pytest.mark.parametrize(("given", "expected"), [
    (f"{ST2_PACKS}/playbooks/inventories", "packs/playbooks/inventories"),  # a folder inside the pack
    (f"{ST2_PACKS}/beside", "packs/beside"),  # another pack, in the same packs folder
    (f"{ST2_PACKS}/", "packs"),  # the packs folder itself
])
async def test_a_cwd_under_stackstorms_pack_folder_is_read_from_squalls(squall: Squall, home: Path, given: str,
                                                                       expected: str) -> None:
    done = await run(squall, "playbooks.here", {"cwd": given})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == str((home / expected).resolve())


async def test_a_cwd_under_stackstorms_virtualenv_folder_is_the_packs_virtualenv(squall: Squall, home: Path) -> None:
    """`/opt/stackstorm/virtualenvs/<pack>` is the pack's virtualenv under `packs.virtualenvs_path`, which the
    engine hands the shell runner (`LocalShellRunner(virtualenvs=...)`)."""
    venv = squall.config.virtualenvs_path / "playbooks" / "bin"
    venv.mkdir(parents=True)
    squall.executions.runners["local-shell-cmd"].virtualenvs = squall.config.virtualenvs_path
    done = await run(squall, "playbooks.here", {"cwd": "/opt/stackstorm/virtualenvs/playbooks/bin"})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["stdout"] == str(venv.resolve())


async def test_a_cwd_that_does_not_exist_fails_naming_it_without_a_traceback(squall: Squall, tmp_path: Path) -> None:
    """Squall re-raised the OSError: the result was `[Errno 2] No such file or directory` and the engine's
    own traceback (engine/executions.py, engine/runners/shell.py)."""
    gone = tmp_path / "no such folder"
    done = await run(squall, "core.local", {"cmd": "pwd", "cwd": str(gone)})
    assert done["status"] == "failed"
    error = done["result"]["error"]
    assert error.startswith(f"cwd {gone} does not exist: ") and '"cwd" parameter' in error, error
    assert "traceback" not in done["result"], done["result"]["traceback"]


async def test_a_cwd_that_is_a_file_fails_saying_so(squall: Squall, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    done = await run(squall, "core.local", {"cmd": "pwd", "cwd": str(afile)})
    assert done["status"] == "failed"
    assert done["result"]["error"].startswith(f"cwd {afile} is not a folder: "), done["result"]
    assert "traceback" not in done["result"]


async def test_a_stackstorm_pack_folder_squall_does_not_have_fails_saying_where_it_looked(squall: Squall) -> None:
    done = await run(squall, "playbooks.here", {"cwd": f"{ST2_PACKS}/nosuchpack"})
    assert done["status"] == "failed"
    error = done["result"]["error"]
    assert error.startswith(f"cwd {ST2_PACKS}/nosuchpack does not exist (Squall reads {ST2_PACKS}/<pack> "), error
    assert "traceback" not in done["result"]


async def test_a_missing_folder_inside_the_pack_names_both_paths(squall: Squall, home: Path) -> None:
    done = await run(squall, "playbooks.here", {"cwd": f"{ST2_PACKS}/playbooks/nope"})
    assert done["status"] == "failed"
    read_as = home / "packs" / "playbooks" / "nope"
    assert done["result"]["error"].startswith(f"cwd {ST2_PACKS}/playbooks/nope (read as {read_as}) does not exist"), \
        done["result"]

