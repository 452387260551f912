"""The suite's verdicts and tables (loadtests/bench_suite.py): the seed's targets and the pooling
and cache issues' ratios set beside one run's figures, as markdown.

A run's result: {"runs": {target: {connections: wrk figures | {"failed": ...}}}, "hit_ratio",
"pool", "peak_rss_mb", "tracebacks", "exited_early", "params", "wall_s", ...}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = [
    "BARE",
    "CACHED",
    "CEILING",
    "DESCRIPTION",
    "NAIVE",
    "OFF",
    "RATIO_TARGETS",
    "STACK",
    "TARGETS",
    "RatioTarget",
    "full_markdown",
    "markdown",
    "ratio_table",
    "ratio_verdicts",
    "seed_table",
    "verdicts",
]

BARE, NAIVE, OFF, CACHED, STACK = "bare", "naive", "cache-off", "cached", "stack"
CEILING = "db-ceiling"
TARGETS = (BARE, NAIVE, CEILING, OFF, CACHED, STACK)
DESCRIPTION = {
    BARE: "bare Starlette JSON endpoint (ceiling)",
    NAIVE: "naive app: seed's setup, direct to PostgreSQL",
    CEILING: "db ceiling: the same SELECT via PgBouncer, psycopg2 in 16 threads, nothing else",
    OFF: "skillcoach, 1 replica, cache off, via PgBouncer",
    CACHED: "skillcoach, 1 replica, warm cache (Redis Cluster)",
    STACK: "stack: HAProxy -> replicas, Zipf reads + 10% writes",
}
# The seed's own targets (ml-api-performance-plan.md, "Success Metrics") and the pooling and
# cache issues' ratios; markdown() sets our figures beside them.
SEED_MEAN_MS = {1: 50.0, 50: 500.0, 100: 500.0}
SEED_PHASE2_MEAN_MS_AT_100 = 200.0
SEED_CACHED_MEAN_MS = 100.0
SEED_RPS = 100.0
SEED_ERROR_RATE = 0.01
SEED_HIT_RATIO = 0.80
SEED_MEMORY_MB = 2048.0
RSS_LIMIT_MB = 300.0
SEED_POOL_UTILIZATION = 0.5


@dataclass(frozen=True, slots=True)
class RatioTarget:
    """A ratio of two targets' figures measured in one run, and the issue's bound on it."""

    name: str
    top: str
    bottom: str
    figure: str  # "ok_rps" or a latency_ms key ("p99")
    connections: int
    bound: float
    better: str  # "higher": ratio >= bound is met; "lower": ratio <= bound is met
    # The bottom side's level (None: the same as the top's): one target at 1,000 against 100.
    bottom_connections: int | None = None

    def met(self, value: float) -> bool:
        return value >= self.bound if self.better == "higher" else value <= self.bound


# The uncached-path issue's targets: cache off near the database's own ceiling and never
# below the naive app, and the cached path near the bare framework.
RATIO_TARGETS = (
    RatioTarget("throughput_off_over_ceiling_at_50", OFF, CEILING, "ok_rps", 50, 0.6, "higher"),
    RatioTarget("throughput_off_over_ceiling_at_100", OFF, CEILING, "ok_rps", 100, 0.6, "higher"),
    RatioTarget("throughput_off_over_naive_at_50", OFF, NAIVE, "ok_rps", 50, 1.0, "higher"),
    RatioTarget("throughput_off_over_naive_at_100", OFF, NAIVE, "ok_rps", 100, 1.0, "higher"),
    RatioTarget("p99_off_over_naive_at_100", OFF, NAIVE, "p99", 100, 1 / 20, "lower"),
    RatioTarget("throughput_cached_over_bare_at_50", CACHED, BARE, "ok_rps", 50, 0.65, "higher"),
    RatioTarget("p99_cached_over_bare_at_50", CACHED, BARE, "p99", 50, 3.0, "lower"),
    # Overload: 1,000 connections against 100, one warm replica and the 2-replica stack.
    *(
        RatioTarget(f"{figure}_{name}_1000_over_100", target, target, key, 1000, bound, better, 100)
        for name, target in (("cached", CACHED), ("stack", STACK))
        for figure, key, bound, better in (
            ("throughput", "ok_rps", 0.9, "higher"),
            ("p99", "p99", 5.0, "lower"),
        )
    ),
)


def _other_5xx(r: dict[str, Any]) -> int:
    """5xx answers other than the 503s of load shedding: never expected."""
    return sum(n for s, n in r["statuses"].items() if s.startswith("5") and s != "503")


def _own_target(proc: str) -> str:
    """The target whose load a skillcoach process serves (the stack's replicas: stack)."""
    return STACK if proc.startswith("replica-") else proc


def _pool_at(result: dict[str, Any], proc_prefix: str, c: int) -> float | None:
    """Peak pool utilization of the processes named proc_prefix* under their own load."""
    peaks = [
        phases[f"{_own_target(proc)} c={c}"]["peak_utilization"]
        for proc, phases in result["pool"].items()
        if proc.startswith(proc_prefix) and f"{_own_target(proc)} c={c}" in phases
    ]
    return max(peaks) if peaks else None


def _ok(r: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """A run that was measured (present, not failed)."""
    return r is not None and bool(r) and "failed" not in r


def _error_rate(r: dict[str, Any]) -> float:
    """Non-2xx (503 sheds included) and socket errors over everything sent."""
    sent = r["requests"] + r["socket_errors_total"]
    return (r["non_2xx"] + r["socket_errors_total"]) / sent if sent else 1.0


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = result["runs"]
    v: dict[str, Any] = {}
    for name in (OFF, CACHED, STACK):
        rows: dict[str, Any] = {}
        for c, limit in SEED_MEAN_MS.items():
            r = runs[name].get(str(c))
            if _ok(r):
                rows[f"mean_under_{limit:g}ms_at_{c}"] = r["latency_ms"]["mean"] < limit
        r50 = runs[name].get("50")
        if _ok(r50):
            rows["over_100_rps_at_50"] = r50["ok_rps"] > SEED_RPS
            rows["errors_under_1pct_at_50"] = _error_rate(r50) < SEED_ERROR_RATE
        r100 = runs[name].get("100")
        if _ok(r100):
            rows["mean_under_200ms_at_100"] = (
                r100["latency_ms"]["mean"] < SEED_PHASE2_MEAN_MS_AT_100
            )
        v[name] = rows
    r = runs[CACHED].get("50")
    if _ok(r):
        v[CACHED]["cached_mean_under_100ms_at_50"] = r["latency_ms"]["mean"] < SEED_CACHED_MEAN_MS
    for name in (CACHED, STACK):
        ratios = [x for x in result["hit_ratio"].get(name, {}).values() if x is not None]
        if ratios:
            v[name]["hit_ratio_over_80pct"] = min(ratios) > SEED_HIT_RATIO
    v["no_server_errors"] = not result.get("tracebacks") and not any(
        _other_5xx(r) for by_c in runs.values() for r in by_c.values() if _ok(r)
    )
    v["rss_under_300mb"] = {n: (mb or 0) < RSS_LIMIT_MB for n, mb in result["peak_rss_mb"].items()}
    v["ratios"] = ratio_verdicts(runs)
    return v


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    if not (_ok(a) and _ok(b)):
        return None
    assert a is not None and b is not None
    x = a["latency_ms"][key] if key != "ok_rps" else a["ok_rps"]
    y = b["latency_ms"][key] if key != "ok_rps" else b["ok_rps"]
    return round(x / y, 3) if y else None


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def _cpu(r: dict[str, Any]) -> str:
    """The target process's CPU per answer and its share of one core (the stack: -, its
    replicas are several processes; runs recorded before 2026-12-03 12:00: -)."""
    cpu = r.get("server_cpu")
    if not cpu:
        return "-"
    return f"{cpu['ms_per_request']:.2f} ({cpu['utilization']:.0%})"


def markdown(result: dict[str, Any]) -> str:
    runs, levels = result["runs"], [str(c) for c in result["params"]["levels"]]
    lines = [
        "| target | connections | 2xx req/s | mean | p50 / p90 / p99 / max (ms) |"
        " non-2xx (503; other 5xx) | socket errors | hit ratio |"
        " server CPU ms/req (share of a core) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in TARGETS:
        for c in levels:
            r = runs.get(name, {}).get(c)
            if not r:
                continue
            if "failed" in r:
                lines.append(f"| {name} | {c} | failed: {r['failed'][:80]} | | | | | | |")
                continue
            lat = r["latency_ms"]
            hits = result["hit_ratio"].get(name, {}).get(c)
            lines.append(
                f"| {name} | {c} | {r['ok_rps']:,.0f} | {lat['mean']:,} | {lat['p50']:,} /"
                f" {lat['p90']:,} / {lat['p99']:,} / {lat['max']:,} | {r['non_2xx']:,}"
                f" ({r['shed_503']:,}; {_other_5xx(r)}) | {r['socket_errors_total']:,} |"
                f" {_fmt(hits, '.1%')} | {_cpu(r)} |"
            )
    lines += [
        "",
        "Ratios measured in this run (throughput: higher is better; p99: lower is better):",
        "",
        "| connections | cached / bare req/s | cache-off / db-ceiling req/s |"
        " cache-off / naive req/s | cache-off / naive p99 | cached / naive p99 |"
        " stack / naive req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in levels:
        row = {n: runs.get(n, {}).get(c) for n in TARGETS}
        lines.append(
            f"| {c} | {_fmt(_ratio(row[CACHED], row[BARE], 'ok_rps'))} |"
            f" {_fmt(_ratio(row[OFF], row[CEILING], 'ok_rps'))} |"
            f" {_fmt(_ratio(row[OFF], row[NAIVE], 'ok_rps'), '.2f', 'x')} |"
            f" {_fmt(_ratio(row[OFF], row[NAIVE], 'p99'), '.3f')} |"
            f" {_fmt(_ratio(row[CACHED], row[NAIVE], 'p99'), '.3f')} |"
            f" {_fmt(_ratio(row[STACK], row[NAIVE], 'ok_rps'), '.2f', 'x')} |"
        )
    lines += [
        "",
        "DB pool while its own target was driven: peak checked-out share of the pool / peak"
        " waiters (sampled each second; - : no scrape answered in time):",
        "",
        "| process | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for proc, phases in result["pool"].items():
        cells = []
        for c in levels:
            row = phases.get(f"{_own_target(proc)} c={c}")
            cells.append(f"{row['peak_utilization']:.0%} / {row['peak_waiters']:g}" if row else "-")
        lines.append(f"| {proc} | " + " | ".join(cells) + " |")
    rss = ", ".join(f"{k} {v} MB" for k, v in result["peak_rss_mb"].items())
    lines += ["", f"Peak RSS: {rss}."]
    for name, tb in result.get("tracebacks", {}).items():
        lines.append(f"**{name} logged {tb['count']} traceback(s)**; the last ends:")
        lines += ["", "```", tb["last"], "```", ""]
    if result["exited_early"]:
        lines.append(f"Exited early: {result['exited_early']}.")
    lines.append(f"Wall time {result['wall_s']} s.")
    return "\n".join(lines)


def seed_table(result: dict[str, Any]) -> str:
    """The seed's targets beside this run's figures (skillcoach targets only)."""
    runs, v = result["runs"], result["verdicts"]
    mark = {True: "met", False: "**not met**", None: "-"}

    def mean(name: str, c: int) -> str:
        r = runs[name].get(str(c))
        return f"{r['latency_ms']['mean']:,} ms" if _ok(r) else "-"

    def rps(name: str, c: int) -> str:
        r = runs[name].get(str(c))
        return f"{r['ok_rps']:,.0f}" if _ok(r) else "-"

    def err(name: str, c: int) -> str:
        r = runs[name].get(str(c))
        return f"{_error_rate(r):.2%}" if _ok(r) else "-"

    rows: list[tuple[str, str, Callable[[str], str]]] = [
        ("single request < 50 ms mean", "mean_under_50ms_at_1", lambda n: mean(n, 1)),
        ("50 users < 500 ms mean", "mean_under_500ms_at_50", lambda n: mean(n, 50)),
        ("> 100 req/s (at 50)", "over_100_rps_at_50", lambda n: rps(n, 50)),
        ("error rate < 1% (at 50)", "errors_under_1pct_at_50", lambda n: err(n, 50)),
        ("100 users < 500 ms mean", "mean_under_500ms_at_100", lambda n: mean(n, 100)),
        ("100 users < 200 ms (phase 2)", "mean_under_200ms_at_100", lambda n: mean(n, 100)),
    ]
    out = [
        "| seed target | " + " | ".join(f"{n}" for n in (OFF, CACHED, STACK)) + " |",
        "|---|---|---|---|",
    ]
    for label, key, fig in rows:
        cells = [f"{fig(n)} ({mark[v[n].get(key)]})" for n in (OFF, CACHED, STACK)]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    hits = [
        "-"
        if not result["hit_ratio"].get(n)
        else f"min {min(x for x in result['hit_ratio'][n].values() if x is not None):.1%}"
        f" ({mark[v[n].get('hit_ratio_over_80pct')]})"
        for n in (CACHED, STACK)
    ]
    out.append(f"| cache hit rate > 80% | - | {hits[0]} | {hits[1]} |")
    cached50 = mean(CACHED, 50)
    out.append(
        f"| cached requests < 100 ms | - | {cached50} at 50"
        f" ({mark[v[CACHED].get('cached_mean_under_100ms_at_50')]}) | - |"
    )
    other_5xx = sum(_other_5xx(r) for by_c in runs.values() for r in by_c.values() if _ok(r))
    out.append(
        f"| errors: no 500s (503 only when shedding), no tracebacks | {other_5xx} other 5xx,"
        f" {sum(tb['count'] for tb in result.get('tracebacks', {}).values())} tracebacks"
        f" ({mark[v['no_server_errors']]}) | | |"
    )
    pools = [_pool_at(result, proc, 20) for proc in (OFF, CACHED, "replica-")]
    out.append(
        "| DB pool utilization < 50% (normal load: 20 connections) | "
        + " | ".join(
            "-" if u is None else f"peak {u:.0%} ({mark[u < SEED_POOL_UTILIZATION]})" for u in pools
        )
        + " |"
    )
    peak = max((mb or 0) for mb in result["peak_rss_mb"].values())
    out.append(
        f"| memory < 2 GB per instance (ours: < {RSS_LIMIT_MB:g} MB) | peak over every"
        f" process {peak} MB ({mark[all(v['rss_under_300mb'].values())]}) | | |"
    )
    return "\n".join(out)


def ratio_verdicts(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each issue ratio of one run: {name: {value, bound, better, met}}; value and met are
    None when a side was not measured at that level."""
    out: dict[str, dict[str, Any]] = {}
    for t in RATIO_TARGETS:
        c = str(t.connections)
        b = str(t.bottom_connections or t.connections)
        value = _ratio(runs.get(t.top, {}).get(c), runs.get(t.bottom, {}).get(b), t.figure)
        out[t.name] = {
            "value": value,
            "bound": round(t.bound, 4),
            "better": t.better,
            "met": None if value is None else t.met(value),
        }
    return out


def ratio_table(verdict: dict[str, dict[str, Any]]) -> str:
    mark = {True: "met", False: "**not met**", None: "-"}
    lines = ["| issue ratio | measured | target | verdict |", "|---|---|---|---|"]
    for name, row in verdict.items():
        bound = (">= " if row["better"] == "higher" else "<= ") + f"{row['bound']:g}"
        lines.append(f"| {name} | {_fmt(row['value'], '.3f')} | {bound} | {mark[row['met']]} |")
    return "\n".join(lines)


def full_markdown(result: dict[str, Any]) -> str:
    ratios = ratio_table(ratio_verdicts(result["runs"]))
    return f"{markdown(result)}\n\n{ratios}\n\n{seed_table(result)}"
