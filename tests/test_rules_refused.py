"""A rule whose action parameters are refused (spec §5.4): StackStorm creates the execution and marks it
failed, so the failure shows in the execution list and a rule alerting on failed executions hears of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.parameters import MASK, ParameterError
from engine.storage import rule_enforcements
from tests.conftest import write

KEY = "refused-key-123456"
TOKEN = "tok-s3cret-value-123"  # a secret parameter's literal value in a rule
KV_SECRET = "not-a-number-s3cret"  # a decrypted datastore value a non-secret integer parameter is given


def _home(home: Path, database_url: str = "sqlite:///data/squall.db") -> Path:
    write(home / "config.yml", f"""
        database:
          url: '{database_url}'
        packs:
          paths: [packs]
        api:
          keys: [{KEY}]
    """)
    pack = home / "packs" / "hook"
    write(pack / "pack.yaml", "ref: hook\nname: hook\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "deploy.yaml", """
        name: deploy
        runner_type: noop
        parameters:
          count: {type: integer}
          message: {type: string}
          token: {type: string, secret: true}
    """)
    write(pack / "actions" / "alert.yaml", """
        name: alert
        runner_type: noop
        parameters:
          message: {type: string}
    """)
    rules = {
        # the body has no service.name: the template does not render
        "render": "message: 'deploying {{ trigger.body.service.name }}'",
        # "api" is no integer: the cast refuses it
        "cast": "count: '{{ trigger.body.service }}'",
        # a decrypted secret that is no integer: refused, never quoted
        "kv": "count: '{{ st2kv.system.dbpass | decrypt_kv }}'",
    }
    for name, parameters in rules.items():
        write(pack / "rules" / f"{name}.yaml", f"""
            name: {name}
            pack: hook
            enabled: true
            trigger: {{type: core.st2.webhook, parameters: {{url: {name}}}}}
            action:
              ref: hook.deploy
              parameters: {{token: {TOKEN}, {parameters}}}
        """)
    write(pack / "rules" / "on_failure.yaml", """
        name: on_failure
        pack: hook
        enabled: true
        trigger: {type: core.st2.generic.actiontrigger}
        criteria:
          trigger.status: {type: equals, pattern: failed}
          trigger.action_ref: {type: equals, pattern: hook.deploy}
        action:
          ref: hook.alert
          parameters: {message: 'ALERT {{ trigger.execution_id }} {{ trigger.result.error }}'}
    """)
    return home / "config.yml"


@pytest.fixture
async def app(home: Path, database_url: str) -> AsyncIterator[Squall]:
    """On SQLite, where the failed execution and its enforcement are stored in the loop's transaction, and on
    PostgreSQL, where they are stored in a group's transaction on the database thread."""
    squall = await Squall.start(load_config(_home(home, database_url)))
    try:
        yield squall
    finally:
        await squall.close()


@pytest.fixture
async def client(app: Squall) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_api(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                 headers={"St2-Api-Key": KEY}) as api:
        yield api


async def _hook(app: Squall, client: httpx.AsyncClient, url: str, body: dict[str, object]) -> dict[str, object]:
    """POST a webhook, let its rules and what they set off settle; the rule's one enforcement."""
    answer = await client.post(f"/api/v1/webhooks/{url}", json=body)
    assert answer.status_code == 202, answer.text
    await app.rules.settle(timeout=20)
    [enforcement] = await app.rules.enforcements(rule=f"hook.{url}")
    return enforcement


