"""Orquesta's dynamic execution pattern (orquesta PR #35, documented with #134): a task's `action` and
`input` given as expressions, evaluated when the task runs (`TaskSpec.render`). Run for real, with
children as real executions, as `test_workflow_orquesta.py` runs the other constructs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from tests.workflow_helpers import children, run, workflow_pack

#: The action named by an expression, in each way an author writes one: YAQL without spaces (which
#: loaded but never evaluated), Jinja with spaces (refused at load), a ref built from a text with an
#: expression in it, and an expression followed by inline parameters (Orquesta's split at the first space).
DYNAMIC_ACTION = """
version: 1.0
input: [act, name]
tasks:
  yaql:
    action: <%ctx(act)%>
    input:
      message: yaql
    next: [{publish: [yaql: <% result().stdout %>], do: jinja}]
  jinja:
    action: "{{ ctx().act }}"
    input:
      message: jinja
    next: [{publish: [jinja: <% result().stdout %>], do: built}]
  built:
    action: core.<% ctx(name) %>
    input:
      message: built
    next: [{publish: [built: <% result().stdout %>], do: inline}]
  inline:
    action: <% ctx(act) %> message="inline"
    next: [{publish: [inline: <% result().stdout %>]}]
output:
  - said: [<% ctx(yaql) %>, <% ctx(jinja) %>, <% ctx(built) %>, <% ctx(inline) %>]
"""

#: The reviewer's first case: a YAQL action without spaces loaded, then ran as the text written.
YAQL_ACTION = """
version: 1.0
input: [act]
tasks:
  one:
    action: <%ctx(act)%>
    input:
      message: from <% ctx(act) %>
    next: [{publish: [said: <% result().stdout %>]}]
output:
  - said: <% ctx(said) %>
"""

#: The input given by an expression: the mapping it gives is the action's input.
DYNAMIC_INPUT = """
version: 1.0
input: [params]
tasks:
  say:
    action: core.echo
    input: "{{ ctx().params }}"
    next: [{publish: [said: <% result().stdout %>]}]
output:
  - said: <% ctx(said) %>
"""

#: Both, per item: each item names its action and its input.
DYNAMIC_ITEMS = """
version: 1.0
input: [calls]
tasks:
  each:
    with: <% ctx(calls) %>
    action: "{{ item().act }}"
    input: <% item().params %>
"""

#: A dynamic action that is a shell command, its `cmd` holding workflow data: still quoted, never shell text.
DYNAMIC_SHELL = """
version: 1.0
input: [act, who]
tasks:
  greet:
    action: <% ctx(act) %>
    input:
      cmd: echo hi <% ctx(who) %>
    next: [{publish: [said: <% result().stdout %>]}]
output:
  - said: <% ctx(said) %>
"""

#: Whatever the caller gives, for the errors: an action expression and an input expression.
DYNAMIC_ANY = """
version: 1.0
input: [act, params]
tasks:
  call:
    action: <% ctx(act) %>
    input: <% ctx(params) %>
