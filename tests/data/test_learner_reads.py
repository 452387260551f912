from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from skillcoach.data.attempt_writes import batch_fingerprint, record_attempts
from skillcoach.data.database import create_sync_engine
from skillcoach.data.learner_reads import fetch_skill_evidence, fetch_skill_evidences
from skillcoach.data.records import Attempt, SkillEvidence
from tests.fixtures_api import exercise_id, seed_catalog

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)


def test_skill_evidence_columns_match_the_statistics_rows(empty_pg_url: str) -> None:
    engine = create_sync_engine(empty_pg_url)
    try:
        seed_catalog(engine)
        answers = [
            (exercise_id(1, 0), True),
            (exercise_id(1, 1), False),
            (exercise_id(2, 0), False),
        ]
        attempts = [Attempt(ex, ok, T0.replace(minute=i)) for i, (ex, ok) in enumerate(answers)]
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO learners (id) VALUES (7), (8)")
            record_attempts(
                conn, learner_id=7, attempts=attempts, idempotency_key=None,
                fingerprint=batch_fingerprint(7, attempts),
            )  # fmt: skip
        with engine.connect() as conn:
            stats = conn.exec_driver_sql(
                "SELECT skill_id, n_correct, n_incorrect, last_answered_at, sum_residual,"
                " sum_information FROM learner_skill_stats WHERE learner_id = 7"
            ).all()
            version = conn.exec_driver_sql(
                "SELECT data_version FROM learners WHERE id = 7"
            ).scalar()
            seven = fetch_skill_evidence(conn, learner_id=7)
            eight = fetch_skill_evidence(conn, learner_id=8)
            nobody = fetch_skill_evidence(conn, learner_id=9)
            many = fetch_skill_evidences(conn, learner_ids=[9, 8, 7, 7])
    finally:
        engine.dispose()
    assert nobody is None
    assert seven is not None and seven.data_version == version
    order = np.argsort(seven.skill_ids)
    got = list(zip(
        seven.skill_ids[order].tolist(), seven.n_correct[order].tolist(),
        seven.n_incorrect[order].tolist(), [seven.last_answered_at[i] for i in order],
        seven.sum_residual[order].tolist(), seven.sum_information[order].tolist(),  # type: ignore[index]
        strict=True,
    ))  # fmt: skip
    assert got == sorted(tuple(r) for r in stats)
    assert [s for s, *_ in got] == [1, 2] and seven.n_correct.dtype == np.int64
    # A learner without statistics: the LEFT JOIN's lone row becomes empty evidence.
    assert eight is not None and len(eight) == 0
    assert eight.sum_residual is not None and len(eight.sum_residual) == 0
    # Several learners in one statement: each as it reads alone; one that does not exist is
    # absent, a repeated id counted once.
    assert set(many) == {7, 8}
    assert same_evidence(many[7], seven) and same_evidence(many[8], eight)


def same_evidence(a: SkillEvidence, b: SkillEvidence) -> bool:
    oa, ob = np.argsort(a.skill_ids), np.argsort(b.skill_ids)
    arrays = ("skill_ids", "n_correct", "n_incorrect", "sum_residual", "sum_information")
    return (
        a.data_version == b.data_version
        and all(np.array_equal(getattr(a, n)[oa], getattr(b, n)[ob]) for n in arrays)
        and [a.last_answered_at[i] for i in oa] == [b.last_answered_at[i] for i in ob]
    )
