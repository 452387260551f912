"""The db ceiling reference app answers exactly the rows of skillcoach's uncached read, through
a real PgBouncer (tests/fixtures_services.py), and nothing else."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import anyio
from loadtests.db_ceiling_app import create_app
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient

from skillcoach.data.database import Database, PoolConfig, create_sync_engine
from skillcoach.data.learner_reads import fetch_skill_evidence

AT = datetime(2026, 11, 20, 10, 11, 12, tzinfo=UTC)


def _seed(pg_url: str) -> tuple[int, int]:
    """A learner of its own (the session database is shared) with one skill's statistics."""
    learner, skill = random.randint(10**12, 2 * 10**12), random.randint(10**8, 2 * 10**8)
    engine = create_sync_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO skills (id, name) VALUES (%(s)s, 'ceiling probe')", {"s": skill}
            )
            conn.exec_driver_sql(
                "INSERT INTO learners (id, data_version) VALUES (%(l)s, 3)", {"l": learner}
            )
            conn.exec_driver_sql(
                "INSERT INTO learner_skill_stats (learner_id, skill_id, n_correct, n_incorrect,"
                " last_answered_at) VALUES (%(l)s, %(s)s, 4, 2, %(at)s)",
                {"l": learner, "s": skill, "at": AT},
            )
    finally:
        engine.dispose()
    return learner, skill


def test_the_ceiling_answers_the_service_reads_rows(pg_url: str, pgbouncer_url: str) -> None:
    learner, skill = _seed(pg_url)
    with TestClient(create_app(pgbouncer_url, threads=2)) as client:
        r = client.get(f"/v1/learners/{learner}/weaknesses")
        assert r.status_code == 200, r.text
        rows = r.json()
        assert client.get(f"/v1/learners/{learner + 1}/weaknesses").status_code == 404
        assert client.get("/healthz").json() == {"status": "ok"}
        # No auth, no model: a bearer token is neither needed nor looked at.
        assert client.get(f"/v1/learners/{learner}/weaknesses").json() == rows
    assert len(rows) == 1
    l_id, version, s_id, correct, incorrect, at = rows[0][:6]
    assert (l_id, version, s_id, correct, incorrect) == (learner, 3, skill, 4, 2)
    assert datetime.fromisoformat(at) == AT
    # The same statement as the service's: its read sees the very same values.
    db = Database(
        pgbouncer_url, PoolConfig(1, 0, 5, 3600), statement_timeout_ms=3000,
        registry=CollectorRegistry(),
    )  # fmt: skip
    try:
        evidence = anyio.run(lambda: db.run(fetch_skill_evidence, learner_id=learner))
    finally:
        db.dispose()
    assert evidence is not None
    assert evidence.data_version == version
    assert evidence.skill_ids.tolist() == [s_id]
    assert (evidence.n_correct.tolist(), evidence.n_incorrect.tolist()) == ([4], [2])
