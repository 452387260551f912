"""The stack's Prometheus: its generated config (checked by promtool), and the real server
started, scraping stand-in replicas with the pod/namespace labels, following a changed target
list and reloading a changed config, with the alert rules loaded."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from skillcoach_devstack.commands import make_prometheus, make_replica
from skillcoach_devstack.config import StackConfig
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.processes import free_port, port_open, wait_until
from skillcoach_devstack.prometheus import (
    PrometheusConfig,
    PrometheusServer,
    Target,
    default_rules_path,
    query,
    render_config,
    render_targets,
)

RULES = Path(__file__).resolve().parents[2] / "deploy/helm/skillcoach/files/alerts"


def _binary(name: str) -> str:
    binary = find_binary(name)
    if binary is None:
        pytest.fail(f"{name} is not installed (Debian package prometheus): run `make test`")
    return binary


def test_the_rules_are_the_charts_file() -> None:
    assert default_rules_path().resolve() == (RULES / "skillcoach.rules.yaml").resolve()


def test_the_stack_scrapes_each_replicas_metrics_port() -> None:
    cfg = StackConfig(root=Path("/r"), prometheus_port=9190, scrape_interval=1)
    server = make_prometheus(cfg, [make_replica(cfg, p) for p in cfg.api_ports(2)])
    assert [(t.pod, t.port) for t in server.config.replicas] == [
        ("api-8001", 9001),
        ("api-8002", 9002),
    ]
    assert server.url == "http://127.0.0.1:9190"
    doc = json.loads(render_config(server.config, Path("/r/replicas.json")))
    assert doc["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",  # never longer than the interval
        "evaluation_interval": "1s",
    }
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"skillcoach-api", "pgbouncer-exporter", "haproxy", "prometheus"}
    assert jobs["haproxy"]["static_configs"][0]["targets"] == ["127.0.0.1:8404"]
    assert jobs["pgbouncer-exporter"]["static_configs"][0]["targets"] == ["127.0.0.1:9127"]
    targets = json.loads(render_targets(server.config.replicas))
    assert targets[0] == {
        "targets": ["127.0.0.1:9001"],
        "labels": {"namespace": "local", "pod": "api-8001"},
    }


def test_promtool_accepts_the_generated_config(tmp_path: Path) -> None:
    cfg = PrometheusConfig(
        port=9190,
        scrape_interval=5,
        replicas=(Target(pod="api-8001", port=9001),),
        haproxy=Target(pod="haproxy", port=8404),
        exporter=Target(pod="pgbouncer-exporter", port=9127),
        rules_file=default_rules_path(),
    )
    targets = tmp_path / "replicas.json"
    targets.write_text(render_targets(cfg.replicas))
    config = tmp_path / "prometheus.yml"
    config.write_text(render_config(cfg, targets))
    result = subprocess.run(
        [_binary("promtool"), "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.fixture
def replicas() -> Iterator[list[Target]]:
    """Two stand-in replicas: metrics servers with a skillcoach_ready gauge."""
    targets = []
    servers = []
    for name in ("api-a", "api-b"):
        registry = CollectorRegistry()
        Gauge("skillcoach_ready", "1 when ready", registry=registry).set(1)
        port = free_port()
        server, thread = start_http_server(port, "127.0.0.1", registry)
        servers.append((server, thread))
        targets.append(Target(pod=name, port=port))
    yield targets
    for server, thread in servers:
        server.shutdown()
        thread.join(5)


@pytest.mark.integration
def test_a_real_prometheus_follows_the_stack(tmp_path: Path, replicas: list[Target]) -> None:
    _binary("prometheus")
    config = PrometheusConfig(
        port=free_port(),
        scrape_interval=1,
        replicas=(replicas[0],),
        haproxy=None,
        exporter=None,
        rules_file=default_rules_path(),
    )
    server = PrometheusServer(config=config, runtime_dir=tmp_path, logfile=tmp_path / "p.log")
    try:
        assert server.apply().startswith("started on ")
        assert server.ready()
        rules = httpx.get(f"{server.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {g["file"] for g in rules} == {str(default_rules_path())}
        assert len(rules) == 7

        def seen(pod: str) -> bool:
            expr = f'skillcoach_ready{{namespace="local", pod="{pod}", job="skillcoach-api"}}'
            return bool(query(server.url, expr))

        assert _eventually(lambda: seen("api-a"))
        assert server.apply().startswith("reused on ")

        # A scale: the new replica becomes a target without a restart.
        pid = server.pid()
        grown = dataclasses.replace(
            server, config=dataclasses.replace(config, replicas=tuple(replicas))
        )
        assert "2 replica target(s)" in grown.apply()
        assert grown.pid() == pid
        health = grown.targets_health()
        assert health is not None
        assert {f"http://{t.address}/metrics" for t in replicas} <= set(health)
        assert _eventually(lambda: seen("api-b"))

        # A new interval changes the config: reloaded, same process.
        slower = dataclasses.replace(
            grown, config=dataclasses.replace(grown.config, scrape_interval=2)
        )
        assert slower.apply().startswith("reloaded on ")
        assert slower.pid() == pid
        assert json.loads(slower.config_file.read_text())["global"]["scrape_interval"] == "2s"
    finally:
        stopped = server.stop()
    assert stopped
    assert server.pid() is None
    assert not port_open("127.0.0.1", config.port)


def _eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    return wait_until(predicate, timeout, interval=0.25)
