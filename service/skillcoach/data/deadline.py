"""Per-request context the DB layer needs without threading it through every call: the
request's deadline and its route template. Context variables, so they follow the request into
worker threads (AnyIO copies the context) and never leak across requests."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

__all__ = ["current_route", "remaining", "request_deadline", "request_scope"]

# Monotonic time by which the request must have answered; None outside a request.
request_deadline: ContextVar[float | None] = ContextVar("skillcoach_deadline", default=None)
# The ASGI scope; the router adds the matched route to it before the endpoint runs.
request_scope: ContextVar[MutableMapping[str, Any] | None] = ContextVar(
    "skillcoach_scope", default=None
)


def remaining(default: float) -> float:
    """Seconds left before the current request's deadline (`default` outside a request)."""
    deadline = request_deadline.get()
    return default if deadline is None else deadline - time.monotonic()


def current_route() -> str:
    scope = request_scope.get()
    if scope is None:
        return "background"
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
