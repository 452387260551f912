"""Helpers of the cache benchmark (loadtests/bench_cache.py), shared with the check and the
suite: Redis and the cluster on free loopback ports, the bare endpoint, reading learners once
(warming), the hit-only throughput rounds, the Zipf wrk run, cache counters from /metrics,
and a py-spy summary of a replica under load."""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import redis as redis_client

from loadtests import wrk
from loadtests.h2load import run_h2load, uniform_ids
from loadtests.harness import (
    Scrape,
    Target,
    scrape,
    spawn,
    wait_quiet,
    wait_ready,
    with_server_cpu,
)
from skillcoach_devstack.processes import free_port
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes, free_base_port

__all__ = [
    "BARE",
    "CLUSTER",
    "OFF",
    "PY_SPY",
    "REDIS",
    "body",
    "cache_counts",
    "delta",
    "flush_cluster",
    "hot_throughput",
    "id_ranges",
    "py_spy_top",
    "read_each",
    "run_zipf",
    "start_bare",
    "start_redis",
    "summarize_rounds",
]

# The servers of the hit-only throughput (the names in the results).
BARE, REDIS, CLUSTER, OFF = "bare", "cached-redis", "cached-cluster", "cache-off"

ZIPF_LUA = Path(__file__).with_name("zipf.lua")
# The venv's own (requirements/dev): beside the interpreter running the benchmark.
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
PERMUTATION_SEED = 20261127  # rank -> learner id: the same permutation in every run


def start_redis(tmp: Path) -> tuple[RedisServer, RedisClusterNodes]:
    """A standalone server and a 6-node cluster, as tests/fixtures_services.py starts them
    (cluster ports and their bus ports below the ephemeral range, a retry on a lost race)."""
    server = RedisServer(port=free_port(), data_dir=tmp / "redis")
    try:
        server.start(timeout=10)
    except Exception:
        server.stop()
        raise
    for attempt in range(3):
        base = free_base_port()
        nodes = RedisClusterNodes(base_port=base, data_dir=tmp / f"cluster-{attempt}")
        try:
            nodes.start(timeout=30)
            return server, nodes
        except Exception:
            nodes.stop()
    server.stop()
    raise RuntimeError("the Redis Cluster did not start in 3 attempts")


def flush_cluster(nodes: RedisClusterNodes) -> None:
    for port in nodes.masters():
        client = redis_client.Redis(port=port, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()


def id_ranges(url: str) -> dict[str, int]:
    """Learner count (ids must be 1..N) and the exercise id range (contiguous)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT (SELECT min(id) FROM learners), (SELECT max(id) FROM learners),"
                " (SELECT count(*) FROM learners), (SELECT min(id) FROM exercises),"
                " (SELECT max(id) FROM exercises), (SELECT count(*) FROM exercises)"
            )
            lmin, lmax, lcount, emin, emax, ecount = cur.fetchone() or (None,) * 6
    finally:
        conn.close()
    if lmin != 1 or lmax != lcount or emax - emin + 1 != ecount:
        raise RuntimeError("learner ids must be 1..N and exercise ids contiguous")
    return {"learners": lcount, "ex_min": emin, "ex_max": emax}


def _get(conn: http.client.HTTPConnection, learner: int, token: str) -> tuple[int, bytes]:
    auth = {"Authorization": f"Bearer {token}"}
    conn.request("GET", f"/v1/learners/{learner}/weaknesses", headers=auth)
    response = conn.getresponse()
    return response.status, response.read()


def body(port: int, learner: int, token: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return _get(conn, learner, token)[1]
    finally:
        conn.close()


def start_bare(
    name: str, sized_by: Target, key: str, env: dict[str, str], logdir: Path, learners: int = 50
) -> tuple[Target, int]:
    """The bare endpoint (loadtests/bare_app.py), its body given as many skill entries as the
    real answers of learners 1..`learners` have on average on `sized_by`; started and ready.
    Returns it and that entry count."""
    sizes = [len(json.loads(body(sized_by.port, i, key))["skills"]) for i in range(1, learners + 1)]
    skills = max(1, round(sum(sizes) / len(sizes)))
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.bare_app", "--port", str(port), "--skills", str(skills)]
    bare = spawn(name, cmd, env, port, logdir)
    wait_ready(bare, "/healthz")
    return bare, skills


def read_each(port: int, ids: list[int], token: str, workers: int = 8) -> dict[str, int]:
    """GET each learner's weaknesses once over `workers` keep-alive connections."""

    def work(chunk: list[int]) -> Counter[str]:
        counts: Counter[str] = Counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for i in chunk:
                counts[str(_get(conn, i, token)[0])] += 1
        finally:
            conn.close()
        return counts

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(work, [ids[w::workers] for w in range(workers)]))
    return dict(sum(parts, Counter()))


def run_zipf(
    url: str,
    *,
    token: str,
    ids: dict[str, int],
    seed: int,
    duration: float,
    connections: int,
    exponent: float,
    write_fraction: float,
    timeout: float,
) -> dict[str, Any]:
    """wrk with wrk.py's LUA (status counts, JSON summary) and zipf.lua's init/request."""
    extra = [ids["learners"], 1, token, seed, exponent, write_fraction]
    extra += [ids["ex_min"], ids["ex_max"], PERMUTATION_SEED]
    return wrk.run_script(
        url,
        wrk.LUA + "\n" + ZIPF_LUA.read_text(),
        [str(x) for x in extra],
        connections=connections,
        duration=duration,
        timeout=timeout,
    )


