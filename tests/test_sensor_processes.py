"""Sensor processes and what they start, trigger callbacks that use the datastore, and dispatching
with a trigger's ref (spec §6.4): real sensor processes under a real `SensorContainer`."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from tests.conftest import write
from tests.test_rules import make_pack, started
from tests.test_sensors import eventually, run_sensors

SPAWNER = '''
import subprocess
import time

from st2reactor.sensor.base import Sensor

PIDS = {pids!r}


class Spawner(Sensor):
    def setup(self):
        helper = subprocess.Popen(["sleep", "300"])  # inherits the sensor's stdout and stderr
        with open(PIDS, "a") as f:
            f.write("%d\\n" % helper.pid)

    def run(self):
        if {crash!r}:
            time.sleep(0.2)
            raise RuntimeError("poll failed")
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

DATASTORE_IN_CALLBACKS = '''
import time

from st2reactor.sensor.base import Sensor


class Watcher(Sensor):
    def setup(self):
        pass

    def run(self):
        while True:
            time.sleep(0.1)
            polls = int(self.sensor_service.get_value("polls") or 0)
            self.sensor_service.set_value("polls", str(polls + 1))

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        path = trigger["parameters"]["path"]
        offset = self.sensor_service.get_value("offset:" + path)
        self.sensor_service.set_value("added:" + path, "offset %s" % offset)

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        self.sensor_service.set_value("removed:" + trigger["parameters"]["path"], "yes")
'''

FILE_WATCH = '''
import time

from st2reactor.sensor.base import Sensor


class FileWatch(Sensor):  # the shape of StackStorm's linux FileWatchSensor
    def setup(self):
        self._trigger = None
        self._path = None

    def run(self):
        self.sensor_service.dispatch(trigger="demo.nosuch", payload={})
        while True:
            time.sleep(0.1)
            if self._trigger:
                self.sensor_service.dispatch(trigger=self._trigger, payload={"file_path": self._path, "line": "hi"})

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        self._path = trigger["parameters"]["file_path"]
        self._trigger = trigger.get("ref", None)
        if not self._trigger:
            raise Exception("Trigger %s did not contain a ref." % trigger)

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        self._trigger = None
'''


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting for its reaper is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def pids_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def spawner_pack(home: Path, *, crash: bool) -> Path:
    pack = make_pack(home, {})
    write(pack / "sensors" / "spawner.yaml", """
        class_name: Spawner
        entry_point: spawner.py
        trigger_types:
          - name: spawned
    """)
    pids = home / "helpers.pids"
    (pack / "sensors" / "spawner.py").write_text(SPAWNER.format(pids=str(pids), crash=crash))
    return pids


def kill_left(pids: list[int]) -> None:
    """The test's own helpers, should the code under test have left any."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def test_a_crashed_sensor_whose_helper_holds_its_output_is_restarted_and_its_helper_killed(home: Path) -> None:
    """The helper keeps the sensor's stdout open after the sensor died: the container still sees
    the sensor's exit, restarts it, and kills the helper with the sensor's process group."""
    pids = spawner_pack(home, crash=True)
    squall = await started(home)
    try:
        await run_sensors(squall)

        async def restarted() -> bool:
            return len(pids_in(pids)) >= 3

        assert await eventually(restarted), f"the crashed sensor was not restarted: helpers {pids_in(pids)}"
        first = pids_in(pids)[0]

        async def first_helper_gone() -> bool:
            return not alive(first)

        assert await eventually(first_helper_gone), "the helper of the first, crashed run was left running"
        exits = await squall.triggers.list(trigger="core.st2.sensor.process_exit")
        assert any(e["payload"]["object"]["ref"] == "demo.Spawner" for e in exits)
    finally:
        await squall.close()
        left = [pid for pid in pids_in(pids) if alive(pid)]
        kill_left(left)
    assert left == [], "helpers of the sensor outlived the service's stop"


