"""Outbox wake-ups (PostgreSQL): every insert into the outbox notifies `squall_outbox` at its commit.

The payload is the inserting connection's `application_name` (`engine.wakeups.PROCESS_NAME`), so the
`squall serve` node that sends a worker's replies does so at once instead of at its next poll, and
skips the notifications of its own inserts. One notification per statement, and PostgreSQL folds
equal ones of one transaction into one. SQLite has a single process sending its own replies: nothing
to do there.

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE OR REPLACE FUNCTION squall_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$ "
               "BEGIN PERFORM pg_notify('squall_outbox', current_setting('application_name')); RETURN NULL; END $$")
    op.execute("CREATE TRIGGER squall_outbox_notify AFTER INSERT ON outbox "
               "FOR EACH STATEMENT EXECUTE FUNCTION squall_outbox_notify()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS squall_outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS squall_outbox_notify()")
