"""An alias's `extra` that fails to render is said, not dropped without a word (`bot/chat/replies.py`):
it is left out, the reply's text kept, and logged at WARNING with the alias's ref and StackStorm's words
(`Cannot render "extra" in field "ack" for alias. <error>`, st2api's alias execution), which quote no
secret parameter's value.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat.replies import render_ack, render_result
from engine.config import load_config
from tests.conftest import write

#: What a person types as the secret parameter: no error, log or reply may quote it.
SECRET = "hunter2-the-secret-value"

REQUESTED = {"id": "e1", "action": "ops.x", "status": "requested", "runner": "local-shell-cmd", "result": None,
             "parameters": {"who": "bob"}}
SUCCEEDED = {**REQUESTED, "status": "succeeded", "result": {"stdout": "hi", "return_code": 0}}


def _alias(**sections: Any) -> SimpleNamespace:
    return SimpleNamespace(ref="ops.x", name="x", pack="ops", action_ref="ops.x", description="", **sections)


def test_a_failing_ack_extra_is_left_out_and_the_text_kept() -> None:
    alias = _alias(ack={"format": "greeting {{ execution.parameters.who }}",
                        "extra": {"slack": {"color": "{{ execution.parameters.nothere }}"}}})
    assert render_ack(alias, REQUESTED) == ("greeting bob", {})  # the format rendered: its text is kept whole


def test_an_ack_extra_that_renders_is_unchanged() -> None:
    alias = _alias(ack={"format": "hi", "extra": {"slack": {"color": "{{ execution.status }}"}}})
    assert render_ack(alias, REQUESTED) == ("hi", {"slack": {"color": "requested"}})


def test_a_failing_ack_extra_is_logged_with_the_alias_ref(caplog: pytest.LogCaptureFixture) -> None:
    alias = _alias(ack={"format": "hi", "extra": {"slack": {"color": "{{ execution.parameters.nothere }}"}}})
    with caplog.at_level(logging.WARNING, logger="bot.chat.replies"):
        render_ack(alias, REQUESTED)
    [record] = [r for r in caplog.records if r.name == "bot.chat.replies"]
    assert record.levelno == logging.WARNING
    said = record.getMessage()
    assert "ops.x" in said and 'Cannot render "extra" in field "ack" for alias.' in said and "nothere" in said


def test_a_failing_result_extra_is_logged_with_the_alias_ref_and_the_reply_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    alias = _alias(result={"format": "out: {{ execution.result.stdout }}",
                           "extra": {"slack": {"color": "{{ execution.result.nothere }}"}}})
    with caplog.at_level(logging.WARNING, logger="bot.chat.replies"):
        text, extra = render_result(alias, SUCCEEDED)
    assert text == "out: hi" and extra == {}
    [record] = [r for r in caplog.records if r.name == "bot.chat.replies"]
    assert record.levelno == logging.WARNING
    said = record.getMessage()
    assert "ops.x" in said and 'Cannot render "extra" in field "result" for alias.' in said and "nothere" in said


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter]]:
    """A loopback chat with `login <user> <token>`, whose `token` is a secret parameter, and whose ack and
    result extras look a key up by the token's value: their errors would quote it."""
    pack = home / "packs" / "ops"
    write(pack / "pack.yaml", "ref: ops\nname: ops\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "login.yaml", """
        name: login
        runner_type: local-shell-cmd
        parameters:
          user: {type: string, required: true}
          token: {type: string, required: true, secret: true}
          cmd: {default: 'echo "logged in {{user}}"', immutable: true}
    """)
    write(pack / "aliases" / "login.yaml", """
        name: login
        action_ref: ops.login
        formats: ["login {{user}} {{token}}"]
        ack:
          format: "logging in {{ execution.parameters.user }}"
          extra: {slack: {color: "{{ execution.parameters[execution.parameters.token] }}"}}
        result:
          format: "{{ execution.result.stdout }}"
          extra: {slack: {color: "{{ execution.parameters[execution.parameters.token] }}"}}
    """)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    assert squall.registry.errors == []
    await squall.chat.start()
    try:
        yield squall, loopback
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_in_chat_a_failing_extra_is_said_without_the_secret(
        chat: tuple[Squall, LoopbackAdapter], caplog: pytest.LogCaptureFixture) -> None:
    _squall, adapter = chat
    with caplog.at_level(logging.WARNING, logger="bot.chat.replies"):
        await adapter.say(f"!login bob {SECRET}", user="alice", channel="#ops")
        posted = await adapter.wait_for(lambda p: len(p) >= 2)
    ack, result = posted[0].reply, posted[1].reply
    assert ack.text == "logging in bob"
    assert ack.extra == {}
    assert result.text == "logged in bob" and result.extra == {}
    said = [r.getMessage() for r in caplog.records if r.name == "bot.chat.replies"]
    assert any("ops.login" in line and 'field "ack"' in line for line in said)
    assert any("ops.login" in line and 'field "result"' in line for line in said)
    assert all(SECRET not in line for line in said)
