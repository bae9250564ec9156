"""Live output of running actions (`execution_output`, spec §10.3).

Chunks of stdout and stderr, written in batches while an action runs (`engine/output.py`), read by
`GET /api/v1/executions/{id}/output` and the live pages. The autoincrement id orders them; the index
serves "this execution's chunks after id N", the one query the readers make.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "execution_output",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_execution_output_execution", "execution_id", "id"),
    )


def downgrade() -> None:
    op.drop_table("execution_output")
