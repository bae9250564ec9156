"""err-stackstorm (and hubot) relaying a command without `source_context`: the shipped notify rules render
`context: "{{trigger.data.source_context}}"` to "None" for `chatops.post_result`'s optional `object`
parameter. Squall refused it (`parameter "context": 'None' is not an object`), so nothing was announced and
err-stackstorm never got its result; StackStorm's `_cast_object` reads it as null, and the result is
announced with no context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.app import Squall
from engine.config import load_config
from tests.test_api import KEY, _home
from tests.test_hubot_results import CHATOPS, _pack, _post_results
from tests.test_st2_stream import _read
from tests.test_stream_announcements import _served


@pytest.fixture
async def api(home: Path) -> AsyncIterator[tuple[Squall, httpx.AsyncClient]]:
    _home(home)
    _pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        async with _served(squall, KEY) as client:
            yield squall, client
    finally:
        await squall.close()


@pytest.mark.parametrize(("route", "event"), [("errbot", "st2.announcement__errbot"), ("hubot", CHATOPS)])
async def test_a_command_relayed_without_source_context_is_announced(api: tuple[Squall, httpx.AsyncClient],
                                                                    route: str, event: str) -> None:
    """err-stackstorm's `match_and_execute` body, word for word (it sends no `source_context`), through the
    shipped `chatops.notify-errbot` rule (and hubot's, through `chatops.notify`)."""
    squall, client = api
    body = {"command": "shout fay", "user": "alice", "notification_route": route, "source_channel": "#ops",
            "notification_channel": "#ops"}
    async with client.stream("GET", "/stream/v1/stream", params={"events": event}) as answer:
        acked = await client.post("/api/v1/aliasexecution/match_and_execute", json=body)
        assert acked.status_code in (200, 201), acked.text
        execution_id = acked.json()["results"][0]["execution"]["id"]
        [posted] = await _post_results(squall, 1)
        assert posted["status"] == "succeeded", posted["result"]
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert name == event
    payload = told["payload"]
    assert payload["execution_id"] == execution_id
    assert (payload["channel"], payload["user"]) == ("#ops", "alice")
    assert not payload.get("context")  # none was given, and none is made up
    assert "hello fay" in payload["message"]
    assert posted["parameters"].get("context") is None
