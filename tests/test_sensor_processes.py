"""Sensor processes and what they start, trigger callbacks that use the datastore, and dispatching
with a trigger's ref (spec §6.4): real sensor processes under a real `SensorContainer`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.sensors import SensorContainer
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
        if {escape!r}:  # helpers outside the sensor's process group: one in a session of its own, one daemonised
            helper = subprocess.Popen(["sleep", "300"], start_new_session=True)
            subprocess.run(["sh", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $! >> " + PIDS], check=True)
        else:
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


def spawner_pack(home: Path, *, crash: bool, escape: bool = False) -> Path:
    pack = make_pack(home, {})
    write(pack / "sensors" / "spawner.yaml", """
        class_name: Spawner
        entry_point: spawner.py
        trigger_types:
          - name: spawned
    """)
    pids = home / "helpers.pids"
    (pack / "sensors" / "spawner.py").write_text(SPAWNER.format(pids=str(pids), crash=crash, escape=escape))
    return pids


def kill_left(pids: list[int]) -> None:
    """The test's own helpers, should the code under test have left any."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("escape", [False, True], ids=["in-its-group", "left-its-group"])
async def test_a_crashed_sensor_whose_helper_holds_its_output_is_restarted_and_its_helper_killed(
        home: Path, escape: bool) -> None:
    """The helper keeps the sensor's stdout open after the sensor died: the container still sees
    the sensor's exit, restarts it, and kills the helper with the sensor's process group. Helpers that
    left the group (a session of their own, a daemon forked twice) go too: the sensor process is
    their subreaper and kills what is left as it ends."""
    pids = spawner_pack(home, crash=True, escape=escape)
    per_run = 2 if escape else 1
    squall = await started(home)
    try:
        await run_sensors(squall)

        async def restarted() -> bool:
            return len(pids_in(pids)) >= 3 * per_run

        assert await eventually(restarted), f"the crashed sensor was not restarted: helpers {pids_in(pids)}"
        first = pids_in(pids)[:per_run]

        async def first_helper_gone() -> bool:
            return not any(alive(pid) for pid in first)

        assert await eventually(first_helper_gone), "the helper of the first, crashed run was left running"
        exits = await squall.triggers.list(trigger="core.st2.sensor.process_exit")
        assert any(e["payload"]["object"]["ref"] == "demo.Spawner" for e in exits)
    finally:
        await squall.close()
        left = [pid for pid in pids_in(pids) if alive(pid)]
        kill_left(left)
    assert left == [], "helpers of the sensor outlived the service's stop"


@pytest.mark.parametrize("escape", [False, True], ids=["in-its-group", "left-its-group"])
async def test_a_sensor_helper_does_not_outlive_the_stop_of_its_sensor(home: Path, caplog: pytest.LogCaptureFixture,
                                                                       escape: bool) -> None:
    """The sensor leaves when asked; the helper holding its output does not make it look hung (it
    is not reported, nor killed, as one that would not stop), and goes with the sensor's group.
    Helpers that left the group (`setsid`, `start_new_session`, a daemon) go as well."""
    pids = spawner_pack(home, crash=False, escape=escape)
    caplog.set_level(logging.WARNING, logger="engine.sensors")
    squall = await started(home)
    try:
        await run_sensors(squall)

        async def helpers_started() -> list[int]:
            return pids_in(pids) if len(pids_in(pids)) == (2 if escape else 1) else []

        helpers = await eventually(helpers_started)
        assert all(alive(helper) for helper in helpers)
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


# -- stopping: nothing dispatched is lost, nothing started is left, stubborn sensors stop together ----

FLUSHER = '''
import time

from st2reactor.sensor.base import Sensor


class Flusher(Sensor):
    def setup(self):
        pass

    def run(self):
        self.sensor_service.dispatch("demo.flusher", {{"phase": "run"}})
        {after_run}

    def cleanup(self):  # StackStorm's wrapper runs it on SIGTERM; what it dispatches is published
        for i in range({count}):
            self.sensor_service.dispatch("demo.flusher", {{"phase": "cleanup", "i": i}})

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''

BURST = '''
from st2reactor.sensor.base import Sensor


class Burst(Sensor):
    def setup(self):
        pass

    def run(self):
        for i in range({count}):
            self.sensor_service.dispatch("demo.burst", {{"i": i}})
        raise RuntimeError("poll failed")

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''

