"""The simulator: pure, seeded, well-formed, and its learners actually learn."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from skillcoach.ml import simulator
from skillcoach.ml.simulator import (
    GUESS,
    SLIP,
    LearnerChunk,
    SimulationParams,
    build_catalog,
    learners_per_chunk,
    simulate_learners,
    success_probability,
)

PARAMS = SimulationParams(
    learners=300, skills=15, exercises_per_skill=6, attempts_per_learner=80, seed=7
)


def _run(params: SimulationParams) -> list[LearnerChunk]:
    return list(simulate_learners(params, build_catalog(params)))


def _cat(chunks: list[LearnerChunk], field: str) -> np.ndarray:
    return np.concatenate([getattr(c, field) for c in chunks])


@pytest.fixture(scope="module")
def chunks() -> list[LearnerChunk]:
    # Small chunks so the multi-chunk path is what gets checked.
    original = simulator._CHUNK_ATTEMPTS
    simulator._CHUNK_ATTEMPTS = 80 * 70
    try:
        out = _run(PARAMS)
    finally:
        simulator._CHUNK_ATTEMPTS = original
    assert len(out) == 5
    return out


def test_same_seed_same_world_other_seed_other_world() -> None:
    a, b = _run(PARAMS), _run(PARAMS)
    for ca, cb in zip(a, b, strict=True):
        for field in dataclasses.fields(LearnerChunk):
            np.testing.assert_array_equal(getattr(ca, field.name), getattr(cb, field.name))
    cat_a, cat_b = build_catalog(PARAMS), build_catalog(PARAMS)
    np.testing.assert_array_equal(cat_a.exercise_difficulty, cat_b.exercise_difficulty)
    other = _run(dataclasses.replace(PARAMS, seed=8))
    assert not np.array_equal(_cat(a, "attempt_correct"), _cat(other, "attempt_correct"))


def test_ids_and_shapes(chunks: list[LearnerChunk]) -> None:
    catalog = build_catalog(PARAMS)
    n, steps = PARAMS.learners, PARAMS.attempts_per_learner
    np.testing.assert_array_equal(catalog.skill_ids, np.arange(1, 16))
    np.testing.assert_array_equal(catalog.exercise_ids, np.arange(1, 15 * 6 + 1))
    np.testing.assert_array_equal(catalog.exercise_skill_ids, np.repeat(np.arange(1, 16), 6))
    assert catalog.skill_popularity.sum() == pytest.approx(1.0)

    np.testing.assert_array_equal(_cat(chunks, "learner_ids"), np.arange(1, n + 1))
    learners = _cat(chunks, "attempt_learner_ids")
    np.testing.assert_array_equal(learners, np.repeat(np.arange(1, n + 1), steps))
    exercises = _cat(chunks, "attempt_exercise_ids")
    skills = _cat(chunks, "attempt_skill_ids")
    for field in ("attempt_correct", "attempt_answered_at_us", "attempt_p_correct"):
        assert _cat(chunks, field).shape == (n * steps,)
    assert exercises.min() >= 1
    assert exercises.max() <= PARAMS.n_exercises
    np.testing.assert_array_equal(catalog.exercise_skill_ids[exercises - 1], skills)
    # Time only moves forward within a learner, and histories span weeks.
    when = _cat(chunks, "attempt_answered_at_us").reshape(n, steps)
    assert (np.diff(when, axis=1) > 0).all()
    span_days = (when[:, -1] - when[:, 0]) / 86_400e6
    assert np.median(span_days) > 14


def test_curriculum_is_a_skewed_subset(chunks: list[LearnerChunk]) -> None:
    learners = _cat(chunks, "attempt_learner_ids")
    skills = _cat(chunks, "attempt_skill_ids")
    per_learner = [len(np.unique(skills[learners == lid])) for lid in range(1, 301)]
    assert max(per_learner) <= simulator.SKILLS_PER_LEARNER[1]
    assert np.mean(per_learner) > 3
    uptake = np.bincount(skills, minlength=16)[1:]
    assert uptake.max() > 3 * uptake.min()


def test_probabilities_stay_between_guess_and_one_minus_slip(chunks: list[LearnerChunk]) -> None:
    p = _cat(chunks, "attempt_p_correct")
    assert p.min() >= GUESS
    assert p.max() <= 1 - SLIP
    mastery = _cat(chunks, "mastery_final")
    assert mastery.min() >= GUESS
    assert mastery.max() <= 1 - SLIP
    # Answers are drawn from p: the observed rate matches the mean probability.
    correct = _cat(chunks, "attempt_correct")
    assert abs(correct.mean() - p.mean()) < 0.01


def test_mastery_rows_are_exactly_the_practised_skills(chunks: list[LearnerChunk]) -> None:
    practised = set(
        zip(
            _cat(chunks, "attempt_learner_ids").tolist(),
            _cat(chunks, "attempt_skill_ids").tolist(),
            strict=True,
        )
    )
    rows = list(
        zip(
            _cat(chunks, "mastery_learner_ids").tolist(),
            _cat(chunks, "mastery_skill_ids").tolist(),
            strict=True,
        )
    )
    assert len(rows) == len(set(rows))
    assert set(rows) == practised


def test_practice_raises_mastery(chunks: list[LearnerChunk]) -> None:
    catalog = build_catalog(PARAMS)
    theta0, theta1 = _cat(chunks, "theta_initial"), _cat(chunks, "theta_final")
    assert (theta1 > theta0).all()
    by_skill = catalog.difficulty_by_skill()[_cat(chunks, "mastery_skill_ids") - 1]
    before = success_probability(theta0[:, None], by_skill).mean(axis=1)
    after = _cat(chunks, "mastery_final")
    np.testing.assert_allclose(
        after, success_probability(theta1[:, None], by_skill).mean(axis=1), rtol=1e-12
    )
    assert after.mean() > before.mean() + 0.05
    # The observable trace: a learning curve. Overall accuracy need not rise over time
    # (later skills of the curriculum are harder), but within one learner's skill it does.
    learners = _cat(chunks, "attempt_learner_ids")
    skills = _cat(chunks, "attempt_skill_ids")
    correct = _cat(chunks, "attempt_correct")
    key = learners * 100 + skills
    order = np.lexsort((np.arange(len(key)), key))
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    start = np.flatnonzero(first)[np.cumsum(first) - 1]
    opportunity = np.empty(len(key), dtype=np.int64)
    opportunity[order] = np.arange(len(key)) - start
    practices = np.bincount(np.unique(key, return_inverse=True)[1])
    long_runs = np.isin(key, np.unique(key)[practices >= 8])
    early = correct[long_runs & (opportunity < 2)].mean()
    late = correct[long_runs & (opportunity >= 6) & (opportunity < 8)].mean()
    assert late > early + 0.03


def test_fewer_skills_than_a_curriculum() -> None:
    params = SimulationParams(learners=20, skills=3, exercises_per_skill=2, attempts_per_learner=9)
    out = _run(params)
    assert set(_cat(out, "attempt_skill_ids").tolist()) <= {1, 2, 3}
    assert _cat(out, "attempt_exercise_ids").max() <= 6


def test_chunks_bound_memory() -> None:
    params = SimulationParams(learners=1_000_000, attempts_per_learner=500)
    size = learners_per_chunk(params)
    assert size * params.attempts_per_learner <= simulator._CHUNK_ATTEMPTS
    first = next(simulate_learners(params, build_catalog(params)))
    assert len(first.learner_ids) == size


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learners", 0, "learners must be between"),
        ("skills", 0, "skills must be between"),
        ("exercises_per_skill", 5_000, "exercises_per_skill must be between"),
        ("attempts_per_learner", -1, "attempts_per_learner must be between"),
        ("seed", -3, "seed must be between"),
        ("learners", 2.5, "learners must be an integer"),
        ("skills", True, "skills must be an integer"),
    ],
)
def test_invalid_params_are_rejected(field: str, value: object, message: str) -> None:
    kwargs: dict[str, object] = {
        "learners": 10,
        "skills": 5,
        "exercises_per_skill": 3,
        "attempts_per_learner": 10,
        "seed": 1,
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        SimulationParams(**kwargs)  # type: ignore[arg-type]


# -- variants -------------------------------------------------------------------------------

VARIANT_BASE = SimulationParams(
    learners=400, skills=10, exercises_per_skill=8, attempts_per_learner=60, seed=21
)


def test_spelled_out_defaults_are_the_default_world() -> None:
    explicit = dataclasses.replace(
        PARAMS, guess=GUESS, slip=SLIP, learning_scale=1.0, learning_exponent=-0.5,
        skill_clusters=0, exercise_difficulty_sd=simulator.EXERCISE_DIFFICULTY_SD,
        practice_bias=0.0, practice_bias_sd=0.0,
    )  # fmt: skip
    for a, b in zip(_run(PARAMS), _run(explicit), strict=True):
        for field in dataclasses.fields(LearnerChunk):
            np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))


def test_guess_and_slip_bound_the_probabilities() -> None:
    out = _run(dataclasses.replace(VARIANT_BASE, guess=0.35, slip=0.25))
    p = _cat(out, "attempt_p_correct")
    assert p.min() >= 0.35 and p.max() <= 0.75
    assert p.min() < 0.40 and p.max() > 0.70  # the bounds are reached, not just respected


def _attempted_relative_difficulty(params: SimulationParams) -> float:
    catalog = build_catalog(params)
    out = _run(params)
    ex = _cat(out, "attempt_exercise_ids") - 1
    skill_mean = catalog.difficulty_by_skill().mean(axis=1)
    return float(
        (catalog.exercise_difficulty[ex] - skill_mean[catalog.exercise_skill_ids[ex] - 1]).mean()
    )


def test_practice_bias_picks_easy_or_hard_items() -> None:
    assert _attempted_relative_difficulty(VARIANT_BASE) == pytest.approx(0.0, abs=0.1)
    easy = _attempted_relative_difficulty(dataclasses.replace(VARIANT_BASE, practice_bias=1.5))
    hard = _attempted_relative_difficulty(dataclasses.replace(VARIANT_BASE, practice_bias=-1.5))
    assert easy < -0.4 and hard > 0.4


def _theta0_by_learner_skill(params: SimulationParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = _run(params)
    return (
        _cat(out, "mastery_learner_ids"),
        _cat(out, "mastery_skill_ids"),
        _cat(out, "theta_initial"),
    )


def test_clusters_correlate_a_learners_skills() -> None:
    def within_cluster_spread(params: SimulationParams) -> float:
        learners, _skills, theta = _theta0_by_learner_skill(params)
        # Deviation from the learner's mean over their skills, by (learner, cluster): a shared
        # cluster shift widens the spread between clusters of the same learner.
        learner_mean = np.bincount(learners, theta) / np.maximum(np.bincount(learners), 1)
        return float(np.std(theta - learner_mean[learners]))

    plain = within_cluster_spread(VARIANT_BASE)
    clustered = within_cluster_spread(
        dataclasses.replace(VARIANT_BASE, skill_clusters=3, cluster_sd=1.0)
    )
    assert clustered > plain * 1.5


def test_learning_exponent_and_scale_change_the_gains() -> None:
    def gain(params: SimulationParams) -> float:
        out = _run(params)
        return float((_cat(out, "theta_final") - _cat(out, "theta_initial")).mean())

    base = gain(VARIANT_BASE)
    assert gain(dataclasses.replace(VARIANT_BASE, learning_scale=0.0)) == 0.0
    assert gain(dataclasses.replace(VARIANT_BASE, learning_scale=2.0)) > 1.8 * base
    assert gain(dataclasses.replace(VARIANT_BASE, learning_exponent=0.3)) > 2 * base


def test_exercise_difficulty_spread() -> None:
    wide = build_catalog(dataclasses.replace(VARIANT_BASE, exercise_difficulty_sd=2.0))
    narrow = build_catalog(dataclasses.replace(VARIANT_BASE, exercise_difficulty_sd=0.2))
    assert (
        wide.difficulty_by_skill().std(axis=1).mean()
        > 5 * narrow.difficulty_by_skill().std(axis=1).mean()
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("guess", 0.7, "guess must be between"),
        ("slip", float("nan"), "slip must be between"),
        ("practice_bias", "x", "practice_bias must be a number"),
        ("skill_clusters", -1, "skill_clusters must be between"),
        ("guess", 0.5, "guess \\+ slip must be below 1"),
    ],
)
def test_invalid_variant_params_are_rejected(field: str, value: object, message: str) -> None:
    kwargs: dict[str, object] = {"learners": 10, field: value}
    if field == "guess" and value == 0.5:
        kwargs["slip"] = 0.5
    with pytest.raises(ValueError, match=message):
        SimulationParams(**kwargs)  # type: ignore[arg-type]


def test_ability_is_the_final_theta_where_practised_and_a_start_elsewhere(
    chunks: list[LearnerChunk],
) -> None:
    ability = np.concatenate([c.ability for c in chunks])
    assert ability.shape == (PARAMS.learners, PARAMS.skills)
    learners, skills = _cat(chunks, "mastery_learner_ids"), _cat(chunks, "mastery_skill_ids")
    np.testing.assert_array_equal(ability[learners - 1, skills - 1], _cat(chunks, "theta_final"))
    # A skill never practised keeps a starting ability: general ability plus a deviation,
    # so it follows the learner's starting ability on their own skills.
    unpractised = np.ones_like(ability, dtype=bool)
    unpractised[learners - 1, skills - 1] = False
    start = np.bincount(learners - 1, _cat(chunks, "theta_initial")) / np.bincount(learners - 1)
    elsewhere = np.where(unpractised, ability, 0.0).sum(axis=1) / unpractised.sum(axis=1)
    assert np.corrcoef(start, elsewhere)[0, 1] > 0.8
    spread = np.std((ability - elsewhere[:, None])[unpractised])
    assert 0.3 < spread < 0.5  # the skill deviation's sd, 0.4


def _unpractised_pair_correlation(params: SimulationParams, a: int, b: int) -> float:
    """Across learners who practised neither skill index a nor b: correlation of the two
    abilities, each against the learner's mean ability."""
    chunks = _run(params)
    ability = np.concatenate([c.ability for c in chunks])
    practised = np.zeros_like(ability, dtype=bool)
    practised[_cat(chunks, "mastery_learner_ids") - 1, _cat(chunks, "mastery_skill_ids") - 1] = 1
    rows = ~practised[:, a] & ~practised[:, b]
    assert rows.sum() > 200
    centred = ability[rows] - ability[rows].mean(axis=1, keepdims=True)
    return float(np.corrcoef(centred[:, a], centred[:, b])[0, 1])


def test_ability_on_unpractised_skills_shares_the_cluster_shift() -> None:
    params = dataclasses.replace(VARIANT_BASE, skills=40, skill_clusters=3, cluster_sd=1.0)
    # Skills 0 and 3 share a cluster (index % 3), skills 0 and 1 do not.
    same = _unpractised_pair_correlation(params, 0, 3)
    apart = _unpractised_pair_correlation(params, 0, 1)
    plain = _unpractised_pair_correlation(dataclasses.replace(params, skill_clusters=0), 0, 3)
    assert same > 0.6 and max(apart, plain) < 0.2
