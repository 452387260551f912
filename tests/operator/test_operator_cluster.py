"""The real operator (`python -m skillcoach_operator`, kopf inside) against a Kubernetes API
emulator (kmock): a PoolPolicy and its Deployments are created over HTTP, the Deployments are
scaled as an HPA and the Deployment controller would (spec first, pods after), and the pool
ConfigMap, PgBouncer's ini and the status follow within seconds. A sampler reads the stored
objects all along: the pods that exist never hold more than the client budget, PgBouncer's
pods never more than the server budget. An impossible budget leaves the ConfigMap as it was.
Every request the operator sends is one its Role grants (skillcoach_operator.rbac), and every
grant is used."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from skillcoach.data.pool_file import read_pool_file
from skillcoach_operator.builders import parse_pgbouncer_pools, parse_pool_file
from skillcoach_operator.policy import GROUP, KIND, PLURAL, VERSION
from skillcoach_operator.rbac import PERMISSIONS
from tests.operator.cluster_model import deployment, pgbouncer_ini, policy_spec
from tests.operator.conftest import Cluster, run_operator, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.asyncio, pytest.mark.timeout(180)]

NS = "shop"
POLICIES = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
POLICY_RES = f"{GROUP}/{VERSION}/{PLURAL}"
CLIENT_BUDGET = 100  # policy_spec(): maxClientConn 110 - reserve 10
SERVER_BUDGET = 90  # maxConnections 100 - reserve 10
SURGE = 1
# "Within seconds" on a loaded CI machine; the operator normally takes well under one.
FOLLOW = 20.0


def with_version(body: dict[str, Any]) -> dict[str, Any]:
    """The emulator stores bodies verbatim: give them what an API server would."""
    body["metadata"].setdefault("resourceVersion", "1")
    body["metadata"].setdefault("namespace", NS)
    return body


async def setup_workloads(cluster: Cluster, *, api: int = 2, bouncers: int = 2) -> None:
    await cluster.create(DEPLOYMENTS, with_version(deployment("api", NS, replicas=api)))
    await cluster.create(
        DEPLOYMENTS, with_version(deployment("pgbouncer", NS, replicas=bouncers, max_surge=0))
    )
    await cluster.create(
        CONFIGMAPS,
        with_version(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "pgbouncer"},
                "data": {"pgbouncer.ini": pgbouncer_ini(default_pool_size=40)},
            }
        ),
    )


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return with_version(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "generation": 1, "uid": f"uid-{name}"},
            "spec": policy_spec(**spec),
        }
    )


@dataclass
class View:
    """What the cluster holds now, through the emulator's store."""

    cluster: Cluster

    def pool(self, name: str = "api-pool") -> tuple[int, int] | None:
        """(per-pod pool, generation) of the pool file, None without one."""
        cm = self.cluster.get("v1/configmaps", NS, name)
        pool = parse_pool_file(((cm or {}).get("data") or {}).get("pool.json"))
        return None if pool is None else (pool.per_pod, pool.generation)

    def per_pod(self) -> int | None:
        pool = self.pool()
        return None if pool is None else pool[0]

    def ini(self) -> tuple[int, int]:
        cm = self.cluster.get("v1/configmaps", NS, "pgbouncer")
        assert cm is not None
        pools = parse_pgbouncer_pools(cm["data"]["pgbouncer.ini"])
        return pools.default_pool_size, pools.max_db_connections

    def status(self, name: str = "pools") -> dict[str, Any]:
        body = self.cluster.get(POLICY_RES, NS, name) or {}
        status: dict[str, Any] = body.get("status") or {}
        return status

    def condition(self, kind: str, name: str = "pools") -> dict[str, Any]:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == kind:
                found: dict[str, Any] = c
                return found
        return {}

    def pods(self, name: str) -> int:
        dep = self.cluster.get("apps/v1/deployments", NS, name)
        assert dep is not None
        count: int = dep["status"]["replicas"]
        return count

    def events(self) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.cluster.objects("v1/events")]


