"""Admission control and request deadlines, as pure ASGI middleware.

Every request that reaches the application (cache hits are answered before it) passes a
request gate: at most `running` of them run at once (twice the pool: limits.running_limit);
the others wait at the gate, which is the DB gate's CoDel with
adaptive LIFO (skillcoach.data.slot_gate) on the same settings. Overloaded, it serves the
newest waiter first and sheds waiters that queued too long with an immediate 503 +
Retry-After. A shed request never entered the application, so shedding costs a fraction of
serving: under a closed-loop storm (1,000 clients that retry at once) the replica keeps
serving instead of spending its CPU on refusals deep in the stack. A hard cap stays: beyond
(pool capacity + queue allowance) requests in flight, running or waiting, the answer is 503
at once.

Probes and metrics are never shed and get no deadline. Every admitted request gets a deadline
that the DB layer honours (skillcoach.data.deadline), named by its route template. It runs
from the request's arrival: the wait at the gate counts against it, and so does a fast-path
lookup that fell through to here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from starlette.types import ASGIApp, Receive, Scope, Send

from skillcoach.api.problems import ServiceUnavailable, problem_response
from skillcoach.data.deadline import work_scope
from skillcoach.data.slot_gate import GateConfig, GateShed, SlotGate

__all__ = [
    "SHED_SCOPE_KEY",
    "START_KEY",
    "UNSHED_PATHS",
    "AdmissionMiddleware",
    "Gatekeeper",
    "Refused",
    "refuse",
    "route_label",
]

UNSHED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Set in the ASGI scope of a request this middleware refused.
SHED_SCOPE_KEY = "skillcoach.shed"
# In the ASGI scope: time.perf_counter() when the request arrived (set by the fast path or
# the HTTP metrics), so every later clock (latency, deadline) starts there.
START_KEY = "skillcoach.started"


def route_label(scope: Scope) -> str:
    """The matched route template (the router sets it), never the raw path: bounded label
    cardinality for metrics and logs."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template:
        return str(template)
    return "shed" if scope.get(SHED_SCOPE_KEY) else "unmatched"


class Refused(Exception):
    """Not admitted: the reason, for the 503's detail."""


class Gatekeeper:
    """The admission decisions, shared by AdmissionMiddleware and the fast path (a cache miss
    the fast path answers itself must pass the same gate): the in-flight cap, the request
    gate, the deadline."""

    def __init__(
        self,
        *,
        limit: Callable[[], int],
        running: Callable[[], int],
        request_timeout: float,
        registry: CollectorRegistry,
        gate: GateConfig | None = None,
    ) -> None:
        self._limit = limit  # read per request: a live pool resize moves it
        self._running = running  # likewise
        self._timeout = request_timeout
        self._in_flight = 0
        self.gate = SlotGate(
            running(),
            gate,
            registry=registry,
            metric_prefix="skillcoach_http_gate",
            what="A request",
        )
        self.shed = Counter(
            "skillcoach_http_shed_total",
            "Requests answered 503 at once because the replica was at its in-flight limit"
            " (the request gate's sheds are skillcoach_http_gate_shed_total)",
            registry=registry,
        )
        Gauge(
            "skillcoach_http_requests_in_flight",
            "Admitted requests in flight: running, or waiting at the request gate",
            registry=registry,
        ).set_function(lambda: self._in_flight)
        Gauge(
            "skillcoach_http_in_flight_limit",
            "In-flight requests admitted before shedding (pool capacity + queue allowance)",
            registry=registry,
        ).set_function(lambda: self._limit())

    @property
    def request_timeout(self) -> float:
        return self._timeout

    async def enter(self, started: float | None = None) -> float:
        """Admit the request (it then runs, and must `leave`): returns its deadline, counted
        from `started` (time.perf_counter() at its arrival; None: now). Raises Refused at the
        in-flight cap, when shed by the gate, or out of time."""
        if self._in_flight >= self._limit():
            self.shed.inc()
            raise Refused("this replica is at its concurrency limit")
        now = time.monotonic()
        deadline = now + self._timeout
        if started is not None:
            deadline -= max(0.0, time.perf_counter() - started)
            if deadline <= now:  # its whole time went before admission (a stalled loop)
                raise Refused("the request's deadline passed before it was admitted")
        self._in_flight += 1
        running = self._running()
        if running != self.gate.capacity:  # a live pool resize
            self.gate.set_capacity(running)
        waiter = self.gate.arrive()
        if waiter is not None:
            try:
                await self.gate.wait(waiter, deadline)
            except BaseException as exc:
                self._in_flight -= 1
                if isinstance(exc, GateShed | TimeoutError):
                    raise Refused("this replica is overloaded") from None
                raise
        return deadline

    def leave(self) -> None:
        self.gate.release()
        self._in_flight -= 1


async def refuse(scope: Scope, receive: Receive, send: Send, why: str) -> None:
    """503 + Retry-After, before routing: the HTTP metrics label it route="shed"."""
    scope[SHED_SCOPE_KEY] = True
    problem = ServiceUnavailable(f"{why}; retry shortly", retry_after=1)
    await problem_response(problem, scope["path"])(scope, receive, send)


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, *, keeper: Gatekeeper) -> None:
        self.app = app
        self.keeper = keeper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSHED_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            deadline = await self.keeper.enter(scope.get(START_KEY))
        except Refused as refused:
            await refuse(scope, receive, send, str(refused))
            return
        try:
            with work_scope(deadline=deadline, name=lambda: route_label(scope)):
                await self.app(scope, receive, send)
        finally:
            self.keeper.leave()
