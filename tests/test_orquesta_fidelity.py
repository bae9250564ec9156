"""Orquesta as StackStorm runs it: error records, output beside errors, engine commands, `task()`,
with-items results, `delayed` tasks, graceful cancel (`canceling`), pausing items, `version_*`,
`st2kv` defaults and `ctx().st2`.

The expected values are StackStorm's (its orquesta integration tests against the `examples` pack,
and orquesta's conductor); the workflows are this file's own.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine import templates
from engine.config import TemplateLimits, load_config
from engine.executions import new_id
from engine.processes import process_identity
from engine.storage import Store, utcnow
from engine.templates import TemplateLimitError, configure_limits
from engine.workflows import expressions
from tests.workflow_helpers import children, run, task_names, workflow_pack

UNKNOWN_FUNCTION = ("YaqlEvaluationException: Unable to evaluate expression '<% abs(8).value %>'. "
                    'NoFunctionRegisteredException: Unknown function "#property#value"')
FAILED = "Execution failed. See result for details."
EXIT_1 = {"failed": True, "return_code": 1, "stderr": "", "stdout": "", "succeeded": False}

GREET_TAIL = """
tasks:
  greet:
    action: core.echo message=<% ctx().who %>
    next:
      - when: <% succeeded() %>
        publish: greeting=<% result().stdout %>
output:
  - greeting: <% ctx().greeting %>
"""

WORKFLOWS: dict[str, str] = {
    "bad_input": """
version: 1.0
input:
  - who: <% abs(8).value %>
vars:
  - greeting: null
""" + GREET_TAIL,
    "bad_vars": """
version: 1.0
input: [who]
vars:
  - greeting: <% abs(8).value %>
""" + GREET_TAIL,
    "bad_start": """
version: 1.0
input: [who]
vars:
  - greeting: null
tasks:
  greet:
    action: core.echo message=<% ctx().who.value %>
output:
  - greeting: <% ctx().greeting %>
""",
    "bad_when": """
version: 1.0
input: [who]
vars:
  - greeting: null
tasks:
  greet:
    action: core.echo message=<% ctx().who %>
    next:
      - when: <% succeeded() and result().value %>
        publish: greeting=<% result().stdout %>
        do: after
  after:
    action: core.noop
output:
  - greeting: <% ctx().greeting %>
""",
    "bad_publish": """
version: 1.0
input: [who]
vars:
  - greeting: null
tasks:
  greet:
    action: core.echo message=<% ctx().who %>
    next:
      - when: <% succeeded() %>
        publish: greeting=<% result().value %>
        do: after
  after:
    action: core.noop
output:
  - greeting: <% ctx().greeting %>
""",
    "bad_output": """
version: 1.0
input: [who]
tasks:
  greet:
    action: core.echo message=<% ctx().who %>
output:
  - greeting: <% abs(8).value %>
""",
    "output_on_error": """
version: 1.0
vars:
  - done: 0
tasks:
  first:
    action: core.noop
    next:
      - when: <% succeeded() %>
        publish: [done: 1]
        do: second
  second:
    action: core.local cmd="exit 1"
    next:
      - when: <% succeeded() %>
        publish: [done: 2]
output:
  - done: <% ctx().done %>
""",
    "remediate_then_fail": """
version: 1.0
tasks:
  broken:
    action: core.local cmd="exit 1"
    next:
      - when: <% failed() %>
        publish:
          - name: <% task().task_name %>
          - code: <% task().result.return_code %>
        do: [report, fail]
  report:
    action: core.echo
    input:
      message: <% ctx().name %> exited <% ctx().code %>
""",
    "on_failure": """
version: 1.0
input: [command]
vars:
  - message: null
tasks:
  broken:
    action: core.local cmd=<% ctx(command) %>
    next:
      - when: <% succeeded() %>
        do: after
      - when: <% failed() %>
        publish:
          - message: handled
        do: {command}
  after:
    action: core.noop
output:
  - message: <% ctx().message %>
""",
    "current_task": """
version: 1.0
tasks:
  first:
    action: core.echo message="hi"
    next:
      - publish:
          - by_yaql: <% task().task_id %>
          - by_jinja: "{{ task().task_name }}"
          - named: <% task(first).result.stdout %>
output:
  - by_yaql: <% ctx(by_yaql) %>
  - by_jinja: <% ctx(by_jinja) %>
  - named: <% ctx(named) %>
""",
    "routes": """
