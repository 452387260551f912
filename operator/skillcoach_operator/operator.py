"""The kopf handlers, registered in a registry of their own (kopf's default one is global per
process). Each is one decorator and one call into skillcoach_operator.handlers."""

from __future__ import annotations

from typing import Any

import kopf

from skillcoach_operator import handlers
from skillcoach_operator.config import OperatorConfig
from skillcoach_operator.policy import GROUP, PLURAL, VERSION

__all__ = ["build_registry"]

# A handler that has not finished in this long is cancelled and retried.
HANDLER_TIMEOUT = 120.0


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    runtime = handlers.Runtime(config)

    @kopf.on.startup(id="startup", registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        handlers.on_startup(runtime, settings)

    # A registry of one's own starts without kopf's default login: in-cluster, then kubeconfig.
    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return handlers.login(**kwargs)

    @kopf.on.probe(id="reconciles", registry=registry)
    def reconciles(**_: Any) -> int:
        return handlers.probe(runtime)

    # The id names the index, as handlers receive it (a keyword argument).
    @kopf.index(GROUP, VERSION, PLURAL, id="policies_by_deployment", registry=registry)
    def policies_by_deployment(
        namespace: str | None, name: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str | None, str], str]:
        return handlers.index_policy(namespace, name, spec)

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="policy", timeout=HANDLER_TIMEOUT, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="policy", timeout=HANDLER_TIMEOUT, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="policy", timeout=HANDLER_TIMEOUT, registry=registry)
    async def policy_changed(
        namespace: str | None, name: str, logger: kopf.Logger, **_: Any
    ) -> None:
        await handlers.on_policy(runtime, namespace=namespace, name=name, logger=logger)

    @kopf.timer(
        GROUP, VERSION, PLURAL, id="resync", interval=config.resync_seconds,
        timeout=HANDLER_TIMEOUT, registry=registry,
    )  # fmt: skip
    async def resync(namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
        await handlers.on_timer(runtime, namespace=namespace, name=name, logger=logger)

    # Every watch event, spec and status alike: the HPA's new spec.replicas, and pods that
    # appear or finish draining. Watching stores nothing on the Deployment.
    @kopf.on.event("apps", "v1", "deployments", id="deployment", registry=registry)
    async def deployment_changed(
        namespace: str | None, name: str, logger: kopf.Logger, **kwargs: Any
    ) -> None:
        index: kopf.Index[tuple[str | None, str], str] = kwargs["policies_by_deployment"]
        await handlers.on_deployment_event(
            runtime,
            namespace=namespace,
            name=name,
            policies=index.get((namespace, name), []),
            logger=logger,
        )

    return registry
