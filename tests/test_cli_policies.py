"""Action policies hold for runs the CLI starts while `squall serve` runs on the same database: a plain `squall
run`'s retry is run by the server's poll, and a `re-run` of a held action, or a `run` of a workflow calling one,
is handed to the server, which counts it with its own runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from engine.policies import retry_id
from tests.conftest import serving, write
from tests.test_cli import SQUALL, _cli_poll, _held_pack, in_process, squall


def _cli(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), *args], cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _new_run(cli: Callable[..., Result], action: str, known: set[str], waiter: subprocess.Popen[str]) -> dict:
    """The execution of `action` not among `known`, once the command `waiter` stored it."""
    deadline = time.monotonic() + 20
    while True:
        rows = json.loads(cli("execution", "list", "--action", action, "--json").stdout)
        if fresh := [row for row in rows if row["id"] not in known]:
            return fresh[0]
        assert waiter.poll() is None and time.monotonic() < deadline, waiter.communicate()
        time.sleep(0.2)


def _finish(waiter: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        output, errors = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    return waiter.returncode, output, errors


def _waits_for_the_servers_run(home: Path, cli: Callable[..., Result], known: set[str],
                               *command: str) -> tuple[dict, int, str, str]:
    """The server runs `pol.slow` (its `gate-1` closed); then `command`'s run of `pol.slow`, none of `known`,
    waits `delayed` for it: counted with the server's runs. Both gates opened, that run and the command's exit
    code, output and errors."""
    first = json.loads(squall(home, "run", "pol.slow", f"gate={home / 'gate-1'}", "--async", "--json").stdout)
    _cli_poll(cli, first["id"], lambda r: r["status"] == "running")
    waiter = _cli(home, *command)
    try:
        run = _new_run(cli, "pol.slow", {*known, first["id"]}, waiter)
        _cli_poll(cli, run["id"], lambda r: r["status"] == "delayed")
    finally:
        (home / "gate-1").touch()
        (home / "gate-2").touch()
        code, output, errors = _finish(waiter)
    return run, code, output, errors


def test_the_retry_of_a_plain_run_is_run_by_the_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain `squall run` fails, and its retry policy stores the retry `delayed` for 2 s: only the command's
    timer would hand it on, and the command has exited. The server's poll runs it once due, and the command
    said so."""
    pack = home / "packs" / "pol"
    write(pack / "pack.yaml", "ref: pol\nname: pol\nversion: 0.1.0\n")
    write(pack / "actions" / "flaky.yaml", """
        name: flaky
        runner_type: local-shell-cmd
        parameters:
          marker: {type: string}
          cmd: {default: "if [ -f {{marker}} ]; then echo again; else touch {{marker}}; exit 3; fi", immutable: true}
    """)
    write(pack / "policies" / "retry.yaml", "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\n"
                                            "parameters: {retry_on: failure, max_retry_count: 1, delay: 2}\n")
    with serving(home) as server:
        done = squall(home, "run", "pol.flaky", f"marker={home / 'marker'}", "--json")
        assert done.returncode == 1, done.stderr
        failed = json.loads(done.stdout)
        assert failed["status"] == "failed" and failed["runner_info"]["pid"] != server.pid
        retry = retry_id(failed["id"])
        assert f"queued retry {retry}" in done.stderr and "`squall serve` runs it" in done.stderr, done.stderr

        record = _cli_poll(in_process(home, monkeypatch), retry, lambda r: r["status"] in ("succeeded", "failed"),
                       seconds=30)
        assert record["status"] == "succeeded" and record["result"]["stdout"] == "again"
        assert record["runner_info"]["pid"] == server.pid
        assert record["context"]["policies"]["retry"]["retry_count"] == 1


def _flaky_pack(home: Path, max_retry_count: int) -> None:
    """`pol.flaky` passes on its `passes_on`th run (counted in its `marker` file); its retry policy retries a
    failure at once (no `delay`)."""
    pack = home / "packs" / "pol"
    write(pack / "pack.yaml", "ref: pol\nname: pol\nversion: 0.1.0\n")
    write(pack / "actions" / "flaky.yaml", """
        name: flaky
        runner_type: local-shell-cmd
        parameters:
          marker: {type: string}
          passes_on: {type: integer}
          cmd: {default: "echo run >> {{marker}}; [ $(wc -l < {{marker}}) -ge {{passes_on}} ]", immutable: true}
    """)
    write(pack / "policies" / "retry.yaml", "name: retry\nresource_ref: pol.flaky\npolicy_type: action.retry\n"
                                            f"parameters: {{retry_on: failure, max_retry_count: {max_retry_count}}}\n")


def _retried_here(failed: str, retry: str, count: int) -> str:
    """What `squall run` says on stderr when `failed`'s retry policy runs `retry` at once in the command."""
    return f"{failed} failed; its retry policy pol.retry retries it at once, in this command: retry {count} is {retry}."