@dataclass
class Sampler:
    """Every few milliseconds: the pods that exist (plus the surge a rollout may add) times
    the pool file's per-pod pool, and PgBouncer's pods times max_db_connections."""

    view: View
    samples: int = 0
    violations: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            per_pod = self.view.per_pod()
            if per_pod is not None:
                clients = per_pod * (self.view.pods("api") + SURGE)
                if clients > CLIENT_BUDGET:
                    self.violations.append(f"{clients} client connections > {CLIENT_BUDGET}")
            servers = self.view.ini()[1] * self.view.pods("pgbouncer")
            if servers > SERVER_BUDGET:
                self.violations.append(f"{servers} server connections > {SERVER_BUDGET}")
            self.samples += 1
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def sampling(view: View) -> AsyncIterator[Sampler]:
    sampler = Sampler(view)
    task = asyncio.create_task(sampler.run())
    try:
        yield sampler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def scale(
    cluster: Cluster, name: str, *, desired: int | None = None, pods: int | None = None
) -> None:
    """The HPA's decision (spec.replicas) or the controller's pods (status.replicas)."""
    if desired is not None:
        await cluster.patch(f"{DEPLOYMENTS}/{name}", {"spec": {"replicas": desired}})
    if pods is not None:
        await cluster.patch(
            f"{DEPLOYMENTS}/{name}/status", {"status": {"replicas": pods, "updatedReplicas": pods}}
        )


