"""Admission: a request's deadline runs from its arrival, not from its admission."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from starlette.types import Message, Receive, Scope, Send

from skillcoach.api.admission import START_KEY, AdmissionMiddleware, Gatekeeper, Refused
from skillcoach.data.deadline import remaining


def keeper(timeout: float = 5.0) -> Gatekeeper:
    return Gatekeeper(
        limit=lambda: 10, running=lambda: 4, request_timeout=timeout, registry=CollectorRegistry()
    )


def test_the_deadline_counts_from_arrival() -> None:
    gate = keeper()
    fresh = anyio.run(gate.enter) - time.monotonic()
    arrived_earlier = time.perf_counter() - 1.5  # e.g. a fast-path lookup that fell through
    late = anyio.run(gate.enter, arrived_earlier) - time.monotonic()
    assert 4.0 < fresh <= 5.0
    # The 1.5 s before admission came off its deadline. Each side is read after its event
    # loop has closed, and those closings differ by microseconds to milliseconds: a margin.
    assert 1.4 <= fresh - late < 2.5
    gate.leave()
    gate.leave()


def test_a_request_whose_time_went_before_admission_is_refused_and_not_counted() -> None:
    gate = keeper(timeout=1.0)
    with pytest.raises(Refused, match="deadline passed"):
        anyio.run(gate.enter, time.perf_counter() - 2.0)
    assert gate._in_flight == 0
    assert anyio.run(gate.enter) > time.monotonic()
    gate.leave()


def test_the_middleware_takes_the_arrival_from_the_scope() -> None:
    """The fast path (or the HTTP metrics) record the arrival in the scope; the request's
    work then has only what is left of its deadline, and none left is a 503."""
    seen: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(remaining(99.0))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AdmissionMiddleware(app, keeper=keeper(timeout=5.0))
    statuses: list[int] = []

    async def call(arrived: float) -> None:
        scope: dict[str, Any] = {
            "type": "http", "method": "GET", "path": "/v1/x", "headers": [], START_KEY: arrived,
        }  # fmt: skip

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await middleware(scope, receive, send)

    anyio.run(call, time.perf_counter() - 2.0)
    anyio.run(call, time.perf_counter() - 6.0)
    assert statuses == [204, 503]
    assert len(seen) == 1 and 2.0 < seen[0] <= 3.0  # 5 s less the 2 s before admission
