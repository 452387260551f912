"""The chart's rendered configuration run by the real service: `skillcoach serve` started with
the settings ConfigMap and the pool file of a render (only addresses moved to this machine),
the `helm test` script run against it, and the alert rules' metrics scraped from its
metrics port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from skillcoach.data.pool_file import read_pool_file
from tests.deploy.test_chart import FULLNAME, NAMESPACE, RELEASE, container, copy_chart, find
from tests.deploy.tooling import Helm
from tests.fixtures_api import Keys, run_server

# Settings that name places in the cluster; everything else is taken from the render as is.
MOVED = frozenset({"SKILLCOACH_HOST", "SKILLCOACH_PORT", "SKILLCOACH_METRICS_PORT",
                   "SKILLCOACH_DATABASE_URL", "SKILLCOACH_POOL_FILE", "SKILLCOACH_REDIS_URL",
                   "SKILLCOACH_CACHE_ENABLED"})  # fmt: skip


@pytest.fixture(scope="module")
def rendered_docs(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    chart = copy_chart(helm, tmp_path_factory.mktemp("runtime-chart"))
    # A small pool, so the applied size cannot be the service's own default by chance.
    sets = {"autoscaling.maxReplicas": "200", "poolBudget.poolTimeout": "3"}
    return helm.template(chart, sets=sets, release=RELEASE, namespace=NAMESPACE)


@pytest.fixture(scope="module")
def chart_server(
    rendered_docs: list[dict[str, Any]],
    api_bouncer_url: str,
    keys: Keys,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, Path]]:
    settings = find(rendered_docs, "ConfigMap", FULLNAME)["data"]
    pool = find(rendered_docs, "ConfigMap", f"{FULLNAME}-pool")["data"]
    pool_dir = tmp_path_factory.mktemp("pool")
    [(name, content)] = pool.items()
    (pool_dir / name).write_text(content)
    env = {k.removeprefix("SKILLCOACH_").lower(): v for k, v in settings.items() if k not in MOVED}
    assert env["environment"] == "prod"
    with run_server(
        api_bouncer_url,
        **env,
        pool_file=str(pool_dir / Path(settings["SKILLCOACH_POOL_FILE"]).name),
        # The chart's cache is on; here it is a local Redis instead of the cluster's.
        cache_enabled=settings["SKILLCOACH_CACHE_ENABLED"],
        redis_url=redis_url,
    ) as (base, metrics):
        yield base, metrics, pool_dir / name


def test_the_service_applies_the_rendered_pool_file(
    chart_server: tuple[str, str, Path], keys: Keys
) -> None:
    base, _, pool_path = chart_server
    planned = read_pool_file(pool_path)
    assert planned.pool_size == 4, "200 pods + 1 surge share 950 connections: the minimum"
    status = httpx.get(
        f"{base}/v1/model-status", headers={"Authorization": f"Bearer {keys.read}"}, timeout=10
    )
    assert status.status_code == 200, status.text
    pool = status.json()["pool"]
    assert pool["size"] == planned.pool_size
    assert pool["generation"] == planned.generation


def _helm_test(rendered_docs: list[dict[str, Any]], **env: str) -> subprocess.CompletedProcess[str]:
    """The helm test pod's command, run here with the pod's script and the given variables."""
    pod = find(rendered_docs, "Pod", f"{FULLNAME}-test")
    test = container(pod, "test")
    assert test["command"] == ["python", "-c"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SKILLCOACH_")}
    # `skillcoach` is on the image's PATH; here it is the venv's.
    clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-c", test["args"][0]],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_helm_test_passes_with_a_stored_key(
    rendered_docs: list[dict[str, Any]], chart_server: tuple[str, str, Path], keys: Keys
) -> None:
    base, _, _ = chart_server
    result = _helm_test(rendered_docs, SKILLCOACH_TEST_URL=base, SKILLCOACH_TEST_API_KEY=keys.read)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok /readyz" in result.stdout and "ok /v1/model-status: model version" in result.stdout


def test_helm_test_fails_on_a_refused_key(
    rendered_docs: list[dict[str, Any]], chart_server: tuple[str, str, Path]
) -> None:
    base, _, _ = chart_server
    result = _helm_test(rendered_docs, SKILLCOACH_TEST_URL=base, SKILLCOACH_TEST_API_KEY="sk-wrong")
    assert result.returncode != 0
    assert "FAIL /v1/model-status answered 401" in result.stdout + result.stderr


def test_helm_test_creates_a_key_when_none_is_given(
    rendered_docs: list[dict[str, Any]],
    chart_server: tuple[str, str, Path],
    api_bouncer_url: str,
) -> None:
    """Without a stored key the test pod makes a read key through the database settings the
    pod gets from the chart (here pointed at this machine's PgBouncer)."""
    base, _, _ = chart_server
    settings = find(rendered_docs, "ConfigMap", FULLNAME)["data"]
    env = {k: v for k, v in settings.items() if k not in MOVED}
    result = _helm_test(
        rendered_docs,
        **env,
        SKILLCOACH_DATABASE_URL=api_bouncer_url,
        SKILLCOACH_TEST_URL=base,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok /v1/model-status" in result.stdout


def test_alerts_use_metrics_the_replicas_export(chart_server: tuple[str, str, Path]) -> None:
    _, metrics, _ = chart_server
    exported = httpx.get(f"{metrics}/metrics", timeout=10).text
    alerts = (
        Path(__file__).resolve().parents[2] / "deploy" / "helm" / "skillcoach" / "files" / "alerts"
    )
    used: set[str] = set()
    for path in alerts.glob("*.yaml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                used |= set(re.findall(r"\bskillcoach_[a-z_]+\b", rule["expr"]))
    assert {"skillcoach_db_pool_waiters", "skillcoach_db_checkout_timeouts_total"} <= used
    # The PgBouncer exporter's series come from the exporter, not a replica; the end-to-end
    # dashboards test (tests/observability) scrapes both.
    for name in sorted(n for n in used if not n.startswith("skillcoach_pgbouncer_")):
        assert re.search(rf"^{name}(\{{| )", exported, flags=re.M), f"{name} is not exported"
