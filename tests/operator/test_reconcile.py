"""One reconciliation, decided without a cluster (skillcoach_operator.reconcile): what it writes,
in which order shrinking and growing pools land, what it keeps when the budget is exceeded, and
that a second run on its own result changes nothing. The cluster is a few dicts, changed by
the plans' own merge patches."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skillcoach_operator.builders import (
    ANNOTATION_GENERATION,
    IniError,
    build_pgbouncer_ini,
    parse_pgbouncer_pools,
    parse_pool_file,
    set_condition,
)
from skillcoach_operator.policy import (
    PolicyError,
    SurgeCount,
    parse_deployment,
    parse_policy,
)
from skillcoach_operator.reconcile import Observed, Plan, plan_reconcile
from skillcoach_operator.sizing import Bound, Budget, Replicas, decide
from tests.operator.cluster_model import deployment, merge, pgbouncer_ini, policy_spec

NS = "shop"
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@dataclasses.dataclass
class World:
    """The objects a reconciliation reads, changed only by applying its plans."""

    spec: dict[str, Any]
    api: dict[str, Any]
    bouncer: dict[str, Any]
    pool_cm: dict[str, Any] | None
    ini: str
    status: dict[str, Any]
    now: datetime = T0

    def observed(self) -> Observed:
        return Observed(
            policy="pools",
            namespace=NS,
            generation=3,
            spec=parse_policy(self.spec),
            status=self.status,
            api=parse_deployment(self.api),
            pgbouncer=parse_deployment(self.bouncer),
            pool_configmap=self.pool_cm,
            pgbouncer_ini=self.ini,
            now=self.now,
        )

    def reconcile(self) -> Plan:
        plan = plan_reconcile(self.observed())
        if plan.pool_create is not None:
            assert self.pool_cm is None
            self.pool_cm = plan.pool_create
        if plan.pool_patch is not None:
            assert self.pool_cm is not None
            self.pool_cm = merge(self.pool_cm, plan.pool_patch)
        if plan.pgbouncer_patch is not None:
            self.ini = plan.pgbouncer_patch["data"]["pgbouncer.ini"]
        self.status = plan.status
        return plan

    def scale(self, replicas: int, current: int | None = None) -> None:
        self.api = deployment("api", NS, replicas=replicas, current=current)

    def per_pod(self) -> int:
        assert self.pool_cm is not None
        pool = parse_pool_file(self.pool_cm["data"]["pool.json"])
        assert pool is not None
        return pool.per_pod

    def generation(self) -> int:
        assert self.pool_cm is not None
        pool = parse_pool_file(self.pool_cm["data"]["pool.json"])
        assert pool is not None
        return pool.generation


def world(**spec: Any) -> World:
    return World(
        spec=policy_spec(**spec),
        api=deployment("api", NS, replicas=2),
        bouncer=deployment("pgbouncer", NS, replicas=2, max_surge=0),
        pool_cm=None,
        ini=pgbouncer_ini(default_pool_size=40),
        status={},
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [c for c in status["conditions"] if c["type"] == kind]
    return found


def test_first_run_creates_the_pool_file_sizes_pgbouncer_and_reports() -> None:
    w = world()
    plan = w.reconcile()
    # 2 desired + 1 surge share 100 client connections: 33 each, clamped to 16.
    assert plan.decision.pods == 3 and plan.decision.bound_by == Bound.MAX_PER_POD
    assert plan.pool_create is not None and plan.pool_patch is None
    assert w.per_pod() == 16 and w.generation() == 1
    assert json_of(w)["client_budget"] == 100
    # (100 - 10) / 2 PgBouncer pods = 45 each, of which 5 reserve.
    assert parse_pgbouncer_pools(w.ini).default_pool_size == 40
    assert plan.pgbouncer_patch is None, "the ini already held the decision"
    assert condition(w.status, "Ready")["status"] == "True"
    assert condition(w.status, "BudgetExceeded")["status"] == "False"
    assert w.status["replicas"] == {
        "desired": 2,
        "current": 2,
        "surge": 1,
        "headroom": 0,
        "counted": 3,
    }
    assert w.status["pool"]["total"] == 48 and w.status["boundBy"] == "MaxPerPod"
    assert w.status["observedGeneration"] == 3 and w.status["poolGeneration"] == 1
    assert [e.reason for e in plan.events] == ["PoolResized"]


def json_of(w: World) -> dict[str, Any]:
    import json

    assert w.pool_cm is not None
    document: dict[str, Any] = json.loads(w.pool_cm["data"]["pool.json"])
    return document


def test_a_second_run_on_its_own_result_changes_nothing() -> None:
    w = world()
    w.reconcile()
    before = (dict(w.pool_cm or {}), w.ini, w.status)
    w.now += timedelta(minutes=5)
    again = w.reconcile()
    assert (again.pool_create, again.pool_patch, again.pgbouncer_patch) == (None, None, None)
    assert again.events == ()
    assert (dict(w.pool_cm or {}), w.ini, w.status) == before


def test_a_scale_out_shrinks_the_pools_at_once_with_a_newer_generation() -> None:
    w = world()
    w.reconcile()
    w.scale(10, current=2)  # the HPA's decision: pods not started yet
    plan = w.reconcile()
    assert plan.pool_patch is not None and plan.recheck_after is None
    assert w.per_pod() == 100 // 11 and w.generation() == 2
    assert condition(w.status, "Ready")["status"] == "True"


def test_a_scale_in_grows_only_after_the_pods_are_gone_and_the_delay() -> None:
    w = world(grow_delay_seconds=30)
    w.scale(10)
    w.reconcile()
    assert w.per_pod() == 9
    w.scale(3, current=10)  # desired down, ten pods still there
    assert w.reconcile().pool_patch is None and w.per_pod() == 9
    w.scale(3, current=3)  # the surplus pods are gone
    w.now += timedelta(seconds=1)
    plan = w.reconcile()
    assert plan.pool_patch is None and w.per_pod() == 9
    assert plan.recheck_after == pytest.approx(30)
    assert condition(w.status, "Ready")["reason"] == "GrowDeferred"
    assert [e.reason for e in plan.events] == ["GrowDeferred"]
    w.now += timedelta(seconds=20)
    assert w.reconcile().events == (), "the deferral is announced once"
    w.now += timedelta(seconds=10)
    plan = w.reconcile()
    assert plan.pool_patch is not None and w.per_pod() == 16  # 100 // 4, at most 16
    assert "pending" not in w.status
    assert condition(w.status, "Ready")["status"] == "True"


def test_a_further_scale_in_restarts_the_delay() -> None:
    w = world(grow_delay_seconds=30)
    w.scale(10)
    w.reconcile()
    w.scale(6, current=6)
    w.now += timedelta(seconds=1)
    w.reconcile()
    w.now += timedelta(seconds=25)
    w.scale(3, current=3)  # more pods went away: they may still drain
    plan = w.reconcile()
    assert plan.pool_patch is None and plan.recheck_after == pytest.approx(30)
    w.now += timedelta(seconds=30)
    assert w.reconcile().pool_patch is not None


def test_an_impossible_budget_keeps_the_last_pool_file_and_warns_once() -> None:
    w = world(min_per_pod=8)
    w.reconcile()
    kept = dict(w.pool_cm or {})
    w.scale(20, current=20)  # 21 pods x 8 > 100
    plan = w.reconcile()
    assert plan.decision.budget_exceeded and plan.decision.bound_by == Bound.MIN_PER_POD
    assert (plan.pool_create, plan.pool_patch) == (None, None)
    assert w.pool_cm == kept
    exceeded = condition(w.status, "BudgetExceeded")
    assert exceeded["status"] == "True" and exceeded["reason"] == "ClientBudget"
    assert "21 API pods" in exceeded["message"] and "168" in exceeded["message"]
    assert "kept the pool file of generation 1" in exceeded["message"]
    assert condition(w.status, "Ready")["status"] == "False"
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "BudgetExceeded")]
    w.now += timedelta(seconds=30)
    assert w.reconcile().events == (), "the warning is not repeated while nothing changes"
    w.scale(6, current=6)  # 7 pods x 14 fit again
    plan = w.reconcile()
    assert {e.reason for e in plan.events} == {"BudgetRestored", "PoolResized"}
    assert w.per_pod() == 14
    assert condition(w.status, "BudgetExceeded")["status"] == "False"


def test_pgbouncer_follows_its_own_replicas_and_keeps_them_within_the_server_budget() -> None:
    w = world()
    w.reconcile()
    w.bouncer = deployment("pgbouncer", NS, replicas=3, max_surge=0)
    plan = w.reconcile()
    pools = parse_pgbouncer_pools(w.ini)
    assert (pools.default_pool_size, pools.max_db_connections) == (25, 30)  # 90 / 3 - 5
    assert 3 * pools.max_db_connections <= 90
    assert [e.reason for e in plan.events] == ["PgBouncerResized"]
    assert plan.pgbouncer_patch is not None
    notes = plan.pgbouncer_patch["metadata"]["annotations"]
    assert notes["skillcoach.io/default-pool-size"] == "25"
    # Everything but the three pool settings is the file as it was.
    assert w.ini == pgbouncer_ini(default_pool_size=25)
    w.bouncer = deployment("pgbouncer", NS, replicas=30, max_surge=0)
    plan = w.reconcile()
    assert plan.decision.bound_by == Bound.SERVER_BUDGET and plan.pgbouncer_patch is None
    assert parse_pgbouncer_pools(w.ini).default_pool_size == 25, "the last fitting ini is kept"
    assert condition(w.status, "BudgetExceeded")["reason"] == "ServerBudget"


def test_a_chart_upgrade_that_resets_the_file_gets_a_generation_above_everything() -> None:
    w = world()
    for replicas in (4, 8, 3, 6):
        w.scale(replicas)
        w.now += timedelta(minutes=1)
        w.reconcile()
    written = w.generation()
    assert w.pool_cm is not None
    assert w.pool_cm["metadata"]["annotations"][ANNOTATION_GENERATION] == str(written)
    # `helm upgrade` (revision 2) rewrites the file with the chart's static sizes.
    w.pool_cm["data"]["pool.json"] = (
        '{"pool_size": 7, "max_overflow": 0, "pool_timeout": 2, "pool_recycle": 3600, "generation": 2}'
    )
    w.status = {k: v for k, v in w.status.items() if k != "poolGeneration"}
    w.reconcile()  # a grow from the chart's 7: after the delay
    w.now += timedelta(seconds=2)
    w.reconcile()
    assert w.generation() == written + 1 and w.per_pod() == 14  # 100 // (6 + 1)


def test_surge_counted_during_rollouts_only() -> None:
    spec = policy_spec()
    spec["surge"] = {"source": "Fixed", "pods": 4, "count": "DuringRollout"}
    policy = parse_policy(spec)
    steady = parse_deployment(deployment("api", NS, replicas=5))
    assert policy.api_replicas(steady).surge == 0
    rolling = deployment("api", NS, replicas=5)
    rolling["metadata"]["generation"] = 2  # a new template the controller has not rolled yet
    assert policy.api_replicas(parse_deployment(rolling)).surge == 4
    assert policy.surge_count is SurgeCount.DURING_ROLLOUT


def test_the_scale_up_headroom_is_counted() -> None:
    spec = policy_spec()
    spec["scaleUp"] = {
        "pods": 4,
        "percent": 100,
        "periodSeconds": 15,
        "propagationSeconds": 20,
        "maxReplicas": 30,
    }
    policy = parse_policy(spec)
    assert policy.scale_up_steps == 2
    counted = policy.api_replicas(parse_deployment(deployment("api", NS, replicas=5)))
    assert counted.headroom == 15  # 5 -> 10 -> 20
    assert counted.counted == 5 + 1 + 15


def test_deployment_states() -> None:
    d = deployment("api", NS, replicas=4, max_surge="50%")
    d["status"]["terminatingReplicas"] = 2
    state = parse_deployment(d)
    assert (state.desired, state.current, state.max_surge) == (4, 6, 2)
    assert state.rolling_out, "more pods than desired: a scale-in or rollout is not over"
    recreate = deployment("api", NS, replicas=3)
    recreate["spec"] = {"replicas": 3, "strategy": {"type": "Recreate"}}
    assert parse_deployment(recreate).max_surge == 0
    bare = {"metadata": {"name": "x"}, "spec": {}}
    assert (parse_deployment(bare).desired, parse_deployment(bare).max_surge) == (1, 1)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"deployment": ""}, "spec.deployment"),
        ({"clientBudget": {"maxClientConn": 10, "reserve": 10}}, "max_client_conn must exceed"),
        ({"perPod": {"min": 9, "max": 8}}, "min_per_pod and max_per_pod"),
        ({"perPod": {"poolTimeoutSeconds": 0}}, "poolTimeoutSeconds"),
        ({"surge": {"source": "Sometimes"}}, "spec.surge.source must be one of Deployment, Fixed"),
        ({"serverBudget": None}, "spec.serverBudget is required"),
        ({"growDelaySeconds": -1}, "growDelaySeconds"),
        ({"scaleUp": {"pods": True}}, "spec.scaleUp.pods must be an integer"),
    ],
)
def test_an_invalid_policy_names_the_field(change: dict[str, Any], problem: str) -> None:
    spec = {**policy_spec(), **change}
    with pytest.raises(PolicyError, match=problem):
        parse_policy(spec)


def test_the_crds_defaults_are_the_parsers() -> None:
    minimal = {
        "deployment": "api",
        "poolConfigMap": {"name": "pool"},
        "pgbouncer": {"deployment": "pgb", "configMap": "pgb"},
        "clientBudget": {"maxClientConn": 1000},
        "serverBudget": {"maxConnections": 100},
    }
    policy = parse_policy(minimal)
    assert (policy.pool_key, policy.pgbouncer.key) == ("pool.json", "pgbouncer.ini")
    assert (policy.min_per_pod, policy.max_per_pod, policy.pool_timeout) == (4, 16, 2.0)
    assert (policy.grow_delay_seconds, policy.scale_up_steps, policy.surge_pods) == (30, 1, 1)


def test_the_ini_keeps_everything_but_the_pool_settings() -> None:
    ini = pgbouncer_ini(default_pool_size=40)
    d = decide(
        Budget(
            max_connections=100, server_reserve=10, pgbouncer_replicas=4, pgbouncer_reserve_pool=5
        ),
        Replicas(desired=1),
    )
    new = build_pgbouncer_ini(ini, d)
    assert parse_pgbouncer_pools(new).default_pool_size == 17  # 90 / 4 - 5
    assert (
        new.replace("= 17\n", "= 40\n", 1).replace(
            "max_db_connections = 22", "max_db_connections = 45"
        )
        == ini
    )
    with pytest.raises(IniError, match="default_pool_size"):
        build_pgbouncer_ini(ini.replace("default_pool_size =", ";default_pool_size ="), d)
    with pytest.raises(IniError, match=r"\[pgbouncer\]"):
        build_pgbouncer_ini("[databases]\n", d)


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    first = set_condition(
        [], type_="Ready", status=True, reason="A", message="m", now=T0, generation=1
    )
    later = T0 + timedelta(hours=1)
    same = set_condition(
        first, type_="Ready", status=True, reason="B", message="n", now=later, generation=2
    )
    assert same[0]["lastTransitionTime"] == "2026-12-01T12:00:00Z" and same[0]["reason"] == "B"
    flipped = set_condition(
        same, type_="Ready", status=False, reason="C", message="o", now=later, generation=2
    )
    assert flipped[0]["lastTransitionTime"] == "2026-12-01T13:00:00Z"
