"""The `squall` command as outside checks drive it: the console script, a config file, real packs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest

from tests.conftest import SQUALL, serving, write
from tests.pgcluster import free_port

if TYPE_CHECKING:
    from click.testing import Result



def squall(home: Path, *args: str, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=home, input=stdin)


def run_json(home: Path, *args: str) -> tuple[int, dict]:
    done = squall(home, "run", *args, "--json")
    return done.returncode, json.loads(done.stdout)


def _cli_json(cli: Callable[..., Result], *args: str) -> tuple[int, dict]:
    """`run_json` through `in_process`'s `cli`."""
    done = cli("run", *args, "--json")
    return done.exit_code, json.loads(done.stdout)


@pytest.fixture
def demo_pack(home: Path) -> Path:
    """A pack written the StackStorm way: a shell script with positional args and a Python action."""
    pack = home / "src" / "demo"
    write(pack / "pack.yaml", """
        ref: demo
        name: demo
        description: Demo pack
        version: 0.1.0
        author: tests
    """)
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-script
        entry_point: greet.sh
        parameters:
          who: {type: string, required: true, position: 0}
          times: {type: integer, default: 1, position: 1}
    """)
    write(pack / "actions" / "greet.sh", """
        #!/usr/bin/env bash
        for i in $(seq "$2"); do echo "hello $1"; done
    """)
    write(pack / "actions" / "add.yaml", """
        name: add
        runner_type: python-script
        entry_point: add.py
        parameters:
          a: {type: integer, required: true}
          b: {type: integer, default: 2}
    """)
    write(pack / "actions" / "add.py", """
        from st2common.runners.base_action import Action

        class Add(Action):
            def run(self, a, b):
                return (a + b) > 0, {"sum": a + b}
    """)
    return pack


def test_run_exit_codes_and_json_record(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    code, record = _cli_json(cli, "core.local", "cmd=echo hi")
    assert code == 0
    for key in ("id", "action", "status", "parameters", "result", "start_timestamp", "end_timestamp", "context"):
        assert key in record
    assert record["action"] == "core.local"
    assert record["status"] == "succeeded"
    assert record["result"]["stdout"] == "hi"
    assert record["parameters"] == {"cmd": "echo hi"}

    code, record = _cli_json(cli, "core.local", "cmd=exit 4")
    assert code == 1 and record["status"] == "failed" and record["result"]["return_code"] == 4

    code, record = _cli_json(cli, "core.local", "cmd=sleep 5", "timeout=1")
    assert code == 1 and record["status"] == "timeout"


def test_bad_input_exits_2_and_records_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    unknown = cli("run", "core.locl", "cmd=true")
    assert unknown.exit_code == 2
    assert "core.local" in unknown.stderr

    bad_type = cli("run", "core.pause", "max_pause=soon")
    assert bad_type.exit_code == 2
    assert '"max_pause"' in bad_type.stderr and "integer" in bad_type.stderr

    extra = cli("run", "core.noop", "colour=red")
    assert extra.exit_code == 2 and '"colour"' in extra.stderr

    bad_enum = cli("run", "core.http", "url=http://127.0.0.1:9", "method=FETCH")
    assert bad_enum.exit_code == 2 and '"method"' in bad_enum.stderr and "enum" in bad_enum.stderr

    immutable = cli("run", "core.echo", "message=x", "cmd=id")
    assert immutable.exit_code == 2 and "immutable" in immutable.stderr

    no_equals = cli("run", "core.local", "echo")
    assert no_equals.exit_code == 2 and "name=value" in no_equals.stderr

    listed = cli("execution", "list", "--json")
    assert json.loads(listed.stdout) == []


def test_execution_commands(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    _, first = _cli_json(cli, "core.echo", "message=one")
    _, second = _cli_json(cli, "core.local", "cmd=exit 1")

    listed = json.loads(cli("execution", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [second["id"], first["id"]]
    only_failed = json.loads(cli("execution", "list", "--status", "failed", "--json").stdout)
    assert [r["id"] for r in only_failed] == [second["id"]]
    by_action = json.loads(cli("execution", "list", "--action", "core.echo", "-n", "1", "--json").stdout)
    assert [r["id"] for r in by_action] == [first["id"]]

    got = json.loads(cli("execution", "get", first["id"], "--json").stdout)
    assert got["result"]["stdout"] == "one"
    by_prefix = json.loads(cli("execution", "get", first["id"][:-4], "--json").stdout)
    assert by_prefix["id"] == first["id"]
    missing = cli("execution", "get", "0" * 24)
    assert missing.exit_code == 2 and "not found" in missing.stderr

    rerun = cli("execution", "re-run", first["id"], "message=two", "--json")
    assert rerun.exit_code == 0
    again = json.loads(rerun.stdout)
    assert again["id"] != first["id"] and again["result"]["stdout"] == "two"
    assert again["context"]["re-run"] == {"ref": first["id"]}

    done_cancel = cli("execution", "cancel", first["id"])
    assert done_cancel.exit_code == 2 and "already succeeded" in done_cancel.stderr


def test_async_request_is_run_by_the_server_and_cancel_reaches_it(home: Path, demo_pack: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    queued = cli("run", "core.local", "cmd=echo later", "--async", "--json")
    assert queued.exit_code == 0
    queued_id = json.loads(queued.stdout)["id"]
    assert json.loads(cli("execution", "get", queued_id, "--json").stdout)["status"] == "requested"

    server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        record = _cli_poll(cli, queued_id, lambda r: r["status"] == "succeeded")
        assert record["result"]["stdout"] == "later"

        # A pack installed while the server runs is picked up without a restart.
        assert cli("pack", "install", str(demo_pack)).exit_code == 0
        added = json.loads(cli("run", "demo.add", "a=5", "--async", "--json").stdout)
        record = _cli_poll(cli, added["id"], lambda r: r["status"] in ("succeeded", "failed"))
        assert record["result"].get("result") == {"sum": 7}, record

        slow = json.loads(cli("run", "core.local", "cmd=sleep 60", "--async", "--json").stdout)
        _cli_poll(cli, slow["id"], lambda r: r["status"] == "running")
        cancel = cli("execution", "cancel", slow["id"])
        assert cancel.exit_code == 0
        record = _cli_poll(cli, slow["id"], lambda r: r["status"] == "canceled")
        assert record["log"][-1]["status"] == "canceled"
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=20)
    assert server.returncode == 0, output


def _held_pack(home: Path) -> None:
    """`pol.slow` waits for its `gate` file; one run at a time (a concurrency policy, delay)."""
    pack = home / "packs" / "pol"
    write(pack / "pack.yaml", "ref: pol\nname: pol\nversion: 0.1.0\n")
    write(pack / "actions" / "slow.yaml", """
        name: slow
        runner_type: local-shell-cmd
        parameters:
          gate: {type: string}
          cmd: {default: "while [ ! -f {{gate}} ]; do sleep 0.02; done; echo through", immutable: true}
    """)
    write(pack / "policies" / "one.yaml", "name: one\nresource_ref: pol.slow\npolicy_type: action.concurrency\n"
                                          "parameters: {threshold: 1, action: delay}\n")


def test_run_of_a_held_action_is_counted_by_the_running_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall run` of an action a concurrency policy holds, while `squall serve` runs on the same
    database: the server runs it, counted with its own runs (it waits while one runs there); the
    command waits for its end and shows it as any run. Without a server it runs in the command."""
    _held_pack(home)
    alone = home / "gate-alone"
    alone.touch()
    cli = in_process(home, monkeypatch)
    code, record = _cli_json(cli, "pol.slow", f"gate={alone}")
    assert code == 0 and record["result"]["stdout"] == "through"

    with open(home / "serve.log", "w") as log:
        server = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True)
    waiter = None
    try:
        deadline = time.monotonic() + 60
        while "Squall is serving" not in (home / "serve.log").read_text():
            assert server.poll() is None and time.monotonic() < deadline, (home / "serve.log").read_text()
            time.sleep(0.1)
        first = json.loads(cli("run", "pol.slow", f"gate={home / 'gate-1'}", "--async", "--json").stdout)
        _cli_poll(cli, first["id"], lambda r: r["status"] == "running")
        waiter = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "run", "pol.slow",
                                   f"gate={home / 'gate-2'}", "--json"], cwd=home, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while len(rows := json.loads(cli("execution", "list", "--action", "pol.slow", "--json").stdout)) < 3:
            assert waiter.poll() is None and time.monotonic() < deadline, waiter.communicate()
            time.sleep(0.2)
        second = next(r for r in rows if r["id"] not in (first["id"], record["id"]))
        _cli_poll(cli, second["id"], lambda r: r["status"] == "delayed")  # the server's one runs
        (home / "gate-1").touch()
        (home / "gate-2").touch()
        output, errors = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, errors
        done = json.loads(output)
        assert done["id"] == second["id"] and done["result"]["stdout"] == "through"
        assert done["runner_info"]["pid"] == server.pid
        statuses = [entry["status"] for entry in done["log"]]
        assert statuses.index("delayed") < statuses.index("running")
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _cli_poll(cli: Callable[..., Result], execution_id: str, done, seconds: float = 20) -> dict:
    """`_poll` through `in_process`'s `cli`."""
    deadline = time.monotonic() + seconds
    while True:
        record = json.loads(cli("execution", "get", execution_id, "--json").stdout)
        if done(record):
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"execution never reached the expected state: {record}")
        time.sleep(0.2)


