"""A command's `env` holding credentials (`st2 run -e` sends the caller's `ST2_API_KEY`; a pack passes
`DB_PASSWORD`) is masked wherever the execution is shown, as `headers` are (`engine.parameters`
`MASKED_MAPPINGS`), while the command gets the real values, and a re-run carries them again. Found by running
StackStorm's `st2` client: another user's `st2 execution get` read the caller's API key in clear."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.parameters import MASK, mask_value, restore_masked
from tests.test_api import KEY, _home

API_KEY = "alice-api-key-0123456789"
PASSWORD = "hunter2-db-password"
ENV = {"ST2_API_KEY": API_KEY, "DB_PASSWORD": PASSWORD, "PGPASSWORD": PASSWORD, "GREETING": "hello there"}


def test_env_entries_named_as_credentials_are_masked_and_restored_by_the_one_rule() -> None:
    shown = mask_value("env", ENV)
    assert shown == {"ST2_API_KEY": MASK, "DB_PASSWORD": MASK, "PGPASSWORD": MASK, "GREETING": "hello there"}
    edited = {**shown, "GREETING": "hi"}
    assert restore_masked({"env": edited}, {"env": ENV})["env"] == {**ENV, "GREETING": "hi"}


async def test_the_command_gets_the_real_env_and_nothing_shows_it(home: Path) -> None:
    squall = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        record = await squall.executions.request(
            "core.local", {"cmd": 'echo "key=$ST2_API_KEY"; echo "${#DB_PASSWORD} $GREETING"', "env": ENV})
        done = await squall.executions.wait(record["id"], timeout=30)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                     headers={"St2-Api-Key": KEY}) as client:
            fetched = (await client.get(f"/api/v1/executions/{record['id']}")).json()
        again = await squall.executions.rerun(record["id"], None, {"user": "bob"})
        rerun = await squall.executions.wait(again["id"], timeout=30)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert done["parameters"]["env"] == {"ST2_API_KEY": MASK, "DB_PASSWORD": MASK, "PGPASSWORD": MASK,
                                         "GREETING": "hello there"}
    key_line, length_line = done["result"]["stdout"].splitlines()
    assert key_line == f"key={MASK}"  # the command had it; its output is scrubbed of it
    assert length_line == f"{len(PASSWORD)} hello there"
    for shown in (json.dumps(done), json.dumps(fetched), json.dumps(rerun)):
        assert API_KEY not in shown and PASSWORD not in shown
    assert fetched["parameters"]["env"]["ST2_API_KEY"] == MASK
    assert rerun["status"] == "succeeded"  # the re-run carried the real values again
    assert rerun["result"]["stdout"].splitlines()[1] == f"{len(PASSWORD)} hello there"
