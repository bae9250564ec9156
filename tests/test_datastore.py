"""The key ring (AES-256-GCM key file) and the key-value datastore: scopes, TTL, encryption at rest."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.app import Squall
from engine import datastore as datastore_module
from engine.config import Config
from engine.crypto import CryptoError, KeyRing
from engine.datastore import MAX_KEY_TTL, MAX_NAME_LENGTH, Datastore, DatastoreError, check_key, normalise_scope
from engine.storage import Store, kv_pairs
from tests.conftest import write


@pytest.fixture
def keyring(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys" / "datastore.key")



@pytest.fixture
def ds(store: Store, keyring: KeyRing) -> Datastore:
    return Datastore(store, keyring)


def _raw_row(store: Store, scope: str, name: str) -> dict | None:
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(kv_pairs).where(kv_pairs.c.scope == scope, kv_pairs.c.name == name)).first()
    return dict(row._mapping) if row else None


# -- crypto ---------------------------------------------------------------------------------------

def test_key_file_is_created_on_first_use_with_mode_0600(keyring: KeyRing) -> None:
    assert not keyring.path.exists()
    token = keyring.encrypt("hello")
    assert keyring.path.is_file()
    assert stat.S_IMODE(keyring.path.stat().st_mode) == 0o600
    document = json.loads(keyring.path.read_text())
    [entry] = document["keys"]
    assert document["version"] == 2
    assert len(base64.urlsafe_b64decode(entry["aes256_gcm"])) == 32
    assert token != "hello" and "hello" not in token


def test_key_file_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        ring = KeyRing(tmp_path / "k.json")
        ring.encrypt("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(ring.path.stat().st_mode) == 0o600


def test_encrypt_decrypt_round_trip(keyring: KeyRing) -> None:
    for text in ("s3cr3t", "", "ünïcødé ✓ " * 50, '{"json": [1, 2]}'):
        token = keyring.encrypt(text)
        assert keyring.decrypt(token) == text
    # Random nonces: the same plaintext never gives the same ciphertext.
    assert keyring.encrypt("same") != keyring.encrypt("same")
    # A second KeyRing on the same file reads the same key.
    assert KeyRing(keyring.path).decrypt(keyring.encrypt("shared")) == "shared"


def test_decrypt_with_another_key_file_names_the_path(tmp_path: Path) -> None:
    one = KeyRing(tmp_path / "one.key")
    other = KeyRing(tmp_path / "other.key")
    token = one.encrypt("for one only")
    other.encrypt("creates the other key")
    with pytest.raises(CryptoError) as caught:
        other.decrypt(token)
    assert str(other.path) in str(caught.value)


def test_tampered_or_garbage_ciphertext_is_refused(keyring: KeyRing) -> None:
    token = keyring.encrypt("integrity")
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[-1] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    for bad in (tampered, "not base64 at all!", "", base64.urlsafe_b64encode(b"\x02" + bytes(40)).decode(),
                "ünïcødé"):
        with pytest.raises(CryptoError) as caught:
            keyring.decrypt(bad)
        assert str(keyring.path) in str(caught.value)


@pytest.mark.parametrize("content", [
    "",
    "not json",
    "[]",
    '"a string"',
    '{"version": 1}',
    '{"version": 1, "aes256_gcm": "%%%%"}',
    '{"version": 1, "aes256_gcm": 12345}',
    json.dumps({"version": 1, "aes256_gcm": base64.urlsafe_b64encode(b"short key").decode()}),
])
def test_malformed_key_file_raises_naming_the_path(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    ring = KeyRing(path)
    with pytest.raises(CryptoError) as caught:
        ring.encrypt("must not be stored in plaintext")
    assert str(path) in str(caught.value)
    with pytest.raises(CryptoError) as caught:
        ring.decrypt("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert str(path) in str(caught.value)
    # The broken file is left for the operator to look at, never replaced by a new key.
    assert path.read_text() == content


def test_malformed_key_file_makes_datastore_refuse_instead_of_storing_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(b"\xff\xfe garbage")
    store = Store.open(f"sqlite:///{tmp_path / 'kv.db'}")
    try:
        ds = Datastore(store, KeyRing(path))
        with pytest.raises(CryptoError) as caught:
            ds.set("pw", "plaintext-secret", encrypt=True)
        assert str(path) in str(caught.value)
        assert _raw_row(store, "system", "pw") is None
    finally:
        store.close()


def test_decrypt_without_the_key_file_does_not_invent_a_new_key(tmp_path: Path) -> None:
    original = KeyRing(tmp_path / "first.key")
    token = original.encrypt("sealed under the first key")
    missing = KeyRing(tmp_path / "moved" / "first.key")
    with pytest.raises(CryptoError) as caught:
        missing.decrypt(token)
    assert str(missing.path) in str(caught.value)
    assert not missing.path.exists()


def _race_to_create(path: Path, count: int) -> tuple[dict[int, str], list[BaseException]]:
    rings = [KeyRing(path) for _ in range(count)]
    barrier = threading.Barrier(count)
    tokens: dict[int, str] = {}
    errors: list[BaseException] = []

    def use(n: int, ring: KeyRing) -> None:
        try:
            barrier.wait()
            tokens[n] = ring.encrypt(f"value {n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(n, ring)) for n, ring in enumerate(rings)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return tokens, errors


def test_key_rings_racing_to_create_the_key_agree_on_one_key(tmp_path: Path) -> None:
    for attempt in range(5):
        path = tmp_path / f"race{attempt}.key"
        tokens, errors = _race_to_create(path, 8)
        assert errors == []
        reader = KeyRing(path)
        assert {n: reader.decrypt(token) for n, token in tokens.items()} == {n: f"value {n}" for n in range(8)}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_key_ring_follows_a_rotation_another_process_made(tmp_path: Path) -> None:
    """`squall serve` keeps its key ring while `squall key rotate` (another KeyRing on the same file) adds a
    key, re-encrypts and retires the old one: the service then read none of the rotated secrets, and sealed
    new ones under the retired key, which no process could ever read again."""
    path = tmp_path / "keys" / "datastore.key"
    service = KeyRing(path)
    before = service.encrypt("sealed before the rotation")
    rotation = KeyRing(path)
    new_id = rotation.add_key()
    rotated = rotation.encrypt(rotation.decrypt(before))
    assert rotation.retire_old_keys() == 1

    assert service.decrypt(rotated) == "sealed before the rotation"  # a key it did not know: the file read again
    after = service.encrypt("sealed after the rotation")
    assert service.key_id_of(after) == new_id  # the current key, never the retired one
    assert KeyRing(path).decrypt(after) == "sealed after the rotation"


def test_a_key_ring_encrypts_under_a_key_added_elsewhere_at_once(tmp_path: Path) -> None:
    """Before anything is re-encrypted, a rotation only adds its key: what a running service seals from
    then on is under it, so that nothing new is left under the keys a rotation is about to retire."""
    path = tmp_path / "datastore.key"
    service = KeyRing(path)
    old_id = service.current_key_id
    new_id = KeyRing(path).add_key()
    assert service.key_id_of(service.encrypt("v")) == new_id != old_id
    assert service.current_key_id == new_id


def test_a_key_ring_whose_file_was_removed_refuses_to_encrypt(tmp_path: Path) -> None:
    """A secret sealed under keys that exist only in this process's memory would be lost at its next start."""
    path = tmp_path / "datastore.key"
    ring = KeyRing(path)
    token = ring.encrypt("kept")
    path.unlink()
    with pytest.raises(CryptoError, match=r"datastore\.key.*removed.*restore it"):
        ring.encrypt("lost")
    assert not path.exists()  # no new key was made up under a running service
    assert ring.decrypt(token) == "kept"  # what it sealed under a key it holds still reads


