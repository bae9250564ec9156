"""Migration 0020: login tokens record the API key they were obtained with, on SQLite and PostgreSQL.

A database at 0019 holds tokens that name no key; after the upgrade they still work until they expire
(they were promised that), while a token issued afterwards dies with its key."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from bot.apikeys import authenticate_token, create_key, key_issuer
from engine import storage
from engine.storage import Store, auth_tokens, utcnow
from engine.tokens import hash_token, issue


def _alembic(connection: sa.Connection, revision: str, down: bool = False) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(storage._MIGRATIONS))
    config.attributes["connection"] = connection
    (command.downgrade if down else command.upgrade)(config, revision)


def test_tokens_issued_before_0020_stay_valid_and_new_ones_end_with_their_key(database_url: str) -> None:
    engine = storage.create_engine(database_url)
    try:
        with engine.begin() as connection:
            _alembic(connection, "0019")
        now = utcnow()
        with engine.begin() as connection:  # a token `st2 login` gave before the upgrade: no key recorded
            connection.execute(sa.text(
                "INSERT INTO auth_tokens (token_hash, id, \"user\", created_at, expires_at) "
                "VALUES (:hash, 'legacy-token-id', 'olga', :created, :expires)"),
                {"hash": hash_token("legacy-token"), "created": now, "expires": now + timedelta(hours=1)})
    finally:
        engine.dispose()

    store = Store.open(database_url)  # migrates to the head, as `squall serve` does
    try:
        columns = {c["name"]: c for c in sa.inspect(store.engine).get_columns("auth_tokens")}
        assert columns["api_key_id"]["nullable"] is True
        legacy = authenticate_token(store, "legacy-token")
        assert legacy is not None and legacy["user"] == "olga"

        _key, record = create_key(store, "olga")
        issued = issue(store, "olga", 600, key_issuer(record, "unused"))
        with store._read() as conn:
            row = conn.execute(sa.select(auth_tokens.c.api_key_id).where(auth_tokens.c.id == issued["id"])).one()
        assert row.api_key_id == record["id"]
        assert authenticate_token(store, issued["token"])["user"] == "olga"
        store.api_key_delete(record["id"])
        assert authenticate_token(store, issued["token"]) is None
        assert authenticate_token(store, "legacy-token") is not None  # no key to end it: its expiry does

        with store.engine.begin() as connection:  # and back: the column goes, the tokens stay
            _alembic(connection, "0019", down=True)
        columns_after = {c["name"] for c in sa.inspect(store.engine).get_columns("auth_tokens")}
        assert "api_key_id" not in columns_after
    finally:
        store.close()
