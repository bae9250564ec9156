"""Runtime state in SQL: executions and key-value pairs, on SQLite (WAL) or PostgreSQL.

Pack content lives on disk and in memory; only what happens at run time is stored here. The
schema is owned by Alembic migrations (`engine/migrations`); `Store.open` brings a database to
the newest revision before anything reads it. Calls are synchronous and short: asynchronous
callers go through `Database`, which runs them on a dedicated thread so the event loop never
waits on disk.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

executions = sa.Table(
    "executions",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("action", sa.String(255), nullable=False),
    sa.Column("runner", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # What the caller asked for, secrets masked: what people see.
    sa.Column("parameters", sa.JSON, nullable=False),
    # Everything the runner needs (all parameters resolved, secrets masked, raw templates).
    sa.Column("spec", sa.JSON, nullable=False),
    # The real values of secret parameters (and of any value a secret was rendered into),
    # encrypted with the datastore key, so a queued execution and a re-run can still use them.
    sa.Column("sealed", sa.Text, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("log", sa.JSON, nullable=False),
    sa.Column("parent", sa.String(32), nullable=True),
    sa.Column("runner_info", sa.JSON, nullable=True),
    sa.Column("start_timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("end_timestamp", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_executions_status", "status"),
    sa.Index("ix_executions_action_start", "action", "start_timestamp"),
    sa.Index("ix_executions_start", "start_timestamp"),
    sa.Index("ix_executions_parent", "parent"),
)

kv_pairs = sa.Table(
    "kv_pairs",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("secret", sa.Boolean, nullable=False, default=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("expire_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_kv_pairs_expire_at", "expire_at"),
)

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_DATETIME_COLUMNS = ("start_timestamp", "end_timestamp", "expire_at", "updated_at")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every timestamp Squall stores is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _row(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    record = dict(row._mapping)
    for key in _DATETIME_COLUMNS:
        if key in record:
            record[key] = as_utc(record[key])
    return record


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL with synchronous=NORMAL survives a process crash without losing commits; only an OS crash
    # or power loss can lose the last transactions, the trade StackStorm users expect of an embedded DB.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (cheap when it already is)."""
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return
    from alembic import command

    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Store:
    """Synchronous access to the runtime tables; one instance per process and database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"

    @classmethod
    def open(cls, url: str) -> Store:
        engine = create_engine(url)
        migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- executions ------------------------------------------------------------------------
    def insert_execution(self, record: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(executions.insert().values(**record))

    def update_execution(
        self, execution_id: str, fields: dict[str, Any], *, expect: Iterable[str] | None = None
    ) -> bool:
        """Update one execution; with `expect`, only while its status is one of those (atomic)."""
        statement = executions.update().where(executions.c.id == execution_id)
        if expect is not None:
            statement = statement.where(executions.c.status.in_(list(expect)))
        with self.engine.begin() as conn:
            return conn.execute(statement.values(**fields)).rowcount == 1

    def claim_execution(self, execution_id: str, fields: dict[str, Any], expect: Sequence[str]) -> dict | None:
        """Move an execution on from one of `expect` and return it, in one statement.

        Only one process or task can win the claim, so an execution never runs twice.
        """
        statement = (
            executions.update()
            .where(executions.c.id == execution_id, executions.c.status.in_(list(expect)))
            .values(**fields)
            .returning(*executions.c)
        )
        with self.engine.begin() as conn:
            return _row(conn.execute(statement).first())

    def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return _row(conn.execute(sa.select(executions).where(executions.c.id == execution_id)).first())

    def find_executions(self, prefix: str, limit: int = 5) -> list[str]:
        """Ids starting with `prefix`, so people can type the first characters of an id."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(executions.c.id).where(executions.c.id.startswith(prefix, autoescape=True)).limit(limit)
            )
            return [row[0] for row in rows]

    def list_executions(
        self,
        *,
        action: str | None = None,
        status: str | Sequence[str] | None = None,
        parent: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        statement = sa.select(executions).order_by(executions.c.start_timestamp.desc(), executions.c.id.desc())
        if action:
            statement = statement.where(executions.c.action == action)
        if isinstance(status, str):
            statement = statement.where(executions.c.status == status)
        elif status:
            statement = statement.where(executions.c.status.in_(list(status)))
        if parent:
            statement = statement.where(executions.c.parent == parent)
        with self.engine.connect() as conn:
            return [_row(row) for row in conn.execute(statement.limit(limit))]  # type: ignore[misc]

    def execution_ids_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        statement = (
            sa.select(executions.c.id, executions.c.status, executions.c.runner_info)
            .where(executions.c.status.in_(list(statuses)))
            .order_by(executions.c.start_timestamp)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    # -- key-value pairs -------------------------------------------------------------------
    def kv_get(self, scope: str, name: str, now: datetime) -> dict[str, Any] | None:
        statement = sa.select(kv_pairs).where(
            kv_pairs.c.scope == scope,
            kv_pairs.c.name == name,
            sa.or_(kv_pairs.c.expire_at.is_(None), kv_pairs.c.expire_at > now),
        )
        with self.engine.connect() as conn:
            return _row(conn.execute(statement).first())

    def kv_list(self, scope: str | None, prefix: str | None, now: datetime, limit: int | None = None) -> list[dict]:
        statement = sa.select(kv_pairs).where(
            sa.or_(kv_pairs.c.expire_at.is_(None), kv_pairs.c.expire_at > now)
        ).order_by(kv_pairs.c.scope, kv_pairs.c.name)
        if scope:
            statement = statement.where(kv_pairs.c.scope == scope)
        if prefix:
            statement = statement.where(kv_pairs.c.name.startswith(prefix, autoescape=True))
        if limit:
            statement = statement.limit(limit)
        with self.engine.connect() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def kv_put(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Insert or replace one pair; returns the previous live record, if any."""
        with self.engine.begin() as conn:
            key = (kv_pairs.c.scope == record["scope"]) & (kv_pairs.c.name == record["name"])
            previous = _row(conn.execute(sa.select(kv_pairs).where(key)).first())
            if previous is None:
                conn.execute(kv_pairs.insert().values(**record))
            else:
                conn.execute(kv_pairs.update().where(key).values(**record))
        if previous and previous["expire_at"] and previous["expire_at"] <= record["updated_at"]:
            return None
        return previous

    def kv_delete(self, scope: str, name: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                kv_pairs.delete().where(kv_pairs.c.scope == scope, kv_pairs.c.name == name)
            )
            return result.rowcount == 1

    def kv_purge_expired(self, now: datetime) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(kv_pairs.delete().where(kv_pairs.c.expire_at <= now))
            return result.rowcount


T = TypeVar("T")


class Database:
    """Runs `Store` calls off the event loop, on one thread for SQLite (its writer is single)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(
            max_workers=1 if store.is_sqlite else 8, thread_name_prefix="squall-db"
        )

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
