"""The slot gate under real overload: a saturated pool sheds queued work in a fraction of the
deadline (503 + Retry-After) while it keeps serving, instead of making every request wait.

Against the suite's real PgBouncer and PostgreSQL: a Database of 2+1 connections whose work
sleeps 0.2 s in PostgreSQL, and a real server over a database whose weakness reads sleep 0.3 s
(the slow_db fixture of test_load_control), with the cache on so requests enter through the
cache-hit fast path and fall through to the full application on their misses.
"""

from __future__ import annotations

import statistics
import time

import anyio
import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection

from skillcoach.data.database import Database, DeadlineExceeded, PoolConfig
from skillcoach.data.slot_gate import GateConfig, GateShed
from tests.api.test_load_control import LEARNERS, slow_db  # noqa: F401  (the fixture)
from tests.fixtures_api import Keys, run_server

DEADLINE = 5.0
WELL_BEFORE = 2.5  # the shed bound is 0.2 s: a >10x margin for a loaded 2-core machine


def slow_read(conn: Connection) -> int:
    conn.exec_driver_sql("SELECT pg_sleep(0.2)")
    return 1


def test_a_saturated_pool_sheds_queued_work_fast_and_serves_some(pgbouncer_url: str) -> None:
    registry = CollectorRegistry()
    db = Database(
        pgbouncer_url,
        PoolConfig(pool_size=2, max_overflow=1, pool_timeout=5, pool_recycle=3600),
        statement_timeout_ms=3000,
        request_timeout=DEADLINE,
        registry=registry,
        gate=GateConfig(target=0.010, interval=0.100),
    )
    outcomes: list[tuple[str, float]] = []

    async def one() -> None:
        t0 = time.monotonic()
        try:
            await db.run(slow_read)
            outcomes.append(("served", time.monotonic() - t0))
        except GateShed:
            outcomes.append(("shed", time.monotonic() - t0))
        except DeadlineExceeded:
            outcomes.append(("deadline", time.monotonic() - t0))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(one)

    try:
        anyio.run(main)
        kinds = [k for k, _ in outcomes]
        assert len(kinds) == 40 and "deadline" not in kinds, kinds
        assert kinds.count("served") >= 3 and kinds.count("shed") >= 20, kinds
        shed_after = [t for k, t in outcomes if k == "shed"]
        assert max(shed_after) < WELL_BEFORE, sorted(shed_after)[-3:]
        # Without the gate the last of 40 (3 at a time, 0.2 s each) would wait 2.6 s+.
        assert registry.get_sample_value("skillcoach_db_gate_shed_total") == len(shed_after)
        assert registry.get_sample_value("skillcoach_db_gate_overloaded") == 0  # drained
        stats = db.stats()
        assert (stats.checked_out, stats.waiters) == (0, 0)
    finally:
        db.dispose()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not exported")


def test_fast_path_misses_are_shed_by_the_gate_not_left_to_the_deadline(
    slow_db: tuple[str, Keys],  # noqa: F811  (the imported fixture)
    redis_url: str,
) -> None:
    url, keys = slow_db
    headers = {"Authorization": f"Bearer {keys.read}"}
    results: list[tuple[int, float, httpx.Response]] = []
    with run_server(
        url,
        pool_size="2",
        max_overflow="1",
        request_timeout=str(DEADLINE),
        statement_timeout_ms="3000",
        cache_enabled="true",
        redis_url=redis_url,
        db_gate_target_ms="10",
        db_gate_interval_ms="100",
    ) as (base, metrics_url):
        # The key is known to the replica first: the storm goes through the hit path.
        httpx.get(f"{base}/v1/learners/1/weaknesses", headers=headers, timeout=30)

        async def storm() -> None:
            limits = httpx.Limits(max_connections=150, max_keepalive_connections=150)
            async with httpx.AsyncClient(
                base_url=base, headers=headers, limits=limits, timeout=30
            ) as c:

                async def one(i: int) -> None:
                    t0 = time.perf_counter()
                    # Cache-busting limits: every request misses and needs the database.
                    r = await c.get(f"/v1/learners/{i % LEARNERS + 1}/weaknesses?limit={i + 2}")
                    results.append((r.status_code, time.perf_counter() - t0, r))

                async with anyio.create_task_group() as tg:
                    for i in range(120):
                        tg.start_soon(one, i)

        anyio.run(storm)
        metrics = httpx.get(f"{metrics_url}/metrics").text

    codes = [code for code, _, _ in results]
    assert len(codes) == 120 and set(codes) <= {200, 503}, sorted(set(codes))
    # The storm is over within one round of the 3-connection pool, which the replica's own
    # background work (registry polls, key-usage flushes) shares: one round is served.
    assert codes.count(200) >= 1 and codes.count(503) >= 40, codes
    shed = [t for code, t, _ in results if code == 503]
    for code, _, r in results:
        if code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"].startswith("application/problem+json")
    # Shed by the gates (mostly the request gate in front of the application, the DB gate
    # for the rest; the in-flight cap of 3 + 200 was never reached), well before the
    # deadline; the median is far below even that.
    gates = ("skillcoach_http_gate_shed_total", "skillcoach_db_gate_shed_total")
    assert sum(_metric(metrics, name) for name in gates) >= 40
    assert _metric(metrics, "skillcoach_http_shed_total") == 0
    assert statistics.median(shed) < WELL_BEFORE / 2, sorted(shed)
    assert statistics.quantiles(shed, n=10)[-1] < WELL_BEFORE, sorted(shed)[-5:]
    assert max(t for _, t, _ in results) < DEADLINE + 2.0
