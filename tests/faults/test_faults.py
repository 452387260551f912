"""Faults injected into the real local stack (2 replicas behind HAProxy) under steady load.

For every fault: every acknowledged write is in PostgreSQL exactly once (the load's keys and
its learners' attempts, counted there), no read after an acknowledged write misses it, no
response is a 500 or another status no outage may cause (only 429/502/503/504 or no
response), and requests succeed steadily again within a generous bound. SIGTERM to one
replica must cost no request at all (readiness flips to 503 and the replica drains).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg2
import pytest

from skillcoach_devstack.pools import pool_path
from skillcoach_devstack.processes import pid_alive, wait_until
from tests.faults.conftest import RECOVERY_BOUND, FaultRun, FaultStack
from tests.faults.load import Event, Load

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# What a client may see while a dependency is down: the load balancer's 502/503/504, the
# service's 503 (dependency down, pool exhausted) or 429 (shedding), or no response at all
# (a connection cut by a killed process, a timeout).
EXPECTED = {"429", "502", "503", "504", "RemoteProtocolError", "ReadError", "ReadTimeout"}

RunFault = Callable[..., FaultRun]


def assert_sound(run: FaultRun, *, max_failures: int | None = None) -> None:
    r = run.record
    summary = {k: r[k] for k in ("requests", "errors", "recovery_s", "acknowledged", "found")}
    print(f"{run.name}: {summary}")
    assert r["requests"] > 20, f"too little load to judge: {r}"
    assert r["acknowledged"] > 0, f"no write was acknowledged: {r}"
    assert r["unexpected"] == [], f"responses no fault may cause: {r['unexpected']}"
    assert set(r["errors"]) <= EXPECTED, f"unexpected kinds of error: {r['errors']}"
    assert r["recovered"], f"requests did not succeed steadily within {RECOVERY_BOUND}s: {r}"
    # Every batch was eventually acknowledged (retried with its key), so acknowledged == found.
    assert r["unresolved"] == 0, r
    assert r["lost"] == [], f"acknowledged writes missing in PostgreSQL: {r['lost']}"
    assert r["found"] == r["acknowledged"], r
    assert r["found_attempts"] == r["acknowledged_attempts"], "attempts lost or duplicated"
    assert r["stale_reads"] == 0, r["stale_examples"]
    assert r["readbacks"] > 0 and r["unchecked_readbacks"] == 0, r
    if max_failures is not None:
        assert r["failed"] <= max_failures, r["errors"]


def test_pgbouncer_killed_and_restarted(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    bouncer = healthy_stack.pgbouncer()

    def kill(_: Load) -> None:
        pid = bouncer.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(pid), 10)

    run = run_fault(
        "pgbouncer killed and restarted",
        "SIGKILL to PgBouncer, restarted after the window with the stack's config",
        kill,
        lambda _: bouncer.start(),
    )
    assert_sound(run)


def test_postgresql_restart(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    """Simulated: PostgreSQL is the machine's shared server; the stack's database refuses new
    connections and every backend of it is terminated, as a restart would."""
    db = healthy_stack.stack.database

    def down(_: Load) -> None:
        # From the admin database: neither statement may run inside the one it affects.
        healthy_stack.sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false', server=True)
        healthy_stack.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(db)s",
            {"db": db},
            server=True,
        )

    def up(_: Load) -> None:
        healthy_stack.sql(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true', server=True)

    run = run_fault(
        "postgresql restart (simulated)",
        "ALLOW_CONNECTIONS false + pg_terminate_backend of every backend of the stack's"
        " database; connections allowed again after the window",
        down,
        up,
    )
    assert_sound(run)


def test_redis_cluster_master_killed(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    cluster = healthy_stack.cluster()
    port = cluster.masters()[0]

    def cleanup() -> None:
        cluster.start_node(port)
        cluster.wait_ok(90)

    run = run_fault(
        "redis cluster master killed",
        "SIGKILL to one of the 3 masters; its replica fails over (node timeout"
        " 2 s); the node rejoins as a replica afterwards",
        lambda _: cluster.kill_node(port),
        cleanup=cleanup,
        window=8.0,
    )
    assert_sound(run)
    # The failover happened: another node now serves the killed master's slots.
    assert port not in cluster.masters()


def test_all_of_redis_stopped(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    cluster = healthy_stack.cluster()

    def stop(_: Load) -> None:
        for port in cluster.ports:
            pid = cluster.pid(port)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not cluster.running_ports(), 15)

    def start(_: Load) -> None:
        for port in cluster.ports:
            cluster.start_node(port)
        cluster.wait_ok(90, full=False)

    run = run_fault(
        "all of redis stopped",
        "SIGTERM to all six cluster nodes (nothing persisted); restarted with their cluster"
        " config after the window",
        stop,
        start,
    )
    assert_sound(run)


def _burst(fs: FaultStack, load: Load, stop: threading.Event, index: int) -> None:
    """Reads that miss the cache (a `limit` nobody else asks for) and so need a connection."""
    with httpx.Client(
        base_url=fs.stack.url, headers={"Authorization": f"Bearer {fs.stack.key}"}, timeout=15
    ) as client:
        n = 0
        while not stop.is_set():
            n += 1
            learner = (index * 7 + n) % 60 + 1
            t0 = time.monotonic()
            try:
                r = client.get(
                    f"/v1/learners/{learner}/weaknesses",
                    params={"limit": (index * 25 + n) % 999 + 1},
                )
                status: int | None = r.status_code
                error = None
                if r.status_code >= 400 and r.status_code not in (429, 502, 503, 504):
                    load.unexpected.append(f"burst: {r.status_code} {r.text[:300]}")
            except httpx.HTTPError as exc:
                status, error = None, type(exc).__name__
            load.events.append(Event("burst", t0, time.monotonic(), status, error))


def test_database_slow_until_pools_saturate(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    """A transaction holds an ACCESS EXCLUSIVE lock on learner_skill_stats (every answer not in
    the cache and every write needs it) while 40 clients ask for uncached answers: each waits
    up to the replicas' statement timeout, so both replicas' pools (16 each) run dry."""
    holder: dict[str, Any] = {}
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def lock(load: Load) -> None:
        conn = psycopg2.connect(healthy_stack.admin_dsn, connect_timeout=10)
        holder["conn"] = conn
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '10s'")
            cur.execute("LOCK TABLE learner_skill_stats IN ACCESS EXCLUSIVE MODE")
        for i in range(40):
            threads.append(
                threading.Thread(target=_burst, args=(healthy_stack, load, stop, i), daemon=True)
            )
            threads[-1].start()

    def release(_: Load) -> None:
        stop.set()
        conn = holder.get("conn")
        if conn is not None:
            conn.rollback()
            conn.close()

    def join() -> None:
        for thread in threads:
            thread.join(timeout=20)

    run = run_fault(
        "database slow, pools saturated",
        "a transaction holds ACCESS EXCLUSIVE on learner_skill_stats for the window while"
        " 40 more clients request uncached answers",
        lock,
        release,
        cleanup=join,
        window=6.0,
    )
    assert_sound(run)
    # The fault did bite: requests were refused while the lock was held.
    assert run.record["failed"] > 0, run.record


def test_pool_file_replaced_with_garbage(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    paths = [pool_path(healthy_stack.cfg.pool_dir, r.port) for r in healthy_stack.replicas()]
    saved = {p: p.read_bytes() for p in paths}

    def garbage(_: Load) -> None:
        for p in paths:
            p.write_bytes(b'\x00\xffnot a pool {"pool_size": "lots"')

    def restore(_: Load) -> None:
        for p, data in saved.items():
            p.write_bytes(data)

    run = run_fault(
        "pool file replaced with garbage",
        "every replica's pool file overwritten with non-JSON bytes for the window, then restored",
        garbage,
        restore,
    )
    assert_sound(run, max_failures=0)
    assert all(r.ready() for r in healthy_stack.replicas())


def _metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}")


def test_promoted_model_artifact_corrupted(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    """A corrupted artifact (truncated JSON, its checksum matching) is promoted: the replicas,
    polling every second here, refuse it and keep serving the model they have."""
    fs = healthy_stack
    live = fs.sql("SELECT version, artifact FROM model_registry WHERE promoted")
    version, artifact = int(live[0][0]), bytes(live[0][1])
    metrics = fs.stack.replica_metrics_urls()
    before = [_metric(u, "skillcoach_model_refresh_failures_total") for u in metrics]

    def corrupt(_: Load) -> None:
        bad = artifact[: len(artifact) // 2]
        rows = fs.sql(
            "INSERT INTO model_registry (trained_at, metrics, feature_schema, artifact, sha256)"
            " SELECT trained_at, metrics, feature_schema, %(a)s, %(s)s FROM model_registry"
            " WHERE version = %(v)s RETURNING version",
            {"a": bad, "s": hashlib.sha256(bad).hexdigest(), "v": version},
        )
        _promote(fs, int(rows[0][0]))

    run = run_fault(
        "promoted model artifact corrupted",
        "a copy of the live model with a truncated artifact (matching checksum) promoted for"
        " the window; the previous version promoted again after it",
        corrupt,
        lambda _: _promote(fs, version),
    )
    assert_sound(run, max_failures=0)
    after = [_metric(u, "skillcoach_model_refresh_failures_total") for u in metrics]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert all(_metric(u, "skillcoach_model_version") == version for u in metrics)


def _promote(fs: FaultStack, version: int) -> None:
    # One statement string, one transaction: never zero or two live models.
    fs.sql(
        "UPDATE model_registry SET promoted = false WHERE promoted AND version <> %(v)s;"
        " UPDATE model_registry SET promoted = true, promoted_at = now()"
        " WHERE version = %(v)s AND NOT promoted",
        {"v": version},
    )


def test_one_replica_sigkilled(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    replica = healthy_stack.replicas()[0]

    def kill(_: Load) -> None:
        pid = replica.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

    run = run_fault(
        "one replica SIGKILLed",
        "SIGKILL to one of the two replicas; `stack up` restarts it after the window",
        kill,
        cleanup=healthy_stack.up,
    )
    assert_sound(run)


def test_rolling_restart(run_fault: RunFault, healthy_stack: FaultStack) -> None:
    fs = healthy_stack

    def roll(_: Load) -> None:
        for replica in fs.replicas():
            replica.stop()  # SIGTERM, SIGKILL after 15 s
            fs.up()  # starts it again and waits until it is ready
            # The next one goes only once HAProxy routes to this one again.
            assert wait_until(fs.lb_all_up, 60, interval=0.25), fs.haproxy().server_states()

    run = run_fault(
        "rolling restart",
        "each replica in turn: SIGTERM, `stack up` starts it, wait until HAProxy has it UP",
        roll,
        window=2.0,
    )
    assert_sound(run)


def test_sigterm_to_one_replica_loses_no_request(
    run_fault: RunFault, healthy_stack: FaultStack
) -> None:
    replica = healthy_stack.replicas()[0]
    pid = replica.pid()
    assert pid is not None

    def cleanup() -> None:
        assert wait_until(lambda: not pid_alive(pid), 30), "the replica ignored SIGTERM"
        healthy_stack.up()

    run = run_fault(
        "SIGTERM to one replica",
        "SIGTERM to one of the two replicas under load (it should fail readiness and drain);"
        " `stack up` restarts it afterwards",
        lambda _: os.kill(pid, signal.SIGTERM),
        cleanup=cleanup,
    )
    assert_sound(run, max_failures=0)
