"""PNG plots of a suite run (loadtests/bench_suite.py), written beside its JSON.

<base>-concurrency.png: 2xx throughput and p99 against connections, one line per target.
<base>-timeline.png: over the run's time, each skillcoach process's pool utilization
(checked out / capacity) and waiters, the cache hit ratio of the cached processes, and every
process's resident memory; the background marks which target was under load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from loadtests.sampler import cache_increments, pool_utilization

__all__ = ["concurrency_plot", "timeline_plot", "write_all"]

COLORS = {
    "bare": "#7f7f7f",
    "naive": "#d62728",
    "db-ceiling": "#ff7f0e",
    "cache-off": "#1f77b4",
    "cached": "#2ca02c",
    "stack": "#9467bd",
}


REPLICA_STYLES = ("--", ":", "-.")


def _color(name: str) -> str:
    if name.startswith("replica-"):
        return COLORS["stack"]
    return COLORS.get(name, "#17becf")


def _broken(points: list[tuple[float, float]], gap: float) -> tuple[list[float], list[float]]:
    """x and y lists with a NaN wherever consecutive points are more than `gap` apart, so a
    line does not bridge the time a process was not under load."""
    xs: list[float] = []
    ys: list[float] = []
    for t, y in points:
        if xs and t - xs[-1] > gap:
            xs.append(float("nan"))
            ys.append(float("nan"))
        xs.append(t)
        ys.append(y)
    return xs, ys


def concurrency_plot(result: dict[str, Any], path: Path) -> Path:
    fig, (tput, p99) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, by_c in result["runs"].items():
        pts = sorted(
            (int(c), r["ok_rps"], r["latency_ms"]["p99"])
            for c, r in by_c.items()
            if "failed" not in r
        )
        if not pts:
            continue
        xs = [p[0] for p in pts]
        tput.plot(xs, [p[1] for p in pts], "o-", color=_color(name), label=name)
        p99.plot(xs, [p[2] for p in pts], "o-", color=_color(name), label=name)
    for ax, title, ylabel in (
        (tput, "2xx throughput", "requests / s (log)"),
        (p99, "p99 latency", "ms (log)"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("connections (wrk, log)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    tput.set_yscale("log")
    p99.set_yscale("log")
    tput.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(
        f"skillcoach suite {result['at']} - {m['cores']} cores, {m['cpu']} (shared machine:"
        " compare lines, not absolute values)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _phase_spans(result: dict[str, Any]) -> list[tuple[float, float, str]]:
    """(start, end, "target c=N") of every measured run, from the runner's own clock."""
    spans = [
        (r["window_s"][0], r["window_s"][1], f"{name} c={c}")
        for name, by_c in result["runs"].items()
        for c, r in by_c.items()
        if "window_s" in r
    ]
    return sorted(spans)


def _shade(ax: Axes, spans: list[tuple[float, float, str]], label_top: bool) -> None:
    for start, end, phase in spans:
        name, _, c = phase.partition(" c=")
        ax.axvspan(start, end, color=_color(name), alpha=0.12, lw=0)
        if label_top:
            ax.text(
                (start + end) / 2,
                1.01,
                c,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=6,
            )


def timeline_plot(result: dict[str, Any], path: Path) -> Path:
    samples: list[dict[str, Any]] = result["timeline"]
    procs = sorted({p for s in samples for p in s["procs"]})
    scraped = [p for p in procs if any(s["procs"].get(p, {}).get("metrics") for s in samples)]
    fig, (pool, hits, rss) = plt.subplots(3, 1, figsize=(13, 10), sharex=True)
    spans = _phase_spans(result)
    for ax in (pool, hits, rss):
        _shade(ax, spans, label_top=ax is pool)
    waiters = pool.twinx()
    replicas = [p for p in scraped if p.startswith("replica-")]
    for p in scraped:
        ts, util, wait = [], [], []
        for s in samples:
            m = s["procs"].get(p, {}).get("metrics")
            if not m:
                continue
            ts.append(s["t"])
            util.append(100 * pool_utilization(m))
            wait.append(m.get("skillcoach_db_pool_waiters", 0.0))
        style = "-" if not p.startswith("replica-") else REPLICA_STYLES[replicas.index(p) % 3]
        pool.plot(ts, util, style, color=_color(p), lw=1.2, label=p)
        waiters.plot(ts, wait, style, color=_color(p), lw=0.6, alpha=0.5)
    pool.set_ylabel("pool checked out / capacity (%)")
    pool.set_ylim(0, 105)
    waiters.set_ylabel("waiters (thin lines)")
    pool.legend(fontsize=7, loc="upper left")
    pool.set_title("DB pool utilization (numbers on top: connections of the run)", fontsize=9)
    gap = 3 * float(result.get("params", {}).get("sample_interval", 1.0))
    for p in scraped:
        inc = [(t, 100 * h / n) for t, h, n, _ in cache_increments(samples, p) if n > 0]
        if inc:
            xs, ys = _broken(inc, gap)
            hits.plot(xs, ys, ".-", color=_color(p), lw=0.8, ms=3, label=p)
        # Where the breaker was open (Redis skipped): marked at the bottom of the panel.
        opened = [
            s["t"]
            for s in samples
            if (s["procs"].get(p, {}).get("metrics") or {}).get("skillcoach_cache_breaker_state")
        ]
        if opened:
            hits.plot(opened, [2] * len(opened), "x", color=_color(p), ms=5,
                      label=f"{p}: breaker open")  # fmt: skip
    hits.axhline(80, color="k", lw=0.6, ls="--")
    hits.text(0.0, 80.5, " seed target 80%", fontsize=7, transform=hits.get_yaxis_transform())
    hits.set_ylabel("cache hit ratio per interval (%)")
    hits.set_ylim(0, 102)
    hits.legend(fontsize=7, loc="lower left")
    for p in procs:
        pts = [(s["t"], s["procs"][p].get("rss_mb")) for s in samples if p in s["procs"]]
        pts = [(t, mb) for t, mb in pts if mb is not None]
        if pts:
            rss.plot([t for t, _ in pts], [mb for _, mb in pts], color=_color(p), lw=1, label=p)
    rss.set_ylabel("resident memory (MB)")
    rss.set_xlabel("seconds since the first run")
    rss.legend(fontsize=7, loc="upper left", ncol=2)
    legend = [Patch(color=c, alpha=0.25, label=n) for n, c in COLORS.items()]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8,
               title="background: target under load", title_fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_all(result: dict[str, Any], base: Path) -> list[Path]:
    """base: the result file's path without its suffix."""
    return [
        concurrency_plot(result, base.with_name(f"{base.name}-concurrency.png")),
        timeline_plot(result, base.with_name(f"{base.name}-timeline.png")),
    ]
