"""An index on an execution's chat channel and adapter, with its start time and id.

Chat's `!executions` lists the newest executions started from one channel of one adapter
(`context.chat`). No index held the channel: both databases read executions newest first, checking
each, until ten were found, so a quiet channel read every execution: 85 ms on SQLite and 105 ms on
PostgreSQL with 200,000 executions, a channel with none 86 and 206 ms. Now
they read the channel's own rows in the list's order (start, then id) and stop at the tenth:
0.5 ms on SQLite, 1 ms on PostgreSQL, a quiet channel, a busy one or one with none.

The expressions are those of `storage._chat_text`, the JSON path a literal: a query's must be the
same expression for the planner to use the index, and each database has its own JSON functions.

- SQLite: of the rows started from a chat channel alone (`IS NOT NULL`), so that the API's, rules'
  and the web's executions cost no write to it (as migration 0017's indexes). SQLite plans an
  equality on an index's expressions as selective and takes it.
- PostgreSQL: of every row, as migration 0019's. It keeps statistics of an index's expressions, but
  not of a partial index's: without them it took a busy channel (a third of 200,000 executions) for
  five rows, read all of them and sorted them (70 ms) instead of reading ten newest first. `ANALYZE`
  gathers them now rather than at autovacuum's next visit.

Revision ID: 0022
Revises: 0021
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

NAME = "ix_executions_chat_channel"
#: `context.chat.<key>` as text, on each database.
FIELD = {"sqlite": "json_extract(context, '$.chat.{key}')",
         "postgresql": "json_extract_path_text(context, 'chat', '{key}')"}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    channel, adapter = (FIELD[dialect].format(key=key) for key in ("channel", "adapter"))
    create = f"CREATE INDEX {NAME} ON executions ({channel}, {adapter}, start_timestamp, id)"
    if dialect == "sqlite":
        op.execute(f"{create} WHERE {channel} IS NOT NULL")
        return
    op.execute(create)
    op.execute("ANALYZE executions")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {NAME}")
