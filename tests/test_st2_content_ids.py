"""st2client against the pack-content routes it addresses by `id` and looks up by `name`: aliases, trigger
types and packs carry a stable `id` (`st2 action-alias update|delete` and `st2 trigger delete` died in
st2client, "'ActionAlias' object has no attribute 'id'", before sending anything); their writes are
refused with what to edit instead, as an action's and a rule's are (a bare "Method Not Allowed" said
nothing); `?name=` selects on `/actions` and `/packs` (st2client's `get_by_name` raised "More than one
action named ... are found"); and `/runnertypes` is paged, so a client paging by offset stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Squall
from bot.http import create_api
from engine.actions import content_id
from engine.config import load_config
from tests.test_api import KEY, _home


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    app = await Squall.start(load_config(_home(home) / "config.yml"))
    try:
        yield app
    finally:
        await app.triggers.settle()
        await app.rules.settle()
        await app.close()


@pytest.fixture
async def client(squall: Squall) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                                 headers={"St2-Api-Key": KEY}) as c:
        yield c


async def _listed(client: httpx.AsyncClient, path: str, **params: Any) -> dict[str, dict[str, Any]]:
    answer = await client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return {item["ref"]: item for item in answer.json()}


# -- ids -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "kind", "ref", "other"), [
    ("/api/v1/actionalias", "action_alias", "demo.greet", "demo.locked"),
    ("/api/v1/triggertypes", "trigger_type", "demo.event", "core.st2.webhook"),
    ("/api/v1/packs", "pack", "demo", "core"),
])
async def test_content_has_a_stable_id_and_is_read_by_it(client: httpx.AsyncClient, path: str, kind: str,
                                                         ref: str, other: str) -> None:
    """Each document has the `id` actions and rules have (`content_id` of its kind and ref: 24 hex digits,
    the same in every process), one per document, and `GET {path}/{id}` reads what `GET {path}/{ref}` does,
    as st2client's `get_by_ref_or_id` and its update/delete by `id` need."""
    listed = await _listed(client, path)
    document = listed[ref]
    assert document["id"] == content_id(kind, ref) and len(document["id"]) == 24
    int(document["id"], 16)
    assert len({item["id"] for item in listed.values()}) == len(listed)
    assert listed[other]["id"] != document["id"]
    by_ref = await client.get(f"{path}/{ref}")
    by_id = await client.get(f"{path}/{document['id']}")
    assert by_ref.status_code == by_id.status_code == 200, (by_ref.text, by_id.text)
    assert by_id.json() == by_ref.json() == document
    missing = await client.get(f"{path}/{content_id(kind, 'no.such')}")
    assert missing.status_code == 404 and "ref or id" in missing.json()["faultstring"]


# -- refused writes ------------------------------------------------------------------------------------

async def test_alias_writes_are_refused_naming_the_file_to_edit(squall: Squall, client: httpx.AsyncClient) -> None:
    """`st2 action-alias create FILE` (POST), `update REF FILE` (PUT by id) and `delete REF` (DELETE by id):
    a 405 saying aliases are pack files and which file to edit or remove; never a 404 for a loaded alias,
    which st2client takes for a delete done."""
    alias = (await client.get("/api/v1/actionalias/demo.greet")).json()
    file = squall.chat.index.aliases["demo.greet"].metadata_file
    created = await client.post("/api/v1/actionalias", json={"name": "al1", "pack": "demo", "action_ref": "demo.greet",
                                                             "formats": ["sayit {{message}}"]})
    assert created.status_code == 405 and created.headers["Allow"] == "GET"
    said = created.json()["faultstring"]
    assert "kept in pack files" in said and "aliases/<name>.yaml" in said, said
    for ref_or_id in ("demo.greet", alias["id"]):
        updated = await client.put(f"/api/v1/actionalias/{ref_or_id}", json={**alias, "description": "x"})
        assert updated.status_code == 405 and updated.headers["Allow"] == "GET"
        assert file in updated.json()["faultstring"] and "demo.greet" in updated.json()["faultstring"]
        deleted = await client.delete(f"/api/v1/actionalias/{ref_or_id}")
        assert deleted.status_code == 405 and file in deleted.json()["faultstring"]
        assert "kept in pack files" in deleted.json()["faultstring"]
    assert (await client.delete("/api/v1/actionalias/demo.nope")).status_code == 404
    assert (await client.get("/api/v1/actionalias/demo.greet")).json() == alias  # still there


