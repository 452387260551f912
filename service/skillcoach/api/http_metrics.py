"""The edge of every request below the cache-hit fast path: Prometheus metrics by route
template, the request id (X-Request-ID), the request's log context and access log line, and
the server span's name once the route is known. Pure ASGI (BaseHTTPMiddleware would break
contextvars, and so tracing and the log context).

The fast path (hit_path.py) records its hits in the same families itself, with label
children bound once, so a hit pays no wrapper; a lookup that misses hands its start time on
in the scope, so the miss's latency includes the lookup.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillcoach.api.admission import START_KEY, UNSHED_PATHS, route_label
from skillcoach.telemetry.logs import ACCESS_LOGGER, FIELDS, REQUEST, RequestLog

__all__ = [
    "REQUEST_ID_HEADER",
    "REQUEST_ID_KEY",
    "START_KEY",
    "HttpMetrics",
    "HttpMetricsMiddleware",
    "access_line",
    "name_server_span",
    "new_registry",
    "request_id",
]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUEST_ID_HEADER = b"x-request-id"
# Set in the scope by the fast path when its lookup missed: its request id (so the full path
# does not read the headers again); START_KEY (api/admission.py) likewise keeps its clock.
REQUEST_ID_KEY = "skillcoach.request_id"
# A client's X-Request-ID is echoed and logged only if it is short and plain; anything else
# is replaced, so a log line never carries what a client chose to inject.
_SANE_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
# Probes and scrapes: no access line (a kubelet probing every few seconds is not traffic).
UNLOGGED_PATHS = UNSHED_PATHS

access_log = logging.getLogger(ACCESS_LOGGER)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-ID if it is sane, else a new random one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return value
            break
    # Not a secret, only unique: the module's generator is several times cheaper than
    # secrets/urandom, and this runs on every cache hit.
    return b"%032x" % random.getrandbits(128)


def name_server_span(method: str, template: str) -> None:
    """Name the current server span by the route template (and set http.route); requests
    no route matched keep the method alone, as the semantic conventions ask."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if template in ("unmatched", "shed"):
        span.set_attribute("skillcoach.route", template)
        return
    span.update_name(f"{method} {template}")
    span.set_attribute("http.route", template)


def access_line(*, request_id: bytes, method: str, route: str, status: int, seconds: float) -> None:
    access_log.info(
        "%s %s %d",
        method,
        route,
        status,
        extra={
            FIELDS: {
                "request_id": request_id.decode(),
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
            }
        },
    )


class HttpMetrics:
    """skillcoach_http_requests_total and skillcoach_http_request_duration_seconds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # Label children by (method, route, status), bound on first use: `labels()` builds
        # and validates a key under a lock on every call, a dict hit does not. The keys are
        # the children prometheus holds anyway (route templates, not paths): no new cardinality.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.requests = Counter(
            "skillcoach_http_requests_total",
            "HTTP requests by route template and status (cache-hit fast path included)",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "skillcoach_http_request_duration_seconds",
            "HTTP request duration by route template (cache-hit fast path included)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class HttpMetricsMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: HttpMetrics, traced: bool, access_log: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self._traced = traced
        self._access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Kept in the scope: admission counts the request's deadline from it.
        start = scope[START_KEY] = scope.get(START_KEY) or time.perf_counter()
        rid: bytes = scope.pop(REQUEST_ID_KEY, None) or request_id(scope["headers"])
        method = scope["method"]
        traced = self._traced
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)]
                if traced:
                    # Now: the server span ends with the response's last body message.
                    name_server_span(method, route_label(scope))
            await send(message)

        token = REQUEST.set(RequestLog(rid.decode(), method, lambda: route_label(scope)))
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = route_label(scope)
            seconds = time.perf_counter() - start
            self.metrics.record(method, template, status, seconds)
            if self._access_log and scope["path"] not in UNLOGGED_PATHS:
                access_line(
                    request_id=rid, method=method, route=template, status=status, seconds=seconds
                )
            REQUEST.reset(token)
