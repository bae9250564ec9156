"""Custom webhooks whose rules cannot take them: the 404 says which rule and why."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.conftest import write
from tests.test_api import KEY, _home


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    """The API tests' home, plus a hook whose only rule does not say `enabled: true`."""
    _home(home)
    write(home / "packs" / "demo" / "rules" / "on_hello.yaml", """
        name: on_hello
        pack: demo
        trigger: {type: core.st2.webhook, parameters: {url: hello}}
        action: {ref: core.noop}
    """)
    write(home / "packs" / "demo" / "rules" / "on_later.yaml", """
        name: on_later
        pack: demo
        enabled: true
        trigger: {type: core.st2.webhook, parameters: {url: later}}
        action: {ref: elsewhere.go}
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


async def _post(squall: Squall, hook: str, key: str | None = KEY) -> httpx.Response:
    headers = {"St2-Api-Key": key} if key else {}
    transport = httpx.ASGITransport(app=create_api(squall))
    async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers=headers) as client:
        return await client.post(f"/api/v1/webhooks/{hook}", json={"a": 1})


async def test_a_hook_whose_only_rule_is_disabled_says_so_in_its_404_and_the_log(squall: Squall, caplog) -> None:
    """StackStorm's 404 stays; its faultstring and the log name the disabled rule and the fix."""
    with caplog.at_level(logging.WARNING, logger="bot.http.webhooks"):
        answer = await _post(squall, "hello")
    assert answer.status_code == 404
    said = ("Webhook hello not registered: rule demo.on_hello uses it but is disabled (enabled: false; rules are "
            "disabled unless they say enabled: true)")
    assert answer.json()["faultstring"] == said
    assert said in caplog.text
    assert await squall.db(squall.store.trigger_instance_list, "core.st2.webhook") == []


async def test_a_hook_whose_rule_waits_for_a_pack_says_which(squall: Squall) -> None:
    answer = await _post(squall, "later")
    assert answer.status_code == 404
    assert answer.json()["faultstring"] == ('Webhook later not registered: rule demo.on_later uses it but waits for '
                                            'action "elsewhere.go" (pack "elsewhere" is not loaded)')


async def test_a_caller_without_a_key_learns_nothing_of_a_disabled_hook_s_rule(squall: Squall) -> None:
    answer = await _post(squall, "hello", key=None)
    assert answer.status_code == 401 and "on_hello" not in answer.text


async def test_a_hook_no_rule_names_keeps_stackstorm_s_plain_404(squall: Squall) -> None:
    answer = await _post(squall, "nobody/uses/this")
    assert answer.status_code == 404 and answer.json()["faultstring"] == "Webhook nobody/uses/this not registered"
