"""Best-LR features from an attempt log, vectorized with numpy and scipy.sparse.

Columns: one-hot skill, one-hot exercise, then log1p of the learner's PRIOR counts in the
order of `skillcoach.ml.model.COUNT_FEATURES`, then the difficulty-aware abilities of
`skillcoach.ml.model.ABILITY_FEATURES` from the prior residual/information sums. "Prior" means
strictly earlier attempts of the same learner, ordered by answered_at then attempt id, so no
attempt ever sees its own label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import sparse

from skillcoach.ml.model import (
    ABILITY_FEATURES,
    ABILITY_PRIOR,
    COUNT_FEATURES,
    ability_features,
)

__all__ = [
    "AttemptLog",
    "CountFeatures",
    "expected_success",
    "feature_matrix",
    "feature_names",
    "prior_counts",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
T = TypeVar("T", np.int64, np.float64)


@dataclass(frozen=True, slots=True)
class AttemptLog:
    """Attempts sorted by (learner_id, answered_at, id)."""

    attempt_ids: IntArray
    learner_ids: IntArray
    exercise_ids: IntArray
    skill_ids: IntArray
    correct: BoolArray
    answered_at: IntArray  # any monotone integer clock; only its order matters here

    @classmethod
    def from_unsorted(
        cls,
        *,
        attempt_ids: IntArray,
        learner_ids: IntArray,
        exercise_ids: IntArray,
        skill_ids: IntArray,
        correct: BoolArray,
        answered_at: IntArray,
    ) -> AttemptLog:
        order = np.lexsort((attempt_ids, answered_at, learner_ids))
        return cls(
            attempt_ids=attempt_ids[order],
            learner_ids=learner_ids[order],
            exercise_ids=exercise_ids[order],
            skill_ids=skill_ids[order],
            correct=correct[order],
            answered_at=answered_at[order],
        )

    def __len__(self) -> int:
        return len(self.attempt_ids)

    def subset(self, mask: BoolArray) -> AttemptLog:
        """The attempts where mask holds; a mask by learner keeps the sort order valid."""
        return AttemptLog(
            attempt_ids=self.attempt_ids[mask],
            learner_ids=self.learner_ids[mask],
            exercise_ids=self.exercise_ids[mask],
            skill_ids=self.skill_ids[mask],
            correct=self.correct[mask],
            answered_at=self.answered_at[mask],
        )


@dataclass(frozen=True, slots=True)
class CountFeatures:
    """Raw prior counts per attempt, columns in the order of COUNT_FEATURES, and the prior
    residual/information sums (against each exercise's prior logit) the abilities come from."""

    skill_correct: IntArray
    skill_incorrect: IntArray
    total_correct: IntArray
    total_incorrect: IntArray
    skill_residual: FloatArray
    skill_information: FloatArray
    total_residual: FloatArray
    total_information: FloatArray

    def subset(self, mask: BoolArray) -> CountFeatures:
        return CountFeatures(
            self.skill_correct[mask],
            self.skill_incorrect[mask],
            self.total_correct[mask],
            self.total_incorrect[mask],
            self.skill_residual[mask],
            self.skill_information[mask],
            self.total_residual[mask],
            self.total_information[mask],
        )

    def matrix(self) -> IntArray:
        return np.column_stack(
            [self.skill_correct, self.skill_incorrect, self.total_correct, self.total_incorrect]
        )


def _exclusive_group_cumsum(values: npt.NDArray[T], group_start: BoolArray) -> npt.NDArray[T]:
    """Running sum of values before each element, restarting at every group start."""
    inclusive = np.cumsum(values)
    exclusive = inclusive - values
    start_positions = np.flatnonzero(group_start)
    group_of = np.cumsum(group_start) - 1
    out: npt.NDArray[T] = exclusive - exclusive[start_positions][group_of]
    return out


def expected_success(prior_logit: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(p, p * (1 - p)) of the population success logit of each answered exercise: what a
    residual is measured against and how much information the answer carries."""
    p: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * prior_logit))
    return p, p * (1.0 - p)


def _starts(*keys: IntArray) -> BoolArray:
    n = len(keys[0])
    start = np.zeros(n, dtype=bool)
    if n:
        start[0] = True
        for key in keys:
            start[1:] |= key[1:] != key[:-1]
    return start


def prior_counts(log: AttemptLog, prior_logit: FloatArray | None = None) -> CountFeatures:
    """Prior counts and residual sums of every attempt; prior_logit is each attempt's
    exercise's population success logit as the write path saw it (None: 0 everywhere, what
    the write path uses before any training has estimated it)."""
    correct = log.correct.astype(np.int64)
    incorrect = 1 - correct
    q = np.zeros(len(log)) if prior_logit is None else np.asarray(prior_logit, np.float64)
    p, info = expected_success(q)
    residual = correct - p
    learner_start = _starts(log.learner_ids)
    total_correct = _exclusive_group_cumsum(correct, learner_start)
    total_incorrect = _exclusive_group_cumsum(incorrect, learner_start)
    total_residual = _exclusive_group_cumsum(residual, learner_start)
    total_information = _exclusive_group_cumsum(info, learner_start)
    # Regroup by (learner, skill) keeping time order inside each group: a stable sort on
    # skill within the already time-ordered learner blocks.
    order = np.lexsort((np.arange(len(log)), log.skill_ids, log.learner_ids))
    skill_start = _starts(log.learner_ids[order], log.skill_ids[order])
    skill_correct = np.empty_like(correct)
    skill_incorrect = np.empty_like(correct)
    skill_correct[order] = _exclusive_group_cumsum(correct[order], skill_start)
    skill_incorrect[order] = _exclusive_group_cumsum(incorrect[order], skill_start)
    skill_residual = np.empty_like(residual)
    skill_information = np.empty_like(residual)
    skill_residual[order] = _exclusive_group_cumsum(residual[order], skill_start)
    skill_information[order] = _exclusive_group_cumsum(info[order], skill_start)
    return CountFeatures(
        skill_correct,
        skill_incorrect,
        total_correct,
        total_incorrect,
        skill_residual,
        skill_information,
        total_residual,
        total_information,
    )


def feature_names(skill_ids: IntArray, exercise_ids: IntArray) -> list[str]:
    return (
        [f"skill:{int(s)}" for s in skill_ids]
        + [f"exercise:{int(e)}" for e in exercise_ids]
        + [f"log1p({name})" for name in COUNT_FEATURES]
        + list(ABILITY_FEATURES)
    )


def feature_matrix(
    skill_rows: IntArray,
    exercise_rows: IntArray,
    counts: CountFeatures,
    *,
    n_skills: int,
    n_exercises: int,
    ability_prior: float = ABILITY_PRIOR,
) -> sparse.csr_matrix:
    """CSR matrix with n_skills + n_exercises + 4 + 2 columns; rows index catalog positions."""
    n = len(skill_rows)
    n_counts = len(COUNT_FEATURES) + len(ABILITY_FEATURES)
    width = 2 + n_counts
    cols = np.empty((n, width), dtype=np.int64)
    vals = np.empty((n, width), dtype=np.float64)
    cols[:, 0], vals[:, 0] = skill_rows, 1.0
    cols[:, 1], vals[:, 1] = n_skills + exercise_rows, 1.0
    cols[:, 2:] = n_skills + n_exercises + np.arange(n_counts)
    vals[:, 2:6] = np.log1p(counts.matrix())
    a_skill, a_total = ability_features(
        counts.skill_residual,
        counts.skill_information,
        counts.total_residual,
        counts.total_information,
        ability_prior,
    )
    vals[:, 6], vals[:, 7] = a_skill, a_total
    # Explicit zeros (no prior attempts) are kept: every row then has the same layout.
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    return sparse.csr_matrix(
        (vals.ravel(), cols.ravel(), indptr), shape=(n, n_skills + n_exercises + n_counts)
    )