version: 1.0
vars:
  - again: true
tasks:
  left:
    action: core.noop
    next: [{do: shared}]
  right:
    action: core.noop
    next: [{do: shared}]
  shared:
    action: core.noop
    next: [{do: report}]
  report:
    action: core.echo
    input:
      message: '<% task("shared").task_id + "@" + str(task("shared").route) %>'
  begin:
    action: core.noop
    next: [{do: loop}]
  loop:
    action: core.echo message="again <% ctx(again) %>"
    next:
      - when: <% ctx(again) %>
        publish: [again: false]
        do: loop
output:
  - first: <% task("report", route=>1).result.stdout %>
  - second: "{{ task('report', route=2).result.stdout }}"
  - loop_last: <% task("loop").result.stdout %>
  - loop_route: <% task("loop").route %>
""",
    "missing_task": """
version: 1.0
tasks:
  one:
    action: core.noop
    next:
      - publish:
          - data: <% task("nope") %>
""",
    "items_results": """
version: 1.0
input: [names]
tasks:
  each:
    with: <% ctx(names) %>
    action: core.echo message="<% item() %>, hello"
    next:
      - when: <% succeeded() %>
        publish:
          - from_result: <% result().select($.stdout) %>
output:
  - from_task: <% task(each).result.items.select($.result.stdout) %>
  - statuses: <% task(each).result.items.select($.status) %>
  - from_result: <% ctx(from_result) %>
""",
    "versions_yaql": """
version: 1.0
tasks:
  one:
    action: core.noop
output:
  - compare_equal: <% version_compare("0.10.0", "0.10.0") %>
  - compare_lower: <% version_compare("0.10.0", "0.10.1") %>
  - compare_higher: <% version_compare("0.10.1", "0.10.0") %>
  - equal: <% version_equal("0.10.0", "0.10.0") %>
  - more_than: <% version_more_than("0.9.0", "0.10.0") %>
  - less_than: <% version_less_than("0.10.0", "0.9.0") %>
  - match: <% version_match("0.10.1", ">0.10.0") %>
  - bump_major: <% version_bump_major("0.10.0") %>
  - bump_minor: <% version_bump_minor("0.10.0") %>
  - bump_patch: <% version_bump_patch("0.10.0") %>
  - strip_patch: <% version_strip_patch("0.10.0") %>
""",
    "versions_jinja": """
version: 1.0
tasks:
  one:
    action: core.noop
output:
  - bump_major: "{{ version_bump_major('1.2.3') }}"
  - bump_minor: "{{ version_bump_minor('1.2.3') }}"
  - bump_patch: "{{ version_bump_patch('1.2.3') }}"
  - strip_patch: "{{ version_strip_patch('1.2.3') }}"
  - compare: "{{ version_compare('1.2.3', '1.2.4') }}"
""",
    "kv_default": """
version: 1.0
input: [key, default]
tasks:
  one:
    action: core.noop
output:
  - yaql: <% st2kv(ctx(key), default=>ctx(default)) %>
  - jinja: "{{ st2kv(ctx('key'), default=ctx('default')) }}"
""",
    "kv_missing": """
version: 1.0
input: [key]
tasks:
  one:
    action: core.noop
    next:
      - publish:
          - value: <% st2kv(ctx(key)) %>
""",
    "st2_context": """
version: 1.0
tasks:
  one:
    action: core.noop
output:
  - st2: <% ctx(st2) %>
  - parent_user: <% ctx(parent).user %>
""",
    "delayed": """
version: 1.0
input: [seconds]
tasks:
  later:
    delay: <% ctx(seconds) %>
    action: core.echo message="later"
    next:
      - publish: said=<% result().stdout %>
output:
  - said: <% ctx(said) %>
""",
    "gated": """
version: 1.0
input: [gate]
tasks:
  wait:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 30
    next: [{do: after}]
  after:
    action: core.noop
""",
    "two_gated": """
version: 1.0
input: [gate]
tasks:
  slow:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 30
    next: [{do: after}]
  stuck:
    action: core.local
    input:
      cmd: "sleep 30"
      timeout: 60
  after:
    action: core.noop
""",
    "parent_of_gated": """
version: 1.0
input: [gate]
tasks:
  sub:
    action: fid.gated gate=<% ctx(gate) %>
    next: [{do: done}]
  done:
    action: core.noop
""",
    "gated_items": """
version: 1.0
input:
  - gates
  - concurrency: <% len(ctx(gates)) %>
