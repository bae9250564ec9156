"""An action's credential defaults (a `secret: true` parameter's, a credential header of a `headers` default,
a URL's password) are shown to no one who runs or reads about the action: the web's run form and chat forms
leave such a field empty (left empty, the engine applies the default itself), chat's `help COMMAND` and
`squall action get`/`list` show them masked as the API does (`engine.parameters.shown_parameters`).
docs/security.md, "An action's parameter defaults are masked"."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bot.chat import forms as chat_forms
from bot.chat import help as chat_help
from bot.forms import Field, action_fields, parse
from engine.config import SYSTEM_PACKS_PATH
from engine.packs import load_registry
from tests.conftest import write
from tests.test_chat import loopback_chat, settle
from tests.test_chat_help import ask
from tests.test_cli import like_a_process
from tests.test_http_secret_headers import _echo_server
from tests.test_web_auth import Web, started_web

API_KEY, PASSWORD, TOKEN = "K3y-form-0123456789", "Pw-form-555-xyz", "tok-form-777-abc"
CREDENTIALS = (API_KEY, PASSWORD, TOKEN)


def _action(url: str) -> str:
    """An HTTP action to `url` (given a password) whose defaults hold the credentials: a header of its own,
    the URL's password, and a secret parameter the `X-Token` header renders."""
    login = url.replace("http://", f"http://ann:{PASSWORD}@", 1)
    return f"""
name: creds
runner_type: http-request
description: An action whose defaults hold credentials
parameters:
  url: {{type: string, default: "{login}"}}
  headers: {{type: object, default: {{X-Api-Key: {API_KEY}, X-Token: "{{{{ token }}}}", Accept: application/json}}}}
  token: {{type: string, secret: true, default: {TOKEN}}}
  region: {{type: string, default: eu-west-1}}
"""


ALIAS = f"""
name: creds
action_ref: vault.creds
description: Call the vault.
allow_overrides: [headers]
formats:
  - "call vault {{{{region}}}}"
  - "call vault at {{{{ url = http://ann:{PASSWORD}@vault.example.com/ }}}}"
"""


def _pack(home: Path, url: str = "http://127.0.0.1:9/echo") -> None:
    write(home / "packs" / "vault" / "pack.yaml", "ref: vault\nname: vault\nversion: 1.0.0\nauthor: t\n")
    write(home / "packs" / "vault" / "actions" / "creds.yaml", _action(url))
    write(home / "packs" / "vault" / "aliases" / "creds.yaml", ALIAS)


def _leaked(text: str) -> list[str]:
    return [credential for credential in CREDENTIALS if credential in text]


# -- the fields a form draws --------------------------------------------------------------------------------

def _fields(home: Path) -> dict[str, Field]:
    _pack(home)
    registry = load_registry([home / "packs"], home / "configs", SYSTEM_PACKS_PATH)
    return {f.name: f for f in action_fields(registry.actions["vault.creds"])}


def test_a_form_leaves_a_credential_default_empty_and_an_empty_field_gives_nothing(home: Path) -> None:
    """Web and chat forms start a field with `Field.initial`: a credential default is not put there, and
    the field left empty is not given, so the engine's default applies; a plain default is still filled in."""
    fields = _fields(home)
    for name in ("url", "headers", "token"):
        assert fields[name].initial == "", name
        assert chat_forms._form_field(fields[name]).initial == "", name  # a Slack modal, a Mattermost dialog
        assert fields[name].concealed, name
        assert fields[name].has_default and not fields[name].required, name  # may be left empty
    assert not fields["region"].concealed and fields["region"].initial == "eu-west-1"
    assert chat_forms._form_field(fields["region"]).initial == "eu-west-1"
    asked = [fields[name] for name in ("url", "headers", "token", "region")]
    parsed = parse(asked, {"url": "", "headers": "  ", "token": "", "region": "eu-west-1"})
    assert parsed.ok and parsed.values == {"region": "eu-west-1"}  # the empty ones are not sent as ""
    typed = parse(asked, {"url": "http://other.example.com/", "headers": '{"X-Api-Key": "mine-123"}'})
    assert typed.values == {"url": "http://other.example.com/", "headers": {"X-Api-Key": "mine-123"}}


def test_a_templated_default_holding_a_password_is_not_told_as_a_template(home: Path) -> None:
    """The web shows a template default's text as help ("Left empty, the default applies: ..."): one holding
    a URL's password is concealed instead, and neither filled in nor told."""
    spec = {"type": "string", "default": f"https://ann:{PASSWORD}@{{{{ st2kv.system.host }}}}/"}
    item = Field(name="url", kind="string", required=False, description="", position=None, owner="a",
                 spec=spec, has_default=True, default=spec["default"])
    assert item.initial == "" and not item.templated and item.concealed


# -- the web's run form --------------------------------------------------------------------------------------

