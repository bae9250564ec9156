"""A login token records the API key it was obtained with, so deleting or disabling that key ends it.

`POST /auth/v1/tokens` (`st2 login`) takes an API key as the password. The token used to speak for
its user until it expired, whatever became of the key: `squall apikey delete` left every token made
from the key working for up to `api.token_ttl`, and StackStorm's API has no call that revokes a
token. `api_key_id` names the stored key (its id) or a configured one (`config:` and the start of its
hash); a token is accepted only while that key exists and is enabled. Tokens issued before this
revision have none and stay valid until they expire, as they were promised.

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_tokens") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_tokens") as batch:
        batch.drop_column("api_key_id")
