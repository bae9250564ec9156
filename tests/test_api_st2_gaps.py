"""What `st2` commands met as a bare 404 or a 400 from Squall's API: `st2 workflow inspect` (StackStorm's
`POST /workflows/inspect`, which CI jobs run to lint Orquesta files); `st2 role list`, `st2 role-assignment
list`, `st2 service-registry group list` and `st2 action clone`, refused naming what Squall has instead; and
`-n` above a page's maximum (`st2 execution list -n 2000`), a 400 where StackStorm lists.

Requests are sent as st2client sends them (the definition as `text/plain`), through httpx against the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.storage import utcnow
from tests.test_api import KEY, _home

INSPECT = "/api/v1/workflows/inspect"
TASK_SCHEMA = r"properties.tasks.patternProperties.^\w+$"


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    """The API tests' home: `demo.greet` takes a required `who`."""
    app = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                 headers={"St2-Api-Key": KEY}) as c:
        yield c


def _workflow(hello: str, *, next_task: str = "bye") -> str:
    """An Orquesta definition whose task `hello` has the body `hello` (indented under it) and goes to `next_task`."""
    body = "\n".join(f"    {line}" for line in hello.strip().splitlines())
    return (f"version: 1.0\ninput: [who]\ntasks:\n  hello:\n{body}\n    next:\n      - when: <% succeeded() %>\n"
            f"        do: {next_task}\n  bye:\n    action: core.noop\n")


async def _inspect(client: httpx.AsyncClient, text: str) -> httpx.Response:
    """As st2client's `WorkflowManager.inspect` posts it."""
    return await client.post(INSPECT, content=text.encode(), headers={"content-type": "text/plain"})


async def _errors(client: httpx.AsyncClient, text: str) -> list[dict[str, Any]]:
    answer = await _inspect(client, text)
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- st2 workflow inspect ------------------------------------------------------------------------------

async def test_a_valid_workflow_has_no_errors(client: httpx.AsyncClient) -> None:
    """st2 prints "No errors found in workflow definition." for `[]`."""
    assert await _errors(client, _workflow("action: demo.greet\ninput:\n  who: <% ctx(who) %>")) == []
    assert await _errors(client, _workflow("action: demo.greet who=<% ctx(who) %>")) == []


async def test_a_yaql_syntax_error_is_an_expression_error(client: httpx.AsyncClient) -> None:
    [error] = await _errors(client, _workflow("action: demo.greet\ninput:\n  who: <% ctx(who %>"))
    assert error["type"] == "expression" and error["language"] == "yaql"
    assert error["expression"] == "<% ctx(who %>"
    assert error["message"] == ("line 4: task 'hello': expression syntax error: '<% ctx(who %>': Parse error: "
                                "unexpected end of statement")


async def test_an_unknown_action_ref_is_a_content_error(client: httpx.AsyncClient) -> None:
    assert await _errors(client, _workflow("action: demo.nope\ninput:\n  who: x")) == [{
        "type": "content", "message": 'The action "demo.nope" is not registered in the database.',
        "spec_path": "tasks.hello.action", "schema_path": f"{TASK_SCHEMA}.properties.action"}]


async def test_a_missing_and_an_unexpected_input_are_content_errors(client: httpx.AsyncClient) -> None:
    assert await _errors(client, _workflow("action: demo.greet\ninput:\n  whom: x")) == [
        {"type": "content", "message": 'Action "demo.greet" is missing required input "who".',
         "spec_path": "tasks.hello.input", "schema_path": f"{TASK_SCHEMA}.properties.input"},
        {"type": "content", "message": 'Action "demo.greet" has unexpected input "whom".',
         "spec_path": "tasks.hello.input.whom",
         "schema_path": f"{TASK_SCHEMA}.properties.input.patternProperties.^\\w+$"},
    ]


async def test_a_transition_to_no_task_is_a_semantic_error_and_a_bad_key_a_syntax_error(
        client: httpx.AsyncClient) -> None:
    [semantic] = await _errors(client, _workflow("action: core.noop", next_task="nowhere"))
    assert semantic["type"] == "semantic" and "names unknown task 'nowhere'" in semantic["message"]
    [syntax] = await _errors(client, _workflow("action: core.noop\nretries: 3"))
    assert syntax["type"] == "syntax" and "unknown key(s) retries" in syntax["message"]
    assert syntax["spec_path"] is None and syntax["schema_path"] is None


