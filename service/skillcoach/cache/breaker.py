"""A circuit breaker: stop paying a failing dependency's timeout on every request."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Breaker"]


class Breaker:
    """Closed -> open after N consecutive failures spread over at least `min_span` seconds ->
    half-open after the cool-down (one probe) -> closed on success. Pure state; the clock is
    injectable for tests.

    Why the span: on a saturated replica one event-loop stall longer than the socket timeout
    times out every Redis call in flight at once, although Redis answered in time. Opening on
    that burst sent all reads to PostgreSQL for the cool-down, which saturated the replica
    further and caused the next burst (seen in the load-test suite at 100 connections). A
    dependency that is really gone keeps failing past the span and still opens the breaker;
    until then each failed call falls back on its own.
    """

    CLOSED, OPEN, HALF_OPEN = 0, 1, 2

    def __init__(
        self,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        min_span: float = 0.0,
    ) -> None:
        self._limit = failures
        self._cooldown = cooldown
        self._min_span = min_span
        self._clock = clock
        self._failures = 0
        self._first_failure_at = 0.0
        self._open = False
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> int:
        if not self._open:
            return self.CLOSED
        if self._clock() - self._opened_at >= self._cooldown:
            return self.HALF_OPEN
        return self.OPEN

    def allow(self) -> bool:
        state = self.state
        if state == self.CLOSED:
            return True
        if state == self.HALF_OPEN and not self._probing:
            self._probing = True  # one probe at a time; the rest keep skipping Redis
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._open = False
        self._probing = False

    def failure(self) -> None:
        now = self._clock()
        if self._open:
            # A failed probe (or a late failure of a call made before opening): a new cool-down.
            self._probing = False
            self._opened_at = now
            return
        if self._failures == 0:
            self._first_failure_at = now
        self._failures += 1
        if self._failures >= self._limit and now - self._first_failure_at >= self._min_span:
            self._open = True
            self._opened_at = now
