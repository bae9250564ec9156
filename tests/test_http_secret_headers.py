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
from engine.parameters import MASK, ParameterError, mask, mask_headers, mask_value, restore_masked, secret_header
from tests.conftest import write
from tests.test_api import KEY
from tests.test_chat import loopback_chat, settle
from tests.test_chat_approvals import _approval_config, _approval_id
from tests.test_web_auth import Web, started_web
from tests.test_web_executions import browser_form

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
    rerun = f"/executions/{done['id']}/rerun"
    form = await operator.get(rerun)
    assert form.status_code == 200 and _leaked(form.text) == []
    # The form as a browser sends it (its ticked `verify_ssl_cert` too), one header edited.
    fields = {**browser_form(form.text, rerun), "csrf_token": csrf,
              "headers": json.dumps({**mask_headers(HEADERS), "Accept": "text/html"})}
    sent = await operator.post(rerun, data=fields)
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


# -- a workflow's headers handed on to its tasks' other parameters -----------------------------------------

#: A workflow given `headers` that hands the credential on to a shell task's `cmd` (as a `curl -H` would)
#: and to an HTTP task's `body`, where it is no header and so not masked by its name.
_ORQUESTA_HEADERS = """
version: 1.0
input:
  - headers
  - url
tasks:
  shell:
    action: core.local cmd="echo Authorization <% ctx().headers.Authorization %>"
    next:
      - when: <% succeeded() %>
        do: post
  post:
    action: core.http url="<% ctx().url %>" method="GET" body="token=<% ctx().headers.Authorization %>"
output:
  - said: <% task(shell).result.stdout %>
"""

_CHAIN_HEADERS = """
chain:
  - name: shell
    ref: core.local
    params:
      cmd: "echo Authorization {{ headers.Authorization }}"
"""


def _workflow_headers_pack(home: Path) -> None:
    from tests.workflow_helpers import workflow_pack

    workflow_pack(home, {
        "orquesta_headers": ("orquesta", "headers: {type: object}\nurl: {type: string}", _ORQUESTA_HEADERS),
        "chain_headers": ("action-chain", "headers: {type: object}", _CHAIN_HEADERS),
    })


def _stored_everything(squall: Squall) -> str:
    """Every stored execution row and output chunk, as text."""
    with squall.store.engine.connect() as conn:
        rows = [*conn.execute(sa.text("SELECT * FROM executions")),
                *conn.execute(sa.text("SELECT * FROM execution_output"))]
    return json.dumps([list(r) for r in rows], default=str)


@pytest.mark.parametrize("ref", ["wf.orquesta_headers", "wf.chain_headers"])
async def test_a_workflow_s_header_credential_is_scrubbed_from_its_tasks(
        home: Path, echo: tuple[str, list[dict[str, str]]], ref: str) -> None:
    """The workflow's own record masked `headers.Authorization`; its task's `cmd`, stdout, `body` and output
    showed it in clear. A task scrubs its workflow's credentials as it does its secret parameters' values."""
    url, _seen = echo
    _workflow_headers_pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        parameters: dict[str, Any] = {"headers": {"Authorization": TOKEN, "Accept": "x/y"}}
        if ref == "wf.orquesta_headers":
            parameters["url"] = url
        record = await squall.executions.request(ref, parameters, {"user": "tester"})
        done = await squall.executions.wait(record["id"], timeout=30)
        tasks = await squall.executions.list(parent=done["id"], limit=10)
        [shell] = [t for t in tasks if t["action"] == "core.local"]
        alone = await squall.executions.rerun(shell["id"])  # the task re-run on its own scrubs them too
        again = await squall.executions.wait(alone["id"], timeout=30)
        stored = _stored_everything(squall)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert done["parameters"]["headers"] == {"Authorization": MASK, "Accept": "x/y"}
    assert again["status"] == "succeeded" and again["result"]["stdout"].strip() == f"Authorization {MASK}"
    assert shell["status"] == "succeeded", shell["result"]
    assert shell["parameters"]["cmd"] in (f"echo Authorization {MASK}", 'echo Authorization "${SQUALL_ARG_0}"')
    assert shell["result"]["stdout"].strip() == f"Authorization {MASK}"
    if ref == "wf.orquesta_headers":
        [post] = [t for t in tasks if t["action"] == "core.http"]
        assert post["status"] == "succeeded", json.dumps(post["result"])[:3000]
        assert post["parameters"]["body"] == f"token={MASK}"
        assert done["result"]["output"]["said"].strip() == f"Authorization {MASK}"
    shown = json.dumps([done, tasks, again], default=str)
    assert _leaked(shown) == [] and _leaked(stored) == [], (shown, stored)


# -- another runner's `headers`: what the action prints or returns ----------------------------------------

