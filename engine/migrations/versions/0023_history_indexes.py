"""Indexes for the lists and counts that read the whole history.

Measured on SQLite with 300,000 executions, 200,000 audit entries, 100,000 trigger instances and
rule enforcements (copies of real rows), each of these read every row of its table; now:

- the API's `user=` count and page 0.9 s to 0.5 ms (a busy user's 420 to 13 ms), `trigger_instance=`
  0.9 s to 0.4 ms: indexes on the expressions `storage._context_field` writes. The user's holds the
  start, id and parent, so a page is read in its order and `parent=null` (`st2 execution list`) is
  checked in the index; the trigger instance's holds rules' executions only;
- the web's list filtered on a rare user, source, channel or status, 0.3 to 0.5 s to 0.3 ms
  (`storage._narrowed`): the user's; one on the source of the executions not from chat (most are,
  and a page of them is found first on the time index); the chat channel's of 0022 with the adapter
  last, so a channel's rows come in the list's order without naming the adapter; the status's with
  start, id and parent (the API's `status=` with `parent=null` is counted in it);
- the trigger instances' and rule enforcements' pages, newest first, 180 and 49 ms to 1.5 and 1.1 ms:
  indexes in that order; an execution's rule enforcements, 15 to 0.3 ms: one on the execution;
- the audit log's kinds, read by every `/audit` page, 41 to 8 ms (its index read whole, not the
  table), and a rare kind's page 17 to 0.1 ms: an index on the kind.

What it costs a chat command, which writes an execution and an audit entry: the index on the user
and the one on the audit kind take an entry of each (17.4 pages written to the WAL per command
committed alone, from 14.8; 2.5 from 2.1 at 20 commands a commit), and every index on the context,
partial or not, computes its expression or condition on each insert: 1.5 to 2% more instructions a
command (`bench/instructions.py --in-flight 100`). The database grows 3%. Migrating 300,000
executions took 7 s.

The count of `parent=null` alone needs no index (`Store._counted`), nor a pack (`Store.execution_keyset`
reads it action by action). SQLite's expressions are written as `storage`'s tables declare them (a
new database is made from those: `storage._create_new`). PostgreSQL, which has 0019's indexes on
the user and source and 0022's on the chat channel, gets the column indexes and its own on the
trigger instance (`json_extract_path_text`, `storage._context_field`).

Revision ID: 0023
Revises: 0022
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

#: `context.<path>` as text on each database (`storage._context_field`).
FIELD = {"sqlite": "json_extract(context, '$.{path}')",
         "postgresql": "json_extract_path_text(context, {keys})"}
#: Indexes on columns alone: the same on both databases.
COLUMNS = {"ix_trigger_instances_occurred": ("trigger_instances", ["occurrence_time", "id"]),
           "ix_rule_enforcements_enforced": ("rule_enforcements", ["enforced_at", "id"]),
           "ix_rule_enforcements_execution": ("rule_enforcements", ["execution_id"])}
CHAT_CHANNEL = "ix_executions_chat_channel"


def _field(dialect: str, path: str) -> str:
    return FIELD[dialect].format(path=path, keys=", ".join(f"'{key}'" for key in path.split(".")))


def _sqlite_context_indexes() -> dict[str, str]:
    """SQLite's indexes on an execution's context, as `storage`'s tables declare them."""
    user, source, instance = (_field("sqlite", path) for path in ("user", "source", "trigger_instance.id"))
    return {
        "ix_executions_context_user": f"({user}, start_timestamp, id, parent)",
        "ix_executions_context_source": f"({source}, start_timestamp, id) WHERE {source} != 'chat'",
        "ix_executions_context_trigger_instance": f"({instance}) WHERE {instance} IS NOT NULL",
    }


def _chat_channel(*, adapter_last: bool) -> str:
    """SQLite's index on the chat channel: 0022's (channel, adapter, start, id) or this one's."""
    channel, adapter = (_field("sqlite", f"chat.{key}") for key in ("channel", "adapter"))
    columns = (f"{channel}, start_timestamp, id, {adapter}" if adapter_last
               else f"{channel}, {adapter}, start_timestamp, id")
    return f"CREATE INDEX {CHAT_CHANNEL} ON executions ({columns}) WHERE {channel} IS NOT NULL"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index("ix_executions_status", table_name="executions")
    op.create_index("ix_executions_status", "executions", ["status", "start_timestamp", "id", "parent"])
    for name, (table, columns) in COLUMNS.items():
        op.create_index(name, table, columns)
    if dialect == "sqlite":
        for name, definition in _sqlite_context_indexes().items():
            op.execute(f"CREATE INDEX {name} ON executions {definition}")
        op.execute(f"DROP INDEX {CHAT_CHANNEL}")
        op.execute(_chat_channel(adapter_last=True))
        return
    instance = _field(dialect, "trigger_instance.id")
    op.execute(f"CREATE INDEX ix_executions_context_trigger_instance ON executions ({instance}) "
               f"WHERE {instance} IS NOT NULL")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(f"DROP INDEX {CHAT_CHANNEL}")
        op.execute(_chat_channel(adapter_last=False))
        for name in _sqlite_context_indexes():
            op.execute(f"DROP INDEX {name}")
    else:
        op.execute("DROP INDEX ix_executions_context_trigger_instance")
    for name, (table, _columns) in COLUMNS.items():
        op.drop_index(name, table_name=table)
    op.drop_index("ix_executions_status", table_name="executions")
    op.create_index("ix_executions_status", "executions", ["status"])
