"""`st2.announcement__<route>` on `/stream/v1/stream`: what StackStorm's `announcement` runner publishes
(`chatops.post_message`, `chatops.post_result`), and what st2's chatops (hubot-stackstorm) and other
stream clients listen for. The stream reads it from the announcement execution's stored result, so an
announcement a `squall worker` ran reaches `squall serve`'s stream as its executions do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from tests.conftest import free_port, write
from tests.test_api import KEY, _home
from tests.test_chat import settle
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
    write(pack / "actions" / "unflagged.yaml", """
        name: unflagged
        runner_type: announcement
        parameters:
          message: {type: string, required: true}
          channel: {type: string}
          experimental: {default: false}
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
    or `execution_ids` are given: an announcement is one. A post that failed (no channel at all, which
    StackStorm's post_message requires) or an alias that turns results off announced nothing."""
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


def _stored(squall: Squall, adapter: str) -> list[dict[str, Any]]:
    """The outbox rows waiting for `adapter`."""
    return squall.store.outbox_pending([adapter])


def _untargeted(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The log lines saying Squall's chat had no target for an announcement."""
    return [record for record in caplog.records
            if record.name == "bot.chat.announce" and "not posted by Squall's chat" in record.getMessage()]


async def test_a_post_to_a_channel_no_adapter_holds_succeeds_and_is_announced(
        api: tuple[Squall, httpx.AsyncClient], caplog: pytest.LogCaptureFixture) -> None:
    """hubot-stackstorm in front of a Squall with no chat adapter (or a channel of a platform Squall is
    not connected to): StackStorm's runner always succeeds and publishes; hubot posts the payload. The
    run succeeds with StackStorm's result, the event goes out, nothing waits in the outbox for an
    adapter no process sends through, and the log says so once per channel."""
    squall, client = api
    caplog.set_level(logging.INFO, logger="bot.chat.announce")
    hubot_style = {"message": "deploy finished", "channel": "#general"}  # StackStorm's parameters: no adapter
    async with client.stream("GET", "/stream/v1/stream") as answer:
        lines = answer.aiter_lines()
        record = await squall.executions.request("chatops.post_message", hubot_style,
                                                 {"user": "t", "trace_context": {"trace_tag": "d-1"}})
        seen = await _until(lines, _ended(record["id"]))
        again = await squall.executions.request("chatops.post_message", {**hubot_style, "message": "again"})
        seen_again = await _until(lines, _ended(again["id"]))
        elsewhere = await squall.executions.request("chatops.post_message", {
            "adapter": "slack", "channel": "#general", "message": "to a platform Squall is not on"})
        seen_elsewhere = await _until(lines, _ended(elsewhere["id"]))
    done = await squall.executions.get(record["id"])
    payload = {**hubot_style, "user": None, "whisper": False, "thread": None, "extra": None, "context": None,
               "adapter": None}
    assert done["status"] == "succeeded", done["result"]
    assert {k: v for k, v in done["result"].items() if k != "posted"} == {"output": payload, **payload}
    assert [told for name, told in seen if name == CHATOPS] == [{"payload": payload,
                                                                 "trace_context": {"trace_tag": "d-1"}}]
    assert [told["payload"]["message"] for name, told in seen_again if name == CHATOPS] == ["again"]
    assert seen_elsewhere[-1][1]["status"] == "succeeded"
    assert [told["payload"]["adapter"] for name, told in seen_elsewhere if name == CHATOPS] == ["slack"]
    assert _stored(squall, "slack") == []
    assert len(_untargeted(caplog)) == 2  # #general once (not per post), slack's #general once
    assert all(r.levelno == logging.INFO for r in _untargeted(caplog))


async def test_post_result_to_a_channel_no_adapter_holds_announces_its_text(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """StackStorm's `chatops.notify` rule gives post_result the command's channel and no adapter: the
    formatted result reaches the stream for hubot; an unknown execution stays a failure."""
    squall, client = api
    greeted = await squall.executions.request("demo.greet", {"who": "bo"}, {"user": "t"})
    await squall.executions.wait(greeted["id"], 30)
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        posting = await squall.executions.request("chatops.post_result", {"channel": "#general",
                                                                          "execution_id": greeted["id"]})
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert (await squall.executions.wait(posting["id"], 30))["status"] == "succeeded"
    assert name == CHATOPS and "hello bo" in told["payload"]["message"]
    unknown = await squall.executions.request("chatops.post_result", {"channel": "#general",
                                                                      "execution_id": "f" * 24})
    failed = await squall.executions.wait(unknown["id"], 30)
    assert failed["status"] == "failed" and "f" * 24 in failed["result"]["error"]


async def test_an_announcement_without_the_experimental_flag_fails_before_it_runs(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """StackStorm's runner refuses, before running, an action whose `experimental` is not true."""
    squall, _client = api
    record = await squall.executions.request("demo.unflagged", {"message": "m", "channel": "#general"})
    done = await squall.executions.wait(record["id"], 30)
    assert done["status"] == "failed"
    assert "experimental" in done["result"]["error"] and "demo.unflagged" in done["result"]["error"]
    assert "output" not in done["result"]


async def test_a_post_to_a_channel_squall_s_chat_holds_is_delivered_once_and_announced_once(home: Path) -> None:
    _home(home)
    _pack(home)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        async with (_served(squall, KEY) as client, client.stream("GET", "/stream/v1/stream") as answer):
            record = await squall.executions.request("chatops.post_message", {**TARGET, "message": "shipped"})
            seen = await _until(answer.aiter_lines(), _ended(record["id"]))
        await settle(squall, squall.chat)
    finally:
        await squall.chat.stop()
        await squall.close()
    assert seen[-1][1]["status"] == "succeeded"
    assert [told["payload"]["message"] for name, told in seen if name == CHATOPS] == ["shipped"]
    assert loopback.texts("#deploys") == ["shipped"]


async def test_an_adapter_configured_but_not_connected_here_gets_the_post_through_the_outbox(
        home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A `squall worker` builds its adapters and never connects them; a CLI run holds none. Whether Squall's
    chat has a target is read from the configured adapters: the post is stored for `squall serve` to send."""
    _home(home, "adapters: {console: {enabled: true, user: t}}")
    _pack(home)
    caplog.set_level(logging.INFO, logger="bot.chat.announce")
    cli = await Squall.start(load_config(home / "config.yml"))  # no adapter in this process
    try:
        record = await cli.executions.request("chatops.post_message", {"adapter": "console", "channel": "console",
                                                                       "message": "from the cli"})
        assert (await cli.executions.wait(record["id"], 30))["status"] == "succeeded"
        assert [row["payload"]["text"] for row in _stored(cli, "console")] == ["from the cli"]
    finally:
        await cli.close()
    worker_side = LoopbackAdapter()
    worker = await Squall.start(load_config(home / "config.yml"), adapters=[worker_side])  # built, not started
    try:
        record = await worker.executions.request("chatops.post_message", {**TARGET, "message": "from a worker"})
        assert (await worker.executions.wait(record["id"], 30))["status"] == "succeeded"
        assert [row["payload"]["text"] for row in _stored(worker, "loopback")] == ["from a worker"]
        assert worker_side.posted == []
    finally:
        await worker.close()
    assert _untargeted(caplog) == []


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_worker_stores_the_post_for_an_adapter_it_built_but_never_connects(home: Path,
                                                                                   postgres_url: str) -> None:
    """A `squall worker` builds the configured adapters and connects none: its post to one of them is
    stored in the outbox for the serve node holding that adapter to send, and is announced as well."""
    from tests.test_scaleout import SCRAPE_KEY, Cluster
    from tests.test_scaleout import _home as scaleout_home

    config = scaleout_home(home, postgres_url) / "config.yml"
    text = config.read_text()
    assert "console:\n    enabled: false" in text
    config.write_text(text.replace("console:\n    enabled: false", "console:\n    enabled: true"))
    cluster = Cluster(home)
    squall = await Squall.start(load_config(config))  # serve's side here holds no adapter: it sends nothing
    try:
        async with (_served(squall, SCRAPE_KEY) as client,
                    client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer):
            record = await squall.executions.request("chatops.post_message", {
                "adapter": "console", "channel": "console", "message": "from a worker to the console"})
            cluster.worker()
            name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 60)
        ran = cluster.execution(record["id"])
        assert ran["status"] == "succeeded" and ran["runner_info"].get("job_id") is not None  # a worker's job
        assert (name, told["payload"]["message"]) == (CHATOPS, "from a worker to the console")
        stored = _stored(squall, "console")
        assert [row["payload"]["text"] for row in stored] == ["from a worker to the console"]
        assert ran["result"]["posted"]["outbox_id"] == stored[0]["id"]
    finally:
        await squall.close()
        cluster.close()