def _python_headers_pack(home: Path) -> None:
    pack = home / "packs" / "mr"
    write(pack / "pack.yaml", "ref: mr\nname: mr\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "hdr.yaml", """
        name: hdr
        runner_type: python-script
        entry_point: hdr.py
        parameters:
          headers: {type: object}
          cookies: {type: object}
    """)
    write(pack / "actions" / "hdr.py", """
        from st2common.runners.base_action import Action

        class Hdr(Action):
            def run(self, headers, cookies):
                print("printing", headers["Authorization"], cookies["sid"])
                self.logger.error("logging %s", headers["X-Api-Key"])
                return {"auth": headers["Authorization"], "token": headers["Authorization"].split()[1],
                        "key": headers["X-Api-Key"], "jar": cookies["sid"], "length": len(headers["Authorization"])}
    """)


async def test_a_python_action_s_header_credentials_are_scrubbed_from_its_output_and_result(home: Path) -> None:
    """A `python-script` action declaring `headers` and `cookies` (as some Exchange packs do) that prints,
    logs and returns them: its record shows them masked everywhere, as a secret parameter's value."""
    _python_headers_pack(home)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("mr.hdr", {"headers": {"Authorization": TOKEN, "X-Api-Key": API_KEY},
                                                            "cookies": {"sid": JAR}})
        done = await squall.executions.wait(record["id"], timeout=60)
        stored = _stored_everything(squall)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["result"] == {"auth": MASK, "token": MASK, "key": MASK, "jar": MASK,
                                        "length": len(TOKEN)}  # the action had the real values
    assert f"printing {MASK} {MASK}" in done["result"]["stdout"]
    assert f"logging {MASK}" in done["result"]["stderr"]
    assert _leaked(json.dumps(done, default=str)) == [] and _leaked(stored) == []


# -- credentials in a URL: `https://user:password@host/` ---------------------------------------------------

URL_PASSWORD = "pw-url-secret-7"
URL_BASIC = base64.b64encode(f"ann:{URL_PASSWORD}".encode()).decode()


def _with_userinfo(url: str, userinfo: str) -> str:
    return url.replace("http://", f"http://{userinfo}@", 1)


def test_a_url_s_password_is_masked_and_restored_by_the_one_rule() -> None:
    from engine.parameters import credential_texts, shows_masked

    assert mask_value("url", "https://ann:s3cret-pw@example.com:8443/p?q=1#f") == \
        f"https://ann:{MASK}@example.com:8443/p?q=1#f"
    assert mask_value("url", "http://:token-only-1@example.com/") == f"http://:{MASK}@example.com/"
    for plain in ("https://example.com/a@b", "https://ann@example.com/", "http://ann:@example.com/", "not a url",
                  "http://[::1/", 7, None):
        assert mask_value("url", plain) == plain, plain  # nothing to hide, or no URL: as given
    assert mask({"url": "http://ann:pw@h/"}, set()) == {"url": f"http://ann:{MASK}@h/"}  # short ones too
    assert credential_texts({"url": "http://ann:s3cr%40t-pw@h/"}) == ["s3cr%40t-pw", "s3cr@t-pw"]
    assert credential_texts({"url": "http://ann:short@h/"}) == []  # masked in the URL, too short to scrub

    original = {"url": "https://ann:s3cret-pw@example.com/p"}
    assert shows_masked({"url": f"https://ann:{MASK}@example.com/other"})
    assert not shows_masked({"url": "https://example.com/"}) and not shows_masked({"url": 3})
    assert restore_masked({"url": f"https://ann:{MASK}@example.com/other?x=1"}, original) == {
        "url": "https://ann:s3cret-pw@example.com/other?x=1"}  # the path edited: the same login on the same host
    for elsewhere in (f"https://ann:{MASK}@evil.example/p", f"https://bob:{MASK}@example.com/p",
                      f"http://ann:{MASK}@example.com/p", f"https://ann:{MASK}@example.com:444/p"):
        assert restore_masked({"url": elsewhere}, original) == {"url": elsewhere}, elsewhere  # never sent elsewhere
    assert audit_sinks.entry({"detail": {"parameters": {"url": original["url"]}}})["detail"] == {
        "parameters": {"url": f"https://ann:{MASK}@example.com/p"}}


async def test_a_url_s_password_is_sent_and_shown_nowhere(
        web: Web, echo: tuple[str, list[dict[str, str]]], caplog: pytest.LogCaptureFixture) -> None:
    """`url: http://ann:<password>@host/` was shown in clear in the execution's parameters, its audit events
    and wherever a reader looks; requests sends it as a `Basic` header, which the echo returns. The password is
    masked as a credential header is, and travels sealed: a re-run sends it again, to the same host only."""
    import logging

    caplog.set_level(logging.DEBUG)
    url, seen = echo
    api = _api(web)
    secret_url = _with_userinfo(url, f"ann:{URL_PASSWORD}")
    done = await _run_http(web, api, secret_url, headers={"Accept": "application/json"})
    assert seen[-1]["Authorization"] == f"Basic {URL_BASIC}"
    got = await api.get(f"/api/v1/executions/{done['id']}")
    assert got.json()["parameters"]["url"] == _with_userinfo(url, f"ann:{MASK}")
    assert got.json()["result"]["body"]["headers"]["Authorization"] == f"Basic {MASK}"

    again = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={})
    assert (await web.squall.executions.wait(again.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == f"Basic {URL_BASIC}"
    edited = _with_userinfo(url, f"ann:{MASK}") + "?page=2"  # as shown, edited: the same login, the same host
    changed = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"url": edited}})
    assert changed.status_code == 201, changed.text
    assert (await web.squall.executions.wait(changed.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == f"Basic {URL_BASIC}"
    moved = edited.replace("127.0.0.1", "localhost")  # another host: the mask is sent as it is, never the password
    elsewhere = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"url": moved}})
    assert (await web.squall.executions.wait(elsewhere.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == "Basic " + base64.b64encode(f"ann:{MASK}".encode()).decode()

    viewer, _ = await web.signed_in("vic", "viewer")
    page = await viewer.get(f"/executions/{done['id']}")
    operator, _csrf = await web.signed_in("olga", "operator")
    form = await operator.get(f"/executions/{done['id']}/rerun")
    rows = await web.squall.db(web.squall.store.audit_list, 100)
    listed = await api.get("/api/v1/executions", params={"action": "core.http"})
    with web.squall.store.engine.connect() as conn:
        stored = json.dumps([list(r) for table in ("executions", "audit", "execution_output")
                             for r in conn.execute(sa.text(f"SELECT * FROM {table}"))], default=str)
    sinks = "\n".join(audit_sinks.line(row) for row in rows)
    for where, text in (("api get", got.text), ("api list", listed.text), ("web page", page.text),
                        ("re-run form", form.text), ("stored", stored), ("audit sinks", sinks),
                        ("re-runs", again.text + changed.text), ("log", caplog.text)):
        assert URL_PASSWORD not in text and URL_BASIC not in text, where


async def test_a_url_s_password_is_in_no_error_and_no_task_of_a_workflow(home: Path) -> None:
    """A request that fails says which URL it tried, with the password masked however short it is; a
    workflow given the URL hands it on to a task's `cmd` scrubbed, as its credential headers."""
    write(home / "packs" / "wf" / "actions" / "workflows" / "fetch_url.yaml", """
        version: 1.0
        input:
          - url
        tasks:
          shell:
            action: core.local cmd="echo fetching <% ctx().url %>"
        output:
          - said: <% task(shell).result.stdout %>
    """)
    write(home / "packs" / "wf" / "pack.yaml", "ref: wf\nname: wf\nversion: 0.1.0\n")
    write(home / "packs" / "wf" / "actions" / "fetch_url.yaml", """
        name: fetch_url
        runner_type: orquesta
        entry_point: workflows/fetch_url.yaml
        parameters:
          url: {type: string}
    """)
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        refused = await squall.executions.request("core.http", {"url": "http://:tk@127.0.0.1:1/x", "timeout": 5})
        failed = await squall.executions.wait(refused["id"], timeout=30)
        flow = await squall.executions.request("wf.fetch_url", {"url": f"https://ann:{URL_PASSWORD}@example.com/"})
        done = await squall.executions.wait(flow["id"], timeout=30)
        tasks = await squall.executions.list(parent=done["id"], limit=10)
        stored = _stored_everything(squall)
    finally:
        await squall.close()
    assert failed["status"] == "failed" and failed["result"]["error"].startswith(
        f"request to http://:{MASK}@127.0.0.1:1/x failed"), failed["result"]
    assert failed["parameters"]["url"] == f"http://:{MASK}@127.0.0.1:1/x" and ":tk@" not in json.dumps(failed)
    assert done["status"] == "succeeded", done["result"]
    assert done["result"]["output"]["said"].strip() == f"fetching https://ann:{MASK}@example.com/"
    assert URL_PASSWORD not in json.dumps([done, tasks]) and URL_PASSWORD not in stored
    assert ":tk@" not in stored


def _sent_password(url: str) -> str | None:
    """The password requests sends for `url` (its `Basic` header), None if it sends none or cannot parse it."""
    import requests

    try:
        header = requests.Request("GET", url).prepare().headers.get("Authorization")
    except requests.RequestException:
        return None
    return None if header is None else base64.b64decode(header.split()[1]).decode().partition(":")[2]


def test_a_url_password_with_an_unencoded_hash_slash_question_mark_or_backslash_is_masked() -> None:
    """`http://ann:Hash#Passw0rd@host/` was stored and shown as given: the password was read as `urlsplit`
    reads the URL, whose authority ends at the first `/`, `?` or `#`, so it saw no `@` and no password. And
    `http://ann:pw@example.com\\@evil.com/` was shown as `http://ann:********@evil.com/` with
    `pw@example.com\\` to scrub, while requests sends `pw` to example.com (its authority ends at a `\\` too)."""
    from engine.parameters import credential_texts, shows_masked

    for mark in "#/?":
        url = f"http://ann:LongPrefix{mark}rest-of-it@example.com:8080/p?q=1"
        assert mask_value("url", url) == f"http://ann:{MASK}@example.com:8080/p?q=1", url
        # the whole password, and what an error quoting the authority as requests reads it shows (`'ann:LongPrefix'
        # is not a valid host or port`)
        assert credential_texts({"url": url}) == [f"LongPrefix{mark}rest-of-it", "LongPrefix"], url
    assert mask_value("url", "http://ann:p#w@x@example.com/") == f"http://ann:{MASK}@example.com/"  # the last `@`
    for plain in ("http://example.com:8080/p?email=a@b.example", "http://example.com/a?t=12:30&e=a@b.example",
                  "http://[::1]:8080/x?e=a@b.example", "http://[::1]/x?e=a:b@c.example",
                  "http://ann:pa#ss word@example.com/"):  # a host and port, a `:` past the authority; a space
        assert mask_value("url", plain) == plain and credential_texts({"url": plain}) == [], plain

    original = {"url": "http://ann:Hash#Passw0rd-7@example.com/p"}
    shown = mask_value("url", original["url"])
    assert shown == f"http://ann:{MASK}@example.com/p" and shows_masked({"url": shown})
    assert restore_masked({"url": shown + "?page=2"}, original) == {"url": "http://ann:Hash#Passw0rd-7@example.com/p?page=2"}
    for elsewhere in (f"http://ann:{MASK}@evil.example/p", f"http://ann:{MASK}#x@example.com/p",
                      f"http://ann:{MASK}@evil.example\\@example.com/p"):
        assert restore_masked({"url": elsewhere}, original) == {"url": elsewhere}, elsewhere

    slashed = "http://ann:S3cretPassw0rd@example.com\\@evil.com/"
    assert _sent_password(slashed) == "S3cretPassw0rd"  # requests' reading: to example.com, with this password
    assert mask_value("url", slashed) == f"http://ann:{MASK}@example.com\\@evil.com/"
    assert credential_texts({"url": slashed}) == ["S3cretPassw0rd"]
    assert restore_masked({"url": mask_value("url", slashed)}, {"url": "http://ann:S3cretPassw0rd@example.com/"}) == {
        "url": slashed}  # the same user on the host requests sends it to
    for url in ("https://ann:s3cret-pw@example.com:8443/p", "http://ann:S3cret@Passw0rd@example.com/",
                "http://ann:S3cret%40Passw0rd@[::1]:8080/", "http://ann:S3cret\tPassw0rd@example.com/", slashed):
        sent = _sent_password(url)  # whatever requests sends is what is scrubbed
        assert sent is not None and sent in credential_texts({"url": url}), url
        assert MASK in mask_value("url", url) and sent not in mask_value("url", url), url


async def test_a_url_password_with_an_unencoded_hash_is_in_no_record_and_no_error(
        web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    """The run through the API and the `http-request` runner: requests cannot parse the URL (`'ann:LongHashPrefix'
    is not a valid host or port`), and the record, its error and the audit showed the password in clear."""
    url, seen = echo
    api = _api(web)
    created = await api.post("/api/v1/executions", json={"action": "core.http", "parameters": {
        "url": _with_userinfo(url, "ann:LongHashPrefix#Passw0rd-9"), "timeout": 5}})
    assert created.status_code == 201, created.text
    failed = await web.squall.executions.wait(created.json()["id"], timeout=30)
    assert failed["status"] == "failed" and seen == []  # sent nowhere: requests reads no host in it
    shown = _with_userinfo(url, f"ann:{MASK}")
    assert failed["parameters"]["url"] == shown
    assert failed["result"]["error"].startswith(f"request to {shown} failed"), failed["result"]
    got = await api.get(f"/api/v1/executions/{failed['id']}")
    rows = await web.squall.db(web.squall.store.audit_list, 100)
    sinks = "\n".join(audit_sinks.line(row) for row in rows)
    assert shown in sinks  # the request's audit event names the URL, masked
    for where, text in (("api get", got.text), ("stored", _stored_everything(web.squall)), ("audit sinks", sinks),
                        ("audit", json.dumps(rows, default=str))):
        assert "LongHashPrefix" not in text and "Passw0rd-9" not in text, where


# -- a token given as a URL's user (`https://<token>@github.com/`), and URLs in other parameters -------------

#: A GitHub token as the bare user of a URL (GitHub, GitLab and others take a token there, with no password).
USER_TOKEN = "ghp_T0kenAsUser4f8a1c9e2b7d6a5f3e0c1b2a"
#: A token of no known prefix: 20 or more of `[A-Za-z0-9_.-]` with a digit.
PLAIN_TOKEN = "a1b2c3d4e5f6a7b8c9d0e1f2"


def test_a_token_given_as_a_url_s_user_is_masked_and_restored_by_the_one_rule() -> None:
    """`https://ghp_…@github.com/org/repo.git` was shown as given in the record, the API, chat and the audit:
    only a password was masked. An http(s) URL's user that looks like a token (a known prefix, or 20 or more
    of `[A-Za-z0-9_.-]` with a digit) is masked, with its password if it has one; a user name is not."""
    from engine.parameters import credential_texts, shows_masked

    github = f"https://{USER_TOKEN}@github.com/org/repo.git"
    assert mask_value("url", github) == f"https://{MASK}@github.com/org/repo.git"
    for token in (PLAIN_TOKEN, "gho_x1", "ghs_x1", "github_pat_11ABC", "glpat-abc", "xoxb-1-ab", "xoxp-1-ab",
                  "a.b-c_d.e-f_g.h-i_j.k-9"):
        assert mask_value("url", f"https://{token}@h.example/p") == f"https://{MASK}@h.example/p", token
        assert mask_value("url", f"HTTP://{token}@h.example/") == f"HTTP://{MASK}@h.example/", token
    # a token as the user with a password (GitHub's `<token>:x-oauth-basic`) or an empty one: all of it hidden
    assert mask_value("url", f"https://{USER_TOKEN}:x-oauth-basic@github.com/o/r") == f"https://{MASK}@github.com/o/r"
    assert mask_value("url", f"http://{USER_TOKEN}:@github.com/") == f"http://{MASK}@github.com/"
    for plain in ("https://ann@example.com/", "https://git@github.com/o/r.git", "https://deploy-bot@example.com/",
                  "https://abcdefghijklmnopqrstuvwxyz@example.com/",  # long, but no digit: a name
                  "https://short1@example.com/", "https://ann%40corp.example0123456789@example.com/",
                  f"ssh://{USER_TOKEN}@github.com/o/r.git", f"git://{PLAIN_TOKEN}@example.com/",
                  f"https://example.com/?user={USER_TOKEN}@x"):
        assert mask_value("url", plain) == plain and credential_texts({"url": plain}) == [], plain
    assert mask({"url": github}, set()) == {"url": f"https://{MASK}@github.com/org/repo.git"}  # what is sealed
    assert credential_texts({"url": github}) == [USER_TOKEN]
    assert set(credential_texts({"url": f"https://{USER_TOKEN}:x-oauth-basic@github.com/"})) == {
        f"{USER_TOKEN}:x-oauth-basic", USER_TOKEN, "x-oauth-basic"}
    assert audit_sinks.entry({"detail": {"parameters": {"url": github}}})["detail"] == {
        "parameters": {"url": f"https://{MASK}@github.com/org/repo.git"}}

    original = {"url": github}
    edited = f"https://{MASK}@github.com/org/other.git"
    assert shows_masked({"url": edited}) and not shows_masked({"url": "https://ann@github.com/"})
    assert restore_masked({"url": edited}, original) == {"url": f"https://{USER_TOKEN}@github.com/org/other.git"}
    with_password = {"url": f"https://{USER_TOKEN}:x-oauth-basic@github.com/o/r"}
    assert restore_masked({"url": f"https://{MASK}@github.com/o/r?x=1"}, with_password) == {
        "url": f"https://{USER_TOKEN}:x-oauth-basic@github.com/o/r?x=1"}
    for elsewhere in (f"https://{MASK}@evil.example/o/r", f"http://{MASK}@github.com/o/r",
                      f"https://{MASK}@github.com:444/o/r", f"https://:{MASK}@github.com/o/r",
                      f"https://ann:{MASK}@github.com/o/r"):
        assert restore_masked({"url": elsewhere}, original) == {"url": elsewhere}, elsewhere  # never sent elsewhere
    password = {"url": "https://:LongPassw0rd-1@github.com/"}  # a password is not put back as a user, nor back
    assert restore_masked({"url": f"https://{MASK}@github.com/"}, password) == {"url": f"https://{MASK}@github.com/"}
    assert restore_masked({"url": f"https://:{MASK}@github.com/"}, original) == {"url": f"https://:{MASK}@github.com/"}


def test_urls_in_parameters_named_url_or_proxy_are_masked_as_url_is() -> None:
    """`http_proxy: http://px:pass@proxy:3128` (the `http-request` runner's own) and `repo_url: https://<token>@…`
    were shown as given: only a parameter named exactly `url` was read as a URL. A parameter whose name ends in
    `url` or `_proxy`, in any case, is masked, scrubbed, audited and restored by the same rule."""
    from engine.parameters import credential_texts, shows_masked

    proxy = "http://px:proxy-pass-123@127.0.0.1:3128"
    values = {"http_proxy": proxy, "HTTPS_PROXY": proxy, "repo_url": f"https://{USER_TOKEN}@github.com/o/r.git",
              "webhookUrl": "https://hook:hook-pass-456@hooks.example/x", "message": proxy, "proxy_host": proxy}
    shown = mask(values, set())
    assert shown == {"http_proxy": f"http://px:{MASK}@127.0.0.1:3128", "HTTPS_PROXY": f"http://px:{MASK}@127.0.0.1:3128",
                     "repo_url": f"https://{MASK}@github.com/o/r.git", "webhookUrl": f"https://hook:{MASK}@hooks.example/x",
                     "message": proxy, "proxy_host": proxy}  # other names: as given
    assert set(credential_texts(values)) == {"proxy-pass-123", USER_TOKEN, "hook-pass-456"}
    assert set(credential_texts({**values, "headers": {"Authorization": TOKEN}})) >= {"proxy-pass-123", USER_TOKEN}
    assert audit_sinks.entry({"detail": {"parameters": values}})["detail"] == {"parameters": shown}
    assert shows_masked({"repo_url": shown["repo_url"]}) and shows_masked({"http_proxy": shown["http_proxy"]})
    assert not shows_masked({"message": f"http://px:{MASK}@127.0.0.1:3128"})
    assert restore_masked({**shown, "repo_url": f"https://{MASK}@github.com/o/other.git"}, values) == {
        **values, "repo_url": f"https://{USER_TOKEN}@github.com/o/other.git"}
    moved = {"http_proxy": f"http://px:{MASK}@evil.example:3128"}
    assert restore_masked(moved, values) == moved  # a proxy's password goes to that proxy only


def _clone_pack(home: Path) -> None:
    pack = home / "packs" / "gitops"
    write(pack / "pack.yaml", "ref: gitops\nname: gitops\ndescription: d\nversion: 1.0.0\nauthor: t\n")
    write(pack / "actions" / "clone.yaml", """
        name: clone
        runner_type: local-shell-cmd
        parameters:
          repo_url: {type: string, required: true}
          cmd: {default: "echo cloning {{ repo_url }}; echo {{ repo_url | length }}"}
    """)


async def test_a_token_in_a_repo_url_is_in_no_record_output_or_audit_and_a_re_run_sends_it_again(home: Path) -> None:
    """`repo_url: https://ghp_…@github.com/org/repo.git` was stored and shown as given, and echoed in the output;
    the action gets it as given, the record, output and audit show it masked, and a re-run of the URL as shown
    (its path edited) gets the token back, on the same host only; an `http_proxy`'s password likewise."""
    _clone_pack(home)
    repo = f"https://{USER_TOKEN}@github.com/org/repo.git"
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        record = await squall.executions.request("gitops.clone", {"repo_url": repo})
        done = await squall.executions.wait(record["id"], timeout=30)
        edited = f"https://{MASK}@github.com/org/other.git"
        again = await squall.chat.commands.rerun(done["id"], {"repo_url": edited}, {})
        redone = await squall.executions.wait(again["id"], timeout=30)
        moved = await squall.chat.commands.rerun(done["id"], {"repo_url": f"https://{MASK}@evil.example/o.git"}, {})
        elsewhere = await squall.executions.wait(moved["id"], timeout=30)
        proxied = await squall.executions.request("core.http", {
            "url": "http://127.0.0.1:1/x", "http_proxy": "http://px:proxy-pass-123@127.0.0.1:1", "timeout": 5})
        failed = await squall.executions.wait(proxied["id"], timeout=30)
        stored = _stored_everything(squall)
    finally:
        await squall.close()
    assert done["status"] == "succeeded", done["result"]
    assert done["parameters"]["repo_url"] == f"https://{MASK}@github.com/org/repo.git"
    assert done["result"]["stdout"].splitlines() == [f"cloning https://{MASK}@github.com/org/repo.git", str(len(repo))]
    assert redone["status"] == "succeeded", redone["result"]
    restored = f"https://{USER_TOKEN}@github.com/org/other.git"
    assert redone["result"]["stdout"].splitlines() == [f"cloning {edited}", str(len(restored))]  # the token, back
    assert elsewhere["result"]["stdout"].splitlines()[1] == str(len(f"https://{MASK}@evil.example/o.git"))
    assert failed["status"] == "failed" and failed["parameters"]["http_proxy"] == f"http://px:{MASK}@127.0.0.1:1"
    assert USER_TOKEN not in stored and "proxy-pass-123" not in stored
    assert USER_TOKEN not in json.dumps([done, redone, elsewhere, failed], default=str)


async def test_a_token_as_a_url_s_user_is_sent_and_shown_nowhere(
        web: Web, echo: tuple[str, list[dict[str, str]]], caplog: pytest.LogCaptureFixture) -> None:
    """`url: http://<token>:@host/` (requests sends it as `Basic <token>:`) through the API: the record, the web's
    page and re-run form, the audit and the log show it masked, and a re-run sends it again, to the same host."""
    import logging

    caplog.set_level(logging.DEBUG)
    url, seen = echo
    api = _api(web)
    basic = "Basic " + base64.b64encode(f"{USER_TOKEN}:".encode()).decode()
    done = await _run_http(web, api, _with_userinfo(url, f"{USER_TOKEN}:"), headers={"Accept": "application/json"})
    assert seen[-1]["Authorization"] == basic
    got = await api.get(f"/api/v1/executions/{done['id']}")
    assert got.json()["parameters"]["url"] == _with_userinfo(url, MASK)
    edited = _with_userinfo(url, MASK) + "?page=2"
    changed = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"url": edited}})
    assert changed.status_code == 201, changed.text
    assert (await web.squall.executions.wait(changed.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["Authorization"] == basic
    moved = edited.replace("127.0.0.1", "localhost")  # another host: the mask goes as it is, never the token
    elsewhere = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"url": moved}})
    assert (await web.squall.executions.wait(elsewhere.json()["id"], timeout=30))["status"] == "succeeded"
    assert "Authorization" not in seen[-1]

    viewer, _ = await web.signed_in("vic", "viewer")
    page = await viewer.get(f"/executions/{done['id']}")
    operator, _csrf = await web.signed_in("olga", "operator")
    form = await operator.get(f"/executions/{done['id']}/rerun")
    rows = await web.squall.db(web.squall.store.audit_list, 100)
    sinks = "\n".join(audit_sinks.line(row) for row in rows)
    for where, text in (("api get", got.text), ("web page", page.text), ("re-run form", form.text),
                        ("stored", _stored_everything(web.squall)), ("audit sinks", sinks),
                        ("audit", json.dumps(rows, default=str)), ("re-run", changed.text), ("log", caplog.text)):
        assert USER_TOKEN not in text and basic.split()[1] not in text, where


