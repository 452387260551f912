"""The pool decision (skillcoach_operator.sizing), by property: for any budget and any replica
counts the pods stay within PgBouncer's client budget and PgBouncer's pods within the server
budget, every pod gets at least its minimum or the result says the budget is exceeded, a pod's
pool never grows when replicas grow, and a scale-out within the headroom never overruns the
pools sized before it. Plus the first version's results, reproduced on a grid."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skillcoach_operator.sizing import (
    Bound,
    Budget,
    Replicas,
    decide,
    plan_pools,
    resolve_surge,
    scale_up_headroom,
)

EXAMPLES = settings(max_examples=400, deadline=None)


@st.composite
def budgets(draw: st.DrawFn) -> Budget:
    client_reserve = draw(st.integers(0, 200))
    server_reserve = draw(st.integers(0, 50))
    low = draw(st.integers(1, 32))
    return Budget(
        max_client_conn=client_reserve + draw(st.integers(1, 20_000)),
        client_reserve=client_reserve,
        max_connections=server_reserve + draw(st.integers(1, 2_000)),
        server_reserve=server_reserve,
        pgbouncer_replicas=draw(st.integers(1, 12)),
        pgbouncer_reserve_pool=draw(st.integers(0, 20)),
        min_per_pod=low,
        max_per_pod=low + draw(st.integers(0, 64)),
    )


replica_counts = st.builds(
    Replicas,
    desired=st.integers(0, 2_000),
    current=st.integers(0, 2_000),
    surge=st.integers(0, 50),
    headroom=st.integers(0, 500),
)


@EXAMPLES
@given(budgets(), replica_counts)
def test_the_pods_fit_the_client_budget_or_the_result_says_exceeded(
    budget: Budget, replicas: Replicas
) -> None:
    d = decide(budget, replicas)
    assert d.pods == max(
        1, max(replicas.desired, replicas.current) + replicas.surge + replicas.headroom
    )
    assert budget.min_per_pod <= d.per_pod <= budget.max_per_pod
    total = d.per_pod * d.pods
    if total > budget.max_client_conn - budget.client_reserve:
        assert d.budget_exceeded and d.client_exceeded
        assert d.bound_by in (Bound.MIN_PER_POD, Bound.SERVER_BUDGET)
        # Only the minimum can overrun: any larger pool was chosen to fit.
        assert d.per_pod == budget.min_per_pod
    else:
        assert not d.client_exceeded
        assert d.bound_by != Bound.MIN_PER_POD


@EXAMPLES
@given(budgets(), replica_counts)
def test_pgbouncer_fits_the_server_budget_or_the_result_says_exceeded(
    budget: Budget, replicas: Replicas
) -> None:
    d = decide(budget, replicas)
    servers = budget.pgbouncer_replicas * (
        d.pgbouncer_default_pool_size + budget.pgbouncer_reserve_pool
    )
    assert d.pgbouncer_default_pool_size >= 1
    assert d.server_total == servers
    if servers > budget.max_connections - budget.server_reserve:
        assert d.bound_by == Bound.SERVER_BUDGET and d.budget_exceeded
    else:
        assert not d.server_exceeded and d.bound_by != Bound.SERVER_BUDGET
        # The whole share is used: one more connection per PgBouncer pod would not fit.
        share = (budget.max_connections - budget.server_reserve) // budget.pgbouncer_replicas
        assert d.pgbouncer_max_db_connections == share


@EXAMPLES
@given(budgets(), replica_counts)
def test_the_bound_names_the_limit_that_decided(budget: Budget, replicas: Replicas) -> None:
    d = decide(budget, replicas)
    if d.bound_by == Bound.MAX_PER_POD:
        assert d.per_pod == budget.max_per_pod
        assert budget.max_per_pod * d.pods <= budget.client_budget
    elif d.bound_by == Bound.CLIENT_BUDGET:
        assert d.per_pod == budget.client_budget // d.pods < budget.max_per_pod
        # One more connection per pod would overrun the client budget.
        assert (d.per_pod + 1) * d.pods > budget.client_budget
    elif d.bound_by == Bound.MIN_PER_POD:
        assert d.client_exceeded
    else:
        assert d.server_exceeded


@EXAMPLES
@given(budgets(), replica_counts, st.sampled_from(["desired", "current", "surge", "headroom"]))
def test_a_pods_pool_never_grows_when_replicas_grow(
    budget: Budget, replicas: Replicas, field: str
) -> None:
    before = decide(budget, replicas)
    more = dataclasses.replace(replicas, **{field: getattr(replicas, field) + 1})
    after = decide(budget, more)
    assert after.per_pod <= before.per_pod
    assert after.pgbouncer_default_pool_size == before.pgbouncer_default_pool_size


hpa_steps = st.tuples(st.integers(0, 8), st.integers(0, 200), st.integers(0, 3))


@EXAMPLES
@given(budgets(), st.integers(1, 300), st.integers(0, 3), hpa_steps, st.integers(0, 400), st.data())
def test_a_scale_out_within_the_headroom_stays_within_the_old_pools(
    budget: Budget,
    replicas: int,
    surge: int,
    policy: tuple[int, int, int],
    max_replicas: int,
    data: st.DataObject,
) -> None:
    """While the running pods still hold the pools sized before a scale-out (they have not
    seen the new file yet), the HPA takes up to `steps` steps; new pods start with the old
    file or the new, smaller one. Every pod then holds at most the old per-pod pool."""
    pods, percent, steps = policy
    headroom = scale_up_headroom(
        replicas, pods=pods, percent=percent, max_replicas=max_replicas, steps=steps
    )
    old = decide(budget, Replicas(desired=replicas, surge=surge, headroom=headroom))
    reached = replicas
    for _ in range(steps):
        most = reached + max(pods, math.ceil(reached * percent / 100))
        if max_replicas:
            most = min(most, max(max_replicas, replicas))
        reached = data.draw(st.integers(reached, most))
    assert reached <= replicas + headroom
    if not old.client_exceeded:
        assert old.per_pod * (reached + surge) <= budget.client_budget


def test_headroom_follows_the_hpa_policy_and_its_cap() -> None:
    assert scale_up_headroom(2, pods=4, percent=100) == 4  # 4 pods beat 100% of 2
    assert scale_up_headroom(10, pods=4, percent=100) == 10  # 100% of 10 beats 4 pods
    assert scale_up_headroom(10, pods=4, percent=100, steps=2) == 30  # 10 -> 20 -> 40
    assert scale_up_headroom(10, pods=4, percent=100, steps=3, max_replicas=25) == 15
    assert scale_up_headroom(30, pods=4, percent=100, max_replicas=25) == 0  # past the cap
    assert scale_up_headroom(7, pods=0, percent=0, steps=5) == 0
    assert scale_up_headroom(3, pods=0, percent=50) == 2  # rounded up, as the HPA does
    with pytest.raises(ValueError, match="negative"):
        scale_up_headroom(-1, pods=1, percent=0)


@pytest.mark.parametrize(
    ("max_surge", "desired", "expected"),
    [
        (1, 10, 1),
        (0, 10, 0),
        ("25%", 10, 3),
        ("25%", 1, 1),
        ("0%", 5, 0),
        (None, 4, 1),
        ("3", 9, 3),
    ],
)
def test_max_surge_is_resolved_like_the_deployment_controller(
    max_surge: int | str | None, desired: int, expected: int
) -> None:
    assert resolve_surge(max_surge, desired) == expected


@pytest.mark.parametrize("bad", [-1, "x%", "1.5"])
def test_a_bad_max_surge_is_refused(bad: int | str) -> None:
    with pytest.raises(ValueError, match="maxSurge"):
        resolve_surge(bad, 3)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("client_reserve", 1000, "max_client_conn must exceed client_reserve"),
        ("server_reserve", 100, "max_connections must exceed server_reserve"),
        ("min_per_pod", 17, "min_per_pod and max_per_pod"),
        ("pgbouncer_replicas", 0, "pgbouncer_replicas"),
        ("pool_timeout", 0.0, "pool_timeout"),
    ],
)
def test_an_inconsistent_budget_is_refused(field: str, value: float, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Budget(**{field: value})


def test_plan_pools_keeps_the_contracts_examples() -> None:
    """The figures docs/architecture.md gives for the default budget."""
    assert plan_pools(Budget(), replicas=58).per_pod == 16
    assert plan_pools(Budget(), replicas=59).per_pod == 15
    assert plan_pools(Budget(), replicas=200).per_pod == 4
    assert plan_pools(Budget(), replicas=300).oversubscribed
    assert plan_pools(Budget(), replicas=1).pgbouncer_default_pool_size == 90
