"""skaffold.yaml and the kind profile against the repository: every image it builds, chart it
deploys, value it sets and port it forwards exists, and the kind values render into valid
manifests (no skaffold or kind binary runs here, so this is what can be proven)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_chart import copy_chart, deep_merge, find
from tests.deploy.tooling import ROOT, Helm, validate_kubernetes

SKAFFOLD = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
CHART_VALUES = yaml.safe_load((ROOT / "deploy" / "helm" / "skillcoach" / "values.yaml").read_text())
SUBCHART_VALUES = yaml.safe_load((ROOT / "deploy" / "pgbouncer" / "values.yaml").read_text())
# What the release sees: the subchart's defaults under its key, the parent's on top.
RELEASE_VALUES = deep_merge(
    CHART_VALUES, {"pgbouncer": deep_merge(SUBCHART_VALUES, CHART_VALUES["pgbouncer"])}
)
KIND_CLUSTER = yaml.safe_load((ROOT / "deploy" / "kind" / "cluster.yaml").read_text())
KIND_VALUES = ROOT / "deploy" / "kind" / "skillcoach-values.yaml"


def profile(name: str) -> dict[str, Any]:
    matches = [p for p in SKAFFOLD.get("profiles", []) if p["name"] == name]
    assert len(matches) == 1, f"one profile {name!r} expected"
    found: dict[str, Any] = matches[0]
    return found


def releases() -> list[tuple[str, dict[str, Any]]]:
    """(where, release) for the main deploy and every profile's."""
    out = [("deploy", r) for r in SKAFFOLD["deploy"]["helm"]["releases"]]
    for p in SKAFFOLD.get("profiles", []):
        for r in p.get("deploy", {}).get("helm", {}).get("releases", []):
            out.append((p["name"], r))
    return out


def sanitized(image: str) -> str:
    # skaffold's template names: ".", "-", "/" and ":" become "_".
    return re.sub(r"[.\-/:]", "_", image)


def lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"no value {dotted}"
        node = node[part]
    return node


def test_the_config_is_a_v4_skaffold_config() -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", SKAFFOLD["apiVersion"])
    assert SKAFFOLD["kind"] == "Config"
    assert SKAFFOLD["build"]["local"]["push"] is False


def test_every_artifact_builds_from_files_that_exist() -> None:
    artifacts = SKAFFOLD["build"]["artifacts"]
    assert {a["image"] for a in artifacts} == {
        CHART_VALUES["image"]["repository"],
        CHART_VALUES["operator"]["image"]["repository"],
    }
    for a in artifacts:
        context = ROOT / a.get("context", ".")
        assert context.is_dir(), a
        assert (context / a["docker"]["dockerfile"]).is_file(), a


@pytest.mark.parametrize(
    ("where", "release"), releases(), ids=[f"{w}-{r['name']}" for w, r in releases()]
)
def test_every_release_points_at_a_chart_and_files_that_exist(
    where: str, release: dict[str, Any]
) -> None:
    if "chartPath" in release:
        assert (ROOT / release["chartPath"] / "Chart.yaml").is_file(), release["chartPath"]
    else:
        assert release.get("remoteChart") and release.get("version"), f"{where}: unpinned chart"
    for f in release.get("valuesFiles", []):
        assert (ROOT / f).is_file(), f
    built = {sanitized(a["image"]) for a in SKAFFOLD["build"]["artifacts"]}
    for key, template in release.get("setValueTemplates", {}).items():
        lookup(RELEASE_VALUES, key)
        for name in re.findall(r"IMAGE_(?:REPO|TAG|DIGEST)_(\w+)", template):
            assert name in built, f"{key} refers to {name}, which is not built"


def test_the_kind_profile_targets_the_kind_cluster() -> None:
    assert KIND_CLUSTER["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert KIND_CLUSTER["kind"] == "Cluster"
    context = f"kind-{KIND_CLUSTER['name']}"
    kind = profile("kind")
    assert kind["deploy"]["kubeContext"] == context
    assert {"kubeContext": context} in kind["activation"]
    names = [r["name"] for r in kind["deploy"]["helm"]["releases"]]
    # The stack's dependencies go in before skillcoach itself.
    assert names[-1] == "skillcoach"
    assert {"postgresql", "redis", "monitoring"} <= set(names)


@pytest.fixture(scope="module")
def kind_render(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    chart = copy_chart(helm, tmp_path_factory.mktemp("kind-chart"))
    return helm.template(chart, values=[KIND_VALUES], release="skillcoach", namespace="skillcoach")


def test_the_kind_values_render_valid_manifests(kind_render: list[dict[str, Any]]) -> None:
    assert validate_kubernetes(kind_render) > 10
    api = find(kind_render, "Deployment", "skillcoach")
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    assert "SKILLCOACH_DATABASE_PASSWORD" in env
    kinds = {d["kind"] for d in kind_render}
    assert {"ServiceMonitor", "PrometheusRule", "Job"} <= kinds


def test_port_forwards_name_rendered_services(kind_render: list[dict[str, Any]]) -> None:
    forwards = [*SKAFFOLD.get("portForward", []), *profile("kind").get("portForward", [])]
    ours = [f for f in forwards if f["namespace"] == "skillcoach"]
    assert ours
    for f in ours:
        service = find(kind_render, "Service", f["resourceName"])
        assert f["port"] in [p["port"] for p in service["spec"]["ports"]], f
    monitoring = yaml.safe_load((ROOT / "deploy" / "kind" / "monitoring-values.yaml").read_text())
    prometheus = [f for f in forwards if f["namespace"] == "monitoring"]
    # kube-prometheus-stack names its Prometheus Service <fullnameOverride>-prometheus.
    assert [f["resourceName"] for f in prometheus] == [
        f"{monitoring['fullnameOverride']}-prometheus"
    ]


def test_the_release_names_match_the_hosts_the_kind_values_use() -> None:
    values = yaml.safe_load(KIND_VALUES.read_text())
    names = {r["name"] for r in profile("kind")["deploy"]["helm"]["releases"]}
    # bitnami's services: <release> for postgresql, <release>-redis-cluster for the cluster.
    assert values["pgbouncer"]["postgresql"]["host"] in names
    for endpoint in values["redis"]["endpoints"]:
        assert endpoint.split(":")[0].removesuffix("-redis-cluster") in names


def test_the_readme_walks_through_kind_with_these_files() -> None:
    readme = (ROOT / "README.md").read_text()
    for needed in ("deploy/kind/cluster.yaml", "skaffold dev -p kind", "helm install"):
        assert needed in readme, needed
    assert Path(ROOT / "deploy" / "kind" / "cluster.yaml").is_file()
