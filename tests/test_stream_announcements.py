"""`st2.announcement__<route>` on `/stream/v1/stream`: what StackStorm's `announcement` runner publishes
(`chatops.post_message`, `chatops.post_result`), and what st2's chatops (hubot-stackstorm) and other
stream clients listen for. The stream reads it from the announcement execution's stored result, so an
announcement a `squall worker` ran reaches `squall serve`'s stream as its executions do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.conftest import free_port, write
from tests.test_api import KEY, _home
from tests.test_st2_stream import _events, _read

UPDATE = "st2.execution__update"
#: hubot-stackstorm's event (route `chatops`, the runner's default).
CHATOPS = "st2.announcement__chatops"
#: A chat target for `chatops.post_message` that needs no configured route.
TARGET = {"adapter": "loopback", "channel": "#deploys"}


def _pack(home: Path) -> None:
    """`demo.tells`: a workflow whose one task posts a message."""
    pack = home / "packs" / "demo"
    write(pack / "actions" / "tells.yaml", """
        name: tells
        runner_type: orquesta
        entry_point: workflows/tells.yaml
    """)
    write(pack / "actions" / "workflows" / "tells.yaml", """
        version: 1.0
        tasks:
          tell:
            action: chatops.post_message
            input:
              message: from the flow
              adapter: loopback
              channel: "#flows"
    """)


@contextlib.asynccontextmanager
async def _served(squall: Squall, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """Squall's API over a real server (a stream needs one), and a client keyed with `key`."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(squall), host="127.0.0.1", port=port, log_level="warning",
                                           log_config=None))
    serving = asyncio.ensure_future(server.serve())
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"St2-Api-Key": key}, timeout=30)
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield client
    finally:
        await client.aclose()
        server.should_exit = True
        await serving


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


async def _until(lines: AsyncIterator[str], done: Any) -> list[tuple[str, dict[str, Any]]]:
    """The events of an open stream up to the first that `done(name, data)` accepts, included."""
    seen = [await asyncio.wait_for(_read(lines), 30)]
    while not done(*seen[-1]):
        seen.append(await asyncio.wait_for(_read(lines), 30))
    return seen


def _ended(execution_id: str) -> Any:
    """Accepts the final update of one execution."""
    return lambda name, data: (name == UPDATE and data.get("id") == execution_id
                               and data.get("status") in ("succeeded", "failed"))


