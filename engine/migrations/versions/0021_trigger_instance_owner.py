"""A trigger instance records the process that claimed it for processing.

Several `squall serve` processes may share one database. Each claimed an instance with an
unconditional status write, and each one's start-up recovery took every `processing` instance as a
crash's leftover: it marked instances another live process was still processing
`processing_failed`. Now a process claims a `pending` instance atomically, recording its identity
(hostname, pid, start time, boot id, pid namespace: `engine.processes.process_identity`), and
recovery resumes a `processing` instance only when that process is gone. Instances stored before
this revision have none, and one left `processing` counts as a dead process's, as before.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("trigger_instances") as batch:
        batch.add_column(sa.Column("owner", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trigger_instances") as batch:
        batch.drop_column("owner")
