"""Orquesta workflows: each construct run for real, with children as real executions."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.executions import AuditEntry
from engine.workflows.chain import NESTED_RESULTS
from tests.workflow_helpers import (
    answer_after_an_edit,
    children,
    pending_ask,
    rewrite,
    run,
    settled,
    task_names,
    until,
    workflow_pack,
)

SEQUENCE = """
version: 1.0
input:
  - who
  - greeting: hello
vars:
  - punct: "!"
tasks:
  one:
    action: core.echo message="<% ctx(greeting) %> <% ctx(who) %><% ctx(punct) %>"
    next:
      - when: <% succeeded() %>
        publish:
          - said: <% result().stdout %>
        do: two
  two:
    action: core.echo
    input:
      message: "{{ ctx('said') | upper }} from {{ ctx().st2.user }}"
    next:
      - publish: shout=<% result().stdout %> task_one=<% task(one).status %>
output:
  - said: <% ctx(said) %>
  - shout: "{{ ctx('shout') }}"
  - one_status: <% ctx(task_one) %>
"""

PARALLEL_JOIN = """
version: 1.0
tasks:
  start:
    next:
      - do: [left, right, middle]
  left:
    action: core.noop
    next: [{do: all_joined}, {do: two_joined}]
  right:
    action: core.noop
    next: [{do: all_joined}, {do: two_joined}]
  middle:
    action: core.local cmd="sleep 0.2"
    next: [{do: all_joined}, {do: two_joined}]
  all_joined:
    join: all
    action: core.noop
  two_joined:
    join: 2
    action: core.noop
"""

#: Orquesta's own join-on-fail fixture: task6 joins task3 (on failure) and task5 (on failure); only one arrives.
JOIN_UNREACHABLE = """
version: 1.0
tasks:
  task1:
    action: core.noop
    next: [{when: <% succeeded() %>, do: [task2, task4]}]
  task2:
    action: core.noop
    next: [{when: <% succeeded() %>, do: task3}]
  task3:
    action: core.local cmd="exit 1"
    next: [{when: <% failed() %>, do: task6}]
  task4:
    action: core.noop
    next: [{when: <% succeeded() %>, do: task5}]
  task5:
    action: core.noop
    next: [{when: <% failed() %>, do: task6}]
  task6:
    join: all
    action: core.noop
"""

ITEMS = """
version: 1.0
input: [count, concurrency]
tasks:
  make:
    action: core.noop
    next:
      - publish: [xs: "<% range(0, ctx(count)).toList() %>"]
        do: each
  each:
    with:
      items: x in <% ctx(xs) %>
      concurrency: <% ctx(concurrency) %>
    action: core.noop
    next:
      - when: <% succeeded() %>
        publish: [n: <% result().len() %>]
output:
  - n: <% ctx(n) %>
"""

ITEMS_ECHO = """
version: 1.0
tasks:
  each:
    with: <% list(a, b, c) %>
    action: core.echo message=<% item() %>
    next:
      - publish:
          - outs: <% result().select($.stdout) %>
output:
  - outs: <% ctx(outs) %>
"""

FAILURE = """
version: 1.0
tasks:
  bad:
    action: core.local cmd="exit 3"
    next:
      - when: <% succeeded() %>
        do: never
  never:
    action: core.noop
"""

REMEDIATE = """
version: 1.0
tasks:
  bad:
    action: core.local cmd="exit 3"
    next:
      - when: <% failed() %>
        publish: [code: <% result().return_code %>]
        do: cleanup
  cleanup:
    action: core.noop
output:
  - code: <% ctx(code) %>
"""

FAIL_COMMAND = """
version: 1.0
tasks:
  check:
    action: core.noop
    next:
      - when: <% succeeded() %>
        do: [notify, fail]
  notify:
    action: core.noop
"""

RETRY = """
version: 1.0
input: [marker]
tasks:
  flaky:
    action: core.local
    input:
      cmd: "n=$(cat {{ ctx('marker') }} 2>/dev/null || echo 0); echo $((n+1)) > {{ ctx('marker') }}; [ $n -ge 2 ]"
    retry:
      count: 3
      when: <% failed() %>
"""

#: Polling: a success is retried while `when` says so; `count` is an expression.
RETRY_POLL = """
version: 1.0
input: [marker, tries]
tasks:
  poll:
    action: core.local
    input:
      cmd: "n=$(cat {{ ctx('marker') }} 2>/dev/null || echo 0); echo $((n+1)) > {{ ctx('marker') }}; echo $n"
    retry:
      count: <% ctx(tries) %>
      when: <% succeeded() and result().stdout < 2 %>
    next:
      - when: <% succeeded() %>
        publish: [last: <% result().stdout %>]
output:
  - last: <% ctx(last) %>
"""

RETRY_ITEMS = """
version: 1.0
input: [dir]
tasks:
  each:
    with: n in <% [1, 2, 3] %>
    action: core.local
    input:
      cmd: "if [ {{ item('n') }} = 2 ] && [ ! -f {{ ctx('dir') }}/seen ]; then touch {{ ctx('dir') }}/seen; exit 1; fi"
    retry:
      count: 2
    next:
      - when: <% succeeded() %>
        publish: [codes: <% result().select($.return_code) %>]
output:
  - codes: <% ctx(codes) %>
"""

EXPRESSION_ERROR = """
version: 1.0
tasks:
  one:
    action: core.echo message=<% ctx(missing_var) %>
"""

ST2KV = """
version: 1.0
tasks:
  one:
    action: core.echo message="<% st2kv('system.colour') %>"
    next:
      - publish:
          - got: <% result().stdout %>
          - other: "{{ st2kv('system.nothing', default='none') }}"
output:
  - got: <% ctx(got) %>/<% ctx(other) %>
"""

LOOP = """
version: 1.0
input: [marker]
vars:
  - i: 0
tasks:
  init:
    next: [{do: step}]
  step:
    action: core.noop
    next:
      - publish: [i: <% ctx(i) + 1 %>]
        do: check
  check:
    next:
      - when: <% ctx(i) < 3 %>
        do: step
      - when: <% ctx(i) >= 3 %>
        do: done
  done:
    action: core.noop
output:
  - i: <% ctx(i) %>
"""

PAUSABLE = """
version: 1.0
input: [gate]
tasks:
  wait:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 20
    next: [{do: after}]
  after:
    action: core.noop
"""

NESTED = """
version: 1.0
input: [gate]
tasks:
  sub:
    action: wf.pausable gate=<% ctx(gate) %>
    next: [{do: done}]
  done:
    action: core.noop
"""

#: Three levels: the top runs `nested`, which runs `pausable`.
NESTED_TWICE = """
version: 1.0
input: [gate]
tasks:
  mid:
    action: wf.nested gate=<% ctx(gate) %>