def test_decrypting_a_value_that_is_not_ciphertext_says_it_is_not_encrypted(keyring: KeyRing) -> None:
    keyring.encrypt("makes the key file")
    for plain in ("hello", "abcd", "plain value with spaces", "eu-west-1"):
        with pytest.raises(CryptoError, match="not encrypted") as caught:
            keyring.decrypt(plain)
        assert plain not in str(caught.value)  # a secret stored in clear by mistake is not quoted


def _stored_secret(store: Store, name: str) -> str:
    with store._read() as conn:
        return conn.execute(sa.select(kv_pairs.c.value).where(kv_pairs.c.name == name)).scalar_one()


def test_rotation_keeps_the_old_keys_while_another_squall_process_uses_them(tmp_path: Path) -> None:
    """A running service may hold ciphertext sealed under the old key (a value it just read, a secret it
    sealed a moment before the new key was added): the old keys stay until no other process runs."""
    path = tmp_path / "datastore.key"
    store = Store.open(f"sqlite:///{tmp_path / 'rotate.db'}")
    try:
        Datastore(store, KeyRing(path)).set("before", "s3cret-before", encrypt=True)
        service = KeyRing(path)
        in_flight = service.encrypt("sealed by the service under the old key")
        report = datastore_module.rotate_key(store, KeyRing(path), others=lambda: ["squall 4242@elsewhere"])
        assert (report.reencrypted, report.retired, report.unreadable) == (1, 0, [])
        assert report.in_use_by == ["squall 4242@elsewhere"]
        assert len(json.loads(path.read_text())["keys"]) == 2
        assert service.decrypt(in_flight) == "sealed by the service under the old key"
        assert service.key_id_of(_stored_secret(store, "before")) == report.key_id
        assert Datastore(store, service).get("before", decrypt=True)["value"] == "s3cret-before"

        alone = datastore_module.rotate_key(store, KeyRing(path), others=lambda: [])
        assert (alone.reencrypted, alone.retired, alone.in_use_by) == (1, 2, [])
        assert [k["id"] for k in json.loads(path.read_text())["keys"]] == [alone.key_id]
        assert Datastore(store, service).get("before", decrypt=True)["value"] == "s3cret-before"
    finally:
        store.close()


