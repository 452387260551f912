"""What the data layer reads and writes, as plain typed records: the ML and API layers consume
them, the data layer never imports either."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

__all__ = ["Attempt", "ExerciseHistory", "SkillEvidence"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One answer of a learner, as accepted for writing (answered_at is timezone-aware)."""

    exercise_id: int
    correct: bool
    answered_at: datetime


@dataclass(frozen=True, slots=True)
class SkillEvidence:
    """A learner's per-skill statistics (rows of learner_skill_stats)."""

    skill_ids: IntArray
    n_correct: IntArray
    n_incorrect: IntArray
    last_answered_at: list[datetime]
    # learners.data_version in the same snapshot: the version of these statistics.
    data_version: int = 0
    # Difficulty-aware evidence (sums of correct - expected success, and of its information,
    # against each exercise's prior); None where the reader has none (counts-only scoring).
    sum_residual: FloatArray | None = None
    sum_information: FloatArray | None = None

    @classmethod
    def empty(cls) -> SkillEvidence:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), [])

    @property
    def totals(self) -> tuple[int, int]:
        return int(self.n_correct.sum()), int(self.n_incorrect.sum())

    @property
    def residual_totals(self) -> tuple[float, float]:
        if self.sum_residual is None or self.sum_information is None:
            return 0.0, 0.0
        return float(self.sum_residual.sum()), float(self.sum_information.sum())

    def __len__(self) -> int:
        return len(self.skill_ids)


@dataclass(frozen=True, slots=True)
class ExerciseHistory:
    """The learner's past attempts on candidate exercises (rows of learner_exercise_stats)."""

    exercise_ids: IntArray
    n_attempts: IntArray
    last_answered_at: list[datetime]
