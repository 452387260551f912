"""Prometheus metrics of the HTTP layer (by route template) and of the served model."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillcoach.api.admission import SHED_SCOPE_KEY
from skillcoach.ml.live_model import LiveModel

__all__ = ["HttpMetricsMiddleware", "ModelCollector", "new_registry"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class ModelCollector(Collector):
    def __init__(self, live: LiveModel) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        served = self._live.current
        yield GaugeMetricFamily(
            "skillcoach_model_version",
            "Version of the served model (0: none loaded)",
            value=0 if served is None else served.version,
        )


class HttpMetricsMiddleware:
    """Pure ASGI (BaseHTTPMiddleware would break contextvars, and so tracing)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "skillcoach_http_requests_total",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "skillcoach_http_request_duration_seconds",
            "HTTP request duration by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The template, never the raw path: label cardinality stays bounded.
            template = getattr(route, "path", None) or (
                "shed" if scope.get(SHED_SCOPE_KEY) else "unmatched"
            )
            method = scope["method"]
            self.requests.labels(method, template, str(status)).inc()
            self.duration.labels(method, template).observe(time.perf_counter() - start)
