"""Outbox `kind` holds `notify:<route>`: widened from 16 to 255 characters.

A chat execution's ack is keyed too (kind `ack`), so the result's edit of it can be found from the
database after a restart; a `notify` message to a chat route is keyed `notify:<route>`, and route
names are configuration keys of any length. Notifications are keyed from the first sweep after this
upgrade on (a `keyed_since:notify` row records when): earlier ones are never looked at.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("kind", existing_type=sa.String(16), type_=sa.String(255), existing_nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE length(kind) > 16")
    with op.batch_alter_table("outbox") as batch:
        batch.alter_column("kind", existing_type=sa.String(255), type_=sa.String(16), existing_nullable=True)
