"""Where the local stack listens and keeps its state, read once from the environment.

Ports and the PostgreSQL admin DSN come from SKILLCOACH_STACK_* variables (defaults: API 8000
(HAProxy; the replicas listen on 8001.., each with its /metrics port 1000 above: 9001..),
HAProxy stats 8404, PgBouncer 6432, PgBouncer exporter 9127, Prometheus 9190, the OTLP receiver
4317 (gRPC) and 4318 (HTTP), Redis 6390, the Redis Cluster's six nodes 7000..7005 (bus ports
17000..17005), postgres@127.0.0.1:5432), and so do the application's role and database
(SKILLCOACH_STACK_APP_USER, SKILLCOACH_STACK_DATABASE, both "skillcoach"): a second stack beside
the first (the benchmark's) needs its own role too, since `up` resets the role's password to its
own secret. Generated passwords live in ROOT/.stack/secrets.json (mode 0600) so a second `up`
reuses them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from psycopg2.extensions import parse_dsn

from skillcoach_devstack.errors import StackError

__all__ = ["Secrets", "StackConfig", "load_or_create_secrets"]

DEFAULT_PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# One uvicorn process each on one machine: more than this is a typo, not a plan.
MAX_REPLICAS = 32
# The cluster's six nodes take base..base+5 and their bus ports base+10000..base+10005.
MAX_REDIS_CLUSTER_PORT = 65535 - 10000 - 5
# A replica's /metrics port is its API port plus this (SKILLCOACH_STACK_METRICS_PORT_OFFSET).
METRICS_PORT_OFFSET = 1000
# Not Prometheus' usual 9090: installing Debian's package starts a system Prometheus there on
# machines that run systemd.
PROMETHEUS_PORT = 9190
# Role and database names go into PgBouncer's ini and URLs unquoted: plain identifiers only.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _env_int(env: Mapping[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise StackError(f"{name}: expected an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise StackError(f"{name}: {value} is outside [{low}, {high}]")
    return value


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise StackError(f"{name}: expected 1 or 0 (true or false), got {raw!r}")


def _env_identifier(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not _IDENTIFIER.fullmatch(raw):
        raise StackError(f"{name}: {raw!r} is not a lower-case identifier ([a-z_][a-z0-9_]*)")
    return raw


@dataclass(frozen=True, slots=True)
class StackConfig:
    root: Path
    api_port: int = 8000
    pgbouncer_port: int = 6432
    redis_port: int = 6390
    redis_cluster_port: int = 7000
    haproxy_stats_port: int = 8404
    exporter_port: int = 9127
    metrics_port_offset: int = METRICS_PORT_OFFSET
    prometheus_port: int = PROMETHEUS_PORT
    # Seconds between scrapes and between rule evaluations of the stack's Prometheus.
    scrape_interval: int = 5
    # The OTLP receiver (`make up OTLP=1`): the replicas send their traces to it.
    otlp: bool = False
    otlp_grpc_port: int = 4317
    otlp_http_port: int = 4318
    pg_admin_dsn: str = DEFAULT_PG_ADMIN_DSN
    demo_learners: int = 2000
    ready_timeout: float = 180.0
    # The application's role and database (created if missing; trust or password auth).
    app_user: str = "skillcoach"
    app_database: str = "skillcoach"

    @classmethod
    def from_env(cls, root: Path, env: Mapping[str, str] | None = None) -> StackConfig:
        env = os.environ if env is None else env
        return cls(
            root=root,
            api_port=_env_int(env, "SKILLCOACH_STACK_API_PORT", 8000, low=1, high=65535),
            pgbouncer_port=_env_int(
                env, "SKILLCOACH_STACK_PGBOUNCER_PORT", 6432, low=1, high=65535
            ),
            redis_port=_env_int(env, "SKILLCOACH_STACK_REDIS_PORT", 6390, low=1, high=65535),
            redis_cluster_port=_env_int(
                env,
                "SKILLCOACH_STACK_REDIS_CLUSTER_PORT",
                7000,
                low=1,
                high=MAX_REDIS_CLUSTER_PORT,
            ),
            haproxy_stats_port=_env_int(
                env, "SKILLCOACH_STACK_HAPROXY_STATS_PORT", 8404, low=1, high=65535
            ),
            exporter_port=_env_int(env, "SKILLCOACH_STACK_EXPORTER_PORT", 9127, low=1, high=65535),
            metrics_port_offset=_env_int(
                env, "SKILLCOACH_STACK_METRICS_PORT_OFFSET", METRICS_PORT_OFFSET, low=1, high=30000
            ),
            prometheus_port=_env_int(
                env, "SKILLCOACH_STACK_PROMETHEUS_PORT", PROMETHEUS_PORT, low=1, high=65535
            ),
            scrape_interval=_env_int(env, "SKILLCOACH_STACK_SCRAPE_INTERVAL", 5, low=1, high=60),
            otlp=_env_flag(env, "SKILLCOACH_STACK_OTLP"),
            otlp_grpc_port=_env_int(
                env, "SKILLCOACH_STACK_OTLP_GRPC_PORT", 4317, low=1, high=65535
            ),
            otlp_http_port=_env_int(
                env, "SKILLCOACH_STACK_OTLP_HTTP_PORT", 4318, low=1, high=65535
            ),
            pg_admin_dsn=env.get("SKILLCOACH_STACK_PG_ADMIN_DSN") or DEFAULT_PG_ADMIN_DSN,
            demo_learners=_env_int(env, "SKILLCOACH_DEMO_LEARNERS", 2000, low=1, high=1_000_000),
            ready_timeout=float(
                _env_int(env, "SKILLCOACH_STACK_READY_TIMEOUT", 180, low=1, high=3600)
            ),
            app_user=_env_identifier(env, "SKILLCOACH_STACK_APP_USER", "skillcoach"),
            app_database=_env_identifier(env, "SKILLCOACH_STACK_DATABASE", "skillcoach"),
        )

    @property
    def state_dir(self) -> Path:
        return self.root / ".stack"

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    @property
    def secrets_file(self) -> Path:
        return self.state_dir / "secrets.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def redis_cluster_dir(self) -> Path:
        return self.state_dir / "redis-cluster"

    @property
    def pool_dir(self) -> Path:
        """The replicas' pool files (api-<port>.json) and the last generation written."""
        return self.state_dir / "pool"

    @property
    def haproxy_dir(self) -> Path:
        return self.state_dir / "haproxy"

    @property
    def prometheus_dir(self) -> Path:
        """Prometheus' configuration, its scrape targets and its data."""
        return self.state_dir / "prometheus"

    @property
    def pg_host(self) -> str:
        return parse_dsn(self.pg_admin_dsn).get("host") or "127.0.0.1"

    @property
    def pg_port(self) -> int:
        return int(parse_dsn(self.pg_admin_dsn).get("port") or 5432)

    def api_ports(self, replicas: int) -> list[int]:
        """The replicas listen on the ports after the API port, which belongs to HAProxy in
        front of them (even for one replica, so SKILLCOACH_URL is always the load balancer)."""
        if not 1 <= replicas <= MAX_REPLICAS:
            raise StackError(f"replicas must be in [1, {MAX_REPLICAS}], got {replicas}")
        if self.api_port + replicas + self.metrics_port_offset > 65535:
            raise StackError(
                f"{replicas} replicas (and their metrics ports {self.metrics_port_offset} above)"
                f" do not fit above port {self.api_port}"
            )
        return [self.api_port + i for i in range(1, replicas + 1)]

    def metrics_port(self, api_port: int) -> int:
        """The /metrics port of the replica on api_port (the service serves /metrics only on
        its metrics port, so a saturated API port never delays a scrape)."""
        return api_port + self.metrics_port_offset


@dataclass(frozen=True, slots=True)
class Secrets:
    app_password: str
    admin_password: str


def load_or_create_secrets(path: Path) -> Secrets:
    """The stack's generated passwords: read them back, or create and store them once."""
    try:
        data = json.loads(path.read_text())
        return Secrets(app_password=data["app_password"], admin_password=data["admin_password"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"{path} is unreadable ({exc}); delete it to generate new passwords"
        ) from None
    # URL-safe tokens: they go into userlist quotes and URLs without escaping.
    fresh = Secrets(
        app_password=secrets.token_urlsafe(24), admin_password=secrets.token_urlsafe(24)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"app_password": fresh.app_password, "admin_password": fresh.admin_password}, f)
        f.write("\n")
    return fresh
