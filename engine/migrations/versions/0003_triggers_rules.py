"""Trigger instances and rule enforcements.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trigger_instances",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("trigger", sa.String(255), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("occurrence_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("trace_tag", sa.String(255), nullable=True),
    )
    op.create_index("ix_trigger_instances_trigger", "trigger_instances", ["trigger", "occurrence_time"])
    op.create_index("ix_trigger_instances_status", "trigger_instances", ["status"])
    op.create_table(
        "rule_enforcements",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("rule", sa.String(255), nullable=False),
        sa.Column("trigger_instance_id", sa.String(32), nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.Column("enforced_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rule_enforcements_rule", "rule_enforcements", ["rule", "enforced_at"])
    op.create_index("ix_rule_enforcements_instance", "rule_enforcements", ["trigger_instance_id"])


def downgrade() -> None:
    op.drop_table("rule_enforcements")
    op.drop_table("trigger_instances")
