"""skillcoach (cache off, through PgBouncer) against the naive reference app, side by side.

    python -m loadtests concurrency [--duration 10] [--learners 2000] [--skip-naive]

One run: a scratch database (seeded, a model promoted, an API key), PgBouncer in front of it,
skillcoach and the naive app (direct to PostgreSQL) as subprocesses; wrk at 20, 50 and 100
connections (naive and skillcoach in alternating order), then 1,000 against skillcoach and an
asyncio probe that times the 503s alone (wrk cannot split latency by status); then both again
against HAProxy in front of the same replica (loadtests/proxy.py; server maxconn = the
replica's in-flight limit, so HAProxy sheds), as deployed. Writes
loadtests/results/concurrency-<utc stamp>.json, prints markdown; cleans up in `finally`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests import proxy
from loadtests.harness import (
    Target,
    clean_env,
    database_url,
    measure_run,
    prepare,
    raise_nofile,
    scratch_database,
    serve_cmd,
    serve_env,
    spawn,
    spawn_naive,
    stop,
    wait_quiet,
    wait_ready,
)
from loadtests.recording import budget, record, run_header
from loadtests.sampler import peak_rss_mb
from loadtests.wrk import run_wrk, shed_probe
from skillcoach.ml.simulator import SimulationParams
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_port, free_ports, log_tail

LEVELS = (20, 50, 100)
SHED_CONNECTIONS = 1000
VIA_HAPROXY = "skillcoach+haproxy"
COMPARED = "skillcoach-b"  # the replica of --compare-env
# Our targets: at 100 connections p99 <= naive/20 and throughput >= 3x; shed p99 < 50 ms.
P99_FACTOR, THROUGHPUT_FACTOR, SHED_P99_MS = 20.0, 3.0, 50.0


def _shed(t: Target, args: argparse.Namespace, key: str, metrics_of: Target) -> dict[str, Any]:
    """1,000 connections: wrk (throughput, overall latency), then the probe (503s alone)."""
    shed = {"wrk": measure_run(t, SHED_CONNECTIONS, args, key, metrics_of)}
    shed["probe"] = shed_probe(
        "127.0.0.1",
        t.port,
        connections=SHED_CONNECTIONS,
        total=args.probe_requests,
        deadline=args.duration,
        token=key,
        learners=args.learners,
    )
    shed["probe"]["quiesce_s"] = wait_quiet(t.url)
    print(f"  {t.name:>18} probe c=1000 statuses {shed['probe']['statuses']}", flush=True)
    return shed


def _shed_verdict(shed: dict[str, Any]) -> dict[str, Any]:
    wrk_503 = shed["wrk"]["shed_503"]
    probe_503 = shed["probe"]["latency_ms_by_status"].get("503", {})
    p99 = probe_503.get("p99")
    shed_any = wrk_503 + probe_503.get("count", 0) > 0
    v = {"wrk_503": wrk_503, "probe_503": probe_503.get("count", 0), "shed_p99_ms": p99}
    return v | {"pass": shed_any and (p99 or 1e9) < SHED_P99_MS}


def _verdicts(levels: dict[str, dict[str, Any]], shed: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {}
    top = levels.get(str(LEVELS[-1]), {})
    sc, nv = top.get("skillcoach"), top.get("naive")
    if sc and nv:
        ratio = round(sc["latency_ms"]["p99"] / max(nv["latency_ms"]["p99"], 1e-9), 4)
        tput = round(sc["ok_rps"] / max(nv["ok_rps"], 1e-9), 2)
        v["p99_at_100"] = {"ratio": ratio, "pass": ratio <= 1 / P99_FACTOR}
        v["throughput_at_100"] = {"ratio": tput, "pass": tput >= THROUGHPUT_FACTOR}
    # Per target: the replica on its own, and behind HAProxy.
    v["shed_at_1000"] = {name: _shed_verdict(s) for name, s in shed.items()}
    return v


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="skillcoach-bench-"))
    targets: list[Target] = []
    bouncer: PgBouncer | None = None
    started = time.monotonic()
    with scratch_database() as db:
        direct = database_url(db)
        try:
            print(f"preparing {db} ({args.learners} learners) ...", flush=True)
            params = SimulationParams(
                args.learners, args.skills, attempts_per_learner=args.attempts
            )
            key, setup = prepare(direct, params, key_name="bench-concurrency")
            bouncer = proxy.start_pgbouncer(db)
            env = clean_env()
            sc_port = free_port()
            sc_env = serve_env(env, port=sc_port, database_url=bouncer.url("postgres", db))
            sc_env |= dict(kv.split("=", 1) for kv in args.skillcoach_env)
            sc = spawn("skillcoach", serve_cmd(), sc_env, sc_port, logdir)
            targets.append(sc)
            if args.compare_env:  # a second replica, other settings, measured interleaved
                b_port, b_metrics = free_ports(2)
                b_env = sc_env | {
                    "SKILLCOACH_PORT": str(b_port),
                    "SKILLCOACH_METRICS_PORT": str(b_metrics),
                }
                b_env |= dict(kv.split("=", 1) for kv in args.compare_env)
                targets.append(spawn(COMPARED, serve_cmd(), b_env, b_port, logdir))
                wait_ready(targets[-1], "/readyz")
            if not args.skip_naive:
                targets.append(spawn_naive("naive", direct, env, logdir))
            wait_ready(sc, "/readyz")
            for t in targets[1:]:
                wait_ready(t, "/healthz")
            replicas = [t for t in targets if t.name in (sc.name, COMPARED)]
            for t in targets:  # warm-up: connections, key cache, numpy/scipy code paths
                run_wrk(t.url, connections=20, duration=3, token=key, learners=args.learners)
                wait_quiet(t.url)
            print(f"ready after {time.monotonic() - started:.0f}s; measuring", flush=True)
            levels: dict[str, dict[str, Any]] = {}
            for i, c in enumerate(LEVELS):
                order = targets[::-1] if i % 2 == 0 else targets  # naive first at 20 and 100
                levels[str(c)] = {
                    t.name: measure_run(t, c, args, key, t if t in replicas else None)
                    for t in order
                }
            shed = {r.name: _shed(r, args, key, r) for r in replicas}
            # The same replica behind HAProxy, which refuses what the replica would not admit.
            for r in replicas:
                limit = proxy.in_flight_limit(r.metrics_url)
                with proxy.haproxy_in_front(r.port, limit, args.haproxy_timeout_queue) as lb:
                    name = VIA_HAPROXY if r is sc else f"{COMPARED}+haproxy"
                    via = Target(name, r.proc, lb.config.listen_port, lb.logfile)
                    wait_ready(via, "/readyz")  # the replica is UP in HAProxy (health checks)
                    shed[via.name] = _shed(via, args, key, r) | {
                        "haproxy": proxy.haproxy_report(lb)
                    }
            rss = {t.name: peak_rss_mb(t.proc.pid) for t in targets}
            crashed = {t.name: t.proc.poll() for t in targets if t.proc.poll() is not None}
            logs = {t.name: log_tail(t.log, 30) for t in targets}
        finally:
            for t in targets:
                stop(t)
            if bouncer is not None:
                proxy.stop_pgbouncer(bouncer)
            shutil.rmtree(logdir, ignore_errors=True)
    return run_header("concurrency", vars(args), nofile) | {
        "setup": setup,
        "levels": levels,
        "shed": shed,
        "peak_rss_mb": rss,
        "exited_early": crashed,
        "log_tails": logs,
        "verdicts": _verdicts(levels, shed),
        "wall_s": round(time.monotonic() - started, 1),
    }


def _row(c: object, name: str, r: dict[str, Any]) -> str:
    lat, n = r["latency_ms"], r["non_2xx"]
    return (
        f"| {c} | {name} | {r['ok_rps']:,.0f} | {lat['mean']:,} | {lat['p50']:,} / {lat['p90']:,} /"
        f" {lat['p99']:,} / {lat['max']:,} | {n:,} / {r['shed_503']:,} /"
        f" {r['socket_errors_total']:,} |"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| connections | target | 2xx req/s | mean (ms) | p50 / p90 / p99 / max (ms) |"
        " non-2xx / 503 / socket errors+timeouts |",
        "|---|---|---|---|---|---|",
    ]
    ratios = [
        "| connections | p99 skillcoach / naive | 2xx req/s skillcoach / naive |",
        "|---|---|---|",
    ]
    for c, row in result["levels"].items():
        lines += [_row(c, n, row[n]) for n in ("naive", "skillcoach", COMPARED) if n in row]
        sc, nv = row.get("skillcoach"), row.get("naive")
        if sc and nv:
            p = sc["latency_ms"]["p99"] / max(nv["latency_ms"]["p99"], 1e-9)
            tp = sc["ok_rps"] / max(nv["ok_rps"], 1e-9)
            ratios.append(f"| {c} | {p:.3f} (1/{1 / max(p, 1e-9):.1f}) | {tp:.2f}x |")
    lines += [_row(f"{SHED_CONNECTIONS:,}", n, s["wrk"]) for n, s in result["shed"].items()]
    lines += ["", *ratios]
    v = result["verdicts"]
    verdict = {True: "PASS", False: "FAIL"}
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    if "p99_at_100" in v:
        r, t = v["p99_at_100"], v["throughput_at_100"]
        lines += [
            f"| p99 at 100 <= 1/{P99_FACTOR:g} of naive | {r['ratio']:.3f}"
            f" (1/{1 / max(r['ratio'], 1e-9):.1f}) | {verdict[r['pass']]} |",
            f"| 2xx req/s at 100 >= {THROUGHPUT_FACTOR:g}x naive | {t['ratio']}x |"
            f" {verdict[t['pass']]} |",
        ]
    for name, s in v["shed_at_1000"].items():
        probe, own = result["shed"][name]["probe"], proxy.own_503_text(result["shed"][name])
        lines.append(
            f"| 1,000 connections to {name}: 503s, shed p99 < {SHED_P99_MS:g} ms"
            f" | wrk 503s {s['wrk_503']:,}; probe {probe['statuses']}, 503 p99"
            f" {s['shed_p99_ms']} ms on established connections (first response on a new"
            f" connection p99 {probe['first_on_connection_ms'].get('p99')} ms; probe's own loop"
            f" lag p99 {probe['client_loop_lag_ms'].get('p99', '-')} ms){own}"
            f" | {verdict[s['pass']]} |"
        )
    rss = ", ".join(f"{k} {v} MB" for k, v in result["peak_rss_mb"].items())
    return "\n".join([*lines, "", f"Peak RSS: {rss}. Wall time {result['wall_s']} s."])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests concurrency")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--learners", type=int, default=2000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--attempts-per-learner", dest="attempts", type=int, default=100)
    p.add_argument("--timeout", type=float, default=35.0, help="wrk --timeout (s)")
    p.add_argument("--probe-requests", type=int, default=30_000, help="cap; runs --duration")
    p.add_argument("--skip-naive", action="store_true", help="skillcoach only (quick runs)")
    p.add_argument("--skillcoach-env", action="append", default=[], metavar="SKILLCOACH_X=V")
    p.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="SKILLCOACH_X=V",
        help=f"also run {COMPARED}: skillcoach with these settings on top, measured interleaved",
    )
    p.add_argument("--haproxy-timeout-queue", metavar="TIME", help="default: the stack's")
    p.add_argument("--max-seconds", type=int, default=570, help="abort (and clean up) after")
    args = p.parse_args(argv)
    with budget(args.max_seconds):
        result = run(args)
    record("concurrency", result, markdown)
    return 0
