"""dead letters for messages Herald cannot read: notification_id, channel and category
may be NULL (an unreadable row belongs to no notification), and source_key dedupes a
redelivered copy of the same unreadable message

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.alter_column("notification_id", existing_type=sa.String(36), nullable=True)
        batch_op.alter_column("channel", existing_type=sa.String(10), nullable=True)
        batch_op.alter_column("category", existing_type=sa.String(20), nullable=True)
        batch_op.add_column(sa.Column("source_key", sa.String(64), nullable=True))
        batch_op.create_index("uq_dead_letters_source", ["source_key"], unique=True)


def downgrade() -> None:
    # The old schema cannot hold unreadable rows: they go (their raw bytes with them).
    op.execute("DELETE FROM dead_letters WHERE notification_id IS NULL")
    op.execute("UPDATE dead_letters SET channel = 'unknown' WHERE channel IS NULL")
    op.execute("UPDATE dead_letters SET category = 'unknown' WHERE category IS NULL")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("uq_dead_letters_source")
        batch_op.drop_column("source_key")
        batch_op.alter_column("category", existing_type=sa.String(20), nullable=False)
        batch_op.alter_column("channel", existing_type=sa.String(10), nullable=False)
        batch_op.alter_column("notification_id", existing_type=sa.String(36), nullable=False)
