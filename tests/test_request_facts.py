"""What a request works out once per loaded action (`Action.templated_defaults`, `shown_as_given`,
`plain_types`, `immutable_names`) and the shortcuts taken with them (`needs_rendering`, `resolve`,
`validate`, `_check_names`, `ExecutionService._store`, `_public`): a pack reload must be seen by the next
request, and the shortcuts must decide as the general path does."""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.actions import Action
from engine.executions import new_id, public
from engine.parameters import MASK, ParameterError, check_storable, needs_rendering, resolve
from tests.conftest import write

_BEFORE = """
    name: facts
    runner_type: noop
    description: plain parameters
    parameters:
      token: {type: string}
      who: {type: string, default: world}
      greeting: {type: string, default: hi}
      count: {type: integer}
"""
#: The same names, now a secret, an immutable, a templated default and a count with a rule beside its type.
_AFTER = """
    name: facts
    runner_type: noop
    description: a secret, an immutable, a template and a rule
    parameters:
      token: {type: string, secret: true}
      who: {type: string, default: world, immutable: true}
      greeting: {type: string, default: "Hello {{who}}"}
      count: {type: integer, minimum: 5}
"""


@pytest.fixture
def home(home: Path) -> Path:
    write(home / "packs" / "facts" / "pack.yaml", "name: facts\ndescription: d\nversion: 0.1.0\nauthor: t\n")
    write(home / "packs" / "facts" / "actions" / "facts.yaml", _BEFORE)
    return home


async def _stored(squall: Squall, parameters: dict[str, Any]) -> dict[str, Any]:
    requested = await squall.executions.request("facts.facts", parameters)
    return await squall.executions.wait(requested["id"], timeout=30)


async def test_a_reloaded_action_is_requested_with_its_new_facts(squall: Squall, home: Path) -> None:
    """The facts are the loaded action's: a reload that makes a parameter secret, another immutable, a default
    a template and a type a rule is seen by the very next request (stale facts would store the token in the
    clear, take the immutable's value, leave the template unrendered and the count unchecked)."""
    before = await _stored(squall, {"token": "s3cret-token", "count": 3, "who": "you"})
    assert before["parameters"] == {"token": "s3cret-token", "count": 3, "who": "you"}
    assert (await squall.db(squall.store.get_execution, before["id"]))["sealed"] is None
    assert squall.registry.actions["facts.facts"].shown_as_given

    write(home / "packs" / "facts" / "actions" / "facts.yaml", _AFTER)
    squall.reload()
    action = squall.registry.actions["facts.facts"]
    assert not action.shown_as_given and action.templated_defaults == {"greeting"}

    after = await _stored(squall, {"token": "s3cret-token", "count": 7})
    assert after["parameters"]["token"] == MASK
    assert after["parameters"]["greeting"] == "Hello world"
    assert (await squall.db(squall.store.get_execution, after["id"]))["sealed"] is not None
    with pytest.raises(ParameterError, match="minimum"):
        await squall.executions.request("facts.facts", {"token": "s3cret-token", "count": 3})
    with pytest.raises(ParameterError, match="immutable"):
        await squall.executions.request("facts.facts", {"token": "s3cret-token", "count": 7, "who": "you"})


def _action(parameters: dict[str, dict[str, Any]]) -> Action:
    return Action("a", "p", "noop", "", "", True, parameters, parameters, {}, [], None, "", Path("."))


@pytest.mark.parametrize(("name", "spec"), [("token", {"secret": True}), ("headers", {}), ("env", {}),
                                            ("cookies", {}), ("url", {}), ("repo_url", {}), ("http_proxy", {})])
def test_a_parameter_that_may_be_masked_is_not_shown_as_given(name: str, spec: dict[str, Any]) -> None:
    assert _action({"plain": {"type": "string"}}).shown_as_given
    assert not _action({"plain": {"type": "string"}, name: {"type": "string", **spec}}).shown_as_given


def _needed_before(action: Action, supplied: dict[str, Any], render: Any) -> bool:
    """`needs_rendering` as it was before `templated_defaults`: every parameter looked at."""
    renders = set(supplied) if render is True else set(render or ())
    for name, spec in action.parameters.items():
        value = supplied.get(name)
        if value is not None:
            if name in renders and ("{{" in str(value) or "{%" in str(value)):
                return True
        elif "default" in spec and "{{" in str(spec["default"]):
            return True
    return False


