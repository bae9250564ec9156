"""Deliveries: a signed webhook request is fired once, not again when it is sent again.

One row per delivery accepted as a trigger instance (its key names the hook and the signature),
kept until the signature would be refused as too old anyway; expired rows are purged.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("trigger_instance_id", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deliveries")
