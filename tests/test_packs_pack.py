"""The shipped `packs` pack: StackStorm's pack-management actions (packs.install, packs.get...) run on
Squall's own `squall pack` commands, as Exchange content calls them; a user's copy of `packs` replaces it.

The actions run for real: each calls the `squall` CLI against the test's config, so an install lands in
the test's `packs/` folder. Hostile pack names and URLs are checked to stay data.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import SYSTEM_PACKS_PATH
from engine.pack_manager import install_pack
from engine.packs import load_registry
from tests.conftest import write

STACKSTORM_ACTIONS = {"install", "uninstall", "delete", "load", "get", "search", "show"}
HOSTILE = ["x; touch {marker}", "$(touch {marker})", "`touch {marker}`", "x' ; touch {marker} ; '",
           'x" && touch {marker} && "', "x\ntouch {marker}", "| touch {marker}", "--help; touch {marker}",
           "https://example.invalid/$(touch {marker}).git=v1", "file:///nowhere=$(touch {marker})"]


@pytest.fixture(autouse=True)
def _cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine sets SQUALL_CONFIG and SQUALL_CLI for the actions it runs: put them back after the test."""
    monkeypatch.delenv("SQUALL_CONFIG", raising=False)
    monkeypatch.delenv("SQUALL_CLI", raising=False)


def _demo(root: Path, version: str = "0.1.0") -> Path:
    pack = root / "demo"
    write(pack / "pack.yaml", f"""
        ref: demo
        name: demo
        description: Demo pack
        version: {version}
        author: tests
    """)
    write(pack / "actions" / "hello.yaml", """
        name: hello
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: echo hello, immutable: true}
    """)
    return pack


async def run(app: Squall, ref: str, params: dict[str, Any]) -> dict[str, Any]:
    record = await app.executions.request(ref, params)
    return await app.executions.wait(record["id"], timeout=120)


def test_the_packs_pack_loads_with_stackstorm_s_actions_and_parameters(tmp_path: Path) -> None:
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    pack = registry.packs["packs"]
    assert pack.system is True and pack.path == SYSTEM_PACKS_PATH / "packs"
    assert {a.name for a in registry.actions.values() if a.pack == "packs"} >= STACKSTORM_ACTIONS
    install = registry.action("packs.install").parameters
    assert install["packs"]["type"] == "array" and install["packs"]["items"] == {"type": "string"}
    assert install["packs"]["required"] is True and install["register"]["default"] == "all"
    assert (install["force"]["default"], install["skip_dependencies"]["default"]) == (False, False)
    assert install["timeout"]["default"] == 600 and install["python3"]["type"] == "boolean"
    assert install["cmd"]["immutable"] is True
    for ref in ("packs.uninstall", "packs.delete"):
        assert registry.action(ref).parameters["packs"]["required"] is True
    assert registry.action("packs.delete").parameters["delete_env"]["default"] is True
    load = registry.action("packs.load").parameters
    assert load["register"]["default"] == "all" and load["packs"]["type"] == "array"
    assert load["timeout"]["default"] == 300
    get = registry.action("packs.get").parameters
    assert get["pack"]["required"] is True and get["branch"]["default"] == "master"
    assert registry.action("packs.search").parameters["query"]["required"] is True


async def test_install_get_load_and_uninstall_a_folder_pack(squall: Squall, home: Path) -> None:
    source = _demo(home / "src")
    installed = await run(squall, "packs.install", {"packs": [str(source)], "python3": True,
                                                    "skip_dependencies": True})
    assert installed["status"] == "succeeded", installed
    assert (home / "packs" / "demo" / "pack.yaml").is_file()
    await squall.reload_packs()  # what `squall serve` does when pack files change
    hello = await run(squall, "demo.hello", {})
    assert hello["status"] == "succeeded" and hello["result"]["stdout"] == "hello"

    got = await run(squall, "packs.get", {"pack": "demo"})
    assert got["status"] == "succeeded", got
    assert got["result"]["result"] == {"pack": {"ref": "demo", "name": "demo", "description": "Demo pack",
                                                "version": "0.1.0", "author": "tests"}, "git_status": None}
    missing = await run(squall, "packs.get", {"pack": "nothing_here"})
    assert missing["result"]["result"] == {"pack": None, "git_status": None}  # as StackStorm's: no failure

    loaded = await run(squall, "packs.load", {"register": "all", "packs": ["demo"]})
    assert loaded["status"] == "succeeded", loaded
    assert "demo" in loaded["result"]["stdout"]["packs"] and loaded["result"]["stdout"]["errors"] == []

    removed = await run(squall, "packs.uninstall", {"packs": ["demo"]})
    assert removed["status"] == "succeeded", removed
    assert not (home / "packs" / "demo").exists()
    again = await run(squall, "packs.uninstall", {"packs": ["demo"]})
    assert again["status"] == "failed"  # nothing to remove is said, not passed over


