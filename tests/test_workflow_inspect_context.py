"""StackStorm's `context` errors of an Orquesta workflow (orquesta's `inspect_context`): a variable an
expression reads (`ctx().x`, `ctx(x)`, `ctx('x')`) before anything sets it. `st2 workflow inspect`
(`POST /workflows/inspect`, sent as st2client sends it, to the API tests' home) answers them as StackStorm
does.

The expected entries are what StackStorm answers for the same definitions (orquesta's inspection, shaped
by st2common's `format_inspection_result`: `language` the expression's, `type` "context")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.test_api import KEY, _home
from tests.test_api_st2_gaps import TASK_SCHEMA, _errors

NEXT_SCHEMA = f"{TASK_SCHEMA}.properties.next.items.properties"


@pytest.fixture
async def client(home: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The API of the API tests' home (`demo.greet`, the shipped `core` pack)."""
    app = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(app)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as c:
            yield c
    finally:
        await app.triggers.settle()
        await app.close()


def _before(name: str, expression: str, spec_path: str, schema_path: str, language: str = "yaql") -> dict[str, Any]:
    """StackStorm's entry for `name` read in `expression` (at `spec_path`) before it is set."""
    return {"type": "context", "language": language, "expression": expression,
            "message": f'Variable "{name}" is referenced before assignment.',
            "spec_path": spec_path, "schema_path": schema_path}


USED_BEFORE_PUBLISH = """
version: 1.0
input: [who]
tasks:
  greet:
    action: core.echo message="<% ctx(greeting) %>, <% ctx(who) %>"
    next:
      - when: <% succeeded() %>
        publish:
          - greeting: <% result().stdout %>
          - loud: <% ctx().greeting.toUpper() %>
        do: bye
  bye:
    action: core.echo
    input:
      message: "{{ ctx('loud') }} {{ ctx().greeting }}"
output:
  - said: <% ctx().loud %>
"""

BRANCHES = """
version: 1.0
tasks:
  start:
    action: core.noop
    next:
      - when: <% succeeded() %>
        publish: path="left"
        do: left
      - when: <% failed() %>
        do: right
  left:
    action: core.echo message=<% ctx().path %>
  right:
    action: core.echo message=<% ctx().path %>
"""

INPUT_AND_VARS = """
version: 1.0
input:
  - greeting: <% ctx().who %>
  - who
vars:
  - loud: "{{ ctx('quiet') }}"
  - quiet: <% ctx(greeting) %>
tasks:
  greet:
    action: core.echo message=<% ctx(quiet) %><% ctx(loud) %>
"""

WHEN_READS_ITS_OWN_PUBLISH = """
version: 1.0
tasks:
  poll:
    action: core.noop
    next:
      - when: <% ctx().done %>
        publish: done=true
        do: report
  report:
    action: core.echo message=<% ctx().done %>
"""

ROOT_CONTEXT = """
version: 1.0
tasks:
  who:
    action: core.echo message="<% ctx().st2.user %> asked by <% ctx().parent.user %>"
"""


async def test_a_variable_read_before_its_publish_is_a_context_error(client: httpx.AsyncClient) -> None:
    """`greet` reads `greeting` that its own transition publishes; the task after it, a later publish item
    and the output read what is published by then, and are not errors."""
    assert await _errors(client, USED_BEFORE_PUBLISH) == [
        _before("greeting", "<% ctx(greeting) %>, <% ctx(who) %>", "tasks.greet.input",
                f"{TASK_SCHEMA}.properties.input")]


async def test_a_variable_is_set_only_on_the_branch_that_publishes_it(client: httpx.AsyncClient) -> None:
    assert await _errors(client, BRANCHES) == [
        _before("path", "<% ctx().path %>", "tasks.right.input", f"{TASK_SCHEMA}.properties.input")]


async def test_input_and_vars_see_only_those_before_them(client: httpx.AsyncClient) -> None:
    """Inputs are set in order, then vars in order; the task sees all of them."""
    assert await _errors(client, INPUT_AND_VARS) == [
        _before("who", "<% ctx().who %>", "input[0]", "properties.input"),
        _before("quiet", "{{ ctx('quiet') }}", "vars[0]", "properties.vars", language="jinja"),
    ]


async def test_a_when_does_not_see_what_its_own_transition_publishes(client: httpx.AsyncClient) -> None:
    assert await _errors(client, WHEN_READS_ITS_OWN_PUBLISH) == [
        _before("done", "<% ctx().done %>", "tasks.poll.next[0].when", f"{NEXT_SCHEMA}.when")]


async def test_the_root_context_is_st2_alone_as_stackstorm_inspects(client: httpx.AsyncClient) -> None:
    """StackStorm's inspection mocks `ctx().st2` only; `ctx().parent` is set in a run alone."""
    assert await _errors(client, ROOT_CONTEXT) == [
        _before("parent", "<% ctx().st2.user %> asked by <% ctx().parent.user %>", "tasks.who.input",
                f"{TASK_SCHEMA}.properties.input")]


async def test_content_errors_come_before_context_errors(client: httpx.AsyncClient) -> None:
    """StackStorm sorts the list by type, then schema path: `content` before `context`."""
    assert await _errors(client, WHEN_READS_ITS_OWN_PUBLISH.replace("core.noop", "demo.nope")) == [
        {"type": "content", "message": 'The action "demo.nope" is not registered in the database.',
         "spec_path": "tasks.poll.action", "schema_path": f"{TASK_SCHEMA}.properties.action"},
        _before("done", "<% ctx().done %>", "tasks.poll.next[0].when", f"{NEXT_SCHEMA}.when")]


async def test_a_workflow_that_sets_what_it_reads_has_no_errors(client: httpx.AsyncClient) -> None:
    text = (USED_BEFORE_PUBLISH.replace("<% ctx(greeting) %>, ", "").replace("[who]", "[who, {greeting: hi}]"))
    assert await _errors(client, text) == []
