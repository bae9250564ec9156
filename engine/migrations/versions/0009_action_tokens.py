"""Auth tokens of running executions (`ST2_ACTION_AUTH_TOKEN`), stored as SHA-256 hashes.

Each claimed execution gets a token its action may call the API with; the row goes when the
execution ends (and at recovery for what a crash left), so the table holds only running work.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "action_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("user", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_action_tokens_execution", "action_tokens", ["execution_id"])


def downgrade() -> None:
    op.drop_index("ix_action_tokens_execution", table_name="action_tokens")
    op.drop_table("action_tokens")
