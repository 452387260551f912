"""Supervision of the replica's background loops, and its shutdown drain flag.

Every loop the lifespan starts (model refresh, cache retries, pruning, pool watch, the
long-held scan) shares one task group: an unexpected exception in one would cancel all the
others while the replica keeps answering /readyz 200. So each loop runs under `supervise`,
which logs the failure once with its traceback, counts it in
skillcoach_background_failures_total{task} and restarts the loop after a capped,
jittered exponential backoff. Cancellation (the lifespan ending) passes straight through.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter

__all__ = ["Backoff", "Drain", "Supervisor", "backoff_delay"]

log = logging.getLogger(__name__)

Loop = Callable[[], Coroutine[Any, Any, Any]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: base * 2**(n-1) for the n-th failure in a row, capped, jittered.
    A loop that ran `reset_after` seconds without failing starts again from `base`."""

    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.2
    reset_after: float = 60.0


def backoff_delay(failures: int, policy: Backoff, rand: float) -> float:
    """The delay before restarting after the `failures`-th failure in a row (1 = first);
    `rand` in [0, 1) spreads it by +-jitter so replicas do not restart in lockstep."""
    # The exponent is bounded so a long failure streak never overflows the float.
    raw = min(policy.cap, policy.base * 2.0 ** min(max(failures - 1, 0), 32))
    spread = 1.0 + policy.jitter * (2.0 * rand - 1.0)
    return max(0.0, min(policy.cap, raw * spread))


class Supervisor:
    """Runs named loops forever, restarting each after an unexpected exception."""

    def __init__(self, registry: CollectorRegistry, policy: Backoff | None = None) -> None:
        self.policy = policy or Backoff()
        self.failures = Counter(
            "skillcoach_background_failures_total",
            "Unexpected exceptions of a background loop (each followed by a restart), by task",
            ["task"],
            registry=registry,
        )

    async def supervise(self, name: str, loop: Loop) -> None:
        """Run `loop()` until cancelled; a loop that returns is not restarted."""
        # The series exists (at 0) from the start: alerts and rate() need no first failure.
        self.failures.labels(name)
        streak = 0
        while True:
            started = time.monotonic()
            try:
                await loop()
                return
            except Exception:
                # Not BaseException: cancellation and KeyboardInterrupt must pass through.
                if time.monotonic() - started >= self.policy.reset_after:
                    streak = 0
                streak += 1
                delay = backoff_delay(streak, self.policy, random.random())
                self.failures.labels(name).inc()
                log.exception(
                    "background task %s failed (%d in a row); restarting in %.1fs",
                    name,
                    streak,
                    delay,
                )
            await anyio.sleep(delay)


class Drain:
    """Flipped once the replica has been told to stop (SIGTERM): /readyz answers 503 from then
    on, so load balancers stop sending new work while the requests in flight finish."""

    def __init__(self) -> None:
        self.draining = False

    def begin(self) -> None:
        # A plain attribute store: safe from a signal handler.
        self.draining = True
