"""`core.http`'s credentials (secret-named `headers`, `cookies`) are masked
wherever an execution is shown or audited, while the request itself, and every re-run of it, carries the
real values (docs/security.md, "Secrets leave no trace")."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from adapters.loopback import LoopbackAdapter
from bot.app import Squall
from bot.chat.bot import ChatBot
from engine import audit_sinks
from engine.config import load_config
from engine.parameters import MASK, ParameterError, mask, mask_headers, restore_masked, secret_header
from tests.conftest import write
from tests.test_api import KEY
from tests.test_chat import loopback_chat, settle
from tests.test_chat_approvals import _approval_config, _approval_id
from tests.test_web_auth import Web, started_web

TOKEN = "Bearer tok-abc-123456"
COOKIE = "session=cookie-value-456"
API_KEY = "apikey-value-789"
PROXY = "Basic cHJveHk6cHJveHktcGFzcw=="
SET_COOKIE = "setcookie-value-000"
JAR = "jar-cookie-value-321"
#: Every text that must not be shown anywhere but the request on the wire.
#: What the request sends and nothing may show (not `SET_COOKIE`: the server returns that, and the result keeps it).
SECRETS = ("tok-abc-123456", "cookie-value-456", API_KEY, "cHJveHk6cHJveHktcGFzcw", JAR)
HEADERS = {"Authorization": TOKEN, "Cookie": COOKIE, "X-Api-Key": API_KEY, "Proxy-Authorization": PROXY,
           "Accept": "application/json"}


class _Echo(BaseHTTPRequestHandler):
    """Answers every GET with the request's headers as JSON (as httpbin's `/headers` does), and sets a
    session cookie; records each request's headers."""

    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers.items()))
        body = json.dumps({"headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", f"sid={SET_COOKIE}; HttpOnly")
        self.send_header("X-Request-Id", "req-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _echo_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    httpd.daemon_threads = True
    httpd.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/echo", httpd.seen  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def echo() -> Iterator[tuple[str, list[dict[str, str]]]]:
    with _echo_server() as served:
        yield served


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    async with started_web(home) as started:
        yield started


def _api(web: Web) -> httpx.AsyncClient:
    client = web.client()
    client.headers["St2-Api-Key"] = KEY
    return client


def _leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


# -- the one home: which names are secret, and what a shown value looks like ------------------------------

def test_secret_header_names_are_told_case_insensitively() -> None:
    for name in ("Authorization", "proxy-authorization", "COOKIE", "Set-Cookie", "X-Api-Key", "x-auth-token",
                 "St2-Api-Key", "X-St2-Api-Key", "X-Vault-Token", "X-Client-Secret", "api_key", "X-Password"):
        assert secret_header(name), name
    for name in ("Accept", "Content-Type", "User-Agent", "X-Request-Id", "WWW-Authenticate", "Location", 7,
                 "X-Bypass-Cache", "X-Compass-Region", "X-Passthrough", "X-Tokenizer-Version"):
        assert not secret_header(name), name  # a secret's word only whole: `bypass` holds `pass`


def test_a_sent_setting_is_not_scrubbed_from_the_response() -> None:
    """A cookie `remember_me=true` turned every JSON `true` of the body into the mask, and a short one (`dark`)
    every word holding it: only what could be a credential is scrubbed from what a server echoes."""
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from types import SimpleNamespace

    from engine.runners import RunRequest
    from engine.runners.http import _send

    body = {"ok": True, "items": [{"active": True, "count": 12345678}], "note": "construed as true in the dark",
            "echo": f"Bearer {TOKEN}"}

    class Status(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        request = RunRequest(execution_id="e1", action=SimpleNamespace(name="status", ref="demo.status", timeout=None),
                             runner_parameters={"url": f"http://127.0.0.1:{server.server_port}/", "timeout": 10,
                                                "cookies": {"remember_me": "true", "theme": "dark", "n": "12345678"},
                                                "headers": {"X-Bypass-Cache": "true",
                                                            "Authorization": f"Bearer {TOKEN}"}},
                             action_parameters={}, context={}, pack_config={})
        got = _send(request).result["body"]
    finally:
        server.shutdown()
    assert got == {**body, "echo": MASK}  # the credential a server echoes is still scrubbed


def test_mask_headers_hides_the_values_under_secret_names_only() -> None:
    shown = mask_headers({**HEADERS, "X-Empty-Token": "", "X-None-Token": None})
    assert shown == {"Authorization": MASK, "Cookie": MASK, "X-Api-Key": MASK, "Proxy-Authorization": MASK,
                     "Accept": "application/json", "X-Empty-Token": "", "X-None-Token": None}


def test_mask_hides_secret_headers_and_every_cookie_of_a_parameter() -> None:
    values = {"url": "http://x", "headers": HEADERS, "cookies": {"sid": JAR, "empty": ""}, "password": "pw",
              "username": "ann", "body": {"Authorization": "kept: a body is data, not headers"}}
    shown = mask(values, {"password"})
    assert shown["headers"] == mask_headers(HEADERS) and shown["cookies"] == {"sid": MASK, "empty": ""}
    assert shown["password"] == MASK and shown["username"] == "ann" and shown["body"] == values["body"]
    assert mask({"headers": {"Accept": "a"}}, set()) == {"headers": {"Accept": "a"}}  # nothing to seal
    # As chat gives it (text, cast only when the request is resolved): read as the cast will read it.
    assert mask({"headers": json.dumps(HEADERS)}, set()) == {"headers": mask_headers(HEADERS)}
    assert mask({"headers": '{"Accept": "a"}'}, set()) == {"headers": '{"Accept": "a"}'}  # nothing secret: as given
    assert mask({"headers": "Authorization: x"}, set()) == {"headers": "Authorization: x"}  # no object: refused later
    assert values["headers"] == HEADERS  # the real values are left for the run


def test_restore_masked_takes_the_originals_of_what_a_re_run_left_masked() -> None:
    original = {"headers": HEADERS, "cookies": {"sid": JAR}}
    given = {"headers": {**mask_headers(HEADERS), "Accept": "text/plain", "X-Api-Key": "new-key-value"},
             "cookies": {"sid": MASK, "other": "x"}, "url": "http://y"}
    assert restore_masked(given, original) == {
        "headers": {**HEADERS, "Accept": "text/plain", "X-Api-Key": "new-key-value"},
        "cookies": {"sid": JAR, "other": "x"}, "url": "http://y"}
    # A mask under a name the original did not have, or under a name that is not secret, stays as given.
    odd = {"headers": {"X-Auth-Token": MASK, "Accept": MASK}}
    assert restore_masked(odd, {"headers": {"Accept": "a"}}) == odd


def test_audit_entries_mask_secret_header_names_at_any_depth() -> None:
    detail = {"parameters": {"headers": HEADERS, "cookies": {"sid": JAR}}, "api-key": "k-123456",
              "secret": True}
    shown = audit_sinks.entry({"event": "api.execution", "detail": detail})["detail"]
    assert shown["parameters"]["headers"] == mask_headers(HEADERS)
    assert shown["parameters"]["cookies"] == {"sid": MASK}
    assert shown["api-key"] == MASK and shown["secret"] is True


# -- end to end: what the server gets, and what every reader is shown -----------------------------------

async def _run_http(web: Web, api: httpx.AsyncClient, url: str, **parameters: Any) -> dict[str, Any]:
    """`core.http` run through the API to `url` with `HEADERS` (or `parameters`), finished."""
    created = await api.post("/api/v1/executions", json={"action": "core.http", "parameters": {
        "url": url, "headers": HEADERS, **parameters}})
    assert created.status_code == 201, created.text
    done = await web.squall.executions.wait(created.json()["id"], timeout=30)
    assert done["status"] == "succeeded", done["result"]
    return done


async def test_the_request_carries_the_real_headers_and_nothing_shows_them(
        web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = echo
    api = _api(web)
    done = await _run_http(web, api, url)
    [sent] = seen
    assert sent["Authorization"] == TOKEN and sent["X-Api-Key"] == API_KEY and sent["Proxy-Authorization"] == PROXY
    assert sent["Cookie"] == COOKIE

    got = await api.get(f"/api/v1/executions/{done['id']}")
    shown = got.json()
    assert shown["parameters"]["headers"] == mask_headers(HEADERS)
    # What the server returns is the result, as StackStorm keeps it: a workflow's next task uses the cookie.
    assert shown["result"]["headers"]["Set-Cookie"] == f"sid={SET_COOKIE}; HttpOnly"
    assert shown["result"]["headers"]["X-Request-Id"] == "req-1"
    echoed = shown["result"]["body"]["headers"]
    assert echoed["Accept"] == "application/json" and MASK in echoed["Authorization"]
    listed = await api.get("/api/v1/executions", params={"action": "core.http"})
    viewer, _ = await web.signed_in("vic", "viewer")
    page = await viewer.get(f"/executions/{done['id']}")
    assert page.status_code == 200
    rows = await web.squall.db(web.squall.store.audit_list, 100)
    assert [r["event"] for r in rows if r["target"] == done["id"]] == ["api.execution"]
    with web.squall.store.engine.connect() as conn:
        stored = json.dumps([list(r) for r in conn.execute(sa.text(
            "SELECT parameters, spec, result, context FROM executions"))], default=str)
        audited = json.dumps([list(r) for r in conn.execute(sa.text("SELECT * FROM audit"))], default=str)
    sinks = "\n".join(audit_sinks.line(row) for row in rows)
    for where, text in (("api get", got.text), ("api list", listed.text), ("web page", page.text),
                        ("stored execution", stored), ("audit table", audited), ("audit sinks", sinks)):
        assert _leaked(text) == [], where


async def test_cookies_and_basic_auth_are_sent_and_not_shown(
        web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    """Every value of `cookies` is masked in the parameters; requests makes the `Authorization` header of
    `username` and `password` (a `secret: true` parameter), and its base64 form, echoed, is masked too."""
    url, seen = echo
    api = _api(web)
    done = await _run_http(web, api, url, headers={"Accept": "application/json"}, cookies={"jar": JAR},
                           username="ann", password="pw-secret-1")
    basic = "Basic " + base64.b64encode(b"ann:pw-secret-1").decode()
    assert seen[-1]["Authorization"] == basic and seen[-1]["Cookie"] == f"jar={JAR}"
    got = await api.get(f"/api/v1/executions/{done['id']}")
    shown = got.json()
    assert shown["parameters"]["cookies"] == {"jar": MASK} and shown["parameters"]["password"] == MASK
    assert shown["parameters"]["username"] == "ann" and shown["parameters"]["headers"] == {"Accept": "application/json"}
    assert shown["result"]["body"]["headers"]["Authorization"] == f"Basic {MASK}"
    assert basic.split()[1] not in got.text and "pw-secret-1" not in got.text and _leaked(got.text) == []
    again = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={})
    assert (await web.squall.executions.wait(again.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == basic and seen[-1]["Cookie"] == f"jar={JAR}"


async def test_a_re_run_sends_the_real_headers_again(web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = echo
    api = _api(web)
    done = await _run_http(web, api, url)
    again = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={})
    assert again.status_code == 201, again.text
    assert (await web.squall.executions.wait(again.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == TOKEN and seen[-1]["X-Api-Key"] == API_KEY and seen[-1]["Cookie"] == COOKIE
    # Headers edited as shown (the masked ones left as they are): the originals go with the new ones.
    edited = {**again.json()["parameters"]["headers"], "Accept": "text/plain"}
    assert edited["Authorization"] == MASK
    changed = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"headers": edited}})
    assert changed.status_code == 201, changed.text
    assert (await web.squall.executions.wait(changed.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == TOKEN and seen[-1]["Accept"] == "text/plain"
    assert changed.json()["parameters"]["headers"]["Authorization"] == MASK
    assert _leaked(changed.text) == []


async def test_the_web_re_run_form_shows_the_mask_and_runs_with_the_real_headers(
        web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    url, seen = echo
    done = await _run_http(web, _api(web), url)
    operator, csrf = await web.signed_in("olga", "operator")
    form = await operator.get(f"/executions/{done['id']}/rerun")
    assert form.status_code == 200 and _leaked(form.text) == []
    fields = {"csrf_token": csrf,
              "p.headers": json.dumps({**mask_headers(HEADERS), "Accept": "text/html"})}  # one header edited
    sent = await operator.post(f"/executions/{done['id']}/rerun", data=fields)
    assert sent.status_code == 303, sent.text
    new_id = sent.headers["location"].rsplit("/", 1)[1]
    assert (await web.squall.executions.wait(new_id, timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == TOKEN and seen[-1]["Accept"] == "text/html"


# -- chat: a command confirmed, and one held for approvers ----------------------------------------------

@pytest.fixture
async def approval_chat(home: Path) -> AsyncIterator[tuple[Squall, ChatBot, LoopbackAdapter, list[dict[str, str]]]]:
    _approval_config(home)
    with _echo_server() as (url, seen):
        pack = home / "packs" / "demo"
        write(pack / "actions" / "fetch.yaml", f"""
            name: fetch
            runner_type: http-request
            parameters:
              url: {{default: "{url}"}}
            approval: {{groups: [approvers]}}
        """)
        write(pack / "aliases" / "fetch.yaml", """
            name: fetch
            action_ref: demo.fetch
            formats: ["fetch with {{headers}}"]
        """)
        write(pack / "actions" / "peek.yaml", f"""
            name: peek
            runner_type: http-request
            parameters:
              url: {{default: "{url}"}}
        """)
        write(pack / "aliases" / "peek.yaml", """
            name: peek
            action_ref: demo.peek
            formats: ["peek with {{headers}}"]
            confirm: true
        """)
        async with loopback_chat(home) as (squall, bot, loopback):
            yield squall, bot, loopback, seen


async def test_a_held_command_s_headers_wait_sealed_and_reach_the_server_once_approved(approval_chat) -> None:
    squall, bot, loopback, seen = approval_chat
    await loopback.say(f"!fetch with {json.dumps({'Authorization': TOKEN, 'Accept': 'text/plain'})}", user="alice")
    await settle(squall, bot)
    approval_id = _approval_id(loopback)
    row = await squall.db(squall.store.approval_get, approval_id)
    assert row["parameters"]["headers"] == {"Authorization": MASK, "Accept": "text/plain"} and row["sealed"]
    await loopback.say(f"!approve {approval_id}", user="ann", thread="m1")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.fetch")
    assert execution["status"] == "succeeded", execution["result"]
    assert seen[-1]["Authorization"] == TOKEN
    with squall.store.engine.connect() as conn:
        stored = json.dumps([list(r) for table in ("approvals", "audit", "executions")
                             for r in conn.execute(sa.text(f"SELECT * FROM {table}"))], default=str)
    rows = await squall.db(squall.store.audit_list, 100)
    for where, text in (("stored", stored), ("chat", json.dumps(loopback.texts())),
                        ("audit sinks", "\n".join(audit_sinks.line(r) for r in rows))):
        assert _leaked(text) == [], where


async def test_a_chat_command_s_headers_are_masked_in_its_prompt_audit_and_result(approval_chat) -> None:
    squall, bot, loopback, seen = approval_chat
    await loopback.say(f"!peek with {json.dumps({'Authorization': TOKEN, 'Accept': 'text/plain'})}", user="alice")
    await settle(squall, bot)
    assert f"Authorization': '{MASK}'" in loopback.texts()[-1] and _leaked(loopback.texts()[-1]) == []
    await loopback.say("!yes", user="alice")
    await settle(squall, bot)
    [execution] = await squall.executions.list(action="demo.peek")
    assert execution["status"] == "succeeded", execution["result"]
    assert seen[-1]["Authorization"] == TOKEN
    assert execution["parameters"]["headers"] == {"Authorization": MASK, "Accept": "text/plain"}
    [audited] = await squall.db(squall.store.audit_list, 100, "chat.execution")
    assert audited["detail"]["parameters"]["headers"] == {"Authorization": MASK, "Accept": "text/plain"}
    assert _leaked(json.dumps(loopback.texts())) == [] and _leaked(json.dumps(audited, default=str)) == []


# -- a credential shown masked in `headers` is masked wherever else it shows -------------------------------

def _echoing_pack(home: Path) -> None:
    pack = home / "packs" / "mr"
    write(pack / "pack.yaml", "ref: mr\nname: mr\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "echoer.yaml", """
        name: echoer
        runner_type: local-shell-cmd
        parameters:
          headers: {type: object}
          cmd: {default: "echo hdr={{ headers | tojson }}; echo {{ headers.Authorization | length }}"}
    """)
    write(pack / "actions" / "strict.yaml", """
        name: strict
        runner_type: noop
        parameters:
          headers: {type: object, additionalProperties: {type: string}}
    """)
    write(pack / "actions" / "strh.yaml", """
        name: strh
        runner_type: noop
        parameters:
          headers: {type: string}
    """)


async def test_a_header_credential_is_scrubbed_from_the_rendered_cmd_and_the_output(home: Path) -> None:
    """`parameters.headers` showed the token masked, and the rendered `cmd` and stdout two lines below it in
    clear, where a secret parameter's value is masked in all three. The action still gets the real value."""
    _echoing_pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("mr.echoer", {"headers": {"Authorization": TOKEN, "Accept": "x/y"}})
        done = await squall.executions.wait(record["id"], timeout=30)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    shown = json.dumps({"parameters": done["parameters"], "result": done["result"]})
    assert _leaked(shown) == [], shown
    assert done["parameters"]["headers"] == {"Authorization": MASK, "Accept": "x/y"}
    shown_headers, length = done["result"]["stdout"].splitlines()
    assert json.loads(shown_headers.removeprefix("hdr=")) == {"Authorization": MASK, "Accept": "x/y"}
    assert length == str(len(TOKEN))  # the action had the real value


async def test_a_refused_value_never_quotes_a_credential(home: Path) -> None:
    """jsonschema's message quoted the whole value, a token restored from someone else's run included."""
    _echoing_pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        with pytest.raises(ParameterError) as refused:
            await squall.executions.request("mr.strict", {"headers": {"Authorization": TOKEN, "X-Priority": 1}})
        with pytest.raises(ParameterError) as undecoded:
            await squall.executions.request("mr.strict", {"headers": f'{{"Authorization": "{TOKEN}"'})  # no close
    finally:
        await squall.close()
    assert _leaked(str(refused.value)) == [] and "X-Priority" in str(refused.value), refused.value
    assert _leaked(str(undecoded.value)) == [], undecoded.value


def test_a_re_run_keeps_headers_given_as_text_as_text_and_finds_names_in_any_case() -> None:
    original = {"headers": json.dumps({"Authorization": TOKEN, "Accept": "x"})}
    given = {"headers": json.dumps({"Accept": "y", "authorization": MASK})}
    restored = restore_masked(given, original)
    assert isinstance(restored["headers"], str)
    assert json.loads(restored["headers"]) == {"Accept": "y", "authorization": TOKEN}
