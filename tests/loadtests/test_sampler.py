"""The benchmark's time series: Prometheus text parsing, cache increments, and the sampler
against a real `skillcoach serve` process."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from loadtests.sampler import (
    Sampler,
    cache_increments,
    parse_metrics,
    peak_rss_mb,
    rss_mb,
    summarize,
)

TEXT = """\
# HELP skillcoach_cache_hits_total Responses served from the cache
# TYPE skillcoach_cache_hits_total counter
skillcoach_cache_hits_total{kind="weaknesses"} 7.0
skillcoach_cache_hits_total{kind="recommendations"} 3.0
skillcoach_cache_hits_created{kind="weaknesses"} 1.7e9
skillcoach_db_pool_size 16.0
skillcoach_db_pool_checked_out 4.0
skillcoach_http_request_duration_seconds_bucket{le="0.1"} 99.0
skillcoach_db_pool_waiters NaN
"""


def test_parse_metrics_sums_label_sets_and_keeps_only_wanted_names() -> None:
    m = parse_metrics(TEXT)
    assert m["skillcoach_cache_hits_total"] == 10.0
    assert m["skillcoach_db_pool_size"] == 16.0
    assert m["skillcoach_db_pool_checked_out"] == 4.0
    assert "skillcoach_cache_hits_created" not in m
    assert not any(k.endswith("_bucket") for k in m)


def test_parse_metrics_keeps_fallthrough_reasons_apart_as_well() -> None:
    text = (
        "# TYPE skillcoach_cache_fallthrough_total counter\n"
        'skillcoach_cache_fallthrough_total{reason="key"} 1000.0\n'
        'skillcoach_cache_fallthrough_total{reason="absent"} 6.0\n'
    )
    assert parse_metrics(text) == {
        "skillcoach_cache_fallthrough_total": 1006.0,
        'skillcoach_cache_fallthrough_total{reason="key"}': 1000.0,
        'skillcoach_cache_fallthrough_total{reason="absent"}': 6.0,
    }


# Route labels carry the route template, braces included: every series of such a metric must
# count (a regex that stops a label set at the first `}` dropped them all).
ROUTES = """\
# HELP skillcoach_http_requests_total HTTP requests by route template and status
# TYPE skillcoach_http_requests_total counter
skillcoach_http_requests_total{method="GET",route="/v1/learners/{learner_id}/weaknesses",status="200"} 5.0
skillcoach_http_requests_total{method="GET",route="/healthz",status="200"} 2.0
skillcoach_http_requests_created{method="GET",route="/healthz",status="200"} 1.7e9
# HELP skillcoach_db_long_checkouts_total Connections held longer than long_checkout_seconds
# TYPE skillcoach_db_long_checkouts_total counter
skillcoach_db_long_checkouts_total{route="/v1/learners/{learner_id}/recommendations"} 3.0
skillcoach_db_pool_size 16.0
"""


def test_parse_metrics_keeps_series_whose_route_label_has_braces() -> None:
    wanted = ("skillcoach_http_requests_total", "skillcoach_db_long_checkouts_total")
    assert parse_metrics(ROUTES, wanted) == {
        "skillcoach_http_requests_total": 7.0,
        "skillcoach_db_long_checkouts_total": 3.0,
    }


def _sample(t: float, phase: str, hits: float | None, misses: float = 0.0) -> dict[str, object]:
    metrics = (
        None
        if hits is None
        else {"skillcoach_cache_hits_total": hits, "skillcoach_cache_misses_total": misses}
    )
    return {"t": t, "phase": phase, "procs": {"cached": {"metrics": metrics}}}


def test_cache_increments_merge_a_missed_scrape_into_the_next_interval() -> None:
    samples = [
        _sample(0, "idle", 0, 0),
        _sample(1, "cached c=1", 8, 2),
        _sample(2, "cached c=1", None),  # timed out
        _sample(3, "cached c=1", 20, 4),
    ]
    inc = cache_increments(samples, "cached")  # type: ignore[arg-type]
    assert inc == [(1, 8, 10, "cached c=1"), (3, 12, 14, "cached c=1")]
    assert cache_increments(samples, "absent") == []  # type: ignore[arg-type]


def test_rss_of_this_process() -> None:
    now, peak = rss_mb(os.getpid()), peak_rss_mb(os.getpid())
    assert now is not None and peak is not None
    assert 1 < now <= peak
    assert rss_mb(2**22 + 12345) is None  # no such pid


@pytest.mark.integration
def test_sampler_reads_a_real_replica_and_tags_phases(server: tuple[str, str]) -> None:
    _base, metrics = server
    sampler = Sampler({"api": f"{metrics}/metrics", "down": "http://127.0.0.1:9/metrics"}, {"me": os.getpid()},
                      interval=0.2, timeout=1.0).start()  # fmt: skip
    sampler.phase("api c=1")
    time.sleep(0.7)
    sampler.phase("idle")
    time.sleep(0.3)
    samples = sampler.stop()
    assert 3 <= len(samples) <= 10
    phases = {s["phase"] for s in samples}
    assert {"api c=1", "idle"} <= phases
    answered = [s["procs"]["api"]["metrics"] for s in samples if s["procs"]["api"]["metrics"]]
    assert answered, "no scrape of the replica's /metrics answered"
    assert all(m["skillcoach_db_pool_size"] > 0 for m in answered)
    assert all(s["procs"]["down"]["metrics"] is None for s in samples)  # refused, not fatal
    assert all(s["procs"]["me"]["rss_mb"] > 1 for s in samples)
    ts = [s["t"] for s in samples]
    assert ts == sorted(ts)


def test_summarize_peaks_and_overall_hit_ratio() -> None:
    def s(t: float, out: float, waiters: float, hits: float, misses: float) -> dict[str, Any]:
        metrics = {
            "skillcoach_db_pool_capacity": 16.0,
            "skillcoach_db_pool_checked_out": out,
            "skillcoach_db_pool_waiters": waiters,
            "skillcoach_cache_hits_total": hits,
            "skillcoach_cache_misses_total": misses,
            "skillcoach_cache_errors_total": 1.0,
        }
        return {"t": t, "phase": "x", "procs": {"r": {"metrics": metrics}, "gone": {}}}

    summary = summarize([s(0, 2, 0, 0, 0), s(1, 12, 3, 90, 10), s(2, 4, 1, 180, 20)])
    assert summary["r"] == {
        "scrapes": 3,
        "peak_pool_utilization": 0.75,
        "peak_waiters": 3.0,
        "hit_ratio": 0.9,
        "cache_errors": 0.0,
    }
    assert summary["gone"] == {"scrapes": 0}
