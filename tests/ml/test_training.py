"""Training from PostgreSQL: features without leakage, a stored model that serves as fitted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, text

from skillcoach.data.database import create_sync_engine
from skillcoach.ml.features import AttemptLog, prior_counts
from skillcoach.ml.model import COUNT_FEATURES, BestLR
from skillcoach.ml.quality import expected_calibration_error, precision_at_k
from skillcoach.ml.seeding import seed_database
from skillcoach.ml.simulator import SimulationParams
from skillcoach.ml.training import TrainingError, train_and_store
from tests.conftest import drop_database, fresh_database

PARAMS = SimulationParams(
    learners=400, skills=12, exercises_per_skill=8, attempts_per_learner=60, seed=11
)


@pytest.fixture(scope="module")
def seeded() -> Iterator[Engine]:
    """A database of this module's own: seeding needs empty data tables."""
    name, url = fresh_database("skillcoach_train")
    engine = create_sync_engine(url)
    seed_database(engine, PARAMS, progress=False, replace=False)
    yield engine
    engine.dispose()
    drop_database(name)


def test_metrics_are_present_and_sane(seeded: Engine) -> None:
    report = train_and_store(seeded, seed=0, test_fraction=0.25)
    m = report.metrics
    assert m["n_train"] + m["n_test"] == PARAMS.n_attempts
    assert m["n_test_learners"] == 100
    assert m["n_test"] == 100 * PARAMS.attempts_per_learner
    assert m["converged"] is True
    assert m["export_max_abs_diff"] < 1e-9
    assert 0.0 <= m["ece"] < 0.05
    assert 0.3 < m["log_loss"] < 0.69  # better than a coin
    assert m["truth_coverage"] == 1.0
    assert m["auc"] > 0.65
    assert m["auc"] > m["baseline_auc"] + 0.02
    assert m["oracle_auc"] > m["auc"]
    assert m["auc_ratio"] == pytest.approx(m["auc"] / m["oracle_auc"])
    assert m["auc_ratio"] > 0.93
    assert m["n_precision_learners"] > 50
    assert 0.0 <= m["baseline_precision_at_3"] <= 1.0
    assert m["precision_at_3"] > m["baseline_precision_at_3"]
    summary = report.summary()
    assert f"version {report.version}" in summary
    assert "oracle_auc" in summary


def test_stored_model_loads_and_matches_the_schema(seeded: Engine) -> None:
    report = train_and_store(seeded, seed=1, test_fraction=0.2)
    with seeded.connect() as conn:
        row = conn.execute(
            text(
                "SELECT artifact, sha256, metrics, feature_schema, trained_at, promoted"
                " FROM model_registry WHERE version = :v"
            ),
            {"v": report.version},
        ).one()
        n_skills = conn.execute(text("SELECT count(*) FROM skills")).scalar_one()
    model = BestLR.from_artifact(bytes(row.artifact), sha256=row.sha256)
    assert len(model.skill_ids) == n_skills == PARAMS.skills
    assert len(model.exercise_ids) == PARAMS.n_exercises
    assert row.metrics["auc"] == report.metrics["auc"]
    assert row.promoted is False
    assert row.trained_at.tzinfo is not None
    schema = row.feature_schema
    assert schema["count_transform"] == "log1p"
    assert schema["count_features"] == list(COUNT_FEATURES)
    assert schema["n_exercises"] == PARAMS.n_exercises
    assert len(schema["feature_names"]) == PARAMS.skills + PARAMS.n_exercises + 4
    # Success counts help, failures hurt: the signs a knowledge-tracing model must learn.
    assert model.count_weights[0] > 0 > model.count_weights[1]
    assert model.count_weights[2] > 0 > model.count_weights[3]


def test_training_is_reproducible(seeded: Engine) -> None:
    a = train_and_store(seeded, seed=5, test_fraction=0.2)
    b = train_and_store(seeded, seed=5, test_fraction=0.2)
    with seeded.connect() as conn:
        shas = conn.execute(
            text("SELECT sha256 FROM model_registry WHERE version IN (:a, :b)"),
            {"a": a.version, "b": b.version},
        ).all()
    assert a.version != b.version
    assert shas[0].sha256 == shas[1].sha256
    assert a.metrics["auc"] == b.metrics["auc"]


