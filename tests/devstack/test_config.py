"""Stack configuration from the environment, and its generated secrets."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from skillcoach_devstack.config import StackConfig, load_or_create_secrets
from skillcoach_devstack.errors import StackError


def test_defaults() -> None:
    cfg = StackConfig.from_env(Path("/r"), {})
    assert (cfg.api_port, cfg.pgbouncer_port, cfg.redis_port) == (8000, 6432, 6390)
    assert (cfg.pg_host, cfg.pg_port) == ("127.0.0.1", 5432)
    assert cfg.env_file == Path("/r/.stack/env")


def test_overrides() -> None:
    cfg = StackConfig.from_env(
        Path("/r"),
        {
            "SKILLCOACH_STACK_API_PORT": "9000",
            "SKILLCOACH_STACK_PGBOUNCER_PORT": "7432",
            "SKILLCOACH_STACK_REDIS_PORT": "7390",
            "SKILLCOACH_STACK_PG_ADMIN_DSN": "postgresql://postgres@127.0.0.1:5433/postgres",
            "SKILLCOACH_DEMO_LEARNERS": "50",
        },
    )
    assert (cfg.api_port, cfg.pgbouncer_port, cfg.redis_port) == (9000, 7432, 7390)
    assert cfg.pg_port == 5433
    assert cfg.demo_learners == 50
    assert (cfg.app_user, cfg.app_database) == ("skillcoach", "skillcoach")


def test_role_and_database_overrides() -> None:
    cfg = StackConfig.from_env(
        Path("/r"),
        {"SKILLCOACH_STACK_APP_USER": "bench_app", "SKILLCOACH_STACK_DATABASE": "bench_db_1"},
    )
    assert (cfg.app_user, cfg.app_database) == ("bench_app", "bench_db_1")


@pytest.mark.parametrize("value", ["Bench", "a-b", "x;drop", "1abc", "a" * 64])
def test_bad_identifier_names_the_variable(value: str) -> None:
    with pytest.raises(StackError, match="SKILLCOACH_STACK_DATABASE"):
        StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_DATABASE": value})


@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_bad_port_names_the_variable(value: str) -> None:
    with pytest.raises(StackError, match="SKILLCOACH_STACK_API_PORT"):
        StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_API_PORT": value})


def test_replica_ports() -> None:
    cfg = StackConfig.from_env(Path("/r"), {})
    # The API port is HAProxy's, even in front of one replica.
    assert cfg.api_ports(1) == [8001]
    assert cfg.api_ports(3) == [8001, 8002, 8003]
    with pytest.raises(StackError):
        cfg.api_ports(0)
    with pytest.raises(StackError):
        cfg.api_ports(1000)


def test_lb_and_exporter_ports() -> None:
    cfg = StackConfig.from_env(Path("/r"), {})
    assert (cfg.haproxy_stats_port, cfg.exporter_port) == (8404, 9127)
    cfg = StackConfig.from_env(
        Path("/r"),
        {"SKILLCOACH_STACK_HAPROXY_STATS_PORT": "9404", "SKILLCOACH_STACK_EXPORTER_PORT": "9999"},
    )
    assert (cfg.haproxy_stats_port, cfg.exporter_port) == (9404, 9999)
    assert cfg.pool_dir == Path("/r/.stack/pool")


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / ".stack" / "secrets.json"
    first = load_or_create_secrets(path)
    assert load_or_create_secrets(path) == first
    assert first.app_password != first.admin_password
    assert len(first.app_password) >= 24
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_secrets_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text("{")
    with pytest.raises(StackError, match="delete it"):
        load_or_create_secrets(path)


def test_observability_defaults_and_overrides() -> None:
    cfg = StackConfig.from_env(Path("/r"), {})
    # Each replica's /metrics 1000 above its API port; Prometheus off Debian's own 9090.
    assert cfg.metrics_port(8001) == 9001
    assert (cfg.prometheus_port, cfg.scrape_interval, cfg.otlp) == (9190, 5, False)
    assert (cfg.otlp_grpc_port, cfg.otlp_http_port) == (4317, 4318)
    assert cfg.prometheus_dir == Path("/r/.stack/prometheus")
    cfg = StackConfig.from_env(
        Path("/r"),
        {
            "SKILLCOACH_STACK_METRICS_PORT_OFFSET": "500",
            "SKILLCOACH_STACK_PROMETHEUS_PORT": "19190",
            "SKILLCOACH_STACK_SCRAPE_INTERVAL": "1",
            "SKILLCOACH_STACK_OTLP": "1",
            "SKILLCOACH_STACK_OTLP_GRPC_PORT": "14317",
            "SKILLCOACH_STACK_OTLP_HTTP_PORT": "14318",
        },
    )
    assert cfg.metrics_port(8001) == 8501
    assert (cfg.prometheus_port, cfg.scrape_interval, cfg.otlp) == (19190, 1, True)
    assert (cfg.otlp_grpc_port, cfg.otlp_http_port) == (14317, 14318)


@pytest.mark.parametrize(("raw", "expected"), [("", False), ("0", False), ("true", True)])
def test_the_otlp_flag(raw: str, expected: bool) -> None:
    assert StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_OTLP": raw}).otlp is expected


def test_bad_observability_settings_are_refused() -> None:
    with pytest.raises(StackError, match="SKILLCOACH_STACK_OTLP"):
        StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_OTLP": "maybe"})
    with pytest.raises(StackError, match="SKILLCOACH_STACK_SCRAPE_INTERVAL"):
        StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_SCRAPE_INTERVAL": "0"})
    # The replicas' metrics ports must fit too.
    cfg = StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_API_PORT": "64990"})
    with pytest.raises(StackError, match="metrics ports"):
        cfg.api_ports(2)
