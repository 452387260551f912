"""Reads of one learner's evidence: O(skills) statistics rows, never the attempt history.

Each is one statement (`single_statement`): run alone by `Database.run` it is one round trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from skillcoach.data.database import Reader, single_statement
from skillcoach.data.records import ExerciseHistory, SkillEvidence

__all__ = [
    "SKILL_EVIDENCE_MANY_SQL",
    "SKILL_EVIDENCE_SQL",
    "fetch_exercise_history",
    "fetch_skill_evidence",
    "fetch_skill_evidences",
    "learner_exists",
    "most_active_learners",
]

# The uncached weaknesses read (the benchmark's "db ceiling" app runs this very string).
SKILL_EVIDENCE_SQL = (
    "SELECT l.id, l.data_version, s.skill_id, s.n_correct, s.n_incorrect, s.last_answered_at,"
    " s.sum_residual, s.sum_information"
    " FROM learners l LEFT JOIN learner_skill_stats s ON s.learner_id = l.id"
    " WHERE l.id = %(id)s"
)


# The same read for several learners at once: concurrent requests share one round trip.
SKILL_EVIDENCE_MANY_SQL = SKILL_EVIDENCE_SQL.replace("l.id = %(id)s", "l.id = ANY(%(ids)s)")


@single_statement
def fetch_skill_evidence(conn: Reader, *, learner_id: int) -> SkillEvidence | None:
    """The learner's per-skill statistics, or None if no such learner exists."""
    rows = conn.exec_driver_sql(SKILL_EVIDENCE_SQL, {"id": learner_id}).all()
    return _evidence(rows) if rows else None


@single_statement
def fetch_skill_evidences(conn: Reader, *, learner_ids: Sequence[int]) -> dict[int, SkillEvidence]:
    """`fetch_skill_evidence` of each learner, in one statement; learners that do not exist
    are absent."""
    rows = conn.exec_driver_sql(SKILL_EVIDENCE_MANY_SQL, {"ids": list(learner_ids)}).all()
    by_learner: dict[int, list[Any]] = {}
    for row in rows:
        by_learner.setdefault(int(row[0]), []).append(row)
    return {learner: _evidence(mine) for learner, mine in by_learner.items()}


def _evidence(rows: Sequence[Any]) -> SkillEvidence:
    """One learner's rows of SKILL_EVIDENCE_SQL (at least one) as its evidence."""
    version = int(rows[0].data_version)
    if rows[0].skill_id is None:  # the LEFT JOIN's one row of a learner with no statistics
        none = np.zeros(0, np.float64)
        return dataclasses.replace(
            SkillEvidence.empty(), data_version=version, sum_residual=none, sum_information=none
        )
    # Columns by transposing the rows once (SKILL_EVIDENCE_SQL's order).
    _, _, skills, correct, incorrect, at, residual, information = zip(*rows, strict=True)
    return SkillEvidence(
        skill_ids=np.array(skills, dtype=np.int64),
        n_correct=np.array(correct, dtype=np.int64),
        n_incorrect=np.array(incorrect, dtype=np.int64),
        last_answered_at=list(at),
        data_version=version,
        sum_residual=np.array(residual, dtype=np.float64),
        sum_information=np.array(information, dtype=np.float64),
    )


@single_statement
def fetch_exercise_history(
    conn: Reader, *, learner_id: int, exercise_ids: npt.NDArray[np.int64]
) -> ExerciseHistory:
    rows = conn.exec_driver_sql(
        "SELECT exercise_id, n_attempts, last_answered_at FROM learner_exercise_stats"
        " WHERE learner_id = %(id)s AND exercise_id = ANY(%(ids)s)",
        {"id": learner_id, "ids": exercise_ids.tolist()},
    ).all()
    return ExerciseHistory(
        exercise_ids=np.array([r.exercise_id for r in rows], dtype=np.int64),
        n_attempts=np.array([r.n_attempts for r in rows], dtype=np.int64),
        last_answered_at=[r.last_answered_at for r in rows],
    )


@single_statement
def learner_exists(conn: Reader, *, learner_id: int) -> bool:
    return (
        conn.exec_driver_sql("SELECT 1 FROM learners WHERE id = %(id)s", {"id": learner_id}).first()
        is not None
    )


@single_statement
def most_active_learners(conn: Reader, *, limit: int) -> list[int]:
    """The learners who answered most recently, newest first (what cache warming starts with)."""
    rows = conn.exec_driver_sql(
        "SELECT learner_id FROM learner_skill_stats GROUP BY learner_id"
        " ORDER BY max(last_answered_at) DESC LIMIT %(n)s",
        {"n": limit},
    ).all()
    return [int(r.learner_id) for r in rows]