async def test_an_alias_of_a_shipped_pack_is_not_to_be_edited(client: httpx.AsyncClient) -> None:
    """A shipped pack's files are Squall's: the refusal says to write an alias in a pack of your own."""
    system = {ref for ref, pack in (await _listed(client, "/api/v1/packs")).items() if pack["system"]}
    shipped = [a for a in (await _listed(client, "/api/v1/actionalias")).values() if a["pack"] in system]
    assert shipped, "the shipped packs have aliases"
    deleted = await client.delete(f"/api/v1/actionalias/{shipped[0]['id']}")
    assert deleted.status_code == 405
    assert "shipped with Squall" in deleted.json()["faultstring"], deleted.json()


async def test_trigger_type_writes_are_refused_naming_the_file_to_edit(squall: Squall,
                                                                      client: httpx.AsyncClient) -> None:
    """`st2 trigger create|update|delete` got a bare `{"faultstring": "Method Not Allowed"}`: now a 405 saying
    where a trigger type is declared, by ref or id; a shipped one (core.st2.webhook) is not to be edited."""
    created = await client.post("/api/v1/triggertypes", json={"name": "made", "pack": "demo"})
    assert created.status_code == 405 and created.headers["Allow"] == "GET"
    said = created.json()["faultstring"]
    assert "kept in pack files" in said and "triggers/<name>.yaml" in said, said
    event = (await client.get("/api/v1/triggertypes/demo.event")).json()
    file = squall.registry.trigger_types["demo.event"].metadata_file
    for ref_or_id in ("demo.event", event["id"]):
        for answer in (await client.put(f"/api/v1/triggertypes/{ref_or_id}", json=event),
                       await client.delete(f"/api/v1/triggertypes/{ref_or_id}")):
            assert answer.status_code == 405 and answer.headers["Allow"] == "GET"
            assert file in answer.json()["faultstring"] and "demo.event" in answer.json()["faultstring"]
    webhook = (await client.get("/api/v1/triggertypes/core.st2.webhook")).json()
    deleted = await client.delete(f"/api/v1/triggertypes/{webhook['id']}")
    assert deleted.status_code == 405 and "shipped with Squall" in deleted.json()["faultstring"]
    assert (await client.delete("/api/v1/triggertypes/demo.nope")).status_code == 404
    assert "demo.event" in squall.registry.trigger_types  # still there


# -- name filters --------------------------------------------------------------------------------------

async def test_actions_are_selected_by_name(client: httpx.AsyncClient) -> None:
    """st2client's `get_by_name` sends `?name=NAME` and wants at most one; every action was listed."""
    every = await _listed(client, "/api/v1/actions")
    for name in ("greet", "slow", "nope"):
        answer = await client.get("/api/v1/actions", params={"name": name})
        assert answer.status_code == 200, answer.text
        want = sorted(ref for ref, action in every.items() if action["name"] == name)
        assert [a["ref"] for a in answer.json()] == want and answer.headers["X-Total-Count"] == str(len(want))
    assert [a["ref"] for a in (await client.get("/api/v1/actions", params={"name": "greet", "pack": "demo"})).json()] \
        == ["demo.greet"]


async def test_packs_are_selected_by_name_and_ref(squall: Squall, client: httpx.AsyncClient) -> None:
    """StackStorm's `PacksController` filters `name` and `ref`; both were ignored and every pack listed."""
    assert len(squall.registry.packs) > 1
    for params, refs in (({"name": "demo"}, ["demo"]), ({"ref": "core"}, ["core"]), ({"name": "nope"}, []),
                         ({"ref": "demo", "name": "demo"}, ["demo"]), ({"ref": "demo", "name": "core"}, [])):
        answer = await client.get("/api/v1/packs", params=params)
        assert answer.status_code == 200, answer.text
        assert [p["ref"] for p in answer.json()] == refs and answer.headers["X-Total-Count"] == str(len(refs)), params


# -- runner types paged --------------------------------------------------------------------------------

async def test_runner_types_are_paged(client: httpx.AsyncClient) -> None:
    """`limit`/`offset` were ignored and no `X-Total-Count` sent: a client paging by offset got the whole
    list on every page and never stopped. Paged as every list is: pages of `limit` whose union is the list."""
    whole = await client.get("/api/v1/runnertypes")
    names = [r["name"] for r in whole.json()]
    assert len(names) > 2 and whole.headers["X-Total-Count"] == str(len(names))
    paged: list[str] = []
    for offset in range(0, len(names) + 2, 2):
        page = await client.get("/api/v1/runnertypes", params={"limit": 2, "offset": offset})
        assert page.status_code == 200 and page.headers["X-Total-Count"] == str(len(names))
        assert len(page.json()) <= 2
        paged += [r["name"] for r in page.json()]
    assert paged == names
    assert (await client.get("/api/v1/runnertypes", params={"limit": 0})).status_code == 400
