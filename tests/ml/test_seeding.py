"""Seeding into a real PostgreSQL: what goes in is the simulation, the stats agree with it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Connection, Engine, text

from skillcoach.data.binary_copy import BinaryCopyError, decode, encode
from skillcoach.data.database import create_sync_engine
from skillcoach.ml.seeding import SeedConflict, seed_database
from skillcoach.ml.simulator import SimulationParams, build_catalog, simulate_learners

PARAMS = SimulationParams(
    learners=40, skills=6, exercises_per_skill=4, attempts_per_learner=30, seed=3
)


@pytest.fixture
def engine(empty_pg_url: str) -> Iterator[Engine]:
    eng = create_sync_engine(empty_pg_url)
    yield eng
    eng.dispose()


def _scalar(conn: Connection, sql: str) -> int:
    return int(conn.execute(text(sql)).scalar_one())


def _assert_same_rows(conn: Connection, left: str, right: str) -> None:
    differing = _scalar(
        conn, f"SELECT count(*) FROM (({left} EXCEPT ALL {right}) UNION ALL"
        f" ({right} EXCEPT ALL {left})) AS d"
    )  # fmt: skip
    assert differing == 0, f"{differing} rows differ between\n  {left}\nand\n  {right}"


def test_seed_loads_the_simulation(engine: Engine) -> None:
    report = seed_database(engine, PARAMS, progress=False, replace=False)
    assert (report.learners, report.skills, report.exercises) == (40, 6, 24)
    assert report.attempts == 40 * 30
    assert report.seconds > 0
    assert "1200 attempts" in report.summary()
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM skills") == 6
        assert _scalar(conn, "SELECT count(*) FROM exercises") == 24
        assert _scalar(conn, "SELECT count(*) FROM learners") == 40
        assert _scalar(conn, "SELECT count(*) FROM attempts") == 1200
        assert _scalar(conn, "SELECT count(*) FROM sim_attempt_truth") == 1200
        assert _scalar(conn, "SELECT count(*) FROM sim_mastery") == report.mastery_rows
        assert _scalar(conn, "SELECT count(*) FROM sim_runs") == 1
        params = conn.execute(text("SELECT params FROM sim_runs")).scalar_one()
        assert params["learners"] == 40
        assert params["seed"] == 3
        rows = conn.execute(
            text(
                "SELECT a.learner_id, a.exercise_id, a.correct,"
                " (extract(epoch FROM a.answered_at) * 1000000)::bigint, t.p_correct"
                " FROM attempts a JOIN sim_attempt_truth t ON t.attempt_id = a.id"
                " ORDER BY a.id"
            )
        ).all()
        catalog_rows = conn.execute(text("SELECT id, skill_id, difficulty FROM exercises")).all()

    # Byte-exact round trip of the binary COPY: every value is the simulator's.
    catalog = build_catalog(PARAMS)
    chunks = list(simulate_learners(PARAMS, catalog))
    got = np.array(rows, dtype=object)
    np.testing.assert_array_equal(
        got[:, 0].astype(np.int64), np.concatenate([c.attempt_learner_ids for c in chunks])
    )
    np.testing.assert_array_equal(
        got[:, 1].astype(np.int64), np.concatenate([c.attempt_exercise_ids for c in chunks])
    )
    np.testing.assert_array_equal(
        got[:, 2].astype(bool), np.concatenate([c.attempt_correct for c in chunks])
    )
    np.testing.assert_array_equal(
        got[:, 3].astype(np.int64), np.concatenate([c.attempt_answered_at_us for c in chunks])
    )
    np.testing.assert_array_equal(
        got[:, 4].astype(np.float64), np.concatenate([c.attempt_p_correct for c in chunks])
    )
    by_id = {int(r[0]): (int(r[1]), float(r[2])) for r in catalog_rows}
    for e, s, d in zip(
        catalog.exercise_ids, catalog.exercise_skill_ids, catalog.exercise_difficulty, strict=True
    ):
        assert by_id[int(e)] == (int(s), float(d))


def test_statistics_tables_equal_sql_aggregates(engine: Engine) -> None:
    seed_database(engine, PARAMS, progress=False, replace=False)
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM learner_skill_stats") > 40
        _assert_same_rows(
            conn,
            "SELECT learner_id, skill_id, n_correct, n_incorrect, last_answered_at"
            " FROM learner_skill_stats",
            "SELECT a.learner_id, e.skill_id, count(*) FILTER (WHERE a.correct),"
            " count(*) FILTER (WHERE NOT a.correct), max(a.answered_at)"
            " FROM attempts a JOIN exercises e ON e.id = a.exercise_id GROUP BY 1, 2",
        )
        _assert_same_rows(
            conn,
            "SELECT learner_id, exercise_id, n_attempts, last_answered_at"
            " FROM learner_exercise_stats",
            "SELECT learner_id, exercise_id, count(*), max(answered_at)"
            " FROM attempts GROUP BY 1, 2",
        )
        _assert_same_rows(
            conn,
            "SELECT id, data_version FROM learners",
            "SELECT learner_id, count(*) FROM attempts GROUP BY 1",
        )
        # Ground truth covers exactly the practised (learner, skill) pairs and every attempt.
        _assert_same_rows(
            conn,
            "SELECT learner_id, skill_id FROM sim_mastery",
            "SELECT DISTINCT a.learner_id, e.skill_id"
            " FROM attempts a JOIN exercises e ON e.id = a.exercise_id",
        )
        _assert_same_rows(
            conn, "SELECT attempt_id FROM sim_attempt_truth", "SELECT id FROM attempts"
        )
        assert _scalar(
            conn, "SELECT count(*) FROM learners l WHERE l.created_at >"
            " (SELECT min(answered_at) FROM attempts a WHERE a.learner_id = l.id)"
        ) == 0  # fmt: skip


def test_ids_continue_above_the_sequence_and_plain_inserts_follow(engine: Engine) -> None:
    with engine.begin() as conn:
        # Ids a rolled-back insert burnt must not be reused by the seed.
        conn.execute(text("SELECT setval(pg_get_serial_sequence('attempts', 'id'), 500)"))
    report = seed_database(engine, PARAMS, progress=False, replace=False)
    assert report.first_attempt_id == 501
    with engine.begin() as conn:
        assert _scalar(conn, "SELECT min(id) FROM attempts") == 501
        assert _scalar(conn, "SELECT max(id) FROM attempts") == 500 + 1200
        new_id = _scalar(
            conn,
            "INSERT INTO attempts (learner_id, exercise_id, correct, answered_at)"
            " VALUES (1, 1, true, now()) RETURNING id",
        )
    assert new_id == 500 + 1200 + 1


def test_existing_data_needs_replace(engine: Engine) -> None:
    seed_database(engine, PARAMS, progress=False, replace=False)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO api_keys (name, key_hash, scopes) VALUES ('k', 'h', ARRAY['read']);"
                " INSERT INTO model_registry (trained_at, metrics, feature_schema, artifact,"
                " sha256) VALUES (now(), '{}', '{}', '\\x00', 's')"
            )
        )
    with pytest.raises(SeedConflict, match="replace"):
        seed_database(engine, PARAMS, progress=False, replace=False)
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM attempts") == 1200

    smaller = SimulationParams(
        learners=10, skills=3, exercises_per_skill=2, attempts_per_learner=5, seed=4
    )
    report = seed_database(engine, smaller, progress=True, replace=True)
    assert report.replaced
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM learners") == 10
        assert _scalar(conn, "SELECT count(*) FROM skills") == 3
        assert _scalar(conn, "SELECT count(*) FROM attempts") == 50
        assert _scalar(conn, "SELECT count(*) FROM sim_attempt_truth") == 50
        assert _scalar(conn, "SELECT count(*) FROM sim_runs") == 1
        assert _scalar(conn, "SELECT max(learner_id) FROM learner_skill_stats") == 10
        # Models and keys are not simulation data: they survive a replace.
        assert _scalar(conn, "SELECT count(*) FROM api_keys") == 1
        assert _scalar(conn, "SELECT count(*) FROM model_registry") == 1


def test_failed_seed_leaves_nothing_behind(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    import skillcoach.ml.seeding as seeding

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(seeding, "_run_record", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        seed_database(engine, PARAMS, progress=False, replace=False)
    with engine.connect() as conn:
        assert _scalar(conn, "SELECT count(*) FROM attempts") == 0
        assert _scalar(conn, "SELECT count(*) FROM skills") == 0


def test_binary_copy_round_trip() -> None:
    columns = [
        ("int8", np.array([1, -(2**62), 2**62])),
        ("int4", np.array([0, -7, 2**31 - 1])),
        ("bool", np.array([True, False, True])),
        ("float8", np.array([0.1, -1e300, np.pi])),
        ("timestamptz", np.array([0, 1_700_000_000_123_456, -5])),
    ]
    decoded = decode(encode(columns), [t for t, _ in columns])
    for (_, want), got in zip(columns, decoded, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(BinaryCopyError, match="not a binary COPY"):
        decode(b"1\t2\n", ["int4"])
    with pytest.raises(BinaryCopyError, match="differ in length"):
        encode([("int4", [1, 2]), ("int4", [1])])
