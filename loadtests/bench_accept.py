"""New connections under load: batched accept (api/accepting.py) against uvloop's own.

    python -m loadtests accept [--rounds 3] [--connections 1000] [--duration 8]

Two bare endpoints (loadtests/bare_app.py), served as every replica is, one with the accept
pump and one with uvloop's accept only (one connection per loop iteration). Each round opens
--connections connections at once with h2load against each, in alternating order, while the
listening socket's accept queue (`ss -ltn`, Recv-Q) is sampled every 0.25 s. A connection that
waits in that queue is invisible to the server: its time shows only on the client, as a late
first byte (h2load's per-connection `time to 1st byte`). Writes
loadtests/results/accept-<stamp>.json and prints a table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtests.h2load import run_h2load, uniform_ids
from loadtests.harness import Target, raise_nofile, spawn_ready, stop, wait_quiet
from loadtests.recording import budget, record, run_header

PUMP, UVLOOP = "accept-pump", "uvloop-accept"
SAMPLE_S = 0.25


def accept_queue(port: int) -> int | None:
    """Connections the kernel completed on the listening port that the server has not
    accepted yet (a listening socket's Recv-Q), or None when ss cannot tell."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False
    ).stdout.split()
    return int(out[1]) if len(out) > 1 and out[1].isdigit() else None


def _sampled(t: Target, run: Any) -> dict[str, Any]:
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            q = accept_queue(t.port)
            if q is not None:
                samples.append(q)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result: dict[str, Any] = run()
    finally:
        done.set()
        sampler.join(10)
    result["accept_queue"] = {
        "max": max(samples, default=0),
        "last": samples[-1] if samples else 0,
        "samples": samples,
    }
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="skillcoach-accept-"))
    started = time.monotonic()
    ids = uniform_ids(1000, seed=20261203)
    targets: list[Target] = []
    rounds: list[dict[str, Any]] = []
    try:
        targets = [
            spawn_ready(PUMP, "loadtests.bare_app", logdir),
            spawn_ready(UVLOOP, "loadtests.bare_app", logdir, "--no-accept-pump"),
        ]
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            for t in targets if r % 2 == 0 else targets[::-1]:
                res = _sampled(
                    t,
                    lambda t=t: run_h2load(
                        t.url,
                        connections=args.connections,
                        duration=args.duration,
                        token="-",
                        ids=ids,
                        timeout=args.duration + 30,  # keep the late answers in the figures
                    ),
                )
                row[t.name] = res
                fb, q = res.get("first_byte_ms", {}), res["accept_queue"]
                print(
                    f"round {r + 1} {t.name:>14}: {res['ok_rps']:,.0f} 2xx/s, first byte max"
                    f" {fb.get('max')} ms mean {fb.get('mean')} ms, accept queue max {q['max']}"
                    f" last {q['last']}, p99 {res['latency_ms']['p99']} ms",
                    flush=True,
                )
                wait_quiet(t.url)
            rounds.append(row)
    finally:
        for t in targets:
            stop(t)
        shutil.rmtree(logdir, ignore_errors=True)
    return run_header("accept", vars(args), nofile) | {
        "rounds": rounds,
        "wall_s": round(time.monotonic() - started, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| round | server | 2xx req/s | first byte max / mean (ms) | accept queue max / at the end"
        " | p99 / max of answers (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(result["rounds"], 1):
        for name, r in row.items():
            fb, q, lat = r.get("first_byte_ms", {}), r["accept_queue"], r["latency_ms"]
            lines.append(
                f"| {i} | {name} | {r['ok_rps']:,.0f} | {fb.get('max', '-'):,} /"
                f" {fb.get('mean', '-'):,} | {q['max']} / {q['last']} |"
                f" {lat['p99']:,} / {lat['max']:,} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests accept")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per h2load run")
    p.add_argument("--max-seconds", type=int, default=300, help="abort (and clean up) after")
    args = p.parse_args(argv)
    with budget(args.max_seconds):
        result = run(args)
    record("accept", result, markdown)
    return 0
