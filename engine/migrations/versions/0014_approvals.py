"""Approvals (issue 20): chat commands held until enough approvers said yes.

One row per held command: the request as the command path would make it, where it was asked, the
policy (groups, count, self-approval, expiry) and every decision. The index serves the expiry sweep
("pending, expiring by now").

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
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
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decisions", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=True),
        sa.Index("ix_approvals_status_expires", "status", "expires_at"),
    )


def downgrade() -> None:
    op.drop_table("approvals")
