"""`/api/v1/keys` beyond CRUD (tests/test_api.py): whose user-scoped keys a credential may touch, string
values, StackStorm's paging, and prefixes of user-scoped keys' own names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.apikeys import create_key
from bot.app import Squall
from bot.http import create_api
from engine.config import load_config
from engine.datastore import MAX_NAME_LENGTH
from tests.conftest import free_port, write

KEY = "config-key-for-keys-tests"


@pytest.fixture
async def squall(home: Path) -> AsyncIterator[Squall]:
    write(home / "config.yml", f"""
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          port: {free_port()}
          keys: [{KEY}]
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        yield app
    finally:
        await app.close()


def _client(squall: Squall, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(squall)), base_url="http://squall",
                             headers=headers)


def _fault(answer: httpx.Response) -> str:
    return answer.json()["faultstring"]


def test_one_rule_says_whose_keys_a_person_reads_on_the_api_and_the_web() -> None:
    """`acting_as`, which the API (`speaking_as`: a token's or a stored key's user, None for a key from config)
    and the web (an account, None for an admin) both read by: a person acts as themselves only, named or not,
    and naming another is refused naming both; who speaks for nobody acts as whoever they name, and naming
    no one reads every user's keys (None)."""
    from engine.identity import ImpersonationError, acting_as

    assert acting_as("bob", None) == acting_as("bob", "") == acting_as("bob", "bob") == "bob"
    with pytest.raises(ImpersonationError, match="bob may not act as alice") as refused:
        acting_as("bob", "alice")
    assert (refused.value.own, refused.value.named) == ("bob", "alice")
    assert acting_as(None, "alice") == "alice"
    assert acting_as(None, None) is None and acting_as(None, "") is None


async def test_a_stored_key_or_token_touches_only_its_own_users_keys(squall: Squall) -> None:
    """bob's key (or his `st2 login` token) naming `user=alice` read alice's secret decrypted and wrote over
    it. Every route now answers 403 and changes nothing; the config's key, which names nobody, may name her."""
    alice_key, _ = await squall.db(create_key, squall.store, "alice")
    bob_key, _ = await squall.db(create_key, squall.store, "bob")
    async with _client(squall, **{"St2-Api-Key": alice_key}) as alice:
        stored = await alice.put("/api/v1/keys/pw", json={"value": "alice-s3cret", "secret": True, "scope": "user"})
        assert stored.status_code == 200 and stored.json()["user"] == "alice"
    async with _client(squall) as anon:
        login = await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": bob_key}, json={})
        assert login.status_code == 201 and login.json()["user"] == "bob"
    credentials = [{"St2-Api-Key": bob_key}, {"X-Auth-Token": login.json()["token"]}]
    for headers in credentials:
        async with _client(squall, **headers) as bob:
            attempts = [
                await bob.get("/api/v1/keys/pw", params={"scope": "user", "user": "alice", "decrypt": "true"}),
                await bob.get("/api/v1/keys", params={"scope": "user", "user": "alice", "decrypt": "true"}),
                await bob.get("/api/v1/keys", params={"scope": "all", "user": "alice", "decrypt": "true"}),
                await bob.put("/api/v1/keys/pw", json={"value": "bob-was-here", "scope": "user", "user": "alice"}),
                await bob.delete("/api/v1/keys/pw", params={"scope": "user", "user": "alice"}),
            ]
            for answer in attempts:
                assert answer.status_code == 403, answer.text
                assert "speaks for bob" in _fault(answer) and "may not act as alice" in _fault(answer)
                assert "alice-s3cret" not in answer.text
            # His own keys, named or not, and a listing of everything he may see: never alice's.
            assert (await bob.get("/api/v1/keys/pw", params={"scope": "user"})).status_code == 404
            assert (await bob.get("/api/v1/keys", params={"scope": "user", "user": "bob"})).json() == []
            seen = await bob.get("/api/v1/keys", params={"scope": "all", "decrypt": "true"})
            assert seen.status_code == 200 and seen.json() == []
    async with _client(squall, **{"St2-Api-Key": alice_key}) as alice:
        mine = await alice.get("/api/v1/keys/pw", params={"scope": "user", "decrypt": "true"})
        assert mine.json()["value"] == "alice-s3cret"
        assert (await alice.get("/api/v1/keys/pw", params={"scope": "user", "user": "alice"})).status_code == 200
    async with _client(squall, **{"St2-Api-Key": KEY}) as bridge:
        named = await bridge.get("/api/v1/keys/pw", params={"scope": "user", "user": "alice", "decrypt": "true"})
        assert named.status_code == 200 and named.json()["value"] == "alice-s3cret"


