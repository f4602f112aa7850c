"""indexes for the console: attempts by start time (sends per minute), dead letters by
state and time (the open ones, newest first)

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
    op.create_index(
        "ix_dead_letters_state_time", "dead_letters", ["state", "dead_lettered_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_dead_letters_state_time", table_name="dead_letters")
    op.drop_index("ix_attempts_started", table_name="attempts")