def test_rotation_never_overwrites_a_secret_written_while_it_reencrypted(tmp_path: Path, database_url: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret the service stores between the rotation's read and its write is newer than the value the
    rotation re-encrypted: it is kept (compare-and-swap on the old ciphertext), not put back to the old value."""
    path = tmp_path / "datastore.key"
    store = Store.open(database_url)
    try:
        service = Datastore(store, KeyRing(path))
        service.set("pw", "old-value", encrypt=True)
        read = store.sealed_values

        def read_then_the_service_writes() -> list[tuple[str, tuple[Any, ...], str]]:
            found = read()
            if service.get("pw", decrypt=True)["value"] == "old-value":  # once: the first pass's read
                service.set("pw", "new-value", encrypt=True)
            return found

        monkeypatch.setattr(store, "sealed_values", read_then_the_service_writes)
        report = datastore_module.rotate_key(store, KeyRing(path))
        assert report.unreadable == [] and report.retired == 1
        assert Datastore(store, KeyRing(path)).get("pw", decrypt=True)["value"] == "new-value"
        assert KeyRing(path).key_id_of(_stored_secret(store, "pw")) == report.key_id
    finally:
        store.close()


def _held_approval(approval_id: str, sealed: str) -> dict:
    """An `approvals` row as `bot/chat/approvals.py` holds a command whose secret parameter waits sealed."""
    now = datetime.now(UTC)
    return {"id": approval_id, "alias": "demo.login", "action": "demo.login", "parameters": {"token": "********"},
            "render": {}, "sealed": sealed, "context": {}, "requester": "alice", "adapter": "loopback",
            "channel": "#ops", "thread": None, "groups": ["approvers"], "count": 1, "self_approval": False,
            "created_at": now, "expires_at": now + timedelta(hours=1), "status": "pending", "decisions": [],
            "revision": 0, "execution_id": None}


def test_rotation_reencrypts_the_approvals_and_chat_sessions_it_retires_the_key_of(tmp_path: Path,
                                                                                    database_url: str) -> None:
    """A command held for approval keeps its secret parameters sealed (`approvals.sealed`), an open chat
    form its answers (`chat_sessions.state`): a rotation that retired the old key without re-encrypting
    them made both unreadable for good (the approved command never ran, the form was dropped)."""
    path = tmp_path / "datastore.key"
    store = Store.open(database_url)
    try:
        keys = KeyRing(path)
        Datastore(store, keys).set("pw", "kv-secret", encrypt=True)
        store.approval_add(_held_approval("a1b2c3d4", keys.encrypt(json.dumps({"token": "held-secret"}))))
        session = 'ask:["loopback", "#ops", "alice"]'
        store.chat_session_put(session, keys.encrypt(json.dumps({"answers": {"token": "typed-secret"}})),
                               datetime.now(UTC) + timedelta(hours=1))
        old = keys.current_key_id

        report = datastore_module.rotate_key(store, KeyRing(path))
        assert (report.reencrypted, report.retired, report.unreadable) == (3, 1, [])
        fresh = KeyRing(path)  # only the new key: the old one is gone from the file
        assert [k["id"] for k in json.loads(path.read_text())["keys"]] == [report.key_id] != [old]
        sealed = store.approval_get("a1b2c3d4")["sealed"]
        assert fresh.key_id_of(sealed) == report.key_id
        assert json.loads(fresh.decrypt(sealed)) == {"token": "held-secret"}
        [(key, state, _expires)] = store.chat_sessions_open(datetime.now(UTC))
        assert key == session and fresh.key_id_of(state) == report.key_id
        assert json.loads(fresh.decrypt(state)) == {"answers": {"token": "typed-secret"}}
        assert Datastore(store, fresh).get("pw", decrypt=True)["value"] == "kv-secret"
    finally:
        store.close()


# -- datastore ----------------------------------------------------------------------------------

def test_scope_names_and_bad_scope() -> None:
    assert normalise_scope(None) == "system"
    assert normalise_scope("system") == "system"
    assert normalise_scope("st2kv.system") == "system"
    assert normalise_scope("user") == "user"
    assert normalise_scope("st2kv.user") == "user"
    with pytest.raises(DatastoreError, match="unknown scope 'galaxy'"):
        normalise_scope("galaxy")


def test_bad_scope_is_refused_by_every_operation(ds: Datastore) -> None:
    with pytest.raises(DatastoreError, match="scope"):
        ds.set("k", "v", scope="global")
    with pytest.raises(DatastoreError, match="scope"):
        ds.get("k", scope="global")
    with pytest.raises(DatastoreError, match="scope"):
        ds.delete("k", scope="global")
    with pytest.raises(DatastoreError, match="scope"):
        ds.list(scope="global")
    assert ds.list(scope="all") == []


def test_system_scope_set_get_list_delete(ds: Datastore, store: Store) -> None:
    shown = ds.set("greeting", "hello", description="a friendly word")
    assert shown["name"] == "greeting"
    assert shown["value"] == "hello"
    assert shown["scope"] == "st2kv.system"
    assert shown["secret"] is False and shown["encrypted"] is False
    assert shown["user"] is None
    assert shown["expire_timestamp"] is None

    got = ds.get("greeting")
    assert got["value"] == "hello"
    assert got["description"] == "a friendly word"
    assert ds.get("greeting", scope="st2kv.system")["value"] == "hello"
    assert ds.get("greeting", scope="user", user="ann") is None
    assert ds.get("absent") is None

    ds.set("greeting", "hi again")
    assert ds.get("greeting")["value"] == "hi again"
    ds.set("gremlin", "g")
    ds.set("other", "o")
    assert [r["name"] for r in ds.list()] == ["greeting", "gremlin", "other"]
    assert [r["name"] for r in ds.list(prefix="gre")] == ["greeting", "gremlin"]
    assert [r["name"] for r in ds.list(limit=1)] == ["greeting"]

    assert ds.delete("greeting") is True
    assert ds.delete("greeting") is False
    assert ds.get("greeting") is None
    assert _raw_row(store, "system", "greeting") is None


def test_values_are_stored_as_strings(ds: Datastore, store: Store) -> None:
    ds.set("count", 5)
    ds.set("ratio", 2.5)
    ds.set("flag", True)
    assert ds.get("count")["value"] == "5"
    assert ds.get("ratio")["value"] == "2.5"
    assert ds.get("flag")["value"] == "True"
    assert _raw_row(store, "system", "count")["value"] == "5"
    with pytest.raises(DatastoreError):
        ds.set("", "no name")


def test_user_scope_keys_are_stored_per_user(ds: Datastore, store: Store) -> None:
    ds.set("token", "ann's", scope="user", user="ann")
    ds.set("token", "bob's", scope="st2kv.user", user="bob")
    ds.set("theme", "dark", scope="user", user="ann")
    ds.set("token", "system's")

    row = _raw_row(store, "user", "ann:token")
    assert row is not None and row["value"] == "ann's"
    assert _raw_row(store, "user", "bob:token")["value"] == "bob's"
    assert _raw_row(store, "user", "token") is None

    ann = ds.get("token", scope="user", user="ann")
    assert (ann["name"], ann["user"], ann["value"], ann["scope"]) == ("token", "ann", "ann's", "st2kv.user")
    assert ds.get("token", scope="user", user="bob")["value"] == "bob's"
    assert ds.get("token")["value"] == "system's"
    assert ds.get("theme", scope="user", user="bob") is None

    listed = ds.list(scope="user", user="ann")
    assert [(r["name"], r["user"]) for r in listed] == [("theme", "ann"), ("token", "ann")]
    assert [r["name"] for r in ds.list(scope="user", user="ann", prefix="to")] == ["token"]
    assert [(r["name"], r["user"]) for r in ds.list(scope="user", user="bob")] == [("token", "bob")]
    assert ds.list(scope="user", user="carol") == []

    with pytest.raises(DatastoreError, match="user"):
        ds.set("token", "x", scope="user")
    with pytest.raises(DatastoreError, match="user"):
        ds.get("token", scope="user")

    assert ds.delete("token", scope="user", user="ann") is True
    assert ds.get("token", scope="user", user="ann") is None
    assert ds.get("token", scope="user", user="bob")["value"] == "bob's"


def test_user_prefix_does_not_leak_into_a_longer_user_name(ds: Datastore) -> None:
    ds.set("k", "short", scope="user", user="al")
    ds.set("k", "long", scope="user", user="alice")
    assert [r["value"] for r in ds.list(scope="user", user="al")] == ["short"]


def test_prefixes_match_case_sensitively(ds: Datastore) -> None:
    """As StackStorm's (and PostgreSQL's): SQLite's LIKE ignored case, so deleting by the prefix `ap`
    took `Apple` too, and bob's user-scoped list showed `Bob`'s keys and values."""
    for name in ("apricot", "Apple", "april"):
        ds.set(name, "v")
    assert [r["name"] for r in ds.list(prefix="ap")] == ["apricot", "april"]
    assert [r["name"] for r in ds.list(prefix="A")] == ["Apple"]
    assert [r["name"] for r in ds.list(prefix="a%")] == []  # no wildcards either
    ds.set("token", "bob's", scope="user", user="bob")
    ds.set("token", "Bob's", scope="user", user="Bob")
    assert [r["value"] for r in ds.list(scope="user", user="bob")] == ["bob's"]
    assert [r["value"] for r in ds.list(scope="all", user="bob") if r["user"]] == ["bob's"]


def test_listing_all_scopes_for_a_user_shows_system_keys_and_only_their_own(ds: Datastore) -> None:
    ds.set("shared", "s")
    ds.set("mine", "a", scope="user", user="ann")
    ds.set("mine", "b", scope="user", user="bob")
    listed = ds.list(scope="all", user="ann")
    assert [(r["scope"], r["name"], r["user"], r["value"]) for r in listed] == [
        ("st2kv.system", "shared", None, "s"), ("st2kv.user", "mine", "ann", "a")]
    # Without a user (an administrator's view) every key is listed.
    assert len(ds.list(scope="all")) == 3


def test_encrypted_values_are_ciphertext_at_rest_and_masked_unless_decrypted(
    ds: Datastore, store: Store, keyring: KeyRing
) -> None:
    shown = ds.set("api_key", "sk-very-secret-123", encrypt=True)
    assert shown["secret"] is True and shown["encrypted"] is True
    assert shown["value"] != "sk-very-secret-123"

    row = _raw_row(store, "system", "api_key")
    assert row["secret"] is True or row["secret"] == 1
    assert "sk-very-secret-123" not in row["value"]
    assert keyring.decrypt(row["value"]) == "sk-very-secret-123"

    hidden = ds.get("api_key")
    assert hidden["value"] == row["value"]
    assert hidden["encrypted"] is True
    revealed = ds.get("api_key", decrypt=True)
    assert revealed["value"] == "sk-very-secret-123"
    assert revealed["encrypted"] is False and revealed["secret"] is True

    assert [r["value"] for r in ds.list()] == [row["value"]]
    assert [r["value"] for r in ds.list(decrypt=True)] == ["sk-very-secret-123"]
    # Templates see the ciphertext (decrypt_kv decrypts it).
    assert ds.lookup("system", "api_key") == row["value"]

    ds.set("mine", "user-secret", scope="user", user="ann", encrypt=True)
    assert "user-secret" not in _raw_row(store, "user", "ann:mine")["value"]
    assert ds.get("mine", scope="user", user="ann", decrypt=True)["value"] == "user-secret"


def test_decrypt_kv_of_a_key_stored_in_clear_says_it_is_not_encrypted(ds: Datastore, keyring: KeyRing) -> None:
    """It said "ciphertext cannot be decrypted ... (corrupted, or sealed under another key)", which sent
    people after their key file; the key was only stored without encryption."""
    from engine.templates import KVNamespace, TemplateRenderError, build_environment, render_template

    ds.set("region", "eu-west-1")
    ds.set("token", "tok-123", encrypt=True)
    context = {"st2kv": {"system": KVNamespace(lambda name: ds.lookup("system", name))}}
    env = build_environment(decrypt=keyring.decrypt)
    assert render_template("{{ st2kv.system.token | decrypt_kv }}", context, env) == "tok-123"
    with pytest.raises(TemplateRenderError) as caught:
        render_template("{{ st2kv.system.region | decrypt_kv }}", context, env)
    said = str(caught.value)
    assert 'datastore item "st2kv.system.region" is not encrypted' in said
    assert "drop | decrypt_kv" in said and "--encrypt" in said
    assert "eu-west-1" not in said and "corrupted" not in said


def test_encrypted_value_cannot_be_read_with_another_key(ds: Datastore, store: Store, tmp_path: Path) -> None:
    ds.set("pw", "hunter22", encrypt=True)
    other = Datastore(store, KeyRing(tmp_path / "other.key"))
    assert other.get("pw")["encrypted"] is True
    with pytest.raises(CryptoError) as caught:
        other.get("pw", decrypt=True)
    assert str(tmp_path / "other.key") in str(caught.value)


def test_ttl_expiry_hides_at_once_and_purge_deletes(ds: Datastore, store: Store, monkeypatch) -> None:
    before = datetime.now(UTC)
    shown = ds.set("temp", "t", ttl=60)
    ds.set("perm", "p")
    expires = datetime.fromisoformat(shown["expire_timestamp"])
    assert before + timedelta(seconds=60) <= expires <= datetime.now(UTC) + timedelta(seconds=60)
    assert ds.get("temp")["value"] == "t"
    assert ds.get("temp")["expire_timestamp"] == shown["expire_timestamp"]

    assert ds.purge_expired() == 0
    future = expires + timedelta(seconds=1)
    monkeypatch.setattr(datastore_module, "utcnow", lambda: future)
    assert ds.get("temp") is None
    assert [r["name"] for r in ds.list()] == ["perm"]
    assert _raw_row(store, "system", "temp") is not None  # hidden before it is purged
    assert ds.purge_expired() == 1
    assert _raw_row(store, "system", "temp") is None
    assert ds.get("perm")["value"] == "p"


def test_setting_an_expired_key_again_revives_it_without_ttl(ds: Datastore, monkeypatch) -> None:
    ds.set("k", "old", ttl=5)
    later = datetime.now(UTC) + timedelta(seconds=10)
    monkeypatch.setattr(datastore_module, "utcnow", lambda: later)
    assert ds.get("k") is None
    ds.set("k", "new")
    got = ds.get("k")
    assert got["value"] == "new"
    assert got["expire_timestamp"] is None


@pytest.mark.parametrize("ttl", [0, -5])
def test_ttl_must_be_positive(ds: Datastore, ttl: int) -> None:
    with pytest.raises(DatastoreError, match="ttl"):
        ds.set("k", "v", ttl=ttl)
    assert ds.get("k") is None


def test_a_prefix_matches_the_own_name_of_every_users_keys(ds: Datastore) -> None:
    """User-scoped keys are stored as `<user>:<name>`: without a user (the administrator's view, and
    scope "all"), the prefix was compared with that, so `them` missed carol's `theme` and `car` found it."""
    ds.set("theme", "dark", scope="user", user="carol")
    ds.set("theme", "light", scope="user", user="al")
    ds.set("team", "x", scope="user", user="al")
    ds.set("pack.Class:them", "colon in a name", scope="user", user="al")
    ds.set("themes", "system")
    ds.set("carrot", "system")
    assert [(r["user"], r["name"]) for r in ds.list(scope="user", prefix="them")] == [
        ("al", "theme"), ("carol", "theme")]
    assert [(r["user"], r["name"]) for r in ds.list(scope="all", prefix="them")] == [
        (None, "themes"), ("al", "theme"), ("carol", "theme")]
    assert ds.count(scope="all", prefix="them") == 3
    assert ds.list(scope="user", prefix="car") == []
    assert [r["name"] for r in ds.list(scope="all", prefix="car")] == ["carrot"]
    assert [r["name"] for r in ds.list(scope="user", prefix="pack.Class:")] == ["pack.Class:them"]
    assert [(r["user"], r["name"]) for r in ds.list(scope="all", user="al", prefix="the")] == [
        (None, "themes"), ("al", "theme")]


