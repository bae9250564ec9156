"""StackStorm's Python action and sensor contract as Exchange packs rely on it (issue 16, item 2).

Fixture packs are written here the way Exchange packs write them: constructors without
`action_service`, classes that do not derive from `Action`, st2common helpers, `six` used without
declaring it, results that are not plain JSON, and `/opt/stackstorm/packs/<pack>` hard-coded.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from glob import glob
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.runners.python import COMPAT_PATH, _pythonpath
from tests.conftest import write

PACK = "st2contract"

ACTIONS: dict[str, str] = {
    # Ends as a StackStorm interpreter does: its thread waited for, its exit handler run.
    "interpreter_end": """
        import atexit
        import sys
        import threading
        import time

        from st2common.runners.base_action import Action


        class InterpreterEnd(Action):
            def run(self):
                def later():
                    time.sleep(0.1)
                    print("thread finished", flush=True)

                threading.Thread(target=later).start()
                atexit.register(lambda: print("atexit ran", flush=True))
                return list(sys.version_info[:2])
    """,
    # An old-style constructor, as in the aws, pagerduty, jenkins, vault... packs.
    "config_only": """
        from st2common.runners.base_action import Action


        class ConfigOnly(Action):
            def __init__(self, config):
                super(ConfigOnly, self).__init__(config=config)
                self.region = config["region"]

            def run(self):
                return {"region": self.region, "user": self.action_service.get_user_info(),
                        "stored": self.action_service.set_value("k", "v")}
    """,
    # The jira pack's shape: a base class of its own named Action, no st2common import at all.
    "duck": """
        class Action(object):
            def __init__(self, config):
                self.config = config


        class Helper(object):
            pass


        class DuckAction(Action):
            def run(self, text):
                return {"echo": text, "region": self.config["region"],
                        "has_service": self.action_service is not None}
    """,
    # Two action classes: StackStorm takes the first by name, not by position in the file.
    "two_classes": """
        from st2common.runners.base_action import Action


        class Zulu(Action):
            def run(self):
                return "zulu"


        class Alpha(Action):
            def run(self):
                return "alpha"
    """,
    # A TypeError of the constructor's own is the action's failure, not a reason to retry.
    "own_type_error": """
        from st2common.runners.base_action import Action


        class Broken(Action):
            def __init__(self, config, action_service=None):
                raise TypeError("broken on purpose")

            def run(self):
                return "never"
    """,
    "helpers": """
        import datetime

        from st2common.exceptions import StackStormBaseException
        from st2common.exceptions.action import InvalidActionParameterException
        from st2common.runners.base_action import Action
        from st2common.util import isotime, jsonify
        from st2common.util.shell import quote_unix, run_command


        class Helpers(Action):
            def run(self):
                parsed = isotime.parse("2024-05-06 07:08:09.123Z")
                code, out, err = run_command(["echo", "from run_command"])
                try:
                    raise InvalidActionParameterException("bad value")
                except StackStormBaseException as exc:
                    caught = str(exc)
                return {
                    "parsed": isotime.format(parsed),
                    "naive": isotime.format(datetime.datetime(2024, 1, 2, 3, 4, 5), usec=False, offset=False),
                    "valid": isotime.validate("2024-01-02T03:04:05+01:00", raise_exception=False),
                    "run": [code, out, err],
                    "quoted": quote_unix("it's"),
                    "json": jsonify.json_encode({"raw": b"bytes"}),
                    "try_loads": jsonify.try_loads('{"a": 1}'),
                    "caught": caught,
                }
    """,
    "uses_six": """
        import six

        from st2common.runners.base_action import Action


        class UsesSix(Action):
            def run(self):
                return {"text": six.text_type("x"), "version": six.__version__}
    """,
    "values": """
        import dataclasses
        import datetime
        import enum
        import uuid

        from st2common.runners.base_action import Action


        class Colour(enum.Enum):
            RED = "red"


        @dataclasses.dataclass
        class Point:
            x: int
            y: int


        class Values(Action):
            def run(self, mode):
                if mode == "bytes":
                    return b"raw\\x00bytes"
                if mode == "bytes_ok":
                    return (True, {"body": b"abc"})
                if mode == "rich":
                    return (True, {
                        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
                        "day": datetime.date(2024, 1, 2),
                        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
                        "colour": Colour.RED,
                        "point": Point(1, 2),
                        "nan": float("nan"),
                        "pair": (1, 2),
                    })
                if mode == "set":
                    return {1, 2}
                raise ValueError(mode)
    """,
    "opt_paths": """
        import os

        from st2common.runners.base_action import Action

        ROOT = "/opt/stackstorm/packs/st2contract"


        class OptPaths(Action):
            def run(self):
                with open(ROOT + "/templates/greeting.txt") as handle:
                    text = handle.read().strip()
                return {
                    "text": text,
                    "exists": os.path.exists(ROOT + "/templates"),
                    "isfile": os.path.isfile(ROOT + "/templates/greeting.txt"),
                    "listed": os.listdir(ROOT + "/templates"),
                    "other_pack": os.path.isdir("/opt/stackstorm/packs/neighbour/actions"),
                    "missing_pack": os.path.exists("/opt/stackstorm/packs/nowhere"),
                    "variable_hidden": "_SQUALL_PACK_PATH" not in os.environ,
                }
    """,
}


@pytest.fixture
def home(home: Path) -> Path:
    """The conftest home plus the contract pack (and a neighbour pack for the path mapping)."""
    pack = home / "packs" / PACK
    write(pack / "pack.yaml", f"""
        name: {PACK}
        description: StackStorm action contract fixtures
        version: 0.1.0
        author: tests
    """)
    write(home / "configs" / f"{PACK}.yaml", """
        region: eu-west
    """)
    write(pack / "templates" / "greeting.txt", "hello from the pack folder\n")
    for name, code in ACTIONS.items():
        write(pack / "actions" / f"{name}.py", code)
        parameters = {"duck": {"text": {"type": "string"}}, "values": {"mode": {"type": "string"}}}.get(name, {})
        write(pack / "actions" / f"{name}.yaml", json.dumps({
            "name": name, "runner_type": "python-script", "entry_point": f"{name}.py", "parameters": parameters,
        }))
    neighbour = home / "packs" / "neighbour"
    write(neighbour / "pack.yaml", """
        name: neighbour
        description: a second pack beside the first
        version: 0.1.0
        author: tests
    """)
    (neighbour / "actions").mkdir()
    return home


async def run(app: Squall, action: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    record = await app.executions.request(f"{PACK}.{action}", params or {})
    return await app.executions.wait(record["id"], timeout=60)


# -- construction and class choice ------------------------------------------------------------


async def test_constructor_without_action_service_gets_it_assigned(squall: Squall) -> None:
    done = await run(squall, "config_only")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {"region": "eu-west", "user": {"username": "squall"}, "stored": True}


async def test_duck_typed_class_with_run_is_accepted(squall: Squall) -> None:
    done = await run(squall, "duck", {"text": "hi"})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {"echo": "hi", "region": "eu-west", "has_service": True}


async def test_first_action_class_by_name_is_chosen(squall: Squall) -> None:
    done = await run(squall, "two_classes")
    assert done["result"]["result"] == "alpha"


async def test_constructor_type_error_of_its_own_is_not_retried(squall: Squall) -> None:
    done = await run(squall, "own_type_error")
    assert done["status"] == "failed"
    assert "broken on purpose" in done["result"]["stderr"]


# -- st2common modules and runtime packages ---------------------------------------------------


async def test_st2common_helpers_packs_import(squall: Squall) -> None:
    done = await run(squall, "helpers")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {
        "parsed": "2024-05-06T07:08:09.123000+00:00",
        "naive": "2024-01-02T03:04:05Z",
        "valid": False,
        "run": [0, "from run_command\n", ""],
        "quoted": "'it'\"'\"'s'",
        "json": '{"raw": "bytes"}',
        "try_loads": {"a": 1},
        "caught": "bad value",
    }


async def test_six_is_on_every_action_path(squall: Squall) -> None:
    done = await run(squall, "uses_six")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"]["text"] == "x"


async def test_pack_virtualenv_packages_win_over_squalls(squall: Squall) -> None:
    """A pack's own pinned copy of a runtime package is the one it imports, as in StackStorm."""
    site = squall.config.virtualenvs_path / PACK / "lib" / "python3.0" / "site-packages"
    write(site / "six.py", """
        __version__ = "pinned-by-the-pack"
        text_type = str
    """)
    done = await run(squall, "uses_six")
    assert done["result"]["result"]["version"] == "pinned-by-the-pack"


