"""What a person reads back from an alias command in chat, as a reviewer found it with `squall serve`:

- an alias's `result.format` renders leniently, as StackStorm's `chatops.format_execution_result` renders it
  (a run without `stdout` still answers `{{ execution.result.stdout }}`), while the ack and the `extra`
  sections render strictly (`bot/chat/replies.py`);
- a key=value pair naming no parameter is answered with what the alias lets the person set, never with the
  runner parameters chat may not set (`bot/chat/commands.py` `_unknown_pairs`);
- `level=` with nothing after it is the empty string, never the space the message is padded with
  (`aliases/grammar.py`, deviation 13);
- `!respond` with an id that names nothing says so in chat's words (`bot/chat/inquiries.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.loopback import LoopbackAdapter
from aliases.grammar import extract_parameters
from bot.app import Squall
from bot.chat.replies import render_ack, render_result
from engine.config import load_config
from engine.parameters import ParameterError
from tests.conftest import write


@pytest.fixture
async def chat(home: Path) -> AsyncIterator[tuple[Squall, LoopbackAdapter]]:
    """A loopback chat with pack `ops`: `greet <who>` (a shell action whose `cmd` is immutable, so its runner's
    parameters are all closed to chat), `note <text> level=<level>` (or `note <text>`), with `level` one of
    info and warn, and `quiet` (a noop, whose result has no `stdout`), each with the Exchange's usual result
    format `{{ execution.result.stdout }}`."""
    pack = home / "packs" / "ops"
    write(pack / "pack.yaml", "ref: ops\nname: ops\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "greet.yaml", """
        name: greet
        runner_type: local-shell-cmd
        parameters:
          who: {type: string, required: true}
          cmd: {default: 'echo "hello {{who}}"', immutable: true}
    """)
    write(pack / "aliases" / "greet.yaml", """
        name: greet
        action_ref: ops.greet
        formats: ["greet {{who}}"]
        result: {format: "{{ execution.result.stdout }}"}
    """)
    write(pack / "actions" / "note.yaml", """
        name: note
        runner_type: local-shell-cmd
        parameters:
          text: {type: string, required: true}
          level: {type: string, enum: [info, warn], default: info}
          cmd: {default: 'echo "{{level}}: {{text}}"', immutable: true}
    """)
    write(pack / "aliases" / "note.yaml", """
        name: note
        action_ref: ops.note
        formats: ["note {{text}} level={{level=info}}", "note {{text}}"]
        result: {format: "{{ execution.result.stdout }}"}
    """)
    write(pack / "aliases" / "quiet.yaml", """
        name: quiet
        action_ref: core.noop
        formats: ["quiet"]
        result: {format: "quiet: [{{ execution.result.stdout }}] {{ execution.status }}"}
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


async def _said(adapter: LoopbackAdapter, text: str, count: int = 1) -> list[str]:
    """The bot's first `count` posts after alice types `text` in #ops."""
    before = len(adapter.posted)
    await adapter.say(text, user="alice", channel="#ops")
    posted = await adapter.wait_for(lambda p: len(p) >= before + count)
    return [p.text for p in posted[before:before + count]]


def _alias(**sections: Any) -> SimpleNamespace:
    return SimpleNamespace(ref="ops.x", name="x", pack="ops", action_ref="ops.x", description="", **sections)


ABANDONED = {"id": "e1", "action": "ops.x", "status": "abandoned", "runner": "local-shell-cmd",
             "result": {"error": "the worker running it stopped"}, "parameters": {"who": "bob"}}


# -- 1. the result format renders leniently, the rest strictly -----------------------------------------------

def test_a_result_format_renders_a_missing_value_empty() -> None:
    """An abandoned run has no `stdout`: the Exchange's `{{ execution.result.stdout }}` renders it empty, as
    StackStorm's lenient `format_execution_result` does, not the default result with a render failure."""
    alias = _alias(result={"format": "out: [{{ execution.result.stdout }}] {{ execution.status }}"})
    text, _extra = render_result(alias, ABANDONED)
    assert text == "out: [] abandoned"


def test_a_result_of_a_run_that_did_not_succeed_rendering_nothing_is_the_default_result() -> None:
    """`{{ execution.result.stdout }}` of an abandoned run renders nothing: posted so, the person never learnt
    the command died with its process. It is the default result (the status and the error) instead; a
    success that renders nothing stays as rendered."""
    alias = _alias(result={"format": "{{ execution.result.stdout }}"})
    text, _extra = render_result(alias, ABANDONED)
    assert text is not None and "abandoned" in text and "the worker running it stopped" in text
    for status in ("failed", "timeout", "canceled"):
        text, _extra = render_result(alias, {**ABANDONED, "status": status})
        assert text is not None and status in text
    text, _extra = render_result(alias, {**ABANDONED, "status": "succeeded", "result": {"stdout": "  \n"}})
    assert text == "  \n"


def test_the_result_format_keeps_the_sandbox() -> None:
    """Lenient is not unsafe: what the sandbox refuses still renders nothing of Python's internals."""
    alias = _alias(result={"format": "{{ execution.__class__.__mro__ }}|{{ ''.__class__ }}"})
    text, _extra = render_result(alias, ABANDONED)
    assert "<class" not in text and "unsafe" in text  # refused by the sandbox, said as the format's failure


