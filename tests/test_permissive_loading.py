"""Loading as permissive as StackStorm's where StackStorm is (issue 16, item 2b).

Each test writes a small pack the way Exchange packs are written and checks that what StackStorm's
registrar and runners accept loads and runs here too, and that what StackStorm refuses still is:
positions numbered from 1, `entry_point` on `*-shell-cmd` actions, extra keys in chain tasks,
`default: null` (`allow_default_none`), and rules naming packs that are not loaded yet.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import SYSTEM_PACKS_PATH, load_config
from engine.packs import Registry, load_registry
from engine.parameters import resolve
from tests.conftest import write
from tests.workflow_helpers import run

PY = sys.executable


def manifest(home: Path, pack: str) -> None:
    write(home / "packs" / pack / "pack.yaml", f"""
        ref: {pack}
        name: {pack}
        description: test pack {pack}
        version: 0.1.0
        author: tests
    """)


def load(home: Path) -> Registry:
    return load_registry([home / "packs"], home / "configs", SYSTEM_PACKS_PATH)


def problems(registry: Registry, fragment: str) -> list[str]:
    return [e.reason for e in registry.errors if fragment in e.file]


async def started(home: Path) -> Squall:
    return await Squall.start(load_config(home / "config.yml"))


# -- parameter positions -------------------------------------------------------------------------

def positional_pack(home: Path, positions: tuple[int, int, int]) -> None:
    """git's `clone` shape: three positional arguments, numbered as given."""
    manifest(home, "pos")
    write(home / "packs" / "pos" / "actions" / "argv.sh", f"""
        #!/bin/bash
        exec {PY} -c 'import json,sys;print(json.dumps(sys.argv[1:]))' "$@"
    """)
    first, second, third = positions
    write(home / "packs" / "pos" / "actions" / "clone.yaml", f"""
        name: clone
        runner_type: local-shell-script
        entry_point: argv.sh
        parameters:
          destination: {{type: string, required: true, position: {third}}}
          source: {{type: string, required: true, position: {first}}}
          ref: {{type: string, default: master, position: {second}}}
          depth: {{type: integer}}
    """)


async def test_positions_numbered_from_one_load_and_run_in_order(home: Path) -> None:
    positional_pack(home, (1, 2, 3))
    assert problems(load(home), "pos/") == []
    squall = await started(home)
    try:
        done = await run(squall, "pos.clone", {"source": "git@x:r.git", "destination": "/tmp/r", "depth": 1})
        assert done["status"] == "succeeded", done["result"]
        assert done["result"]["stdout"] == ["--depth=1", "git@x:r.git", "master", "/tmp/r"]
    finally:
        await squall.close()


@pytest.mark.parametrize(("positions", "reason"), [
    ((1, 3, 4), "'ref' should have position 2"),            # a gap: StackStorm refuses it too
    ((0, 0, 1), "'source' has the same position 0 as 'ref'"),  # a duplicate: likewise
])
def test_positions_with_a_gap_or_twice_the_same_are_still_refused(home: Path, positions: tuple[int, int, int],
                                                                   reason: str) -> None:
    positional_pack(home, positions)
    [found] = problems(load(home), "pos/")
    assert "unique and contiguous" in found and reason in found


# -- entry_point on *-shell-cmd --------------------------------------------------------------------

async def test_shell_cmd_actions_ignore_their_entry_point(home: Path) -> None:
    manifest(home, "cmds")
    write(home / "packs" / "cmds" / "actions" / "hello.yaml", """
        name: hello
        runner_type: local-shell-cmd
        entry_point: hello.sh
        parameters:
          cmd: {default: "echo from-cmd", immutable: true}
    """)
    write(home / "packs" / "cmds" / "actions" / "remote.yaml", """
        name: remote
        runner_type: remote-shell-cmd
        entry_point: remote.sh
        parameters:
          cmd: {default: "uptime", immutable: true}
    """)
    registry = load(home)
    assert problems(registry, "cmds/") == []
    assert registry.actions["cmds.hello"].entry_path is None
    assert registry.actions["cmds.remote"].entry_path is None
    squall = await started(home)
    try:
        done = await run(squall, "cmds.hello")
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "from-cmd"
    finally:
        await squall.close()


# -- extra keys in ActionChain tasks ---------------------------------------------------------------

def chain_pack(home: Path, chain: str) -> None:
    manifest(home, "chained")
    write(home / "packs" / "chained" / "actions" / "flow.yaml", """
        name: flow
        runner_type: action-chain
        entry_point: chains/flow.yaml
    """)
    write(home / "packs" / "chained" / "actions" / "chains" / "flow.yaml", chain)


