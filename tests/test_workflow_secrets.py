"""A secret decrypted inside a workflow (ActionChain's `decrypt_kv`, Orquesta's and Mistral's
`st2kv(..., decrypt=>true)`), or given to it as a parameter of its own marked `secret: true`,
reaches the task's action as it is, and is masked everywhere it is stored or shown: the workflow's
and its tasks' records, their output, and the API's documents."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.executions import public
from engine.parameters import MASK
from engine.workflows.service import _answered_secrets
from tests.conftest import free_port, write
from tests.workflow_helpers import children, pending_ask, run, settled, until, workflow_pack

SECRET = "tok-Vx93-osprey-workflow"
KEY = "workflow-secrets-key"

# A task's action that writes what it was given to a marker file (so the test sees the real value
# arrived) and echoes it (so its output and result would show it).
RECORD = """
name: record
runner_type: local-shell-cmd
parameters:
  text: {type: string, required: true}
  marker: {type: string, required: true}
  cmd:
    immutable: true
    default: 'printf %s "{{ text }}" > "{{ marker }}"; echo "got {{ text }}"'
"""

CHAIN = """
vars:
  early: "{{ st2kv.system.api_token | decrypt_kv }}"
chain:
  - name: first
    ref: wf.record
    params:
      text: "{{ st2kv.system.api_token | decrypt_kv }}"
      marker: "{{ marker }}"
    publish:
      tok: "{{ st2kv.system.api_token | decrypt_kv }}"
      said: "{{ first.stdout }}"
    on-success: second
  - name: second
    ref: core.echo
    params:
      message: "{{ tok }} {{ early }}"
"""

ORQUESTA = """
version: 1.0
input:
  - marker
vars:
  - tok: <% st2kv('system.api_token', decrypt=>true) %>
tasks:
  t1:
    action: wf.record text="<% ctx(tok) %>" marker="<% ctx(marker) %>"
    next:
      - when: <% succeeded() %>
        publish:
          - again: "{{ st2kv('system.api_token', decrypt=true) }}"
        do: t2
  t2:
    action: core.echo message="<% ctx(again) %>"
output:
  - tok: <% ctx(tok) %>
  - again: <% ctx(again) %>
"""

# Canceled while its second task runs: its result keeps what it published.
SLOW_CHAIN = """
chain:
  - name: first
    ref: wf.record
    params:
      text: "{{ st2kv.system.api_token | decrypt_kv }}"
      marker: "{{ marker }}"
    publish:
      tok: "{{ st2kv.system.api_token | decrypt_kv }}"
    on-success: second
  - name: second
    ref: core.local
    params: {cmd: "sleep 30", timeout: 60}
"""

# A workflow that hands the secret to a sub-workflow, which hands it on to its own task.
OUTER = """
version: 1.0
input:
  - marker
vars:
  - tok: <% st2kv('system.api_token', decrypt=>true) %>
tasks:
  inner:
    action: wf.inner text="<% ctx(tok) %>" marker="<% ctx(marker) %>"
output:
  - echoed: <% task(inner).result.output.echoed %>
"""

INNER = """
version: 1.0
input:
  - text
  - marker
tasks:
  t1:
    action: wf.record text="<% ctx(text) %>" marker="<% ctx(marker) %>"
output:
  - echoed: <% ctx(text) %>
"""

MISTRAL = """
version: '2.0'
wf.mistral:
  type: direct
  input:
    - marker
  vars:
    tok: <% st2kv('system.api_token', decrypt=>true) %>
  tasks:
    one:
      action: wf.record text="<% $.tok %>" marker="<% $.marker %>"
      publish:
        again: "{{ st2kv('system.api_token', decrypt=true) }}"
      on-success:
        - two
    two:
      action: core.echo message="<% $.again %>"
  output:
    tok: <% $.tok %>
    again: <% $.again %>
"""

# Workflows given the secret as a parameter of their own marked `secret: true`, which they hand to
# tasks whose parameters are not secret, publish, and put in their output.
PARAMETERS = "password: {type: string, secret: true}\nmarker: {type: string}"

CHAIN_PARAMETER = """
chain:
  - name: first
    ref: wf.record
    params:
      text: "{{ password }}"
      marker: "{{ marker }}"
    publish:
      pw: "{{ password }}"
    on-success: second
  - name: second
    ref: core.echo
    params:
      message: "said {{ pw }}"
