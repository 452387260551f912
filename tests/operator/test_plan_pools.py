from __future__ import annotations

import pytest

from skillcoach_operator.sizing import Budget, plan_pools


def test_one_replica_gets_the_per_pod_cap_as_a_steady_pool() -> None:
    plan = plan_pools(Budget(), replicas=1)
    assert (plan.pool_size, plan.max_overflow) == (16, 0)
    assert not plan.oversubscribed


@pytest.mark.parametrize("replicas", [1, 2, 5, 18, 19, 30, 100, 200])
def test_pods_never_exceed_the_client_budget_unless_clamped(replicas: int) -> None:
    b = Budget()
    plan = plan_pools(b, replicas=replicas, surge=1)
    total = plan.per_pod * (replicas + 1)
    assert b.min_per_pod <= plan.per_pod <= b.max_per_pod
    assert plan.oversubscribed == (total > b.max_client_conn - b.client_reserve)
    if plan.per_pod > b.min_per_pod:
        assert not plan.oversubscribed


def test_per_pod_shrinks_as_replicas_grow() -> None:
    sizes = [plan_pools(Budget(), replicas=r).per_pod for r in (10, 60, 100, 200)]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] == 16 and sizes[1] == 950 // 61


def test_surge_is_counted_during_rollouts() -> None:
    b = Budget(max_client_conn=110, client_reserve=50)
    assert plan_pools(b, replicas=4, surge=0).per_pod == 15
    assert plan_pools(b, replicas=4, surge=1).per_pod == 12


def test_server_side_leaves_room_for_reserve_pools() -> None:
    b = Budget(
        max_connections=100, server_reserve=10, pgbouncer_replicas=2, pgbouncer_reserve_pool=5
    )
    plan = plan_pools(b, replicas=3)
    assert plan.pgbouncer_default_pool_size == 40
    assert (plan.pgbouncer_default_pool_size + 5) * 2 <= 100 - 10


def test_tiny_budgets_oversubscribe_rather_than_starve() -> None:
    plan = plan_pools(Budget(max_client_conn=60, client_reserve=50), replicas=5)
    assert plan.per_pod == 4 and plan.oversubscribed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_client_conn": 10, "client_reserve": 10},
        {"max_connections": 5, "server_reserve": 5},
        {"pgbouncer_replicas": 0},
        {"min_per_pod": 0},
        {"min_per_pod": 60, "max_per_pod": 50},
        {"pgbouncer_reserve_pool": -1},
    ],
)
def test_invalid_budgets_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        Budget(**kwargs)  # type: ignore[arg-type]


def test_invalid_replica_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        plan_pools(Budget(), replicas=0)
    with pytest.raises(ValueError, match="surge"):
        plan_pools(Budget(), replicas=1, surge=-1)
