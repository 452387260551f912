"""Analysis latency against the length of a learner's history.

    python -m loadtests scale [--warmup 50] [--requests 500]

One run: a scratch database (a small seeded catalog and population, a model promoted, a
read+write API key), PgBouncer in front of it and skillcoach (cache off) as a subprocess.
Three new learners get 10, 1,000 and 10,000 past attempts through the real write path
(POST /v1/learners/{id}/attempts, batches of 500). Then a sequential client (one keep-alive
connection) times GET /weaknesses and /recommendations, round-robin over the learners and
the endpoints: --warmup untimed rounds, then --requests timed ones. Target: the median at
10,000 attempts within 1.5x of the one at 10, per endpoint; peak RSS flagged against 300 MB.
Writes loadtests/results/scale-<utc stamp>.json, prints markdown; cleans up in `finally`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from loadtests import proxy
from loadtests.harness import (
    Target,
    clean_env,
    database_url,
    prepare,
    scratch_database,
    serve_cmd,
    serve_env,
    spawn,
    stop,
    wait_ready,
)
from loadtests.recording import budget, record, run_header
from loadtests.sampler import peak_rss_mb
from skillcoach.data.api_keys import Scope
from skillcoach.ml.simulator import SimulationParams
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_port, log_tail

# learner id -> number of past attempts; ids far above the seeded population's.
LEARNERS = {900001: 10, 900002: 1_000, 900003: 10_000}
ENDPOINTS = ("weaknesses", "recommendations")
EXERCISES = 1000  # skills * exercises_per_skill of the seeded catalog
BATCH = 500  # the API's MAX_BATCH
RATIO_TARGET, RSS_TARGET_MB = 1.5, 300.0
# A small catalog and population: the learners measured are the three above.
SEED = SimulationParams(
    learners=200, skills=50, exercises_per_skill=20, attempts_per_learner=20, seed=1
)


def _attempts(n: int, rng: random.Random, now: datetime) -> list[dict[str, Any]]:
    """n attempts on random exercises, one a minute, the last one five minutes ago; the
    chance of a correct answer depends on the exercise's skill (so there is something to
    rank)."""
    out = []
    for i in range(n):
        exercise = rng.randint(1, EXERCISES)
        p_correct = 0.3 + 0.6 * (((exercise - 1) // 20) % 7) / 6
        at = now - timedelta(minutes=n - i + 5)
        correct = rng.random() < p_correct
        out.append({"exercise_id": exercise, "correct": correct, "answered_at": at.isoformat()})
    return out


def _populate(client: httpx.Client, seed: int) -> dict[str, Any]:
    """Post every learner's history in batches of up to 500 through the API."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out: dict[str, Any] = {}
    for learner, n in LEARNERS.items():
        attempts = _attempts(n, rng, now)
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            batch = {"attempts": attempts[start : start + BATCH]}
            r = client.post(f"/v1/learners/{learner}/attempts", json=batch)
            if r.status_code != 201:
                raise RuntimeError(f"POST attempts for {learner}: {r.status_code} {r.text[:300]}")
        skills = {(a["exercise_id"] - 1) // 20 for a in attempts}
        out[str(learner)] = {
            "attempts": n,
            "batches": -(-n // BATCH),
            "distinct_skills": len(skills),
            "write_s": round(time.perf_counter() - t0, 2),
        }
    return out


def _summary(samples: list[float]) -> dict[str, float | int]:
    ms = sorted(s * 1000 for s in samples)

    def q(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * (len(ms) - 1)))], 2)  # nearest rank, below

    mean = round(sum(ms) / len(ms), 2)
    return {
        "count": len(ms),
        "median": round(statistics.median(ms), 2),
        "p90": q(0.9),
        "p99": q(0.99),
        "mean": mean,
    }


def _measure(client: httpx.Client, warmup: int, requests: int) -> dict[str, Any]:
    """Round-robin over learners and endpoints, one request at a time on one connection."""
    times: dict[tuple[int, str], list[float]] = {(lr, e): [] for lr in LEARNERS for e in ENDPOINTS}
    sizes: dict[tuple[int, str], int] = {}
    errors: dict[str, int] = {}
    for rnd in range(warmup + requests):
        for learner in LEARNERS:
            for endpoint in ENDPOINTS:
                t0 = time.perf_counter()
                r = client.get(f"/v1/learners/{learner}/{endpoint}")
                took = time.perf_counter() - t0
                if r.status_code != 200:
                    k = f"{learner}/{endpoint}/{r.status_code}"
                    errors[k] = errors.get(k, 0) + 1
                    continue
                sizes[(learner, endpoint)] = len(r.content)
                if rnd >= warmup:
                    times[(learner, endpoint)].append(took)
    out: dict[str, Any] = {"errors": errors, "latency_ms": {}}
    for (learner, endpoint), samples in times.items():
        if not samples:
            raise RuntimeError(f"no successful requests for {learner}/{endpoint}: {errors}")
        row = _summary(samples) | {"body_bytes": sizes.get((learner, endpoint))}
        out["latency_ms"].setdefault(str(learner), {})[endpoint] = row
    return out


