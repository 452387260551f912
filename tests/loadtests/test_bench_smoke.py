"""CI smoke of the benchmark regression check: seconds, not minutes.

Runs `python -m loadtests check --smoke` in-process: a small scratch database, PgBouncer,
skillcoach (cache off) and the naive app, h2load for 3 s at 50 connections against each. The
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
def test_smoke_zero_errors_and_a_sound_meter_at_50() -> None:
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make services`")
    result = smoke()
    _assert_no_errors(result)
    assert result["pass"] is True, result["failures"]
    for name in (NAIVE, SKILLCOACH):
        r = result["targets"][name]
        assert r["meter"] == "h2load" and r["ok"] > 0, r
        assert r["latency_ms"]["mean"] <= r["latency_ms"]["little_bound"] * 1.05 + 0.5, r