"""

ORQUESTA_PARAMETER = """
version: 1.0
input:
  - password
  - marker
tasks:
  t1:
    action: wf.record text="<% ctx(password) %>" marker="<% ctx(marker) %>"
    next:
      - when: <% succeeded() %>
        publish:
          - pw: <% ctx(password) %>
        do: t2
  t2:
    action: core.echo message="said <% ctx(pw) %>"
output:
  - pw: <% ctx(pw) %>
  - said: <% task(t2).result.stdout %>
"""

MISTRAL_PARAMETER = """
version: '2.0'
wf.mistral_parameter:
  type: direct
  input:
    - password
    - marker
  tasks:
    one:
      action: wf.record text="<% $.password %>" marker="<% $.marker %>"
      publish:
        pw: <% $.password %>
      on-success:
        - two
    two:
      action: core.echo message="said <% $.pw %>"
  output:
    pw: <% $.pw %>
"""

# The secret parameter handed on to a sub-workflow whose own parameter (`text`) is not secret.
OUTER_PARAMETER = """
version: 1.0
input:
  - password
  - marker
tasks:
  inner:
    action: wf.inner text="<% ctx(password) %>" marker="<% ctx(marker) %>"
output:
  - echoed: <% task(inner).result.output.echoed %>
"""

# A secret parameter that is an object: every value in it is secret, the one a task is handed too.
ORQUESTA_OBJECT = """
version: 1.0
input:
  - creds
  - marker
tasks:
  t1:
    action: wf.record text="<% ctx(creds).token %>" marker="<% ctx(marker) %>"
output:
  - token: <% ctx(creds).token %>
"""

# A question whose `pin` is `secret: true`: the answer is published and handed to a task whose parameter
# is not secret, and put in the output. `ask_pin_held` waits for a gate file between the two.
ASK_PIN = """
version: 1.0
input: [marker, gate]
tasks:
  q:
    action: core.ask
    input:
      schema:
        type: object
        properties:
          pin: {type: string, secret: true, required: true}
          note: {type: string}
    next:
      - when: <% succeeded() %>
        publish:
          - pin: <% result().response.pin %>
          - note: <% result().response.note %>
        do: use
  use:
    action: wf.record text="<% ctx(pin) %>" marker="<% ctx(marker) %>"
output:
  - pin: <% ctx(pin) %>
  - note: <% ctx(note) %>
"""

ASK_PIN_HELD = ASK_PIN.replace("do: use", "do: hold").replace("  use:", """  hold:
    action: core.local
    input:
      cmd: "while [ ! -f {{ ctx('gate') }} ]; do sleep 0.02; done"
      timeout: 30
    next: [{do: use}]
  use:""")


def _pack(home: Path, database_url: str, executor: str = "local") -> Path:
    """The config (on `database_url`, with `executor`) and the pack of workflows; returns the config's path."""
    write(home / "config.yml", f"""
        database:
          url: {database_url}
        executor:
          kind: {executor}
        packs:
          paths: [packs]
        api:
          port: {free_port()}
          keys: [{KEY}]
        adapters:
          console:
            enabled: false
    """)
    workflow_pack(home, {
        "chain": ("action-chain", "marker: {type: string}", CHAIN),
        "orquesta": ("orquesta", "marker: {type: string}", ORQUESTA),
        "mistral": ("mistral-v2", "marker: {type: string}", MISTRAL),
        "slow_chain": ("action-chain", "marker: {type: string}", SLOW_CHAIN),
        "outer": ("orquesta", "marker: {type: string}", OUTER),
        "inner": ("orquesta", "text: {type: string}\nmarker: {type: string}", INNER),
        "chain_parameter": ("action-chain", PARAMETERS, CHAIN_PARAMETER),
        "orquesta_parameter": ("orquesta", PARAMETERS, ORQUESTA_PARAMETER),
        "mistral_parameter": ("mistral-v2", PARAMETERS, MISTRAL_PARAMETER),
        "outer_parameter": ("orquesta", PARAMETERS, OUTER_PARAMETER),
        "orquesta_object": ("orquesta", "creds: {type: object, secret: true}\nmarker: {type: string}",
                            ORQUESTA_OBJECT),
        "ask_pin": ("orquesta", "marker: {type: string}\ngate: {type: string}", ASK_PIN),
        "ask_pin_held": ("orquesta", "marker: {type: string}\ngate: {type: string}", ASK_PIN_HELD),
    })
    write(home / "packs" / "wf" / "actions" / "record.yaml", RECORD)
    return home / "config.yml"


