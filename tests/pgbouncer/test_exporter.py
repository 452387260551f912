"""The PgBouncer exporter against a real PgBouncer: SHOW POOLS / SHOW STATS as skillcoach_pgbouncer_*
metrics in base units; an unreachable console gives up=0, never an exception."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import psycopg2
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from skillcoach.pgbouncer.exporter import PgBouncerCollector, new_registry
from skillcoach_devstack.postgres import libpq_url
from skillcoach_devstack.processes import free_port, wait_until

pytestmark = pytest.mark.integration


def _samples(collector: PgBouncerCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in collector.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    matches = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return matches[0]


def test_collector_reports_the_test_databases_pool(
    pgbouncer_url: str, pgbouncer_admin_url: str, pg_url: str
) -> None:
    database = make_url(pg_url).database or ""
    user = make_url(pg_url).username or "postgres"
    # A client inside a transaction holds a server connection: cl_active and sv_active >= 1.
    conn = psycopg2.connect(libpq_url(pgbouncer_url), connect_timeout=3)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            samples = _samples(PgBouncerCollector(pgbouncer_admin_url))
        conn.rollback()
    finally:
        conn.close()

    assert _value(samples, "skillcoach_pgbouncer_up") == 1.0
    pool = {"database": database, "user": user}
    assert _value(samples, "skillcoach_pgbouncer_client_active_connections", **pool) >= 1
    assert _value(samples, "skillcoach_pgbouncer_server_active_connections", **pool) >= 1
    assert _value(samples, "skillcoach_pgbouncer_client_waiting_connections", **pool) == 0
    for name in ("server_idle", "server_used", "server_tested", "server_login"):
        assert _value(samples, f"skillcoach_pgbouncer_{name}_connections", **pool) >= 0
    assert 0 <= _value(samples, "skillcoach_pgbouncer_max_wait_seconds", **pool) < 5
    # SHOW STATS, per database: counters end in _total, times in seconds.
    assert _value(samples, "skillcoach_pgbouncer_transactions_total", database=database) >= 0
    assert _value(samples, "skillcoach_pgbouncer_queries_total", database=database) >= 0
    assert _value(samples, "skillcoach_pgbouncer_wait_time_seconds_total", database=database) >= 0
    assert _value(samples, "skillcoach_pgbouncer_avg_wait_time_seconds", database=database) >= 0
    # SHOW DATABASES: the configured pool size, for saturation ratios.
    assert _value(samples, "skillcoach_pgbouncer_database_pool_size", database=database) >= 1
    assert 0 <= _value(samples, "skillcoach_pgbouncer_scrape_duration_seconds") < 5


def test_exposition_names_are_prefixed_and_counters_end_in_total(pgbouncer_admin_url: str) -> None:
    text = generate_latest(new_registry(pgbouncer_admin_url)).decode()
    families = list(text_string_to_metric_families(text))
    assert families
    for family in families:
        assert family.name.startswith("skillcoach_pgbouncer_"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name


@pytest.mark.parametrize("wrong", ["port", "password"])
def test_an_unreachable_console_gives_up_0_without_raising(
    pgbouncer_admin_url: str, wrong: str
) -> None:
    url = make_url(pgbouncer_admin_url)
    url = url.set(port=free_port()) if wrong == "port" else url.set(password="wrong")
    collector = PgBouncerCollector(url.render_as_string(hide_password=False), timeout=2)
    t0 = time.monotonic()
    samples = _samples(collector)
    assert time.monotonic() - t0 < 3
    assert _value(samples, "skillcoach_pgbouncer_up") == 0.0
    assert "skillcoach_pgbouncer_client_waiting_connections" not in samples
    # And through the HTTP exposition too: a failed scrape is still a 200 with up 0.
    assert (
        "skillcoach_pgbouncer_up 0.0"
        in generate_latest(new_registry(str(url.render_as_string(hide_password=False)))).decode()
    )


def test_cli_serves_metrics_and_stops_on_sigterm(pgbouncer_admin_url: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillcoach.cli", "pgbouncer-exporter", "--port", str(port)],
        # The URL comes from the environment, so its password never shows in `ps`.
        env={**os.environ, "SKILLCOACH_PGBOUNCER_ADMIN_URL": pgbouncer_admin_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        body: list[str] = []

        def answers() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    body.append(r.read().decode())
                    return True
            except OSError:
                return False

        assert wait_until(answers, 15, interval=0.1)
        assert "skillcoach_pgbouncer_up 1.0" in body[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
