"""StackStorm's pack config API, as `st2 pack config <pack>` calls it: `GET /config_schemas/<pack>` (the
schema it asks by), then `PUT /configs/<pack>` with the values; `GET /configs[/<pack>]` with secrets
masked. Squall answered all of them with a bare 404, so `st2 pack config` said the pack had no schema."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml

from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.pack_config import MaskedSecretError, masked_config, restore_masked
from engine.parameters import MASK
from tests.conftest import write
from tests.test_api import KEY, _home

TOKEN = "tok-s3cret-value"
PASSWORD = "pw-s3cret-value"
SCHEMA = {
    "region": {"type": "string", "default": "eu", "description": "Where the service is."},
    "port": {"type": "integer", "required": True},
    "token": {"type": "string", "secret": True, "required": True},
    "auth": {"type": "object", "properties": {"user": {"type": "string"},
                                              "password": {"type": "string", "secret": True}}},
}


def _config_pack(home: Path) -> Path:
    """The pack `cfg`: a config schema with secrets at two depths, its config file, and an action that
    echoes a config value (`config_context`), to see that a run gets what the API wrote."""
    pack = home / "packs" / "cfg"
    write(pack / "pack.yaml", "ref: cfg\nname: cfg\ndescription: config tests\nversion: 0.1.0\nauthor: t\n")
    (pack / "config.schema.yaml").write_text(yaml.safe_dump(SCHEMA, sort_keys=False))
    write(pack / "actions" / "where.yaml", """
        name: where
        runner_type: local-shell-cmd
        parameters:
          region: {type: string, default: "{{ config_context.region }}"}
          cmd: {default: "echo {{ region }}", immutable: true}
    """)
    config_file = home / "configs" / "cfg.yaml"
    config_file.parent.mkdir(exist_ok=True)
    config_file.write_text(yaml.safe_dump({"port": 8080, "token": TOKEN, "auth": {"user": "ann",
                                                                                   "password": PASSWORD}}))
    return config_file


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    _home(home)
    _config_pack(home)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.close()


def _client(squall: Squall, key: str = KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                             headers={"St2-Api-Key": key})


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(squall) as c:
        yield c


def _config_file(squall: Squall) -> Path:
    return squall.config.configs_path / "cfg.yaml"


MASKED = {"region": "eu", "port": 8080, "token": MASK, "auth": {"user": "ann", "password": MASK}}


async def test_config_schemas_are_listed_and_got_by_pack(client: httpx.AsyncClient) -> None:
    listed = await client.get("/api/v1/config_schemas")
    assert listed.status_code == 200, listed.text
    by_pack = {item["pack"]: item for item in listed.json()}
    assert "demo" not in by_pack  # a pack without config.schema.yaml has no schema to list
    assert by_pack["cfg"]["attributes"] == SCHEMA and len(by_pack["cfg"]["id"]) == 24
    got = await client.get("/api/v1/config_schemas/cfg")
    assert got.status_code == 200 and got.json() == by_pack["cfg"]


async def test_a_pack_without_a_schema_or_not_loaded_is_a_404_saying_which(client: httpx.AsyncClient) -> None:
    """st2client turns the 404 into "doesn't exist or doesn't have a config schema defined"; the
    faultstring says which of the two it is."""
    none = await client.get("/api/v1/config_schemas/demo")
    assert none.status_code == 404 and "config.schema.yaml" in none.json()["faultstring"]
    missing = await client.get("/api/v1/config_schemas/nope")
    assert missing.status_code == 404 and 'Pack "nope" is not loaded' in missing.json()["faultstring"]
    for path in ("/api/v1/configs/nope", "/api/v1/configs/demo"):
        answer = await client.get(path)
        assert answer.status_code == 404 and answer.json()["faultstring"], path
    put = await client.put("/api/v1/configs/nope", json={"a": 1})
    assert put.status_code == 404 and "nope" in put.json()["faultstring"]


async def test_configs_show_secrets_masked_and_defaults_applied(squall: Squall, client: httpx.AsyncClient) -> None:
    listed = await client.get("/api/v1/configs")
    assert listed.status_code == 200, listed.text
    assert [item["pack"] for item in listed.json()] == ["cfg"]  # only packs that have a config
    got = await client.get("/api/v1/configs/cfg")
    assert got.status_code == 200 and got.json()["values"] == MASKED and got.json() == listed.json()[0]
    assert len(got.json()["id"]) == 24
    for answer in (listed, got):
        assert TOKEN not in answer.text and PASSWORD not in answer.text


async def test_show_secrets_reveals_them_to_a_config_key_only(squall: Squall, client: httpx.AsyncClient) -> None:
    """StackStorm shows secrets with `show_secrets=true` to an admin; in Squall the closest is a key from
    the config file, which names nobody and may act as anyone. A stored key or a token gets them masked."""
    shown = (await client.get("/api/v1/configs/cfg", params={"show_secrets": "true"})).json()["values"]
    assert shown["token"] == TOKEN and shown["auth"]["password"] == PASSWORD
    bob_key, _record = await squall.db(create_key, squall.store, "bob")
    async with _client(squall, bob_key) as bob:
        for path in ("/api/v1/configs/cfg", "/api/v1/configs"):
            answer = await bob.get(path, params={"show_secrets": "true"})
            assert answer.status_code == 200 and TOKEN not in answer.text and PASSWORD not in answer.text


async def test_put_writes_the_config_keeps_masked_secrets_reloads_and_audits(
        squall: Squall, client: httpx.AsyncClient) -> None:
    """What `st2 pack config` sends: the values. A secret sent back as `********` (read masked) keeps the
    stored one; the file is written whole, 0600, and the packs reloaded, so the next run gets it."""
    sent = {"region": "us", "port": 9090, "token": MASK, "auth": {"user": "bob", "password": MASK}}
    answer = await client.put("/api/v1/configs/cfg", json=sent)
    assert answer.status_code == 200, answer.text
    assert answer.json()["pack"] == "cfg" and answer.json()["values"] == {**sent, "auth": {"user": "bob",
                                                                                           "password": MASK}}
    assert TOKEN not in answer.text and PASSWORD not in answer.text
    file = _config_file(squall)
    assert yaml.safe_load(file.read_text()) == {"region": "us", "port": 9090, "token": TOKEN,
                                                "auth": {"user": "bob", "password": PASSWORD}}
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not [p for p in file.parent.iterdir() if p.name != "cfg.yaml"]  # no temporary file left
    assert squall.registry.packs["cfg"].config["region"] == "us"
    ran = (await client.post("/api/v1/executions", json={"action": "cfg.where"})).json()
    done = await squall.executions.wait(ran["id"], timeout=20)
    assert done["result"]["stdout"] == "us"
    audited = await squall.db(squall.store.audit_list, 10, "api.pack.config")
    assert [a["target"] for a in audited] == ["cfg"]
    assert TOKEN not in str(audited) and PASSWORD not in str(audited)
    assert audited[0]["detail"]["values"]["region"] == "us"


async def test_put_refuses_values_that_do_not_fit_the_schema(squall: Squall, client: httpx.AsyncClient) -> None:
    """The pack loader's rule, with its message and the key's path; a secret's value is not quoted. Nothing
    is written."""
    file = _config_file(squall)
    before = file.read_text()
    wrong = await client.put("/api/v1/configs/cfg", json={"port": "eighty", "token": MASK,
                                                          "auth": {"password": 12345678}})
    assert wrong.status_code == 400, wrong.text
    fault = wrong.json()["faultstring"]
    assert "port: 'eighty' is not of type 'integer'" in fault and "auth.password:" in fault
    assert "12345678" not in fault and "config.schema.yaml" in fault
    unset = await client.put("/api/v1/configs/cfg", json={"port": 1})
    assert unset.status_code == 400 and "'token' is a required property" in unset.json()["faultstring"]
    for body in ([1, 2], "text"):
        answer = await client.put("/api/v1/configs/cfg", json=body)
        assert answer.status_code == 400 and "JSON object" in answer.json()["faultstring"], answer.text
    assert file.read_text() == before and squall.registry.packs["cfg"].config["port"] == 8080


async def test_a_masked_secret_with_nothing_stored_is_refused_naming_it(squall: Squall,
                                                                         client: httpx.AsyncClient) -> None:
    """`********` keeps the stored secret; where none is stored, writing the mask as the secret would
    break the pack's runs with a value nobody chose."""
    _config_file(squall).unlink()
    answer = await client.put("/api/v1/configs/cfg", json={"port": 1, "token": MASK})
    assert answer.status_code == 400, answer.text
    fault = answer.json()["faultstring"]
    assert "token" in fault and "no stored value" in fault
    assert not _config_file(squall).exists()


