"""Pure parts of `skillcoach stack`: per-replica pool sizes fit PgBouncer's client budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillcoach.stack.commands import _replica_pool, _template
from skillcoach.stack.config import StackConfig
from skillcoach.stack.pgbouncer import default_template_path


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 10, 20])
def test_replica_pools_fit_under_max_client_conn(replicas: int) -> None:
    pool_size, max_overflow = _replica_pool(replicas, 500)
    assert pool_size >= 1
    assert max_overflow >= 0
    # One extra replica's worth of headroom for a rolling restart.
    assert (replicas + 1) * (pool_size + max_overflow) <= 500


def test_one_replica_gets_the_seed_defaults() -> None:
    assert _replica_pool(1, 500) == (20, 30)


def test_template_falls_back_to_this_checkout(tmp_path: Path) -> None:
    assert _template(StackConfig(root=tmp_path)) == default_template_path()