def test_listing_pages_by_offset_and_counts_what_it_would_list(ds: Datastore) -> None:
    for n in range(4):
        ds.set(f"k{n}", "v")
    ds.set("k9", "ann's", scope="user", user="ann")
    ds.set("k9", "bob's", scope="user", user="bob")
    assert [r["name"] for r in ds.list(prefix="k", limit=2, offset=1)] == ["k1", "k2"]
    assert [r["value"] for r in ds.list(scope="all", user="ann", limit=2, offset=3)] == ["v", "ann's"]
    assert ds.count(scope="all", user="ann") == 5
    assert ds.count(scope="all") == 6
    assert ds.count(scope="user", user="bob", prefix="k") == 1


def test_a_stored_name_over_the_column_is_refused_before_the_database_sees_it(ds: Datastore) -> None:
    """PostgreSQL's `name` is String(512): a longer one was a 500 there and stored on SQLite."""
    assert MAX_NAME_LENGTH == 512
    with pytest.raises(DatastoreError, match=r"too long: 600 characters; the longest .* is 512"):
        ds.set("k" * 600, "v")
    with pytest.raises(DatastoreError, match=r"513 characters \(counting its 'ann:' prefix\)"):
        ds.set("k" * 509, "v", scope="user", user="ann")
    assert ds.list(scope="all") == []
    ds.set("s" * 512, "fits")
    ds.set("u" * 508, "fits", scope="user", user="ann")
    assert [len(r["name"]) for r in ds.list(scope="all")] == [512, 508]


