"""Chat sessions: forms open on a platform and question-by-question forms under way outlive a restart.

One row per session, keyed as `bot/chat/forms.py` names it; its state encrypted with the datastore
key (answers may be secrets); expired rows are deleted when a process loads the open ones.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_sessions",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("chat_sessions")
