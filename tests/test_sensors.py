"""Sensors (spec §6.4): StackStorm sensor classes unmodified, each in a supervised child process."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.sensors import (
    _YIELD_EVERY,
    SensorContainer,
    SensorSpec,
    _LineTooLong,
    _next_line,
    _Repeats,
    _Running,
    load_sensors,
)
from tests.conftest import write
from tests.test_rules import make_pack, started

POLLING = '''
from st2reactor.sensor.base import PollingSensor


class Counter(PollingSensor):
    def setup(self):
        self.log = self.sensor_service.get_logger("counter")
        if self.sensor_service.get_value("crash_once") is None:
            self.sensor_service.set_value("crash_once", "done")
            raise RuntimeError("first start fails on purpose")

    def poll(self):
        count = int(self.sensor_service.get_value("count") or 0) + 1
        self.sensor_service.set_value("count", str(count))
        self.log.info("tick %d", count)
        self.sensor_service.dispatch("demo.tick", {"n": "not a number"})  # invalid: logged, not fatal
        self.sensor_service.dispatch("demo.tick", {"n": count}, trace_tag="tick-%d" % count)

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        pass

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''

PASSIVE = '''
import signal
import threading

from st2reactor.sensor.base import Sensor


class Watcher(Sensor):
    def setup(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a sensor that will not stop when asked
        self.wake = threading.Event()
        self.pending = []

    def run(self):
        while True:
            self.wake.wait()
            self.wake.clear()
            while self.pending:
                trigger = self.pending.pop()
                self.sensor_service.dispatch(trigger, {"path": trigger["parameters"]["path"]})

    def cleanup(self):
        pass

    def add_trigger(self, trigger):
        self.pending.append(trigger)
        self.wake.set()

    def update_trigger(self, trigger):
        pass

    def remove_trigger(self, trigger):
        pass
'''


def sensor_pack(home: Path) -> Path:
    pack = make_pack(home, {
        "on_tick": """
            name: on_tick
            pack: demo
            enabled: true
            trigger: {type: demo.tick}
            criteria: {trigger.n: {type: gt, pattern: 1}}
            action: {ref: demo.take, parameters: {count: "{{ trigger.n }}"}}
        """,
        "on_file": """
            name: on_file
            pack: demo
            enabled: true
            trigger: {type: demo.file_seen, parameters: {path: /var/log/app.log}}
            action: {ref: demo.take, parameters: {message: "{{ trigger.path }}"}}
        """,
    })
    write(pack / "sensors" / "counter.yaml", """
        class_name: Counter
        entry_point: counter.py
        poll_interval: 0.05
        trigger_types:
          - name: tick
            payload_schema: {type: object, properties: {n: {type: integer}}}
    """)
    (pack / "sensors" / "counter.py").write_text(POLLING)
    write(pack / "sensors" / "watcher.yaml", """
        class_name: Watcher
        entry_point: watcher.py
        trigger_types:
          - name: file_seen
            parameters_schema: {type: object, properties: {path: {type: string}}, additionalProperties: false}
    """)
    (pack / "sensors" / "watcher.py").write_text(PASSIVE)
    write(pack / "sensors" / "broken.yaml", "class_name: Broken\nentry_point: missing.py\n")
    return pack


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


async def run_sensors(squall: Squall) -> None:
    squall.sensors = SensorContainer(squall.triggers.dispatch, squall.datastore_call, squall.config.virtualenvs_path,
                                     backoff=0.1, stable_after=30, stop_timeout=0.5)
    await squall.sync_sensors()


async def test_sensors_dispatch_restart_after_a_crash_and_get_their_triggers(home: Path) -> None:
    from engine.metrics import metrics
    from tests.test_metrics import _samples, _value

    def restarts() -> float:
        return _value(_samples(metrics.exposition().decode()), "squall_sensor_restarts_total", sensor="demo.Counter")

    before = restarts()
    sensor_pack(home)
    squall = await started(home)
    try:
        assert {"demo.tick", "demo.file_seen"} <= set(squall.registry.trigger_types)
        specs, errors = load_sensors(squall.registry)
        assert sorted(s.ref for s in specs) == ["demo.Counter", "demo.Watcher"]
        assert len(errors) == 1 and "missing.py" in str(errors[0]) and "broken.yaml" in str(errors[0])
        await run_sensors(squall)

        async def tick_enforcements() -> list[dict[str, Any]]:
            await squall.rules.settle()
            return [e for e in await squall.rules.enforcements(rule="demo.on_tick") if e["status"] == "succeeded"]

        enforced = await eventually(tick_enforcements)
        assert enforced, "the polling sensor never fired the rule"
        instance = await squall.triggers.get(enforced[-1]["trigger_instance_id"])
        assert instance["trigger"] == "demo.tick" and instance["payload"]["n"] >= 2
        assert instance["trace_tag"] == f"tick-{instance['payload']['n']}"
        # The first process failed in setup(): it was restarted, and the lifecycle was recorded.
        exits = await squall.triggers.list(trigger="core.st2.sensor.process_exit")
        assert any(e["payload"]["object"]["ref"] == "demo.Counter" and e["payload"]["object"]["exit_code"] != 0
                   for e in exits)
        spawns = [s for s in await squall.triggers.list(trigger="core.st2.sensor.process_spawn")
                  if s["payload"]["object"]["ref"] == "demo.Counter"]
        assert len(spawns) >= 2
        assert restarts() - before == 1  # the metric counts the one restart after the crash
        # The datastore keys are local to the sensor class, as StackStorm's.
        assert (await squall.db(squall.datastore.get, "demo.Counter:crash_once"))["value"] == "done"
        # An invalid payload was refused (and logged); none was stored with it.
        ticks = await squall.triggers.list(trigger="demo.tick", limit=1000)
        assert all(isinstance(t["payload"]["n"], int) for t in ticks)

        # The passive sensor learned the rule's trigger parameters through add_trigger and dispatched for them.
        async def file_enforcements() -> list[dict[str, Any]]:
            await squall.rules.settle()
            return await squall.rules.enforcements(rule="demo.on_file")

        (seen,) = await eventually(file_enforcements)
        execution = await squall.executions.wait(seen["execution_id"])
        assert execution["parameters"]["message"] == "/var/log/app.log"
    finally:
        await squall.close()  # the watcher ignores SIGTERM: it is killed after stop_timeout
    assert all(r.process is None or r.process.returncode is not None for r in squall.sensors.running.values())


async def test_a_removed_sensor_stops_and_a_new_one_starts_on_reload(home: Path) -> None:
    pack = sensor_pack(home)
    (pack / "sensors" / "watcher.yaml").unlink()
    squall = await started(home)
    try:
        await run_sensors(squall)
        assert set(squall.sensors.running) == {"demo.Counter"}
        counter = squall.sensors.running["demo.Counter"]
        (pack / "sensors" / "counter.yaml").unlink()
        write(pack / "sensors" / "watcher.yaml", "class_name: Watcher\nentry_point: watcher.py\n")
        squall.reload()
        await squall.sync_sensors()
        assert set(squall.sensors.running) == {"demo.Watcher"}
        assert counter.process is None or counter.process.returncode is not None
    finally:
        await squall.close()


async def test_of_two_services_on_one_database_only_the_leader_runs_sensors(home: Path) -> None:
    """Two `squall serve` on one database would poll every source twice; the follower runs none
    until the leader goes, then takes over."""
    pack = sensor_pack(home)
    (pack / "sensors" / "watcher.yaml").unlink()
    first, second = await started(home), await started(home)
    try:
        await run_sensors(first)
        await run_sensors(second)
        assert set(first.sensors.running) == {"demo.Counter"} and first.sensor_lead
        assert second.sensors.running == {} and not second.sensor_lead
        await first.close()
        assert await second.leading()  # what `squall serve` checks each second
        await second.sync_sensors()
        assert set(second.sensors.running) == {"demo.Counter"} and second.sensor_lead
    finally:
        await first.close()
        await second.close()


SENSOR_TOKEN = "sensor-Tok3n-encrypted"
SENSOR_PASSWORD = "sensor-Pa55-decrypt-kv"
STATIC_SECRET = "static-Secr3t-of-the-config"

PROBE = f'''
import json
import time

from st2reactor.sensor.base import Sensor


class Probe(Sensor):
    def setup(self):
        config = self.config
        self.sensor_service.set_value("seen", json.dumps({{
            "region": config["region"], "hosts": config["hosts"], "mine": config["mine"],
            "token_ok": config["token"] == "{SENSOR_TOKEN}",
            "password_ok": config["auth"]["password"] == "{SENSOR_PASSWORD}",
        }}))
        self.sensor_service.get_logger("probe").info("token %s password %s static %s", config["token"],
                                                     config["auth"]["password"], config["static"])

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


async def test_a_sensor_starts_with_its_configs_dynamic_values_rendered(home: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """As StackStorm's sensor wrapper loads it: `st2kv.system` and `decrypt_kv` rendered, a secret item's
    encrypted key decrypted, `st2kv.user` reading nothing; the secrets masked in the sensor's log lines."""
    pack = make_pack(home, {})
    write(pack / "config.schema.yaml", """
        token: {type: string, secret: true, default: "{{ st2kv.system.sensor_token }}"}
        auth: {type: object, properties: {password: {type: string, secret: true}}}
        static: {type: string, secret: true}
        region: {type: string}
        hosts: {type: array, items: {type: string}}
        mine: {type: string}
    """)
    write(home / "configs" / "demo.yaml", f"""
        auth: {{password: "{{{{ st2kv.system.sensor_pw | decrypt_kv }}}}"}}
        static: "{STATIC_SECRET}"
        region: "{{{{ st2kv.system.sensor_region }}}}"
        hosts: ["{{{{ st2kv.system.sensor_host }}}}", static.example]
        mine: "{{{{ st2kv.user.sensor_mine }}}}"
    """)
    write(pack / "sensors" / "probe.yaml", "class_name: Probe\nentry_point: probe.py\n")
    (pack / "sensors" / "probe.py").write_text(PROBE)
    caplog.set_level(logging.INFO, logger="squall.sensor.demo.Probe")
    squall = await started(home)
    try:
        ds = squall.datastore
        await squall.db(ds.set, "sensor_token", SENSOR_TOKEN, encrypt=True)
        await squall.db(ds.set, "sensor_pw", SENSOR_PASSWORD, encrypt=True)
        await squall.db(ds.set, "sensor_region", "eu-north-1")
        await squall.db(ds.set, "sensor_host", "sensors.example")
        await squall.db(ds.set, "sensor_mine", "nobodys", scope="user", user="sensor_service")
        await run_sensors(squall)

        async def seen() -> Any:
            return await squall.db(ds.get, "demo.Probe:seen")

        record = await eventually(seen)
        assert record is not None, "the sensor never started"
        assert json.loads(record["value"]) == {"region": "eu-north-1", "hosts": ["sensors.example", "static.example"],
                                               "mine": None, "token_ok": True, "password_ok": True}
        assert await eventually(lambda: asyncio.sleep(0, "token ********" in caplog.text))
        assert "password ******** static ********" in caplog.text
        for secret in (SENSOR_TOKEN, SENSOR_PASSWORD, STATIC_SECRET):
            assert secret not in caplog.text
        # The pack's loaded config is left as written.
        assert squall.registry.packs["demo"].config["region"] == "{{ st2kv.system.sensor_region }}"
    finally:
        await squall.close()


