"""`squall sensor list | get`: the sensors of the loaded packs, read from the pack files, and their state,
restarts and last exit asked of the running `squall serve` (the CLI run in-process, a real serve)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, write
from tests.test_cli import SQUALL, like_a_process

TICK = '''
import time

from st2reactor.sensor.base import Sensor


class Tick(Sensor):
    def setup(self):
        pass

    def run(self):
        while True:
            time.sleep(1)

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''

CRASH = TICK.replace("class Tick", "class Crash").replace(
    "    def setup(self):\n        pass", '    def setup(self):\n        raise RuntimeError("the broker refused us")')


def _sensor_pack(home: Path) -> None:
    """Pack `demo`: `Tick` runs, `Crash` fails in its setup() every time, `Idle` is disabled, and `Tick`'s
    description holds an ESC sequence a table must not pass to the terminal."""
    pack = home / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\nversion: 0.1.0\nauthor: tests\n")
    idle = TICK.replace("class Tick", "class Idle")
    for name, code, extra in (("Tick", TICK, 'description: "ticks \\e[2J along"\npoll_interval: 5\n'),
                              ("Crash", CRASH, ""), ("Idle", idle, "enabled: false\n")):
        lower = name.lower()
        (pack / "sensors").mkdir(parents=True, exist_ok=True)
        (pack / "sensors" / f"{lower}.yaml").write_text(
            f"class_name: {name}\nentry_point: {lower}.py\ntrigger_types:\n  - name: {lower}\n{extra}")
        (pack / "sensors" / f"{lower}.py").write_text(code)


def _listed(squall: Callable[..., Any], *args: str) -> tuple[dict[str, dict[str, Any]], str]:
    done = squall("sensor", "list", *args, "--json")
    assert done.returncode == 0, done.stderr
    return {record["ref"]: record for record in json.loads(done.stdout)}, done.stderr


def test_sensor_list_and_get_read_the_pack_files_and_say_the_state_is_unknown_without_a_serve(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`squall sensor list` was "No such command", and `pack list` shows no sensors. Without a `squall serve`
    the sensors are listed all the same, `state` null, and one stderr line says why; exit 0."""
    squall = like_a_process(home, monkeypatch)
    _sensor_pack(home)
    listed, said = _listed(squall)
    assert list(listed) == ["demo.Crash", "demo.Idle", "demo.Tick"]
    tick = listed["demo.Tick"]
    assert tick["pack"] == "demo" and tick["class_name"] == "Tick" and tick["enabled"] is True
    assert tick["trigger_types"] == ["demo.tick"] and tick["entry_point"] == "sensors.tick.Tick"
    assert tick["poll_interval"] == 5 and tick["state"] is None
    assert listed["demo.Idle"]["enabled"] is False
    lines = said.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("state unknown: no squall serve answers on"), said

    assert list(_listed(squall, "--pack", "demo")[0]) == list(listed)
    missing = squall("sensor", "list", "--pack", "nope")
    assert missing.returncode == 2 and "pack 'nope' is not loaded" in missing.stderr

    table = squall("sensor", "list")
    assert table.returncode == 0 and "demo.Tick" in table.stdout and "unknown" in table.stdout
    got = squall("sensor", "get", "demo.Tick")
    assert got.returncode == 0, got.stderr
    assert "\x1b" not in got.stdout and "\\x1b[2J" in got.stdout  # the pack's ESC shown, not sent

    one = squall("sensor", "get", "demo.Tick", "--json")
    assert one.returncode == 0 and json.loads(one.stdout) == tick
    assert one.stderr.startswith("state unknown: no squall serve answers on")

    typo = squall("sensor", "get", "demo.Tik")
    assert typo.returncode == 2 and "sensor 'demo.Tik' is not loaded" in typo.stderr and "demo.Tick" in typo.stderr


def test_sensor_list_and_get_show_the_state_restarts_and_last_exit_the_running_serve_knows(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `squall serve` running on this config's API, its state of each sensor is shown; `sensor get` of a
    crash-looping sensor says more than "failed": how often it restarted, what its last life died of, when it
    starts again (`GET /api/v1/sensortypes/{ref}`, from `SensorContainer.health`)."""
    _sensor_pack(home)
    config = home / "config.yml"
    config.write_text(config.read_text().replace("port: ", f"port: {free_port()}  # was ", 1))
    squall = like_a_process(home, monkeypatch)  # the commands in this process, asking the serve's API
    server = subprocess.Popen([str(SQUALL), "-c", str(config), "serve"], cwd=home, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wanted = {"demo.Crash": "failed", "demo.Idle": "stopped", "demo.Tick": "running"}
        deadline = time.monotonic() + 90
        while True:
            listed, said = _listed(squall)
            states = {ref: record["state"] for ref, record in listed.items()}
            if states == wanted or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert states == wanted, (states, said)
        assert said == ""  # the state is known: nothing to say

        done = squall("sensor", "get", "demo.Crash", "--json")
        assert done.returncode == 0 and done.stderr == "", done.stderr
        crash = json.loads(done.stdout)
        assert crash["state"] in ("failed", "starting") and crash["restart_count"] >= 1, crash
        assert crash["last_exit"].startswith("exited with status"), crash
        assert crash["last_exit"].endswith("RuntimeError: the broker refused us"), crash
        tick = json.loads(squall("sensor", "get", "demo.Tick", "--json").stdout)
        assert tick["state"] == "running" and "restart_count" not in tick  # never restarted

        table = squall("sensor", "get", "demo.Crash")
        assert table.returncode == 0 and "restarts" in table.stdout and "the broker refused us" in table.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