def _poll(home: Path, execution_id: str, done, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        record = json.loads(squall(home, "execution", "get", execution_id, "--json").stdout)
        if done(record):
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"execution never reached the expected state: {record}")
        time.sleep(0.2)


def test_state_changes_from_the_cli_are_audited(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Users (an admin too), API keys, cancels, re-runs, pauses, resumes, trigger emits and re-emits and
    pack reloads from the CLI wrote no audit row, where the web's and the API's are audited. Each is now
    `cli.<thing>.<verb>`, by the OS user from `cli`, naming what changed and never a password or a key."""
    import getpass

    from engine.storage import Store
    from tests.workflow_helpers import workflow_pack

    workflow_pack(home, {"flow": ("orquesta", "", "version: 1.0\ntasks:\n  a:\n    action: core.noop\n")})
    cli = in_process(home, monkeypatch)
    succeeds(cli, "user", "create", "zed", "--role", "admin", "--password-stdin", stdin="First1Passw0rd-long\n")
    succeeds(cli, "user", "passwd", "zed", "--password-stdin", stdin="Second2Passw0rd-long\n")
    succeeds(cli, "user", "delete", "zed")
    key = json.loads(succeeds(cli, "apikey", "create", "--name", "ci-bot", "--json").stdout)
    succeeds(cli, "apikey", "delete", key["id"])
    queued = json.loads(succeeds(cli, "run", "core.noop", "--async", "--json").stdout)["id"]
    succeeds(cli, "execution", "cancel", queued)
    ran = json.loads(succeeds(cli, "run", "core.noop", "--json").stdout)["id"]
    again = json.loads(succeeds(cli, "execution", "re-run", ran, "--json").stdout)["id"]
    flow = json.loads(succeeds(cli, "run", "wf.flow", "--async", "--json").stdout)["id"]
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    try:  # as if `squall serve` ran it, then paused it
        assert store.update_execution(flow, {"status": "running"}, expect=("requested",))
        succeeds(cli, "execution", "pause", flow)
        assert store.update_execution(flow, {"status": "paused"}, expect=("pausing",))
        succeeds(cli, "execution", "resume", flow)
    finally:
        store.close()
    instance = json.loads(succeeds(cli, "trigger", "emit", "core.st2.sensor.process_spawn", "--payload",
                                   '{"object": {"pid": 1}}').stdout)["id"]
    emitted = json.loads(succeeds(cli, "trigger-instance", "re-emit", instance, "--json").stdout)["id"]
    packs = len(json.loads(succeeds(cli, "pack", "reload", "--json").stdout)["packs"])

    events = audit_log(cli)
    assert {(e["actor"], e["source"]) for e in events} == {(getpass.getuser(), "cli")}
    changes = [(e["event"], e["target"], e["detail"]) for e in events if e["event"] != "cli.execution"]
    assert changes == [
        ("cli.user.create", "zed", {"role": "admin"}),
        ("cli.user.passwd", "zed", {}),
        ("cli.user.delete", "zed", {}),
        ("cli.apikey.create", key["id"], {"name": "ci-bot"}),
        ("cli.apikey.delete", key["id"], {"name": "ci-bot"}),
        ("cli.execution.cancel", queued, {"action": "core.noop", "status": "canceled"}),
        ("cli.execution.rerun", again, {"action": "core.noop", "of": ran, "parameters": {}}),
        ("cli.execution.pause", flow, {"action": "wf.flow", "status": "pausing"}),
        ("cli.execution.resume", flow, {"action": "wf.flow", "status": "resuming"}),
        ("cli.trigger.emit", "core.st2.sensor.process_spawn", {"instance": instance}),
        ("cli.trigger.re_emit", "core.st2.sensor.process_spawn", {"instance": instance, "new_instance": emitted}),
        ("cli.pack.reload", None, {"packs": packs, "problems": 0}),
    ]
    exported = cli("audit", "export").stdout
    assert "Passw0rd" not in exported and key["key"] not in exported


def test_actions_list_and_get(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    actions = json.loads(cli("action", "list", "--json").stdout)
    refs = {a["ref"] for a in actions}
    assert {"core.local", "core.local_sudo", "core.echo", "core.http", "core.noop", "core.pause"} <= refs
    core_only = json.loads(cli("action", "list", "--pack", "core", "--json").stdout)
    assert {a["pack"] for a in core_only} == {"core"}
    echo = json.loads(cli("action", "get", "core.echo", "--json").stdout)
    assert echo["runner_type"] == "local-shell-cmd"
    assert echo["parameters"]["cmd"]["immutable"] is True
    assert echo["parameters"]["timeout"]["default"] == 60  # inherited from the runner
    missing = cli("action", "get", "core.ech")
    assert missing.exit_code == 2 and "core.echo" in missing.stderr


def test_pack_install_from_folder_runs_stackstorm_content(home: Path, demo_pack: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    installed = cli("pack", "install", str(demo_pack), "--json")
    assert installed.exit_code == 0, installed.stderr
    summary = json.loads(installed.stdout)
    assert summary["ref"] == "demo" and summary["content"]["actions"] == 2
    assert (home / "packs" / "demo" / "pack.yaml").is_file()

    code, record = _cli_json(cli, "demo.greet", "who=ops team", "times=2")
    assert code == 0, record
    assert record["result"]["stdout"] == "hello ops team\nhello ops team"
    code, record = _cli_json(cli, "demo.add", "a=40")
    assert code == 0 and record["result"]["result"] == {"sum": 42}
    code, record = _cli_json(cli, "demo.add", "a=-5")
    assert code == 1 and record["status"] == "failed"

    listing = json.loads(cli("pack", "list", "--json").stdout)
    assert {p["ref"] for p in listing["packs"]} == {"core", "chatops", "squall", "linux", "packs", "demo"}
    assert listing["problems"] == []

    removed = cli("pack", "remove", "demo")
    assert removed.exit_code == 0
    assert not (home / "packs" / "demo").exists()
    assert cli("run", "demo.add", "a=1").exit_code == 2
    assert cli("pack", "remove", "core").exit_code == 2


def test_pack_remove_removes_a_pack_whose_pack_yaml_no_longer_loads(home: Path, demo_pack: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand edit broke the installed pack's pack.yaml: it no longer loads, and `pack remove` said it was
    not installed. It removes the folder of that name in the install path, as st2's packs.delete does."""
    cli = in_process(home, monkeypatch)
    assert cli("pack", "install", str(demo_pack)).exit_code == 0
    (home / "packs" / "demo" / "pack.yaml").write_text('name: demo\ndescription: "broken\n')
    removed = cli("pack", "remove", "demo")
    assert removed.exit_code == 0, removed.stderr
    assert not (home / "packs" / "demo").exists()


@pytest.mark.integration
def test_pack_install_from_git_url_at_a_tag(home: Path, demo_pack: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    git = ["git", "-C", str(demo_pack), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(demo_pack)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (demo_pack / "actions" / "add.yaml").unlink()
    subprocess.run([*git, "commit", "-qam", "drop add"], check=True)

    cli = in_process(home, monkeypatch)
    installed = cli("pack", "install", f"file://{demo_pack}=v1", "--json")
    assert installed.exit_code == 0, installed.stderr
    assert json.loads(installed.stdout)["content"]["actions"] == 2  # the tag still has add
    assert not (home / "packs" / "demo" / ".git").exists()
    assert "cloning" in installed.stderr  # progress is shown

    broken = cli("pack", "install", "file:///nonexistent/repo.git")
    assert broken.exit_code == 2 and "git clone" in broken.stderr


def _wheel(folder: Path) -> Path:
    """A tiny wheel built by hand, so the virtualenv test needs no network."""
    name, version = "squall_testdep", "1.0"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.mark.integration
def test_pack_with_requirements_gets_its_own_virtualenv(home: Path, demo_pack: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _wheel(demo_pack / "wheels")
    write(demo_pack / "requirements.txt", f"./wheels/{wheel.name}\n")
    write(demo_pack / "actions" / "dep.yaml", """
        name: dep
        runner_type: python-script
        entry_point: dep.py
    """)
    write(demo_pack / "actions" / "dep.py", """
        import sys
        import squall_testdep
        from st2common.runners.base_action import Action

        class Dep(Action):
            def run(self):
                return {"value": squall_testdep.VALUE, "prefix": sys.prefix}
    """)
    cli = in_process(home, monkeypatch)
    installed = cli("pack", "install", str(demo_pack))
    assert installed.exit_code == 0, installed.stderr
    assert "virtualenv" in installed.stderr
    venv = home / "data" / "virtualenvs" / "demo"
    assert (venv / "bin" / "python").exists()
    code, record = _cli_json(cli, "demo.dep")
    assert code == 0, record
    assert record["result"]["result"]["value"] == 42
    assert os.path.realpath(record["result"]["result"]["prefix"]) == os.path.realpath(venv)

    cli("pack", "remove", "demo")
    assert not venv.exists()


def test_reload_reports_bad_files_with_line_and_keeps_the_rest(home: Path, demo_pack: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    assert cli("pack", "install", str(demo_pack)).exit_code == 0
    write(home / "packs" / "demo" / "actions" / "broken.yaml", """
        name: broken
        runner_type: local-shell-cmd
        parameters:
          x: {type: string
    """)
    reloaded = cli("pack", "reload", "--json")
    assert reloaded.exit_code == 1
    report = json.loads(reloaded.stdout)
    assert report["actions"] >= 8  # core's six and demo's two still load
    [error] = report["errors"]
    assert "broken.yaml:" in error and "invalid YAML" in error
    line = int(error.split("broken.yaml:")[1].split(":")[0])
    assert line in (4, 5)

    code, record = _cli_json(cli, "demo.add", "a=1")
    assert code == 0 and record["result"]["result"] == {"sum": 3}


def test_pack_messages_show_square_brackets_as_written(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads `[...]` as markup: unescaped, the ref rule lost its `[a-z0-9_]` and `[/...]` crashed."""
    write(home / "src" / "bad" / "pack.yaml", "name: My-Pack\nversion: 1.0.0\n")
    cli = in_process(home, monkeypatch)
    bad_name = cli("pack", "install", str(home / "src" / "bad"))
    assert bad_name.exit_code == 2 and "must match ^[a-z0-9_]+$" in bad_name.stderr, bad_name.stderr
    for args, shown in ((("install", "/srv/packs[/old]"), "/srv/packs[/old]"),
                        (("remove", "x[/y]"), "'x[/y]'"),
                        (("install", "file:///tmp/x[/y].git"), "cloning file:///tmp/x[/y].git")):
        done = cli("pack", *args)
        assert done.exit_code == 2, done.stderr
        assert shown in done.stderr and "Traceback" not in done.stderr, done.stderr

    write(home / "src" / "odd" / "pack.yaml", "ref: odd\nname: odd\nversion: 1.0.0\ndescription: 'see [/docs] [red]'\n")
    write(home / "src" / "odd" / "actions" / "run.yaml", "name: run\nrunner_type: noop\n")
    assert cli("pack", "install", str(home / "src" / "odd")).exit_code == 0
    listed = cli("pack", "list")
    assert listed.exit_code == 0 and "see [/docs] [red]" in listed.stdout, listed.stderr


def test_pack_install_reports_aliases_and_rules_that_do_not_load(home: Path, demo_pack: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`pack list` and `squall serve` name an alias or rule whose action does not exist; the install must too."""
    write(demo_pack / "aliases" / "good.yaml", "name: good\naction_ref: demo.add\nformats: ['add {{a}}']\n")
    write(demo_pack / "aliases" / "bad.yaml", "name: bad\naction_ref: demo.missing_action\nformats: ['do it']\n")
    write(demo_pack / "rules" / "r.yaml", """
        name: r
        pack: demo
        trigger: {type: core.st2.webhook, parameters: {url: x}}
        action: {ref: demo.nosuch}
    """)
    cli = in_process(home, monkeypatch)
    installed = cli("pack", "install", str(demo_pack))
    assert installed.exit_code == 1, installed.stderr
    assert "(2 actions, 1 aliases, 0 rules)" in installed.stdout
    assert 'bad.yaml:2: action_ref: action "demo.missing_action" not found' in installed.stderr
    assert 'r.yaml:4: action "demo.nosuch" not found' in installed.stderr

    again = cli("pack", "install", str(demo_pack), "--json")
    assert again.exit_code == 1
    report = json.loads(again.stdout)
    assert (report["content"]["aliases"], report["content"]["rules"]) == (1, 0)
    assert sorted(error.split(": ", 1)[0].rsplit("/", 1)[1] for error in report["errors"]) == ["bad.yaml:2", "r.yaml:4"]


def test_config_errors_are_clear(home: Path) -> None:
    write(home / "bad.yml", "databse:\n  url: sqlite:///x.db\n")
    done = subprocess.run([str(SQUALL), "-c", str(home / "bad.yml"), "action", "list"], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "databse" in done.stderr and "database" in done.stderr


def test_serve_stops_on_sigterm_while_the_console_waits_for_a_line(home: Path) -> None:
    """The console chat reads its input on a thread; one of the loop's executor blocked in `readline`
    kept `squall serve` from exiting after SIGTERM until one more line was typed (under systemd, until
    the stop timeout's SIGKILL)."""
    config = home / "config.yml"
    config.write_text(config.read_text() + "adapters:\n  console: {enabled: true, user: ops}\n")
    server = subprocess.Popen([str(SQUALL), "-c", str(config), "serve"], cwd=home, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("!ping\n")
        server.stdin.flush()
        for line in server.stdout:  # serving, and the console answered: its reader waits for the next line
            if "pong" in line:
                break
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0  # stdin still open, nothing more typed
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_names_bad_adapter_settings_without_a_traceback(home: Path) -> None:
    config = home / "config.yml"
    base = config.read_text()
    config.write_text(base + "adapters:\n  slak: {enabled: true}\n")
    done = squall(home, "serve", timeout=30)
    assert done.returncode != 0
    assert "unknown adapter 'adapters.slak' (did you mean 'slack'?)" in done.stderr
    assert "Traceback" not in done.stderr
    config.write_text(base + "adapters:\n  console: [enabled]\n")
    done = squall(home, "serve", timeout=30)
    assert done.returncode != 0 and "'adapters.console' must be a mapping" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_passes_values_as_given_unless_asked_to_render(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = in_process(home, monkeypatch)
    assert cli("key", "set", "greeting", "hello").exit_code == 0
    code, plain = _cli_json(cli, "core.local", "cmd=echo '{{ st2kv.system.greeting }}'")
    assert code == 0 and plain["result"]["stdout"] == "{{ st2kv.system.greeting }}"
    code, rendered = _cli_json(cli, "core.local", "cmd=echo {{ st2kv.system.greeting }}", "--render")
    assert code == 0 and rendered["result"]["stdout"] == "hello"


@pytest.fixture
def bracket_pack(home: Path) -> Path:
    """A pack whose texts hold what rich reads as markup: a closing tag that crashes it, a tag it swallows."""
    pack = home / "packs" / "odd"
    write(pack / "pack.yaml", "ref: odd\nname: odd\nversion: 1.0.0\n")
    write(pack / "actions" / "run.yaml", """
        name: run
        runner_type: noop
        description: "see [/x] [a-z0-9_]"
        parameters:
          host: {type: string, description: "a [/h] name"}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: odd.run
        description: "greets [/y]"
        formats: ["ping [/x] {{host}}"]
    """)
    write(pack / "rules" / "r.yaml", """
        name: r
        pack: odd
        description: "fires [/z]"
        trigger: {type: core.st2.webhook, parameters: {url: odd}}
        action: {ref: odd.run}
    """)
    return pack


# (commands run first, the command, its exit code, the stream, what it must show as written)
_BRACKETED = {
    "key set": ([], ("key", "set", "a[/b]", "v"), 0, "stdout", "key a[/b]"),
    "key delete": ([("key", "set", "a[/b]", "v")], ("key", "delete", "a[/b]"), 0, "stdout", "deleted a[/b]"),
    "key delete missing": ([], ("key", "delete", "a[/b]"), 2, "stderr", "key 'a[/b]' does not exist"),
    "key list": ([("key", "set", "k[/x]", "[a-z0-9_] :x:")], ("key", "list"), 0, "stdout", "[a-z0-9_] :x:"),
    "key list name": ([("key", "set", "k[/x]", "v")], ("key", "list"), 0, "stdout", "k[/x]"),
    "key get": ([("key", "set", "k", ":smile: [/x]")], ("key", "get", "k"), 0, "stdout", ":smile: [/x]\n"),
    "alias match": ([], ("alias", "match", "hi [/x]"), 1, "stderr", "'hi [/x]'"),
    "alias list format": ([], ("alias", "list"), 0, "stdout", "ping [/x]"),
    "alias list description": ([], ("alias", "list"), 0, "stdout", "greets [/y]"),
    "action list": ([], ("action", "list", "--pack", "odd"), 0, "stdout", "see [/x] [a-z0-9_]"),
    "action get": ([], ("action", "get", "odd.run"), 0, "stdout", "odd.run (noop) see [/x] [a-z0-9_]"),
    "action get parameter": ([], ("action", "get", "odd.run"), 0, "stdout", "a [/h] name"),
    "run echo": ([], ("run", "core.echo", "message=[/x] [b]"), 0, "stdout", '"message": "[/x] [b]"}'),
    "rule list": ([], ("rule", "list"), 0, "stdout", "fires [/z]"),
    "rule get missing": ([], ("rule", "get", "a[/b]"), 2, "stderr", 'rule "a[/b]" not found'),
    "apikey create": ([], ("apikey", "create", "--name", "ci[/x]"), 0, "stdout", "(ci[/x])"),
    "apikey list": ([("apikey", "create", "--name", "ci[/x]")], ("apikey", "list"), 0, "stdout", "ci[/x]"),
    "apikey delete missing": ([], ("apikey", "delete", "i[/d]"), 2, "stderr", "no API key with id i[/d]"),
    # User names are letters, digits and ._@- only: a bracketed one is refused, and said as given.
    "user create": ([], ("user", "create", "a[/b]"), 2, "stderr", "'a[/b]' is not a usable user name"),
    "user passwd missing": ([], ("user", "passwd", "a[/b]"), 2, "stderr", "no user named a[/b]"),
}


@pytest.mark.parametrize(("setup", "args", "code", "stream", "shown"), list(_BRACKETED.values()), ids=list(_BRACKETED))
def test_user_and_pack_text_is_shown_as_written(home: Path, bracket_pack: Path, setup: list[tuple[str, ...]],
                                                 args: tuple[str, ...], code: int, stream: str, shown: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads `[...]` as markup (and `:name:` as an emoji): names, values, descriptions and errors quoted
    unescaped crashed on a `[/x]` with a MarkupError traceback, and lost a `[a-z0-9_]` without a word."""
    cli = in_process(home, monkeypatch)
    for before in setup:
        assert cli(*before).exit_code == 0
    done = cli(*args)
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "MarkupError" not in output, output
    assert done.exit_code == code, output
    assert shown in getattr(done, stream), output


# -- signals: a stopped `squall run` ends its execution ---------------------------------------------

def _gone(pid: int, seconds: float = 20) -> bool:
    """Whether process `pid` ended (polled: a guard against hanging, not an assertion about time)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1].startswith("Z"):
            return True  # dead, its parent not yet told
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_to_run_abandons_the_execution_and_ends_the_action(home: Path, sig: signal.Signals) -> None:
    """`timeout`, a CI job's cancel, `kill` (SIGTERM), a closed terminal (SIGHUP) and Ctrl-C (SIGINT) stop
    `squall run` alike: the action's processes are killed, the execution is recorded `abandoned` (SIGTERM
    left it `running` for good, its action orphaned), and one line says so; the exit is 128 + the signal."""
    marker = home / "action.pid"
    runner = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "run", "core.local",
                               f"cmd=echo $$ > {marker}; exec sleep 60"], cwd=home, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text().strip()):
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
            time.sleep(0.05)
        action = int(marker.read_text())
        runner.send_signal(sig)  # to `squall run` alone, as `timeout` and `kill` send it
        output, errors = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 128 + sig, errors
    record = json.loads(squall(home, "execution", "list", "-n", "1", "--json").stdout)[0]
    assert record["status"] == "abandoned", record
    assert errors.strip() == (f"interrupted: execution {record['id']} abandoned "
                              f"(see: squall execution get {record['id']})")
    assert output == ""
    assert _gone(action), "the action's process outlived `squall run`"


def test_a_stop_signal_the_command_was_started_ignoring_stays_ignored(home: Path) -> None:
    """`nohup squall run ...` must outlive its terminal: a SIGHUP it was started ignoring is not taken up."""
    gate, marker = home / "gate", home / "action.pid"
    runner = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "run", "core.local",
                               f"cmd=echo $$ > {marker}; while [ ! -f {gate} ]; do sleep 0.05; done; echo through"],
                              cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 30
        while not (marker.exists() and marker.read_text().strip()):
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
            time.sleep(0.05)
        runner.send_signal(signal.SIGHUP)
        gate.touch()
        output, errors = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 0, errors
    assert "status: succeeded" in output and "through" in output and "interrupted" not in errors


# -- setup mistakes: one line, exit 3 ---------------------------------------------------------------

def _setup_failure(done: Result) -> str:
    """The one line a setup mistake prints (exit 3, no traceback)."""
    assert done.exit_code == 3, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_a_database_path_that_cannot_be_opened_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / "data" / "squall.db").mkdir(parents=True)  # what SQLite cannot open, even for root
    cli = in_process(home, monkeypatch)
    for args in (("execution", "list"), ("run", "core.noop"), ("key", "list")):
        line = _setup_failure(cli(*args))
        assert str(home / "data" / "squall.db") in line and "unable to open database file" in line, line
        assert "writable" in line, line


def test_a_data_dir_that_is_a_file_is_one_line(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", "sqlite:///blocker/squall.db"))
    (home / "blocker").write_text("x")
    cli = in_process(home, monkeypatch)
    for args in (("key", "list"), ("run", "core.noop")):
        line = _setup_failure(cli(*args))
        assert str(home / "blocker") in line and "File exists" in line, line


def test_an_unreachable_postgresql_is_one_line_without_its_password(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db",
                                                 f"postgresql://squall:hunter2secret@127.0.0.1:{port}/squall"))
    cli = in_process(home, monkeypatch)
    for args in (("execution", "list"), ("run", "core.noop")):
        done = cli(*args)
        line = _setup_failure(done)
        assert "hunter2secret" not in done.stderr + done.stdout
        assert f"postgresql://squall:***@127.0.0.1:{port}/squall" in line, line
        assert "Connection refused" in line and "server" in line, line


def test_an_unsupported_database_url_is_bad_input(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", "mysql://u:pw1234@127.0.0.1/db"))
    cli = in_process(home, monkeypatch)
    done = cli("execution", "list")
    assert done.exit_code == 2 and "Traceback" not in done.stderr, done.stderr
    assert "'mysql'" in done.stderr and "postgresql://" in done.stderr and "sqlite:///" in done.stderr
    assert "pw1234" not in done.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(home: Path) -> None:
    import socket

    port = int(re.search(r"port: (\d+)", (home / "config.yml").read_text()).group(1))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = squall(home, "serve", timeout=60)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "api.port" in errors[0], done.stderr


# -- trigger emit through a running serve waits for the executions -----------------------------------

def test_trigger_emit_through_serve_waits_for_the_executions(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall trigger emit` waits for "the rules and the executions they start": through a running
    `squall serve` it returned once the instance was processed, the rule's execution still running."""
    write(home / "packs" / "hooks" / "pack.yaml", "ref: hooks\nname: hooks\nversion: 0.1.0\n")
    write(home / "packs" / "hooks" / "rules" / "slow.yaml", """
        name: slow
        pack: hooks
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: slow}}
        action: {ref: core.local, parameters: {cmd: "sleep 2; echo finished"}}
    """)
    cli = in_process(home, monkeypatch)
    with serving(home) as server:
        done = cli("trigger", "emit", "core.st2.webhook", "--url", "slow", "--payload", "{}")
        assert done.exit_code == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "processed"
        execution_id = re.search(r"rule hooks\.slow: succeeded \(execution (\w+)\)", done.stderr).group(1)
        record = json.loads(cli("execution", "get", execution_id, "--json").stdout)
        assert record["status"] == "succeeded" and record["result"]["stdout"] == "finished", record
        assert record["runner_info"]["pid"] == server.pid  # run by the serve, not by the command


# -- listings at common widths: key columns whole ----------------------------------------------------

def _listed_at(home: Path, columns: int, *args: str) -> str:
    """A listing's standard output as a terminal (or a pipe: 80) `columns` wide gets it, no line wider."""
    done = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True, text=True,
                          timeout=60, cwd=home, env={**os.environ, "COLUMNS": str(columns)})
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= columns for line in done.stdout.splitlines()), done.stdout
    return done.stdout


def _first_cells(listing: str) -> str:
    """A table's first column read down, its cells joined: an id folded onto more lines is whole again."""
    return "".join(line.split("│")[1].strip() for line in listing.splitlines() if line.startswith("│"))


@pytest.mark.parametrize("columns", [40, 60, 80])
def test_execution_list_shows_each_action_and_status_whole(home: Path, columns: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """At 40 columns only the ids showed (action, status and start empty), at 60 `succ…`, and at 80 (what
    a pipe gets) every start was `2026-12-05T10…`. Each execution's action and status are now whole on
    one line, its id whole (or folded), its start as date and time in UTC; `--json` keeps ISO 8601."""
    from datetime import datetime

    cli = in_process(home, monkeypatch)
    records = [_cli_json(cli, *args)[1] for args in (("core.echo", "message=one"), ("core.local", "cmd=exit 1"),
                                                     ("core.noop",))]
    listing = _listed_at(home, columns, "execution", "list")
    for record in records:
        whole = re.compile(rf"(^|\s){re.escape(record['action'])}\s.*\s{record['status']}(\s|$)")
        assert any(whole.search(line) for line in listing.splitlines()), listing
        started = datetime.fromisoformat(record["start_timestamp"])
        assert started.strftime("%Y-%m-%d") in listing and started.strftime("%H:%M:%S") in listing, listing
        assert record["id"] in listing + _first_cells(listing), listing
    listed = json.loads(cli("execution", "list", "--json").stdout)
    assert [r["start_timestamp"] for r in listed] == [r["start_timestamp"] for r in reversed(records)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", r["start_timestamp"]) for r in listed)


def test_user_apikey_and_inquiry_lists_keep_times_and_ids_whole(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`user list` and `apikey list` cut their ISO times in 80 columns (`2026-12-05T10:33:15.30…`), and
    40 columns cut the ids `apikey delete` and `inquiry respond` take (`0661…`)."""
    from datetime import datetime

    def shown(value: str) -> str:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")

    cli = in_process(home, monkeypatch)
    key = json.loads(cli("apikey", "create", "--name", "ci", "--json").stdout)
    assert cli("user", "create", "alice", "--password-stdin", stdin="password123\n").exit_code == 0
    user = json.loads(cli("user", "list", "--json").stdout)[0]
    inquiry = _cli_json(cli, "core.ask", "route=ops")[1]
    assert inquiry["status"] == "pending", inquiry

    assert shown(user["created_at"]) in _listed_at(home, 80, "user", "list")
    assert shown(key["created_at"]) in _listed_at(home, 80, "apikey", "list")
    assert key["id"] in _first_cells(_listed_at(home, 40, "apikey", "list"))
    assert inquiry["id"] in _first_cells(_listed_at(home, 40, "inquiry", "list"))


def test_key_list_keeps_scopes_and_expiry_whole_in_narrow_terminals(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`key list` cut the scope to `st2k…` in 40 and 60 columns, and its ISO expiry in 80."""
    from datetime import datetime

    cli = in_process(home, monkeypatch)
    assert cli("key", "set", "deploy_target", "web1", "--ttl", "3600").exit_code == 0
    item = json.loads(cli("key", "get", "deploy_target", "--json").stdout)
    expires = datetime.fromisoformat(item["expire_timestamp"]).strftime("%Y-%m-%d %H:%M:%S")
    assert expires in _listed_at(home, 80, "key", "list")
    for columns in (40, 60):
        listed = _listed_at(home, columns, "key", "list")
        scope = "".join(line.split("│")[3].strip() for line in listed.splitlines() if line.startswith("│"))
        assert scope == "st2kv.system" and "…" not in listed, listed


# --- `squall apikey create NAME`, as `squall user create NAME` ---------------------------------------

def test_apikey_create_takes_its_name_as_an_argument_or_option(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`apikey create ci-bot` failed 'unexpected extra argument' while `user create alice` takes the name
    so; `-n/--name` stays (scripts use it), and the two naming different keys is refused, not guessed."""
    cli = in_process(home, monkeypatch)
    by_argument = json.loads(succeeds(cli, "apikey", "create", "ci-bot", "--json").stdout)
    assert by_argument["name"] == "ci-bot" and by_argument["key"]
    assert json.loads(succeeds(cli, "apikey", "create", "--name", "deploy", "--json").stdout)["name"] == "deploy"
    assert json.loads(succeeds(cli, "apikey", "create", "-n", "cron", "--json").stdout)["name"] == "cron"
    assert json.loads(succeeds(cli, "apikey", "create", "same", "-n", "same", "--json").stdout)["name"] == "same"
    assert json.loads(succeeds(cli, "apikey", "create", "--json").stdout)["name"] is None  # a name stays optional
    assert "(shown)" in succeeds(cli, "apikey", "create", "shown").stdout
    both = cli("apikey", "create", "one", "--name", "two")
    assert both.exit_code == 2
    assert "error: two names given: 'one' and --name 'two'" in both.stderr, both.stderr
    listed = json.loads(succeeds(cli, "apikey", "list", "--json").stdout)
    assert sorted(key["name"] or "" for key in listed) == ["", "ci-bot", "cron", "deploy", "same", "shown"]


# -- a change and its audit event: one transaction ---------------------------------------------------------
#
# These run `squall` in this process (`in_process`): each test runs a dozen commands or more, and the console
# script's start (Python, the imports) was ~1 s of each. What they check is what the command stores.


def in_process(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`squall ARGS` run in this process (typer's runner) with `home`'s config: its exit code, stdout and stderr
    apart, in ~0.1 s where the console script takes ~1 s. What a command sets for its whole process is put back
    after the test: the stdout audit sink it leaves out, the config and verbosity its options name, the folder."""
    from typer.testing import CliRunner

    from bot.cli import app
    from bot.cli.common import _State
    from engine.audit_sinks import _Process

    monkeypatch.setattr(_Process, "stdout", _Process.stdout)
    monkeypatch.setattr(_State, "config_path", _State.config_path)
    monkeypatch.setattr(_State, "verbose", _State.verbose)
    monkeypatch.chdir(home)
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> Result:
        done = runner.invoke(app, ["-c", str(home / "config.yml"), *args], input=stdin)
        if done.exception is not None and not isinstance(done.exception, SystemExit):
            # On stderr as the console script prints it, which the runner keeps apart: a "no Traceback" check checks.
            shown = "".join(traceback.format_exception(done.exception)).encode()
            done.stderr_bytes = (done.stderr_bytes or b"") + shown
        return done

    return run


@dataclass
class Done:
    """What `squall ARGS` gave, in the shape of subprocess.run's answer (`like_a_process`)."""
    returncode: int
    stdout: str
    stderr: str


def like_a_process(home: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Done]:
    """`in_process`, answering as `squall` (the console script's subprocess.run) does: for tests written so."""
    run = in_process(home, monkeypatch)

    def squall(*args: str, stdin: str | None = None) -> Done:
        done = run(*args, stdin=stdin)
        return Done(done.exit_code, done.stdout, done.stderr)

    return squall


@contextlib.contextmanager
def audit_failing(event: str, *, refused: bool = False) -> Iterator[None]:
    """`event`'s audit rows fail to store as a full disk fails them (SQLITE_FULL: the database failed, and the
    group of calls with it), or, `refused`, as a statement the database refuses alone (a value too long for
    its column on PostgreSQL: the rest of its group commits); every other row stores as before."""
    import sqlite3

    import sqlalchemy as sa

    from engine.storage import Store

    add = Store.audit_add

    def audit_add(self: Store, kind: str, *args: Any, **kwargs: Any) -> None:
        if kind == event and refused:
            raise sa.exc.DataError("INSERT INTO audit ...", {}, ValueError("value too long for type character"))
        if kind == event:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = 13  # type: ignore[attr-defined]
            raise sa.exc.OperationalError("INSERT INTO audit ...", {}, error)
        add(self, kind, *args, **kwargs)

    with mock.patch.object(Store, "audit_add", audit_add):
        yield


def audit_fails(cli: Callable[..., Result], event: str, *args: str, stdin: str | None = None) -> Result:
    """`squall ARGS` while `event`'s audit row cannot be stored: it fails, saying the database is full, in
    words and an exit code (`SystemExit`), never a traceback."""
    with audit_failing(event):
        done = cli(*args, stdin=stdin)
    assert done.exit_code != 0 and "database or disk is full" in done.stderr, (args, done.stdout, done.stderr)
    assert isinstance(done.exception, SystemExit), (args, done.exception, done.stderr)
    return done


def succeeds(cli: Callable[..., Result], *args: str, stdin: str | None = None) -> Result:
    done = cli(*args, stdin=stdin)
    assert done.exit_code == 0, (args, done.stdout, done.stderr, done.exception)
    return done


def statuses(cli: Callable[..., Result]) -> dict[str, str]:
    """Every execution's status, by id."""
    return {e["id"]: e["status"] for e in json.loads(succeeds(cli, "execution", "list", "--json").stdout)}


def audit_log(cli: Callable[..., Result]) -> list[dict[str, Any]]:
    """The audit log as `squall audit export` gives it, oldest first."""
    return [json.loads(line) for line in succeeds(cli, "audit", "export").stdout.splitlines()]


#: A chain that asks a question: `squall run` leaves it paused on its inquiry.
_ASKS = "chain:\n  - name: ask\n    ref: core.ask\n    params:\n      schema:\n        type: object\n" \
        "        properties:\n          ok: {type: boolean, required: true}\n"


def test_an_execution_change_whose_audit_event_fails_is_not_stored(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run`, `execution cancel`, `execution re-run` and `inquiry respond` stored their change, then their
    `cli.*` event in a second commit: under a full disk the command failed (exit 3) for a change it had made
    (a run requested, a cancel, an answer), and the audit log never showed it; run again, it did it twice.
    The engine stores the event with the change now (`audit=`): a failed command changed nothing."""
    from tests.workflow_helpers import workflow_pack

    workflow_pack(home, {"asks": ("action-chain", "", _ASKS)})
    cli = in_process(home, monkeypatch)
    audit_fails(cli, "cli.execution", "run", "core.noop", "--async")
    assert statuses(cli) == {}
    queued = json.loads(succeeds(cli, "run", "core.noop", "--async", "--json").stdout)["id"]
    audit_fails(cli, "cli.execution.cancel", "execution", "cancel", queued)
    assert statuses(cli) == {queued: "requested"}
    succeeds(cli, "execution", "cancel", queued)
    audit_fails(cli, "cli.execution.rerun", "execution", "re-run", queued)
    assert statuses(cli) == {queued: "canceled"}
    paused = json.loads(cli("run", "wf.asks", "--json").stdout)
    assert paused["status"] == "paused", paused
    [inquiry] = json.loads(succeeds(cli, "inquiry", "list", "--json").stdout)
    audit_fails(cli, "cli.inquiry.respond", "inquiry", "respond", inquiry["id"], "--response", '{"ok": true}')
    assert [i["id"] for i in json.loads(succeeds(cli, "inquiry", "list", "--json").stdout)] == [inquiry["id"]]
    succeeds(cli, "inquiry", "respond", inquiry["id"], "--response", '{"ok": true}')
    again = json.loads(succeeds(cli, "execution", "re-run", queued, "--json").stdout)["id"]
    events = [(e["event"], e["target"]) for e in audit_log(cli) if e["event"] != "cli.execution"]
    assert events == [("cli.execution.cancel", queued), ("cli.inquiry.respond", inquiry["id"]),
                      ("cli.execution.rerun", again)]
    assert json.loads(succeeds(cli, "execution", "get", paused["id"], "--json").stdout)["status"] == "resuming"


#: An Orquesta workflow whose one task fails: `squall execution re-run --tasks fail` re-runs it in place.
_FAILS = "version: 1.0\ntasks:\n  fail:\n    action: core.local\n    input:\n      cmd: exit 1\n"


def test_a_workflow_rerun_in_place_whose_audit_event_fails_is_not_stored(home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`execution re-run --tasks` set the workflow `resuming` and conducted it, then wrote its
    `cli.execution.rerun` event apart: under a full disk the command failed for a re-run it had made (its task
    ran again), and the event was only logged. The event is stored in the transaction that resets the
    workflow now (`WorkflowService.rerun`'s `audit`): a failed command re-ran nothing."""
    from tests.workflow_helpers import workflow_pack

    workflow_pack(home, {"fails": ("orquesta", "", _FAILS)})
    cli = in_process(home, monkeypatch)
    failed = json.loads(cli("run", "wf.fails", "--json").stdout)
    assert failed["status"] == "failed", failed
    before = statuses(cli)
    audit_fails(cli, "cli.execution.rerun", "execution", "re-run", failed["id"], "--tasks", "fail")
    assert statuses(cli) == before  # still failed, its task not run again
    assert json.loads(succeeds(cli, "execution", "get", failed["id"], "--json").stdout)["log"] == failed["log"]
    again = json.loads(cli("execution", "re-run", failed["id"], "--tasks", "fail", "--json").stdout)
    assert again["id"] == failed["id"] and again["status"] == "failed"
    assert len(statuses(cli)) == len(before) + 1  # its task ran once more
    [event] = [e for e in audit_log(cli) if e["event"] == "cli.execution.rerun"]
    assert event["target"] == failed["id"]
    assert {k: event["detail"][k] for k in ("action", "of", "tasks")} == {
        "action": "wf.fails", "of": failed["id"], "tasks": ["fail"]}


@pytest.mark.postgres
def test_on_postgresql_a_workflow_rerun_in_place_whose_audit_event_is_refused_is_not_stored(
        home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL keeps a group's other writes when one statement is refused: the workflow's reset and its
    event share a savepoint there (`AuditEntry.together`), so an event refused alone resets nothing."""
    from tests.workflow_helpers import workflow_pack

    config = home / "config.yml"
    config.write_text(config.read_text().replace("sqlite:///data/squall.db", postgres_url))
    workflow_pack(home, {"fails": ("orquesta", "", _FAILS)})
    cli = in_process(home, monkeypatch)
    failed = json.loads(cli("run", "wf.fails", "--json").stdout)
    assert failed["status"] == "failed", failed
    before = statuses(cli)
    with audit_failing("cli.execution.rerun", refused=True):
        refused = cli("execution", "re-run", failed["id"], "--tasks", "fail")
    assert refused.exit_code != 0, refused.stdout
    assert statuses(cli) == before
    assert json.loads(succeeds(cli, "execution", "get", failed["id"], "--json").stdout)["log"] == failed["log"]


def test_a_key_change_whose_audit_event_fails_is_not_stored(home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`key set`, `key delete` and `key load` wrote the keys, then their `cli.key.*` event apart: under a full
    disk the command failed for keys it had written (or deleted). Each is one transaction with its event now."""
    cli = in_process(home, monkeypatch)
    audit_fails(cli, "cli.key.set", "key", "set", "region", "eu", "--encrypt")
    assert cli("key", "get", "region").exit_code == 2
    succeeds(cli, "key", "set", "region", "eu", "--encrypt")
    audit_fails(cli, "cli.key.delete", "key", "delete", "region")
    assert succeeds(cli, "key", "get", "region", "--decrypt").stdout.strip() == "eu"
    succeeds(cli, "key", "delete", "region")
    listed = tmp_path / "keys.json"
    listed.write_text(json.dumps([{"name": "a", "value": "1"}, {"name": "b", "value": "2", "secret": True}]))
    audit_fails(cli, "cli.key.load", "key", "load", str(listed))
    assert json.loads(succeeds(cli, "key", "list", "--json").stdout) == []
    succeeds(cli, "key", "load", str(listed))
    assert [k["name"] for k in json.loads(succeeds(cli, "key", "list", "--json").stdout)] == ["a", "b"]
    assert [(e["event"], e["target"], e["detail"]) for e in audit_log(cli)] == [
        ("cli.key.set", "region", {"scope": "system", "user": None, "secret": True, "ttl": None}),
        ("cli.key.delete", "region", {"scope": "system"}),
        ("cli.key.load", str(listed), {"count": 2, "scopes": ["system"]})]


def test_an_account_change_whose_audit_event_fails_is_not_stored(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`user create|passwd|logout|delete` and `apikey create|delete` stored the change, then their event with
    another connection: a failure between them left a user or a key nobody was audited for (an admin, an API
    key), and the command said it failed. Each change and its event are one transaction now."""
    cli = in_process(home, monkeypatch)
    password = "First1Passw0rd-long\n"
    audit_fails(cli, "cli.user.create", "user", "create", "zed", "--role", "admin", "--password-stdin",
                stdin=password)
    assert json.loads(succeeds(cli, "user", "list", "--json").stdout) == []
    succeeds(cli, "user", "create", "zed", "--role", "admin", "--password-stdin", stdin=password)
    for verb, extra, stdin in (("passwd", ("--password-stdin",), "Second2Passw0rd-long\n"), ("logout", (), None),
                               ("delete", (), None)):
        audit_fails(cli, f"cli.user.{verb}", "user", verb, "zed", *extra, stdin=stdin)
    [zed] = json.loads(succeeds(cli, "user", "list", "--json").stdout)
    assert zed["name"] == "zed" and zed["password_changed_at"] == zed["created_at"]
    audit_fails(cli, "cli.apikey.create", "apikey", "create", "ci-bot")
    assert json.loads(succeeds(cli, "apikey", "list", "--json").stdout) == []
    key = json.loads(succeeds(cli, "apikey", "create", "ci-bot", "--json").stdout)
    audit_fails(cli, "cli.apikey.delete", "apikey", "delete", key["id"])
    assert [k["id"] for k in json.loads(succeeds(cli, "apikey", "list", "--json").stdout)] == [key["id"]]
    assert [(e["event"], e["target"]) for e in audit_log(cli)] == [("cli.user.create", "zed"),
                                                                  ("cli.apikey.create", key["id"])]


def test_version_is_the_installed_distributions(home: Path) -> None:
    from importlib.metadata import version

    done = squall(home, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"squall {version('squall')}", done


def test_a_command_with_no_config_file_says_it_makes_a_new_database_here(tmp_path: Path) -> None:
    """`squall execution list` outside the checkout listed nothing and made `./data/` without a word: it says
    it found no config file and where its new database is, once (the next call uses that database)."""
    env = {key: value for key, value in os.environ.items() if key != "SQUALL_CONFIG"}
    first = subprocess.run([str(SQUALL), "execution", "list"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.startswith("note: no config file here") and str(tmp_path / "data" / "squall.db") in first.stderr
    again = subprocess.run([str(SQUALL), "execution", "list"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr
