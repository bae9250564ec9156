"""A workflow's pack's secret config values handed to its tasks are masked as a `decrypt_kv` value is.

An ActionChain's templates see the pack's config as `config_context` (`{{ config_context.api_token }}`, the
usual way of giving a pack's token to a shell command); Orquesta and Mistral workflows read it through a
parameter's default. The task's action gets the real value, and its stored parameters show it masked (the
real one sealed, so a re-run of the task gets it), its output is scrubbed of it (the action may be of
another pack, `core.local`, whose own config has no such secret), and no error of the workflow quotes it.
A workflow that reads no secret config value seals nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.parameters import MASK, ParameterError
from tests.conftest import write
from tests.test_api import KEY, _home
from tests.test_workflow_secrets import _stepped_across_a_restart
from tests.workflow_helpers import children, run, workflow_pack

PACK = "cs"
TOKEN = "CHAIN-TOKEN-do-not-show-0001"
NESTED = "nested-Pw-do-not-show-0002"
REGION = "eu-north-9"
SECRETS = (TOKEN, NESTED)

# t1 (an action of another pack) writes the token to a marker file, so the test sees the real value
# arrived, and echoes it; t2 is handed a secret nested in an object of the config.
CHAIN = """
chain:
  - name: t1
    ref: core.local
    params:
      cmd: >-
        printf %s "{{ config_context.api_token }}" > "{{ marker }}";
        echo "got {{ config_context.api_token }} in {{ config_context.region }}"
    on-success: t2
  - name: t2
    ref: core.echo
    params:
      message: "pw {{ config_context.auth.password }}"
"""

# Reads only the config item that is not secret.
REGION_CHAIN = """
chain:
  - name: t1
    ref: core.echo
    params:
      message: "in {{ config_context.region }}"
"""

# The token handed to an integer parameter: the task's request is refused with an error quoting the value,
# which the chain hands on to the task that reports it.
BAD_CHAIN = """
chain:
  - name: t1
    ref: core.local
    params:
      cmd: "true"
      timeout: "{{ config_context.api_token }}"
    on-failure: report
  - name: report
    ref: core.echo
    params:
      message: "t1 failed: {{ t1.error }}"
"""

# A task's parameters fail to render, the error naming the key the token looked up: the chain fails.
LOOKUP_CHAIN = """
chain:
  - name: t1
    ref: core.echo
    params:
      message: "{{ {'a': 1}[config_context.api_token] }}"
"""

# Orquesta and Mistral read the pack's config through their parameters' defaults (`TOKEN_PARAMETER`).
ORQUESTA = """
version: 1.0
input: [tok, marker]
tasks:
  t1:
    action: core.local
    input:
      cmd: 'printf %s "<% ctx(tok) %>" > "<% ctx(marker) %>"; echo "got <% ctx(tok) %>"'
"""

MISTRAL = """
version: '2.0'
cs.mistral:
  type: direct
  input: [tok, marker]
  tasks:
    t1:
      action: core.local
      input:
        cmd: 'printf %s "<% $.tok %>" > "<% $.marker %>"; echo "got <% $.tok %>"'
"""

TOKEN_PARAMETER = "tok: {type: string, default: '{{ config_context.api_token }}'}\nmarker: {type: string}"

# A workflow of a pack without config running the chain as its task.
OUTER = """
version: 1.0
input: [marker]
tasks:
  inner:
    action: cs.chain marker=<% ctx(marker) %>
