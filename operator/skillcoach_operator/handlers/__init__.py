"""What each kopf handler does, one function per handler (the decorators are in
skillcoach_operator.operator). All of them end in reconciling.reconcile_policy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from skillcoach_operator.handlers.reconciling import Logger, Runtime, reconcile_policy
from skillcoach_operator.handlers.settings import apply_settings
from skillcoach_operator.kube import OperatorKube

__all__ = [
    "Runtime",
    "index_policy",
    "login",
    "on_deployment_event",
    "on_policy",
    "on_startup",
    "on_timer",
    "probe",
]


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account when in a cluster, else KUBECONFIG or ~/.kube/config."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def on_startup(runtime: Runtime, settings: kopf.OperatorSettings) -> None:
    apply_settings(settings, runtime.config)
    runtime.settings = settings


def _kube(runtime: Runtime, logger: Logger) -> OperatorKube:
    if runtime.settings is None:  # the startup handler runs before any other
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return OperatorKube(runtime.settings, logger)


def _namespace(namespace: str | None) -> str:
    if not namespace:  # PoolPolicies and Deployments are namespaced: never the case
        raise kopf.PermanentError("an object without a namespace")
    return namespace


async def on_policy(runtime: Runtime, *, namespace: str | None, name: str, logger: Logger) -> None:
    """A PoolPolicy was created, changed, or found at start-up."""
    await reconcile_policy(
        _kube(runtime, logger), runtime, namespace=_namespace(namespace), name=name, logger=logger
    )


async def on_timer(runtime: Runtime, *, namespace: str | None, name: str, logger: Logger) -> None:
    """Repair drift (a ConfigMap edited or reset by a chart upgrade) and apply deferred grows."""
    await reconcile_policy(
        _kube(runtime, logger), runtime, namespace=_namespace(namespace), name=name, logger=logger
    )


def index_policy(
    namespace: str | None, name: str, spec: Mapping[str, Any]
) -> dict[tuple[str | None, str], str]:
    """The Deployments a PoolPolicy follows, as index keys: (namespace, Deployment) -> policy."""
    keys: dict[tuple[str | None, str], str] = {}
    for target in (spec.get("deployment"), (spec.get("pgbouncer") or {}).get("deployment")):
        if isinstance(target, str) and target:
            keys[(namespace, target)] = name
    return keys


async def on_deployment_event(
    runtime: Runtime,
    *,
    namespace: str | None,
    name: str,
    policies: Iterable[str],
    logger: Logger,
) -> None:
    """A Deployment changed (the HPA moved spec.replicas, pods came or went): every policy
    that follows it decides again. Watch events are not retried, so a failure is logged and
    left to the next event or the timer."""
    for policy in sorted(set(policies)):
        try:
            await reconcile_policy(
                _kube(runtime, logger),
                runtime,
                namespace=_namespace(namespace),
                name=policy,
                logger=logger,
            )
        except (kopf.TemporaryError, kopf.PermanentError) as exc:
            logger.warning("PoolPolicy %s after a change of Deployment %s: %s", policy, name, exc)


def probe(runtime: Runtime) -> int:
    """Reconciliations completed so far, shown by the liveness endpoint."""
    return runtime.reconciles