async def test_chain_tasks_after_the_first_may_carry_extra_keys(home: Path) -> None:
    chain_pack(home, """
        chain:
          - name: first
            ref: core.noop
            on-success: second
          - name: second
            description: StackStorm validates only the first task's keys
            timeout: 5
            ref: core.local
            params: {cmd: echo second}
    """)
    assert problems(load(home), "chained/") == []
    squall = await started(home)
    try:
        done = await run(squall, "chained.flow")
        assert done["status"] == "succeeded", done["result"]
        assert [t["name"] for t in done["result"]["tasks"]] == ["first", "second"]
        assert done["result"]["tasks"][1]["result"]["stdout"] == "second"
    finally:
        await squall.close()


def test_extra_keys_in_the_first_chain_task_are_still_refused(home: Path) -> None:
    chain_pack(home, """
        chain:
          - name: first
            description: StackStorm's schema refuses this one
            ref: core.noop
    """)
    [found] = problems(load(home), "chained/")
    assert "task 'first': unknown key(s) description" in found
    assert "allowed: name, ref, params, parameters, on-success, on-failure, publish, notify" in found


def test_a_misspelt_key_of_the_first_chain_task_names_the_key_it_reads_like(home: Path) -> None:
    chain_pack(home, """
        chain:
          - name: first
            ref: core.noop
            on_success: second
          - {name: second, ref: core.noop}
    """)
    [found] = problems(load(home), "chained/")
    assert 'on_success (did you mean "on-success"?)' in found


