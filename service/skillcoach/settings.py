"""Configuration: read once from SKILLCOACH_* environment variables, cast, and fail fast."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """Configuration is invalid; the message names every offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SKILLCOACH_", env_file=None, extra="ignore", frozen=True
    )

    environment: Literal["dev", "test", "prod"] = "dev"
    database_url: SecretStr = SecretStr("postgresql+psycopg2://postgres@127.0.0.1:5432/skillcoach")
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    cache_enabled: bool = False
    cache_ttl_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # The cache-hit MGET: short, since a late reply only sends the request down the full path.
    cache_socket_timeout: float = Field(default=0.05, gt=0, le=5)
    # Every other Redis call (misses, stores, locks): long enough that a busy replica's own
    # event-loop stalls do not time it out (see CacheConfig.call_timeout); a dead Redis still
    # costs little, since the breaker opens once failures last 0.5 s.
    cache_call_timeout: float = Field(default=0.25, gt=0, le=5)
    cache_max_connections: int = Field(default=64, ge=1, le=10_000)
    # redis-py's per-command health check costs ~5% of a hit (py-spy); the socket timeout and
    # the breaker already catch a dead connection. The seed's 30 s stays one setting away.
    cache_health_check_interval: float = Field(default=0, ge=0, le=3600)
    # Warming after start-up and promotion: the most recently active learners, bounded.
    cache_warm_learners: int = Field(default=500, ge=0, le=100_000)
    cache_warm_seconds: float = Field(default=30.0, ge=0, le=3600)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # 0 serves /metrics on the API port; any other port gets a separate listener.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # A steady pool of 16, not the seed's 20 + 30 (docs/benchmarks.md, "Pool size"): behind
    # PgBouncer an idle client connection costs next to nothing, while overflow connections
    # are closed and reopened (a SCRAM handshake each) whenever load hovers above pool_size,
    # which cost 35% of throughput at 50 connections; and since every connection is a worker
    # thread, 50 of them contend for the GIL and stretch the tail without adding throughput
    # on a 2-core pod. Rule of thumb: about 8 per core of the pod. A pool file overrides.
    pool_file: Path | None = None
    pool_size: int = Field(default=16, ge=1, le=1000)
    max_overflow: int = Field(default=0, ge=0, le=1000)
    pool_timeout: float = Field(default=2.0, gt=0, le=60)
    pool_recycle: int = Field(default=3600, ge=-1)
    pool_pre_ping: bool = True
    statement_timeout_ms: int = Field(default=3000, ge=1, le=600_000)
    # Per-request deadline for everything that waits on the database (slot, checkout, query).
    request_timeout: float = Field(default=5.0, gt=0, le=300)
    # In-flight requests a replica admits beyond its pool capacity before it sheds with 503:
    # about a quarter second of queue at the ~900 req/s one replica serves here.
    queue_allowance: int = Field(default=200, ge=0, le=100_000)
    # A connection held longer than this is reported (metric + log with the route).
    long_checkout_seconds: float = Field(default=5.0, gt=0, le=3600)
    pool_file_poll_seconds: float = Field(default=1.0, gt=0, le=300)

    model_refresh_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # Idempotency keys answer retries for this long, then are deleted (skillcoach.data.idempotency).
    idempotency_retention_seconds: float = Field(default=86_400.0, ge=60, le=365 * 86_400)
    idempotency_prune_seconds: float = Field(default=300.0, gt=0, le=86_400)
    insufficient_data_attempts: int = Field(default=5, ge=1, le=1000)
    recommendation_target: float = Field(default=0.7, gt=0, lt=1)
    recommendation_skills: int = Field(default=3, ge=1, le=50)
    api_key_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    auth_enabled: bool = True

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("postgresql://", "postgresql+psycopg2://")):
            raise ValueError("must be a postgresql:// or postgresql+psycopg2:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith(("redis://", "rediss://", "redis+cluster://")):
            raise ValueError("must be a redis://, rediss:// or redis+cluster:// URL")
        return v

    @model_validator(mode="after")
    def _safe_outside_dev(self) -> Settings:
        if self.environment == "prod" and not self.auth_enabled:
            raise ValueError("auth_enabled may only be false outside prod")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        url = self.database_url.get_secret_value()
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        return url


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
