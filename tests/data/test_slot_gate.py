"""The slot gate's decisions (CoDel with adaptive LIFO) on a fake clock, and its async wrapper."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import CollectorRegistry

from skillcoach.data.slot_gate import (
    FIFO_ONLY,
    GateConfig,
    GateCore,
    GateShed,
    SlotGate,
    Waiter,
    WaiterState,
)
from skillcoach.errors import PoolExhausted

CONFIG = GateConfig(target=0.010, interval=0.100)  # sheds after 0.2 s


def queued(core: GateCore, now: float) -> Waiter:
    waiter, changed = core.arrive(now)
    assert waiter.state is WaiterState.WAITING and changed == []
    return waiter


def full_gate(capacity: int = 2) -> GateCore:
    core = GateCore(capacity, CONFIG)
    for _ in range(capacity):
        waiter, _ = core.arrive(0.0)
        assert waiter.state is WaiterState.GRANTED
    return core


def test_a_free_slot_is_granted_at_once_and_never_more_than_capacity() -> None:
    core = full_gate(2)
    assert core.in_use == 2
    w = queued(core, 0.0)
    assert core.waiting == 1
    assert core.release(0.001) == [w] and w.state is WaiterState.GRANTED
    assert (core.in_use, core.waiting) == (2, 0)


def test_healthy_short_queues_are_fifo() -> None:
    core = full_gate(1)
    a, b, c = (queued(core, t) for t in (0.000, 0.001, 0.002))
    # Each waits less than the target: FIFO, never overloaded.
    assert core.release(0.005) == [a]
    assert core.release(0.008) == [b]
    assert core.release(0.011) == [c]
    assert not core.overloaded and core.shed_total == 0


def test_a_queue_above_target_for_less_than_an_interval_is_not_overload() -> None:
    core = full_gate(1)
    queued(core, 0.0)
    queued(core, 0.0)
    assert core.expire(0.05) == [] and not core.overloaded  # above target for 40 ms only
    assert core.above_since == pytest.approx(0.010)


def test_overload_after_target_for_an_interval_then_lifo() -> None:
    core = full_gate(1)
    old = [queued(core, 0.000 + i * 0.001) for i in range(3)]
    new = queued(core, 0.100)
    assert core.expire(0.109) == [] and not core.overloaded  # 99 ms above the 10 ms target
    assert core.expire(0.111) == [] and core.overloaded
    # Overloaded: the newest waiter gets the slot, not the oldest.
    assert core.release(0.112) == [new]
    assert all(w.state is WaiterState.WAITING for w in old)
    assert core.release(0.113) == [old[2]]


def test_a_standing_queue_of_changing_waiters_is_overload_too() -> None:
    """FIFO drains the head every 20 ms, but the delay never falls below the target."""
    core = full_gate(1)
    now = 0.0
    for step in range(10):
        queued(core, now)
        queued(core, now + 0.001)
        now += 0.020
        core.release(now)
        core.arrive(now)  # the one just served comes back: the queue stands
        assert core.overloaded == (now - 0.010 >= 0.100), step


def test_overloaded_it_sheds_only_the_waiters_past_the_bound() -> None:
    core = full_gate(1)
    stale = [queued(core, 0.0), queued(core, 0.05)]
    fresh = queued(core, 0.15)
    changed = core.expire(0.201)  # 0.2 s after the first: it proves the overload itself
    assert core.overloaded
    assert changed == [stale[0]] and stale[0].state is WaiterState.SHED
    assert stale[1].state is fresh.state is WaiterState.WAITING
    assert core.expire(0.251) == [stale[1]]
    assert (core.shed_total, core.waiting, core.in_use) == (2, 1, 1)


def test_nobody_waits_past_the_shed_bound_even_with_the_pool_stalled() -> None:
    core = full_gate(3)  # three slow queries hold everything
    waiters = [queued(core, i * 0.01) for i in range(20)]
    for w in waiters:
        due = core.next_check(w, w.enqueued)
        assert due == pytest.approx(w.enqueued + CONFIG.shed_after)
        core.expire(due)
        assert w.state is WaiterState.SHED
    assert core.shed_total == 20 and core.waiting == 0


def test_leaves_overload_when_the_queue_delay_falls() -> None:
    core = full_gate(1)
    for i in range(5):
        queued(core, i * 0.001)
    core.expire(0.150)
    assert core.overloaded
    # Capacity comes back (a resize): every waiter is served, the delay falls to zero.
    granted = core.set_capacity(10, 0.151)
    assert len(granted) == 5 and not core.overloaded and core.above_since is None
    # And stays healthy: a short wait is FIFO again.
    core.set_capacity(6, 0.152)
    a, b = queued(core, 0.153), queued(core, 0.154)
    assert core.release(0.156) == [a] and not core.overloaded
    assert core.release(0.157) == [b]


def test_a_waiter_that_gives_up_frees_its_place_or_its_slot() -> None:
    core = full_gate(1)
    a, b, c = queued(core, 0.0), queued(core, 0.001), queued(core, 0.002)
    assert core.leave(a, 0.003) == [] and a.state is WaiterState.GONE
    assert core.waiting == 2
    assert core.release(0.004) == [b]  # FIFO skips the one that left
    # Granted but cancelled before it used the slot: the slot goes on to the next.
    assert core.leave(b, 0.005) == [c]
    assert (core.in_use, core.waiting) == (1, 0)
    assert core.leave(c, 0.006) == [] and core.in_use == 0


def test_shrinking_lets_holders_finish_first() -> None:
    core = full_gate(3)
    w = queued(core, 0.0)
    assert core.set_capacity(1, 0.001) == []
    assert core.release(0.002) == [] and core.release(0.003) == []  # still 1 in use
    assert core.release(0.004) == [w]
    assert core.in_use == 1


def test_fifo_only_never_overloads() -> None:
    core = GateCore(1, FIFO_ONLY)
    core.arrive(0.0)
    a, b = queued(core, 0.0), queued(core, 1.0)
    assert core.expire(100.0) == [] and not core.overloaded
    assert core.release(100.0) == [a] and core.release(100.1) == [b]


# -- the async wrapper, on the real clock ------------------------------------------------------


def test_async_gate_sheds_a_stalled_queue_fast() -> None:
    registry = CollectorRegistry()
    gate = SlotGate(1, GateConfig(target=0.005, interval=0.05), registry=registry)  # shed 0.1 s
    shed: list[float] = []

    async def one() -> None:
        t0 = anyio.current_time()
        with pytest.raises(GateShed, match="overloaded"):
            await gate.acquire()
        shed.append(anyio.current_time() - t0)

    async def main() -> None:
        await gate.acquire()  # the only slot, held throughout
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
        gate.release()

    anyio.run(main)
    assert len(shed) == 5 and max(shed) < 0.5  # bound 0.1 s; generous for a loaded machine
    assert registry.get_sample_value("skillcoach_db_gate_shed_total") == 5
    assert registry.get_sample_value("skillcoach_db_gate_overloaded") == 0  # queue drained
    assert issubclass(GateShed, PoolExhausted)  # answered 503 + Retry-After by the API
    assert (gate.core.in_use, gate.waiting) == (0, 0)


def test_async_gate_serves_newest_first_when_overloaded() -> None:
    registry = CollectorRegistry()
    gate = SlotGate(1, GateConfig(target=0.005, interval=1.0), registry=registry)  # shed 2 s
    served: list[int] = []

    async def one(i: int) -> None:
        await gate.acquire()
        served.append(i)
        gate.release()

    async def main() -> None:
        await gate.acquire()
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(one, i)
                await anyio.sleep(0.01)
            await anyio.sleep(1.2)  # above target for an interval, far from the shed bound
            gate.core.expire(anyio.current_time())
            assert registry.get_sample_value("skillcoach_db_gate_overloaded") == 1
            gate.release()

    anyio.run(main)
    assert served == [2, 1, 0]
    assert registry.get_sample_value("skillcoach_db_gate_overloaded") == 0
    assert registry.get_sample_value("skillcoach_db_gate_shed_total") == 0


def test_async_gate_cancelled_waiters_leave_no_slot_behind() -> None:
    gate = SlotGate(1, FIFO_ONLY)
    got: list[int] = []

    async def user(i: int) -> None:
        await gate.acquire()
        try:
            got.append(i)
            await anyio.sleep(10)
        finally:
            gate.release()

    async def main() -> None:
        await gate.acquire()
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(user, i)
            await anyio.sleep(0.05)
            assert gate.waiting == 3
            # Granted to the first waiter, cancelled in the same breath: whether it got to
            # run or not, the slot must come back, and the others leave the queue.
            gate.release()
            tg.cancel_scope.cancel()
        assert got in ([], [0])
        assert (gate.core.in_use, gate.waiting) == (0, 0)
        await gate.acquire()  # and the gate still works
        gate.release()

    anyio.run(main)