"""


SHELL = """
version: 1.0
input: [who]
tasks:
  yaql:
    action: core.local
    input:
      cmd: echo "yaql <% ctx(who) %>" && echo <% ctx(who) %>
      env: {KEEP: kept}
    next: [{do: jinja}]
  jinja:
    action: core.local
    input:
      cmd: 'echo "jinja {{ ctx(''who'') }}$KEEP"'
      env: {KEEP: kept}
output:
  - yaql: <% task(yaql).result.stdout %>
  - jinja: <% task(jinja).result.stdout %>
"""


#: A question asked while another branch runs; `done` waits for both.
ASK_BESIDE = """
version: 1.0
input: [gate]
tasks:
  start:
    next: [{do: [ask, slow]}]
  ask:
    action: core.ask
    input: {schema: {type: object, properties: {ok: {type: boolean}}}}
    next: [{do: done}]
  slow:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 30
    next: [{do: done}]
  done:
    join: all
    action: core.noop
"""


TASK_STATUS = """
version: 1.0
tasks:
  check:
    action: core.noop
    next:
      - when: <% task_status(check) = 'succeeded' %>
        publish:
          - yaql: <% task_status(check) %>
          - jinja: "{{ task_status('check') }}"
output:
  - yaql: <% ctx(yaql) %>
  - jinja: <% ctx(jinja) %>
"""
#: Prepare, ask for approval, deploy; each task's side effect written to the file `effects`.
GATE = """
version: 1.0
input: [effects]
tasks:
  prep:
    action: core.local cmd="echo prep >> <% ctx(effects) %>"
    next: [{when: <% succeeded() %>, do: approve}]
  approve:
    action: core.ask
    input: {schema: {type: object, properties: {ok: {type: boolean}}}}
    next: [{when: <% succeeded() %>, do: deploy}]
  deploy:
    action: core.local cmd="echo deploy-v1 >> <% ctx(effects) %>"
"""

#: The pack's next version: `prep` renamed, `deploy` doing something else.
GATE_V2 = GATE.replace("prep:", "prepare:").replace("deploy-v1", "deploy-v2")

#: A next version with a mistake: a transition to a task that does not exist.
GATE_BROKEN = GATE.replace("do: deploy}", "do: deploy_missing}")

#: A check that fails until a file exists, then a task with a side effect.
CHECKED = """
version: 1.0
input: [effects, gate]
tasks:
  check:
    action: core.local cmd="test -f <% ctx(gate) %>"
    next: [{when: <% succeeded() %>, do: after}]
  after:
    action: core.local cmd="echo after-v1 >> <% ctx(effects) %>"
"""

#: A typo in a later task: `notify` names no input `messages` (core.echo takes `message`, required).
PROVISION_TYPO = """
version: 1.0
input: [marker]
tasks:
  provision:
    action: core.local cmd="touch <% ctx(marker) %>"
    next: [{when: <% succeeded() %>, do: notify}]
  notify:
    action: core.echo messages="typo in the input name"
"""

#: StackStorm's contrib/examples `orquesta-fail-inspection-task-contents` workflow, as it is.
INSPECTION_TASK_CONTENTS = """
version: 1.0
description: A basic sequential workflow with inspection error(s).
input:
  - name
vars:
  - greeting: null
output:
  - greeting: <% ctx().greeting %>
tasks:
  task1:
    action: echo message=<% ctx().name %>
    next:
      - when: <% succeeded() %>
        publish: greeting=<% result().stdout %>
        do: task2
  task2:
    action: core.echoz
    input:
      message: "All your base are belong to us!"
    next:
      - when: <% succeeded() %>
        publish:
          - greeting: <% ctx("greeting") %>, <% result().stdout %>
        do:
          - task3
  task3:
    action: core.echo messages=<% ctx('greeting') %>
    next:
      - when: <% succeeded() %>
        publish: greeting=<% result().stdout %>
