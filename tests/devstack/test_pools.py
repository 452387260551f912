"""The stack's pool files: written from the plan, one growing generation, only when they change;
which replicas a scale starts, keeps and stops."""

from __future__ import annotations

from pathlib import Path

from skillcoach.data.pool_file import read_pool_file
from skillcoach_devstack.pools import (
    client_budget,
    last_generation,
    plan_scale,
    pool_path,
    prune_pool_files,
    remove_pool_file,
    split_by_direction,
    write_pools,
)
from skillcoach_operator.sizing import Budget, plan_pools

# A small client budget, so the per-replica pool changes with the replica count.
# A generous per-pod cap, so these tests exercise how the client budget is split.
BUDGET = Budget(max_client_conn=150, client_reserve=30, max_connections=100, max_per_pod=50)


def test_scale_plan() -> None:
    plan = plan_scale([8001, 8002], [8001, 8002, 8003])
    assert (plan.start, plan.keep, plan.stop) == ([8003], [8001, 8002], [])
    plan = plan_scale([8001, 8002, 8003], [8001])
    assert (plan.start, plan.keep, plan.stop) == ([], [8001], [8002, 8003])
    # An old single replica on the API port is stopped when HAProxy takes the port.
    plan = plan_scale([8000], [8001])
    assert (plan.start, plan.keep, plan.stop) == ([8001], [], [8000])


def test_pool_files_take_growing_generations_and_are_rewritten_only_on_change(
    tmp_path: Path,
) -> None:
    two = plan_pools(BUDGET, replicas=2, surge=1)
    changes = write_pools(tmp_path, [8001, 8002], two)
    assert [c.port for c in changes] == [8001, 8002]
    assert all(c.before is None for c in changes)
    first = read_pool_file(pool_path(tmp_path, 8001))
    assert (first.pool_size, first.max_overflow) == (two.pool_size, two.max_overflow)
    assert first.pool_size + first.max_overflow == 40  # 120 clients / (2 + 1)
    assert first.generation == 1
    assert last_generation(tmp_path) == 1
    assert "api-8001: pool new, 40+0" in changes[0].describe()

    # The same plan again: nothing to write, no new generation.
    assert write_pools(tmp_path, [8001, 8002], two) == []
    assert last_generation(tmp_path) == 1

    # Scaled to 3: every file gets the smaller pool and the next generation.
    three = plan_pools(BUDGET, replicas=3, surge=1)
    changes = write_pools(tmp_path, [8001, 8002, 8003], three)
    assert len(changes) == 3
    assert {read_pool_file(pool_path(tmp_path, p)).generation for p in (8001, 8002, 8003)} == {2}
    assert read_pool_file(pool_path(tmp_path, 8003)).pool_size + three.max_overflow == 30
    assert "api-8001: pool 40+0 -> 30+0 (timeout 2s, generation 2)" in changes[0].describe()


def test_generation_survives_a_lost_counter_file(tmp_path: Path) -> None:
    plan = plan_pools(BUDGET, replicas=1, surge=1)
    write_pools(tmp_path, [8001], plan)
    write_pools(tmp_path, [8001], plan_pools(BUDGET, replicas=2, surge=1))
    (tmp_path / "generation").unlink()
    assert last_generation(tmp_path) == 2
    changes = write_pools(tmp_path, [8001], plan)
    assert changes[0].after.generation == 3


def test_shrinking_pools_are_written_before_growing_ones(tmp_path: Path) -> None:
    two = plan_pools(BUDGET, replicas=2, surge=1)
    write_pools(tmp_path, [8001, 8002], two)
    # 2 -> 3 replicas: pools shrink, so all are written before the new replica starts.
    first, last = split_by_direction(tmp_path, [8001, 8002, 8003], plan_pools(BUDGET, replicas=3))
    assert (first, last) == ([8001, 8002, 8003], [])
    # 2 -> 1: the remaining pool grows, so it is written after the surplus replica is gone.
    first, last = split_by_direction(tmp_path, [8001], plan_pools(BUDGET, replicas=1))
    assert (first, last) == ([], [8001])
    remove_pool_file(tmp_path, 8002)
    assert not pool_path(tmp_path, 8002).exists()
    remove_pool_file(tmp_path, 8002)  # already gone: fine


def test_pruning_keeps_only_the_wanted_replicas_files(tmp_path: Path) -> None:
    write_pools(tmp_path, [8001, 8002, 8003], plan_pools(BUDGET, replicas=3))
    assert prune_pool_files(tmp_path, [8001]) == [8002, 8003]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-8001.json", "generation"]


def test_pool_files_carry_the_client_budget_they_were_sized_against(tmp_path: Path) -> None:
    plan = plan_pools(BUDGET, replicas=2, surge=1)
    clients = client_budget(BUDGET)
    assert clients == 120  # max_client_conn less the reserve: what plan_pools divides
    # A file written before budgets were recorded is rewritten, with a new generation.
    write_pools(tmp_path, [8001], plan)
    assert read_pool_file(pool_path(tmp_path, 8001)).client_budget is None
    [change] = write_pools(tmp_path, [8001], plan, budget=clients)
    pool = read_pool_file(pool_path(tmp_path, 8001))
    assert (pool.client_budget, pool.generation) == (120, 2)
    assert change.before is not None and change.before.client_budget is None
    # The same plan and budget again: nothing to write.
    assert write_pools(tmp_path, [8001], plan, budget=clients) == []
    # The sum of the pools fits the budget they record (plan_pools' promise, with the surge).
    assert 2 * (pool.pool_size + pool.max_overflow) <= pool.client_budget