STUBBORN = '''
import os
import re
import signal
import time

from st2reactor.sensor.base import Sensor


def _note(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (text + "\\n").encode())
    os.close(fd)


class {name}(Sensor):  # ignores SIGTERM, noting that it got it: only SIGKILL ends it
    def setup(self):
        signal.signal(signal.SIGTERM, lambda *_: _note({terms!r}, "{name}"))
        _note({ready!r}, "{name} %d" % os.getpid())

    def run(self):
        while True:
            time.sleep(0.05)

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''


def add_sensor(pack: Path, class_name: str, code: str) -> None:
    """A sensor `class_name` with one trigger type of its own, `demo.<class_name lowercased>`."""
    name = class_name.lower()
    write(pack / "sensors" / f"{name}.yaml", f"""
        class_name: {class_name}
        entry_point: {name}.py
        trigger_types:
          - name: {name}
    """)
    (pack / "sensors" / f"{name}.py").write_text(code)


def sensor_processes() -> list[int]:
    """This test process's live sensor processes (its children running the sensor wrapper)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if int(ppid) == os.getpid() and state not in ("Z", "X") and b"squall_sensor.py" in command:
            found.append(int(entry))
    return found


def sensors_for(squall: Squall, **timings: float) -> None:
    squall.sensors = SensorContainer(squall.triggers.dispatch, squall.datastore_call, squall.config.virtualenvs_path,
                                     **{"backoff": 0.1, "stable_after": 30, "stop_timeout": 0.5, **timings})


async def test_what_a_sensor_dispatches_in_cleanup_when_stopped_is_stored(home: Path) -> None:
    """Stopping a sensor (serve's end, a reload that changes it, the lead lost) runs its cleanup();
    every instance it dispatches there is stored: its supervisor reads the pipe to the end."""
    count = 300
    add_sensor(make_pack(home, {}), "Flusher", FLUSHER.format(count=count, after_run="time.sleep(300)"))
    squall = await started(home)
    try:
        sensors_for(squall, stop_timeout=30)
        await squall.sync_sensors()

        async def ran() -> list[dict[str, Any]]:
            return await squall.triggers.list(trigger="demo.flusher")

        assert await eventually(ran), "the sensor never dispatched"
        await squall.sensors.stop()
        stored = [i for i in await squall.triggers.list(trigger="demo.flusher", limit=10 * count)
                  if i["payload"]["phase"] == "cleanup"]
        assert sorted(i["payload"]["i"] for i in stored) == list(range(count))
    finally:
        await squall.close()


async def test_what_a_sensor_dispatched_before_it_crashed_is_stored_however_long_that_takes(home: Path) -> None:
    """A sensor that dispatches a burst and dies: each instance is handled after the exit, even
    when that takes much longer than `drain_timeout` (which is for a pipe that makes no progress)."""
    count = 5000
    add_sensor(make_pack(home, {}), "Burst", BURST.format(count=count))
    squall = await started(home)
    try:
        sensors_for(squall, backoff=600, drain_timeout=0.5)  # no restart within the test

        async def exited() -> list[dict[str, Any]]:
            return await squall.triggers.list(trigger="core.st2.sensor.process_exit")

        await squall.sync_sensors()
        assert await eventually(exited, 120), "the sensor's exit was never recorded"
        stored = await squall.triggers.list(trigger="demo.burst", limit=10 * count)
        assert sorted(i["payload"]["i"] for i in stored) == list(range(count))
    finally:
        await squall.close()


FLOOD = '''
import os
import re
import time

from st2reactor.sensor.base import Sensor


class Flood(Sensor):  # a poller's first catch-up: a burst of dispatches, counted as each returns
    def setup(self):
        self.marker = os.open({marker!r}, os.O_WRONLY | os.O_CREAT)

    def run(self):
        for i in range({count}):
            self.sensor_service.dispatch("demo.flood", {{"i": i, "pad": "x" * 200}})
            os.pwrite(self.marker, b"%10d" % (i + 1), 0)
        self.sensor_service.dispatch("demo.flood", {{"i": {count}, "pad": "y" * {big}}})
        os.pwrite(self.marker, b"%10d" % ({count} + 1), 0)
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
#: The instances of FLOOD's burst; the last one's payload is larger than the message pipe's read buffer.
FLOOD_COUNT = 10_000
FLOOD_BIG = 1024 * 1024


def returned(marker: Path) -> int:
    """How many of its dispatch() calls the FLOOD sensor has seen return."""
    text = marker.read_bytes().strip() if marker.exists() else b""
    return int(text or 0)


async def settled(marker: Path, timeout: float = 60) -> int:
    """FLOOD's count once it has not moved for a second (its dispatch() blocked, or its burst done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = -1, loop.time()
    while loop.time() < deadline:
        now = returned(marker)
        if now != last:
            last, since = now, loop.time()
        elif now > 0 and loop.time() - since >= 1.0:
            break
        await asyncio.sleep(0.05)
    return last


async def flood_held(home: Path, **timings: float) -> tuple[Squall, asyncio.Event, Path]:
    """serve with the FLOOD sensor running, every `demo.flood` instance's store held until the event is set."""
    marker = home / "returned"
    add_sensor(make_pack(home, {}), "Flood", FLOOD.format(marker=str(marker), count=FLOOD_COUNT, big=FLOOD_BIG))
    squall = await started(home)
    gate = asyncio.Event()

    async def held(trigger_ref: str, payload: Any, **kwargs: Any) -> Any:
        if trigger_ref == "demo.flood":
            await gate.wait()
        return await squall.triggers.dispatch(trigger_ref, payload, **kwargs)

    squall.sensors = SensorContainer(held, squall.datastore_call, squall.config.virtualenvs_path,
                                     **{"backoff": 0.1, "stable_after": 30, "stop_timeout": 10, **timings})
    await squall.sync_sensors()
    return squall, gate, marker


async def flood_stored(squall: Squall) -> list[int]:
    """The `i` of every stored `demo.flood` instance, in order; the large last one checked whole."""
    stored = await squall.triggers.list(trigger="demo.flood", limit=10 * FLOOD_COUNT)
    for instance in stored:
        if instance["payload"]["i"] == FLOOD_COUNT:
            assert instance["payload"]["pad"] == "y" * FLOOD_BIG, "the large message was not stored whole"
    return sorted(instance["payload"]["i"] for instance in stored)


async def stored_while_progressing(squall: Squall, stall: float = 120) -> list[int]:
    """`flood_stored` once the whole burst is stored, or as it was when no more were stored for `stall`
    seconds. Waiting on progress, not a deadline: a loaded machine stores the burst slower, not less
    of it. Polled each second: listing 10,000 instances competes with their storing."""
    loop = asyncio.get_running_loop()
    most, since = -1, loop.time()
    while True:
        stored = await flood_stored(squall)
        if len(stored) >= FLOOD_COUNT + 1:
            return stored
        if len(stored) > most:
            most, since = len(stored), loop.time()
        elif loop.time() - since > stall:
            return stored
        await asyncio.sleep(1)