"""


@pytest.fixture
async def wf(home: Path) -> Squall:
    workflow_pack(home, {
        "sequence": ("orquesta", "who: {type: string, required: true}\ngreeting: {type: string}", SEQUENCE),
        "parallel": ("orquesta", "", PARALLEL_JOIN),
        "join_unreachable": ("orquesta", "", JOIN_UNREACHABLE),
        "items": ("orquesta", "count: {type: integer}\nconcurrency: {type: integer, default: 0}", ITEMS),
        "items_echo": ("orquesta", "", ITEMS_ECHO),
        "failure": ("orquesta", "", FAILURE),
        "remediate": ("orquesta", "", REMEDIATE),
        "fail_command": ("orquesta", "", FAIL_COMMAND),
        "retry": ("orquesta", "marker: {type: string}", RETRY),
        "retry_poll": ("orquesta", "marker: {type: string}\ntries: {default: 5}", RETRY_POLL),
        "retry_items": ("orquesta", "dir: {type: string}", RETRY_ITEMS),
        "expression_error": ("orquesta", "", EXPRESSION_ERROR),
        "st2kv": ("orquesta", "", ST2KV),
        "loop": ("orquesta", "", LOOP),
        "pausable": ("orquesta", "gate: {type: string}", PAUSABLE),
        "nested": ("orquesta", "gate: {type: string}", NESTED),
        "nested_twice": ("orquesta", "gate: {type: string}", NESTED_TWICE),
        "shell": ("orquesta", "who: {type: string, required: true}", SHELL),
        "ask_beside": ("orquesta", "gate: {type: string}", ASK_BESIDE),
        "task_status": ("orquesta", "", TASK_STATUS),
        "gate": ("orquesta", "effects: {type: string}", GATE),
        "checked": ("orquesta", "effects: {type: string}\ngate: {type: string}", CHECKED),
        "provision_typo": ("orquesta", "marker: {type: string}", PROVISION_TYPO),
        "inspection_task_contents": ("orquesta", "name: {required: true, type: string, default: Lakshmi}",
                                     INSPECTION_TASK_CONTENTS),
    })
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


async def test_sequence_publishes_renders_both_languages_and_outputs(wf: Squall) -> None:
    done = await run(wf, "wf.sequence", {"who": "bob"})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"said": "hello bob!", "shout": "HELLO BOB! from tester",
                                        "one_status": "succeeded"}
    rows = await children(wf, done["id"])
    assert task_names(rows) == ["one", "two"]
    assert all(r["parent"] == done["id"] and r["context"]["parent"]["execution_id"] == done["id"] for r in rows)
    assert rows[0]["context"]["orquesta"]["task_name"] == "one"
    assert rows[0]["context"]["user"] == "tester"


async def test_task_status_is_known_to_yaql_as_to_jinja(wf: Squall) -> None:
    done = await run(wf, "wf.task_status")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"yaql": "succeeded", "jinja": "succeeded"}


async def test_parallel_branches_join_all_and_counted(wf: Squall) -> None:
    done = await run(wf, "wf.parallel")
    assert done["status"] == "succeeded", done["result"]
    names = task_names(await children(wf, done["id"]))
    # `join: 2` runs once 2 branches arrived and again when the slow third does (as StackStorm runs it)
    assert sorted(names) == ["all_joined", "left", "middle", "right", "two_joined", "two_joined"]
    assert names.index("two_joined") < names.index("all_joined")  # 2 arrived before the slow third


@pytest.mark.parametrize("count,concurrency", [(1000, 25), (7, 0)])
async def test_with_items_runs_every_item_with_concurrency(wf: Squall, count: int, concurrency: int) -> None:
    done = await run(wf, "wf.items", {"count": count, "concurrency": concurrency}, timeout=120)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"n": count}
    rows = await children(wf, done["id"])
    assert len(rows) == count + 1
    items = sorted(r["context"]["orquesta"]["item_id"] for r in rows if "item_id" in r["context"]["orquesta"])
    assert items == list(range(count))


async def test_with_items_results_keep_item_order(wf: Squall) -> None:
    done = await run(wf, "wf.items_echo")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"outs": ["a", "b", "c"]}


async def test_unhandled_failure_fails_the_workflow_with_errors(wf: Squall) -> None:
    done = await run(wf, "wf.failure")
    assert done["status"] == "failed"
    (error,) = done["result"]["errors"]
    assert error["type"] == "error" and error["task_id"] == "bad"
    assert error["message"] == "Execution failed. See result for details."
    assert error["result"]["return_code"] == 3
    assert task_names(await children(wf, done["id"])) == ["bad"]


async def test_failure_handled_by_a_transition_is_remediated(wf: Squall) -> None:
    done = await run(wf, "wf.remediate")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"code": 3}


async def test_fail_command_fails_after_the_branch(wf: Squall) -> None:
    done = await run(wf, "wf.fail_command")
    assert done["status"] == "failed"
    assert "notify" in task_names(await children(wf, done["id"]))


async def test_a_join_some_branches_reached_and_the_rest_never_can_fails_the_workflow(wf: Squall) -> None:
    """As Orquesta: the workflow ran out of work with task6 waiting on a branch that went elsewhere,
    so it fails naming the join; it ended `succeeded` without running it."""
    done = await run(wf, "wf.join_unreachable")
    assert done["status"] == "failed", done["result"]
    assert "task6" not in task_names(await children(wf, done["id"]))
    assert done["result"]["errors"][-1] == {
        "type": "error", "task_id": "task6", "route": 0,
        "message": 'UnreachableJoinError: The join task|route "task6|0" is partially satisfied but unreachable.'}


async def test_retry_runs_the_task_again_until_it_succeeds(wf: Squall, tmp_path: Path) -> None:
    done = await run(wf, "wf.retry", {"marker": str(tmp_path / "count")})
    assert done["status"] == "succeeded", done["result"]
    rows = await children(wf, done["id"])
    assert [r["status"] for r in rows] == ["failed", "failed", "succeeded"]


async def test_retry_when_polls_a_succeeding_task_and_its_count_may_be_an_expression(wf: Squall,
                                                                                     tmp_path: Path) -> None:
    """As Orquesta: `when` decides after a success too (poll until a condition holds), and `count`
    is evaluated; one that is no integer fails the workflow, naming the task."""
    done = await run(wf, "wf.retry_poll", {"marker": str(tmp_path / "count")})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"last": 2}
    assert [r["status"] for r in await children(wf, done["id"])] == ["succeeded"] * 3

    done = await run(wf, "wf.retry_poll", {"marker": str(tmp_path / "again"), "tries": 1})
    assert done["status"] == "succeeded" and done["result"]["output"] == {"last": 1}  # the count held it to 2 runs

    done = await run(wf, "wf.retry_poll", {"marker": str(tmp_path / "bad"), "tries": "x"})
    assert done["status"] == "failed"
    assert {"type": "error", "message": 'ValueError: The retry count for task "poll" is not an integer.',
            "task_id": "poll", "route": 0} in done["result"]["errors"]


async def test_retry_of_a_with_items_task_runs_every_item_again(wf: Squall, tmp_path: Path) -> None:
    done = await run(wf, "wf.retry_items", {"dir": str(tmp_path)})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"codes": [0, 0, 0]}
    rows = await children(wf, done["id"])
    attempts = sorted((r["context"]["workflow_task"]["key"], r["status"]) for r in rows)
    assert attempts == [("each.1.0[0]", "succeeded"), ("each.1.0[1]", "failed"), ("each.1.0[2]", "succeeded"),
                        ("each.1.1[0]", "succeeded"), ("each.1.1[1]", "succeeded"), ("each.1.1[2]", "succeeded")]


async def test_expression_error_fails_the_task_with_the_expression(wf: Squall) -> None:
    done = await run(wf, "wf.expression_error")
    assert done["status"] == "failed"
    (error,) = done["result"]["errors"]
    assert error["task_id"] == "one"
    assert "<% ctx(missing_var) %>" in error["message"] and "missing_var" in error["message"]
    assert await children(wf, done["id"]) == []
    # the engine is fine: the next workflow runs
    assert (await run(wf, "wf.remediate"))["status"] == "succeeded"


async def test_st2kv_reads_the_datastore(wf: Squall) -> None:
    await wf.db(wf.datastore.set, "colour", "blue")
    done = await run(wf, "wf.st2kv")
    assert done["result"]["output"] == {"got": "blue/none"}, done["result"]


async def test_loop_with_exit(wf: Squall) -> None:
    done = await run(wf, "wf.loop")
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"i": 3}
    assert task_names(await children(wf, done["id"])) == ["step", "step", "step", "done"]


async def test_pause_resume_and_cancel(wf: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.pausable", {"gate": str(gate)}, {"user": "tester"})
    while len(await children(wf, record["id"])) < 1:
        await wf.executions.get(record["id"])  # let the workflow start its first task
    paused = await wf.executions.pause(record["id"])
    assert paused["status"] == "pausing"
    gate.touch()
    done = await wf.executions.wait(record["id"], timeout=20)
    assert done["status"] == "paused"
    assert task_names(await children(wf, record["id"])) == ["wait"]  # `after` did not start
    await wf.executions.resume(record["id"])
    wf.executions._recent.pop(record["id"], None)
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded"
    assert task_names(await children(wf, record["id"])) == ["wait", "after"]
    statuses = [entry["status"] for entry in final["log"]]
    assert statuses[-4:] == ["paused", "resuming", "running", "succeeded"]

    gate.unlink()
    again = await wf.executions.request("wf.pausable", {"gate": str(gate)}, {"user": "tester"})
    while len(await children(wf, again["id"])) < 1:
        await wf.executions.get(again["id"])
    canceling = await wf.executions.cancel(again["id"])
    assert canceling["status"] == "canceling"  # as StackStorm: the running task may finish first
    gate.touch()
    canceled = await wf.executions.wait(again["id"], timeout=20)
    assert canceled["status"] == "canceled"
    rows = await children(wf, again["id"])
    assert [(n, r["status"]) for n, r in zip(task_names(rows), rows, strict=True)] == [("wait", "succeeded")]


async def test_a_paused_workflow_canceled_keeps_no_paused_by(wf: Squall, tmp_path: Path) -> None:
    """A workflow canceled while paused ended `canceled` with a stale `paused_by` in its result, as if it
    still waited for something."""
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.pausable", {"gate": str(gate)}, {"user": "tester"})
    while len(await children(wf, record["id"])) < 1:
        await wf.executions.get(record["id"])
    await wf.executions.pause(record["id"])
    gate.touch()
    paused = await wf.executions.wait(record["id"], timeout=20)
    assert paused["status"] == "paused" and paused["result"]["paused_by"] == "request"
    await wf.executions.cancel(record["id"])
    canceled = await wf.executions.wait(record["id"], timeout=20)
    assert canceled["status"] == "canceled"
    assert "paused_by" not in canceled["result"] and canceled["result"]["error"] == "canceled by request"


async def test_a_workflow_canceled_before_its_resume_is_claimed_ends_canceled(wf: Squall, tmp_path: Path) -> None:
    """`squall execution resume` stores `resuming` for serve to claim; a cancel in between used to
    leave it `canceling` for ever (nobody conducts it). It ends `canceled` now, and stays so."""
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.pausable", {"gate": str(gate)}, {"user": "tester"})
    while len(await children(wf, record["id"])) < 1:
        await wf.executions.get(record["id"])
    await wf.executions.pause(record["id"])
    gate.touch()
    assert (await wf.executions.wait(record["id"], timeout=20))["status"] == "paused"
    executor, wf.executions.executor = wf.executions.executor, None  # resumed as the CLI does: no executor
    try:
        assert (await wf.executions.resume(record["id"]))["status"] == "resuming"
        canceled = await wf.executions.cancel(record["id"])
    finally:
        wf.executions.executor = executor
    assert canceled["status"] == "canceled"
    await wf.executions.poll()
    final = await wf.executions.get(record["id"])
    assert final["status"] == "canceled" and [e["status"] for e in final["log"]][-3:] == [
        "resuming", "canceling", "canceled"]
    assert task_names(await children(wf, record["id"])) == ["wait"]  # `after` never started


async def test_an_answer_heard_only_in_another_process_still_resumes_the_workflow(wf: Squall, tmp_path: Path) -> None:
    """An inquiry answered by `squall inquiry respond` (another process: its end is not heard here)
    while another branch still runs: once that branch ends the workflow would pause for an answer
    already given. It goes on instead."""
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.ask_beside", {"gate": str(gate)}, {"user": "tester"})
    while True:
        rows = await children(wf, record["id"])
        ask = [r for r in rows if r["action"] == "core.ask" and r["status"] == "pending"]
        if ask and any(r["action"] == "core.local" and r["status"] == "running" for r in rows):
            break
        await asyncio.sleep(0.02)
    answer = {**ask[0]["result"], "response": {"ok": True}, "responder": "someone"}
    assert await wf.db(wf.store.update_execution, ask[0]["id"], {"status": "succeeded", "result": answer},
                       expect=("pending",))  # stored by the other process; no event here
    gate.touch()
    for _ in range(200):
        wf.executions._recent.pop(record["id"], None)
        done = await wf.executions.wait(record["id"], timeout=20)
        if done["status"] not in ("paused", "resuming", "running"):
            break
    assert done["status"] == "succeeded", done
    assert sorted(task_names(await children(wf, record["id"]))) == ["ask", "done", "slow"]


async def test_pausing_a_workflow_pauses_its_sub_workflows_and_resuming_resumes_them(wf: Squall,
                                                                                    tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.nested", {"gate": str(gate)}, {"user": "tester"})
    while True:  # until the sub-workflow runs its first task
        subs = await children(wf, record["id"])
        if subs and await children(wf, subs[0]["id"]):
            break
        await asyncio.sleep(0.01)
    sub = subs[0]["id"]
    await wf.executions.pause(record["id"])
    while (await wf.executions.get(sub))["status"] == "running":
        await asyncio.sleep(0.01)
    assert (await wf.executions.get(sub))["status"] == "pausing"  # it went with its parent
    gate.touch()
    assert (await wf.executions.wait(record["id"], timeout=20))["status"] == "paused"
    assert (await wf.executions.get(sub))["status"] == "paused"
    assert task_names(await children(wf, sub)) == ["wait"]  # the sub-workflow started nothing new

    wf.executions._recent.pop(record["id"], None)
    await wf.executions.resume(record["id"])
    final = await wf.executions.wait(record["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    assert task_names(await children(wf, sub)) == ["wait", "after"]
    assert task_names(await children(wf, record["id"])) == ["sub", "done"]


async def test_canceling_a_paused_workflow_cancels_every_paused_workflow_under_it(wf: Squall,
                                                                                 tmp_path: Path) -> None:
    """The cancel reaches the paused sub-workflow, and from it the paused sub-sub-workflow, which
    otherwise stayed `paused` for ever."""
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.nested_twice", {"gate": str(gate)}, {"user": "tester"})
    while True:  # until the innermost workflow runs its task
        mids = await children(wf, record["id"])
        subs = await children(wf, mids[0]["id"]) if mids else []
        if subs and await children(wf, subs[0]["id"]):
            break
        await asyncio.sleep(0.01)
    await wf.executions.pause(record["id"])
    gate.touch()
    assert (await wf.executions.wait(record["id"], timeout=20))["status"] == "paused"
    tree = [record["id"], mids[0]["id"], subs[0]["id"]]
    assert [(await wf.executions.get(i))["status"] for i in tree] == ["paused"] * 3

    await wf.executions.cancel(record["id"])
    deadline = asyncio.get_running_loop().time() + 20
    while [(await wf.executions.get(i))["status"] for i in tree] != ["canceled"] * 3:
        assert asyncio.get_running_loop().time() < deadline, [(await wf.executions.get(i))["status"] for i in tree]
        await asyncio.sleep(0.05)
    assert task_names(await children(wf, subs[0]["id"])) == ["wait"]  # nothing new started


async def test_rerun_from_the_failed_task_keeps_finished_ones(wf: Squall, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.pausable", {"gate": str(gate)}, {"user": "tester"})
    while len(await children(wf, record["id"])) < 1:
        await wf.executions.get(record["id"])
    child = (await children(wf, record["id"]))[0]
    await wf.executions.cancel(child["id"])  # the task ends canceled → the workflow is canceled
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
    """The workflow file is updated while a run waits for approval (`prep` renamed, `deploy` changed):
    the answered run went on from the new file, took `prepare` for a task never run (its side effect
    ran twice), asked again and never deployed. It goes on with the definition it started with, as
    StackStorm's (which stores it with the run); the new file is for new runs."""
    effects = tmp_path / "effects"
    gate_file = home / "packs" / "wf" / "actions" / "workflows" / "gate.yaml"
    done, effects_seen = await answer_after_an_edit(wf, "wf.gate", gate_file, GATE_V2, effects)
    assert done["status"] == "succeeded", done["result"]
    assert task_names(await children(wf, done["id"])) == ["prep", "approve", "deploy"]
    assert effects_seen == ["prep", "deploy-v1"]

    effects.unlink()
    fresh = await wf.executions.request("wf.gate", {"effects": str(effects)}, {"user": "tester"})
    ask = await pending_ask(wf, fresh["id"])
    await wf.inquiries.respond(ask["id"], {"ok": True}, "tester")
    assert (await settled(wf, fresh["id"], ask["id"]))["status"] == "succeeded"
    assert task_names(await children(wf, fresh["id"])) == ["prepare", "approve", "deploy"]  # a new run: the new file
    assert effects.read_text().split() == ["prep", "deploy-v2"]


