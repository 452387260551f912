"""The Helm chart of the stack (deploy/helm/skillcoach), rendered by the real helm binary for
the default values and every ci/*-values.yaml: lint, the values schema, strict Kubernetes
validation, the prometheus-operator models, checkov, and the contracts the chart keeps with
the service, PgBouncer's subchart and the pool-sizing rule.

The chart is copied with deploy/pgbouncer to a temporary tree (the file:// dependency path is
relative), where `helm dependency build` runs: the source tree never gets charts/ or
Chart.lock."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from skillcoach.api.server import SERVER_OPTIONS
from skillcoach.cli import build_parser
from skillcoach.settings import Settings, load_settings
from skillcoach_devstack.tools import Tools
from skillcoach_operator.rbac import NAMED_ONLY, PERMISSIONS
from tests.deploy.tooling import (
    ROOT,
    Helm,
    ToolError,
    checkov_failures,
    parse_manifests,
    validate_kubernetes,
    validate_prometheus,
)

CHART_SRC = ROOT / "deploy" / "helm" / "skillcoach"
PGBOUNCER_SRC = ROOT / "deploy" / "pgbouncer"
CI_VALUES = sorted(p.name for p in (CHART_SRC / "ci").glob("*-values.yaml"))
VALUE_SETS = ["default", *CI_VALUES]
RELEASE = "sc"
NAMESPACE = "skillcoach"
FULLNAME = f"{RELEASE}-skillcoach"
# The keys of the subchart that the pool budget reads: the parent repeats them with the
# subchart's defaults.
BUDGET_KEYS = (
    "replicaCount",
    "maxClientConn",
    "reservePoolSize",
    "pdb.minAvailable",
    "postgresql.port",
    "postgresql.database",
    "postgresql.maxConnections",
    "postgresql.serverReserve",
    "service.port",
)
# Objects whose keys belong to someone else: the subchart's own schema governs them.
SCHEMA_OPEN_PATHS = ("pgbouncer",)

Doc = dict[str, Any]


# ---- helpers shared with the other chart tests ---------------------------------------------


def copy_chart(helm: Helm, dest: Path) -> Path:
    """The chart and deploy/pgbouncer under dest, dependencies built there; returns the chart."""
    ignore = shutil.ignore_patterns("charts", "Chart.lock", "*.tgz")
    chart = dest / "deploy" / "helm" / "skillcoach"
    shutil.copytree(CHART_SRC, chart, ignore=ignore)
    shutil.copytree(PGBOUNCER_SRC, dest / "deploy" / "pgbouncer", ignore=ignore)
    helm.run("dependency", "build", str(chart))
    return chart


def value_files(chart: Path, value_set: str) -> list[Path]:
    return [] if value_set == "default" else [chart / "ci" / value_set]


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merged_values(value_set: str) -> dict[str, Any]:
    """values.yaml with the value set on top, as helm merges them for this chart's keys."""
    values: dict[str, Any] = yaml.safe_load((CHART_SRC / "values.yaml").read_text())
    if value_set != "default":
        values = deep_merge(values, yaml.safe_load((CHART_SRC / "ci" / value_set).read_text()))
    return values


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def ours(doc: Doc) -> bool:
    """Rendered by this chart, not by the PgBouncer subchart."""
    return str(doc["metadata"].get("labels", {}).get("helm.sh/chart", "")).startswith("skillcoach-")


def pod_templates(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(owner, pod template or pod) for every workload rendered."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield d, d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Pod":
            yield d, d


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector against a label set."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def api_deployment(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", FULLNAME)


def container(pod: Doc, name: str) -> Doc:
    found: list[Doc] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_chart(helm, tmp_path_factory.mktemp("chart"))


@pytest.fixture(scope="module")
def rendered(helm: Helm, chart: Path) -> dict[str, str]:
    """Every value set rendered once (hooks and the helm test pod included)."""
    return {
        name: helm.template_text(
            chart, values=value_files(chart, name), release=RELEASE, namespace=NAMESPACE
        ).stdout
        for name in VALUE_SETS
    }


@pytest.fixture(scope="module")
def renders(rendered: dict[str, str]) -> dict[str, list[Doc]]:
    return {name: parse_manifests(text) for name, text in rendered.items()}


# ---- tools: lint, schema, Kubernetes, prometheus-operator, checkov -------------------------


