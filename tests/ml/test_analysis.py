from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml.analysis import (
    ability_interval,
    focus_skills,
    mastery_interval,
    rank_weaknesses,
    recommend,
)
from skillcoach.ml.model import BestLR
from tests.fixtures_api import exercise_id, hand_model

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def evidence(rows: dict[int, tuple[int, int]]) -> SkillEvidence:
    skills = sorted(rows)
    return SkillEvidence(
        skill_ids=np.array(skills, dtype=np.int64),
        n_correct=np.array([rows[s][0] for s in skills], dtype=np.int64),
        n_incorrect=np.array([rows[s][1] for s in skills], dtype=np.int64),
        last_answered_at=[T0] * len(skills),
    )


def test_interval_narrows_with_evidence_and_contains_estimate() -> None:
    p = np.full(4, 0.6)
    low, high = mastery_interval(p, np.array([0.0, 5.0, 50.0, 500.0]))
    widths = high - low
    assert np.all(np.diff(widths) < 0)
    assert np.all((low < p) & (p < high))
    assert widths[-1] < 0.1 < widths[0]


def test_interval_stays_inside_unit_range_at_extremes() -> None:
    low, high = mastery_interval(np.array([0.0, 1.0, 1e-9]), np.array([3.0, 3.0, 0.0]))
    assert np.all((low >= 0) & (high <= 1) & (low <= high))


def test_ranking_orders_by_mastery_and_flags_thin_evidence() -> None:
    ranked = rank_weaknesses(
        hand_model(), evidence({1: (3, 3), 2: (1, 1), 3: (6, 0)}), min_attempts=5
    )
    assert [w.skill_id for w in ranked] == [1, 2, 3]
    assert [w.insufficient_data for w in ranked] == [False, True, False]
    assert [w.attempts for w in ranked] == [6, 2, 6]


def test_ranking_ties_prefer_better_evidence() -> None:
    model = hand_model()
    ev = evidence({2: (0, 0), 1: (0, 0)})
    assert [w.skill_id for w in rank_weaknesses(model, ev, min_attempts=1)] == [1, 2]


def test_empty_evidence_ranks_nothing() -> None:
    assert rank_weaknesses(hand_model(), SkillEvidence.empty(), min_attempts=5) == []


def test_focus_for_new_learner_is_every_skill() -> None:
    skills, mastery = focus_skills(hand_model(), SkillEvidence.empty(), count=2)
    assert sorted(skills.tolist()) == [1, 2, 3]
    assert np.all((mastery > 0) & (mastery < 1))


def test_recommend_orders_unseen_by_distance_then_seen_by_age() -> None:
    model = hand_model()
    ev = evidence({1: (1, 1)})
    skills, mastery = focus_skills(model, ev, count=1)
    ids = np.array([exercise_id(1, k) for k in range(4)], dtype=np.int64)
    history = ExerciseHistory(
        exercise_ids=np.array([ids[3], ids[0]], dtype=np.int64),
        n_attempts=np.array([1, 2], dtype=np.int64),
        last_answered_at=[T0 + timedelta(days=2), T0 + timedelta(days=1)],
    )
    recs = recommend(
        model,
        ev,
        skills=skills,
        skill_mastery=mastery,
        candidate_ids=ids,
        candidate_skill_ids=np.full(4, 1, dtype=np.int64),
        history=history,
        target=0.5,
        limit=4,
    )
    assert [r.seen_count for r in recs] == [0, 0, 2, 1]
    assert [r.exercise_id for r in recs][2:] == [ids[0], ids[3]]  # older sighting first
    d = [abs(r.predicted_success - 0.5) for r in recs[:2]]
    assert d == sorted(d)
    assert recs[0].skill_mastery == pytest.approx(float(mastery[0]))


def test_recommend_with_no_history_at_all() -> None:
    model = hand_model()
    skills, mastery = focus_skills(model, SkillEvidence.empty(), count=3)
    ids = np.array([exercise_id(s, k) for s in (1, 2, 3) for k in range(4)], dtype=np.int64)
    none = ExerciseHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), [])
    recs = recommend(
        model,
        SkillEvidence.empty(),
        skills=skills,
        skill_mastery=mastery,
        candidate_ids=ids,
        candidate_skill_ids=ids // 10,
        history=none,
        target=0.7,
        limit=5,
    )
    assert len(recs) == 5
    assert all(r.seen_count == 0 and r.last_seen_at is None for r in recs)
    d = [abs(r.predicted_success - 0.7) for r in recs]
    assert d == sorted(d)


def _ability_model() -> BestLR:
    base = hand_model()
    return BestLR.from_coefficients(
        intercept=base.intercept, skill_ids=base.skill_ids, skill_weights=base.skill_weights,
        exercise_ids=base.exercise_ids, exercise_skill_ids=base.exercise_skill_ids,
        exercise_weights=base.exercise_weights, count_weights=base.count_weights,
        ability_weights=[1.0, 0.3],
    )  # fmt: skip


def _with_residuals(ev: SkillEvidence, residual: list[float], info: list[float]) -> SkillEvidence:
    return dataclasses.replace(ev, sum_residual=np.array(residual), sum_information=np.array(info))


def test_misses_on_easy_items_rank_weaker_than_misses_on_hard_ones() -> None:
    model = _ability_model()
    # Skills 1 and 2 have the same counts; 1's misses were on easy items (expected success
    # 0.9), 2's on hard ones (0.2). Against the counts-only estimate, they move apart.
    counts = evidence({1: (2, 3), 2: (2, 3)})
    ev = _with_residuals(counts, [2 - 5 * 0.9, 2 - 5 * 0.2], [5 * 0.09, 5 * 0.16])
    ranked = {w.skill_id: w for w in rank_weaknesses(model, ev, min_attempts=1)}
    plain = {w.skill_id: w for w in rank_weaknesses(model, counts, min_attempts=1)}

    def shift(skill: int) -> float:
        def logit(p: float) -> float:
            return float(np.log(p / (1 - p)))

        return logit(ranked[skill].mastery) - logit(plain[skill].mastery)

    assert shift(1) < 0  # easy misses: weaker than the counts say
    assert shift(1) < shift(2) - 0.5  # and far weaker than the same misses on hard items
    # The interval comes from the ability's own uncertainty: it contains the estimate.
    for w in ranked.values():
        assert w.low < w.mastery < w.high


def test_ability_interval_narrows_with_information() -> None:
    model = _ability_model()
    p = np.full(4, 0.6)
    low, high = ability_interval(model, p, np.array([0.0, 1.0, 10.0, 100.0]))
    widths = high - low
    assert np.all(np.diff(widths) < 0)
    assert np.all((low < p) & (p < high))
    assert widths[-1] < 0.1 < widths[0]


def test_counts_only_model_ignores_residual_evidence() -> None:
    model = hand_model()  # zero ability weights: what a format /1 artifact loads as
    counts = evidence({1: (3, 3), 2: (1, 1), 3: (6, 0)})
    ev = _with_residuals(counts, [-2.0, 0.5, 1.0], [1.5, 0.5, 1.5])
    assert rank_weaknesses(model, ev, min_attempts=5) == rank_weaknesses(
        model, counts, min_attempts=5
    )