@pytest.mark.parametrize(("body", "said"), [
    ("version: 1.0\ntasks:\n  hello: [unclosed\n", "The workflow definition is not valid YAML at line 4"),
    ("lint this file please", "The workflow definition must be a YAML mapping"),
    ("", "The workflow definition must be a YAML mapping"),
])
async def test_a_body_that_is_no_yaml_mapping_is_a_400_saying_so(client: httpx.AsyncClient, body: str,
                                                                  said: str) -> None:
    answer = await _inspect(client, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["faultstring"].startswith(said)
    assert "st2 workflow inspect --file FILE" in answer.json()["faultstring"]


async def test_inspect_needs_a_key(squall: Squall) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)),
                                 base_url="http://squall") as anon:
        assert (await _inspect(anon, _workflow("action: core.noop"))).status_code == 401


# -- services Squall does not have ---------------------------------------------------------------------

@pytest.mark.parametrize(("path", "said", "names"), [
    ("/api/v1/rbac/roles", "Squall has no RBAC roles", "docs/security.md"),
    ("/api/v1/rbac/roles/admin", "Squall has no RBAC roles", "auth.groups"),
    ("/api/v1/rbac/role_assignments", "Squall has no RBAC roles", "auth.admins"),
    ("/api/v1/rbac/role_assignments/5f0c0ffee0000000000000aa", "Squall has no RBAC roles", "auth.aliases"),
    ("/api/v1/service_registry/groups", "Squall keeps no service registry", "GET /healthz"),
    ("/api/v1/service_registry/groups/actionrunner/members", "Squall keeps no service registry", "--health-port"),
])
async def test_rbac_and_service_registry_are_refused_naming_what_to_use(client: httpx.AsyncClient, path: str,
                                                                        said: str, names: str) -> None:
    """`st2 role list` and the others got a bare 404 (a list's 404 st2 prints as "No matching items found")."""
    answer = await client.get(path)
    assert answer.status_code == 501, answer.text
    assert answer.json()["faultstring"].startswith(said) and names in answer.json()["faultstring"]
    refused = await client.post(path, json={})
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET"


async def test_action_clone_is_refused_naming_the_files_to_copy(client: httpx.AsyncClient) -> None:
    """`st2 action clone demo.greet mine greet2` posts `{dest_pack, dest_action}`."""
    body = {"dest_pack": "mine", "dest_action": "greet2", "overwrite": False}
    answer = await client.post("/api/v1/actions/demo.greet/clone", json=body)
    assert answer.status_code == 405, answer.text
    said = answer.json()["faultstring"]
    assert said.startswith("Actions are not cloned through the API in Squall")
    assert "actions/greet.yaml into the actions/ folder of the pack" in said
    assert (await client.post("/api/v1/actions/demo.nope/clone", json=body)).status_code == 404


# -- limits above a page's maximum ---------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/executions", "/api/v1/triggerinstances", "/api/v1/ruleenforcements",
                                  "/api/v1/inquiries"])
async def test_a_limit_above_the_page_maximum_lists_a_full_page(client: httpx.AsyncClient, path: str) -> None:
    """`st2 execution list -n 2000` (and trigger-instance, rule-enforcement, inquiry list) got a 400
    `query.limit: Input should be less than or equal to 1000`; StackStorm lists. Zero and -1 keep their meaning."""
    answer = await client.get(path, params={"limit": 2000})
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("X-Limit", "1000") == "1000"
    assert (await client.get(path, params={"limit": 0})).status_code == 400
    assert (await client.get(path, params={"limit": -1})).status_code == 200


async def test_a_limit_above_the_maximum_sends_the_maximum_and_tells_the_total(squall: Squall,
                                                                                client: httpx.AsyncClient) -> None:
    """st2client prints its "Only first N ... displayed" note from `X-Total-Count`."""

    def store_many() -> None:
        for n in range(1002):
            squall.store.rule_enforcement_add_once({
                "id": f"e{n:04}", "rule": "demo.r", "trigger_instance_id": f"t{n}", "execution_id": None,
                "status": "failed", "failure_reason": "boom", "enforced_at": utcnow()})

    await squall.db(store_many)
    answer = await client.get("/api/v1/ruleenforcements", params={"limit": 1500})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()) == 1000
    assert answer.headers["X-Total-Count"] == "1002" and answer.headers["X-Limit"] == "1000"