def test_the_result_extra_stays_strict() -> None:
    """`result.extra` renders strictly, as StackStorm's `render_values` does: a missing value is no empty
    colour, the extra is left out."""
    alias = _alias(result={"format": "{{ execution.result.stdout }}",
                           "extra": {"slack": {"color": "{{ execution.result.nothere }}"}}})
    assert render_result(alias, ABANDONED)[1] == {}
    ok = _alias(result={"format": "x", "extra": {"slack": {"color": "{{ execution.status }}"}}})
    assert render_result(ok, ABANDONED)[1] == {"slack": {"color": "abandoned"}}


def test_the_ack_format_stays_strict() -> None:
    """StackStorm renders `ack.format` strictly: a missing value is its `Cannot render "format" in field
    "ack" for alias.` error (followed by the default ack, which still names the execution)."""
    alias = _alias(ack={"format": "greeting {{ execution.parameters.nothere }}"})
    text, _extra = render_ack(alias, {**ABANDONED, "status": "requested"})
    assert text is not None and text.startswith('Cannot render "format" in field "ack" for alias. ')
    assert "nothere" in text and "e1" in text


def test_an_ack_extra_that_fails_keeps_the_ack_format() -> None:
    """StackStorm renders the ack's format and extra apart: an `extra` that fails does not turn a format that
    rendered into the format's error."""
    alias = _alias(ack={"format": "greeting {{ execution.parameters.who }}",
                        "extra": {"slack": {"color": "{{ execution.parameters.nothere }}"}}})
    assert render_ack(alias, {**ABANDONED, "status": "requested"}) == ("greeting bob", {})


async def test_in_chat_a_result_without_stdout_is_the_format(chat) -> None:
    _squall, adapter = chat
    ack, result = await _said(adapter, "!quiet", 2)
    assert result == "quiet: [] succeeded", (ack, result)
    assert "failed" not in result


# -- 2. an unknown key=value pair lists what the alias lets the person set -----------------------------------

async def test_an_unknown_pair_lists_only_what_chat_may_set(chat) -> None:
    _squall, adapter = chat
    [said] = await _said(adapter, "!greet a b c level=x")
    assert 'unknown parameter "level"' in said and "ops.greet" in said
    listed = said.rpartition(":")[2]
    assert listed.strip() == "who", said
    for closed in ("cmd", "cwd", "env", "kwarg_op", "sudo", "sudo_password", "timeout"):
        assert closed not in listed, said


async def test_an_unknown_pair_near_a_settable_name_is_suggested(chat) -> None:
    _squall, adapter = chat
    [said] = await _said(adapter, "!note hi lvel=warn")
    assert 'unknown parameter "lvel" (did you mean "level"?)' in said
    assert said.rpartition(":")[2].strip() == "level, text", said


async def test_the_api_run_keeps_the_engines_error(chat) -> None:
    """A request that is no chat command (`st2 run`, `squall run`) lists the action's parameters and its
    runner's, as before."""
    squall, _adapter = chat
    with pytest.raises(ParameterError) as refused:
        await squall.executions.request("ops.greet", {"who": "bob", "level": "x"}, {"user": "alice"})
    assert "it accepts:" in str(refused.value) and "cwd" in str(refused.value)


# -- 3. an empty key= value ----------------------------------------------------------------------------------

def test_an_empty_value_after_key_is_the_empty_string() -> None:
    """StackStorm's padding space was the value of a placeholder the message left empty."""
    assert extract_parameters("note {{text}} level={{level=info}}", "note hi level=") == {"text": "hi", "level": ""}
    assert extract_parameters("note {{text}} level={{level}}", "note hi level=  ") == {"text": "hi", "level": ""}


def test_a_placeholder_after_a_space_that_gets_nothing_takes_its_default() -> None:
    assert extract_parameters("greet {{name=World}}", "greet ") == {"name": "World"}
    assert extract_parameters("greet {{name}}", "greet ") == {}  # required: the action names it as missing
    assert extract_parameters("greet {{name=World}}", "greet  Bob  ") == {"name": " Bob"}  # untrimmed, as before
    assert extract_parameters("say {{a}}", 'say " "') == {"a": " "}  # whitespace the person quoted


async def test_in_chat_an_empty_level_is_refused_by_its_schema(chat) -> None:
    squall, adapter = chat
    match = squall.chat.commands.match("note hi level=")
    assert match.parameters == {"text": "hi", "level": ""}
    [said] = await _said(adapter, "!note hi level=")
    assert said.startswith("I can't run that:") and "level" in said and "info" in said, said
    assert await squall.executions.list() == []


# -- 4. !respond with an id that names nothing ---------------------------------------------------------------

async def test_respond_to_an_unknown_id_says_there_is_no_inquiry(chat) -> None:
    _squall, adapter = chat
    for typed in ("abc", "zzz", "0123456789abcdef01234567"):
        [said] = await _said(adapter, f"!respond {typed} yes")
        assert said.startswith(f'There is no inquiry "{typed}"'), said
        assert "`!respond <inquiry-id>" in said and "squall execution" not in said, said


async def test_respond_to_a_start_of_several_ids_lists_none_of_them(chat) -> None:
    """As `!execution` answers it: chat is not the place to collect other people's execution ids."""
    squall, adapter = chat
    ids: list[str] = []
    while True:  # ids start with the time they were made: a few in a row share their first digits
        ids.append((await squall.executions.request("core.noop", {}, {"user": "bob"}))["id"])
        shared = [i for i in ids if i[:6] == ids[-1][:6]]
        if len(shared) > 1:
            break
    [said] = await _said(adapter, f"!respond {shared[0][:6]} yes")
    assert "starts more than one execution id" in said, said
    assert not any(i in said for i in shared), said
