"""Deadlines and admission control on a real server, against a database made slow on purpose.

Every weakness read sleeps 0.3 s in PostgreSQL (a view over the statistics table that calls
pg_sleep once per query), the replica has 4+2 connections and admits 6 + 40 requests; 200
clients arrive at once. Each must get a 200, or a 503 with Retry-After within the deadline;
none may wait the seed's 30 s. /healthz must stay fast meanwhile.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from skillcoach.data.database import create_sync_engine
from skillcoach_devstack.pgbouncer import PgBouncer
from tests.conftest import drop_database, fresh_database
from tests.fixtures_api import Keys, exercise_id, run_server, seed_catalog, store_hand_model
from tests.fixtures_services import pgbouncer_db_url

DEADLINE = 2.0
SLACK = 2.0  # scheduling noise of a shared 2-core machine; without deadlines the wait is 10 s+
LEARNERS = 40


@pytest.fixture(scope="module")
def slow_db(pgbouncer: PgBouncer, pg_url: str) -> Iterator[tuple[str, Keys]]:
    from skillcoach.data.api_keys import Scope, create_api_key

    name, direct = fresh_database("skillcoach_slow")
    engine = create_sync_engine(direct)
    seed_catalog(engine)
    store_hand_model(engine)
    with engine.begin() as conn:
        key = create_api_key(conn, name="w", scopes=frozenset({Scope.READ, Scope.WRITE}))
        for learner in range(1, LEARNERS + 1):
            conn.exec_driver_sql("INSERT INTO learners (id) VALUES (%(l)s)", {"l": learner})
            conn.exec_driver_sql(
                "INSERT INTO learner_skill_stats VALUES (%(l)s, 1, 2, 3, now()), (%(l)s, 2, 4, 1, now())",
                {"l": learner},
            )
        conn.exec_driver_sql(
            "CREATE FUNCTION slow_down() RETURNS boolean LANGUAGE plpgsql VOLATILE AS"
            " $$ BEGIN PERFORM pg_sleep(0.3); RETURN true; END $$"
        )
        conn.exec_driver_sql("ALTER TABLE learner_skill_stats RENAME TO learner_skill_stats_data")
        conn.exec_driver_sql(
            "CREATE VIEW learner_skill_stats AS SELECT d.* FROM learner_skill_stats_data d,"
            " (SELECT slow_down() AS ok) s WHERE s.ok"
        )
    engine.dispose()
    url = pgbouncer_db_url(pgbouncer, pg_url, make_url(direct).database)
    yield url, Keys(read=key, write=key, admin=key)
    drop_database(name)


@pytest.fixture(scope="module")
def slow_server(slow_db: tuple[str, Keys]) -> Iterator[tuple[str, str, Keys]]:
    """(API URL, metrics URL, keys)."""
    url, keys = slow_db
    with run_server(
        url,
        pool_size="4",
        max_overflow="2",
        queue_allowance="40",
        request_timeout=str(DEADLINE),
        statement_timeout_ms="1500",
    ) as (base, metrics):
        yield base, metrics, keys


WEAKNESSES_ROUTE = "/v1/learners/{learner_id}/weaknesses"
# The latency histogram's first bucket above DEADLINE (skillcoach.api.http_metrics).
SERVER_BOUND = 5.0


def served_within(metrics_url: str, route: str, seconds: float) -> tuple[int, int]:
    """(requests of `route` the replica answered within `seconds`, all of them), from its
    latency histogram (the 503s it shed before routing are counted under route="shed")."""
    text = httpx.get(f"{metrics_url}/metrics").text
    within = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "skillcoach_http_request_duration_seconds":
            continue
        for s in family.samples:
            if s.labels.get("route") not in (route, "shed"):
                continue
            if s.name.endswith("_count"):
                total += s.value
            elif s.name.endswith("_bucket") and float(s.labels["le"]) == seconds:
                within += s.value
    return int(within), int(total)


def probe_health(base: str, stop: threading.Event, samples: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=5) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            samples.append(time.perf_counter() - t0)
            time.sleep(0.02)


def test_200_clients_get_an_answer_or_a_fast_503(slow_server: tuple[str, str, Keys]) -> None:
    base, metrics_url, keys = slow_server
    headers = {"Authorization": f"Bearer {keys.read}"}
    results: list[tuple[int, float, httpx.Response]] = []
    health: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe_health, args=(base, stop, health))

    async def storm() -> None:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, limits=limits, timeout=35
        ) as c:

            async def one(i: int) -> None:
                t0 = time.perf_counter()
                r = await c.get(f"/v1/learners/{i % LEARNERS + 1}/weaknesses")
                results.append((r.status_code, time.perf_counter() - t0, r))

            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)

    prober.start()
    try:
        time.sleep(0.2)
        anyio.run(storm)
    finally:
        stop.set()
        prober.join(timeout=10)

    codes = [code for code, _, _ in results]
    assert len(codes) == 200
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 6 and codes.count(503) >= 50
    # Without deadlines the last of 200 requests through 6 connections of 0.3 s queries waits
    # 10 s. The replica answers every request within its deadline (its own clock, so the
    # machine's scheduling noise does not count); clients see that too, but for a few
    # stragglers a heavily loaded machine can hold in its queues, hence the percentile.
    served = served_within(metrics_url, WEAKNESSES_ROUTE, SERVER_BOUND)
    assert served == (200, 200), f"(within {SERVER_BOUND}s, all) {served}"
    # Client-side, the median: this test's own 200 Python clients share the 2 cores with
    # the replica, and requests now wait at the request gate rather than being refused at
    # once, so the client's tail is mostly its own scheduling (the p90 read 4.0 s once).
    latencies = sorted(t for _, t, _ in results)
    client_p50 = statistics.median(latencies)
    assert client_p50 < DEADLINE + SLACK, f"client-side p50 {client_p50:.2f}s; {latencies[-5:]}"
    for code, _, r in results:
        if code == 503:
            assert r.headers["retry-after"] in {"1", "2"}
            assert r.headers["content-type"].startswith("application/problem+json")
    # The event loop never blocked: liveness stayed fast throughout. A loop blocked by the
    # database would hold most probes for the 0.3 s query; on a loaded 2-core machine a
    # single probe can still take half a second, so a percentile, not the max.
    assert len(health) >= 10
    assert statistics.median(health) < 0.05, sorted(health)[-5:]
    p90 = statistics.quantiles(health, n=10)[-1]
    assert p90 < 0.15, f"p90 {p90:.3f}s; slowest {sorted(health)[-5:]}"

    status = httpx.get(f"{base}/v1/model-status", headers=headers).json()["pool"]
    assert status["checked_out"] == 0 and status["waiters"] == 0
    metrics = httpx.get(f"{metrics_url}/metrics").text
    assert "skillcoach_http_shed_total" in metrics
    samples = {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in metrics.splitlines())
        if name.startswith(
            (
                "skillcoach_http_shed_total",
                "skillcoach_http_gate_shed_total",
                "skillcoach_http_requests_total{",
            )
        )
    }
    # At the in-flight cap, or by the request gate (queued too long): both before routing.
    shed = samples["skillcoach_http_shed_total"] + samples["skillcoach_http_gate_shed_total"]
    labelled = samples.get(
        'skillcoach_http_requests_total{method="GET",route="shed",status="503"}', 0.0
    )
    assert shed > 0 and labelled == shed, f"shed {shed}, under route=shed {labelled}"
    assert not any('route="unmatched"' in name for name in samples)


def test_1000_requests_failing_after_checkout_return_every_connection(
    slow_server: tuple[str, str, Keys],
) -> None:
    base, _, keys = slow_server
    headers = {"Authorization": f"Bearer {keys.write}"}
    now = datetime.now(UTC).isoformat()
    # Unknown exercise: rejected inside the transaction, after the connection is checked out.
    body = {
        "attempts": [
            {"exercise_id": exercise_id(1, 0), "correct": True, "answered_at": now},
            {"exercise_id": 999_999, "correct": True, "answered_at": now},
        ]
    }
    codes: list[int] = []

    async def run() -> None:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, limits=limits, timeout=30
        ) as c:
            sem = anyio.Semaphore(20)

            async def one(i: int) -> None:
                async with sem:
                    r = await c.post(f"/v1/learners/{10_000 + i}/attempts", json=body)
                    codes.append(r.status_code)

            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(one, i)

    anyio.run(run)
    assert codes.count(422) == 1000, sorted(set(codes))
    pool = httpx.get(f"{base}/v1/model-status", headers=headers).json()["pool"]
    assert pool["checked_out"] == 0
