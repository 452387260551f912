"""The multi-replica local stack (`skillcoach stack up`) in a scratch root, for benchmarks.

The benchmark drives the stack exactly as `make up` starts it (HAProxy -> N replicas ->
PgBouncer, the replicas cached on a 6-node Redis Cluster, pool files from the sizing plan),
but beside any stack the developer already runs: every port is a free one (the replicas'
metrics ports and the stack's Prometheus included), and the role and database are the
benchmark's own (`up` resets its role's password, so sharing "skillcoach" would lock the
developer's PgBouncer out). `stop` runs `stack down` and drops both.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.harness import admin_sql, clean_env
from skillcoach_devstack import envfile
from skillcoach_devstack.config import METRICS_PORT_OFFSET
from skillcoach_devstack.processes import ApiReplica, free_port_block, free_ports, log_tail
from skillcoach_devstack.redis_cluster import free_base_port

__all__ = ["LocalStack", "start_stack", "stop_stack"]

UP_TIMEOUT = 900.0
DOWN_TIMEOUT = 120.0


@dataclass
class LocalStack:
    root: Path
    env: dict[str, str]  # the SKILLCOACH_STACK_* settings it was started with
    replicas: int
    values: dict[str, str] = field(default_factory=dict)  # ROOT/.stack/env once up
    log: Path | None = None

    @property
    def url(self) -> str:
        return self.values["SKILLCOACH_URL"]

    @property
    def key(self) -> str:
        return self.values["SKILLCOACH_API_KEY"]

    @property
    def direct_url(self) -> str:
        return self.values["SKILLCOACH_DIRECT_DATABASE_URL"]

    @property
    def redis_url(self) -> str:
        return self.values["SKILLCOACH_REDIS_URL"]

    @property
    def database(self) -> str:
        return self.env["SKILLCOACH_STACK_DATABASE"]

    @property
    def prometheus_url(self) -> str:
        return self.values["SKILLCOACH_PROMETHEUS_URL"]

    def replica_urls(self) -> list[str]:
        return self.values["SKILLCOACH_REPLICA_URLS"].split()

    def replica_metrics_urls(self) -> list[str]:
        """Each replica's /metrics (its metrics port), in the order of replica_urls."""
        return self.values["SKILLCOACH_REPLICA_METRICS_URLS"].split()

    def replica_pids(self) -> dict[str, int | None]:
        """Replica URL -> its pid (None when it is not running)."""
        state = self.root / ".stack"
        return {
            url: ApiReplica(port=int(url.rsplit(":", 1)[1]), state_dir=state).pid()
            for url in self.replica_urls()
        }


def stack_env(replicas: int, learners: int, *, scrape_interval: int = 5) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    # Blocks below the ephemeral range: see free_port_block. The replicas' metrics ports sit
    # METRICS_PORT_OFFSET above their API ports.
    api = free_port_block(replicas + 1, low=23000, high=25000, offsets=(0, METRICS_PORT_OFFSET))
    # Distinct: one port handed to two services failed a stack start (PgBouncer and HAProxy's
    # stats page both given 34237).
    prometheus, grpc, http, bouncer, redis, stats, exporter = free_ports(7)
    return {
        "SKILLCOACH_STACK_API_PORT": str(api),
        "SKILLCOACH_STACK_METRICS_PORT_OFFSET": str(METRICS_PORT_OFFSET),
        "SKILLCOACH_STACK_PROMETHEUS_PORT": str(prometheus),
        "SKILLCOACH_STACK_SCRAPE_INTERVAL": str(scrape_interval),
        "SKILLCOACH_STACK_OTLP_GRPC_PORT": str(grpc),
        "SKILLCOACH_STACK_OTLP_HTTP_PORT": str(http),
        "SKILLCOACH_STACK_REDIS_CLUSTER_PORT": str(free_base_port()),
        "SKILLCOACH_STACK_PGBOUNCER_PORT": str(bouncer),
        "SKILLCOACH_STACK_REDIS_PORT": str(redis),
        "SKILLCOACH_STACK_HAPROXY_STATS_PORT": str(stats),
        "SKILLCOACH_STACK_EXPORTER_PORT": str(exporter),
        "SKILLCOACH_STACK_APP_USER": f"bench_{tag}",
        "SKILLCOACH_STACK_DATABASE": f"skillcoach_bench_{tag}",
        "SKILLCOACH_DEMO_LEARNERS": str(learners),
    }


def _stack_cli(stack: LocalStack, action: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = clean_env() | stack.env
    cmd = [sys.executable, "-m", "skillcoach.cli", "stack", action, "--root", str(stack.root)]
    if action == "up":
        cmd += ["--replicas", str(stack.replicas)]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def start_stack(
    root: Path,
    *,
    replicas: int,
    learners: int,
    scrape_interval: int = 5,
    settings: Mapping[str, str] | None = None,
) -> LocalStack:
    """`skillcoach stack up --replicas N` in root; raises with its output if it fails.
    settings: SKILLCOACH_* variables for the replicas (they pass through `stack up`)."""
    root.mkdir(parents=True, exist_ok=True)
    env = stack_env(replicas, learners, scrape_interval=scrape_interval) | dict(settings or {})
    stack = LocalStack(root=root, env=env, replicas=replicas)
    stack.log = root / "stack-up.log"
    proc = _stack_cli(stack, "up", UP_TIMEOUT)
    stack.log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"stack up failed ({proc.returncode}):\n{log_tail(stack.log, 40)}")
    stack.values = envfile.read_env(root / ".stack" / "env")
    return stack


def stop_stack(stack: LocalStack) -> None:
    """`stack down`, then the benchmark's database and role go (each step even if one fails)."""
    errors: list[str] = []
    try:
        proc = _stack_cli(stack, "down", DOWN_TIMEOUT)
        if proc.returncode != 0:
            errors.append(f"stack down exited {proc.returncode}: {proc.stderr[-500:]}")
    except subprocess.TimeoutExpired:
        errors.append("stack down timed out")
    for sql in (
        f'DROP DATABASE IF EXISTS "{stack.database}" WITH (FORCE)',
        f'DROP ROLE IF EXISTS "{stack.env["SKILLCOACH_STACK_APP_USER"]}"',
    ):
        try:
            admin_sql(sql)
        except Exception as exc:
            errors.append(f"{sql}: {exc!r}")
    if errors:
        raise RuntimeError("; ".join(errors))
