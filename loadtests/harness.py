"""What the benchmark runners share: the local PostgreSQL (admin SQL, scratch databases), the
servers under test as subprocesses (spawn, readiness, quiescence, stop), their preparation
(migrate, seed, train + promote, an API key) and one wrk measurement with /metrics scrapes.

Every runner starts its servers the same way: the caller's environment without its
SKILLCOACH_* settings, the repository root as working directory, the log in a scratch
directory, SIGTERM then SIGKILL on stop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from loadtests.h2load import run_h2load, uniform_ids
from loadtests.recording import run_all
from skillcoach.data.api_keys import Scope, create_api_key
from skillcoach.data.database import create_sync_engine
from skillcoach.data.migrate import upgrade
from skillcoach.data.model_registry import promote
from skillcoach.ml.seeding import seed_database
from skillcoach.ml.simulator import SimulationParams
from skillcoach.ml.training import train_and_store
from skillcoach_devstack.processes import free_port, free_ports, log_tail, terminate, wait_until

__all__ = [
    "ADMIN_DSN",
    "PG_SERVER",
    "ROOT",
    "Scrape",
    "Target",
    "admin_sql",
    "clean_env",
    "cpu_seconds",
    "cpu_times",
    "database_dsn",
    "database_url",
    "http_get",
    "measure_run",
    "parse_cpu_times",
    "prepare",
    "raise_nofile",
    "scrape",
    "scratch_database",
    "serve_cmd",
    "serve_env",
    "spawn",
    "spawn_ceiling",
    "spawn_naive",
    "spawn_ready",
    "stop",
    "wait_quiet",
    "wait_ready",
]

ROOT = Path(__file__).resolve().parents[1]
# The local PostgreSQL every runner uses (the superuser, trust auth on loopback). Admin
# statements (CREATE/DROP DATABASE, DROP ROLE) run from the `test` database.
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN_DSN = f"{PG_SERVER}/test"

# One /metrics scrape (see `scrape`): samples by "name{labels}", or why it failed.
Scrape = dict[str, float] | str


# -- PostgreSQL -------------------------------------------------------------------------------


def database_dsn(database: str) -> str:
    """libpq/psycopg2 DSN of a database on the local server."""
    return f"{PG_SERVER}/{database}"


def database_url(database: str) -> str:
    """SQLAlchemy URL (psycopg2 driver) of a database on the local server."""
    return database_dsn(database).replace("postgresql://", "postgresql+psycopg2://", 1)


def admin_sql(sql: str) -> None:
    """One statement on the local server, autocommit (CREATE/DROP DATABASE cannot run in a
    transaction)."""
    conn = psycopg2.connect(ADMIN_DSN)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextlib.contextmanager
def scratch_database(prefix: str = "skillcoach_bench") -> Iterator[str]:
    """A new, empty database `<prefix>_<8 hex>`; dropped WITH (FORCE) on exit. A failed drop
    is printed, not raised (see recording.run_all): it cannot hide the run's own error."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        run_all([functools.partial(admin_sql, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')])


def prepare(
    url: str,
    params: SimulationParams,
    *,
    key_name: str,
    scopes: frozenset[Scope] = frozenset({Scope.READ}),
) -> tuple[str, dict[str, float]]:
    """Migrate, seed, train + promote, create an API key; returns (key, timings)."""
    upgrade(url)
    engine = create_sync_engine(url)
    try:
        t0 = time.perf_counter()
        seed_database(engine, params, progress=False, replace=False)
        t1 = time.perf_counter()
        report = train_and_store(engine, seed=0, test_fraction=0.2)
        with engine.begin() as conn:
            promote(conn, version=report.version)
            key = create_api_key(conn, name=key_name, scopes=scopes)
        t2 = time.perf_counter()
    finally:
        engine.dispose()
    return key, {"seed_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2)}


# -- servers under test -----------------------------------------------------------------------


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    # Where a skillcoach replica serves /metrics (None: another server, or on `port`).
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        port = self.port if self.metrics_port is None else self.metrics_port
        return f"http://127.0.0.1:{port}/metrics"


def raise_nofile() -> int:
    """wrk at 1,000 connections (and the servers accepting them) needs file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by children
    return max(soft, want)


def clean_env() -> dict[str, str]:
    """This process's environment without SKILLCOACH_* settings: the base of every server's."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SKILLCOACH_")}