# -- a re-run to another target carries none of the original's credentials ---------------------------------

def test_a_re_run_to_another_target_carries_no_credential_by_the_one_rule() -> None:
    """Whoever re-ran someone's request could point it at a host of their choosing (`url`, a proxy, `hosts`)
    and it went there with the original's headers, cookies and secret parameters: the rule restores them to the
    same target only (scheme, host, port), and refuses a re-run elsewhere naming what must be given again."""
    from engine.parameters import rerun_parameters

    original = {"url": "https://api.example/v1/x", "headers": HEADERS, "cookies": {"sid": JAR}, "username": "ann",
                "password": "pw-secret-1"}
    sealed = ["headers", "cookies", "password"]  # what the original was given and stored sealed
    same = {"url": "https://API.example:443/v2?page=2", "headers": {**mask_headers(HEADERS), "Accept": "x/y"}}
    assert rerun_parameters(same, original, sealed) == {**same, "headers": {**HEADERS, "Accept": "x/y"}}
    assert rerun_parameters({}, original, sealed) == {}  # the same request again: the merge carries them
    for moved in ({"url": "https://evil.example/v1/x"}, {"url": "http://api.example/v1/x"},
                  {"url": "https://api.example:444/v1/x"}, {"url": "https://ann:pw@evil.example/"},
                  {"http_proxy": "http://evil.example:3128"}, {"https_proxy": "http://evil.example:3128"}):
        with pytest.raises(ParameterError) as refused:
            rerun_parameters(moved, original, sealed)
        message = str(refused.value)
        assert message.startswith(f"re-running with a new {next(iter(moved))} "), message
        for name in ("headers.Authorization", "headers.Cookie", "headers.X-Api-Key", "headers.Proxy-Authorization",
                     "cookies.sid", "password"):
            assert name in message, (moved, message)
        assert "Accept" not in message and "username" not in message and _leaked(message) == [], message
    anew = {"url": "https://evil.example/", "headers": {"Accept": "x"}, "cookies": None, "password": "mine-pw"}
    assert rerun_parameters(anew, original, sealed) == anew  # given again: nothing of the original's goes there
    with pytest.raises(ParameterError) as masked:  # a mask left as shown is never filled in for another host
        rerun_parameters({**anew, "headers": {**mask_headers(HEADERS), "X-Api-Key": "mine-key-1"}}, original, sealed)
    assert "headers.Authorization" in str(masked.value) and "X-Api-Key" not in str(masked.value)
    assert "password" not in str(masked.value)

    shell = {"hosts": "web1, web2", "username": "deploy", "password": "ssh-pw-1", "private_key": "KEY-1", "port": 22}
    assert rerun_parameters({"hosts": "WEB2"}, shell, ["password", "private_key"]) == {"hosts": "WEB2"}  # fewer
    for moved in ({"hosts": "web1,evil.example"}, {"port": 2222}, {"bastion_host": "jump.evil.example"}):
        with pytest.raises(ParameterError) as refused:
            rerun_parameters(moved, shell, ["password", "private_key"])
        assert "password, private_key" in str(refused.value) and "ssh-pw-1" not in str(refused.value), moved


