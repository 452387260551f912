"""The gate in front of the database slots: admission by queueing time, not by count.

A FIFO wait for a pooled connection (the CapacityLimiter it replaces) lets an overloaded
replica serve every request late: each waits behind all the others until its deadline. This
gate is CoDel with adaptive LIFO, as in Facebook's "Fail at scale" and Meta's Thrift server:

- healthy, it is FIFO;
- when the queue delay (the age of the oldest waiter) has stayed at or above `target`
  continuously for `interval`, it is *overloaded*: it serves the newest waiter first (LIFO),
  who is the one most likely to still have a client waiting with time left, and sheds every
  waiter older than `shed_after` at once (503 + Retry-After) instead of at the 5 s deadline;
- it leaves overload as soon as the queue delay falls below `target` again (the queue drained).

A waiter that reaches `shed_after` proves the overload by itself (the queue delay was at least
`target` for `shed_after - target >= interval`), so no request waits longer than `shed_after`
for a slot. `GateCore` holds the decisions, on a clock passed in (unit-tested on a fake one);
`SlotGate` is the thin async wrapper `Database` awaits.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from skillcoach.errors import PoolExhausted
from skillcoach.settings import Settings

__all__ = ["FIFO_ONLY", "GateConfig", "GateCore", "GateShed", "SlotGate", "Waiter", "WaiterState"]


class GateShed(PoolExhausted):
    """Shed by the gate: the replica was overloaded and this request had queued too long.
    A PoolExhausted, so the API answers it like any busy database: 503 + Retry-After."""


@dataclass(frozen=True, slots=True)
class GateConfig:
    # The defaults of the settings. The target must sit above the queue of normal full load,
    # or the gate sheds requests a FIFO queue would serve in time (docs/architecture.md).
    target: float = 0.200  # seconds of queue delay that count as "queueing"
    interval: float = 0.500  # how long that must last before the gate is overloaded

    @property
    def shed_after(self) -> float:
        # Twice the interval, and never before the overload could be detected.
        return max(2 * self.interval, self.target + self.interval)

    @classmethod
    def from_settings(cls, settings: Settings) -> GateConfig:
        return cls(
            target=settings.db_gate_target_ms / 1000, interval=settings.db_gate_interval_ms / 1000
        )


# Never overloaded: a plain FIFO until the deadline (what the CapacityLimiter was). For
# Database users without a request stream to protect: the CLI, jobs, tests of the data layer.
FIFO_ONLY = GateConfig(target=math.inf, interval=math.inf)


class WaiterState(enum.Enum):
    WAITING = "waiting"
    GRANTED = "granted"
    SHED = "shed"
    GONE = "gone"  # gave up (its deadline passed)


@dataclass(eq=False, slots=True)
class Waiter:
    enqueued: float
    state: WaiterState = WaiterState.WAITING


@dataclass(slots=True)
class GateCore:
    """Slot accounting and the CoDel/adaptive-LIFO decisions. Every method takes `now` and
    returns the waiters whose state it changed (granted or shed), for the caller to wake."""

    capacity: int
    config: GateConfig = field(default_factory=GateConfig)
    in_use: int = 0
    overloaded: bool = False
    shed_total: int = 0
    # When the queue delay last rose to `target` and has stayed there since (None: below).
    above_since: float | None = None
    # In arrival order; a waiter that left stays until it reaches an end (lazy removal).
    _queue: deque[Waiter] = field(default_factory=deque)
    _waiting: int = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def arrive(self, now: float) -> tuple[Waiter, list[Waiter]]:
        """A request asks for a slot: granted at once when one is free and nobody waits."""
        changed = self._decide(now)
        waiter = Waiter(now)
        if self.in_use < self.capacity and self._waiting == 0:
            self.in_use += 1
            waiter.state = WaiterState.GRANTED
        else:
            self._queue.append(waiter)
            self._waiting += 1
        return waiter, changed

    def release(self, now: float) -> list[Waiter]:
        """A slot holder is done: its slot goes to the next waiter (FIFO, or LIFO overloaded)."""
        self.in_use -= 1
        return self._decide(now)

    def expire(self, now: float) -> list[Waiter]:
        """A waiter's timer: re-evaluate overload and shed whoever waited too long."""
        return self._decide(now)

    def leave(self, waiter: Waiter, now: float) -> list[Waiter]:
        """The waiter gives up (its deadline passed). Granted in the meantime: the slot it
        never used goes on to the next waiter."""
        if waiter.state is WaiterState.WAITING:
            waiter.state = WaiterState.GONE
            self._waiting -= 1
            return self._decide(now)
        if waiter.state is WaiterState.GRANTED:
            waiter.state = WaiterState.GONE
            return self.release(now)
        return []

    def set_capacity(self, capacity: int, now: float) -> list[Waiter]:
        """A live pool resize: growing grants at once; shrinking lets holders finish first."""
        self.capacity = capacity
        return self._decide(now)

    def next_check(self, waiter: Waiter, now: float) -> float:
        """When (clock time) the waiter's timer should call `expire`: the moment it becomes
        sheddable (it then proves the overload by itself), or one interval on if that passed."""
        due = waiter.enqueued + self.config.shed_after
        return due if due > now else now + self.config.interval

    # -- decisions ----------------------------------------------------------------------------
    def _decide(self, now: float) -> list[Waiter]:
        self._observe(now)
        changed = self._shed(now) if self.overloaded else []
        while self.in_use < self.capacity and self._waiting:
            waiter = self._pop_newest() if self.overloaded else self._pop_oldest()
            waiter.state = WaiterState.GRANTED
            self._waiting -= 1
            self.in_use += 1
            changed.append(waiter)
        self._observe(now)  # the grants may have drained the queue
        return changed

    def _observe(self, now: float) -> None:
        oldest = self._oldest()
        if oldest is None or now - oldest.enqueued < self.config.target:
            self.above_since = None
            self.overloaded = False
            return
        if self.above_since is None:
            # The oldest waiter has been there since before the delay crossed the target:
            # the delay has been at least `target` since then.
            self.above_since = oldest.enqueued + self.config.target
        if now - self.above_since >= self.config.interval:
            self.overloaded = True

    def _shed(self, now: float) -> list[Waiter]:
        shed: list[Waiter] = []
        while (oldest := self._oldest()) is not None:
            if now < oldest.enqueued + self.config.shed_after:  # (the sum next_check uses)
                break
            self._queue.popleft()
            oldest.state = WaiterState.SHED
            self._waiting -= 1
            shed.append(oldest)
        self.shed_total += len(shed)
        return shed

    def _oldest(self) -> Waiter | None:
        q = self._queue
        while q and q[0].state is not WaiterState.WAITING:
            q.popleft()
        return q[0] if q else None

    def _pop_oldest(self) -> Waiter:
        oldest = self._oldest()
        assert oldest is not None
        return self._queue.popleft()

    def _pop_newest(self) -> Waiter:
        q = self._queue
        while q[-1].state is not WaiterState.WAITING:
            q.pop()
        return q.pop()


