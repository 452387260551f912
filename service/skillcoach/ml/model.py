"""The Best-LR model as served: exported coefficients and vectorized numpy inference.

A model artifact is UTF-8 JSON (no pickle: loading a registry row never executes code):

    {"format": "skillcoach.best-lr/1", "intercept": float,
     "skill_ids": [int], "skill_weights": [float],
     "exercise_ids": [int], "exercise_skill_ids": [int], "exercise_weights": [float],
     "count_features": ["skill_correct", "skill_incorrect", "total_correct", "total_incorrect"],
     "count_weights": [float x 4]}

The logit of a success on exercise e of skill s for a learner with prior counts c is
    intercept + skill_weights[s] + exercise_weights[e] + count_weights . log1p(c)
An exercise unknown to the model (added after training) contributes 0, the mean-free default.
A skill's mastery is the success probability on a typical exercise of that skill: the exercise
term is replaced by the mean exercise weight of the skill.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

__all__ = [
    "ARTIFACT_FORMAT",
    "COUNT_FEATURES",
    "ArtifactError",
    "BestLR",
    "sigmoid",
]

ARTIFACT_FORMAT = "skillcoach.best-lr/1"
COUNT_FEATURES = ("skill_correct", "skill_incorrect", "total_correct", "total_incorrect")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ArtifactError(ValueError):
    """A stored model artifact is corrupt, of an unknown format, or fails its checksum."""


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return out


def _index(ids: IntArray) -> tuple[IntArray, IntArray]:
    """Sorted ids and the positions that sort them, for vectorized id -> row lookups."""
    order = np.argsort(ids, kind="stable").astype(np.int64)
    return ids[order], order


@dataclass(frozen=True, slots=True)
class BestLR:
    intercept: float
    skill_ids: IntArray
    skill_weights: FloatArray
    exercise_ids: IntArray
    exercise_skill_ids: IntArray
    exercise_weights: FloatArray
    count_weights: FloatArray
    skill_mean_exercise_weight: FloatArray
    _skill_sorted: IntArray
    _skill_order: IntArray
    _exercise_sorted: IntArray
    _exercise_order: IntArray

    @classmethod
    def from_coefficients(
        cls,
        *,
        intercept: float,
        skill_ids: npt.ArrayLike,
        skill_weights: npt.ArrayLike,
        exercise_ids: npt.ArrayLike,
        exercise_skill_ids: npt.ArrayLike,
        exercise_weights: npt.ArrayLike,
        count_weights: npt.ArrayLike,
    ) -> BestLR:
        s_ids = np.asarray(skill_ids, dtype=np.int64)
        s_w = np.asarray(skill_weights, dtype=np.float64)
        e_ids = np.asarray(exercise_ids, dtype=np.int64)
        e_skill = np.asarray(exercise_skill_ids, dtype=np.int64)
        e_w = np.asarray(exercise_weights, dtype=np.float64)
        c_w = np.asarray(count_weights, dtype=np.float64)
        if s_ids.shape != s_w.shape or s_ids.ndim != 1:
            raise ArtifactError("skill_ids and skill_weights differ in length")
        if not (e_ids.shape == e_skill.shape == e_w.shape) or e_ids.ndim != 1:
            raise ArtifactError("exercise arrays differ in length")
        if c_w.shape != (len(COUNT_FEATURES),):
            raise ArtifactError(f"count_weights must have {len(COUNT_FEATURES)} entries")
        if len(np.unique(s_ids)) != len(s_ids) or len(np.unique(e_ids)) != len(e_ids):
            raise ArtifactError("duplicate skill or exercise ids")
        if not (np.isfinite(s_w).all() and np.isfinite(e_w).all() and np.isfinite(c_w).all()):
            raise ArtifactError("non-finite coefficient")
        s_sorted, s_order = _index(s_ids)
        e_sorted, e_order = _index(e_ids)
        # Mean exercise weight per skill: the "typical exercise" term of a skill's mastery.
        pos = np.searchsorted(s_sorted, e_skill)
        known = (pos < len(s_sorted)) & (s_sorted[np.minimum(pos, len(s_sorted) - 1)] == e_skill)
        rows = s_order[np.minimum(pos, len(s_sorted) - 1)][known]
        sums = np.bincount(rows, weights=e_w[known], minlength=len(s_ids))
        counts = np.bincount(rows, minlength=len(s_ids))
        means = np.divide(sums, counts, out=np.zeros(len(s_ids)), where=counts > 0)
        return cls(
            intercept=float(intercept),
            skill_ids=s_ids,
            skill_weights=s_w,
            exercise_ids=e_ids,
            exercise_skill_ids=e_skill,
            exercise_weights=e_w,
            count_weights=c_w,
            skill_mean_exercise_weight=means,
            _skill_sorted=s_sorted,
            _skill_order=s_order,
            _exercise_sorted=e_sorted,
            _exercise_order=e_order,
        )

    # -- serialization ---------------------------------------------------------------------
    def to_artifact(self) -> bytes:
        return orjson.dumps(
            {
                "format": ARTIFACT_FORMAT,
                "intercept": self.intercept,
                "skill_ids": self.skill_ids.tolist(),
                "skill_weights": self.skill_weights.tolist(),
                "exercise_ids": self.exercise_ids.tolist(),
                "exercise_skill_ids": self.exercise_skill_ids.tolist(),
                "exercise_weights": self.exercise_weights.tolist(),
                "count_features": list(COUNT_FEATURES),
                "count_weights": self.count_weights.tolist(),
            }
        )

    @classmethod
    def from_artifact(cls, artifact: bytes, *, sha256: str | None = None) -> BestLR:
        if sha256 is not None and hashlib.sha256(artifact).hexdigest() != sha256:
            raise ArtifactError("artifact checksum mismatch")
        try:
            doc: dict[str, Any] = orjson.loads(artifact)
        except orjson.JSONDecodeError as exc:
            raise ArtifactError(f"artifact is not JSON: {exc}") from None
        if doc.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"unknown artifact format {doc.get('format')!r}")
        if tuple(doc.get("count_features", ())) != COUNT_FEATURES:
            raise ArtifactError("artifact count features differ from this server's")
        try:
            return cls.from_coefficients(
                intercept=doc["intercept"],
                skill_ids=doc["skill_ids"],
                skill_weights=doc["skill_weights"],
                exercise_ids=doc["exercise_ids"],
                exercise_skill_ids=doc["exercise_skill_ids"],
                exercise_weights=doc["exercise_weights"],
                count_weights=doc["count_weights"],
            )
        except KeyError as exc:
            raise ArtifactError(f"artifact lacks {exc.args[0]!r}") from None

    # -- lookups ---------------------------------------------------------------------------
    def _rows(self, ids: IntArray, sorted_ids: IntArray, order: IntArray) -> IntArray:
        """Row of each id, or -1 where the model does not know it."""
        if len(sorted_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def skill_rows(self, skill_ids: npt.ArrayLike) -> IntArray:
        return self._rows(
            np.asarray(skill_ids, dtype=np.int64), self._skill_sorted, self._skill_order
        )

    def exercise_rows(self, exercise_ids: npt.ArrayLike) -> IntArray:
        ids = np.asarray(exercise_ids, dtype=np.int64)
        return self._rows(ids, self._exercise_sorted, self._exercise_order)

    # -- inference -------------------------------------------------------------------------
    def _count_term(
        self, skill_correct: FloatArray, skill_incorrect: FloatArray, total: tuple[int, int]
    ) -> FloatArray:
        w = self.count_weights
        term: FloatArray = (
            w[0] * np.log1p(skill_correct)
            + w[1] * np.log1p(skill_incorrect)
            + (w[2] * np.log1p(total[0]) + w[3] * np.log1p(total[1]))
        )
        return term

    def skill_mastery(
        self,
        skill_ids: npt.ArrayLike,
        skill_correct: npt.ArrayLike,
        skill_incorrect: npt.ArrayLike,
        *,
        total_correct: int,
        total_incorrect: int,
    ) -> FloatArray:
        """P(success) on a typical exercise of each skill, given the learner's prior counts."""
        rows = self.skill_rows(skill_ids)
        known = rows >= 0
        safe = np.where(known, rows, 0)
        skill_term = np.where(
            known, self.skill_weights[safe] + self.skill_mean_exercise_weight[safe], 0.0
        )
        logit = (
            self.intercept
            + skill_term
            + self._count_term(
                np.asarray(skill_correct, dtype=np.float64),
                np.asarray(skill_incorrect, dtype=np.float64),
                (total_correct, total_incorrect),
            )
        )
        return sigmoid(logit)

    def exercise_success(
        self,
        exercise_ids: npt.ArrayLike,
        exercise_skill_ids: npt.ArrayLike,
        skill_correct: npt.ArrayLike,
        skill_incorrect: npt.ArrayLike,
        *,
        total_correct: int,
        total_incorrect: int,
    ) -> FloatArray:
        """P(success) on each given exercise; counts are the learner's on that exercise's skill."""
        e_rows = self.exercise_rows(exercise_ids)
        s_rows = self.skill_rows(exercise_skill_ids)
        e_term = np.where(e_rows >= 0, self.exercise_weights[np.maximum(e_rows, 0)], 0.0)
        s_term = np.where(s_rows >= 0, self.skill_weights[np.maximum(s_rows, 0)], 0.0)
        logit = (
            self.intercept
            + s_term
            + e_term
            + self._count_term(
                np.asarray(skill_correct, dtype=np.float64),
                np.asarray(skill_incorrect, dtype=np.float64),
                (total_correct, total_incorrect),
            )
        )
        return sigmoid(logit)
