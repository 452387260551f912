from __future__ import annotations

from skillcoach.cache.breaker import Breaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_probes_and_closes() -> None:
    clock = Clock()
    b = Breaker(failures=3, cooldown=2.0, clock=clock)
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == Breaker.OPEN and not b.allow()
    clock.now = 2.5
    assert b.state == Breaker.HALF_OPEN
    assert b.allow() and not b.allow()  # one probe at a time
    b.failure()
    assert b.state == Breaker.OPEN
    clock.now = 5.0
    assert b.allow()
    b.success()
    assert b.state == Breaker.CLOSED and b.allow()


def test_a_burst_of_failures_within_the_span_does_not_open() -> None:
    # One event-loop stall times out every call in flight at the same instant.
    clock = Clock()
    b = Breaker(failures=5, cooldown=2.0, clock=clock, min_span=0.5)
    for _ in range(50):
        b.failure()
    assert b.state == Breaker.CLOSED and b.allow()
    b.success()  # the next call after the stall works: the count starts again
    clock.now = 1.0
    for _ in range(4):
        b.failure()
    clock.now = 1.6
    b.failure()  # 5 failures over 0.6 s, none succeeding in between: really failing
    assert b.state == Breaker.OPEN and not b.allow()


def test_failures_spread_over_the_span_open_even_if_few_per_instant() -> None:
    clock = Clock()
    b = Breaker(failures=3, cooldown=2.0, clock=clock, min_span=0.5)
    for t in (0.0, 0.1, 0.2, 0.3, 0.4):
        clock.now = t
        b.failure()
        assert b.state == Breaker.CLOSED
    clock.now = 0.5
    b.failure()
    assert b.state == Breaker.OPEN
    clock.now = 2.6
    assert b.allow()  # half-open probe
    b.failure()
    assert b.state == Breaker.OPEN  # a failed probe restarts the cool-down at once
    clock.now = 4.7
    assert b.allow()
    b.success()
    assert b.state == Breaker.CLOSED
