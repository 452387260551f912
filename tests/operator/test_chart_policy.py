"""The chart's side of the operator: the CRD (crds/) is a valid apiextensions.k8s.io/v1 CRD, the
PoolPolicy the chart renders matches that CRD's own schema and means to the operator what the
chart's static pool file means (the same pools at the HPA's maximum), its scale-up headroom is
the HPA's scale-up policy, and the CRD's defaults are the operator's."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from skillcoach_operator.policy import parse_deployment, parse_policy
from skillcoach_operator.sizing import decide
from tests.deploy.test_chart import FULLNAME, NAMESPACE, RELEASE, copy_chart, find
from tests.deploy.tooling import ROOT, Helm, ToolError, crd_schemas, validate_kubernetes

CRD = ROOT / "deploy" / "helm" / "skillcoach" / "crds" / "poolpolicies.skillcoach.io.yaml"
EXAMPLE = ROOT / "deploy" / "examples" / "poolpolicy.yaml"
VALUE_SETS = ["operator-values.yaml", "production-values.yaml"]

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def chart(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_chart(helm, tmp_path_factory.mktemp("operator-chart"))


def render(helm: Helm, chart: Path, value_set: str) -> list[Doc]:
    return helm.template(
        chart,
        values=[chart / "ci" / value_set],
        sets={"operator.enabled": "true"},
        release=RELEASE,
        namespace=NAMESPACE,
    )


def crd() -> Doc:
    document: Doc = yaml.safe_load(CRD.read_text())
    return document


def test_the_crd_is_valid_and_served_with_status_and_columns() -> None:
    doc = crd()
    assert validate_kubernetes([doc]) == 1
    [version] = doc["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["scope"] == "Namespaced" and doc["spec"]["names"]["kind"] == "PoolPolicy"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Per-Pod"] == ".status.pool.perPod"
    assert columns["Bound-By"] == ".status.boundBy"
    assert '@.type=="BudgetExceeded"' in columns["Exceeded"]


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_charts_policy_matches_the_crd_and_its_static_pool_file(
    helm: Helm, chart: Path, value_set: str
) -> None:
    docs = render(helm, chart, value_set)
    policy = find(docs, "PoolPolicy", FULLNAME)
    assert validate_kubernetes([find(docs, "CustomResourceDefinition"), policy]) == 2
    spec = parse_policy(policy["spec"])
    api = find(docs, "Deployment", FULLNAME)
    bouncer = find(docs, "Deployment", f"{RELEASE}-pgbouncer")
    hpa = find(docs, "HorizontalPodAutoscaler", FULLNAME)
    # At the HPA's maximum, with the rollout surge, the operator decides what the chart wrote.
    at_max = copy.deepcopy(api)
    at_max["spec"]["replicas"] = hpa["spec"]["maxReplicas"]
    decision = decide(
        spec.budget(parse_deployment(bouncer).pods), spec.api_replicas(parse_deployment(at_max))
    )
    assert spec.api_replicas(parse_deployment(at_max)).headroom == 0, "capped at maxReplicas"
    pool_cm = find(docs, "ConfigMap", spec.pool_config_map)
    static = yaml.safe_load(pool_cm["data"][spec.pool_key])
    assert (static["pool_size"], static["max_overflow"]) == (decision.pool_size, 0)
    notes = pool_cm["metadata"]["annotations"]
    assert int(notes["skillcoach.io/pool-client-budget"]) == decision.client_budget
    assert int(notes["skillcoach.io/pgbouncer-default-pool-size"]) == (
        decision.pgbouncer_default_pool_size
    )
    ini = find(docs, "ConfigMap", spec.pgbouncer.config_map)["data"][spec.pgbouncer.key]
    assert f"default_pool_size = {decision.pgbouncer_default_pool_size}\n" in ini
    # The headroom mirrors the HPA's scale-up policy.
    policies = {p["type"]: p for p in hpa["spec"]["behavior"]["scaleUp"]["policies"]}
    scale_up = policy["spec"]["scaleUp"]
    assert scale_up["pods"] == policies["Pods"]["value"]
    assert scale_up["percent"] == policies["Percent"]["value"]
    assert scale_up["periodSeconds"] == policies["Percent"]["periodSeconds"]
    assert scale_up["maxReplicas"] == hpa["spec"]["maxReplicas"]
    grace = api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert spec.grow_delay_seconds > grace


def test_a_policy_the_crd_refuses_does_not_pass(helm: Helm, chart: Path) -> None:
    docs = render(helm, chart, "operator-values.yaml")
    schema_doc = find(docs, "CustomResourceDefinition")
    policy = find(docs, "PoolPolicy", FULLNAME)
    for change, problem in (
        ({"perPod": {"min": 0}}, "minimum"),
        ({"surge": {"source": "Sometimes"}}, "is not one of"),
        ({"typo": 1}, "Additional properties"),
        ({"perPod": {"poolTimeoutSeconds": 0}}, "minimum"),
    ):
        broken = copy.deepcopy(policy)
        broken["spec"].update(change)
        with pytest.raises(ToolError, match=problem):
            validate_kubernetes([schema_doc, broken])
    with pytest.raises(ToolError, match="unknown kind"):
        validate_kubernetes([policy])  # without its CRD: never a silent pass


def test_without_pgbouncer_the_chart_asks_for_a_policy_of_ones_own(helm: Helm, chart: Path) -> None:
    result = helm.template_text(
        chart,
        sets={"operator.enabled": "true", "pgbouncer.enabled": "false", "database.host": "pgb"},
        check=False,
    )
    assert result.returncode != 0 and "operator.policy.create" in result.stderr, result.stderr
    off = helm.template(
        chart,
        sets={
            "operator.enabled": "true",
            "operator.policy.create": "false",
            "pgbouncer.enabled": "false",
            "database.host": "pgb",
        },
    )
    assert not [d for d in off if d["kind"] == "PoolPolicy"]


def _with_defaults(value: Any, schema: Doc) -> Any:
    """What the API server stores: the schema's defaults filled in."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    result = dict(value)
    for key, child in schema.get("properties", {}).items():
        if key not in result and "default" in child:
            result[key] = copy.deepcopy(child["default"])
        if key in result:
            result[key] = _with_defaults(result[key], child)
    return result


def test_the_crds_defaults_are_the_operators_and_the_example_is_valid() -> None:
    schema = crd_schemas([crd()])[("skillcoach.io/v1alpha1", "PoolPolicy")]
    spec_schema = schema["properties"]["spec"]
    example = yaml.safe_load(EXAMPLE.read_text())
    assert validate_kubernetes([crd(), example]) == 2
    minimal = {
        key: example["spec"][key]
        for key in ("deployment", "poolConfigMap", "pgbouncer", "clientBudget", "serverBudget")
    }
    minimal["poolConfigMap"] = {"name": minimal["poolConfigMap"]["name"]}
    minimal["pgbouncer"] = {
        "deployment": minimal["pgbouncer"]["deployment"],
        "configMap": minimal["pgbouncer"]["configMap"],
    }
    defaulted = _with_defaults(minimal, spec_schema)
    assert defaulted != minimal, "the CRD fills in defaults"
    assert parse_policy(defaulted) == parse_policy(minimal)
    assert parse_policy(example["spec"]).deployment == minimal["deployment"]
