"""The dashboards: generated from the builders (the committed JSON is what they render), shipped
by the chart as ConfigMaps for the Grafana sidecar, and sound without a Prometheus: every panel
described, one data source variable, no Kubernetes-only series, PgBouncer read from either
exporter. tests/observability/test_dashboards_e2e.py proves every query against real data."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from skillcoach_devstack.dashboards import BOARDS, OUTPUT_DIR, render, stale, write_all
from tests.deploy.test_chart import copy_chart
from tests.deploy.tooling import ROOT as REPO
from tests.deploy.tooling import Helm, validate_kubernetes
from tests.observability.test_dashboards_e2e import _targets

COMMITTED = REPO / OUTPUT_DIR
# The prometheus-community pgbouncer_exporter's names that the boards may use (its README).
COMMUNITY_PGBOUNCER = frozenset(
    {
        "pgbouncer_pools_client_waiting_connections",
        "pgbouncer_pools_client_maxwait_seconds",
        "pgbouncer_pools_server_active_connections",
        "pgbouncer_pools_server_idle_connections",
        "pgbouncer_stats_sql_transactions_pooled_total",
    }
)
# Series only a cluster has (kube-state-metrics, cAdvisor, node-exporter): the e2e test could
# not prove a panel on them, so the boards leave them to the alerts.
KUBERNETES_ONLY = re.compile(r"\b(kube_\w+|container_\w+|node_\w+|kubelet_\w+)")


def _boards() -> dict[str, dict[str, Any]]:
    return {name: json.loads((COMMITTED / f"{name}.json").read_text()) for name in BOARDS}


def test_the_grafana_11_build_of_the_sdk_is_installed() -> None:
    # A plain install resolves to a Grafana 10.1 build, whose JSON Grafana 11 migrates.
    assert importlib.metadata.version("grafana-foundation-sdk") == "1769699379!11.6.0"
    for board in _boards().values():
        assert board["schemaVersion"] >= 39


def test_the_committed_json_is_what_the_builders_render() -> None:
    assert sorted(p.name for p in COMMITTED.iterdir()) == sorted(f"{n}.json" for n in BOARDS)
    assert stale(COMMITTED) == [], "run `make dashboards` and commit the JSON"


def test_a_hand_edit_or_a_stray_file_is_caught(tmp_path: Path) -> None:
    directory = tmp_path / OUTPUT_DIR
    assert len(write_all(directory)) == len(BOARDS)
    assert write_all(directory) == []  # nothing changed: nothing written
    assert _check(tmp_path).returncode == 0
    edited = json.loads((directory / "pool.json").read_text())
    edited["panels"][1]["title"] = "edited by hand"
    (directory / "pool.json").write_text(json.dumps(edited))
    (directory / "extra.json").write_text("{}")
    assert stale(directory) == ["extra.json", "pool.json"]
    check = _check(tmp_path)
    assert check.returncode == 1
    assert "pool.json differs from the builders: run `make dashboards`" in check.stdout
    assert "overview.json" not in check.stdout


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "skillcoach_devstack.dashboards", "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_module_writes_the_charts_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "skillcoach_devstack.dashboards", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in BOARDS:
        assert (tmp_path / OUTPUT_DIR / f"{name}.json").read_text() == render(name)


def test_the_boards_cover_what_an_sre_needs() -> None:
    exprs = {name: " ".join(e for _, _, e in _targets(b)) for name, b in _boards().items()}
    for needle in (
        "skillcoach_http_requests_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        'status=~"5.."',
        'route="shed"',  # 503s before routing: the request gate's and the in-flight limit's
        "skillcoach_ready",
        "skillcoach_model_version",
        "skillcoach_model_info",
    ):
        assert needle in exprs["overview"], needle
    for needle in (
        "skillcoach_db_pool_checked_out",
        "skillcoach_db_pool_waiters",
        "histogram_quantile(0.99, sum by (le, pod) (rate(skillcoach_db_checkout_wait_seconds",
        "skillcoach_db_checkout_timeouts_total",
        "skillcoach_pgbouncer_client_waiting_connections",
        "skillcoach_pgbouncer_max_wait_seconds",
        "skillcoach_db_pool_client_budget",
    ):
        assert needle in exprs["pool"], needle
    for needle in (
        "skillcoach_cache_hits_total",
        "skillcoach_cache_breaker_state",
        "skillcoach_cache_errors_total",
        "skillcoach_cache_latency_seconds_bucket",
    ):
        assert needle in exprs["cache"], needle


def test_every_panel_is_described_and_reads_the_chosen_prometheus() -> None:
    for name, board in _boards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert variables["namespace"]["type"] == "query"
        assert board["uid"] == f"skillcoach-{name}"
        panels = [p for p in board["panels"] if p["type"] != "row"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels:
            where = f"{name} / {panel['title']}"
            assert panel["description"].strip(), where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert 'namespace="$namespace"' in target["expr"], where


def test_no_panel_reads_a_kubernetes_only_series() -> None:
    for name, board in _boards().items():
        for title, _, expr in _targets(board):
            assert not KUBERNETES_ONLY.search(expr), f"{name} / {title}: {expr}"


def test_pgbouncer_panels_read_either_exporter() -> None:
    for name, board in _boards().items():
        for title, _, expr in _targets(board):
            local = set(re.findall(r"\bskillcoach_pgbouncer_\w+", expr))
            community = set(re.findall(r"\bpgbouncer_\w+", expr)) - local
            community = {c for c in community if not c.startswith("pgbouncer_exporter")}
            assert community <= COMMUNITY_PGBOUNCER, f"{name} / {title}: {community}"
            if local:
                # One side per exporter, joined with `or`.
                assert community and " or " in expr, f"{name} / {title}: {expr}"


def test_the_chart_ships_each_board_for_the_grafana_sidecar(helm: Helm, tmp_path: Path) -> None:
    chart = copy_chart(helm, tmp_path)
    docs = helm.template(chart, sets={"metrics.dashboards.enabled": "true"})
    shipped = {
        key: json.loads(value)
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key, value in d["data"].items()
    }
    assert shipped == {f"{name}.json": board for name, board in _boards().items()}
    configmaps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert validate_kubernetes(configmaps) == len(configmaps)
