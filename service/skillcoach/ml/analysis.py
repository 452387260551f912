"""Weakness ranking and practice recommendations: pure decisions over a learner's evidence.

Nothing here does I/O; the answers layer fetches the evidence (O(skills) statistics rows) and the
catalog, then call these functions once per request with whole arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import betaincinv, ndtri

from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml.model import BestLR, sigmoid

__all__ = [
    "Candidates",
    "ExercisesOf",
    "Recommendation",
    "RecommendationPolicy",
    "SkillWeakness",
    "Weaknesses",
    "ability_interval",
    "candidates",
    "mastery_interval",
    "rank_weaknesses",
    "recommend",
    "weakest_skills",
    "weakness_columns",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

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
class Weaknesses:
    """A learner's practised skills, weakest first, as columns (entry i of each is one
    skill): what an answer serializes without building an object per skill."""

    skill_ids: IntArray
    mastery: FloatArray
    low: FloatArray
    high: FloatArray
    attempts: IntArray
    correct: IntArray
    insufficient_data: BoolArray
    last_practised_at: list[datetime]

    def __len__(self) -> int:
        return len(self.skill_ids)

    def rows(self) -> list[SkillWeakness]:
        return [
            SkillWeakness(*row)
            for row in zip(
                self.skill_ids.tolist(), self.mastery.tolist(), self.low.tolist(),
                self.high.tolist(), self.attempts.tolist(), self.correct.tolist(),
                self.insufficient_data.tolist(), self.last_practised_at, strict=True,
            )
        ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recommendation:
    exercise_id: int
    skill_id: int
    predicted_success: float
    skill_mastery: float
    seen_count: int
    last_seen_at: datetime | None
    on_target: bool = True
    # False: too few training answers to this exercise to trust its predicted success.
    trusted: bool = True
    # True: a skill the learner has not practised yet (offered when their own fall short).
    new_skill: bool = False


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
    """The difficulty-aware evidence as BestLR keyword arguments, of the given evidence rows
    (default: all)."""
    r, i = evidence.sum_residual, evidence.sum_information
    if r is None or i is None:
        return {}
    total_r, total_i = evidence.residual_totals
    if rows is not None:
        r, i = r[rows], i[rows]
    return {"skill_residual": r, "skill_information": i, "total_residual": total_r,
            "total_information": total_i}  # fmt: skip


def ability_interval(
    model: BestLR,
    mastery: FloatArray,
    information: FloatArray,
    *,
    level: float = INTERVAL,
    logit: FloatArray | None = None,
) -> tuple[FloatArray, FloatArray]:
    """Central `level` interval from the ability estimate's own posterior sd, on the logit
    scale: as wide as the difficulty-weighted evidence (its information) is thin. `logit`:
    the mastery's logit, when the caller has it (saves recovering it from the mastery)."""
    z = _Z_INTERVAL if level == INTERVAL else float(ndtri(0.5 + level / 2))
    if logit is None:
        p = np.clip(mastery, 1e-9, 1 - 1e-9)
        logit = np.log(p / (1.0 - p))
    half = z / np.sqrt(information + model.ability_prior)
    return sigmoid(logit - half), sigmoid(logit + half)


def weakness_columns(
    model: BestLR, evidence: SkillEvidence, *, min_attempts: int, limit: int | None = None
) -> Weaknesses:
    """Every practised skill, weakest first, with an interval and an insufficient-data flag."""
    total_c, total_i = evidence.totals
    residual = _residual_kwargs(evidence)
    logit = model.skill_logit(
        evidence.skill_ids,
        evidence.n_correct,
        evidence.n_incorrect,
        total_correct=total_c,
        total_incorrect=total_i,
        **residual,
    )
    mastery = sigmoid(logit)
    attempts = evidence.n_correct + evidence.n_incorrect
    if residual and model.uses_ability:
        low, high = ability_interval(model, mastery, residual["skill_information"], logit=logit)
    else:
        low, high = mastery_interval(mastery, attempts.astype(np.float64))
    # Weakest first; among equals the better-evidenced skill first, then by id for stable output.
    order = np.lexsort((evidence.skill_ids, -attempts, mastery))
    if limit is not None:
        order = order[:limit]
    when, ranked_attempts = evidence.last_answered_at, attempts[order]
    return Weaknesses(
        skill_ids=evidence.skill_ids[order],
        mastery=mastery[order],
        low=low[order],
        high=high[order],
        attempts=ranked_attempts,
        correct=evidence.n_correct[order],
        insufficient_data=ranked_attempts < min_attempts,
        last_practised_at=[when[i] for i in order.tolist()],
    )


def rank_weaknesses(
    model: BestLR, evidence: SkillEvidence, *, min_attempts: int, limit: int | None = None
) -> list[SkillWeakness]:
    """`weakness_columns` as one record per skill."""
    return weakness_columns(model, evidence, min_attempts=min_attempts, limit=limit).rows()


