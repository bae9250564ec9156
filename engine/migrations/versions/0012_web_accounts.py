"""Web UI accounts (`squall user ...`) and their sessions.

A password is stored as its argon2 hash; a session as the SHA-256 of its cookie, so neither a leaked
row nor a backup can be replayed. A session row names its user, so deleting the user or changing the
password deletes the user's sessions (revocation is a DELETE).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_web_sessions_user", "user"),
        sa.Index("ix_web_sessions_expires_at", "expires_at"),
    )


def downgrade() -> None:
    op.drop_table("web_sessions")
    op.drop_table("web_users")
