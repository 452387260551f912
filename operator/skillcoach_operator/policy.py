"""What the operator reads, parsed into typed values: a PoolPolicy's spec (with the CRD's
defaults, since a server may not have applied them) and the replica state of a Deployment.

Pure: dicts in, frozen dataclasses out; a bad spec raises PolicyError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from skillcoach_operator.sizing import Budget, Replicas, resolve_surge, scale_up_headroom

__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "DeploymentState",
    "PgBouncerRef",
    "PolicyError",
    "PolicySpec",
    "SurgeCount",
    "SurgeSource",
    "parse_deployment",
    "parse_policy",
]

GROUP = "skillcoach.io"
VERSION = "v1alpha1"
PLURAL = "poolpolicies"
KIND = "PoolPolicy"


class PolicyError(ValueError):
    """The PoolPolicy cannot be acted on until its spec is fixed (not worth retrying)."""


class SurgeSource(StrEnum):
    DEPLOYMENT = "Deployment"  # the Deployment's RollingUpdate maxSurge (0 for Recreate)
    FIXED = "Fixed"  # spec.surge.pods


class SurgeCount(StrEnum):
    ALWAYS = "Always"  # reserved at all times: a rollout's pods start before a resize lands
    DURING_ROLLOUT = "DuringRollout"  # only while the Deployment rolls out


@dataclass(frozen=True, slots=True)
class PgBouncerRef:
    deployment: str
    config_map: str
    key: str
    reserve_pool_size: int


@dataclass(frozen=True, slots=True)
class PolicySpec:
    deployment: str
    pool_config_map: str
    pool_key: str
    pgbouncer: PgBouncerRef
    max_client_conn: int
    client_reserve: int
    max_connections: int
    server_reserve: int
    min_per_pod: int
    max_per_pod: int
    pool_timeout: float
    pool_recycle: int
    surge_source: SurgeSource
    surge_pods: int
    surge_count: SurgeCount
    scale_up_pods: int
    scale_up_percent: int
    scale_up_period_seconds: int
    propagation_seconds: int
    max_replicas: int
    grow_delay_seconds: float

    @property
    def scale_up_steps(self) -> int:
        """HPA scale-up steps that fit in the time a pool file takes to reach running pods:
        one at each end of the window, and one per period between."""
        return self.propagation_seconds // self.scale_up_period_seconds + 1

    def budget(self, pgbouncer_pods: int) -> Budget:
        """The budget with PgBouncer's pods counted as given; PolicyError if inconsistent."""
        try:
            return Budget(
                max_client_conn=self.max_client_conn,
                client_reserve=self.client_reserve,
                max_connections=self.max_connections,
                server_reserve=self.server_reserve,
                pgbouncer_replicas=max(1, pgbouncer_pods),
                pgbouncer_reserve_pool=self.pgbouncer.reserve_pool_size,
                min_per_pod=self.min_per_pod,
                max_per_pod=self.max_per_pod,
                pool_timeout=self.pool_timeout,
                pool_recycle=self.pool_recycle,
            )
        except ValueError as exc:
            raise PolicyError(f"spec: {exc}") from None

    def api_replicas(self, api: DeploymentState) -> Replicas:
        """The API pods to size for: max(desired, current), the surge, the scale-up headroom."""
        surge = api.max_surge if self.surge_source is SurgeSource.DEPLOYMENT else self.surge_pods
        if self.surge_count is SurgeCount.DURING_ROLLOUT and not api.rolling_out:
            surge = 0
        base = max(api.desired, api.current)
        headroom = scale_up_headroom(
            base,
            pods=self.scale_up_pods,
            percent=self.scale_up_percent,
            max_replicas=self.max_replicas,
            steps=self.scale_up_steps,
        )
        return Replicas(desired=api.desired, current=api.current, surge=surge, headroom=headroom)


@dataclass(frozen=True, slots=True)
class DeploymentState:
    name: str
    desired: int  # spec.replicas: what the HPA (or a person) asked for
    current: int  # pods that exist: status.replicas plus those still terminating
    max_surge: int  # a rollout's extra pods, resolved against desired
    rolling_out: bool

    @property
    def pods(self) -> int:
        """Pods that may be running at once: the larger count plus a rollout's surge."""
        return max(self.desired, self.current) + self.max_surge


def _section(spec: Mapping[str, Any], key: str, *, required: bool) -> Mapping[str, Any]:
    value = spec.get(key)
    if value is None:
        if required:
            raise PolicyError(f"spec.{key} is required")
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(f"spec.{key} must be an object")
    return value


def _int(section: Mapping[str, Any], key: str, path: str, default: int | None, low: int) -> int:
    value = section.get(key, default)
    if value is None:
        raise PolicyError(f"{path}.{key} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{path}.{key} must be an integer, not {value!r}")
    if value < low:
        raise PolicyError(f"{path}.{key} must be at least {low}, not {value}")
    return value