@dataclass(frozen=True, slots=True)
class RecommendationPolicy:
    """How recommendations are chosen: exercises whose predicted success is within
    `tolerance` of `target` (on target), drawn from the `skills` weakest skills, and from up to
    `max_skills` of them while fewer than `limit` of the candidates are on target. An exercise
    the model was trained on fewer than `min_exercise_attempts` answers to is never on target:
    its weight is mostly the shrinkage towards its skill's, and its prediction is a guess."""

    target: float = 0.7
    tolerance: float = 0.05
    skills: int = 3
    max_skills: int = 10
    limit: int = 5
    min_exercise_attempts: int = 20
    # Skills the learner has not practised yet that the widening may reach, when even
    # `max_skills` practised ones hold fewer than `limit` exercises on target (0: never).
    new_skills: int = 3


@dataclass(frozen=True, slots=True)
class Candidates:
    """Exercises a recommendation chooses from: their skill, predicted success, whether that
    prediction rests on enough training answers, and the skill's mastery, in the skills'
    weakness order."""

    exercise_ids: IntArray
    skill_ids: IntArray
    success: FloatArray
    skill_mastery: FloatArray
    trusted: BoolArray
    # True: the exercise's skill is one the learner has not practised yet (None: none is).
    new_skill: BoolArray | None = None

    def __len__(self) -> int:
        return len(self.exercise_ids)

    def is_new(self) -> BoolArray:
        if self.new_skill is None:
            return np.zeros(len(self.exercise_ids), dtype=np.bool_)
        return self.new_skill


ExercisesOf = Callable[[IntArray], tuple[IntArray, IntArray]]


def weakest_skills(model: BestLR, evidence: SkillEvidence) -> tuple[IntArray, FloatArray, IntArray]:
    """Every practised skill, weakest first, with its mastery and its row in the evidence; for
    a learner with no history yet, every skill the model knows (the target then picks the
    exercises), and no rows."""
    if len(evidence) == 0:
        skills = model.skill_ids
        zeros = np.zeros(len(skills))
        mastery = model.skill_mastery(skills, zeros, zeros, total_correct=0, total_incorrect=0)
        order = np.lexsort((skills, mastery))
        return skills[order], mastery[order], np.zeros(0, dtype=np.int64)
    total_c, total_i = evidence.totals
    mastery = model.skill_mastery(
        evidence.skill_ids,
        evidence.n_correct,
        evidence.n_incorrect,
        total_correct=total_c,
        total_incorrect=total_i,
        **_residual_kwargs(evidence),
    )
    order = np.lexsort((evidence.skill_ids, mastery))
    return evidence.skill_ids[order], mastery[order], order


def candidates(
    model: BestLR, evidence: SkillEvidence, exercises_of: ExercisesOf, policy: RecommendationPolicy
) -> Candidates:
    """The exercises of the weakest `policy.skills` skills, widened skill by skill (weakest
    next, at most `policy.max_skills`) until `policy.limit` of them are predicted on target:
    a weak skill whose exercises are all far too hard or too easy for this learner does not
    fill the list with exercises nobody should be given. A learner with no history draws
    from every skill."""
    skills, mastery, ev_order = weakest_skills(model, evidence)
    new_learner = len(evidence) == 0
    if not new_learner:
        skills = skills[: max(policy.skills, policy.max_skills)]
        mastery = mastery[: len(skills)]
    ids, skill_ids = exercises_of(skills)
    if len(ids) == 0:
        return Candidates(ids, skill_ids, np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.bool_))
    rank = _positions(skills, skill_ids)  # the candidate's skill's place, weakest first
    e_rows = model.exercise_rows(ids)
    trusted = _trusted(model, ids, e_rows, policy)
    # One call over every skill it may widen to: the call's fixed cost dominates, so this is
    # cheaper than predicting the weakest skills first and the rest only when they fall short.
    if new_learner:
        success = model.exercise_success(
            ids, skill_ids, 0.0, 0.0, total_correct=0, total_incorrect=0, rows=e_rows
        )
        return Candidates(ids, skill_ids, success, mastery[rank], trusted)
    rows = ev_order[rank]  # every candidate's skill is a practised one: its evidence row
    total_c, total_i = evidence.totals
    success = model.exercise_success(
        ids,
        skill_ids,
        evidence.n_correct[rows],
        evidence.n_incorrect[rows],
        total_correct=total_c,
        total_incorrect=total_i,
        rows=e_rows,
        **_residual_kwargs(evidence, rows),
    )
    on_target = (np.abs(success - policy.target) <= policy.tolerance) & trusted
    enough = np.cumsum(np.bincount(rank[on_target], minlength=len(skills))) >= policy.limit
    enough[: policy.skills - 1] = False
    take = int(np.argmax(enough)) + 1 if enough.any() else len(skills)
    keep = rank < take
    pool = Candidates(ids[keep], skill_ids[keep], success[keep], mastery[rank[keep]], trusted[keep])
    if policy.new_skills <= 0 or np.count_nonzero(on_target[keep]) >= policy.limit:
        return pool
    return _with_new_skills(model, evidence, exercises_of, policy, pool)