@pytest.mark.parametrize("gone", ["file broken", "pack.yaml broken", "pack removed"])
async def test_a_run_goes_on_across_a_restart_when_its_workflow_file_became_invalid(home: Path, tmp_path: Path,
                                                                                     gone: str) -> None:
    """The pack's new version has a mistake, so the action (or the whole pack) is not loaded after the
    restart, or the pack was removed: the answered run failed with `action "wf.gate" not found`, or
    with the bare `'wf'` of a missing pack. It conducts on from what it stored when it started, its own
    action included (with no pack config when the pack is gone)."""
    workflow_pack(home, {"gate": ("orquesta", "effects: {type: string}", GATE)})
    config = load_config(home / "config.yml")
    effects = tmp_path / "effects"
    first = await Squall.start(config)
    try:
        record = await first.executions.request("wf.gate", {"effects": str(effects)}, {"user": "tester"})
        ask = await pending_ask(first, record["id"])
    finally:
        await first.close()
    if gone == "file broken":
        rewrite(home / "packs" / "wf" / "actions" / "workflows" / "gate.yaml", GATE_BROKEN)
    elif gone == "pack.yaml broken":
        rewrite(home / "packs" / "wf" / "pack.yaml", "ref: wf\nname: wf\nversion: [0.2\n")
    else:
        shutil.rmtree(home / "packs" / "wf")
    second = await Squall.start(config, recover=True)
    try:
        assert "wf.gate" not in second.registry.actions
        assert (gone == "file broken") == ("wf" in second.registry.packs)
        await second.inquiries.respond(ask["id"], {"ok": True}, "tester")
        done = await settled(second, record["id"], ask["id"])
        assert done["status"] == "succeeded", done["result"]
        assert task_names(await children(second, record["id"])) == ["prep", "approve", "deploy"]
    finally:
        await second.close()
    assert effects.read_text().split() == ["prep", "deploy-v1"]


