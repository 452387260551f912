"""Initial schema: catalog, learners, attempts with their statistics, models, keys, ground truth.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "skills",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.Text, nullable=False, unique=True),
    )
    op.create_table(
        "exercises",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("skill_id", sa.Integer, sa.ForeignKey("skills.id"), nullable=False),
        sa.Column("difficulty", sa.Float, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
    )
    op.create_index("ix_exercises_skill_id", "exercises", ["skill_id"])
    op.create_table(
        "learners",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        # Bumped by every accepted attempt batch: cache keys carry it (read-your-writes).
        sa.Column("data_version", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("learner_id", sa.BigInteger, sa.ForeignKey("learners.id"), nullable=False),
        sa.Column("exercise_id", sa.Integer, sa.ForeignKey("exercises.id"), nullable=False),
        sa.Column("correct", sa.Boolean, nullable=False),
        sa.Column("answered_at", TS, nullable=False),
        sa.Column("recorded_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_attempts_learner_answered", "attempts", ["learner_id", "answered_at"])
    # Maintained in the same transaction as every attempt insert, so analysis reads O(skills)
    # rows and recommendations O(candidate exercises), never a learner's whole history.
    op.create_table(
        "learner_skill_stats",
        sa.Column("learner_id", sa.BigInteger, sa.ForeignKey("learners.id"), primary_key=True),
        sa.Column("skill_id", sa.Integer, sa.ForeignKey("skills.id"), primary_key=True),
        sa.Column("n_correct", sa.Integer, nullable=False),
        sa.Column("n_incorrect", sa.Integer, nullable=False),
        sa.Column("last_answered_at", TS, nullable=False),
    )
    op.create_table(
        "learner_exercise_stats",
        sa.Column("learner_id", sa.BigInteger, sa.ForeignKey("learners.id"), primary_key=True),
        sa.Column("exercise_id", sa.Integer, sa.ForeignKey("exercises.id"), primary_key=True),
        sa.Column("n_attempts", sa.Integer, nullable=False),
        sa.Column("last_answered_at", TS, nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("learner_id", sa.BigInteger, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("request_sha256", sa.Text, nullable=False),
        sa.Column("response", pg.JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "model_registry",
        sa.Column("version", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("trained_at", TS, nullable=False),
        sa.Column("metrics", pg.JSONB, nullable=False),
        sa.Column("feature_schema", pg.JSONB, nullable=False),
        sa.Column("artifact", sa.LargeBinary, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("promoted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("promoted_at", TS),
    )
    # At most one live model: promotion is a single transaction that moves the flag.
    op.create_index(
        "ux_model_registry_promoted",
        "model_registry",
        ["promoted"],
        unique=True,
        postgresql_where=sa.text("promoted"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("scopes", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("revoked_at", TS),
    )
    # Simulator ground truth: what a real deployment never has, and what model quality is
    # measured against.
    op.create_table(
        "sim_mastery",
        sa.Column("learner_id", sa.BigInteger, primary_key=True),
        sa.Column("skill_id", sa.Integer, primary_key=True),
        sa.Column("theta_initial", sa.Float, nullable=False),
        sa.Column("theta_final", sa.Float, nullable=False),
        sa.Column("mastery_final", sa.Float, nullable=False),
    )
    op.create_table(
        "sim_attempt_truth",
        sa.Column("attempt_id", sa.BigInteger, primary_key=True),
        sa.Column("p_correct", sa.Float, nullable=False),
    )
    op.create_table(
        "sim_runs",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("params", pg.JSONB, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "sim_runs",
        "sim_attempt_truth",
        "sim_mastery",
        "api_keys",
        "model_registry",
        "idempotency_keys",
        "learner_exercise_stats",
        "learner_skill_stats",
        "attempts",
        "learners",
        "exercises",
        "skills",
    ):
        op.drop_table(table)