@pytest.mark.parametrize(("value", "kind"), [(None, "null"), ({"a": 1}, "an object"), ([1, 2], "an array"),
                                             (True, "a boolean"), (5, "a number")])
async def test_a_value_that_is_not_a_string_is_a_400(squall: Squall, value: Any, kind: str) -> None:
    """StackStorm's schema requires a string; Squall stored Python's repr ("{'a': 1}", "None", "True")."""
    async with _client(squall, **{"St2-Api-Key": KEY}) as client:
        refused = await client.put("/api/v1/keys/typed", json={"value": value})
        assert refused.status_code == 400, refused.text
        assert f"value must be a string, not {kind}" in _fault(refused) and "--convert" in _fault(refused)
        assert (await client.get("/api/v1/keys/typed")).status_code == 404
        assert (await client.put("/api/v1/keys/typed", json={"value": '{"a": 1}'})).status_code == 200
        assert (await client.get("/api/v1/keys/typed")).json()["value"] == '{"a": 1}'


async def test_the_list_pages_with_offset_and_tells_the_total(squall: Squall) -> None:
    """`st2 key list -n 2` prints "Only first 2" from X-Total-Count; `offset` was ignored; `-n -1` is all."""
    alice_key, _ = await squall.db(create_key, squall.store, "alice")
    async with _client(squall, **{"St2-Api-Key": alice_key}) as client:
        for n in range(1, 6):
            assert (await client.put(f"/api/v1/keys/pg{n}", json={"value": "v"})).status_code == 200
        await client.put("/api/v1/keys/pg9", json={"value": "mine", "scope": "user"})

        async def page(**params: Any) -> tuple[list[str], dict[str, str]]:
            answer = await client.get("/api/v1/keys", params={"prefix": "pg", **params})
            assert answer.status_code == 200, answer.text
            return [k["name"] for k in answer.json()], {k: v for k, v in answer.headers.items() if k.startswith("x-")}

        assert await page(limit=2) == (["pg1", "pg2"], {"x-total-count": "5", "x-limit": "2"})
        assert await page(limit=2, offset=2) == (["pg3", "pg4"], {"x-total-count": "5", "x-limit": "2"})
        assert await page(limit=2, offset=4) == (["pg5"], {"x-total-count": "5", "x-limit": "2"})
        assert await page(offset=3) == (["pg4", "pg5"], {"x-total-count": "5"})
        assert await page(limit=-1) == (["pg1", "pg2", "pg3", "pg4", "pg5"], {"x-total-count": "5"})
        # All scopes for a stored key: the system keys and her own, counted as one list.
        assert await page(scope="all", limit=2, offset=4) == (["pg5", "pg9"], {"x-total-count": "6", "x-limit": "2"})
        for wrong in (0, -2):
            refused = await client.get("/api/v1/keys", params={"limit": wrong})
            assert refused.status_code == 400 and "-1 for the full result set" in _fault(refused)


async def test_a_prefix_matches_user_scoped_keys_by_their_own_name(squall: Squall) -> None:
    """User-scoped keys are stored as `<user>:<name>`; `prefix=them` found nothing of carol's `theme` and
    `prefix=car` (her user name) found it."""
    async with _client(squall, **{"St2-Api-Key": KEY}) as client:
        await client.put("/api/v1/keys/theme", json={"value": "dark", "scope": "user", "user": "carol"})
        await client.put("/api/v1/keys/themes", json={"value": "all"})
        await client.put("/api/v1/keys/carrot", json={"value": "orange"})

        async def names(**params: str) -> list[tuple[str | None, str]]:
            answer = await client.get("/api/v1/keys", params=params)
            return [(k["user"], k["name"]) for k in answer.json()]

        assert await names(scope="user", prefix="them") == [("carol", "theme")]
        assert await names(scope="user", prefix="car") == []
        assert await names(scope="all", prefix="them") == [(None, "themes"), ("carol", "theme")]
        assert await names(scope="all", prefix="car") == [(None, "carrot")]
        assert await names(scope="user", user="carol", prefix="them") == [("carol", "theme")]


