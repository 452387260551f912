from __future__ import annotations

from skillcoach.breaker import Breaker


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