async def test_a_sensor_whose_config_value_does_not_render_does_not_start(home: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    pack = make_pack(home, {})
    write(pack / "config.schema.yaml", "token: {type: string, secret: true}\n")
    write(home / "configs" / "demo.yaml", 'token: "{{ st2kv.system.sensor_missing | decrypt_kv }}"\n')
    write(pack / "sensors" / "probe.yaml", "class_name: Probe\nentry_point: probe.py\n")
    (pack / "sensors" / "probe.py").write_text(PROBE)
    caplog.set_level(logging.ERROR, logger="engine.sensors")
    squall = await started(home)
    try:
        await run_sensors(squall)
        assert await eventually(lambda: asyncio.sleep(0, 'config key "token"' in caplog.text))
        assert "sensor demo.Probe could not start" in caplog.text
        assert 'st2kv.system.sensor_missing' in caplog.text
        assert await squall.db(squall.datastore.get, "demo.Probe:seen") is None
    finally:
        await squall.close()


FALLBACK = """
import json
import time

from st2reactor.sensor.base import Sensor


class Fallback(Sensor):
    def setup(self):
        try:  # as the jenkins and napalm packs read an optional key
            username = self.config["username"]
        except KeyError as missing:
            username = {"missing": missing.args[0], "said": str(missing)}
        self.sensor_service.set_value("seen", json.dumps({"username": username, "url": self.config["url"],
                                                           "got": self.config.get("password", "none")}))

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
"""


async def test_a_config_key_not_set_is_a_key_error_the_sensor_can_catch(home: Path) -> None:
    """StackStorm's sensors get their config as a plain dict: a key not set is a KeyError, which says here which
    key and where to set it."""
    pack = make_pack(home, {})
    write(pack / "config.schema.yaml", """
        url: {type: string, required: true}
        username: {type: string, required: false}
        password: {type: string, secret: true, required: false}
    """)
    write(home / "configs" / "demo.yaml", "url: https://jenkins.example\n")
    write(pack / "sensors" / "fallback.yaml", "class_name: Fallback\nentry_point: fallback.py\n")
    (pack / "sensors" / "fallback.py").write_text(FALLBACK)
    squall = await started(home)
    try:
        await run_sensors(squall)
        record = await eventually(lambda: squall.db(squall.datastore.get, "demo.Fallback:seen"))
        assert record is not None, "the sensor never started"
        said = ('config key "username" is not set for this pack; set it in configs/<pack>.yaml or give it a '
                "default in config.schema.yaml")
        assert json.loads(record["value"]) == {"username": {"missing": "username", "said": said},
                                               "url": "https://jenkins.example", "got": "none"}
    finally:
        await squall.close()


# -- an edited sensor runs its new code -----------------------------------------------------------

VERSIONED = '''
import time

from shared import LIB
from st2reactor.sensor.base import Sensor

VERSION = "{version}"


class Versioned(Sensor):
    def setup(self):
        self.sensor_service.set_value("running", VERSION + " " + LIB)

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


async def test_an_edited_sensor_restarts_with_its_new_code(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reload after an edit of the sensor's file, or of the pack's lib/ it imports, restarts the
    sensor (as StackStorm restarts a re-registered one); a reload that changed nothing of it does not."""
    pack = make_pack(home, {})
    write(pack / "sensors" / "versioned.yaml", "class_name: Versioned\nentry_point: versioned.py\n")
    (pack / "sensors" / "versioned.py").write_text(VERSIONED.format(version="v1"))
    write(pack / "lib" / "shared.py", 'LIB = "lib1"\n')
    caplog.set_level(logging.INFO, logger="engine.sensors")
    squall = await started(home)

    async def running() -> Any:
        record = await squall.db(squall.datastore.get, "demo.Versioned:running")
        return record["value"] if record else None

    async def reloaded() -> None:
        squall.reload()
        await squall.sync_sensors()

    try:
        await run_sensors(squall)
        assert await eventually(running) == "v1 lib1"
        first = squall.sensors.running["demo.Versioned"]
        await reloaded()
        assert squall.sensors.running["demo.Versioned"] is first, "a reload that changed nothing restarted it"
        (pack / "sensors" / "versioned.py").write_text(VERSIONED.format(version="v2.0"))
        await reloaded()
        assert await eventually(lambda: _is(running, "v2.0 lib1")), "the edited sensor kept its old code"
        assert "sensor demo.Versioned changed; restarting" in caplog.text
        assert first.process is None
        write(pack / "lib" / "shared.py", 'LIB = "lib2.0"\n')
        await reloaded()
        assert await eventually(lambda: _is(running, "v2.0 lib2.0")), "an edit of the pack's lib/ was not picked up"
    finally:
        await squall.close()


async def _is(read: Callable[[], Awaitable[Any]], wanted: Any) -> bool:
    return await read() == wanted


# -- the relay of a sensor's output ---------------------------------------------------------------

class _Pipe:
    """What `_relay_logs` closes at the end: the log pipe's transport."""

    def close(self) -> None:
        pass


def _relaying(container: SensorContainer, output: asyncio.StreamReader) -> asyncio.Task[None]:
    """`container` relaying `output` as the output of a sensor demo.Noisy, in a task."""
    spec = SensorSpec(pack="demo", class_name="Noisy", file=Path("/nonexistent/demo/sensors/noisy.py"),
                      metadata_file="demo/sensors/noisy.yaml")
    pipe: Any = _Pipe()
    return asyncio.get_running_loop().create_task(container._relay_logs(_Running(spec, {}, Path()), output, pipe))


def _container(**options: Any) -> SensorContainer:
    async def unused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("not called by the relay")

    return SensorContainer(unused, unused, Path("/nonexistent"), **options)


async def test_relaying_a_flood_of_output_lines_leaves_the_event_loop_free(caplog: pytest.LogCaptureFixture) -> None:
    """Lines already in the buffer are read without awaiting anything: the relay yields to the loop
    every `_YIELD_EVERY` lines, so a sensor writing short lines as fast as it can does not stall
    serve (its API, chat, other sensors)."""
    caplog.set_level(logging.INFO, logger="squall.sensor.demo.Noisy")
    lines = 20 * _YIELD_EVERY
    output = asyncio.StreamReader(limit=2 ** 20)
    output.feed_data(b"x\n" * lines)
    output.feed_eof()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticking = asyncio.get_running_loop().create_task(ticker())
    relay = _relaying(_container(log_lines_per_second=10 * lines), output)
    await relay
    ticking.cancel()
    assert ticks >= lines // _YIELD_EVERY - 1, f"the ticker ran {ticks} times while {lines} lines were relayed"
    assert sum(r.getMessage() == "x" for r in caplog.records) == lines


async def test_a_sensors_output_over_its_line_budget_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """Past `log_lines_per_second` lines in a second, a sensor's lines are dropped; how many is logged
    (once a second at most), so a sensor stuck printing cannot fill serve's log or hold its loop."""
    caplog.set_level(logging.INFO)
    lines = 5000
    output = asyncio.StreamReader(limit=2 ** 20)
    output.feed_data(b"".join(b"line %d\n" % i for i in range(lines)))
    output.feed_eof()
    relay = _relaying(_container(log_lines_per_second=10), output)
    await relay
    relayed = [r.getMessage() for r in caplog.records if r.name == "squall.sensor.demo.Noisy"
               and r.getMessage().startswith("line ")]
    suppressed = [r.getMessage() for r in caplog.records if "lines suppressed" in r.getMessage()]
    counts = [int(text.split(" lines suppressed")[0].rsplit(" ", 1)[-1]) for text in suppressed]
    assert relayed[:10] == [f"line {i}" for i in range(10)]
    assert 10 <= len(relayed) < lines and counts, (len(relayed), suppressed)
    assert len(relayed) + sum(counts) == lines, (len(relayed), suppressed)
    assert all("demo.Noisy" in text and "over 10 lines a second" in text for text in suppressed), suppressed


async def test_the_longest_line_the_relay_takes_passes_its_byte_budget_alone(caplog: pytest.LogCaptureFixture) -> None:
    """The byte budget is no smaller than the longest line the relay takes, so such a line is relayed when
    it comes first in its second (a large response logged once), and what follows it in that second is
    dropped and counted with its size, as a flood is."""
    from engine.sensors import _LOG_LINE_LIMIT, LOG_BYTES_PER_SECOND

    caplog.set_level(logging.INFO)
    longest = min(_LOG_LINE_LIMIT, LOG_BYTES_PER_SECOND)
    output = asyncio.StreamReader(limit=_LOG_LINE_LIMIT)
    output.feed_data(b"a" * longest + b"\n" + b"after\n")
    output.feed_eof()
    await _relaying(_container(), output)
    relayed = [r.getMessage() for r in caplog.records if r.name == "squall.sensor.demo.Noisy"]
    suppressed = [r.getMessage() for r in caplog.records if "lines suppressed" in r.getMessage()]
    assert [len(text) for text in relayed] == [longest], [text[:20] for text in relayed]
    assert len(suppressed) == 1 and "demo.Noisy" in suppressed[0] and ": 1 lines suppressed (5 bytes)" in suppressed[0]


async def test_an_overlong_output_line_is_dropped_whole(caplog: pytest.LogCaptureFixture) -> None:
    """A line longer than the limit that arrives in parts: the warning says it was dropped, and none
    of it is logged (its tail was, as a line of its own)."""
    caplog.set_level(logging.INFO, logger="squall.sensor.demo.Noisy")
    output = asyncio.StreamReader(limit=1024)
    relay = _relaying(_container(), output)
    output.feed_data(b"ok before\n" + b"a" * 3000)
    for _ in range(100):  # the relay reads what is buffered, over the limit, and waits for the rest
        await asyncio.sleep(0)
    output.feed_data(b"aaa TAIL of the long line\nok after\n")
    output.feed_eof()
    await relay
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "ok before" and messages[-1] == "ok after", messages
    assert sum("was dropped" in text for text in messages) == 1, messages
    assert not any("TAIL" in text or text.startswith("aaa") for text in messages), messages


async def test_a_message_longer_than_the_readers_buffer_is_gathered_whole_up_to_the_line_limit() -> None:
    """The message pipe's reader buffers little, so that a sensor dispatching faster than serve stores
    waits; a message longer than that buffer, up to the line limit, is still read whole from its parts,
    and a longer one is dropped whole, the lines after it read as they are."""
    reader = asyncio.StreamReader(limit=1024)
    lines: list[bytes | str] = []

    async def read_all() -> None:
        while True:
            try:
                line = await _next_line(reader, 16_000)
            except _LineTooLong:
                lines.append("dropped")
                continue
            if line is None:
                return
            lines.append(line)

    reading = asyncio.get_running_loop().create_task(read_all())
    reader.feed_data(b"short\n" + b"a" * 5000)
    for _ in range(100):  # the reader takes what is buffered, over its limit, and waits for the rest
        await asyncio.sleep(0)
    reader.feed_data(b"b" * 5000 + b"\n" + b"c" * 20_000)
    for _ in range(100):
        await asyncio.sleep(0)
    reader.feed_data(b"c TAIL\nnext\nlast")
    reader.feed_eof()
    await reading
    assert lines == [b"short\n", b"a" * 5000 + b"b" * 5000 + b"\n", "dropped", b"next\n", b"last"]


# -- secrets a sensor decrypts --------------------------------------------------------------------

DECRYPTING = '''
import time

from st2reactor.sensor.base import Sensor


class Decrypting(Sensor):
    def setup(self):
        log = self.sensor_service.get_logger("decrypting")
        token = self.sensor_service.get_value("api_token", local=False, decrypt=True)
        plain = self.sensor_service.get_value("api_region", local=False, decrypt=True)
        log.info("token %s region %s", token, plain)
        print("printed token " + token, flush=True)
        self.sensor_service.set_value("done", "yes")

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


async def test_a_value_a_sensor_decrypts_is_masked_in_its_log_lines(home: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """docs/security.md: decrypted datastore values are masked in logs. A sensor's `get_value(...,
    decrypt=True)` of an encrypted key adds the plaintext to what its log lines are scrubbed of; the
    value of a key that is not encrypted is not masked."""
    pack = make_pack(home, {})
    write(pack / "sensors" / "decrypting.yaml", "class_name: Decrypting\nentry_point: decrypting.py\n")
    (pack / "sensors" / "decrypting.py").write_text(DECRYPTING)
    caplog.set_level(logging.INFO, logger="squall.sensor.demo.Decrypting")
    squall = await started(home)
    try:
        await squall.db(squall.datastore.set, "api_token", "tok-PLAINTEXT-9f8e7d", encrypt=True)
        await squall.db(squall.datastore.set, "api_region", "eu-north-1")
        await run_sensors(squall)
        assert await eventually(lambda: asyncio.sleep(0, "printed token" in caplog.text)), "the sensor never logged"
        assert "token ******** region eu-north-1" in caplog.text
        assert "printed token ********" in caplog.text
        assert "tok-PLAINTEXT-9f8e7d" not in caplog.text
    finally:
        await squall.close()


class _Clock:
    """`call_later` for `_Repeats`, run by hand: `tick()` ends the intervals due, no real time passes."""

    def __init__(self) -> None:
        self.due: list[tuple[Callable[[], None], asyncio.TimerHandle]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(0.0, lambda: None, (), asyncio.get_running_loop())
        self.due.append((callback, handle))
        return handle

    def tick(self) -> None:
        due, self.due = self.due, []
        for callback, handle in due:
            if not handle.cancelled():
                callback()


async def test_a_repeated_bad_dispatch_is_said_once_per_interval_with_how_many_were_like_it() -> None:
    """The first at once, with its detail; the ones like it in its interval counted and the count said
    as it ends; one that keeps coming said once per interval; one that stopped, at once when it is back."""
    said: list[str] = []
    clock = _Clock()
    repeats = _Repeats(10, said.append, call_later=clock.call_later)
    for _ in range(37_900):
        repeats.say('dispatched for an unknown trigger "b.typo"', ": the instance is dropped")
    repeats.say("dispatched an invalid trigger instance: bad n")
    assert said == ['dispatched for an unknown trigger "b.typo": the instance is dropped',
                    "dispatched an invalid trigger instance: bad n"]
    clock.tick()
    assert said[2:] == ['dispatched for an unknown trigger "b.typo" ... and 37,899 more like it in the last 10 s']
    repeats.say('dispatched for an unknown trigger "b.typo"', ": the instance is dropped")  # still coming: counted
    clock.tick()
    assert said[3:] == ['dispatched for an unknown trigger "b.typo" ... and 1 more like it in the last 10 s']
    clock.tick()  # an interval without it: forgotten, said at once when it is back
    assert len(said) == 4 and not clock.due
    repeats.say('dispatched for an unknown trigger "b.typo"', ": the instance is dropped")
    assert said[4:] == ['dispatched for an unknown trigger "b.typo": the instance is dropped']


async def test_bad_dispatches_past_the_distinct_ones_kept_are_counted_together_and_flushed() -> None:
    """A payload error that names a different value each time is a different problem each time: past
    `most` of them in an interval, they are only counted together, so neither the log nor the memory
    grows with them; what is counted and not yet said is said when the sensor stops."""
    said: list[str] = []
    clock = _Clock()
    repeats = _Repeats(10, said.append, most=3, call_later=clock.call_later)
    for i in range(5000):
        repeats.say(f"dispatched an invalid trigger instance: {i!r} is not of type 'integer'")
    assert said == [f"dispatched an invalid trigger instance: {i!r} is not of type 'integer'" for i in range(3)]
    assert len(repeats.counts) == 4
    repeats.flush()
    assert said[3:] == ["dispatched other bad trigger instances until the sensor stopped: 4,997 of them, not "
                        "logged one by one (more than 3 distinct problems)"]
    assert not repeats.counts and all(handle.cancelled() for _, handle in clock.due)
