"""Bad requests get 4xx: body limits (declared, chunked, lying), JSON depth and NaN, malformed Slack and
Mattermost requests, type errors in bodies; and Hypothesis fuzzing of the HTTP routes (no 5xx, no crash,
`/healthz` still answers).

The app is the one `squall serve` runs: test_api's config (API key, `api.max_body_bytes: 4096`, the demo
pack), a ChatBot with Slack in HTTP mode and Mattermost (each against its fake), over httpx's ASGI
transport; the tests that need real sockets (a 5 MiB body, chunked upload) use uvicorn on a free port.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapters.mattermost as mattermost_module
from adapters import mattermost, slack
from adapters.slack import payload_problem
from bot.app import Squall
from bot.http import MAX_JSON_DEPTH, MAX_KEY_TTL, ApiServer, create_api, decode_json
from engine.config import load_config
from tests.conftest import free_port
from tests.fake_mattermost import BOT_TOKEN, FakeMattermost
from tests.fake_slack import APP_TOKEN, BOT_USER, SIGNING_SECRET, FakeSlack
from tests.fake_slack import BOT_TOKEN as SLACK_BOT_TOKEN
from tests.test_api import KEY, _home

SLASH_TOKEN = "slash-token"
LIMIT = 4096  # api.max_body_bytes in test_api's config
JSON = {"Content-Type": "application/json"}

#: Every route that takes a JSON body, with a body it accepts (or refuses for its content, not its form).
JSON_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/api/v1/webhooks/st2", {"trigger": "demo.event", "payload": {"n": 1}}),
    ("POST", "/api/v1/webhooks/ci/build", {"who": "x"}),
    ("POST", "/api/v1/executions", {"action": "core.noop", "parameters": {}}),
    ("POST", "/api/v1/executions/ffffffffffffffffffffffff/re_run", {"parameters": {}}),
    ("POST", "/api/v1/aliasexecution", {"command": "greet x", "user": "u", "channel": "c"}),
    ("POST", "/api/v1/actionalias/match", {"command": "greet x"}),
    ("PUT", "/api/v1/keys/fuzz.key", {"value": "v"}),
    ("PUT", "/api/v1/inquiries/ffffffffffffffffffffffff", {"response": {"ok": True}}),
]


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def _signed(body: bytes, secret: str = SIGNING_SECRET, timestamp: str | None = None) -> dict[str, str]:
    ts = timestamp if timestamp is not None else str(int(time.time()))
    signature = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={signature}"}


def _fault(response: httpx.Response) -> str:
    return str(response.json()["faultstring"])


@dataclass
class Env:
    squall: Squall
    app: Any  # the ASGI app
    client: httpx.AsyncClient  # with the API key
    anon: httpx.AsyncClient
    slack: FakeSlack
    mattermost: FakeMattermost
    slack_adapter: Any
    mattermost_adapter: Any

    async def slack_post(self, body: bytes, content_type: str = "application/json",
                         headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Content-Type": content_type, **(_signed(body) if headers is None else headers)}
        return await self.anon.post("/slack/events", content=body, headers=sent)

    def hook_url(self) -> str:
        """A response_url of the fake Mattermost (a slash command's replies go there, never elsewhere)."""
        return f"{self.mattermost.url}/hooks/commands/fuzz"


@pytest.fixture
async def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.setattr(mattermost_module, "SLASH_ANSWER_WAIT", 0.05)  # the fuzz must not wait 2 s a request
    fake_slack = await FakeSlack().start()
    fake_mm = FakeMattermost()
    await fake_mm.start()
    config = load_config(_home(home) / "config.yml")
    slack_adapter = slack.create({"enabled": True, "mode": "http", "bot_token": SLACK_BOT_TOKEN,
                                  "app_token": APP_TOKEN, "signing_secret": SIGNING_SECRET,
                                  "base_url": fake_slack.base_url}, config)
    mm_adapter = mattermost.create({"enabled": True, "url": fake_mm.url, "token": BOT_TOKEN, "team": "ops",
                                    "slash_token": SLASH_TOKEN}, config)
    squall = await Squall.start(config, adapters=[slack_adapter, mm_adapter])
    bot = squall.chat
    await bot.start()
    app = create_api(squall)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://squall", headers={"St2-Api-Key": KEY},
                                     timeout=30) as client, \
                httpx.AsyncClient(transport=transport, base_url="http://squall", timeout=30) as anon:
            yield Env(squall, app, client, anon, fake_slack, fake_mm, slack_adapter, mm_adapter)
    finally:
        await bot.stop()
        await squall.triggers.settle()
        await squall.close()
        await fake_mm.stop()
        await fake_slack.close()