async def test_a_sensor_helper_does_not_outlive_the_stop_of_its_sensor(home: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The sensor leaves when asked; the helper holding its output does not make it look hung (it
    is not reported, nor killed, as one that would not stop), and goes with the sensor's group."""
    pids = spawner_pack(home, crash=False)
    caplog.set_level(logging.WARNING, logger="engine.sensors")
    squall = await started(home)
    try:
        await run_sensors(squall)

        async def helper_started() -> list[int]:
            return pids_in(pids)

        (helper,) = await eventually(helper_started)
        assert alive(helper)
    finally:
        await squall.close()
    left = [pid for pid in pids_in(pids) if alive(pid)]
    kill_left(left)
    assert left == [], "the sensor's helper outlived the stop of the sensor"
    assert "did not stop" not in caplog.text, "a sensor that left when asked was reported as hung"


async def _kv(squall: Squall, name: str) -> Any:
    record = await squall.db(squall.datastore.get, f"demo.Watcher:{name}")
    return record["value"] if record else None


async def test_trigger_callbacks_may_call_the_datastore(home: Path) -> None:
    """add_trigger and remove_trigger, called while the sensor runs, read and write the datastore;
    the sensor's own datastore calls go on being answered."""
    pack = make_pack(home, {})
    write(pack / "sensors" / "watcher.yaml", """
        class_name: Watcher
        entry_point: watcher.py
        trigger_types:
          - name: watched
            parameters_schema: {type: object, properties: {path: {type: string}}}
    """)
    (pack / "sensors" / "watcher.py").write_text(DATASTORE_IN_CALLBACKS)
    squall = await started(home)
    try:
        await run_sensors(squall)
        assert await eventually(lambda: _kv(squall, "polls")), "the sensor never polled"
        rule = write(pack / "rules" / "on_watched.yaml", """
            name: on_watched
            pack: demo
            enabled: true
            trigger: {type: demo.watched, parameters: {path: /var/log/a}}
            action: {ref: demo.take}
        """)
        squall.reload()
        await squall.sync_sensors()
        assert await eventually(lambda: _kv(squall, "added:/var/log/a")) == "offset None"
        polls = int(await _kv(squall, "polls"))

        async def polling_on() -> bool:
            return int(await _kv(squall, "polls")) > polls

        assert await eventually(polling_on), "the sensor's datastore calls stopped being answered"
        rule.unlink()
        squall.reload()
        await squall.sync_sensors()
        assert await eventually(lambda: _kv(squall, "removed:/var/log/a")) == "yes"
    finally:
        await squall.close()


async def test_a_sensor_dispatches_with_its_triggers_ref(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """As StackStorm's FileWatchSensor: `dispatch(trigger=trigger["ref"])` fires the rules of that
    trigger (its type and parameters); a name that is neither a type nor a trigger is logged."""
    pack = make_pack(home, {"on_line": """
        name: on_line
        pack: demo
        enabled: true
        trigger: {type: demo.file_watch.line, parameters: {file_path: /var/log/app.log}}
        action: {ref: demo.take, parameters: {message: "{{ trigger.line }}"}}
    """})
    write(pack / "sensors" / "fw.yaml", """
        class_name: FileWatch
        entry_point: fw.py
        trigger_types:
          - name: file_watch.line
            parameters_schema: {type: object, properties: {file_path: {type: string}}}
            payload_schema: {type: object, properties: {file_path: {type: string}, line: {type: string}}}
    """)
    (pack / "sensors" / "fw.py").write_text(FILE_WATCH)
    caplog.set_level(logging.WARNING, logger="engine.sensors")
    squall = await started(home)
    try:
        await run_sensors(squall)

        async def enforced() -> list[dict[str, Any]]:
            await squall.rules.settle()
            return await squall.rules.enforcements(rule="demo.on_line")

        enforcements = await eventually(enforced)
        assert enforcements, "the rule never fired for instances dispatched with the trigger's ref"
        instance = await squall.triggers.get(enforcements[0]["trigger_instance_id"])
        assert instance["trigger"] == "demo.file_watch.line"
        assert instance["trigger_parameters"] == {"file_path": "/var/log/app.log"}
        assert instance["payload"] == {"file_path": "/var/log/app.log", "line": "hi"}
    finally:
        await squall.close()
    assert any('unknown trigger "demo.nosuch"' in r.getMessage() for r in caplog.records), caplog.text