class SlotGate:
    """The async face of GateCore: `acquire` waits for a slot (or raises GateShed), `release`
    hands it on. Single event loop; every call runs on it, so no lock is needed."""

    def __init__(
        self,
        capacity: int,
        config: GateConfig | None = None,
        *,
        registry: CollectorRegistry | None = None,
        metric_prefix: str = "skillcoach_db_gate",
        what: str = "DB work",
    ) -> None:
        self.core = GateCore(capacity, config or GateConfig())
        self._waiting: dict[Waiter, asyncio.Future[None]] = {}
        self._shed = Counter(
            f"{metric_prefix}_shed_total",
            f"{what} refused with 503 because it queued too long while the gate was overloaded",
            registry=registry,
        )
        Gauge(
            f"{metric_prefix}_overloaded",
            "1 while the gate is overloaded (queue delay above target for an interval: LIFO"
            " and shedding), else 0",
            registry=registry,
        ).set_function(lambda: float(self.core.overloaded))

    @property
    def capacity(self) -> int:
        return self.core.capacity

    @property
    def waiting(self) -> int:
        return self.core.waiting

    async def acquire(self, deadline: float | None = None) -> None:
        waiter = self.arrive()
        if waiter is not None:
            await self.wait(waiter, deadline)

    def arrive(self) -> Waiter | None:
        """Ask for a slot: None when it was granted at once (the common case, which then costs
        no await), else the waiter to pass to `wait`."""
        waiter, changed = self.core.arrive(time.monotonic())
        granted = waiter.state is WaiterState.GRANTED  # (a flag: mypy would keep the narrowing)
        self._wake(changed)
        return None if granted else waiter

    async def wait(self, waiter: Waiter, deadline: float | None = None) -> None:
        """Until the waiter is granted its slot (returns) or shed (raises GateShed), or the
        monotonic `deadline` passes (raises TimeoutError).

        Plain asyncio, no cancel scopes: a replica under a storm has a thousand waiters, and
        one future plus one timer each is what keeps waiting (and shedding) cheap."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting[waiter] = fut
        timer: asyncio.TimerHandle | None = None

        def arm(now: float) -> None:
            nonlocal timer
            due = self.core.next_check(waiter, now)
            if deadline is not None:
                due = min(due, deadline)
            timer = loop.call_later(max(0.0, due - now), check)

        def check() -> None:
            if fut.done():
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                fut.set_exception(TimeoutError("no slot before the deadline"))
                return
            self._wake(self.core.expire(now))
            if not fut.done():
                arm(now)

        arm(time.monotonic())
        try:
            await fut
        except BaseException:
            # Out of time, cancelled, or shed; granted meanwhile: the slot is passed on.
            self._wake(self.core.leave(waiter, time.monotonic()))
            raise
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(waiter, None)

    def release(self) -> None:
        self._wake(self.core.release(time.monotonic()))

    def set_capacity(self, capacity: int) -> None:
        self._wake(self.core.set_capacity(capacity, time.monotonic()))

    def _wake(self, changed: Iterable[Waiter]) -> None:
        for waiter in changed:
            fut = self._waiting.get(waiter)
            if waiter.state is WaiterState.SHED:
                self._shed.inc()
                if fut is not None and not fut.done():
                    delay = time.monotonic() - waiter.enqueued
                    fut.set_exception(
                        GateShed(f"overloaded: shed after queueing {delay * 1000:.0f} ms")
                    )
            elif fut is not None and not fut.done():
                fut.set_result(None)