@pytest.mark.parametrize(("arguments", "what"), [
    ({"value": "a\x00b"}, "value"),
    ({"value": "a\x00b", "encrypt": True}, "value"),
    ({"value": "x", "description": "d\x00"}, "description"),
    ({"name": "a\x00b", "value": "x"}, "name"),
    ({"value": "x", "scope": "user", "user": "ann\x00"}, "user"),
])
def test_a_nul_character_is_refused_alike_on_both_databases(ds: Datastore, arguments: dict, what: str) -> None:
    """PostgreSQL's text columns refuse `\\x00` (a DataError: the API's 500) and SQLite kept it; `set` and
    `check_write` (`squall key load`'s look before it writes), which every entry point goes through, refuse
    it with a DatastoreError (a 400) naming the field, on both."""
    given = {"name": "k", **arguments}
    name = given.pop("name")
    said = rf"{what}( name)? holds a NUL character \(\\x00\) at position \d, which PostgreSQL cannot store"
    with pytest.raises(DatastoreError, match=said) as refused:
        ds.set(name, **given)
    assert "\x00" not in str(refused.value) and refused.value.field == what
    check = {key: value for key, value in given.items() if key != "description"}
    with pytest.raises(DatastoreError, match=said):
        ds.check_write(name, **check, description=given.get("description"))
    assert ds.list(scope="all") == []
    if what == "user":  # listing that user's keys too
        for listing in (ds.list, ds.count):
            with pytest.raises(DatastoreError, match=said):
                listing(scope="user", user="ann\x00")
    if what == "name":  # a read or delete of such a name is the same clear refusal, not the database's error
        for call in (ds.get, ds.delete):
            with pytest.raises(DatastoreError, match=said):
                call(name)
    ds.set("k", "fine", description="said")
    assert ds.get("k")["description"] == "said"