async def test_rerun_of_tasks_keeps_the_definition_the_run_started_with(wf: Squall, home: Path,
                                                                         tmp_path: Path) -> None:
    """`st2 execution re-run --tasks` of a finished workflow conducts it again from the definition it
    started with (StackStorm re-runs with the original's spec), not from the file as it is now."""
    effects, gate = tmp_path / "effects", tmp_path / "gate"
    failed = await run(wf, "wf.checked", {"effects": str(effects), "gate": str(gate)})
    assert failed["status"] == "failed"
    rewrite(home / "packs" / "wf" / "actions" / "workflows" / "checked.yaml",
            CHECKED.replace("check:", "verify:").replace("after-v1", "after-v2"))
    gate.touch()
    await wf.workflows.rerun(failed["id"], ["check"])
    wf.executions._recent.pop(failed["id"], None)
    final = await wf.executions.wait(failed["id"], timeout=20)
    assert final["status"] == "succeeded", final["result"]
    assert task_names(await children(wf, failed["id"])) == ["check", "check", "after"]
    assert effects.read_text().split() == ["after-v1"]


async def test_a_run_stored_without_its_definition_is_conducted_from_the_file(wf: Squall, home: Path,
                                                                               tmp_path: Path) -> None:
    """A run started before runs kept their definition has none stored: it is conducted from the
    workflow file, as it was then, and answers as before."""
    effects = tmp_path / "effects"
    record = await wf.executions.request("wf.gate", {"effects": str(effects)}, {"user": "tester"})
    ask = await pending_ask(wf, record["id"])
    stored = await wf.db(wf.store.get_execution, record["id"])
    assert "workflow" in stored["spec"]
    old = {k: v for k, v in stored["spec"].items() if k != "workflow"}
    assert await wf.db(wf.store.update_execution, record["id"], {"spec": old})
    await wf.inquiries.respond(ask["id"], {"ok": True}, "tester")
    done = await settled(wf, record["id"], ask["id"])
    assert done["status"] == "succeeded", done["result"]
    assert effects.read_text().split() == ["prep", "deploy-v1"]


BAD_FILES = {
    "syntax": ("version: 1.0\ntasks:\n  one:\n    action: core.noop\n    next: [do: two\n", "invalid YAML"),
    "unknown_do": ("version: 1.0\ntasks:\n  one:\n    action: core.noop\n    next:\n      - do: nowhere\n",
                   "task 'one': transition 1 names unknown task 'nowhere' in 'do'"),
    "unreachable": ("version: 1.0\ntasks:\n  one:\n    action: core.noop\n  a:\n    next: [{do: b}]\n"
                    "  b:\n    next: [{do: a}]\n", "unreachable from the start tasks (one)"),
    "cycle": ("version: 1.0\ntasks:\n  one:\n    next: [{do: a}]\n  a:\n    action: core.noop\n"
              "    next: [{do: b}]\n  b:\n    action: core.noop\n    next: [{do: a}]\n", "has no exit"),
    "bad_expression": ("version: 1.0\ntasks:\n  one:\n    action: core.echo message=<% ctx( %>\n",
                       "task 'one': expression syntax error"),
}


def test_bad_workflows_are_rejected_at_load_with_file_task_and_reason(home: Path) -> None:
    from bot.app import load_packs

    workflow_pack(home, {name: ("orquesta", "", text) for name, (text, _) in BAD_FILES.items()}, pack="bad")
    registry = load_packs(load_config(home / "config.yml"))
    errors = {str(e) for e in registry.errors}
    for name, (_, reason) in BAD_FILES.items():
        assert f"bad.{name}" not in registry.actions
        assert any(f"actions/workflows/{name}.yaml" in e and reason in e for e in errors), (name, errors)


