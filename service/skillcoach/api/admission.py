"""Admission control and request deadlines, as pure ASGI middleware.

A replica admits at most (pool capacity + queue allowance) requests at once; beyond that it
answers 503 with Retry-After at once instead of queueing (the seed's 30 s waits). Probes and
metrics are never shed and get no deadline. Every admitted request gets a deadline that the DB
layer honours (skillcoach.data.deadline), named by its route template.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from skillcoach.api.problems import ServiceUnavailable, problem_response
from skillcoach.data.deadline import work_scope

__all__ = ["SHED_SCOPE_KEY", "UNSHED_PATHS", "AdmissionMiddleware", "route_label"]

UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Set in the ASGI scope of a request this middleware refused.
SHED_SCOPE_KEY = "skillcoach.shed"


def route_label(scope: Scope) -> str:
    """The matched route template (the router sets it), never the raw path: bounded label
    cardinality for metrics and logs."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template:
        return str(template)
    return "shed" if scope.get(SHED_SCOPE_KEY) else "unmatched"


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: Callable[[], int],
        request_timeout: float,
        registry: CollectorRegistry,
    ) -> None:
        self.app = app
        self._limit = limit  # read per request: a live pool resize moves it
        self._timeout = request_timeout
        self._in_flight = 0
        self.shed = Counter(
            "skillcoach_http_shed_total",
            "Requests answered 503 at once because the replica was at its in-flight limit",
            registry=registry,
        )
        Gauge(
            "skillcoach_http_requests_in_flight",
            "Admitted requests being served",
            registry=registry,
        ).set_function(lambda: self._in_flight)
        Gauge(
            "skillcoach_http_in_flight_limit",
            "In-flight requests admitted before shedding (pool capacity + queue allowance)",
            registry=registry,
        ).set_function(lambda: self._limit())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSHED_PATHS:
            await self.app(scope, receive, send)
            return
        if self._in_flight >= self._limit():
            self.shed.inc()
            # Shed before routing: the HTTP metrics label it route="shed", not "unmatched".
            scope[SHED_SCOPE_KEY] = True
            problem = ServiceUnavailable(
                "this replica is at its concurrency limit; retry shortly", retry_after=1
            )
            await problem_response(problem, scope["path"])(scope, receive, send)
            return
        self._in_flight += 1
        deadline = time.monotonic() + self._timeout
        try:
            with work_scope(deadline=deadline, name=lambda: route_label(scope)):
                await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1