def test_a_prefix_with_a_nul_character_is_refused_alike_on_both_databases(ds: Datastore) -> None:
    """`list` and `count` (the API's `?prefix=`, `st2 key list --prefix`): PostgreSQL's LIKE raised a DataError
    for a prefix holding `\x00` (a 500) where SQLite listed nothing."""
    ds.set("k", "v")
    for call in (ds.list, ds.count):
        with pytest.raises(DatastoreError, match=r"the prefix holds a NUL character \(\\x00\) at position 2"):
            call(prefix="k\x00")
    assert [item["name"] for item in ds.list(prefix="k")] == ["k"]


@pytest.mark.parametrize(("ttl", "message"), [
    ("soon", "whole number of seconds"), (1.5, "whole number of seconds"), (True, "whole number of seconds"),
    (MAX_KEY_TTL + 1, f"at most {MAX_KEY_TTL} seconds"), (99999999999999, "at most"), (10 ** 30, "at most")])
def test_a_ttl_that_is_not_a_whole_number_up_to_100_years_is_refused(ds: Datastore, ttl: object,
                                                                      message: str) -> None:
    """Checked in `set`, so the CLI and actions stop where the API does: "soon" was a ValueError and a
    huge number an OverflowError, both tracebacks, and 10**11 seconds was taken from the CLI."""
    with pytest.raises(DatastoreError, match=message):
        ds.set("k", "v", ttl=ttl)
    with pytest.raises(DatastoreError, match=message):
        check_key("k", ttl=ttl)
    assert ds.get("k") is None
    assert ds.set("k", "v", ttl=MAX_KEY_TTL)["expire_timestamp"]