FIXABLE = """
version: 1.0
input: [marker]
tasks:
  first:
    action: core.echo message="first"
    next: [{do: check}]
  check:
    action: core.local
    input:
      cmd: "test -f {{ ctx('marker') }}"
    next:
      - when: <% succeeded() %>
        do: last
  last:
    action: core.noop
"""


def test_cli_tree_and_rerun_from_the_failed_task(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from tests.test_cli import like_a_process

    workflow_pack(home, {"fixable": ("orquesta", "marker: {type: string}", FIXABLE)})
    cli = like_a_process(home, monkeypatch)

    marker = tmp_path / "fixed"
    failed = cli("run", "wf.fixable", f"marker={marker}", "--json")
    assert failed.returncode == 1
    workflow_id = json.loads(failed.stdout)["id"]
    shown = cli("execution", "get", workflow_id)
    lines = shown.stdout.splitlines()
    tree = lines[lines.index("children:") + 1:]
    assert [line.split()[1:] for line in tree] == [["first", "core.echo", "succeeded"],
                                                   ["check", "core.local", "failed"]]
    marker.touch()
    again = cli("execution", "re-run", workflow_id, "--tasks", "check", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    record = json.loads(cli("execution", "get", workflow_id, "--json").stdout)
    assert record["status"] == "succeeded" and len(record["children"]) == 4
    names = [json.loads(cli("execution", "get", c, "--json").stdout)["context"]["workflow_task"]["task"]
             for c in record["children"]]
    assert names == ["first", "check", "check", "last"]  # `first` was not run again


async def test_more_workflows_than_executor_slots_do_not_starve_their_tasks(home: Path) -> None:
    """Workflows only wait on their tasks: they take no slot, so a full executor still runs the tasks."""
    import asyncio

    workflow_pack(home, {"two_steps": ("orquesta", "", """
version: 1.0
tasks:
  first:
    action: core.noop
    next: [{do: second}]
  second:
    action: core.noop
""")})
    text = (home / "config.yml").read_text()
    (home / "config.yml").write_text(text + "executor:\n  max_concurrency: 2\n")
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        records = [await app.executions.request("wf.two_steps", {}) for _ in range(6)]
        done = await asyncio.gather(*(app.executions.wait(r["id"], timeout=30) for r in records))
        assert [d["status"] for d in done] == ["succeeded"] * 6
        assert app.executions.conducting == set()
    finally:
        await app.close()


async def test_a_shell_task_cmd_gets_workflow_data_as_data(wf: Squall, tmp_path: Path) -> None:
    """Workflow input (from chat, a webhook...) in a task's `cmd` is quoted, never pasted into the shell."""
    nasty = f'ann"; touch {tmp_path}/pwned; echo "$(touch {tmp_path}/pwned2)'
    done = await run(wf, "wf.shell", {"who": nasty})
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"] == {"yaql": f"yaql {nasty}\n{nasty}", "jinja": f"jinja {nasty}kept"}
    assert list(tmp_path.glob("pwned*")) == []
    for child in await children(wf, done["id"]):
        assert nasty not in child["parameters"]["cmd"] and child["parameters"]["env"]["KEEP"] == "kept"


_TASK_SCHEMA = r"properties.tasks.patternProperties.^\w+$"


async def test_a_content_error_in_a_later_task_fails_the_workflow_before_any_task_runs(wf: Squall,
                                                                                       tmp_path: Path) -> None:
    """`provision` ran (its side effect made) before `notify` failed on its misspelt input. StackStorm
    inspects every task's action and input when the workflow is requested and runs nothing if one is
    wrong (`workflows.inspect_task_contents`): the run fails with content errors and a null output."""
    marker = tmp_path / "provisioned"
    done = await run(wf, "wf.provision_typo", {"marker": str(marker)})
    assert done["status"] == "failed"
    assert done["result"] == {"output": None, "errors": [
        {"type": "content", "message": 'Action "core.echo" is missing required input "message".',
         "schema_path": f"{_TASK_SCHEMA}.properties.input", "spec_path": "tasks.notify.input"},
        {"type": "content", "message": 'Action "core.echo" has unexpected input "messages".',
         "schema_path": f"{_TASK_SCHEMA}.properties.input.patternProperties.^\\w+$",
         "spec_path": "tasks.notify.input.messages"},
    ]}
    assert not marker.exists()
    assert await children(wf, done["id"]) == []


async def test_every_content_error_is_reported_as_stackstorm_reports_them(wf: Squall) -> None:
    """StackStorm's `test_wiring_error_handling.py::test_task_content_errors`, on its own example: a ref
    without a pack, an action not registered, a missing required input and an unexpected one, all four,
    ordered as StackStorm orders them (by type, then schema path)."""
    done = await run(wf, "wf.inspection_task_contents", {"name": "x"})
    assert done["status"] == "failed"
    assert done["result"] == {"output": None, "errors": [
        {"type": "content", "message": 'The action reference "echo" is not formatted correctly.',
         "schema_path": f"{_TASK_SCHEMA}.properties.action", "spec_path": "tasks.task1.action"},
        {"type": "content", "message": 'The action "core.echoz" is not registered in the database.',
         "schema_path": f"{_TASK_SCHEMA}.properties.action", "spec_path": "tasks.task2.action"},
        {"type": "content", "message": 'Action "core.echo" is missing required input "message".',
         "schema_path": f"{_TASK_SCHEMA}.properties.input", "spec_path": "tasks.task3.input"},
        {"type": "content", "message": 'Action "core.echo" has unexpected input "messages".',
         "schema_path": f"{_TASK_SCHEMA}.properties.input.patternProperties.^\\w+$",
         "spec_path": "tasks.task3.input.messages"},
    ]}
    assert await children(wf, done["id"]) == []


async def test_a_run_whose_tasks_ran_already_is_not_inspected_again(wf: Squall, home: Path, tmp_path: Path) -> None:
    """A run started before runs kept their definition is conducted from the file as it is now; if that
    file has a content error since, the run is not failed at once as a new one is (StackStorm inspects a
    workflow when it is requested only): it goes on, and the task with the error fails when it is reached."""
    effects = tmp_path / "effects"
    record = await wf.executions.request("wf.gate", {"effects": str(effects)}, {"user": "tester"})
    ask = await pending_ask(wf, record["id"])
    stored = await wf.db(wf.store.get_execution, record["id"])
    assert await wf.db(wf.store.update_execution, record["id"],
                       {"spec": {k: v for k, v in stored["spec"].items() if k != "workflow"}})
    rewrite(home / "packs" / "wf" / "actions" / "workflows" / "gate.yaml",
            GATE.replace('deploy-v1 >> <% ctx(effects) %>"', 'deploy-v1 >> <% ctx(effects) %>" cwd_typo="/"'))
    await wf.inquiries.respond(ask["id"], {"ok": True}, "tester")
    done = await settled(wf, record["id"], ask["id"])
    assert done["status"] == "failed"
    (error,) = done["result"]["errors"]
    assert error["type"] == "error" and error["task_id"] == "deploy" and "cwd_typo" in error["result"]["error"]
    assert task_names(await children(wf, record["id"])) == ["prep", "approve"]  # deploy's request was refused
    assert effects.read_text().split() == ["prep"]


# -- a workflow that calls itself: cancel and the nesting limit -------------------------------------------

RECURSE = """
version: 1.0
tasks:
  again:
    action: rec.rec
"""

CHAIN_RECURSE = """
chain:
  - name: again
    ref: rec.chain
"""

REC_KEY = "rec-key-123"


@pytest.fixture
async def rec(home: Path) -> Squall:
    """A pack whose Orquesta workflow `rec.rec` and ActionChain `rec.chain` each call themselves, without end."""
    (home / "config.yml").write_text((home / "config.yml").read_text().replace(
        "api:\n", f"api:\n  keys: [{REC_KEY}]\n"))
    workflow_pack(home, {"rec": ("orquesta", "", RECURSE), "chain": ("action-chain", "", CHAIN_RECURSE)}, pack="rec")
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    try:
        yield app
    finally:
        await app.close()


async def _descendants(app: Squall, root: str) -> list[dict[str, Any]]:
    """Every execution under `root`, breadth-first."""
    found, level = [], [root]
    while level:
        below = [row for parent in level for row in await app.executions.list(parent=parent, limit=100_000)]
        found += below
        level = [row["id"] for row in below]
    return found


async def _nested(app: Squall, ref: str, depth: int) -> dict[str, Any]:
    """A run of `ref` once it is nested at least `depth` deep."""
    root = await app.executions.request(ref, {}, {"user": "tester"})

    async def deep() -> bool:
        return len(await app.executions.list(action=ref, limit=100_000)) > depth

    await until(deep, f"{ref} to nest {depth} deep", seconds=60)
    return root


async def test_a_self_recursive_workflow_nested_150_deep_is_canceled_whole_through_the_api(rec: Squall) -> None:
    """A cancel of a workflow that calls itself, once 150 deep, answered 500 (a RecursionError: one
    cancel nested in the next, ~14 Python frames per level) and left the deep end recursing. The API
    answers 200 now, every execution of the tree ends canceled, and none is added once it settled."""
    rec.workflows.max_depth = 10_000
    root = await _nested(rec, "rec.rec", 150)
    transport = httpx.ASGITransport(app=create_api(rec))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                 headers={"St2-Api-Key": REC_KEY}) as client:
        answer = await client.delete(f"/api/v1/executions/{root['id']}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "canceling"
    assert (await rec.executions.wait(root["id"], timeout=60))["status"] == "canceled"

    async def all_canceled() -> list[dict[str, Any]] | None:
        tree = await _descendants(rec, root["id"])
        return tree if all(row["status"] == "canceled" for row in tree) else None

    tree = await until(all_canceled, "every execution under the canceled workflow to end canceled", seconds=60)
    assert len(tree) >= 150

    async def quiet() -> bool:  # the listeners that heard of the ends are done: nothing more is coming
        return rec.executions.notifying == 0 and not rec.workflows.flows

    await until(quiet, "the workflows' listeners to finish")
    assert len(await _descendants(rec, root["id"])) == len(tree)  # nothing new was requested once it settled


async def test_a_second_cancel_takes_up_a_tree_left_canceling(rec: Squall) -> None:
    """A tree left `canceling` at its top with its deep end running (a cancel that failed midway, a
    crash) was refused by every further cancel ("already canceling"): a second cancel walks it again."""
    rec.workflows.max_depth = 10_000
    root = await _nested(rec, "rec.rec", 20)
    store = rec.db.store
    await rec.db(store.update_execution, root["id"], {"status": "canceling"}, expect=("running",))
    again = await rec.executions.cancel(root["id"])
    assert again["status"] == "canceling"
    assert (await rec.executions.wait(root["id"], timeout=60))["status"] == "canceled"

    async def all_canceled() -> bool:
        return all(row["status"] == "canceled" for row in await _descendants(rec, root["id"]))

    await until(all_canceled, "every execution under the workflow to end canceled", seconds=60)


async def test_a_cancel_that_reaches_a_sub_workflow_storing_its_end_loses_no_end(
        wf: Squall, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that reached a sub-workflow whose conductor had just returned (its end being stored)
    found no flow to cancel and canceled its task instead, which cut the end short: stored, or not,
    but never told, so the workflow above waited for it `canceling` for ever (the second-cancel test
    timed out so on a busy machine, at the deep end of the tree). The end is stored and told whatever
    lands on the task once its run is over; the workflow above then ends canceled."""
    gate = tmp_path / "gate"
    record = await wf.executions.request("wf.nested", {"gate": str(gate)}, {"user": "tester"})
    sub = (await until(lambda: children(wf, record["id"]), "the sub-workflow to start"))[0]["id"]
    storing, stored = asyncio.Event(), asyncio.Event()
    stored_end = wf.executions._stored_end

    async def held(run: dict[str, Any], *args: Any) -> Any:
        if run["id"] == sub:  # the sub-workflow's run is over: the cancel lands while its end is stored
            storing.set()
            await stored.wait()
        return await stored_end(run, *args)

    monkeypatch.setattr(wf.executions, "_stored_end", held)
    gate.touch()
    await asyncio.wait_for(storing.wait(), 20)
    assert (await wf.executions.cancel(record["id"]))["status"] == "canceling"
    assert (await wf.executions.get(sub))["status"] == "canceling"  # the cancel reached it, as it ended
    stored.set()
    assert (await wf.executions.wait(record["id"], timeout=20))["status"] == "canceled"
    assert (await wf.executions.wait(sub, timeout=20))["status"] == "succeeded"  # it ended before the cancel
    assert task_names(await children(wf, record["id"])) == ["sub"]  # the canceled workflow started nothing more


async def test_a_second_cancel_is_audited_with_who_asked_it(rec: Squall, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second cancel of a tree its first cancel left `canceling` (it failed midway) took the cancel up
    again and stored no audit event: who asked it was nowhere. Each cancel leaves its own event, about
    the workflow, with the person who asked it, as the first cancel's does."""
    rec.workflows.max_depth = 10_000
    root = await _nested(rec, "rec.rec", 5)

    async def failing(execution_id: str) -> bool:
        raise RuntimeError("the cancel failed midway")

    monkeypatch.setattr(rec.workflows, "cancel", failing)
    with pytest.raises(RuntimeError, match="failed midway"):
        await rec.executions.cancel(root["id"], AuditEntry("api.execution.cancel", "alice", "api", None, {}))
    monkeypatch.undo()
    assert (await rec.executions.get(root["id"]))["status"] == "canceling"
    again = await rec.executions.cancel(root["id"], AuditEntry("api.execution.cancel", "bob", "api", None, {}))
    assert again["status"] in ("canceling", "canceled")
    assert (await rec.executions.wait(root["id"], timeout=60))["status"] == "canceled"
    events = await rec.db(rec.db.store.audit_list, 10, "api.execution.cancel")
    asked = [(event["actor"], event["source"], event["target"], event["detail"]) for event in reversed(events)]
    assert asked == [(who, "api", root["id"], {"action": "rec.rec", "status": "canceling"}) for who in ("alice", "bob")]


async def test_a_workflow_nested_past_the_limit_fails_naming_it(rec: Squall) -> None:
    """A workflow that calls itself recursed until memory or the stack ran out; past
    `max_depth` nested workflows the task that would nest deeper fails, and with it every level."""
    rec.workflows.max_depth = 5
    done = await run(rec, "rec.rec", timeout=60)
    assert done["status"] == "failed"
    tree = await _descendants(rec, done["id"])
    assert len(tree) == 5 and all(row["status"] == "failed" for row in tree)
    said = json.dumps(tree[-1]["result"])
    assert "past the limit of 5 nested workflows" in said, said
    assert "workflows.max_depth" in said and 'task \\"again\\"' in said


async def test_an_action_chain_calling_itself_stops_at_the_limit_and_cancels_whole(rec: Squall) -> None:
    rec.workflows.max_depth = 4
    done = await run(rec, "rec.chain", timeout=60)
    assert done["status"] == "failed"
    tree = await _descendants(rec, done["id"])
    assert len(tree) == 4 and all(row["status"] == "failed" for row in tree)
    assert "past the limit of 4 nested workflows" in json.dumps(tree[-1]["result"])

    rec.workflows.max_depth = 10_000
    root = await _nested(rec, "rec.chain", 30)  # a canceled chain keeps its tasks' results, nested as deep
    assert (await rec.executions.cancel(root["id"]))["status"] in ("canceling", "canceled")
    assert (await rec.executions.wait(root["id"], timeout=60))["status"] == "canceled"

    async def all_canceled() -> bool:
        return all(row["status"] == "canceled" for row in await _descendants(rec, root["id"]))

    await until(all_canceled, "every ActionChain under the canceled one to end canceled", seconds=60)


async def test_a_chain_canceled_while_it_requests_a_task_cancels_that_task(rec: Squall) -> None:
    """An ActionChain's cancel stops its run's task. Landing while the chain requested its next task, after
    the child was stored and before it was handed to the executor, it left that child `requested` under
    the canceled chain, neither run nor canceled (a CI run failed on it). The request completes, and the
    cancel reaches the child."""
    rec.workflows.max_depth = 10_000
    executor = rec.executions.executor
    handing, hand_over = asyncio.Event(), asyncio.Event()
    submit = executor.submit
    held: list[str] = []

    async def submit_held(execution_id: str) -> None:
        record = await rec.executions.get(execution_id)
        parent = await rec.executions.get(record["parent"]) if record.get("parent") else None
        if parent is not None and parent.get("parent") and not held:  # a sub-chain's first task
            held.append(execution_id)
            handing.set()
            await hand_over.wait()
        await submit(execution_id)

    executor.submit = submit_held  # type: ignore[method-assign]
    root = await rec.executions.request("rec.chain", {}, {"user": "tester"})
    await asyncio.wait_for(handing.wait(), 20)
    assert (await rec.executions.get(held[0]))["status"] == "requested"
    try:
        canceling = asyncio.ensure_future(rec.executions.cancel(root["id"]))  # it waits for the chains' tasks
        await asyncio.sleep(0.2)  # the sub-chain's task is canceled while its request waits to hand the child over
    finally:
        hand_over.set()
    await canceling
    assert (await rec.executions.wait(root["id"], timeout=60))["status"] == "canceled"

    async def all_ended() -> list[dict[str, Any]] | None:
        tree = await _descendants(rec, root["id"])
        return tree if all(row["status"] in ("canceled", "failed", "succeeded") for row in tree) else None

    tree = await until(all_ended, "every execution under the canceled chain to end", seconds=20)
    assert held[0] in {row["id"] for row in tree}
    assert {row["status"] for row in tree} == {"canceled"}


async def test_a_canceled_action_chain_calling_itself_keeps_a_bounded_result(rec: Squall) -> None:
    """A canceled chain's result held its task's result whole, the canceled sub-chain's, which held its
    own, and so on down: a chain that called itself, canceled ~150 deep, nested past what the JSON
    encoders and the secret scrub take (a RecursionError left a chain `canceling` for ever and failed
    those above it). Every chain of the tree ends canceled, and each result shows the chains under it
    `NESTED_RESULTS` deep, then names the execution whose result it leaves out, which holds it."""
    rec.workflows.max_depth = 10_000
    root = await _nested(rec, "rec.chain", 150)
    await rec.executions.cancel(root["id"])
    done = await rec.executions.wait(root["id"], timeout=60)
    assert done["status"] == "canceled"

    async def all_canceled() -> list[dict[str, Any]] | None:
        tree = await _descendants(rec, root["id"])
        return tree if all(row["status"] == "canceled" for row in tree) else None

    tree = await until(all_canceled, "every ActionChain under the canceled one to end canceled", seconds=60)
    assert len(tree) >= 150  # `_nested` saw more than 150 runs of the chain, the root among them
    by_id = {row["id"]: row for row in tree}

    def shown(result: Any) -> tuple[int, Any]:
        """How many sub-chain results `result` shows nested, and the task entry it ends with."""
        levels, task = 0, None
        while isinstance(result, dict) and result.get("tasks"):
            task = result["tasks"][-1]
            result = task["result"]
            levels += isinstance(result, dict) and "tasks" in result
        return levels, task

    for row in [done, *tree]:
        assert shown(row["result"])[0] <= NESTED_RESULTS, row["id"]
    levels, last = shown(done["result"])
    assert levels == NESTED_RESULTS
    cut = last["result"]
    assert cut["execution_id"] == last["execution_id"] and last["execution_id"] in by_id
    assert f"squall execution get {last['execution_id']}" in cut["truncated"]
    assert by_id[last["execution_id"]]["result"]["tasks"]  # its own record holds what was left out


async def test_an_unexpected_failure_of_a_cancel_is_a_readable_500(rec: Squall,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that raised something unforeseen (the RecursionError of a deep tree) was a bare 500."""
    async def broken(execution_id: str, audit: Any = None) -> dict[str, Any]:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(rec.executions, "cancel", broken)
    transport = httpx.ASGITransport(app=create_api(rec), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                 headers={"St2-Api-Key": REC_KEY}) as client:
        answer = await client.delete("/api/v1/executions/" + "a" * 24)
    assert answer.status_code == 500
    said = answer.json()["faultstring"]
    assert "RecursionError" in said and "ask again to take the cancel up" in said and "a" * 24 in said
