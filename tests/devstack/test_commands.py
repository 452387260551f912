"""Pure parts of `skillcoach stack`: templates, the replicas' pools from the one sizing function."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillcoach_devstack.commands import (
    RESERVE_POOL_SIZE,
    SURGE,
    _pool_env,
    describe_plan,
    make_haproxy,
    make_pgbouncer,
)
from skillcoach_devstack.config import Secrets, StackConfig
from skillcoach_devstack.haproxy import default_template_path as haproxy_template
from skillcoach_devstack.pgbouncer import default_template_path
from skillcoach_devstack.pools import stack_budget
from skillcoach_operator.sizing import plan_pools

SECRETS = Secrets(app_password="a", admin_password="b")


def test_the_templates_ship_with_the_package() -> None:
    assert default_template_path().is_file()
    assert haproxy_template().is_file()
    assert default_template_path().parent.parent == Path(make_pgbouncer.__code__.co_filename).parent


@pytest.mark.parametrize("replicas", [1, 2, 3, 5, 10, 20])
def test_replica_pools_fit_under_max_client_conn(replicas: int) -> None:
    cfg = StackConfig(root=Path("/r"))
    max_client_conn = make_pgbouncer(cfg, SECRETS).config.max_client_conn
    budget = stack_budget(
        max_client_conn=max_client_conn, max_connections=100, reserve_pool_size=RESERVE_POOL_SIZE
    )
    plan = plan_pools(budget, replicas=replicas, surge=SURGE)
    assert not plan.oversubscribed
    # One extra replica's worth of headroom for a restart, and the reserve for migrate & co.
    assert (replicas + SURGE) * plan.per_pod <= max_client_conn - budget.client_reserve
    assert f"pool {plan.pool_size}+{plan.max_overflow} each" in describe_plan(
        budget, plan, replicas
    )


def test_one_replica_gets_the_per_pod_cap_and_pgbouncer_the_stack_half() -> None:
    cfg = StackConfig(root=Path("/r"))
    budget = stack_budget(max_client_conn=500, max_connections=100, reserve_pool_size=5)
    plan = plan_pools(budget, replicas=1, surge=SURGE)
    assert (plan.pool_size, plan.max_overflow) == (16, 0)
    bouncer = make_pgbouncer(cfg, SECRETS, plan)
    # Half of PostgreSQL's 100 connections: 45 steady + 5 reserve.
    assert bouncer.config.default_pool_size == 45
    assert bouncer.config.max_db_connections == 50
    assert bouncer.config.reserve_pool_size == RESERVE_POOL_SIZE
    assert _pool_env(plan) == {
        "SKILLCOACH_POOL_SIZE": "16",
        "SKILLCOACH_MAX_OVERFLOW": "0",
        "SKILLCOACH_POOL_TIMEOUT": "2",
        "SKILLCOACH_POOL_RECYCLE": "3600",
    }


def test_a_small_server_still_gets_a_valid_budget() -> None:
    budget = stack_budget(max_client_conn=500, max_connections=10, reserve_pool_size=5)
    plan = plan_pools(budget, replicas=2, surge=SURGE)
    assert plan.pgbouncer_default_pool_size >= 1


def test_haproxy_owns_the_api_port_in_front_of_the_replicas() -> None:
    cfg = StackConfig(root=Path("/r"))
    lb = make_haproxy(cfg, cfg.api_ports(2))
    assert lb.url == "http://127.0.0.1:8000"
    assert [(s.name, s.port) for s in lb.config.servers] == [("api-8001", 8001), ("api-8002", 8002)]
    assert lb.stats_url == "http://127.0.0.1:8404/stats"
