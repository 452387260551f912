"""Weakness ranking and practice recommendations: pure decisions over a learner's evidence.

Nothing here does I/O; the answers layer fetches the evidence (O(skills) statistics rows) and the
catalog, then call these functions once per request with whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import betaincinv, ndtri

from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml.model import BestLR, sigmoid

__all__ = [
    "Recommendation",
    "SkillWeakness",
    "ability_interval",
    "mastery_interval",
    "rank_weaknesses",
    "recommend",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Pseudo-observations behind the model's estimate when forming an interval: the model pools
# what the whole population says about a skill, worth a few attempts of this learner's own.
PRIOR_STRENGTH = 4.0
INTERVAL = 0.80
_Z_INTERVAL = float(ndtri(0.5 + INTERVAL / 2))


@dataclass(frozen=True, slots=True)
class SkillWeakness:
    skill_id: int
    mastery: float
    low: float
    high: float
    attempts: int
    correct: int
    insufficient_data: bool
    last_practised_at: datetime


@dataclass(frozen=True, slots=True)
class Recommendation:
    exercise_id: int
    skill_id: int
    predicted_success: float
    skill_mastery: float
    seen_count: int
    last_seen_at: datetime | None


def mastery_interval(
    mastery: FloatArray, attempts: FloatArray, *, level: float = INTERVAL
) -> tuple[FloatArray, FloatArray]:
    """Central `level` interval of a Beta around each estimate, as wide as the evidence is thin."""
    strength = attempts + PRIOR_STRENGTH
    p = np.clip(mastery, 1e-6, 1 - 1e-6)
    a, b = p * strength, (1 - p) * strength
    tail = (1 - level) / 2
    low: FloatArray = betaincinv(a, b, tail)
    high: FloatArray = betaincinv(a, b, 1 - tail)
    return low, high


def _residual_kwargs(evidence: SkillEvidence, rows: IntArray | None = None) -> dict[str, Any]:
    """The difficulty-aware evidence as BestLR keyword arguments (rows -1: never practised)."""
    r, i = evidence.sum_residual, evidence.sum_information
    if r is None or i is None:
        return {}
    total_r, total_i = evidence.residual_totals
    if rows is not None:
        r, i = np.append(r, 0.0)[rows], np.append(i, 0.0)[rows]
    return {"skill_residual": r, "skill_information": i, "total_residual": total_r,
            "total_information": total_i}  # fmt: skip


def ability_interval(
    model: BestLR, mastery: FloatArray, information: FloatArray, *, level: float = INTERVAL
) -> tuple[FloatArray, FloatArray]:
    """Central `level` interval from the ability estimate's own posterior sd, on the logit
    scale: as wide as the difficulty-weighted evidence (its information) is thin."""
    z = _Z_INTERVAL if level == INTERVAL else float(ndtri(0.5 + level / 2))
    p = np.clip(mastery, 1e-9, 1 - 1e-9)
    logit = np.log(p / (1.0 - p))
    half = z / np.sqrt(information + model.ability_prior)
    return sigmoid(logit - half), sigmoid(logit + half)


def rank_weaknesses(
    model: BestLR, evidence: SkillEvidence, *, min_attempts: int, limit: int | None = None
) -> list[SkillWeakness]:
    """Every practised skill, weakest first, with an interval and an insufficient-data flag."""
    if len(evidence) == 0:
        return []
    total_c, total_i = evidence.totals
    residual = _residual_kwargs(evidence)
    mastery = model.skill_mastery(
        evidence.skill_ids,
        evidence.n_correct,
        evidence.n_incorrect,
        total_correct=total_c,
        total_incorrect=total_i,
        **residual,
    )
    attempts = (evidence.n_correct + evidence.n_incorrect).astype(np.float64)
    if residual and model.uses_ability:
        low, high = ability_interval(model, mastery, residual["skill_information"])
    else:
        low, high = mastery_interval(mastery, attempts)
    # Weakest first; among equals the better-evidenced skill first, then by id for stable output.
    order = np.lexsort((evidence.skill_ids, -attempts, mastery))
    if limit is not None:
        order = order[:limit]
    return [
        SkillWeakness(
            skill_id=int(evidence.skill_ids[i]),
            mastery=float(mastery[i]),
            low=float(low[i]),
            high=float(high[i]),
            attempts=int(attempts[i]),
            correct=int(evidence.n_correct[i]),
            insufficient_data=bool(attempts[i] < min_attempts),
            last_practised_at=evidence.last_answered_at[i],
        )
        for i in order
    ]


def focus_skills(
    model: BestLR, evidence: SkillEvidence, *, count: int
) -> tuple[IntArray, FloatArray]:
    """The skills to practise and their mastery: the weakest practised ones, or for a learner
    with no history yet, every skill the model knows (the target then picks the exercises)."""
    total_c, total_i = evidence.totals
    if len(evidence) == 0:
        skills = model.skill_ids
        zeros = np.zeros(len(skills))
        mastery = model.skill_mastery(skills, zeros, zeros, total_correct=0, total_incorrect=0)
        return skills, mastery
    mastery = model.skill_mastery(
        evidence.skill_ids,
        evidence.n_correct,
        evidence.n_incorrect,
        total_correct=total_c,
        total_incorrect=total_i,
        **_residual_kwargs(evidence),
    )
    order = np.lexsort((evidence.skill_ids, mastery))[:count]
    return evidence.skill_ids[order], mastery[order]


def recommend(
    model: BestLR,
    evidence: SkillEvidence,
    *,
    skills: IntArray,
    skill_mastery: FloatArray,
    candidate_ids: IntArray,
    candidate_skill_ids: IntArray,
    history: ExerciseHistory,
    target: float,
    limit: int,
) -> list[Recommendation]:
    """Unseen exercises first, then the least recently seen; within each, predicted success
    closest to `target` (hard enough to teach, easy enough to keep going)."""
    if len(candidate_ids) == 0:
        return []
    skill_pos = {int(s): i for i, s in enumerate(skills)}
    ev_rows = _positions(evidence.skill_ids, candidate_skill_ids)
    n_c = np.append(evidence.n_correct, 0)[ev_rows]  # -1 (never practised) reads the sentinel
    n_i = np.append(evidence.n_incorrect, 0)[ev_rows]
    total_c, total_i = evidence.totals
    p = model.exercise_success(
        candidate_ids,
        candidate_skill_ids,
        n_c,
        n_i,
        total_correct=total_c,
        total_incorrect=total_i,
        **_residual_kwargs(evidence, ev_rows),
    )
    seen_idx = _positions(history.exercise_ids, candidate_ids)
    # A sentinel 0 after the real counts, so unseen exercises (-1) index it without a guard.
    counts = np.append(history.n_attempts, 0)
    seen_count = counts[seen_idx]
    # Rank of last-seen time among seen exercises (older = lower); unseen rank below all.
    seen_stamps = [ts.timestamp() for ts in history.last_answered_at]
    stamps = np.array([*seen_stamps, -np.inf])[seen_idx]
    distance = np.abs(p - target)
    order = np.lexsort((candidate_ids, distance, stamps))
    return [
        Recommendation(
            exercise_id=int(candidate_ids[i]),
            skill_id=int(candidate_skill_ids[i]),
            predicted_success=float(p[i]),
            skill_mastery=float(skill_mastery[skill_pos[int(candidate_skill_ids[i])]]),
            seen_count=int(seen_count[i]),
            last_seen_at=history.last_answered_at[seen_idx[i]] if seen_idx[i] >= 0 else None,
        )
        for i in order[:limit]
    ]


def _positions(keys: IntArray, ids: IntArray) -> IntArray:
    """Index of each id in keys (unsorted, unique), or -1 where absent; vectorized, since a
    request looks up every candidate exercise."""
    if len(keys) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], ids), len(keys) - 1)
    out: IntArray = np.where(keys[order][pos] == ids, order[pos], -1).astype(np.int64)
    return out
