"""A live stream asked for once its session has ended: the `end` event saying `signed-out`, which the page
shows (static/live.js; in a real browser: test_web_browser's
`test_a_live_page_says_when_its_session_ended`), not the login page's redirect, which an EventSource cannot
read and htmx tried again for ever, the page frozen without a word.

The app is test_web_auth's (test_api's config and demo pack)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_web_auth import Web, started_web


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


async def test_a_stream_opened_after_its_session_ended_says_signed_out(web: Web) -> None:
    """htmx opens a stream again after a proxy's 502 or a restart; once the session ended (a logout in another
    tab) that stream is `end: signed-out` alone, whatever it names: nothing of an execution is looked at."""
    client, csrf = await web.signed_in("vic", "viewer")
    record = await web.squall.executions.request("core.local", {"cmd": "sleep 30"}, {"user": "t", "source": "api"})
    assert (await client.post("/logout", data={"csrf_token": csrf})).status_code == 303
    for path in (f"/live/executions/{record['id']}", f"/live/executions/{'0' * 24}", "/live/executions"):
        answer = await client.get(path, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream"), path
        assert answer.text.strip() == "event: end\r\ndata: signed-out", (path, answer.text)
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    await web.squall.executions.cancel(record["id"])
    await web.squall.executions.wait(record["id"], 30)