tasks:
  each:
    with:
      items: gate in <% ctx(gates) %>
      concurrency: <% ctx(concurrency) %>
    action: core.local
    input:
      cmd: "while [ ! -f {{ item('gate') }} ]; do sleep 0.02; done"
      timeout: 30
""",
}

PARAMETERS = {
    "bad_input": "", "bad_vars": "who: {type: string}", "bad_start": "who: {type: string}",
    "bad_when": "who: {type: string}", "bad_publish": "who: {type: string}", "bad_output": "who: {type: string}",
    "items_results": "names: {type: array}", "kv_default": "key: {type: string}\ndefault: {}",
    "kv_missing": "key: {type: string}", "delayed": "seconds: {type: number}", "gated": "gate: {type: string}",
    "parent_of_gated": "gate: {type: string}", "two_gated": "gate: {type: string}",
    "gated_items": "gates: {type: array}\nconcurrency: {type: integer}",
}


@pytest.fixture
async def fid(home: Path) -> Squall:
    workflows = {name: text for name, text in WORKFLOWS.items() if name != "on_failure"}
    for command in ("continue", "noop"):
        workflows[f"on_failure_{command}"] = WORKFLOWS["on_failure"].replace("{command}", command)
        PARAMETERS[f"on_failure_{command}"] = "command: {type: string}"
    workflow_pack(home, {name: ("orquesta", PARAMETERS.get(name, ""), text) for name, text in workflows.items()},
                  pack="fid")
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


async def until(check: Callable[[], Awaitable[Any]], what: str, limit: float = 20) -> Any:
    """Poll `check` until it returns something true (a bounded wait, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def status_is(squall: Squall, execution_id: str, status: str) -> None:
    async def check() -> bool:
        return (await squall.executions.get(execution_id))["status"] == status

    await until(check, f"{execution_id} {status}")


async def child_rows(squall: Squall, execution_id: str, count: int, status: str | None = None) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        rows = await children(squall, execution_id)
        matching = [r for r in rows if status is None or r["status"] == status]
        return rows if len(matching) >= count else None

    return await until(check, f"{count} children of {execution_id} {status or ''}")


async def final(squall: Squall, execution_id: str) -> dict[str, Any]:
    squall.executions._recent.pop(execution_id, None)
    return await squall.executions.wait(execution_id, timeout=30)


# -- error records ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bad_input", "bad_vars"])
async def test_input_and_vars_errors_are_recorded_without_a_task_and_no_output(fid: Squall, name: str) -> None:
    done = await run(fid, f"fid.{name}", {"who": "ann"} if name == "bad_vars" else {})
    assert done["status"] == "failed"
    assert done["result"] == {"errors": [{"type": "error", "message": UNKNOWN_FUNCTION}], "output": None}
    assert await children(fid, done["id"]) == []


async def test_start_task_error_names_the_task_and_output_renders_from_nothing(fid: Squall) -> None:
    done = await run(fid, "fid.bad_start", {"who": "ann"})
    assert done["status"] == "failed"
    assert done["result"] == {"output": None, "errors": [
        {"type": "error", "task_id": "greet", "route": 0,
         "message": "YaqlEvaluationException: Unable to evaluate expression '<% ctx().who.value %>'. "
                    'NoFunctionRegisteredException: Unknown function "#property#value"'},
        {"type": "error", "message": "YaqlEvaluationException: Unable to resolve key 'greeting' in expression "
                                     "'<% ctx().greeting %>' from context."},
    ]}


@pytest.mark.parametrize("name,expression", [("bad_when", "<% succeeded() and result().value %>"),
                                             ("bad_publish", "<% result().value %>")])
async def test_transition_errors_name_the_transition_and_output_is_kept(fid: Squall, name: str,
                                                                       expression: str) -> None:
    done = await run(fid, f"fid.{name}", {"who": "ann"})
    assert done["status"] == "failed"
    assert done["result"] == {"output": {"greeting": None}, "errors": [
        {"type": "error", "task_id": "greet", "route": 0, "task_transition_id": "after__t0",
         "message": f"YaqlEvaluationException: Unable to resolve key 'value' in expression '{expression}' "
                    "from context."}]}
    assert task_names(await children(fid, done["id"])) == ["greet"]


async def test_output_error_fails_the_workflow_with_no_output(fid: Squall) -> None:
    done = await run(fid, "fid.bad_output", {"who": "ann"})
    assert done["status"] == "failed"
    assert done["result"] == {"errors": [{"type": "error", "message": UNKNOWN_FUNCTION}], "output": None}


async def test_missing_task_in_a_transition_is_an_expression_error_of_continue(fid: Squall) -> None:
    done = await run(fid, "fid.missing_task")
    assert done["status"] == "failed"
    assert done["result"] == {"output": None, "errors": [
        {"type": "error", "task_id": "one", "route": 0, "task_transition_id": "continue__t0",
         "message": "YaqlEvaluationException: Unable to evaluate expression '<% task(\"nope\") %>'. "
                    'ExpressionEvaluationException: Unable to find task execution for "nope".'}]}


# -- engine commands after a failure ------------------------------------------------------------

async def test_remediate_then_fail_records_the_failure_and_the_fail_command(fid: Squall) -> None:
    done = await run(fid, "fid.remediate_then_fail")
    assert done["status"] == "failed"
    assert done["result"] == {"output": None, "errors": [
        {"type": "error", "task_id": "broken", "message": FAILED, "result": EXIT_1},
        {"type": "error", "task_id": "fail", "message": FAILED}]}
    rows = await children(fid, done["id"])
    assert [(n, r["status"]) for n, r in zip(task_names(rows), rows, strict=True)] == [
        ("broken", "failed"), ("report", "succeeded")]
    assert rows[1]["result"]["stdout"] == "broken exited 1"  # task() without a name: the current task


async def test_an_unhandled_failure_keeps_the_output_so_far(fid: Squall) -> None:
    done = await run(fid, "fid.output_on_error")
    assert done["status"] == "failed"
    assert done["result"] == {"output": {"done": 1}, "errors": [
        {"type": "error", "task_id": "second", "message": FAILED, "result": EXIT_1}]}


async def test_continue_after_a_failure_fails_the_workflow_with_its_output(fid: Squall) -> None:
    done = await run(fid, "fid.on_failure_continue", {"command": "exit 1"})
    assert done["status"] == "failed"
    assert done["result"] == {"output": {"message": "handled"}, "errors": [
        {"type": "error", "task_id": "broken", "message": FAILED, "result": EXIT_1}]}


async def test_noop_after_a_failure_succeeds_without_errors(fid: Squall) -> None:
    done = await run(fid, "fid.on_failure_noop", {"command": "exit 1"})
    assert done["status"] == "succeeded"
    assert done["result"] == {"output": {"message": "handled"}}


# -- functions --------------------------------------------------------------------------------

async def test_task_without_a_name_is_the_current_task(fid: Squall) -> None:
    done = await run(fid, "fid.current_task")
    assert done["result"] == {"output": {"by_yaql": "first", "by_jinja": "first", "named": "hi"}}


async def test_a_split_task_runs_once_per_route_and_task_finds_each(fid: Squall) -> None:
    done = await run(fid, "fid.routes")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"] == {"output": {"first": "shared@1", "second": "shared@2", "loop_last": "again False",
                                         "loop_route": 0}}
    rows = await children(fid, done["id"])
    routes = sorted((r["context"]["workflow_task"]["task"], r["context"]["orquesta"]["task_route"]) for r in rows)
    assert [r for r in routes if r[0] in ("shared", "report")] == [
        ("report", 1), ("report", 2), ("shared", 1), ("shared", 2)]


