"""Training from PostgreSQL: features without leakage, a stored model that serves as fitted."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, text

from skillcoach.data.database import create_sync_engine
from skillcoach.ml.features import AttemptLog, prior_counts
from skillcoach.ml.model import ABILITY_FEATURES, COUNT_FEATURES, BestLR
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
    # The training answers behind every exercise's weight: they sum to the training set, and
    # each is at most the exercise's attempts in the database.
    assert model.exercise_attempts is not None
    assert int(model.exercise_attempts.sum()) == report.metrics["n_train"]
    with seeded.connect() as conn:
        per_exercise = dict(
            conn.execute(text("SELECT exercise_id, count(*) FROM attempts GROUP BY 1")).all()
        )
    for e, n in zip(model.exercise_ids.tolist(), model.exercise_attempts.tolist(), strict=True):
        assert n <= per_exercise.get(e, 0)
    assert row.promoted is False
    assert row.trained_at.tzinfo is not None
    schema = row.feature_schema
    assert schema["count_transform"] == "log1p"
    assert schema["count_features"] == list(COUNT_FEATURES)
    assert schema["n_exercises"] == PARAMS.n_exercises
    assert len(schema["feature_names"]) == PARAMS.skills + PARAMS.n_exercises + 4 + 2
    assert schema["ability_features"] == list(ABILITY_FEATURES)
    # Doing better than expected helps: the sign a knowledge-tracing model must learn (the
    # counts then carry practice itself, so their signs are free).
    assert model.ability_weights[0] > 0 and model.ability_weights[1] > 0
    # Net of counts and ability, one more success raises mastery, one more failure lowers it
    # (answers on a typical exercise: expected success 0.6, information 0.24).
    base = {"skill_residual": [0.0], "skill_information": [2.4], "total_residual": 0.0,
            "total_information": 4.8}  # fmt: skip
    before = model.skill_mastery([1], [6], [4], total_correct=12, total_incorrect=8, **base)
    right = model.skill_mastery(
        [1],
        [7],
        [4],
        total_correct=13,
        total_incorrect=8,
        **{
            **base,
            "skill_residual": [0.4],
            "total_residual": 0.4,
            "skill_information": [2.64],
            "total_information": 5.04,
        },
    )
    wrong = model.skill_mastery(
        [1],
        [6],
        [5],
        total_correct=12,
        total_incorrect=9,
        **{
            **base,
            "skill_residual": [-0.6],
            "total_residual": -0.6,
            "skill_information": [2.64],
            "total_information": 5.04,
        },
    )
    assert wrong[0] < before[0] < right[0]


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


# Residual/information sums of learner_skill_stats, recomputed from the attempts against each
# exercise's current prior (NULL counts as logit 0): what the write path must have summed.
_SUMS_FROM_ATTEMPTS = (
    "SELECT a.learner_id, e.skill_id,"
    " round(sum(a.correct::int - 1 / (1 + exp(-coalesce(e.prior_logit, 0))))::numeric, 9),"
    " round(sum(1 / (1 + exp(-coalesce(e.prior_logit, 0)))"
    "           * (1 - 1 / (1 + exp(-coalesce(e.prior_logit, 0)))))::numeric, 9)"
    " FROM attempts a JOIN exercises e ON e.id = a.exercise_id GROUP BY 1, 2 ORDER BY 1, 2"
)
_SUMS_STORED = (
    "SELECT learner_id, skill_id, round(sum_residual::numeric, 9),"
    " round(sum_information::numeric, 9) FROM learner_skill_stats ORDER BY 1, 2"
)


def test_priors_are_set_once_and_the_write_path_sums_against_them() -> None:
    from datetime import UTC, datetime

    from skillcoach.data.attempt_writes import batch_fingerprint, record_attempts
    from skillcoach.data.learner_reads import fetch_skill_evidence
    from skillcoach.data.records import Attempt

    small = SimulationParams(
        learners=80, skills=4, exercises_per_skill=5, attempts_per_learner=30, seed=3
    )
    name, url = fresh_database("skillcoach_priors")
    engine = create_sync_engine(url)
    try:
        seed_database(engine, small, progress=False, replace=False)
        with engine.connect() as conn:
            # Seeded statistics follow the no-prior rule (every answer against p = 0.5).
            assert conn.exec_driver_sql(_SUMS_STORED).all() == (
                conn.exec_driver_sql(_SUMS_FROM_ATTEMPTS).all()
            )
            assert (
                conn.exec_driver_sql(
                    "SELECT count(*) FROM exercises WHERE prior_logit IS NULL"
                ).scalar()
                == small.n_exercises
            )
        first = train_and_store(engine, seed=0, test_fraction=0.25)
        assert first.metrics["new_exercise_priors"] == small.n_exercises
        with engine.connect() as conn:
            priors = dict(conn.exec_driver_sql("SELECT id, prior_logit FROM exercises").all())
            assert all(v is not None and np.isfinite(v) for v in priors.values())
            # Estimated from data, so they differ between exercises (not one constant).
            assert len({round(v, 6) for v in priors.values()}) > small.n_exercises // 2
            # Training recomputed every row against the new priors.
            assert conn.exec_driver_sql(_SUMS_STORED).all() == (
                conn.exec_driver_sql(_SUMS_FROM_ATTEMPTS).all()
            )
        # The write path adds correct - sigmoid(prior) and its information in the same upsert.
        ex = 1
        attempts = [
            Attempt(ex, True, datetime(2026, 5, 1, 10, 0, tzinfo=UTC)),
            Attempt(ex, False, datetime(2026, 5, 1, 10, 1, tzinfo=UTC)),
        ]
        with engine.begin() as conn:
            record_attempts(
                conn, learner_id=5_000, attempts=attempts, idempotency_key=None,
                fingerprint=batch_fingerprint(5_000, attempts),
            )  # fmt: skip
        p = 1 / (1 + np.exp(-priors[ex]))
        with engine.connect() as conn:
            evidence = fetch_skill_evidence(conn, learner_id=5_000)
            assert conn.exec_driver_sql(_SUMS_STORED).all() == (
                conn.exec_driver_sql(_SUMS_FROM_ATTEMPTS).all()
            )
        assert evidence is not None and evidence.sum_residual is not None
        assert evidence.sum_information is not None
        assert evidence.sum_residual[0] == pytest.approx(1 - 2 * p)
        assert evidence.sum_information[0] == pytest.approx(2 * p * (1 - p))
        # Set once: a second training keeps them, so the stored sums stay comparable.
        second = train_and_store(engine, seed=1, test_fraction=0.25)
        assert second.metrics["new_exercise_priors"] == 0
        with engine.connect() as conn:
            assert dict(conn.exec_driver_sql("SELECT id, prior_logit FROM exercises").all()) == (
                priors
            )
    finally:
        engine.dispose()
        drop_database(name)


def test_migration_0005_backfills_the_sums_and_downgrades() -> None:
    """Statistics written before 0005 get the sums the write path would have summed with no
    prior yet (each answer: correct - 0.5 and 0.25); downgrading drops the columns again."""
    import uuid

    from alembic import command

    from skillcoach.data.migrate import alembic_config, upgrade
    from tests.conftest import _admin

    name = f"skillcoach_mig0005_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    engine = create_sync_engine(url)
    try:
        upgrade(url, "0004")
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO skills (id, name) VALUES (1, 's')")
            conn.exec_driver_sql(
                "INSERT INTO exercises (id, skill_id, difficulty, name) VALUES (1, 1, 0.3, 'e')"
            )
            conn.exec_driver_sql("INSERT INTO learners (id) VALUES (7)")
            conn.exec_driver_sql("INSERT INTO learner_skill_stats VALUES (7, 1, 5, 3, now())")
        upgrade(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT sum_residual, sum_information FROM learner_skill_stats"
            ).one() == (1.0, 2.0)
            assert conn.exec_driver_sql("SELECT prior_logit FROM exercises").scalar() is None
        command.downgrade(alembic_config(url), "0004")
        with engine.connect() as conn:
            columns = conn.exec_driver_sql("SELECT * FROM learner_skill_stats").keys()
            assert "sum_residual" not in columns and "sum_information" not in columns
    finally:
        engine.dispose()
        drop_database(name)
