"""The shipped `linux` pack: StackStorm's linux actions run on the Squall host, and a user's copy replaces it.

The actions run for real (bash, coreutils, procps, net-tools are on every machine the suite runs on);
hostile values are checked to stay data: they may only name files inside the test's own folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import SYSTEM_PACKS_PATH
from engine.pack_manager import PackInstallError, install_pack, remove_pack
from engine.packs import load_registry
from engine.parameters import ParameterError
from tests.conftest import write

STACKSTORM_ACTIONS = {
    "dig", "vmstat", "file_touch", "check_loadavg", "wait_for_ssh", "rm", "cp", "mv", "service",
    "traceroute", "netstat", "pkill", "lsof", "check_processes",
}
HOSTILE = ["a;touch {marker}", "$(touch {marker})", "`touch {marker}`", "x' ; touch {marker} ; '",
           'x" && touch {marker} && "', "x\ntouch {marker}", "| touch {marker}", "${{IFS}}touch${{IFS}}{marker}"]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A folder of the test's own (tmp_path also holds the Squall home)."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


async def run(app: Squall, ref: str, params: dict[str, Any]) -> dict[str, Any]:
    record = await app.executions.request(ref, params)
    return await app.executions.wait(record["id"], timeout=60)


def test_the_linux_pack_loads_without_problems(tmp_path: Path) -> None:
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    linux = registry.packs["linux"]
    assert linux.system is True and linux.path == SYSTEM_PACKS_PATH / "linux"
    assert {a.name for a in registry.actions.values() if a.pack == "linux"} >= STACKSTORM_ACTIONS


def test_parameters_are_stackstorm_s(tmp_path: Path) -> None:
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    rm = registry.action("linux.rm").parameters
    assert rm["target"]["required"] is True and rm["verbose"]["default"] is True
    assert rm["recursive"]["default"] is False and rm["force"]["default"] is False
    assert registry.action("linux.check_loadavg").parameters["period"]["enum"] == ["1", "5", "15", "all"]
    dig = registry.action("linux.dig").parameters
    assert dig["queryopts"]["default"] == "short" and dig["querytype"]["default"] == "A"
    assert dig["count"]["default"] == 0 and dig["rand"]["default"] is False
    ssh = registry.action("linux.wait_for_ssh").parameters
    assert (ssh["port"]["default"], ssh["retries"]["default"], ssh["timeout"]["default"]) == (22, 10, 400)
    assert ssh["password"]["secret"] is True
    service = registry.action("linux.service").parameters
    assert (service["act"]["position"], service["service"]["position"]) == (0, 1)


async def test_file_touch_writes_the_time(squall: Squall, scratch: Path) -> None:
    target = scratch / "touched"
    result = await run(squall, "linux.file_touch", {"file": str(target)})
    assert result["status"] == "succeeded", result
    assert target.read_text().strip().isdigit()


async def test_cp_mv_rm_with_their_flags(squall: Squall, scratch: Path) -> None:
    (scratch / "one.log").write_text("1")
    (scratch / "two.log").write_text("2")
    (scratch / "tree").mkdir()
    (scratch / "tree" / "leaf").write_text("leaf")
    (scratch / "out").mkdir()

    copied = await run(squall, "linux.cp", {"source": f"{scratch}/*.log", "destination": str(scratch / "out")})
    assert copied["status"] == "succeeded", copied
    assert sorted(p.name for p in (scratch / "out").iterdir()) == ["one.log", "two.log"]
    assert "->" in copied["result"]["stdout"]  # -v, StackStorm's default args

    refused = await run(squall, "linux.cp", {"source": str(scratch / "tree"), "destination": str(scratch / "t2")})
    assert refused["status"] == "failed" and not (scratch / "t2").exists()  # a folder needs recursive
    tree = await run(squall, "linux.cp", {"source": str(scratch / "tree"), "destination": str(scratch / "t2"),
                                          "recursive": True})
    assert tree["status"] == "succeeded", tree
    assert (scratch / "t2" / "leaf").read_text() == "leaf"

    moved = await run(squall, "linux.mv", {"source": f"{scratch / 'one.log'} {scratch / 'two.log'}",
                                           "destination": str(scratch / "tree")})
    assert moved["status"] == "succeeded", moved
    assert not (scratch / "one.log").exists() and (scratch / "tree" / "two.log").read_text() == "2"

    kept = await run(squall, "linux.rm", {"target": str(scratch / "tree")})
    assert kept["status"] == "failed" and (scratch / "tree").is_dir()  # a folder needs recursive
    gone = await run(squall, "linux.rm", {"target": f"{scratch / 't2'} {scratch / 'tree'}", "recursive": True})
    assert gone["status"] == "succeeded", gone
    assert not (scratch / "t2").exists() and not (scratch / "tree").exists()
    quiet = await run(squall, "linux.rm", {"target": str(scratch / "out" / "*"), "verbose": False})
    assert quiet["status"] == "succeeded" and quiet["result"]["stdout"] == ""
    assert list((scratch / "out").iterdir()) == []
    missing = await run(squall, "linux.rm", {"target": str(scratch / "nothing"), "force": True})
    assert missing["status"] == "succeeded"  # -f: a missing file is no error


async def test_hostile_file_names_are_only_names(squall: Squall, scratch: Path) -> None:
    # Every command runs in scratch, so a value that ran as shell would create scratch/pwned.
    marker = scratch / "pwned"
    for index, template in enumerate(HOSTILE):
        name = template.format(marker="pwned")
        # file_touch takes one path: the hostile text is the name of the one file it makes.
        folder = scratch / f"t{index}"
        folder.mkdir()
        touched = await run(squall, "linux.file_touch", {"file": f"{folder}/{name}", "cwd": str(scratch)})
        assert touched["status"] == "succeeded", (name, touched)
        assert [p.name for p in folder.iterdir()] == [name]
        # Path lists are split on spaces and globbed, and nothing in them runs. (Not linux.pkill: its
        # value is a regular expression, and "| touch pwned" matches every process, as in StackStorm.)
        for ref, params in (("linux.rm", {"target": name, "force": True}),
                            ("linux.cp", {"source": name, "destination": "copy"}),
                            ("linux.mv", {"source": name, "destination": "moved"}),
                            ("linux.vmstat", {"args": name}), ("linux.lsof", {"args": name}),
                            ("linux.netstat", {"args": name}),
                            ("linux.check_processes", {"search": "name", "criteria": name}),
                            ("linux.service", {"act": "status", "service": name}),
                            ("linux.traceroute", {"host": name})):
            await run(squall, ref, {**params, "cwd": str(scratch)})
            assert not marker.exists(), (ref, name)
    assert not (scratch / "copy").exists() and not (scratch / "moved").exists()


async def test_a_path_starting_with_a_dash_is_not_an_option(squall: Squall, scratch: Path) -> None:
    victim = scratch / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    result = await run(squall, "linux.rm", {"target": "-rf " + str(victim), "recursive": False})
    assert result["status"] == "failed"
    assert (victim / "keep").exists()  # "-rf" was a path after "--", not rm's options


async def test_vmstat_and_netstat_take_their_args_as_words(squall: Squall) -> None:
    plain = await run(squall, "linux.vmstat", {})
    assert plain["status"] == "succeeded", plain
    assert "procs" in plain["result"]["stdout"]
    twice = await run(squall, "linux.vmstat", {"args": "1 2"})
    assert twice["status"] == "succeeded", twice
    assert len(twice["result"]["stdout"].splitlines()) == 4  # two headers, two samples
    listening = await run(squall, "linux.netstat", {"args": "-ltn"})
    assert listening["status"] == "succeeded", listening
    assert "Proto" in listening["result"]["stdout"]


async def test_lsof_pids_and_netstat_grep_take_each_pid(squall: Squall) -> None:
    lsof = await run(squall, "linux.lsof_pids", {"pids": f"{os.getpid()} 1", "sudo": False})
    assert lsof["status"] == "succeeded", lsof
    assert f" {os.getpid()} " in lsof["result"]["stdout"] and "COMMAND" in lsof["result"]["stdout"]
    grep = await run(squall, "linux.netstat_grep", {"pids": [os.getpid(), 1]})
    assert grep["status"] == "succeeded", grep  # StackStorm's `exit 0`: no match is no failure


async def test_check_loadavg_per_period(squall: Squall) -> None:
    every = await run(squall, "linux.check_loadavg", {})
    assert every["status"] == "succeeded", every
    assert set(every["result"]["stdout"]) == {"1", "5", "15"}
    one = await run(squall, "linux.check_loadavg", {"period": "5"})
    assert isinstance(one["result"]["stdout"], float)
    with pytest.raises(ParameterError):  # the enum is StackStorm's
        await squall.executions.request("linux.check_loadavg", {"period": "7"})


async def test_check_processes_finds_a_process_and_lists_pids(squall: Squall) -> None:
    mine = await run(squall, "linux.check_processes", {"search": "pid", "criteria": "1"})
    assert mine["status"] == "succeeded", mine
    assert list(mine["result"]["stdout"]) == ["1"]
    # A process of the test's own, named by a marker no other process has (under pytest-xdist this
    # process's own command line does not say pytest).
    marker = f"squall-check-{uuid.uuid4().hex}"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker]) as child:
        try:
            by_name = await run(squall, "linux.check_processes",
                                {"search": "name", "criteria": marker, "args": "pidlist"})
        finally:
            child.kill()
    assert list(by_name["result"]["stdout"]) == [str(child.pid)]
    # One pid alone reads back as a JSON number (outputs that parse as JSON are stored parsed, as StackStorm does).
    assert by_name["result"]["stderr"] == child.pid


async def test_pkill_reports_nothing_matched(squall: Squall, scratch: Path) -> None:
    result = await run(squall, "linux.pkill", {"process": "no-such-process-squall"})
    assert result["status"] == "failed" and result["result"]["return_code"] == 1
    # Shell text in the pattern stays pattern. Each value starts with a literal no process name has and
    # holds no "|": pkill runs as this test's user and would kill whatever a pattern matches.
    for value in ("zqxv;touch pwned", "zqxv$(touch pwned)", "zqxv`touch pwned`", "zqxv -u root"):
        refused = await run(squall, "linux.pkill", {"process": value, "cwd": str(scratch)})
        assert refused["status"] == "failed" and refused["result"]["return_code"] == 1, refused
    assert not (scratch / "pwned").exists()


async def test_dig_says_how_to_install_it_or_answers(squall: Squall) -> None:
    result = await run(squall, "linux.dig", {"hostname": "localhost"})
    if result["status"] == "failed":
        assert "dnsutils" in json.dumps(result["result"])
    else:
        assert isinstance(result["result"]["result"], list)
    refused = await run(squall, "linux.dig", {"hostname": "-f/etc/passwd"})
    assert refused["status"] == "failed" and "may not start with '-'" in json.dumps(refused["result"])


async def test_wait_for_ssh_gives_up_after_its_retries(squall: Squall) -> None:
    from tests.conftest import free_port

    result = await run(squall, "linux.wait_for_ssh", {"hostname": "127.0.0.1", "port": free_port(),
                                                      "retries": 2, "sleep_delay": 0, "ssh_timeout": 2})
    assert result["status"] == "failed"
    assert "Exceeded max retries (2)" in json.dumps(result["result"])


async def test_traceroute_and_service_refuse_option_values(squall: Squall) -> None:
    trace = await run(squall, "linux.traceroute", {"host": "--help"})
    assert trace["status"] == "failed"
    assert "may not start with '-'" in trace["result"]["stderr"]
    service = await run(squall, "linux.service", {"act": "--version", "service": "ssh"})
    assert service["status"] == "failed"
    assert "may not start with '-'" in service["result"]["stderr"]


# -- replacing the shipped pack --------------------------------------------------------------

def _exchange_linux(root: Path) -> Path:
    """A pack named linux as the Exchange or st2's contrib ships it (one action is enough)."""
    pack = root / "exchange-linux"
    write(pack / "pack.yaml", """
        name: linux
        description: Generic Linux actions
        version: 1.2.1
        author: StackStorm, Inc.
    """)
    write(pack / "actions" / "uptime.yaml", """
        name: uptime
        runner_type: local-shell-cmd
        parameters:
          cmd:
            immutable: true
            default: uptime
    """)
    return pack


