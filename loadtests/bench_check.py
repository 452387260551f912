"""Regression check: this run's ratios against the committed baseline.

    python -m loadtests check [--smoke] [--baseline loadtests/baseline.json] [--tolerance 0.25]

Full mode (manual, `make bench-check`, about three minutes): one scratch database (the
concurrency runner's defaults: 2,000 learners x 50 skills x 100 attempts), PgBouncer, a Redis
Cluster, and five servers started as the concurrency and cache runners start them: the naive
app, the db ceiling app (loadtests/db_ceiling_app.py, through the same PgBouncer), skillcoach
with the cache off, the bare Starlette endpoint and skillcoach cached on the cluster. Measured
in the same run:

- p99 and 2xx throughput of skillcoach (cache off) / naive and 2xx throughput of skillcoach /
  db ceiling at 50 and 100 connections (the three in alternating order);
- 2xx throughput and p99 of cached-cluster / bare at 50 connections on hot learners (the cache
  runner's hit-only load, `cache_tools.hot_throughput`);
- overload: cached-cluster's 2xx throughput and p99 at 1,000 connections over its own at 100.

Every run is h2load (loadtests/h2load.py says why not wrk).

Each ratio is compared with loadtests/baseline.json (the ratios of the committed result files
it cites), and, where the baseline names one, with the issue's target (`target`: met or not
met, reported beside the verdict; only a regression fails the check). A throughput ratio
fails when it fell by more than --tolerance (relative, 25%); a p99 ratio (lower is better)
fails when it grew by more than --p99-tolerance (relative, 100%): p99 on a shared 2-core box
is one slow scheduling slice away from doubling, so a tighter bound would fail on noise rather
than on a regression. Exit 1 on any FAIL. Writes
loadtests/results/check-<utc stamp>.json and prints a markdown table.

Smoke mode (`--smoke`, CI, seconds): a small database (200 learners x 20 skills x 20
attempts), naive and skillcoach (cache off) only, h2load for 3 s at 50 connections against
the naive app and then skillcoach; fails unless both answered only 2xx with no socket errors
and a latency Little's law allows (the meter is sound). It used to also require skillcoach's
p99 below the naive app's: that held only under wrk's wrong latencies (see
loadtests/h2load.py); measured right, the two are close at 50 connections, and the full
check reports the ratio. No result file is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from loadtests import cache_tools as tools
from loadtests import proxy
from loadtests.cache_tools import BARE, CLUSTER
from loadtests.h2load import run_h2load, uniform_ids
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
    spawn_ceiling,
    spawn_naive,
    stop,
    wait_quiet,
    wait_ready,
)
from loadtests.recording import budget, record, run_all
from loadtests.wrk import run_wrk
from skillcoach.ml.simulator import SimulationParams
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_port
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes

BASELINE = Path(__file__).with_name("baseline.json")
NAIVE, SKILLCOACH, CEILING = "naive", "skillcoach", "db-ceiling"
LEVELS = (50, 100)
# One warm cached replica at 100 and then 1,000 connections: what overload costs it.
OVERLOAD_LEVELS = (100, 1000)
SMOKE_CONNECTIONS = 50


@dataclass
class Stack:
    key: str
    targets: dict[str, Target]
    setup: dict[str, Any]


@contextlib.contextmanager
def _stack(args: argparse.Namespace, *, cache: bool) -> Iterator[Stack]:
    """Scratch DB, PgBouncer, naive + skillcoach (cache off); with `cache` also a Redis
    Cluster, skillcoach cached on it and the bare endpoint. Everything is undone on exit."""
    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="skillcoach-check-"))
    targets: list[Target] = []
    bouncer: PgBouncer | None = None
    server: RedisServer | None = None
    nodes: RedisClusterNodes | None = None
    started = time.monotonic()
    with scratch_database("skillcoach_check") as db:
        direct = database_url(db)
        try:
            params = SimulationParams(
                args.learners, args.skills, attempts_per_learner=args.attempts
            )
            key, timings = prepare(direct, params, key_name="bench-concurrency")
            setup: dict[str, Any] = dict(timings)
            bouncer = proxy.start_pgbouncer(db)
            env = clean_env()
            redis_urls: dict[str, str | None] = {SKILLCOACH: None}
            if cache:
                server, nodes = tools.start_redis(tmp)
                redis_urls[CLUSTER] = nodes.url
            for name, redis_url in redis_urls.items():
                port = free_port()
                sc_env = serve_env(
                    env, port=port, database_url=bouncer.url("postgres", db), redis_url=redis_url
                )
                targets.append(spawn(name, serve_cmd(), sc_env, port, tmp))
            targets.append(spawn_naive(NAIVE, direct, env, tmp))
            if cache:  # the full check's reference for cache off; the smoke stays two servers
                targets.append(spawn_ceiling(CEILING, bouncer.url("postgres", db), env, tmp))
            for t in targets:
                wait_ready(t, "/healthz" if t.name in (NAIVE, CEILING) else "/readyz")
            if cache:
                bare, setup["bare_skills"] = tools.start_bare(BARE, targets[0], key, env, tmp)
                targets.append(bare)
            setup["ready_s"] = round(time.monotonic() - started, 1)
            yield Stack(key, {t.name: t for t in targets}, setup)
            crashed = {t.name: t.proc.poll() for t in targets if t.proc.poll() is not None}
            if crashed:
                raise RuntimeError(f"servers exited during the run: {crashed}")
        finally:
            steps: list[Callable[[], object]] = [partial(stop, t) for t in targets]
            if bouncer is not None:
                steps.append(partial(proxy.stop_pgbouncer, bouncer))
            steps += [x.stop for x in (nodes, server) if x is not None]
            run_all(steps)
            shutil.rmtree(tmp, ignore_errors=True)


# -- smoke (CI) -------------------------------------------------------------------------------


def smoke_args(**overrides: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "learners": 200,
        "skills": 20,
        "attempts": 20,
        "duration": 3.0,
        "timeout": 10.0,
        "connections": SMOKE_CONNECTIONS,
    }
    return argparse.Namespace(**(base | overrides))


def _errors(r: dict[str, Any]) -> dict[str, int]:
    return {"non_2xx": int(r["non_2xx"]), "socket_errors": int(r["socket_errors_total"])}


def smoke(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """The CI smoke; returns {targets: {name: h2load figures}, errors, p99_ms, failures, pass}."""
    args = args or smoke_args()
    started = time.monotonic()
    runs: dict[str, dict[str, Any]] = {}
    with _stack(args, cache=False) as st:
        for t in st.targets.values():  # warm-up: connections, key cache, numpy code paths
            run_wrk(t.url, connections=10, duration=1, token=st.key, learners=args.learners)
            wait_quiet(t.url)
        for name in (NAIVE, SKILLCOACH):
            t = st.targets[name]
            runs[name] = run_h2load(
                t.url,
                connections=args.connections,
                duration=args.duration,
                token=st.key,
                ids=uniform_ids(args.learners, seed=42),
                timeout=args.timeout,
            )
            wait_quiet(t.url)
        setup = st.setup
    errors = {name: _errors(r) for name, r in runs.items()}
    p99 = {name: r["latency_ms"]["p99"] for name, r in runs.items()}
    failures = [
        f"{name}: {e['non_2xx']} non-2xx answers (statuses {runs[name]['statuses']}),"
        f" {e['socket_errors']} socket errors {runs[name]['socket_errors']}"
        for name, e in errors.items()
        if e["non_2xx"] or e["socket_errors"]
    ]
    for name, r in runs.items():
        if not r["latency_consistent"]:  # the meter itself is wrong (loadtests/h2load.py)
            lat = r["latency_ms"]
            failures.append(
                f"{name}: mean latency {lat['mean']} ms above Little's bound"
                f" {lat['little_bound']} ms"
            )
    return {
        "kind": "check-smoke",
        "params": vars(args),
        "setup": setup,
        "targets": runs,
        "errors": errors,
        "p99_ms": p99,
        "failures": failures,
        "pass": not failures,
        "wall_s": round(time.monotonic() - started, 1),
    }


def smoke_markdown(result: dict[str, Any]) -> str:
    c = result["params"]["connections"]
    lines = [
        f"| target (c={c}, {result['params']['duration']:g} s) | 2xx req/s | p50 (ms) |"
        " p99 (ms) | non-2xx | socket errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["targets"].items():
        e, lat = result["errors"][name], r["latency_ms"]
        lines.append(
            f"| {name} | {r['ok_rps']:,.0f} | {lat['p50']} | {lat['p99']} | {e['non_2xx']} |"
            f" {e['socket_errors']} |"
        )
    verdict = "PASS" if result["pass"] else "FAIL: " + "; ".join(result["failures"])
    return "\n".join([*lines, "", f"smoke {verdict} (wall {result['wall_s']} s)"])


# -- full check (manual) ----------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return round(a / max(b, 1e-9), 4)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run both parts on one stack; returns the raw figures and the ratios."""
    started = time.monotonic()
    with _stack(args, cache=True) as st:
        trio = [st.targets[NAIVE], st.targets[CEILING], st.targets[SKILLCOACH]]
        for t in trio:  # warm-up, as the concurrency runner does
            run_wrk(t.url, connections=20, duration=3, token=st.key, learners=args.learners)
            wait_quiet(t.url)
        print(f"ready after {st.setup['ready_s']} s; naive, db ceiling, skillcoach", flush=True)
        levels: dict[str, dict[str, Any]] = {}
        for i, c in enumerate(LEVELS):
            order = trio if i % 2 == 0 else trio[::-1]
            levels[str(c)] = {t.name: measure_run(t, c, args, st.key) for t in order}
        print(f"bare vs cached-cluster at c={args.connections}", flush=True)
        cached = [st.targets[BARE], st.targets[CLUSTER]]
        throughput, body_bytes = tools.hot_throughput(cached, args, st.key)
        print("cached-cluster at 100 and 1,000 connections (overload)", flush=True)
        overload = {
            str(c): run_h2load(
                st.targets[CLUSTER].url,
                connections=c,
                duration=args.duration,
                token=st.key,
                ids=uniform_ids(args.hot, seed=7 + c),
                timeout=args.timeout,
            )
            for c in OVERLOAD_LEVELS
        }
        setup = st.setup
    summary = {
        n: tools.summarize_rounds(runs) | {"body_bytes": body_bytes[n]}
        for n, runs in throughput.items()
    }
    ratios: dict[str, float] = {}
    for c in LEVELS:
        sc, nv = levels[str(c)][SKILLCOACH], levels[str(c)][NAIVE]
        ratios[f"p99_skillcoach_over_naive_at_{c}"] = _ratio(
            sc["latency_ms"]["p99"], nv["latency_ms"]["p99"]
        )
        ratios[f"throughput_skillcoach_over_naive_at_{c}"] = _ratio(sc["ok_rps"], nv["ok_rps"])
        ratios[f"throughput_skillcoach_over_ceiling_at_{c}"] = _ratio(
            sc["ok_rps"], levels[str(c)][CEILING]["ok_rps"]
        )
    ratios[f"throughput_cached_over_bare_at_{args.connections}"] = _ratio(
        summary[CLUSTER]["ok_rps"], summary[BARE]["ok_rps"]
    )
    ratios[f"p99_cached_over_bare_at_{args.connections}"] = _ratio(
        summary[CLUSTER]["p99_ms"], summary[BARE]["p99_ms"]
    )
    low, high = (overload[str(c)] for c in OVERLOAD_LEVELS)
    ratios["throughput_cached_1000_over_100"] = _ratio(high["ok_rps"], low["ok_rps"])
    ratios["p99_cached_1000_over_100"] = _ratio(high["latency_ms"]["p99"], low["latency_ms"]["p99"])
    errors = {f"{name}@{c}": _errors(r) for c, row in levels.items() for name, r in row.items()} | {
        n: {"non_2xx": s["non_2xx"], "socket_errors": s["socket_errors"]}
        for n, s in summary.items()
    }
    return {
        "setup": setup,
        "levels": levels,
        "cache_throughput": throughput,
        "cache_summary": summary,
        "overload": overload,
        "errors": errors,
        "ratios": ratios,
        "measure_s": round(time.monotonic() - started, 1),
    }