def test_runtime_packages_follow_the_pack_and_squalls_site_packages(tmp_path: Path) -> None:
    import six

    parts = _pythonpath(tmp_path / "pack", tmp_path / "venv").split(os.pathsep)
    assert parts[0] == str(COMPAT_PATH)
    assert str(Path(six.__file__).parent) in parts


# -- results ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("bytes", "b'raw\\x00bytes'"),
        ("bytes_ok", "{'body': b'abc'}"),
        ("set", "{1, 2}"),
        ("rich", {"when": "2024-01-02T03:04:05+00:00", "day": "2024-01-02",
                  "id": "12345678-1234-5678-1234-567812345678", "colour": "red", "point": {"x": 1, "y": 2},
                  "nan": None, "pair": [1, 2]}),
    ],
)
async def test_results_stored_as_stackstorm_serializes_them(squall: Squall, mode: str, expected: Any) -> None:
    done = await run(squall, "values", {"mode": mode})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == expected


# -- /opt/stackstorm/packs --------------------------------------------------------------------


@pytest.mark.skipif(os.path.lexists("/opt/stackstorm/packs"), reason="this machine has StackStorm's pack folder")
async def test_opt_stackstorm_packs_paths_read_the_pack_folder(squall: Squall) -> None:
    done = await run(squall, "opt_paths")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {
        "text": "hello from the pack folder", "exists": True, "isfile": True, "listed": ["greeting.txt"],
        "other_pack": True, "missing_pack": False, "variable_hidden": True,
    }


