"""ActionChain workflows, and durability: a real `squall serve` killed with SIGKILL mid-workflow."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.app import Squall, load_packs
from engine.config import load_config
from engine.storage import Store
from tests.conftest import write
from tests.workflow_helpers import (
    answer_after_an_edit,
    children,
    pending_ask,
    run,
    settled,
    task_names,
    until,
    workflow_pack,
)

SQUALL = Path(sys.executable).parent / "squall"

CHAIN = """
vars:
  base: "{{ who }}-base"
chain:
  - name: first
    ref: core.echo
    parameters:
      message: "{{ base }} {{ st2kv.system.colour }}"
    publish:
      said: "{{ first.stdout }}"
    on-success: second
  - name: second
    ref: core.local
    parameters:
      cmd: "echo {{ said }} {{ __results.first.stdout }}; exit {{ code }}"
    on-success: done
    on-failure: recover
  - name: recover
    ref: core.echo
    parameters:
      message: "recovering from {{ second.return_code }}"
  - name: done
    ref: core.noop
"""

FAILING = """
chain:
  - name: only
    ref: core.local
    params: {cmd: "exit 2"}
    on-success: after
  - name: after
    ref: core.noop
"""

BAD_RENDER = """
chain:
  - name: one
    ref: core.echo
    parameters: {message: "{{ nothing_here }}"}
"""

#: Prepare, ask for approval, deploy; each task's side effect written to the file `effects`.
GATE = """
chain:
  - name: prep
    ref: core.local
    params: {cmd: "echo prep >> {{ effects }}"}
    on-success: approve
  - name: approve
    ref: core.ask
    params: {schema: {type: object, properties: {ok: {type: boolean}}}}
    on-success: deploy
  - name: deploy
    ref: core.local
    params: {cmd: "echo deploy-v1 >> {{ effects }}"}
"""

#: StackStorm's contrib/examples `chain-test-inquiry`: the answer read as `task1.result.response...` (and
#: as `task1.response...`, Squall's plain keys).
INQUIRY = """
chain:
  - name: task1
    ref: core.ask
    params:
      schema:
        type: object
        properties:
          secondfactor: {type: string, required: true}
    on-success: task2
  - name: task2
    ref: core.local
    params:
      cmd: echo "{{ task1.result.response.secondfactor }} {{ task1.response.secondfactor }}"
"""

#: `chain-test-inquiry-parent`: the chain above as a sub-chain, which pauses the parent until it is answered.
INQUIRY_PARENT = """
chain:
  - name: task1
    ref: wf.inquiry
    on-success: task2
  - name: task2
    ref: core.echo
    params:
      message: "{{ task1.result.tasks[1].result.stdout }}/{{ task1.tasks[1].result.stdout }}"
"""


@pytest.fixture
async def chains(home: Path) -> Squall:
    workflow_pack(home, {
        "chain": ("action-chain", "who: {type: string}\ncode: {type: integer, default: 0}", CHAIN),
        "failing": ("action-chain", "", FAILING),
        "bad_render": ("action-chain", "", BAD_RENDER),
        "quiet": ("action-chain", "display_published: {default: false}\ncode: {type: integer, default: 0}",
                  CHAIN.replace("{{ who }}", "q")),
        "gate": ("action-chain", "effects: {type: string}", GATE),
        "inquiry": ("action-chain", "", INQUIRY),
        "inquiry_parent": ("action-chain", "", INQUIRY_PARENT),
    })
    app = await Squall.start(load_config(home / "config.yml"))
    assert app.registry.errors == []
    await app.db(app.datastore.set, "colour", "green")
    try:
        yield app
    finally:
        await app.close()


async def test_chain_renders_publishes_and_takes_on_success(chains: Squall) -> None:
    done = await run(chains, "wf.chain", {"who": "ann"})
    assert done["status"] == "succeeded", done["result"]
    result = done["result"]
    assert [t["name"] for t in result["tasks"]] == ["first", "second", "done"]
    assert result["published"] == {"said": "ann-base green"}
    assert result["tasks"][1]["result"]["stdout"] == "ann-base green ann-base green"
    task = result["tasks"][0]
    assert set(task) >= {"id", "name", "execution_id", "state", "result"} and task["state"] == "succeeded"
    rows = await children(chains, done["id"])
    assert task_names(rows) == ["first", "second", "done"]
    assert rows[0]["parent"] == done["id"]


async def test_a_chain_task_cmd_gets_its_values_as_data(chains: Squall, tmp_path: Path) -> None:
    """A workflow input (from chat, a webhook...) in a task's `cmd` is quoted, not pasted into the shell."""
    nasty = f'ann"; touch {tmp_path}/pwned; echo "'
    done = await run(chains, "wf.chain", {"who": nasty})
    assert done["status"] == "succeeded", done["result"]
    second = done["result"]["tasks"][1]["result"]
    assert second["stdout"] == f"{nasty}-base green {nasty}-base green"
    assert not (tmp_path / "pwned").exists()
    [task] = [c for c in await children(chains, done["id"]) if c["context"]["workflow_task"]["task"] == "second"]
    assert "SQUALL_ARG_0" in task["parameters"]["cmd"] and nasty not in task["parameters"]["cmd"]


