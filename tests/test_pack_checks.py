"""Pack problems are found the one way `squall serve` finds them, and said once, where people look.

`squall pack list` and `squall pack reload` report what serve reports (rules and aliases naming a missing
action, policies of an unknown type, sensors whose class is not in their module), `pack reload` exits 1
for them; what loads all the same (a version that is not semver, an alias format's stray `{{`) is a
warning. Serve starts no sensor it cannot import, and relays a sensor's traceback as one record."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from bot.pack_content import check_content
from engine.config import SYSTEM_PACKS_PATH
from engine.packs import ContentWarning, load_registry
from engine.sensors import SensorContainer, SensorSpec, _Running
from tests.conftest import write
from tests.test_cli import like_a_process
from tests.test_rules import make_pack, started
from tests.test_sensors import eventually, run_sensors

PACK_YAML = "ref: p\nname: p\ndescription: d\nversion: {version}\nauthor: a\nemail: a@b.c\n"


def broken_pack(home: Path) -> Path:
    """A pack whose rule and alias name a missing action, whose policy has an unknown type and whose sensor's
    class is not in its module: serve skips all four."""
    pack = home / "packs" / "p"
    write(pack / "pack.yaml", PACK_YAML.format(version="1.0.0"))
    write(pack / "actions" / "a.yaml", "name: a\nrunner_type: noop\n")
    write(pack / "rules" / "r.yaml", """
        name: r
        pack: p
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: x}}
        action: {ref: p.nope}
    """)
    write(pack / "aliases" / "al.yaml", 'name: al\naction_ref: p.nope\nformats: ["do it"]\n')
    write(pack / "policies" / "pol.yaml", """
        name: pol
        resource_ref: p.a
        policy_type: action.concurrencyy
        parameters: {threshold: 1}
    """)
    write(pack / "sensors" / "s.yaml", "class_name: NoSuchClass\nentry_point: s.py\ntrigger_types: [{name: ev}]\n")
    write(pack / "sensors" / "s.py", "x = 1\n")
    return pack


BROKEN_FILES = ("rules/r.yaml", "aliases/al.yaml", "policies/pol.yaml", "sensors/s.yaml")


def _files(problems: list[dict[str, Any]]) -> set[str]:
    return {"/".join(Path(p["file"]).parts[-2:]) for p in problems}


def test_pack_reload_reports_what_serve_skips_and_exits_1(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pack reload` said 'loaded 5 packs' and exited 0 though a rule and an alias named a missing action;
    neither it nor `pack list` named the policy of an unknown `policy_type` or the sensor without its class."""
    squall = like_a_process(home, monkeypatch)
    broken_pack(home)
    reloaded = squall("pack", "reload")
    assert reloaded.returncode == 1, reloaded.stderr
    assert "4 pack files skipped" in reloaded.stdout
    for file in BROKEN_FILES:
        assert sum(f"packs/p/{file}:" in line for line in reloaded.stderr.splitlines()) == 1, (file, reloaded.stderr)
    assert "unknown policy_type 'action.concurrencyy'" in reloaded.stderr
    assert 'class_name "NoSuchClass" is not defined in sensors/s.py' in reloaded.stderr

    document = json.loads(squall("pack", "reload", "--json").stdout)
    assert len(document["errors"]) == 4 and document["warnings"] == []
    listed = squall("pack", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert set(BROKEN_FILES) <= _files(json.loads(listed.stdout)["problems"])


def test_a_sensor_module_that_does_not_parse_is_a_problem(home: Path) -> None:
    from bot.pack_content import pack_problems

    pack = broken_pack(home)
    (pack / "sensors" / "s.py").write_text("class NoSuchClass(:\n    pass\n")
    problems = [str(p) for p in pack_problems(load_registry([home / "packs"], home / "configs", SYSTEM_PACKS_PATH))]
    said = [p for p in problems if "sensors/s.yaml" in p]
    assert len(said) == 1 and "sensors/s.py does not parse" in said[0] and "(line 1)" in said[0], problems


def test_a_sensor_module_squalls_python_cannot_parse_still_starts(tmp_path: Path) -> None:
    """Squall's Python reads the module; the pack's virtualenv may run a newer one (3.12's f-strings hold
    quotes of their own kind). Refused, such a sensor never ran: it is a warning, and the sensor starts
    (if its interpreter cannot read it either, its import fails and it waits for a change)."""
    from engine.packs import ContentWarning
    from engine.sensors import startable_sensors

    module = tmp_path / "s.py"
    module.write_text('class Newer:\n    greeting = f"hi {event["name"]}"\n')
    spec = SensorSpec(pack="p", class_name="Newer", file=module, metadata_file="s.yaml")
    startable, problems = startable_sensors([spec])
    assert startable == [spec] and [type(p) for p in problems] == [ContentWarning], problems
    assert "does not parse with Squall's Python" in str(problems[0]) and "started all the same" in str(problems[0])


@pytest.mark.parametrize("code", [
    "from lib.watchers import NoSuchClass\n",
    "from lib import watchers\nNoSuchClass = watchers.make()\n",
    "try:\n    from fast import NoSuchClass\nexcept ImportError:\n    class NoSuchClass:\n        pass\n",
    "from lib.everything import *\n",
    "import sys\nif sys.platform:\n    class NoSuchClass:\n        pass\n",
])
def test_a_sensor_class_bound_other_than_by_a_class_statement_is_no_problem(tmp_path: Path, code: str) -> None:
    """The class may come from the pack's lib, an assignment or a conditional block: only a module that binds
    the name nowhere is a problem (it is read, never run)."""
    from engine.sensors import startable_sensors

    module = tmp_path / "s.py"
    module.write_text(code)
    spec = SensorSpec(pack="p", class_name="NoSuchClass", file=module, metadata_file="s.yaml")
    assert startable_sensors([spec]) == ([spec], [])


def test_a_disabled_sensor_is_not_looked_into(tmp_path: Path) -> None:
    from engine.sensors import startable_sensors

    module = tmp_path / "s.py"
    module.write_text("x = 1\n")
    on = SensorSpec(pack="p", class_name="Gone", file=module, metadata_file="s.yaml", class_line=1)
    off = SensorSpec(pack="p", class_name="Gone", file=module, metadata_file="t.yaml", enabled=False)
    startable, problems = startable_sensors([on, off])
    assert startable == [off]
    assert [(p.file, p.line) for p in problems] == [("s.yaml", 1)]


async def test_serve_does_not_start_a_sensor_whose_class_is_missing(home: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """It was started, failed at its import with a traceback from Squall's own wrapper, and was restarted
    for ever; now it is said once, with its file and class, and not started."""
    broken_pack(home)
    caplog.set_level(logging.WARNING)
    squall = await started(home)
    try:
        await run_sensors(squall)
        assert "p.NoSuchClass" not in squall.sensors.running
        said = [r.getMessage() for r in caplog.records if "NoSuchClass" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("sensor skipped: ") and "packs/p/sensors/s.yaml:1: " in said[0]
    finally:
        await squall.close()


UNLOADABLE = '''
import squall_tests_no_such_module

from st2reactor.sensor.base import Sensor


class Unloadable(Sensor):
    def setup(self):
        pass

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


async def test_a_sensor_that_cannot_be_imported_is_tried_again_after_the_long_wait(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A module that imports what its virtualenv lacks failed the same way at every restart, a traceback each
    time, every minute for ever: it now waits `load_retry` (or a change of its files), and says why."""
    pack = make_pack(home, {})
    write(pack / "sensors" / "unloadable.yaml", "class_name: Unloadable\nentry_point: unloadable.py\n")
    (pack / "sensors" / "unloadable.py").write_text(UNLOADABLE)
    caplog.set_level(logging.INFO)
    squall = await started(home)
    try:
        squall.sensors = SensorContainer(squall.triggers.dispatch, squall.datastore_call,
                                         squall.config.virtualenvs_path, backoff=0.05, stop_timeout=0.5,
                                         load_retry=123)
        await squall.sync_sensors()

        def waiting() -> list[str]:
            return [r.getMessage() for r in caplog.records if "cannot be loaded" in r.getMessage()]

        assert await eventually(lambda: asyncio.sleep(0, waiting())), caplog.text
        said = waiting()[0]
        assert "demo.Unloadable" in said and "unloadable.py" in said and "123s" in said, said
        assert "ModuleNotFoundError: No module named 'squall_tests_no_such_module'" in said, said
        tracebacks = [r for r in caplog.records if r.name == "squall.sensor.demo.Unloadable"
                      and "Traceback (most recent call last):" in r.getMessage()]
        assert len(tracebacks) == 1 and "ModuleNotFoundError" in tracebacks[0].getMessage()
        assert "restarting in" not in caplog.text
    finally:
        await squall.close()


# -- a sensor's traceback, one record ------------------------------------------------------------

TRACEBACK = (b"Traceback (most recent call last):\n"
             b'  File "/packs/p/sensors/boom.py", line 5, in __init__\n'
             b'    raise RuntimeError("cannot reach the inventory API")\n'
             b"RuntimeError: cannot reach the inventory API\n")


class _Pipe:
    def close(self) -> None:
        pass


def _relay(output: asyncio.StreamReader, **options: Any) -> asyncio.Task[None]:
    """A container relaying `output` as the output of the sensor p.Boom, in a task."""
    async def unused(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("not called by the relay")

    container = SensorContainer(unused, unused, Path("/nonexistent"), **options)
    spec = SensorSpec(pack="p", class_name="Boom", file=Path("/nonexistent/p/sensors/boom.py"),
                      metadata_file="p/sensors/boom.yaml")
    pipe: Any = _Pipe()
    return asyncio.get_running_loop().create_task(container._relay_logs(_Running(spec, {}, Path()), output, pipe))


def _relayed(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "squall.sensor.p.Boom"]


async def test_a_sensors_traceback_is_one_error_record(caplog: pytest.LogCaptureFixture) -> None:
    """In JSON logs each line of a crash's traceback was an `error` record of its own, a dozen a crash.
    Chained exceptions are one traceback too; the lines around it stay records of their own."""
    caplog.set_level(logging.INFO, logger="squall.sensor.p.Boom")
    chained = TRACEBACK + b"\nDuring handling of the above exception, another exception occurred:\n\n" + TRACEBACK
    output = asyncio.StreamReader()
    output.feed_data(b"INFO p.boom: starting\n" + chained + b"INFO p.boom: after\n")
    output.feed_eof()
    await _relay(output)
    records = _relayed(caplog)
    assert [text.splitlines()[0] for _level, text in records] == [
        "INFO p.boom: starting", "Traceback (most recent call last):", "INFO p.boom: after"], records
    level, text = records[1]
    assert level == logging.ERROR
    assert text == chained.decode().rstrip("\n"), text


async def test_a_traceback_cut_short_is_relayed_after_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    """A sensor killed half-way through printing its traceback: what came of it is relayed once no line has
    come for `traceback_wait`, not held until the output ends."""
    caplog.set_level(logging.INFO, logger="squall.sensor.p.Boom")
    output = asyncio.StreamReader()
    relay = _relay(output, traceback_wait=0.05)
    half = b"".join(TRACEBACK.splitlines(keepends=True)[:2])
    output.feed_data(half)
    try:
        assert await eventually(lambda: asyncio.sleep(0, _relayed(caplog)), timeout=10), "the half was held"
        assert _relayed(caplog) == [(logging.ERROR, half.decode().rstrip("\n"))]
        assert not relay.done()  # the output goes on being read
    finally:
        output.feed_eof()
        await relay


async def test_a_long_traceback_is_one_record_with_its_first_and_last_lines(caplog: pytest.LogCaptureFixture) -> None:
    from engine.sensors import TRACEBACK_LINES

    caplog.set_level(logging.INFO, logger="squall.sensor.p.Boom")
    frames = b"".join(b'  File "/x.py", line %d, in f\n    f()\n' % i for i in range(5000))
    output = asyncio.StreamReader(limit=2 ** 20)
    output.feed_data(b"Traceback (most recent call last):\n" + frames + b"RecursionError: too deep\n")
    output.feed_eof()
    await _relay(output, log_lines_per_second=100_000)
    records = _relayed(caplog)
    assert len(records) == 1, [text[:80] for _level, text in records]
    lines = records[0][1].splitlines()
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "RecursionError: too deep"
    assert len(lines) <= TRACEBACK_LINES + 1 and "lines of the traceback left out" in lines[1], lines[:3]


# -- warnings: content that loads all the same -----------------------------------------------------

def _alias_pack(home: Path, formats: str) -> Path:
    pack = home / "packs" / "q"
    write(pack / "pack.yaml", PACK_YAML.format(version="1.0.0").replace("p", "q", 2))
    write(pack / "actions" / "ok.yaml", "name: ok\nrunner_type: noop\nparameters: {host: {type: string}}\n")
    write(pack / "aliases" / "restart.yaml", f"name: restart\naction_ref: q.ok\nformats: {formats}\n")
    return pack


def test_an_alias_format_with_unbalanced_braces_loads_with_a_warning(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """`restart {{host}` loaded silently and matched only its own text; it still does (as StackStorm), and
    `pack list` says so with the file and line, as a warning that skipped nothing."""
    from aliases import AliasMatcher, load_aliases
    from bot.chat.index import AliasIndex
    from engine.packs import ContentWarning

    squall = like_a_process(home, monkeypatch)

    monkeypatch.chdir(home)  # problems name files as the CLI does, from the working folder
    _alias_pack(home, '\n  - "restart {{host}"\n  - "stop host}}"\n  - "start {{host}}"\n')
    registry = load_registry([home / "packs"], home / "configs", SYSTEM_PACKS_PATH)
    check = check_content(registry)
    warnings = [p for p in check.problems if isinstance(p, ContentWarning)]
    assert [(p.file, p.line) for p in warnings] == [("packs/q/aliases/restart.yaml", 4),
                                                    ("packs/q/aliases/restart.yaml", 5)], warnings
    assert '"{{" of "{{host}" has no "}}" after it' in warnings[0].reason
    assert '"}}" of "host}}" has no "{{" before it' in warnings[1].reason
    assert check.loaded["q", "aliases"] == 1 and check.problems == warnings

    aliases, errors = load_aliases(registry)
    aliases = [alias for alias in aliases if alias.pack == "q"]
    assert errors == [] and [a.ref for a in aliases] == ["q.restart"]
    matcher = AliasMatcher(aliases)
    assert matcher.match("restart {{host}").parameters == {}  # the text as written, as before
    assert matcher.match("start web1").parameters == {"host": "web1"}

    caplog.set_level(logging.WARNING, logger="bot.chat.index")
    AliasIndex(registry)  # what serve's chat indexes, and logs
    said = [r.getMessage() for r in caplog.records if r.name == "bot.chat.index"]
    assert len(said) == 2, said
    assert all(line.startswith("alias warning: packs/q/aliases/restart.yaml:") for line in said), said

    listed = squall("pack", "list")
    assert listed.returncode == 0, listed.stderr
    tail = listed.stdout[listed.stdout.index("warnings ("):]
    assert "packs/q/aliases/restart.yaml:4: format \"restart {{host}\"" in tail, listed.stdout
    assert "problems (pack content that did not load)" not in listed.stdout
    reloaded = squall("pack", "reload")
    assert reloaded.returncode == 0 and "warning: packs/q/aliases/restart.yaml:4:" in reloaded.stderr, reloaded


def test_a_pack_version_that_is_not_semver_is_a_warning(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec (§9.1) and StackStorm's PACK_VERSION_REGEX ask for semver; StackStorm reads a version with one
    dot as `X.Y.0` first (Exchange packs still say `0.1`), so only what that leaves unversioned is said."""
    from engine.packs import ContentWarning

    squall = like_a_process(home, monkeypatch)
    monkeypatch.chdir(home)
    packs = home / "packs"
    for ref, version in (("bad", "one.two"), ("short", "0.1"), ("float", "1.0"), ("pre", "1.2.3-rc.1+b5"),
                         ("four", "1.2.3.4")):
        write(packs / ref / "pack.yaml", PACK_YAML.format(version=version).replace("p", ref, 2))
    registry = load_registry([packs], home / "configs", SYSTEM_PACKS_PATH)
    assert {"bad", "short", "float", "pre", "four"} <= set(registry.packs)  # every one loads
    warned = {(p.file, p.line): p.reason for p in registry.errors if isinstance(p, ContentWarning)}
    assert set(warned) == {("packs/bad/pack.yaml", 4), ("packs/four/pack.yaml", 4)}, registry.errors
    assert "version 'one.two' is not semantic versioning" in warned["packs/bad/pack.yaml", 4]
    assert all(isinstance(p, ContentWarning) for p in registry.errors)

    reloaded = squall("pack", "reload", "--json")
    assert reloaded.returncode == 0, reloaded.stderr  # nothing was skipped
    assert len(json.loads(reloaded.stdout)["warnings"]) == 2


# -- each problem said once ------------------------------------------------------------------------

async def test_serve_logs_each_skipped_rule_once(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The rules engine and the start-up both logged it."""
    broken_pack(home)
    caplog.set_level(logging.WARNING)
    squall = await started(home)
    await squall.close()
    said = [r.getMessage() for r in caplog.records if "packs/p/rules/r.yaml" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("pack content skipped:"), said


def test_rule_list_says_each_rule_problem_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    squall = like_a_process(home, monkeypatch)
    broken_pack(home)
    listed = squall("rule", "list")
    assert listed.returncode == 0, listed.stderr
    said = [line for line in listed.stderr.splitlines() if "packs/p/rules/r.yaml" in line]
    assert len(said) == 1 and said[0].startswith("rule skipped:"), listed.stderr
    assert "pol.yaml" not in listed.stderr and "al.yaml" not in listed.stderr  # not every pack problem


def test_a_command_unrelated_to_packs_says_nothing_of_them(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`execution get` printed every pack problem as raw timestamped log lines of the start-up."""
    squall = like_a_process(home, monkeypatch)
    broken_pack(home)
    ran = squall("run", "core.noop", "--json")
    assert ran.returncode == 0, ran.stderr
    assert "packs/p/rules/r.yaml" in ran.stderr and " WARNING " not in ran.stderr  # run says them, once, as a CLI
    got = squall("execution", "get", json.loads(ran.stdout)["id"])
    assert got.returncode == 0, got.stderr
    assert got.stderr == "", got.stderr



async def test_a_reload_says_each_problem_once_and_how_many_files_it_skipped(home: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """serve's reload said every problem as "pack content skipped", warnings included, and neither its line
    nor the start-up's summary said that anything was skipped."""
    from bot.service import reload

    squall = await started(home)
    try:
        broken_pack(home)
        caplog.set_level(logging.INFO)
        await reload(squall)
    finally:
        await squall.close()
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("packs reloaded:")]
    skipped = sum(not isinstance(p, ContentWarning) for p in squall.registry.errors)
    files = f"{skipped} pack file{'s' if skipped != 1 else ''}"
    assert skipped and summary.endswith(f", {files} skipped (see the warnings)"), summary
    said = [r.getMessage() for r in caplog.records if "packs/p/rules/r.yaml" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("pack content skipped:"), said


def test_a_pack_config_file_not_there_is_said_as_missing_and_skips_nothing(home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A StackStorm pack moved over with its config left in /opt/stackstorm/configs (`packs.configs_path` at
    its default): every command warned "pack content skipped: configs/ops.yaml: config of pack 'ops': (top
    level): 'api_url' is a required property" and `pack reload` exited 1, though the file does not exist and
    the pack and its actions loaded. StackStorm registers such a pack; so the warning says the file is not
    there, where to point `packs.configs_path`, and what the actions get, and skips nothing."""
    squall = like_a_process(home, monkeypatch)
    pack = home / "packs" / "ops"
    write(pack / "pack.yaml", PACK_YAML.format(version="1.0.0").replace("p", "ops", 2))
    write(pack / "actions" / "a.yaml", "name: a\nrunner_type: noop\n")
    write(pack / "config.schema.yaml", "api_url: {type: string, required: true}\nregion: {type: string, default: eu}\n")

    reloaded = squall("pack", "reload", "--json")
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr  # nothing was skipped
    document = json.loads(reloaded.stdout)
    assert document["errors"] == [] and "ops" in document["packs"]
    (warning,) = document["warnings"]
    assert warning.startswith("configs/ops.yaml: no config file for pack 'ops'"), warning  # run in home
    assert "packs.configs_path" in warning and "/opt/stackstorm/configs" in warning and "api_url" in warning

    ran = squall("run", "ops.a")
    assert ran.returncode == 0, ran.stderr
    said = [line for line in ran.stderr.splitlines() if "ops.yaml" in line]
    assert len(said) == 1 and "no config file for pack 'ops'" in said[0], ran.stderr
    assert "skipped" not in said[0] and "required property" not in said[0]
