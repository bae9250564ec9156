"""PostgreSQL: indexes on an execution's user and source, with its start time.

The web UI's list filters on who asked (`context.user`) and where from (`context.source`), newest
first. PostgreSQL has no statistics on a JSON field, so it took such a filter for a rare one, read
every row and sorted them: 110 ms a page with 100,000 executions (`bench/ui.py`). With these it
reads the filter's rows newest first and stops when the page is full. The expressions are those of
`storage._context_text`. SQLite reads its time index newest first instead (`storage._narrowed`).

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

INDEXES = {"ix_executions_context_user": "user", "ix_executions_context_source": "source"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, key in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON executions (json_extract_path_text(context, '{key}'), start_timestamp)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