async def test_delete_and_squall_s_own_packs_stay(squall: Squall, home: Path) -> None:
    await run(squall, "packs.install", {"packs": [str(_demo(home / "src"))]})
    deleted = await run(squall, "packs.delete", {"packs": ["demo"], "delete_env": False})
    assert deleted["status"] == "succeeded", deleted
    assert not (home / "packs" / "demo").exists()
    refused = await run(squall, "packs.uninstall", {"packs": ["core"]})
    assert refused["status"] == "failed" and (SYSTEM_PACKS_PATH / "core" / "pack.yaml").is_file()


async def test_an_install_that_fails_fails_the_action(squall: Squall, home: Path) -> None:
    result = await run(squall, "packs.install", {"packs": ["github"]})  # an Exchange name: no index
    assert result["status"] == "failed"
    assert "neither a folder nor a git URL" in result["result"]["stderr"]


async def test_hostile_names_and_urls_never_run(squall: Squall, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    values = [template.format(marker=marker) for template in HOSTILE]
    # Each value alone (a list stops at its first failure) and all together, every run at once: 44 CLI runs.
    runs = [(ref, {"pack": value} if ref == "packs.get" else {"packs": [value]})
            for ref in ("packs.install", "packs.uninstall", "packs.delete", "packs.get") for value in values]
    runs += [(ref, {"packs": values}) for ref in ("packs.install", "packs.uninstall", "packs.delete")]
    ended = await asyncio.gather(*(run(squall, ref, params) for ref, params in runs))
    assert all(record["status"] in ("succeeded", "failed") for record in ended)
    assert not marker.exists()


async def test_search_and_show_say_there_is_no_index(squall: Squall) -> None:
    for ref, params in (("packs.search", {"query": "aws"}), ("packs.show", {"pack": "aws"})):
        result = await run(squall, ref, params)
        assert result["status"] == "failed"
        assert "Exchange index is not reachable" in str(result["result"]), result


@pytest.fixture
def tagged_repo(tmp_path: Path) -> Path:
    """A git repository of the demo pack with its 1.0.0 tagged, as a deployment names it."""
    repo = _demo(tmp_path / "repo", version="1.0.0")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "1.0.0"], check=True)
    subprocess.run([*git, "tag", "v1.0.0"], check=True)
    return repo


async def test_the_github_pack_s_deployment_event_installs(squall: Squall, home: Path,
                                                           tagged_repo: Path) -> None:
    # stackstorm-github's actions/workflows/deployment_event.yaml, its install_pack task as written there.
    write(home / "packs" / "deploy" / "pack.yaml", "ref: deploy\nname: deploy\ndescription: d\nversion: 1.0.0\n"
                                                   "author: t\n")
    write(home / "packs" / "deploy" / "actions" / "deployment_event.yaml", """
        name: deployment_event
        runner_type: mistral-v2
        entry_point: workflows/deployment_event.yaml
        parameters:
          ssh_url: {type: string, required: true}
          deploy_ref: {type: string, required: true}
    """)
    write(home / "packs" / "deploy" / "actions" / "workflows" / "deployment_event.yaml", """
        ---
        version: '2.0'

        deploy.deployment_event:
          input:
            - ssh_url
            - deploy_ref

          tasks:
            install_pack:
              action: packs.install

              input:
                packs: [  <% $.ssh_url + '=' + $.deploy_ref %> ]
    """)
    await squall.reload_packs()
    result = await run(squall, "deploy.deployment_event", {"ssh_url": f"file://{tagged_repo}",
                                                           "deploy_ref": "v1.0.0"})
    assert result["status"] == "succeeded", result
    assert "version: 1.0.0" in (home / "packs" / "demo" / "pack.yaml").read_text()


def test_a_user_packs_pack_replaces_the_shipped_one(tmp_path: Path) -> None:
    # StackStorm's own packs pack, installed over Squall's: it loads instead, with no warning.
    user = tmp_path / "src" / "packs"
    write(user / "pack.yaml", "name: packs\ndescription: Pack management functionality.\nversion: 2.0.0\n"
                              "author: StackStorm, Inc.\n")
    write(user / "actions" / "noop.yaml", "name: noop\nrunner_type: noop\n")
    pack, errors = install_pack(str(user), tmp_path / "installed", tmp_path / "configs", tmp_path / "venvs",
                                lambda _: None)
    assert pack.ref == "packs" and errors == []
    registry = load_registry([tmp_path / "installed"], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    assert registry.packs["packs"].system is False and "packs.noop" in registry.actions
    assert "packs.install" not in registry.actions
