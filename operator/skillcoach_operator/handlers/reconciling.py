"""The body of every handler: read, decide (reconcile.plan_reconcile, pure), write what differs.

Idempotent: the reads are fresh, the writes happen only where the cluster differs from the
decision, and one lock per PoolPolicy keeps two handlers of this process (a Deployment event
and the timer, say) from deciding on the same reads. Errors tell kopf whether to retry:
TemporaryError for what time can fix (a missing Deployment, an API hiccup), PermanentError for
what needs a person (an invalid spec, an ini without the pool settings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from skillcoach_operator.builders import IniError, merge_patch
from skillcoach_operator.config import OperatorConfig
from skillcoach_operator.kube import (
    Kube,
    KubeError,
    configmap_path,
    deployment_path,
    policy_path,
)
from skillcoach_operator.policy import PolicyError, parse_deployment, parse_policy
from skillcoach_operator.reconcile import Event, Observed, Plan, plan_reconcile, status_for_error

__all__ = ["Emit", "Runtime", "reconcile_policy"]

Logger = logging.Logger | logging.LoggerAdapter[Any]
Emit = Callable[[Mapping[str, Any], Event], None]

# Seconds before kopf retries, by what went wrong.
RETRY_MISSING = 30.0  # a Deployment or ConfigMap named by the policy does not exist (yet)
RETRY_API = 10.0  # the API server refused or failed a request
RETRY_RACE = 1.0  # someone else created or changed the object first


@dataclass
class Runtime:
    """What the handlers of one operator process share."""

    config: OperatorConfig
    settings: kopf.OperatorSettings | None = None
    reconciles: int = 0
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())


def kopf_emit(body: Mapping[str, Any], event: Event) -> None:
    """Post an Event on the PoolPolicy through kopf's queue (sent in the background)."""
    raw = cast(kopf.RawBody, dict(body))
    kopf.event(kopf.Body(raw), type=event.type, reason=event.reason, message=event.message)


def _now() -> datetime:
    return datetime.now(UTC)


async def _write_error_status(
    kube: Kube, body: Mapping[str, Any], *, reason: str, message: str, logger: Logger
) -> None:
    meta = body.get("metadata") or {}
    old = body.get("status") or {}
    new = status_for_error(
        old, reason=reason, message=message, now=_now(), generation=meta.get("generation")
    )
    patch = merge_patch(old, new)
    if not patch:
        return
    try:
        await kube.patch(policy_path(meta["namespace"], meta["name"], "status"), {"status": patch})
    except KubeError as exc:
        logger.warning("could not record %s in the status: %s", reason, exc)


async def _must_get(kube: Kube, path: str, what: str) -> dict[str, Any]:
    found = await kube.get(path)
    if found is None:
        raise _Missing(f"{what} not found")
    return found


class _Missing(Exception):
    """An object the policy names does not exist."""


async def _observe(kube: Kube, body: Mapping[str, Any], namespace: str) -> Observed:
    meta = body.get("metadata") or {}
    spec = parse_policy(body.get("spec") or {})
    api = await _must_get(
        kube, deployment_path(namespace, spec.deployment), f"Deployment {spec.deployment}"
    )
    bouncer = await _must_get(
        kube,
        deployment_path(namespace, spec.pgbouncer.deployment),
        f"PgBouncer's Deployment {spec.pgbouncer.deployment}",
    )
    pool_cm = await kube.get(configmap_path(namespace, spec.pool_config_map))
    bouncer_cm = await _must_get(
        kube,
        configmap_path(namespace, spec.pgbouncer.config_map),
        f"PgBouncer's ConfigMap {spec.pgbouncer.config_map}",
    )
    ini = (bouncer_cm.get("data") or {}).get(spec.pgbouncer.key)
    if not isinstance(ini, str):
        raise IniError(f"ConfigMap {spec.pgbouncer.config_map} has no key {spec.pgbouncer.key}")
    try:
        api_state, bouncer_state = parse_deployment(api), parse_deployment(bouncer)
    except ValueError as exc:
        raise _Missing(f"unreadable Deployment: {exc}") from None
    return Observed(
        policy=str(meta.get("name")),
        namespace=namespace,
        generation=meta.get("generation"),
        spec=spec,
        status=body.get("status") or {},
        api=api_state,
        pgbouncer=bouncer_state,
        pool_configmap=pool_cm,
        pgbouncer_ini=ini,
        now=_now(),
    )


