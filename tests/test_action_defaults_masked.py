"""An action's parameter defaults are shown masked wherever its schema is shown: the API's actions, an
execution's embedded `action`, and the web's action page, which viewers read. A default is what every run
that leaves the parameter out is given, so a credential in it is masked as the execution's `parameters`
mask it (`engine.parameters.mask`): a secret's, a credential header's, a cookie's, a URL's password."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from engine.parameters import shown_parameters
from tests.conftest import write
from tests.test_api import KEY
from tests.test_web_auth import Web, started_web

API_KEY, PASSWORD, TOKEN, COOKIE = "K3y-4pi-0123456789", "Pa55-word-42", "tok-s3cret-777", "c00kie-value-31"
CREDENTIALS = (API_KEY, PASSWORD, TOKEN, COOKIE)

ACTION = f"""
name: creds
runner_type: local-shell-cmd
description: An action whose defaults hold credentials
parameters:
  cmd: {{default: 'true', immutable: true}}
  headers: {{type: object, default: {{X-Api-Key: {API_KEY}, Accept: application/json}}}}
  url: {{type: string, default: "https://ann:{PASSWORD}@api.example.com/v1"}}
  cookies: {{type: object, default: {{session: {COOKIE}}}}}
  token: {{type: string, secret: true, default: {TOKEN}}}
  region: {{type: string, default: eu-west-1}}
"""


@pytest.fixture
async def web(home: Path) -> AsyncIterator[Web]:
    write(home / "packs" / "vault" / "pack.yaml", "ref: vault\nname: vault\nversion: 1.0.0\nauthor: t\n")
    write(home / "packs" / "vault" / "actions" / "creds.yaml", ACTION)
    async with started_web(home) as started:
        yield started


def _api(web: Web) -> httpx.AsyncClient:
    client = web.client()
    client.headers["St2-Api-Key"] = KEY
    return client


def _assert_masked_defaults(parameters: dict) -> None:
    """The credentials masked, what says where a request goes (the user, host, other headers) kept."""
    assert parameters["headers"]["default"] == {"X-Api-Key": "********", "Accept": "application/json"}
    assert parameters["url"]["default"] == "https://ann:********@api.example.com/v1"
    assert parameters["cookies"]["default"] == {"session": "********"}
    assert parameters["token"]["default"] == "********"
    assert parameters["region"]["default"] == "eu-west-1"


def test_shown_parameters_masks_defaults_as_a_request_s_values_and_leaves_the_schema() -> None:
    schema = {"headers": {"type": "object", "default": {"Authorization": "Bearer abcdefgh1234"}},
              "token": {"type": "string", "secret": True, "default": None},
              "who": {"type": "string", "required": True}}
    shown = shown_parameters(schema)
    assert shown == {"headers": {"type": "object", "default": {"Authorization": "********"}},
                     "token": {"type": "string", "secret": True, "default": None},
                     "who": {"type": "string", "required": True}}
    assert schema["headers"]["default"] == {"Authorization": "Bearer abcdefgh1234"}  # the registry's untouched


async def test_the_api_s_actions_show_defaults_masked(web: Web) -> None:
    client = _api(web)
    one = await client.get("/api/v1/actions/vault.creds")
    assert one.status_code == 200
    _assert_masked_defaults(one.json()["parameters"])
    listed = await client.get("/api/v1/actions", params={"pack": "vault"})
    _assert_masked_defaults(listed.json()[0]["parameters"])
    for response in (one, listed):
        assert not [text for text in CREDENTIALS if text in response.text]


async def test_an_execution_s_embedded_action_shows_defaults_masked(web: Web) -> None:
    client = _api(web)
    created = await client.post("/api/v1/executions", json={"action": "vault.creds", "parameters": {}})
    assert created.status_code == 201, created.text
    done = await web.squall.executions.wait(created.json()["id"], timeout=20)
    assert done["status"] == "succeeded", done
    got = await client.get(f"/api/v1/executions/{done['id']}")
    assert got.status_code == 200
    _assert_masked_defaults(got.json()["action"]["parameters"])
    assert not [text for text in CREDENTIALS if text in got.text]
    listed = await client.get("/api/v1/executions", params={"action": "vault.creds"})
    assert not [text for text in CREDENTIALS if text in listed.text]


async def test_the_web_s_action_page_shows_defaults_masked_to_a_viewer(web: Web) -> None:
    client, _ = await web.signed_in("vic", "viewer")
    page = await client.get("/actions/vault.creds")
    assert page.status_code == 200
    assert not [text for text in CREDENTIALS if text in page.text]
    assert "https://ann:********@api.example.com/v1" in page.text  # the URL is shown, its password masked
    assert "eu-west-1" in page.text and "application/json" in page.text