def _name(section: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{path}.{key} must be a non-empty name")
    return value


E = TypeVar("E", bound=StrEnum)


def _enum(section: Mapping[str, Any], key: str, path: str, kind: type[E], dflt: E) -> E:
    raw = section.get(key, dflt.value)
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(e.value for e in kind)
        raise PolicyError(f"{path}.{key} must be one of {allowed}, not {raw!r}") from None


def parse_policy(spec: Mapping[str, Any]) -> PolicySpec:
    """The spec of a PoolPolicy, the CRD's defaults filled in."""
    pool_cm = _section(spec, "poolConfigMap", required=True)
    bouncer = _section(spec, "pgbouncer", required=True)
    clients = _section(spec, "clientBudget", required=True)
    servers = _section(spec, "serverBudget", required=True)
    per_pod = _section(spec, "perPod", required=False)
    surge = _section(spec, "surge", required=False)
    scale_up = _section(spec, "scaleUp", required=False)

    timeout = per_pod.get("poolTimeoutSeconds", 2)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise PolicyError(f"spec.perPod.poolTimeoutSeconds must be in (0, 60], not {timeout!r}")
    grow_delay = spec.get("growDelaySeconds", 30)
    if isinstance(grow_delay, bool) or not isinstance(grow_delay, int) or grow_delay < 0:
        raise PolicyError(f"spec.growDelaySeconds must be a non-negative integer: {grow_delay!r}")

    parsed = PolicySpec(
        deployment=_name(spec, "deployment", "spec"),
        pool_config_map=_name(pool_cm, "name", "spec.poolConfigMap"),
        pool_key=_name(pool_cm, "key", "spec.poolConfigMap", "pool.json"),
        pgbouncer=PgBouncerRef(
            deployment=_name(bouncer, "deployment", "spec.pgbouncer"),
            config_map=_name(bouncer, "configMap", "spec.pgbouncer"),
            key=_name(bouncer, "key", "spec.pgbouncer", "pgbouncer.ini"),
            reserve_pool_size=_int(bouncer, "reservePoolSize", "spec.pgbouncer", 0, 0),
        ),
        max_client_conn=_int(clients, "maxClientConn", "spec.clientBudget", None, 1),
        client_reserve=_int(clients, "reserve", "spec.clientBudget", 0, 0),
        max_connections=_int(servers, "maxConnections", "spec.serverBudget", None, 1),
        server_reserve=_int(servers, "reserve", "spec.serverBudget", 0, 0),
        min_per_pod=_int(per_pod, "min", "spec.perPod", 4, 1),
        max_per_pod=_int(per_pod, "max", "spec.perPod", 16, 1),
        pool_timeout=float(timeout),
        pool_recycle=_int(per_pod, "poolRecycleSeconds", "spec.perPod", 3600, -1),
        surge_source=_enum(surge, "source", "spec.surge", SurgeSource, SurgeSource.DEPLOYMENT),
        surge_pods=_int(surge, "pods", "spec.surge", 1, 0),
        surge_count=_enum(surge, "count", "spec.surge", SurgeCount, SurgeCount.ALWAYS),
        scale_up_pods=_int(scale_up, "pods", "spec.scaleUp", 0, 0),
        scale_up_percent=_int(scale_up, "percent", "spec.scaleUp", 0, 0),
        scale_up_period_seconds=_int(scale_up, "periodSeconds", "spec.scaleUp", 15, 1),
        propagation_seconds=_int(scale_up, "propagationSeconds", "spec.scaleUp", 0, 0),
        max_replicas=_int(scale_up, "maxReplicas", "spec.scaleUp", 0, 0),
        grow_delay_seconds=float(grow_delay),
    )
    parsed.budget(1)  # the budget's own consistency rules, before anything is read
    return parsed


def _count(value: Any, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} is not a replica count: {value!r}")
    return value


def parse_deployment(body: Mapping[str, Any]) -> DeploymentState:
    """The replica state of an apps/v1 Deployment."""
    meta: Mapping[str, Any] = body.get("metadata") or {}
    spec: Mapping[str, Any] = body.get("spec") or {}
    status: Mapping[str, Any] = body.get("status") or {}
    name = str(meta.get("name", ""))
    # An unset spec.replicas means one, as the API server defaults it.
    desired = 1 if spec.get("replicas") is None else _count(spec["replicas"], f"{name} replicas")
    # Pods being deleted still hold their connections until they exit; the API server reports
    # them separately where it supports it.
    current = _count(status.get("replicas"), f"{name} status.replicas") + _count(
        status.get("terminatingReplicas"), f"{name} status.terminatingReplicas"
    )
    strategy: Mapping[str, Any] = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        max_surge = 0
    else:
        rolling: Mapping[str, Any] = strategy.get("rollingUpdate") or {}
        max_surge = resolve_surge(rolling.get("maxSurge"), desired)
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    updated = status.get("updatedReplicas")
    rolling_out = (
        (generation is not None and observed is not None and observed < generation)
        or (updated is not None and _count(updated, f"{name} updatedReplicas") < desired)
        or current > desired
    )
    return DeploymentState(
        name=name, desired=desired, current=current, max_surge=max_surge, rolling_out=rolling_out
    )
