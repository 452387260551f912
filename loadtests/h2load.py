"""h2load (nghttp2's load generator, HTTP/1.1 mode) as the latency meter of GET runs.

    run_h2load(url, connections=100, duration=8, token=key, ids=[...], timeout=5)

Why not wrk: on this 2-core host Debian's wrk 4.1 reports latencies that cannot have happened
when it shares the CPUs with a saturated server. Against a plain uvloop server that answers
every request after 0.1 ms of work (8,200 req/s at 150 connections), wrk said mean 39 ms and
p99 735 ms, where Little's law bounds the mean by 150 / 8,200 = 18 ms and the server itself
saw every connection's next request within 100 ms of the previous one; h2load in the same
setting read mean 18.1 ms, p99 19 ms, max 970 ms, and agrees with Little's law. wrk's
throughput and status counts are right; its latency is not. So throughput and latency of
the single-target GET runs come from h2load's per-request log (start, status, microseconds
to the end of the response), and every result carries Little's bound beside its mean
(`latency_consistent`) so an impossible latency is visible in the results.

The learner ids are a fixed-seed list of request paths; h2load walks it in order on every
connection (clients start together, then drift apart). A response slower than `timeout`
seconds (the request deadline) counts as a timeout, as with wrk's --timeout; it is not cut
off (h2load 1.52's inactivity timeout, -N, aborts the run at 1,000 connections).
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["H2loadError", "figures", "parse_log", "parse_timings", "run_h2load", "uniform_ids"]

PERCENTILES = (50, 90, 99, 99.9)
# Request paths per run: h2load walks the list in order on each connection, then again.
ID_LIST_LENGTH = 50_000
_SUMMARY = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed,"
    r" (\d+) errored, (\d+) timeout"
)
_FINISHED = re.compile(r"finished in ([0-9.]+)(ms|s)")
# "time to 1st byte:    31.53ms       7.96s    1.24s ..." (min, max, mean, sd): per connection.
_TIMING = re.compile(r"^time (for connect|to 1st byte):\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


class H2loadError(RuntimeError):
    pass


def uniform_ids(n: int, *, seed: int, length: int = ID_LIST_LENGTH) -> list[int]:
    """Learner ids drawn uniformly from 1..n with a fixed seed."""
    rng = random.Random(seed)
    return [rng.randint(1, n) for _ in range(length)]


def parse_log(text: str) -> list[tuple[int, float]]:
    """(status, latency in ms) of each answered request of h2load's --log-file."""
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            out.append((int(parts[1]), int(parts[2]) / 1000))
    return out


def _ms(value: str) -> float:
    number = re.fullmatch(r"([0-9.]+)(us|ms|s)", value)
    if number is None:
        raise H2loadError(f"unreadable h2load time {value!r}")
    return round(float(number.group(1)) * _UNIT_MS[number.group(2)], 3)


def parse_timings(stdout: str) -> dict[str, dict[str, float]]:
    """Per-connection times from h2load's summary: `connect_ms` (TCP connect) and
    `first_byte_ms` (from the connection's start to its first response byte), min/max/mean.
    A connection the server is slow to accept shows here, not in any request's time on the
    server."""
    names = {"for connect": "connect_ms", "to 1st byte": "first_byte_ms"}
    return {
        names[m.group(1)]: {"min": _ms(m.group(2)), "max": _ms(m.group(3)), "mean": _ms(m.group(4))}
        for m in _TIMING.finditer(stdout)
    }


def _pct(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, min(len(sorted_ms), -(-len(sorted_ms) * p // 100)))
    return round(sorted_ms[int(rank) - 1], 2)


def _latency(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    s = sorted(ms)
    return {
        **{f"p{p:g}": _pct(s, p) for p in PERCENTILES},
        "mean": round(sum(s) / len(s), 2),
        "max": round(s[-1], 2),
    }


def figures(
    answered: list[tuple[int, float]],
    *,
    connections: int,
    seconds: float,
    timeouts: int,
    errored: int,
) -> dict[str, Any]:
    """The figures of one run, in the shape wrk.py's results have (so reports take either),
    plus latency by status class and Little's bound on the mean."""
    statuses = Counter(status for status, _ in answered)
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    shed = statuses.get(503, 0)
    requests = len(answered)
    rps = requests / seconds if seconds > 0 else 0.0
    # Little's law: `connections` requests always outstanding bound the mean latency.
    bound = connections / rps * 1000 if rps else None
    latency = _latency([ms for _, ms in answered])
    by_class: dict[str, list[float]] = {}
    for status, ms in answered:
        by_class.setdefault(f"{status // 100}xx" if status != 503 else "503", []).append(ms)
    return {
        "connections": connections,
        "seconds": round(seconds, 2),
        "requests": requests,
        "rps": round(rps, 1),
        "ok_rps": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ok": ok,
        "shed_503": shed,
        "other": requests - ok - shed,
        "non_2xx": requests - ok,
        "socket_errors": {"connect": 0, "read": errored, "write": 0, "timeout": timeouts},
        "socket_errors_total": timeouts + errored,
        "latency_ms": {**latency, "little_bound": None if bound is None else round(bound, 2)},
        "latency_ms_by_status": {k: _latency(v) for k, v in sorted(by_class.items())},
        "latency_consistent": bound is None or not latency or latency["mean"] <= bound * 1.05 + 0.5,
        "meter": "h2load",
    }


def run_h2load(
    url: str,
    *,
    connections: int,
    duration: float,
    token: str,
    ids: Sequence[int],
    path: str = "/v1/learners/%d/weaknesses",
    threads: int = 2,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """One bounded h2load run of GETs of `path` % id for each id in order, then again."""
    binary = shutil.which("h2load")
    if binary is None:
        raise H2loadError("h2load is not installed (apt-get install nghttp2-client)")
    base = url.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="skillcoach-h2load-") as tmp:
        uris, log = Path(tmp) / "uris", Path(tmp) / "log"
        uris.write_text("".join(f"{base}{path % i}\n" for i in ids))
        cmd = [
            binary,
            "--h1",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-D{max(1, round(duration))}",
            "-H",
            f"authorization: Bearer {token}",
            "-i",
            str(uris),
            f"--log-file={log}",
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + timeout + 60, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise H2loadError(f"h2load did not finish: {base} c={connections}") from exc
        summary = _SUMMARY.search(proc.stdout)
        finished = _FINISHED.search(proc.stdout)
        if proc.returncode != 0 or summary is None or finished is None or not log.exists():
            raise H2loadError(f"h2load exited {proc.returncode}:\n{proc.stdout[-1500:]}"
                              f"\n{proc.stderr[-1500:]}")  # fmt: skip
        answered = parse_log(log.read_text())
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    late = [a for a in answered if a[1] > timeout * 1000]
    return figures(
        [a for a in answered if a[1] <= timeout * 1000],
        connections=connections,
        seconds=seconds,
        timeouts=len(late) + int(summary.group(7)),
        errored=int(summary.group(6)),
    ) | parse_timings(proc.stdout)
