"""delivery lease on notifications: which worker holds the send and until when

The database, not only Redis, decides which worker may call the vendor: a worker wins
the row with a guarded UPDATE that sets these columns (workers/store.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("notifications", sa.Column("lease_owner", sa.String(100), nullable=True))
    op.add_column(
        "notifications", sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("notifications") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
