"""Mistral v2 workflows (`runner_type: mistral-v2`): each construct run for real through the engine,
with its tasks as real child executions; pause, resume, cancel and a kill -9 of the service."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bot.app import Squall
from engine.config import load_config
from engine.storage import Store
from tests.conftest import write
from tests.workflow_helpers import answer_after_an_edit, children, run, task_names, workflow_pack

SQUALL = Path(sys.executable).parent / "squall"

SEQUENCE = """
version: '2.0'
wf.sequence:
  type: direct
  input:
    - who
    - greeting: hello
  vars:
    punct: "!"
  tasks:
    one:
      action: core.echo message="<% $.greeting %> <% $.who %><% $.punct %>"
      publish:
        said: <% task(one).result.stdout %>
        same: <% task().result.stdout %>
      on-success:
        - two
    two:
      action: core.echo
      input:
        message: "{{ _.said | upper }} for {{ env().st2_execution_id }}"
      publish:
        shout: "{{ task('two').result.stdout }}"
  output:
    said: <% $.said %>
    same: <% $.same %>
    shout: <% $.shout %>
    execution: <% env().st2_execution_id %>
    workflow: <% execution().name %>
"""

BRANCHES = """
version: '2.0'
wf.branches:
  input: [n]
  tasks:
    check:
      action: core.noop
      on-success:
        - big: <% $.n > 10 %>
        - small: "{{ _.n <= 10 }}"
      on-complete:
        - always
    big:
      action: core.echo message=big
      publish:
        size: <% task(big).result.stdout %>
    small:
      action: core.echo message=small
      publish:
        size: <% task(small).result.stdout %>
    always:
      action: core.noop
"""

FAILURE = """
version: '2.0'
wf.failure:
  tasks:
    bad:
      action: core.local cmd="exit 3"
      publish-on-error:
        code: <% task(bad).result.return_code %>
      on-success:
        - never
      on-complete:
        - cleanup
    never:
      action: core.noop
    cleanup:
      action: core.noop
  output-on-error:
    code: <% $.code %>
"""

REMEDIATE = """
version: '2.0'
wf.remediate:
  tasks:
    bad:
      action: core.local cmd="exit 3"
      publish-on-error:
        code: <% task(bad).result.return_code %>
      on-error:
        - fix
    fix:
      action: core.noop
  output:
    code: <% $.code %>
"""

COMMANDS = """
version: '2.0'
wf.commands:
  input: [how]
  tasks:
    first:
      action: core.noop
      on-success:
        - second
        - 'fail msg="stopped by <% $.how %>"': <% $.how = 'fail' %>
        - succeed: <% $.how = 'succeed' %>
        - third
    second:
      action: core.noop
    third:
      action: core.noop
"""

IGNORE = """
version: '2.0'
wf.ignore:
  tasks:
    bad:
      action: core.local cmd="exit 1"
      on-error:
        - noop
"""

DEFAULTS = """
version: '2.0'
wf.defaults:
  task-defaults:
    on-error:
      - handle
  tasks:
    bad:
      action: core.local cmd="exit 1"
    handle:
      action: core.noop
"""

ITEMS = """
version: '2.0'
wf.items:
  input: [names, greetings, concurrency]
  tasks:
    each:
      with-items:
        - name in <% $.names %>
        - greeting in <% $.greetings %>
      concurrency: <% $.concurrency %>
      action: core.echo message="<% $.greeting %> <% $.name %>"
      publish:
        said: <% task(each).result.select($.stdout) %>
  output:
    said: <% $.said %>
"""

ITEMS_LITERAL = """
version: '2.0'
wf.items_literal:
  tasks:
    each:
      with-items: x in [1, 2, 3]
      action: std.echo
      input:
        output: <% $.x * 10 %>
      publish:
        tens: <% task(each).result %>
  output:
    tens: <% $.tens %>
"""

RETRY = """
version: '2.0'
wf.retry:
  input: [marker]
  tasks:
    flaky:
      action: core.local
      input:
        cmd: "n=$(cat {{ _.marker }} 2>/dev/null || echo 0); echo $((n+1)) > {{ _.marker }}; [ $n -ge 2 ]"
      retry:
        count: 3
        delay: 0
"""

RETRY_BREAK = """
version: '2.0'
wf.retry_break:
  tasks:
    flaky:
      action: core.local cmd="exit 4"
      retry: count=5 break-on=<% task(flaky).result.return_code = 4 %>