def serve_cmd() -> list[str]:
    return [sys.executable, "-m", "skillcoach.cli", "serve"]


def serve_env(
    base: dict[str, str], *, port: int, database_url: str, redis_url: str | None = None
) -> dict[str, str]:
    """`skillcoach serve` settings: dev, warnings only, cached on redis_url (None: cache off),
    /metrics on a free port of its own (spawn records it in the Target)."""
    env = base | {
        "SKILLCOACH_DATABASE_URL": database_url,
        "SKILLCOACH_PORT": str(port),
        # Distinct from `port`, which the caller chose a moment ago (the kernel may reuse it).
        "SKILLCOACH_METRICS_PORT": str(next(p for p in free_ports(2) if p != port)),
        "SKILLCOACH_CACHE_ENABLED": "false" if redis_url is None else "true",
        "SKILLCOACH_ENVIRONMENT": "dev",
        "SKILLCOACH_LOG_LEVEL": "warning",
        # Stopped after its runs, with no load balancer to drain from: no 5 s wait.
        "SKILLCOACH_SHUTDOWN_DRAIN_SECONDS": "0",
    }
    if redis_url is not None:
        env["SKILLCOACH_REDIS_URL"] = redis_url
    return env


def spawn(name: str, cmd: list[str], env: dict[str, str], port: int, logdir: Path) -> Target:
    """Start cmd; a skillcoach replica's metrics port is read from its SKILLCOACH_METRICS_PORT
    (0 or unset: /metrics on `port`)."""
    log = logdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    metrics = int(env.get("SKILLCOACH_METRICS_PORT") or 0)
    return Target(name, proc, port, log, metrics_port=metrics or None)


def spawn_naive(name: str, database_url: str, env: dict[str, str], logdir: Path) -> Target:
    """The naive reference app (loadtests/naive_app.py) on a free port, direct to PostgreSQL."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.naive_app", "--port", str(port)]
    return spawn(name, [*cmd, "--database-url", database_url], env, port, logdir)


def spawn_ceiling(name: str, database_url: str, env: dict[str, str], logdir: Path) -> Target:
    """The db ceiling app (loadtests/db_ceiling_app.py) on a free port, through PgBouncer."""
    port = free_port()
    cmd = [sys.executable, "-m", "loadtests.db_ceiling_app", "--port", str(port)]
    return spawn(name, [*cmd, "--database-url", database_url], env, port, logdir)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def wait_ready(t: Target, path: str, timeout: float = 60.0) -> None:
    """Until t answers 200 on path; raises with its log's tail if it exits or times out."""

    def ready() -> bool:
        if t.proc.poll() is not None:
            raise RuntimeError(f"{t.name} exited {t.proc.returncode}:\n{log_tail(t.log)}")
        return http_get(t.url + path, timeout=2)[0] == 200

    if not wait_until(ready, timeout, interval=0.2):
        raise RuntimeError(f"{t.name} not ready within {timeout:g}s:\n{log_tail(t.log)}")


def spawn_ready(name: str, module: str, logdir: Path, *options: str) -> Target:
    """`python -m <module> --port <free port> <options>` (a reference server of loadtests/)
    with this process's environment, once it answers /healthz."""
    port = free_port()
    cmd = [sys.executable, "-m", module, "--port", str(port), *options]
    t = spawn(name, cmd, dict(os.environ), port, logdir)
    wait_ready(t, "/healthz")
    return t


