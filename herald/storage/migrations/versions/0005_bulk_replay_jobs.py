"""bulk replay jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replay_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("override_provider", sa.String(length=100), nullable=True),
        sa.Column("max_per_s", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("replayed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cursor_id", sa.String(length=36), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("replay_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_replay_jobs_state"), ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("replay_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_replay_jobs_state"))

    op.drop_table("replay_jobs")