# -- sensors (the wrapper's constructor, in a process of its own as sensors run) ----------------

SENSORS = """
from squall_sensor import make_sensor
from st2reactor.sensor.base import PollingSensor, Sensor


class Base(object):
    def setup(self): pass
    def run(self): pass
    def cleanup(self): pass
    def add_trigger(self, trigger): pass
    def update_trigger(self, trigger): pass
    def remove_trigger(self, trigger): pass


class NoPollArgument(Base, PollingSensor):
    def __init__(self, sensor_service, config=None):
        super(NoPollArgument, self).__init__(sensor_service=sensor_service, config=config)

    def poll(self): pass


class ConfigOnly(Base, Sensor):
    def __init__(self, config):
        self.config = config


class Standard(Base, PollingSensor):
    def poll(self): pass


out = {}
sensor = make_sensor(NoPollArgument, "service", {"a": 1}, None)
out["no_poll_default"] = sensor.get_poll_interval()
sensor = make_sensor(NoPollArgument, "service", {"a": 1}, 30)
out["no_poll_given"] = sensor.get_poll_interval()
sensor = make_sensor(ConfigOnly, "service", {"a": 1}, None)
out["config_only"] = [sensor.config, sensor.sensor_service]
sensor = make_sensor(Standard, "service", {"a": 1}, 7)
out["standard"] = [sensor.get_poll_interval(), sensor.sensor_service, sensor.config]
print(json.dumps(out))
"""


def test_sensor_construction_as_stackstorm_and_forgiving() -> None:
    code = "import json\n" + SENSORS
    env = {**os.environ, "PYTHONPATH": str(COMPAT_PATH)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "no_poll_default": 5, "no_poll_given": 30, "config_only": [{"a": 1}, "service"],
        "standard": [7, "service", {"a": 1}],
    }


def test_nan_is_null_and_big_integers_fall_back_to_text() -> None:
    code = ("from squall_worker import stored_result\n"
            "import json\n"
            "print(json.dumps([stored_result(float('inf')), stored_result({'n': 2 ** 70}), "
            "stored_result({1: 'int key'})]))\n")
    env = {**os.environ, "PYTHONPATH": str(COMPAT_PATH)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [None, str({"n": 2 ** 70}), "{1: 'int key'}"]


# -- the pack's interpreter -------------------------------------------------------------------


def test_compat_code_is_python_3_8() -> None:
    """Everything in engine/compat runs under the pack's virtualenv, which may be Python 3.8 (the one
    StackStorm 3.8 ships)."""
    for path in sorted(COMPAT_PATH.rglob("*.py")):
        ast.parse(path.read_text(), str(path), feature_version=(3, 8))


#: A real Python 3.8 on this machine, if any (pyenv's or the system's).
PYTHON_3_8 = next(iter(sorted(glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))), None) or \
    next((path for path in ("/usr/bin/python3.8", "/usr/local/bin/python3.8") if os.path.exists(path)), None)


@pytest.mark.parametrize("interpreter", ["without_3_9_functions", *(["python3.8"] if PYTHON_3_8 else [])])
async def test_a_pack_virtualenv_of_python_3_8(squall: Squall, tmp_path: Path, interpreter: str) -> None:
    """The worker uses nothing newer than Python 3.8 offers (`os.waitstatus_to_exitcode` is 3.9's):
    checked with this Python minus that function, and with a real 3.8 where there is one."""
    venv_python = squall.config.virtualenvs_path / PACK / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    if interpreter == "python3.8":
        assert PYTHON_3_8 is not None  # collected only where there is one
        venv_python.symlink_to(PYTHON_3_8)
    else:
        write(tmp_path / "shim" / "sitecustomize.py", "import os\ndel os.waitstatus_to_exitcode\n")
        venv_python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "shim"}:$PYTHONPATH exec {sys.executable} "$@"\n')
        venv_python.chmod(0o755)
    for _ in range(2):  # the worker reports the first run's exit and serves the next
        done = await run(squall, "interpreter_end")
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["stdout"] == "thread finished\natexit ran\n"
    if interpreter == "python3.8":
        assert done["result"]["result"] == [3, 8]