async def test_with_items_task_result_lists_each_item_status_and_result(fid: Squall) -> None:
    done = await run(fid, "fid.items_results", {"names": ["ann", "bob", "cy"]})
    assert done["status"] == "succeeded", done["result"]
    said = ["ann, hello", "bob, hello", "cy, hello"]
    assert done["result"] == {"output": {"from_task": said, "statuses": ["succeeded"] * 3, "from_result": said}}


async def test_version_functions(fid: Squall) -> None:
    yaql = await run(fid, "fid.versions_yaql")
    assert yaql["result"] == {"output": {
        "compare_equal": 0, "compare_lower": -1, "compare_higher": 1, "equal": True, "more_than": False,
        "less_than": False, "match": True, "bump_major": "1.0.0", "bump_minor": "0.11.0", "bump_patch": "0.10.1",
        "strip_patch": "0.10"}}
    jinja = await run(fid, "fid.versions_jinja")
    assert jinja["result"] == {"output": {"bump_major": "2.0.0", "bump_minor": "1.3.0", "bump_patch": "1.2.4",
                                          "strip_patch": "1.2", "compare": -1}}


@pytest.mark.parametrize("default", ["stone", "", None])
async def test_st2kv_default_is_returned_whatever_it_is(fid: Squall, default: Any) -> None:
    done = await run(fid, "fid.kv_default", {"key": "system.nothing_here", "default": default})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"yaql": default, "jinja": default}


