"""A pack's secret config values rendered into an action's parameters (`{{ config_context.api_token }}`,
StackStorm's common way of handing a pack's token to a shell action) are masked wherever the execution
is shown, as a value `decrypt_kv` was rendered into is: its stored parameters (and so the API's JSON,
the web UI's execution page and the re-run form's prefilled values), its rendered `cmd`, its output, and
every error of the request. The run itself gets the real values (sealed with the request); a re-run left
as shown renders them again. A value read from a config item that is not secret stays as it is.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.parameters import MASK, ParameterError
from tests.conftest import write
from tests.test_api import KEY, _home
from tests.test_web_auth import Web, csrf_of, started_web

PACK = "cfgsec"
TOKEN = "CFG-TOKEN-AAA-do-not-show"
NESTED = "nested-Pa55-do-not-show"
REGION = "us-east-7"
SECRETS = (TOKEN, NESTED)


def _pack(home: Path) -> None:
    """A pack whose config holds a secret at the top level and one nested in an object, and actions whose
    ordinary (not secret) parameters default to them, as StackStorm packs write it."""
    pack = home / "packs" / PACK
    write(pack / "pack.yaml", f"ref: {PACK}\nname: {PACK}\ndescription: d\nversion: 1.0.0\nauthor: t\n")
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
    # The action echoes what it got and records a digest of it, to prove it got the real values.
    write(pack / "actions" / "call.yaml", """
        name: call
        runner_type: local-shell-cmd
        parameters:
          tok: {type: string, default: "{{ config_context.api_token }}"}
          pw: {type: string, default: "{{ config_context.auth.password }}"}
          where: {type: string, default: "{{ config_context.region }}"}
          proof: {type: string, required: true}
          cmd:
            immutable: true
            default: >-
              echo "calling with tok={{tok}} pw={{pw}} in {{where}}";
              printf %s "{{tok}}|{{pw}}" | sha256sum | cut -c1-64 > "{{proof}}"
    """)
    write(pack / "actions" / "region.yaml", """
        name: region
        runner_type: local-shell-cmd
        parameters:
          where: {type: string, default: "{{ config_context.region }}"}
          cmd: {default: 'echo "in {{where}}"', immutable: true}
    """)
    write(pack / "actions" / "count.yaml", """
        name: count
        runner_type: local-shell-cmd
        parameters:
          n: {type: integer, default: "{{ config_context.api_token }}"}
          cmd: {default: 'echo {{n}}', immutable: true}
    """)
    write(pack / "actions" / "lookup.yaml", """
        name: lookup
        runner_type: local-shell-cmd
        parameters:
          n: {type: string, default: "{{ {'a': 1}[config_context.auth.password] + 1 }}"}
          cmd: {default: 'echo {{n}}', immutable: true}
    """)


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    _home(home)
    _pack(home)
    async with started_web(home) as started:
        yield started


def _shows_none(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret config value: {text}"


async def _called(web: Web, proof: Path) -> dict[str, Any]:
    record = await web.squall.executions.request(f"{PACK}.call", {"proof": str(proof)},
                                                 {"user": "alice", "source": "api"})
    return await web.squall.executions.wait(record["id"], 30)


async def test_a_secret_config_value_rendered_into_a_parameter_is_masked_wherever_the_execution_shows(
        web: Web, tmp_path: Path) -> None:
    proof = tmp_path / "proof.txt"
    done = await _called(web, proof)
    assert done["status"] == "succeeded", done
    # The run got the real values.
    assert proof.read_text().strip() == hashlib.sha256(f"{TOKEN}|{NESTED}".encode()).hexdigest()
    parameters = done["parameters"]
    assert parameters["tok"] == MASK and parameters["pw"] == MASK
    assert parameters["where"] == REGION  # a config item that is not secret is shown as it is
    assert REGION in parameters["cmd"] and MASK in parameters["cmd"]
    assert done["result"]["stdout"] == f"calling with tok={MASK} pw={MASK} in {REGION}"
    _shows_none(json.dumps(done), "the finished execution")

    row = await web.squall.db(web.squall.store.get_execution, done["id"])
    assert row is not None and row["sealed"]  # the real values travel sealed
    _shows_none(json.dumps({k: v for k, v in row.items() if k != "sealed"}, default=str), "the stored row")

    api = web.client()
    answer = await api.get(f"/api/v1/executions/{done['id']}", headers={"St2-Api-Key": KEY})
    assert answer.status_code == 200 and answer.json()["parameters"]["tok"] == MASK
    _shows_none(answer.text, "GET /api/v1/executions/<id>")

    viewer, _ = await web.signed_in("vic", "viewer")
    page = await viewer.get(f"/executions/{done['id']}")
    assert page.status_code == 200
    _shows_none(page.text, "the execution's page")

    operator, _ = await web.signed_in("otto", "operator")
    form = await operator.get(f"/executions/{done['id']}/rerun")
    assert form.status_code == 200
    _shows_none(form.text, "the re-run form")
    # Sent back as shown, the re-run renders the defaults again: it gets the real values, shows none.
    proof.unlink()
    again = await operator.post(f"/executions/{done['id']}/rerun",
                                data={"csrf_token": csrf_of(form.text)})
    assert again.status_code == 303, again.text
    rerun = await web.squall.executions.wait(again.headers["location"].rsplit("/", 1)[1], 30)
    assert rerun["status"] == "succeeded", rerun
    assert proof.read_text().strip() == hashlib.sha256(f"{TOKEN}|{NESTED}".encode()).hexdigest()
    assert rerun["parameters"]["tok"] == MASK
    _shows_none(json.dumps(rerun), "the re-run")


async def test_a_run_that_reads_no_secret_config_value_seals_nothing(web: Web) -> None:
    """Only what a request's values hold of the pack's secrets is sealed with it, as for `decrypt_kv`."""
    record = await web.squall.executions.request(f"{PACK}.region", {}, {"user": "alice", "source": "api"})
    done = await web.squall.executions.wait(record["id"], 30)
    assert done["status"] == "succeeded" and done["parameters"]["where"] == REGION
    row = await web.squall.db(web.squall.store.get_execution, done["id"])
    assert row is not None and row["sealed"] is None


@pytest.mark.parametrize("action", ["count", "lookup"])
async def test_no_error_quotes_a_secret_config_value_a_parameter_read(web: Web, action: str) -> None:
    """A parameter that read a secret config value fails to cast (`count`) or to render (`lookup`, whose
    template's error would name the key it looked up): the error names the parameter, never the value."""
    with pytest.raises(ParameterError) as raised:
        await web.squall.executions.request(f"{PACK}.{action}", {}, {"user": "alice", "source": "api"})
    assert '"n"' in str(raised.value)
    _shows_none("".join(traceback.format_exception(raised.value)), f"the error of {action}")
    assert await web.squall.executions.list(action=f"{PACK}.{action}") == []
