"""One reconciliation, decided without I/O: from what was read (the policy, both Deployments,
both ConfigMaps, the previous status, the time) to what to write, which events to emit and
when to look again.

Ordering, so the pools never promise more than the budget while pods come and go:
- a shrinking pool (more pods) is written at once, and the decision already counts the desired
  pods, the rollout surge and the scale-up headroom;
- a growing pool (fewer pods) waits until the larger of desired and current has dropped and
  then `growDelaySeconds` more, so pods that are still draining are gone before the survivors
  take their share; the same holds for PgBouncer's pools when PgBouncer scales down;
- a budget that cannot give every pod its minimum changes nothing: the last configuration that
  fitted stays, and the status and a Warning event say so.
Running it twice on the same input gives the same output; after its writes, it plans nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from skillcoach_operator.builders import (
    ANNOTATION_GENERATION,
    AppliedPool,
    PgBouncerPools,
    build_pgbouncer_configmap_patch,
    build_pgbouncer_ini,
    build_pool_configmap,
    build_pool_configmap_patch,
    build_pool_file,
    parse_pgbouncer_pools,
    parse_pool_file,
    set_condition,
)
from skillcoach_operator.policy import DeploymentState, PolicySpec
from skillcoach_operator.sizing import PoolDecision, Replicas, decide

__all__ = ["Event", "Observed", "Plan", "plan_reconcile", "status_for_error"]

READY = "Ready"
EXCEEDED = "BudgetExceeded"


@dataclass(frozen=True, slots=True)
class Observed:
    policy: str
    namespace: str
    generation: int | None
    spec: PolicySpec
    status: Mapping[str, Any]
    api: DeploymentState
    pgbouncer: DeploymentState
    pool_configmap: Mapping[str, Any] | None  # None: it does not exist
    pgbouncer_ini: str
    now: datetime  # timezone-aware


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    decision: PoolDecision
    replicas: Replicas
    pool_create: dict[str, Any] | None
    pool_patch: dict[str, Any] | None
    pgbouncer_patch: dict[str, Any] | None
    status: dict[str, Any]
    events: tuple[Event, ...]
    recheck_after: float | None  # seconds until a deferred grow may be applied


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _generation_mark(observed: Observed, applied: AppliedPool | None) -> int:
    """The highest generation ever written for these pods, from every place that records it."""
    marks = [_int(observed.status.get("poolGeneration")) or 0]
    if applied is not None:
        marks.append(applied.generation)
    if observed.pool_configmap is not None:
        annotations = (observed.pool_configmap.get("metadata") or {}).get("annotations") or {}
        marks.append(_int(annotations.get(ANNOTATION_GENERATION)) or 0)
    return max(marks)


@dataclass(frozen=True, slots=True)
class _Pending:
    since: datetime
    pods: int
    pgbouncer_pods: int


def _pending(status: Mapping[str, Any]) -> _Pending | None:
    raw = status.get("pending")
    if not isinstance(raw, Mapping):
        return None
    try:
        since = datetime.fromisoformat(str(raw["since"]))
    except (KeyError, ValueError):
        return None
    pods, bouncers = _int(raw.get("pods")), _int(raw.get("pgbouncerPods"))
    if pods is None or bouncers is None or since.tzinfo is None:
        return None
    return _Pending(since=since, pods=pods, pgbouncer_pods=bouncers)


def _status_per_pod(status: Mapping[str, Any]) -> int | None:
    pool = status.get("pool")
    return _int(pool.get("perPod")) if isinstance(pool, Mapping) else None


def _client_message(
    d: PoolDecision, r: Replicas, spec: PolicySpec, kept: AppliedPool | None
) -> str:
    kept_text = (
        f"kept the pool file of generation {kept.generation} ({kept.per_pod} per pod)"
        if kept is not None
        else "no pool file was written, the pods keep the pool they started with"
    )
    return (
        f"{d.pods} API pods ({r.desired} desired, {r.current} current, surge {r.surge},"
        f" headroom {r.headroom}) x minimum {spec.min_per_pod} = {d.pods * spec.min_per_pod}"
        f" client connections > client budget {d.client_budget} (maxClientConn"
        f" {spec.max_client_conn} - reserve {spec.client_reserve}); {kept_text}."
        " Raise the client budget, lower perPod.min, or cap the replicas."
    )


def _server_message(d: PoolDecision, spec: PolicySpec, kept: PgBouncerPools) -> str:
    return (
        f"{d.pgbouncer_pods} PgBouncer pods x (1 + reservePoolSize {d.pgbouncer_reserve_pool})"
        f" = {d.pgbouncer_pods * (1 + d.pgbouncer_reserve_pool)} server connections > server"
        f" budget {d.server_budget} (maxConnections {spec.max_connections} - reserve"
        f" {spec.server_reserve}); kept PgBouncer's default_pool_size"
        f" {kept.default_pool_size}. Raise maxConnections or run fewer PgBouncer pods."
    )


def plan_reconcile(observed: Observed) -> Plan:
    spec, now = observed.spec, observed.now
    replicas = spec.api_replicas(observed.api)
    decision = decide(spec.budget(observed.pgbouncer.pods), replicas)

    pool_cm = observed.pool_configmap
    applied = parse_pool_file(((pool_cm or {}).get("data") or {}).get(spec.pool_key))
    current_ini = parse_pgbouncer_pools(observed.pgbouncer_ini)
    target = build_pool_file(decision, _generation_mark(observed, applied) + 1)
    reference_per_pod = (
        applied.per_pod if applied is not None else (_status_per_pod(observed.status))
    )

    pool_change = not decision.client_exceeded and (
        applied is None or not applied.same_sizes(target)
    )
    pool_grows = pool_change and (
        reference_per_pod is not None and target.per_pod > reference_per_pod
    )
    new_ini = observed.pgbouncer_ini
    if not decision.server_exceeded:
        new_ini = build_pgbouncer_ini(observed.pgbouncer_ini, decision)
    ini_change = new_ini != observed.pgbouncer_ini
    ini_grows = ini_change and (
        decision.pgbouncer_default_pool_size > current_ini.default_pool_size
        or decision.pgbouncer_max_db_connections > current_ini.max_db_connections
    )

    # A grow waits until the pods it makes room for have drained.
    previous_pending = _pending(observed.status)
    pending: _Pending | None = None
    recheck: float | None = None
    if (pool_grows or ini_grows) and spec.grow_delay_seconds > 0:
        fewer = previous_pending is not None and (
            decision.pods < previous_pending.pods
            or decision.pgbouncer_pods < previous_pending.pgbouncer_pods
        )
        since = now if previous_pending is None or fewer else previous_pending.since
        waited = (now - since).total_seconds()
        if waited < spec.grow_delay_seconds:
            pending = _Pending(
                since=since, pods=decision.pods, pgbouncer_pods=decision.pgbouncer_pods
            )
            recheck = spec.grow_delay_seconds - waited
            pool_change = pool_change and not pool_grows
            ini_change = ini_change and not ini_grows
            if not ini_change:
                new_ini = observed.pgbouncer_ini

    events: list[Event] = []
    pool_create = pool_patch = pgbouncer_patch = None
    pool_after = applied
    if pool_change:
        pool_after = target
        if pool_cm is None:
            pool_create = build_pool_configmap(
                name=spec.pool_config_map,
                namespace=observed.namespace,
                key=spec.pool_key,
                pool=target,
                decision=decision,
                policy=observed.policy,
            )
        else:
            pool_patch = build_pool_configmap_patch(
                key=spec.pool_key, pool=target, decision=decision, policy=observed.policy
            )
        before = f"{applied.per_pod} -> " if applied is not None else "new, "
        events.append(
            Event(
                "Normal",
                "PoolResized",
                f"API pool {before}{target.pool_size}+{target.max_overflow} per pod"
                f" (generation {target.generation}) for {decision.pods} pods ({replicas.desired}"
                f" desired, {replicas.current} current, surge {replicas.surge}, headroom"
                f" {replicas.headroom}): {decision.client_total} of {decision.client_budget}"
                f" client connections; bound by {decision.bound_by}",
            )
        )
    pools_after = current_ini
    if ini_change:
        pgbouncer_patch = build_pgbouncer_configmap_patch(key=spec.pgbouncer.key, text=new_ini)
        pools_after = parse_pgbouncer_pools(new_ini)
        events.append(
            Event(
                "Normal",
                "PgBouncerResized",
                f"PgBouncer default_pool_size {current_ini.default_pool_size} ->"
                f" {pools_after.default_pool_size}, max_db_connections"
                f" {current_ini.max_db_connections} -> {pools_after.max_db_connections} for"
                f" {decision.pgbouncer_pods} PgBouncer pods: {decision.server_total} of"
                f" {decision.server_budget} server connections (its reloader RELOADs, clients"
                " stay connected)",
            )
        )

    conditions = list(observed.status.get("conditions") or [])
    was_exceeded = any(c.get("type") == EXCEEDED and c.get("status") == "True" for c in conditions)
    exceeded = decision.client_exceeded or decision.server_exceeded
    messages = []
    if decision.client_exceeded:
        messages.append(_client_message(decision, replicas, spec, applied))
    if decision.server_exceeded:
        messages.append(_server_message(decision, spec, current_ini))
    if exceeded:
        reason = "ServerBudget" if decision.server_exceeded else "ClientBudget"
        message = " ".join(messages)
        if not was_exceeded:
            events.append(Event("Warning", "BudgetExceeded", message))
    else:
        reason = "WithinBudget"
        message = (
            f"{decision.client_total} of {decision.client_budget} client and"
            f" {decision.server_total} of {decision.server_budget} server connections"
        )
        if was_exceeded:
            events.append(Event("Normal", "BudgetRestored", message))
    conditions = set_condition(
        conditions,
        type_=EXCEEDED,
        status=exceeded,
        reason=reason,
        message=message,
        now=now,
        generation=observed.generation,
    )
    if exceeded:
        ready, ready_reason, ready_message = False, "BudgetExceeded", message
    elif pending is not None:
        ready, ready_reason = False, "GrowDeferred"
        due = pending.since + timedelta(seconds=spec.grow_delay_seconds)
        ready_message = (
            f"pools grow for {decision.pods} API and {decision.pgbouncer_pods} PgBouncer pods"
            f" at {_timestamp(due)}, once the surplus pods have drained (growDelaySeconds"
            f" {spec.grow_delay_seconds:g})"
        )
        if previous_pending is None:
            events.append(Event("Normal", "GrowDeferred", ready_message))
    else:
        ready, ready_reason = True, "Applied"
        ready_message = (
            f"{decision.pods} API pods x {decision.per_pod} and {decision.pgbouncer_pods}"
            f" PgBouncer pods x {decision.pgbouncer_max_db_connections}, bound by"
            f" {decision.bound_by}"
        )
    conditions = set_condition(
        conditions,
        type_=READY,
        status=ready,
        reason=ready_reason,
        message=ready_message,
        now=now,
        generation=observed.generation,
    )

    status: dict[str, Any] = {}
    if observed.generation is not None:
        status["observedGeneration"] = observed.generation
    status["replicas"] = {
        "desired": replicas.desired,
        "current": replicas.current,
        "surge": replicas.surge,
        "headroom": replicas.headroom,
        "counted": decision.pods,
    }
    status["pgbouncerReplicas"] = {
        "desired": observed.pgbouncer.desired,
        "current": observed.pgbouncer.current,
        "surge": observed.pgbouncer.max_surge,
        "counted": decision.pgbouncer_pods,
    }
    if pool_after is not None:
        status["pool"] = {
            "poolSize": pool_after.pool_size,
            "maxOverflow": pool_after.max_overflow,
            "perPod": pool_after.per_pod,
            "poolTimeoutSeconds": pool_after.pool_timeout,
            "poolRecycleSeconds": pool_after.pool_recycle,
            "total": pool_after.per_pod * decision.pods,
            "clientBudget": decision.client_budget,
        }
        status["poolGeneration"] = max(pool_after.generation, _generation_mark(observed, applied))
    status["pgbouncer"] = {
        "defaultPoolSize": pools_after.default_pool_size,
        "reservePoolSize": pools_after.reserve_pool_size,
        "maxDbConnections": pools_after.max_db_connections,
        "total": pools_after.max_db_connections * decision.pgbouncer_pods,
        "serverBudget": decision.server_budget,
    }
    status["boundBy"] = str(decision.bound_by)
    if pending is not None:
        status["pending"] = {
            "since": pending.since.isoformat(),
            "pods": pending.pods,
            "pgbouncerPods": pending.pgbouncer_pods,
        }
    status["conditions"] = conditions
    return Plan(
        decision=decision,
        replicas=replicas,
        pool_create=pool_create,
        pool_patch=pool_patch,
        pgbouncer_patch=pgbouncer_patch,
        status=status,
        events=tuple(events),
        recheck_after=recheck,
    )


def status_for_error(
    previous: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> dict[str, Any]:
    """The previous status with Ready=False saying why nothing could be decided; everything
    else (the last applied pools) stays as it was."""
    status = dict(previous)
    if generation is not None:
        status["observedGeneration"] = generation
    status["conditions"] = set_condition(
        list(previous.get("conditions") or []),
        type_=READY,
        status=False,
        reason=reason,
        message=message,
        now=now,
        generation=generation,
    )
    return status