async def test_a_chain_keeps_the_definition_it_started_with_when_the_pack_changes(chains: Squall, home: Path,
                                                                                  tmp_path: Path) -> None:
    """The chain file is updated while the chain waits for approval: the answered chain went on from
    the new file (`prep` unknown there, so run again; the new `deploy`). It keeps the one it started with."""
    edited = GATE.replace("name: prep", "name: prepare").replace("deploy-v1", "deploy-v2")
    chain_file = home / "packs" / "wf" / "actions" / "chains" / "gate.yaml"
    done, effects = await answer_after_an_edit(chains, "wf.gate", chain_file, edited, tmp_path / "effects")
    assert done["status"] == "succeeded", done["result"]
    assert task_names(await children(chains, done["id"])) == ["prep", "approve", "deploy"]
    assert effects == ["prep", "deploy-v1"]


async def test_a_task_answered_after_the_chain_paused_has_its_result_under_result(chains: Squall) -> None:
    """StackStorm's documented inquiry chain: task2 reads `{{ task1.result.response.secondfactor }}` and
    failed, `task1` having no `result`. StackStorm's resume rebuilds a task ended after the pause with its
    final result under `result` (`context_result[last_task]["result"]`); the plain keys stay too."""
    record = await chains.executions.request("wf.inquiry", {}, {"user": "tester"})
    ask = await pending_ask(chains, record["id"])
    await chains.inquiries.respond(ask["id"], {"secondfactor": "s3cond"}, "tester")
    done = await settled(chains, record["id"], ask["id"])
    assert done["status"] == "succeeded", done["result"]
    assert [t["name"] for t in done["result"]["tasks"]] == ["task1", "task2"]
    assert done["result"]["tasks"][0]["result"]["response"] == {"secondfactor": "s3cond"}
    assert "result" not in done["result"]["tasks"][0]["result"]  # the task's record is its result, as it was
    assert done["result"]["tasks"][1]["result"]["stdout"] == "s3cond s3cond"


async def test_a_sub_chain_resumed_after_its_answer_has_its_result_under_result(chains: Squall) -> None:
    """`chain-test-inquiry-parent`: the sub-chain pauses its parent on its question; once answered, the
    parent reads the sub-chain's final result under `task1.result` and as `task1`'s plain keys."""
    record = await chains.executions.request("wf.inquiry_parent", {}, {"user": "tester"})
    sub = await until(lambda: children(chains, record["id"]), "the sub-chain to start")
    ask = await pending_ask(chains, sub[0]["id"])
    await chains.inquiries.respond(ask["id"], {"secondfactor": "s3cond"}, "tester")
    done = await settled(chains, record["id"], ask["id"])
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["tasks"][1]["result"]["stdout"] == "s3cond s3cond/s3cond s3cond"


async def test_chain_failure_handled_by_on_failure_succeeds(chains: Squall) -> None:
    done = await run(chains, "wf.chain", {"who": "ann", "code": 4})
    assert done["status"] == "succeeded"
    assert [t["name"] for t in done["result"]["tasks"]] == ["first", "second", "recover"]
    assert done["result"]["tasks"][2]["result"]["stdout"] == "recovering from 4"


async def test_chain_unhandled_failure_fails_and_render_error_names_the_task(chains: Squall) -> None:
    done = await run(chains, "wf.failing")
    assert done["status"] == "failed"
    assert [t["name"] for t in done["result"]["tasks"]] == ["only"]
    bad = await run(chains, "wf.bad_render")
    assert bad["status"] == "failed"
    assert bad["result"]["error"].startswith('Failed to run task "one". Parameter rendering failed:')
    assert "nothing_here" in bad["result"]["error"]


async def test_display_published_false_hides_published(chains: Squall) -> None:
    done = await run(chains, "wf.quiet")
    assert "published" not in done["result"] and done["status"] == "succeeded"


