"""Difficulty-aware evidence: each exercise's population success logit (set once by training)
and, per learner and skill, the sums of residuals against it and of their information.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL until `skillcoach train` estimates it from data; the write path then uses 0 (p 0.5).
    op.add_column("exercises", sa.Column("prior_logit", sa.Float, nullable=True))
    op.add_column(
        "learner_skill_stats",
        sa.Column("sum_residual", sa.Float, nullable=False, server_default="0"),
    )
    op.add_column(
        "learner_skill_stats",
        sa.Column("sum_information", sa.Float, nullable=False, server_default="0"),
    )
    # Existing rows as the write path would have summed them: every prior is still NULL (0),
    # so each answer adds correct - 0.5 and 0.25.
    op.execute(
        "UPDATE learner_skill_stats SET sum_residual = (n_correct - n_incorrect) / 2.0,"
        " sum_information = (n_correct + n_incorrect) / 4.0"
    )


def downgrade() -> None:
    op.drop_column("learner_skill_stats", "sum_information")
    op.drop_column("learner_skill_stats", "sum_residual")
    op.drop_column("exercises", "prior_logit")
