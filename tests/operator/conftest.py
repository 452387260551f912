"""Fixtures of the operator's tests: a Kubernetes API emulator (kmock) serving the resources the
operator uses, and the real operator process (`python -m skillcoach_operator`) pointed at it
through a kubeconfig, as a developer would run it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import pytest
import pytest_asyncio
from kmock._internal import enums, rendering  # the emulator's request type, for its hook

from skillcoach_operator.policy import GROUP, KIND, PLURAL, VERSION
from tests.deploy.conftest import helm, tools  # noqa: F401  (the chart tests' fixtures)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: runs the operator against the Kubernetes API emulator"
    )


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus the one server-side behaviour the operator relies on that it
    lacks: a name from metadata.generateName (kopf's Events are created that way)."""

    _names = itertools.count(1)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        data = request.data
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._names)}"
        return await super()._handle(request)


@dataclass
class Cluster:
    api: Emulator
    url: str

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """An object as stored now (no HTTP: what the next reader would see)."""
        try:
            stored = self.api.objects[resource, namespace, name]
        except KeyError:
            return None
        if stored.deleted:
            return None
        raw: dict[str, Any] = stored.raw
        return raw

    def objects(self, resource: str) -> list[dict[str, Any]]:
        return [
            obj.raw
            for (res, _, _), obj in self.api.objects.items()
            if res == kmock.resource(resource) and not obj.deleted
        ]

    async def create(self, path: str, body: dict[str, Any]) -> None:
        response = await self.api.post(path, json=body)
        assert response.status == 200, await response.text()

    async def patch(self, path: str, patch: dict[str, Any]) -> None:
        response = await self.api.patch(
            path, json=patch, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert response.status == 200, await response.text()


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with Emulator() as api, kmock.Server(api) as server:
        resources: dict[str, dict[str, Any]] = {
            f"{GROUP}/{VERSION}/{PLURAL}": {
                "kind": KIND,
                "singular": "poolpolicy",
                "subresources": {"status"},
                "namespaced": True,
            },
            "apps/v1/deployments": {
                "kind": "Deployment",
                "singular": "deployment",
                "subresources": {"status", "scale"},
                "namespaced": True,
            },
            "v1/configmaps": {"kind": "ConfigMap", "singular": "configmap", "namespaced": True},
            "v1/events": {"kind": "Event", "singular": "event", "namespaced": True},
            # Discovered by kopf at start, as on any cluster.
            "v1/namespaces": {"kind": "Namespace", "singular": "namespace", "namespaced": False},
            "apiextensions.k8s.io/v1/customresourcedefinitions": {
                "kind": "CustomResourceDefinition",
                "singular": "customresourcedefinition",
                "namespaced": False,
            },
        }
        verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
        for name, info in resources.items():
            api.resources[name] = kmock.ResourceInfo(verbs=verbs, **info)
        yield Cluster(api=api, url=str(server.url).rstrip("/"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class OperatorProcess:
    process: asyncio.subprocess.Process
    log: Path
    health_url: str

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def json_logs(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_lines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records

    async def health(self) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.health_url, timeout=aiohttp.ClientTimeout(total=5)) as response,
        ):
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def run_operator(
    cluster: Cluster, tmp_path: Path, namespace: str, *, resync: float = 1.0
) -> AsyncIterator[OperatorProcess]:
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
                "users": [{"name": "operator", "user": {"token": "test-token"}}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "emulator", "user": "operator"}}
                ],
                "current-context": "test",
            }
        )
    )
    health = f"http://127.0.0.1:{free_port()}/healthz"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKILLCOACH_")},
        "KUBECONFIG": str(kubeconfig),
        "SKILLCOACH_OPERATOR_NAMESPACE": namespace,
        "SKILLCOACH_OPERATOR_LIVENESS": health,
        "SKILLCOACH_OPERATOR_RESYNC_SECONDS": str(resync),
        "SKILLCOACH_OPERATOR_LOG_FORMAT": "json",
        "HOSTNAME": "operator-under-test",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "skillcoach_operator",
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    operator = OperatorProcess(process=process, log=log, health_url=health)
    try:
        await wait_for(lambda: _healthy(operator), 30, "the operator's liveness endpoint", operator)
        yield operator
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _healthy(operator: OperatorProcess) -> bool:
    if operator.process.returncode is not None:
        raise AssertionError(
            f"the operator exited ({operator.process.returncode}):\n"
            + "\n".join(operator.log_lines()[-30:])
        )
    try:
        status, _ = await operator.health()
    except (aiohttp.ClientError, TimeoutError):
        return False
    return status == 200


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool],
    within: float,
    what: str,
    operator: OperatorProcess | None = None,
) -> float:
    """Poll until check() is true; returns the seconds it took. Fails with the operator's log."""
    start = time.monotonic()
    for _ in range(int(within / 0.05) + 1):
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > within:
            break
        await asyncio.sleep(0.05)
    tail = "\n".join(operator.log_lines()[-40:]) if operator is not None else ""
    raise AssertionError(f"timed out after {within:g}s waiting for {what}\n{tail}")
