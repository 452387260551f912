"""A circuit breaker: stop paying a failing dependency's timeout on every request."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Breaker"]


class Breaker:
    """Closed -> open after N consecutive failures -> half-open after the cool-down (one probe)
    -> closed on success. Pure state; the clock is injectable for tests."""

    CLOSED, OPEN, HALF_OPEN = 0, 1, 2

    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = failures
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> int:
        if self._failures < self._limit:
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
        self._probing = False

    def failure(self) -> None:
        self._probing = False
        self._failures += 1
        if self._failures >= self._limit:
            self._opened_at = self._clock()