def test_source_tree_holds_no_built_dependencies(chart: Path) -> None:
    assert chart.is_dir()
    assert not list(CHART_SRC.glob("charts/*.tgz")), "helm dependency build ran in the tree"
    assert not (CHART_SRC / "Chart.lock").exists()
    assert list((chart / "charts").glob("pgbouncer-*.tgz")), "the copy has its dependency"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_strict(helm: Helm, chart: Path, value_set: str) -> None:
    result = helm.lint(chart, values=value_files(chart, value_set))
    assert "0 chart(s) failed" in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout and "[WARNING]" not in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("sets", "path", "problem"),
    [
        ({"replicaCount": "-1"}, "/replicaCount", "minimum"),
        ({"replicaCountt": "3"}, "''", "additional properties 'replicaCountt' not allowed"),
        ({"redis.tls.caSecretKy": "ca.pem"}, "/redis/tls", "'caSecretKy' not allowed"),
        ({"config.extra.LOG_LEVEL": "debug"}, "/config/extra", "LOG_LEVEL"),
        ({"autoscaling.maxReplicas": "ten"}, "/autoscaling/maxReplicas", "want integer"),
        ({"image.digest": "sha256:abc"}, "/image/digest", "does not match pattern"),
    ],
)
def test_schema_rejects_bad_values_with_their_path(
    helm: Helm, chart: Path, sets: dict[str, str], path: str, problem: str
) -> None:
    result = helm.template_text(chart, sets=sets, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert f"at {path}" in result.stderr or f"at '{path}'" in result.stderr, result.stderr
    assert problem in result.stderr, result.stderr


def _schema_at(schema: Mapping[str, Any], path: list[str]) -> Mapping[str, Any] | None:
    node: Mapping[str, Any] | None = schema
    for key in path:
        if node is None:
            return None
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        node = props.get(key) if key in props else (extra if isinstance(extra, dict) else None)
    return node


def _leaves(
    values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = ""
) -> Iterator[str]:
    """Documented keys: scalars, lists, empty maps and maps the schema declares free-form."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = _schema_at(schema, path.split("."))
        free_map = node is not None and isinstance(node.get("additionalProperties"), dict)
        if isinstance(value, dict) and value and not free_map:
            yield from _leaves(value, schema, f"{path}.")
        else:
            yield path


def test_every_value_is_documented_and_in_the_closed_schema() -> None:
    text = (CHART_SRC / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((CHART_SRC / "values.schema.json").read_text())
    params = re.findall(r"^\s*## @param (\S+) \S", text, flags=re.M)
    leaves = list(_leaves(values, schema))
    assert len(params) == len(set(params)), "a key is documented twice"
    assert sorted(leaves) == sorted(params), (
        f"undocumented: {sorted(set(leaves) - set(params))}; "
        f"documented but absent: {sorted(set(params) - set(leaves))}"
    )
    assert re.search(r"^## @section ", text, flags=re.M)
    descriptions = dict(re.findall(r"^\s*## @param (\S+) (.+)$", text, flags=re.M))
    for leaf in leaves:
        node = _schema_at(schema, leaf.split("."))
        assert node is not None, f"{leaf} is not in the schema"
        assert node.get("description") == descriptions[leaf], (
            f"{leaf}: schema and values.yaml differ"
        )

    def closed(node: Mapping[str, Any], path: str) -> Iterator[str]:
        if node.get("type") == "object" and path not in SCHEMA_OPEN_PATHS:
            extra = node.get("additionalProperties")
            if extra is not False and not isinstance(extra, dict):
                yield path or "(root)"
            for key, child in node.get("properties", {}).items():
                yield from closed(child, f"{path}.{key}".lstrip("."))
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            yield from closed(node["items"], f"{path}[]")

    assert list(closed(schema, "")) == [], "objects without additionalProperties: false"


def test_budget_keys_repeat_the_subcharts_defaults() -> None:
    ours_ = yaml.safe_load((CHART_SRC / "values.yaml").read_text())["pgbouncer"]
    theirs = yaml.safe_load((PGBOUNCER_SRC / "values.yaml").read_text())
    for key in BUDGET_KEYS:
        mine, sub = ours_, theirs
        for part in key.split("."):
            mine, sub = mine[part], sub[part]
        assert mine == sub, f"pgbouncer.{key}: {mine} here, {sub} in deploy/pgbouncer"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(renders: dict[str, list[Doc]], value_set: str) -> None:
    docs = renders[value_set]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Job", "Pod", "NetworkPolicy"} <= kinds
    checked = validate_kubernetes(docs)
    assert checked == len(
        [d for d in docs if d["kind"] not in ("ServiceMonitor", "PrometheusRule")]
    )


def test_unknown_kinds_do_not_pass_silently() -> None:
    crd_instance = {
        "apiVersion": "skillcoach.io/v1",
        "kind": "PoolPolicy",
        "metadata": {"name": "x"},
    }
    with pytest.raises(ToolError, match="unknown kind"):
        validate_kubernetes([crd_instance])


def test_monitoring_passes_the_prometheus_operator_models(
    tools: Tools, renders: dict[str, list[Doc]]
) -> None:
    counted = 0
    for value_set, docs in renders.items():
        values = merged_values(value_set)
        wanted = int(values["metrics"]["serviceMonitor"]["enabled"]) + int(
            values["metrics"]["prometheusRule"]["enabled"]
        )
        ours_ = [d for d in docs if d["kind"] in ("ServiceMonitor", "PrometheusRule") and ours(d)]
        assert len(ours_) == wanted, value_set
        counted += validate_prometheus(tools, ours_)
    assert counted >= 2, "no value set turns monitoring on"
    broken = find(renders["monitoring-values.yaml"], "ServiceMonitor")
    broken["spec"]["endpoints"][0]["interval"] = 30
    with pytest.raises(ToolError, match="interval"):
        validate_prometheus(tools, [broken])


def test_checkov_passes_every_value_set(
    tools: Tools, rendered: dict[str, str], tmp_path: Path
) -> None:
    """One checkov run over every value set's render. A check may only be skipped by a
    checkov.io/skipN annotation that gives the reason, next to the resource."""
    for name, text in rendered.items():
        (tmp_path / f"{name.removesuffix('.yaml')}.yaml").write_text(text)
    failures = checkov_failures(tools, tmp_path, "kubernetes")
    summary = sorted(
        {f"{f['check_id']} {f['resource']} ({Path(f['file_path']).name})" for f in failures}
    )
    assert summary == [], "checkov failed:\n" + "\n".join(summary)
    for name, text in rendered.items():
        for doc in parse_manifests(text):
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = str(value).partition("=")
                    assert re.fullmatch(r"CKV2?_K8S_\d+", check), (name, value)
                    assert len(reason.split()) >= 6, f"{name}: skip without a reason: {value}"


# ---- the API Deployment ----------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_api_deployment_probes_security_and_drain(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    values = merged_values(value_set)
    deployment = api_deployment(renders[value_set])
    pod = deployment["spec"]["template"]
    api = container(pod, "api")
    assert api["command"] == ["skillcoach"] and api["args"] == ["serve"]
    probes = {
        kind: api[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "http"}
    # Start-up and liveness only ask whether the process runs: a fresh database without a
    # model must leave pods running and unready, never restarting.
    assert probes["startupProbe"] == probes["livenessProbe"] == {"path": "/healthz", "port": "http"}

    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = api["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in api["volumeMounts"]} >= {"/tmp"}
    assert spec["automountServiceAccountToken"] is False
    assert api["resources"]["requests"] and api["resources"]["limits"]

    sleep = api["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == ["sleep", str(values["preStopSleepSeconds"])]
    # The preStop sleep, then uvicorn's graceful shutdown, must fit in the grace period.
    graceful = SERVER_OPTIONS["timeout_graceful_shutdown"]
    assert isinstance(graceful, int)
    assert spec["terminationGracePeriodSeconds"] > values["preStopSleepSeconds"] + graceful

    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spec["topologySpreadConstraints"]:
        assert selects(constraint["labelSelector"], pod["metadata"]["labels"])

    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxSurge"] == values["updateStrategy"]["maxSurge"]
    assert pod["metadata"]["labels"]["skillcoach.io/db-client"] == "true"
    assert selects(deployment["spec"]["selector"], pod["metadata"]["labels"])
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "api"


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (
            {"terminationGracePeriodSeconds": "12"},
            ["terminationGracePeriodSeconds (12)", "preStopSleepSeconds"],
        ),
        (
            {"autoscaling.minReplicas": "12"},
            ["autoscaling.minReplicas (12)", "autoscaling.maxReplicas (10)"],
        ),
        (
            {"updateStrategy.maxSurge": "0"},
            ["updateStrategy.maxSurge", "updateStrategy.maxUnavailable"],
        ),
        (
            # An external PgBouncer: the subchart, which refuses this too, is not rendered.
            {
                "pgbouncer.enabled": "false",
                "database.host": "pgb",
                "pgbouncer.pdb.minAvailable": "2",
            },
            ["pgbouncer.pdb.minAvailable (2)", "pgbouncer.replicaCount (2)"],
        ),
        ({"database.user": "someone"}, ["database.user (someone)", "pgbouncer.auth.appUser"]),
        ({"pgbouncer.enabled": "false"}, ["pgbouncer.enabled", "database.host"]),
        (
            {"redis.cluster": "false", "redis.endpoints": "{a:1,b:2}"},
            ["redis.cluster=false", "redis.endpoints"],
        ),
        (
            {"config.extra.SKILLCOACH_POOL_SIZE": "3"},
            ["config.extra.SKILLCOACH_POOL_SIZE", "poolBudget"],
        ),
        ({"config.extra.SKILLCOACH_PORT": "80"}, ["config.extra.SKILLCOACH_PORT"]),
        ({"demoSecret.enabled": "true"}, ["demoSecret.databasePassword"]),
    ],
)
def test_cross_field_validation_names_the_values(
    helm: Helm, chart: Path, sets: dict[str, str], named: list[str]
) -> None:
    result = helm.template_text(chart, sets=sets, check=False)
    assert result.returncode != 0
    assert "VALUES VALIDATION" in result.stderr or "execution error" in result.stderr, result.stderr
    for value in named:
        assert value in result.stderr, f"{value} not named in: {result.stderr}"


def test_checksum_restarts_pods_for_settings_but_not_for_the_pool_file(
    helm: Helm, chart: Path, renders: dict[str, list[Doc]]
) -> None:
    base = renders["default"]
    annotations = api_deployment(base)["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert not [k for k in annotations if "pool" in k], annotations

    settings_changed = helm.template(chart, sets={"config.queueAllowance": "100"})
    after = api_deployment(settings_changed)["spec"]["template"]["metadata"]["annotations"]
    assert after["checksum/config"] != annotations["checksum/config"]

    pool_changed = helm.template(chart, sets={"autoscaling.maxReplicas": "80"})
    pool_name = f"{FULLNAME}-pool"
    assert (
        find(pool_changed, "ConfigMap", pool_name)["data"]
        != find(base, "ConfigMap", pool_name)["data"]
    )
    # A new pool file reaches running pods through the volume; the pod template must not move.
    assert (
        api_deployment(pool_changed)["spec"]["template"] == api_deployment(base)["spec"]["template"]
    )


def test_pool_file_is_mounted_as_a_directory(renders: dict[str, list[Doc]]) -> None:
    pod = api_deployment(renders["default"])["spec"]["template"]
    api = container(pod, "api")
    [mount] = [m for m in api["volumeMounts"] if m["name"] == "pool"]
    assert "subPath" not in mount, "a subPath mount never sees the ConfigMap's updates"
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "pool"]
    assert volume["configMap"]["name"] == f"{FULLNAME}-pool"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_pods_settings_are_accepted_by_the_service(
    renders: dict[str, list[Doc]], value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings ConfigMap, loaded by the service's own Settings: every variable is one the
    service knows (it would silently ignore a misspelt one), and the ports, the pool file and
    the database address agree with the Deployment, the pool ConfigMap and PgBouncer."""
    docs = renders[value_set]
    values = merged_values(value_set)
    data = find(docs, "ConfigMap", FULLNAME)["data"]
    unknown = [
        k for k in data if k.removeprefix("SKILLCOACH_").lower() not in Settings.model_fields
    ]
    assert unknown == []
    for key in [k for k in os.environ if k.startswith("SKILLCOACH_")]:
        monkeypatch.delenv(key)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SKILLCOACH_DATABASE_PASSWORD", "from-a-secret")
    settings = load_settings()

    pod = api_deployment(docs)["spec"]["template"]
    api = container(pod, "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert settings.port == ports["http"] and settings.metrics_port == ports["metrics"]
    assert settings.port != settings.metrics_port
    assert settings.host == "0.0.0.0"
    assert settings.environment == values["config"]["environment"]
    assert settings.cache_enabled is values["cache"]["enabled"]

    assert settings.pool_file is not None
    [mount] = [m for m in api["volumeMounts"] if m["name"] == "pool"]
    assert str(settings.pool_file.parent) == mount["mountPath"]
    assert settings.pool_file.name in find(docs, "ConfigMap", f"{FULLNAME}-pool")["data"]

    url = make_url(settings.sqlalchemy_url)
    assert url.password == "from-a-secret" and url.username == values["database"]["user"]
    assert url.port == values["pgbouncer"]["service"]["port"]
    assert url.database == values["pgbouncer"]["postgresql"]["database"]
    if values["pgbouncer"]["enabled"]:
        service = find(docs, "Service", f"{RELEASE}-pgbouncer")
        assert url.host == service["metadata"]["name"]
        assert url.port in [p["port"] for p in service["spec"]["ports"]]
    else:
        assert url.host == values["database"]["host"]

    env = {e["name"]: e for e in api["env"]}
    ref = env["SKILLCOACH_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    if settings.cache_enabled:
        redis_url = settings.redis_url.get_secret_value()
        scheme = "rediss" if values["redis"]["tls"]["enabled"] else "redis"
        if values["redis"]["cluster"]:
            assert redis_url == f"{scheme}+cluster://" + ",".join(values["redis"]["endpoints"])
        else:
            assert redis_url.startswith(f"{scheme}://{values['redis']['endpoints'][0]}")
        if values["redis"]["existingSecret"]:
            assert (
                env["SKILLCOACH_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
                == values["redis"]["existingSecret"]
            )
        if values["redis"]["tls"]["caSecret"]:
            assert settings.redis_tls_ca_file is not None
            [ca] = [m for m in api["volumeMounts"] if m["name"] == "redis-ca"]
            assert str(settings.redis_tls_ca_file.parent) == ca["mountPath"]


# ---- Service, metrics port, HPA, PDB, ServiceAccount ------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_metrics_port_is_separate_from_the_api_port(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    docs = renders[value_set]
    pod = api_deployment(docs)["spec"]["template"]
    service = find(docs, "Service", FULLNAME)
    assert selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "metrics"}
    assert ports["http"]["targetPort"] == "http" and ports["metrics"]["targetPort"] == "metrics"
    assert ports["http"]["port"] != ports["metrics"]["port"]
    container_ports = {p["name"]: p["containerPort"] for p in container(pod, "api")["ports"]}
    assert container_ports["http"] != container_ports["metrics"]
    for monitor in [d for d in docs if d["kind"] == "ServiceMonitor"]:
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_hpa_and_pdb(renders: dict[str, list[Doc]], value_set: str) -> None:
    docs = renders[value_set]
    values = merged_values(value_set)
    deployment = api_deployment(docs)
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    if not values["autoscaling"]["enabled"]:
        assert hpas == [] and deployment["spec"]["replicas"] == values["replicaCount"]
    else:
        [hpa] = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": FULLNAME,
        }
        assert hpa["spec"]["maxReplicas"] == values["autoscaling"]["maxReplicas"]
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        in_flight = values["autoscaling"]["inFlight"]
        assert ("Pods" in metrics) is in_flight["enabled"]
        if in_flight["enabled"]:
            assert metrics["Pods"]["pods"]["metric"]["name"] == in_flight["metricName"]
            assert metrics["Pods"]["pods"]["target"]["type"] == "AverageValue"
        behavior = hpa["spec"]["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
        down = behavior["scaleDown"]["stabilizationWindowSeconds"]
        assert down == values["autoscaling"]["scaleDownStabilizationSeconds"] > 0
    # The API's PDB (the operator's own is checked with the operator).
    pdbs = [
        d
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
        and ours(d)
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    ]
    if values["pdb"]["enabled"]:
        [pdb] = pdbs
        assert selects(
            pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
        )
    else:
        assert pdbs == []


def test_in_flight_metric_exists_in_the_service() -> None:
    """The HPA's Pods metric is a gauge the replicas export today."""
    name = merged_values("default")["autoscaling"]["inFlight"]["metricName"]
    sources = "\n".join(p.read_text() for p in (ROOT / "service" / "skillcoach").rglob("*.py"))
    assert f'"{name}"' in sources


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_service_accounts_mount_no_token_except_the_operators(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    docs = renders[value_set]
    for sa in [d for d in docs if d["kind"] == "ServiceAccount" and ours(d)]:
        assert sa["automountServiceAccountToken"] is False, sa["metadata"]["name"]
    for owner, pod in pod_templates([d for d in docs if ours(d)]):
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        mounted = pod["spec"]["automountServiceAccountToken"]
        assert mounted is (component == "operator"), owner["metadata"]["name"]


# ---- NetworkPolicy ---------------------------------------------------------------------------


def _policies(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def _pods_by_component(docs: list[Doc]) -> dict[str, Doc]:
    pods: dict[str, Doc] = {}
    for _, pod in pod_templates(docs):
        labels = pod["metadata"]["labels"]
        if labels["app.kubernetes.io/name"] == "pgbouncer":
            pods["pgbouncer"] = pod
        else:
            pods[labels["app.kubernetes.io/component"]] = pod
    return pods


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_network_policies_select_every_pod_of_the_chart(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    docs = renders[value_set]
    policies = _policies(docs)
    for owner, pod in pod_templates([d for d in docs if ours(d)]):
        labels = pod["metadata"]["labels"]
        selecting = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert selecting, f"no NetworkPolicy selects {owner['kind']}/{owner['metadata']['name']}"
        for policy in selecting:
            assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_api_reaches_only_pgbouncer_redis_dns_and_the_collector(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    docs = renders[value_set]
    values = merged_values(value_set)
    pods = _pods_by_component(docs)
    policy = find(docs, "NetworkPolicy", FULLNAME)
    assert selects(policy["spec"]["podSelector"], pods["api"]["metadata"]["labels"])
    postgres_port = values["pgbouncer"]["postgresql"]["port"]
    redis_ports = {int(e.rsplit(":", 1)[1]) for e in values["redis"]["endpoints"]}
    seen: set[str] = set()
    for rule in policy["spec"]["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert postgres_port not in ports, "the API must not reach PostgreSQL directly"
        if ports == {53}:
            seen.add("dns")
        elif ports == {"pgbouncer"}:
            [peer] = rule["to"]
            pgbouncer = pods["pgbouncer"]
            assert selects(peer["podSelector"], pgbouncer["metadata"]["labels"])
            named = [p["name"] for c in pgbouncer["spec"]["containers"] for p in c.get("ports", [])]
            assert "pgbouncer" in named
            seen.add("pgbouncer")
        elif ports == {values["pgbouncer"]["service"]["port"]}:
            assert not values["pgbouncer"]["enabled"]
            seen.add("pgbouncer")
        elif values["tracing"]["enabled"] and ports == {collector_port(values)}:
            cidr = values["tracing"]["collectorCIDR"]
            assert rule.get("to", []) == ([{"ipBlock": {"cidr": cidr}}] if cidr else [])
            seen.add("collector")
        else:
            assert values["cache"]["enabled"] and ports == redis_ports, ports
            cidr = values["networkPolicy"]["redisCIDR"]
            assert rule.get("to", []) == ([{"ipBlock": {"cidr": cidr}}] if cidr else [])
            seen.add("redis")
    assert seen == (
        {"dns", "pgbouncer"}
        | ({"redis"} if values["cache"]["enabled"] else set())
        | ({"collector"} if values["tracing"]["enabled"] else set())
    )

    ingress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["ingress"]]
    assert sorted(map(sorted, ingress_ports)) == [["http"], ["metrics"]]
    [api_rule] = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "http"]
    if values["networkPolicy"]["allowExternal"]:
        assert "from" not in api_rule
    else:
        [peer] = api_rule["from"]
        assert peer["podSelector"]["matchLabels"] == {f"{FULLNAME}-client": "true"}
        assert selects(peer["podSelector"], pods["test"]["metadata"]["labels"])


def collector_port(values: dict[str, Any]) -> int:
    url = urllib.parse.urlsplit(values["tracing"]["endpoint"])
    return url.port or (443 if url.scheme == "https" else 80)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_tracing_is_configured_by_the_standard_variables_or_not_at_all(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    values = merged_values(value_set)
    api = find(renders[value_set], "Deployment", FULLNAME)
    env = [e["name"] for e in api["spec"]["template"]["spec"]["containers"][0]["env"]]
    otel = [n for n in env if n.startswith("OTEL_")]
    if not values["tracing"]["enabled"]:
        assert otel == []
        return
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME"} <= set(
        otel
    )
    # $(POD_NAME) in the resource attributes expands only if POD_NAME comes first.
    assert env.index("POD_NAME") < env.index("OTEL_RESOURCE_ATTRIBUTES")


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_db_clients_carry_the_label_pgbouncer_admits(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    """API pods, the migration Job and the training CronJob's pods carry
    skillcoach.io/db-client; the operator never does; the jobs' policy lets them reach
    PgBouncer and nothing reach them."""
    docs = renders[value_set]
    pods = _pods_by_component(docs)
    label = "skillcoach.io/db-client"
    for component in ("api", "migrate", "train"):
        if component in pods:
            assert pods[component]["metadata"]["labels"].get(label) == "true", component
    if "operator" in pods:
        assert label not in pods["operator"]["metadata"]["labels"]
    jobs = find(docs, "NetworkPolicy", f"{FULLNAME}-jobs")
    assert "ingress" not in jobs["spec"], "nothing may connect to the jobs"
    for component in ("migrate", "train", "test"):
        if component in pods:
            assert selects(jobs["spec"]["podSelector"], pods[component]["metadata"]["labels"])
    assert not selects(jobs["spec"]["podSelector"], pods["api"]["metadata"]["labels"])


def test_pgbouncer_admits_only_the_db_clients(renders: dict[str, list[Doc]]) -> None:
    """PgBouncer's own NetworkPolicy (the subchart's) lets in the API and the jobs, and not
    the operator: the two charts agree on the label."""
    docs = renders["operator-values.yaml"]
    pods = _pods_by_component(docs)
    pgbouncer_labels = pods["pgbouncer"]["metadata"]["labels"]
    guarding = [p for p in _policies(docs) if selects(p["spec"]["podSelector"], pgbouncer_labels)]
    assert guarding, "no NetworkPolicy guards PgBouncer's pods"

    def admitted(labels: Mapping[str, str]) -> bool:
        for policy in guarding:
            for rule in policy["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    if "podSelector" in peer and selects(peer["podSelector"], labels):
                        return True
        return False

    for component in ("api", "migrate", "train"):
        assert admitted(pods[component]["metadata"]["labels"]), component
    assert not admitted(pods["operator"]["metadata"]["labels"])


# ---- jobs, operator, secrets, images --------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_migrations_run_as_a_hook_before_every_upgrade(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    values = merged_values(value_set)
    job = find(renders[value_set], "Job", f"{FULLNAME}-migrate")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    # At first install this release's PgBouncer (and demo Secret) do not exist while
    # pre-install hooks run: the Job then runs right after install.
    needs_release = values["pgbouncer"]["enabled"] or values["demoSecret"]["enabled"]
    assert hooks == (
        {"post-install", "pre-upgrade"} if needs_release else {"pre-install", "pre-upgrade"}
    )
    pod = job["spec"]["template"]
    assert container(pod, "migrate")["args"] == ["migrate"]
    env = {e["name"] for e in container(pod, "migrate")["env"]}
    assert {"SKILLCOACH_DATABASE_URL", "SKILLCOACH_DATABASE_PASSWORD"} <= env
    assert "envFrom" not in container(pod, "migrate"), "hooks must not need the release's ConfigMap"
    assert job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_training_cronjob_promotes_through_the_quality_gate(
    renders: dict[str, list[Doc]], value_set: str
) -> None:
    values = merged_values(value_set)
    cronjobs = [d for d in renders[value_set] if d["kind"] == "CronJob"]
    if not values["training"]["enabled"]:
        assert cronjobs == []
        return
    [cron] = cronjobs
    assert cron["spec"]["schedule"] == values["training"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    train = container(cron["spec"]["jobTemplate"]["spec"]["template"], "train")
    assert train["command"] == ["skillcoach"] and train["args"] == ["train", "--promote"]
    assert "--force" not in train["args"]


def test_train_promote_is_a_cli_flag_of_the_service() -> None:
    args = build_parser().parse_args(["train", "--promote"])
    assert args.promote is True and args.force is False


def test_operator_has_a_minimal_namespaced_role(renders: dict[str, list[Doc]]) -> None:
    """The Role grants exactly what skillcoach_operator.rbac lists (tests/operator checks that
    the running operator uses all of it and nothing else); ConfigMap reads and writes are
    limited to the two ConfigMaps it manages."""
    docs = renders["operator-values.yaml"]
    name = f"{FULLNAME}-operator"
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = find(docs, "Role", name)
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
                if (group, resource) in NAMED_ONLY and "resourceNames" in rule:
                    assert set(rule["verbs"]) <= NAMED_ONLY[(group, resource)]
                    assert rule["resourceNames"] == [f"{FULLNAME}-pool", f"{RELEASE}-pgbouncer"]
    assert granted == {key: set(verbs) for key, verbs in PERMISSIONS.items()}
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert [(r["resources"], sorted(r["verbs"])) for r in named] == [
        (["configmaps"], ["get", "patch"])
    ]
    binding = find(docs, "RoleBinding", name)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": name,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    deployment = find(docs, "Deployment", name)
    pod = deployment["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == name
    operator = container(pod, "operator")
    assert operator["image"].split("@")[0].rsplit(":", 1)[0].endswith("skillcoach-operator")
    assert operator["command"] == ["skillcoach-operator"] and "args" not in operator
    env = {e["name"]: e for e in operator["env"]}
    assert env["SKILLCOACH_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    # Liveness is kopf's endpoint, on the port the probe names.
    liveness = env["SKILLCOACH_OPERATOR_LIVENESS"]["value"]
    assert liveness == "http://0.0.0.0:8080/healthz"
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert operator["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pdb = find(docs, "PodDisruptionBudget", name)
    assert selects(pdb["spec"]["selector"], pod["metadata"]["labels"])
    assert pdb["spec"]["maxUnavailable"] == 1
    for value_set, other in renders.items():
        # The CRD ships with the chart (crds/), whatever the values.
        assert find(other, "CustomResourceDefinition", "poolpolicies.skillcoach.io")
        if not merged_values(value_set)["operator"]["enabled"]:
            assert not [d for d in other if d["kind"] in ("Role", "RoleBinding", "PoolPolicy")], (
                value_set
            )


def test_secrets_by_name_and_a_demo_secret(renders: dict[str, list[Doc]]) -> None:
    for value_set, docs in renders.items():
        values = merged_values(value_set)
        secrets = [d for d in docs if d["kind"] == "Secret" and ours(d)]
        annotations = api_deployment(docs)["spec"]["template"]["metadata"]["annotations"]
        env = {
            e["name"]: e for e in container(api_deployment(docs)["spec"]["template"], "api")["env"]
        }
        ref = env["SKILLCOACH_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]
        if values["demoSecret"]["enabled"]:
            [secret] = secrets
            assert ref == {"name": secret["metadata"]["name"], "key": "database-password"}
            password = base64.b64decode(secret["data"]["database-password"]).decode()
            assert password == values["demoSecret"]["databasePassword"]
            assert "checksum/secret" in annotations
        else:
            assert secrets == [], value_set
            expected = (
                values["database"]["existingSecret"]
                or values["pgbouncer"]["auth"]["existingSecret"]
            )
            assert ref["name"] == expected, value_set


def test_missing_database_secret_names_the_values(helm: Helm, chart: Path) -> None:
    result = helm.template_text(
        chart,
        sets={
            "database.existingSecret": "",
            "pgbouncer.auth.existingSecret": "",
            "pgbouncer.auth.createSecret": "true",
        },
        check=False,
    )
    assert result.returncode != 0
    assert "database.existingSecret" in result.stderr, result.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_images_are_pinned(renders: dict[str, list[Doc]], value_set: str) -> None:
    values = merged_values(value_set)
    for _, pod in pod_templates([d for d in renders[value_set] if ours(d)]):
        for c in pod["spec"]["containers"]:
            image = c["image"]
            name = image.split("@")[0].rsplit("/", 1)[-1]
            assert "@sha256:" in image or (":" in name and not name.endswith(":latest")), image
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            section = values["operator"]["image"] if component == "operator" else values["image"]
            if section["digest"]:
                assert image.endswith("@" + section["digest"]), image
            if section["registry"]:
                assert image.startswith(section["registry"] + "/"), image


# ---- helm test pod, NOTES, monitoring content, dashboards -----------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_test_pod(renders: dict[str, list[Doc]], value_set: str) -> None:
    values = merged_values(value_set)
    pod = find(renders[value_set], "Pod", f"{FULLNAME}-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    test = container(pod, "test")
    assert test["command"] == ["python", "-c"]
    script = test["args"][0]
    assert script == (CHART_SRC / "files" / "helm_test.py").read_text()
    env = {e["name"]: e for e in test["env"]}
    port = values["service"]["ports"]["http"]
    assert env["SKILLCOACH_TEST_URL"]["value"] == f"http://{FULLNAME}:{port}"
    if values["tests"]["apiKeySecret"]:
        ref = env["SKILLCOACH_TEST_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == values["tests"]["apiKeySecret"]
        assert "skillcoach.io/db-client" not in pod["metadata"]["labels"]
    else:
        assert "SKILLCOACH_DATABASE_PASSWORD" in env
        assert pod["metadata"]["labels"]["skillcoach.io/db-client"] == "true"


def _notes(helm: Helm, chart: Path, value_set: str) -> str:
    result = helm.run(
        "install", RELEASE, str(chart), "--namespace", NAMESPACE, "--dry-run=client",
        *[a for f in value_files(chart, value_set) for a in ("--values", str(f))],
    )  # fmt: skip
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_tell_how_to_reach_it_and_warn_on_unsafe_settings(helm: Helm, chart: Path) -> None:
    demo = _notes(helm, chart, "demo-values.yaml")
    assert f"port-forward svc/{FULLNAME}" in demo
    assert "skillcoach apikey create" in demo
    warnings = demo.split("WARNINGS", 1)[1]
    for needle in (
        "demoSecret.enabled",
        'config.environment is "dev"',
        "pdb.enabled is false",
        "One API pod",
    ):
        assert needle in warnings, needle
    production = _notes(helm, chart, "production-values.yaml")
    assert "Each API pod gets 16 connections" in production
    for needle in ("demoSecret", "config.environment", "pinned by tag", "redis.tls.enabled"):
        assert needle not in production, needle


def test_prometheus_rule_carries_the_alert_files(renders: dict[str, list[Doc]]) -> None:
    rule = find(renders["monitoring-values.yaml"], "PrometheusRule")
    files = sorted((CHART_SRC / "files" / "alerts").glob("*.yaml"))
    assert files
    expected = [g for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    alerts = {r["alert"]: r for g in expected for r in g["rules"]}
    waiters = alerts["SkillcoachDbPoolWaiters"]
    assert "skillcoach_db_pool_waiters" in waiters["expr"] and waiters["expr"].endswith("> 0")
    assert waiters["for"] == "2m"
    timeouts = alerts["SkillcoachDbCheckoutTimeouts"]
    assert "rate(skillcoach_db_checkout_timeouts_total[5m])" in timeouts["expr"]
    for alert in alerts.values():
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert alert["labels"]["severity"]


def test_dashboards_become_configmaps_for_the_grafana_sidecar(helm: Helm, tmp_path: Path) -> None:
    chart = copy_chart(helm, tmp_path)
    sets = {"metrics.dashboards.enabled": "true"}
    before = [d for d in helm.template(chart, sets=sets) if d["kind"] == "ConfigMap"]
    dashboards = chart / "files" / "dashboards"
    dashboards.mkdir(parents=True, exist_ok=True)
    dashboard = {
        "title": "skillcoach pool",
        "panels": [{"type": "timeseries", "title": "<waiters>"}],
    }
    (dashboards / "Pool Overview.json").write_text(json.dumps(dashboard))
    docs = helm.template(chart, sets=sets)
    added = [d for d in docs if d["kind"] == "ConfigMap" and d not in before]
    [configmap] = added
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["Pool Overview.json"]) == dashboard
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", configmap["metadata"]["name"])
    assert validate_kubernetes([configmap]) == 1
    off = helm.template(chart)
    assert not [
        d
        for d in off
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
    ]


def test_long_release_names_stay_dns_labels(helm: Helm, chart: Path) -> None:
    release = "a-release-name-at-the-helm-limit-of-fifty-three-chars"
    text = helm.template_text(
        chart, release=release, values=[chart / "ci" / "operator-values.yaml"]
    ).stdout
    for doc in parse_manifests(text):
        name = doc["metadata"]["name"]
        if doc["kind"] == "CustomResourceDefinition":
            # <plural>.<group>, a DNS subdomain the release does not touch.
            assert name == "poolpolicies.skillcoach.io"
            continue
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