async def test_a_pack_without_a_schema_takes_any_values(squall: Squall, client: httpx.AsyncClient) -> None:
    """As StackStorm: a config schema is optional, and without one the values are not checked. The config
    lives in packs.configs_path, not in the pack's files."""
    answer = await client.put("/api/v1/configs/demo", json={"anything": [1, "two"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["values"] == {"anything": [1, "two"]}
    assert squall.registry.packs["demo"].config == {"anything": [1, "two"]}
    assert (await client.get("/api/v1/configs/demo")).json()["values"] == {"anything": [1, "two"]}



def test_masked_config_finds_secrets_where_the_loader_does() -> None:
    """The web UI's masking looked at `properties`, `additionalProperties` and one `items` schema only: a
    secret under `patternProperties`, or at a place of positional `items`, was shown as it is."""
    schema = {"hosts": {"type": "object", "patternProperties": {"^pw_": {"type": "string", "secret": True}}},
              "pair": {"type": "array", "items": [{"type": "string"}, {"type": "string", "secret": True}]}}
    values = {"hosts": {"pw_a": "x1-secret", "name": "n"}, "pair": ["user", "x2-secret"]}
    assert masked_config(schema, values) == {"hosts": {"pw_a": MASK, "name": "n"}, "pair": ["user", MASK]}


def test_restore_masked_keeps_stored_secrets_at_any_depth() -> None:
    """A mask at a secret place takes the stored value there (list items by position, a secret object
    whole); a secret with a default and nothing stored is left out for the default; a mask where the
    schema says nothing of a secret is a value like any other."""
    schema = {"token": {"type": "string", "secret": True, "default": "d"},
              "keys": {"type": "array", "items": {"type": "string", "secret": True}},
              "db": {"type": "object", "secret": True}}
    stored = {"keys": ["k1", "k2"], "db": {"user": "u", "pw": "p"}}
    sent = {"token": MASK, "keys": [MASK, "new"], "db": MASK, "plain": MASK}
    assert restore_masked(sent, stored, schema) == {"keys": ["k1", "new"], "db": {"user": "u", "pw": "p"},
                                                    "plain": MASK}
    with pytest.raises(MaskedSecretError, match=r"^keys\.2: sent as \*{8}"):
        restore_masked({"keys": [MASK, MASK, MASK]}, stored, schema)