# -- from Python actions ----------------------------------------------------------------------------

async def test_python_action_service_pages_through_values(home: Path, config: Config) -> None:
    pack = home / "packs" / "kvpy"
    write(pack / "pack.yaml", """
        name: kvpy
        description: datastore from a Python action
        version: 0.1.0
        author: tests
    """)
    write(pack / "actions" / "lister.yaml", """
        name: lister
        runner_type: python-script
        entry_point: lister.py
        parameters:
          limit:
            type: integer
          offset:
            type: integer
            default: 0
    """)
    write(pack / "actions" / "lister.py", """
        from st2common.runners.base_action import Action


        class Lister(Action):
            def run(self, limit=None, offset=0):
                for n in range(5):
                    self.action_service.set_value("k%d" % n, n)
                secret = self.action_service.set_value("pw", "hidden-value", encrypt=True)
                values = self.action_service.list_values(limit=limit, offset=offset)
                return {
                    "names": [kv.name for kv in values],
                    "pw": self.action_service.get_value("pw", decrypt=True),
                    "pw_matches": self.action_service.get_value("pw", decrypt=True) == "hidden-value",
                    "pw_raw": self.action_service.get_value("pw"),
                    "set": secret,
                }
    """)
    app = await Squall.start(config)
    try:
        everything = await app.executions.wait((await app.executions.request("kvpy.lister"))["id"], timeout=60)
        assert everything["status"] == "succeeded", everything["result"]
        names = everything["result"]["result"]["names"]
        assert len(names) == 6
        assert everything["result"]["result"]["pw_matches"] is True  # the action got the plaintext
        assert everything["result"]["result"]["pw"] == "********"  # ...and its result does not show it
        assert everything["result"]["result"]["pw_raw"] != "hidden-value"

        page = await app.executions.request("kvpy.lister", {"limit": 2, "offset": 2})
        page = await app.executions.wait(page["id"], timeout=60)
        assert page["result"]["result"]["names"] == names[2:4]
        tail = await app.executions.request("kvpy.lister", {"offset": 4})
        tail = await app.executions.wait(tail["id"], timeout=60)
        assert tail["result"]["result"]["names"] == names[4:]

        stored = await app.db(app.datastore.get, "kvpy.Lister:k3")
        assert stored["value"] == "3"
        assert "hidden-value" not in (await app.db(app.datastore.get, "kvpy.Lister:pw"))["value"]
    finally:
        await app.close()