async def _started(config: Path) -> Squall:
    app = await Squall.start(load_config(config))
    assert app.registry.errors == []
    return app


@pytest.fixture
async def wf(home: Path) -> AsyncIterator[Squall]:
    app = await _started(_pack(home, "sqlite:///data/squall.db"))
    await app.db(app.datastore.set, "api_token", SECRET, encrypt=True)
    try:
        yield app
    finally:
        await app.close()


async def _api_documents(squall: Squall, execution_id: str) -> list[Any]:
    """Everything the API answers about the workflow and its tasks: records, lists and output."""
    transport = httpx.ASGITransport(app=create_api(squall))
    shown: list[Any] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as c:
        tasks = (await c.get(f"/api/v1/executions/{execution_id}/children")).json()
        shown += [tasks, (await c.get("/api/v1/executions", params={"parent": execution_id})).json()]
        for one in [execution_id, *(task["id"] for task in tasks)]:
            shown.append((await c.get(f"/api/v1/executions/{one}")).json())
            shown.append((await c.get(f"/api/v1/executions/{one}/output")).text)
    return shown


def _stored_rows(squall: Squall) -> list[Any]:
    """Every stored execution row (result, parameters, spec, context...) and every output chunk."""
    with squall.store.engine.connect() as conn:
        return [*conn.execute(sa.text("SELECT * FROM executions")),
                *conn.execute(sa.text("SELECT * FROM execution_output"))]


async def _assert_masked_everywhere(squall: Squall, done: dict[str, Any], marker: Path) -> None:
    await _assert_masked(squall, done, marker)
    # What the workflow revealed is sealed with it: its later steps (any worker's, after a restart) mask it too.
    stored = await squall.db(squall.store.get_execution, done["id"])
    assert SECRET in squall.executions.revealed(stored)


async def _assert_masked(squall: Squall, done: dict[str, Any], marker: Path) -> None:
    """The task's action got the real value; nothing stored or shown holds it; the task shows it masked."""
    assert done["status"] == "succeeded", done["result"]
    assert marker.read_text() == SECRET  # the task's action was given the real value
    rows = _stored_rows(squall)
    assert rows and SECRET not in repr(rows)
    shown = await _api_documents(squall, done["id"])
    assert SECRET not in repr(shown)
    recorded = await squall.executions.list(action="wf.record", limit=10)
    assert [r["parameters"]["text"] for r in recorded] == [MASK]  # masked, not dropped: it was there
    assert recorded[0]["result"]["stdout"].strip() == f"got {MASK}"


async def test_actionchain_decrypt_kv_is_masked_in_tasks_and_the_chain(wf: Squall, tmp_path: Path) -> None:
    marker = tmp_path / "chain-marker"
    done = await run(wf, "wf.chain", {"marker": str(marker)})
    await _assert_masked_everywhere(wf, done, marker)
    assert done["result"]["published"]["tok"] == MASK
    echoed = next(t for t in await children(wf, done["id"]) if t["action"] == "core.echo")
    assert echoed["parameters"]["message"] == f"{MASK} {MASK}"


async def test_orquesta_st2kv_decrypt_is_masked_in_tasks_and_the_output(wf: Squall, tmp_path: Path) -> None:
    marker = tmp_path / "orquesta-marker"
    done = await run(wf, "wf.orquesta", {"marker": str(marker)})
    await _assert_masked_everywhere(wf, done, marker)
    assert done["result"]["output"] == {"tok": MASK, "again": MASK}


async def test_mistral_st2kv_decrypt_is_masked_in_tasks_and_the_output(wf: Squall, tmp_path: Path) -> None:
    marker = tmp_path / "mistral-marker"
    done = await run(wf, "wf.mistral", {"marker": str(marker)})
    await _assert_masked_everywhere(wf, done, marker)
    assert (done["result"]["tok"], done["result"]["again"]) == (MASK, MASK)


async def test_a_sub_workflow_given_the_secret_masks_it_in_its_own_tasks(wf: Squall, tmp_path: Path) -> None:
    """The sub-workflow's input holds the secret its parent decrypted: it is sealed with the
    sub-workflow, which hands it on to its own tasks as a secret to mask."""
    marker = tmp_path / "inner-marker"
    done = await run(wf, "wf.outer", {"marker": str(marker)})
    await _assert_masked_everywhere(wf, done, marker)
    assert done["result"]["output"] == {"echoed": MASK}
    [inner] = await children(wf, done["id"])
    assert inner["parameters"]["text"] == MASK


