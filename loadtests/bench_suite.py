"""Every target side by side at 1, 20, 50, 100 and 1,000 connections: `make bench`.

    python -m loadtests suite [--duration 8] [--replicas 2] [--learners 5000] [--hot 1000]

One run, one database. `skillcoach stack up --replicas N` brings the multi-replica local stack
up in a scratch root on free ports (loadtests/local_stack.py: HAProxy -> N replicas ->
PgBouncer, cached on a 6-node Redis Cluster, demo data seeded and a model trained); its
database serves every other target too:

(a) bare        the bare Starlette JSON endpoint, body sized like a real answer (the ceiling)
(b) naive       the seed's setup: sync session in async def, pool 5/10/30, direct to PostgreSQL
(b') db-ceiling the same single SELECT the uncached read runs, psycopg2 in 16 threads, through
                cache-off's PgBouncer, nothing else (loadtests/db_ceiling_app.py)
(c) cache-off   one skillcoach replica through its own PgBouncer, cache off
(d) cached      one skillcoach replica cached on the stack's cluster, every hot learner read
                once first (warm)
(e) stack       Zipf(1.1) reads over every learner through the stack's HAProxy, while two
                more connections post attempts the whole time (loadtests/zipf.lua, all
                POSTs: each rewrites that learner's cache entries); every learner read once
                first

(a)-(d) read the weaknesses of learner ids drawn uniformly from 1..--hot. At each level the
order of (a)-(d) alternates (db-ceiling next to cache-off), then (e); each run is h2load (the
latency meter: loadtests/h2load.py says why not wrk) for --duration s, and the next run waits
until the target answers /healthz within 100 ms again.
A sampler (loadtests/sampler.py) reads /metrics of every skillcoach process and /proc of every
process each second throughout.

Writes loadtests/results/suite-<stamp>.json, .md (the tables) and -*.png (loadtests/plots.py:
throughput and p99 against connections; pool utilization and hit ratio over time).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests import cache_tools as tools
from loadtests import plots, proxy
from loadtests.h2load import ID_LIST_LENGTH, H2loadError, run_h2load, uniform_ids
from loadtests.harness import (
    Target,
    clean_env,
    raise_nofile,
    serve_cmd,
    spawn,
    spawn_ceiling,
    spawn_naive,
    stop,
    wait_quiet,
    wait_ready,
    with_server_cpu,
)
from loadtests.local_stack import LocalStack, start_stack, stop_stack
from loadtests.recording import budget, record, run_all
from loadtests.sampler import Sampler, cache_increments, peak_rss_mb, pool_utilization
from loadtests.suite_report import (
    BARE,
    CACHED,
    CEILING,
    DESCRIPTION,
    NAIVE,
    OFF,
    STACK,
    TARGETS,
    full_markdown,
    markdown,
    verdicts,
)
from loadtests.wrk import WrkError, run_wrk
from loadtests.zipf_sampler import ZipfLearners
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_ports

__all__ = [
    "BARE",
    "CACHED",
    "CEILING",
    "LEVELS",
    "NAIVE",
    "OFF",
    "STACK",
    "TARGETS",
    "full_markdown",
    "main",
    "markdown",
    "parse_args",
    "run",
    "verdicts",
]

LEVELS = (1, 20, 50, 100, 1000)
# Connections posting attempts beside the stack's readers, at every level.
WRITERS = 2


def zipf_ids(n: int, exponent: float, *, seed: int) -> list[int]:
    zipf = ZipfLearners.build(first_id=1, n=n, exponent=exponent)
    rng = random.Random(seed)
    return [zipf.draw(rng) for _ in range(ID_LIST_LENGTH)]


def _serve(name: str, env: dict[str, str], tmp: Path) -> Target:
    port, metrics_port = free_ports(2)
    sc_env = env | {
        "SKILLCOACH_PORT": str(port),
        "SKILLCOACH_METRICS_PORT": str(metrics_port),
        "SKILLCOACH_ENVIRONMENT": "dev",
        "SKILLCOACH_LOG_LEVEL": "warning",
    }
    return spawn(name, serve_cmd(), sc_env, port, tmp)


def _start_targets(stack: LocalStack, bouncer: PgBouncer, tmp: Path, hot: int) -> dict[str, Target]:
    env = clean_env()
    db = bouncer.url("postgres", stack.database)
    off = _serve(
        OFF, env | {"SKILLCOACH_DATABASE_URL": db, "SKILLCOACH_CACHE_ENABLED": "false"}, tmp
    )
    cached_env = env | {
        "SKILLCOACH_DATABASE_URL": db,
        "SKILLCOACH_CACHE_ENABLED": "true",
        "SKILLCOACH_REDIS_URL": stack.redis_url,
    }
    cached = _serve(CACHED, cached_env, tmp)
    naive = spawn_naive(NAIVE, stack.direct_url, env, tmp)
    ceiling = spawn_ceiling(CEILING, db, env, tmp)
    for t in (off, cached):
        wait_ready(t, "/readyz")
    for t in (naive, ceiling):
        wait_ready(t, "/healthz")
    bare, _ = tools.start_bare(BARE, off, stack.key, env, tmp, learners=min(hot, 50))
    return {BARE: bare, NAIVE: naive, CEILING: ceiling, OFF: off, CACHED: cached}


def _one_run(
    name: str,
    c: int,
    drive: Callable[[], dict[str, Any]],
    url: str,
    sampler: Sampler,
) -> dict[str, Any]:
    sampler.phase(f"{name} c={c}")
    t0 = time.monotonic()
    try:
        result = drive()
    except (
        WrkError,
        H2loadError,
    ) as exc:  # recorded, not fatal: the other targets still get measured
        result = {"connections": c, "failed": str(exc)[-1500:]}
    started_at = round(t0 - sampler.t0, 2)
    result["window_s"] = [started_at, round(time.monotonic() - sampler.t0, 2)]
    sampler.phase(f"{name} c={c} settling")
    result["quiesce_s"] = wait_quiet(url)
    sampler.phase("idle")
    if "failed" in result:
        print(f"  {name:>10} c={c:<5} FAILED: {result['failed'][:200]}", flush=True)
    else:
        lat = result["latency_ms"]
        print(
            f"  {name:>10} c={c:<5} {result['ok_rps']:>9,.0f} 2xx/s  mean {lat['mean']} ms"
            f"  p99 {lat['p99']} ms  statuses {result['statuses']}"
            f"  socket errors {result['socket_errors_total']}",
            flush=True,
        )
    return result


def _measure_all(
    targets: dict[str, Target],
    stack: LocalStack,
    ids: dict[str, int],
    args: argparse.Namespace,
    sampler: Sampler,
) -> dict[str, dict[str, Any]]:
    key = stack.key
    runs: dict[str, dict[str, Any]] = {name: {} for name in TARGETS}
    single = [targets[n] for n in (BARE, NAIVE, CEILING, OFF, CACHED)]
    for i, c in enumerate(args.levels):
        for t in single if i % 2 == 0 else single[::-1]:

            def drive(t: Target = t, c: int = c) -> dict[str, Any]:
                return with_server_cpu(
                    t,
                    lambda: run_h2load(
                        t.url,
                        connections=c,
                        duration=args.duration,
                        token=key,
                        ids=uniform_ids(args.hot, seed=42 + c),
                        timeout=args.timeout,
                    ),
                )

            runs[t.name][str(c)] = _one_run(t.name, c, drive, t.url, sampler)

        def zipf(c: int = c) -> dict[str, Any]:
            writes: dict[str, Any] = {}

            def write() -> None:
                writes.update(
                    tools.run_zipf(
                        stack.url,
                        token=key,
                        ids=ids,
                        seed=11 + c,
                        duration=args.duration,
                        connections=WRITERS,
                        exponent=args.exponent,
                        write_fraction=1.0,
                        timeout=args.timeout,
                    )
                )

            writer = threading.Thread(target=write, name="stack-writer", daemon=True)
            writer.start()
            try:
                reads = run_h2load(
                    stack.url,
                    connections=c,
                    duration=args.duration,
                    token=key,
                    ids=zipf_ids(ids["learners"], args.exponent, seed=11 + c),
                    timeout=args.timeout,
                )
            finally:
                writer.join(args.duration + args.timeout + 60)
            reads["writes"] = writes
            return reads

        runs[STACK][str(c)] = _one_run(STACK, c, zipf, stack.url, sampler)
    return runs


def _pool_peaks(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per skillcoach process and run phase: peak pool utilization and waiters."""
    out: dict[str, dict[str, Any]] = {}
    for s in samples:
        for proc, data in s["procs"].items():
            m = data.get("metrics")
            if not m or s["phase"] == "idle":
                continue
            util = pool_utilization(m)
            phase = s["phase"].removesuffix(" settling")
            row = out.setdefault(proc, {}).setdefault(
                phase, {"peak_utilization": 0.0, "peak_waiters": 0.0, "samples": 0}
            )
            row["peak_utilization"] = round(max(row["peak_utilization"], util), 3)
            row["peak_waiters"] = max(row["peak_waiters"], m.get("skillcoach_db_pool_waiters", 0))
            row["samples"] += 1
    return out