def test_bad_chains_are_rejected_at_load(home: Path) -> None:
    workflow_pack(home, {
        "unknown": ("action-chain", "", "chain:\n  - name: a\n    ref: core.noop\n    on-success: zzz\n"),
        "loop": ("action-chain", "", "chain:\n  - name: a\n    ref: core.noop\n    on-success: b\n    on-failure: b\n"
                                     "  - name: b\n    ref: core.noop\n    on-success: a\n    on-failure: a\n"),
        "badnotify": ("action-chain", "", "chain:\n  - name: a\n    ref: core.noop\n"
                                          "    notify: {on-succes: {routes: [x]}}\n"),
    }, pack="badchain")
    errors = [str(e) for e in load_packs(load_config(home / "config.yml")).errors]
    assert any("chains/unknown.yaml" in e and "task 'a': 'on-success' names unknown task 'zzz'" in e for e in errors)
    assert any("chains/loop.yaml" in e and "has no exit" in e for e in errors)
    assert any("chains/badnotify.yaml" in e and "task 'a': unknown notify section 'on-succes' (did you mean "
               "'on-success'?)" in e for e in errors)


async def test_workflow_tasks_notify_as_stackstorm_decides(home: Path) -> None:
    """Chain: a task's own notify wins, `skip_notify` silences, the rest inherit the chain's.
    Orquesta: only the tasks its `notify` parameter lists get the workflow's."""
    pack = home / "packs" / "wfn"
    write(pack / "pack.yaml", "ref: wfn\nname: wfn\nversion: 0.1.0\n")
    write(pack / "actions" / "chained.yaml", """
        name: chained
        runner_type: action-chain
        entry_point: chains/chained.yaml
        notify: {on-complete: {routes: [chain-route]}}
        parameters: {skip_notify: {default: [quiet]}}
    """)
    write(pack / "actions" / "chains" / "chained.yaml", """
        chain:
          - {name: own, ref: core.noop, on-success: quiet, notify: {on-success: {routes: [own-route]}}}
          - {name: quiet, ref: core.noop, on-success: plain}
          - {name: plain, ref: core.noop}
    """)
    write(pack / "actions" / "flow.yaml", """
        name: flow
        runner_type: orquesta
        entry_point: workflows/flow.yaml
        notify: {on-complete: {routes: [flow-route]}}
        parameters: {notify: {default: [listed]}}
    """)
    write(pack / "actions" / "workflows" / "flow.yaml", """
        version: 1.0
        tasks:
          listed: {action: core.noop, next: [{do: unlisted}]}
          unlisted: {action: core.noop}
    """)
    write(pack / "rules" / "told.yaml", """
        name: told
        pack: wfn
        enabled: true
        trigger: {type: core.st2.generic.notifytrigger}
        action: {ref: core.noop}
    """)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        assert not [e for e in squall.registry.errors if "wfn" in str(e)], squall.registry.errors
        routes: dict[str, list[str]] = {}
        for ref in ("wfn.chained", "wfn.flow"):
            done = await run(squall, ref)
            assert done["status"] == "succeeded", done["result"]
            await squall.rules.settle()
            kids = await children(squall, done["id"])
            told = await squall.triggers.list(trigger="core.st2.generic.notifytrigger", limit=100)
            for row in [done, *kids]:
                name = ref if row is done else row["context"]["workflow_task"]["task"]
                routes[name] = sorted(t["payload"]["route"] for t in told if t["payload"]["execution_id"] == row["id"])
        assert routes == {"wfn.chained": ["chain-route"], "own": ["own-route"], "quiet": [], "plain": ["chain-route"],
                          "wfn.flow": ["flow-route"], "listed": ["flow-route"], "unlisted": []}
    finally:
        await squall.close()


SCHEDULE_FAILS = """
chain:
  - name: a
    ref: core.local
    parameters: {timeout: 5}
    publish: {out: "{{ a.stdout }}"}
    on-failure: handler
  - name: handler
    ref: core.echo
    parameters: {message: "handled"}
"""

NO_SUCH_ACTION = """
chain:
  - name: a
    ref: nope.nothing
    on-failure: handler
  - name: handler
    ref: core.echo
    parameters: {message: "handled"}
"""

RENDER_FAILS_HANDLED = """
chain:
  - name: a
    ref: core.echo
    parameters: {message: "{{ nothing_here }}"}
    on-failure: handler
  - name: handler
    ref: core.echo
    parameters: {message: "handled"}
"""