async def test_a_canceled_chain_masks_what_it_published(wf: Squall, tmp_path: Path) -> None:
    """A chain canceled midway keeps its `tasks` and `published` in its result (as StackStorm's): a
    secret it published is masked there too."""
    marker = tmp_path / "canceled-marker"
    record = await wf.executions.request("wf.slow_chain", {"marker": str(marker)}, {"user": "tester"})
    for _ in range(600):  # until `second` runs (a deadline, not a timing assertion)
        rows = await children(wf, record["id"])
        if any(r["context"]["workflow_task"]["task"] == "second" and r["status"] == "running" for r in rows):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the chain's task `second` never started running")
    await wf.executions.cancel(record["id"])
    done = await wf.executions.wait(record["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["result"]["published"] == {"tok": MASK}
    assert marker.read_text() == SECRET
    assert SECRET not in repr(_stored_rows(wf))
    assert SECRET not in repr(await _api_documents(wf, done["id"]))


@contextlib.asynccontextmanager
async def _stepped_across_a_restart(config: Any, ref: str, parameters: dict[str, Any],
                                    before: Callable[[Squall], Awaitable[None]] | None = None,
                                    ) -> AsyncIterator[tuple[Squall, dict[str, Any]]]:
    """`ref` conducted in steps under the scale-out executor, by two processes in turn, one stopped
    between them: the first requests and runs task t1; the second, after a restart, conducts on to the
    end. Yields the second process and the workflow as it ended."""
    first = await _started(config)
    try:
        if before is not None:
            await before(first)
        flow = await first.executions.request(ref, parameters, {"user": "tester"})
        await first.executions.run(flow["id"], {"job_id": 1})  # the first step requests t1
        [t1] = first.store.list_executions(parent=flow["id"])
        await first.executions.run(t1["id"], {"job_id": 2})
        for _ in range(600):  # until its end's listeners (queueing the next step) are done: a deadline
            if not first.executions.notifying:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the first process's end listeners never finished")
    finally:
        await first.close()
    second = await _started(config)  # another process, after a restart
    try:
        executions, store = second.executions, second.store
        await executions.step(flow["id"], {"job_id": 3})  # t1 ended: this step requests t2
        t2 = next(c for c in store.list_executions(parent=flow["id"]) if c["action"] == "core.echo")
        await executions.run(t2["id"], {"job_id": 4})
        await executions.step(flow["id"], {"job_id": 5})
        yield second, public(store.get_execution(flow["id"]))
    finally:
        await second.close()


@pytest.mark.postgres
async def test_orquesta_in_steps_across_a_restart_masks_it(home: Path, postgres_url: str, tmp_path: Path) -> None:
    """Under the scale-out executor each step of the workflow is conducted afresh (here: by two
    processes in turn, one stopped between them): every step masks what the workflow revealed, in
    the tasks it requests and in the output the last one stores."""
    config = _pack(home, postgres_url, "procrastinate")
    marker = tmp_path / "stepped-marker"

    async def the_secret(first: Squall) -> None:
        await first.db(first.datastore.set, "api_token", SECRET, encrypt=True)

    async with _stepped_across_a_restart(config, "wf.orquesta", {"marker": str(marker)}, the_secret) as (second, done):
        await _assert_masked_everywhere(second, done, marker)
        assert done["result"]["output"] == {"tok": MASK, "again": MASK}


async def test_a_task_run_again_masks_the_secret_its_workflow_gave_it(wf: Squall, tmp_path: Path) -> None:
    """A workflow's task re-run on its own (`st2 execution re-run`, a retry policy's retry) gets its
    sealed values again, and masks them as the task did."""
    marker = tmp_path / "rerun-marker"
    done = await run(wf, "wf.orquesta", {"marker": str(marker)})
    [task] = await wf.executions.list(action="wf.record", limit=10)
    marker.unlink()
    again = await wf.executions.wait((await wf.executions.rerun(task["id"]))["id"], timeout=30)
    assert again["status"] == "succeeded", again["result"]
    assert marker.read_text() == SECRET
    assert again["parameters"]["text"] == MASK
    assert SECRET not in repr(_stored_rows(wf))
    assert SECRET not in repr(await _api_documents(wf, done["id"]))


async def _run_with_secret_parameter(squall: Squall, ref: str, marker: Path) -> dict[str, Any]:
    """`ref` run with the secret as its own `secret: true` parameter (as `squall run ref password=...`),
    checked masked everywhere, with the echo task's message masked too (its parameter is not secret)."""
    done = await run(squall, ref, {"password": SECRET, "marker": str(marker)})
    await _assert_masked(squall, done, marker)
    assert done["parameters"]["password"] == MASK
    echoed = await squall.executions.list(action="core.echo", limit=10)
    assert [(t["parameters"]["message"], t["result"]["stdout"].strip()) for t in echoed] == [
        (f"said {MASK}", f"said {MASK}")]
    return done


async def test_actionchain_hands_its_secret_parameter_to_tasks_masked(wf: Squall, tmp_path: Path) -> None:
    done = await _run_with_secret_parameter(wf, "wf.chain_parameter", tmp_path / "chain-parameter-marker")
    assert done["result"]["published"]["pw"] == MASK


async def test_orquesta_hands_its_secret_parameter_to_tasks_masked(wf: Squall, tmp_path: Path) -> None:
    done = await _run_with_secret_parameter(wf, "wf.orquesta_parameter", tmp_path / "orquesta-parameter-marker")
    assert done["result"]["output"] == {"pw": MASK, "said": f"said {MASK}"}


async def test_mistral_hands_its_secret_parameter_to_tasks_masked(wf: Squall, tmp_path: Path) -> None:
    done = await _run_with_secret_parameter(wf, "wf.mistral_parameter", tmp_path / "mistral-parameter-marker")
    assert done["result"]["pw"] == MASK


async def test_a_sub_workflow_given_a_secret_parameter_masks_it_in_its_own_tasks(
        wf: Squall, tmp_path: Path) -> None:
    """The parent's secret parameter handed to a sub-workflow's parameter that is not secret: the
    sub-workflow masks it in its parameters, its tasks and its output, and seals it for its later steps."""
    marker = tmp_path / "inner-parameter-marker"
    done = await run(wf, "wf.outer_parameter", {"password": SECRET, "marker": str(marker)})
    await _assert_masked(wf, done, marker)
    assert done["result"]["output"] == {"echoed": MASK}
    [inner] = await children(wf, done["id"])
    assert inner["parameters"]["text"] == MASK
    stored = await wf.db(wf.store.get_execution, inner["id"])
    assert SECRET in wf.executions.revealed(stored)


async def test_a_value_inside_a_secret_object_parameter_is_masked(wf: Squall, tmp_path: Path) -> None:
    """A `secret: true` object's values are secret too: the one a task is handed, and the workflow's
    output that holds it, are masked (the object is masked whole in the workflow's own parameters)."""
    marker = tmp_path / "object-marker"
    done = await run(wf, "wf.orquesta_object", {"creds": {"user": "ops", "token": SECRET}, "marker": str(marker)})
    await _assert_masked(wf, done, marker)
    assert done["parameters"]["creds"] == MASK
    assert done["result"]["output"] == {"token": MASK}


@pytest.mark.postgres
async def test_a_secret_parameter_in_steps_across_a_restart_is_masked(
        home: Path, postgres_url: str, tmp_path: Path) -> None:
    """Under the scale-out executor each step is conducted afresh, the last one by another process
    after a restart: each hands the workflow's sealed secret parameter to its tasks as a secret."""
    config = _pack(home, postgres_url, "procrastinate")
    marker = tmp_path / "stepped-parameter-marker"
    parameters = {"password": SECRET, "marker": str(marker)}
    async with _stepped_across_a_restart(config, "wf.orquesta_parameter", parameters) as (second, done):
        await _assert_masked(second, done, marker)
        assert done["result"]["output"] == {"pw": MASK, "said": f"said {MASK}"}


async def _assert_answer_masked(squall: Squall, done: dict[str, Any], marker: Path, inquiry: str) -> None:
    """The task's action got the secret answer; the workflow's and the task's records, their output and
    the API's documents show it masked. (The inquiry's own row keeps it, for the workflow, and shows it
    masked: `engine.inquiries.shown`.)"""
    assert done["status"] == "succeeded", done["result"]
    assert marker.read_text() == SECRET
    assert done["result"]["output"] == {"pin": MASK, "note": "by phone"}  # what is not secret is shown
    others = [row for row in _stored_rows(squall) if getattr(row, "id", None) != inquiry]
    assert others and SECRET not in repr(others)
    assert SECRET not in repr(await _api_documents(squall, done["id"]))
    recorded = await squall.executions.list(action="wf.record", limit=10)
    assert [r["parameters"]["text"] for r in recorded] == [MASK]
    assert recorded[0]["result"]["stdout"].strip() == f"got {MASK}"


async def test_a_secret_inquiry_answer_is_masked_in_the_workflow_and_its_tasks(wf: Squall, tmp_path: Path) -> None:
    """An answer to a `secret: true` property was masked on the inquiry only: the workflow's output, the
    next task's parameters, its output and its result showed it. The workflow masks it as it masks a
    secret it decrypted."""
    marker = tmp_path / "pin-marker"
    record = await wf.executions.request("wf.ask_pin", {"marker": str(marker)}, {"user": "tester"})
    ask = await pending_ask(wf, record["id"])
    await wf.inquiries.respond(ask["id"], {"pin": SECRET, "note": "by phone"}, "tester")
    done = await settled(wf, record["id"], ask["id"])
    await _assert_answer_masked(wf, done, marker, ask["id"])


async def test_a_secret_inquiry_answer_is_sealed_and_stays_masked_after_a_restart(home: Path,
                                                                                  tmp_path: Path) -> None:
    """The answer is sealed with the workflow before a task that may hold it is requested, as a
    decrypted datastore value is: after a restart the workflow still masks it in what it does next."""
    config = load_config(_pack(home, "sqlite:///data/squall.db"))
    marker, gate = tmp_path / "held-pin-marker", tmp_path / "gate"
    first = await _started(home / "config.yml")
    try:
        record = await first.executions.request("wf.ask_pin_held", {"marker": str(marker), "gate": str(gate)},
                                                {"user": "tester"})
        ask = await pending_ask(first, record["id"])
        await first.inquiries.respond(ask["id"], {"pin": SECRET, "note": "by phone"}, "tester")

        async def holding() -> bool:
            return any(r["action"] == "core.local" and r["status"] == "running"
                       for r in await children(first, record["id"]))

        await until(holding, "the task after the answer to run")
        stored = await first.db(first.store.get_execution, record["id"])
        assert SECRET in first.executions.revealed(stored)
    finally:
        await first.close()
    second = await Squall.start(config, recover=True)
    try:
        gate.touch()
        done = await until(lambda: _ended(second, record["id"]), "the workflow to end after the restart")
        await _assert_answer_masked(second, done, marker, ask["id"])
    finally:
        await second.close()


async def _ended(squall: Squall, execution_id: str) -> dict[str, Any] | None:
    record = await squall.executions.get(execution_id)
    return record if record["status"] in ("succeeded", "failed", "canceled", "timeout", "abandoned") else None


def test_every_secret_value_of_an_inquirys_answers_is_masked_by_its_workflow() -> None:
    """The values the workflow masks are those the inquiry shows masked (`inquiries.masked`): at any
    depth, a secret object's whole content, in the merged `response` and in each of `responses`."""
    schema = {"type": "object", "properties": {
        "pin": {"type": "string", "secret": True},
        "account": {"type": "object", "properties": {"token": {"secret": True}, "name": {"type": "string"}}},
        "keys": {"type": "array", "items": {"type": "object", "properties": {"value": {"secret": True}}}},
        "vault": {"type": "object", "secret": True},
        "ok": {"type": "boolean"}}}
    first = {"pin": "pin-first", "ok": True}
    last = {"pin": 918273, "account": {"token": "tok-acct", "name": "ops"}, "keys": [{"value": "key-one"}, {}],
            "vault": {"a": "vault-a", "b": ["vault-b"]}, "ok": False}
    result = {"schema": schema, "response": last, "responses": [{"user": "ann", "response": first},
                                                                {"user": "bob", "response": last}]}
    assert set(_answered_secrets(result)) == {"pin-first", "918273", "tok-acct", "key-one", "vault-a", "vault-b"}
    assert _answered_secrets({"schema": {"properties": {"ok": {"type": "boolean"}}}, "response": {"ok": True}}) == []
    assert _answered_secrets({"schema": schema, "response": None}) == []  # not answered (it expired)