def compare(
    ratios: dict[str, float], baseline: dict[str, Any], tolerance: float, p99_tolerance: float
) -> list[dict[str, Any]]:
    """One row per baseline ratio: throughput ratios must stay >= baseline x (1 - tolerance),
    p99 ratios (lower is better) <= baseline x (1 + p99_tolerance). A ratio with an issue
    `target` also says whether the measurement meets it (`target_met`; None: no target)."""
    rows = []
    for name, spec in baseline["ratios"].items():
        base = float(spec["value"])
        lower_is_better = spec["better"] == "lower"
        allowed = base * (1 + p99_tolerance) if lower_is_better else base * (1 - tolerance)
        measured = ratios.get(name)
        ok = measured is not None and (
            measured <= allowed if lower_is_better else measured >= allowed
        )
        target = spec.get("target")
        met = None
        if target is not None and measured is not None:
            met = measured <= float(target) if lower_is_better else measured >= float(target)
        rows.append(
            {
                "metric": name,
                "better": spec["better"],
                "baseline": base,
                "measured": measured,
                "allowed": round(allowed, 4),
                "pass": ok,
                "target": target,
                "target_met": met,
            }
        )
    return rows


def check_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| metric | baseline | measured | allowed | verdict | issue target |",
        "|---|---|---|---|---|---|",
    ]
    mark = {True: "met", False: "**not met**", None: "-"}
    for r in rows:
        bound = "<=" if r["better"] == "lower" else ">="
        target = "-"
        if r.get("target") is not None:
            target = f"{bound} {r['target']:g}: {mark[r.get('target_met')]}"
        lines.append(
            f"| {r['metric']} | {r['baseline']} | {r['measured']} | {bound} {r['allowed']} |"
            f" {'PASS' if r['pass'] else '**FAIL**'} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests check")
    p.add_argument("--smoke", action="store_true", help="the CI smoke (seconds)")
    p.add_argument("--baseline", type=Path, default=BASELINE)
    p.add_argument("--tolerance", type=float, default=0.25, help="throughput ratios, relative")
    p.add_argument(
        "--p99-tolerance", type=float, default=1.0, help="p99 ratios, relative (noisy: 100%%)"
    )
    p.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    p.add_argument("--learners", type=int, default=2000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--attempts-per-learner", dest="attempts", type=int, default=100)
    p.add_argument("--timeout", type=float, default=35.0, help="wrk --timeout (s)")
    p.add_argument("--hot", type=int, default=1000, help="hot learner ids of the cached load")
    p.add_argument("--rounds", type=int, default=2, help="bare/cached rounds (order alternates)")
    p.add_argument("--max-seconds", type=int, default=400, help="abort (and clean up) after")
    args = p.parse_args(argv)
    args.connections = 50
    with budget(args.max_seconds):
        if args.smoke:
            result = smoke()
            print(smoke_markdown(result))
            for failure in result["failures"]:
                print(f"FAIL: {failure}", file=sys.stderr)
            return 0 if result["pass"] else 1
        baseline = json.loads(args.baseline.read_text())
        measured = measure(args)
    rows = compare(measured["ratios"], baseline, args.tolerance, args.p99_tolerance)
    errors = {k: e for k, e in measured["errors"].items() if e["non_2xx"] or e["socket_errors"]}
    ok = all(r["pass"] for r in rows) and not errors
    params = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {
        "kind": "check",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count()},
        "params": params,
        "baseline": baseline,
        "rows": rows,
        "pass": ok,
        **measured,
    }
    record("check", result, lambda r: check_markdown(r["rows"]))
    if errors:
        print(f"FAIL: errors during the run: {errors}", file=sys.stderr)
    if not ok:
        print("FAIL: regression against the baseline (see the table)", file=sys.stderr)
    return 0 if ok else 1
