"""The cache board: how much Redis saves PostgreSQL, and whether Redis is healthy."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from skillcoach_devstack.dashboards.common import NS, RATE, Query, new_board

__all__ = ["build"]


def _rate(metric: str, by: str = "") -> str:
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{{{NS}}}[{RATE}]))"


def _hit_ratio(by: str = "") -> str:
    hits = _rate("skillcoach_cache_hits_total", by)
    misses = _rate("skillcoach_cache_misses_total", by)
    return f"{hits} / ({hits} + {misses})"


def build() -> Dashboard:
    board = new_board(
        "skillcoach-cache",
        "skillcoach cache",
        "Hit ratio, circuit breaker, errors and latency of the Redis cache of the two read"
        " endpoints. docs/observability.md says what to do with each panel.",
    )
    board.row("Effect")
    board.stat(
        "Hit ratio",
        "Cacheable reads answered from Redis (fast path included). Below 50% for 15 minutes"
        " alerts.",
        [Query(_hit_ratio())],
        unit="percentunit",
    )
    board.stat(
        "Breakers not closed",
        "Replicas whose circuit breaker is open or half-open (their reads go to PostgreSQL).",
        [Query(f"sum(skillcoach_cache_breaker_state{{{NS}}} > bool 0)")],
        red_above=1,
    )
    board.stat(
        "Cache errors per second",
        "Failed Redis calls over every replica.",
        [Query(_rate("skillcoach_cache_errors_total"))],
        unit="ops",
    )
    board.stat(
        "Fast-path answers per second",
        "Hits answered ahead of the framework (one MGET, no JSON parsing).",
        [Query(_rate("skillcoach_http_cache_fast_path_total"))],
        unit="reqps",
    )
    board.timeseries(
        "Hit ratio by endpoint",
        "Hits over lookups, for weaknesses and recommendations. A dip follows every model"
        " promotion (keys carry the model version) until warming and traffic refill it.",
        [Query(_hit_ratio("kind"), legend="{{kind}}")],
        unit="percentunit",
        maximum=1,
    )
    board.timeseries(
        "Hits, misses and stale entries",
        "Lookups per second by outcome; stale: an entry older than the learner's version.",
        [
            Query(_rate("skillcoach_cache_hits_total", "kind"), legend="hit {{kind}}"),
            Query(_rate("skillcoach_cache_misses_total", "kind"), legend="miss {{kind}}"),
            Query(_rate("skillcoach_cache_stale_total", "kind"), legend="stale {{kind}}"),
        ],
        unit="ops",
    )
    board.timeseries(
        "Computations and lock waits",
        "Answers computed from PostgreSQL, and misses that waited for another replica's"
        " computation of the same key.",
        [
            Query(_rate("skillcoach_cache_computations_total", "kind"), legend="computed {{kind}}"),
            Query(_rate("skillcoach_cache_lock_waits_total", "kind"), legend="waited {{kind}}"),
        ],
        unit="ops",
    )
    board.timeseries(
        "Fast-path answers by endpoint",
        "Requests answered by the cache-hit fast path.",
        [Query(_rate("skillcoach_http_cache_fast_path_total", "kind"), legend="{{kind}}")],
        unit="reqps",
    )

    board.row("Health")
    board.timeseries(
        "Breaker state per replica",
        "0 closed, 1 open (Redis skipped), 2 half-open (one probe). Not closed for 2 minutes"
        " alerts.",
        [Query(f"max by (pod) (skillcoach_cache_breaker_state{{{NS}}})", legend="{{pod}}")],
        maximum=2,
    )
    board.timeseries(
        "Requests that skipped Redis",
        "Requests per second served from PostgreSQL without asking Redis, breaker open.",
        [Query(_rate("skillcoach_cache_skipped_total", "pod"), legend="{{pod}}")],
        unit="reqps",
    )
    board.timeseries(
        "Errors by call and reason",
        "Failed Redis calls per second: auth and tls are configuration errors no retry fixes;"
        " timeout and connection point at Redis or the network.",
        [Query(_rate("skillcoach_cache_errors_total", "op, reason"), legend="{{op}} {{reason}}")],
        unit="ops",
    )
    board.timeseries(
        "Fast path: reads that took the full path, by reason",
        "Per second. key: the replica had not cached the API key (a burst right after start);"
        " absent or stale: no current entry (a miss follows); error: the lookup failed (see the"
        " errors above); bypassed, breaker, no_node: the cache was not asked. A steady stream"
        " of key or error under load sends requests through the request gate.",
        [Query(_rate("skillcoach_cache_fallthrough_total", "reason"), legend="{{reason}}")],
        unit="reqps",
    )
    board.timeseries(
        "Redis latency p50 / p99",
        "Round-trip time of cache calls by call.",
        [
            Query(
                "histogram_quantile(0.5, sum by (le, op) (rate("
                f"skillcoach_cache_latency_seconds_bucket{{{NS}}}[{RATE}])))",
                legend="p50 {{op}}",
            ),
            Query(
                "histogram_quantile(0.99, sum by (le, op) (rate("
                f"skillcoach_cache_latency_seconds_bucket{{{NS}}}[{RATE}])))",
                legend="p99 {{op}}",
            ),
        ],
        unit="s",
    )
    return board.builder
