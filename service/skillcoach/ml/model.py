"""The Best-LR model as served: exported coefficients and vectorized numpy inference.

A model artifact is UTF-8 JSON (no pickle: loading a registry row never executes code):

    {"format": "skillcoach.best-lr/2", "intercept": float,
     "skill_ids": [int], "skill_weights": [float],
     "exercise_ids": [int], "exercise_skill_ids": [int], "exercise_weights": [float],
     "count_features": ["skill_correct", "skill_incorrect", "total_correct", "total_incorrect"],
     "count_weights": [float x 4],
     "ability_features": ["skill_ability", "total_ability"], "ability_weights": [float x 2],
     "ability_prior": float, "exercise_attempts": [int]}

Format /1 (no ability keys) still loads, with zero ability weights: it scores as it always did.
"exercise_attempts" (the training attempts behind each exercise's weight, optional in /2:
artifacts stored before it load without it) tells recommendations which exercises' predicted
success rests on enough answers to be trusted.

The logit of a success on exercise e of skill s for a learner with prior counts c is
    intercept + skill_weights[s] + exercise_weights[e] + count_weights . log1p(c)
      + ability_weights . (skill_ability, total_ability)
The abilities are difficulty-aware evidence: with r = sum over the learner's answers of
(correct - sigmoid(q_e)) and i = sum of sigmoid(q_e) * (1 - sigmoid(q_e)), q_e the exercise's
population success logit fixed at write time (exercises.prior_logit),
    total_ability = R / (I + ability_prior)            (R, I: sums over all skills)
    skill_ability = (r + ability_prior * total_ability) / (i + ability_prior)
a one-step Rasch estimate of how much better than the population the learner does, shrunk
towards their overall ability. Three misses on hard items move it less than three on easy ones.
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
    "ABILITY_FEATURES",
    "ABILITY_PRIOR",
    "ARTIFACT_FORMAT",
    "COUNT_FEATURES",
    "ArtifactError",
    "BestLR",
    "ability_features",
    "sigmoid",
]

ARTIFACT_FORMAT = "skillcoach.best-lr/2"
_V1_FORMAT = "skillcoach.best-lr/1"
COUNT_FEATURES = ("skill_correct", "skill_incorrect", "total_correct", "total_incorrect")
ABILITY_FEATURES = ("skill_ability", "total_ability")
# Prior precision of the abilities, in Fisher-information units (about 8 answers at p = 0.5):
# a skill with a couple of answers stays near the learner's overall ability.
ABILITY_PRIOR = 2.0
# z of the central 80 % interval.
_Z80 = 1.2815515655446004

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ArtifactError(ValueError):
    """A stored model artifact is corrupt, of an unknown format, or fails its checksum."""


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    return out


def ability_features(
    skill_residual: npt.ArrayLike,
    skill_information: npt.ArrayLike,
    total_residual: npt.ArrayLike,
    total_information: npt.ArrayLike,
    prior: float,
) -> tuple[FloatArray, FloatArray]:
    """(skill_ability, total_ability): see the module docstring; one formula for training and
    serving."""
    total = np.asarray(total_residual, dtype=np.float64) / (
        np.asarray(total_information, dtype=np.float64) + prior
    )
    skill: FloatArray = (np.asarray(skill_residual, dtype=np.float64) + prior * total) / (
        np.asarray(skill_information, dtype=np.float64) + prior
    )
    return skill, np.broadcast_to(total, skill.shape).astype(np.float64)


def _attempt_counts(counts: npt.ArrayLike, exercise_ids: IntArray) -> IntArray:
    try:
        raw = np.asarray(counts)
    except (TypeError, ValueError):
        raise ArtifactError("exercise_attempts is not a list of counts") from None
    integral = raw.dtype.kind in "iu" or raw.size == 0
    if raw.shape != exercise_ids.shape or not integral or (raw < 0).any():
        raise ArtifactError("exercise_attempts must be one non-negative count per exercise")
    return raw.astype(np.int64)


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
    ability_weights: FloatArray
    ability_prior: float
    # Training attempts per exercise (aligned with exercise_ids); None: the artifact predates it.
    exercise_attempts: IntArray | None
    skill_mean_exercise_weight: FloatArray
    # (prior, skill weight, total weight) as Python floats, None when both weights are 0.
    _ability_terms: tuple[float, float, float] | None
    _skill_sorted: IntArray
    _skill_order: IntArray
    _exercise_sorted: IntArray
    _exercise_order: IntArray
    # The weights with a 0.0 appended: indexed by a lookup's row, -1 (unknown) reads the 0.
    _skill_weights_0: FloatArray
    _mean_exercise_0: FloatArray
    _exercise_weights_0: FloatArray

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
        ability_weights: npt.ArrayLike = (0.0, 0.0),
        ability_prior: float = ABILITY_PRIOR,
        exercise_attempts: npt.ArrayLike | None = None,
    ) -> BestLR:
        s_ids = np.asarray(skill_ids, dtype=np.int64)
        s_w = np.asarray(skill_weights, dtype=np.float64)
        e_ids = np.asarray(exercise_ids, dtype=np.int64)
        e_skill = np.asarray(exercise_skill_ids, dtype=np.int64)
        e_w = np.asarray(exercise_weights, dtype=np.float64)
        c_w = np.asarray(count_weights, dtype=np.float64)
        a_w = np.asarray(ability_weights, dtype=np.float64)
        if a_w.shape != (len(ABILITY_FEATURES),):
            raise ArtifactError(f"ability_weights must have {len(ABILITY_FEATURES)} entries")
        if not (np.isfinite(a_w).all() and np.isfinite(ability_prior) and ability_prior > 0):
            raise ArtifactError("ability weights must be finite and ability_prior positive")
        if s_ids.shape != s_w.shape or s_ids.ndim != 1:
            raise ArtifactError("skill_ids and skill_weights differ in length")
        if not (e_ids.shape == e_skill.shape == e_w.shape) or e_ids.ndim != 1:
            raise ArtifactError("exercise arrays differ in length")
        if c_w.shape != (len(COUNT_FEATURES),):
            raise ArtifactError(f"count_weights must have {len(COUNT_FEATURES)} entries")
        e_n = None if exercise_attempts is None else _attempt_counts(exercise_attempts, e_ids)
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
            ability_weights=a_w,
            ability_prior=float(ability_prior),
            exercise_attempts=e_n,
            skill_mean_exercise_weight=means,
            _ability_terms=(
                (float(ability_prior), float(a_w[0]), float(a_w[1])) if np.any(a_w != 0) else None
            ),
            _skill_sorted=s_sorted,
            _skill_order=s_order,
            _exercise_sorted=e_sorted,
            _exercise_order=e_order,
            _skill_weights_0=np.append(s_w, 0.0),
            _mean_exercise_0=np.append(means, 0.0),
            _exercise_weights_0=np.append(e_w, 0.0),
        )

    # -- serialization ---------------------------------------------------------------------
    def to_artifact(self) -> bytes:
        extra = (
            {}
            if self.exercise_attempts is None
            else {"exercise_attempts": self.exercise_attempts.tolist()}
        )
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
                "ability_features": list(ABILITY_FEATURES),
                "ability_weights": self.ability_weights.tolist(),
                "ability_prior": self.ability_prior,
                **extra,
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
        if not isinstance(doc, dict):
            raise ArtifactError("artifact is not a JSON object")
        fmt = doc.get("format")
        if fmt not in (ARTIFACT_FORMAT, _V1_FORMAT):
            raise ArtifactError(f"unknown artifact format {fmt!r}")
        if tuple(doc.get("count_features", ())) != COUNT_FEATURES:
            raise ArtifactError("artifact count features differ from this server's")
        ability: dict[str, Any] = {}
        if fmt == ARTIFACT_FORMAT:
            if tuple(doc.get("ability_features", ())) != ABILITY_FEATURES:
                raise ArtifactError("artifact ability features differ from this server's")
            ability = {"ability_weights": doc.get("ability_weights"),
                       "ability_prior": doc.get("ability_prior")}  # fmt: skip
            if ability["ability_weights"] is None or ability["ability_prior"] is None:
                raise ArtifactError("artifact lacks its ability weights or prior")
            ability["exercise_attempts"] = doc.get("exercise_attempts")
        try:
            return cls.from_coefficients(
                intercept=doc["intercept"],
                skill_ids=doc["skill_ids"],
                skill_weights=doc["skill_weights"],
                exercise_ids=doc["exercise_ids"],
                exercise_skill_ids=doc["exercise_skill_ids"],
                exercise_weights=doc["exercise_weights"],
                count_weights=doc["count_weights"],
                **ability,
            )
        except KeyError as exc:
            raise ArtifactError(f"artifact lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"artifact has malformed coefficients: {exc}") from None

    # -- lookups ---------------------------------------------------------------------------
    def _rows(self, ids: IntArray, sorted_ids: IntArray, order: IntArray) -> IntArray:
        """Row of each id, or -1 where the model does not know it."""
        if len(sorted_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(sorted_ids.searchsorted(ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)

    def skill_rows(self, skill_ids: npt.ArrayLike) -> IntArray:
        return self._rows(
            np.asarray(skill_ids, dtype=np.int64), self._skill_sorted, self._skill_order
        )

    def exercise_rows(self, exercise_ids: npt.ArrayLike) -> IntArray:
        ids = np.asarray(exercise_ids, dtype=np.int64)
        return self._rows(ids, self._exercise_sorted, self._exercise_order)

    def exercise_attempts_of(
        self, exercise_ids: npt.ArrayLike, *, rows: IntArray | None = None
    ) -> IntArray | None:
        """Training attempts behind each exercise's weight (0 for an exercise the model does
        not know), or None when the artifact does not say; `rows`: exercise_rows(ids), when
        the caller has them already."""
        if self.exercise_attempts is None:
            return None
        rows = self.exercise_rows(exercise_ids) if rows is None else rows
        out: IntArray = np.where(rows >= 0, self.exercise_attempts[np.maximum(rows, 0)], 0)
        return out

    # -- inference ---------------------------------------------------------------------------
    @property
    def uses_ability(self) -> bool:
        return self._ability_terms is not None

    def abilities(
        self,
        skill_residual: npt.ArrayLike,
        skill_information: npt.ArrayLike,
        total_residual: npt.ArrayLike,
        total_information: npt.ArrayLike,
    ) -> tuple[FloatArray, FloatArray]:
        """(skill_ability, total_ability) of each row; totals broadcast against the rows."""
        return ability_features(
            skill_residual, skill_information, total_residual, total_information, self.ability_prior
        )

    def ability_sd(self, skill_information: npt.ArrayLike) -> FloatArray:
        """Posterior sd (logits) of a skill ability: the estimate's own uncertainty."""
        info = np.asarray(skill_information, np.float64)
        out: FloatArray = 1.0 / np.sqrt(info + self.ability_prior)
        return out

    def logit(
        self,
        *,
        skill_rows: IntArray,
        exercise_term: FloatArray | float,
        skill_correct: npt.ArrayLike,
        skill_incorrect: npt.ArrayLike,
        total_correct: npt.ArrayLike,
        total_incorrect: npt.ArrayLike,
        skill_residual: npt.ArrayLike | None,
        skill_information: npt.ArrayLike | None,
        total_residual: npt.ArrayLike,
        total_information: npt.ArrayLike,
    ) -> FloatArray:
        """The logit of every row; every argument may be an array (one per row) or a scalar."""
        w = self.count_weights
        # Summed in place, in the order the expression would add (the same floats), without
        # a temporary array per term: this runs on every request.
        out: FloatArray = self.intercept + self._skill_weights_0[skill_rows]
        out += exercise_term
        out += w[0] * np.log1p(np.asarray(skill_correct, dtype=np.float64))
        out += w[1] * np.log1p(np.asarray(skill_incorrect, dtype=np.float64))
        out += w[2] * np.log1p(total_correct) + w[3] * np.log1p(total_incorrect)
        terms = self._ability_terms
        if terms is not None and skill_residual is not None and skill_information is not None:
            # ability_features inlined: this runs on every request (serving budget).
            # w_skill * (r + lam * a_total) / (i + lam) + w_total * a_total, constants folded.
            lam, w_skill, w_total = terms
            a_total = np.divide(total_residual, np.add(total_information, lam))
            out += (np.multiply(skill_residual, w_skill) + w_skill * lam * a_total) / np.add(
                skill_information, lam
            ) + w_total * a_total
        return out

    def skill_logit(
        self,
        skill_ids: npt.ArrayLike,
        skill_correct: npt.ArrayLike,
        skill_incorrect: npt.ArrayLike,
        *,
        total_correct: npt.ArrayLike,
        total_incorrect: npt.ArrayLike,
        skill_residual: npt.ArrayLike | None = None,
        skill_information: npt.ArrayLike | None = None,
        total_residual: npt.ArrayLike = 0.0,
        total_information: npt.ArrayLike = 0.0,
    ) -> FloatArray:
        """The logit of `skill_mastery`."""
        rows = self.skill_rows(skill_ids)
        mean_ex = self._mean_exercise_0[rows]
        return self.logit(
            skill_rows=rows,
            exercise_term=mean_ex,
            skill_correct=skill_correct,
            skill_incorrect=skill_incorrect,
            total_correct=total_correct,
            total_incorrect=total_incorrect,
            skill_residual=skill_residual,
            skill_information=skill_information,
            total_residual=total_residual,
            total_information=total_information,
        )

    def skill_mastery(
        self,
        skill_ids: npt.ArrayLike,
        skill_correct: npt.ArrayLike,
        skill_incorrect: npt.ArrayLike,
        *,
        total_correct: npt.ArrayLike,
        total_incorrect: npt.ArrayLike,
        skill_residual: npt.ArrayLike | None = None,
        skill_information: npt.ArrayLike | None = None,
        total_residual: npt.ArrayLike = 0.0,
        total_information: npt.ArrayLike = 0.0,
    ) -> FloatArray:
        """P(success) on a typical exercise of each skill, given the learner's prior evidence."""
        return sigmoid(
            self.skill_logit(
                skill_ids,
                skill_correct,
                skill_incorrect,
                total_correct=total_correct,
                total_incorrect=total_incorrect,
                skill_residual=skill_residual,
                skill_information=skill_information,
                total_residual=total_residual,
                total_information=total_information,
            )
        )

    def exercise_success(
        self,
        exercise_ids: npt.ArrayLike,
        exercise_skill_ids: npt.ArrayLike,
        skill_correct: npt.ArrayLike,
        skill_incorrect: npt.ArrayLike,
        *,
        total_correct: npt.ArrayLike,
        total_incorrect: npt.ArrayLike,
        skill_residual: npt.ArrayLike | None = None,
        skill_information: npt.ArrayLike | None = None,
        total_residual: npt.ArrayLike = 0.0,
        total_information: npt.ArrayLike = 0.0,
        rows: IntArray | None = None,
    ) -> FloatArray:
        """P(success) on each given exercise; evidence is the learner's on that exercise's skill.
        `rows`: exercise_rows(exercise_ids), when the caller has them already."""
        e_rows = self.exercise_rows(exercise_ids) if rows is None else rows
        e_term = self._exercise_weights_0[e_rows]
        return sigmoid(
            self.logit(
                skill_rows=self.skill_rows(exercise_skill_ids),
                exercise_term=e_term,
                skill_correct=skill_correct,
                skill_incorrect=skill_incorrect,
                total_correct=total_correct,
                total_incorrect=total_incorrect,
                skill_residual=skill_residual,
                skill_information=skill_information,
                total_residual=total_residual,
                total_information=total_information,
            )
        )