def test_a_misspelt_key_of_a_later_chain_task_is_a_warning(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Keys after the first task are ignored, as StackStorm ignores them: one that reads like a task key
    misspelt (`parmeters`) is said at WARNING with the key it reads like (the task then ran without its
    parameters, and the run failed with "parameter is required"); `description` stays quiet."""
    chain_pack(home, """
        chain:
          - name: first
            ref: core.noop
            on-success: second
          - name: second
            description: fine
            ref: core.local
            parmeters: {cmd: echo second}
            on_failure: first
    """)
    with caplog.at_level(logging.DEBUG, logger="engine.workflows.chain"):
        assert problems(load(home), "chained/") == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "task 'second'" in warned[0] and "chains/flow.yaml" in warned[0]
    assert 'on_failure (did you mean "on-failure"?), parmeters (did you mean "parameters"?)' in warned[0]
    assert "description" not in warned[0]


# -- null defaults (allow_default_none) ------------------------------------------------------------

def null_pack(home: Path) -> None:
    manifest(home, "nulls")
    write(home / "packs" / "nulls" / "actions" / "act.yaml", """
        name: act
        runner_type: noop
        parameters:
          token: {type: string, required: true, default: null}
          count: {type: integer, default: null}
          options:
            type: object
            properties:
              region: {type: string, default: null}
              zone: {type: string, required: true}
    """)
    write(home / "packs" / "nulls" / "config.schema.yaml", """
        api_url: {type: string, default: null}
        retries: {type: integer, default: null}
        name: {type: string, required: true, default: null}
    """)
    write(home / "packs" / "nulls" / "triggers" / "ping.yaml", """
        name: ping
        pack: nulls
        description: A ping.
        parameters_schema:
          type: object
          properties:
            channel: {type: string, default: null}
            every: {type: integer, required: true}
        payload_schema: {type: object}
    """)
    write(home / "packs" / "nulls" / "rules" / "on_ping.yaml", """
        name: on_ping
        pack: nulls
        enabled: true
        trigger:
          type: nulls.ping
          parameters: {channel: null, every: 5}
        action: {ref: nulls.act}
    """)


async def test_null_defaults_load_and_leave_the_parameter_unset(home: Path) -> None:
    null_pack(home)
    registry = load(home)
    assert problems(registry, "nulls") == []
    assert registry.packs["nulls"].config == {"api_url": None, "retries": None, "name": None}
    action = registry.actions["nulls.act"]
    values: dict[str, Any] = resolve(action, {"options": {"region": None, "zone": "b"}}, {}).values
    assert values["token"] is None and values["count"] is None
    assert values["options"] == {"region": None, "zone": "b"}
    squall = await started(home)
    try:
        assert not squall.rules.rules["nulls.on_ping"].waiting
        done = await run(squall, "nulls.act")
        assert done["status"] == "succeeded", done["result"]
    finally:
        await squall.close()


def test_null_is_still_refused_where_stackstorm_refuses_it(home: Path) -> None:
    null_pack(home)
    action = load(home).actions["nulls.act"]
    # required without a default, and a type that null breaks when the default is not null
    with pytest.raises(ValueError, match="'zone'"):
        resolve(action, {"options": {"zone": None}}, {})
    with pytest.raises(ValueError, match="required property"):
        resolve(action, {"options": {}}, {})


# -- rules naming packs that are not loaded yet ----------------------------------------------------

def waiting_pack(home: Path) -> None:
    manifest(home, "early")
    write(home / "packs" / "early" / "actions" / "take.yaml", "name: take\nrunner_type: noop\n")
    write(home / "packs" / "early" / "triggers" / "event.yaml", """
        name: event
        pack: early
        payload_schema: {type: object}
    """)
    write(home / "packs" / "early" / "rules" / "to_late.yaml", """
        name: to_late
        pack: early
        enabled: true
        trigger: {type: early.event}
        action: {ref: late.act}
    """)
    write(home / "packs" / "early" / "rules" / "from_late.yaml", """
        name: from_late
        pack: early
        enabled: true
        trigger: {type: late.signal, parameters: {anything: 1}}
        action: {ref: early.take}
    """)
    write(home / "packs" / "early" / "rules" / "typo.yaml", """
        name: typo
        pack: early
        enabled: true
        trigger: {type: early.event}
        action: {ref: early.tak}
    """)


def late_pack(home: Path) -> None:
    manifest(home, "late")
    write(home / "packs" / "late" / "actions" / "act.yaml", "name: act\nrunner_type: noop\n")
    write(home / "packs" / "late" / "triggers" / "signal.yaml", """
        name: signal
        pack: late
        payload_schema: {type: object}
    """)


async def test_rules_waiting_for_a_pack_are_loaded_reported_and_go_live_with_it(home: Path) -> None:
    waiting_pack(home)
    squall = await started(home)
    try:
        rules = squall.rules.rules
        assert rules["early.to_late"].waiting == ['action "late.act" (pack "late" is not loaded)']
        assert rules["early.from_late"].waiting == ['trigger type "late.signal" (pack "late" is not loaded)']
        assert "early.typo" not in rules  # a ref of a loaded pack that names nothing is still an error
        reported = {e.reason: e for e in squall.registry.errors if "early/rules" in e.file}
        waits = [r for r in reported if "waits for" in r]
        assert len(waits) == 2 and all('pack "late" is not loaded' in r for r in waits)
        assert any('rule "early.to_late"' in r and '"late.act"' in r for r in waits)
        assert next(e for r, e in reported.items() if 'rule "early.to_late"' in r).line == 5
        assert any("early.tak" in r for r in reported)

        # waiting, it matches nothing
        instance = await squall.triggers.dispatch("early.event", {"n": 1})
        await squall.rules.settle()
        assert await squall.rules.enforcements(trigger_instance_id=instance["id"]) == []

        late_pack(home)
        registry = squall.reload()
        assert not squall.rules.rules["early.to_late"].waiting
        assert not squall.rules.rules["early.from_late"].waiting
        assert not [e for e in registry.errors if "waits for" in e.reason]

        instance = await squall.triggers.dispatch("early.event", {"n": 2})
        signal = await squall.triggers.dispatch("late.signal", {"n": 3}, parameters={"anything": 1})
        await squall.rules.settle()
        [to_late] = await squall.rules.enforcements(trigger_instance_id=instance["id"])
        [from_late] = await squall.rules.enforcements(trigger_instance_id=signal["id"])
        assert to_late["rule"]["ref"] == "early.to_late" and to_late["status"] == "succeeded"
        assert from_late["rule"]["ref"] == "early.from_late" and from_late["status"] == "succeeded"
        assert (await squall.executions.get(to_late["execution_id"]))["action"] == "late.act"
    finally:
        await squall.close()


def test_the_pack_watch_skips_a_symlink_loop(tmp_path: Path) -> None:
    """`squall serve` looks at the pack folders every second: a symlink loop (or one pointing nowhere)
    raised ELOOP there, which stopped serve at start and, later, every housekeeping step after it."""
    from engine.packs import fingerprint

    pack = tmp_path / "packs" / "demo"
    write(pack / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\n")
    (pack / "loop.yaml").symlink_to(pack / "loop.yaml")
    (pack / "gone.yaml").symlink_to(pack / "nowhere.yaml")
    count, newest = fingerprint([tmp_path / "packs"])
    assert count == 5 and newest > 0  # two folders and three files; the mtime of what could be read
    (pack / "more.yaml").write_text("x: 1\n")
    assert fingerprint([tmp_path / "packs"])[0] == 6  # still watching


async def test_one_failing_housekeeping_step_does_not_stop_the_others(squall: Squall, monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """serve's loop ran its steps in one `try`: a pack folder it could not read stopped stored requests,
    the outbox and the sensors' lead at every tick. Each step now fails on its own."""
    from bot import service

    def unreadable(paths: list[Path]) -> Any:
        raise PermissionError(13, "Permission denied", str(paths[0]))

    polled: list[str] = []

    async def poll() -> None:
        polled.append("executions")

    async def outbox_poll() -> None:
        polled.append("outbox")

    monkeypatch.setattr(service, "fingerprint", unreadable)
    monkeypatch.setattr(squall.executions, "poll", poll)
    monkeypatch.setattr(squall.chat.outbox, "poll", outbox_poll)
    housekeeping = service.Housekeeping(squall, [Path("/nowhere")])
    await housekeeping.start()
    await housekeeping.tick()
    await housekeeping.tick()
    assert polled == ["executions", "outbox", "executions", "outbox"]
    assert caplog.text.count("background housekeeping (reloading changed packs) failed") == 2