async def test_a_task_whose_child_cannot_be_requested_takes_on_failure_without_publishing(home: Path) -> None:
    """StackStorm renders `publish` only for a child that ran: a request refused (core.local without
    its required `cmd`) fails the task, which takes on-failure, instead of failing the chain."""
    workflow_pack(home, {"sched": ("action-chain", "", SCHEDULE_FAILS)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        done = await run(squall, "wf.sched")
        assert done["status"] == "succeeded", done["result"]
        tasks = done["result"]["tasks"]
        assert [(t["name"], t["state"]) for t in tasks] == [("a", "failed"), ("handler", "succeeded")]
        assert tasks[0]["execution_id"] is None and "cmd" in tasks[0]["result"]["error"]
        assert done["result"]["published"] == {} and "error" not in done["result"]
    finally:
        await squall.close()


async def test_a_task_naming_no_action_or_failing_to_render_ends_the_chain(home: Path) -> None:
    """StackStorm's `_get_next_action`: an unregistered ref or a parameter that fails to render ends
    the chain failed with a top-level error; the task's on-failure does not run."""
    workflow_pack(home, {"unknown": ("action-chain", "", NO_SUCH_ACTION),
                         "render": ("action-chain", "", RENDER_FAILS_HANDLED)})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        done = await run(squall, "wf.unknown")
        assert done["status"] == "failed"
        assert done["result"]["tasks"] == []
        assert done["result"]["error"] == 'Failed to run task "a". Action with reference "nope.nothing" doesn\'t exist.'
        assert await children(squall, done["id"]) == []
        rendered = await run(squall, "wf.render")
        assert rendered["status"] == "failed" and rendered["result"]["tasks"] == []
        assert rendered["result"]["error"].startswith('Failed to run task "a". Parameter rendering failed:')
    finally:
        await squall.close()


async def test_a_canceled_chain_keeps_its_tasks_and_published(home: Path) -> None:
    """StackStorm's test_chain_cancel: a canceled chain's result still has its `tasks`."""
    workflow_pack(home, {"slow": ("action-chain", "", """
chain:
  - name: first
    ref: core.echo
    parameters: {message: "first done"}
    publish: {said: "{{ first.stdout }}"}
    on-success: second
  - name: second
    ref: core.local
    parameters: {cmd: "sleep 30", timeout: 60}
""")})
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("wf.slow", {}, {"user": "tester"})
        for _ in range(600):  # until `second` runs (a deadline, not a timing assertion)
            rows = await children(squall, record["id"])
            if any(r["context"]["workflow_task"]["task"] == "second" and r["status"] == "running" for r in rows):
                break
            await asyncio.sleep(0.05)
        await squall.executions.cancel(record["id"])
        done = await squall.executions.wait(record["id"], timeout=30)
        assert done["status"] == "canceled"
        result = done["result"]
        assert [(t["name"], t["state"]) for t in result["tasks"]] == [("first", "succeeded"), ("second", "canceled")]
        assert result["published"] == {"said": "first done"}
        assert result["error"] == "canceled by request"
    finally:
        await squall.close()


async def test_an_unreachable_task_is_a_warning_and_the_chain_runs(home: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """StackStorm's ChainHolder.validate checks only that transitions name tasks: a task nothing leads
    to (or a cycle nothing enters) loads and never runs. A cycle that is entered and never left is
    still refused."""
    workflow_pack(home, {
        "orphan": ("action-chain", "", "default: a\nchain:\n  - name: a\n    ref: core.noop\n"
                                       "  - name: b\n    ref: core.noop\n"
                                       "  - {name: c, ref: core.noop, on-success: d, on-failure: d}\n"
                                       "  - {name: d, ref: core.noop, on-success: c, on-failure: c}\n"),
        "loop": ("action-chain", "", "chain:\n  - {name: a, ref: core.noop, on-success: b}\n"
                                     "  - {name: b, ref: core.noop, on-success: c, on-failure: c}\n"
                                     "  - {name: c, ref: core.noop, on-success: b, on-failure: b}\n"),
    })
    with caplog.at_level(logging.WARNING, logger="engine.workflows.chain"):
        squall = await Squall.start(load_config(home / "config.yml"))
    try:
        errors = [str(e) for e in squall.registry.errors]
        assert not any("orphan.yaml" in e for e in errors), errors
        assert any("chains/loop.yaml" in e and "has no exit" in e for e in errors), errors
        assert any("orphan.yaml" in r.getMessage() and "'b', 'c', 'd' unreachable from the start task 'a'"
                   in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        done = await run(squall, "wf.orphan")
        assert done["status"] == "succeeded", done["result"]
        assert [t["name"] for t in done["result"]["tasks"]] == ["a"]
    finally:
        await squall.close()


async def test_chain_tasks_carry_their_times_and_children_get_their_node(chains: Squall) -> None:
    """Spec §7.1: each task has `created_at`/`updated_at`; a child's `context.chain` is its node
    (StackStorm's `vars(action_node)`), and `node` names it as before."""
    done = await run(chains, "wf.chain", {"who": "ann"})
    assert done["status"] == "succeeded", done["result"]
    rows = await children(chains, done["id"])
    for task, row in zip(done["result"]["tasks"], rows, strict=True):
        assert list(task) == ["id", "name", "execution_id", "liveaction_id", "workflow", "created_at", "updated_at",
                              "state", "result"]
        assert task["execution_id"] == row["id"]
        assert (task["created_at"], task["updated_at"]) == (row["start_timestamp"], row["end_timestamp"])
    assert rows[0]["context"]["chain"] == {
        "node": "first", "name": "first", "ref": "core.echo", "params": None,
        "parameters": {"message": "{{ base }} {{ st2kv.system.colour }}"}, "on_success": "second",
        "on_failure": None, "publish": {"said": "{{ first.stdout }}"}, "notify": None}
    assert rows[1]["context"]["chain"]["on_failure"] == "recover"


# -- durability: kill -9 mid-workflow and start again -------------------------------------------

DURABLE = """
version: 1.0
input: [dir]
tasks:
  first:
    action: core.local
    input:
      cmd: "echo ran >> {{ ctx('dir') }}/first.log"
    next: [{do: gated}]
  gated:
    action: core.local
    input:
      cmd: "echo started >> {{ ctx('dir') }}/gated.log; while [ ! -f {{ ctx('dir') }}/go ]; do sleep 0.05; done"
      timeout: 60
    next: [{do: last}]
  last:
    action: core.local
    input:
      cmd: "echo ran >> {{ ctx('dir') }}/last.log"
"""


def _serve(home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(SQUALL), "-c", str(home / "config.yml"), "serve"], cwd=home,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait(store: Store, predicate, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate(store)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_sigkill_mid_workflow_then_restart_continues_without_rerunning_finished_tasks(home: Path) -> None:
    write(home / "config.yml", "database:\n  url: sqlite:///data/squall.db\npacks:\n  paths: [packs]\n"
                               "api:\n  enabled: false\nadapters:\n  console:\n    enabled: false\n")
    workflow_pack(home, {"durable": ("orquesta", "dir: {type: string}", DURABLE)})
    work = home / "work"
    work.mkdir()
    queued = subprocess.run([str(SQUALL), "-c", str(home / "config.yml"), "run", "wf.durable", f"dir={work}",
                             "--async", "--json"], capture_output=True, text=True, cwd=home, timeout=60)
    assert queued.returncode == 0, queued.stderr
    workflow_id = json.loads(queued.stdout)["id"]
    store = Store.open(f"sqlite:///{home / 'data' / 'squall.db'}")
    server = _serve(home)
    try:
        _wait(store, lambda s: (work / "gated.log").exists())
        os.killpg(server.pid, signal.SIGKILL)  # the server and the shell it runs: no goodbye
        server.communicate(timeout=10)
        assert store.get_execution(workflow_id)["status"] == "running"

        (work / "go").touch()
        server = _serve(home)
        done = _wait(store, lambda s: (r := s.get_execution(workflow_id))["status"] not in (
            "running", "resuming", "requested") and r)
        assert done["status"] == "succeeded", done["result"]
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=20)
        store.close()
    assert (work / "first.log").read_text() == "ran\n"  # finished before the kill: not run again
    assert (work / "last.log").read_text() == "ran\n"
    assert (work / "gated.log").read_text() == "started\nstarted\n"  # interrupted: run again
    rows = sorted(Store.open(f"sqlite:///{home / 'data' / 'squall.db'}").list_executions(parent=workflow_id),
                  key=lambda r: r["id"])
    assert [(r["context"]["workflow_task"]["task"], r["status"]) for r in rows] == [
        ("first", "succeeded"), ("gated", "abandoned"), ("gated", "succeeded"), ("last", "succeeded")]
    statuses = [e["status"] for e in done["log"]]
    assert statuses[-3:] == ["resuming", "running", "succeeded"]
