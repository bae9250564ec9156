"""Trigger instances remember the parameters of the trigger they fired for.

A webhook instance belongs to one hook URL, a timer instance to one schedule: rules on the same
trigger type but other parameters must not see it, also after a restart or a re-emit.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger_instances") as batch:
        batch.add_column(sa.Column("trigger_parameters", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_instances") as batch:
        batch.drop_column("trigger_parameters")
