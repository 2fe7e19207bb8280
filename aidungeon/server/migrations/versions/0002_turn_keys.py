"""The key of the line that last changed a story, and what that line showed.

A client sends each line with an `Idempotency-Key`; a line sent again after its connection
dropped (a game API replica died) is answered from these columns instead of being played twice.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: SQLite adds columns in place too, and this keeps both dialects on one path.
    with op.batch_alter_table("stories") as batch:
        batch.add_column(sa.Column("turn_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("turn_reply", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stories") as batch:
        batch.drop_column("turn_reply")
        batch.drop_column("turn_key")