async def test_a_name_too_long_to_store_is_a_400_naming_the_limit(squall: Squall) -> None:
    async with _client(squall, **{"St2-Api-Key": KEY}) as client:
        refused = await client.put("/api/v1/keys/" + "k" * 600, json={"value": "v"})
        assert refused.status_code == 400 and f"the longest a key's stored name may be is {MAX_NAME_LENGTH}" in (
            _fault(refused))
        user = await client.put("/api/v1/keys/" + "k" * 510, json={"value": "v", "scope": "user", "user": "ann"})
        assert user.status_code == 400 and "'ann:' prefix" in _fault(user)
        assert (await client.get("/api/v1/keys", params={"scope": "all"})).json() == []
        fits = await client.put("/api/v1/keys/" + "k" * 508, json={"value": "v", "scope": "user", "user": "ann"})
        assert fits.status_code == 200, fits.text


async def test_a_nul_character_is_a_400_naming_where_it_is(squall: Squall) -> None:
    """PostgreSQL's text columns refuse `\\x00`: a value or description holding one was a 500 there (a
    DataError) and stored on SQLite. Refused by `Datastore.set` on both, as a 400 that says where."""
    async with _client(squall, **{"St2-Api-Key": KEY}) as client:
        for name, body, what in (("nulv", {"value": "a\x00b"}, "its value"),
                                 ("nuld", {"value": "x", "description": "d\x00"}, "its description"),
                                 ("nuls", {"value": "a\x00b", "secret": True}, "its value"),
                                 ("nulu", {"value": "x", "scope": "user", "user": "ann\x00"}, "the user name")):
            refused = await client.put(f"/api/v1/keys/{name}", json=body)
            assert refused.status_code == 400, refused.text
            assert f"{what} holds a NUL character (\\x00) at position" in _fault(refused), _fault(refused)
        for answer in (await client.put("/api/v1/keys/a%00b", json={"value": "x"}),  # the URL's own check
                       await client.get("/api/v1/keys/a%00b"), await client.delete("/api/v1/keys/a%00b"),
                       await client.get("/api/v1/keys", params={"prefix": "a\x00"})):
            assert answer.status_code == 400 and "NUL character" in _fault(answer), answer.text
        assert (await client.get("/api/v1/keys", params={"scope": "all"})).json() == []
        assert (await client.put("/api/v1/keys/fine", json={"value": "x", "description": "d"})).status_code == 200


def test_a_new_api_key_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """One key in 64 started with `-`, and a command line then took it for an option: `st2 login alice
    --password -Xb...` failed with "expected one argument" (a CI run met one)."""
    from bot import apikeys

    drawn = iter(["-Xb9first", "Yc8second"])
    monkeypatch.setattr(apikeys.secrets, "token_urlsafe", lambda nbytes: next(drawn))
    assert apikeys.generate_key() == "Yc8second"


async def test_a_stored_key_made_without_a_name_speaks_for_api_only(squall: Squall) -> None:
    """Only a key from the config names nobody and may name anyone. A stored key made without a name
    (`squall apikey create`) speaks for the user `api`: it read alice's secrets and logged in as anyone."""
    alice_key, _ = await squall.db(create_key, squall.store, "alice")
    unnamed_key, _ = await squall.db(create_key, squall.store, None)
    async with _client(squall, **{"St2-Api-Key": alice_key}) as alice:
        stored = await alice.put("/api/v1/keys/pw", json={"value": "alice-s3cret", "secret": True, "scope": "user"})
        assert stored.status_code == 200
    async with _client(squall, **{"St2-Api-Key": unnamed_key}) as unnamed:
        read = await unnamed.get("/api/v1/keys/pw", params={"scope": "user", "user": "alice", "decrypt": "true"})
        assert read.status_code == 403 and "speaks for api" in _fault(read) and "alice-s3cret" not in read.text
        mine = await unnamed.put("/api/v1/keys/note", json={"value": "x", "scope": "user"})
        assert mine.status_code == 200 and mine.json()["user"] == "api"
    async with _client(squall) as anon:
        login = await anon.post("/auth/v1/tokens", headers={"St2-Api-Key": unnamed_key}, json={})
        assert login.status_code == 201 and login.json()["user"] == "api"
