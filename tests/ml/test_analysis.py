from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml.analysis import (
    Candidates,
    RecommendationPolicy,
    ability_interval,
    candidates,
    mastery_interval,
    rank_weaknesses,
    recommend,
    weakest_skills,
    weakness_columns,
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


NO_HISTORY = ExerciseHistory(np.zeros(0, np.int64), np.zeros(0, np.int64), [])


class CatalogCalls:
    """The hand catalog's exercises_of, recording which skills each call asked for (in
    the order asked)."""

    def __init__(self) -> None:
        self.asked: list[list[int]] = []
        model = hand_model()
        self.ids, self.skills = model.exercise_ids, model.exercise_skill_ids

    def __call__(self, skill_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.asked.append(skill_ids.tolist())
        mask = np.isin(self.skills, skill_ids)
        return self.ids[mask], self.skills[mask]


def test_weakest_skills_for_new_learner_is_every_skill_weakest_first() -> None:
    skills, mastery, _ = weakest_skills(hand_model(), SkillEvidence.empty())
    assert skills.tolist() == [1, 2, 3]  # skill weights -1.5, 0, +1.5
    assert np.all(np.diff(mastery) > 0) and np.all((mastery > 0) & (mastery < 1))


def test_weakest_skills_orders_practised_skills_by_mastery() -> None:
    skills, mastery, _ = weakest_skills(hand_model(), evidence({3: (2, 2), 1: (40, 0), 2: (0, 40)}))
    assert np.all(np.diff(mastery) > 0)
    # Forty misses on the medium skill outweigh the hard skill's harder exercises.
    assert skills.tolist() == [2, 1, 3]


def _full_pool(ev: SkillEvidence) -> Candidates:
    return candidates(
        hand_model(), ev, CatalogCalls(), RecommendationPolicy(skills=3, max_skills=3, limit=0)
    )


def _success_of(pool: Candidates, exercise: int) -> float:
    return float(pool.success[pool.exercise_ids.tolist().index(exercise)])


def test_candidates_stop_at_the_weakest_skills_when_they_hold_enough() -> None:
    ev = evidence({1: (1, 1), 2: (1, 1), 3: (1, 1)})
    full = _full_pool(ev)
    target = _success_of(full, exercise_id(1, 3))
    pool = candidates(
        hand_model(), ev, CatalogCalls(), RecommendationPolicy(target=target, skills=1, limit=1)
    )
    assert set(pool.skill_ids.tolist()) == {1}
    assert len(pool) == 4


def test_candidates_widen_to_the_next_weakest_skill_until_enough_are_on_target() -> None:
    ev = evidence({1: (1, 1), 2: (1, 1), 3: (1, 1)})
    full = _full_pool(ev)
    target = _success_of(full, exercise_id(2, 0))
    tolerance = 0.01
    # The setup: no exercise of skill 1 (the weakest) is near the target, one of skill 2 is.
    near = np.abs(full.success - target) <= tolerance
    assert not near[full.skill_ids == 1].any() and near[full.skill_ids == 2].sum() == 1
    policy = RecommendationPolicy(
        target=target, tolerance=tolerance, skills=1, max_skills=3, limit=1
    )
    calls = CatalogCalls()
    pool = candidates(hand_model(), ev, calls, policy)
    assert set(pool.skill_ids.tolist()) == {1, 2}  # skill 3 was not needed
    assert calls.asked == [[1, 2, 3]]  # weakest first, up to max_skills
    # Each candidate keeps its own skill's mastery, as the full pool computed it.
    for ex, m in zip(pool.exercise_ids.tolist(), pool.skill_mastery.tolist(), strict=True):
        assert m == pytest.approx(float(full.skill_mastery[full.exercise_ids.tolist().index(ex)]))
    recs = recommend(pool, NO_HISTORY, dataclasses.replace(policy, limit=3))
    assert recs[0].exercise_id == exercise_id(2, 0) and recs[0].on_target
    assert not any(r.on_target for r in recs[1:])
    d = [abs(r.predicted_success - target) for r in recs[1:]]
    assert d == sorted(d)


def test_candidates_widen_no_further_than_max_skills() -> None:
    ev = evidence({1: (1, 1), 2: (1, 1), 3: (1, 1)})
    policy = RecommendationPolicy(target=0.999, tolerance=0.0, skills=1, max_skills=2, limit=5)
    pool = candidates(hand_model(), ev, CatalogCalls(), policy)
    assert set(pool.skill_ids.tolist()) == {1, 2}
    assert recommend(pool, NO_HISTORY, policy)[0].on_target is False


def test_candidates_for_new_learner_draw_from_every_skill() -> None:
    policy = RecommendationPolicy(skills=1, max_skills=1, limit=1)
    pool = candidates(hand_model(), SkillEvidence.empty(), CatalogCalls(), policy)
    assert set(pool.skill_ids.tolist()) == {1, 2, 3}
    assert len(pool) == 12


def test_recommend_orders_on_target_unseen_then_seen_by_age_then_the_rest_by_distance() -> None:
    ids = np.array([exercise_id(1, k) for k in range(7)], dtype=np.int64)
    pool = Candidates(
        exercise_ids=ids,
        skill_ids=np.full(7, 1, dtype=np.int64),
        success=np.array([0.71, 0.68, 0.72, 0.95, 0.5, 0.8, 0.7]),
        skill_mastery=np.full(7, 0.4),
        trusted=np.array([True] * 6 + [False]),
    )
    history = ExerciseHistory(
        exercise_ids=np.array([ids[0], ids[2], ids[5]], dtype=np.int64),
        n_attempts=np.array([1, 2, 1], dtype=np.int64),
        last_answered_at=[T0 + timedelta(days=2), T0 + timedelta(days=1), T0],
    )
    recs = recommend(pool, history, RecommendationPolicy(target=0.7, tolerance=0.05, limit=7))
    # On target: 1 (unseen), then 2 (seen longer ago) and 0; off target: 6 (exactly at the
    # target, but its prediction is not trusted), 5 (0.10 away, even though seen), 4 (0.20),
    # 3 (0.25).
    assert [r.exercise_id for r in recs] == [ids[i] for i in (1, 2, 0, 6, 5, 4, 3)]
    assert [r.on_target for r in recs] == [True, True, True, False, False, False, False]
    assert [r.trusted for r in recs] == [True, True, True, False, True, True, True]
    assert [r.seen_count for r in recs] == [0, 2, 1, 0, 1, 0, 0]
    assert recs[1].last_seen_at == T0 + timedelta(days=1)
    assert recs[0].skill_mastery == pytest.approx(0.4)


def _with_attempts(model: BestLR, attempts: dict[int, int], default: int = 100) -> BestLR:
    return BestLR.from_artifact(
        BestLR.from_coefficients(
            intercept=model.intercept, skill_ids=model.skill_ids,
            skill_weights=model.skill_weights, exercise_ids=model.exercise_ids,
            exercise_skill_ids=model.exercise_skill_ids, exercise_weights=model.exercise_weights,
            count_weights=model.count_weights,
            exercise_attempts=[attempts.get(int(e), default) for e in model.exercise_ids],
        ).to_artifact()
    )  # fmt: skip


def test_an_exercise_with_few_training_answers_is_never_on_target() -> None:
    ev = evidence({1: (1, 1), 2: (1, 1), 3: (1, 1)})
    full = _full_pool(ev)
    target = _success_of(full, exercise_id(1, 2))
    policy = RecommendationPolicy(
        target=target, tolerance=0.01, skills=1, max_skills=3, limit=1, min_exercise_attempts=20
    )
    # Trusted, the weakest skill holds the one on-target exercise; with 19 training answers
    # to it, it is not, so the candidates widen.
    trusted = candidates(_with_attempts(hand_model(), {}), ev, CatalogCalls(), policy)
    assert set(trusted.skill_ids.tolist()) == {1} and trusted.trusted.all()
    thin = _with_attempts(hand_model(), {exercise_id(1, 2): 19})
    pool = candidates(thin, ev, CatalogCalls(), policy)
    assert len(set(pool.skill_ids.tolist())) > 1
    assert pool.trusted.tolist().count(False) == 1
    recs = recommend(pool, NO_HISTORY, dataclasses.replace(policy, limit=len(pool)))
    flagged = [r for r in recs if r.exercise_id == exercise_id(1, 2)]
    assert len(flagged) == 1 and not flagged[0].trusted and not flagged[0].on_target
    # min_exercise_attempts 0 trusts every exercise the model knows.
    loose = candidates(
        thin, ev, CatalogCalls(), dataclasses.replace(policy, min_exercise_attempts=0)
    )
    assert loose.trusted.all()


def test_recommend_with_no_history_at_all() -> None:
    policy = RecommendationPolicy(target=0.7, limit=5)
    pool = candidates(hand_model(), SkillEvidence.empty(), CatalogCalls(), policy)
    recs = recommend(pool, NO_HISTORY, policy)
    assert len(recs) == 5
    assert all(r.seen_count == 0 and r.last_seen_at is None for r in recs)
    on = [r for r in recs if r.on_target]
    assert [r.on_target for r in recs] == [True] * len(on) + [False] * (5 - len(on))
    d = [abs(r.predicted_success - 0.7) for r in recs[len(on) :]]
    assert d == sorted(d)


def test_recommend_from_no_candidates_is_empty() -> None:
    policy = RecommendationPolicy()
    pool = candidates(hand_model(), evidence({9: (1, 1)}), CatalogCalls(), policy)
    assert len(pool) == 0
    assert recommend(pool, NO_HISTORY, policy) == []


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


def test_candidates_predict_each_exercise_from_its_own_skills_evidence() -> None:
    model = _ability_model()
    counts = evidence({3: (4, 1), 1: (2, 3), 2: (0, 6)})
    ev = _with_residuals(counts, [0.8, -1.2, -0.4], [1.1, 1.4, 0.9])
    pool = candidates(model, ev, CatalogCalls(), RecommendationPolicy(max_skills=3, limit=0))
    assert len(pool) == 12
    row = {int(s): k for k, s in enumerate(ev.skill_ids)}
    for ex, skill, p in zip(pool.exercise_ids, pool.skill_ids, pool.success, strict=True):
        k = row[int(skill)]
        expected = model.exercise_success(
            [ex], [skill], [ev.n_correct[k]], [ev.n_incorrect[k]],
            total_correct=4 + 2 + 0, total_incorrect=1 + 3 + 6,
            skill_residual=[ev.sum_residual[k]], skill_information=[ev.sum_information[k]],
            total_residual=float(ev.sum_residual.sum()),
            total_information=float(ev.sum_information.sum()),
        )  # fmt: skip
        assert p == pytest.approx(float(expected[0]), abs=1e-12)


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


def test_interval_from_the_logit_matches_the_one_recovered_from_mastery() -> None:
    model = _ability_model()
    logit = np.array([-3.0, -0.4, 0.0, 1.7, 4.0])
    mastery = 1 / (1 + np.exp(-logit))
    information = np.array([0.0, 0.5, 2.0, 8.0, 30.0])
    recovered = ability_interval(model, mastery, information)
    given = ability_interval(model, mastery, information, logit=logit)
    np.testing.assert_allclose(given, recovered, rtol=1e-9)


def test_columns_and_records_agree_and_the_limit_keeps_the_weakest() -> None:
    model = _ability_model()
    counts = evidence({1: (3, 3), 2: (1, 1), 3: (6, 0), 4: (0, 7)})
    ev = _with_residuals(counts, [-1.0, 0.2, 1.0, -2.5], [1.5, 0.5, 1.5, 1.8])
    columns = weakness_columns(model, ev, min_attempts=5, limit=2)
    everything = rank_weaknesses(model, ev, min_attempts=5)
    assert len(columns) == 2
    assert columns.rows() == everything[:2]
    assert [w.mastery for w in everything] == sorted(w.mastery for w in everything)
    assert isinstance(columns.rows()[0].skill_id, int)  # Python values, not numpy scalars


def _new_skill_policy(target: float, **kw: float) -> RecommendationPolicy:
    base = RecommendationPolicy(target=target, tolerance=0.01, skills=1, max_skills=3, limit=1,
                                new_skills=2)  # fmt: skip
    return dataclasses.replace(base, **kw)


def _everything(ev: SkillEvidence) -> Candidates:
    """Every candidate a learner with this evidence may get, new skills included."""
    policy = RecommendationPolicy(target=2.0, tolerance=0.0, skills=3, max_skills=3, limit=99,
                                  new_skills=3)  # fmt: skip
    return candidates(hand_model(), ev, CatalogCalls(), policy)


def test_candidates_reach_a_new_skill_when_the_practised_ones_fall_short() -> None:
    ev = evidence({1: (1, 1)})  # skills 2 and 3 never practised
    every = _everything(ev)
    assert set(every.skill_ids[every.is_new()].tolist()) == {2, 3}
    assert not every.is_new()[every.skill_ids == 1].any()
    target = _success_of(every, exercise_id(2, 1))
    near = np.abs(every.success - target) <= 0.01
    # The setup: skill 1 (practised) holds nothing near the target, skill 2 (new) does.
    assert not near[every.skill_ids == 1].any() and near[every.skill_ids == 2].any()
    calls = CatalogCalls()
    pool = candidates(hand_model(), ev, calls, _new_skill_policy(target))
    assert calls.asked[0] == [1]  # the practised skills first, then the new ones
    assert set(pool.skill_ids[pool.is_new()].tolist()) <= {2, 3}
    recs = recommend(pool, NO_HISTORY, _new_skill_policy(target, limit=len(pool)))
    assert near[every.exercise_ids.tolist().index(recs[0].exercise_id)]
    assert recs[0].new_skill and recs[0].on_target and recs[0].skill_id == 2
    # The practised skill's exercises are still offered, after the on-target new ones.
    rest = [r for r in recs if not r.on_target]
    assert any(r.skill_id == 1 and not r.new_skill for r in rest)
    # A new skill's exercise is predicted from no evidence on it: as the full pool did.
    assert recs[0].predicted_success == pytest.approx(_success_of(every, recs[0].exercise_id))


def test_new_skills_are_not_reached_while_the_practised_ones_hold_enough() -> None:
    ev = evidence({1: (1, 1)})
    target = _success_of(_everything(ev), exercise_id(1, 2))
    calls = CatalogCalls()
    pool = candidates(hand_model(), ev, calls, _new_skill_policy(target))
    assert set(pool.skill_ids.tolist()) == {1} and not pool.is_new().any()
    assert calls.asked == [[1]]


def test_new_skills_zero_never_reaches_an_unpractised_skill() -> None:
    ev = evidence({1: (1, 1)})
    target = _success_of(_everything(ev), exercise_id(2, 1))
    pool = candidates(hand_model(), ev, CatalogCalls(), _new_skill_policy(target, new_skills=0))
    assert set(pool.skill_ids.tolist()) == {1}
    recs = recommend(pool, NO_HISTORY, _new_skill_policy(target, new_skills=0))
    assert not any(r.new_skill or r.on_target for r in recs)


def test_new_skills_nearest_the_target_are_reached_first() -> None:
    ev = evidence({1: (1, 1)})
    every = _everything(ev)
    # Skill 3's exercises sit far above skill 2's (skill weights -1.5, 0, +1.5): a target
    # at one of skill 3's mastery reaches it alone when one new skill is allowed.
    mastery_3 = float(every.skill_mastery[every.skill_ids == 3][0])
    mastery_2 = float(every.skill_mastery[every.skill_ids == 2][0])
    assert mastery_3 > mastery_2
    pool = candidates(hand_model(), ev, CatalogCalls(),
                      _new_skill_policy(mastery_3, tolerance=0.0, new_skills=1))  # fmt: skip
    assert set(pool.skill_ids[pool.is_new()].tolist()) == {3}


def test_a_practised_skill_comes_before_a_new_one_when_both_are_on_target() -> None:
    ev = evidence({1: (1, 1)})
    policy = RecommendationPolicy(target=0.5, tolerance=0.5, skills=1, max_skills=1, limit=99,
                                  new_skills=2)  # fmt: skip
    # Everything is on target and the practised skill holds only 4: the new ones join.
    pool = candidates(hand_model(), ev, CatalogCalls(), policy)
    recs = recommend(pool, NO_HISTORY, policy)
    assert len(recs) == 12 and all(r.on_target for r in recs)
    assert [r.new_skill for r in recs] == [False] * 4 + [True] * 8
    assert {r.skill_id for r in recs[:4]} == {1}


def test_a_new_skills_prediction_follows_the_learners_overall_record() -> None:
    model = _ability_model()
    policy = RecommendationPolicy(target=2.0, tolerance=0.0, skills=1, max_skills=1, limit=99,
                                  new_skills=2)  # fmt: skip

    def new_success(residual: float) -> np.ndarray:
        ev = _with_residuals(evidence({1: (5, 5)}), [residual], [2.5])
        pool = candidates(model, ev, CatalogCalls(), policy)
        assert set(pool.skill_ids[pool.is_new()].tolist()) == {2, 3}
        return pool.success[pool.is_new()]

    # Answers on skill 1 better than its exercises' difficulty predict: a stronger learner,
    # so every exercise of the skills they have not met looks easier for them.
    assert np.all(new_success(2.0) > new_success(-2.0))
