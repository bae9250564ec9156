"""hubot-stackstorm (and err-stackstorm) in front of Squall: a command relayed to `POST /aliasexecution`
with a `notification_route` gets its result back as StackStorm's chatops flow sends it (spec §3.2): the
execution's `notify` names the route with the chat's data, `core.st2.generic.notifytrigger` fires,
the shipped rule `chatops.notify` runs `chatops.post_result`, and the stream carries
`st2.announcement__chatops` with the formatted result for hubot to post. A command without a route (the
API as before, Squall's own chat) gets no announcement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.loopback import LoopbackAdapter
from adapters.slack_format import ATTACHED_TAIL
from bot.app import Squall
from engine.config import load_config
from tests.conftest import write
from tests.test_api import KEY, _home
from tests.test_chat import settle
from tests.test_st2_stream import _read
from tests.test_stream_announcements import _served

#: What hubot-stackstorm listens for (the announcement route of `chatops.post_result`).
CHATOPS = "st2.announcement__chatops"
#: The chat message's envelope, as hubot sends it (`source_context: msg.message`).
ENVELOPE = {"user": {"name": "alice", "id": "U1"}, "room": "C0OPS", "id": "1712.0001"}
#: The body hubot-stackstorm posts, less `command` (and `name`/`format` of the alias it matched).
HUBOT = {"user": "alice", "source_channel": "C0OPS", "source_context": ENVELOPE, "notification_route": "hubot"}


def _pack(home: Path) -> None:
    """Aliases of `demo.greet` with a result format (one split at hubot's `{~}`), with results off, and an action
    with its own notify."""
    pack = home / "packs" / "demo"
    write(pack / "aliases" / "shout.yaml", """
        name: shout
        action_ref: demo.greet
        description: Greet, with a result format.
        formats: ["shout {{who}}"]
        ack:
          format: "shouting at {{ execution.parameters.who }}"
        result:
          format: "shouted: {{ execution.result.stdout }}"
    """)
    write(pack / "aliases" / "listing.yaml", """
        name: listing
        action_ref: demo.greet
        description: Greet, as a list with a pretext (the st2 pack's `Found N actions:{~}...`).
        formats: ["listing {{who}}"]
        result:
          format: "Found 1 greeting:{~}{{ execution.result.stdout }}"
          extra:
            slack:
              color: "{% if execution.status == 'succeeded' %}good{% else %}danger{% endif %}"
    """)
    write(pack / "aliases" / "quiet.yaml", """
        name: quiet
        action_ref: demo.greet
        description: Greet, results off.
        formats: ["quiet {{who}}"]
        result:
          enabled: false
    """)
    write(pack / "actions" / "noisy.yaml", """
        name: noisy
        runner_type: local-shell-cmd
        parameters:
          cmd: {default: 'echo noisy', immutable: true}
        notify:
          on-complete:
            routes: [ops]
    """)
    write(pack / "aliases" / "noisy.yaml", """
        name: noisy
        action_ref: demo.noisy
        description: An action with its own notify.
        formats: ["noisy"]
    """)


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


async def _hubot(client: httpx.AsyncClient, command: str, path: str = "/api/v1/aliasexecution",
                 **body: Any) -> dict[str, Any]:
    """POST `command` as hubot-stackstorm does (`body` replaces its fields); the one result."""
    answer = await client.post(path, json={**HUBOT, "command": command, **body})
    assert answer.status_code in (200, 201), answer.text
    found = answer.json()
    return found["results"][0] if "results" in found else found


async def _post_results(squall: Squall, count: int) -> list[dict[str, Any]]:
    """The `chatops.post_result` executions once there are `count` of them, each ended."""
    for _ in range(3000):
        found = await squall.executions.list(action="chatops.post_result")
        if len(found) >= count:
            return [await squall.executions.wait(record["id"], 30) for record in found]
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} chatops.post_result executions were requested")


@pytest.mark.parametrize("path", ["/api/v1/aliasexecution", "/api/v1/aliasexecution/match_and_execute"])
async def test_hubot_gets_its_command_s_result_as_an_announcement(api: tuple[Squall, httpx.AsyncClient],
                                                                  path: str) -> None:
    """The announcement hubot posts: the command's channel and user, its result, and the chat message's
    envelope (hubot threads by it); the execution's notify is StackStorm's."""
    squall, client = api
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        acked = await _hubot(client, "shout ann", path)
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    execution_id = acked["execution"]["id"]
    assert acked["message"] == "shouting at ann"  # the ack hubot posts, as before
    assert name == CHATOPS
    payload = told["payload"]
    assert payload["execution_id"] == execution_id
    assert (payload["channel"], payload["user"], payload["context"]) == ("C0OPS", "alice", ENVELOPE)
    assert "hello ann" in payload["message"]
    record = await squall.executions.get(execution_id)
    assert record["context"]["notify"] == {"on-complete": {
        "routes": ["hubot"], "data": {"user": "alice", "source_channel": "C0OPS", "source_context": ENVELOPE}}}


async def test_what_a_person_typed_comes_back_as_typed_never_rendered(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """The notifier renders notify `data` with the datastore; the chat envelope (the message's text) and the
    user are what people typed: a template in them is data, so no chat message reads the datastore."""
    _squall, client = api
    assert (await client.put("/api/v1/keys/token", json={"name": "token", "value": "hunter2-sealed"})).is_success
    typed = {**ENVELOPE, "text": "shout ann {{ st2kv.system.token }}", "{% if 1 %}key{% endif %}": ["{{ 7*7 }}"]}
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        await _hubot(client, "shout ann", source_context=typed, user="{{ st2kv.system.token }}")
        _name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert told["payload"]["context"] == typed
    assert told["payload"]["user"] == "{{ st2kv.system.token }}"
    assert "hunter2" not in json.dumps(told)


async def test_the_alias_s_result_format_is_what_hubot_posts(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """As StackStorm's `format_execution_result`, which finds the alias by the execution's
    `action_alias_ref`: its `result.format`, not the default template."""
    _squall, client = api
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        await _hubot(client, "shout ann")
        _name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert told["payload"]["message"].startswith("shouted: hello ann"), told["payload"]["message"]


async def test_a_command_without_a_route_is_not_announced(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """`st2 action-alias execute` and other API callers send no route: no notify, no post_result, as before.
    The next hubot command's announcement is the first the stream carries."""
    squall, client = api
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        plain = await _hubot(client, "shout bo", notification_route=None)
        done = await squall.executions.wait(plain["execution"]["id"], 30)
        relayed = await _hubot(client, "shout cy")
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert done["status"] == "succeeded" and "notify" not in done["context"]
    assert (name, told["payload"]["execution_id"]) == (CHATOPS, relayed["execution"]["id"])
    [posted] = await _post_results(squall, 1)
    assert posted["parameters"]["execution_id"] == relayed["execution"]["id"]


async def test_an_alias_with_results_off_is_not_announced(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """As StackStorm's `format_execution_result`: the rule runs post_result, which posts nothing."""
    squall, client = api
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        quiet = await _hubot(client, "quiet dee")
        [posted] = await _post_results(squall, 1)
        relayed = await _hubot(client, "shout eve")
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert posted["parameters"]["execution_id"] == quiet["execution"]["id"]
    assert posted["status"] == "succeeded" and "skipped" in posted["result"]["posted"]
    assert (name, told["payload"]["execution_id"]) == (CHATOPS, relayed["execution"]["id"])


async def test_an_action_s_own_notify_replaces_the_route_as_in_stackstorm(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """StackStorm's `create_request` puts a non-empty action `notify` in place of the alias execution's
    (spec §3.1 step 4): its routes apply, hubot's does not."""
    squall, client = api
    noisy = await _hubot(client, "noisy")
    done = await squall.executions.wait(noisy["execution"]["id"], 30)
    assert done["status"] == "succeeded" and "notify" not in done["context"]
    assert squall.notifier.notify_of(done) == {"on-complete": {"routes": ["ops"]}}


async def test_errbot_s_route_is_announced_on_its_own_route(api: tuple[Squall, httpx.AsyncClient]) -> None:
    """err-stackstorm sends route `errbot` (here through StackStorm's older `notification_channel`) and
    listens for `st2.announcement__errbot`: the shipped `chatops.notify-errbot` rule passes the route on."""
    _squall, client = api
    errbot = "st2.announcement__errbot"
    async with client.stream("GET", "/stream/v1/stream", params={"events": f"{CHATOPS},{errbot}"}) as answer:
        acked = await _hubot(client, "shout fay", notification_route=None, notification_channel="errbot")
        name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    assert name == errbot
    assert told["payload"]["execution_id"] == acked["execution"]["id"]
    assert "hello fay" in told["payload"]["message"]


async def test_squall_s_own_chat_commands_are_answered_once(home: Path) -> None:
    """A command typed in Squall's own chat sets no route: its result is the dispatcher's reply alone,
    never also a `chatops.post_result` through the hubot rule."""
    _home(home)
    _pack(home)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        await loopback.say("!shout gus", user="alice", channel="#ops")
        await settle(squall, squall.chat)
        [record] = await squall.executions.list(action="demo.greet")
        assert "notify" not in record["context"]
        assert await squall.executions.list(action="chatops.post_result") == []
    finally:
        await squall.chat.stop()
        await squall.close()
    assert [text for text in loopback.texts("#ops") if text.startswith("shouted:")] == ["shouted: hello gus"]


async def test_an_announcement_carries_the_result_as_stackstorm_formats_it(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """hubot-stackstorm (and err-stackstorm) split an announcement's message at `{~}` themselves and copy
    `extra.slack` into the attachment, so the message comes as StackStorm's post_result hands it to
    post_message: `{~}` intact, `extra` the alias's own. Squall split it first and marked the split in
    `extra.slack` (`squall_attached_tail`), which hubot copied into the attachment."""
    squall, client = api
    async with client.stream("GET", "/stream/v1/stream", params={"events": CHATOPS}) as answer:
        acked = await _hubot(client, "listing ann")
        _name, told = await asyncio.wait_for(_read(answer.aiter_lines()), 30)
    done = await squall.executions.get(acked["execution"]["id"])
    assert told["payload"]["execution_id"] == done["id"]
    assert told["payload"]["message"] == "Found 1 greeting:{~}" + done["result"]["stdout"]
    assert told["payload"]["extra"] == {"slack": {"color": "good"}}


async def test_squall_s_own_chat_splits_a_post_result_that_announces_it_whole(home: Path) -> None:
    """A `chatops.post_result` to one of Squall's own adapters: the chat's copy is split at `{~}` (the pretext
    and the rest on lines of their own, Slack's attachment marked), the announcement the run stores for the
    stream keeps the message whole."""
    _home(home)
    _pack(home)
    loopback = LoopbackAdapter()
    squall = await Squall.start(load_config(home / "config.yml"), adapters=[loopback])
    await squall.chat.start()
    try:
        command = await squall.executions.request("demo.greet", {"who": "hal"},
                                                  {"action_alias_ref": {"id": "demo.listing", "name": "listing"}})
        command = await squall.executions.wait(command["id"], 30)
        posted = await squall.executions.request("chatops.post_result", {
            "execution_id": command["id"], "adapter": "loopback", "channel": "#ops"})
        posted = await squall.executions.wait(posted["id"], 30)
        await settle(squall, squall.chat)
        stdout = command["result"]["stdout"]
        assert posted["status"] == "succeeded", posted["result"]
        assert posted["result"]["output"]["message"] == "Found 1 greeting:{~}" + stdout
        assert posted["result"]["output"]["extra"] == {"slack": {"color": "good"}}
        assert loopback.texts("#ops") == ["Found 1 greeting:\n" + stdout]
        [reply] = [p.reply for p in loopback.posted if p.reply.channel == "#ops"]
        assert reply.extra["slack"]["color"] == "good" and reply.extra["slack"][ATTACHED_TAIL] == len(stdout)
    finally:
        await squall.chat.stop()
        await squall.close()


async def test_format_execution_result_answers_what_st2_action_alias_test_prints(
        api: tuple[Squall, httpx.AsyncClient]) -> None:
    """`st2 action-alias test "shout ann"` runs the command, then `chatops.format_execution_result` on it and
    prints its `result.result.message`: the action was missing, so the command ran and then failed with a
    400. Its message is what `post_result` posts: the alias's result format, its `extra`; results off refuse."""
    squall, client = api
    shout = await _hubot(client, "shout ann", notification_route=None)
    listing = await _hubot(client, "listing bo", notification_route=None)
    quiet = await _hubot(client, "quiet cy", notification_route=None)
    formatted = {}
    for name, command in (("shout", shout), ("listing", listing), ("quiet", quiet)):
        await squall.executions.wait(command["execution"]["id"], 30)
        answer = await client.post("/api/v1/executions", json={
            "action": "chatops.format_execution_result", "parameters": {"execution_id": command["execution"]["id"]}})
        assert answer.status_code == 201, answer.text
        formatted[name] = await squall.executions.wait(answer.json()["id"], 60)
    assert formatted["shout"]["status"] == "succeeded", formatted["shout"]["result"]
    assert formatted["shout"]["result"]["result"] == {"message": "shouted: hello ann"}
    assert formatted["listing"]["result"]["result"] == {"message": "Found 1 greeting:{~}hello bo",
                                                         "extra": {"slack": {"color": "good"}}}
    assert formatted["quiet"]["status"] == "failed"
    assert "Output of this template is disabled." in formatted["quiet"]["result"]["stderr"]