async def test_a_sensors_dispatch_blocks_while_serve_falls_behind_and_nothing_is_lost(home: Path) -> None:
    """A sensor dispatching faster than serve stores: once a small backlog is unstored, serve stops
    reading its message pipe and the sensor's dispatch() blocks, as a broker's publish would. Its
    instances wait in the sensor, not in serve's memory, where a killed serve lost what the sensor was
    told was dispatched (and a stop waited for it all). Released, every instance is stored once."""
    squall, gate, marker = await flood_held(home)
    try:
        held = await settled(marker)
        smallest = len(json.dumps({"op": "dispatch", "trigger": "demo.flood", "payload": {"i": 0, "pad": "x" * 200},
                                   "parameters": None, "trace_tag": None})) + 1
        assert 0 < held < FLOOD_COUNT, f"{held} of {FLOOD_COUNT} dispatch() calls returned while nothing was stored"
        assert held * smallest <= 1024 * 1024, f"{held} instances ({held * smallest} bytes) wait unstored in serve"
        assert await flood_stored(squall) == []
        gate.set()
        assert await stored_while_progressing(squall) == list(range(FLOOD_COUNT + 1))

        async def all_returned() -> bool:
            return returned(marker) == FLOOD_COUNT + 1

        assert await eventually(all_returned), f"{returned(marker)} dispatch() calls returned"
    finally:
        gate.set()  # a held store would hold the stop too
        await squall.close()


async def test_a_stop_waits_for_the_small_backlog_only_not_the_sensors_whole_burst(home: Path) -> None:
    """A stop (serve's end, a reload) while serve is behind a sensor's burst: serve stores the few
    instances the sensor wrote, and the sensor, whose dispatch() was blocked, gets SIGTERM then and
    ends; the stop no longer waited for a burst of any size to be stored. Each instance whose
    dispatch() returned is stored, once."""
    squall, gate, marker = await flood_held(home)
    try:
        held = await settled(marker)
        assert 0 < held < FLOOD_COUNT, f"{held} of {FLOOD_COUNT} dispatch() calls returned while nothing was stored"
        gate.set()
        await squall.sensors.stop()
        stored, sent = await flood_stored(squall), returned(marker)
        assert sent < FLOOD_COUNT, "the sensor's whole burst was taken in before it was stopped"
        assert stored == list(range(len(stored))), "an instance was lost or stored twice"
        # The one dispatch() SIGTERM interrupted may have reached the pipe without returning.
        assert sent <= len(stored) <= sent + 1, (sent, len(stored))
    finally:
        gate.set()  # a held store would hold the stop too
        await squall.close()


async def test_a_sensor_stopped_while_starting_leaves_no_process(home: Path) -> None:
    """A stop may come at any point of a sensor's start, the fork included (the process exists but
    the supervisor does not know it yet): once `stop()` returns, no sensor process is left."""
    add_sensor(make_pack(home, {}), "Flusher", FLUSHER.format(count=0, after_run="time.sleep(300)"))
    squall = await started(home)
    try:
        sensors_for(squall)
        left = {}
        for steps in range(30):
            await squall.sync_sensors()
            for _ in range(steps):
                await asyncio.sleep(0)
            await squall.sensors.stop()
            if found := sensor_processes():
                left[steps] = found
                for pid in found:
                    os.killpg(pid, signal.SIGKILL)
        assert left == {}, f"sensor processes left after stop() (by loop steps between sync and stop): {left}"
    finally:
        await squall.close()


