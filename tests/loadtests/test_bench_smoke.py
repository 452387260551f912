"""CI smoke of the benchmark regression check: seconds, not minutes.

Runs `python -m loadtests check --smoke` in-process: a small scratch database, PgBouncer,
skillcoach (cache off) and the naive app, wrk for 3 s at 50 connections against each. The
full ratio check against loadtests/baseline.json (`make bench-check`) stays manual.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from loadtests.bench_check import NAIVE, SKILLCOACH, smoke

pytestmark = pytest.mark.integration


def _assert_no_errors(result: dict[str, Any]) -> None:
    for name in (NAIVE, SKILLCOACH):
        errors = result["errors"][name]
        assert errors == {"non_2xx": 0, "socket_errors": 0}, (
            f"{name} answered with errors at 50 connections: {errors},"
            f" statuses {result['targets'][name]['statuses']}"
        )


@pytest.mark.timeout(240)
def test_smoke_zero_errors_and_skillcoach_beats_naive_at_50() -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run `sudo apt-get install -y wrk` (or `make services`)")
    result = smoke()
    _assert_no_errors(result)
    p99 = result["p99_ms"]
    if not p99[SKILLCOACH] < p99[NAIVE]:
        # A shared 2-core CI machine can stall skillcoach for one scheduling slice and put it
        # in the 3-second run's p99, so the latency comparison (only that) gets one retry on
        # a fresh stack. The zero-error assertion is never retried away: both runs must pass it.
        result = smoke()
        _assert_no_errors(result)
        p99 = result["p99_ms"]
    assert p99[SKILLCOACH] < p99[NAIVE], (
        f"skillcoach does not beat the naive app at 50 connections (twice): p99 {p99}"
    )
