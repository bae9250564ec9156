"""StackStorm's event stream at `/stream/v1/stream`, as st2client's `StreamManager.listen` reads it
(`st2 execution tail`, `st2 run --tail`): `event:` and `data:` lines; an execution's updates and
output chunks, a workflow's tasks before the workflow's end; filtered by `events`, `action_refs` and
`execution_ids`; ended by `end_event` of `end_execution_id`; pings while quiet; gone with its client.
The real `st2` client drives it in `tests/test_st2_cli.py`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api, key_auth
from bot.http import stream as stream_module
from engine.config import load_config
from engine.events import EXECUTION_FINISHED
from engine.parameters import MASK
from engine.storage import Store, auth_tokens, utcnow
from engine.tokens import hash_token
from tests.conftest import free_port, write
from tests.test_api import KEY, _home

TAIL = {"events": "st2.execution__update,st2.execution.output__create", "end_event": "st2.execution__update"}


def _pack(home: Path) -> None:
    pack = home / "packs" / "demo"
    write(pack / "actions" / "gated.yaml", """
        name: gated
        runner_type: local-shell-cmd
        parameters:
          gate: {type: string, required: true}
          cmd: {default: 'echo first; echo oops >&2; while [ ! -e {{gate}} ]; do sleep 0.05; done; echo last',
                immutable: true}
    """)
    write(pack / "actions" / "tell.yaml", """
        name: tell
        runner_type: local-shell-cmd
        parameters:
          password: {type: string, secret: true, required: true}
          cmd: {default: 'echo "pw={{password}}"; echo "again {{password}}" >&2', immutable: true}
    """)
    write(pack / "actions" / "flow.yaml", """
        name: flow
        runner_type: orquesta
        entry_point: workflows/flow.yaml
    """)
    write(pack / "actions" / "workflows" / "flow.yaml", """
        version: 1.0
        tasks:
          one:
            action: core.local cmd="echo from one"
            next:
              - do: two
          two:
            action: core.local cmd="echo from two >&2"
    """)


@dataclass
class Api:
    squall: Squall
    client: httpx.AsyncClient
    url: str


@pytest.fixture
async def api(home: Path) -> AsyncIterator[Api]:
    """Squall's API over a real server (a stream that is still open means something), keyed."""
    _home(home)
    _pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    port = free_port()
    # `log_config=None`, as `ApiServer`: uvicorn's own would stay configured for every later test.
    server = uvicorn.Server(uvicorn.Config(create_api(squall), host="127.0.0.1", port=port, log_level="warning",
                                           log_config=None))
    serving = asyncio.ensure_future(server.serve())
    url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(base_url=url, headers={"St2-Api-Key": KEY}, timeout=30)
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        yield Api(squall, client, url)
    finally:
        await client.aclose()
        server.should_exit = True
        await serving
        await squall.close()


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of a whole stream's text."""
    found, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: ") and name:
            found.append((name, json.loads(line[len("data: "):])))
    return found


async def _read(lines: AsyncIterator[str]) -> tuple[str, dict[str, Any]]:
    """The next event of an open stream."""
    name = None
    async for line in lines:
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: ") and name:
            return name, json.loads(line[len("data: "):])
    raise AssertionError("the stream ended")


