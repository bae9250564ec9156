"""A failed run is said in the service log at INFO, with why: an operator's log pipeline (Loki, Splunk) heard
of no failure at the default level, and at DEBUG only `<action> failed`, without the reason. The reason is the
result's as stored, scrubbed of the run's secrets; a success stays at DEBUG."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.app import Squall
from engine.config import load_config
from tests.conftest import write

SECRET = "hunter2-log-secret"


def _said(caplog: pytest.LogCaptureFixture, execution_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.executions" and execution_id in r.getMessage()]


async def test_a_failure_is_logged_with_its_reason_and_a_success_is_not(home: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\nauthor: t\n")
    write(home / "packs" / "demo" / "actions" / "leak.yaml", """
        name: leak
        runner_type: local-shell-cmd
        parameters:
          password: {type: string, secret: true}
          cmd: {default: 'echo "first line" >&2; echo "denied for $PW" >&2; exit 3', immutable: true}
          env: {default: {PW: "{{ password }}"}, immutable: true}
    """)
    caplog.set_level(logging.INFO, logger="engine.executions")
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        assert squall.registry.errors == []
        ok = await squall.executions.request("core.local", {"cmd": "true"})
        failed = await squall.executions.request("core.local", {"cmd": "echo ignored; echo 'no such disk' >&2; exit 2"})
        slow = await squall.executions.request("core.local", {"cmd": "sleep 5", "timeout": 1})
        leak = await squall.executions.request("demo.leak", {"password": SECRET})
        for record in (ok, failed, slow, leak):
            await squall.executions.wait(record["id"], timeout=30)
    finally:
        await squall.close()
    assert [r.levelno for r in _said(caplog, ok["id"])] == []
    [line] = _said(caplog, failed["id"])
    assert line.levelno == logging.INFO
    assert line.getMessage() == f"core.local failed (execution {failed['id']}): no such disk"
    [line] = _said(caplog, slow["id"])
    assert line.getMessage() == f"core.local timeout (execution {slow['id']}): Action failed to complete in 1 seconds"
    [line] = _said(caplog, leak["id"])
    assert line.getMessage().startswith(f"demo.leak failed (execution {leak['id']}): denied for ")
    assert SECRET not in caplog.text


async def test_a_python_actions_failure_message_is_its_reason(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A StackStorm Python action fails with `return (False, "message")`: the python runner stores the message
    as the result's `result` (and `exit_code`, not `return_code`). The log said "its result gives no reason"."""
    write(home / "packs" / "demo" / "pack.yaml", "ref: demo\nname: demo\nversion: 1.0.0\nauthor: t\n")
    write(home / "packs" / "demo" / "actions" / "refuse.yaml", """
        name: refuse
        runner_type: python-script
        entry_point: refuse.py
    """)
    write(home / "packs" / "demo" / "actions" / "refuse.py", """
        from st2common.runners.base_action import Action


        class Refuse(Action):
            def run(self):
                return (False, "key 'nosuch' does not exist in scope system")
    """)
    caplog.set_level(logging.INFO, logger="engine.executions")
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("demo.refuse", {})
        done = await squall.executions.wait(record["id"], timeout=60)
    finally:
        await squall.close()
    assert done["status"] == "failed"
    [line] = _said(caplog, record["id"])
    assert line.getMessage() == (f"demo.refuse failed (execution {record['id']}): key 'nosuch' does not exist in "
                                 "scope system")
