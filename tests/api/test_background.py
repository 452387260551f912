"""The background loops' supervisor: a failing loop is logged, counted and restarted with a
capped, jittered backoff, while the other loops keep running; cancellation passes through."""

from __future__ import annotations

import logging

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from skillcoach.api.background import Backoff, Supervisor, backoff_delay


def test_backoff_doubles_up_to_the_cap_within_the_jitter() -> None:
    policy = Backoff(base=1.0, cap=30.0, jitter=0.2)
    assert [backoff_delay(n, policy, 0.5) for n in (1, 2, 3, 4, 5, 6, 100)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    assert backoff_delay(1, policy, 0.0) == pytest.approx(0.8)
    assert backoff_delay(1, policy, 0.999999) == pytest.approx(1.2, abs=1e-5)
    assert backoff_delay(10_000, policy, 0.999999) <= 30.0


def test_a_failing_loop_restarts_and_the_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    sup = Supervisor(registry, Backoff(base=0.01, cap=0.05, jitter=0.2))
    runs = {"flaky": 0, "steady": 0}
    enough = {"flaky": 4, "steady": 20}
    done = {name: anyio.Event() for name in runs}

    def ran(name: str) -> None:
        runs[name] += 1
        if runs[name] >= enough[name]:
            done[name].set()

    async def flaky() -> None:
        ran("flaky")
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("boom")

    async def steady() -> None:
        while True:
            ran("steady")
            await anyio.sleep(0.01)

    async def main() -> None:
        with anyio.move_on_after(30):  # bounded: both conditions come well before
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.supervise, "flaky", flaky)
                tg.start_soon(sup.supervise, "steady", steady)
                await done["flaky"].wait()
                await done["steady"].wait()
                # Cancellation passes through the supervisor: the group ends.
                tg.cancel_scope.cancel()

    caplog.set_level(logging.ERROR)
    anyio.run(main)
    assert runs["flaky"] >= 4 and runs["steady"] >= 20
    failures = registry.get_sample_value("skillcoach_background_failures_total", {"task": "flaky"})
    assert failures is not None and failures >= 3
    assert registry.get_sample_value(
        "skillcoach_background_failures_total", {"task": "steady"}
    ) in (
        None,
        0.0,
    )
    records = [r for r in caplog.records if "background task flaky failed" in r.getMessage()]
    assert records and records[0].exc_info is not None  # with the traceback
    assert "RuntimeError: boom" in caplog.text


def test_a_loop_that_returns_is_not_restarted() -> None:
    sup = Supervisor(CollectorRegistry(), Backoff(base=0.01))
    calls = []

    async def once() -> None:
        calls.append(1)

    anyio.run(sup.supervise, "once", once)
    assert calls == [1]