def _hit_ratios(runs: dict[str, dict[str, Any]], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Hit ratio of the cached targets per run, from the sampled counters inside its window."""
    out: dict[str, Any] = {}
    procs = {p for s in samples for p in s["procs"]}
    for name, prefix in ((CACHED, CACHED), (STACK, "replica-")):
        series = [
            pt for p in sorted(procs) if p.startswith(prefix) for pt in cache_increments(samples, p)
        ]
        for c, r in runs[name].items():
            # The scrape just after the run's end still counts its last interval.
            lo, hi = r["window_s"][0], r["window_s"][1] + 1.0
            hits = sum(h for t, h, _, _ in series if lo < t <= hi)
            lookups = sum(n for t, _, n, _ in series if lo < t <= hi)
            out.setdefault(name, {})[c] = round(hits / lookups, 4) if lookups else None
    return out


def _tracebacks(logs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Per process log: how many tracebacks it printed, and the last one's final lines. A
    server error under load is a bug, whatever the status the client saw."""
    out: dict[str, dict[str, Any]] = {}
    for name, path in logs.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        count = text.count("Traceback (most recent call last)")
        if count:
            last = text[text.rindex("Traceback (most recent call last)") :].splitlines()
            out[name] = {"count": count, "last": "\n".join(last[-12:])}
    return out


@contextlib.contextmanager
def _cleanup() -> Iterator[list[Callable[[], object]]]:
    """Steps registered as resources are made; undone last-made first (see run_all)."""
    steps: list[Callable[[], object]] = []
    try:
        yield steps
    finally:
        run_all(reversed(steps))


def _versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else "?"

    return {
        "python": platform.python_version(),
        "wrk": first_line(["wrk", "--version"]),
        "h2load": first_line(["h2load", "--version"]),
        "pgbouncer": first_line(["/usr/sbin/pgbouncer", "--version"]),
        "haproxy": first_line(["haproxy", "-v"]),
        "redis": first_line(["redis-server", "--version"]),
        "postgresql": first_line(["psql", "--version"]),
    }


def _machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": platform.freedesktop_os_release().get("PRETTY_NAME", "?")
        if hasattr(platform, "freedesktop_os_release")
        else "?",
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="skillcoach-bench-suite-"))
    with _cleanup() as cleanup:
        cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
        print(f"stack up: {args.replicas} replicas, {args.learners} learners ...", flush=True)
        stack = start_stack(tmp / "root", replicas=args.replicas, learners=args.learners)
        cleanup.append(lambda: stop_stack(stack))
        stack_up_s = round(time.monotonic() - started, 1)
        ids = tools.id_ranges(stack.direct_url.replace("+psycopg2", ""))
        bouncer = proxy.start_pgbouncer(stack.database)
        cleanup.append(lambda: proxy.stop_pgbouncer(bouncer))
        targets: dict[str, Target] = {}
        cleanup.append(lambda: run_all([functools.partial(stop, t) for t in targets.values()]))
        targets |= _start_targets(stack, bouncer, tmp, args.hot)
        hot = list(range(1, args.hot + 1))
        warm = {CACHED: tools.read_each(targets[CACHED].port, hot, stack.key)}
        lb_port = int(stack.url.rsplit(":", 1)[1])
        warm[STACK] = tools.read_each(lb_port, list(range(1, ids["learners"] + 1)), stack.key)
        for t in targets.values():  # connections, key cache, numpy/scipy code paths
            run_wrk(t.url, connections=20, duration=2, token=stack.key, learners=args.hot)
            wait_quiet(t.url)
        replica_pids = {
            f"replica-{url.rsplit(':', 1)[1]}": pid for url, pid in stack.replica_pids().items()
        }
        metrics = {OFF: targets[OFF].metrics_url, CACHED: targets[CACHED].metrics_url} | {
            f"replica-{url.rsplit(':', 1)[1]}": metrics_url
            for url, metrics_url in zip(
                stack.replica_urls(), stack.replica_metrics_urls(), strict=True
            )
        }
        pids = {n: t.proc.pid for n, t in targets.items()} | replica_pids
        ready_s = round(time.monotonic() - started, 1)
        print(f"ready after {ready_s:.0f} s (stack up {stack_up_s:.0f} s); measuring", flush=True)
        sampler = Sampler(metrics, pids, interval=args.sample_interval).start()
        try:
            runs = _measure_all(targets, stack, ids, args, sampler)
        finally:
            samples = sampler.stop()
        peak_rss = {n: peak_rss_mb(pid) for n, pid in pids.items() if pid is not None}
        logs = {n: t.log for n, t in targets.items()} | {
            f"replica-{p.stem.removeprefix('api-')}": p
            for p in sorted((stack.root / ".stack" / "logs").glob("api-*.log"))
        }
        tracebacks = _tracebacks(logs)
        exited: dict[str, int | str | None] = {
            n: t.proc.poll() for n, t in targets.items() if t.proc.poll() is not None
        }
        exited |= {n: "gone" for n, pid in stack.replica_pids().items() if pid is None}
    result: dict[str, Any] = {
        "kind": "suite",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine() | {"nofile": nofile},
        "versions": _versions(),
        "params": vars(args) | {"levels": list(args.levels)},
        "targets": DESCRIPTION,
        "setup": {
            "stack_up_s": stack_up_s,
            "ready_s": ready_s,
            "ids": ids,
            "warm": warm,
            "replicas": args.replicas,
        },
        "runs": runs,
        "pool": _pool_peaks(samples),
        "hit_ratio": _hit_ratios(runs, samples),
        "peak_rss_mb": peak_rss,
        "exited_early": exited,
        "tracebacks": tracebacks,
        "timeline": samples,
        "wall_s": round(time.monotonic() - started, 1),
    }
    result["verdicts"] = verdicts(result)
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests suite")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    p.add_argument(
        "--levels",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=LEVELS,
        help="connection counts, comma-separated (default 1,20,50,100,1000)",
    )
    p.add_argument("--replicas", type=int, default=2, help="replicas of the local stack")
    p.add_argument("--learners", type=int, default=5000, help="demo learners the stack seeds")
    p.add_argument("--hot", type=int, default=1000, help="learner ids 1..N read by (a)-(d)")
    p.add_argument("--exponent", type=float, default=1.1, help="Zipf exponent of (e)")
    p.add_argument("--write-fraction", type=float, default=0.1, help="POST share of (e)")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="the request deadline (s): a response slower than this counts as a timeout",
    )
    p.add_argument("--sample-interval", type=float, default=1.0, help="seconds between scrapes")
    p.add_argument("--no-plots", action="store_true", help="JSON and markdown only")
    p.add_argument("--max-seconds", type=int, default=1500, help="abort (and clean up) after")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with budget(args.max_seconds):
        result = run(args)
    out = record("suite", result, full_markdown)
    out.with_suffix(".md").write_text(full_markdown(result) + "\n")
    if not args.no_plots:
        for path in plots.write_all(result, out.with_suffix("")):
            print(f"plot: {path}")
    return 0
