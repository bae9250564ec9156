"""Executions and key-value pairs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("runner", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("sealed", sa.Text, nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("context", sa.JSON, nullable=False),
        sa.Column("log", sa.JSON, nullable=False),
        sa.Column("parent", sa.String(32), nullable=True),
        sa.Column("runner_info", sa.JSON, nullable=True),
        sa.Column("start_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_timestamp", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_executions_status", "executions", ["status"])
    op.create_index("ix_executions_action_start", "executions", ["action", "start_timestamp"])
    op.create_index("ix_executions_start", "executions", ["start_timestamp"])
    op.create_index("ix_executions_parent", "executions", ["parent"])
    op.create_table(
        "kv_pairs",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("secret", sa.Boolean, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("expire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_kv_pairs_expire_at", "kv_pairs", ["expire_at"])


def downgrade() -> None:
    op.drop_table("kv_pairs")
    op.drop_table("executions")
