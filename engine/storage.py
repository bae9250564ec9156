"""Runtime state in SQL: executions and key-value pairs, on SQLite (WAL) or PostgreSQL.

Pack content lives on disk and in memory; only what happens at run time is stored here. The
schema is owned by Alembic migrations (`engine/migrations`); `Store.open` brings a database to
the newest revision before anything reads it. Calls are synchronous and short: asynchronous
callers go through `Database`, which runs them on a dedicated thread so the event loop never
waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine

from engine import writeback

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
    # A status's executions in the lists' order, with the parent (migration 0023): the web's `status=`
    # filter reads a rare status's rows newest first and stops at the page, as a common one's, and the
    # API's `status=` with `parent=null` (`st2 execution list`) is counted in the index.
    sa.Index("ix_executions_status", "status", "start_timestamp", "id", "parent"),
    sa.Index("ix_executions_action_start", "action", "start_timestamp"),
    sa.Index("ix_executions_start", "start_timestamp"),
    # A workflow's children; top-level executions (most) are not in it (migration 0017).
    sa.Index("ix_executions_parent", "parent", sqlite_where=sa.text("parent IS NOT NULL")),
)


def _context_field(path: str, *, sqlite: bool) -> Any:
    """`context.<path>` (keys joined by dots) as the indexes on it hold it, the path a literal: a bound
    path (SQLAlchemy's `context[...]`) or a `CAST` around it matches no index's expression, and the
    query reads every execution. SQLite's `json_extract` (the value itself: text for these keys, which
    are always strings), PostgreSQL's `json_extract_path_text`."""
    if sqlite:
        return sa.func.json_extract(executions.c.context, sa.literal_column(f"'$.{path}'"))
    return sa.func.json_extract_path_text(executions.c.context,
                                          *(sa.literal_column(f"'{key}'") for key in path.split(".")))


def _chat_text(key: str, *, sqlite: bool) -> Any:
    """`context.chat.<key>` (`channel`, `adapter`) as text, written as the index on the chat channel
    holds it (migrations 0022, 0023)."""
    return _context_field(f"chat.{key}", sqlite=sqlite)


#: SQLite: the condition of the index on the source (`_narrowed` writes it into a query, as SQLite
#: takes a partial index only for a query that states its condition).
_SOURCE_NOT_CHAT = _context_field("source", sqlite=True) != sa.literal_column("'chat'")

# Indexes on what an execution's context holds. Declared for SQLite, whose new databases are made
# from these tables (`_create_new`); PostgreSQL's, of its own expressions, are the migrations' (0019,
# 0022, 0023). Each index on every execution costs a chat command a page more written per commit,
# so the ones chat's executions are not read through hold the other rows only (their condition is
# still computed on each insert).
#
# A channel's executions in the lists' order, of the rows started from a chat channel alone (`IS NOT
# NULL`): chat's `!executions` (`Store.chat_executions`, migration 0022) and the web's `channel=`
# filter, which names no adapter; the adapter is last (migration 0023), checked in the index.
sa.Index("ix_executions_chat_channel", _chat_text("channel", sqlite=True), executions.c.start_timestamp,
         executions.c.id, _chat_text("adapter", sqlite=True),
         sqlite_where=_chat_text("channel", sqlite=True).is_not(None)).ddl_if(dialect="sqlite")
# Who asked, in the lists' order, with the parent, so that `parent=null` (`st2 execution list`) is
# checked in the index: the API's `user=` count reads no execution. Every row: chat's too.
sa.Index("ix_executions_context_user", _context_field("user", sqlite=True), executions.c.start_timestamp,
         executions.c.id, executions.c.parent).ddl_if(dialect="sqlite")
# Where from (the web's `source=`), of the rows not from chat: those are most, and a page of them is
# found first on the time index anyway.
sa.Index("ix_executions_context_source", _context_field("source", sqlite=True), executions.c.start_timestamp,
         executions.c.id, sqlite_where=_SOURCE_NOT_CHAT).ddl_if(dialect="sqlite")
# The trigger instance a rule ran an execution for (the API's `trigger_instance=`), of rules' rows.
sa.Index("ix_executions_context_trigger_instance", _context_field("trigger_instance.id", sqlite=True),
         sqlite_where=_context_field("trigger_instance.id", sqlite=True).is_not(None)).ddl_if(dialect="sqlite")

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

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("adapter", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(255), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | sent | failed | skipped (never sent)
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("platform_id", sa.String(255), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    # The rows of a chat execution's replies name it: `kind` is "ack" on its ack, "result" on the
    # result itself (or on a `skipped` row when the alias turns results off), "status" on the edit
    # of the ack, "notify:<route>" on a `notify` message to a chat route, "<kind>.N" on further parts.
    # At most one of each per execution, so none is ever stored twice. `skipped` rows with
    # execution_id "" and kind "keyed_since" (results, acks) or "keyed_since:notify" record when
    # keying began (`outbox_keyed_since`).
    sa.Column("execution_id", sa.String(32), nullable=True),
    sa.Column("kind", sa.String(255), nullable=True),
    # Partial indexes (migration 0017): a row's writes touch an index only while it is read there.
    # `sqlite_where` only: these tables make new SQLite databases (`migrate`), PostgreSQL's schema is
    # the migrations' own, and naming `postgresql_where` loaded SQLAlchemy's PostgreSQL dialect at
    # every start (45 ms) to check the keyword.
    # The replies still to send, oldest first (queries write the condition as `OUTBOX_PENDING`).
    sa.Index("ix_outbox_pending", "id", sqlite_where=sa.text("status = 'pending'")),
    sa.Index("ux_outbox_execution_kind", "execution_id", "kind", unique=True),
    # An inquiry's question found by where it was asked: the answer in its thread (`_QUESTION`).
    sa.Index("ix_outbox_question_place", "adapter", "channel", sqlite_where=sa.text("kind = 'question'")),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(255), nullable=True),
    sa.Column("source", sa.String(255), nullable=True),
    sa.Column("target", sa.String(255), nullable=True),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("ix_audit_timestamp", "timestamp"),
    # No index on `event`: every chat command writes an entry, and one would cost each a page of the
    # WAL; the web's `/audit` kinds (a scan, 41 ms at 200,000 entries) are read off the event loop.
)

