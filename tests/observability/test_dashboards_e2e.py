"""Every dashboard panel's query returns data from a real Prometheus scraping a real stack.

A private stack comes up like the benchmark's (loadtests.local_stack: scratch root, free ports,
its own role and database) with its Prometheus scraping every second and a queue allowance of
0 (so a burst sheds). The test drives what the panels show: reads that miss and then hit the
cache, writes, Redis calls that time out (every master paused for a moment with CLIENT PAUSE),
and a burst at one replica that gets requests shed. Once Prometheus has scraped all of it,
every target of every dashboard is evaluated through the HTTP API, with Grafana's variables
replaced ($__rate_interval by a fixed window, $namespace by what the board's namespace variable
finds), and must return at least one series: a misspelt metric or label returns none.

The rules file loaded into that Prometheus must evaluate without an error on the real series.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from loadtests.local_stack import LocalStack, start_stack, stop_stack
from loadtests.wrk import run_wrk
from prometheus_client.parser import text_string_to_metric_families

from skillcoach_devstack.config import StackConfig
from skillcoach_devstack.dashboards import BOARDS, OUTPUT_DIR
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.prometheus import query
from skillcoach_devstack.redis_cluster import RedisClusterNodes
from tests.deploy.tooling import ROOT as REPO

pytestmark = pytest.mark.integration

LEARNERS = 200
# What $__rate_interval becomes: longer than the whole test, so every rate sees all of it.
WINDOW = "5m"
SCRAPE_SECONDS = 1
# The burst at one replica: connections far above its in-flight limit (pool 16, no queue).
BURST_CONNECTIONS = 96
# How long every Redis master stops answering clients (the cache's call timeout is 0.25 s).
PAUSE_MS = 1500


def _dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((REPO / OUTPUT_DIR / f"{name}.json").read_text()) for name in BOARDS}


def _targets(board: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query target, rows' nested panels included."""
    stack = list(board["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            yield panel["title"], target["refId"], target["expr"]


def _variable(board: dict[str, Any], name: str) -> dict[str, Any]:
    [variable] = [v for v in board["templating"]["list"] if v["name"] == name]
    return variable


def _label_values(prometheus: str, query_text: str) -> list[str]:
    """What Grafana's label_values(metric, label) variable query lists."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query_text)
    assert match, f"not a label_values query: {query_text}"
    metric, label = match.groups()
    url = f"{prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": metric})
    values: list[str] = httpx.get(url, timeout=10).json()["data"]
    return values


def _substitute(expr: str, namespace: str) -> str:
    text = expr.replace("$__rate_interval", WINDOW).replace("$namespace", namespace)
    assert "$" not in text, f"a Grafana variable the test does not know: {text}"
    return text


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:g}s")
        time.sleep(0.5)


def _has_data(prometheus: str, expr: str) -> bool:
    return bool(query(prometheus, expr))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    for binary, package in (
        ("prometheus", "prometheus"),
        ("haproxy", "haproxy"),
        ("pgbouncer", "pgbouncer"),
        ("redis-server", "redis-server"),
        ("wrk", "wrk"),
    ):
        if find_binary(binary) is None:
            pytest.fail(f"{binary} is not installed (Debian package {package}): run `make test`")
    root = tmp_path_factory.mktemp("observability-stack")
    started = start_stack(
        root,
        replicas=2,
        learners=LEARNERS,
        scrape_interval=SCRAPE_SECONDS,
        settings={"SKILLCOACH_QUEUE_ALLOWANCE": "0"},
    )
    try:
        yield started
    finally:
        stop_stack(started)


def _reads(client: httpx.Client, learners: range) -> list[int]:
    statuses = []
    for learner in learners:
        for kind in ("weaknesses", "recommendations"):
            statuses.append(client.get(f"/v1/learners/{learner}/{kind}").status_code)
    return statuses


def _writes(client: httpx.Client, learners: range) -> list[int]:
    now = datetime.now(UTC).isoformat()
    statuses = []
    for learner in learners:
        body = {"attempts": [{"exercise_id": learner, "correct": True, "answered_at": now}]}
        response = client.post(
            f"/v1/learners/{learner}/attempts",
            json=body,
            headers={"Idempotency-Key": f"observability-{learner}-{now}"},
        )
        statuses.append(response.status_code)
    return statuses


def _pause_redis(stack: LocalStack, client: httpx.Client) -> list[int]:
    """Every master stops answering clients for PAUSE_MS while reads go on: the replicas'
    Redis calls time out (counted as cache errors) and they answer from PostgreSQL."""
    cfg = StackConfig.from_env(stack.root, env=stack.env)
    nodes = RedisClusterNodes(base_port=cfg.redis_cluster_port, data_dir=cfg.redis_cluster_dir)
    masters = nodes.masters()
    assert masters, "the stack's Redis Cluster has no master"
    for port in masters:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as node:
            node.execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
    # Learners read before: their entries are there, so only a failing Redis stops a hit.
    deadline = time.monotonic() + PAUSE_MS / 1000
    statuses = []
    learner = 1
    while time.monotonic() < deadline:
        statuses += _reads(client, range(learner, learner + 1))
        learner += 1
    return statuses


@pytest.mark.timeout(300)
def test_every_panel_query_returns_data_from_the_stack(stack: LocalStack) -> None:
    t0 = time.monotonic()
    prometheus = stack.prometheus_url
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
        # Misses, then hits (the fast path answers the second round).
        assert set(_reads(client, range(1, 41))) == {200}
        assert set(_reads(client, range(1, 41))) == {200}
        assert set(_writes(client, range(1, 11))) == {201}
        assert set(_reads(client, range(1, 11))) == {200}
        # A failing Redis degrades the cache, never the answers.
        assert set(_pause_redis(stack, client)) == {200}

    # Straight at one replica (HAProxy would queue in front of it): it sheds past its limit.
    # Non-default reads skip the fast path and go through admission control.
    replica = stack.replica_urls()[0]
    shed = 0
    for seed in range(5):
        burst = run_wrk(
            replica,
            connections=BURST_CONNECTIONS,
            duration=2,
            token=stack.key,
            learners=LEARNERS,
            path="/v1/learners/%d/recommendations?target=0.55",
            seed=seed,
        )
        shed += int(burst["statuses"].get("503", 0))
        if shed:
            break
    assert shed > 0, f"no request was shed by a burst of {BURST_CONNECTIONS} connections"
    driven = time.monotonic() - t0

    # Prometheus has scraped the burst, the Redis errors and the writes.
    ns = 'namespace="local"'
    for expr in (
        f"sum(skillcoach_http_shed_total{{{ns}}}) > 0",
        f"sum(skillcoach_cache_errors_total{{{ns}}}) > 0",
        f'sum(skillcoach_http_requests_total{{{ns}, route=~".*/attempts"}}) > 0',
        f"sum(skillcoach_cache_hits_total{{{ns}}}) > 0",
    ):
        _wait(lambda e=expr: _has_data(prometheus, e), 30, f"Prometheus did not see {expr}")
    # Two scrapes more, so every rate has its last sample.
    time.sleep(2 * SCRAPE_SECONDS + 1)

    empty: list[str] = []
    evaluated = 0
    for name, board in _dashboards().items():
        namespaces = _label_values(prometheus, _variable(board, "namespace")["query"])
        assert namespaces == ["local"], f"{name}: the namespace variable lists {namespaces}"
        for title, ref, expr in _targets(board):
            evaluated += 1
            if not query(prometheus, _substitute(expr, namespaces[0])):
                empty.append(f"{name} / {title} / {ref}: {expr}")
    assert evaluated >= 40
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # The check bites: the same query with a misspelt metric finds nothing.
    _, _, sample = next(_targets(_dashboards()["pool"]))
    misspelt = _substitute(sample, "local").replace(
        "skillcoach_db_pool_capacity", "skillcoach_db_pool_capacit"
    )
    assert query(prometheus, _substitute(sample, "local"))
    assert not query(prometheus, misspelt)

    # The alert rules evaluate on these series without an error.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    bad = [
        f"{r.get('name')}: {r.get('lastError')}"
        for g in groups
        for r in g["rules"]
        if r.get("health") != "ok"
    ]
    assert len(groups) == 7
    assert not bad, "rules failing on real series:\n" + "\n".join(bad)
    print(f"driven in {driven:.1f}s, {evaluated} panel queries, {shed} shed")


def test_the_stack_status_names_prometheus_and_metrics_ports(stack: LocalStack) -> None:
    env = stack.values
    metrics = stack.replica_metrics_urls()
    assert len(metrics) == 2 and env["SKILLCOACH_METRICS_URL"] == metrics[0]
    for url, replica in zip(metrics, stack.replica_urls(), strict=True):
        assert httpx.get(url, timeout=10).status_code == 200
        # /metrics is served on the metrics port only.
        assert httpx.get(f"{replica}/metrics", timeout=10).status_code == 404
    health = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=10).json()
    scraped = {t["scrapeUrl"]: t["labels"] for t in health["data"]["activeTargets"]}
    for url, replica in zip(metrics, stack.replica_urls(), strict=True):
        assert scraped[url]["pod"] == f"api-{replica.rsplit(':', 1)[1]}"
        assert scraped[url]["namespace"] == "local"
    assert env["SKILLCOACH_PGBOUNCER_METRICS_URL"] in scraped
    assert env["SKILLCOACH_HAPROXY_METRICS_URL"] in scraped
    assert Path(stack.root / ".stack" / "logs" / "prometheus.log").is_file()


def test_every_exported_metric_is_documented(stack: LocalStack) -> None:
    """docs/observability.md lists every metric a replica or the PgBouncer exporter exports."""
    documented = (REPO / "docs" / "observability.md").read_text()
    urls = [*stack.replica_metrics_urls(), stack.values["SKILLCOACH_PGBOUNCER_METRICS_URL"]]
    exported: set[str] = set()
    for url in urls:
        for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
            # The parser returns each counter's and histogram's `_created` series as a family
            # of its own: the document covers them in one sentence.
            if family.name.endswith("_created"):
                continue
            exported.add(f"{family.name}_total" if family.type == "counter" else family.name)
    assert {"skillcoach_http_requests_total", "skillcoach_pgbouncer_up"} <= exported
    missing = sorted(name for name in exported if f"`{name}`" not in documented)
    assert not missing, f"not in docs/observability.md: {missing}"
