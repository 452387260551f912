"""What one request costs as the open connections grow: why a replica answers fewer requests a
second at 1,000 connections than at 100.

    python -m loadtests connections [--rounds 2] [--connections 100,300,1000] [--duration 8]

Three servers, started once and driven one at a time by h2load (HTTP/1.1, two threads) at
each connection count, in alternating order each round:

- `bare`: the bare Starlette endpoint (loadtests/bare_app.py), served as every replica is;
- `protocol`: the same answer bytes from a plain uvloop protocol (loadtests/protocol_app.py),
  the loop and the kernel without uvicorn, ASGI or Starlette;
- `bare-counted`: the bare endpoint counting its Python and C function calls (--count-calls).

Each run records 2xx req/s and, per answered request, the CPU time of the server (user and
system, from /proc/PID/stat) and of h2load (its rusage); the counted server adds function
calls per request (its speed means nothing: the hook slows every call). When the calls per
request stay level while the CPU per request grows with the connections, the server runs the
same code more slowly: the cost is in the memory the open connections keep in play, not in
work a change to the code path could remove. Writes loadtests/results/connections-<stamp>.json
and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.h2load import run_h2load, uniform_ids
from loadtests.harness import (
    Target,
    cpu_times,
    http_get,
    raise_nofile,
    spawn_ready,
    stop,
    wait_quiet,
)
from loadtests.recording import budget, record, run_header

__all__ = ["BARE", "COUNTED", "PROTOCOL", "markdown", "per_request", "run"]

BARE, PROTOCOL, COUNTED = "bare", "protocol", "bare-counted"


def _children_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def _calls(t: Target) -> dict[str, int]:
    status, body = http_get(f"{t.url}/debug/calls", timeout=10)
    if status != 200:
        raise RuntimeError(f"{t.name}: /debug/calls answered {status or 'nothing'}")
    counted: dict[str, int] = json.loads(body)
    return counted


def per_request(
    answered: int,
    server: tuple[float, float],
    meter: tuple[float, float],
    calls: dict[str, int] | None = None,
) -> dict[str, Any]:
    """CPU microseconds (and function calls) per answered request, from the run's totals:
    `server` and `meter` are (user, system) seconds."""
    if answered <= 0:
        raise ValueError("no request was answered")
    us = {
        "server_user_us": server[0],
        "server_sys_us": server[1],
        "server_us": server[0] + server[1],
        "h2load_user_us": meter[0],
        "h2load_sys_us": meter[1],
    }
    out: dict[str, Any] = {k: round(v * 1e6 / answered, 2) for k, v in us.items()}
    if calls is not None:
        out["calls"] = {k: round(v / answered, 1) for k, v in sorted(calls.items())}
    return out


def _measure(
    t: Target, connections: int, args: argparse.Namespace, ids: list[int]
) -> dict[str, Any]:
    counted = t.name == COUNTED
    calls0 = _calls(t) if counted else None
    server0, meter0 = cpu_times(t.proc.pid), _children_cpu()
    res = run_h2load(
        t.url, connections=connections, duration=args.duration, token="-", ids=ids, timeout=30
    )
    server1, meter1 = cpu_times(t.proc.pid), _children_cpu()
    calls = None
    if calls0 is not None:
        calls1 = _calls(t)
        calls = {k: calls1.get(k, 0) - calls0.get(k, 0) for k in calls1}
    cost = per_request(
        res["ok"],
        (server1[0] - server0[0], server1[1] - server0[1]),
        (meter1[0] - meter0[0], meter1[1] - meter0[1]),
        calls,
    )
    return {
        "ok": res["ok"],
        "ok_rps": res["ok_rps"],
        "statuses": res["statuses"],
        "p99_ms": res["latency_ms"].get("p99"),
    } | cost


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    logdir = Path(tempfile.mkdtemp(prefix="skillcoach-connections-"))
    started = time.monotonic()
    ids = uniform_ids(1000, seed=20261204)
    targets: list[Target] = []
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        targets = [
            spawn_ready(BARE, "loadtests.bare_app", logdir),
            spawn_ready(PROTOCOL, "loadtests.protocol_app", logdir),
            spawn_ready(COUNTED, "loadtests.bare_app", logdir, "--count-calls"),
        ]
        for r in range(args.rounds):
            row: dict[str, dict[str, Any]] = {}
            for t in targets if r % 2 == 0 else targets[::-1]:
                for c in args.connections:
                    m = _measure(t, c, args, ids)
                    row[f"{t.name}@{c}"] = m
                    calls = m.get("calls", {})
                    print(
                        f"round {r + 1} {t.name:>12} c={c:<5}: {m['ok_rps']:,.0f} 2xx/s, server"
                        f" {m['server_user_us']} + {m['server_sys_us']} us/req, h2load"
                        f" {m['h2load_user_us'] + m['h2load_sys_us']:.1f} us/req"
                        + (f", calls/req {calls}" if calls else ""),
                        flush=True,
                    )
                    wait_quiet(t.url)
            rounds.append(row)
    finally:
        for t in targets:
            stop(t)
        shutil.rmtree(logdir, ignore_errors=True)
    return run_header("connections", vars(args), nofile) | {
        "rounds": rounds,
        "summary": summary(rounds, args.connections),
        "wall_s": round(time.monotonic() - started, 1),
    }


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return round(statistics.fmean(values), 2) if values else None


def summary(rounds: list[dict[str, dict[str, Any]]], connections: list[int]) -> dict[str, Any]:
    """Per server: each figure at each connection count (mean over the rounds), and the
    ratio of the most connections to the fewest."""
    out: dict[str, Any] = {}
    for name in (BARE, PROTOCOL, COUNTED):
        at: dict[str, dict[str, Any]] = {}
        for c in connections:
            rows = [row[f"{name}@{c}"] for row in rounds if f"{name}@{c}" in row]
            if not rows:
                continue
            keys = ("ok_rps", "server_user_us", "server_sys_us", "server_us", "h2load_user_us")
            figures: dict[str, Any] = {k: _mean(rows, k) for k in (*keys, "h2load_sys_us")}
            if any("calls" in r for r in rows):
                kinds = {k for r in rows for k in r.get("calls", {})}
                figures["calls"] = {
                    k: round(statistics.fmean(r["calls"].get(k, 0) for r in rows), 1)
                    for k in sorted(kinds)
                }
            at[str(c)] = figures
        if not at:
            continue
        lo, hi = at[str(min(connections))], at[str(max(connections))]
        ratio: dict[str, float | None] = {}
        for key in ("ok_rps", "server_us", "server_user_us", "server_sys_us"):
            ratio[key] = round(hi[key] / lo[key], 3) if lo.get(key) and hi.get(key) else None
        for kind in hi.get("calls", {}):
            low = lo.get("calls", {}).get(kind)
            ratio[f"calls_{kind}"] = round(hi["calls"][kind] / low, 3) if low else None
        out[name] = {"at": at, "most_over_fewest": ratio}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| server | connections | 2xx req/s | server CPU us/req (user + system) |"
        " h2load CPU us/req | Python / C calls per req |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        for c, f in s["at"].items():
            calls = f.get("calls")
            calls_text = f"{calls.get('python', 0):,} / {calls.get('c', 0):,}" if calls else "-"
            rps = "(hooked)" if name == COUNTED else f"{f['ok_rps']:,.0f}"
            lines.append(
                f"| {name} | {int(c):,} | {rps} | {f['server_us']} ({f['server_user_us']} +"
                f" {f['server_sys_us']}) | {f['h2load_user_us'] + f['h2load_sys_us']:.1f} |"
                f" {calls_text} |"
            )
    counts = result["params"]["connections"]
    lines += [
        "",
        f"At {max(counts):,} connections over {min(counts):,} (mean of {len(result['rounds'])}"
        " rounds):",
        "",
        "| server | 2xx req/s | server CPU per req | user | system | Python calls per req |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        r = s["most_over_fewest"]
        cells = {k: "-" if r.get(k) is None else f"{r[k]:.2f}x" for k in r}
        keys = ("ok_rps", "server_us", "server_user_us", "server_sys_us", "calls_python")
        row = ["-" if (k == "ok_rps" and name == COUNTED) else cells.get(k, "-") for k in keys]
        lines.append(f"| {name} | {' | '.join(row)} |")
    return "\n".join(lines)


def _counts(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("connection counts are positive integers")
    return values


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests connections")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--connections", type=_counts, default=[100, 300, 1000])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per h2load run")
    p.add_argument("--max-seconds", type=int, default=600, help="abort (and clean up) after")
    args = p.parse_args(argv)
    with budget(args.max_seconds):
        result = run(args)
    record("connections", result, markdown)
    return 0