async def test_an_api_re_run_to_another_host_is_refused_naming_the_credentials(
        web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    """bob's `re_run` of a request made with an `X-Api-Key`, cookies and a `password`, given only a new `url`:
    the other host got them all. Refused, naming what to give again; to the same host they are sent again."""
    url, seen = echo
    api = _api(web)
    done = await _run_http(web, api, url, cookies={"jar": JAR}, username="ann", password="pw-secret-1")
    sent = len(seen)
    moved = url.replace("127.0.0.1", "localhost") + "?evil"
    refused = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"url": moved}})
    assert refused.status_code == 400, refused.text
    message = refused.json()["faultstring"]
    for name in ("headers.Authorization", "headers.X-Api-Key", "headers.Cookie", "cookies.jar", "password"):
        assert name in message, message
    assert _leaked(refused.text) == [] and "pw-secret-1" not in refused.text
    assert len(seen) == sent and len(await web.squall.executions.list(action="core.http")) == 1

    again = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": {"url": url + "?page=2"}})
    assert again.status_code == 201, again.text
    assert (await web.squall.executions.wait(again.json()["id"], timeout=30))["status"] == "succeeded"
    basic = "Basic " + base64.b64encode(b"ann:pw-secret-1").decode()
    assert seen[-1]["X-Api-Key"] == API_KEY and seen[-1]["Authorization"] == basic  # the same host: restored

    anew = {"url": moved, "headers": {"X-Api-Key": "fresh-key-0001"}, "cookies": None, "password": "pw-fresh-2"}
    typed = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": anew})
    assert typed.status_code == 201, typed.text
    assert (await web.squall.executions.wait(typed.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["X-Api-Key"] == "fresh-key-0001" and _leaked(json.dumps(seen[-1])) == []
    assert seen[-1]["Authorization"] == "Basic " + base64.b64encode(b"ann:pw-fresh-2").decode()


async def test_a_re_run_through_another_proxy_or_from_the_engine_is_refused_too(home: Path) -> None:
    """The rule is the engine's (`ExecutionService.rerun`): the CLI's re-run and a re-run through a new proxy
    carry nothing either; a remote-shell action's password does not go to new `hosts`."""
    squall = await Squall.start(load_config(home / "config.yml"))
    try:
        http = await squall.executions.request("core.http", {"url": "http://127.0.0.1:1/x", "headers": HEADERS,
                                                             "timeout": 5})
        await squall.executions.wait(http["id"], timeout=30)
        with pytest.raises(ParameterError) as proxied:
            await squall.executions.rerun(http["id"], {"http_proxy": "http://127.0.0.1:2/"}, {"user": "eve"})
        shell = await squall.executions.request("core.remote", {"hosts": "127.0.0.1:1", "cmd": "true",
                                                                "password": "ssh-pw-secret-3", "timeout": 5})
        await squall.executions.wait(shell["id"], timeout=30)
        with pytest.raises(ParameterError) as hosts:
            await squall.executions.rerun(shell["id"], {"hosts": "127.0.0.2:1"}, {"user": "eve"})
        same = await squall.executions.rerun(shell["id"], {"cmd": "false"}, {"user": "eve"})
        listed = await squall.executions.list(limit=10)
    finally:
        await squall.close()
    assert "re-running with a new http_proxy" in str(proxied.value) and "headers.X-Api-Key" in str(proxied.value)
    assert "password" in str(hosts.value) and "ssh-pw-secret-3" not in str(hosts.value)
    assert sorted(e["id"] for e in listed) == sorted([http["id"], shell["id"], same["id"]])  # none stored


# -- a re-run that sends them less safely to the same target carries none of them either ----------------------

#: Each re-run to the original's host that sends its credentials less safely, with the change its refusal names.
WEAKER = (({"verify_ssl_cert": False}, "verify_ssl_cert turned off"),
          ({"verify_ssl_cert": "false"}, "verify_ssl_cert turned off"),  # as the CLI gives it: text
          ({"allow_redirects": True}, "allow_redirects turned on"),
          ({"allow_redirects": "yes"}, "allow_redirects turned on"),
          ({"username": "bob"}, "a new username"))
#: The http request `WEAKER`'s re-runs are of, and what it was given and stored sealed.
STRICT = {"url": "https://api.example/v1/x", "headers": HEADERS, "cookies": {"sid": JAR}, "username": "ann",
          "password": "pw-secret-1", "verify_ssl_cert": True, "allow_redirects": False}
STRICT_SEALED = ["headers", "cookies", "password"]


@pytest.mark.parametrize(("weaker", "change"), WEAKER, ids=[str(weaker) for weaker, _ in WEAKER])
def test_a_re_run_that_weakens_how_credentials_go_carries_none_by_the_one_rule(weaker: dict[str, Any],
                                                                                change: str) -> None:
    """A re-run to the original's host could still turn TLS verification off (a server in between reads the
    `Authorization`), turn redirects on, or change only `username` (the original's password tried for another
    account), and kept the original's credentials: each is refused as a new target is, naming the change and
    what to give again, whether the original gave the setting or had the runner's default. Given again, they
    are the re-runner's own and go; a mask left as shown is never filled in."""
    from engine.parameters import rerun_parameters

    defaults = {k: v for k, v in STRICT.items() if k not in ("verify_ssl_cert", "allow_redirects")}  # the runner's
    for original in (STRICT, defaults):
        with pytest.raises(ParameterError) as refused:
            rerun_parameters({**weaker, "headers": mask_headers(HEADERS)}, original, STRICT_SEALED)
        message = str(refused.value)
        assert message.startswith(f"re-running with {change} "), message
        assert message.endswith(f"re-run with the original's {next(iter(weaker))}"), message
        for name in ("headers.Authorization", "headers.Cookie", "headers.X-Api-Key", "headers.Proxy-Authorization",
                     "cookies.sid", "password"):
            assert name in message, (original, message)
        assert "Accept" not in message and _leaked(message) == [] and "pw-secret-1" not in message, message

    anew = {"headers": {"Accept": "x"}, "cookies": None, "password": "mine-pw-2"}
    assert rerun_parameters({**weaker, **anew}, STRICT, STRICT_SEALED) == {**weaker, **anew}  # given again: theirs
    with pytest.raises(ParameterError) as masked:
        rerun_parameters({**weaker, **anew, "headers": mask_headers(HEADERS)}, STRICT, STRICT_SEALED)
    assert "headers.Authorization" in str(masked.value) and "password" not in str(masked.value)


def test_a_re_run_as_strict_as_the_original_carries_them_and_each_change_is_named() -> None:
    """Verification on, redirects off, a setting as the original had it or the runner's default (None) weaken
    nothing: the credentials are carried, masks filled in. A re-run both moved and weakened names every change
    and how to re-run as the original went; a remote action's `username` is its SSH account."""
    from engine.parameters import rerun_parameters

    unchanged = ({"verify_ssl_cert": True}, {"verify_ssl_cert": "TRUE"}, {"verify_ssl_cert": None},
                 {"allow_redirects": False}, {"allow_redirects": "off"}, {"allow_redirects": None}, {"username": "ann"})
    for same in unchanged:
        edited = {**same, "headers": {**mask_headers(HEADERS), "Accept": "x/y"}}
        assert rerun_parameters(edited, STRICT, STRICT_SEALED) == {**edited, "headers": {**HEADERS, "Accept": "x/y"}}
    lax = {**STRICT, "verify_ssl_cert": False, "allow_redirects": True}
    stricter = {"verify_ssl_cert": True, "allow_redirects": False, "headers": mask_headers(HEADERS)}
    assert rerun_parameters(stricter, lax, STRICT_SEALED) == {**stricter, "headers": HEADERS}
    assert rerun_parameters({"verify_ssl_cert": "no"}, lax, STRICT_SEALED) == {"verify_ssl_cert": "no"}  # as it went

    both = {"url": "https://evil.example/", "verify_ssl_cert": False, "allow_redirects": True}
    with pytest.raises(ParameterError) as refused:
        rerun_parameters(both, STRICT, STRICT_SEALED)
    assert str(refused.value).startswith("re-running with a new url (not where the original went), verify_ssl_cert "
                                         "turned off (a TLS connection left unverified), allow_redirects turned on")
    assert str(refused.value).endswith("re-run to the original's target and with the original's verify_ssl_cert, "
                                       "allow_redirects")

    shell = {"hosts": "web1", "username": "deploy", "password": "ssh-pw-1", "private_key": "KEY-1", "port": 22}
    for other in ("root", None, ""):  # another account, or the one Squall runs as
        with pytest.raises(ParameterError) as refused:
            rerun_parameters({"username": other}, shell, ["password", "private_key"])
        assert "a new username" in str(refused.value) and "password, private_key" in str(refused.value), other
        assert "ssh-pw-1" not in str(refused.value) and "KEY-1" not in str(refused.value)
    assert rerun_parameters({"username": "deploy", "hosts": "WEB1"}, shell, ["password"]) == {
        "username": "deploy", "hosts": "WEB1"}


@pytest.mark.parametrize(("weaker", "change"), [WEAKER[0], WEAKER[2], WEAKER[4]],  # as JSON gives them
                         ids=["verify_ssl_cert", "allow_redirects", "username"])
async def test_an_api_re_run_that_weakens_how_credentials_go_is_refused_naming_them(
        web: Web, echo: tuple[str, list[dict[str, str]]], weaker: dict[str, Any], change: str) -> None:
    """bob's `re_run`, to the original's own URL, of a request made with an `X-Api-Key`, cookies and ann's
    `password`, given only `verify_ssl_cert: false`, `allow_redirects: true` or `username: bob`: it went with them
    all. Refused, nothing sent or stored; as strict as the original, they are sent again; given anew, bob's go."""
    url, seen = echo
    api = _api(web)
    done = await _run_http(web, api, url, cookies={"jar": JAR}, username="ann", password="pw-secret-1")
    sent = len(seen)
    refused = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": weaker})
    assert refused.status_code == 400, refused.text
    message = refused.json()["faultstring"]
    assert change in message, message
    for name in ("headers.Authorization", "headers.X-Api-Key", "headers.Cookie", "cookies.jar", "password"):
        assert name in message, message
    assert _leaked(refused.text) == [] and "pw-secret-1" not in refused.text
    assert len(seen) == sent and len(await web.squall.executions.list(action="core.http")) == 1

    strict = {"verify_ssl_cert": True, "allow_redirects": False, "username": "ann"}
    again = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": strict})
    assert again.status_code == 201, again.text
    assert (await web.squall.executions.wait(again.json()["id"], timeout=30))["status"] == "succeeded"
    basic = "Basic " + base64.b64encode(b"ann:pw-secret-1").decode()
    assert seen[-1]["X-Api-Key"] == API_KEY and seen[-1]["Authorization"] == basic  # as the original went

    anew = {**weaker, "username": "bob", "password": "pw-bob-3", "headers": {"X-Api-Key": "fresh-key-0001"},
            "cookies": None}
    typed = await api.post(f"/api/v1/executions/{done['id']}/re_run", json={"parameters": anew})
    assert typed.status_code == 201, typed.text
    assert (await web.squall.executions.wait(typed.json()["id"], timeout=30))["status"] == "succeeded"
    assert seen[-1]["X-Api-Key"] == "fresh-key-0001" and _leaked(json.dumps(seen[-1])) == []
    assert seen[-1]["Authorization"] == "Basic " + base64.b64encode(b"bob:pw-bob-3").decode()
