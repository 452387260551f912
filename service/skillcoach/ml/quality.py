"""Model-quality measures: calibration, weakest-skill precision, and BestLR over many rows.

BestLR's inference broadcasts: a learner's totals may be scalars (one request) or one per row
(a whole test set in one vectorized call).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import roc_auc_score

from skillcoach.ml.features import CountFeatures
from skillcoach.ml.model import BestLR

__all__ = [
    "auc_or_none",
    "bestlr_mastery",
    "bestlr_success",
    "expected_calibration_error",
    "laplace_accuracy",
    "precision_at_k",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def auc_or_none(y: BoolArray, p: FloatArray) -> float | None:
    """ROC AUC, or None where it is undefined (one class only)."""
    if len(y) == 0 or y.all() or not y.any():
        return None
    return float(roc_auc_score(y, p))


def expected_calibration_error(y: BoolArray, p: FloatArray, bins: int = 10) -> float:
    """Equal-width-bin ECE: sum over bins of |mean p - accuracy|, weighted by bin size."""
    if len(y) == 0:
        return 0.0
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    p_sum = np.bincount(which, weights=p, minlength=bins)
    y_sum = np.bincount(which, weights=y.astype(np.float64), minlength=bins)
    return float(np.abs(p_sum - y_sum).sum() / len(y))


def laplace_accuracy(n_correct: IntArray, n_incorrect: IntArray) -> FloatArray:
    out: FloatArray = (n_correct + 1.0) / (n_correct + n_incorrect + 2.0)
    return out


def bestlr_success(
    model: BestLR, exercise_ids: IntArray, skill_ids: IntArray, counts: CountFeatures
) -> FloatArray:
    """BestLR.exercise_success for every row, each with its own prior evidence."""
    return model.exercise_success(
        exercise_ids,
        skill_ids,
        counts.skill_correct,
        counts.skill_incorrect,
        total_correct=counts.total_correct,
        total_incorrect=counts.total_incorrect,
        skill_residual=counts.skill_residual,
        skill_information=counts.skill_information,
        total_residual=counts.total_residual,
        total_information=counts.total_information,
    )


def bestlr_mastery(
    model: BestLR,
    skill_ids: IntArray,
    n_correct: IntArray,
    n_incorrect: IntArray,
    total_correct: IntArray,
    total_incorrect: IntArray,
) -> FloatArray:
    """BestLR.skill_mastery for (learner, skill) rows from counts alone (no residual sums)."""
    return model.skill_mastery(
        skill_ids,
        n_correct,
        n_incorrect,
        total_correct=total_correct,
        total_incorrect=total_incorrect,
    )


def _lowest_k(groups: IntArray, items: IntArray, score: FloatArray, k: int) -> BoolArray:
    """Marks the k lowest-scoring rows of every group (ties go to the lower item id)."""
    order = np.lexsort((items, score, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    group_start = starts[np.cumsum(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]) - 1]
    rank = np.arange(len(order)) - group_start
    chosen = np.zeros(len(order), dtype=bool)
    chosen[order] = rank < k
    return chosen


def precision_at_k(
    groups: IntArray, items: IntArray, truth: FloatArray, estimate: FloatArray, k: int = 3
) -> tuple[float | None, int]:
    """Mean share of each group's k truly lowest items that the estimate also ranks lowest.

    Groups (learners) with fewer than k items are skipped: every pick would be right.
    Returns (precision or None when no group qualifies, number of groups evaluated).
    """
    if len(groups) == 0:
        return None, 0
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    eligible = sizes[inverse] >= k
    if not eligible.any():
        return None, 0
    g, it = groups[eligible], items[eligible]
    hits = _lowest_k(g, it, truth[eligible], k) & _lowest_k(g, it, estimate[eligible], k)
    n_groups = int((sizes >= k).sum())
    return float(hits.sum() / (k * n_groups)), n_groups