def _shown(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """What st2 tail makes of the events: (id, status) of updates, (id, output_type, data) of chunks."""
    return [(e["id"], "update", e["status"]) if name == "st2.execution__update" else
            (e["execution_id"], e["output_type"], e["data"]) for name, e in events]


async def test_a_tail_shows_a_running_execution_s_output_as_it_comes_and_ends_with_it(api: Api,
                                                                                      tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    record = await api.squall.executions.request("demo.gated", {"gate": str(gate)}, {"user": "t"})
    execution_id = record["id"]
    params = {**TAIL, "end_execution_id": execution_id}
    async with api.client.stream("GET", "/stream/v1/stream", params=params) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.aiter_lines()
        seen: list[tuple[str, dict[str, Any]]] = []
        while {("stdout", "first\n"), ("stderr", "oops\n")} - {(e.get("output_type"), e.get("data")) for _, e in seen}:
            seen.append(await asyncio.wait_for(_read(lines), 30))
        # Both lines are here while the action still runs (it waits for the gate).
        assert (await api.squall.executions.get(execution_id))["status"] == "running"
        gate.touch()
        rest = [line async for line in lines]
    seen += _events("\n".join(rest))
    shown = _shown(seen)
    assert shown[0][1:] in (("update", "running"), ("update", "scheduled"), ("update", "requested"))
    assert ("update", "running") in [s[1:] for s in shown]
    assert [s for s in shown if s[1] != "update"] == [(execution_id, "stdout", "first\n"),
                                                      (execution_id, "stderr", "oops\n"),
                                                      (execution_id, "stdout", "last\n")]
    assert shown[-1] == (execution_id, "update", "succeeded")  # last: the stream ended after it
    chunk = next(e for name, e in seen if name == "st2.execution.output__create")
    assert set(chunk) == {"execution_id", "action_ref", "runner_ref", "timestamp", "output_type", "data"}
    assert chunk["action_ref"] == "demo.gated" and chunk["runner_ref"] == "local-shell-cmd"
    end = seen[-1][1]  # the execution as GET /executions/{id} gives it
    assert end == (await api.client.get(f"/api/v1/executions/{execution_id}")).json()


async def test_a_tail_of_an_ended_execution_gives_its_output_then_its_end(api: Api) -> None:
    record = await api.squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t"})
    await api.squall.executions.wait(record["id"], 30)
    answer = await api.client.get("/stream/v1/stream", params={**TAIL, "end_execution_id": record["id"][:10]})
    assert _shown(_events(answer.text)) == [(record["id"], "update", "running"),
                                            (record["id"], "stdout", "hello ann\n"),
                                            (record["id"], "stderr", "oops\n"),
                                            (record["id"], "update", "succeeded")]
    missing = await api.client.get("/stream/v1/stream", params={**TAIL, "end_execution_id": "0" * 24})
    assert missing.status_code == 404 and "not found" in missing.text
    refused = await api.client.get("/stream/v1/stream", params=TAIL, headers={"St2-Api-Key": "nope"})
    assert refused.status_code == 401


async def test_a_task_first_seen_before_it_ran_still_shows_as_running_before_its_end(api: Api) -> None:
    # A workflow's task seen `scheduled` at one look and `succeeded` at the next (it ran in between)
    # went straight to its end: `st2 run --tail` never printed "has started" for it.
    record = await api.squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t"})
    await api.squall.executions.wait(record["id"], 30)
    ended = await api.squall.db(api.squall.store.get_execution, record["id"])
    follower = stream_module.Follower(api.squall, stream_module.Wanted(events=("st2.execution__update",)))
    told = [json.loads(e["data"])["status"] async for e in follower._node({**ended, "status": "scheduled"})]
    told += [json.loads(e["data"])["status"] async for e in follower._node(ended)]
    assert told == ["scheduled", "running", "succeeded"]


async def test_a_task_read_before_it_ran_is_told_running_before_the_output_it_printed_since(api: Api) -> None:
    # Its record read `scheduled`, then its output read: the output was printed after that read, as it ran.
    # `st2 run --tail` printed a task's line before "Child execution (task=...) has started" now and then.
    record = await api.squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t"})
    await api.squall.executions.wait(record["id"], 30)
    ended = await api.squall.db(api.squall.store.get_execution, record["id"])
    follower = stream_module.Follower(api.squall, stream_module.Wanted(
        events=("st2.execution__update", "st2.execution.output__create")))
    told = [(e["event"], json.loads(e["data"]).get("status")) async for e in
            follower._node({**ended, "status": "scheduled", "log": ended["log"][:1]})]
    assert told[:2] == [("st2.execution__update", "scheduled"), ("st2.execution__update", "running")]
    assert [event for event, _ in told[2:]] == ["st2.execution.output__create"] * (len(told) - 2) and len(told) > 2
    told = [json.loads(e["data"])["status"] async for e in follower._node(ended)]
    assert told == ["succeeded"]  # told running once, then its end


async def test_one_look_tells_what_happened_in_the_order_the_records_say(api: Api, tmp_path: Path) -> None:
    """A look that finds a known execution ended and a newer one requested after its end tells the end
    first; one requested before that end is told first. Driven look by look, so neither order is left
    to when the stream happens to wake."""
    squall = api.squall
    follower = stream_module.Follower(squall, stream_module.Wanted(events=("st2.execution__create",
                                                                           "st2.execution__update")))
    await follower.start_everything()

    async def look() -> list[tuple[str, str]]:
        return [(event["event"].rpartition("__")[2], json.loads(event["data"])["id"])
                async for event in follower.look()]

    async def ran(gate: Path) -> str:
        record = await squall.executions.request("demo.gated", {"gate": str(gate)}, {"user": "t"})
        while (await squall.executions.get(record["id"]))["status"] != "running":
            await asyncio.sleep(0.02)
        return record["id"]

    async def ended(execution_id: str, gate: Path) -> None:
        gate.touch()
        assert (await squall.executions.wait(execution_id, 30))["status"] == "succeeded"

    first = await ran(tmp_path / "first")
    assert ("create", first) in await look()
    await ended(first, tmp_path / "first")
    later = await squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t"})
    await squall.executions.wait(later["id"], 30)
    told = await look()
    assert told.index(("update", first)) < told.index(("create", later["id"])), told

    second = await ran(tmp_path / "second")
    assert ("create", second) in await look()
    earlier = await squall.executions.request("demo.greet", {"who": "bob"}, {"user": "t"})
    await squall.executions.wait(earlier["id"], 30)
    await ended(second, tmp_path / "second")
    told = await look()
    assert told.index(("create", earlier["id"])) < told.index(("update", second)), told


async def test_a_login_token_in_the_query_opens_the_stream(api: Api) -> None:
    """After `st2 login`, st2client's stream reader sends the token as query parameter `x-auth-token` (as
    StackStorm takes it), not as a header: the tail was a 401."""
    from bot.apikeys import create_key

    key, _ = await api.squall.db(create_key, api.squall.store, "ann")
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as anon:
        login = await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": key}, json={})
        assert login.status_code == 201
        record = await api.squall.executions.request("demo.greet", {"who": "ann"}, {"user": "t"})
        await api.squall.executions.wait(record["id"], 30)
        tail = {**TAIL, "end_execution_id": record["id"]}
        answer = await anon.get("/stream/v1/stream", params={**tail, "x-auth-token": login.json()["token"]})
        assert answer.status_code == 200 and _shown(_events(answer.text))[-1] == (record["id"], "update", "succeeded")
        forged = await anon.get("/stream/v1/stream", params={**tail, "x-auth-token": "not-a-token"})
        assert forged.status_code == 401


async def test_a_workflow_s_tail_shows_each_task_before_its_output_and_ends_with_the_workflow(api: Api) -> None:
    record = await api.squall.executions.request("demo.flow", {}, {"user": "t"})
    answer = await api.client.get("/stream/v1/stream", params={**TAIL, "end_execution_id": record["id"]})
    events = _events(answer.text)
    tasks = {e["context"]["orquesta"]["task_name"]: e["id"] for name, e in events
             if name == "st2.execution__update" and e["id"] != record["id"]}
    assert set(tasks) == {"one", "two"}
    shown = _shown(events)
    one, two = tasks["one"], tasks["two"]
    for task, line in ((one, (one, "stdout", "from one\n")), (two, (two, "stderr", "from two\n"))):
        # st2 knows the task (its parent is the workflow) before its output, and sees it finish after.
        assert shown.index((task, "update", "running")) < shown.index(line) < shown.index((task, "update", "succeeded"))
    assert shown[-1] == (record["id"], "update", "succeeded")
    assert all(e["context"]["parent"]["execution_id"] == record["id"] for name, e in events
               if name == "st2.execution__update" and e["id"] in (one, two))


async def test_the_stream_masks_secrets_as_the_output_route_does(api: Api) -> None:
    record = await api.squall.executions.request("demo.tell", {"password": "hunter2-xyz"}, {"user": "t"})
    answer = await api.client.get("/stream/v1/stream", params={**TAIL, "end_execution_id": record["id"]})
    assert "hunter2-xyz" not in answer.text
    chunks = [e["data"] for name, e in _events(answer.text) if name == "st2.execution.output__create"]
    stored = (await api.client.get(f"/api/v1/executions/{record['id']}/output")).text
    assert sorted(chunks) == sorted(stored.splitlines(keepends=True)) == sorted([f"pw={MASK}\n", f"again {MASK}\n"])


async def test_events_are_filtered_by_what_was_asked(api: Api) -> None:
    record = await api.squall.executions.request("demo.greet", {"who": "bo"}, {"user": "t"})
    await api.squall.executions.wait(record["id"], 30)
    base = {"end_execution_id": record["id"], "end_event": "st2.execution__update"}
    output_only = await api.client.get("/stream/v1/stream",
                                       params={**base, "events": "st2.execution.output__create"})
    assert [e["data"] for _, e in _events(output_only.text)] == ["hello bo\n", "oops\n"]  # and it ended
    by_glob = await api.client.get("/stream/v1/stream", params={**base, "events": "st2.execution__*"})
    assert [name for name, _ in _events(by_glob.text)] == ["st2.execution__update"] * 2
    other_action = await api.client.get("/stream/v1/stream", params={**TAIL, **base, "action_refs": "demo.slow"})
    assert _events(other_action.text) == []
    stderr_of = await api.client.get("/stream/v1/stream", params={
        **base, "events": "st2.execution.output__create", "execution_ids": record["id"], "action_refs": "demo.greet"})
    assert len(_events(stderr_of.text)) == 2
    # StackStorm's default events carry no output.
    default = await api.client.get("/stream/v1/stream", params=base)
    assert {name for name, _ in _events(default.text)} == {"st2.execution__update"}


async def test_the_whole_stream_tells_of_new_executions_pings_and_ends_with_its_client(
        api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without an execution to end on: every execution from the moment it opened, a ping while nothing
    happens, and the stream's reading ends when the client goes away."""
    monkeypatch.setattr(stream_module, "PING_SECONDS", 0.2)
    events = api.squall.executions.events
    listening = len(events._handlers.get(EXECUTION_FINISHED, []))
    before = await api.squall.executions.request("demo.greet", {"who": "old"}, {"user": "t"})
    await api.squall.executions.wait(before["id"], 30)
    params = {"events": "st2.execution__create,st2.execution__update,st2.execution.output__create"}
    async with api.client.stream("GET", "/stream/v1/stream", params=params) as answer:
        lines = answer.aiter_lines()
        async for line in lines:  # nothing happens: a ping (a comment line) keeps the stream open
            if line.startswith(":"):
                break
        gate = tmp_path / "gate"
        record = await api.squall.executions.request("demo.gated", {"gate": str(gate)}, {"user": "t"})
        seen: list[tuple[str, dict[str, Any]]] = []
        while ("stdout", "first\n") not in {(e.get("output_type"), e.get("data")) for _, e in seen}:
            seen.append(await asyncio.wait_for(_read(lines), 30))
        gate.touch()
        while not any(name == "st2.execution__update" and e["id"] == record["id"] and e["status"] == "succeeded"
                      for name, e in seen):
            seen.append(await asyncio.wait_for(_read(lines), 30))
        assert seen[0][0] == "st2.execution__create" and seen[0][1]["id"] == record["id"]
        assert before["id"] not in {e.get("id", e.get("execution_id")) for _, e in seen}  # from the opening on
        assert len(events._handlers.get(EXECUTION_FINISHED, [])) == listening + 1
    for _ in range(200):  # the client went away: the stream stops reading and listening
        if len(events._handlers.get(EXECUTION_FINISHED, [])) == listening:
            break
        await asyncio.sleep(0.05)
    assert len(events._handlers.get(EXECUTION_FINISHED, [])) == listening


#: Every execution's news (the whole stream, as a client with no `end_execution_id` reads it).
WHOLE = {"events": "st2.execution__create,st2.execution__update,st2.execution.output__create"}


async def _rest(lines: AsyncIterator[str]) -> list[tuple[str, dict[str, Any]]]:
    """The events of an open stream until it ends (the server closes it)."""
    return _events("\n".join([line async for line in lines]))


def _told_of(events: list[tuple[str, dict[str, Any]]]) -> set[str]:
    """The executions the events are about."""
    return {e.get("id", e.get("execution_id")) for _, e in events}


async def test_a_stream_ends_once_the_stored_key_that_opened_it_is_deleted(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key is checked when the stream opens and again every `RECHECK_SECONDS` (here: before every
    event): once `squall apikey delete` removed it, the stream ends and tells nothing made after. A key
    from the config file cannot be revoked without a restart: its stream goes on."""
    monkeypatch.setattr(key_auth, "RECHECK_SECONDS", 0.0)
    key, stored = await api.squall.db(create_key, api.squall.store, "carol")
    async with (httpx.AsyncClient(base_url=api.url, timeout=30) as carol,
                carol.stream("GET", "/stream/v1/stream", params=WHOLE, headers={"St2-Api-Key": key}) as revoked,
                api.client.stream("GET", "/stream/v1/stream", params=WHOLE) as configured):
        revoked_lines, configured_lines = revoked.aiter_lines(), configured.aiter_lines()
        before = await api.squall.executions.request("demo.greet", {"who": "before"}, {"user": "t"})
        name, told = await asyncio.wait_for(_read(revoked_lines), 30)
        assert (name, told["id"]) == ("st2.execution__create", before["id"])  # the key's stream works
        assert await api.squall.db(api.squall.store.api_key_delete, stored["id"])
        after = await api.squall.executions.request("demo.greet", {"who": "after"}, {"user": "t"})
        rest = await asyncio.wait_for(_rest(revoked_lines), 30)  # it ends by itself
        assert after["id"] not in _told_of(rest)
        seen = [await asyncio.wait_for(_read(configured_lines), 30)]
        while after["id"] not in _told_of(seen):
            seen.append(await asyncio.wait_for(_read(configured_lines), 30))


def _expire(store: Store, token: str) -> None:
    """A login token's expiry, come now."""
    with store.engine.begin() as conn:
        conn.execute(auth_tokens.update().where(auth_tokens.c.token_hash == hash_token(token))
                     .values(expires_at=utcnow()))


async def test_a_stream_opened_with_a_login_token_ends_when_the_token_expires(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet stream too: nothing needs to happen for the check to end it."""
    monkeypatch.setattr(key_auth, "RECHECK_SECONDS", 0.0)
    key, _ = await api.squall.db(create_key, api.squall.store, "ann")
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as anon:
        login = await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": key}, json={})
        token = login.json()["token"]
        async with anon.stream("GET", "/stream/v1/stream", params={**WHOLE, "x-auth-token": token}) as answer:
            lines = answer.aiter_lines()
            before = await api.squall.executions.request("demo.greet", {"who": "before"}, {"user": "t"})
            name, told = await asyncio.wait_for(_read(lines), 30)
            assert (name, told["id"]) == ("st2.execution__create", before["id"])
            await api.squall.executions.wait(before["id"], 30)
            await api.squall.db(_expire, api.squall.store, token)
            rest = await asyncio.wait_for(_rest(lines), 30)  # it ends by itself
        assert _told_of(rest) <= {before["id"]}
        assert (await anon.get("/api/v1/user", params={"x-auth-token": token})).status_code == 401