@pytest.mark.parametrize(("url", "error"), [
    ("render", 'Failed to render parameter "message"'),
    ("cast", "parameter \"count\": 'api' is not an integer"),
])
async def test_refused_parameters_fail_an_execution_that_alerts(app: Squall, client: httpx.AsyncClient, url: str,
                                                               error: str) -> None:
    enforcement = await _hook(app, client, url, {"service": "api"})
    assert enforcement["status"] == "failed" and error in enforcement["failure_reason"]
    execution_id = enforcement["execution_id"]
    assert execution_id, "the failed enforcement names the failed execution"

    shown = await client.get(f"/api/v1/executions/{execution_id}")
    assert shown.status_code == 200, shown.text
    execution = shown.json()
    assert execution["action"]["ref"] == "hook.deploy" and execution["status"] == "failed"
    assert error in execution["result"]["error"]
    assert execution["end_timestamp"] is not None
    assert execution["context"]["rule"]["ref"] == f"hook.{url}"
    assert execution["context"]["trigger_instance"]["id"] == enforcement["trigger_instance_id"]
    # the parameters as the rule gave them, the secret one masked
    assert execution["parameters"]["token"] == MASK and TOKEN not in shown.text
    listed = await client.get("/api/v1/executions", params={"action": "hook.deploy"})
    assert [e["id"] for e in listed.json() if e["action"]["ref"] == "hook.deploy"] == [execution_id]

    # its end fired the action trigger: the rule alerting on failed executions ran for it
    [alert] = await app.rules.enforcements(rule="hook.on_failure")
    assert alert["status"] == "succeeded", alert
    alerted = await app.executions.get(alert["execution_id"])
    assert alerted["parameters"]["message"].startswith(f"ALERT {execution_id} ")
    assert error in alerted["parameters"]["message"]

    # a re-run renders the rule's templates again, with the same payload: refused the same way
    with pytest.raises(ParameterError, match=error.split(":")[0]):
        await app.executions.rerun(execution_id)


async def test_a_rule_refused_again_makes_no_second_execution(app: Squall, client: httpx.AsyncClient) -> None:
    """The execution's id is derived from the rule and the instance: enforcing the rule again for the
    instance (a recovery after a crash) stores no second one, and an enforcement lost in between is
    stored naming the first."""
    enforcement = await _hook(app, client, "render", {"service": "api"})
    rule = app.rules.rules["hook.render"]
    instance = await app.triggers.get(enforcement["trigger_instance_id"])
    assert (await app.rules.enforce(rule, instance))["id"] == enforcement["id"]

    def forget() -> None:
        with app.store.engine.begin() as conn:
            conn.execute(sa.delete(rule_enforcements).where(rule_enforcements.c.id == enforcement["id"]))

    await asyncio.to_thread(forget)
    again = await app.rules.enforce(rule, instance)
    assert again["status"] == "failed" and again["execution_id"] == enforcement["execution_id"]
    executions = [e for e in await app.executions.list(limit=100) if e["action"] == "hook.deploy"]
    assert [e["id"] for e in executions] == [enforcement["execution_id"]]


async def test_a_refused_decrypted_value_is_quoted_nowhere(app: Squall, client: httpx.AsyncClient) -> None:
    await asyncio.to_thread(app.datastore.set, "dbpass", KV_SECRET, encrypt=True)
    enforcement = await _hook(app, client, "kv", {})
    assert enforcement["status"] == "failed" and enforcement["execution_id"]
    shown = await client.get(f"/api/v1/executions/{enforcement['execution_id']}")
    execution = shown.json()
    assert execution["status"] == "failed"
    assert f'parameter "count": {MASK} is not an integer' in execution["result"]["error"]
    assert KV_SECRET not in shown.text and TOKEN not in shown.text
    alerts = await client.get("/api/v1/executions", params={"action": "hook.alert"})
    assert KV_SECRET not in alerts.text and TOKEN not in alerts.text


async def test_a_rule_whose_action_is_disabled_gets_the_enforcement_alone(home: Path) -> None:
    """As in StackStorm (`Action ... is disabled` raised before anything is created): no execution."""
    _home(home)
    write(home / "packs" / "hook" / "actions" / "deploy.yaml", """
        name: deploy
        runner_type: noop
        enabled: false
        parameters:
          count: {type: integer}
          message: {type: string}
          token: {type: string, secret: true}
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        rule = app.rules.rules["hook.render"]
        instance = await app.rules.dispatch_webhook("render", {"headers": {}, "headers_lower": {},
                                                               "body": {"service": "api"}})
        await app.rules.settle(timeout=20)
        enforcement = await app.rules.enforce(rule, instance)
        assert enforcement["status"] == "failed" and enforcement["execution_id"] is None
        assert "is disabled" in enforcement["failure_reason"]
        assert [e for e in await app.executions.list(limit=100) if e["action"] == "hook.deploy"] == []
    finally:
        await app.close()
