"""index attempts by start time (the console's sends per minute)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attempts_started", "attempts", ["started_at"])


def downgrade() -> None:
    op.drop_index("ix_attempts_started", table_name="attempts")