"""

RETRY_CONTINUE = """
version: '2.0'
wf.retry_continue:
  input: [marker]
  tasks:
    count:
      action: core.local
      input:
        cmd: "n=$(cat {{ _.marker }} 2>/dev/null || echo 0); echo $((n+1)) > {{ _.marker }}; echo $((n+1))"
      retry:
        count: 10
        continue-on: <% int(task(count).result.stdout) < 3 %>
      publish:
        n: <% int(task(count).result.stdout) %>
  output:
    n: <% $.n %>
"""

WAITS = """
version: '2.0'
wf.waits:
  tasks:
    first:
      action: core.noop
      wait-before: 0.1
      wait-after: 0.1
      on-success:
        - second
    second:
      action: core.noop
"""

JOIN = """
version: '2.0'
wf.join:
  tasks:
    start:
      action: core.noop
      on-success: [left, right, slow]
    left:
      action: core.noop
      publish: {l: left}
      on-success: [all_joined, two_joined]
    right:
      action: core.noop
      publish: {r: right}
      on-success: [all_joined, two_joined]
    slow:
      action: core.local cmd="sleep 0.2"
      publish: {s: slow}
      on-success: [all_joined, two_joined]
    all_joined:
      join: all
      action: core.noop
      publish:
        seen: <% [$.l, $.r, $.s] %>
    two_joined:
      join: 2
      action: core.noop
  output:
    seen: <% $.seen %>
"""

JOIN_BLOCKED = """
version: '2.0'
wf.join_blocked:
  tasks:
    start:
      action: core.noop
      on-success: [a, b]
    a:
      action: core.noop
      on-success: [joined]
    b:
      action: core.noop
      on-success:
        - joined: <% false %>
    joined:
      join: all
      action: core.noop
"""

BUILTINS = """
version: '2.0'
wf.builtins:
  tasks:
    echo:
      action: std.echo
      input:
        output: {a: 1, b: [2, 3]}
      publish:
        echoed: <% task(echo).result %>
      on-success:
        - through_st2
    through_st2:
      action: st2.action
      input:
        ref: core.echo
        parameters:
          message: "<% $.echoed.b.len() %> items"
      publish:
        length: <% task(through_st2).result.stdout %>
      on-success:
        - boom
    boom:
      action: std.fail
      on-error:
        - noop
  output:
    echoed: <% $.echoed %>
    length: <% $.length %>
"""

ST2KV = """
version: '2.0'
wf.st2kv:
  tasks:
    one:
      action: core.echo message="<% st2kv('system.colour') %>"
      publish:
        got: <% task(one).result.stdout %>
  output:
    got: <% $.got %>
"""

EXPRESSION_ERROR = """
version: '2.0'
wf.expression_error:
  tasks:
    one:
      action: core.echo message=<% $.missing.nested.len() %>
"""

GATED = """
version: '2.0'
wf.gated:
  input: [gate]
  tasks:
    wait:
      action: core.local
      input:
        cmd: "while [ ! -f {{ _.gate }} ]; do sleep 0.02; done"
        timeout: 20
      on-success:
        - after
    after:
      action: core.noop
"""

#: Prepare, ask for approval, deploy; each task's side effect written to the file `effects`.
GATE = """
version: '2.0'
wf.gate:
  input: [effects]
  tasks:
    prep:
      action: core.local cmd="echo prep >> <% $.effects %>"
      on-success: [approve]
    approve:
      action: core.ask
      input: {schema: {type: object, properties: {ok: {type: boolean}}}}
      on-success: [deploy]
    deploy:
      action: core.local cmd="echo deploy-v1 >> <% $.effects %>"
"""

PAUSE_BEFORE = """
version: '2.0'
wf.pause_before:
  tasks:
    first:
      action: core.noop
      on-success:
        - second
    second:
      pause-before: true
      action: core.echo message=second
      publish:
        got: <% task(second).result.stdout %>
  output:
    got: <% $.got %>
"""

PAUSE_COMMAND = """
version: '2.0'
wf.pause_command:
  tasks:
    first:
      action: core.noop
      on-complete:
        - a
        - pause
        - b
    a:
      action: core.noop
    b:
      action: core.noop
"""

PAUSE_LAST = """
version: '2.0'
wf.pause_last:
  tasks:
    only:
      action: core.noop
      publish:
        done: yes
      on-success:
        - pause
  output:
    done: <% $.done %>
"""

INLINE_INPUT = """
version: '2.0'
wf.inline_input:
  input:
    - params: {message: from input}
  tasks:
    one:
      action: core.echo message=inline
      input: <% $.params %>
      publish:
        got: <% task(one).result.stdout %>
    two:
      action: core.echo message="kept inline"
      input:
        timeout: 30
      publish:
        kept: <% task(two).result.stdout %>