async def test_st2kv_missing_key_without_default_fails_naming_the_key(fid: Squall) -> None:
    done = await run(fid, "fid.kv_missing", {"key": "system.nothing_here"})
    assert done["status"] == "failed"
    (error,) = done["result"]["errors"]
    assert 'ExpressionEvaluationException: The key "nothing_here" does not exist in the StackStorm datastore.' \
        in error["message"]


async def test_ctx_st2_has_stackstorms_keys_and_parent_is_the_context(fid: Squall) -> None:
    fid.executions.api_url = "http://squall.example/api/v1"
    done = await run(fid, "fid.st2_context")
    st2 = done["result"]["output"]["st2"]
    assert st2 == {"action_execution_id": done["id"], "workflow_execution_id": done["id"],
                   "api_url": "http://squall.example/api/v1", "user": "tester", "pack": "fid",
                   "action": "fid.st2_context", "runner": "orquesta"}
    assert done["result"]["output"]["parent_user"] == "tester"


# -- delay, cancel, pause ------------------------------------------------------------------------

async def test_a_delayed_task_is_a_delayed_child_then_runs(fid: Squall) -> None:
    done = await run(fid, "fid.delayed", {"seconds": 0.05})
    assert done["result"] == {"output": {"said": "later"}}
    (child,) = await children(fid, done["id"])
    statuses = [e["status"] for e in child["log"]]
    assert statuses == ["requested", "delayed", "scheduled", "running", "succeeded"], statuses


@pytest.mark.parametrize("cancel", ["workflow", "task"])
async def test_canceling_during_a_delay_cancels_the_delayed_child(fid: Squall, cancel: str) -> None:
    record = await fid.executions.request("fid.delayed", {"seconds": 300}, {"user": "tester"})
    (child,) = await child_rows(fid, record["id"], 1, "delayed")
    await fid.executions.cancel(record["id"] if cancel == "workflow" else child["id"])
    assert (await final(fid, record["id"]))["status"] == "canceled"
    assert [r["status"] for r in await children(fid, record["id"])] == ["canceled"]


