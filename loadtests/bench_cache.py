"""Cache hits against the framework's ceiling, and the hit ratio of a Zipf workload.

    python -m loadtests cache [--duration 10] [--rounds 2] [--profile auto|yes|no]

One run: a scratch database (10,000 learners, a model promoted, API keys), PgBouncer, a
standalone Redis and a 6-node Redis Cluster on free loopback ports, and four servers run the
same way (one uvicorn process, access log off): the bare Starlette endpoint
(loadtests/bare_app.py, its body sized like a real answer), skillcoach cached on Redis,
skillcoach cached on the cluster, skillcoach with the cache off (all three through PgBouncer).

(a) Throughput at 50 connections: each server first reads each of the --hot learner ids once
    (every later read is a hit), then wrk reads those ids for --duration s; --rounds rounds,
    the order reversed every other round. The hit ratio of each cached run comes from the
    /metrics counters around it.
(b) Zipf over every learner (loadtests/zipf.lua, exponent 1.1, fixed seeds, 10% POSTs of one
    attempt, which invalidate that learner) against skillcoach on the cluster: flush, a
    --zipf-warmup s warm-up, then --zipf-duration s measured; the hit ratio is delta hits /
    delta (hits + misses) of kind="weaknesses" over the measured run. Twice: from a cold
    cache (the brief's protocol, the verdict), and with the cache pre-filled by reading every
    learner once first (the steady state of a long-running service, whose TTL outlives
    the gaps between reads of even the rarest learner at this rate).

Writes loadtests/results/cache-<utc stamp>.json, prints markdown; cleans up in `finally`.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests import cache_tools as tools
from loadtests import proxy, wrk
from loadtests.cache_tools import BARE, CLUSTER, OFF, REDIS
from loadtests.harness import (
    Target,
    clean_env,
    database_dsn,
    database_url,
    prepare,
    raise_nofile,
    scrape,
    scratch_database,
    serve_cmd,
    serve_env,
    spawn,
    stop,
    wait_quiet,
    wait_ready,
)
from loadtests.recording import budget, record, run_all, run_header
from skillcoach.data.api_keys import Scope, create_api_key
from skillcoach.data.database import create_sync_engine
from skillcoach.ml.simulator import SimulationParams
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_port, log_tail
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes

THROUGHPUT_TARGET, HIT_TARGET = 0.5, 0.95


def _zipf(
    t: Target,
    nodes: RedisClusterNodes,
    args: argparse.Namespace,
    key: str,
    ids: dict[str, int],
    prefill: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {"prefilled": prefill}
    tools.flush_cluster(nodes)
    wait_quiet(t.url)
    if prefill:
        t0 = time.monotonic()
        out["prefill"] = tools.read_each(t.port, list(range(1, ids["learners"] + 1)), key)
        out["prefill_s"] = round(time.monotonic() - t0, 1)
    c0 = tools.cache_counts(scrape(t))
    opts: dict[str, Any] = {
        "token": key,
        "ids": ids,
        "connections": args.connections,
        "exponent": args.exponent,
        "write_fraction": args.write_fraction,
        "timeout": args.timeout,
    }
    warm = tools.run_zipf(t.url, seed=7, duration=args.zipf_warmup, **opts)
    c1 = tools.cache_counts(scrape(t))
    out["warmup"] = warm | {"cache": tools.delta(c0, c1)}
    measured = tools.run_zipf(t.url, seed=11, duration=args.zipf_duration, **opts)
    c2 = tools.cache_counts(scrape(t))
    out["measured"] = measured | {"cache": tools.delta(c1, c2)}
    out["quiesce_s"] = wait_quiet(t.url)
    m = out["measured"]
    print(
        f"  zipf prefill={prefill}: {m['rps']} req/s statuses {m['statuses']} cache {m['cache']}",
        flush=True,
    )
    return out


def _profile(t: Target, args: argparse.Namespace, key: str) -> dict[str, Any]:
    """py-spy on a cached replica under the hit-only wrk load (10 s, sampled for 8)."""

    tools.read_each(t.port, list(range(1, args.hot + 1)), key)  # hits again after (b)'s writes

    def load() -> dict[str, Any]:
        return wrk.run_wrk(
            t.url, connections=args.connections, duration=10, token=key, learners=args.hot
        )

    result = tools.py_spy_top(t.proc.pid, load) | {"target": t.name}
    wait_quiet(t.url)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="skillcoach-bench-cache-"))
    targets: list[Target] = []
    bouncer: PgBouncer | None = None
    server: RedisServer | None = None
    nodes: RedisClusterNodes | None = None
    started = time.monotonic()
    with scratch_database() as db:
        direct = database_url(db)
        try:
            print(f"preparing {db} ({args.learners} learners) ...", flush=True)
            params = SimulationParams(
                args.learners, args.skills, attempts_per_learner=args.attempts
            )
            key, timings = prepare(direct, params, key_name="bench-concurrency")
            setup: dict[str, Any] = dict(timings)
            engine = create_sync_engine(direct)
            with engine.begin() as conn:
                rw = frozenset({Scope.READ, Scope.WRITE})
                rw_key = create_api_key(conn, name="bench-cache-rw", scopes=rw)
            engine.dispose()
            ids = tools.id_ranges(database_dsn(db))
            bouncer = proxy.start_pgbouncer(db)
            server, nodes = tools.start_redis(tmp)
            setup["ready_infra_s"] = round(time.monotonic() - started, 1)
            env = clean_env()
            for name, redis_url in ((REDIS, server.url), (CLUSTER, nodes.url), (OFF, None)):
                port = free_port()
                sc_env = serve_env(
                    env, port=port, database_url=bouncer.url("postgres", db), redis_url=redis_url
                )
                targets.append(spawn(name, serve_cmd(), sc_env, port, tmp))
            for t in targets:
                wait_ready(t, "/readyz")
            bare, skills = tools.start_bare(BARE, targets[-1], key, env, tmp)
            targets.insert(0, bare)
            setup |= {
                "bare_skills": skills,
                "ids": ids,
                "ready_s": round(time.monotonic() - started),
            }
            print(f"ready after {setup['ready_s']} s; (a) throughput at c={args.connections}")
            throughput, body_bytes = tools.hot_throughput(targets, args, key)
            summary = {
                n: tools.summarize_rounds(runs) | {"body_bytes": body_bytes[n]}
                for n, runs in throughput.items()
            }
            bare_rps = summary[BARE]["ok_rps"]
            ratios = {n: round(s["ok_rps"] / max(bare_rps, 1e-9), 3) for n, s in summary.items()}
            by_name = {t.name: t for t in targets}
            print("(b) Zipf workload on the cluster", flush=True)
            zipf = [_zipf(by_name[CLUSTER], nodes, args, rw_key, ids, p) for p in (False, True)]
            low = min(ratios[REDIS], ratios[CLUSTER]) < THROUGHPUT_TARGET
            profile = None
            if args.profile == "yes" or (
                args.profile == "auto" and low and Path(tools.PY_SPY).exists()
            ):
                profile = _profile(by_name[CLUSTER], args, key)
            crashed = {t.name: t.proc.poll() for t in targets if t.proc.poll() is not None}
            logs = {t.name: log_tail(t.log, 30) for t in targets}
        finally:
            cleanup: list[Callable[[], object]] = [functools.partial(stop, t) for t in targets]
            if bouncer is not None:
                cleanup.append(functools.partial(proxy.stop_pgbouncer, bouncer))
            cleanup += [x.stop for x in (nodes, server) if x is not None]
            run_all(cleanup)
            shutil.rmtree(tmp, ignore_errors=True)
    return run_header("cache", vars(args), nofile) | {
        "setup": setup,
        "throughput": throughput,
        "summary": summary,
        "ratios_to_bare": ratios,
        "zipf": zipf,
        "zipf_ceiling_if_writes_follow_reads": round(1 - args.write_fraction, 4),
        "profile": profile,
        "exited_early": crashed,
        "log_tails": logs,
        "verdicts": {
            "throughput": {n: ratios[n] >= THROUGHPUT_TARGET for n in (REDIS, CLUSTER)},
            # "After warm-up": the warm cache. From cold, 10 s of traffic cannot have read the
            # Zipf tail once; the cold run is reported beside it.
            "zipf_hit_ratio": (zipf[1]["measured"]["cache"]["hit_ratio"] or 0) >= HIT_TARGET,
        },
        "wall_s": round(time.monotonic() - started, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    verdict = {True: "PASS", False: "**FAIL**"}
    s, ratios, c = result["summary"], result["ratios_to_bare"], result["params"]["connections"]
    lines = [
        f"| target (c={c}, {result['params']['hot']:,} hot learners) | 2xx req/s (mean;"
        " rounds) | vs bare | p50 (ms) | p99 (ms) | non-2xx / socket errors | hit ratio |"
        " body bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in s.items():
        rounds = ", ".join(f"{v:,.0f}" for v in x["ok_rps_rounds"])
        hits = ", ".join(f"{h:.4f}" for h in x["hit_ratio"]) if x["hit_ratio"] else "-"
        lines.append(
            f"| {name} | {x['ok_rps']:,.0f} ({rounds}) | {ratios[name]:.2f} | {x['p50_ms']} |"
            f" {x['p99_ms']} (max {x['p99_ms_max']}) | {x['non_2xx']} / {x['socket_errors']} |"
            f" {hits} | {x['body_bytes']:,} |"
        )
    lines += [
        "",
        "| Zipf phase (cluster) | req/s | statuses | hits / misses (stale) |"
        " hit ratio | excl. stale | p50 / p99 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for z in result["zipf"]:
        for phase in ("warmup", "measured"):
            r, k = z[phase], z[phase]["cache"]
            label = ("pre-filled" if z["prefilled"] else "cold start") + f", {phase}"
            lines.append(
                f"| {label} ({r['seconds']} s) | {r['rps']:,.0f} | {r['statuses']} |"
                f" {k['hits']:,} / {k['misses']:,} ({k['stale']:,}) | {k['hit_ratio']} |"
                f" {k['hit_ratio_excluding_stale']} | {r['latency_ms']['p50']} /"
                f" {r['latency_ms']['p99']} |"
            )
    v, z0 = result["verdicts"], result["zipf"][0]["measured"]["cache"]
    lines += [
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *(
            f"| {n} >= {THROUGHPUT_TARGET:.0%} of bare | {ratios[n]:.1%} |"
            f" {verdict[v['throughput'][n]]} |"
            for n in (REDIS, CLUSTER)
        ),
        f"| Zipf hit ratio after warm-up >= {HIT_TARGET:.0%}"
        f" | {result['zipf'][1]['measured']['cache']['hit_ratio']:.1%} with a warm cache"
        f" (from cold, after only {result['params']['zipf_warmup']:g} s: {z0['hit_ratio']:.1%})"
        f" | {verdict[v['zipf_hit_ratio']]} |",
    ]
    if result["profile"]:
        p = result["profile"]
        lines += [
            "",
            f"py-spy on {p['target']}'s event loop ({p['main_thread_samples']} of"
            f" {p['samples_possible']} possible samples busy; {p['load']['ok_rps']:,.0f} 2xx/s"
            " while sampled), top frames by own time:",
            *(f"- {pct}% {frame}" for frame, pct in p["self_pct"][:15]),
            "",
            "Own time by package: "
            + ", ".join(f"{pkg} {pct}%" for pkg, pct in p["self_pct_by_package"]),
        ]
    return "\n".join([*lines, "", f"Wall time {result['wall_s']} s."])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests cache")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    p.add_argument("--rounds", type=int, default=2, help="throughput rounds (order alternates)")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--hot", type=int, default=1000, help="learner ids 1..N of the hit-only load")
    p.add_argument("--learners", type=int, default=10_000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--attempts-per-learner", dest="attempts", type=int, default=20)
    p.add_argument("--exponent", type=float, default=1.1, help="Zipf exponent")
    p.add_argument("--write-fraction", type=float, default=0.1)
    p.add_argument("--zipf-warmup", type=float, default=10.0)
    p.add_argument("--zipf-duration", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=10.0, help="wrk --timeout (s)")
    p.add_argument(
        "--profile",
        choices=("auto", "yes", "no"),
        default="auto",
        help=f"py-spy ({tools.PY_SPY}) on the cluster replica; auto: when below target",
    )
    p.add_argument("--max-seconds", type=int, default=470, help="abort (and clean up) after")
    args = p.parse_args(argv)
    with budget(args.max_seconds):
        result = run(args)
    record("cache", result, markdown)
    return 0