def _trusted(
    model: BestLR, ids: IntArray, e_rows: IntArray, policy: RecommendationPolicy
) -> BoolArray:
    """Whether each exercise had enough training answers for its prediction to count."""
    attempts = model.exercise_attempts_of(ids, rows=e_rows)
    if attempts is None:  # a model stored before training counts were kept trusts them all
        return np.ones(len(ids), dtype=np.bool_)
    out: BoolArray = attempts >= policy.min_exercise_attempts
    return out


def _with_new_skills(
    model: BestLR,
    evidence: SkillEvidence,
    exercises_of: ExercisesOf,
    policy: RecommendationPolicy,
    pool: Candidates,
) -> Candidates:
    """`pool` (every practised skill it may widen to, still short of on-target exercises)
    plus the exercises of the `policy.new_skills` skills the learner has not practised whose
    predicted mastery is nearest the target: a learner who has outgrown every exercise of
    their own skills is offered the next skill at the right level, not exercises far too
    easy. Their evidence is none on the skill and the learner's overall record, which is
    what the model saw on every first answer to a skill in training."""
    fresh = np.setdiff1d(model.skill_ids, evidence.skill_ids)
    if len(fresh) == 0:
        return pool
    total_c, total_i = evidence.totals
    residual = _residual_kwargs(evidence)
    if residual:
        residual["skill_residual"] = residual["skill_information"] = 0.0
    mastery = model.skill_mastery(
        fresh, 0.0, 0.0, total_correct=total_c, total_incorrect=total_i, **residual
    )
    nearest = np.lexsort((fresh, np.abs(mastery - policy.target)))[: policy.new_skills]
    skills, mastery = fresh[nearest], mastery[nearest]
    ids, skill_ids = exercises_of(skills)
    if len(ids) == 0:
        return pool
    e_rows = model.exercise_rows(ids)
    trusted = _trusted(model, ids, e_rows, policy)
    success = model.exercise_success(
        ids, skill_ids, 0.0, 0.0, total_correct=total_c, total_incorrect=total_i,
        rows=e_rows, **residual,
    )  # fmt: skip
    new = np.concatenate([np.zeros(len(pool), dtype=np.bool_), np.ones(len(ids), dtype=np.bool_)])
    return Candidates(
        np.concatenate([pool.exercise_ids, ids]),
        np.concatenate([pool.skill_ids, skill_ids]),
        np.concatenate([pool.success, success]),
        np.concatenate([pool.skill_mastery, mastery[_positions(skills, skill_ids)]]),
        np.concatenate([pool.trusted, trusted]),
        new,
    )


def recommend(
    pool: Candidates, history: ExerciseHistory, policy: RecommendationPolicy
) -> list[Recommendation]:
    """On-target exercises first: unseen ones, then the least recently seen, each closest to
    the target (hard enough to teach, easy enough to keep going). Then, if the list is not
    full, the rest by distance to the target."""
    if len(pool) == 0:
        return []
    seen_idx = _positions(history.exercise_ids, pool.exercise_ids)
    # A sentinel 0 after the real counts, so unseen exercises (-1) index it without a guard.
    seen_count = np.append(history.n_attempts, 0)[seen_idx]
    distance = np.abs(pool.success - policy.target)
    off = (distance > policy.tolerance) | ~pool.trusted
    new = pool.is_new()
    # Last-seen time (older = lower; unseen below all) orders only the on-target exercises:
    # converting just those keeps a per-row Python call off the rest of the history.
    stamps = np.full(len(pool), -np.inf)
    dated = np.flatnonzero(~off & (seen_idx >= 0))
    stamps[dated] = [history.last_answered_at[j].timestamp() for j in seen_idx[dated]]
    # A skill the learner practises comes before a new one, on target or not alike.
    top = np.lexsort((pool.exercise_ids, distance, np.where(off, distance, stamps), new, off))
    top = top[: policy.limit]
    seen_at = history.last_answered_at
    # Whole columns to Python values at once: per-element numpy scalars cost more than the
    # rest of this function.
    return [
        Recommendation(
            exercise_id=e, skill_id=s, predicted_success=p, skill_mastery=m, seen_count=n,
            last_seen_at=seen_at[j] if j >= 0 else None, on_target=not o, trusted=t,
            new_skill=f,
        )
        for e, s, p, m, n, j, o, t, f in zip(
            pool.exercise_ids[top].tolist(), pool.skill_ids[top].tolist(),
            pool.success[top].tolist(), pool.skill_mastery[top].tolist(),
            seen_count[top].tolist(), seen_idx[top].tolist(), off[top].tolist(),
            pool.trusted[top].tolist(), new[top].tolist(), strict=True,
        )
    ]  # fmt: skip


def _positions(keys: IntArray, ids: IntArray) -> IntArray:
    """Index of each id in keys (unsorted, unique), or -1 where absent; vectorized, since a
    request looks up every candidate exercise."""
    if len(keys) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], ids), len(keys) - 1)
    out: IntArray = np.where(keys[order][pos] == ids, order[pos], -1).astype(np.int64)
    return out
