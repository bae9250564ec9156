"""The request path's one-pass shortcuts: `resolve` for a request with nothing to render (`_resolve_given`,
by `Action.value_plan`, made once per loaded action) must decide as the general path does, and a pack
reload must be seen by the next request; the policies' listener returns at once for an execution nothing
holds, queues nor retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.actions import Action
from engine.parameters import ParameterError, Resolution, resolve
from engine.templates import NONE_MAGIC_VALUE
from tests.conftest import write

_SPECS: dict[str, dict[str, Any]] = {
    "s": {"type": "string"},
    "i": {"type": "integer"},
    "n": {"type": "number"},
    "b": {"type": "boolean"},
    "o": {"type": "object"},
    "a": {"type": "array"},
    "u": {},  # no type
    "e": {"type": "string", "enum": ["x", "y"]},
    "m": {"type": "integer", "minimum": 5},
    "r": {"type": "string", "required": True},
    "rd": {"type": "string", "required": True, "default": None},
    "d": {"type": "string", "default": "kept"},
    "di": {"type": "integer", "default": "7"},
}

_VALUES: list[Any] = ["x", "30", "3.5", "true", "no", '{"k": 1}', "a,b", "", NONE_MAGIC_VALUE, "héllo", "\ud800",
                      2, 2 ** 64, 7.5, True, False, {"k": "v"}, [1, 2], None]


def _action(parameters: dict[str, dict[str, Any]]) -> Action:
    return Action("a", "p", "noop", "", "", True, parameters, parameters, {}, [], None, "", Path("."))


def _outcome(action: Action, supplied: dict[str, Any], render: Any) -> Resolution | str:
    try:
        return resolve(action, supplied, {}, render=render)
    except ParameterError as exc:
        return f"ParameterError: {exc}"


@pytest.mark.parametrize("name", sorted(_SPECS))
@pytest.mark.parametrize("value", _VALUES, ids=repr)
def test_resolve_given_decides_as_the_general_path(name: str, value: Any) -> None:
    """Each spec with each value (and `r` left out, or given): the shortcut's values, live names and
    error are the general path's (a render of a name no request gives takes that path and renders
    nothing)."""
    action = _action(_SPECS)
    for supplied in ({name: value}, {name: value, "r": "given"}):
        assert action.templated_defaults == frozenset()
        assert _outcome(action, supplied, ()) == _outcome(action, supplied, {"not-given"})


def test_resolve_given_names_what_was_given_when_a_default_is_not_storable() -> None:
    """A default that cannot be stored is refused naming what the person gave that cannot be either, as
    the general path names it."""
    action = _action({"given": {"type": "object"}, "later": {"type": "string", "default": "\ud800"}})
    supplied = {"given": {"k": "\ud800"}}
    assert _outcome(action, supplied, ()) == _outcome(action, supplied, {"not-given"})
    assert "given" in str(_outcome(action, supplied, ()))


_BEFORE = """
    name: plan
    runner_type: noop
    description: a count and a name
    parameters:
      count: {type: integer}
      who: {type: string}
"""
#: The count now text, the name required.
_AFTER = """
    name: plan
    runner_type: noop
    description: the count as text, the name required
    parameters:
      count: {type: string}
      who: {type: string, required: true}
"""


@pytest.fixture
def home(home: Path) -> Path:
    write(home / "packs" / "plan" / "pack.yaml", "name: plan\ndescription: d\nversion: 0.1.0\nauthor: t\n")
    write(home / "packs" / "plan" / "actions" / "plan.yaml", _BEFORE)
    return home


async def test_a_reloaded_action_is_resolved_by_its_new_plan(squall: Squall, home: Path) -> None:
    """A reload that changes a type and makes a parameter required (nothing to render either way) is seen by
    the very next request: a stale plan would still cast the count to a number, and let the name be left out."""
    before = await squall.executions.request("plan.plan", {"count": "3"})
    assert before["parameters"] == {"count": 3}

    write(home / "packs" / "plan" / "actions" / "plan.yaml", _AFTER)
    squall.reload()
    after = await squall.executions.request("plan.plan", {"count": "3", "who": "ann"})
    assert after["parameters"] == {"count": "3", "who": "ann"}
    with pytest.raises(ParameterError, match='parameter "who" is required'):
        await squall.executions.request("plan.plan", {"count": "3"})


async def test_the_policies_listener_skips_only_what_nothing_holds(squall: Squall) -> None:
    """`PolicyExecutor._on_finished` returns at once for an end it has nothing to do for, and still
    releases what it holds: an execution admitted under a key (as a concurrency policy admits one)
    gives its slot back when it ends."""
    policies = squall.policies
    assert policies._on_finished({"id": "nothing-held", "action": "core.noop", "status": "succeeded"}) is None
    policies._hold("held", "core.noop", (("core.noop",),))
    assert policies._on_finished({"id": "held", "action": "core.noop", "status": "succeeded"}) is None
    assert "held" not in policies._keys_of and "held" not in policies._action_of
    assert ("core.noop",) not in policies._admitted