class _Form(HTMLParser):
    """What a browser sends of the run form as drawn: each input's value (a checkbox or radio when checked),
    each text area's text, each select's chosen option (else its first)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, str] = {}
        self._in: str | None = None  # the text area or select being read
        self._options: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        at = {k: v or "" for k, v in attrs}
        if tag == "input" and at.get("name"):
            if at.get("type") in ("checkbox", "radio") and "checked" not in at:
                return
            self.sent.setdefault(at["name"], at.get("value", ""))
        elif tag in ("textarea", "select") and at.get("name"):
            self._in, self._options = at["name"], []
            if tag == "textarea":
                self.sent[at["name"]] = ""
        elif tag == "option" and self._in:
            self._options.append((at.get("value", ""), "selected" in at))

    def handle_data(self, data: str) -> None:
        if self._in in self.sent:
            self.sent[self._in] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "select" and self._in:
            chosen = [value for value, selected in self._options if selected] or [v for v, _ in self._options[:1]]
            self.sent[self._in] = chosen[0] if chosen else ""
        if tag in ("select", "textarea"):
            self._in = None


def _as_drawn(page: str) -> dict[str, str]:
    form = page[page.index('<form class="run-form" method="post"'):]
    reader = _Form()
    reader.feed(form[:form.index("</form>")])
    return reader.sent


@pytest.fixture
def echo() -> Iterator[tuple[str, list[dict[str, str]]]]:
    with _echo_server() as served:
        yield served


@pytest.fixture
async def web(home: Path, echo: tuple[str, list[dict[str, str]]]) -> AsyncIterator[Web]:
    _pack(home, echo[0])
    async with started_web(home) as started:
        yield started


async def test_the_run_form_shows_an_operator_no_credential_and_runs_with_the_defaults(
        web: Web, echo: tuple[str, list[dict[str, str]]]) -> None:
    client, csrf = await web.signed_in("olga", "operator")
    page = await client.get("/actions/vault.creds")
    assert page.status_code == 200 and '<form class="run-form" method="post"' in page.text
    assert not _leaked(page.text)
    sent = _as_drawn(page.text)
    assert sent["url"] == "" and sent["headers"] == "" and sent["token"] == ""
    assert sent["region"] == "eu-west-1"  # a plain default is still filled in
    sent["csrf_token"] = csrf
    ran = await client.post("/actions/vault.creds", data=sent)
    assert ran.status_code == 303, ran.text
    done = await web.squall.executions.wait(ran.headers["location"].rsplit("/", 1)[1], timeout=20)
    assert done["status"] == "succeeded", done
    _, seen = echo
    assert len(seen) == 1
    got = {k.lower(): v for k, v in seen[0].items()}
    assert got["x-api-key"] == API_KEY and got["x-token"] == TOKEN  # the defaults, rendered and sent
    assert got["authorization"] == "Basic " + base64.b64encode(f"ann:{PASSWORD}".encode()).decode()
    shown = await client.get(f"/executions/{done['id']}")
    assert not _leaked(shown.text)


# -- chat's help ---------------------------------------------------------------------------------------------

async def test_help_command_shows_credential_defaults_masked(home: Path) -> None:
    _pack(home)
    async with loopback_chat(home) as chat:
        answer = await ask(chat, "!help creds", "bob")
        listed = await ask(chat, "!help", "bob")
        await settle(*chat[:2])
    assert answer.startswith("vault.creds → vault.creds"), answer
    assert not _leaked(answer) and not _leaked(listed)
    assert "  token (secret string, default ********; " in answer  # marked secret, default masked
    assert "  url (string, required, default http://ann:********@127.0.0.1:9/echo)" in answer  # where it goes: kept
    assert '  headers (object, default {"X-Api-Key": "********", ' in answer  # as JSON, as the author writes it
    assert "  region (string, default eu-west-1)" in answer
    # an alias format's own default for a URL parameter is masked as the parameter's is
    assert "!call vault at {{ url = http://ann:********@vault.example.com/ }}" in answer
    assert "!call vault at {{ url = http://ann:********@vault.example.com/ }}" in listed


def test_a_format_s_credential_default_is_masked_whatever_the_secrets() -> None:
    text = '!get {{ url = "https://ann:' + PASSWORD + '@h.example.com/" }} {{headers={"X-Api-Key": "' + API_KEY + '"}}}'
    for secrets in ((), ("token",)):
        shown = chat_help.masked(text, secrets)
        assert not _leaked(shown), shown
        assert '{{ url = "https://ann:********@h.example.com/" }}' in shown
        assert '{{headers={"X-Api-Key": "********"}}}' in shown
    assert chat_help.masked("!greet {{who=world}}", ()) == "!greet {{who=world}}"


# -- the CLI -------------------------------------------------------------------------------------------------

def test_action_get_and_list_show_credential_defaults_masked(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pack(home)
    squall = like_a_process(home, monkeypatch)
    got = squall("action", "get", "vault.creds", "--json")
    assert got.returncode == 0, got.stderr
    assert not _leaked(got.stdout)
    parameters: dict[str, Any] = json.loads(got.stdout)["parameters"]
    assert parameters["headers"]["default"] == {"X-Api-Key": "********", "X-Token": "********",
                                                "Accept": "application/json"}
    assert parameters["url"]["default"] == "http://ann:********@127.0.0.1:9/echo"
    assert parameters["token"]["default"] == "********" and parameters["region"]["default"] == "eu-west-1"
    table = squall("action", "get", "vault.creds")
    assert table.returncode == 0 and "eu-west-1" in table.stdout and not _leaked(table.stdout)
    listed = squall("action", "list", "--pack", "vault", "--json")
    assert listed.returncode == 0 and not _leaked(listed.stdout)
    assert json.loads(listed.stdout)[0]["parameters"]["url"]["default"] == "http://ann:********@127.0.0.1:9/echo"
