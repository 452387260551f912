"""The operator's own Kubernetes I/O: read, create and merge-patch objects by API path.

Requests go through kopf's authenticated API session, so the operator holds one set of
credentials (kubeconfig or the in-cluster service account, re-read when they expire) and the
image needs no second client library. That session lives in kopf's internal modules, pinned
with kopf itself in operator/pyproject.toml; this module is the only place that touches them.
Their own retries are kept short: a failure becomes a kopf TemporaryError, whose delay is the
real back-off.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors
from kopf._cogs.configs.configuration import OperatorSettings

from skillcoach_operator.policy import GROUP, PLURAL, VERSION

__all__ = [
    "Kube",
    "KubeError",
    "OperatorKube",
    "configmap_path",
    "deployment_path",
    "policy_path",
]

# Retries inside one request; beyond them the handler's TemporaryError takes over.
REQUEST_BACKOFFS = (0.5, 1.0)
# Statuses that a later attempt may get past: credentials being renewed, a Role an upgrade in
# progress has not granted yet, an object that went away between a read and a write,
# throttling, conflicts (and server errors, below).
RETRYABLE = frozenset({401, 403, 404, 408, 409, 429})


class KubeError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Network trouble, server errors and the statuses in RETRYABLE."""
        return self.status is None or self.status >= 500 or self.status in RETRYABLE


class Kube(Protocol):
    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch."""


def configmap_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    return base if name is None else f"{base}/{name}"


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def policy_path(namespace: str, name: str, subresource: str | None = None) -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
    return path if subresource is None else f"{path}/{subresource}"


class OperatorKube:
    """Kube over kopf's session; usable only inside the running operator (its handlers)."""

    def __init__(
        self, settings: OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any]
    ) -> None:
        self._settings = settings
        self._logger = logger

    async def _request(
        self, method: str, path: str, payload: object | None, content_type: str | None
    ) -> Any:
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = await kopf_api.request(
                method,
                path,
                payload=payload,
                headers=headers,
                backoffs=REQUEST_BACKOFFS,
                settings=self._settings,
                logger=self._logger,
            )
            async with response:
                return json.loads(await response.text())
        except kopf_errors.APIError as exc:
            raise KubeError(exc.status, f"{method.upper()} {path}: {exc.status} {exc}") from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KubeError(None, f"{method.upper()} {path}: {exc!r}") from None

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._request("get", path, None, None)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("post", path, dict(body), "application/json")
        return result

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "patch", path, dict(patch), "application/merge-patch+json"
        )
        return result