async def _apply(
    kube: Kube, body: Mapping[str, Any], observed: Observed, plan: Plan, emit: Emit
) -> None:
    namespace, spec = observed.namespace, observed.spec
    # The pools first, PgBouncer next, the status last: a status never claims a write that
    # did not happen.
    if plan.pool_create is not None:
        await kube.create(configmap_path(namespace), plan.pool_create)
    if plan.pool_patch is not None:
        await kube.patch(configmap_path(namespace, spec.pool_config_map), plan.pool_patch)
    if plan.pgbouncer_patch is not None:
        await kube.patch(configmap_path(namespace, spec.pgbouncer.config_map), plan.pgbouncer_patch)
    patch = merge_patch(observed.status, plan.status)
    if patch:
        await kube.patch(policy_path(namespace, observed.policy, "status"), {"status": patch})
    for event in plan.events:
        emit(body, event)


async def reconcile_policy(
    kube: Kube,
    runtime: Runtime,
    *,
    namespace: str,
    name: str,
    logger: Logger,
    emit: Emit = kopf_emit,
) -> Plan | None:
    """Bring one PoolPolicy's pools to its decision; None if the policy is gone or going."""
    async with runtime.lock(namespace, name):
        try:
            body = await kube.get(policy_path(namespace, name))
        except KubeError as exc:
            raise kopf.TemporaryError(str(exc), delay=RETRY_API) from None
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return None
        body.setdefault("metadata", {}).setdefault("namespace", namespace)
        try:
            observed = await _observe(kube, body, namespace)
            plan = plan_reconcile(observed)
            await _apply(kube, body, observed, plan, emit)
        except PolicyError as exc:
            await _write_error_status(
                kube, body, reason="InvalidPolicy", message=str(exc), logger=logger
            )
            raise kopf.PermanentError(f"invalid PoolPolicy: {exc}") from None
        except IniError as exc:
            await _write_error_status(
                kube, body, reason="PgBouncerConfigInvalid", message=str(exc), logger=logger
            )
            raise kopf.PermanentError(f"PgBouncer's ini: {exc}") from None
        except _Missing as exc:
            await _write_error_status(
                kube, body, reason="NotFound", message=str(exc), logger=logger
            )
            raise kopf.TemporaryError(str(exc), delay=RETRY_MISSING) from None
        except KubeError as exc:
            if not exc.retryable:
                raise kopf.PermanentError(str(exc)) from None
            delay = RETRY_RACE if exc.status == 409 else RETRY_API
            raise kopf.TemporaryError(str(exc), delay=delay) from None
        runtime.reconciles += 1
        decision = plan.decision
        changed = plan.events or plan.pool_create or plan.pool_patch or plan.pgbouncer_patch
        # A decision that changed something is news; the timer's confirmations are not.
        (logger.info if changed else logger.debug)(
            "PoolPolicy %s reconciled: %d pods x %d (%s of %d client), PgBouncer %d x %d"
            " (%d of %d server), bound by %s%s",
            name,
            decision.pods,
            decision.per_pod,
            decision.client_total,
            decision.client_budget,
            decision.pgbouncer_pods,
            decision.pgbouncer_max_db_connections,
            decision.server_total,
            decision.server_budget,
            decision.bound_by,
            "; BUDGET EXCEEDED" if decision.budget_exceeded else "",
        )
        return plan
