"""The chart's pool budget is skillcoach_operator.sizing.plan_pools: rendered with helm for a
grid of budgets and replica counts, the pool file (read by skillcoach.data.pool_file) and the
outcome (rendered, or refused naming "pool budget") agree with the Python function; the rule
holds for every shipped value set; and an overcommitting value set fails to render."""

from __future__ import annotations

import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skillcoach.data.pool_file import PoolFile, read_pool_file
from skillcoach_operator.sizing import Budget, PoolPlan, plan_pools
from tests.deploy.test_chart import (
    FULLNAME,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    copy_chart,
    find,
    merged_values,
    value_files,
)
from tests.deploy.tooling import Helm, parse_manifests

POOL_CONFIGMAP = f"{FULLNAME}-pool"
POOL_KEY = "pool.json"


@dataclass(frozen=True)
class Case:
    """One set of chart values that the budget reads."""

    replicas: int
    surge: int = 1
    autoscaling: bool = True
    max_client_conn: int = 1000
    min_available: int = 1
    pgbouncer_replicas: int = 2
    reserve_pool: int = 5
    client_reserve: int = 50
    max_connections: int = 100
    server_reserve: int = 10
    min_per_pod: int = 4
    max_per_pod: int = 16

    def sets(self) -> dict[str, str]:
        sets = {
            "autoscaling.enabled": str(self.autoscaling).lower(),
            "updateStrategy.maxSurge": str(self.surge),
            "pgbouncer.maxClientConn": str(self.max_client_conn),
            "pgbouncer.pdb.minAvailable": str(self.min_available),
            "pgbouncer.replicaCount": str(self.pgbouncer_replicas),
            "pgbouncer.reservePoolSize": str(self.reserve_pool),
            "pgbouncer.postgresql.maxConnections": str(self.max_connections),
            "pgbouncer.postgresql.serverReserve": str(self.server_reserve),
            "poolBudget.clientReserve": str(self.client_reserve),
            "poolBudget.minPerPod": str(self.min_per_pod),
            "poolBudget.maxPerPod": str(self.max_per_pod),
        }
        if self.autoscaling:
            sets["autoscaling.minReplicas"] = "1"
            sets["autoscaling.maxReplicas"] = str(self.replicas)
        else:
            sets["replicaCount"] = str(self.replicas)
        if self.surge == 0:
            sets["updateStrategy.maxUnavailable"] = "1"
        return sets


@dataclass(frozen=True)
class Expected:
    plan: PoolPlan | None  # None: the budget itself is invalid (Budget raised)
    fits: bool


def expected(case: Case) -> Expected:
    """What the Python side says: plan_pools, plus the server-side rule of the contract."""
    try:
        budget = Budget(
            max_client_conn=case.max_client_conn * case.min_available,
            client_reserve=case.client_reserve,
            max_connections=case.max_connections,
            server_reserve=case.server_reserve,
            pgbouncer_replicas=case.pgbouncer_replicas,
            pgbouncer_reserve_pool=case.reserve_pool,
            min_per_pod=case.min_per_pod,
            max_per_pod=case.max_per_pod,
        )
    except ValueError:
        return Expected(None, fits=False)
    plan = plan_pools(budget, replicas=case.replicas, surge=case.surge)
    server = case.pgbouncer_replicas * (plan.pgbouncer_default_pool_size + case.reserve_pool)
    return Expected(
        plan, fits=not plan.oversubscribed and server <= case.max_connections - case.server_reserve
    )