trigger_instances = sa.Table(
    "trigger_instances",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("trigger", sa.String(255), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("occurrence_time", sa.DateTime(timezone=True), nullable=False),
    # pending → processing → processed | processing_failed (StackStorm's statuses)
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("trace_tag", sa.String(255), nullable=True),
    # The parameters of the trigger (hook URL, schedule) it fired for; null for the bare type.
    sa.Column("trigger_parameters", sa.JSON, nullable=True),
    # The process that claimed it for processing (`engine.triggers.encode_owner`: JSON text, compared
    # as text when a recovery takes over a dead one's); null while pending, and on rows before 0021.
    sa.Column("owner", sa.Text, nullable=True),
    sa.Index("ix_trigger_instances_trigger", "trigger", "occurrence_time"),
    sa.Index("ix_trigger_instances_status", "status"),
    # The lists' order, newest first (the API's `/triggerinstances`, the web's `/triggers`; migration 0023).
    sa.Index("ix_trigger_instances_occurred", "occurrence_time", "id"),
)

serve_nodes = sa.Table(
    "serve_nodes",
    metadata,
    # A `squall serve` node's heartbeat (migration 0024), so that the nodes of other hosts can tell it
    # stopped: `owner` as its trigger instances record it (`engine.triggers.encode_owner`), `beat`
    # counted up every few seconds. The others judge it by whether `beat` changes over their own clocks
    # (`engine.triggers.NodeWatch`), never by `beaten_at`, the server's time of the last beat, for people.
    sa.Column("owner", sa.Text, primary_key=True),
    sa.Column("beat", sa.BigInteger, nullable=False),
    sa.Column("beaten_at", sa.DateTime(timezone=True), nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    # A sender's delivery accepted as a trigger instance (a signed webhook request: its hook and
    # signature), kept until the sender's signature would be refused as too old anyway: the same
    # delivery sent again meanwhile is not fired again (`Store.trigger_instance_add`). Also the engine's
    # `notified <trigger> <execution>` keys: a completed execution's triggers fire once
    # (`Store.trigger_instances_add_once`), whether the listener or the sweep after a crash fires them.
    # And `chat <adapter> <message>` keys (`chat_delivery_key`), stored with the execution a chat message
    # requested (its id in `trigger_instance_id`): a platform's second delivery of the message runs nothing.
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("trigger_instance_id", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

rule_enforcements = sa.Table(
    "rule_enforcements",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("rule", sa.String(255), nullable=False),
    sa.Column("trigger_instance_id", sa.String(32), nullable=False),
    sa.Column("execution_id", sa.String(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # succeeded | failed
    sa.Column("failure_reason", sa.Text, nullable=True),
    sa.Column("enforced_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_rule_enforcements_rule", "rule", "enforced_at"),
    sa.Index("ix_rule_enforcements_instance", "trigger_instance_id"),
    # The API's `/ruleenforcements`: newest first, and an execution's (migration 0023).
    sa.Index("ix_rule_enforcements_enforced", "enforced_at", "id"),
    sa.Index("ix_rule_enforcements_execution", "execution_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=True),
    # SHA-256 hex of the key: the key itself is shown once, when created, and never stored.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
)

action_tokens = sa.Table(
    "action_tokens",
    metadata,
    # SHA-256 hex of an execution's `ST2_ACTION_AUTH_TOKEN`: only the action's environment holds the token.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("execution_id", sa.String(32), nullable=False),
    sa.Column("user", sa.String(255), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_action_tokens_execution", "execution_id"),
)

auth_tokens = sa.Table(
    "auth_tokens",
    metadata,
    # SHA-256 hex of a token a person logged in for (`st2 login`); the token is shown once, at login.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(32), nullable=False, unique=True),
    sa.Column("user", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    # What the token was obtained with (migration 0020): the stored API key's id, or `config:` and the first
    # 24 hex digits of a configured key's hash. The token works only while that key does; NULL (tokens
    # issued before 0020) leaves it to its expiry.
    sa.Column("api_key_id", sa.String(32), nullable=True),
)

web_users = sa.Table(
    "web_users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),  # viewer | operator | admin
    # argon2 hash (with its parameters and salt): the password itself is never stored.
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
)

web_sessions = sa.Table(
    "web_sessions",
    metadata,
    # SHA-256 hex of the session cookie: only the browser holds the cookie.
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_web_sessions_user", "user"),
    sa.Index("ix_web_sessions_expires_at", "expires_at"),
)

execution_output = sa.Table(
    "execution_output",
    metadata,
    # What a running action printed, in batches (`engine/output.py`); the id orders the chunks.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("execution_id", sa.String(32), nullable=False),
    sa.Column("stream", sa.String(8), nullable=False),  # stdout | stderr
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_execution_output_execution", "execution_id", "id"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    # A chat command held until enough approvers said yes (`bot/chat/approvals.py`).
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("alias", sa.String(255), nullable=False),
    sa.Column("action", sa.String(255), nullable=False),
    # The request as the command path would make it: typed values are data, `render` names the
    # alias author's templates; the context it would have run with.
    # Secrets masked; their values sealed with the datastore key, as an execution's are.
    sa.Column("parameters", sa.JSON, nullable=False),
    sa.Column("render", sa.JSON, nullable=False),
    sa.Column("sealed", sa.Text, nullable=True),
    sa.Column("context", sa.JSON, nullable=False),
    sa.Column("requester", sa.String(255), nullable=False),
    sa.Column("adapter", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(255), nullable=False),
    sa.Column("thread", sa.String(255), nullable=True),
    sa.Column("groups", sa.JSON, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("self_approval", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | approved | denied | expired | failed
    sa.Column("decisions", sa.JSON, nullable=False),  # [{user, user_id, at, adapter, channel, thread, verdict, reason}]
    # Bumped by every decision: two deciders at once cannot both win (nor lose a decision).
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("execution_id", sa.String(32), nullable=True),
    sa.Index("ix_approvals_status_expires", "status", "expires_at"),
)

chat_sessions = sa.Table(
    "chat_sessions",
    metadata,
    # A chat form open on a platform, or a question-by-question form under way (`bot/chat/forms.py`),
    # so a restart does not close it. `state` is its JSON encrypted with the datastore key: answers
    # may be secrets.
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

#: The partial indexes' conditions as their queries must write them: SQLite uses a partial index only
#: for a query whose WHERE has the index's own terms, so a literal, not a bound parameter.
OUTBOX_PENDING = outbox.c.status == sa.literal_column("'pending'")
_QUESTION = outbox.c.kind == sa.literal_column("'question'")

_GET_EXECUTION = sa.select(executions).where(executions.c.id == sa.bindparam("_id"))
#: An instance's end, written only by the process that holds it (`Store.trigger_instance_finish`).
_FINISH_TRIGGER_INSTANCE = (trigger_instances.update()
                            .where(trigger_instances.c.id == sa.bindparam("_id"),
                                   trigger_instances.c.status == sa.literal_column("'processing'"),
                                   trigger_instances.c.owner == sa.bindparam("_owner"))
                            .values(status=sa.bindparam("status")))
_FINISH_TRIGGER_INSTANCE_SQL = ("UPDATE trigger_instances SET status = ? "
                                "WHERE id = ? AND status = 'processing' AND owner = ?")
_KEYED_ROW = sa.select(outbox.c.id).where(outbox.c.execution_id == sa.bindparam("execution_id"),
                                          outbox.c.kind == sa.bindparam("kind"))
_KEYED_ROW_SQL = "SELECT id FROM outbox WHERE execution_id = ? AND kind = ?"
#: The columns of `ux_outbox_execution_kind`: a reply of one kind per execution.
_OUTBOX_KEY = ("execution_id", "kind")
#: When keying began: a `skipped` row (execution_id "", kind "keyed_since" or "keyed_since:notify").
_KEYED_SINCE = sa.select(outbox.c.created_at).where(outbox.c.execution_id == "",
                                                    outbox.c.kind == sa.bindparam("kind"))


def keyed_in_one_statement(key: str, rows: Sequence[tuple[str, str, dict[str, Any], str, str]],
                           edits: str | None) -> bool:
    """Whether `Store.outbox_add_keyed` stores these rows with one statement (one row, the key's, and
    no edits): an insert that the unique index turns into nothing if the key is taken. SQLite undoes a
    failing statement alone, so such a store needs no savepoint around it (`Store.isolated`)."""
    return len(rows) == 1 and rows[0][3] == key and edits is None


@functools.cache
def _insert_statement(table: sa.Table) -> sa.Insert:
    return table.insert()


@functools.lru_cache(maxsize=64)
def _update_statement(table: sa.Table, keys: tuple[str, ...], guarded: bool, returning: bool) -> sa.Update:
    """Built once per table and set of columns: SQLAlchemy's statement construction costs more than SQLite."""
    statement = table.update().where(table.c.id == sa.bindparam("_id"))
    if guarded:
        statement = statement.where(table.c.status.in_(sa.bindparam("_expect", expanding=True)))
    statement = statement.values({key: sa.bindparam(key) for key in keys})
    return statement.returning(*table.c) if returning else statement


def _trigger_instance_where(trigger: str | None, status: str | Sequence[str] | None,
                            since: datetime | None = None, until: datetime | None = None) -> list[Any]:
    """`since`/`until` bound `occurrence_time` strictly (StackStorm's `timestamp_gt`/`timestamp_lt`)."""
    where = [trigger_instances.c.trigger == trigger] if trigger else []
    if isinstance(status, str):
        where.append(trigger_instances.c.status == status)
    elif status:
        where.append(trigger_instances.c.status.in_(list(status)))
    return where + _strictly_between(trigger_instances.c.occurrence_time, since, until)


def _enforcement_where(rule: str | None, trigger_instance_id: str | None, execution_id: str | None,
                       since: datetime | None = None, until: datetime | None = None,
                       at: datetime | None = None) -> list[Any]:
    """`since`/`until` bound `enforced_at` strictly and `at` is it exactly (StackStorm's `enforced_at_gt`,
    `enforced_at_lt` and `enforced_at`)."""
    columns = rule_enforcements.c
    where = [column == value for column, value in ((columns.rule, rule), (columns.trigger_instance_id,
                                                                          trigger_instance_id),
                                                   (columns.execution_id, execution_id)) if value]
    if at is not None:
        where.append(columns.enforced_at == at.astimezone(UTC))
    return where + _strictly_between(columns.enforced_at, since, until)


def _strictly_between(column: sa.Column[Any], since: datetime | None, until: datetime | None) -> list[Any]:
    """A log's time after `since` and before `until`, both excluded (either may be None: unbounded), in
    SQL, where the log's time index reads the range; compared in UTC, as the times are stored."""
    return [*([column > since.astimezone(UTC)] if since is not None else []),
            *([column < until.astimezone(UTC)] if until is not None else [])]


_KV_KEY = (kv_pairs.c.scope == sa.bindparam("scope")) & (kv_pairs.c.name == sa.bindparam("name"))
_KV_GET = sa.select(kv_pairs).where(_KV_KEY)
_KV_GET_LIVE = _KV_GET.where(sa.or_(kv_pairs.c.expire_at.is_(None), kv_pairs.c.expire_at > sa.bindparam("now")))


@functools.lru_cache(maxsize=16)
def _kv_upsert(sqlite: bool, keys: tuple[str, ...]) -> sa.Insert:
    """One upsert statement: two writers of a new key must not collide on the primary key."""
    if sqlite:
        upsert = sqlite_insert
    else:  # PostgreSQL's dialect module only where it is the database (~20 ms at start)
        from sqlalchemy.dialects.postgresql import insert as upsert
    insert = upsert(kv_pairs).values({k: sa.bindparam(k) for k in keys})
    return insert.on_conflict_do_update(
        index_elements=[kv_pairs.c.scope, kv_pairs.c.name],
        set_={column: insert.excluded[column] for column in keys if column not in ("scope", "name")},
    )


@functools.lru_cache(maxsize=8)
def _insert_once(sqlite: bool, table: sa.Table, returning: str, unique: tuple[str, ...] = ()) -> sa.Insert:
    """An insert that stores nothing where the primary key (or the `unique` columns) is taken, instead
    of failing (a failed statement would spoil a PostgreSQL transaction), returning its `returning`
    column: no row says it stored nothing. Built once (SQLAlchemy's construction costs more than the
    statement)."""
    if sqlite:
        insert = sqlite_insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return (insert(table).on_conflict_do_nothing(index_elements=list(unique) or list(table.primary_key.columns))
            .returning(table.c[returning]))


_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK = 0x5371_7561_6C6C  # "Squall": the advisory lock migrations take on PostgreSQL
_DATETIME_COLUMNS = ("start_timestamp", "end_timestamp", "expire_at", "updated_at", "timestamp", "occurrence_time",
                     "enforced_at", "created_at", "password_changed_at", "last_seen", "expires_at", "sent_at")


#: The time now, in UTC. `datetime.now` bound to UTC in a partial, which is called in C: a function
#: around it cost a Python frame on each of a chat command's reads of the clock (three: its request, its end, its
#: reply sent).
utcnow: Callable[[], datetime] = functools.partial(datetime.now, UTC)


def iso(value: datetime | None) -> str | None:
    """A stored time as StackStorm's APIs show it: ISO 8601 in UTC with a `Z` (None stays None), as
    `isoformat` writes it (no fraction when the microseconds are 0). Squall's own times (UTC) take
    their whole seconds from `_SECOND` while they are of its second, else from `_seconds`: ~3,000
    instructions (callgrind; ~5,000 with the look-up of `_seconds` each time: a chat command at 100 in
    flight cost 11,000 more, 790,400 against 779,200), where `isoformat` costs ~11,000. Not kept by
    datetime: an aware datetime's first hash costs ~3,500 (its offset asked of its zone), and six of a
    chat command's eight datetime texts are of a datetime written once only. Kept so, a chat command
    cost ~40,000 instructions more (callgrind, 100 in flight: 928,700 against 888,000)."""
    if not value:
        return None
    if value.tzinfo is not UTC:
        return value.isoformat().replace("+00:00", "Z")
    start, end, texts = _SECOND
    if not start <= value < end:
        texts = (_SECONDS.get((value.year, value.month, value.day, value.hour, value.minute, value.second))
                 or _seconds(value))
    written = texts[1]
    micro = value.microsecond
    return f"{written}.{_DIGITS[micro // 1000]}{_DIGITS[micro % 1000]}Z" if micro else f"{written}Z"


#: "000" to "999": a datetime's microseconds written as two of these, looked up (`iso`, `_stored_datetime`),
#: cost about half of `str(micro + 1_000_000)[1:]` (its int, its text and the slice): -5,600 instructions a
#: chat command (callgrind, the store's writes alone).
_DIGITS = tuple(f"{n:03d}" for n in range(1000))


#: (SQLite's text, ISO 8601's) of the whole seconds lately formatted: see `_seconds`.
_SECONDS: dict[tuple[int, ...], tuple[str, str]] = {}
_ONE_SECOND, _ONE_MICROSECOND = timedelta(seconds=1), timedelta(microseconds=1)
#: The newest past UTC second `_seconds` formatted: its start, the next second's start, and its texts. A UTC datetime
#: within it is told so by two comparisons, which compare two datetimes of one zone byte by byte (~400
#: instructions), where reading its six fields for the key of `_SECONDS` and looking that up cost ~3,000:
#: most of the datetimes a chat group writes are of the newest second. Replaced whole (one tuple), so a
#: thread that reads it meanwhile sees one second's start, end and texts; moved only with a second formatted
#: (~4,000 more then: the clock read, the second's ends), not with each that `_SECONDS` holds, so times of two
#: seconds in turn (a group at a second's end) do not move it back and forth.
_SECOND: tuple[datetime, datetime, tuple[str, str]] = (datetime.min.replace(tzinfo=UTC),) * 2 + (("", ""),)
_LAST_SECOND = datetime.max.replace(microsecond=0, tzinfo=UTC)


def _seconds(value: datetime) -> tuple[str, str]:
    """`value`'s date and time to the second as SQLite stores it ("2026-12-03 15:06:13") and as ISO
    8601 writes it ("2026-12-03T15:06:13"), kept while that second is in use. Formatting a datetime,
    by `isoformat` or by `%`, costs 7,000-13,000 instructions (callgrind), this look-up ~1,000. A UTC
    datetime's second formatted here is then `_SECOND`."""
    global _SECOND
    key = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    texts = _SECONDS.get(key)
    if texts is None:
        if len(_SECONDS) >= 64:
            _SECONDS.clear()
        year, month, day, hour, minute, second = key
        stored = f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
        texts = _SECONDS[key] = (stored, stored.replace(" ", "T"))
        # Not the fields of another zone's, or a naive, datetime: no UTC second. Nor a second before it (a
        # page of history: ~6,000 instructions more a second else), nor one to come (an expiry: the chat's
        # times, of the second now and formatted already, would not take it back).
        if value.tzinfo is UTC and _SECOND[0] <= value <= utcnow():
            start = value - _ONE_MICROSECOND * value.microsecond
            # (`datetime.max`'s second has no next: it holds nothing then)
            _SECOND = (start, start + _ONE_SECOND if start < _LAST_SECOND else start, texts)
    return texts


def _stored_datetime(fallback: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """SQLAlchemy's SQLite DATETIME bind processor's text ("2026-12-03 15:06:13.717850", the time zone
    dropped) for a datetime, by `_seconds` (see `iso`); anything else (None, a date) goes to SQLAlchemy's
    own."""

    def process(value: Any) -> Any:
        if type(value) is datetime:
            if value.tzinfo is UTC:  # (the wall-clock fields of any other zone, or none, are its own)
                start, end, texts = _SECOND
                stored = (texts if start <= value < end else _seconds(value))[0]
            else:
                stored = (_SECONDS.get((value.year, value.month, value.day, value.hour, value.minute, value.second))
                          or _seconds(value))[0]
            micro = value.microsecond
            return f"{stored}.{_DIGITS[micro // 1000]}{_DIGITS[micro % 1000]}"
        return fallback(value) if fallback is not None else value

    return process


def as_utc(value: datetime | None) -> datetime | None:
    """Every timestamp Squall stores is UTC: SQLite hands back naive datetimes, and PostgreSQL
    hands back the server's (or database's) time zone, which need not be UTC."""
    if value is None:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


_NOTIFY = sa.text("SELECT pg_notify(:channel, current_setting('application_name'))")


def _wake(conn: sa.Connection, channel: str | None) -> None:
    """Notify `channel` (PostgreSQL) at the commit of `conn`'s transaction, naming this process (its
    connections' `application_name`, as the outbox's trigger does: `engine.wakeups`): a `squall worker`
    storing trigger instances for the serve nodes. Nothing without one, nor on SQLite, whose one process
    needs no telling."""
    if channel is not None and conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": channel})


def _row(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    return None if row is None else _row_dict(dict(row._mapping))


def _row_dict(record: dict[str, Any]) -> dict[str, Any]:
    for key in _DATETIME_COLUMNS:
        if key in record:
            record[key] = as_utc(record[key])
    return record


#: SQLite: how long a connection waits for another's lock (the loop's own connection never waits).
BUSY_TIMEOUT_MS = 10_000
#: SQLite: a WAL longer than this after a checkpoint is restarted (see `Store.checkpoint`). Small,
#: because a long WAL slows every statement: measured with sequential chat commands (each commits
#: ~80 KB of pages), 2,100 commands/s once the WAL had grown to 1 GiB against 3,700/s with it
#: restarted past 64 MiB, the extra time in SQLite's user and kernel time (page reads look through
#: the wal-index's hash tables, one per 4,096 frames; each commit writes to pages not touched for long).
WAL_RESTART_BYTES = 64 << 20
#: SQLite: how long a restarting checkpoint waits for readers before it tries again next time.
RESTART_WAIT_MS = 100
#: How many times `WAL_RESTART_BYTES` the WAL file may reach before the loop's own connection cuts it,
#: between two of its commits, when the checkpoint thread did not restart it (`Database._cut_runaway_wal`).
WAL_RUNAWAY_FACTOR = 4
#: How many of the loop's groups commit between two looks at the WAL file's size (a stat each).
WAL_LOOK_EVERY = 16


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # First, so that even switching a new file to WAL waits for another process instead of failing.
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    # WAL with synchronous=NORMAL survives a process crash without losing commits; only an OS crash
    # or power loss can lose the last transactions, the trade StackStorm users expect of an embedded DB.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """`PRAGMA journal_mode=WAL`, tried again for up to `BUSY_TIMEOUT_MS` while the database is locked.
    Processes opening a new file at once each switch it: the switch reads (a shared lock), then wants the
    exclusive one, and SQLite refuses one of two such readers at once, without its busy handler (the
    deadlock between upgrading readers `LOCK_RETRY_PAUSE` is for). That refused `Store.open` in three of
    the four processes of `test_processes_opening_a_new_database_at_once_all_succeed`, in one CI run."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(LOCK_RETRY_PAUSE)


def _on_nowait_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    # The loop's commits never checkpoint: one that did stalled the loop for milliseconds (the open
    # loop's p99). `Database` checkpoints on a thread of its own instead.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _run_committed(calls: list[Callable[[], None]]) -> None:
    """What a committed group's calls asked to run after it (`Store.after_commit`). One that fails is logged:
    raised from here, it would tell the group's callers that what committed had not."""
    for call in calls:
        try:
            call()
        except Exception:
            logging.getLogger(__name__).exception("telling of a committed write failed")


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.OperationalError) and ("locked" in str(exc.orig) or "busy" in str(exc.orig))


#: SQLite: how long, in all, a group on the database thread waits for another process's write lock
#: (`Database._run_group`), trying again each time the busy timeout passes, before it fails as a whole
#: (`DatabaseLocked`). A CLI's write, a backup or a `sqlite3` shell left open hold it for a while; a request
#: is better late than refused, yet one that never ends holds every caller behind it.
LOCK_WAIT_SECONDS = 60.0
#: SQLite: the pause before a locked group is tried again; a lock some paths report at once, without
#: waiting the busy timeout (a deadlock between two upgrading readers), is no busy loop then.
LOCK_RETRY_PAUSE = 0.05
#: What a lock held elsewhere is, to people (chat, the API, the log).
LOCKED = "the SQLite database is locked by another process"
_SQLITE_BUSY = 5


def _busy_elsewhere(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's SQLITE_BUSY, another connection holding the lock past the busy timeout
    (not SQLITE_LOCKED, a conflict inside one connection, which waiting does not end)."""
    if not _is_locked(exc):
        return False
    code = getattr(exc.orig, "sqlite_errorcode", None)  # type: ignore[attr-defined]
    return code is None or (code & 0xFF) == _SQLITE_BUSY


class DatabaseLocked(sa.exc.OperationalError):
    """A group that waited `LOCK_WAIT_SECONDS` for another process's SQLite write lock and failed as a
    whole: nothing of it was stored. Still an OperationalError (its `orig` SQLite's "database is locked"),
    so whoever handles the database's errors handles it; its text names the lock, never the statement
    (SQLAlchemy's quotes the statement and its values, a secret parameter among them)."""

    def __init__(self, locked: sa.exc.DBAPIError, waited: float) -> None:
        super().__init__(None, None, locked.orig)
        self.waited = waited

    def __str__(self) -> str:
        return f"{LOCKED}; nothing was stored (Squall waited {self.waited:.3g} s for it)"


def database_locked(exc: BaseException | None) -> bool:
    """Whether `exc`, or what it was raised from, is SQLite's write lock held by another connection (a
    process) longer than Squall waits for it: `DatabaseLocked`, or a call's own "database is locked".
    Not a failing database (`database_failure` says None): the database works, and is free again once
    the other process commits."""
    for _ in range(8):  # the cause chain, short, as `database_failure` walks it
        if exc is None:
            return False
        if isinstance(exc, sa.exc.DBAPIError):
            return isinstance(exc.orig, sqlite3.Error) and _is_locked(exc)
        exc = exc.__cause__ or exc.__context__
    return False


#: SQLite's primary result codes that say the database itself failed rather than a statement or its data:
#: out of memory, read-only, an I/O error, a damaged file, a full disk, a file that cannot be opened, not a
#: database.
_SQLITE_FAILURES = frozenset({7, 8, 10, 11, 13, 14, 26})
#: Those after which SQLite may have rolled back the whole transaction, not the failing statement alone
#: (SQLITE_NOMEM, SQLITE_IOERR, SQLITE_FULL; https://sqlite.org/lang_transaction.html, "Response To
#: Errors Within A Transaction"). SQLITE_BUSY is the fourth, which `Busy` handles.
_SQLITE_ROLLS_BACK = frozenset({7, 10, 13})


def database_failure(exc: BaseException | None) -> str | None:
    """Why the database itself failed, when `exc` or what it was raised from says it did: full, not
    writable, unreachable, an I/O error; None for anything else, a statement's or its data's failure
    included (a constraint, a lock held elsewhere, a missing table).

    In the driver's words alone, never SQLAlchemy's text, which quotes the statement and its values (a
    secret parameter among them): this goes to chat and to `/healthz`, which anyone may ask. SQLite's
    words name the failure ("database or disk is full"); a PostgreSQL driver's may name hosts, so there
    the error's kind is given (`DiskFull (SQLSTATE 53100)`), its text being in the log."""
    for _ in range(8):  # the cause chain, short: Database re-raises a commit's error from the driver's
        if exc is None:
            return None
        if isinstance(exc, sa.exc.DBAPIError):
            return _failure_reason(exc)
        if isinstance(exc, sa.exc.PendingRollbackError):
            # A connection lost (invalidated) inside a transaction that something used again before its
            # rollback: the loss was the database's, whatever statement came upon it after.
            return type(exc).__name__
        exc = exc.__cause__ or exc.__context__
    return None


def _rolled_back_with(exc: BaseException) -> bool:
    """Whether SQLite may have rolled back the whole transaction when `exc` was raised (`_SQLITE_ROLLS_BACK`)."""
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _SQLITE_ROLLS_BACK


def _failure_reason(exc: sa.exc.DBAPIError) -> str | None:
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is None:  # raised by the driver itself, not SQLite: as such, any operational error but a lock
            failed = isinstance(exc, sa.exc.OperationalError) and not _is_locked(exc)
        else:
            failed = (code & 0xFF) in _SQLITE_FAILURES
        return (str(orig).splitlines() or ["SQLite failed"])[0] if failed else None
    if not isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return None
    sqlstate = getattr(orig, "sqlstate", None)
    return f"{type(orig).__name__}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")


#: What a failing database (`database_failure`) means to a person.
_DATABASE_FAILING = "the database is full, not writable or unreachable"


def database_trouble(exc: BaseException) -> str | None:
    """Why the database took none of the work `exc` ended, in words a person can act on: failing (full,
    not writable, unreachable; `database_failure`, in the driver's words) or SQLite locked by another
    process longer than Squall waits (`database_locked`); None for any other error. Chat, the API's
    faults and `squall serve`'s housekeeping say it so."""
    failure = database_failure(exc)
    if failure is not None:
        return f"{_DATABASE_FAILING} ({failure})"
    if isinstance(exc, DatabaseLocked):
        return f"{LOCKED} (Squall waited {exc.waited:.3g} s for it)"
    return LOCKED if database_locked(exc) else None


class Trouble:
    """What a loop that does steps again and again (a worker's reaper and poll, the chat's result sweep)
    says of their failures, and `squall serve`'s housekeeping (`bot.service.Housekeeping`): a
    step the database fails (down, full, locked elsewhere: `database_trouble`, its words) once, without a
    traceback, then at debug while it lasts, and once more when the step works again. Any other failure
    is a bug or a broken pack, which a retry does not mend: its traceback, each time. Each pass logged its
    traceback: a PostgreSQL outage of 15 s wrote some ten chained tracebacks of 45 lines per worker."""

    def __init__(self, logger: logging.Logger, again: str) -> None:
        self.log = logger
        self.again = again  # when the step is tried again, for the log: "every 5 s"
        #: The steps the database fails: why, and since when (monotonic).
        self.failing: dict[str, tuple[str, float]] = {}

    def failed(self, what: str, exc: BaseException) -> None:
        trouble = database_trouble(exc)
        if trouble is None:
            self.log.error("%s failed; tried again %s", what, self.again, exc_info=exc)
        elif what in self.failing:
            self.log.debug("%s failed again: %s", what, trouble)
        else:
            self.failing[what] = (trouble, time.monotonic())
            self.log.warning("%s failed: %s; tried again %s, and said once it works again", what, trouble,
                             self.again)

    def worked(self, what: str) -> None:
        failed = self.failing.pop(what, None)
        if failed is not None:
            self.log.info("%s works again (it failed for %.0f s: %s)", what, time.monotonic() - failed[1], failed[0])


class DuplicateDelivery(Exception):
    """A delivery was accepted already, as trigger instance `instance_id` (or, for a chat message, as the
    execution of that id: `what`), and has not expired."""

    def __init__(self, key: str, instance_id: str, what: str = "trigger instance") -> None:
        super().__init__(f"delivery {key} was accepted already as {what} {instance_id}")
        self.instance_id = instance_id


#: How long the delivery key of a chat message (`chat_delivery_key`) is kept with what it requested: a
#: platform sends a message whose acknowledgement it did not get again within minutes (Slack: three
#: retries over about five minutes, and a socket's unacknowledged envelopes after a reconnect); a day
#: also covers a restart that took long. `Triggers.purge_deliveries` forgets it after.
CHAT_DELIVERY_KEPT = timedelta(days=1)


def chat_delivery_key(record: dict[str, Any]) -> str | None:
    """The `deliveries` key a new execution is stored under (`Store.insert_execution`): its chat message's
    (`context.chat.delivery`, which the dispatcher sets only for a message its platform may send again),
    so that a second delivery of the message, in this process or after a restart, requests nothing. None
    for what that message did not request itself: a workflow's tasks (`parent`). An approved command
    (`approval`) is its message's request too, keyed the same: it runs once, however often its approvers
    were asked for it (the chat holds one approval per message; before it did, a message that came again
    was held twice). A re-run carries the context it re-runs (a retry policy's, the original's chat among
    it): its key names the execution it re-runs too, so it is no second delivery of the original's
    message, while a chat `retry` sent twice is one."""
    context = record.get("context") or {}
    chat = context.get("chat")
    delivery = chat.get("delivery") if isinstance(chat, dict) else None
    if not delivery or record.get("parent"):
        return None
    rerun = (context.get("re-run") or {}).get("ref")
    return f"chat {delivery}" + (f" re-run {rerun}" if rerun else "")


class Busy(Exception):
    """Another process holds SQLite's write lock; the call must wait on the database thread."""


#: The files SQLite keeps beside a database, which hold its rows too: the WAL, its index, a rollback journal.
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _private_sqlite_file(path: Path) -> None:
    """Make the SQLite database at `path` readable by this user alone before SQLite opens it: it holds the
    audit table, executions' parameters, results and output, webhook tokens, the outbox and chat sessions,
    and SQLite would create it with the process umask (0644 as a rule) in a folder others can list.

    A new database file is created empty and 0600 (SQLite takes an empty file for a new database, and
    gives its -wal and -shm the main file's mode), in a folder made 0700 if Squall makes it. An existing
    file that group or others may read (made by an older Squall) loses those bits, with its companions,
    said once; its owner's bits stay as they are, so nothing is ever loosened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a file in its way: said as it is, "File exists"
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        return
    except FileExistsError:
        pass
    except OSError:  # a folder that cannot be written: SQLite's own error says so, with the fix
        return
    tightened = []
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _SQLITE_COMPANIONS)):
        try:
            status = os.stat(file)
        except OSError:  # not there (a companion, most often); SQLite says what else is wrong with it
            continue
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISREG(status.st_mode) or not mode & 0o077:  # a folder in its place: SQLite says so
            continue
        try:
            os.chmod(file, mode & 0o700)
            tightened.append(f"{file} ({mode:04o} -> {mode & 0o700:04o})")
        except OSError as exc:  # not ours to change: SQLite may still open it, and the operator must know
            logging.getLogger(__name__).warning(
                "the database file %s is readable by other local users (mode %04o) and could not be made "
                "private (%s): make it readable by Squall's user only (chmod go-rwx %s)", file, mode, exc, file)
    if tightened:
        logging.getLogger(__name__).warning(
            "made the database readable by its owner only; other local users could read it: %s",
            ", ".join(tightened))


def create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite_file(Path(path))
        engine = sa.create_engine(url, connect_args={"check_same_thread": False}, json_serializer=json_dumps())
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    from engine.wakeups import PROCESS_NAME  # the payload of its outbox inserts' notifications

    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8, json_serializer=json_dumps(),
                            connect_args={**PG_LIVENESS, "application_name": PROCESS_NAME})


#: libpq settings on every PostgreSQL connection Squall makes, so that one whose peer vanished (a
#: failover that moved the server's address, a cut network) fails instead of hanging: keepalives find
#: an idle one dead within a minute (a `LISTEN` connection, or a pooled one, would otherwise wait
#: for ever), and `tcp_user_timeout` ends one whose statement went out and was never acknowledged
#: (TCP would retransmit it for about 15 minutes). A long query is not cut short by either: the
#: server's kernel acknowledges what it received and answers the keepalives while the query runs.
PG_LIVENESS = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
               "tcp_user_timeout": 30_000}


#: The newest migration in `engine/migrations/versions/` (a test checks they agree): a current
#: database is recognised with one query, without importing Alembic (a CLI command pays ~0.2 s for it).
HEAD_REVISION = "0024"


def _revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.DBAPIError:  # a new database: no version table yet
        return None


#: Alembic's own version table, as its `upgrade` creates it (so a database made by `_create_new` reads the same).
_ALEMBIC_VERSION_DDL = ("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")


def migrate(engine: Engine, *, upgrade_in_use: bool = True) -> None:
    """Bring the schema to the newest Alembic revision (one query when it already is). Without
    `upgrade_in_use` (a CLI command), an older schema that another Squall process uses is refused
    (`SchemaInUse`) rather than upgraded under it."""
    if _revision(engine) == HEAD_REVISION:
        return
    if engine.dialect.name == "sqlite" and _create_new(engine):
        return
    _upgrade(engine, upgrade_in_use)


class SchemaRefused(Exception):
    """The database's schema is one this process must not use or change as it is: refused in one line
    before anything is written (the CLI's exit 3, a setup error)."""


class SchemaTooNew(SchemaRefused):
    """The database's schema is at a revision this Squall does not know: a newer Squall migrated it. Refused
    before anything is written (Alembic's "Can't locate revision" came out as 110 lines of traceback, exit 1)."""

    def __init__(self, current: str, head: str | None) -> None:
        super().__init__(f"the database's schema is at revision {current}, newer than this Squall knows (its newest "
                         f"is {head}): a newer Squall migrated it. Run that version or a newer one on it; an older "
                         "one cannot use it")


class SchemaInUse(SchemaRefused):
    """A CLI command of a newer Squall would upgrade the schema of a database an older `squall serve` still
    runs on (the package was upgraded, the service not yet restarted): the service could not start again
    afterwards, nor could its own CLI, and the change would happen under what it reads. The service's
    restart with the new version upgrades the database at its start; a CLI command waits for that."""

    def __init__(self, current: str, head: str | None, others: Sequence[str]) -> None:
        super().__init__(f"the database's schema is at revision {current}, older than this Squall's {head}, and "
                         f"{', '.join(others)} runs on it: this command would upgrade it under that process, which "
                         "could not start again afterwards. Restart `squall serve` with this version first (it "
                         "upgrades the database as it starts), then run this command again")


def _others_on(engine: Engine, connection: sa.Connection) -> list[str]:
    """The other Squall processes on the database, by name, as far as one can tell before its schema is
    current: the one that leads (every `squall serve` takes the lead when it is free, `engine.leader`), and on
    PostgreSQL every Squall session (each names its process, `engine.wakeups.PROCESS_NAME`)."""
    from engine.leader import leadership
    from engine.wakeups import PROCESS_NAME, SQUALL_SESSIONS

    names: set[str] = set()
    holder = leadership(engine).holder()
    if holder is not None and holder != PROCESS_NAME:
        names.add(holder)
    if engine.dialect.name == "postgresql":
        names.update(connection.execute(sa.text(SQUALL_SESSIONS), {"me": PROCESS_NAME}).scalars())
    return sorted(names)


def _upgrade(engine: Engine, upgrade_in_use: bool = True) -> None:
    """Alembic's upgrade to its head, one process at a time, said in the log (a Squall older than this one
    cannot open the database afterwards); a database a newer Squall migrated is refused (`SchemaTooNew`), and
    without `upgrade_in_use` one that another Squall process runs on (`SchemaInUse`)."""
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current == head:
        return
    from alembic import command

    def upgrade(connection: sa.Connection) -> None:
        # Look again under the lock: another process may have migrated while we waited for it.
        now = MigrationContext.configure(connection).get_current_revision()
        if now == head:
            return
        if now is not None:
            try:
                script.get_revision(now)
            except CommandError:
                raise SchemaTooNew(now, head) from None
            if not upgrade_in_use and (others := _others_on(engine, connection)):
                raise SchemaInUse(now, head, others)
        if now is None:  # a new database: nothing older used it
            logging.getLogger(__name__).info("creating the database's schema (revision %s)", head)
        else:
            logging.getLogger(__name__).warning(
                "upgrading the database's schema from revision %s to %s: a Squall older than this one cannot use "
                "it afterwards", now, head)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")

    # Several processes (`squall serve`, a CLI command) may open a new database at once: one
    # migrates while the others wait, instead of all creating the same tables and failing.
    if engine.dialect.name == "sqlite":
        with _write_locked(engine) as connection:
            upgrade(connection)
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        upgrade(connection)


@contextlib.contextmanager
def _write_locked(engine: Engine) -> Iterator[sa.Connection]:
    """SQLite: a connection holding the write lock (`BEGIN IMMEDIATE`, which waits `busy_timeout`
    for another process's), committed at the end unless what ran inside committed already (Alembic
    commits its own transaction, which is this one), rolled back if it raised."""
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        raw = connection.connection.dbapi_connection
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            if raw.in_transaction:
                connection.exec_driver_sql("ROLLBACK")
            raise
        if raw.in_transaction:
            connection.exec_driver_sql("COMMIT")


def _create_new(engine: Engine) -> bool:
    """SQLite: a database with no tables yet gets the newest schema at once, as the tables above
    declare it, stamped with `HEAD_REVISION`; False (nothing done) if it has tables. Importing Alembic
    and running every revision took ~0.5 s of a first `squall serve` (`make run`'s first start);
    `test_a_new_sqlite_database_has_the_migrated_schema` keeps the two schemas the same, DDL for DDL.
    Under the write lock: of processes opening a new database at once, one creates it."""
    with _write_locked(engine) as connection:
        if connection.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar():
            return False
        metadata.create_all(connection)
        connection.exec_driver_sql(_ALEMBIC_VERSION_DDL)
        connection.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD_REVISION,))
    return True


def _c_encoder() -> Callable[[Any, int], Any] | None:
    """`json.dumps`'s C encoder with its defaults, made once (`json.dumps` builds one every call: half
    of its time on small values); None without the C accelerator (another Python implementation)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    return make(None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ": ", ", ",
                False, False, True)


_ENCODE = _c_encoder()


def _json_text(value: Any) -> str:
    """`json.dumps(value)`, by the one C encoder, which keeps no state (no circular-reference memo), so
    threads can share it; a circular value raises ValueError, as `json.dumps` does."""
    if _ENCODE is None:
        return json.dumps(value)
    try:
        return "".join(_ENCODE(value, 0))
    except RecursionError:
        raise ValueError("Circular reference detected (or a value nested too deep)") from None


try:
    import orjson
except ImportError:  # orjson is a dependency; an interpreter without its wheel still stores JSON
    orjson = None
_ORJSON_OPTIONS = 0 if orjson is None else (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                                            | orjson.OPT_PASSTHROUGH_SUBCLASS)


def _fast_json_text(value: Any) -> str:
    """`_json_text`'s value by orjson where orjson takes it (see `json_dumps`)."""
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError: what orjson leaves to json's rules
        return _json_text(value)


def json_dumps() -> Callable[[Any], str]:
    """The JSON text of a value as Squall stores it: by orjson (ten times `json.dumps`'s speed on the
    small values a chat command stores ten of; the text compact, non-ASCII as UTF-8, which reads back
    the same), with `json.dumps`'s rules for what orjson leaves to it. orjson refuses what it does not
    know natively (datetimes, dataclasses and subclasses of str, int, dict and list are passed through
    to that refusal, integers beyond 64 bits, keys that are not strings, nesting beyond 254 levels), and
    those values go to `json.dumps`'s encoder, which refuses what `json.dumps` refuses. One difference:
    NaN and infinities are stored as `null`, which every reader (PostgreSQL, SQLite's JSON functions,
    the API's encoder) accepts, where `json.dumps` wrote `NaN`, which none of them does. Module-level
    functions, not closures: psycopg caches a JSON dumper by its function's code, and warns of a leak
    (and caches nothing) for a closure."""
    return _json_text if orjson is None else _fast_json_text


#: `Store.isolated` where there is nothing to isolate (shared: a nullcontext keeps no state).
_NOTHING_TO_ISOLATE: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


class _Direct:
    """The hot writes, executed on SQLite's driver directly, encoded by SQLAlchemy's own type
    processors (so rows read the same whichever path wrote them).

    Executing a Core statement costs about six times what SQLite spends on it (execution context,
    parameter processing, result setup), and a chat command makes six writes (execution insert,
    claim and finish; audit; outbox insert and sent): going direct is what lets one process answer
    thousands of commands a second. Only statements built here from the tables' own column names.

    Each statement's shape (its table and columns) is worked out once: its SQL, and which of its values
    need a processor (`_Shape`). A chat command's three rows then cost processing for each of their
    JSON and datetime values alone (ten of 28), not a look-up and a test for every value.
    """

    def __init__(self, dialect: sa.Dialect) -> None:
        self._binds: dict[str, dict[str, Callable[[Any], Any] | None]] = {}
        self._results: dict[str, dict[str, Callable[[Any], Any] | None]] = {}
        # JSON columns: SQLAlchemy's processor calls the dialect's serializer inside a wrapper (None is
        # stored as 'null'); calling the serializer directly saves a call on twelve values a command.
        # Squall's own serializers store None as 'null' themselves: no wrapper then.
        serialize = getattr(dialect, "_json_serializer", None) or json_dumps()
        json_bind = (serialize if serialize in (_fast_json_text, _json_text) else
                     functools.partial(_json_or_null, serialize))

        for table in metadata.tables.values():
            impls = {column.name: column.type.dialect_impl(dialect) for column in table.c}
            self._binds[table.name] = {
                name: json_bind if isinstance(impl, sa.JSON) else
                _stored_datetime(impl.bind_processor(dialect)) if isinstance(impl, sa.DateTime) else
                impl.bind_processor(dialect)
                for name, impl in impls.items()}
            self._results[table.name] = {name: impl.result_processor(dialect, None) for name, impl in impls.items()}
        # By (table, *columns), (table, unique, *columns) and (table, columns, expect, returning).
        self._inserts: dict[tuple[str, ...], _Shape] = {}
        self._inserts_once: dict[tuple[Any, ...], _Shape] = {}
        self._updates: dict[tuple[Any, ...], _Shape] = {}

    def _shape(self, table: sa.Table, values: dict[str, Any], sql: str) -> _Shape:
        """The shape of `sql`, a statement on the columns of `values` in their order."""
        binds = self._binds[table.name]
        try:
            return _Shape(sql, tuple((at, process) for at, name in enumerate(values)
                                     if (process := binds[name]) is not None))
        except KeyError as exc:  # as Core reports a column the table has not
            raise sa.exc.StatementError(f"{table.name}: {exc}", None, values, exc) from exc

    def insert(self, driver: sqlite3.Connection | sqlite3.Cursor, table: sa.Table, record: dict[str, Any]) -> int:
        """Insert one row; returns its rowid (the id of tables with an integer key)."""
        key = (table.name, *record)
        shape = self._inserts.get(key)
        if shape is None:
            columns = ", ".join(f'"{name}"' for name in record)
            shape = self._inserts[key] = self._shape(table, record, f'INSERT INTO "{table.name}" ({columns}) '
                                                                    f'VALUES ({", ".join("?" * len(record))})')
        return _run(driver, shape.sql, _encode(table, shape, record)).lastrowid

    def insert_once(self, driver: sqlite3.Connection | sqlite3.Cursor, table: sa.Table, record: dict[str, Any],
                    unique: tuple[str, ...]) -> int | None:
        """Insert one row unless its `unique` columns are taken: its rowid, or None if it stored nothing.
        The driver's change count and last rowid tell which, not a RETURNING clause: SQLite's RETURNING
        doubles the statement's cost (~7 µs more, and a fetch), and a chat command stores two such rows."""
        key = (table.name, unique, *record)
        shape = self._inserts_once.get(key)
        if shape is None:
            columns = ", ".join(f'"{name}"' for name in record)
            shape = self._inserts_once[key] = self._shape(
                table, record, f'INSERT INTO "{table.name}" ({columns}) VALUES ({", ".join("?" * len(record))}) '
                               f'ON CONFLICT ({", ".join(unique)}) DO NOTHING')
        cursor = _run(driver, shape.sql, _encode(table, shape, record))
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def _update_shape(self, table: sa.Table, fields: dict[str, Any], expect: int, returning: bool) -> _Shape:
        key = (table.name, tuple(fields), expect, returning)
        shape = self._updates.get(key)
        if shape is None:
            assignments = ", ".join(f'"{name}" = ?' for name in fields)
            sql = f'UPDATE "{table.name}" SET {assignments} WHERE "id" = ?'
            if expect >= 0:
                sql += f' AND "status" IN ({", ".join("?" * expect)})'
            if returning:
                sql += " RETURNING *"
            shape = self._updates[key] = self._shape(table, fields, sql)
        return shape

    def update(self, driver: sqlite3.Connection | sqlite3.Cursor, table: sa.Table, row_id: Any, fields: dict[str, Any],
               expect: Sequence[str] | None = None, returning: bool = False) -> Any:
        """Update the row with this id (while its status is one of `expect`, if given); returns
        whether a row changed, or with `returning` the changed row (None if none did)."""
        shape = self._update_shape(table, fields, len(expect) if expect is not None else -1, returning)
        cursor = _run(driver, shape.sql, [*_encode(table, shape, fields), row_id, *(expect or ())])
        if not returning:
            return cursor.rowcount == 1
        rows = cursor.fetchall()
        if not rows:
            return None
        results = self._results[table.name]
        record = {}
        for (name, *_), value in zip(cursor.description, rows[0], strict=True):
            process = results[name]
            record[name] = value if process is None or value is None else process(value)
        return _row_dict(record)

    def update_many(self, driver: sqlite3.Connection | sqlite3.Cursor, table: sa.Table,
                    updates: Sequence[tuple[Any, dict[str, Any]]]) -> None:
        """`update` of each (id, fields), one `executemany` per set of field names: a delivery round's
        sent marks cost one statement's overhead, not one each."""
        shapes: dict[tuple[str, ...], tuple[_Shape, list[list[Any]]]] = {}
        for row_id, fields in updates:
            names = tuple(fields)
            same = shapes.get(names)
            if same is None:
                same = shapes[names] = (self._update_shape(table, fields, -1, False), [])
            same[1].append([*_encode(table, same[0], fields), row_id])
        for shape, rows in shapes.values():
            _run(driver, shape.sql, rows, many=True)


class _Shape(NamedTuple):
    """A direct statement's SQL, and the (position, processor) of each of its values that needs one."""

    sql: str
    steps: tuple[tuple[int, Callable[[Any], Any]], ...]


def _encode(table: sa.Table, shape: _Shape, values: dict[str, Any]) -> list[Any]:
    """`values` as the driver binds them, in their order, each processed where its `shape` says. What
    `_fast_json_text` does for a JSON value is written out here: its call cost a Python frame on most of a
    chat command's thirteen processed values."""
    row = [*values.values()]
    try:
        for at, process in shape.steps:
            value = row[at]
            if process is _fast_json_text:
                try:
                    row[at] = orjson.dumps(value, None, _ORJSON_OPTIONS).decode()
                except TypeError:  # as `_fast_json_text`
                    row[at] = _json_text(value)
            else:
                row[at] = process(value)
    except (TypeError, ValueError) as exc:  # as Core reports a value it cannot bind
        raise sa.exc.StatementError(f"{table.name}: {exc}", None, values, exc) from exc
    return row


def _json_or_null(serialize: Callable[[Any], str], value: Any) -> str:
    """A JSON column's value by a serializer of the dialect's, None stored as 'null' (as SQLAlchemy's does)."""
    return "null" if value is None else serialize(value)


def _execute(conn: sa.Connection, sql: str, parameters: list[Any], many: bool = False) -> sqlite3.Cursor:
    """Run on the connection's driver (`many`: once per parameter list), raising SQLAlchemy's exceptions
    as Core would (callers catch those)."""
    return _run(conn.connection.driver_connection, sql, parameters, many)  # type: ignore[arg-type]


def _run(driver: sqlite3.Connection | sqlite3.Cursor, sql: str, parameters: list[Any],
         many: bool = False) -> sqlite3.Cursor:
    """`_execute` on the driver's connection itself, or on a cursor of it (a group's: `Store._write`)."""
    try:  # (each method called as such: choosing one between them first made a bound method a statement)
        if many:
            return driver.executemany(sql, parameters)
        return driver.execute(sql, parameters)
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, parameters, exc, sqlite3.Error) from exc


@dataclass(frozen=True)
class ExecutionFilter:
    """What a page of executions is narrowed to (the web UI's filters); what is left empty selects all."""

    action: str | None = None
    pack: str | None = None
    status: str | None = None
    #: `context.user`: who asked (a chat user, an API key's or login's name, `squall` for rules).
    user: str | None = None
    #: `context.source`: `chat`, `api`, `cli`, `web`.
    source: str | None = None
    #: The chat channel a command came from (`context.chat.channel`: a Slack id, `#ops` on IRC).
    channel: str | None = None
    #: Only executions a rule requested (`context.rule`).
    rule: bool = False
    #: Only executions requested for an instance of one of these trigger types (timers, say).
    triggers: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    #: Without workflow tasks (children), as `st2 execution list` shows.
    top_level: bool = True


#: The columns a list of executions shows.
_LISTED = (executions.c.id, executions.c.action, executions.c.runner, executions.c.status, executions.c.context,
           executions.c.parent, executions.c.start_timestamp, executions.c.end_timestamp)


def _context_text(key: str) -> Any:
    """`json_extract_path_text(context, 'key')`, the key a literal: the expression PostgreSQL's
    indexes on an execution's user and source are made of (migration 0019)."""
    return _context_field(key, sqlite=False)


def _narrowed(statement: Any, where: ExecutionFilter, *, steered: bool = False) -> Any:
    """`statement` with `where`'s conditions, the user, source and channel written as the indexes on
    them hold them (`_context_field`). A pack is a range of actions (`pack.` up to `pack/`, the
    character after `.`), not a LIKE, which SQLite cannot take from an index.

    `steered`: SQLite, which plans without statistics and takes an index an equality can use for
    selective. The indexes on the user, the source, the chat channel and the status hold a value's
    rows in the lists' order (start, id; migrations 0022, 0023), so a page reads that filter's rows
    newest first and stops when it is full, whether the filter matches few rows or most (the time
    index, every row checked, took 0.3 to 0.8 s with 300,000 executions for a rare one). A source of
    chat, whose rows the index on the source leaves out, is read on the time index. The parent and
    pack conditions are wrapped in `coalesce`, which no index serves: SQLite took the index on
    `parent` (null for most rows) or (action, start) for selective and sorted every row it matched,
    0.5 s for 100,000 executions; it reads the time index newest first instead (`Store.execution_keyset`
    reads a pack action by action where it can)."""
    column = executions.c
    parent, action = ((sa.func.coalesce(column.parent, ""), sa.func.coalesce(column.action, "")) if steered
                      else (column.parent, column.action))
    user, source, channel = (_context_field(key, sqlite=steered) for key in ("user", "source", "chat.channel"))
    conditions = [
        column.action == where.action if where.action else None,
        sa.and_(action >= f"{where.pack}.", action < f"{where.pack}/") if where.pack else None,
        column.status == where.status if where.status else None,
        user == where.user if where.user else None,
        source == where.source if where.source else None,
        # The index on the source's condition, stated for SQLite to take the index (chat's rows are not in it).
        _SOURCE_NOT_CHAT if steered and where.source and where.source != "chat" else None,
        channel == where.channel if where.channel else None,
        column.context[("rule", "ref")].as_string().is_not(None) if where.rule else None,
        column.context[("trigger_instance", "name")].as_string().in_(where.triggers) if where.triggers else None,
        column.start_timestamp >= where.since if where.since else None,
        column.start_timestamp < where.until if where.until else None,
        (parent == "" if steered else parent.is_(None)) if where.top_level else None,
    ]
    return statement.where(*(c for c in conditions if c is not None))


#: A pack's page is read action by action (`Store.execution_keyset`) if it has executions of at most
#: this many actions (one SELECT each in a compound; SQLite takes up to 500), on the time index otherwise.
PACK_ACTIONS_READ_APART = 100
#: SQLite: the actions of a pack that have executions, one seek of the index on (action, start) each
#: (a `DISTINCT` read every execution of the pack: 7 ms for 200,000).
_PACK_ACTIONS = sa.text(
    "WITH RECURSIVE found(action) AS ("
    "SELECT min(action) FROM executions WHERE action >= :low AND action < :high "
    "UNION ALL SELECT (SELECT min(action) FROM executions WHERE action > found.action AND action < :high) "
    "FROM found WHERE found.action IS NOT NULL LIMIT :most) "
    "SELECT action FROM found WHERE action IS NOT NULL")


def _by_action(statement: Any, where: ExecutionFilter, actions: Sequence[str], limit: int) -> Any:
    """SQLite: `statement` narrowed to `where`, its pack read as a page of each of its `actions` (each in
    the list's order from the index on (action, start), or another filter's), merged: the newest `limit`
    of them all. A pack's range of actions comes in no such order from any index: SQLite sorted every
    execution of the pack, or read the time index until the page was full (every execution when the
    pack has few: 0.6 s with 300,000)."""
    each = replace(where, pack=None)
    pages = [_narrowed(statement.where(executions.c.action == action), each, steered=True).limit(limit)
             for action in actions]
    merged = sa.union_all(*(sa.select(*page.subquery().c) for page in pages)).subquery()
    return sa.select(*merged.c).order_by(merged.c.start_timestamp.desc(), merged.c.id.desc()).limit(limit)


#: The characters of an execution id, in order, and the one after the last (for a prefix's upper bound).
_HEX_DIGITS = "0123456789abcdefg"


class Store:
    """Synchronous access to the runtime tables; one instance per process and database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        #: Called with each audit event once stored (`engine/audit_sinks.py`: the file, syslog, stdout).
        self.audit_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._batch = threading.local()
        # SQLite only: a connection that never waits for a lock, for calls made on the event loop.
        self._nowait: Engine | None = None
        self._nowait_conn: sa.Connection | None = None
        if self.is_sqlite:
            self._nowait = sa.create_engine(engine.url, connect_args={"check_same_thread": False},
                                            poolclass=sa.pool.StaticPool)
            sa.event.listen(self._nowait, "connect", _on_nowait_connect)
        self._direct = _Direct(engine.dialect) if self.is_sqlite else None

    @property
    def _engine(self) -> Engine:
        return getattr(self._batch, "engine", None) or self.engine

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group the calls made inside into one transaction (group commit; see `Database`)."""
        after = self._batch.after = []
        try:
            with self.engine.begin() as conn:
                self._batch.conn = conn
                try:
                    if self.is_sqlite:
                        self._batch.cursor = conn.connection.driver_connection.cursor()
                    yield
                    self._batch.wrote = conn.connection.driver_connection.in_transaction if self.is_sqlite else True
                finally:
                    self._batch.conn = self._batch.cursor = None
        finally:
            self._batch.after = None
        _run_committed(after)

    @contextlib.contextmanager
    def batch_without_waiting(self) -> Iterator[None]:
        """A `batch` on the connection that never waits for a lock (SQLite; the event loop's groups):
        a lock held elsewhere raises `Busy` at once, and nothing of the group is committed.

        The connection stays checked out: a pool checkout, begin, commit and return cost half of a
        transaction. The transaction is the driver's own: SQLite begins it at the group's first write,
        and the hot writes run on the driver (`_Direct`); SQLAlchemy's begin and commit around it cost
        ~25,000 instructions (callgrind), at two groups a chat command. A Core statement made inside
        begins SQLAlchemy's transaction as well, and the group then ends through SQLAlchemy."""
        if self._nowait is None:
            raise RuntimeError("only SQLite stores can be used without waiting")
        if self._nowait_conn is None or self._nowait_conn.closed or self._nowait_conn.invalidated:
            self._nowait_conn = self._nowait.connect()
        conn = self._nowait_conn
        driver = conn.connection.driver_connection
        self._batch.engine, self._batch.conn, self._batch.cursor = self._nowait, conn, driver.cursor()
        after = self._batch.after = []
        try:
            try:
                yield
                self._batch.wrote = driver.in_transaction  # SQLite's transaction begins at the first write
                (conn if conn.in_transaction() else driver).commit()  # type: ignore[union-attr]
                _run_committed(after)
            except BaseException:
                self._roll_back_loop(conn, driver)
                raise
        except sqlite3.Error as exc:  # the driver's commit: as SQLAlchemy raises it
            error = sa.exc.DBAPIError.instance("COMMIT", [], exc, sqlite3.Error)
            if _is_locked(error):
                raise Busy(str(exc)) from exc
            raise error from exc
        except sa.exc.OperationalError as exc:
            if _is_locked(exc):
                raise Busy(str(exc.orig)) from exc
            raise
        finally:
            self._batch.engine = self._batch.conn = self._batch.cursor = self._batch.after = None

    def _roll_back_loop(self, conn: sa.Connection, driver: Any) -> None:
        """End a failed group of the loop's connection, so that the next group starts clean on it.

        SQLAlchemy's transaction is rolled back whenever the Connection holds one, active or not: after
        a COMMIT that failed (a full disk, a deferred foreign key) `in_transaction()` says False, yet the
        Connection keeps the dead transaction and refuses every later statement (PendingRollbackError)
        until it is rolled back. That rollback leaves SQLite's own transaction alone (to SQLAlchemy it
        is over already), which a failed COMMIT may leave open with the group's writes in it (a
        deferred foreign key does): the driver's is rolled back too. A rollback that fails as well (the
        file is gone) drops the connection; the next group opens another."""
        try:
            if conn.get_transaction() is not None:
                conn.rollback()
            if driver.in_transaction:
                driver.rollback()
        except Exception:
            logging.getLogger(__name__).warning("rolling back a failed group failed: the loop's connection is "
                                                "dropped, the next group opens a new one", exc_info=True)
            self._nowait_conn = None
            with contextlib.suppress(Exception):
                conn.invalidate()

    def batch_lost(self) -> bool:
        """Whether this thread's group lost its connection (invalidated: the server went away, or cut it,
        under a call). Its transaction is gone, with what every call of the group wrote in it."""
        conn = getattr(self._batch, "conn", None)
        return conn is not None and conn.invalidated

    def after_commit(self, call: Callable[[], None]) -> None:
        """Run `call` once what this thread writes now is stored: at the commit of its group (`batch`,
        `batch_without_waiting`), never if the group or the savepoint it was called in (`isolated`) rolls
        back; at once outside a group, where each write commits as it returns. For what tells the world of
        a write: an audit event streamed to a sink, a datastore change firing `core.st2.key_value_pair.*`
        rules. Told at the write, a `squall key load` rolled back had fired rules for keys never stored."""
        after = getattr(self._batch, "after", None)
        if after is None:
            call()
        else:
            after.append(call)

    def wrote(self) -> bool:
        """Whether the group this thread committed last (`batch`, `batch_without_waiting`) wrote: on
        SQLite, whether it had begun a transaction, which the driver does at a group's first write; on
        PostgreSQL any group counts, reads alone included (telling them apart would cost a query)."""
        return bool(getattr(self._batch, "wrote", False))

    def _write(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """The connection to write on: a group's own on SQLite; else in a transaction (a savepoint in a
        group on PostgreSQL). The hot writes of a SQLite group skip it for a cursor of the group's driver
        connection, made once a group (`batch`, `batch_without_waiting`): the connection looked up through
        SQLAlchemy's wrappers cost three Python calls a statement, the context manager three more, and
        the driver's own `execute` makes (and drops) a cursor each time."""
        conn = getattr(self._batch, "conn", None)
        if conn is not None and self.is_sqlite:
            # SQLite rolls back just the failing statement; the batch stays usable. (No generator
            # here: the hot writes of a chat command come this way five times.)
            return contextlib.nullcontext(conn)
        return self._write_apart(conn)

    @contextlib.contextmanager
    def _write_apart(self, conn: sa.Connection | None) -> Iterator[sa.Connection]:
        if conn is None:
            with self._engine.begin() as conn:
                yield conn
        else:
            with conn.begin_nested():  # a savepoint: one failing call does not spoil the batch
                yield conn

    def isolated(self, one_statement: bool = False) -> contextlib.AbstractContextManager[None]:
        """Inside a batch, the calls made here roll back together and alone if one of them raises
        (a savepoint: on SQLite a failing call otherwise undoes only its failing statement). Calls that
        make `one_statement` need none on SQLite, which undoes a failing statement alone (a chat
        command's result: no generator then, as in `_write`)."""
        conn = getattr(self._batch, "conn", None)
        if conn is None or (one_statement and self.is_sqlite):  # each call is its own transaction, or atomic
            return _NOTHING_TO_ISOLATE
        return self._savepoint(conn)

    @contextlib.contextmanager
    def _savepoint(self, conn: sa.Connection) -> Iterator[None]:
        after = getattr(self._batch, "after", None)
        told = len(after) if after is not None else 0
        try:
            with self._savepoint_of(conn):
                yield
        except BaseException:
            if after is not None:  # rolled back: what its calls were to tell after the commit is dropped
                del after[told:]
            raise

    @contextlib.contextmanager
    def _savepoint_of(self, conn: sa.Connection) -> Iterator[None]:
        if not self.is_sqlite:
            with conn.begin_nested():
                yield
        else:
            driver = conn.connection.driver_connection
            if not driver.in_transaction:
                # A SAVEPOINT outside a transaction begins one that its RELEASE commits: the calls before
                # the group's commit would be stored at once, apart from it (run again if the group is).
                # IMMEDIATE: the write lock taken (waiting `busy_timeout` for it) before the first read. A
                # deferred BEGIN reads a snapshot, and another process's commit before the first write makes
                # that write fail at once (SQLITE_BUSY_SNAPSHOT, which no timeout waits out): a CLI purge beside
                # `squall serve` died so after a few batches. (On the loop's connection, which never waits, a
                # lock held elsewhere is `Busy` at once, as a write would find it: the group goes to the thread.)
                driver.execute("BEGIN IMMEDIATE")
            driver.execute("SAVEPOINT squall_isolated")
            try:
                yield
            except BaseException:
                # An interrupt (Ctrl-C) that lands inside a statement makes SQLAlchemy invalidate the
                # connection, closing the driver's: SQLite dropped the transaction with it, so there is
                # nothing to roll back, and asking the closed driver would raise a ProgrammingError in
                # place of the interrupt (exit 1 and a traceback instead of 130).
                if not conn.invalidated and driver.in_transaction:  # else SQLite rolled it all back too
                    driver.execute("ROLLBACK TO squall_isolated")  # (a full disk), savepoint and all
                    driver.execute("RELEASE squall_isolated")
                raise
            driver.execute("RELEASE squall_isolated")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        conn = getattr(self._batch, "conn", None)
        if conn is None:
            with self._engine.connect() as conn:
                yield conn
        else:
            yield conn

    @classmethod
    def open(cls, url: str, *, upgrade_in_use: bool = True) -> Store:
        """The store of the database at `url`, its schema brought up to date (`migrate`)."""
        engine = create_engine(url)
        migrate(engine, upgrade_in_use=upgrade_in_use)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()
        if self._nowait_conn is not None:
            self._nowait_conn.close()
        if self._nowait is not None:
            self._nowait.dispose()

    # -- the hot writes: straight to SQLite's driver, through Core elsewhere ------------------------
    def _insert(self, table: sa.Table, record: dict[str, Any]) -> Any:
        """Insert one row; returns its primary key."""
        cursor = getattr(self._batch, "cursor", None)
        if cursor is not None:  # SQLite, in a group (see `_write`)
            return self._direct.insert(cursor, table, record)  # type: ignore[union-attr]
        with self._write() as conn:
            if self._direct:
                return self._direct.insert(conn.connection.driver_connection, table, record)
            return conn.execute(_insert_statement(table), record).inserted_primary_key[0]

    def _update(self, table: sa.Table, row_id: Any, fields: dict[str, Any], expect: Sequence[str] | None = None,
                returning: bool = False) -> Any:
        """Update the row with this id (while its status is one of `expect`, if given): whether a row
        changed, or with `returning` the changed row (None if none did)."""
        cursor = getattr(self._batch, "cursor", None)
        if cursor is not None:  # SQLite, in a group (see `_write`)
            return self._direct.update(cursor, table, row_id, fields, expect, returning)  # type: ignore[union-attr]
        with self._write() as conn:
            if self._direct:
                return self._direct.update(conn.connection.driver_connection, table, row_id, fields, expect,
                                           returning)
            statement = _update_statement(table, tuple(sorted(fields)), expect is not None, returning)
            values = {**fields, "_id": row_id, **({"_expect": list(expect)} if expect is not None else {})}
            result = conn.execute(statement, values)
            return _row(result.first()) if returning else result.rowcount == 1

    # -- executions ------------------------------------------------------------------------
    def insert_execution(self, record: dict[str, Any]) -> None:
        """Insert a new execution; one its chat message requested (`chat_delivery_key`) with that key in
        `deliveries`, in the same transaction, unless the key is there already: then nothing is stored
        and `DuplicateDelivery` names the execution the message requested before."""
        key = chat_delivery_key(record)
        if key is None:
            self._insert(executions, record)
            return
        row = {"key": key, "trigger_instance_id": record["id"],
               "expires_at": record["start_timestamp"] + CHAT_DELIVERY_KEPT}
        with self._write() as conn:  # the key first: taken, it stores nothing and the execution is not stored
            if self._direct:
                stored = self._direct.insert_once(conn.connection.driver_connection, deliveries, row,
                                                  ("key",)) is not None
            else:
                stored = conn.execute(_insert_once(self.is_sqlite, deliveries, "key"), row).first() is not None
            if not stored:
                taken = conn.execute(sa.select(deliveries.c.trigger_instance_id)
                                     .where(deliveries.c.key == key)).scalar()
                raise DuplicateDelivery(key, taken or "?", "execution")
            if self._direct:
                self._direct.insert(conn.connection.driver_connection, executions, record)
            else:
                conn.execute(_insert_statement(executions), record)

    def update_execution(
        self, execution_id: str, fields: dict[str, Any], *, expect: Iterable[str] | None = None
    ) -> bool:
        """Update one execution; with `expect`, only while its status is one of those (atomic)."""
        return self._update(executions, execution_id, fields, None if expect is None else tuple(expect))

    def conducts(self, execution_id: str, job_id: int, *, starting: bool = False) -> bool:
        """Whether the worker's job `job_id` still conducts this workflow (its `runner_info` names it);
        with `starting` (a step about to request a task), also whether the workflow may still start
        one: not once it is canceling, paused or ended. On PostgreSQL the row is read under a share
        lock held to the caller's commit, so a step that takes the workflow over (`ExecutionService.step`
        writes its own job there), or a cancel's status write, waits for what the caller writes, and
        then sees it."""
        statement = sa.select(executions.c.runner_info, executions.c.status).where(executions.c.id == execution_id)
        if not self.is_sqlite:
            statement = statement.with_for_update(read=True)
        with self._write() as conn:
            row = conn.execute(statement).first()
        if row is None or (starting and row.status not in ("running", "pausing", "resuming")):
            return False
        return (row.runner_info or {}).get("job_id") == job_id

    def claim_execution(self, execution_id: str, fields: dict[str, Any], expect: Sequence[str]) -> dict | None:
        """Move an execution on from one of `expect` and return it, in one statement.

        Only one process or task can win the claim, so an execution never runs twice.
        """
        return self._update(executions, execution_id, fields, tuple(expect), returning=True)

    def get_execution(self, execution_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(_GET_EXECUTION, {"_id": execution_id}).first())

    def find_executions(self, prefix: str, limit: int = 5) -> list[str]:
        """Ids starting with `prefix`, so people can type the first characters of an id.

        Ids are lowercase hexadecimal, so anything else matches nothing and is not queried. The lookup is
        a range of the primary key (`prefix <= id < the next prefix`), which reads at most `limit` index
        entries on SQLite and PostgreSQL alike: a LIKE would read the whole table (SQLite's is
        case-insensitive, so it cannot use the index), and takes `%` and `_` as wildcards."""
        prefix = prefix.lower()
        if not 0 < len(prefix) <= executions.c.id.type.length or prefix.strip(_HEX_DIGITS[:16]):
            return []
        upper = prefix[:-1] + _HEX_DIGITS[_HEX_DIGITS.index(prefix[-1]) + 1]  # "…f" → "…g", "…9" → "…a"
        statement = (sa.select(executions.c.id).where(executions.c.id >= prefix, executions.c.id < upper)
                     .order_by(executions.c.id).limit(min(limit, 100)))
        with self._read() as conn:
            return [row[0] for row in conn.execute(statement)]

    def _execution_filters(self, statement: Any, action: str | None = None,
                           status: str | Sequence[str] | None = None, parent: str | None = None,
                           user: str | None = None, trigger_instance: str | None = None,
                           since: datetime | None = None, until: datetime | None = None,
                           runner: str | None = None, rule: str | None = None,
                           trigger_types: Sequence[str] | None = None) -> Any:
        """`parent="null"` keeps executions without a parent (StackStorm's API spells it so). `user` is
        who asked (`context.user`), `trigger_instance` the id of the trigger instance a rule requested
        it for, both written as the indexes on them hold them (`_context_field`; PostgreSQL's on the
        user is migration 0019's, the others 0023's), and `since`/`until` bound `start_timestamp`
        strictly, as StackStorm's `timestamp_gt`/`timestamp_lt`. `runner` is the runner type's name,
        `rule` the ref or the name of the rule that requested it (`context.rule`), `trigger_types` the refs
        of the trigger types whose instances it was requested for: no index serves these three, so a
        list by them alone reads the executions newest first until it has its page."""
        column = executions.c
        conditions = [
            column.runner == runner if runner else None,
            sa.or_(_context_field("rule.ref", sqlite=self.is_sqlite) == rule,
                   _context_field("rule.name", sqlite=self.is_sqlite) == rule) if rule else None,
            _context_field("trigger_instance.name", sqlite=self.is_sqlite).in_(list(trigger_types))
            if trigger_types is not None else None,
            column.action == action if action else None,
            column.status == status if isinstance(status, str) else column.status.in_(list(status)) if status
            else None,
            column.parent.is_(None) if parent == "null" else column.parent == parent if parent else None,
            _context_field("user", sqlite=self.is_sqlite) == user if user is not None else None,
            _context_field("trigger_instance.id", sqlite=self.is_sqlite) == trigger_instance
            if trigger_instance is not None else None,
            column.start_timestamp > since.astimezone(UTC) if since is not None else None,
            column.start_timestamp < until.astimezone(UTC) if until is not None else None,
        ]
        return statement.where(*(c for c in conditions if c is not None))

    def list_executions(self, *, limit: int = 50, offset: int = 0, oldest_first: bool = False,
                        **filters: Any) -> list[dict[str, Any]]:
        """Executions `filters` select (`_execution_filters`), newest first unless `oldest_first`."""
        with self._read() as conn:
            return self._listed(conn, limit, offset, oldest_first, filters)

    def page_executions(self, *, limit: int = 50, offset: int = 0, oldest_first: bool = False,
                        **filters: Any) -> tuple[list[dict[str, Any]], int]:
        """One page of the executions `filters` select and how many they select in all (the API's
        `X-Total-Count`), in one read (`_counted`)."""
        with self._read() as conn:
            return self._listed(conn, limit, offset, oldest_first, filters), int(
                conn.execute(self._counted(filters)).scalar_one())

    def _counted(self, filters: dict[str, Any]) -> Any:
        """How many executions `filters` select. On SQLite, `parent=null` alone (`st2 execution list`) is
        every execution less those with a parent, in one statement: an index holds only the children
        (migration 0017), so counting the top-level ones read every execution (0.3 to 0.5 s with
        300,000); the total is counted on the smallest index and the children on theirs. With other
        filters their index counts (the one on the user holds the parent too)."""
        if self.is_sqlite and filters.get("parent") == "null" and not any(
                value is not None for name, value in filters.items() if name != "parent"):
            children = sa.select(sa.func.count()).select_from(executions).where(executions.c.parent.is_not(None))
            every = sa.select(sa.func.count()).select_from(executions)
            return sa.select(every.scalar_subquery() - children.scalar_subquery())
        return self._execution_filters(sa.select(sa.func.count()).select_from(executions), **filters)

    def _listed(self, conn: Any, limit: int, offset: int, oldest_first: bool,
                filters: dict[str, Any]) -> list[dict[str, Any]]:
        columns = (executions.c.start_timestamp, executions.c.id)
        order = columns if oldest_first else tuple(c.desc() for c in columns)
        statement = self._execution_filters(sa.select(executions).order_by(*order), **filters)
        return [_row(row) for row in conn.execute(statement.limit(limit).offset(offset))]  # type: ignore[misc]

    def execution_keyset(self, where: ExecutionFilter, *, before: str | None = None,
                         limit: int = 50) -> list[dict[str, Any]]:
        """Newest first, the `limit` executions `where` selects that come after execution `before` (the
        last of the previous page), without their parameters, spec or result (a row's output may be
        megabytes and a list shows none of it).

        Keyset paging: the next page starts below the previous page's last (`start_timestamp`, `id`),
        so the thousandth page costs what the first does (OFFSET reads and drops every row before it).
        An unknown `before` selects nothing. A filter on the user, the source, the channel or the
        status is read from its index in that order (`_narrowed`); others are checked on the rows of
        the time index in that order until the page is full.

        On SQLite, a pack (a range of actions, which the index on (action, start) does not give in the
        list's order) is read as the pages of each of its actions merged (`_by_action`): a pack with few
        executions no longer costs a read of every one (0.6 s with 300,000)."""
        statement = sa.select(*_LISTED).order_by(executions.c.start_timestamp.desc(), executions.c.id.desc())
        with self._read() as conn:
            if before is not None:
                start = conn.execute(sa.select(executions.c.start_timestamp)
                                     .where(executions.c.id == before)).scalar()
                if start is None:
                    return []
                statement = statement.where(executions.c.start_timestamp <= start,
                                            sa.or_(executions.c.start_timestamp < start, executions.c.id < before))
            actions = self._pack_actions(conn, where)
            if actions == []:  # no execution of the pack
                return []
            statement = (_by_action(statement, where, actions, limit) if actions
                         else _narrowed(statement, where, steered=self.is_sqlite).limit(limit))
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def _pack_actions(self, conn: sa.Connection, where: ExecutionFilter) -> list[str] | None:
        """SQLite: the actions of `where`'s pack that have executions, for its page to be read action by
        action (`_by_action`). None where it is not read so: on PostgreSQL, without a pack, with an
        action named (its index serves), or with more than `PACK_ACTIONS_READ_APART` actions (the time
        index then, as before the pack's actions were looked up)."""
        if not (self.is_sqlite and where.pack and not where.action):
            return None
        actions = list(conn.execute(_PACK_ACTIONS, {"low": f"{where.pack}.", "high": f"{where.pack}/",
                                                    "most": PACK_ACTIONS_READ_APART + 2}).scalars())
        return actions if len(actions) <= PACK_ACTIONS_READ_APART else None

    def chat_executions(self, adapter: str, channel: str, *, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first, the `limit` latest executions a chat command started in `channel` of `adapter`
        (`context.chat`; chat's `!executions`): light rows as `execution_keyset`'s, plus the parameters
        `engine.executions.public` needs.

        Read on the index on the chat channel (migration 0022; on SQLite (channel, start, id, adapter)
        since 0023, the adapter checked in the index) in the list's order, stopping at the `limit`th: a
        channel costs its own executions, not every one (a quiet channel read them all: 85 ms on
        SQLite, 105 ms on PostgreSQL with 200,000). Channel and adapter are written as the index's
        expressions (`_chat_text`); the source is checked on the rows it finds."""
        statement = (sa.select(*_LISTED, executions.c.parameters)
                     .where(_chat_text("channel", sqlite=self.is_sqlite) == channel,
                            _chat_text("adapter", sqlite=self.is_sqlite) == adapter)
                     .order_by(executions.c.start_timestamp.desc(), executions.c.id.desc()))
        statement = _narrowed(statement, ExecutionFilter(source="chat", top_level=False), steered=self.is_sqlite)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement.limit(limit))]  # type: ignore[misc]

    def execution_ids_with_status(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """`id`, `status`, `runner_info` and `parent` of the executions in `statuses`, oldest first: the
        poll asks about a queued one's workflows (`parent`) before it runs it, and only then."""
        statement = (
            sa.select(executions.c.id, executions.c.status, executions.c.runner_info, executions.c.parent)
            .where(executions.c.status.in_(list(statuses)))
            .order_by(executions.c.start_timestamp)
        )
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    def delayed_on_a_clock(self) -> list[dict[str, Any]]:
        """`id`, `status`, `runner_info` and `parent` of the top-level `delayed` executions held by a clock
        (`runner_info.delayed_until`: a retry policy's delay, `st2 run --delay`), oldest first. Not those a
        concurrency policy delays, which carry none: a policy's backlog of thousands is not read every poll."""
        c = executions.c
        statement = (sa.select(c.id, c.status, c.runner_info, c.parent)
                     .where(c.status == "delayed", c.parent.is_(None),
                            c.runner_info["delayed_until"].as_string().is_not(None))
                     .order_by(c.start_timestamp))
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    def recent_top_level(self, actions: Sequence[str], since: datetime) -> list[dict[str, Any]]:
        """Executions of `actions` without a parent started after `since`: `id`, `status`,
        `end_timestamp` and `rerun_of` (`context.re-run.ref`, the execution it re-runs, or None), for the retry policy's
        look at recovery (`PolicyExecutor.recover_retries`). A range of the index on (action,
        start_timestamp), reading none of the rows' large columns (spec, result, log)."""
        statement = sa.select(executions.c.id, executions.c.status, executions.c.end_timestamp,
                              executions.c.context[("re-run", "ref")].as_string().label("rerun_of")).where(
            executions.c.action.in_(list(actions)), executions.c.start_timestamp > since.astimezone(UTC),
            executions.c.parent.is_(None))
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    # -- key-value pairs -------------------------------------------------------------------
    def kv_get(self, scope: str, name: str, now: datetime) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(_KV_GET_LIVE, {"scope": scope, "name": name, "now": now}).first())

    def kv_list(self, scope: str | None, prefix: str | None, now: datetime, limit: int | None = None, *,
                offset: int = 0, name_prefix: str | None = None, user: str | None = None) -> list[dict]:
        """Live pairs by scope and stored name. `prefix` is a prefix of the stored name; `name_prefix` of the
        key's own (`_kv_where`), and `user` keeps only that user's user-scoped pairs."""
        statement = sa.select(kv_pairs).where(*self._kv_where(scope, prefix, now, name_prefix, user)).order_by(
            kv_pairs.c.scope, kv_pairs.c.name)
        if limit:
            statement = statement.limit(limit)
        if offset:
            statement = statement.offset(offset)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def kv_count(self, scope: str | None, now: datetime, *, name_prefix: str | None = None,
                 user: str | None = None) -> int:
        """How many live pairs `kv_list` with the same filters (and no limit) returns."""
        statement = sa.select(sa.func.count()).select_from(kv_pairs).where(
            *self._kv_where(scope, None, now, name_prefix, user))
        with self._read() as conn:
            return int(conn.execute(statement).scalar_one())

    def _kv_where(self, scope: str | None, prefix: str | None, now: datetime, name_prefix: str | None,
                  user: str | None) -> list[sa.ColumnElement[bool]]:
        """The filters of `kv_list` and `kv_count`. Every prefix is compared with `substr`, so it is
        case-sensitive on both databases (SQLite's LIKE is not: "ap" is not "Apple", "bob:" not "Bob:") and
        has no wildcards. A user-scoped pair is stored as `<user>:<name>` (user names hold no ':'), so
        `name_prefix` is compared after the first ':' there: `theme` is found by "them", not by "carol"."""
        where: list[sa.ColumnElement[bool]] = [sa.or_(kv_pairs.c.expire_at.is_(None), kv_pairs.c.expire_at > now)]
        name, is_user = kv_pairs.c.name, kv_pairs.c.scope == "user"
        if scope:
            where.append(kv_pairs.c.scope == scope)
        if prefix:
            where.append(sa.func.substr(name, 1, len(prefix)) == prefix)
        if user:
            mine = sa.func.substr(name, 1, len(user) + 1) == f"{user}:"
            where.append(mine if scope == "user" else sa.or_(kv_pairs.c.scope != "user", mine))
        if name_prefix:
            whole = sa.func.substr(name, 1, len(name_prefix)) == name_prefix
            colon = sa.func.instr(name, ":") if self.is_sqlite else sa.func.strpos(name, ":")
            own = sa.func.substr(name, colon + 1, len(name_prefix)) == name_prefix
            where.append(own if scope == "user" else whole if scope else sa.or_(sa.and_(is_user, own),
                                                                                 sa.and_(~is_user, whole)))
        return where

    def kv_put(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Insert or replace one pair; returns the previous live record, if any."""
        with self._write() as conn:
            previous = _row(conn.execute(_KV_GET, {"scope": record["scope"], "name": record["name"]}).first())
            conn.execute(_kv_upsert(self.is_sqlite, tuple(sorted(record))), record)
        if previous and previous["expire_at"] and previous["expire_at"] <= record["updated_at"]:
            return None
        return previous

    def kv_delete(self, scope: str, name: str) -> bool:
        with self._write() as conn:
            result = conn.execute(
                kv_pairs.delete().where(kv_pairs.c.scope == scope, kv_pairs.c.name == name)
            )
            return result.rowcount == 1

    #: Every column holding ciphertext under the datastore key: what `squall key rotate` re-encrypts
    #: (`engine.datastore.rotate_key`) before it retires the old keys. Each is (what a row of it is
    #: called, the table, the columns naming a row, the ciphertext's column, which rows hold ciphertext:
    #: None for every row where it is not null). A table storing `KeyRing.encrypt` output belongs here,
    #: or a rotation retires the key its rows need and they can never be read again.
    SEALED_COLUMNS: tuple[tuple[str, sa.Table, tuple[str, ...], str, sa.ColumnElement[bool] | None], ...] = (
        ("key", kv_pairs, ("scope", "name"), "value", kv_pairs.c.secret.is_(True)),
        ("sealed parameters of execution", executions, ("id",), "sealed", None),
        ("sealed parameters of approval", approvals, ("id",), "sealed", None),  # a command held for approvers
        ("chat session", chat_sessions, ("key",), "state", None),  # an open chat form or confirmation
    )

    def sealed_values(self) -> list[tuple[str, tuple[Any, ...], str]]:
        """Every ciphertext stored, as (what, key, ciphertext): `what` names its `SEALED_COLUMNS` entry,
        `key` the row (its key columns' values)."""
        found: list[tuple[str, tuple[Any, ...], str]] = []
        with self._read() as conn:
            for what, table, key, column, only in self.SEALED_COLUMNS:
                query = sa.select(*(table.c[name] for name in key), table.c[column]).where(
                    table.c[column].is_not(None), *([] if only is None else [only]))
                found.extend((what, tuple(row[:-1]), row[-1]) for row in conn.execute(query))
        return found

    def swap_sealed_values(self, swaps: list[tuple[str, tuple[Any, ...], str, str]]) -> int:
        """Write re-encrypted ciphertexts ((what, key, old, new), as `sealed_values` named them), each only
        where the one it was made from is still stored (compare-and-swap), in one transaction: a secret
        stored meanwhile is newer than the value re-encrypted, and is kept. Returns how many rows changed
        meanwhile (stored anew, or deleted)."""
        columns = {entry[0]: entry[1:] for entry in self.SEALED_COLUMNS}
        missed = 0
        with self._write() as conn:
            for what, key, old, new in swaps:
                table, names, column, only = columns[what]
                done = conn.execute(table.update().where(
                    *(table.c[name] == value for name, value in zip(names, key, strict=True)),
                    table.c[column] == old, *([] if only is None else [only])).values({column: new}))
                missed += done.rowcount == 0
        return missed

    # -- chat outbox and audit log ---------------------------------------------------------
    def outbox_add(self, adapter: str, channel: str, payload: dict[str, Any]) -> int:
        record = {"adapter": adapter, "channel": channel, "payload": payload, "status": "pending", "attempts": 0,
                  "created_at": utcnow()}
        return int(self._insert(outbox, record))

    def _keyed_id(self, conn: sa.Connection, execution_id: str, kind: str) -> int | None:
        if self._direct:  # once per chat command: the driver's few microseconds, not Core's
            found = _execute(conn, _KEYED_ROW_SQL, [execution_id, kind]).fetchone()
        else:
            found = conn.execute(_KEYED_ROW, {"execution_id": execution_id, "kind": kind}).first()
        return None if found is None else int(found[0])

    def outbox_keyed_id(self, execution_id: str, kind: str) -> int | None:
        """The id of this execution's row of this kind ("ack", "result"), if stored."""
        with self._read() as conn:
            return self._keyed_id(conn, execution_id, kind)

    def pending_questions(self, adapter: str, channel: str) -> list[dict[str, Any]]:
        """Questions of inquiries still `pending` asked in this channel, newest first: their inquiry
        (`execution_id`), post id and thread (an indexed lookup, `ix_outbox_question_place`)."""
        statement = (sa.select(outbox.c.execution_id, outbox.c.platform_id, outbox.c.payload)
                     .join(executions, executions.c.id == outbox.c.execution_id)
                     .where(_QUESTION, outbox.c.adapter == adapter, outbox.c.channel == channel,
                            executions.c.status == "pending")
                     .order_by(outbox.c.id.desc()))
        with self._read() as conn:
            return [{"inquiry": row.execution_id, "platform_id": row.platform_id,
                     "thread": (row.payload or {}).get("thread")} for row in conn.execute(statement)]

    def outbox_add_keyed(self, execution_id: str, key: str,
                         rows: Sequence[tuple[str, str, dict[str, Any], str, str]], *,
                         edits: str | None = None, at: datetime | None = None
                         ) -> list[tuple[int | None, int | None]] | None:
        """Store one execution's replies of one key (its ack, its result, a notify route's messages),
        `rows` of (adapter, channel, payload, kind, status) with one of kind `key`, in one
        transaction; for each row, in order, (its id, the id it edits).

        None, storing nothing, if that execution's `key` row exists already: the listener and the
        sweep may both try, and a reply must never be stored (so sent) twice. The unique
        (execution_id, kind) index settles a race with another process.

        With `edits` (a kind, "ack"), the rows of kind "status"/"status.N" edit that row of the same
        execution, found here in the same transaction (so after a restart as well as live); with no
        such row they are not stored (their id is None): there is nothing to edit.

        `at` is their `created_at`, the clock's time now unless given: a chat result stored with its
        execution's end carries the end's time (`CompletionWrite.write`'s `at`), as its audit event carries its
        request's (`audit_add`): a reading of the clock fewer a chat command."""
        now = at or utcnow()
        if keyed_in_one_statement(key, rows, edits):  # a result, an ack: no look-up first, no savepoint
            adapter, channel, payload, kind, status = rows[0]
            record = {"adapter": adapter, "channel": channel, "payload": payload, "status": status, "attempts": 0,
                      "created_at": now, "execution_id": execution_id, "kind": kind}
            cursor = getattr(self._batch, "cursor", None)
            if cursor is not None:  # SQLite, in a group (see `_write`)
                row_id = self._direct.insert_once(cursor, outbox, record, _OUTBOX_KEY)  # type: ignore[union-attr]
                return None if row_id is None else [(row_id, None)]
            with self._write() as conn:
                if self._direct:
                    row_id = self._direct.insert_once(conn.connection.driver_connection, outbox, record, _OUTBOX_KEY)
                else:
                    row_id = conn.execute(_insert_once(False, outbox, "id", _OUTBOX_KEY), record).scalar()
            return None if row_id is None else [(int(row_id), None)]
        records = [{"adapter": adapter, "channel": channel, "payload": payload, "status": status, "attempts": 0,
                    "created_at": now, "execution_id": execution_id, "kind": kind}
                   for adapter, channel, payload, kind, status in rows]
        try:
            with self._write() as conn:
                if self._keyed_id(conn, execution_id, key) is not None:
                    return None
                target = self._keyed_id(conn, execution_id, edits) if edits is not None else None
                stored: list[tuple[int | None, int | None]] = []
                for record in records:
                    edit = None
                    if edits is not None and record["kind"].split(".", 1)[0] == "status":
                        if target is None:
                            stored.append((None, None))
                            continue
                        record["payload"], edit = {**record["payload"], "edit": target}, target
                    if self._direct:
                        stored.append((int(self._direct.insert(conn.connection.driver_connection, outbox, record)),
                                       edit))
                    else:
                        stored.append((int(conn.execute(_insert_statement(outbox), record).inserted_primary_key[0]),
                                       edit))
                return stored
        except sa.exc.IntegrityError:
            return None

    def outbox_pending(self, adapters: Sequence[str], after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """Undelivered replies for these adapters, oldest first (so each channel keeps its order)."""
        statement = (sa.select(outbox).where(OUTBOX_PENDING, outbox.c.id > after,
                                             outbox.c.adapter.in_(list(adapters)))
                     .order_by(outbox.c.id).limit(limit))
        with self._read() as conn:
            return [dict(row._mapping) for row in conn.execute(statement)]

    def outbox_pending_ids(self, adapters: Sequence[str], after: int = 0, limit: int = 1000) -> list[int]:
        """Ids of undelivered replies for these adapters above `after` (a page, not a high-water
        mark: the outbox pages from 0 on every poll), oldest first."""
        statement = (sa.select(outbox.c.id).where(OUTBOX_PENDING, outbox.c.id > after,
                                                  outbox.c.adapter.in_(list(adapters)))
                     .order_by(outbox.c.id).limit(limit))
        with self._read() as conn:
            return [row[0] for row in conn.execute(statement)]

    def outbox_get(self, outbox_id: int) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(sa.select(outbox).where(outbox.c.id == outbox_id)).first())

    def outbox_get_many(self, outbox_ids: Sequence[int]) -> list[dict[str, Any]]:
        """These rows, oldest first."""
        with self._read() as conn:
            return [_row_dict(dict(row._mapping)) for row in conn.execute(
                sa.select(outbox).where(outbox.c.id.in_(list(outbox_ids))).order_by(outbox.c.id))]

    def executions_owing_results(self, adapters: Sequence[str], statuses: Sequence[str],
                                 since: datetime) -> list[dict[str, Any]]:
        """Executions started from chat on one of `adapters` since `since`, finished (`statuses`)
        since results are keyed (`outbox_keyed_since`), with no result row in the outbox: the
        results a crash kept from being stored. Oldest finish first."""
        keyed_since = self.outbox_keyed_since()
        chat = executions.c.context
        stored = sa.exists().where(outbox.c.execution_id == executions.c.id, outbox.c.kind == "result")
        # The status is checked below, not in SQL: the planner would pick the status index and walk
        # every finished execution ever stored, where the start-time index reads only the window.
        statement = (sa.select(executions)
                     .where(executions.c.start_timestamp >= since, executions.c.end_timestamp >= keyed_since,
                            chat[("chat", "adapter")].as_string().in_(list(adapters)), ~stored)
                     .order_by(executions.c.end_timestamp, executions.c.id))
        with self._read() as conn:
            rows = [_row(row) for row in conn.execute(statement)]
        wanted = set(statuses)
        return [row for row in rows if row["status"] in wanted]  # type: ignore[index]

    def outbox_keyed_since(self, kind: str = "keyed_since") -> datetime:
        """When this database began to key results (or, with kind "keyed_since:notify", `notify`
        messages): that row, written now if missing (first start after the upgrade, or the outbox
        was emptied). Executions that finished before had their replies stored without a key, so
        recovery must not take them for missing."""
        for _ in range(2):
            with self._read() as conn:
                found = conn.execute(_KEYED_SINCE, {"kind": kind}).scalar()
            if found is not None:
                return as_utc(found)  # type: ignore[return-value]
            record = {"adapter": "", "channel": "", "payload": {}, "status": "skipped", "attempts": 0,
                      "created_at": utcnow(), "execution_id": "", "kind": kind}
            try:
                with self._write() as conn:
                    conn.execute(_insert_statement(outbox), record)
                return record["created_at"]
            except sa.exc.IntegrityError:
                continue  # another process wrote it first: read theirs
        raise RuntimeError("the outbox's keyed_since row can neither be read nor written")

    def executions_owing_notifications(self, actions: Sequence[str], statuses: Sequence[str],
                                       since: datetime) -> list[dict[str, Any]]:
        """Executions started since `since` and finished (`statuses`) since `notify` messages are
        keyed, that may have a `notify` (their action is one of `actions`, or their context carries
        one), each with `notify_kinds`: the kinds of the "notify:*" rows stored for it. The caller
        works out which routes are owed. Oldest finish first."""
        keyed_since = self.outbox_keyed_since("keyed_since:notify")
        statement = (sa.select(executions)
                     .where(executions.c.start_timestamp >= since, executions.c.end_timestamp >= keyed_since,
                            sa.or_(executions.c.action.in_(list(actions)),
                                   executions.c.context["notify"].as_string().is_not(None)))
                     .order_by(executions.c.end_timestamp, executions.c.id))
        wanted = set(statuses)
        with self._read() as conn:
            rows = [row for row in (_row(row) for row in conn.execute(statement))
                    if row["status"] in wanted]  # type: ignore[index]
            kinds: dict[str, set[str]] = {row["id"]: set() for row in rows}  # type: ignore[index]
            ids = list(kinds)
            for start in range(0, len(ids), 500):
                for execution_id, kind in conn.execute(
                        sa.select(outbox.c.execution_id, outbox.c.kind)
                        .where(outbox.c.execution_id.in_(ids[start:start + 500]), outbox.c.kind.like("notify:%"))):
                    kinds[execution_id].add(kind)
        for row in rows:
            row["notify_kinds"] = kinds[row["id"]]  # type: ignore[index]
        return rows  # type: ignore[return-value]

    def outbox_update(self, outbox_id: int, fields: dict[str, Any]) -> None:
        self._update(outbox, outbox_id, fields)

    def outbox_update_many(self, updates: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """`outbox_update` of each (id, fields), in one statement per set of fields on SQLite."""
        if not self._direct:
            for outbox_id, fields in updates:
                self._update(outbox, outbox_id, fields)
            return
        cursor = getattr(self._batch, "cursor", None)
        if cursor is not None:  # SQLite, in a group (see `_write`)
            self._direct.update_many(cursor, outbox, updates)
            return
        with self._write() as conn:
            self._direct.update_many(conn.connection.driver_connection, outbox, updates)

    def audit_add(self, event: str, actor: str | None, source: str | None, target: str | None,
                  detail: dict[str, Any], at: datetime | None = None) -> None:
        """Store an audit event (in the caller's transaction of the moment) at `at`, the clock's time now
        unless given: a request's event, stored with it, carries the request's time (`_add_request_audit`)."""
        record = {"timestamp": at or utcnow(), "event": event, "actor": actor, "source": source, "target": target,
                  "detail": detail}
        record["id"] = self._insert(audit, record)  # the sinks name it (`audit_sinks.entry`), and resume by it
        if self.audit_listeners:  # told once stored: a sink never streams what was rolled back
            self.after_commit(functools.partial(self._tell_audited, record))

    def _tell_audited(self, record: dict[str, Any]) -> None:
        for listener in self.audit_listeners:
            listener(record)

    def audit_list(self, limit: int = 100, event: str | None = None) -> list[dict[str, Any]]:
        statement = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
        if event:
            statement = statement.where(audit.c.event == event)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    # -- trigger instances and rule enforcements ---------------------------------------------
    def trigger_instance_add(self, record: dict[str, Any], delivery: tuple[str, datetime] | None = None,
                             wake: str | None = None) -> None:
        """Store an instance. With `delivery` (its key and when it expires), only if no unexpired
        delivery has that key (`DuplicateDelivery` otherwise): both are stored in one transaction, so
        of two processes given the same delivery at once, one stores it. `wake`: a channel notified in
        that transaction (`_wake`)."""
        if delivery is None and wake is None:
            self._insert(trigger_instances, record)
            return
        if delivery is None:
            with self._write() as conn:
                conn.execute(_insert_statement(trigger_instances), record)
                _wake(conn, wake)
            return
        key, expires_at = delivery
        with self.isolated(), self._write() as conn:
            conn.execute(deliveries.delete().where(deliveries.c.key == key,  # an expired one is a new delivery
                                                   deliveries.c.expires_at <= record["occurrence_time"]))
            stored = conn.execute(_insert_once(self.is_sqlite, deliveries, "key"),
                                  {"key": key, "trigger_instance_id": record["id"], "expires_at": expires_at}).first()
            if stored is None:  # stored before (by this process or another) and not expired
                taken = conn.execute(sa.select(deliveries.c.trigger_instance_id)
                                     .where(deliveries.c.key == key)).scalar()
                raise DuplicateDelivery(key, taken or "?")
            conn.execute(_insert_statement(trigger_instances), record)
            _wake(conn, wake)

    def trigger_instances_add_once(self, records: Sequence[dict[str, Any]], key: str, expires_at: datetime,
                                   wake: str | None = None) -> bool:
        """Store `records` (the instances of one occurrence, none if it owed none) with `key` in one
        transaction, unless `key` is stored already; whether they were stored. An execution's action and
        notify triggers come this way (`Notifier`): the listener and the sweep, in any process, fire them
        once between them. Unlike `trigger_instance_add`, an expired key is not replaced: such keys name
        one execution's end, which never comes again, and the purge removes them. `wake`: a channel
        notified in that transaction when it stores instances (`_wake`)."""
        with self.isolated(), self._write() as conn:
            stored = conn.execute(_insert_once(self.is_sqlite, deliveries, "key"),
                                  {"key": key, "trigger_instance_id": records[0]["id"] if records else "",
                                   "expires_at": expires_at}).first()
            if stored is None:
                return False
            if records:
                conn.execute(_insert_statement(trigger_instances), list(records))
                _wake(conn, wake)
        return True

    def keyed_since_while(self, kind: str, keyed: bool) -> datetime | None:
        """`outbox_keyed_since(kind)` while `keyed`; otherwise None, and that row is forgotten, so that
        keying begun again later counts from then. For the triggers the sweep fires (`Notifier`): an
        execution that ended while no rule listened was owed none, and must not get one from a rule
        added since."""
        if keyed:
            return self.outbox_keyed_since(kind)
        with self._read() as conn:
            found = conn.execute(_KEYED_SINCE, {"kind": kind}).scalar()
        if found is not None:
            with self._write() as conn:
                conn.execute(outbox.delete().where(outbox.c.execution_id == "", outbox.c.kind == kind))
        return None

    def executions_owing_trigger(self, key_prefix: str, since: datetime, ended_since: datetime,
                                 statuses: Sequence[str], actions: Sequence[str] | None = None
                                 ) -> list[dict[str, Any]]:
        """Executions started since `since`, finished (`statuses`) since `ended_since`, with no
        delivery keyed `key_prefix` + their id (`trigger_instances_add_once`): a trigger a crash kept
        from firing. With `actions`, only those that may have a `notify` (their action is one of
        `actions`, or their context carries one). Oldest finish first."""
        fired = sa.exists().where(deliveries.c.key == sa.literal(key_prefix, sa.String) + executions.c.id)
        where = [executions.c.start_timestamp >= since, executions.c.end_timestamp >= ended_since, ~fired]
        if actions is not None:
            where.append(sa.or_(executions.c.action.in_(list(actions)),
                                executions.c.context["notify"].as_string().is_not(None)))
        statement = sa.select(executions).where(*where).order_by(executions.c.end_timestamp, executions.c.id)
        wanted = set(statuses)
        with self._read() as conn:  # the status is checked here, as in `executions_owing_results`
            rows = [_row(row) for row in conn.execute(statement)]
        return [row for row in rows if row["status"] in wanted]  # type: ignore[index]

    def deliveries_purge_expired(self, now: datetime) -> int:
        with self._write() as conn:
            return conn.execute(deliveries.delete().where(deliveries.c.expires_at <= now)).rowcount

    def trigger_instance_claim(self, instance_id: str, owner: str) -> bool:
        """Mark a `pending` instance `processing` by `owner` (the claiming process); False if it is not
        pending any more: another process (or this one's recovery) claimed it first, and processes it."""
        return bool(self._update(trigger_instances, instance_id, {"status": "processing", "owner": owner},
                                 expect=("pending",)))

    def trigger_instances_take(self, owner: str, limit: int) -> list[dict[str, Any]]:
        """Claim up to `limit` `pending` instances, oldest first, for `owner`, as `trigger_instance_claim`
        claims one: the rows another process is claiming now are skipped (PostgreSQL), and one it claimed
        first is not pending any more when this update comes to it, so each goes to one process. The
        claimed rows, oldest first. A `squall serve` takes what `squall worker`s stored this way."""
        column = trigger_instances.c
        oldest = (sa.select(column.id).where(column.status == "pending")
                  .order_by(column.occurrence_time, column.id).limit(limit).with_for_update(skip_locked=True))
        statement = (trigger_instances.update().where(column.id.in_(oldest), column.status == "pending")
                     .values(status="processing", owner=owner).returning(*trigger_instances.c))
        with self._write() as conn:
            rows = [_row(row) for row in conn.execute(statement)]
        return sorted(rows, key=lambda row: (as_utc(row["occurrence_time"]), row["id"]))  # type: ignore[index]

    def trigger_instance_take_over(self, instance_id: str, dead: str | None, owner: str) -> bool:
        """Make `owner` the owner of an instance still `processing` by `dead` (a process that died; None:
        a row from before owners were recorded). Of several recoveries that found it, one takes it."""
        column = trigger_instances.c
        statement = (trigger_instances.update()
                     .where(column.id == instance_id, column.status == "processing",
                            column.owner.is_not_distinct_from(dead))
                     .values(owner=owner))
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def trigger_instance_status(self, instance_id: str, status: str, expect: Sequence[str] | None = None) -> bool:
        """Set an instance's status (while it is one of `expect`, if given); whether it changed."""
        return bool(self._update(trigger_instances, instance_id, {"status": status}, expect))

    def trigger_instance_finish(self, instance_id: str, status: str, owner: str) -> bool:
        """Store how processing an instance ended, while it is `processing` by `owner`; False if another
        process took it over meanwhile (`serve_node_take_over`: `owner` was presumed dead, and the taker
        writes the end). On SQLite straight on the driver, as every instance's end is written."""
        with self._write() as conn:
            if self._direct:
                return _execute(conn, _FINISH_TRIGGER_INSTANCE_SQL, [status, instance_id, owner]).rowcount == 1
            return conn.execute(_FINISH_TRIGGER_INSTANCE, {"_id": instance_id, "_owner": owner,
                                                           "status": status}).rowcount == 1

    def serve_node_beat(self, owner: str) -> None:
        """Store a heartbeat of the `squall serve` node `owner` (PostgreSQL): its `beat` counted up, or its
        row made again (a watcher that found it silent for long deletes it, `serve_node_take_over`)."""
        if self.is_sqlite:
            insert = sqlite_insert
        else:  # PostgreSQL's dialect module only where it is the database
            from sqlalchemy.dialects.postgresql import insert
        statement = insert(serve_nodes).values(owner=owner, beat=1, beaten_at=sa.func.now())
        statement = statement.on_conflict_do_update(
            index_elements=[serve_nodes.c.owner],
            set_={"beat": serve_nodes.c.beat + 1, "beaten_at": sa.func.now()})
        with self._write() as conn:
            conn.execute(statement)

    def serve_node_beats(self) -> dict[str, int]:
        """Every serve node's heartbeat: owner → beat."""
        with self._read() as conn:
            return {owner: beat for owner, beat in conn.execute(sa.select(serve_nodes.c.owner, serve_nodes.c.beat))}

    def serve_node_take_over(self, silent: str, beat: int, owner: str,
                             forget: bool = False) -> list[dict[str, Any]] | None:
        """Make `owner` the owner of what the serve node `silent` holds `processing`, while its heartbeat is
        still `beat` (the one its watcher saw unchanged): checked under a lock on its row, which its next
        beat waits for, so a node that beats meanwhile keeps its instances. The rows taken, oldest first;
        None if it beat (or its row is gone). The row stays, so that an instance it claimed as this ran
        is taken by a later look; `forget` (silent for long) deletes it, with this last take-over."""
        column = trigger_instances.c
        with self._write() as conn:
            held = conn.execute(sa.select(serve_nodes.c.beat).where(serve_nodes.c.owner == silent)
                                .with_for_update()).scalar()
            if held != beat:
                return None
            rows = [_row(row) for row in conn.execute(
                trigger_instances.update().where(column.status == "processing", column.owner == silent)
                .values(owner=owner).returning(*trigger_instances.c))]
            if forget:
                conn.execute(serve_nodes.delete().where(serve_nodes.c.owner == silent))
        return sorted(rows, key=lambda row: (as_utc(row["occurrence_time"]), row["id"]))  # type: ignore[index]

    def trigger_instance_get(self, instance_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(sa.select(trigger_instances)
                                     .where(trigger_instances.c.id == instance_id)).first())

    def trigger_instance_list(self, trigger: str | None = None, status: str | Sequence[str] | None = None,
                              limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        return self._newest(trigger_instances, _trigger_instance_where(trigger, status), limit)

    def trigger_instance_page(self, trigger: str | None = None, status: str | Sequence[str] | None = None,
                              limit: int = 50, offset: int = 0, before: tuple[datetime, str] | None = None,
                              since: datetime | None = None, until: datetime | None = None,
                              known_total: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of `trigger_instance_list`, and how many there are in all (the API's `X-Total-Count`).
        With `before` (an instance's `occurrence_time` and id), the page starts just below that instance in
        the list's order (`_newest_rows`), deleted since or not: a keyset page (`limit=-1`'s), which rows
        stored or deleted above it do not move as they move an OFFSET's. `since`/`until`: only the instances
        that occurred strictly after/before them (`timestamp_gt`/`timestamp_lt`), `before` or not.
        `known_total`: the count the caller has read already, given back as it is, not counted again
        (`_newest_page`)."""
        return self._newest_page(trigger_instances, _trigger_instance_where(trigger, status, since, until), limit,
                                 offset, before, known_total)

    def trigger_instance_latest(self, trigger: str, parameters: dict[str, Any], since: datetime) -> datetime | None:
        """When the newest instance of `trigger` with exactly `parameters` occurred, if at or after
        `since` (None if none did): where an interval timer that takes the lead picks its phase up
        (`engine.timers`). A JSON column has no equality both databases share, so the parameters'
        text and whole-number values narrow the rows in SQL, and each row left, newest first, is
        compared whole (a timer with one more parameter is another timer)."""
        column = trigger_instances.c
        narrowed = [column.trigger == trigger, column.occurrence_time >= since]
        for key, value in parameters.items():
            if isinstance(value, str):
                narrowed.append(column.trigger_parameters[key].as_string() == value)
            elif isinstance(value, int) and not isinstance(value, bool):
                # As text on PostgreSQL, where a cast fails on any other row's non-number (SQLite's never does).
                narrowed.append(column.trigger_parameters[key].as_integer() == value if self.is_sqlite
                                else column.trigger_parameters[key].as_string() == str(value))
        statement = (sa.select(column.occurrence_time, column.trigger_parameters).where(*narrowed)
                     .order_by(column.occurrence_time.desc()))
        wanted = dict(parameters) or None
        with self._read() as conn:
            for occurred, stored in conn.execute(statement):
                if (stored or None) == wanted:
                    return as_utc(occurred)
        return None

    def rule_enforcement_add_once(self, record: dict[str, Any]) -> bool:
        """Store an enforcement unless one with its id is stored: whether it was. Its id is derived from
        its rule and trigger instance (`engine.rules.enforcement_id`), so a rule enforced again for the
        same instance (a recovery after a crash) records nothing more."""
        with self._write() as conn:
            if self._direct:
                return self._direct.insert_once(conn.connection.driver_connection, rule_enforcements, record,
                                                ("id",)) is not None
            return conn.execute(_insert_once(self.is_sqlite, rule_enforcements, "id"), record).first() is not None

    def rules_enforced_for(self, trigger_instance_id: str) -> set[str]:
        """The refs of the rules that have an enforcement (succeeded or failed) for this instance."""
        statement = (sa.select(rule_enforcements.c.rule).distinct()
                     .where(rule_enforcements.c.trigger_instance_id == trigger_instance_id))
        with self._read() as conn:
            return {row[0] for row in conn.execute(statement)}

    def rule_enforcement_list(self, rule: str | None = None, trigger_instance_id: str | None = None,
                              execution_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        return self._newest(rule_enforcements, _enforcement_where(rule, trigger_instance_id, execution_id), limit)

    def rule_enforcement_get(self, enforcement_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(sa.select(rule_enforcements)
                                     .where(rule_enforcements.c.id == enforcement_id)).first())

    def rule_enforcement_page(self, rule: str | None = None, trigger_instance_id: str | None = None,
                              execution_id: str | None = None, limit: int = 50, offset: int = 0,
                              before: tuple[datetime, str] | None = None, since: datetime | None = None,
                              until: datetime | None = None, at: datetime | None = None,
                              known_total: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page of `rule_enforcement_list`, and how many there are in all (the API's `X-Total-Count`).
        With `before` (an enforcement's `enforced_at` and id), the page starts just below that enforcement
        in the list's order (`_newest_rows`), deleted since or not: a keyset page (`limit=-1`'s), which rows
        stored or deleted above it do not move as they move an OFFSET's. `since`/`until`: only those enforced
        strictly after/before them (`enforced_at_gt`/`enforced_at_lt`), `at`: at that time exactly.
        `known_total`: the count the caller has read already, given back as it is, not counted again
        (`_newest_page`)."""
        where = _enforcement_where(rule, trigger_instance_id, execution_id, since, until, at)
        return self._newest_page(rule_enforcements, where, limit, offset, before, known_total)

    def _newest(self, table: sa.Table, where: list[Any], limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """Rows of a log table (`occurrence_time` or `enforced_at`, then id) newest first."""
        with self._read() as conn:
            return self._newest_rows(conn, table, where, limit, offset)

    def _newest_page(self, table: sa.Table, where: list[Any], limit: int, offset: int,
                     before: tuple[datetime, str] | None = None,
                     known_total: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """`_newest_rows` (below `before`, if given) and how many rows `where` selects in all, `before` or not:
        `known_total` when the caller gives the count it has (the pages of a whole log, `keyset_pages`, after
        it was counted once), for the count reads every row `where` selects, as long on each page as on the
        first."""
        below = self._newest_below(table, before) if before is not None else []
        with self._read() as conn:
            rows = self._newest_rows(conn, table, [*where, *below], limit, offset)
            if known_total is not None:
                return rows, known_total
            counted = sa.select(sa.func.count()).select_from(table).where(*where)
            return rows, int(conn.execute(counted).scalar_one())

    @staticmethod
    def _newest_rows(conn: sa.Connection, table: sa.Table, where: list[Any], limit: int,
                     offset: int) -> list[dict[str, Any]]:
        """Newest first: time (`_newest_time`), then id, both descending, as the log's time index reads."""
        time = Store._newest_time(table)
        statement = sa.select(table).where(*where).order_by(time.desc(), table.c.id.desc()).limit(limit).offset(offset)
        return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    @staticmethod
    def _newest_time(table: sa.Table) -> sa.Column[Any]:
        """The time a log table is listed by: when an instance occurred, when a rule was enforced."""
        return table.c.occurrence_time if table is trigger_instances else table.c.enforced_at

    @staticmethod
    def _newest_below(table: sa.Table, before: tuple[datetime, str]) -> list[Any]:
        """The rows after `before` (a row's time and id) in `_newest_rows`' order: older, or as old with a
        smaller id. Compared with the values, not looked up by the id, so a row deleted since (a retention
        purge) still marks where the next page starts. The time bound alone first, for the time index to
        read the range (as `execution_keyset` does)."""
        time, row_id = before
        column = Store._newest_time(table)
        return [column <= time, sa.or_(column < time, table.c.id < row_id)]

    # -- API keys (hashes only) -----------------------------------------------------------------
    def api_key_add(self, record: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(api_keys.insert(), record)

    def api_key_list(self) -> list[dict[str, Any]]:
        statement = sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.created_at, api_keys.c.enabled)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement.order_by(api_keys.c.created_at))]  # type: ignore[misc]

    def api_key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        statement = sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.enabled).where(
            api_keys.c.key_hash == key_hash)
        with self._read() as conn:
            return _row(conn.execute(statement).first())

    def api_key_delete(self, key_id: str) -> bool:
        with self._write() as conn:
            return conn.execute(api_keys.delete().where(api_keys.c.id == key_id)).rowcount > 0

    # -- web accounts and sessions (bot/accounts.py) ---------------------------------------------------
    def web_user_add(self, record: dict[str, Any], *, only_if_none: bool = False) -> bool:
        """Store a new account; False if the name is taken, or with `only_if_none` if any account exists
        (checked in the same transaction, so two starting services make one first admin)."""
        try:
            with self._write() as conn:
                if only_if_none and conn.execute(sa.select(web_users.c.name).limit(1)).first() is not None:
                    return False
                conn.execute(web_users.insert(), record)
        except sa.exc.IntegrityError:  # the name is taken (by another process's first admin, say)
            return False
        return True

    def web_user_get(self, name: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(sa.select(web_users).where(web_users.c.name == name)).first())

    def web_user_list(self) -> list[dict[str, Any]]:
        statement = sa.select(web_users.c.name, web_users.c.role, web_users.c.created_at,
                              web_users.c.password_changed_at).order_by(web_users.c.name)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def web_user_set_password(self, name: str, password_hash: str, now: datetime) -> bool:
        """A new password hash; the account's sessions end in the same transaction."""
        with self._write() as conn:
            statement = web_users.update().where(web_users.c.name == name)
            if not conn.execute(statement.values(password_hash=password_hash, password_changed_at=now)).rowcount:
                return False
            conn.execute(web_sessions.delete().where(web_sessions.c.user == name))
            return True

    def web_user_delete(self, name: str) -> bool:
        """Delete an account and its sessions together."""
        with self._write() as conn:
            conn.execute(web_sessions.delete().where(web_sessions.c.user == name))
            return conn.execute(web_users.delete().where(web_users.c.name == name)).rowcount > 0

    def web_sessions_end(self, name: str) -> int | None:
        """End every session of an account (its browsers must log in again); how many, None for an
        unknown name."""
        with self._write() as conn:
            if conn.execute(sa.select(web_users.c.name).where(web_users.c.name == name)).first() is None:
                return None
            return int(conn.execute(web_sessions.delete().where(web_sessions.c.user == name)).rowcount)

    def web_session_counts(self, now: datetime) -> dict[str, int]:
        """How many unexpired sessions each account has (`squall user list`)."""
        statement = (sa.select(web_sessions.c.user, sa.func.count()).where(web_sessions.c.expires_at > now)
                     .group_by(web_sessions.c.user))
        with self._read() as conn:
            return {str(user): int(count) for user, count in conn.execute(statement)}

    def web_session_add(self, record: dict[str, Any], now: datetime) -> None:
        """Store a session, sweeping expired ones (logins are rare; the sweep reads an index)."""
        with self._write() as conn:
            conn.execute(web_sessions.delete().where(web_sessions.c.expires_at <= now))
            conn.execute(web_sessions.insert(), record)

    def web_session_get(self, token_hash: str) -> dict[str, Any] | None:
        """The session with its account's role (none once the account is gone)."""
        statement = (sa.select(web_sessions, web_users.c.role)
                     .select_from(web_sessions.join(web_users, web_users.c.name == web_sessions.c.user))
                     .where(web_sessions.c.token_hash == token_hash))
        with self._read() as conn:
            return _row(conn.execute(statement).first())

    def web_session_touch(self, token_hash: str, now: datetime) -> None:
        with self._write() as conn:
            conn.execute(web_sessions.update().where(web_sessions.c.token_hash == token_hash).values(last_seen=now))

    def web_session_delete(self, token_hash: str) -> None:
        with self._write() as conn:
            conn.execute(web_sessions.delete().where(web_sessions.c.token_hash == token_hash))

    def execution_output_add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store a batch of output chunks (`engine/output.py`) in one statement."""
        with self._write() as conn:
            conn.execute(execution_output.insert(), list(rows))

    def execution_output_list(self, execution_id: str, *, after: int = 0, stream: str | None = None,
                              limit: int = 1000) -> list[dict[str, Any]]:
        """An execution's output chunks after chunk id `after`, in the order they were printed."""
        statement = (sa.select(execution_output)
                     .where(execution_output.c.execution_id == execution_id, execution_output.c.id > after)
                     .order_by(execution_output.c.id).limit(limit))
        if stream is not None:
            statement = statement.where(execution_output.c.stream == stream)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def approval_add(self, record: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(approvals.insert(), record)

    def approval_get(self, approval_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _row(conn.execute(sa.select(approvals).where(approvals.c.id == approval_id)).first())

    def approval_update(self, approval_id: str, revision: int, fields: dict[str, Any]) -> bool:
        """Write `fields` (and the next revision) if the row is still pending at `revision`: whether
        this caller's decision won."""
        statement = (approvals.update()
                     .where(approvals.c.id == approval_id, approvals.c.revision == revision,
                            approvals.c.status == "pending")
                     .values(**fields, revision=revision + 1))
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def approval_ran(self, approval_id: str, execution_id: str) -> None:
        """Name the execution an approved command became."""
        with self._write() as conn:
            conn.execute(approvals.update().where(approvals.c.id == approval_id).values(execution_id=execution_id))

    def approvals_unran(self) -> list[dict[str, Any]]:
        """Approved commands with no execution named: a crash came between the last approval and
        the run (or the run is under way this moment; `approval_claim` and the caller's grace tell)."""
        statement = sa.select(approvals).where(approvals.c.status == "approved", approvals.c.execution_id.is_(None))
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def approval_claim(self, approval_id: str, revision: int) -> bool:
        """Take an approved, unran command for running again (one node wins, by its revision)."""
        statement = (approvals.update()
                     .where(approvals.c.id == approval_id, approvals.c.revision == revision,
                            approvals.c.status == "approved", approvals.c.execution_id.is_(None))
                     .values(revision=revision + 1))
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def approval_fail(self, approval_id: str, revision: int, decisions: list[dict[str, Any]]) -> bool:
        """End an approved command that cannot start: `failed`, with `decisions` (which end with why),
        if it is still approved, unran and at `revision`; whether this caller ended it. One update,
        so the sweep never claims it again and only one process tells its thread."""
        statement = (approvals.update()
                     .where(approvals.c.id == approval_id, approvals.c.revision == revision,
                            approvals.c.status == "approved", approvals.c.execution_id.is_(None))
                     .values(status="failed", decisions=decisions, revision=revision + 1))
        with self._write() as conn:
            return conn.execute(statement).rowcount == 1

    def execution_of_approval(self, approval_id: str, since: datetime) -> str | None:
        """The execution an approved command became (its `context.approval.id`), requested after `since`."""
        statement = (sa.select(executions.c.id)
                     .where(executions.c.start_timestamp >= since,
                            executions.c.context["approval"]["id"].as_string() == approval_id)
                     .limit(1))
        with self._read() as conn:
            return conn.execute(statement).scalar()

    def approvals_pending(self, due_before: datetime | None = None) -> list[dict[str, Any]]:
        """Pending approvals (only those expiring by `due_before`, when given), oldest first."""
        statement = sa.select(approvals).where(approvals.c.status == "pending").order_by(approvals.c.created_at)
        if due_before is not None:
            statement = statement.where(approvals.c.expires_at <= due_before)
        with self._read() as conn:
            return [_row(row) for row in conn.execute(statement)]  # type: ignore[misc]

    def chat_session_put(self, key: str, state: str, expires_at: datetime) -> None:
        """Store (or replace) the chat session `key`."""
        with self._write() as conn:
            conn.execute(chat_sessions.delete().where(chat_sessions.c.key == key))
            conn.execute(chat_sessions.insert(), {"key": key, "state": state, "expires_at": expires_at})

    def chat_session_delete(self, key: str) -> None:
        with self._write() as conn:
            conn.execute(chat_sessions.delete().where(chat_sessions.c.key == key))

    def chat_sessions_open(self, now: datetime) -> list[tuple[str, str, datetime]]:
        """The sessions not expired by `now`, as (key, state, expires_at); the expired are deleted."""
        with self._write() as conn:
            conn.execute(chat_sessions.delete().where(chat_sessions.c.expires_at <= now))
            rows = conn.execute(sa.select(chat_sessions.c.key, chat_sessions.c.state, chat_sessions.c.expires_at))
            return [(key, state, as_utc(expires_at)) for key, state, expires_at in rows]  # type: ignore[misc]

    def checkpoint(self) -> None:
        """SQLite: copy what the WAL holds back into the database, without waiting for anyone.

        The WAL starts over from its beginning only when a write begins after a checkpoint copied all
        of it. Under writes that never pause (an alert storm: a thousand chat commands a second), each
        checkpoint ends with newer commits behind it, and the WAL grew by ~80 MB a second for as long
        as the storm lasted, until the disk was full, every statement slower as it grew. Past
        `WAL_RESTART_BYTES` a second PASSIVE copy (of what came during the first) is followed by a
        RESTART, which holds writers off while it copies the rest and syncs (the whole checkpoint took
        10-30 ms here at 64 MiB; the loop's commits wait on the database thread meanwhile, so a storm's
        chat sees at most one such pause a `CHECKPOINT_SECONDS`; the open loop's p99 stayed ~1 ms) and has the
        next write start the WAL over. Its file keeps its size, to be written over: cutting it back
        (`journal_size_limit`) is an `ftruncate` in the committing writer, the event loop, and freeing
        1 GiB took 0.84 s on a disk mounted with `discard`."""
        with self.engine.connect() as conn:
            _busy, frames, _copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            if frames * conn.exec_driver_sql("PRAGMA page_size").scalar_one() <= WAL_RESTART_BYTES:
                return
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            # Readers still in the WAL are waited for with writers held off: briefly, else next time.
            conn.exec_driver_sql(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
            try:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(RESTART)")
            finally:
                conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def truncate_wal_without_waiting(self) -> None:
        """SQLite, on the loop's connection between its groups: copy the whole WAL back and cut its file
        to nothing (`Database._cut_runaway_wal`). This connection waits for no one: with a reader
        still in the WAL, or a checkpoint under way, it copies what it can and cuts nothing."""
        assert self._nowait is not None
        if self._nowait_conn is None or self._nowait_conn.closed or self._nowait_conn.invalidated:
            self._nowait_conn = self._nowait.connect()
        self._nowait_conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            "PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def kv_purge_expired(self, now: datetime) -> int:
        with self._write() as conn:
            result = conn.execute(kv_pairs.delete().where(kv_pairs.c.expire_at <= now))
            return result.rowcount


T = TypeVar("T")


#: How long a call deferred by `Database.later` waits for other calls to ride with.
LATER_SECONDS = 0.05
#: How long after the loop's first uncheckpointed commit the WAL is checkpointed (SQLite).
CHECKPOINT_SECONDS = 1.0
#: How often, at most, the kernel is asked to start writing the WAL back (`engine.writeback`).
WRITEBACK_SECONDS = 0.05
#: How many `Database.read` calls run at once. Each holds a pooled connection and a core while it scans;
#: two let a short page through beside one long scan, and leave the loop and the database thread theirs.
READ_THREADS = 2


class Database:
    """Runs `Store` calls without making the event loop wait on the database.

    Calls go to one database thread. Calls that arrive while it is busy are run together in one
    transaction (each in its own savepoint on PostgreSQL) and answered only after that
    transaction commits: durability is unchanged, but a burst of executions pays for one commit
    instead of one each. On SQLite, while that thread is idle, calls run on the event loop
    instead: those made in one loop iteration (and by the tasks it started, a turn later) share one
    transaction, through a connection that never waits for a lock (a commit to a WAL file costs
    less than the two thread wake-ups). If another process holds the lock, the whole group goes to
    the thread, which may wait (`_run_group`: up to `LOCK_WAIT_SECONDS`); nothing of it was
    committed, so nothing runs twice. The calls that queued behind it meanwhile come back to the
    loop once it is committed.

    Reads that may scan the history (the API's and the web UI's lists and their counts) go through
    `read` instead: on `READ_THREADS` threads of their own, each with a connection of its own from the
    store's pool, outside any group. On the loop, a one-second scan of 300,000 executions held chat,
    the outbox, timers and `/healthz` for that second; on the database thread, behind a write waiting
    for another process's lock, a list waited up to `LOCK_WAIT_SECONDS`. SQLite's WAL lets these
    readers run beside the writer, seeing what was committed when their statement began. The chat's
    own reads stay in the groups, where a command's reads and writes share one transaction.

    A call that fails fails alone, except on SQLite when the database itself failed under it (a full
    disk, an I/O error: `_rolled_back_with`): SQLite may have rolled back the whole transaction then,
    and the calls before it would be told their writes took effect. That fails the whole group, as does
    a call that lost the group's connection (`Store.batch_lost`: PostgreSQL restarted or shutting down):
    the transaction went with it, and the calls after, then the commit, met the connection invalidated
    (`PendingRollbackError`, which hid the outage from `database_failure`: the API's 500 for its 503). A
    database failure (`database_failure`), a call's or the commit's, is kept in `failing` until a
    group that wrote commits without one (logged once each way), for `/healthz`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squall-db")
        #: `read`'s threads: a connection each from the store's pool, never the loop's kept one.
        self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="squall-read")
        self._pending: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._lock = threading.Lock()
        self._draining = False
        self._inline: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        #: SQLite: the WAL checkpoints the loop's connection leaves to a thread of their own.
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="squall-checkpoint")
        self._checkpoint_due = False
        self._uncheckpointed = False
        self._checkpoint_failing = False  # said once an outage (`_checkpoint_said`)
        database = store.engine.url.database if store.is_sqlite else None
        #: SQLite: the WAL, written back ahead of the checkpoint's fsync (see `_write_back_soon`).
        wal = f"{database}-wal" if database and database != ":memory:" else None
        self._wal = wal if writeback.available() else None
        #: SQLite: the WAL file, looked at after every `WAL_LOOK_EVERY` groups (`_cut_runaway_wal`).
        self._wal_file, self._groups_unlooked = wal, 0
        self._written_back_at = 0.0
        self._writing_back = False
        self._closed = False
        #: Calls deferred by `later`, and the timer that sends them on their own.
        self._later: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._later_timer: asyncio.TimerHandle | None = None
        #: `later_together`'s open calls: function → (its items so far, the call's future).
        self._together: dict[Callable[..., Any], tuple[list[Any], asyncio.Future[Any]]] = {}
        #: Why the database failed a group (`database_failure`) and since when; None again once a
        #: group that wrote commits. A read that works meanwhile clears nothing: a full disk reads on.
        self.failing: tuple[str, datetime] | None = None
        #: SQLite: since when the groups on the thread have waited for another process's lock, and when
        #: the last of them gave up (`_run_group`); None once a group gets through.
        self._lock_waited: tuple[float, float] | None = None

    async def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.submit(fn, *args, **kwargs)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, a call that only reads, run on a reader thread (see class doc): never
        on the loop, never in a group, so never behind a write waiting for a lock. `fn` reads through
        `Store._read`, which on a thread outside any group takes a connection from the store's pool,
        and commits nothing: a write made here would be its own transaction, one that waits for
        locks, outside every group. Each of its statements sees what was committed when it began,
        not what a group on the loop is writing meanwhile. A database failure it meets (a vanished file, an
        I/O error) is kept in `failing` as a group's would be; only a write ends it.

        Cancelling the caller drops a call that has not started; one that has runs to its end."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))
        except Exception as exc:
            reason = database_failure(exc)
            if reason is not None:
                self._failed(reason)
            raise

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
        """Queue a call now and return its future (`await db(...)` queues it at the coroutine's first
        step): a caller can queue a call, start work that queues the next, and both share a group."""
        loop = asyncio.get_running_loop()
        # The loop's `create_future` makes the same future, by a Python call more (asyncio's loops).
        return self._queue(functools.partial(fn, *args, **kwargs), asyncio.Future(loop=loop), loop)

    def submit_firm(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`submit`, with a future that cancelling its waiter leaves alone (`Firm`): for a call whose
        effect its caller must see through (a claim) even when the caller is cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        return self._queue(functools.partial(fn, *args), Firm(loop=loop), loop)

    def _queue(self, call: Callable[[], T], future: asyncio.Future[T],
               loop: asyncio.AbstractEventLoop) -> asyncio.Future[T]:
        if self.store.is_sqlite and not self._draining:
            # Calls made in the same loop iteration, or by the tasks it started, share one transaction
            # on the loop (see class doc): the flush waits one more turn, for those tasks' first steps.
            self._inline.append((call, future))
            if len(self._inline) == 1:
                loop.call_soon(loop.call_soon, self._flush_inline)
        else:
            self._to_thread([(call, future)])
        return future

    def later(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` with the next group of calls, or on its own within `LATER_SECONDS`: for
        bookkeeping nobody waits on (an outbox row marked sent after its post), which then costs no
        commit of its own whenever other work is under way. Call it on the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._later.append((functools.partial(fn, *args), future))
        if self._later_timer is None:
            self._later_timer = loop.call_later(LATER_SECONDS, self._flush_later)
        return future

    def later_together(self, fn: Callable[[list[T]], Any], item: T) -> asyncio.Future[Any]:
        """`later`, for many small items of one kind (the sent marks of a delivery round): the items
        queued for `fn` until the deferred calls go out are handed to one call, `fn(items)`, whose
        future they share. One statement for a round, not one each. Call it on the loop."""
        together = self._together.get(fn)
        if together is None:
            items: list[T] = []
            together = self._together[fn] = (items, self.later(fn, items))
        together[0].append(item)
        return together[1]

    def _take_later(self) -> list[tuple[Callable[[], Any], asyncio.Future[Any]]]:
        """The deferred calls, to ride with a group going out now (on the loop: their items are
        complete from here on)."""
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        taken, self._later = self._later, []
        self._together.clear()
        return taken

    def _flush_later(self) -> None:
        self._later_timer = None
        if self._closed:
            return
        if self.store.is_sqlite and not self._draining:
            if not self._inline:
                asyncio.get_running_loop().call_soon(self._flush_inline)
            self._inline.extend(self._take_later())
        else:
            self._to_thread([])

    def _to_thread(self, calls: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> None:
        if self._later:  # on the loop (the drain thread never defers)
            calls = [*self._take_later(), *calls]
        with self._lock:
            self._pending.extend(calls)
            start = not self._draining
            self._draining = True
        if start:
            self._pool.submit(self._drain)

    def _flush_inline(self) -> None:
        batch, self._inline = [*self._take_later(), *self._inline], []
        if self._draining:  # the thread is at work: join its queue, keeping the order
            self._to_thread(batch)
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.store.batch_without_waiting():
                for call, _future in batch:
                    try:
                        outcomes.append((True, call()))
                    except Exception as exc:
                        if _is_locked(exc):
                            raise Busy(str(exc.orig)) from exc  # type: ignore[attr-defined]
                        if _rolled_back_with(exc):
                            raise  # the whole group fails (see class doc)
                        outcomes.append((False, exc))
        except Busy:
            self._to_thread(batch)  # another process holds the lock; nothing was committed
            return
        except Exception as exc:  # the commit itself failed: nobody's call took effect
            outcomes = [(False, exc)] * len(batch)
            self._note(outcomes, committed=False)
        else:
            self._note(outcomes, committed=True)
        for (ok, value), (_call, future) in zip(outcomes, batch, strict=True):
            if not future.done():  # `_settle`, without a call a command
                (future.set_result if ok else future.set_exception)(value)
        self._checkpoint_soon()
        self._write_back_soon()
        self._cut_runaway_wal()

    def _cut_runaway_wal(self) -> None:
        """After the loop's commits: a WAL file past `WAL_RUNAWAY_FACTOR` times `WAL_RESTART_BYTES` is
        copied back and cut to nothing here, by the writer itself, between its commits. The checkpoint
        thread restarts the WAL on time only while it gets the CPU: with both cores busy (tests run
        beside the service, a CPU-bound action) it woke late, the writes never paused, and the WAL grew
        by whatever they wrote meanwhile (11 MB past a 256 KB bound in a test's storm). The file keeps
        its size when restarted, so only cutting it lets its size say when it ran away again; the
        cut (an `ftruncate`, slow on a disk mounted with `discard`) and the copy, which the thread's
        PASSIVE copies have mostly done, are paid on the loop only then. A stat every
        `WAL_LOOK_EVERY` groups otherwise."""
        if self._wal_file is None:
            return
        self._groups_unlooked += 1
        if self._groups_unlooked < WAL_LOOK_EVERY:
            return
        self._groups_unlooked = 0
        try:
            if os.stat(self._wal_file).st_size <= WAL_RUNAWAY_FACTOR * WAL_RESTART_BYTES:
                return
            self.store.truncate_wal_without_waiting()
        except Exception as exc:  # tried again at the next look; the thread says a failing checkpoint
            logging.getLogger(__name__).debug("cutting the SQLite WAL on the loop failed: %s", exc)

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            outcomes, committed = self._run_group(batch)
            self._note(outcomes, committed=committed)
            loop = batch[0][1].get_loop()
            for (ok, value), (_call, future) in zip(outcomes, batch, strict=True):
                loop.call_soon_threadsafe(_settle, future, ok, value)
            if self.store.is_sqlite and not self._closed and self._hand_back_to(loop):
                return

    def _run_group(
            self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> tuple[list[tuple[bool, Any]], bool]:
        """Run a group on the thread, in one transaction: each call's outcome, and whether it committed.

        SQLite: a call (or the commit) that finds another process still holding the write lock once the
        busy timeout passed fails the whole group, not itself alone: each call waited the full timeout in
        turn, and whichever was first in line failed ("database is locked") while those behind it got
        the lock. Nothing of the group was committed, so the group is tried again, until
        `LOCK_WAIT_SECONDS` have passed; then every call fails with `DatabaseLocked`. Running its calls
        again is what `_flush_inline` does with a group the lock refused on the loop (it runs here, on
        the thread, from its first call): a call's effects are its statements, rolled back with the
        group, and its audit events, told only once a group commits (`Store.batch`)."""
        started = time.monotonic()
        since = self._waiting_since(started)
        while True:
            try:
                outcomes = self._group(batch)
            except Exception as exc:  # the commit, or the whole group, failed: nobody's call took effect
                if not (self.store.is_sqlite and _busy_elsewhere(exc)):
                    return [(False, exc)] * len(batch), False
                now = time.monotonic()
                if now - since >= LOCK_WAIT_SECONDS:
                    self._lock_waited = (since, now)
                    locked = DatabaseLocked(exc, now - started)  # type: ignore[arg-type]  # _busy_elsewhere: one
                    locked.__cause__ = exc
                    logging.getLogger(__name__).warning("a group of %d calls failed: %s", len(batch), locked)
                    return [(False, locked)] * len(batch), False
                logging.getLogger(__name__).debug("another process holds the SQLite lock past the busy timeout; "
                                                  "trying %d calls again", len(batch))
                time.sleep(LOCK_RETRY_PAUSE)
            else:
                self._lock_waited = None
                return outcomes, True

    def _waiting_since(self, started: float) -> float:
        """Since when the group starting at `started` counts its wait for the lock: since the wait of the
        group that just gave up, if it did (the calls queued behind it waited as long: `LOCK_WAIT_SECONDS`
        bounds their wait too, not each group's, and each later group tries once); else since now."""
        waited = self._lock_waited
        if waited is not None and started - waited[1] <= 1.0:  # queued behind it: it starts at once
            return waited[0]
        return started

    def _group(self, batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]]) -> list[tuple[bool, Any]]:
        """One try of `_run_group`: a call that fails fails alone, unless the database failed under it
        (the whole group then fails, see class doc) or another process holds the lock (it is tried again)."""
        outcomes: list[tuple[bool, Any]] = []
        with self.store.batch():
            for call, _future in batch:
                try:
                    outcomes.append((True, call()))
                except Exception as exc:
                    if (_rolled_back_with(exc) or self.store.batch_lost()
                            or (self.store.is_sqlite and _busy_elsewhere(exc))):
                        raise
                    outcomes.append((False, exc))
        return outcomes

    def _note(self, outcomes: list[tuple[bool, Any]], *, committed: bool) -> None:
        """After a group: a database failure among its outcomes (a call's, or the commit's, which every
        call then has) starts an outage; a group that committed without one, and wrote, ends it."""
        for ok, value in outcomes:
            reason = None if ok else database_failure(value)
            if reason is not None:
                self._failed(reason)
                return
        if committed:
            self._committed()

    def _failed(self, reason: str) -> None:
        """The database failed: say so, once an outage."""
        if self.failing is not None:
            return
        self.failing = (reason, utcnow())
        logging.getLogger(__name__).warning(
            "the database failed (%s); /healthz answers 503 until a write commits again", reason)

    def _committed(self) -> None:
        """A group committed: one that wrote ends an outage."""
        if self.failing is None or not self.store.wrote():
            return
        reason, since = self.failing
        self.failing = None
        logging.getLogger(__name__).info("the database takes writes again (it failed from %s: %s)",
                                         iso(since), reason)

    def _hand_back_to(self, loop: asyncio.AbstractEventLoop) -> bool:
        """SQLite: the group that waited for another connection's lock is committed; whatever queued
        behind it goes back to the loop's own transactions. Drained here instead, a steady stream of
        calls (a thousand chat commands a second) kept the thread's queue from ever emptying, and every
        later call paid the thread's wake-ups and GIL hand-offs: one lock held elsewhere for a moment
        (a CLI's write, a WAL restart) left the chat slower for as long as the stream lasted."""
        try:
            loop.call_soon_threadsafe(self._take_back)
        except RuntimeError:  # the loop is closed: the thread drains what is left
            return False
        return True

    def _take_back(self) -> None:
        """On the loop: run the calls that queued behind the thread's group inline, in their order."""
        if self._closed:
            return  # `close` wrote them
        with self._lock:
            batch, self._pending = self._pending, []
            self._draining = False
        if batch:
            self._inline[:0] = batch  # ahead of any made since this callback was queued: none were (draining)
            self._flush_inline()

    def _checkpoint_soon(self) -> None:
        """After commits on the loop (whose connection never checkpoints), copy the WAL back into the
        database on a thread of its own within `CHECKPOINT_SECONDS`, and again while commits came
        meanwhile, so the WAL is restarted from its start rather than grown and no commit pays for it.
        PASSIVE: it never blocks a writer; what it cannot copy now waits for the next."""
        self._uncheckpointed = True
        if self._checkpoint_due or self._closed:
            return
        self._checkpoint_due = True
        loop = asyncio.get_running_loop()

        def start() -> None:
            if self._closed:
                return
            self._uncheckpointed = False
            loop.run_in_executor(self._checkpointer, self.store.checkpoint).add_done_callback(done)

        def done(future: asyncio.Future[Any]) -> None:
            self._checkpoint_due = False
            failed = None if future.cancelled() else future.exception()
            self._checkpoint_said(failed)
            if failed is None and self._uncheckpointed:
                self._checkpoint_soon()

        loop.call_later(CHECKPOINT_SECONDS, start)

    def _checkpoint_said(self, failed: BaseException | None) -> None:
        """Say a checkpoint's failure once an outage (it is tried again after every next write, about
        once a second while a full disk lasts), in the driver's words, and once when one works again."""
        if failed is None:
            if self._checkpoint_failing:
                self._checkpoint_failing = False
                logging.getLogger(__name__).info("checkpointing the SQLite WAL works again")
            return
        if not self._checkpoint_failing:
            self._checkpoint_failing = True
            orig = getattr(failed, "orig", None)
            logging.getLogger(__name__).warning(
                "checkpointing the SQLite WAL failed: %s; tried again after the next writes, said again once "
                "it works", database_failure(failed) or orig or failed)

    def _write_back_soon(self) -> None:
        """After commits on the loop, have the kernel start writing the WAL to disk (on the
        checkpoint thread, at most every `WRITEBACK_SECONDS`), so that the checkpoint's fsync, which
        holds up the loop's next commits while it runs, finds little left to write."""
        if self._wal is None or self._writing_back or self._closed:
            return
        now = asyncio.get_running_loop().time()
        if now - self._written_back_at < WRITEBACK_SECONDS:
            return
        self._written_back_at = now
        self._writing_back = True
        self._checkpointer.submit(self._write_back)

    def _write_back(self) -> None:
        try:
            writeback.start(self._wal)  # type: ignore[arg-type]
        finally:
            self._writing_back = False

    def close(self) -> None:
        self._closed = True
        self._readers.shutdown(wait=True, cancel_futures=True)  # reads under way end before the store closes
        self._pool.shutdown(wait=True)  # a group on the database thread commits first
        with self._lock:  # calls handed back to a loop that has not taken them yet
            leftover, self._pending = self._pending, []
        left = [*self._take_later(), *leftover]
        if left:  # not left behind: written now, on the caller's thread
            with self.store.batch():
                for call, future in left:
                    try:
                        _settle(future, True, call())
                    except Exception as exc:
                        _settle(future, False, exc)
        self._checkpointer.shutdown(wait=True)


class Firm(asyncio.Future[Any]):
    """A future that refuses `cancel`. A task cancelled while it awaits one gets its CancelledError
    once the future is done, and can then read the outcome: what `asyncio.shield` gives, without the
    second future and the loop turn its hand-over costs."""

    def cancel(self, msg: Any = None) -> bool:
        return False


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
