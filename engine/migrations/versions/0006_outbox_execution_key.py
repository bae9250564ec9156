"""Outbox rows name the execution whose result they carry.

The result of a chat execution is stored under (execution_id, kind), unique, so recovery can tell
a finished chat execution whose result was never stored (a crash between the commit of its final
status and the insert of its reply) and store it then, never twice. Recovery writes one row of
kind `keyed_since` (status `skipped`, never sent) the first time it looks: executions that
finished before it had their results stored without a key, and are never looked at.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("execution_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(16), nullable=True))
    op.create_index("ux_outbox_execution_kind", "outbox", ["execution_id", "kind"], unique=True)


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE execution_id IS NOT NULL")
    op.drop_index("ux_outbox_execution_kind", table_name="outbox")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("kind")
        batch.drop_column("execution_id")