def render(helm: Helm, chart: Path, sets: Mapping[str, str]) -> tuple[int, str, str]:
    result = helm.template_text(
        chart,
        sets=sets,
        release=RELEASE,
        namespace=NAMESPACE,
        extra=["--show-only", "templates/pool-configmap.yaml"],
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def pool_file_of(stdout: str, tmp_path: Path) -> tuple[PoolFile, Mapping[str, Any]]:
    """The rendered pool file, read by the replicas' own reader, and the ConfigMap."""
    configmap = find(parse_manifests(stdout), "ConfigMap", POOL_CONFIGMAP)
    path = tmp_path / POOL_KEY
    path.write_text(configmap["data"][POOL_KEY])
    return read_pool_file(path), configmap


def grid() -> list[Case]:
    """Every replica count 1..50 with budgets drawn from a fixed seed, and the edges by hand:
    the clamps, the last replica count that fits, the first that does not, invalid budgets,
    and a server side that does not fit."""
    rng = random.Random(20261202)
    cases: list[Case] = []
    for replicas in range(1, 51):
        pgbouncer_replicas = rng.choice([2, 3, 4])
        cases.append(
            Case(
                replicas=replicas,
                surge=rng.choice([0, 1, 2, 3]),
                autoscaling=rng.random() < 0.5,
                max_client_conn=rng.choice([60, 100, 150, 200, 300, 500, 1000]),
                min_available=rng.randint(1, pgbouncer_replicas - 1),
                pgbouncer_replicas=pgbouncer_replicas,
                reserve_pool=rng.choice([0, 2, 5, 10]),
                client_reserve=rng.choice([0, 10, 50]),
                max_connections=rng.choice([50, 100, 200, 400]),
                server_reserve=rng.choice([3, 10, 20]),
                min_per_pod=rng.choice([1, 2, 4]),
                max_per_pod=rng.choice([8, 16, 32]),
            )
        )
    cases += [
        Case(replicas=10),  # the defaults
        Case(replicas=58),  # the largest count still at the top clamp
        Case(replicas=59),  # one more: just below the top clamp
        Case(replicas=236),  # the largest count that fits at the bottom clamp
        Case(replicas=237),  # one more: oversubscribed by a couple of connections
        Case(replicas=236, client_reserve=52),  # the pods use exactly the whole budget
        Case(replicas=1000),
        Case(replicas=30, autoscaling=False, surge=0),
        Case(replicas=5, max_client_conn=50, client_reserve=50),  # no client budget at all
        Case(replicas=5, max_connections=10, server_reserve=10),  # no server budget at all
        Case(replicas=5, min_per_pod=8, max_per_pod=4),  # an empty clamp
        Case(replicas=5, pgbouncer_replicas=4, reserve_pool=30),  # the server side overflows
        Case(replicas=5, pgbouncer_replicas=3, min_available=2, max_client_conn=200),
    ]
    return cases


@pytest.fixture(scope="module")
def chart(helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_chart(helm, tmp_path_factory.mktemp("budget-chart"))


def test_chart_and_plan_pools_agree_on_a_grid(helm: Helm, chart: Path, tmp_path: Path) -> None:
    cases = grid()
    outcomes = [expected(c) for c in cases]
    # Both outcomes must be exercised, or the comparison proves little.
    assert 10 < sum(o.fits for o in outcomes) < len(cases) - 5
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: render(helm, chart, c.sets()), cases))
    mismatches: list[str] = []
    for case, want, (code, stdout, stderr) in zip(cases, outcomes, results, strict=True):
        if not want.fits:
            if code == 0:
                mismatches.append(f"{case}: rendered, but plan_pools says it does not fit")
            elif "maxConnections" not in stderr and "pool budget" not in stderr:
                mismatches.append(f"{case}: refused without naming the budget: {stderr}")
            elif want.plan is not None and want.plan.oversubscribed and "pool budget" not in stderr:
                mismatches.append(f"{case}: oversubscription without 'pool budget': {stderr}")
            continue
        if code != 0:
            mismatches.append(f"{case}: refused, but plan_pools fits it: {stderr}")
            continue
        assert want.plan is not None
        got, configmap = pool_file_of(stdout, tmp_path)
        client_budget = case.max_client_conn * case.min_available - case.client_reserve
        if got != PoolFile.from_plan(want.plan, generation=1, client_budget=client_budget):
            mismatches.append(f"{case}: chart {got}, plan_pools {want.plan}")
        notes = configmap["metadata"]["annotations"]
        if int(notes["skillcoach.io/pgbouncer-default-pool-size"]) != (
            want.plan.pgbouncer_default_pool_size
        ):
            mismatches.append(f"{case}: default_pool_size {notes}, plan {want.plan}")
    assert mismatches == [], "\n".join(mismatches)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_value_set_keeps_the_pool_budget(
    helm: Helm, chart: Path, value_set: str, tmp_path: Path
) -> None:
    values = merged_values(value_set)
    pgbouncer, budget = values["pgbouncer"], values["poolBudget"]
    autoscaling = values["autoscaling"]["enabled"]
    replicas = values["autoscaling"]["maxReplicas"] if autoscaling else values["replicaCount"]
    case = Case(
        replicas=replicas,
        surge=values["updateStrategy"]["maxSurge"],
        autoscaling=autoscaling,
        max_client_conn=pgbouncer["maxClientConn"],
        min_available=pgbouncer["pdb"]["minAvailable"],
        pgbouncer_replicas=pgbouncer["replicaCount"],
        reserve_pool=pgbouncer["reservePoolSize"],
        client_reserve=budget["clientReserve"],
        max_connections=pgbouncer["postgresql"]["maxConnections"],
        server_reserve=pgbouncer["postgresql"]["serverReserve"],
        min_per_pod=budget["minPerPod"],
        max_per_pod=budget["maxPerPod"],
    )
    want = expected(case)
    assert want.fits and want.plan is not None, f"{value_set} breaks the pool budget: {case}"
    plan = want.plan
    clients = plan.per_pod * (case.replicas + case.surge)
    assert clients <= case.max_client_conn * case.min_available - case.client_reserve
    servers = case.pgbouncer_replicas * (plan.pgbouncer_default_pool_size + case.reserve_pool)
    assert servers <= case.max_connections - case.server_reserve

    text = helm.template_text(
        chart, values=value_files(chart, value_set), release=RELEASE, namespace=NAMESPACE
    ).stdout
    got, configmap = pool_file_of(text, tmp_path)
    assert got == PoolFile(
        pool_size=plan.pool_size,
        max_overflow=plan.max_overflow,
        pool_timeout=budget["poolTimeout"],
        pool_recycle=budget["poolRecycle"],
        generation=1,
        client_budget=case.max_client_conn * case.min_available - case.client_reserve,
    )
    notes = configmap["metadata"]["annotations"]
    assert int(notes["skillcoach.io/pool-replicas"]) == case.replicas
    assert int(notes["skillcoach.io/pool-surge"]) == case.surge


def test_a_thousand_replicas_fail_naming_the_pool_budget(helm: Helm, chart: Path) -> None:
    code, _, stderr = render(helm, chart, {"autoscaling.maxReplicas": "1000"})
    assert code != 0
    assert "pool budget" in stderr, stderr
    for value in (
        "autoscaling.maxReplicas",
        "pgbouncer.maxClientConn",
        "pgbouncer.pdb.minAvailable",
        "poolBudget.",
    ):
        assert value in stderr, value


def test_an_overcommitting_value_set_fails_to_render(
    helm: Helm, chart: Path, tmp_path: Path
) -> None:
    """A value file as a user would write it: a fixed replica count far past the budget."""
    values = tmp_path / "overcommit-values.yaml"
    values.write_text("autoscaling:\n  enabled: false\nreplicaCount: 400\n")
    result = helm.template_text(chart, values=[values], check=False)
    assert result.returncode != 0
    assert "pool budget" in result.stderr and "replicaCount (400)" in result.stderr, result.stderr
    # Fixing the value the message names is enough.
    fixed = helm.template_text(chart, values=[values], sets={"replicaCount": "100"})
    assert fixed.returncode == 0
