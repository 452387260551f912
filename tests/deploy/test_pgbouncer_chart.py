"""The PgBouncer chart (deploy/pgbouncer): lint, strict Kubernetes schemas, checkov, its values
schema, the server budget against plan_pools, the one pgbouncer.ini template shared with the
local stack, the NetworkPolicy, the rollout and reload design, and its init script and config
run for real."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import pwd
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from sqlalchemy.engine import make_url

from skillcoach.pgbouncer.admin import admin_query
from skillcoach_devstack.pgbouncer import (
    ADMIN_USER,
    PgBouncer,
    PgBouncerConfig,
    default_template_path,
    render_config,
    render_userlist,
)
from skillcoach_devstack.processes import free_port, wait_until
from skillcoach_devstack.tools import Tools
from skillcoach_operator.sizing import Budget, plan_pools
from tests.deploy.tooling import (
    ROOT,
    Helm,
    checkov_failures,
    validate_kubernetes,
    validate_prometheus,
)

CHART = ROOT / "deploy" / "pgbouncer"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
DEFAULT_VALUES = CHART / "ci" / "default-values.yaml"
# What a release must give on top of the defaults.
REQUIRED = {"postgresql.host": "pg.example", "auth.existingSecret": "pgbouncer-auth"}
AUTH_DIR = "/etc/pgbouncer/auth"


def _docs(helm: Helm, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in helm.template(CHART, **kwargs)}


def _ini(helm: Helm, **kwargs: Any) -> str:
    text: str = _docs(helm, **kwargs)["ConfigMap"]["data"]["pgbouncer.ini"]
    return text


def _parse_ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_ci_value_sets_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "production-values.yaml"}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict(helm: Helm, values: Path) -> None:
    result = helm.lint(CHART, values=[values])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_manifests_are_valid_kubernetes(helm: Helm, tools: Tools, values: Path) -> None:
    docs = helm.template(CHART, values=[values])
    kinds = [d["kind"] for d in docs]
    assert {"Deployment", "Service", "ConfigMap"} <= set(kinds)
    assert validate_kubernetes(docs) == len([k for k in kinds if k != "PodMonitor"])
    assert validate_prometheus(tools, docs) == kinds.count("PodMonitor")
    # Every resource lands in the release's namespace, explicitly.
    assert {d["metadata"].get("namespace") for d in docs} == {"skillcoach"}


def test_checkov_finds_nothing_and_every_skip_is_justified(
    helm: Helm, tools: Tools, tmp_path: Path
) -> None:
    for values in CI_VALUES:
        text = helm.template_text(CHART, values=[values]).stdout
        (tmp_path / values.name).write_text(text)
        for doc in yaml.safe_load_all(text):
            for key, note in ((doc or {}).get("metadata", {}).get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    assert re.fullmatch(r"CKV2?_K8S_\d+=\S.{20,}", note), note
    failed = checkov_failures(tools, tmp_path, "kubernetes")
    assert failed == [], [(f["check_id"], f["resource"], f["file_path"]) for f in failed]


# --- values and their schema -------------------------------------------------------------


def _values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return loaded


def test_contract_defaults_the_main_chart_relies_on() -> None:
    v = _values()
    assert (v["replicaCount"], v["maxClientConn"], v["reservePoolSize"]) == (2, 1000, 5)
    assert v["pdb"]["minAvailable"] == 1
    assert v["postgresql"] == {
        "host": "",
        "port": 5432,
        "database": "skillcoach",
        "maxConnections": 100,
        "serverReserve": 10,
    }
    assert v["service"]["port"] == 6432
    assert isinstance(v["reservePoolTimeout"], int | float)
    assert isinstance(v["queryWaitTimeout"], int)
    assert v["auth"]["existingSecret"] == ""
    assert v["reloader"]["image"]["repository"] == "skillcoach-api"
    assert v["reloader"]["image"]["tag"] == "0.1.0"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"]) == ("v2", "pgbouncer", "0.1.0")
    assert chart["appVersion"] == v["image"]["tag"]


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    # A label selector is one value: its labels are the user's.
    if isinstance(node, dict) and node and not prefix.endswith("Selector"):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list) and node and all(isinstance(x, dict) for x in node):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{prefix}[{i}]")
    else:
        yield prefix


def test_every_value_is_documented_with_a_param_line() -> None:
    params = set(re.findall(r"^## @param (\S+)", (CHART / "values.yaml").read_text(), re.M))
    leaves = set(_leaves(_values()))
    assert leaves - params == set(), "values without ## @param"
    assert params - leaves == set(), "## @param lines for values that do not exist"


# Maps whose keys are the user's (labels, selectors' labels, affinity...), not the chart's.
FREE_FORM = {
    "global", "nodeSelector", "tolerations", "affinity", "podAnnotations", "podLabels",
    "service.annotations", "metrics.podMonitor.labels", "imagePullSecrets",
}  # fmt: skip


def _check_schema(schema: dict[str, Any], value: Any, path: str) -> None:
    where = path or "<root>"
    if isinstance(value, dict) and path not in FREE_FORM:
        assert schema.get("type") == "object", where
        assert schema.get("additionalProperties") is False, f"{where}: not closed"
        if path.endswith("Selector"):
            # A label selector: its keys are Kubernetes', its matchLabels the user's.
            assert set(value) <= set(schema["properties"]) == {"matchLabels", "matchExpressions"}
            return
        assert set(schema["properties"]) == set(value), where
        for key, sub in value.items():
            _check_schema(schema["properties"][key], sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        assert schema.get("type") == "array", where
        for item in value:
            _check_schema(schema["items"], item, f"{path}[]")
    else:
        assert "type" in schema or "enum" in schema, where


def test_schema_is_closed_and_covers_every_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    _check_schema(schema, _values(), "")


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        ({"nonsense": "1"}, "nonsense"),
        ({"postgresql.typo": "1"}, "typo"),
        ({"metrics.podMonitor.extra": "x"}, "extra"),
        ({"replicaCount": "0"}, "replicaCount"),
        ({"maxClientConn": "-1"}, "maxClientConn"),
        ({"reservePoolSize": "many"}, "reservePoolSize"),
        ({"service.port": "70000"}, "port"),
        ({"listenAddress": "10.0.0.1"}, "listenAddress"),
        ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
        ({"auth.appUser": "bad name"}, "appUser"),
        ({"postgresql.host": "pg host; rm"}, "host"),
        ({"networkPolicy.postgresql.cidrs[0]": "everywhere"}, "cidrs"),
        ({"image.digest": "latest"}, "digest"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, sets: dict[str, str], complaint: str) -> None:
    result = helm.template_text(CHART, sets={**REQUIRED, **sets}, check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"postgresql.host": ""}, "postgresql.host is required"),
        ({"auth.existingSecret": ""}, "auth.existingSecret is required"),
        ({"pdb.minAvailable": "2"}, "pdb.minAvailable (2) must be below replicaCount (2)"),
        ({"postgresql.serverReserve": "100"}, "must exceed postgresql.serverReserve"),
        ({"preStopDelaySeconds": "58"}, "terminationGracePeriodSeconds must exceed"),
        ({"auth.adminUser": "skillcoach"}, "must differ"),
        (
            {"networkPolicy.postgresql.podSelector": "null"},
            "networkPolicy.postgresql needs a podSelector or cidrs",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(
    helm: Helm, sets: dict[str, str], message: str
) -> None:
    result = helm.template_text(CHART, sets={**REQUIRED, **sets}, check=False)
    assert result.returncode != 0, result.stdout[:500]
    assert message in result.stderr, result.stderr


def test_the_demo_secret_holds_both_passwords(helm: Helm) -> None:
    docs = _docs(helm, sets={"postgresql.host": "pg", "auth.createSecret": "true"})
    secret = docs["Secret"]
    assert secret["metadata"]["name"] == "sc-pgbouncer"
    assert set(secret["data"]) == {"app-password", "admin-password"}
    assert all(len(v) >= 40 for v in secret["data"].values())  # base64 of 32 characters
    volumes = docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "secret"}.items() <= next(v for v in volumes if v["name"] == "secret").items()
    assert next(v for v in volumes if v["name"] == "secret")["secret"]["secretName"] == (
        "sc-pgbouncer"
    )
    # With an existing Secret the chart makes none.
    assert "Secret" not in _docs(helm, sets={**REQUIRED, "auth.createSecret": "true"})


# --- the server budget -------------------------------------------------------------------


def _render_budget(
    helm: Helm, replicas: int, reserve: int, max_connections: int, server_reserve: int
) -> subprocess.CompletedProcess[str]:
    sets = {
        **REQUIRED,
        "replicaCount": str(replicas),
        "reservePoolSize": str(reserve),
        "postgresql.maxConnections": str(max_connections),
        "postgresql.serverReserve": str(server_reserve),
        "pdb.create": "false",
    }
    return helm.template_text(
        CHART, sets=sets, extra=("--show-only", "templates/configmap.yaml"), check=False
    )


GRID = [
    (replicas, reserve, max_connections, server_reserve)
    for replicas in (1, 2, 3, 5)
    for reserve in (0, 5, 12)
    for max_connections, server_reserve in ((100, 10), (40, 10), (500, 0))
]


def test_the_budget_is_plan_pools_over_a_grid(helm: Helm) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: _render_budget(helm, *case), GRID))
    rendered = refused = 0
    for (replicas, reserve, max_connections, server_reserve), result in zip(
        GRID, results, strict=True
    ):
        budget = Budget(
            max_connections=max_connections,
            server_reserve=server_reserve,
            pgbouncer_replicas=replicas,
            pgbouncer_reserve_pool=reserve,
        )
        expected = plan_pools(budget, replicas=1).pgbouncer_default_pool_size
        over = replicas * (expected + reserve) > max_connections - server_reserve
        case = (replicas, reserve, max_connections, server_reserve)
        if over:
            assert result.returncode != 0, case
            assert "pool budget exceeded" in result.stderr, (case, result.stderr)
            refused += 1
            continue
        assert result.returncode == 0, (case, result.stderr)
        (configmap,) = yaml.safe_load_all(result.stdout)
        pg = _parse_ini(configmap["data"]["pgbouncer.ini"])["pgbouncer"]
        assert int(pg["default_pool_size"]) == expected, case
        assert int(pg["max_db_connections"]) == expected + reserve, case
        assert int(pg["reserve_pool_size"]) == reserve, case
        annotations = configmap["metadata"]["annotations"]
        assert annotations["skillcoach.io/default-pool-size"] == str(expected)
        rendered += 1
    # The grid has both outcomes.
    assert rendered >= 20 and refused >= 2, (rendered, refused)


def test_defaults_split_the_budget_across_two_replicas(helm: Helm) -> None:
    pg = _parse_ini(_ini(helm, sets=REQUIRED))["pgbouncer"]
    assert (pg["default_pool_size"], pg["max_db_connections"]) == ("40", "45")


# --- one template for the chart and the local stack -----------------------------------------


def test_the_dev_stack_reads_the_charts_template_file() -> None:
    devstack_copy = default_template_path()
    assert devstack_copy.is_symlink()
    assert devstack_copy.resolve() == (CHART / "files" / "pgbouncer.ini.tmpl").resolve()


@pytest.mark.parametrize(
    "values",
    [
        DEFAULT_VALUES,
        CHART / "ci" / "production-values.yaml",
        CHART / "ci" / "demo-values.yaml",
    ],
    ids=lambda p: p.name,
)
def test_the_chart_renders_exactly_what_render_config_renders(helm: Helm, values: Path) -> None:
    docs = _docs(helm, values=[values])
    ini = docs["ConfigMap"]["data"]["pgbouncer.ini"]
    v = _values()
    override = yaml.safe_load(values.read_text())
    for key, sub in override.items():
        v[key] = {**v[key], **sub} if isinstance(sub, dict) else sub
    pg, auth = v["postgresql"], v["auth"]
    default_pool_size = plan_pools(
        Budget(
            max_connections=pg["maxConnections"],
            server_reserve=pg["serverReserve"],
            pgbouncer_replicas=v["replicaCount"],
            pgbouncer_reserve_pool=v["reservePoolSize"],
        ),
        replicas=1,
    ).pgbouncer_default_pool_size
    cfg = PgBouncerConfig(
        listen_port=6432,
        runtime_dir=Path("/unused"),
        databases=[pg["database"]],
        server_host=pg["host"],
        server_port=pg["port"],
        listen_addr=v["listenAddress"],
        admin_user=auth["adminUser"],
        wildcard=False,
        default_pool_size=default_pool_size,
        reserve_pool_size=v["reservePoolSize"],
        reserve_pool_timeout=v["reservePoolTimeout"],
        max_db_connections=default_pool_size + v["reservePoolSize"],
        max_client_conn=v["maxClientConn"],
        query_wait_timeout=v["queryWaitTimeout"],
        logfile="",
        pidfile="",
        auth_file=f"{AUTH_DIR}/userlist.txt",
    )
    assert ini == render_config(default_template_path().read_text(), cfg)
    annotation = docs["ConfigMap"]["metadata"]["annotations"]["skillcoach.io/pgbouncer-ini-sha256"]
    assert annotation == hashlib.sha256(ini.encode()).hexdigest()
    parsed = _parse_ini(ini)
    bouncer = parsed["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    assert bouncer["listen_addr"] == v["listenAddress"]
    assert bouncer["max_client_conn"] == str(v["maxClientConn"])
    assert bouncer["query_wait_timeout"] == str(v["queryWaitTimeout"])
    assert bouncer["reserve_pool_timeout"] == f"{v['reservePoolTimeout']:g}"
    assert (bouncer["logfile"], bouncer["pidfile"]) == ("", "")
    assert bouncer["admin_users"] == bouncer["stats_users"] == auth["adminUser"]
    assert dict(parsed["databases"]) == {
        pg["database"]: f"host={pg['host']} port={pg['port']} dbname={pg['database']}"
    }
    assert "${" not in ini


def test_a_placeholder_the_chart_does_not_know_fails_the_render(helm: Helm, tmp_path: Path) -> None:
    # A copy of the chart whose template gained a placeholder nobody fills.
    copy = tmp_path / "pgbouncer"
    subprocess.run(["cp", "-r", str(CHART), str(copy)], check=True, timeout=30)
    template = copy / "files" / "pgbouncer.ini.tmpl"
    template.write_text(template.read_text() + "new_setting = ${new_setting}\n")
    result = helm.template_text(copy, sets=REQUIRED, check=False)
    assert result.returncode != 0
    assert "does not fill: ${new_setting}" in result.stderr, result.stderr


def test_it_works_as_a_packaged_file_dependency(helm: Helm, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    (parent / "templates").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: parent\nversion: 0.1.0\ndependencies:\n"
        f"  - name: pgbouncer\n    version: 0.1.0\n    repository: file://{CHART}\n"
    )
    helm.run("dependency", "build", str(parent))
    (packaged,) = (parent / "charts").glob("pgbouncer-*.tgz")
    names = helm.run("show", "chart", str(packaged)).stdout
    assert "name: pgbouncer" in names
    sets = {f"pgbouncer.{k}": v for k, v in REQUIRED.items()}
    docs = {d["kind"]: d for d in helm.template(parent, sets=sets, release="skillcoach")}
    assert docs["Service"]["metadata"]["name"] == "skillcoach-pgbouncer"
    # .Files reaches the template inside the package: the same ini as the chart alone.
    alone = _ini(helm, sets=REQUIRED, release="skillcoach")
    assert docs["ConfigMap"]["data"]["pgbouncer.ini"] == alone


# --- NetworkPolicy, Service, PDB ------------------------------------------------------------


def test_network_policy_admits_db_clients_of_the_release_and_prometheus(helm: Helm) -> None:
    docs = _docs(helm, sets=REQUIRED)
    policy = docs["NetworkPolicy"]["spec"]
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["app.kubernetes.io/name"] == "pgbouncer"
    assert pod_labels["app.kubernetes.io/instance"] == "sc"
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]

    clients, prometheus = policy["ingress"]
    assert clients["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "skillcoach.io/db-client": "true",
                    "app.kubernetes.io/instance": "sc",
                }
            }
        }
    ]
    assert clients["ports"] == [{"port": "pgbouncer", "protocol": "TCP"}]
    (peer,) = prometheus["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert prometheus["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    # The named ports exist on the containers.
    ports = {
        p["name"]: p["containerPort"]
        for c in _containers(docs["Deployment"]).values()
        for p in c.get("ports", [])
    }
    assert ports == {"pgbouncer": 6432, "metrics": 9127}

    database, dns = policy["egress"]
    assert database == {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgresql"}}}],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert {p["port"] for p in dns["ports"]} == {53}


def test_network_policy_egress_to_an_external_database_by_cidr(helm: Helm) -> None:
    docs = _docs(helm, values=[CHART / "ci" / "production-values.yaml"])
    database = docs["NetworkPolicy"]["spec"]["egress"][0]
    assert database == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}],
        "ports": [{"port": 5433, "protocol": "TCP"}],
    }
    # Without the exporter, nobody may come in on a metrics port.
    docs = _docs(helm, sets={**REQUIRED, "metrics.enabled": "false"})
    assert len(docs["NetworkPolicy"]["spec"]["ingress"]) == 1
    assert "exporter" not in _containers(docs["Deployment"])


def test_service_pdb_and_names_follow_the_contract(helm: Helm) -> None:
    docs = _docs(helm, sets=REQUIRED)
    service = docs["Service"]
    assert service["metadata"]["name"] == "sc-pgbouncer"
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (client_port,) = [p for p in service["spec"]["ports"] if p["name"] == "pgbouncer"]
    assert (client_port["port"], client_port["targetPort"]) == (6432, "pgbouncer")
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    # As a dependency of the release "skillcoach".
    names = {
        d["metadata"]["name"] for d in helm.template(CHART, sets=REQUIRED, release="skillcoach")
    }
    assert names == {"skillcoach-pgbouncer"}


# --- the pods: rollouts, reloads, hardening --------------------------------------------------


def test_config_changes_reload_instead_of_restarting_pods(helm: Helm) -> None:
    base = _docs(helm, sets=REQUIRED)
    changed = _docs(helm, sets={**REQUIRED, "maxClientConn": "1500"})
    assert base["ConfigMap"]["data"] != changed["ConfigMap"]["data"]
    # The pod template is byte-for-byte the same: no checksum annotation rolls the pods.
    assert base["Deployment"]["spec"]["template"] == changed["Deployment"]["spec"]["template"]
    pod = base["Deployment"]["spec"]["template"]
    assert not any("checksum" in k for k in (pod["metadata"].get("annotations") or {}))
    spec = pod["spec"]
    (config_volume,) = [v for v in spec["volumes"] if v["name"] == "config"]
    assert config_volume["configMap"]["name"] == base["ConfigMap"]["metadata"]["name"]
    containers = _containers(base["Deployment"])
    for name in ("pgbouncer", "reloader"):
        (mount,) = [m for m in containers[name]["volumeMounts"] if m["name"] == "config"]
        # subPath mounts never see ConfigMap updates.
        assert "subPath" not in mount and mount["mountPath"] == "/etc/pgbouncer/config"
    reloader = containers["reloader"]
    assert reloader["image"] == "skillcoach-api:0.1.0"
    command = reloader["command"]
    assert command[:2] == ["skillcoach", "pgbouncer-reloader"]
    assert command[command.index("--config") + 1] == "/etc/pgbouncer/config/pgbouncer.ini"
    assert containers["pgbouncer"]["command"][-1].endswith(
        "exec /usr/bin/pgbouncer /etc/pgbouncer/config/pgbouncer.ini"
    )
    env = {e["name"]: e.get("value") for e in reloader["env"]}
    assert env["SKILLCOACH_PGBOUNCER_ADMIN_URL"].startswith(
        f"postgresql://{ADMIN_USER}@127.0.0.1:6432/pgbouncer"
    )
    assert env["PGPASSFILE"] == f"{AUTH_DIR}/pgpass"
    liveness = reloader["livenessProbe"]["exec"]["command"]
    assert liveness[:3] == ["skillcoach", "pgbouncer-reloader", "--check-heartbeat"]
    assert liveness[3] == command[command.index("--heartbeat") + 1]


def test_rollouts_drain_pgbouncer_safely_and_stay_in_budget(helm: Helm) -> None:
    deployment = _docs(helm, sets=REQUIRED)["Deployment"]
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    # No surge pod: a third PgBouncer would open server connections beyond the budget.
    assert strategy == {"maxUnavailable": 1, "maxSurge": 0}
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60
    pre_stop = _containers(deployment)["pgbouncer"]["lifecycle"]["preStop"]["exec"]["command"]
    script = pre_stop[-1]
    assert script.startswith("sleep 10; kill -INT 1;")
    # The wait for the exit ends before the grace period does.
    (bound,) = re.findall(r"-lt (\d+)", script)
    assert 10 + int(bound) < 60
    spread = spec["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "pgbouncer",
            "app.kubernetes.io/instance": "sc",
        }


def test_every_container_is_hardened_and_probed(helm: Helm) -> None:
    deployment = _docs(helm, sets=REQUIRED)["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] >= 10000
    containers = list(_containers(deployment).values()) + spec["initContainers"]
    assert {c["name"] for c in containers} == {"pgbouncer", "exporter", "reloader", "auth"}
    for c in containers:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert ":" in c["image"] and not c["image"].endswith(":latest"), c["name"]
    by_name = _containers(deployment)
    # The reloader alone has no readiness probe (the checkov skip says why).
    for name in ("pgbouncer", "exporter"):
        assert "readinessProbe" in by_name[name] and "livenessProbe" in by_name[name], name
    assert by_name["pgbouncer"]["readinessProbe"]["tcpSocket"]["port"] == "pgbouncer"
    assert "readinessProbe" not in by_name["reloader"]
    # No password in any environment or argument: the sidecars read the password file.
    for c in containers:
        for e in c.get("env", []):
            assert "valueFrom" not in e and "password" not in str(e.get("value", "")), e
    auth = next(v for v in spec["volumes"] if v["name"] == "auth")
    assert auth["emptyDir"]["medium"] == "Memory"


# --- the init script and the chart's config, run for real ------------------------------------


def _init_script(helm: Helm, secret_dir: Path, auth_dir: Path, **sets: str) -> str:
    deployment = _docs(helm, sets={**REQUIRED, **sets})["Deployment"]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    script: str = init["command"][-1]
    return script.replace("/etc/pgbouncer/secret", str(secret_dir)).replace(AUTH_DIR, str(auth_dir))


def _run_as(owner: Path) -> tuple[int, int]:
    st = owner.stat()
    return st.st_uid, st.st_gid


@pytest.mark.integration
def test_the_init_script_writes_a_userlist_and_password_file_pgbouncer_and_libpq_accept(
    helm: Helm,
    make_pgbouncer: Callable[..., PgBouncer],
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bouncer = make_pgbouncer()
    user = make_url(pg_url).username or "postgres"
    app_password = "a\"b:c\\d e$f'g"
    admin_password = 'x:y\\z"w $(no)'
    secret_dir, auth_dir = tmp_path / "secret", tmp_path / "auth"
    secret_dir.mkdir()
    auth_dir.mkdir()
    (secret_dir / "app-password").write_text(app_password)
    (secret_dir / "admin-password").write_text(admin_password + "\n")
    script = _init_script(helm, secret_dir, auth_dir, **{"auth.appUser": user})
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=30)

    userlist = (auth_dir / "userlist.txt").read_text()
    assert userlist == render_userlist({user: app_password, ADMIN_USER: admin_password})
    for name in ("userlist.txt", "pgpass"):
        assert (auth_dir / name).stat().st_mode & 0o777 == 0o600, name

    # The bouncer takes the generated userlist (RELOAD re-reads it) ...
    bouncer.userlist_path.write_text(userlist)
    os.chown(bouncer.userlist_path, *_run_as(bouncer.config.runtime_dir))
    admin_query(bouncer.admin_url, "RELOAD")
    # ... and libpq finds the admin password, escapes and all, in the password file.
    monkeypatch.setenv("PGPASSFILE", str(auth_dir / "pgpass"))
    no_password = f"postgresql://{ADMIN_USER}@127.0.0.1:{bouncer.config.listen_port}/pgbouncer"
    assert admin_query(no_password, "SHOW VERSION")
    conn = psycopg2.connect(
        host="127.0.0.1",
        port=bouncer.config.listen_port,
        user=user,
        password=app_password,
        dbname=make_url(pg_url).database,
        connect_timeout=3,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_the_init_script_refuses_an_empty_password(helm: Helm, tmp_path: Path) -> None:
    secret_dir, auth_dir = tmp_path / "secret", tmp_path / "auth"
    secret_dir.mkdir()
    auth_dir.mkdir()
    (secret_dir / "app-password").write_text("")
    (secret_dir / "admin-password").write_text("x")
    script = _init_script(helm, secret_dir, auth_dir)
    result = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0 and "app password" in result.stderr
    assert not (auth_dir / "userlist.txt").exists()


@pytest.mark.integration
def test_the_charts_config_runs_pgbouncer_and_its_prestop_drains_without_breaking_a_transaction(
    helm: Helm, pg_url: str
) -> None:
    """PgBouncer itself accepts the chart's ini (empty logfile and pidfile, every address; only
    the port and the userlist path are moved to fit this machine), and the chart's preStop
    command lets an open transaction finish before PgBouncer exits."""
    url = make_url(pg_url)
    user, database = url.username or "postgres", url.database or "postgres"
    port = free_port()
    runtime = Path("/tmp") / f"skillcoach-chart-pgbouncer-{port}"
    runtime.mkdir(mode=0o700)
    try:
        sets = {
            "postgresql.host": url.host or "127.0.0.1",
            "postgresql.port": str(url.port or 5432),
            "postgresql.database": database,
            "auth.existingSecret": "x",
            "auth.appUser": user,
            "preStopDelaySeconds": "0",
        }
        docs = _docs(helm, sets=sets)
        ini = docs["ConfigMap"]["data"]["pgbouncer.ini"]
        ini = ini.replace("listen_port = 6432", f"listen_port = {port}")
        ini = ini.replace(f"{AUTH_DIR}/userlist.txt", str(runtime / "userlist.txt"))
        (runtime / "pgbouncer.ini").write_text(ini)
        users = {user: "apppw", ADMIN_USER: "adminpw"}
        (runtime / "userlist.txt").write_text(render_userlist(users))
        command = ["pgbouncer", str(runtime / "pgbouncer.ini")]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            postgres = pwd.getpwnam("postgres")
            for path in (runtime, runtime / "pgbouncer.ini", runtime / "userlist.txt"):
                os.chown(path, postgres.pw_uid, postgres.pw_gid)
            command = ["runuser", "-u", "postgres", "--", *command]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            admin = f"postgresql://{ADMIN_USER}:adminpw@127.0.0.1:{port}/pgbouncer"

            def answers() -> bool:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
                try:
                    admin_query(admin, "SHOW VERSION", timeout=2)
                except psycopg2.OperationalError:
                    return False
                return True

            assert wait_until(answers, 15)
            config = {r["key"]: str(r["value"]) for r in admin_query(admin, "SHOW CONFIG")}
            assert config["pool_mode"] == "transaction"
            assert config["default_pool_size"] == "40"
            assert config["listen_addr"] == "0.0.0.0"
            assert config["logfile"] == "" and config["pidfile"] == ""

            client = psycopg2.connect(
                host="127.0.0.1", port=port, user=user, password="apppw", dbname=database,
                connect_timeout=3,
            )  # fmt: skip
            try:
                with client.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    backend = cur.fetchone()
                # The chart's preStop, aimed at this PgBouncer instead of the container's PID 1.
                pid = _pgbouncer_pid(proc)
                container = _containers(docs["Deployment"])["pgbouncer"]
                script = container["lifecycle"]["preStop"]["exec"]["command"][-1]
                assert "kill -INT 1;" in script and "kill -0 1 " in script
                script = script.replace("kill -INT 1;", f"kill -INT {pid};")
                script = script.replace("kill -0 1 ", f"kill -0 {pid} ")
                pre_stop = subprocess.Popen(["/bin/sh", "-c", script])
                try:
                    # Draining: PgBouncer waits for the open transaction, which goes on.
                    time.sleep(1.0)
                    assert proc.poll() is None and pre_stop.poll() is None
                    with client.cursor() as cur:
                        cur.execute("SELECT pg_backend_pid()")
                        assert cur.fetchone() == backend
                    client.commit()
                    # Then it exits, and the preStop with it, well inside the grace period.
                    assert pre_stop.wait(timeout=20) == 0
                finally:
                    if pre_stop.poll() is None:
                        pre_stop.kill()
                        pre_stop.wait(timeout=5)
                assert proc.wait(timeout=10) == 0
            finally:
                client.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
            out = proc.stdout.read().decode() if proc.stdout else ""
            if proc.stdout:
                proc.stdout.close()
        # It logged to stderr (the container log), nothing went to a file.
        assert "process up" in out or "listening on" in out, out
        assert sorted(p.name for p in runtime.iterdir()) == ["pgbouncer.ini", "userlist.txt"]
    finally:
        subprocess.run(["rm", "-rf", str(runtime)], check=False, timeout=30)


def _pgbouncer_pid(proc: subprocess.Popen[bytes]) -> int:
    """PgBouncer's pid, also when runuser stands between."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pids = children.read_text().split() if children.exists() else []
    return int(pids[0]) if pids else proc.pid
