"""Serve nodes store a heartbeat, so that a node of another host can tell one stopped.

A `squall serve` node claims a trigger instance (`processing`, with itself as its owner: 0021). When
it died, only a serve node of its own host resumed the instance, as only there can a pid be checked:
one held by a node of another host that was killed, or whose machine was lost, stayed `processing`
until a serve node started on that host again, perhaps never. Each serve node on PostgreSQL now
counts up its row here every few seconds; the others watch the count, and take over the instances of
a node whose count stopped changing (`engine.triggers.NodeWatch`). The table is made on SQLite too,
where nothing writes it (one machine: pids tell).

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "serve_nodes",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("beat", sa.BigInteger, nullable=False),
        sa.Column("beaten_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("serve_nodes")