async def test_cancel_waits_for_running_tasks_and_cascades_down(fid: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await fid.executions.request("fid.parent_of_gated", {"gate": str(gate)}, {"user": "tester"})
    (sub,) = await child_rows(fid, record["id"], 1)
    await child_rows(fid, sub["id"], 1, "running")
    assert (await fid.executions.cancel(record["id"]))["status"] == "canceling"
    await status_is(fid, sub["id"], "canceling")
    gate.touch()
    assert (await final(fid, record["id"]))["status"] == "canceled"
    assert (await fid.executions.get(sub["id"]))["status"] == "canceled"
    assert [r["status"] for r in await children(fid, sub["id"])] == ["succeeded"]  # `after` never ran
    assert task_names(await children(fid, record["id"])) == ["sub"]


async def test_canceling_a_sub_workflow_cascades_up_to_the_root(fid: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await fid.executions.request("fid.parent_of_gated", {"gate": str(gate)}, {"user": "tester"})
    (sub,) = await child_rows(fid, record["id"], 1)
    await child_rows(fid, sub["id"], 1, "running")
    await fid.executions.cancel(sub["id"])
    await status_is(fid, record["id"], "canceling")
    assert (await fid.executions.get(sub["id"]))["status"] == "canceling"
    gate.touch()
    assert (await final(fid, record["id"]))["status"] == "canceled"
    assert (await fid.executions.get(sub["id"]))["status"] == "canceled"


async def test_canceling_with_items_lets_the_running_items_finish(fid: Squall, tmp_path: Path) -> None:
    gates = [str(tmp_path / f"gate{i}") for i in range(4)]
    record = await fid.executions.request("fid.gated_items", {"gates": gates, "concurrency": 2}, {"user": "tester"})
    await child_rows(fid, record["id"], 2, "running")
    assert (await fid.executions.cancel(record["id"]))["status"] == "canceling"
    for gate in gates:
        Path(gate).touch()
    assert (await final(fid, record["id"]))["status"] == "canceled"
    assert [r["status"] for r in await children(fid, record["id"])] == ["succeeded", "succeeded"]


@pytest.mark.parametrize("concurrency", [2, None])
async def test_pausing_with_items_finishes_items_in_flight_and_resume_runs_the_rest(fid: Squall, tmp_path: Path,
                                                                                    concurrency: int | None) -> None:
    gates = [tmp_path / f"gate{i}" for i in range(4)]
    record = await fid.executions.request("fid.gated_items", {"gates": [str(g) for g in gates],
                                                              "concurrency": concurrency}, {"user": "tester"})
    in_flight = concurrency or len(gates)
    first = await child_rows(fid, record["id"], in_flight, "running")
    assert (await fid.executions.pause(record["id"]))["status"] == "pausing"
    for row in first:
        gates[row["context"]["orquesta"]["item_id"]].touch()
    assert (await final(fid, record["id"]))["status"] == "paused"
    assert [r["status"] for r in await children(fid, record["id"])] == ["succeeded"] * in_flight
    await fid.executions.resume(record["id"])
    for gate in gates:
        gate.touch()
    done = await final(fid, record["id"])
    assert done["status"] == "succeeded", done["result"]
    rows = await children(fid, record["id"])
    assert sorted(r["context"]["orquesta"]["item_id"] for r in rows) == [0, 1, 2, 3]
    assert all(r["status"] == "succeeded" for r in rows)


async def test_canceling_one_task_makes_the_workflow_canceling_while_the_others_finish(fid: Squall,
                                                                                     tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await fid.executions.request("fid.two_gated", {"gate": str(gate)}, {"user": "tester"})
    rows = await child_rows(fid, record["id"], 2, "running")
    stuck = next(r for r in rows if r["context"]["workflow_task"]["task"] == "stuck")
    await fid.executions.cancel(stuck["id"])
    await status_is(fid, record["id"], "canceling")
    gate.touch()
    assert (await final(fid, record["id"]))["status"] == "canceled"
    rows = await children(fid, record["id"])
    assert sorted((n, r["status"]) for n, r in zip(task_names(rows), rows, strict=True)) == [
        ("slow", "succeeded"), ("stuck", "canceled")]  # `after` never ran


# -- expressions that run too long --------------------------------------------------------------

#: A nested YAQL loop whose cost the caller chooses (`n` from a webhook body): about n³ steps.
YAQL_BOMB = """
version: 1.0
input: [n]
vars:
  - total: <% range(0, ctx(n)).select(range(0, ctx(n)).sum()).sum() %>
tasks:
  done:
    action: core.noop
output:
  - total: <% ctx(total) %>
"""
JINJA_BOMB = """
version: 1.0
vars:
  - x: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
tasks:
  done:
    action: core.noop
"""
#: Past `templates.max_seconds` (0.3 s here) an expression fails as a template does, naming the setting.
TOO_LONG = "the template ran longer than 0.3 s, the limit set by templates.max_seconds in the config"


@pytest.fixture
async def bombs(home: Path) -> AsyncIterator[Squall]:
    config = home / "config.yml"
    config.write_text(config.read_text() + "templates:\n  max_seconds: 0.3\n")
    workflow_pack(home, {"yaql": ("orquesta", "n: {type: integer}", YAQL_BOMB),
                         "jinja": ("orquesta", "", JINJA_BOMB)}, pack="bomb")
    app = await Squall.start(load_config(config))
    try:
        yield app
    finally:
        await app.close()
        configure_limits(TemplateLimits())  # process-wide: the next test starts from the defaults


async def test_a_yaql_expression_past_the_time_limit_fails_the_workflow_with_the_limit(bombs: Squall) -> None:
    done = await run(bombs, "bomb.yaql", {"n": 150})  # about 2 s of YAQL without a deadline
    assert done["status"] == "failed", done["result"]
    (error,) = done["result"]["errors"]
    assert error["message"].startswith("YaqlEvaluationException: Unable to evaluate expression '<% range(0, ")
    assert TOO_LONG in error["message"]
    assert await children(bombs, done["id"]) == []  # nothing ran, as with any bad expression
    small = await run(bombs, "bomb.yaql", {"n": 3})  # an ordinary expression is untouched
    assert small["status"] == "succeeded", small["result"]
    assert small["result"]["output"] == {"total": 9}


@pytest.mark.parametrize(("ref", "parameters", "evaluator"), [("bomb.yaql", {"n": 150}, "_yaql_eval"),
                                                              ("bomb.jinja", {}, "_jinja_eval")])
async def test_the_event_loop_goes_on_while_a_workflow_expression_evaluates(
        bombs: Squall, monkeypatch: pytest.MonkeyPatch, ref: str, parameters: dict[str, Any], evaluator: str) -> None:
    """The loop is never held by an Orquesta expression: a coroutine keeps running while one evaluates."""
    seen: list[str] = []
    evaluate = getattr(expressions, evaluator)

    def watched(*args: Any, **kwargs: Any) -> Any:
        seen.append("start")
        try:
            return evaluate(*args, **kwargs)
        finally:
            seen.append("end")

    monkeypatch.setattr(expressions, evaluator, watched)
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            seen.append("tick")
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        done = await run(bombs, ref, parameters)
    finally:
        stop.set()
        await ticker
    assert done["status"] == "failed" and TOO_LONG in done["result"]["errors"][0]["message"]
    start = seen.index("start")
    assert "tick" in seen[start:seen.index("end", start)]  # the loop ran while the expression evaluated


async def test_a_workflow_left_running_in_a_too_long_expression_fails_at_recovery_and_stays_failed(
        bombs: Squall, home: Path) -> None:
    """A workflow Squall stopped in (killed while its expression ran) is conducted on at recovery: the
    expression fails it at the deadline, and no later recovery takes it up again."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = utcnow()
    orphan = {"id": new_id(), "action": "bomb.yaql", "runner": "orquesta", "status": "running",
              "parameters": {"n": 150}, "spec": {"values": {"n": 150}, "templates": {}}, "sealed": None,
              "result": None, "context": {"user": "tester", "pack": "bomb"},
              "log": [{"status": "running", "timestamp": now.isoformat()}], "parent": None,
              "runner_info": {"hostname": socket.gethostname(), **process_identity(), "pid": gone.pid},
              "start_timestamp": now, "end_timestamp": None}
    store = Store.open(load_config(home / "config.yml").database_url)
    try:
        store.insert_execution(orphan)
    finally:
        store.close()
    assert await bombs.executions.recover() == {"abandoned": 0, "started": 1}
    done = await final(bombs, orphan["id"])
    assert done["status"] == "failed", done["result"]
    assert TOO_LONG in done["result"]["errors"][0]["message"]
    assert await bombs.executions.recover() == {"abandoned": 0, "started": 0}
    assert (await bombs.executions.get(orphan["id"]))["status"] == "failed"


async def test_a_cancel_asked_while_an_expression_evaluates_cancels_the_workflow(
        held: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    """The conductor steps on a render thread; a cancel asked meanwhile is applied once the step returns.
    (Under the default limits: the hold counts against the step's time.)"""
    done = await _cancel_while_held(held, monkeypatch, "held.start")
    assert done["status"] == "canceled", done["result"]
    assert await children(held, done["id"]) == []  # `done` was never started


# -- a cancel asked while a step evaluates; one time limit for a whole step ---------------------

#: Each holds its marked expression (`held`) in a different step: `on_done` (a publish) and `outcome`.
HELD_TRANSITION = """
version: 1.0
tasks:
  first:
    action: core.noop
    next:
      - when: <% succeeded() %>
        publish:
          - slow: <% 'heldmarker' %>
        do: second
  second:
    action: core.noop
"""
HELD_START = """
version: 1.0
vars:
  - slow: <% 'heldmarker' %>
tasks:
  done:
    action: core.noop
"""
HELD_OUTPUT = """
version: 1.0
tasks:
  first:
    action: core.noop
output:
  - out: <% 'heldmarker' %>
"""
#: Five items whose inputs are built in one step (no `concurrency`): each within the limit, not all of them.
MANY_ITEMS = """
version: 1.0
tasks:
  each:
    with: i in <% range(0, 5) %>
    action: core.local
    input:
      cmd: <% 'echo slowitem' + str(item(i)) %>
"""


@pytest.fixture
async def held(home: Path) -> AsyncIterator[Squall]:
    """The default limits (a held expression must not run out of time while a test holds it)."""
    workflow_pack(home, {"start": ("orquesta", "", HELD_START), "transition": ("orquesta", "", HELD_TRANSITION),
                         "output": ("orquesta", "", HELD_OUTPUT)}, pack="held")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.close()


async def _cancel_while_held(squall: Squall, monkeypatch: pytest.MonkeyPatch, ref: str) -> dict[str, Any]:
    """Run `ref`, cancel it while its `heldmarker` expression evaluates on a render thread, and return it
    once it ended."""
    started, proceed = threading.Event(), threading.Event()
    evaluate = expressions._yaql_eval

    def hold(text: str, *args: Any, **kwargs: Any) -> Any:
        if "heldmarker" in text:
            started.set()
            proceed.wait(10)  # held until the cancel was asked (on the loop, which must be free for it)
        return evaluate(text, *args, **kwargs)

    monkeypatch.setattr(expressions, "_yaql_eval", hold)
    record = await squall.executions.request(ref, {}, {"user": "tester"})

    async def evaluating() -> bool:
        return started.is_set()

    try:
        await until(evaluating, "the held expression started")
        assert (await squall.executions.cancel(record["id"]))["status"] == "canceling"
    finally:
        proceed.set()
    return await final(squall, record["id"])


async def test_a_cancel_asked_while_a_transition_evaluates_starts_no_next_task(
        held: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `on_done` step that was running returns the next task; the cancel asked meanwhile keeps it
    from starting, as StackStorm starts nothing once a workflow is `canceling`."""
    done = await _cancel_while_held(held, monkeypatch, "held.transition")
    assert done["status"] == "canceled", done["result"]
    rows = await children(held, done["id"])
    assert task_names(rows) == ["first"]  # `second` was never started


async def test_a_cancel_asked_while_the_output_evaluates_ends_the_workflow_canceled(
        held: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outcome step that was running said `succeeded`; the cancel asked meanwhile wins, and a
    workflow that showed `canceling` ends `canceled`."""
    done = await _cancel_while_held(held, monkeypatch, "held.output")
    assert done["status"] == "canceled", done["result"]
    assert [entry["status"] for entry in done["log"]][-2:] == ["canceling", "canceled"]


async def test_the_expressions_of_one_step_share_one_time_limit(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A with-items step builds every item's input at once: each input within `templates.max_seconds`,
    together past it, fails the workflow with the limit (a step's time is bounded, not each expression's)."""
    config = home / "config.yml"
    config.write_text(config.read_text() + "templates:\n  max_seconds: 0.3\n")
    workflow_pack(home, {"items": ("orquesta", "", MANY_ITEMS)}, pack="items")
    evaluate = expressions._yaql_eval

    def slow(text: str, *args: Any, **kwargs: Any) -> Any:
        if "slowitem" in text:
            time.sleep(0.1)  # stands for an input costing a third of the limit (before its own budget starts)
        return evaluate(text, *args, **kwargs)

    monkeypatch.setattr(expressions, "_yaql_eval", slow)
    app = await Squall.start(load_config(config))
    try:
        done = await run(app, "items.items")
    finally:
        await app.close()
        configure_limits(TemplateLimits())  # process-wide: the next test starts from the defaults
    assert done["status"] == "failed", done["result"]
    assert TOO_LONG in done["result"]["errors"][0]["message"], done["result"]
    assert len(await children(app, done["id"])) < 5  # the items after the limit never started


async def test_squalls_close_stops_a_step_evaluating_on_a_render_thread(home: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A step still evaluating when Squall closes stops at its next step check: its thread would
    otherwise hold the stopping process (joined at exit) until the step's limit."""
    workflow_pack(home, {"transition": ("orquesta", "", HELD_TRANSITION)}, pack="held")
    started, ended = threading.Event(), threading.Event()
    stopped: list[str] = []
    evaluate = expressions._yaql_eval

    def spin(text: str, *args: Any, **kwargs: Any) -> Any:
        if "heldmarker" in text:
            started.set()
            until_at = time.monotonic() + 10  # bounded: a step that is never stopped ends here, unstopped
            try:
                while time.monotonic() < until_at:
                    templates.tick()  # what every evaluation step checks
            except TemplateLimitError as exc:
                stopped.append(str(exc))
            finally:
                ended.set()
        return evaluate(text, *args, **kwargs)

    monkeypatch.setattr(expressions, "_yaql_eval", spin)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        await app.executions.request("held.transition", {}, {"user": "tester"})

        async def evaluating() -> bool:
            return started.is_set()

        await until(evaluating, "the held expression started")
    finally:
        await app.close()
    assert await asyncio.to_thread(ended.wait, 30)
    assert stopped == ["the template was stopped because Squall is stopping"]