def test_installing_linux_replaces_the_shipped_pack_with_a_message(tmp_path: Path) -> None:
    installs, configs, venvs = tmp_path / "packs", tmp_path / "configs", tmp_path / "venvs"
    messages: list[str] = []
    pack, errors = install_pack(str(_exchange_linux(tmp_path)), installs, configs, venvs, messages.append)
    assert pack.ref == "linux" and errors == []
    assert any("replaces the linux pack shipped with Squall" in m and "squall pack remove linux" in m
               for m in messages), messages

    registry = load_registry([installs], configs, SYSTEM_PACKS_PATH)
    assert registry.errors == []  # no "already loaded" nor "reserved" warning
    assert registry.packs["linux"].path == installs / "linux" and registry.packs["linux"].system is False
    assert "linux.uptime" in registry.actions and "linux.vmstat" not in registry.actions

    removed: list[str] = []
    remove_pack("linux", registry, venvs, removed.append)
    assert any("shipped with Squall is used again" in m for m in removed)
    back = load_registry([installs], configs, SYSTEM_PACKS_PATH)
    assert back.packs["linux"].system is True and "linux.vmstat" in back.actions


def test_a_linux_folder_in_the_pack_paths_replaces_the_shipped_one(tmp_path: Path) -> None:
    user = _exchange_linux(tmp_path / "packs")
    registry = load_registry([tmp_path / "packs"], tmp_path / "configs", SYSTEM_PACKS_PATH)
    assert registry.errors == []
    assert registry.packs["linux"].path == user and "linux.uptime" in registry.actions


@pytest.mark.parametrize("own", ["core", "chatops", "squall"])
def test_squall_s_own_packs_stay_protected(tmp_path: Path, own: str) -> None:
    pack = tmp_path / "mine"
    write(pack / "pack.yaml", f"name: {own}\ndescription: x\nversion: 0.1.0\nauthor: me\n")
    with pytest.raises(PackInstallError, match="reserved for Squall's system packs"):
        install_pack(str(pack), tmp_path / "packs", tmp_path / "configs", tmp_path / "venvs", lambda _: None)
    registry = load_registry([], tmp_path / "configs", SYSTEM_PACKS_PATH)
    with pytest.raises(PackInstallError, match="cannot be removed"):
        remove_pack(own, registry, tmp_path / "venvs", lambda _: None)


def test_packs_is_a_free_name_as_squall_ships_no_packs_pack(tmp_path: Path) -> None:
    pack = tmp_path / "mine"
    write(pack / "pack.yaml", "name: packs\ndescription: x\nversion: 0.1.0\nauthor: me\n")
    installed, errors = install_pack(str(pack), tmp_path / "packs", tmp_path / "configs", tmp_path / "venvs",
                                     lambda _: None)
    assert installed.ref == "packs" and errors == []
