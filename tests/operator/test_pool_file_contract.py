"""The pool file the operator writes is the one the replicas read: skillcoach.data.pool_file
(the service's reader, which this operator does not import) accepts the operator's output for
every kind of decision, with the same numbers, and the operator reads back what the service's
writer writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillcoach.data.pool_file import PoolFile, PoolFileError, read_pool_file, write_pool_file
from skillcoach_operator.builders import build_pool_file, parse_pool_file, pool_file_text
from skillcoach_operator.sizing import Budget, Replicas, decide

DECISIONS = [
    (Budget(), Replicas(desired=1)),  # the per-pod maximum
    (Budget(max_client_conn=300, client_reserve=20), Replicas(desired=30, surge=2)),  # split
    (Budget(max_client_conn=60, client_reserve=10, min_per_pod=3), Replicas(desired=40)),  # min
    (Budget(pool_timeout=0.25, pool_recycle=-1), Replicas(desired=7, current=9, surge=1)),
]


@pytest.mark.parametrize(("budget", "replicas"), DECISIONS)
def test_the_service_reads_what_the_operator_writes(
    tmp_path: Path, budget: Budget, replicas: Replicas
) -> None:
    decision = decide(budget, replicas)
    path = tmp_path / "pool.json"
    path.write_text(pool_file_text(build_pool_file(decision, generation=41)))
    read = read_pool_file(path)
    assert read == PoolFile(
        pool_size=decision.pool_size,
        max_overflow=decision.max_overflow,
        pool_timeout=budget.pool_timeout,
        pool_recycle=budget.pool_recycle,
        generation=41,
        client_budget=budget.max_client_conn - budget.client_reserve,
    )


def test_the_operator_reads_what_the_service_and_the_chart_write(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    write_pool_file(
        path, PoolFile(pool_size=9, max_overflow=1, pool_timeout=2, pool_recycle=60, generation=3)
    )
    pool = parse_pool_file(path.read_text())
    assert pool is not None
    assert (pool.pool_size, pool.max_overflow, pool.generation, pool.client_budget) == (
        9,
        1,
        3,
        None,
    )
    # The chart's toJson: sorted keys, integers where the values are whole.
    chart = '{"generation":5,"max_overflow":0,"pool_recycle":3600,"pool_size":16,"pool_timeout":2}'
    pool = parse_pool_file(chart)
    assert pool is not None and (pool.per_pod, pool.pool_timeout, pool.generation) == (16, 2.0, 5)


@pytest.mark.parametrize(
    "text",
    [
        '{"pool_size": 0, "max_overflow": 0, "pool_timeout": 2, "pool_recycle": 1, "generation": 1}',
        "[]",
        "{",
        "",
    ],
)
def test_what_the_service_refuses_the_operator_rewrites(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pool.json"
    path.write_text(text)
    with pytest.raises(PoolFileError):
        read_pool_file(path)
    assert parse_pool_file(text) is None
