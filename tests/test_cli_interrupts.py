"""A stop signal against what a command already stored, and settings only starting Squall reads: a Ctrl-C during
`squall key load` rolls the whole load back, one after a write committed does not say `interrupted`, and a bad
`audit.sinks` or `metrics.statsd` is one line and exit 2 from every command that starts Squall."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import like_a_process

SQUALL = Path(sys.executable).parent / "squall"


def squall(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), *args], capture_output=True, text=True,
                          timeout=120, cwd=home)


def test_ctrl_c_during_key_load_writes_nothing_and_audits_nothing(home: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The load is one transaction: a Ctrl-C at its first progress line (a wrong file noticed) leaves every key
    as it was and no `cli.key.load` event. The write ran to its end, every key overwritten and audited, while
    the command said `interrupted`."""
    count = 10_000
    (home / "good.json").write_text(json.dumps([{"name": f"k{i:05d}", "value": "prod"} for i in range(count)]))
    (home / "wrong.json").write_text(json.dumps([{"name": f"k{i:05d}", "value": "WRONG"} for i in range(count)]))
    cli = like_a_process(home, monkeypatch)
    assert cli("key", "load", "good.json").returncode == 0
    loader = subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "key", "load", "wrong.json"], cwd=home,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert loader.stderr is not None
        for line in loader.stderr:
            if f"/{count}" in line:  # the first progress line: the write is under way
                loader.send_signal(signal.SIGINT)
                break
        output, errors = loader.communicate(timeout=120)
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.wait()
    assert loader.returncode == 128 + signal.SIGINT, errors
    assert output == "" and errors.strip().splitlines()[-1] == "interrupted", (output, errors)
    keys = json.loads(cli("key", "list", "--json").stdout)
    assert len(keys) == count and {key["value"] for key in keys} == {"prod"}
    events = [json.loads(line) for line in cli("audit", "export").stdout.splitlines()]
    assert [event["target"] for event in events if event["event"] == "cli.key.load"] == ["good.json"]


def test_a_stop_while_the_load_commits_on_a_thread_waits_for_its_end_and_says_what_it_did() -> None:
    """The command's cancel does not stop a write running on the database thread: the command waits for it. One
    that committed is the load done (no CancelledError: `loaded N keys`, not `interrupted`); one that rolled
    back at the stop goes on as the stop."""
    from bot.cli.keys import _WriteStopped, _written

    async def stopped_meanwhile(outcome: BaseException | None) -> str:
        loop = asyncio.get_running_loop()
        write: asyncio.Future[None] = loop.create_future()
        waiting = asyncio.ensure_future(_written(write))
        await asyncio.sleep(0)
        waiting.cancel()  # the stop signal, while the write still runs
        await asyncio.sleep(0)
        if outcome is None:
            write.set_result(None)
        else:
            write.set_exception(outcome)
        try:
            await waiting
        except asyncio.CancelledError:
            return "cancelled"
        return "done"

    assert asyncio.run(stopped_meanwhile(None)) == "done"
    assert asyncio.run(stopped_meanwhile(_WriteStopped())) == "cancelled"


def test_a_load_rolled_back_before_the_cancel_came_waits_for_the_cancel() -> None:
    """On SQLite the write holds the loop, so it rolls back (`_WriteStopped`) before the loop cancels the
    command: that is not an error of the load, and the command waits for the stop's cancel."""
    from bot.cli.keys import _WriteStopped, _written

    async def rolled_back_first() -> str:
        write: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        write.set_exception(_WriteStopped())
        waiting = asyncio.ensure_future(_written(write))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # neither an error nor `loaded`: waiting for the stop
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return "cancelled"
        return "done"

    assert asyncio.run(rolled_back_first()) == "cancelled"


def test_a_stop_after_the_work_is_done_lets_what_follows_finish() -> None:
    """`carried_through`: closing Squall (and a key write's triggers) after the change is stored runs to its end
    when a stop signal cancels the command meanwhile, and the command goes on with its outcome."""
    from bot.cli.common import carried_through

    async def closing() -> str:
        await asyncio.sleep(0.05)
        return "closed"

    async def command() -> tuple[str, str]:
        outer = asyncio.ensure_future(carried_through(closing()))
        await asyncio.sleep(0)
        outer.cancel()
        return "returned", await outer

    assert asyncio.run(command()) == ("returned", "closed")


@pytest.mark.parametrize("setting", ["audit:\n  sinks: [{type: flie}]\n",
                                     "metrics:\n  statsd: {host: 127.0.0.1, port: x}\n"],
                         ids=["audit.sinks", "metrics.statsd"])
@pytest.mark.parametrize("args", [("run", "core.noop"), ("key", "set", "a", "b"),
                                  ("trigger", "emit", "core.st2.webhook")], ids=" ".join)
def test_a_bad_setting_read_at_start_is_one_line_and_exit_2(home: Path, setting: str, args: tuple[str, ...],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit.sinks` and `metrics.statsd` are checked as Squall starts: a mistake in them was a traceback and
    exit 1 (for `squall run`, "the action failed"), where `squall serve` says it in one line and exits 2."""
    config = home / "config.yml"
    config.write_text(config.read_text() + setting)
    done = like_a_process(home, monkeypatch)(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(config) in lines[0], done.stderr
    assert ("audit.sinks[0].type" if "audit" in setting else "metrics.statsd.port") in lines[0]


def test_a_bad_audit_sink_stops_a_write_made_without_starting_squall(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`apikey create` stores its key and event without starting Squall (`changed_and_audited`), its sinks read
    first: a bad one is one line and exit 2, and no key is made."""
    config = home / "config.yml"
    config.write_text(config.read_text() + "audit:\n  sinks: [{type: flie}]\n")
    cli = like_a_process(home, monkeypatch)
    done = cli("apikey", "create", "ci")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "audit.sinks[0].type" in done.stderr and done.stdout == ""
    config.write_text(config.read_text().replace("type: flie", "type: file"))
    assert json.loads(cli("apikey", "list", "--json").stdout) == []


def test_worker_without_a_config_file_names_the_built_in_defaults(tmp_path: Path) -> None:
    """With no config file the local executor is the one configured, which `squall worker` refuses: its line
    named the config `None`."""
    env = {key: value for key, value in os.environ.items() if key != "SQUALL_CONFIG"}
    done = subprocess.run([str(SQUALL), "worker"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert "None" not in done.stderr
    assert done.stderr.startswith("error: the built-in defaults (no config file): squall worker runs"), done.stderr