"""


def _packs(home: Path) -> Path:
    """The pack `cs` (a config with secrets, its workflows) and the pack `wf` (no config); the config's path."""
    _home(home)
    pack = home / "packs" / PACK
    workflow_pack(home, {
        "chain": ("action-chain", "marker: {type: string}", CHAIN),
        "region_chain": ("action-chain", "", REGION_CHAIN),
        "bad_chain": ("action-chain", "", BAD_CHAIN),
        "lookup_chain": ("action-chain", "", LOOKUP_CHAIN),
        "orquesta": ("orquesta", TOKEN_PARAMETER, ORQUESTA),
        "mistral": ("mistral-v2", TOKEN_PARAMETER, MISTRAL),
    }, pack=PACK)
    write(pack / "config.schema.yaml", """
        api_token: {type: string, secret: true, required: true}
        auth:
          type: object
          properties:
            user: {type: string}
            password: {type: string, secret: true}
        region: {type: string}
    """)
    write(home / "configs" / f"{PACK}.yaml", f"""
        api_token: "{TOKEN}"
        auth: {{user: bob, password: "{NESTED}"}}
        region: "{REGION}"
    """)
    workflow_pack(home, {"outer": ("orquesta", "marker: {type: string}", OUTER)})
    return home / "config.yml"


async def _started(config: Path) -> Squall:
    app = await Squall.start(load_config(config))
    assert app.registry.errors == []
    return app


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    app = await _started(_packs(home))
    try:
        yield app
    finally:
        await app.close()


def _stored_rows(squall: Squall) -> list[Any]:
    """Every stored execution row (parameters, spec, result; `sealed` is ciphertext) and output chunk."""
    with squall.store.engine.connect() as conn:
        return [*conn.execute(sa.text("SELECT * FROM executions")),
                *conn.execute(sa.text("SELECT * FROM execution_output"))]


async def _api_documents(squall: Squall, execution_id: str) -> str:
    """Everything the API answers about the workflow and its tasks, nested ones too: records and output."""
    transport = httpx.ASGITransport(app=create_api(squall))
    shown: list[str] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY}) as c:
        pending = [execution_id]
        while pending:
            one = pending.pop()
            tasks = await c.get(f"/api/v1/executions/{one}/children")
            shown += [tasks.text, (await c.get(f"/api/v1/executions/{one}")).text,
                      (await c.get(f"/api/v1/executions/{one}/output")).text]
            pending += [task["id"] for task in tasks.json()]
    return "\n".join(shown)