def used_permissions(cluster: Cluster) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every request the operator sent (kopf's user agent);
    discovery (/api, /apis/<group>/<version>) is not a resource request."""
    used: set[tuple[str, str, str]] = set()
    for request in cluster.api:
        if not str(request.headers.get("User-Agent", "")).startswith("kopf/"):
            continue
        parts = request.url.path.strip("/").split("/")
        core = parts[0] == "api"
        group = "" if core else parts[1] if len(parts) > 1 else ""
        rest = parts[2:] if core else parts[3:]
        if rest[:1] == ["namespaces"]:
            rest = rest[2:]
        if not rest:
            continue
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        method = request.method.value
        if method == "GET":
            verb = (
                "watch"
                if request.params.get("watch") == "true"
                else "get"
                if len(rest) > 1
                else "list"
            )
        else:
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
        used.add((group, resource, verb))
    return used


async def test_pools_follow_the_deployments_within_budget(cluster: Cluster, tmp_path: Path) -> None:
    view = View(cluster)
    await setup_workloads(cluster)
    async with run_operator(cluster, tmp_path, NS) as operator, sampling(view) as sampler:
        await cluster.create(POLICIES, policy("pools"))
        took = await wait_for(
            lambda: view.pool() is not None and view.condition("Ready").get("status") == "True",
            FOLLOW, "the pool ConfigMap and a Ready status", operator,
        )  # fmt: skip
        # 2 pods + 1 surge share 100: 33 each, clamped to 16.
        assert view.pool() == (16, 1)
        assert view.status()["boundBy"] == "MaxPerPod" and view.status()["pool"]["total"] == 48
        path = tmp_path / "pool.json"
        cm = cluster.get("v1/configmaps", NS, "api-pool")
        assert cm is not None
        path.write_text(cm["data"]["pool.json"])
        assert read_pool_file(path).client_budget == CLIENT_BUDGET  # the replicas' own reader
        print(f"pool ConfigMap and status after {took:.2f}s")

        # The HPA asks for 10: the pools shrink before the pods exist.
        await scale(cluster, "api", desired=10)
        took = await wait_for(
            lambda: view.per_pod() == 100 // 11, FOLLOW, "a shrink to 9", operator
        )
        print(f"2 -> 10: pools shrunk after {took:.2f}s")
        await scale(cluster, "api", pods=10)
        await wait_for(
            lambda: view.status()["replicas"]["current"] == 10, FOLLOW, "status 10", operator
        )

        # Down to 3: nothing grows while the ten pods still exist...
        await scale(cluster, "api", desired=3)
        await wait_for(
            lambda: view.status()["replicas"]["desired"] == 3, FOLLOW, "desired 3", operator
        )
        await asyncio.sleep(2.5)  # the grow delay (1 s) and two timer rounds
        assert view.per_pod() == 9
        # ...and once they are gone, after the grow delay, the pools grow.
        await scale(cluster, "api", pods=3)
        took = await wait_for(lambda: view.per_pod() == 16, FOLLOW, "a grow to 16", operator)
        print(f"10 -> 3: pools grown {took:.2f}s after the pods went")
        counted = {"desired": 3, "current": 3, "surge": 1, "headroom": 0, "counted": 4}
        await wait_for(lambda: view.status()["replicas"] == counted, FOLLOW, "status", operator)

        # PgBouncer gets a third pod: each one's server pool shrinks so all three fit.
        assert view.ini() == (40, 45)
        await scale(cluster, "pgbouncer", desired=3)
        await wait_for(lambda: view.ini() == (25, 30), FOLLOW, "default_pool_size 25", operator)
        await scale(cluster, "pgbouncer", pods=3)
        # The status is written after the ini (it never claims a write that did not happen),
        # so it may trail the ini by one request.
        resized = {
            "defaultPoolSize": 25, "reservePoolSize": 5, "maxDbConnections": 30, "total": 90,
            "serverBudget": SERVER_BUDGET,
        }  # fmt: skip
        await wait_for(
            lambda: view.status()["pgbouncer"] == resized, FOLLOW, "PgBouncer's status", operator
        )
        await asyncio.sleep(1.5)  # a timer round on the final state

        status, probe = await operator.health()  # kopf caches probe results for 10 s
        assert status == 200 and isinstance(probe["reconciles"], int)

    assert sampler.samples > 100 and sampler.violations == []
    generations = [g for _, g in [view.pool() or (0, 0)]]
    assert generations == [3], "one write per change: create, shrink, grow"
    reasons = {reason for _, reason in view.events()}  # posted before the operator stopped
    assert {"PoolResized", "GrowDeferred", "PgBouncerResized"} <= reasons
    # Structured logs: one JSON object per line, naming the object a message is about.
    records = [
        r for r in operator.json_logs() if "PoolPolicy pools reconciled" in r.get("message", "")
    ]
    assert records, operator.log_lines()[-5:]
    assert {r["object"]["kind"] for r in records} == {"PoolPolicy", "Deployment"}
    assert {r["severity"] for r in records} == {"info"}
    assert operator.process.returncode == 0, "SIGTERM ends it cleanly"

    used = used_permissions(cluster)
    granted = {(g, r, v) for (g, r), verbs in PERMISSIONS.items() for v in verbs}
    assert used - granted == set(), "requests the Role would refuse"
    assert granted - used == set(), "grants the operator never used"


async def test_an_impossible_budget_keeps_the_configmap(cluster: Cluster, tmp_path: Path) -> None:
    view = View(cluster)
    await setup_workloads(cluster)
    chart_file = (
        '{"generation":5,"max_overflow":0,"pool_recycle":3600,"pool_size":16,"pool_timeout":2}'
    )
    await cluster.create(
        CONFIGMAPS,
        with_version(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "api-pool"},
                "data": {"pool.json": chart_file},
            }
        ),
    )
    async with run_operator(cluster, tmp_path, NS) as operator:
        await cluster.create(POLICIES, policy("pools", min_per_pod=8))
        # The chart's file had no client budget: rewritten above the chart's generation.
        await wait_for(
            lambda: view.pool() == (16, 6), FOLLOW, "the operator's first file", operator
        )
        kept = cluster.get("v1/configmaps", NS, "api-pool")

        await scale(cluster, "api", desired=30)  # 31 pods x 8 > 100
        await wait_for(
            lambda: view.condition("BudgetExceeded").get("status") == "True",
            FOLLOW, "BudgetExceeded", operator,
        )  # fmt: skip
        message = view.condition("BudgetExceeded")["message"]
        assert "31 API pods" in message and "248" in message and "generation 6" in message
        assert view.condition("Ready")["reason"] == "BudgetExceeded"
        assert view.status()["boundBy"] == "MinPerPod"
        await wait_for(
            lambda: ("Warning", "BudgetExceeded") in view.events(), FOLLOW, "the Warning", operator
        )
        await asyncio.sleep(2.5)  # timer rounds: still kept, still one warning
        assert cluster.get("v1/configmaps", NS, "api-pool") == kept
        assert view.events().count(("Warning", "BudgetExceeded")) == 1

        # A broken policy beside it: reported, not retried, and the first one is unaffected.
        broken = policy("broken", min_per_pod=9, max_per_pod=8)
        await cluster.create(POLICIES, broken)
        await wait_for(
            lambda: view.condition("Ready", "broken").get("reason") == "InvalidPolicy",
            FOLLOW, "InvalidPolicy", operator,
        )  # fmt: skip
        assert "min_per_pod and max_per_pod" in view.condition("Ready", "broken")["message"]

        # Raising the budget (a spec change) restores it.
        await cluster.patch(
            f"{POLICIES}/pools",
            {"metadata": {"generation": 2}, "spec": {"clientBudget": {"maxClientConn": 1010}}},
        )
        # 1000 / 31 pods, clamped to 16: the sizes the pods have, under the new budget.
        await wait_for(
            lambda: view.pool() == (16, 7), FOLLOW, "a file for the new budget", operator
        )
        await wait_for(
            lambda: view.condition("BudgetExceeded").get("status") == "False",
            FOLLOW, "BudgetExceeded cleared", operator,
        )  # fmt: skip
        assert view.status()["observedGeneration"] == 2
        # Events are posted in the background.
        await wait_for(
            lambda: ("Normal", "BudgetRestored") in view.events(),
            FOLLOW,
            "BudgetRestored",
            operator,
        )
    assert json.loads(json.dumps(view.status()))["poolGeneration"] == 7