def stubborn_pack(home: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """Sensors that ignore SIGTERM; each notes its pid when ready and its name when it gets SIGTERM."""
    pack = make_pack(home, {})
    ready, terms = home / "ready.txt", home / "terms.txt"
    for name in names:
        add_sensor(pack, name, STUBBORN.format(name=name, ready=str(ready), terms=str(terms)))
    return pack, ready, terms


def noted(path: Path) -> list[str]:
    return path.read_text().split("\n") if path.exists() else []


async def all_ready(ready: Path, names: list[str]) -> None:
    async def check() -> bool:
        return {line.split()[0] for line in noted(ready) if line} >= set(names)

    assert await eventually(check), f"not all of {names} started: {noted(ready)}"


async def test_a_stop_during_a_sync_leaves_no_sensor_running(home: Path) -> None:
    """The lead is lost (stop) while a reload's sync is stopping a removed, stubborn sensor: the sync
    starts nothing after that, so when both are over no sensor runs."""
    pack, ready, _ = stubborn_pack(home, ["Stubborn"])
    squall = await started(home)
    try:
        sensors_for(squall, stop_timeout=1.0)
        await squall.sync_sensors()
        await all_ready(ready, ["Stubborn"])
        (pack / "sensors" / "stubborn.yaml").unlink()
        add_sensor(pack, "Flusher", FLUSHER.format(count=0, after_run="time.sleep(300)"))
        squall.reload()
        syncing = asyncio.create_task(squall.sync_sensors())
        await asyncio.sleep(0.2)  # the sync waits for Stubborn, which ignores SIGTERM
        await squall.sensors.stop()
        await syncing
        left = sensor_processes()
        assert squall.sensors.running == {} and left == [], f"after the stop: {squall.sensors.running}, pids {left}"
    finally:
        await squall.close()
        kill_left(sensor_processes())


async def test_a_sync_during_a_stop_starts_nothing_a_later_stop_misses(home: Path) -> None:
    """A reload's sync comes while a stop waits for a stubborn sensor: it runs after the stop, and
    what it starts is stopped by the next stop (before, it was dropped by the first and ran on)."""
    pack, ready, _ = stubborn_pack(home, ["Stubborn"])
    squall = await started(home)
    try:
        sensors_for(squall, stop_timeout=1.0)
        await squall.sync_sensors()
        await all_ready(ready, ["Stubborn"])
        add_sensor(pack, "Flusher", FLUSHER.format(count=0, after_run="time.sleep(300)"))
        squall.reload()
        stopping = asyncio.create_task(squall.sensors.stop())
        await asyncio.sleep(0.2)
        await squall.sync_sensors()
        await stopping
        await squall.sensors.stop()
        left = sensor_processes()
        assert left == [], f"sensor processes outlived every stop: {left}"
    finally:
        await squall.close()
        kill_left(sensor_processes())


class _KillWatch(logging.Handler):
    """At each 'did not stop ... killing it', which sensors had got SIGTERM (their notes) so far."""

    def __init__(self, terms: Path) -> None:
        super().__init__(logging.WARNING)
        self.terms, self.seen = terms, []

    def emit(self, record: logging.LogRecord) -> None:
        if "did not stop" in record.getMessage():
            self.seen.append(set(noted(self.terms)) - {""})


async def test_sensors_ignoring_sigterm_all_get_it_before_any_is_killed(home: Path) -> None:
    """Stubborn sensors are stopped together, in a reload that removes several as in `stop()`: each
    gets SIGTERM before the first is killed, so K of them cost one stop timeout, not K."""
    names = ["StubbornA", "StubbornB", "StubbornC", "StubbornD"]
    pack, ready, terms = stubborn_pack(home, names)
    watch = _KillWatch(terms)
    logger = logging.getLogger("engine.sensors")
    logger.addHandler(watch)
    squall = await started(home)
    try:
        sensors_for(squall, stop_timeout=2.0)
        await squall.sync_sensors()
        await all_ready(ready, names)
        for name in names[:2]:
            (pack / "sensors" / f"{name.lower()}.yaml").unlink()
        squall.reload()
        await squall.sync_sensors()
        assert len(watch.seen) == 2 and all(seen == {"StubbornA", "StubbornB"} for seen in watch.seen), watch.seen
        assert set(squall.sensors.running) == {"demo.StubbornC", "demo.StubbornD"}
        await squall.sensors.stop()
        assert len(watch.seen) == 4 and all(seen == set(names) for seen in watch.seen[2:]), watch.seen
    finally:
        logger.removeHandler(watch)
        await squall.close()
        kill_left([int(line.split()[1]) for line in noted(ready) if line])


async def test_a_stubborn_sensors_helpers_outside_its_group_are_killed_with_it(home: Path) -> None:
    """A sensor that ignores SIGTERM is killed at the stop timeout; its helpers that left its process
    group (a session of their own, a daemon forked twice) are found as its descendants (it is their
    subreaper) and killed with it: killing the group missed them."""
    pack = make_pack(home, {})
    ready, terms, pids = home / "ready.txt", home / "terms.txt", home / "helpers.pids"
    code = STUBBORN.format(name="Stubborn", ready=str(ready), terms=str(terms)).replace(
        "    def run(self):\n",
        "    def run(self):\n"
        "        import subprocess\n"
        f"        helper = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        f"        _note({str(pids)!r}, str(helper.pid))\n"
        f"        subprocess.run(['sh', '-c', 'setsid sleep 300 > /dev/null 2>&1 & echo $! >> {pids}'], check=True)\n")
    add_sensor(pack, "Stubborn", code)
    squall = await started(home)
    try:
        sensors_for(squall, stop_timeout=1.0)
        await squall.sync_sensors()

        async def helpers_started() -> list[int]:
            return pids_in(pids) if len(pids_in(pids)) == 2 else []

        helpers = await eventually(helpers_started)
        assert all(alive(pid) for pid in helpers)
        await squall.sensors.stop()
        assert noted(terms)[0] == "Stubborn"  # it was asked, ignored it, and was killed
        left = [pid for pid in helpers if alive(pid)]
    finally:
        await squall.close()
        kill_left(pids_in(pids))
        kill_left([int(line.split()[1]) for line in noted(ready) if line])
    assert left == [], "helpers outside the stubborn sensor's group outlived its kill"


# -- a sensor killed from outside is restarted; one whose run() returns is not ---------------------

ENDING = '''
import os
import re
import time

from st2reactor.sensor.base import Sensor


class {name}(Sensor):
    def setup(self):
        fd = os.open({starts!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"{name} %d\\n" % os.getpid())
        os.close(fd)

    def run(self):
        if {returns!r}:
            return
        while True:
            time.sleep(0.1)

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''


async def test_a_sensor_killed_with_sigterm_from_outside_is_restarted(home: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An operator's `kill PID` of a sensor process is a crash to the supervisor: the sensor is restarted
    and the log says it got SIGTERM. Only a run() that really returned ends a sensor for good."""
    pack = make_pack(home, {})
    starts = home / "starts.txt"
    add_sensor(pack, "Killed", ENDING.format(name="Killed", starts=str(starts), returns=False))
    add_sensor(pack, "Returning", ENDING.format(name="Returning", starts=str(starts), returns=True))
    caplog.set_level(logging.INFO, logger="engine.sensors")
    squall = await started(home)

    def started_pids(name: str) -> list[int]:
        return [int(line.split()[1]) for line in noted(starts) if line.startswith(name + " ")]

    try:
        sensors_for(squall)
        await squall.sync_sensors()
        assert await eventually(lambda: asyncio.sleep(0, started_pids("Killed"))), "the sensor never started"
        assert await eventually(lambda: asyncio.sleep(0, "sensor demo.Returning finished" in caplog.text))
        os.kill(started_pids("Killed")[0], signal.SIGTERM)
        assert await eventually(lambda: asyncio.sleep(0, len(started_pids("Killed")) >= 2)), \
            "the sensor killed from outside was not restarted"
        assert "sensor demo.Killed finished" not in caplog.text
        assert any("demo.Killed" in r.getMessage() and "SIGTERM" in r.getMessage() and "restarting" in r.getMessage()
                   for r in caplog.records), caplog.text
        assert len(started_pids("Returning")) == 1, "a sensor whose run() returned was restarted"
    finally:
        await squall.close()


# -- a sensor module that monkey-patches eventlet ----------------------------------------------------

EVENTLET_PATCHED = '''
import eventlet
eventlet.monkey_patch()

from st2reactor.sensor.base import Sensor


class Patched(Sensor):
    def setup(self):
        self.sensor_service.set_value("setup", "ran")

    def run(self):
        n = 0
        while True:
            n += 1
            self.sensor_service.dispatch("demo.patched", {"n": n})
            self.sensor_service.set_value("polls", str(n))
            eventlet.sleep(0.05)

    def cleanup(self):
        self.sensor_service.set_value("cleanup", "ran")

    def add_trigger(self, trigger):
        self.sensor_service.set_value("added", trigger["parameters"]["path"])

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''


@pytest.fixture(scope="module")
def eventlet_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pack virtualenv with eventlet, made once (StackStorm packs' sensors import it)."""
    venv = tmp_path_factory.mktemp("eventlet") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "eventlet"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, f"pip could not install eventlet: {pip.stderr[-1500:]}"
    return venv


@pytest.mark.integration  # pip installs eventlet
async def test_a_sensor_that_monkey_patches_eventlet_runs_and_stops(home: Path, eventlet_venv: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """`eventlet.monkey_patch()` at the top of a sensor module (harmless under StackStorm, whose wrapper
    is green already) must not turn the wrapper's reader and callback threads into greenthreads: the
    sensor sets up, runs, dispatches, gets its triggers and datastore answers, and stops on SIGTERM."""
    pack = make_pack(home, {"on_patched": """
        name: on_patched
        pack: demo
        enabled: true
        trigger: {type: demo.patched, parameters: {path: /var/log/p}}
        action: {ref: demo.take}
    """})
    write(pack / "sensors" / "patched.yaml", """
        class_name: Patched
        entry_point: patched.py
        trigger_types:
          - name: patched
            parameters_schema: {type: object, properties: {path: {type: string}}}
    """)
    (pack / "sensors" / "patched.py").write_text(EVENTLET_PATCHED)
    caplog.set_level(logging.WARNING, logger="engine.sensors")
    caplog.set_level(logging.WARNING, logger="squall.sensor.demo.Patched")
    squall = await started(home)
    squall.config.virtualenvs_path.mkdir(parents=True, exist_ok=True)
    (squall.config.virtualenvs_path / "demo").symlink_to(eventlet_venv)

    async def kv(name: str) -> Any:
        record = await squall.db(squall.datastore.get, f"demo.Patched:{name}")
        return record["value"] if record else None

    try:
        sensors_for(squall, stop_timeout=10)
        await squall.sync_sensors()
        assert await eventually(lambda: kv("setup")) == "ran", "setup() never ran"
        assert await eventually(lambda: kv("added")) == "/var/log/p", "add_trigger was never called"

        async def polled_twice() -> bool:
            return int(await kv("polls") or 0) >= 2

        assert await eventually(polled_twice), "run() did not go on"
        assert await squall.triggers.list(trigger="demo.patched")
        await squall.sensors.stop()
        assert "did not stop" not in caplog.text, "the sensor ignored SIGTERM and was killed"
        assert await kv("cleanup") == "ran"
        assert "monkey-patched threading with eventlet" in caplog.text  # what its trigger callbacks cannot do
    finally:
        await squall.close()


# -- the service killed outright: a sensor's helpers still go --------------------------------------

KILLED_HOST = '''
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.test_rules import started
from tests.test_sensors import run_sensors


async def main() -> None:
    squall = await started(Path({home!r}))
    await run_sensors(squall)
    await asyncio.sleep(300)

asyncio.run(main())
'''


def test_a_sensors_helpers_outside_its_group_go_when_the_service_is_killed(home: Path) -> None:
    """`squall serve` killed with SIGKILL (the OOM killer, `kill -9`): its sensor processes end by the
    parent-death signal, and so must what they started in sessions of their own, which would
    otherwise be orphans no owner file names. The sensor gets SIGTERM, not SIGKILL, when its parent
    dies, so it can end its descendants (it is their subreaper) as any of its ends does."""
    pids = spawner_pack(home, crash=False, escape=True)
    script = home / "host.py"
    script.write_text(KILLED_HOST.format(root=str(Path(__file__).resolve().parent.parent), home=str(home)))
    host = subprocess.Popen([sys.executable, str(script)], cwd=home)
    helpers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(helpers) < 2 and time.monotonic() < deadline and host.poll() is None:
            time.sleep(0.05)
            helpers = pids_in(pids)
        assert len(helpers) == 2 and all(alive(pid) for pid in helpers), f"the sensor's helpers: {helpers}"
        host.kill()
        host.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in helpers if alive(pid)]
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
        kill_left(pids_in(pids))
    assert left == [], "helpers outside the sensor's group outlived the service killed with SIGKILL"


CALLBACK_HELPER = '''
import subprocess, time
from st2reactor.sensor.base import Sensor

def sigblk(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("SigBlk"):
            return line.split()[1]

class Watcher(Sensor):
    def setup(self):
        self.procs = {}
    def _start(self, trigger):
        path = trigger["parameters"]["path"]
        proc = subprocess.Popen(["sleep", "300"])  # stands for `tail -F path`, `kubectl get -w`...
        self.procs[path] = proc
        import threading
        self.sensor_service.set_value("sigblk:" + path, sigblk(proc.pid) + " thread=" + threading.current_thread().name)
    def add_trigger(self, trigger):
        self._start(trigger)
    def update_trigger(self, trigger):
        pass
    def remove_trigger(self, trigger):
        path = trigger["parameters"]["path"]
        proc = self.procs.pop(path)
        proc.terminate()
        try:
            proc.wait(timeout=3)
            self.sensor_service.set_value("removed:" + path, "stopped by SIGTERM")
        except subprocess.TimeoutExpired:
            proc.kill()
            self.sensor_service.set_value("removed:" + path, "IGNORED SIGTERM, had to kill")
    def run(self):
        self.sensor_service.set_value("running", "yes")
        while True:
            time.sleep(0.5)
    def cleanup(self):
        for proc in self.procs.values():
            proc.kill()
'''

async def test_a_helper_a_trigger_callback_starts_stops_on_sigterm(home: Path) -> None:
    """The wrapper blocks SIGTERM in its own threads (so the kernel gives it to the main thread), the
    callback thread among them; a helper started in add_trigger inherited that mask, through exec, and
    the sensor's own `proc.terminate()` in remove_trigger no longer stopped it."""
    pack = make_pack(home, {})
    write(pack / "sensors" / "watcher.yaml", """
        class_name: Watcher
        entry_point: watcher.py
        trigger_types:
          - name: watched
            parameters_schema: {type: object, properties: {path: {type: string}}}
    """)
    (pack / "sensors" / "watcher.py").write_text(CALLBACK_HELPER)
    squall = await started(home)
    try:
        await run_sensors(squall)
        assert await eventually(lambda: _kv(squall, "running")) == "yes"
        rule = write(pack / "rules" / "on_watched.yaml", """
            name: on_watched
            pack: demo
            enabled: true
            trigger: {type: demo.watched, parameters: {path: /var/log/a}}
            action: {ref: demo.take}
        """)
        squall.reload()
        await squall.sync_sensors()
        blocked = await eventually(lambda: _kv(squall, "sigblk:/var/log/a"))
        rule.unlink()
        squall.reload()
        await squall.sync_sensors()
        outcome = await eventually(lambda: _kv(squall, "removed:/var/log/a"))
    finally:
        await squall.close()
    assert int(blocked.split()[0], 16) & (1 << (signal.SIGTERM - 1)) == 0, f"the helper blocks SIGTERM: {blocked}"
    assert outcome == "stopped by SIGTERM", outcome


# -- bad dispatches: each problem logged once per interval, with how many more were like it ----------

MISFIRE = '''
import time

from st2reactor.sensor.base import Sensor


class Misfire(Sensor):
    def setup(self):
        pass

    def run(self):
        for i in range({count}):
            self.sensor_service.dispatch("demo.misfire_typo", {{"n": i}})
        for i in range({count}):
            self.sensor_service.dispatch("demo.misfire", {{"n": "not a number"}})
        self.sensor_service.dispatch("demo.misfire", {{"n": 1}})
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


async def test_a_sensors_repeated_bad_dispatches_are_logged_once_with_their_count(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sensor dispatching in a loop to a misspelt trigger, or with a payload its schema refuses, logged
    one warning per dispatch (37,900 a second, 75 MB in 10 s). Each problem is now said once, and the
    ones like it within `dispatch_warning_interval` are counted and the count said as it ends (here at
    the stop: the interval is longer than the test). The bad instances are still refused; a good one fires."""
    count = 5000
    pack = make_pack(home, {"on_misfire": """
        name: on_misfire
        pack: demo
        enabled: true
        trigger: {type: demo.misfire}
        action: {ref: demo.take, parameters: {count: "{{ trigger.n }}"}}
    """})
    write(pack / "sensors" / "misfire.yaml", """
        class_name: Misfire
        entry_point: misfire.py
        trigger_types:
          - name: misfire
            payload_schema: {type: object, properties: {n: {type: integer}}}
    """)
    (pack / "sensors" / "misfire.py").write_text(MISFIRE.format(count=count))
    caplog.set_level(logging.WARNING, logger="engine.sensors")
    squall = await started(home)
    try:
        sensors_for(squall, dispatch_warning_interval=3600)
        await squall.sync_sensors()

        async def enforced() -> list[dict[str, Any]]:
            await squall.rules.settle()
            return await squall.rules.enforcements(rule="demo.on_misfire")

        (enforcement,) = await eventually(enforced, 120)
        instance = await squall.triggers.get(enforcement["trigger_instance_id"])
        assert instance["payload"] == {"n": 1}
        assert [i["payload"] for i in await squall.triggers.list(trigger="demo.misfire", limit=10)] == [{"n": 1}]
    finally:
        await squall.close()
    typo = [r.getMessage() for r in caplog.records if '"demo.misfire_typo"' in r.getMessage()]
    invalid = [r.getMessage() for r in caplog.records if "invalid trigger instance" in r.getMessage()
               or "not a number" in r.getMessage()]
    assert len(typo) == 2, typo[:5]
    assert "the instance is dropped" in typo[0] and "more like it" not in typo[0]
    assert f"{count - 1:,} more like it" in typo[1], typo
    assert len(invalid) == 2, invalid[:5]
    assert "'not a number' is not of type 'integer'" in invalid[0] and "more like it" not in invalid[0]
    assert f"{count - 1:,} more like it" in invalid[1] and "demo.misfire" in invalid[1], invalid


MULTI_LINE = '''
from st2reactor.sensor.base import Sensor


class Multi(Sensor):
    def setup(self):
        self._logger = self.sensor_service.get_logger(name=self.__class__.__name__)

    def run(self):
        self._logger.warning("disk nearly full\\nvolume /var\\nfree 2%")
        print("a print of its own")
        self.sensor_service.set_value("logged", "yes")
        import time
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


async def test_a_sensors_multi_line_warning_keeps_its_level_on_every_line(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A record's message of several lines is relayed as several lines, each at the record's level: the
    second and third lines of a warning were INFO, as the sensor's own prints are (which stay INFO)."""
    pack = make_pack(home, {})
    write(pack / "sensors" / "multi.yaml", """
        class_name: Multi
        entry_point: multi.py
        trigger_types: [{name: multi}]
    """)
    (pack / "sensors" / "multi.py").write_text(MULTI_LINE)
    caplog.set_level(logging.INFO)
    squall = await started(home)
    try:
        await run_sensors(squall)

        def relayed() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name.startswith("squall.sensor.demo")]

        assert await eventually(lambda: asyncio.sleep(0, any("a print" in r.getMessage() for r in relayed())))
        levels = {r.getMessage().strip(): r.levelno for r in relayed()}
        assert levels.get("volume /var") == logging.WARNING, levels
        assert levels.get("free 2%") == logging.WARNING, levels
        assert levels.get("a print of its own") == logging.INFO, levels
    finally:
        await squall.close()


LOUD = '''
import os
import re
import time

from st2reactor.sensor.base import Sensor


class Loud(Sensor):  # logs a large API response in a tight retry loop
    def setup(self):
        pass

    def run(self):
        line = b"N" * {size} + b"\\n"
        for _ in range({count}):
            os.write(1, line)
        time.sleep(1.5)  # past the flood's last second: this line starts a second of its own
        os.write(1, b"flood over\\n")
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


def _said_size(text: str) -> float:
    """The bytes a suppression warning says were dropped: `(9 MiB)`, `(768 KiB)`, `(12 bytes)`."""
    number, unit = text.rsplit("(", 1)[1].rstrip(")").split()
    return float(number) * {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]


async def test_a_sensor_printing_long_lines_is_held_to_its_byte_budget_and_says_what_it_dropped(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Lines alone were no bound: a sensor printing 512 KiB lines in a loop grew serve's log by over 1 GiB
    in 10 s, within 1,000 lines a second, and nothing said so. At most `LOG_BYTES_PER_SECOND` bytes of its
    output are relayed a second; the lines past it are dropped, and each second of the flood says in one
    line which sensor, how many lines and how many bytes. Every line is either relayed or counted."""
    from engine.sensors import LOG_BYTES_PER_SECOND

    size, count = 256 * 1024, 40
    add_sensor(make_pack(home, {}), "Loud", LOUD.format(size=size, count=count))
    caplog.set_level(logging.INFO)
    squall = await started(home)
    try:
        sensors_for(squall)
        await squall.sync_sensors()

        def relayed() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "squall.sensor.demo.Loud"]

        assert await eventually(lambda: asyncio.sleep(0, any(r.getMessage() == "flood over" for r in relayed())), 60)
    finally:
        await squall.close()
    flood = [r for r in relayed() if r.getMessage().startswith("NNNN")]
    suppressed = [r.getMessage() for r in caplog.records
                  if r.name == "engine.sensors" and "lines suppressed" in r.getMessage()]
    assert flood, "none of the flood was relayed"
    seconds = math.ceil(flood[-1].created - flood[0].created) + 1  # the budget's seconds the relayed lines span
    assert sum(len(r.getMessage()) for r in flood) <= LOG_BYTES_PER_SECOND * seconds, (len(flood), seconds, suppressed)
    counts = [int(text.split(" lines suppressed")[0].rsplit(" ", 1)[-1]) for text in suppressed]
    assert suppressed and len(flood) + sum(counts) == count, (len(flood), suppressed)
    assert len(suppressed) <= seconds, suppressed  # one line per second of the flood
    budget = f"over {LOG_BYTES_PER_SECOND >> 20} MiB a second"
    assert all("sensor demo.Loud " in text and budget in text for text in suppressed), suppressed
    assert sum(_said_size(text) for text in suppressed) == pytest.approx(sum(counts) * size, rel=1e-3), suppressed


SETUP_GATED = '''
import os
import re
import time

from st2reactor.sensor.base import Sensor


class {name}(Sensor):  # setup() waits as one connecting to a broker without a timeout does
    def setup(self):
        while not os.path.exists({go!r}):
            time.sleep(0.05)

    def run(self):
        self.sensor_service.dispatch("demo.{trigger}", {{}})
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


async def test_a_sensor_stuck_in_setup_is_said_once_to_dispatch_nothing_and_again_when_it_starts(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sensor whose setup() did not return was never reported: no error, no exit, its triggers silently
    never came. After `setup_warning` it is said, once, to dispatch nothing; when setup() returns at last,
    its start is said with how long setup() took. A sensor whose setup() returns in time is not warned about."""
    go = home / "go"
    pack = make_pack(home, {})
    add_sensor(pack, "Stuck", SETUP_GATED.format(name="Stuck", go=str(go), trigger="stuck"))
    add_sensor(pack, "Quick", SETUP_GATED.format(name="Quick", go=str(home), trigger="quick"))
    caplog.set_level(logging.INFO, logger="engine.sensors")
    squall = await started(home)
    try:
        sensors_for(squall, setup_warning=0.5)
        await squall.sync_sensors()

        def said(text: str) -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "engine.sensors" and text in r.getMessage()]

        async def stored(trigger: str) -> list[dict[str, Any]]:
            return await squall.triggers.list(trigger=trigger)

        assert await eventually(lambda: asyncio.sleep(0, said("sensor demo.Stuck has not finished its setup()"))), \
            "a sensor stuck in setup() was never reported"
        assert await eventually(lambda: stored("demo.quick")), "the quick sensor never dispatched"
        await asyncio.sleep(1.5)  # three times the bound, and the warning is still said once
        (warning,) = said("has not finished its setup()")
        assert warning.levelno == logging.WARNING and "dispatches nothing" in warning.getMessage(), warning.getMessage()
        assert not said("sensor demo.Stuck is running") and not await stored("demo.stuck")
        (quick,) = said("sensor demo.Quick is running")
        assert quick.levelno == logging.INFO and "setup() took" not in quick.getMessage()
        go.touch()
        assert await eventually(lambda: asyncio.sleep(0, said("sensor demo.Stuck is running"))), "its start was unsaid"
        (running,) = said("sensor demo.Stuck is running")
        assert running.levelno == logging.WARNING and "its setup() took" in running.getMessage(), running.getMessage()
        assert await eventually(lambda: stored("demo.stuck")), "the sensor that started late never dispatched"
        assert len(said("has not finished its setup()")) == 1
    finally:
        await squall.close()


BROKEN = '''
from st2reactor.sensor.base import Sensor


class Broken(Sensor):
    def setup(self):
        raise RuntimeError("the broker refused the connection")

    def run(self):
        pass

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''


async def test_the_api_tells_a_sensor_stuck_in_setup_beside_enabled(home: Path) -> None:
    """`/api/v1/sensortypes` listed a sensor stuck in setup() `enabled: true`, with nothing telling it
    dispatched nothing. `enabled` still says what the pack file says, every key StackStorm's clients read as it
    was; Squall's `state` says what the sensor does: "starting", "stuck in setup" once `setup_warning` has
    passed, "running" once setup() returned, "failed" while one that crashed waits to start again, "stopped"
    for one not run. A process that does not run the sensors cannot tell, and leaves `state` out."""
    key = "sensor-state-key"
    config = home / "config.yml"
    config.write_text(config.read_text() + f"  keys: [{key}]\n")  # under its `api:`
    go = home / "go"
    pack = make_pack(home, {})
    add_sensor(pack, "Stuck", SETUP_GATED.format(name="Stuck", go=str(go), trigger="stuck"))
    add_sensor(pack, "Quick", SETUP_GATED.format(name="Quick", go=str(home), trigger="quick"))
    add_sensor(pack, "Broken", BROKEN)
    add_sensor(pack, "Idle", SETUP_GATED.format(name="Idle", go=str(home), trigger="idle"))
    idle = pack / "sensors" / "idle.yaml"
    idle.write_text(idle.read_text() + "enabled: false\n")
    squall = await started(home)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                     base_url="http://squall", headers={"St2-Api-Key": key}) as client:

            async def listed() -> dict[str, dict[str, Any]]:
                answer = await client.get("/api/v1/sensortypes", params={"pack": "demo"})
                assert answer.status_code == 200, answer.text
                return {sensor["ref"]: sensor for sensor in answer.json()}

            async def states() -> dict[str, str | None]:
                return {ref: sensor.get("state") for ref, sensor in (await listed()).items()}

            def without_state(sensors: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
                return {ref: {k: v for k, v in sensor.items() if k != "state"} for ref, sensor in sensors.items()}

            unknown = await listed()  # no sensor runs in this process yet: it does not lead
            assert len(unknown) == 4 and not any("state" in sensor for sensor in unknown.values()), unknown

            sensors_for(squall, setup_warning=0.5, backoff=60)
            await squall.sync_sensors()
            assert (await states())["demo.Stuck"] == "starting"
            wanted = {"demo.Stuck": "stuck in setup", "demo.Quick": "running", "demo.Broken": "failed",
                      "demo.Idle": "stopped"}
            assert await eventually(lambda: _equals(states(), wanted)), await states()
            shown = await listed()
            assert without_state(shown) == unknown  # the keys StackStorm's clients read are as they were
            assert shown["demo.Stuck"]["enabled"] is True and shown["demo.Idle"]["enabled"] is False
            one = await client.get("/api/v1/sensortypes/demo.Stuck")
            assert one.status_code == 200 and one.json() == shown["demo.Stuck"], one.text

            go.touch()  # its setup() returns at last
            assert await eventually(lambda: _equals(states(), {**wanted, "demo.Stuck": "running"})), await states()

            await squall.sensors.stop()
            assert set((await states()).values()) == {"stopped"}
    finally:
        await squall.close()


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


ESCAPES = '''
import os
import re
import time

from st2reactor.sensor.base import Sensor


class Esc(Sensor):
    def setup(self):
        self._logger = self.sensor_service.get_logger("esc")

    def run(self):
        os.write(1, b"\\x1b[31mred\\x1b[0m\\rFAKE CRITICAL squall: forged line\\x07\\n")
        os.write(2, "tab\\tkept, C1 \\u009b2J escaped\\n".encode())
        self._logger.warning("logged\\rCRITICAL squall: forged record")
        self.sensor_service.dispatch("demo.no\\rCRITICAL squall: forged trigger", {})
        self.sensor_service.set_value("done", "yes")
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
#: Control characters but tab, which no line of Squall's log may carry from a sensor.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


async def test_a_sensors_control_characters_reach_the_log_escaped(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sensor's output reached serve's log with ESC, CR and BEL intact: `tail -f` ran them, and a CR wrote
    over the `squall.sensor.<ref>:` prefix, so the rest read as a line of Squall's own (`CRITICAL squall:`).
    They are escaped, visibly, in what it prints, what it logs and the trigger names it dispatches to; a
    tab stays a tab."""
    add_sensor(make_pack(home, {}), "Esc", ESCAPES)
    caplog.set_level(logging.INFO)
    squall = await started(home)
    try:
        await run_sensors(squall)

        def messages() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name in ("squall.sensor.demo.Esc", "engine.sensors")]

        wanted = ("forged line", "C1", "forged record", "forged trigger")
        assert await eventually(lambda: asyncio.sleep(0, all(any(w in m for m in messages()) for w in wanted))), \
            messages()
    finally:
        await squall.close()
    shown = messages()
    assert not [m for m in shown if CONTROL.search(m)], [m for m in shown if CONTROL.search(m)]
    assert r"\x1b[31mred\x1b[0m\rFAKE CRITICAL squall: forged line\x07" in shown, shown
    assert "tab\tkept, C1 \\x9b2J escaped" in shown, shown
    assert any(m.endswith(r"logged\rCRITICAL squall: forged record") for m in shown), shown
    assert any(r'"demo.no\rCRITICAL squall: forged trigger"' in m for m in shown), shown