async def test_a_stream_client_hears_an_announcement_as_stackstorm_publishes_it(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """hubot-stackstorm opens the stream with no filter (StackStorm's default events) and posts
    `payload` of each `st2.announcement__chatops`: the action's parameters, runner parameters left out,
    with the execution's `trace_context`; sent while the run goes on, before its final update."""
    squall, client = api
    async with client.stream("GET", "/stream/v1/stream") as answer:
        lines = answer.aiter_lines()
        record = await squall.executions.request("chatops.post_message", {
            **TARGET, "message": "deploy finished", "user": "ann", "extra": {"slack": {"color": "good"}},
            "context": {"id": "m1"}}, {"user": "t", "trace_context": {"trace_tag": "deploy-42"}})
        seen = await _until(lines, _ended(record["id"]))
    assert (await squall.executions.get(record["id"]))["status"] == "succeeded"
    names = [name for name, _ in seen]
    assert names.count(CHATOPS) == 1 and names.index(CHATOPS) < len(names) - 1  # before the final update
    assert dict(seen)[CHATOPS] == {
        "payload": {**TARGET, "message": "deploy finished", "user": "ann", "whisper": False, "thread": None,
                    "extra": {"slack": {"color": "good"}}, "context": {"id": "m1"}},
        "trace_context": {"trace_tag": "deploy-42"}}


async def test_the_events_filter_picks_announcements_by_route(api: tuple[Squall, httpx.AsyncClient]) -> None:
    squall, client = api
    async with (client.stream("GET", "/stream/v1/stream", params={"events": "st2.announcement__ops"}) as ops,
                client.stream("GET", "/stream/v1/stream", params={"events": "st2.announcement__*"}) as every):
        to_chatops = await squall.executions.request("chatops.post_message", {**TARGET, "message": "to chatops"})
        assert (await squall.executions.wait(to_chatops["id"], 30))["status"] == "succeeded"
        to_ops = await squall.executions.request("chatops.post_message", {**TARGET, "message": "to ops",
                                                                         "route": "ops"})
        # The chatops one ended first: the ops stream skipped it, and sent nothing of the executions.
        name, told = await asyncio.wait_for(_read(ops.aiter_lines()), 30)
        assert (name, told["payload"]["message"]) == ("st2.announcement__ops", "to ops")
        lines = every.aiter_lines()
        both = [await asyncio.wait_for(_read(lines), 30) for _ in range(2)]
    assert [(name, told["payload"]["message"]) for name, told in both] == [
        (CHATOPS, "to chatops"), ("st2.announcement__ops", "to ops")]
    assert (await squall.executions.get(to_ops["id"]))["result"]["posted"]["route"] == "ops"


async def test_an_announcement_names_no_action_so_a_narrowed_stream_carries_none(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """StackStorm's stream drops an event whose action or execution it cannot tell when `action_refs`
    or `execution_ids` are given: an announcement is one. A post that failed (no chat target) or an
    alias that turns results off announced nothing."""
    squall, client = api
    wanted = {"events": f"st2.announcement__*,{UPDATE}"}
    async with (client.stream("GET", "/stream/v1/stream",
                              params={**wanted, "action_refs": "chatops.post_message"}) as narrowed,
                client.stream("GET", "/stream/v1/stream", params=wanted) as whole):
        posted = await squall.executions.request("chatops.post_message", {**TARGET, "message": "hi"})
        seen = await _until(narrowed.aiter_lines(), _ended(posted["id"]))
        assert CHATOPS not in [name for name, _ in seen] and len(seen) >= 1
        lines = whole.aiter_lines()
        assert CHATOPS in [name for name, _ in await _until(lines, _ended(posted["id"]))]
        nowhere = await squall.executions.request("chatops.post_message", {"message": "to no one"})
        seen = await _until(lines, _ended(nowhere["id"]))
    assert seen[-1][1]["status"] == "failed" and CHATOPS not in [name for name, _ in seen]


async def test_a_tail_carries_its_workflow_task_s_announcement(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """With `end_execution_id` (and no `execution_ids`) StackStorm filters announcements only by
    name; Squall's tail follows that execution's tree, so a task's announcement comes with it."""
    squall, client = api
    flow = await squall.executions.request("demo.tells", {}, {"user": "t"})
    tail = await client.get("/stream/v1/stream", params={
        "events": f"st2.announcement__*,{UPDATE}", "end_execution_id": flow["id"], "end_event": UPDATE})
    events = _events(tail.text)
    assert [told["payload"]["message"] for name, told in events if name == CHATOPS] == ["from the flow"]
    assert events[-1][1]["id"] == flow["id"] and events[-1][1]["status"] == "succeeded"
    # Narrowed to the workflow's id, as StackStorm: no announcement (it names no execution).
    narrowed = await client.get("/stream/v1/stream", params={
        "events": f"st2.announcement__*,{UPDATE}", "execution_ids": flow["id"], "end_execution_id": flow["id"],
        "end_event": UPDATE})
    assert CHATOPS not in [name for name, _ in _events(narrowed.text)]


async def test_post_result_announces_the_message_it_formatted(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """StackStorm's `chatops.post_result` formats the result and hands the text to `post_message`, whose
    announcement hubot posts; Squall's formats it in the chat side: its payload carries that text."""
    squall, client = api
    greeted = await squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t"})
    await squall.executions.wait(greeted["id"], 30)
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        posting = await squall.executions.request("chatops.post_result", {**TARGET, "execution_id": greeted["id"]})
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert (await squall.executions.get(posting["id"]))["status"] == "succeeded"
    assert name == CHATOPS and told["payload"]["execution_id"] == greeted["id"]
    assert "hello ann" in told["payload"]["message"] and told["payload"]["channel"] == TARGET["channel"]


@pytest.mark.postgres
@pytest.mark.slow
async def test_an_announcement_a_worker_ran_reaches_serve_s_stream(home: Path, postgres_url: str) -> None:
    """Under scale-out a `squall worker` runs the announcement: no event of serve's process tells of it,
    the stream finds it in the database, as it finds the worker's executions."""
    from tests.test_scaleout import SCRAPE_KEY, Cluster
    from tests.test_scaleout import _home as scaleout_home

    cluster = Cluster(scaleout_home(home, postgres_url))
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        async with (_served(squall, SCRAPE_KEY) as client,
                    client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer):
            record = await squall.executions.request("chatops.post_message", {**TARGET, "message": "from a worker"})
            cluster.worker()
            name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 60)
        ran = cluster.execution(record["id"])
        assert ran["status"] == "succeeded" and ran["runner_info"].get("job_id") is not None  # a worker's job
        assert (name, told["payload"]["message"]) == (CHATOPS, "from a worker")
    finally:
        await squall.close()
        cluster.close()