def test_empty_database_is_a_training_error(empty_pg_url: str) -> None:
    engine = create_sync_engine(empty_pg_url)
    try:
        with pytest.raises(TrainingError, match="no attempts"):
            train_and_store(engine, seed=0, test_fraction=0.2)
        with pytest.raises(ValueError, match="test_fraction"):
            train_and_store(engine, seed=0, test_fraction=1.0)
    finally:
        engine.dispose()


def test_attempts_without_ground_truth_still_train(empty_pg_url: str) -> None:
    """Real deployments have no simulator truth: the quality metrics become None."""
    engine = create_sync_engine(empty_pg_url)
    try:
        seed_database(
            engine,
            SimulationParams(learners=60, skills=4, exercises_per_skill=3, attempts_per_learner=20),
            progress=False,
            replace=False,
        )
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE sim_attempt_truth, sim_mastery"))
        report = train_and_store(engine, seed=0, test_fraction=0.3)
    finally:
        engine.dispose()
    assert report.metrics["oracle_auc"] is None
    assert report.metrics["precision_at_3"] is None
    assert report.metrics["auc"] is not None
    assert "oracle_auc" not in report.summary()


def test_prior_counts_see_only_strictly_earlier_attempts() -> None:
    rng = np.random.default_rng(0)
    n = 400
    log = AttemptLog.from_unsorted(
        attempt_ids=rng.permutation(n).astype(np.int64) + 1,
        learner_ids=rng.integers(1, 6, n),
        exercise_ids=rng.integers(1, 10, n),
        skill_ids=rng.integers(1, 4, n),
        correct=rng.random(n) < 0.6,
        answered_at=rng.integers(0, 40, n),  # many ties: the attempt id must break them
    )
    counts = prior_counts(log)
    seen_total: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    seen_skill: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
    order = sorted(
        range(n),
        key=lambda i: (log.learner_ids[i], log.answered_at[i], log.attempt_ids[i]),
    )
    assert order == list(range(n))
    for i in order:
        learner, skill = int(log.learner_ids[i]), int(log.skill_ids[i])
        total, per_skill = seen_total[learner], seen_skill[(learner, skill)]
        assert counts.total_correct[i] == total[0]
        assert counts.total_incorrect[i] == total[1]
        assert counts.skill_correct[i] == per_skill[0]
        assert counts.skill_incorrect[i] == per_skill[1]
        slot = 0 if log.correct[i] else 1
        total[slot] += 1
        per_skill[slot] += 1


def test_quality_measures_on_hand_examples() -> None:
    groups = np.array([1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    items = np.array([1, 2, 3, 4, 1, 2, 3, 4, 1, 2])
    truth = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.2])
    perfect, n = precision_at_k(groups, items, truth, truth, k=3)
    assert (perfect, n) == (1.0, 2)  # group 3 has too few skills to count
    # Ranked backwards, 4 skills: the middle two are still among the lowest three.
    reversed_, _ = precision_at_k(groups, items, truth, -truth, k=3)
    assert reversed_ == pytest.approx(2 / 3)
    one_off, _ = precision_at_k(groups, items, truth, np.where(items == 1, 9.0, truth), k=3)
    assert one_off == pytest.approx((2 / 3 + 1) / 2)
    y = np.array([True, False, True, True])
    p = np.array([0.95, 0.05, 0.55, 0.45])
    # Bins: {0.05: 0 of 1}, {0.45: 1 of 1}, {0.55: 1 of 1}, {0.95: 1 of 1}.
    assert expected_calibration_error(y, p) == pytest.approx((0.05 + 0.55 + 0.45 + 0.05) / 4)


def test_acceptance_quality_at_2000_learners(empty_pg_url: str) -> None:
    """The quality bar at its reference size: 2000 learners x 50 skills x 100 attempts.

    Held-out AUC within 5% of the oracle's, precision@3 of the weakest skills at least 0.05
    above the Laplace baseline's.
    """
    engine = create_sync_engine(empty_pg_url)
    params = SimulationParams(
        learners=2000, skills=50, exercises_per_skill=20, attempts_per_learner=100, seed=42
    )
    seed_database(engine, params, progress=False, replace=False)
    m = train_and_store(engine, seed=0, test_fraction=0.2).metrics
    engine.dispose()
    assert m["auc"] >= 0.95 * m["oracle_auc"], m
    assert m["precision_at_3"] >= m["baseline_precision_at_3"] + 0.05, m
