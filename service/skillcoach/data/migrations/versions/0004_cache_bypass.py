"""Learners whose cache version raise Redis did not take (skillcoach.data.cache_bypass).

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Usually empty: a row lives from a failed version raise until the repair re-raises it.
    op.create_table(
        "cache_bypass",
        sa.Column("learner_id", sa.BigInteger, primary_key=True),
        sa.Column("data_version", sa.BigInteger, nullable=False),
        sa.Column(
            "recorded_at",
            sa.TIMESTAMP(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
    )


def downgrade() -> None:
    op.drop_table("cache_bypass")