"""

FAIL_ON = """
version: '2.0'
wf.fail_on:
  input: [word]
  tasks:
    one:
      action: core.echo message=<% $.word %>
      fail-on: <% task().result.stdout = 'bad' %>
      on-error:
        - handled
    handled:
      action: core.noop
"""

PARENT = """
version: '2.0'
wf.parent:
  input: [gate]
  tasks:
    sub:
      action: wf.gated gate=<% $.gate %>
      publish:
        sub_state: <% task(sub).result.extra.state %>
      on-success: [done]
    done:
      action: core.noop
  output:
    sub_state: <% $.sub_state %>
"""

ITEMS_FAILING = """
version: '2.0'
wf.items_failing:
  input: [concurrency]
  tasks:
    each:
      with-items: i in [1, 2, 3, 4, 5]
      concurrency: <% $.concurrency %>
      action: core.local cmd="echo <% $.i %>; test <% $.i %> -ne 2"
"""

RETRY_ITEMS = """
version: '2.0'
wf.retry_items:
  tasks:
    each:
      with-items: i in [1, 2, 3]
      action: core.local cmd="test <% $.i %> -ne 2"
      retry:
        count: 1
        delay: 0
"""

ON_ERROR_CONDITION = """
version: '2.0'
wf.on_error_condition:
  input: [page_ops]
  tasks:
    deploy:
      action: core.local cmd="exit 3"
      on-error:
        - page: <% $.page_ops %>
      on-complete:
        - cleanup
    page:
      action: core.noop
    cleanup:
      action: core.noop
"""

SIMPLE = """
version: '2.0'
wf.reverse_param:
  tasks:
    one:
      action: core.noop