def _shows_none(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret config value: {text}"


async def _assert_masked(squall: Squall, done: dict[str, Any], marker: Path) -> dict[str, Any]:
    """The task's action got the real token, nothing stored or shown holds it, and the task shows it
    masked, sealed with it. Returns the task (`core.local`) as stored."""
    assert done["status"] == "succeeded", done["result"]
    assert marker.read_text() == TOKEN  # the task's action was given the real value
    _shows_none(repr(_stored_rows(squall)), "a stored row")
    _shows_none(await _api_documents(squall, done["id"]), "the API")
    [task] = await squall.executions.list(action="core.local", limit=10)
    assert MASK in repr(task["parameters"])  # masked, not dropped: it was there
    assert task["result"]["stdout"].startswith(f"got {MASK}")
    row = await squall.db(squall.store.get_execution, task["id"])
    assert TOKEN in squall.executions.revealed(row)  # the real value travels sealed
    return task


async def test_an_actionchain_task_given_a_secret_config_value_shows_it_masked(squall: Squall,
                                                                                tmp_path: Path) -> None:
    marker = tmp_path / "chain-marker"
    done = await run(squall, f"{PACK}.chain", {"marker": str(marker)})
    task = await _assert_masked(squall, done, marker)
    assert task["result"]["stdout"].strip() == f"got {MASK} in {REGION}"  # what is not secret shows as it is
    echoed = next(t for t in await children(squall, done["id"]) if t["action"] == "core.echo")
    assert echoed["parameters"]["message"] == f"pw {MASK}"

    # The task run again on its own gets the sealed value back, and masks it as the task did.
    marker.unlink()
    again = await squall.executions.wait((await squall.executions.rerun(task["id"]))["id"], 30)
    assert again["status"] == "succeeded", again["result"]
    assert marker.read_text() == TOKEN
    _shows_none(repr(again), "the task's re-run")


async def test_a_chain_run_as_an_orquesta_task_masks_its_pack_config_secret(squall: Squall,
                                                                             tmp_path: Path) -> None:
    """The chain's pack is not the workflow's that started it: the chain still masks its own pack's secrets."""
    marker = tmp_path / "outer-marker"
    done = await run(squall, "wf.outer", {"marker": str(marker)})
    await _assert_masked(squall, done, marker)


@pytest.mark.parametrize("ref", [f"{PACK}.orquesta", f"{PACK}.mistral"])
async def test_an_orquesta_or_mistral_task_given_a_secret_config_value_shows_it_masked(
        squall: Squall, tmp_path: Path, ref: str) -> None:
    marker = tmp_path / "marker"
    done = await run(squall, ref, {"marker": str(marker)})
    await _assert_masked(squall, done, marker)
    assert done["parameters"]["tok"] == MASK


async def test_no_error_of_a_chain_quotes_a_secret_config_value(squall: Squall,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A task's request refused for the token it was handed (an integer `timeout`) fails the task with an
    error that the chain hands to the next task; a task whose parameters fail to render, naming the token,
    fails the chain. Neither error shows the token: not in the chains' results, their tasks, the API, the log."""
    with caplog.at_level(logging.DEBUG):
        reported = await run(squall, f"{PACK}.bad_chain")
        failed = await run(squall, f"{PACK}.lookup_chain")
    assert reported["status"] == "succeeded", reported["result"]
    refused, report = reported["result"]["tasks"]
    assert refused["state"] == "failed" and '"timeout"' in refused["result"]["error"]
    assert report["state"] == "succeeded"
    [echoed] = await squall.executions.list(action="core.echo", limit=10)
    assert echoed["parameters"]["message"].startswith('t1 failed: parameter "timeout"')
    assert failed["status"] == "failed" and "Parameter rendering failed" in failed["result"]["error"]
    _shows_none(repr(_stored_rows(squall)), "a stored row")
    for done in (reported, failed):
        _shows_none(await _api_documents(squall, done["id"]), "the API")
    _shows_none(caplog.text, "the log")


async def test_a_request_refused_for_a_secret_its_caller_handed_it_quotes_it_in_no_error(squall: Squall) -> None:
    """The refusal itself, at its source: a request with nothing to render whose value holds a secret the
    caller names (`secrets`, as a workflow hands its tasks what it revealed) is refused without the value."""
    with pytest.raises(ParameterError) as refused:
        await squall.executions.request("core.local", {"cmd": "true", "timeout": TOKEN}, {"user": "t"},
                                        secrets=[TOKEN])
    assert '"timeout"' in str(refused.value) and TOKEN not in str(refused.value)
    with pytest.raises(ParameterError) as told:  # a value no secret is in is quoted, as ever
        await squall.executions.request("core.local", {"cmd": "true", "timeout": "soon"}, {"user": "t"})
    assert "soon" in str(told.value)


async def test_a_chain_that_reads_no_secret_config_value_seals_nothing(squall: Squall) -> None:
    """What costs a secret nothing: no seal is written for the chain nor for its task."""
    done = await run(squall, f"{PACK}.region_chain")
    assert done["status"] == "succeeded", done["result"]
    [task] = await children(squall, done["id"])
    assert task["parameters"]["message"] == f"in {REGION}"
    for execution_id in (done["id"], task["id"]):
        row = await squall.db(squall.store.get_execution, execution_id)
        assert row is not None and row["sealed"] is None


@pytest.mark.postgres
async def test_a_chain_in_steps_across_a_restart_masks_its_pack_config_secret(home: Path, postgres_url: str,
                                                                              tmp_path: Path) -> None:
    """Under the scale-out executor each step is conducted afresh (here by two processes in turn, one
    stopped between them): each masks the secret in the task it requests."""
    config = _packs(home)
    text = config.read_text().replace("url: sqlite:///data/squall.db", f"url: {postgres_url}")
    write(config, f"{text}\nexecutor:\n  kind: procrastinate\n")
    marker = tmp_path / "stepped-marker"
    async with _stepped_across_a_restart(config, f"{PACK}.chain", {"marker": str(marker)}) as (second, done):
        await _assert_masked(second, done, marker)
        echoed = next(t for t in await children(second, done["id"]) if t["action"] == "core.echo")
        assert echoed["parameters"]["message"] == f"pw {MASK}"