"""


@pytest.fixture
async def dyn(home: Path) -> Squall:
    workflow_pack(home, {
        "yaql_action": ("orquesta", "act: {type: string}", YAQL_ACTION),
        "dynamic_action": ("orquesta", "act: {type: string}\nname: {type: string}", DYNAMIC_ACTION),
        "dynamic_input": ("orquesta", "params: {type: object}", DYNAMIC_INPUT),
        "dynamic_items": ("orquesta", "calls: {type: array}", DYNAMIC_ITEMS),
        "dynamic_shell": ("orquesta", "act: {type: string}\nwho: {type: string}", DYNAMIC_SHELL),
        "dynamic_any": ("orquesta", "act: {}\nparams: {}", DYNAMIC_ANY),
    })
    app = await Squall.start(load_config(home / "config.yml"))
    assert [str(e) for e in app.registry.errors] == []
    try:
        yield app
    finally:
        await app.close()


async def test_an_action_given_by_an_expression_runs_the_action_it_gives(dyn: Squall) -> None:
    done = await run(dyn, "wf.dynamic_action", {"act": "core.echo", "name": "echo"})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"said": ["yaql", "jinja", "built", "inline"]}
    rows = await children(dyn, done["id"])
    assert [(r["action"], r["parameters"]["message"]) for r in rows] == [
        ("core.echo", "yaql"), ("core.echo", "jinja"), ("core.echo", "built"), ("core.echo", "inline")]


@pytest.mark.parametrize("act", ["core.echo", "core.local"])
async def test_an_action_expression_that_loaded_is_evaluated_when_the_task_runs(dyn: Squall, act: str) -> None:
    """`<%ctx(act)%>` loaded but was requested as the text written ('action "<%ctx(act)%>" not found')."""
    done = await run(dyn, "wf.yaql_action", {"act": act})
    if act == "core.local":  # core.local takes no `message`: its request is refused, naming what was given
        assert done["status"] == "failed", done["result"]
        error = done["result"]["errors"][0]  # (then its transition's and the output's, as the task ran no echo)
        assert error["task_id"] == "one" and '"<%ctx(act)%>"' in error["message"]
        assert '"core.local"' in error["message"] and 'unknown parameter "message"' in error["message"]
        assert await children(dyn, done["id"]) == []
        return
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"said": "from core.echo"}
    (row,) = await children(dyn, done["id"])
    assert row["action"] == "core.echo"


async def test_an_input_given_by_an_expression_is_the_mapping_it_gives_and_its_values_are_data(dyn: Squall) -> None:
    """The mapping's values are evaluated once, as the expression gives them: text that looks like an
    expression in them is data, passed on as it is."""
    message = "<% 6 * 7 %> and {{ 6 * 7 }}"
    done = await run(dyn, "wf.dynamic_input", {"params": {"message": message}})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"said": message}
    (row,) = await children(dyn, done["id"])
    assert row["parameters"]["message"] == message


async def test_each_item_evaluates_its_own_action_and_input(dyn: Squall) -> None:
    calls = [{"act": "core.echo", "params": {"message": "first"}}, {"act": "core.noop", "params": {}},
             {"act": "core.local", "params": {"cmd": "echo third"}}]
    done = await run(dyn, "wf.dynamic_items", {"calls": calls})
    assert done["status"] == "succeeded", done["result"]
    rows = sorted(await children(dyn, done["id"]), key=lambda r: r["context"]["orquesta"]["item_id"])
    assert [r["action"] for r in rows] == ["core.echo", "core.noop", "core.local"]
    assert [r["result"].get("stdout") for r in rows] == ["first", None, "third"]


async def test_a_dynamic_shell_action_gets_workflow_data_in_its_cmd_as_data(dyn: Squall, tmp_path: Path) -> None:
    """Whether a `cmd` is shell text is decided on the action the expression gave, not on the expression."""
    nasty = f'ann"; touch {tmp_path}/pwned; echo "$(touch {tmp_path}/pwned2)'
    done = await run(dyn, "wf.dynamic_shell", {"act": "core.local", "who": nasty})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"said": f"hi {nasty}"}
    assert list(tmp_path.glob("pwned*")) == []
    (row,) = await children(dyn, done["id"])
    assert row["action"] == "core.local" and nasty not in row["parameters"]["cmd"]


def _error(done: dict[str, Any], task: str = "call") -> dict[str, Any]:
    """The one error of a workflow that failed on its task `task`."""
    assert done["status"] == "failed", done["result"]
    (error,) = done["result"]["errors"]
    assert error["task_id"] == task
    return error


@pytest.mark.parametrize("act", [42, None, "", {"ref": "core.noop"}])
async def test_an_action_expression_that_gives_no_ref_fails_the_task_naming_it(dyn: Squall, act: Any) -> None:
    done = await run(dyn, "wf.dynamic_any", {"act": act, "params": {}})
    message = _error(done)["message"]
    assert '"<% ctx(act) %>"' in message and repr(act) in message and "ref of a loaded action" in message
    assert await children(dyn, done["id"]) == []


async def test_an_action_expression_that_gives_an_unknown_action_fails_the_task_naming_it(dyn: Squall) -> None:
    done = await run(dyn, "wf.dynamic_any", {"act": "wf.nothing_here", "params": {}})
    error = _error(done)
    assert '"<% ctx(act) %>"' in error["message"] and '"wf.nothing_here"' in error["message"]
    assert 'action "wf.nothing_here" not found' in error["message"]
    assert await children(dyn, done["id"]) == []


@pytest.mark.parametrize("params", ["message=hi", ["message", "hi"], 7])
async def test_an_input_expression_that_gives_no_mapping_fails_the_task_naming_it(dyn: Squall, params: Any) -> None:
    done = await run(dyn, "wf.dynamic_any", {"act": "core.echo", "params": params})
    message = _error(done)["message"]
    assert '"<% ctx(params) %>"' in message and "mapping of parameter names to values" in message
    assert await children(dyn, done["id"]) == []


BAD_FILES = {
    "words": ("version: 1.0\ntasks:\n  one:\n    action: core.echo hello world\n",
              "no inline parameter here is one Orquesta reads"),
    "expression_and_words": ("version: 1.0\ntasks:\n  one:\n    action: '{{ ctx().act }} hello'\n",
                             "no inline parameter here is one Orquesta reads"),
    "plain_input": ("version: 1.0\ntasks:\n  one:\n    action: core.echo\n    input: message=hi\n",
                    "'input' must be a mapping of parameter names to values, or an expression that gives one"),
    "listed_input": ("version: 1.0\ntasks:\n  one:\n    action: core.echo\n    input: [message]\n",
                     "'input' must be a mapping of parameter names to values, or an expression that gives one"),
}


def test_malformed_actions_and_inputs_are_still_refused_at_load(home: Path) -> None:
    from bot.app import load_packs

    workflow_pack(home, {name: ("orquesta", "", text) for name, (text, _) in BAD_FILES.items()}, pack="bad")
    registry = load_packs(load_config(home / "config.yml"))
    errors = {str(e) for e in registry.errors}
    for name, (_, reason) in BAD_FILES.items():
        assert f"bad.{name}" not in registry.actions
        assert any(f"actions/workflows/{name}.yaml" in e and reason in e for e in errors), (name, errors)