"""

FLOWS = {
    "sequence": ("who: {type: string, required: true}\ngreeting: {type: string}", SEQUENCE),
    "branches": ("n: {type: integer}", BRANCHES),
    "failure": ("", FAILURE),
    "remediate": ("", REMEDIATE),
    "commands": ("how: {type: string}", COMMANDS),
    "ignore": ("", IGNORE),
    "defaults": ("", DEFAULTS),
    "items": ("names: {type: array}\ngreetings: {type: array}\nconcurrency: {type: integer, default: 0}", ITEMS),
    "items_literal": ("", ITEMS_LITERAL),
    "retry": ("marker: {type: string}", RETRY),
    "retry_break": ("", RETRY_BREAK),
    "retry_continue": ("marker: {type: string}", RETRY_CONTINUE),
    "waits": ("", WAITS),
    "join": ("", JOIN),
    "join_blocked": ("", JOIN_BLOCKED),
    "builtins": ("", BUILTINS),
    "st2kv": ("", ST2KV),
    "expression_error": ("", EXPRESSION_ERROR),
    "gated": ("gate: {type: string}", GATED),
    "pause_before": ("", PAUSE_BEFORE),
    "pause_command": ("", PAUSE_COMMAND),
    "pause_last": ("", PAUSE_LAST),
    "reverse_param": ("task: {default: one}", SIMPLE),
    "inline_input": ("", INLINE_INPUT),
    "fail_on": ("word: {type: string}", FAIL_ON),
    "parent": ("gate: {type: string}", PARENT),
    "items_failing": ("concurrency: {type: integer, default: 0}", ITEMS_FAILING),
    "on_error_condition": ("page_ops: {type: boolean}", ON_ERROR_CONDITION),
    "retry_items": ("", RETRY_ITEMS),
    "gate": ("effects: {type: string}", GATE),
}


@pytest.fixture
async def wf(home: Path) -> Squall:
    workflow_pack(home, {name: ("mistral-v2", params, text) for name, (params, text) in FLOWS.items()})
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


def _tasks(done: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["name"], t["state"]) for t in done["result"]["tasks"]]


def _markers(rows: list[dict[str, Any]]) -> list[str]:
    return [r["context"]["mistral"]["marker"] for r in rows if "marker" in r["context"]["mistral"]]


async def test_sequence_publishes_and_renders_yaql_jinja_env_and_execution(wf: Squall) -> None:
    done = await run(wf, "wf.sequence", {"who": "bob"})
    assert done["status"] == "succeeded", done["result"]
    result = done["result"]
    assert {k: result[k] for k in ("said", "same", "execution", "workflow")} == {
        "said": "hello bob!", "same": "hello bob!", "execution": done["id"], "workflow": "wf.sequence"}
    assert result["shout"] == f"HELLO BOB! for {done['id']}"
    assert result["extra"] == {"state": "SUCCESS", "state_info": None}
    assert _tasks(done) == [("one", "SUCCESS"), ("two", "SUCCESS")]
    assert result["tasks"][0]["published"] == {"said": "hello bob!", "same": "hello bob!"}
    rows = await children(wf, done["id"])
    assert task_names(rows) == ["one", "two"]
    assert [r["id"] for r in rows] == [t["id"] for t in result["tasks"]]
    assert rows[0]["context"]["mistral"]["task_name"] == "one" and rows[0]["context"]["user"] == "tester"


@pytest.mark.parametrize("n,taken", [(20, "big"), (3, "small")])
async def test_conditional_transitions_and_on_complete(wf: Squall, n: int, taken: str) -> None:
    done = await run(wf, "wf.branches", {"n": n})
    assert done["status"] == "succeeded", done["result"]
    assert sorted(task_names(await children(wf, done["id"]))) == sorted(["check", taken, "always"])
    # no `output`: the result is the final context, merged from the branches that ended
    assert done["result"]["size"] == taken and done["result"]["n"] == n


async def test_unhandled_error_fails_the_workflow_after_on_complete(wf: Squall) -> None:
    done = await run(wf, "wf.failure")
    assert done["status"] == "failed"
    result = done["result"]
    assert result["code"] == 3  # output-on-error, from publish-on-error
    assert result["result"].startswith("Failure caused by error in tasks: bad")
    assert result["extra"]["state"] == "ERROR"
    assert _tasks(done) == [("bad", "ERROR"), ("cleanup", "SUCCESS")]  # on-complete ran, did not handle it
    assert task_names(await children(wf, done["id"])) == ["bad", "cleanup"]


async def test_on_error_handles_the_error(wf: Squall) -> None:
    done = await run(wf, "wf.remediate")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["code"] == 3
    assert _tasks(done) == [("bad", "ERROR"), ("fix", "SUCCESS")]


async def test_noop_command_and_task_defaults_handle_errors(wf: Squall) -> None:
    ignored = await run(wf, "wf.ignore")
    assert ignored["status"] == "succeeded", ignored["result"]
    defaulted = await run(wf, "wf.defaults")
    assert defaulted["status"] == "succeeded", defaulted["result"]
    assert _tasks(defaulted) == [("bad", "ERROR"), ("handle", "SUCCESS")]


@pytest.mark.parametrize("how,status,ran", [("fail", "failed", ["first", "second"]),
                                            ("succeed", "succeeded", ["first", "second"]),
                                            ("neither", "succeeded", ["first", "second", "third"])])
async def test_engine_commands_end_the_workflow_in_order(wf: Squall, how: str, status: str,
                                                         ran: list[str]) -> None:
    done = await run(wf, "wf.commands", {"how": how})
    assert done["status"] == status, done["result"]
    assert sorted(task_names(await children(wf, done["id"]))) == ran
    if how == "fail":
        assert done["result"]["result"] == "stopped by fail"
        assert done["result"]["extra"] == {"state": "ERROR", "state_info": "stopped by fail"}


async def test_with_items_over_several_lists_keeps_item_order(wf: Squall) -> None:
    done = await run(wf, "wf.items", {"names": ["ann", "bob", "cy"], "greetings": ["hi", "yo", "hey"]})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["said"] == ["hi ann", "yo bob", "hey cy"]
    rows = await children(wf, done["id"])
    assert sorted(r["context"]["mistral"]["item_id"] for r in rows) == [0, 1, 2]


async def test_with_items_concurrency_runs_one_item_at_a_time(wf: Squall) -> None:
    names = [f"n{i}" for i in range(6)]
    done = await run(wf, "wf.items", {"names": names, "greetings": ["hi"] * 6, "concurrency": 1})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["said"] == [f"hi {n}" for n in names]
    rows = await children(wf, done["id"])
    for before, after in itertools.pairwise(rows):
        assert after["start_timestamp"] >= before["end_timestamp"]  # requested only once the slot was free


async def test_with_items_lists_of_different_lengths_fail_the_task(wf: Squall) -> None:
    done = await run(wf, "wf.items", {"names": ["a", "b"], "greetings": ["hi"]})
    assert done["status"] == "failed"
    (task,) = done["result"]["tasks"]
    assert task["state"] == "ERROR" and "same length" in task["state_info"]
    assert await children(wf, done["id"]) == []


async def test_with_items_literal_list_and_std_echo(wf: Squall) -> None:
    done = await run(wf, "wf.items_literal")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["tens"] == [10, 20, 30]
    assert await children(wf, done["id"]) == []  # std.echo runs inside the workflow


@pytest.mark.parametrize("concurrency", [1, 2, 0])
async def test_with_items_goes_on_after_a_failed_item_and_the_task_fails(wf: Squall, concurrency: int) -> None:
    # Mistral's WithItemsTask schedules the next items whatever the earlier ones did; the task ends once
    # every item ran, in ERROR if any failed
    done = await run(wf, "wf.items_failing", {"concurrency": concurrency})
    assert done["status"] == "failed"
    rows = await children(wf, done["id"])
    assert sorted((r["context"]["mistral"]["item_id"], r["status"]) for r in rows) == [
        (0, "succeeded"), (1, "failed"), (2, "succeeded"), (3, "succeeded"), (4, "succeeded")]
    (task,) = done["result"]["tasks"]
    assert task["state"] == "ERROR"
    assert [item["stdout"] for item in task["result"]] == [1, 2, 3, 4, 5]  # every item ran, in item order
    assert done["result"]["result"].startswith("Failure caused by error in tasks: each")


@pytest.mark.parametrize("page_ops,status,ran", [(True, "succeeded", ["cleanup", "deploy", "page"]),
                                                 (False, "failed", ["cleanup", "deploy"])])
async def test_an_error_is_handled_only_by_an_on_error_clause_that_matches(wf: Squall, page_ops: bool,
                                                                           status: str, ran: list[str]) -> None:
    # Mistral's all_errors_handled evaluates the on-error clauses: none true leaves the error unhandled,
    # and on-complete (which still runs) does not handle it
    done = await run(wf, "wf.on_error_condition", {"page_ops": page_ops})
    assert done["status"] == status, done["result"]
    assert sorted(task_names(await children(wf, done["id"]))) == ran
    if status == "failed":
        assert done["result"]["result"].startswith("Failure caused by error in tasks: deploy")
        assert done["result"]["extra"]["state"] == "ERROR"


async def test_retry_runs_the_task_again_until_it_succeeds(wf: Squall, tmp_path: Path) -> None:
    done = await run(wf, "wf.retry", {"marker": str(tmp_path / "count")})
    assert done["status"] == "succeeded", done["result"]
    rows = await children(wf, done["id"])
    assert [r["status"] for r in rows] == ["failed", "failed", "succeeded"]
    assert [r["context"]["workflow_task"]["key"] for r in rows] == ["flaky.1.0", "flaky.1.1", "flaky.1.2"]


async def test_retry_break_on_stops_retrying(wf: Squall) -> None:
    done = await run(wf, "wf.retry_break")
    assert done["status"] == "failed"
    assert [r["status"] for r in await children(wf, done["id"])] == ["failed"]


async def test_retry_continue_on_repeats_a_successful_task(wf: Squall, tmp_path: Path) -> None:
    done = await run(wf, "wf.retry_continue", {"marker": str(tmp_path / "count")})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["n"] == 3
    assert [r["status"] for r in await children(wf, done["id"])] == ["succeeded"] * 3


async def test_retry_of_a_with_items_task_runs_every_item_again(wf: Squall) -> None:
    # Mistral 6.0.0's RetryPolicy invalidates every action execution of the task (data_flow.
    # invalidate_task_execution_result), so all items run again, as its docs say ("relaunch all
    # action/workflow calls"); only a re-run from the failed task (reset: false) keeps the items that succeeded
    done = await run(wf, "wf.retry_items")
    assert done["status"] == "failed"
    rows = await children(wf, done["id"])
    assert sorted((r["context"]["workflow_task"]["key"], r["status"]) for r in rows) == [
        ("each.1.0[0]", "succeeded"), ("each.1.0[1]", "failed"), ("each.1.0[2]", "succeeded"),
        ("each.1.1[0]", "succeeded"), ("each.1.1[1]", "failed"), ("each.1.1[2]", "succeeded")]


async def test_wait_before_delays_the_task_and_wait_after_holds_the_transitions(wf: Squall) -> None:
    done = await run(wf, "wf.waits")
    assert done["status"] == "succeeded", done["result"]
    rows = await children(wf, done["id"])
    assert task_names(rows) == ["first", "first", "second"]
    first, wait, second = rows
    assert "delayed" in [e["status"] for e in first["log"]]  # wait-before
    assert _markers(rows) == ["wait-after"] and wait["action"] == "core.noop"
    assert "delayed" in [e["status"] for e in wait["log"]]
    assert wait["start_timestamp"] >= first["end_timestamp"]
    assert second["start_timestamp"] >= wait["end_timestamp"]  # the transition waited for it


async def test_join_all_merges_branches_and_join_count_fires_once(wf: Squall) -> None:
    done = await run(wf, "wf.join")
    assert done["status"] == "succeeded", done["result"]
    names = task_names(await children(wf, done["id"]))
    assert sorted(names) == ["all_joined", "left", "right", "slow", "start", "two_joined"]
    assert done["result"]["seen"] == ["left", "right", "slow"]


async def test_join_that_can_no_longer_be_reached_fails(wf: Squall) -> None:
    done = await run(wf, "wf.join_blocked")
    assert done["status"] == "failed"
    assert "joined" not in task_names(await children(wf, done["id"]))
    joined = next(t for t in done["result"]["tasks"] if t["name"] == "joined")
    assert joined["state"] == "ERROR" and joined["state_info"] == "Failed by tasks: ['b']"


async def test_std_actions_and_st2_action(wf: Squall) -> None:
    done = await run(wf, "wf.builtins")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["echoed"] == {"a": 1, "b": [2, 3]} and done["result"]["length"] == "2 items"
    assert _tasks(done) == [("echo", "SUCCESS"), ("through_st2", "SUCCESS"), ("boom", "ERROR")]
    rows = await children(wf, done["id"])
    assert [(r["action"], r["context"]["mistral"]["task_name"]) for r in rows] == [("core.echo", "through_st2")]


async def test_inline_input_merges_under_input_which_wins(wf: Squall) -> None:
    done = await run(wf, "wf.inline_input")
    assert done["status"] == "succeeded", done["result"]
    assert (done["result"]["got"], done["result"]["kept"]) == ("from input", "kept inline")
    rows = await children(wf, done["id"])
    assert sorted(r["parameters"].get("timeout") for r in rows if r["context"]["workflow_task"]["task"] == "two") \
        == [30]


@pytest.mark.parametrize("word,states", [("bad", [("one", "ERROR"), ("handled", "SUCCESS")]),
                                         ("good", [("one", "SUCCESS")])])
async def test_fail_on_fails_a_task_that_succeeded(wf: Squall, word: str, states: list[tuple[str, str]]) -> None:
    done = await run(wf, "wf.fail_on", {"word": word})
    assert done["status"] == "succeeded", done["result"]
    assert _tasks(done) == states
    assert [r["status"] for r in await children(wf, done["id"]) if r["action"] == "core.echo"] == ["succeeded"]


async def test_st2kv_reads_the_datastore(wf: Squall) -> None:
    await wf.db(wf.datastore.set, "colour", "blue")
    done = await run(wf, "wf.st2kv")
    assert done["result"]["got"] == "blue", done["result"]


async def test_expression_error_fails_the_task_naming_the_expression(wf: Squall) -> None:
    done = await run(wf, "wf.expression_error")
    assert done["status"] == "failed"
    (task,) = done["result"]["tasks"]
    assert task["name"] == "one" and "$.missing.nested.len()" in task["state_info"]
    assert await children(wf, done["id"]) == []
    assert (await run(wf, "wf.remediate"))["status"] == "succeeded"  # the engine is fine


async def _started(wf: Squall, execution_id: str, count: int = 1) -> list[dict[str, Any]]:
    while len(rows := await children(wf, execution_id)) < count:
        await wf.executions.get(execution_id)
    return rows


async def test_pause_resume_and_cancel(wf: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.gated", {"gate": str(gate)}, {"user": "tester"})
    await _started(wf, record["id"])
    assert (await wf.executions.pause(record["id"]))["status"] == "pausing"
    gate.touch()
    assert (await wf.executions.wait(record["id"], timeout=20))["status"] == "paused"
    assert task_names(await children(wf, record["id"])) == ["wait"]  # `after` did not start
    await wf.executions.resume(record["id"])
    wf.executions._recent.pop(record["id"], None)
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    assert task_names(await children(wf, record["id"])) == ["wait", "after"]
    assert [e["status"] for e in final["log"]][-4:] == ["paused", "resuming", "running", "succeeded"]

    gate.unlink()
    again = await wf.executions.request("wf.gated", {"gate": str(gate)}, {"user": "tester"})
    await _started(wf, again["id"])
    await wf.executions.cancel(again["id"])
    assert (await wf.executions.wait(again["id"], timeout=20))["status"] == "canceled"
    rows = await children(wf, again["id"])
    assert [(n, r["status"]) for n, r in zip(task_names(rows), rows, strict=True)] == [("wait", "canceled")]


async def test_pause_before_pauses_until_resumed(wf: Squall) -> None:
    record = await wf.executions.request("wf.pause_before", {}, {"user": "tester"})
    paused = await wf.executions.wait(record["id"], timeout=20)
    assert paused["status"] == "paused", paused["result"]
    rows = await children(wf, record["id"])
    assert task_names(rows) == ["first", "second"] and _markers(rows) == ["pause"]  # `second` has not run
    await wf.executions.resume(record["id"])
    wf.executions._recent.pop(record["id"], None)
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    assert final["result"]["got"] == "second"
    rows = await children(wf, record["id"])
    assert [(r["action"], n) for r, n in zip(rows, task_names(rows), strict=True)] == [
        ("core.noop", "first"), ("core.noop", "second"), ("core.echo", "second")]


async def test_pause_command_holds_the_rest_of_the_list_until_resumed(wf: Squall) -> None:
    record = await wf.executions.request("wf.pause_command", {}, {"user": "tester"})
    paused = await wf.executions.wait(record["id"], timeout=20)
    assert paused["status"] == "paused", paused["result"]
    assert sorted(task_names(await children(wf, record["id"]))) == ["a", "first", "first"]  # b waits
    await wf.executions.resume(record["id"])
    wf.executions._recent.pop(record["id"], None)
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    assert sorted(task_names(await children(wf, record["id"]))) == ["a", "b", "first", "first"]

    last = await wf.executions.request("wf.pause_last", {}, {"user": "tester"})
    assert (await wf.executions.wait(last["id"], timeout=20))["status"] == "paused"
    await wf.executions.resume(last["id"])
    wf.executions._recent.pop(last["id"], None)
    final = await wf.executions.wait(last["id"], timeout=20)
    assert final["status"] == "succeeded" and final["result"]["done"] is True


async def test_pausing_a_workflow_pauses_its_mistral_sub_workflow_and_resuming_resumes_it(
        wf: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.parent", {"gate": str(gate)}, {"user": "tester"})
    while True:  # until the sub-workflow runs its first task
        subs = await children(wf, record["id"])
        if subs and await children(wf, subs[0]["id"]):
            break
        await asyncio.sleep(0.01)
    sub = subs[0]["id"]
    await wf.executions.pause(record["id"])
    while (await wf.executions.get(sub))["status"] == "running":
        await asyncio.sleep(0.01)
    gate.touch()
    assert (await wf.executions.wait(record["id"], timeout=20))["status"] == "paused"
    assert (await wf.executions.get(sub))["status"] == "paused"
    assert task_names(await children(wf, sub)) == ["wait"]  # the sub-workflow started nothing new
    wf.executions._recent.pop(record["id"], None)
    await wf.executions.resume(record["id"])
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    assert final["result"]["sub_state"] == "SUCCESS"
    assert task_names(await children(wf, sub)) == ["wait", "after"]
    assert task_names(await children(wf, record["id"])) == ["sub", "done"]


async def test_rerun_from_the_canceled_task_keeps_finished_ones(wf: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.gated", {"gate": str(gate)}, {"user": "tester"})
    (child,) = await _started(wf, record["id"])
    await wf.executions.cancel(child["id"])  # the task ends canceled: the workflow is canceled
    done = await wf.executions.wait(record["id"], timeout=20)
    assert done["status"] == "canceled"
    gate.touch()
    await wf.workflows.rerun(record["id"], ["wait"])
    wf.executions._recent.pop(record["id"], None)
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    rows = await children(wf, record["id"])
    assert [(n, r["status"]) for n, r in zip(task_names(rows), rows, strict=True)] == [
        ("wait", "canceled"), ("wait", "succeeded"), ("after", "succeeded")]


async def test_a_run_keeps_the_definition_it_started_with_when_the_pack_changes(wf: Squall, home: Path,
                                                                               tmp_path: Path) -> None:
    """The workflow file is updated while the run waits for approval: the answered run went on from the
    new file (`prep` unknown there, so run again; the new `deploy`). It keeps the one it started with."""
    edited = GATE.replace("prep:", "prepare:").replace("deploy-v1", "deploy-v2")
    workflow_file = home / "packs" / "wf" / "actions" / "workflows" / "gate.yaml"
    done, effects = await answer_after_an_edit(wf, "wf.gate", workflow_file, edited, tmp_path / "effects")
    assert done["status"] == "succeeded", done["result"]
    assert task_names(await children(wf, done["id"])) == ["prep", "approve", "deploy"]
    assert effects == ["prep", "deploy-v1"]


async def test_the_reverse_workflow_task_parameter_is_refused(wf: Squall) -> None:
    done = await run(wf, "wf.reverse_param")
    assert done["status"] == "failed"
    assert "reverse workflows" in done["result"]["error"] and await children(wf, done["id"]) == []


# -- load errors ---------------------------------------------------------------------------------

BAD_FILES = {
    "unknown_task": ("version: '2.0'\nwf.x:\n  tasks:\n    one:\n      action: core.noop\n"
                     "      on-success:\n        - nowhere\n",
                     "task 'one': 'on-success' names unknown task 'nowhere'"),
    "reverse": ("version: '2.0'\nwf.x:\n  type: reverse\n  tasks:\n    one:\n      action: core.noop\n",
                "reverse workflows (type: reverse) are not supported; only direct workflows are"),
    "yaql_syntax": ("version: '2.0'\nwf.x:\n  tasks:\n    one:\n      action: core.echo message=<% $.a + %>\n",
                    "task 'one': expression syntax error"),
    "subworkflow": ("version: '2.0'\nwf.x:\n  tasks:\n    one:\n      workflow: other\n",
                    "task 'one': 'workflow:' sub-workflow tasks are not supported"),
    "std_http": ("version: '2.0'\nwf.x:\n  tasks:\n    one:\n      action: std.http url=http://x\n",
                 "task 'one': Mistral's action 'std.http' is not supported"),
    "two_workflows": ("version: '2.0'\nwf.x:\n  tasks: {one: {action: core.noop}}\n"
                      "wf.y:\n  tasks: {one: {action: core.noop}}\n",
                      "exactly one workflow next to 'version' (found: wf.x, wf.y)"),
    "condition_syntax": ("version: '2.0'\nwf.x:\n  tasks:\n    one:\n      action: core.noop\n"
                         "      on-success:\n        - two: <% $.a = %>\n    two:\n      action: core.noop\n",
                         "task 'one': 'on-success': expression syntax error"),
}


def test_bad_workflows_are_rejected_at_load_with_file_task_and_reason(home: Path) -> None:
    from bot.app import load_packs

    workflow_pack(home, {name: ("mistral-v2", "", text) for name, (text, _) in BAD_FILES.items()}, pack="bad")
    registry = load_packs(load_config(home / "config.yml"))
    errors = {str(e) for e in registry.errors}
    for name, (_, reason) in BAD_FILES.items():
        assert f"bad.{name}" not in registry.actions
        assert any(f"actions/workflows/{name}.yaml" in e and reason in e for e in errors), (name, errors)
    line = next(e for e in errors if "unknown_task.yaml" in e)
    assert "unknown_task.yaml:6:" in line  # the line of the on-success clause


# -- durability: kill -9 mid-workflow and start again -------------------------------------------

DURABLE = """
version: '2.0'
wf.durable:
  input: [dir]
  tasks:
    first:
      action: core.local
      input:
        cmd: "echo ran >> <% $.dir %>/first.log"
      publish:
        from_first: one
      on-success: [gated]
    gated:
      action: core.local
      input:
        cmd: "echo started >> <% $.dir %>/gated.log; while [ ! -f <% $.dir %>/go ]; do sleep 0.05; done"
        timeout: 60
      on-success: [last]
    last:
      action: core.local
      input:
        cmd: "echo <% $.from_first %> >> <% $.dir %>/last.log"
