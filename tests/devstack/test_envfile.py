"""ROOT/.stack/env: sourceable by sh, parsed back without a shell, private."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from skillcoach_devstack.envfile import read_env, render_env, stack_env, write_env

TRICKY = 'it\'s a "key" with $HOME, `backticks` and spaces'


def _values() -> dict[str, str]:
    return stack_env(
        api_url="http://127.0.0.1:8000",
        api_key=TRICKY,
        database_url="postgresql+psycopg2://skillcoach:pw@127.0.0.1:6432/skillcoach",
        direct_database_url="postgresql+psycopg2://skillcoach:pw@127.0.0.1:5432/skillcoach",
        redis_url="redis://127.0.0.1:6390/0",
        pgbouncer_admin_url="postgresql://pgbouncer_admin:x@127.0.0.1:6432/pgbouncer",
        replica_urls=["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
        replica_metrics_urls=["http://127.0.0.1:9001/metrics", "http://127.0.0.1:9002/metrics"],
        pgbouncer_metrics_url="http://127.0.0.1:9127/metrics",
        haproxy_stats_url="http://127.0.0.1:8404/stats",
        haproxy_metrics_url="http://127.0.0.1:8404/metrics",
        prometheus_url="http://127.0.0.1:9190",
    )


def test_stack_env_names_what_scripts_need() -> None:
    values = _values()
    assert set(values) >= {
        "SKILLCOACH_URL",
        "SKILLCOACH_API_KEY",
        "SKILLCOACH_METRICS_URL",
        "SKILLCOACH_DATABASE_URL",
        "SKILLCOACH_DIRECT_DATABASE_URL",
        "SKILLCOACH_REDIS_URL",
        "SKILLCOACH_PGBOUNCER_ADMIN_URL",
        "SKILLCOACH_PGBOUNCER_METRICS_URL",
        "SKILLCOACH_REPLICA_URLS",
        "SKILLCOACH_REPLICA_METRICS_URLS",
        "SKILLCOACH_PROMETHEUS_URL",
    }
    # /metrics is not on the API port: the first replica's metrics port, and each replica's.
    assert values["SKILLCOACH_METRICS_URL"] == "http://127.0.0.1:9001/metrics"
    assert values["SKILLCOACH_REPLICA_METRICS_URLS"].split() == [
        "http://127.0.0.1:9001/metrics",
        "http://127.0.0.1:9002/metrics",
    ]
    assert values["SKILLCOACH_PROMETHEUS_URL"] == "http://127.0.0.1:9190"
    # Traces go nowhere unless the receiver runs.
    assert "SKILLCOACH_OTLP_ENDPOINT" not in values


def test_a_metrics_url_per_replica_is_required() -> None:
    with pytest.raises(ValueError, match="one metrics URL per replica"):
        stack_env(
            api_url="http://127.0.0.1:8000",
            api_key="k",
            database_url="d",
            direct_database_url="d",
            redis_url="r",
            pgbouncer_admin_url="a",
            replica_urls=["http://127.0.0.1:8001"],
            replica_metrics_urls=[],
            pgbouncer_metrics_url="m",
            haproxy_stats_url="s",
            haproxy_metrics_url="h",
        )


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / ".stack" / "env"
    write_env(path, _values())
    assert read_env(path) == _values()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sourceable_by_sh(tmp_path: Path) -> None:
    path = tmp_path / "env"
    write_env(path, _values())
    out = subprocess.run(
        ["sh", "-c", '. "$1" && printf %s "$SKILLCOACH_API_KEY"', "sh", str(path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )
    assert out.stdout == TRICKY


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_env(tmp_path / "nope") == {}


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="not a shell variable"):
        render_env({"a-b": "x"})