async def test_a_falsy_ttl_from_an_action_or_the_api_means_no_expiry(home: Path) -> None:
    """StackStorm's datastore service and API set a ttl only `if ttl:`: `set_value(..., ttl=0)` (a pack
    config's `cache_ttl: 0`) and a PUT with `"ttl": 0` store a key that never expires. Squall refused them."""
    import httpx

    from bot.http import create_api
    from engine.config import load_config

    write(home / "config.yml", """
        database:
          url: sqlite:///data/squall.db
        packs:
          paths: [packs]
        api:
          keys: [ttl-test-key]
    """)
    app = await Squall.start(load_config(home / "config.yml"))
    try:
        for ttl in (0, None):
            assert await app.datastore_call("set_value", {"name": f"action_{ttl}", "value": "v", "ttl": ttl}) is True
            stored = await app.db(app.datastore.get, f"action_{ttl}")
            assert stored["value"] == "v" and stored["expire_timestamp"] is None
        with pytest.raises(DatastoreError, match="positive"):  # a negative one is still an error
            await app.datastore_call("set_value", {"name": "action_negative", "value": "v", "ttl": -1})
        assert await app.datastore_call("set_value", {"name": "expires", "value": "v", "ttl": 60}) is True
        assert (await app.db(app.datastore.get, "expires"))["expire_timestamp"] is not None

        transport = httpx.ASGITransport(app=create_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://squall",
                                     headers={"St2-Api-Key": "ttl-test-key"}) as client:
            for ttl in (0, None):
                answer = await client.put(f"/api/v1/keys/api_{ttl}", json={"value": "v", "ttl": ttl})
                assert answer.status_code == 200, answer.text
                assert answer.json()["expire_timestamp"] is None
            refused = await client.put("/api/v1/keys/api_negative", json={"value": "v", "ttl": -5})
            assert refused.status_code == 400 and "positive" in refused.json()["faultstring"]
    finally:
        await app.close()


def test_a_user_name_with_a_colon_owns_no_user_scoped_keys(keyring: KeyRing, tmp_path: Path) -> None:
    """User-scoped keys are stored as `<user>:<name>` and read back by the first `:`: a user `a:b` would
    have read and overwritten user `a`'s key `b:x`. Such a name gets a clear error, and `a`'s key is safe."""
    store = Store.open(f"sqlite:///{tmp_path / 'colon.db'}")
    try:
        datastore = Datastore(store, keyring)
        datastore.set("b:x", "a-secret", scope="user", user="a", encrypt=True)
        for attempt in (lambda: datastore.get("x", scope="user", user="a:b", decrypt=True),
                        lambda: datastore.set("x", "overwritten", scope="user", user="a:b"),
                        lambda: datastore.delete("x", scope="user", user="a:b"),
                        lambda: datastore.list(scope="user", user="a:b", decrypt=True)):
            with pytest.raises(DatastoreError, match="user name with ':'"):
                attempt()
        assert datastore.get("b:x", scope="user", user="a", decrypt=True)["value"] == "a-secret"
    finally:
        store.close()