"""


def _serve(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)


def _until(predicate: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_sigkill_mid_workflow_then_restart_continues_without_rerunning_finished_tasks(home: Path) -> None:
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\nadapters:\n  console:\n    enabled: false\n")
    workflow_pack(home, {"durable": ("mistral-v2", "dir: {type: string}", DURABLE)})
    work = home / "work"
    work.mkdir()
    queued = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "run", "wf.durable", f"dir={work}",
                             "--async", "--json"], capture_output=True, text=True, cwd=home, timeout=60)
    assert queued.returncode == 0, queued.stderr
    workflow_id = json.loads(queued.stdout)["id"]
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    server = _serve(home)
    try:
        _until(lambda: (work / "gated.log").exists())
        os.killpg(server.pid, signal.SIGKILL)  # the server and the shell it runs: no goodbye
        server.wait(timeout=10)
        assert store.get_execution(workflow_id)["status"] == "running"
        (work / "go").touch()
        server = _serve(home)
        done = _until(lambda: (r := store.get_execution(workflow_id))["status"] not in (
            "running", "resuming", "requested") and r)
        assert done["status"] == "succeeded", done["result"]
        rows = sorted(store.list_executions(parent=workflow_id), key=lambda r: r["id"])
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
        store.close()
    assert (work / "first.log").read_text() == "ran\n"  # finished before the kill: not run again
    assert (work / "gated.log").read_text() == "started\nstarted\n"  # interrupted: run again
    assert (work / "last.log").read_text() == "one\n"  # the published value survived the restart
    assert [(r["context"]["workflow_task"]["task"], r["status"]) for r in rows] == [
        ("first", "succeeded"), ("gated", "abandoned"), ("gated", "succeeded"), ("last", "succeeded")]