def _verdicts(latency: dict[str, Any], rss_mb: float | None) -> dict[str, Any]:
    by_length = sorted(LEARNERS, key=lambda learner: LEARNERS[learner])
    short, long = str(by_length[0]), str(by_length[-1])
    v: dict[str, Any] = {}
    for e in ENDPOINTS:
        ratio = round(latency[long][e]["median"] / max(latency[short][e]["median"], 1e-9), 3)
        v[e] = {"median_ratio": ratio, "pass": ratio <= RATIO_TARGET}
    v["peak_rss"] = {"mb": rss_mb, "pass": rss_mb is not None and rss_mb < RSS_TARGET_MB}
    return v


def run(args: argparse.Namespace) -> dict[str, Any]:
    logdir = Path(tempfile.mkdtemp(prefix="skillcoach-bench-scale-"))
    sc: Target | None = None
    bouncer: PgBouncer | None = None
    started = time.monotonic()
    with scratch_database() as db:
        try:
            print(f"preparing {db} ...", flush=True)
            rw = frozenset({Scope.READ, Scope.WRITE})
            key, setup = prepare(database_url(db), SEED, key_name="bench-scale", scopes=rw)
            bouncer = proxy.start_pgbouncer(db)
            port = free_port()
            env = serve_env(clean_env(), port=port, database_url=bouncer.url("postgres", db))
            sc = spawn("skillcoach", serve_cmd(), env, port, logdir)
            wait_ready(sc, "/readyz")
            headers = {"Authorization": f"Bearer {key}"}
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            with httpx.Client(
                base_url=sc.url, headers=headers, limits=limits, timeout=30
            ) as client:
                print("posting histories ...", flush=True)
                t0 = time.perf_counter()
                learners = _populate(client, args.seed)
                setup["populate_s"] = round(time.perf_counter() - t0, 2)
                print(f"measuring ({args.warmup} warm-up + {args.requests} timed rounds) ...")
                t0 = time.perf_counter()
                measured = _measure(client, args.warmup, args.requests)
                setup["measure_s"] = round(time.perf_counter() - t0, 2)
            rss = peak_rss_mb(sc.proc.pid)
            exited = sc.proc.poll()
            log = log_tail(sc.log, 30)
        finally:
            if sc is not None:
                stop(sc)
            if bouncer is not None:
                proxy.stop_pgbouncer(bouncer)
            shutil.rmtree(logdir, ignore_errors=True)
    params = vars(args) | {"cache": False, "via": "pgbouncer", "connections": 1}
    return run_header("scale", params) | {
        "setup": setup,
        "learners": learners,
        "latency_ms": measured["latency_ms"],
        "errors": measured["errors"],
        "peak_rss_mb": rss,
        "exited_early": exited,
        "log_tail": log,
        "verdicts": _verdicts(measured["latency_ms"], rss),
        "wall_s": round(time.monotonic() - started, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| past attempts | endpoint | median (ms) | p90 (ms) | p99 (ms) | body (bytes) |",
        "|---|---|---|---|---|---|",
    ]
    for learner, by_endpoint in result["latency_ms"].items():
        n = result["learners"][learner]["attempts"]
        for e, r in by_endpoint.items():
            lines.append(
                f"| {n:,} | {e} | {r['median']} | {r['p90']} | {r['p99']} | {r['body_bytes']:,} |"
            )
    verdict = {True: "PASS", False: "FAIL"}
    v = result["verdicts"]
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for e in ENDPOINTS:
        lines.append(
            f"| {e}: median at 10,000 <= {RATIO_TARGET:g}x median at 10 |"
            f" {v[e]['median_ratio']}x | {verdict[v[e]['pass']]} |"
        )
    rss = v["peak_rss"]
    lines.append(
        f"| server peak RSS (VmHWM) < {RSS_TARGET_MB:g} MB | {rss['mb']} MB |"
        f" {verdict[rss['pass']]} |"
    )
    errs = result["errors"] or "none"
    return "\n".join([*lines, "", f"Non-200 answers: {errs}. Wall time {result['wall_s']} s."])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests scale")
    p.add_argument("--warmup", type=int, default=50, help="untimed rounds per learner+endpoint")
    p.add_argument("--requests", type=int, default=500, help="timed rounds per learner+endpoint")
    p.add_argument("--seed", type=int, default=1, help="the histories' random seed")
    p.add_argument("--max-seconds", type=int, default=300, help="abort (and clean up) after")
    args = p.parse_args(argv)
    with budget(args.max_seconds):
        result = run(args)
    record("scale", result, markdown)
    return 0
