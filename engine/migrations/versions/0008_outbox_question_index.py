"""An index to find an inquiry's question by where it was asked.

A chat answer in a thread looks for the pending inquiry whose question (outbox kind `question`,
keyed by the inquiry) was posted in that channel: one indexed lookup instead of reading every
pending execution.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_kind_place", "outbox", ["kind", "adapter", "channel"])


def downgrade() -> None:
    op.drop_index("ix_outbox_kind_place", table_name="outbox")