@pytest.mark.parametrize("passes_on", [3, 9])
def test_a_plain_run_waits_for_the_retries_its_policy_runs_at_once(home: Path, passes_on: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry policy without a delay requests the retry at once, in the command's own process, which ran it:
    the command exited after the first failure, and its retry was cut short (`abandoned`). It now waits for
    each retry in turn, up to `max_retry_count`, says which retried which, and shows the last attempt, whose
    status is the exit code's: 0 when the third attempt passes, 1 when every one failed."""
    _flaky_pack(home, max_retry_count=2)
    cli = in_process(home, monkeypatch)
    done = cli("run", "pol.flaky", f"marker={home / 'marker'}", f"passes_on={passes_on}", "--json")
    last = json.loads(done.stdout)  # one document: the last attempt
    assert done.exit_code == (0 if passes_on == 3 else 1), done.stderr
    assert last["status"] == ("succeeded" if passes_on == 3 else "failed"), last
    assert last["context"]["policies"]["retry"] == {"retry_count": 2, "applied_policy": "pol.retry"}

    first = last["context"]["re-run"]["ref"]
    original = json.loads(cli("execution", "get", first, "--json").stdout)["context"]["re-run"]["ref"]
    assert (first, last["id"]) == (retry_id(original), retry_id(first))
    assert _retried_here(original, first, 1) in done.stderr and _retried_here(first, last["id"], 2) in done.stderr
    rows = json.loads(cli("execution", "list", "--action", "pol.flaky", "--json").stdout)
    assert [row["status"] for row in rows] == [last["status"], "failed", "failed"], rows  # none cut short
    assert (home / "marker").read_text() == "run\n" * 3


def test_a_rerun_waits_for_the_retry_its_policy_runs_at_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall execution re-run` runs in the command's process too: its failure's retry is waited for, and
    the exit code is the retry's."""
    _flaky_pack(home, max_retry_count=1)
    cli = in_process(home, monkeypatch)
    done = cli("run", "pol.flaky", f"marker={home / 'marker'}", "passes_on=4", "--json")
    assert done.exit_code == 1, done.stderr  # the run and its one retry failed
    original = json.loads(done.stdout)["context"]["re-run"]["ref"]

    again = cli("execution", "re-run", original, "--json")
    last = json.loads(again.stdout)
    assert again.exit_code == 0 and last["status"] == "succeeded", again.stderr
    rerun = last["context"]["re-run"]["ref"]
    assert last["id"] == retry_id(rerun) and _retried_here(rerun, last["id"], 1) in again.stderr, again.stderr
    assert json.loads(cli("execution", "get", rerun, "--json").stdout)["context"]["re-run"] == {
        "ref": original}


def test_a_rerun_of_a_held_action_is_counted_by_the_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall execution re-run` of an action a concurrency policy holds (threshold 1), while the server runs
    one: the server runs the re-run after its own, as `squall run` hands it a held action."""
    _held_pack(home)
    (home / "gate-alone").touch()
    cli = in_process(home, monkeypatch)
    ran = cli("run", "pol.slow", f"gate={home / 'gate-alone'}", "--json")
    code, alone = ran.exit_code, json.loads(ran.stdout)
    assert code == 0
    with serving(home) as server:
        again, code, output, errors = _waits_for_the_servers_run(
            home, cli, {alone["id"]}, "execution", "re-run", alone["id"], f"gate={home / 'gate-2'}", "--json")
        assert code == 0, errors
        assert "held by a concurrency policy and `squall serve`" in errors
        done = json.loads(output)
        assert done["id"] == again["id"] and done["result"]["stdout"] == "through"
        assert done["runner_info"]["pid"] == server.pid
        assert done["context"]["re-run"] == {"ref": alone["id"]}


def test_a_workflow_calling_a_held_action_is_run_by_the_server(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall run` of an ActionChain whose task calls an action a concurrency policy holds: the server runs
    the workflow, and its task waits `delayed` while the server's own run of that action holds the slot."""
    _held_pack(home)
    pack = home / "packs" / "pol"
    write(pack / "actions" / "flow.yaml", """
        name: flow
        runner_type: action-chain
        entry_point: workflows/flow.yaml
        parameters:
          gate: {type: string, required: true}
    """)
    write(pack / "actions" / "workflows" / "flow.yaml", """
        chain:
          - name: one
            ref: pol.slow
            params: {gate: "{{ gate }}"}
    """)
    with serving(home) as server:
        cli = in_process(home, monkeypatch)
        task, code, output, errors = _waits_for_the_servers_run(
            home, cli, set(), "run", "pol.flow", f"gate={home / 'gate-2'}", "--json")
        assert code == 0, errors
        assert "pol.flow calls pol.slow, held by a concurrency policy," in errors
        done = json.loads(output)
        assert done["action"] == "pol.flow" and done["runner_info"]["pid"] == server.pid
        ran = json.loads(cli("execution", "get", task["id"], "--json").stdout)
        assert ran["status"] == "succeeded" and ran["runner_info"]["pid"] == server.pid