async def _raw(app: Any, method: str, path: str, chunks: list[bytes],
               headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    """One request straight through ASGI, body in `chunks`: headers that no client library would send."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("squall", 80), "client": ("127.0.0.1", 1234),
             "headers": [(b"host", b"squall"), (b"st2-api-key", KEY.encode()), *headers]}
    pending = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
               for i, chunk in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if body else {}


# -- JSON: depth, NaN and Infinity ------------------------------------------------------------------

def test_decode_json_limits() -> None:
    assert decode_json(json.dumps(_nested(MAX_JSON_DEPTH)).encode()) == _nested(MAX_JSON_DEPTH)
    assert decode_json('{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    with pytest.raises(ValueError, match=f"{MAX_JSON_DEPTH + 1} levels deep; the limit is {MAX_JSON_DEPTH}"):
        decode_json(json.dumps(_nested(MAX_JSON_DEPTH + 1)))
    with pytest.raises(ValueError, match="more than 64 levels deep"):
        decode_json(b"[" * 100_000 + b"]" * 100_000)
    for token in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match=f"holds {token}; JSON has no NaN"):
            decode_json(f'{{"a": [1, {token}]}}')
    with pytest.raises(ValueError, match="1e999, which is out of range"):
        decode_json('{"a": 1e999}')
    assert decode_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}  # an escaped pair is one character
    for lone in (b'{"a": "\\ud800"}', b'["\\udc00x"]', b'{"":"\xed\xa0\x80"}'):
        with pytest.raises(ValueError, match="lone UTF-16 surrogate"):
            decode_json(lone)
    utf16 = json.dumps(_nested(MAX_JSON_DEPTH + 1)).encode("utf-16")
    with pytest.raises(ValueError, match="levels deep"):
        decode_json(utf16)


async def test_every_json_route_refuses_deep_nesting(env: Env) -> None:
    for method, path, body in JSON_ROUTES:
        deep = {**body, "extra": _nested(MAX_JSON_DEPTH + 5)}
        answer = await env.client.request(method, path, content=json.dumps(deep).encode(), headers=JSON)
        assert answer.status_code == 400, (path, answer.text)
        assert f"{MAX_JSON_DEPTH + 6} levels deep; the limit is {MAX_JSON_DEPTH} levels" in _fault(answer)
        # 1,000+ levels: today's RecursionError 500, from a webhook in particular
        answer = await env.client.request(method, path, content=b"[" * 5000 + b"]" * 5000, headers=JSON)
        assert answer.status_code in (400, 413), (path, answer.text)
        answer = await env.client.request(method, path, content=b"[" * 2000 + b"]" * 2000, headers=JSON)
        assert answer.status_code == 400 and "levels deep" in _fault(answer), (path, answer.text)
    # Whatever the Content-Type says, a webhook takes JSON: the limit holds there too.
    answer = await env.client.post("/api/v1/webhooks/ci/build", content=b"[" * 1500 + b"]" * 1500,
                                   headers={"Content-Type": "text/plain"})
    assert answer.status_code == 400 and "levels deep" in _fault(answer)


async def test_nesting_up_to_the_limit_is_accepted(env: Env) -> None:
    body = _nested(MAX_JSON_DEPTH - 1)  # the array around it is the 64th level
    answer = await env.client.post("/api/v1/webhooks/ci/build", json=[body])
    assert answer.status_code == 202, answer.text
    stored = await env.squall.db(env.squall.store.trigger_instance_list, "core.st2.webhook")
    assert stored[0]["payload"]["body"] == [body]


async def test_every_json_route_refuses_nan_and_infinity(env: Env) -> None:
    for method, path, body in JSON_ROUTES:
        for token in ("NaN", "Infinity", "-Infinity"):
            raw = json.dumps({**body, "extra": 1.5}).replace("1.5", token).encode()
            answer = await env.client.request(method, path, content=raw, headers=JSON)
            assert answer.status_code == 400, (path, token, answer.text)
            assert f"holds {token}; JSON has no NaN, Infinity or -Infinity" in _fault(answer)
        raw = json.dumps({**body, "extra": 1.5}).replace("1.5", "1e400").encode()
        answer = await env.client.request(method, path, content=raw, headers=JSON)
        assert answer.status_code == 400 and "1e400, which is out of range for a float" in _fault(answer)
    # NaN in a payload used to be stored, then fail (500 "Out of range float values are not JSON compliant")
    answer = await env.client.post("/api/v1/webhooks/st2", content=b'{"trigger": "demo.event", "payload": {"n": NaN}}',
                                   headers={"Content-Type": "text/plain"})
    assert answer.status_code == 400 and "NaN" in _fault(answer)
    assert not await env.squall.db(env.squall.store.trigger_instance_list, "demo.event")
    assert (await env.client.put("/api/v1/keys/nan", content=b'{"value": NaN}', headers=JSON)).status_code == 400
    # A lone surrogate was accepted, then could not be answered (UnicodeEncodeError, 500).
    lone = await env.client.post("/api/v1/webhooks/ci/build", content=b'{"":"\xed\xa0\x80"}', headers=JSON)
    assert lone.status_code == 400 and "lone UTF-16 surrogate" in _fault(lone)
    assert (await env.client.get("/api/v1/keys/nan")).status_code == 404


# -- body size -------------------------------------------------------------------------------------------

async def test_body_limit_counts_bytes_whatever_content_length_says(env: Env) -> None:
    app = env.app
    json_type = (b"content-type", b"application/json")
    chunk = b" " * 1000
    # chunked: no Content-Length at all
    status, answer = await _raw(app, "POST", "/api/v1/webhooks/st2", [chunk] * 10, [json_type])
    assert status == 413 and f"the limit is {LIMIT} bytes" in answer["faultstring"]
    assert "at least" not in answer["faultstring"] and "is 10000 bytes" in answer["faultstring"]
    # a Content-Length that lies low
    status, answer = await _raw(app, "POST", "/api/v1/webhooks/st2", [chunk] * 10,
                                [json_type, (b"content-length", b"10")])
    assert status == 413 and "api.max_body_bytes" in answer["faultstring"]
    status, answer = await _raw(app, "POST", "/api/v1/executions", [b'{"action": "core.noop"}', b" " * 10],
                                [json_type, (b"content-length", b"23")])
    assert status == 400 and "Content-Length said 23" in answer["faultstring"]
    # a Content-Length that is not a number
    status, answer = await _raw(app, "POST", "/api/v1/executions", [b"{}"], [json_type, (b"content-length", b"abc")])
    assert status == 400 and "Content-Length must be a whole number" in answer["faultstring"]
    status, answer = await _raw(app, "POST", "/api/v1/executions", [b"{}"],
                                [json_type, (b"content-length", b"9" * 5000)])
    assert status == 413
    # declared over the limit, with Expect: 100-continue: refused before the body is asked for
    status, answer = await _raw(app, "POST", "/api/v1/webhooks/st2", [],
                                [json_type, (b"content-length", b"999999"), (b"expect", b"100-continue")])
    assert status == 413 and "is 999999 bytes" in answer["faultstring"]
    # what fits goes through untouched
    status, answer = await _raw(app, "POST", "/api/v1/executions", [b'{"action": ', b'"core.noop"}'], [json_type])
    assert status == 201, answer


async def test_slack_and_mattermost_bodies_are_limited_too(env: Env) -> None:
    big = json.dumps({"type": "event_callback", "event": {"type": "message", "text": "x" * 5000}}).encode()
    assert (await env.slack_post(big)).status_code == 413
    form = urlencode({"token": SLASH_TOKEN, "text": "x" * 5000}).encode()
    answer = await env.anon.post("/mattermost/command", content=form,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 413


async def test_real_server_answers_413_to_big_and_chunked_bodies(home: Path) -> None:
    """Over a socket: a 5 MiB body got its connection reset instead of the 413 (the server answered
    before reading it); and a chunked body has no Content-Length to look at."""
    squall = await Squall.start(load_config(_home(home) / "config.yml"))
    server = ApiServer(squall, host="127.0.0.1", port=free_port())
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers={"St2-Api-Key": KEY},
                                     timeout=30) as client:
            big = await client.post("/api/v1/webhooks/st2", content=b"x" * (5 * 1024 * 1024), headers=JSON)
            assert big.status_code == 413 and f"is {5 * 1024 * 1024} bytes" in _fault(big)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(5 * 1024):
                    yield b" " * 1024

            chunked = await client.post("/api/v1/webhooks/ci/build", content=chunks(), headers=JSON)
            assert chunked.status_code == 413 and f"the limit is {LIMIT} bytes" in _fault(chunked)
            deep = await client.post("/api/v1/webhooks/st2", content=b"[" * 3000 + b"]" * 3000, headers=JSON)
            assert deep.status_code == 413  # 6,000 bytes: over the limit before it is parsed
            deep = await client.post("/api/v1/webhooks/st2", content=b"[" * 1500 + b"]" * 1500, headers=JSON)
            assert deep.status_code == 400 and "levels deep" in _fault(deep)
            assert (await client.get("/healthz")).status_code == 200
        # A Content-Length that lies low over a real socket: the server reads what it declared.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /api/v1/webhooks/st2 HTTP/1.1\r\nHost: x\r\nSt2-Api-Key: " + KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n" + b"[" * 6000)
        await writer.drain()
        head = await asyncio.wait_for(reader.read(200), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 4"), head
    finally:
        await server.stop()
        await squall.close()


# -- type errors in bodies -------------------------------------------------------------------------------

async def test_absurd_ttl_and_other_type_errors_are_400(env: Env) -> None:
    absurd = await env.client.put("/api/v1/keys/x", json={"value": "v", "ttl": 99999999999999})
    assert absurd.status_code == 400 and f"ttl must be at most {MAX_KEY_TTL} seconds" in _fault(absurd)
    assert "99999999999999" in _fault(absurd)
    ok = await env.client.put("/api/v1/keys/x", json={"value": "v", "ttl": MAX_KEY_TTL})
    assert ok.status_code == 200, ok.text
    cases: list[tuple[str, str, Any, str]] = [
        ("PUT", "/api/v1/keys/x", {"value": "v", "ttl": "soon"}, "ttl"),
        ("PUT", "/api/v1/keys/x", {"value": "v", "ttl": 1.5}, "ttl"),
        ("PUT", "/api/v1/keys/x", {"value": "v", "ttl": 10 ** 30}, "ttl"),
        ("PUT", "/api/v1/keys/x", {"value": "v", "scope": 7}, "scope"),
        ("PUT", "/api/v1/keys/x", {"value": "v", "secret": "maybe"}, "secret"),
        ("PUT", "/api/v1/keys/x", [1, 2], "body"),
        ("POST", "/api/v1/executions", {"action": 7}, "action"),
        ("POST", "/api/v1/executions", {"action": "core.noop", "parameters": [1]}, "parameters"),
        ("POST", "/api/v1/executions", {"action": "core.noop", "context": "x"}, "context"),
        ("POST", "/api/v1/executions", "core.noop", "body"),
        ("POST", "/api/v1/aliasexecution", {"command": ["greet", "x"], "user": "u"}, "command"),
        ("POST", "/api/v1/aliasexecution", {"command": "greet x", "user": None}, "user"),
        ("POST", "/api/v1/aliasexecution", {"command": "greet x", "user": ["u"]}, "user"),
        ("POST", "/api/v1/aliasexecution/match_and_execute", {"command": "greet x", "source_channel": 5},
         "source_channel"),
        ("POST", "/api/v1/actionalias/match", {"command": {"a": 1}}, "command"),
        ("POST", "/api/v1/executions/ffffffffffffffffffffffff/re_run", {"parameters": "x"}, "parameters"),
        ("PUT", "/api/v1/inquiries/ffffffffffffffffffffffff", {"user": 5}, "user"),
    ]
    for method, path, body, named in cases:
        answer = await env.client.request(method, path, json=body)
        assert answer.status_code in (400, 422), (path, body, answer.text)
        assert named in _fault(answer), (path, body, answer.text)
    not_utf8 = await env.client.post("/api/v1/executions", content=b'{"action": "\xff"}', headers=JSON)
    assert not_utf8.status_code == 400 and "UnicodeDecodeError" in _fault(not_utf8)
    assert "send JSON, as UTF-8, with Content-Type: application/json" in _fault(not_utf8)
    webhook = await env.client.post("/api/v1/webhooks/st2", content=b"\xff\xfe\xfa", headers=JSON)
    assert webhook.status_code == 400 and "Failed to parse request body" in _fault(webhook)
    assert (await env.client.post("/api/v1/webhooks/st2", json="just a string")).status_code == 400
    assert (await env.client.post("/api/v1/webhooks/st2", json={"trigger": ["x"]})).status_code == 400
    assert (await env.client.post("/api/v1/webhooks/st2", json={"trigger": "demo.event",
                                                                "payload": [1]})).status_code == 400


# -- Slack ------------------------------------------------------------------------------------------------

async def test_slack_timestamp_and_signature_problems_are_401(env: Env) -> None:
    body = json.dumps(env.slack.event(env.slack.message_event(f"<@{BOT_USER}> greet forged",
                                                              kind="app_mention"))).encode()
    now = int(time.time())
    cases = {
        "abc": "must be a Unix time in whole seconds, not 'abc'",
        "": "X-Slack-Request-Timestamp is missing",
        "12.5": "must be a Unix time",
        "-5": "must be a Unix time",
        "9" * 40: "must be a Unix time",
        str(now - 400): "s old; requests more than 300s from this server's clock are refused",
        str(now + 3600): "in the future",
    }
    for timestamp, said in cases.items():
        answer = await env.slack_post(body, headers=_signed(body, timestamp=timestamp))
        assert answer.status_code == 401, (timestamp, answer.text)
        assert "X-Slack-Request-Timestamp" in _fault(answer) and said in _fault(answer), answer.text
    missing = await env.slack_post(body, headers={"X-Slack-Signature": _signed(body)["X-Slack-Signature"]})
    assert missing.status_code == 401 and "X-Slack-Request-Timestamp is missing" in _fault(missing)
    wrong = await env.slack_post(body, headers=_signed(body, secret="wrong"))
    assert wrong.status_code == 401 and "X-Slack-Signature does not match" in _fault(wrong)
    unsigned = await env.slack_post(body, headers={"X-Slack-Request-Timestamp": str(now)})
    assert unsigned.status_code == 401 and "X-Slack-Signature is missing" in _fault(unsigned)
    non_ascii = await env.anon.post("/slack/events", content=body, headers=[
        ("Content-Type", "application/json"), ("X-Slack-Request-Timestamp", str(now)),
        ("X-Slack-Signature", "v0=\xe9t\xe9".encode("latin-1"))])
    assert non_ascii.status_code == 401
    superscript = await env.anon.post("/slack/events", content=body, headers=[
        ("Content-Type", "application/json"), ("X-Slack-Request-Timestamp", "\xb2".encode("latin-1"))])
    assert superscript.status_code == 401  # "²".isdigit() is true, int("²") is not
    # Unsigned garbage is refused before anything parses it.
    for garbage in (b"[" * 3000, b"\xff\xfe", b'{"authorizations": "x"}', b"payload=%7B"):
        answer = await env.slack_post(garbage, headers={})
        assert answer.status_code in (400, 401), answer.text
    await asyncio.sleep(0.2)
    assert not env.slack.messages and not await env.squall.executions.list(limit=5)


async def test_signed_but_malformed_slack_payloads_are_400_and_logged_once(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    fake = env.slack
    good_event = fake.event(fake.message_event("!greet x"))
    click = {"type": "block_actions", "user": {"id": "UALICE01"}, "channel": {"id": "COPS0001"},
             "actions": [{"action_id": "squall_yes", "value": "yes"}]}

    def event(**fields: Any) -> dict[str, Any]:
        return {**good_event, "event": {**good_event["event"], **fields}}

    cases: list[tuple[bytes, str, str]] = [
        (json.dumps(event(ts="abc")).encode(), "application/json", "event.ts must be a Slack timestamp"),
        (json.dumps(event(thread_ts=12.5)).encode(), "application/json", "event.thread_ts must be a Slack timestamp"),
        (json.dumps(event(user=12345)).encode(), "application/json", "event.user must be a string, not a number"),
        (json.dumps(event(text={"a": 1})).encode(), "application/json", "event.text must be a string"),
        (json.dumps(event(channel=None, ts=None)).encode(), "application/json", "needs channel and ts"),
        (json.dumps({**good_event, "event": "hello"}).encode(), "application/json", "event must be an object"),
        (json.dumps({**good_event, "event": {"user": "U1"}}).encode(), "application/json", "event.type"),
        (json.dumps({**good_event, "authorizations": "x"}).encode(), "application/json", "authorizations"),
        (json.dumps({**good_event, "authorizations": [{"user_id": 5}]}).encode(), "application/json",
         "authorizations[0].user_id"),
        (json.dumps({**good_event, "type": ["event_callback"]}).encode(), "application/json", "type must be"),
        (json.dumps([good_event]).encode(), "application/json", "must be a JSON object, not an array"),
        (json.dumps({"type": "url_verification"}).encode(), "application/json", "challenge"),
        (b'{"type": "event_callback", ', "application/json", "not UTF-8 JSON or form data"),
        (b"\xff\xfe\xfd", "application/json", "not UTF-8 JSON or form data"),
        (urlencode({"payload": json.dumps({**click, "actions": "x"})}).encode(), "application/x-www-form-urlencoded",
         "actions must be a non-empty array"),
        (urlencode({"payload": json.dumps({**click, "user": "UALICE01"})}).encode(),
         "application/x-www-form-urlencoded", "user must be an object"),
        (urlencode({"payload": json.dumps({**click, "message": {"ts": "yesterday"}})}).encode(),
         "application/x-www-form-urlencoded", "message.ts must be a Slack timestamp"),
        (urlencode({"payload": json.dumps({**click, "channel": "COPS0001", "container": 3})}).encode(),
         "application/x-www-form-urlencoded", "container must be an object"),
        (urlencode({"payload": "[" * 1200}).encode(), "application/x-www-form-urlencoded", "RecursionError"),
        (urlencode({"payload": "{oops"}).encode(), "application/x-www-form-urlencoded", "not UTF-8 JSON"),
        (urlencode({**fake.slash("greet x"), "user_id": ""}).encode(), "application/x-www-form-urlencoded",
         "needs user_id and channel_id"),
        (urlencode({**fake.slash("greet x"), "response_url": "file:///etc/passwd"}).encode(),
         "application/x-www-form-urlencoded", "response_url must be an http(s) URL"),
    ]
    caplog.set_level(logging.INFO)
    for body, content_type, said in cases:
        caplog.clear()
        answer = await env.slack_post(body, content_type)
        assert answer.status_code == 400, (body[:80], answer.text)
        assert "Malformed Slack payload" in _fault(answer) and said in _fault(answer), answer.text
        dropped = [r for r in caplog.records if r.name.startswith("adapters.slack")]
        assert len(dropped) == 1 and dropped[0].exc_info is None, [r.getMessage() for r in dropped]
        assert said in dropped[0].getMessage() and "\n" not in dropped[0].getMessage()
    await asyncio.sleep(0.3)
    assert not fake.messages and not await env.squall.executions.list(limit=5)
    # a well-formed one still runs
    body = json.dumps(fake.event(fake.message_event("!greet fine"))).encode()
    assert (await env.slack_post(body)).status_code == 200
    await fake.wait_for(lambda: any("hello fine" in str(m) for m in fake.messages), what="the result")


async def test_socket_mode_handlers_drop_malformed_payloads_with_one_line(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The handlers check the same shapes (Socket Mode payloads do not pass /slack/events)."""
    adapter = env.slack_adapter
    body = env.slack.event(env.slack.message_event("!greet socket", ts="not-a-number"))
    caplog.set_level(logging.INFO, logger="adapters.slack")
    await adapter._on_message_event(body, body["event"])
    await adapter._on_app_mention({**body, "event": {**body["event"], "user": ["U1"]}}, body["event"])
    acked: list[bool] = []

    async def ack() -> None:
        acked.append(True)

    await adapter._on_command(ack, {"command": "/squall", "text": "greet x", "channel_id": 5, "user_id": "U1"})
    await adapter._on_button(ack, {"type": "block_actions", "actions": [{"value": "yes"}]})
    records = [r for r in caplog.records if r.name.startswith("adapters.slack")]
    assert len(records) == 4 and all(r.exc_info is None and "dropped a malformed" in r.getMessage()
                                     for r in records), [r.getMessage() for r in records]
    assert acked == [True, True]  # acknowledged all the same: Slack must not retry them
    assert payload_problem(env.slack.event(env.slack.message_event("!greet fine"))) is None


# -- Mattermost ---------------------------------------------------------------------------------------------

async def test_mattermost_endpoints_refuse_malformed_requests(env: Env) -> None:
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    good = {"token": SLASH_TOKEN, "channel_id": env.mattermost.town_square["id"], "user_name": "alice",
            "response_url": env.hook_url(), "command": "/squall", "text": "help"}
    not_utf8 = await env.anon.post("/mattermost/command", content=b"token=\xff\xfe", headers=form_type)
    assert not_utf8.status_code == 400 and "not UTF-8" in not_utf8.json()["text"]
    for url in ("javascript:alert(1)", "http://[::1", "ftp://example.invalid/x", "/relative"):
        answer = await env.anon.post("/mattermost/command", content=urlencode({**good, "response_url": url}),
                                     headers=form_type)
        assert answer.status_code == 400 and "response_url must be an http(s) URL" in answer.json()["text"], url
    lacking = await env.anon.post("/mattermost/command", content=urlencode({"token": SLASH_TOKEN}), headers=form_type)
    assert lacking.status_code == 400 and "lacks channel_id, response_url, user_name" in lacking.json()["text"]
    assert (await env.anon.post("/mattermost/command", content=b"[" * 2000, headers=JSON)).status_code == 400
    assert (await env.anon.get("/mattermost/command", params={"token": "wrong"})).status_code == 401

    actions = "/mattermost/actions"
    for raw, content_type, status in (
            (b"{not json", "application/json", 400), (b"\xff\xfe\xfd", "application/json", 400),
            (b"[1, 2]", "application/json", 400), (b'"context"', "application/json", 400),
            (b"[" * 1500 + b"]" * 1500, "application/x-www-form-urlencoded", 400),  # past the middleware's check
            (b'{"context": {"value": NaN}}', "application/json", 400),
            (b'{"context": {"value": ["yes"], "signature": "x"}, "user_id": "u", "channel_id": "c"}',
             "application/json", 401),
            (b'{"context": "yes", "user_id": 5}', "application/json", 401)):
        answer = await env.anon.post(actions, content=raw, headers={"Content-Type": content_type})
        assert answer.status_code == status, (raw[:60], answer.text)
    # A context this Squall signed, with fields of the wrong type around it.
    context = {"value": "yes", "label": "Yes", "thread": "", "asker": "", "prompt": "p"}
    signed = {**context, "signature": env.mattermost_adapter._sign(context)}
    answer = await env.anon.post(actions, json={"context": signed, "user_id": {"id": "u"}, "channel_id": "c"})
    assert answer.status_code == 400 and "user_id must be a string" in answer.json()["error"]["message"]
    answer = await env.anon.post(actions, json={"context": signed, "user_id": "u"})
    assert answer.status_code == 400 and "lacks user_id or channel_id" in answer.json()["error"]["message"]


# -- fuzzing ----------------------------------------------------------------------------------------------

_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
_HARMLESS_WORDS = st.sampled_from(["greet", "secretgreet", "help", "yes", "no", "!greet", "x", "'", '"', "$HOME",
                                   "`id`", "\x00", "é", "{{ 7*7 }}", "<@U0BOT0001>", "greet <b>"])
_COMMANDS = st.lists(_HARMLESS_WORDS, min_size=0, max_size=4).map(" ".join) | st.text(max_size=40)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity go out as such: the server must refuse them


def _shaped(keys: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    """Objects with the route's own keys, mostly of the right type (else anything), some missing."""
    fields = {k: st.one_of(s, s, s, _VALUES) for k, s in keys.items()}
    return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                 optional={k: v for k, v in fields.items() if k not in required})


def _bodies(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Raw bodies: shaped and arbitrary JSON, garbage, truncated JSON, deep nesting, NaN, huge."""
    deep = st.integers(min_value=MAX_JSON_DEPTH - 2, max_value=2500)
    return st.one_of(
        shaped.map(_dumps),
        shaped.map(_dumps),
        shaped.map(_dumps),
        shaped.map(_dumps).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),
        _VALUES.map(_dumps),
        st.binary(max_size=200),
        deep.map(lambda n: b"[" * n + b"]" * n),
        deep.map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        deep.map(lambda n: b"[" * n),
        st.sampled_from([b"NaN", b"-Infinity", b'{"a": 1e999}', b"9" * 5000, b"", b" ", b"null", b"\xef\xbb\xbf{}",
                         '{"a": "\ud800"}'.encode("utf-8", "surrogatepass")]),
        st.integers(min_value=LIMIT - 20, max_value=3 * LIMIT).map(lambda n: b'{"s": "' + b"x" * n + b'"}'),
    )


_CONTENT_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                  "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                  "application/vnd.api+json", None])

_FUZZ = settings(max_examples=250, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much, HealthCheck.large_base_example])


async def _fuzz(env: Env, strategy: st.SearchStrategy[Any], request: Callable[[Any], Any]) -> None:
    """Run Hypothesis (which is synchronous) in a thread; each example's request runs on this loop,
    which serves the app meanwhile. Every answer must be below 500."""
    loop = asyncio.get_running_loop()

    @_FUZZ
    @given(strategy)
    def run(example: Any) -> None:
        answer = asyncio.run_coroutine_threadsafe(request(example), loop).result(timeout=60)
        assert answer.status_code < 500, (example, answer.status_code, answer.text[:300])

    await loop.run_in_executor(None, run)
    await env.squall.triggers.settle()
    assert (await env.anon.get("/healthz")).json()["status"] == "ok"


def _headers(content_type: str | None) -> dict[str, str]:
    return {"Content-Type": content_type} if content_type else {}


async def test_fuzz_webhooks(env: Env) -> None:
    shaped = _shaped({"trigger": st.sampled_from(["demo.event", "core.st2.webhook", "demo.nope", ""]),
                      "payload": st.fixed_dictionaries({}, optional={"n": st.integers() | _VALUES}),
                      "who": _COMMANDS}, required=("trigger", "payload"))
    paths = st.sampled_from(["/api/v1/webhooks/st2", "/api/v1/webhooks/ci/build", "/api/v1/webhooks/ci/build/",
                             "/api/v1/webhooks/signed", "/api/v1/webhooks/nope"])

    async def post(example: tuple[str, bytes, str | None]) -> httpx.Response:
        path, body, content_type = example
        return await env.client.post(path, content=body, headers=_headers(content_type))

    await _fuzz(env, st.tuples(paths, _bodies(shaped), _CONTENT_TYPES), post)


async def test_fuzz_executions(env: Env) -> None:
    shaped = _shaped({"action": st.sampled_from(["core.noop", "demo.greet", "demo.nope", "", "core"]),
                      "parameters": st.fixed_dictionaries({}, optional={"who": _COMMANDS, "password": _VALUES,
                                                                       "cmd": st.just("echo immutable")}),
                      "context": st.dictionaries(st.sampled_from(["user", "trace", "source", "parent", "re-run"]),
                                                 _VALUES, max_size=3)}, required=("action",))

    async def post(example: tuple[bytes, str | None]) -> httpx.Response:
        body, content_type = example
        return await env.client.post("/api/v1/executions", content=body, headers=_headers(content_type))

    await _fuzz(env, st.tuples(_bodies(shaped), _CONTENT_TYPES), post)


async def test_fuzz_alias_execution(env: Env) -> None:
    shaped = _shaped({"command": _COMMANDS, "user": st.sampled_from(["alice", "mallory", ""]) | st.text(max_size=20),
                      "channel": st.text(max_size=20)}, required=("command", "user"))

    async def post(example: tuple[bytes, str | None]) -> httpx.Response:
        body, content_type = example
        return await env.client.post("/api/v1/aliasexecution", content=body, headers=_headers(content_type))

    await _fuzz(env, st.tuples(_bodies(shaped), _CONTENT_TYPES), post)


async def test_fuzz_slack_events(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    fake = env.slack
    ids = st.sampled_from(["UALICE01", "COPS0001", "D0DIRECT1", BOT_USER, ""]) | _VALUES
    timestamps = st.sampled_from(["1700000000.000100", "abc", "", "1e9", "-1"]) | _VALUES
    text = _COMMANDS.map(lambda c: "!" + c) | _VALUES
    event = _shaped({"type": st.sampled_from(["message", "app_mention", "reaction_added"]), "user": ids,
                     "channel": ids, "text": text, "ts": timestamps, "thread_ts": timestamps,
                     "subtype": st.sampled_from(["bot_message", "thread_broadcast"]), "channel_type": ids,
                     "bot_id": ids}, required=("type", "user", "channel", "text", "ts"))
    envelope = _shaped({"type": st.sampled_from(["event_callback", "url_verification", "app_rate_limited"]),
                        "event": event, "event_id": st.text(max_size=12), "challenge": st.text(max_size=10),
                        "authorizations": st.lists(_shaped({"user_id": ids, "is_bot": st.booleans()}), max_size=2),
                        "team_id": ids, "enterprise": ids, "team": ids}, required=("type", "event"))
    click = _shaped({"type": st.just("block_actions"), "user": _shaped({"id": ids, "username": ids}),
                     "channel": _shaped({"id": ids}), "container": _shaped({"channel_id": ids, "thread_ts": timestamps,
                                                                            "is_ephemeral": st.booleans()}),
                     "message": _shaped({"ts": timestamps, "text": text}),
                     "actions": st.lists(_shaped({"action_id": st.just("squall_yes"), "value": text,
                                                  "text": _shaped({"text": text})}), max_size=2)},
                    required=("type", "user", "channel", "actions"))
    no_network = st.sampled_from([f"{fake.url}/response/fuzz", "", "not a url", "file:///etc/hostname"])
    slash = st.fixed_dictionaries({}, optional={
        "command": st.sampled_from(["/squall", "/other"]), "text": _COMMANDS,
        "user_id": st.sampled_from(["UALICE01", ""]), "channel_id": st.sampled_from(["COPS0001", "D0DIRECT1", ""]),
        "channel_name": st.text(max_size=10),
        "response_url": no_network, "ssl_check": st.just("1")})
    signed = st.one_of(
        st.tuples(_bodies(envelope), st.just("application/json")),
        st.tuples(click.map(lambda c: urlencode({"payload": json.dumps(c)}).encode()),
                  st.just("application/x-www-form-urlencoded")),
        st.tuples(slash.map(lambda f: urlencode(f).encode()), st.just("application/x-www-form-urlencoded")),
        st.tuples(_bodies(envelope), _CONTENT_TYPES.map(lambda c: c or "application/json")),
    )
    headers = st.one_of(st.none(), st.none(), st.none(), st.dictionaries(
        st.sampled_from(["X-Slack-Request-Timestamp", "X-Slack-Signature"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=70), max_size=2))

    async def post(example: tuple[tuple[bytes, str], dict[str, str] | None]) -> httpx.Response:
        (body, content_type), forged = example
        return await env.slack_post(body, content_type, headers=forged)

    caplog.set_level(logging.INFO)
    await _fuzz(env, st.tuples(signed, headers), post)
    await asyncio.sleep(0.5)  # bolt runs the handlers after the answer
    failures = [r for r in caplog.records if r.exc_info or "a handler failed" in r.getMessage()]
    assert not failures, [r.getMessage() for r in failures]


async def test_fuzz_mattermost_endpoints(env: Env) -> None:
    town = env.mattermost.town_square["id"]
    no_network = st.sampled_from([env.hook_url()] * 4 + ["", "javascript:x", "http://[::1", "/hooks"]) | st.text(
        max_size=20).filter(lambda s: "http" not in s.lower())
    form = st.fixed_dictionaries({
        "token": st.sampled_from([SLASH_TOKEN, SLASH_TOKEN, SLASH_TOKEN, "", "wrong"]),
        "channel_id": st.sampled_from([town, town, "", "nope"]) | st.text(max_size=10),
        "user_name": st.sampled_from(["alice", "alice", ""]) | st.text(max_size=10),
        "response_url": no_network, "command": st.just("/squall"), "text": _COMMANDS},
        optional={"user_id": st.text(max_size=10), "channel_name": st.text(max_size=10)})
    slash = st.one_of(
        form.map(lambda f: (urlencode(f).encode(), "application/x-www-form-urlencoded")),
        st.tuples(_bodies(form), _CONTENT_TYPES),
    )
    context = st.fixed_dictionaries({}, optional={"value": _VALUES, "signature": st.text(max_size=64),
                                                  "asker": _VALUES, "prompt": st.text(max_size=10)})
    ours = {"value": "no", "label": "No", "thread": "", "asker": "", "prompt": "p"}
    signed = st.just({**ours, "signature": env.mattermost_adapter._sign(ours)})  # a button this Squall made
    action = _shaped({"context": signed | context, "user_id": st.text(max_size=10), "channel_id": st.just(town),
                      "user_name": st.text(max_size=10), "channel_name": st.text(max_size=10)},
                     required=("context", "user_id", "channel_id"))
    actions = st.tuples(_bodies(action), _CONTENT_TYPES)

    async def post(example: tuple[str, tuple[bytes, str | None]]) -> httpx.Response:
        path, (body, content_type) = example
        return await env.anon.post(path, content=body, headers=_headers(content_type))

    await _fuzz(env, st.one_of(st.tuples(st.just("/mattermost/command"), slash),
                               st.tuples(st.just("/mattermost/actions"), actions)), post)
