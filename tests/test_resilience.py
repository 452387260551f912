"""PgBouncer killed and restarted under load: reads recover by themselves, and every write
that was acknowledged (201) is in the database afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from skillcoach.data.api_keys import Scope, create_api_key
from skillcoach.data.database import create_sync_engine
from skillcoach_devstack.pgbouncer import PgBouncer
from tests.conftest import drop_database, fresh_database
from tests.fixtures_api import exercise_id, run_server, seed_catalog, store_hand_model
from tests.fixtures_services import pgbouncer_db_url

DOWN_SECONDS = 2.0


def test_pgbouncer_restart_under_read_and_write_load(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str, request: pytest.FixtureRequest
) -> None:
    name, direct = fresh_database("skillcoach_resilience")
    engine = create_sync_engine(direct)
    seed_catalog(engine)
    store_hand_model(engine)
    with engine.begin() as conn:
        key = create_api_key(conn, name="w", scopes=frozenset({Scope.READ, Scope.WRITE}))
    engine.dispose()
    bouncer = make_pgbouncer()
    url = pgbouncer_db_url(bouncer, pg_url, make_url(direct).database)
    headers = {"Authorization": f"Bearer {key}"}
    reads: list[tuple[float, float, int]] = []  # started, answered, status
    acknowledged: list[int] = []
    stop = threading.Event()
    try:
        with run_server(url, request_timeout="3", model_refresh_seconds="3600") as (base, _):
            httpx.post(
                f"{base}/v1/learners/1/attempts", headers=headers, json=_batch()
            ).raise_for_status()

            def reader() -> None:
                with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
                    while not stop.is_set():
                        started = time.monotonic()
                        code = c.get("/v1/learners/1/weaknesses").status_code
                        reads.append((started, time.monotonic(), code))
                        time.sleep(0.02)

            def writer() -> None:
                learner = 100
                with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
                    while not stop.is_set():
                        learner += 1
                        r = c.post(f"/v1/learners/{learner}/attempts", json=_batch())
                        assert r.status_code in (201, 503), r.text
                        if r.status_code == 201:
                            acknowledged.append(learner)
                        time.sleep(0.02)

            threads = [threading.Thread(target=reader) for _ in range(3)]
            threads.append(threading.Thread(target=writer))
            for t in threads:
                t.start()
            time.sleep(1.0)
            pid = bouncer.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            time.sleep(DOWN_SECONDS)
            bouncer.start(timeout=10)
            back = time.monotonic()
            time.sleep(6.0)
            stop.set()
            for t in threads:
                t.join(timeout=15)
    finally:
        stop.set()
        request.addfinalizer(lambda: drop_database(name))

    assert {code for _, _, code in reads} <= {200, 503}
    # Reads in flight during the outage retried inside their deadline; once PgBouncer is
    # back, reads succeed again within 5 s and keep succeeding.
    recovered = [done for _, done, code in reads if done >= back and code == 200]
    assert recovered and recovered[0] - back < 5.0
    late = [code for started, _, code in reads if started >= back + 5.0]
    assert late and set(late) == {200}
    # Every acknowledged write survived the outage.
    conn = psycopg2.connect(direct.replace("+psycopg2", ""))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT learner_id FROM attempts WHERE learner_id > 100")
            stored = {row[0] for row in cur.fetchall()}
    finally:
        conn.close()
    assert acknowledged and set(acknowledged) <= stored


def _batch() -> dict[str, list[dict[str, object]]]:
    now = datetime.now(UTC).isoformat()
    return {"attempts": [{"exercise_id": exercise_id(2, 1), "correct": True, "answered_at": now}]}