def wait_quiet(url: str, timeout: float = 45.0) -> float:
    """Until /healthz answers within 100 ms twice: no backlog leaks into the next run."""
    start = time.monotonic()
    fast = 0
    while time.monotonic() - start < timeout and fast < 2:
        t0 = time.perf_counter()
        status, _ = http_get(url + "/healthz", timeout=5)
        fast = fast + 1 if status == 200 and time.perf_counter() - t0 < 0.1 else 0
        time.sleep(0.2)
    return round(time.monotonic() - start, 2)


def stop(t: Target) -> None:
    if t.proc.poll() is None:
        terminate(t.proc.pid, timeout=15)  # SIGTERM, then SIGKILL after the grace period
    t.proc.wait(5)


# -- one measurement --------------------------------------------------------------------------


def scrape(t: Target) -> Scrape:
    """skillcoach_* samples of /metrics (no histogram buckets) and the scrape's own time."""
    t0 = time.perf_counter()
    status, body = http_get(t.metrics_url, timeout=5)
    took = round((time.perf_counter() - t0) * 1000, 1)
    if status != 200:
        return f"scrape failed after {took} ms: HTTP {status or 'no answer'}"
    samples: dict[str, float] = {"scrape_ms": took}
    for line in body.decode().splitlines():
        if line.startswith("skillcoach_") and "_bucket{" not in line and "_created" not in line:
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def parse_cpu_times(stat: str, ticks_per_second: int) -> tuple[float, float]:
    """(user, system) CPU seconds from a /proc/PID/stat line. The command name (field 2) is
    in parentheses and may hold spaces and parentheses itself: fields count from the last ')'."""
    fields = stat.rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    return int(fields[11]) / ticks_per_second, int(fields[12]) / ticks_per_second


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU the process has used so far, all its threads."""
    return parse_cpu_times(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far, all its threads (/proc/<pid>/stat)."""
    return sum(cpu_times(pid))


def with_server_cpu(t: Target, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()`'s result plus the CPU the target's process spent during it: per request (ms,
    every answer counted) and as a share of one core. On a shared 2-core host this is what
    tells a server that costs more per request from one that waits on a busy machine."""
    pid = t.proc.pid
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    result = run()
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    result["server_cpu"] = {
        "ms_per_request": round(1000 * cpu / max(1, int(result["requests"])), 3),
        "utilization": round(cpu / wall, 2) if wall > 0 else 0.0,
    }
    return result


def measure_run(
    t: Target,
    connections: int,
    args: argparse.Namespace,
    key: str,
    metrics_of: Target | None = None,
) -> dict[str, Any]:
    """One h2load run over learner ids 1..args.learners (args: duration, learners, timeout);
    for skillcoach (or `metrics_of`) also its /metrics before, during, at the end and once
    settled."""
    scrapes: dict[str, Scrape] = {}
    timer = None
    sc = metrics_of or (t if t.name == "skillcoach" else None)
    if sc is not None:
        scrapes["before"] = scrape(sc)

        def during(sc: Target = sc) -> None:
            scrapes["during"] = scrape(sc)

        timer = threading.Timer(args.duration / 2, during)
        timer.start()
    try:
        result = with_server_cpu(
            t,
            lambda: run_h2load(
                t.url,
                connections=connections,
                duration=args.duration,
                token=key,
                ids=uniform_ids(args.learners, seed=42 + connections),
                timeout=args.timeout,
            ),
        )
    finally:
        if timer is not None:
            timer.join()
    if sc is not None:
        scrapes["end"] = scrape(sc)
    result["quiesce_s"] = wait_quiet(t.url)
    if sc is not None:
        scrapes["settled"] = scrape(sc)  # checked_out must be back to 0 here
        result["metrics"] = scrapes
    p99, errors = result["latency_ms"]["p99"], result["socket_errors_total"]
    cpu = result["server_cpu"]["ms_per_request"]
    line = f"{t.name:>18} c={connections:<5} {result['ok_rps']:>8} 2xx/s  p99 {p99} ms"
    line += f"  cpu {cpu} ms/req"
    print(f"  {line}  statuses {result['statuses']}  socket errors {errors}", flush=True)
    return result
