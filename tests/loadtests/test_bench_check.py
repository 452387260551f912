"""`make bench-check`'s comparison with loadtests/baseline.json: regressions fail, the issue's
targets are reported beside them."""

from __future__ import annotations

import json
from typing import Any

from loadtests.bench_check import BASELINE, check_markdown, compare

# The issue's ratios as the check names them, with their targets.
ISSUE = {
    "throughput_skillcoach_over_ceiling_at_50": (0.6, "higher"),
    "throughput_skillcoach_over_ceiling_at_100": (0.6, "higher"),
    "throughput_skillcoach_over_naive_at_50": (1.0, "higher"),
    "throughput_skillcoach_over_naive_at_100": (1.0, "higher"),
    "p99_skillcoach_over_naive_at_100": (0.05, "lower"),
    "throughput_cached_over_bare_at_50": (0.65, "higher"),
    "p99_cached_over_bare_at_50": (3.0, "lower"),
}


def _baseline() -> dict[str, Any]:
    return {
        "ratios": {
            "throughput_skillcoach_over_ceiling_at_50": {
                "value": 0.5, "better": "higher", "target": 0.6
            },
            "p99_cached_over_bare_at_50": {"value": 2.0, "better": "lower", "target": 3},
            "p99_skillcoach_over_naive_at_50": {"value": 0.2, "better": "lower"},
        }
    }  # fmt: skip


def test_the_committed_baseline_carries_every_issue_ratio_and_target() -> None:
    ratios = json.loads(BASELINE.read_text())["ratios"]
    for name, (target, better) in ISSUE.items():
        assert name in ratios, name
        assert ratios[name]["better"] == better, name
        assert abs(float(ratios[name]["target"]) - target) < 1e-9, name
        assert float(ratios[name]["value"]) > 0, name


def test_a_regression_fails_and_a_missed_target_is_reported_not_failed() -> None:
    rows = {
        r["metric"]: r
        for r in compare(
            {
                "throughput_skillcoach_over_ceiling_at_50": 0.45,  # >= 0.5 x 0.75: pass
                "p99_cached_over_bare_at_50": 4.5,  # > 2.0 x 2: FAIL
                "p99_skillcoach_over_naive_at_50": 0.1,
            },
            _baseline(),
            tolerance=0.25,
            p99_tolerance=1.0,
        )
    }
    ceiling = rows["throughput_skillcoach_over_ceiling_at_50"]
    assert (ceiling["pass"], ceiling["target_met"], ceiling["allowed"]) == (True, False, 0.375)
    cached = rows["p99_cached_over_bare_at_50"]
    assert (cached["pass"], cached["target_met"]) == (False, False)
    no_target = rows["p99_skillcoach_over_naive_at_50"]
    assert (no_target["pass"], no_target["target_met"]) == (True, None)
    text = check_markdown(list(rows.values()))
    assert "| >= 0.375 | PASS | >= 0.6: **not met** |" in text
    assert (
        "| p99_cached_over_bare_at_50 | 2.0 | 4.5 | <= 4.0 | **FAIL** | <= 3: **not met** |" in text
    )
    assert "| p99_skillcoach_over_naive_at_50 | 0.2 | 0.1 | <= 0.4 | PASS | - |" in text


def test_an_unmeasured_ratio_fails() -> None:
    (row,) = compare(
        {}, {"ratios": {"x": {"value": 1.0, "better": "higher", "target": 1}}}, 0.25, 1.0
    )
    assert (row["pass"], row["target_met"]) == (False, None)