def hot_throughput(
    targets: list[Target], args: argparse.Namespace, key: str
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The hit-only load: each target reads each of the args.hot learners once, then wrk
    (h2load) reads those ids at args.connections for args.duration s, args.rounds rounds (the order
    reversed every other round); the hit ratio of the cached targets from /metrics around
    each run. Returns the runs per target and each target's body size."""
    hot = list(range(1, args.hot + 1))
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    body_bytes = {t.name: len(body(t.port, 1, key)) for t in targets}
    for t in targets:
        warm = read_each(t.port, hot, key)
        print(f"  {t.name:>15} read the {args.hot} hot learners once: {warm}", flush=True)
        wrk.run_wrk(t.url, connections=args.connections, duration=3, token=key, learners=args.hot)
        wait_quiet(t.url)
    for r in range(args.rounds):
        for t in targets if r % 2 == 0 else targets[::-1]:
            cached = t.name in (REDIS, CLUSTER)
            before = cache_counts(scrape(t)) if cached else None

            def drive(t: Target = t, r: int = r) -> dict[str, Any]:
                return run_h2load(
                    t.url,
                    connections=args.connections,
                    duration=args.duration,
                    token=key,
                    ids=uniform_ids(args.hot, seed=42 + r),
                    timeout=args.timeout,
                )

            res = with_server_cpu(t, drive)
            if before is not None:
                res["cache"] = delta(before, cache_counts(scrape(t)))
            res["quiesce_s"] = wait_quiet(t.url)
            runs[t.name].append(res)
            lat = res["latency_ms"]
            print(
                f"  round {r + 1} {t.name:>15} {res['ok_rps']:>8} 2xx/s p50 {lat['p50']} ms"
                f" p99 {lat['p99']} ms statuses {res['statuses']}"
                f" hits {res.get('cache', {}).get('hit_ratio', '-')}"
                f" cpu {res['server_cpu']['ms_per_request']} ms/req",
                flush=True,
            )
    return runs, body_bytes


def summarize_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's hot_throughput rounds: means, worst p99, error totals, hit ratios."""

    def mean(xs: list[float]) -> float:
        return round(sum(xs) / len(xs), 1)

    return {
        "ok_rps": mean([r["ok_rps"] for r in runs]),
        "ok_rps_rounds": [r["ok_rps"] for r in runs],
        "p50_ms": mean([r["latency_ms"]["p50"] for r in runs]),
        "p99_ms": mean([r["latency_ms"]["p99"] for r in runs]),
        "p99_ms_max": max(r["latency_ms"]["p99"] for r in runs),
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors_total"] for r in runs),
        "hit_ratio": [r["cache"]["hit_ratio"] for r in runs if "cache" in r] or None,
    }


def cache_counts(samples: Scrape, kind: str = "weaknesses") -> dict[str, float]:
    """The cache counters of one /metrics scrape (harness.scrape)."""
    if isinstance(samples, str):
        raise RuntimeError(samples)
    out = {
        name: samples.get(f'skillcoach_cache_{name}_total{{kind="{kind}"}}', 0.0)
        for name in ("hits", "misses", "stale", "lock_waits", "computations")
    }
    for name in ("errors", "skipped"):  # errors carry op and reason labels: summed
        metric = f"skillcoach_cache_{name}_total"
        out[name] = sum(v for k, v in samples.items() if k.partition("{")[0] == metric)
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d: dict[str, Any] = {k: int(after[k] - before[k]) for k in before}
    lookups = d["hits"] + d["misses"]
    d["hit_ratio"] = round(d["hits"] / lookups, 4) if lookups else None
    # Misses that found an entry a write had invalidated (stale), set apart: with
    # invalidate-on-write, every write followed by a read of that learner costs one.
    rest = lookups - d["stale"]
    d["hit_ratio_excluding_stale"] = round(d["hits"] / rest, 4) if rest else None
    return d


def py_spy_top(pid: int, load: Callable[[], dict[str, Any]], seconds: int = 8) -> dict[str, Any]:
    """py-spy record (raw, 200 Hz, per thread) on pid while load() runs. The event loop's
    thread (MainThread) serves every hit, so its frames are summarised: the top frames by own
    time and by inclusive time, as percentages of its samples (idle is not sampled)."""
    with tempfile.TemporaryDirectory(prefix="skillcoach-pyspy-") as tmp:
        out = Path(tmp) / "raw.txt"
        cmd = [PY_SPY, "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw"]
        spy = subprocess.Popen(
            [*cmd, "--threads", "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            result = load()
        finally:
            spy.wait(seconds + 30)
        lines = out.read_text().splitlines() if out.exists() else []
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()  # own time by the leaf frame's top-level package
    total = other = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        thread, _, rest = stack.partition(";")
        n = int(count)
        if not thread.endswith("MainThread"):
            other += n  # worker threads (database calls), not the hit path
            continue
        frames = rest.split(";")
        total += n
        own[frames[-1]] += n
        packages[frames[-1].rpartition("(")[2].split("/", 1)[0]] += n
        for f in set(frames):
            inclusive[f] += n

    def top(c: Counter[str], k: int = 40) -> list[tuple[str, float]]:
        return [(f, round(100 * n / max(total, 1), 1)) for f, n in c.most_common(k)]

    return {
        "main_thread_samples": total,
        "other_thread_samples": other,
        "samples_possible": seconds * 200,
        "load": result,
        "self_pct": top(own),
        "self_pct_by_package": top(packages, 12),
        "inclusive_pct": top(inclusive),
    }