@pytest.mark.parametrize("render", [(), True, {"a"}, {"b"}, {"c"}])
@pytest.mark.parametrize("supplied", [{}, {"a": "{{ x }}"}, {"a": "x", "b": "{{ y }}"}, {"c": "{{ z }}"},
                                      {"b": None}, {"b": "given"}])
@pytest.mark.parametrize("b_default", ["plain", "{{ a }}"])
def test_needs_rendering_decides_as_before(render: Any, supplied: dict[str, Any], b_default: str) -> None:
    """`c` is no parameter of the action: a template supplied for it renders nothing."""
    action = _action({"a": {"type": "string"}, "b": {"type": "string", "default": b_default}})
    assert needs_rendering(action, supplied, render) == _needed_before(action, supplied, render)


def test_resolve_without_templates_keeps_values_and_checks_types() -> None:
    """The path with nothing to render: values as given (a default kept), no templates; a bool is no integer
    and a value over 64 bits is refused, as on the general path."""
    action = _action({"a": {"type": "string"}, "n": {"type": "integer"}, "f": {"type": "boolean", "default": False}})
    resolution = resolve(action, {"a": "x", "n": 2}, {})
    assert resolution.values == {"a": "x", "n": 2, "f": False} and resolution.templates == {}
    assert resolution.live == ["a", "n"]
    with pytest.raises(ParameterError, match="is not of type 'integer'"):
        resolve(action, {"n": True}, {})
    with pytest.raises(ParameterError, match="out of range"):
        resolve(action, {"n": 2 ** 64}, {})
    with pytest.raises(ParameterError, match="UTF-8"):
        check_storable("a", "\ud800", {"type": "string"})


def test_a_default_json_cannot_hold_refuses_no_request_that_gives_its_parameter() -> None:
    """A YAML date inside an object default (`{since: 2024-01-01}`) is no JSON: a request that gives the
    parameter runs as before, and one that leaves it out is still checked by the templates' path."""
    action = _action({"opts": {"type": "object", "default": {"since": datetime.date(2024, 1, 1)}},
                      "who": {"type": "string"}})
    resolution = resolve(action, {"opts": {"since": "x"}, "who": "a"}, {})
    assert resolution.values == {"opts": {"since": "x"}, "who": "a"}
    assert not needs_rendering(action, {"opts": {"since": "x"}}, ())
    assert needs_rendering(action, {"who": "a"}, ())


def test_an_execution_id_is_the_microsecond_then_40_random_bits() -> None:
    """`new_id` formats one number: its first 14 digits are still the time, so ids sort by creation."""
    before = time.time_ns() // 1000
    made = [new_id() for _ in range(200)]
    after = time.time_ns() // 1000
    assert all(re.fullmatch(r"[0-9a-f]{24}", one) and before <= int(one[:14], 16) <= after for one in made)
    assert len({one[14:] for one in made}) > 190  # the random part


async def test_a_request_run_as_it_was_stored_is_shown_as_public_shows_its_rows(squall: Squall) -> None:
    """core.noop ends in the call that stores it (`_end_at_once`): its two views, ended (the chat's
    `on_completing` hooks, the waiters) and requested (what `request` returns), reuse the times they
    formatted; each must read as `public` reads the row stored."""
    requested = await squall.executions.request("core.noop", context={"user": "ann"})
    done = await squall.executions.wait(requested["id"], timeout=30)
    stored = await squall.db(squall.store.get_execution, requested["id"])
    assert done == public(stored)
    as_requested = {**stored, "status": "requested", "result": None, "log": [], "runner_info": None,
                    "end_timestamp": None}
    assert requested == public(as_requested)


def test_names_are_checked_as_before() -> None:
    """`_check_names`' shortcut (every name known, none immutable) leaves the refusals as they were."""
    action = _action({"a": {"type": "string"}, "cmd": {"type": "string", "immutable": True, "default": "x"}})
    assert resolve(action, {"a": "x"}, {}).values == {"a": "x", "cmd": "x"}
    with pytest.raises(ParameterError, match=r'unknown parameter "b" for action "p.a"'):
        resolve(action, {"a": "x", "b": "y"}, {})
    with pytest.raises(ParameterError, match=r"Override of immutable parameter\(s\) \['cmd'\] is unsupported"):
        resolve(action, {"a": "x", "cmd": "rm -rf /"}, {})
