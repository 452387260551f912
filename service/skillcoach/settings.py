"""Configuration: read once from SKILLCOACH_* environment variables, cast, and fail fast.

Every field's description is user documentation: the README's configuration table is
generated from this class (`make docs`), and a test fails when the two disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from skillcoach.limits import RECOMMENDATION_TARGET

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """Configuration is invalid; the message names every offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SKILLCOACH_", env_file=None, extra="ignore", frozen=True
    )

    # -- deployment -------------------------------------------------------------------------
    environment: Literal["dev", "test", "prod"] = Field(
        default="dev", description="`prod` refuses unsafe settings (auth off)"
    )
    database_url: SecretStr = Field(
        default=SecretStr("postgresql+psycopg2://postgres@127.0.0.1:5432/skillcoach"),
        description="PostgreSQL URL; point it at PgBouncer (transaction pooling)",
    )
    database_password: SecretStr | None = Field(
        default=None,
        description="the database password, if not in `DATABASE_URL` (set it from a Secret)",
    )
    host: str = Field(default="127.0.0.1", description="address the API listens on")
    port: int = Field(default=8000, ge=1, le=65535, description="the API port")
    metrics_port: int = Field(
        default=9000,
        ge=0,
        le=65535,
        description="the port of `/metrics` (the API port then answers it 404); 0 serves it on"
        " `PORT` instead (development only)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level of the replica"
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="`json`: one JSON object per line on stderr (with request and trace ids);"
        " `text` for reading by eye",
    )
    access_log: bool = Field(
        default=False,
        description="one log line per request served (method, route template, status,"
        " duration, request and trace ids); probes and `/metrics` excluded",
    )
    shutdown_drain_seconds: float = Field(
        default=5.0,
        ge=0,
        le=120,
        description="after SIGTERM, seconds the replica answers `/readyz` 503 while still"
        " serving, so load balancers stop routing to it before the graceful shutdown starts",
    )
    body_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="deadline to receive a whole request body; a slower client gets 408",
    )
    auth_enabled: bool = Field(
        default=True, description="bearer API keys required (cannot be false in `prod`)"
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="a key lookup is cached this long per replica: a revoked or expired key"
        " stops working within this many seconds on every replica (an expired key one"
        " replica has cached is refused at once)",
    )
    # Off by default: the benchmarks drive thousands of requests a second with one key from
    # one address; deployments set them (the chart's values, docs/security.md).
    rate_limit_per_key: float = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="requests a second one API key may make, across all replicas (0: no"
        " limit); beyond it 429 with Retry-After",
    )
    rate_limit_per_client: float = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="requests a second one client address may make to authenticated routes,"
        " across all replicas (0: no limit)",
    )
    rate_limit_window_seconds: float = Field(
        default=1.0,
        ge=0.1,
        le=3600,
        description="the rate limits' fixed window: a key or client may make rate x window"
        " requests in each (the burst)",
    )

    # -- database pool ----------------------------------------------------------------------
    # A steady pool, no overflow: behind PgBouncer an idle client connection costs next to
    # nothing, while overflow connections are closed and reopened (a SCRAM handshake each)
    # whenever load hovers above pool_size; and every connection is a worker thread, so a
    # large pool only adds GIL contention on a small pod (docs/benchmarks.md, "What moved the
    # numbers").
    pool_size: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="steady connections of the replica's pool (about 8 per core of the pod);"
        " a pool file overrides it",
    )
    max_overflow: int = Field(
        default=0, ge=0, le=1000, description="connections allowed beyond `POOL_SIZE`"
    )
    pool_timeout: float = Field(
        default=2.0, gt=0, le=60, description="seconds a request waits for a free connection"
    )
    pool_recycle: int = Field(
        default=3600, ge=-1, description="seconds before a connection is replaced (-1: never)"
    )
    pool_pre_ping: bool = Field(
        default=True,
        description="prove a pooled connection alive before use (piggybacks on the"
        " transaction's first statement, with one reconnect)",
    )
    pool_file: Path | None = Field(
        default=None,
        description="JSON pool file written by the operator or the local stack; applied live"
        " when its `generation` grows",
    )
    pool_file_poll_seconds: float = Field(
        default=1.0, gt=0, le=300, description="how often the pool file is checked"
    )
    statement_timeout_ms: int = Field(
        default=3000,
        ge=1,
        le=600_000,
        description="`SET LOCAL statement_timeout`, capped by the time left to the deadline",
    )
    request_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="per-request deadline for everything that waits (slot, checkout, query)",
    )
    queue_allowance: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="requests admitted beyond pool capacity, to wait at the request gate (which"
        " sheds by queueing time), before the rest get 503 + Retry-After at once",
    )
    db_gate_target_ms: float = Field(
        default=200.0,
        gt=0,
        le=60_000,
        description="queue delay that counts as queueing (CoDel target) at both gates, the request"
        " gate and the DB slot gate: above it for `DB_GATE_INTERVAL_MS`, a gate serves newest"
        " first and sheds old waiters",
    )
    db_gate_interval_ms: float = Field(
        default=500.0,
        gt=0,
        le=600_000,
        description="how long the queue delay must stay above target before a gate (request or"
        " DB slot) is overloaded; overloaded, a request queued 2x this long gets 503 +"
        " Retry-After",
    )
    long_checkout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="a connection held longer is reported (metric and log, with the route)",
    )

    # -- cache ------------------------------------------------------------------------------
    cache_enabled: bool = Field(
        default=False, description="cache-aside in Redis for the two read endpoints"
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="`redis://` (standalone) or `redis+cluster://host:port[,host:port...]`;"
        " `rediss://` and `rediss+cluster://` for TLS",
    )
    redis_username: str | None = Field(
        default=None, description="Redis ACL user, if not in `REDIS_URL`"
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="Redis AUTH password, if not in `REDIS_URL` (set it from a Secret)",
    )
    redis_tls_ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed the Redis servers' certificates (TLS URLs only;"
        " unset: the system's CAs)",
    )
    cache_ttl_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="entry TTL (with ±10% jitter); only a backstop, entries are versioned",
    )
    # The hit path's MGET is short: a late reply only sends the request down the full path.
    cache_socket_timeout: float = Field(
        default=0.05, gt=0, le=5, description="timeout of the cache-hit lookup"
    )
    # Every other Redis call is long enough that a busy replica's own event-loop stalls do
    # not time it out; a dead Redis still costs little, since the breaker opens.
    cache_call_timeout: float = Field(
        default=0.25,
        gt=0,
        le=5,
        description="timeout of every other Redis call (misses, stores, locks, versions)",
    )
    cache_max_connections: int = Field(
        default=64, ge=1, le=10_000, description="Redis connections per replica"
    )
    # A failover promotes a replica, which may not have a raise yet (asynchronous
    # replication); a raise that too few replicas acknowledged is treated as failed.
    cache_version_replicas: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="replicas that must acknowledge a learner's cache version raise (WAIT)"
        " before a write is answered; unset: 1 for a cluster URL, 0 for a standalone one",
    )
    # redis-py's per-command health check is a measurable share of a hit; the timeouts and
    # the breaker already catch a dead connection.
    cache_health_check_interval: float = Field(
        default=0, ge=0, le=3600, description="redis-py health check interval (0: off)"
    )
    cache_warm_learners: int = Field(
        default=500,
        ge=0,
        le=100_000,
        description="most recently active learners warmed after start-up and each promotion",
    )
    cache_warm_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="time bound of one warming run"
    )

    # -- model and answers ------------------------------------------------------------------
    model_refresh_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86_400,
        description="how often a replica polls for a newly promoted model",
    )
    insufficient_data_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="fewer attempts on a skill are flagged `insufficient_data`",
    )
    recommendation_target: float = Field(
        default=0.7,
        ge=RECOMMENDATION_TARGET.low,
        le=RECOMMENDATION_TARGET.high,
        description="predicted success recommendations aim at when the client names none",
    )
    recommendation_skills: int = Field(
        default=3, ge=1, le=50, description="weakest skills recommendations draw from"
    )
    recommendation_max_skills: int = Field(
        default=10,
        ge=1,
        le=200,
        description="skills recommendations widen to (next weakest first) while fewer exercises"
        " than asked for are predicted on target",
    )
    recommendation_new_skills: int = Field(
        default=3,
        ge=0,
        le=200,
        description="skills the learner has not practised yet that recommendations may reach"
        " (nearest the target first) when even the widened practised skills hold too few"
        " exercises on target (0: never)",
    )
    recommendation_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        le=0.5,
        description="how near the target predicted success must be for an exercise to count"
        " as on target",
    )
    recommendation_min_exercise_attempts: int = Field(
        default=20,
        ge=0,
        le=1_000_000,
        description="training answers an exercise needs before its predicted success counts as"
        " on target (fewer: offered only to fill the list)",
    )

    # -- writes -----------------------------------------------------------------------------
    idempotency_retention_seconds: float = Field(
        default=86_400.0,
        ge=60,
        le=365 * 86_400,
        description="an `Idempotency-Key` answers retries this long, then is deleted",
    )
    idempotency_prune_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="how often expired keys are pruned (one replica at a time, in batches)",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("postgresql://", "postgresql+psycopg2://")):
            raise ValueError("must be a postgresql:// or postgresql+psycopg2:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr) -> SecretStr:
        schemes = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")
        if not v.get_secret_value().startswith(schemes):
            raise ValueError(
                "must be a redis://, rediss://, redis+cluster:// or rediss+cluster:// URL"
            )
        return v

    @model_validator(mode="after")
    def _safe_outside_dev(self) -> Settings:
        if self.environment == "prod" and not self.auth_enabled:
            raise ValueError("auth_enabled may only be false outside prod")
        if self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port (0 serves /metrics on port)")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        url = self.database_url.get_secret_value()
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        if self.database_password is None:
            return url
        with_password = make_url(url).set(password=self.database_password.get_secret_value())
        return with_password.render_as_string(hide_password=False)


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, turning pydantic errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = "_".join(str(p) for p in err["loc"]).upper() or "SETTINGS"
            lines.append(f"SKILLCOACH_{key}: {err['msg']}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
