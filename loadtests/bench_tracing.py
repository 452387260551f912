"""What tracing costs on the cached path: cached req/s of three servers side by side.

    python -m loadtests.bench_tracing --before /tmp/before [--before-ref REF]
        [--duration 10] [--rounds 4] [--connections 50] [--hot 1000]

- before: the build before tracing, from a checkout of it (`--before`; with `--before-ref`
  a detached `git worktree` of that ref is added there if it is missing), run as
  `python -m skillcoach.cli serve` with PYTHONPATH at its service/ directory;
- off: this build, tracing off (no OTEL_* endpoint: nothing instrumented);
- on-10%: this build, tracing on, OTEL_TRACES_SAMPLER=parentbased_traceidratio at 0.1,
  exporting over OTLP http/protobuf to a receiver in this process (SpanCounter).

One scratch database (a model promoted, an API key), PgBouncer and a standalone Redis on free
loopback ports, shared by the three servers, each one uvicorn process with the access log
off. Each server first reads each of the --hot learners once (so every later read is a
cache hit), then wrk reads those ids at --connections for --duration s, --rounds rounds, the
order of the servers reversed every other round. Each run's fast-path hits come from the
server's /metrics: the load is hits only.

Writes loadtests/results/tracing-<utc stamp>.json and prints the ratios to `before`.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from loadtests import cache_tools as tools
from loadtests import proxy, wrk
from loadtests.harness import (
    ROOT,
    Target,
    clean_env,
    cpu_seconds,
    database_url,
    http_get,
    prepare,
    raise_nofile,
    scratch_database,
    serve_cmd,
    serve_env,
    spawn,
    stop,
    wait_quiet,
    wait_ready,
)
from loadtests.recording import budget, record, run_all, run_header
from skillcoach.ml.simulator import SimulationParams
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_port, log_tail
from skillcoach_devstack.redis import RedisServer

BEFORE, OFF, ON = "before", "off", "on-10%"
FAST_PATH = 'skillcoach_http_cache_fast_path_total{kind="weaknesses"}'


class SpanCounter:
    """An OTLP/HTTP (protobuf) trace receiver on a free loopback port, in a thread of this
    process, counting the spans of each export and keeping none. Deliberately minimal: on a
    2-core machine a collector's own CPU would be charged to the replica under test, which in
    production exports to a collector elsewhere (tests/telemetry use a full receiver)."""

    def __init__(self) -> None:
        self.spans = 0
        self.exports = 0
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                counter.exports += 1
                counter.spans += sum(
                    len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
                )
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per export is noise

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _before_checkout(path: Path, ref: str | None) -> Path:
    if not (path / "service" / "skillcoach").is_dir():
        if ref is None:
            raise SystemExit(f"{path} holds no checkout; give --before-ref to add a worktree")
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True
        )
    return path


def _fast_path_hits(metrics_url: str) -> float:
    status, body = http_get(metrics_url + "/metrics", timeout=5)
    if status != 200:
        raise RuntimeError(f"{metrics_url}/metrics answered {status}")
    for line in body.decode().splitlines():
        if line.startswith(FAST_PATH + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    before_dir = _before_checkout(args.before, args.before_ref)
    tmp = Path(tempfile.mkdtemp(prefix="skillcoach-bench-tracing-"))
    targets: list[Target] = []
    metrics_urls: dict[str, str] = {}
    bouncer: PgBouncer | None = None
    redis: RedisServer | None = None
    receiver = SpanCounter()
    started = time.monotonic()
    with scratch_database() as db:
        try:
            print(f"preparing {db} ({args.learners} learners) ...", flush=True)
            params = SimulationParams(args.learners, args.skills, attempts_per_learner=20)
            key, timings = prepare(database_url(db), params, key_name="bench-tracing")
            bouncer = proxy.start_pgbouncer(db)
            redis = RedisServer(port=free_port(), data_dir=tmp / "redis")
            redis.start(timeout=10)
            receiver.start()
            base = clean_env()
            base = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
            otel_on = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
                "OTEL_SERVICE_NAME": "skillcoach-bench",
            }
            for name in args.servers:
                port = free_port()
                env = serve_env(
                    base, port=port, database_url=bouncer.url("postgres", db), redis_url=redis.url
                )
                # No start-up warming: it would still be running (and charged) in the first
                # rounds; the hot learners are read explicitly below.
                env["SKILLCOACH_CACHE_WARM_LEARNERS"] = "0"
                if name == BEFORE:
                    env["PYTHONPATH"] = str(before_dir / "service")
                    env["SKILLCOACH_METRICS_PORT"] = "0"  # its default: /metrics on its port
                    metrics_urls[name] = f"http://127.0.0.1:{port}"
                else:
                    metrics_port = free_port()
                    env["SKILLCOACH_METRICS_PORT"] = str(metrics_port)
                    metrics_urls[name] = f"http://127.0.0.1:{metrics_port}"
                    if name == ON:
                        env |= otel_on
                targets.append(spawn(name, serve_cmd(), env, port, tmp))
            for t in targets:
                wait_ready(t, "/readyz")
            hot = list(range(1, args.hot + 1))
            for t in targets:
                print(
                    f"  {t.name:>7} read the hot learners once: {tools.read_each(t.port, hot, key)}"
                )
                wrk.run_wrk(
                    t.url, connections=args.connections, duration=3, token=key, learners=args.hot
                )
                wait_quiet(t.url)
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            spans_before = receiver.spans
            for r in range(args.rounds):
                for t in targets if r % 2 == 0 else targets[::-1]:
                    hits0 = _fast_path_hits(metrics_urls[t.name])
                    cpu0 = cpu_seconds(t.proc.pid)
                    res = wrk.run_wrk(
                        t.url,
                        connections=args.connections,
                        duration=args.duration,
                        token=key,
                        learners=args.hot,
                        timeout=args.timeout,
                        seed=42 + r,
                    )
                    # CPU per request: what a request costs the replica, however busy the
                    # machine is with other work (throughput alone moves with that).
                    cpu = cpu_seconds(t.proc.pid) - cpu0
                    res["cpu_us_per_request"] = round(cpu / max(res["requests"], 1) * 1e6, 1)
                    res["fast_path_hits"] = int(_fast_path_hits(metrics_urls[t.name]) - hits0)
                    res["quiesce_s"] = wait_quiet(t.url)
                    runs[t.name].append(res)
                    lat = res["latency_ms"]
                    print(
                        f"  round {r + 1} {t.name:>7} {res['ok_rps']:>8} 2xx/s p50 {lat['p50']}"
                        f" ms p99 {lat['p99']} ms cpu/request {res['cpu_us_per_request']} µs"
                        f" statuses {res['statuses']}"
                        f" fast-path hits {res['fast_path_hits']}",
                        flush=True,
                    )
            time.sleep(6)  # the batch processor's default delay: the last spans arrive
            spans = receiver.spans - spans_before
            crashed = {t.name: t.proc.poll() for t in targets if t.proc.poll() is not None}
            logs = {t.name: log_tail(t.log, 20) for t in targets}
        finally:
            cleanup: list[Callable[[], object]] = [functools.partial(stop, t) for t in targets]
            if bouncer is not None:
                cleanup.append(functools.partial(proxy.stop_pgbouncer, bouncer))
            if redis is not None:
                cleanup.append(redis.stop)
            cleanup.append(receiver.stop)
            run_all(cleanup)
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {name: tools.summarize_rounds(rs) for name, rs in runs.items()}
    base_rps = summary[BEFORE]["ok_rps"]
    # Paired by round: the servers of one round ran back to back, under the same conditions.
    paired = {
        name: [
            round(x["ok_rps"] / max(b["ok_rps"], 1e-9), 3)
            for x, b in zip(runs[name], runs[BEFORE], strict=True)
        ]
        for name in args.servers
        if name != BEFORE
    }
    requests_on = sum(r["requests"] for r in runs.get(ON, []))
    cpu_us = {n: statistics.median(r["cpu_us_per_request"] for r in rs) for n, rs in runs.items()}
    shown = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return run_header("tracing", shown, nofile) | {
        "setup": timings | {"ready_s": round(time.monotonic() - started)},
        "runs": runs,
        "summary": summary,
        "ratios_to_before": {
            n: round(s["ok_rps"] / max(base_rps, 1e-9), 3) for n, s in summary.items()
        },
        "paired_ratios_to_before": paired,
        "median_paired_ratio_to_before": {n: statistics.median(v) for n, v in paired.items()},
        "cpu_us_per_request_median": cpu_us,
        "cpu_ratio_to_before": {
            n: round(c / max(cpu_us[BEFORE], 1e-9), 3) for n, c in cpu_us.items()
        },
        "spans_received_on": spans,
        "spans_per_request_on": round(spans / max(requests_on, 1), 4),
        "exited_early": crashed,
        "log_tails": logs,
        "wall_s": round(time.monotonic() - started, 1),
    }


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"| server (cached hits, c={p['connections']}, {p['hot']:,} hot learners) | 2xx req/s"
        " (mean; rounds) | vs before (mean; per round) | CPU µs per request (median) |"
        " vs before | p50 (ms) | p99 (ms) | non-2xx / socket errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["summary"].items():
        rounds = ", ".join(f"{v:,.0f}" for v in s["ok_rps_rounds"])
        paired = result["paired_ratios_to_before"].get(name)
        per_round = ", ".join(f"{v:.3f}" for v in paired) if paired else "-"
        lines.append(
            f"| {name} | {s['ok_rps']:,.0f} ({rounds}) |"
            f" {result['ratios_to_before'][name]:.3f} ({per_round}) |"
            f" {result['cpu_us_per_request_median'][name]} |"
            f" {result['cpu_ratio_to_before'][name]:.3f} | {s['p50_ms']} |"
            f" {s['p99_ms']} | {s['non_2xx']} / {s['socket_errors']} |"
        )
    lines += [
        "",
        f"Spans received from `{ON}`: {result['spans_received_on']:,}"
        f" ({result['spans_per_request_on']} per request). Wall time {result['wall_s']} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_tracing")
    p.add_argument(
        "--before", type=Path, default=Path("/tmp/before"), help="checkout of the earlier build"
    )
    p.add_argument("--before-ref", default=None, help="add a worktree of this ref at --before")
    p.add_argument(
        "--servers",
        type=lambda text: text.split(","),
        default=[BEFORE, OFF, ON],
        help=f"which of {BEFORE},{OFF},{ON} to measure ({BEFORE} always included)",
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=6, help="rounds (the order alternates)")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--hot", type=int, default=1000, help="learner ids 1..N of the hit-only load")
    p.add_argument("--learners", type=int, default=2000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--timeout", type=float, default=10.0, help="wrk --timeout (s)")
    p.add_argument("--max-seconds", type=int, default=600, help="abort (and clean up) after")
    args = p.parse_args(argv)
    unknown = set(args.servers) - {BEFORE, OFF, ON}
    if unknown:
        p.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.servers = [BEFORE, *[n for n in (OFF, ON) if n in args.servers]]
    with budget(args.max_seconds):
        result = run(args)
    record("tracing", result, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
