"""`make bench` (python -m loadtests suite): its verdicts and tables on a synthetic result, and
a CI smoke of the whole runner at two connection levels (the full run stays manual).

The smoke is the clean-clone check of `make bench`: the multi-replica stack comes up in a
scratch root beside anything else running, every target is driven, the sampler reads every
skillcoach process, and the markdown and both plots are produced.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from loadtests.bench_suite import (
    BARE,
    CACHED,
    CEILING,
    NAIVE,
    OFF,
    STACK,
    TARGETS,
    full_markdown,
    parse_args,
    run,
    verdicts,
)
from loadtests.harness import Target, with_server_cpu
from loadtests.suite_report import RATIO_TARGETS, ratio_table, ratio_verdicts

from loadtests import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _wrk(rps: float, mean: float, p99: float, *, non_2xx: int = 0, c: int = 50) -> dict[str, Any]:
    return {
        "connections": c,
        "requests": int(rps * 8) + non_2xx,
        "ok_rps": rps,
        "statuses": {"200": int(rps * 8)},
        "non_2xx": non_2xx,
        "shed_503": non_2xx,
        "socket_errors_total": 0,
        "latency_ms": {"p50": mean, "p90": p99 / 2, "p99": p99, "mean": mean, "max": p99 * 2},
        "window_s": [0.0, 8.0],
    }


def _result() -> dict[str, Any]:
    runs = {
        BARE: {"50": _wrk(20000, 2, 10)},
        NAIVE: {"50": _wrk(1000, 60, 600), "100": _wrk(900, 120, 8000)},
        CEILING: {"50": _wrk(2000, 25, 80), "100": _wrk(2000, 50, 160)},
        OFF: {"1": _wrk(500, 2, 3, c=1), "50": _wrk(800, 60, 150), "100": _wrk(800, 250, 400)},
        CACHED: {"50": _wrk(12000, 4, 9)},
        STACK: {"50": _wrk(900, 110, 620, non_2xx=90)},
    }
    samples = [
        {
            "t": float(t),
            "phase": "cached c=50" if t < 3 else "idle",
            "procs": {
                CACHED: {
                    "rss_mb": 110.0 + t,
                    "metrics": {
                        "skillcoach_db_pool_size": 16.0,
                        "skillcoach_db_pool_capacity": 16.0,
                        "skillcoach_db_pool_checked_out": float(t),
                        "skillcoach_db_pool_waiters": 0.0,
                        "skillcoach_cache_hits_total": 90.0 * t,
                        "skillcoach_cache_misses_total": 10.0 * t,
                    },
                },
                BARE: {"rss_mb": 90.0},
            },
        }
        for t in range(5)
    ]
    result: dict[str, Any] = {
        "at": "2026-11-27T08:00:00+00:00",
        "machine": {"cores": 2, "cpu": "test cpu"},
        "params": {"levels": [1, 50, 100]},
        "runs": runs,
        "pool": {CACHED: {"cached c=50": {"peak_utilization": 0.25, "peak_waiters": 0}}},
        "hit_ratio": {CACHED: {"50": 0.9}, STACK: {"50": 0.7}},
        "peak_rss_mb": {BARE: 90.0, CACHED: 114.0, "replica-1": 350.0},
        "exited_early": {},
        "timeline": samples,
        "wall_s": 60.0,
    }
    result["verdicts"] = verdicts(result)
    return result


def test_verdicts_follow_the_seed_targets() -> None:
    v = _result()["verdicts"]
    assert v[OFF]["mean_under_50ms_at_1"] is True
    assert v[OFF]["mean_under_500ms_at_50"] is True
    assert v[OFF]["mean_under_200ms_at_100"] is False  # 250 ms mean at 100
    assert v[STACK]["errors_under_1pct_at_50"] is False  # 90 of 7,290 not 2xx
    assert v[CACHED]["hit_ratio_over_80pct"] is True
    assert v[STACK]["hit_ratio_over_80pct"] is False
    assert v["rss_under_300mb"] == {BARE: True, CACHED: True, "replica-1": False}
    assert v["no_server_errors"] is True


def test_a_500_or_a_logged_traceback_fails_the_run() -> None:
    result = _result()
    result["runs"][STACK]["50"]["statuses"]["500"] = 4
    assert verdicts(result)["no_server_errors"] is False
    assert "(90; 4)" in full_markdown(result)
    result = _result()
    result["tracebacks"] = {"replica-1": {"count": 2, "last": "KeyError: 'x'"}}
    assert verdicts(result)["no_server_errors"] is False
    assert "replica-1 logged 2 traceback(s)" in full_markdown(result)


def test_markdown_has_every_target_ratios_and_the_seed_table() -> None:
    result = _result()
    result["runs"][OFF]["50"]["server_cpu"] = {"ms_per_request": 1.234, "utilization": 0.87}
    text = full_markdown(result)
    assert "| 1.23 (87%) |" in text
    for name in TARGETS:
        assert f"| {name} | 50 |" in text
    assert (
        "| stack | 50 | 900 | 110 | 110 / 310.0 / 620 / 1,240 | 90 (90; 0) | 0 | 70.0% | - |"
        in text
    )
    assert "| 50 | 0.60 | 0.40 | 0.80x | 0.250 | 0.015 | 0.90x |" in text
    assert "| 100 users < 200 ms (phase 2) | 250 ms (**not met**)" in text
    assert "peak over every process 350.0 MB (**not met**)" in text


def test_the_issue_ratios_are_judged_against_their_targets() -> None:
    v = ratio_verdicts(_result()["runs"])
    assert [t.name for t in RATIO_TARGETS] == list(v)
    # cache-off / db ceiling: 800 / 2000 at 50 and 100; the target is 0.6.
    assert v["throughput_off_over_ceiling_at_50"] == {
        "value": 0.4, "bound": 0.6, "better": "higher", "met": False
    }  # fmt: skip
    assert v["throughput_off_over_ceiling_at_100"]["value"] == 0.4
    # cache-off / naive: 800 / 1000 at 50 (not met), 800 / 900 at 100 (not met).
    assert v["throughput_off_over_naive_at_50"]["met"] is False
    assert v["throughput_off_over_naive_at_100"]["value"] == 0.889
    # p99 cache-off / naive at 100: 400 / 8000 = 0.05, exactly the bound 1/20: met.
    assert v["p99_off_over_naive_at_100"] == {
        "value": 0.05, "bound": 0.05, "better": "lower", "met": True
    }  # fmt: skip
    # cached / bare at 50: 12000 / 20000 = 0.6 < 0.65; p99 9 / 10 = 0.9 <= 3.
    assert v["throughput_cached_over_bare_at_50"]["met"] is False
    assert v["p99_cached_over_bare_at_50"]["met"] is True
    table = ratio_table(v)
    assert "| p99_off_over_naive_at_100 | 0.050 | <= 0.05 | met |" in table
    assert "| throughput_off_over_ceiling_at_50 | 0.400 | >= 0.6 | **not met** |" in table


def test_an_unmeasured_side_leaves_the_ratio_undecided() -> None:
    runs = _result()["runs"]
    del runs[CEILING]["100"]
    runs[OFF]["50"] = {"connections": 50, "failed": "wrk exited 1"}
    v = ratio_verdicts(runs)
    assert v["throughput_off_over_ceiling_at_100"] == {
        "value": None, "bound": 0.6, "better": "higher", "met": None
    }  # fmt: skip
    assert v["throughput_off_over_naive_at_50"]["met"] is None
    assert "| throughput_off_over_ceiling_at_100 | - | >= 0.6 | - |" in ratio_table(v)


def test_plots_are_written(tmp_path: Path) -> None:
    paths = plots.write_all(_result(), tmp_path / "suite-x")
    assert [p.name for p in paths] == ["suite-x-concurrency.png", "suite-x-timeline.png"]
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_suite_smoke_every_target_measured_sampled_and_plotted(tmp_path: Path) -> None:
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make services`")
    args = parse_args(
        ["--duration", "1", "--levels", "1,20", "--learners", "150", "--hot", "50",
         "--sample-interval", "0.5", "--timeout", "5"]
    )  # fmt: skip
    result = run(args)
    assert result["exited_early"] == {}
    assert result["tracebacks"] == {}, result["tracebacks"]
    assert result["verdicts"]["no_server_errors"] is True
    for name in TARGETS:
        for c in ("1", "20"):
            r = result["runs"][name][c]
            assert "failed" not in r, f"{name} c={c}: {r.get('failed')}"
            assert r["socket_errors_total"] == 0, (name, c, r["socket_errors"])
            assert r["ok"] > 0, (name, c, r["statuses"])
            assert r["non_2xx"] == 0, (name, c, r["statuses"])
            if name != STACK:  # one process each: its CPU per answer was measured
                assert r["server_cpu"]["ms_per_request"] > 0, (name, c, r["server_cpu"])
            if name == STACK:  # the writer beside the stack's readers: attempt batches only
                assert set(r["writes"]["statuses"]) <= {"201"}, r["writes"]["statuses"]
    writes = sum(r["writes"]["statuses"].get("201", 0) for r in result["runs"][STACK].values())
    assert writes > 0, "the stack's writer wrote nothing"
    # Warm: every hot learner was read once before, so (almost) every read is a hit.
    for c, ratio in result["hit_ratio"][CACHED].items():
        assert ratio is not None and ratio > 0.9, (c, ratio)
    scraped = {
        p for s in result["timeline"] for p, d in s["procs"].items() if d.get("metrics")
    }  # fmt: skip
    replicas = {p for p in scraped if p.startswith("replica-")}
    assert {OFF, CACHED} <= scraped and len(replicas) == 2, scraped
    assert set(result["peak_rss_mb"]) == {BARE, NAIVE, CEILING, OFF, CACHED} | replicas
    assert all(mb is not None and mb > 10 for mb in result["peak_rss_mb"].values())
    text = full_markdown(result)
    assert all(f"| {name} | 20 |" in text for name in TARGETS)
    for p in plots.write_all(result, tmp_path / "suite"):
        assert p.read_bytes().startswith(PNG)


def test_the_overload_ratios_compare_one_target_at_1000_with_itself_at_100() -> None:
    runs = _result()["runs"]
    runs[CACHED] |= {"100": _wrk(10000, 10, 40, c=100), "1000": _wrk(9500, 100, 150, c=1000)}
    runs[STACK] |= {"100": _wrk(1700, 60, 300, c=100), "1000": _wrk(1400, 600, 2400, c=1000)}
    v = ratio_verdicts(runs)
    assert v["throughput_cached_1000_over_100"] == {
        "value": 0.95, "bound": 0.9, "better": "higher", "met": True
    }  # fmt: skip
    assert v["p99_cached_1000_over_100"]["value"] == 3.75
    assert v["p99_cached_1000_over_100"]["met"] is True
    assert v["throughput_stack_1000_over_100"]["met"] is False  # 1400 / 1700 = 0.82
    assert v["p99_stack_1000_over_100"] == {
        "value": 8.0, "bound": 5.0, "better": "lower", "met": False
    }  # fmt: skip


def test_server_cpu_is_the_target_process_cpu_per_request() -> None:
    # A child that, once told, burns 0.4 s of CPU while "serving" 200 requests: 2 ms each.
    burn = (
        "import sys, time\nprint('ready', flush=True)\nsys.stdin.readline()\n"
        "end = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
        "print('done', flush=True)\ntime.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        target = Target("burner", proc, 0, Path("/dev/null"))  # type: ignore[arg-type]

        def run() -> dict[str, Any]:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"
            time.sleep(0.1)  # /proc's tick counts settle
            return {"requests": 200}

        result = with_server_cpu(target, run)
    finally:
        proc.kill()
        proc.wait()
    cpu = result["server_cpu"]
    assert 1.8 <= cpu["ms_per_request"] <= 2.6, cpu
    assert 0.2 < cpu["utilization"] <= 1.05, cpu
