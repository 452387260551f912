"""What the servers report while the benchmark drives them: a time series.

A background thread reads every `interval` seconds, in parallel, each skillcoach process's
/metrics on its metrics port (pool size / checked out / waiters, cache hits and misses,
requests in flight, shed 503s) and every process's resident memory from /proc, and tags each
sample with the phase the runner announced (target and connection count). A scrape that does
not answer within the timeout is recorded as missing, not waited for: a replica loaded with
1,000 connections may answer late even on its metrics port, and a stalled sampler would blur
the series.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Sampler",
    "cache_increments",
    "parse_metrics",
    "peak_rss_mb",
    "pool_utilization",
    "rss_mb",
    "summarize",
]

# Gauges and counters worth a time series (label sets are summed per name).
WANTED = (
    "skillcoach_db_pool_size",
    "skillcoach_db_pool_capacity",
    "skillcoach_db_pool_checked_out",
    "skillcoach_db_pool_waiters",
    "skillcoach_cache_hits_total",
    "skillcoach_cache_misses_total",
    "skillcoach_cache_errors_total",
    "skillcoach_cache_fallthrough_total",
    "skillcoach_cache_skipped_total",
    "skillcoach_cache_breaker_state",
    "skillcoach_http_requests_in_flight",
    "skillcoach_http_shed_total",
    "skillcoach_http_gate_shed_total",
)
# Also kept per value of this label: why a fast-path read fell through is the question.
BY_LABEL = {"skillcoach_cache_fallthrough_total": "reason"}
HITS, MISSES = "skillcoach_cache_hits_total", "skillcoach_cache_misses_total"


def parse_metrics(text: str, wanted: tuple[str, ...] = WANTED) -> dict[str, float]:
    """Sum each wanted metric over its label sets (Prometheus text format), and keep those of
    BY_LABEL per label value too (`name{label="value"}`). Names are sample names: a counter's
    `_total` series, not its `_created` one; a histogram's `_bucket`, `_count` and `_sum` are
    separate names. Raises ValueError on text that does not parse."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
                label = BY_LABEL.get(sample.name)
                if label is not None and label in sample.labels:
                    out[f'{sample.name}{{{label}="{sample.labels[label]}"}}'] = sample.value
    return out


def _proc_kb(pid: int, field: str) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"{field}:\s+(\d+) kB", text)
    return round(int(m.group(1)) / 1024, 1) if m else None


def rss_mb(pid: int) -> float | None:
    return _proc_kb(pid, "VmRSS")


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's high-water mark of the process's resident set (VmHWM)."""
    return _proc_kb(pid, "VmHWM")


def _scrape(url: str, timeout: float) -> dict[str, float] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return parse_metrics(r.read().decode())
    except (OSError, urllib.error.URLError, ValueError):
        return None


class Sampler:
    """Start with `start()`, announce phases with `phase(label)`, `stop()` returns samples.

    metrics: process name -> the /metrics URL of a skillcoach process (on its metrics port);
    pids: process name -> pid, for memory (every target, skillcoach or not).
    """

    def __init__(
        self,
        metrics: Mapping[str, str],
        pids: Mapping[str, int | None],
        *,
        interval: float = 1.0,
        timeout: float = 2.0,
        max_samples: int = 5000,
    ) -> None:
        self._metrics = dict(metrics)
        self._pids = {k: v for k, v in pids.items() if v is not None}
        self._interval = interval
        self._timeout = timeout
        self._max = max_samples
        self._phase = "idle"
        self._samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._pool = ThreadPoolExecutor(max(1, len(self._metrics)), thread_name_prefix="scrape")
        self.t0 = 0.0

    def start(self) -> Sampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def phase(self, label: str) -> None:
        self._phase = label

    def _sample(self) -> dict[str, Any]:
        t = round(time.monotonic() - self.t0, 2)
        phase = self._phase
        futures = {
            n: self._pool.submit(_scrape, u, self._timeout) for n, u in self._metrics.items()
        }
        procs: dict[str, dict[str, Any]] = {}
        for name, pid in self._pids.items():
            procs[name] = {"rss_mb": rss_mb(pid)}
        for name, fut in futures.items():
            procs.setdefault(name, {})["metrics"] = fut.result()
        return {"t": t, "phase": phase, "procs": procs}

    def _run(self) -> None:
        while not self._stop.is_set() and len(self._samples) < self._max:
            started = time.monotonic()
            self._samples.append(self._sample())
            self._stop.wait(max(0.0, self._interval - (time.monotonic() - started)))

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(self._timeout * 2 + self._interval + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return list(self._samples)


def pool_utilization(metrics: dict[str, float]) -> float:
    """Checked-out connections as a share of the pool's capacity (size + overflow) in one
    scrape; 0 when the scrape has no pool."""
    cap = metrics.get("skillcoach_db_pool_capacity") or metrics.get("skillcoach_db_pool_size")
    return metrics.get("skillcoach_db_pool_checked_out", 0.0) / cap if cap else 0.0


def cache_increments(
    samples: list[dict[str, Any]], proc: str
) -> list[tuple[float, float, float, str]]:
    """(t, hits, lookups, phase): the cache counters' growth of one process between
    consecutive answered scrapes (a scrape that timed out merges into the next interval)."""
    out: list[tuple[float, float, float, str]] = []
    prev: dict[str, float] | None = None
    for s in samples:
        m = s["procs"].get(proc, {}).get("metrics")
        if m is None:
            continue
        if prev is not None:
            hits = m.get(HITS, 0.0) - prev.get(HITS, 0.0)
            misses = m.get(MISSES, 0.0) - prev.get(MISSES, 0.0)
            out.append((s["t"], hits, hits + misses, s["phase"]))
        prev = m
    return out


def summarize(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per process over the whole series: peak pool utilization (checked out / capacity),
    peak waiters, the hit ratio of all lookups, and how many scrapes answered."""
    out: dict[str, dict[str, Any]] = {}
    for proc in sorted({p for s in samples for p in s["procs"]}):
        answered = [m for s in samples if (m := s["procs"].get(proc, {}).get("metrics"))]
        if not answered:
            out[proc] = {"scrapes": 0}
            continue
        utils = [pool_utilization(m) for m in answered]
        inc = cache_increments(samples, proc)
        lookups = sum(n for _, _, n, _ in inc)
        out[proc] = {
            "scrapes": len(answered),
            "peak_pool_utilization": round(max(utils), 3),
            "peak_waiters": max(m.get("skillcoach_db_pool_waiters", 0.0) for m in answered),
            "hit_ratio": round(sum(h for _, h, _, _ in inc) / lookups, 4) if lookups else None,
            "cache_errors": answered[-1].get("skillcoach_cache_errors_total", 0.0)
            - answered[0].get("skillcoach_cache_errors_total", 0.0),
        }
    return out
