"""The proxies of the concurrency benchmark: PgBouncer in front of the scratch database, and
HAProxy in front of the skillcoach replica, as in every deployment.

Both use the stack's own classes and templates (skillcoach_devstack.pgbouncer, .haproxy) on free
ports, with their runtime files in scratch directories removed on stop. HAProxy has one
server, the replica, whose maxconn is the replica's own in-flight limit: HAProxy answers the
requests beyond it with its own 503 problem+json (after at most `timeout queue`), so the
replica never has to shed them itself.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtests.harness import database_dsn
from loadtests.wrk import latency_summary
from skillcoach_devstack.errors import StackError
from skillcoach_devstack.haproxy import BACKEND, HAProxy, HAProxyConfig, Server
from skillcoach_devstack.haproxy import default_template_path as haproxy_template
from skillcoach_devstack.pgbouncer import (
    PgBouncer,
    start_ephemeral,
    stop_ephemeral,
)
from skillcoach_devstack.processes import free_ports, log_tail

__all__ = [
    "haproxy_in_front",
    "haproxy_report",
    "in_flight_limit",
    "own_503_ms",
    "own_503_text",
    "start_haproxy",
    "start_pgbouncer",
    "stop_haproxy",
    "stop_pgbouncer",
]

# Columns of HAProxy's stats CSV worth keeping: current/peak queue, current/peak/limit of
# concurrent requests to the replica, requests by status class, the check status.
STATS = ("qcur", "qmax", "scur", "smax", "slim", "stot", "hrsp_2xx", "hrsp_5xx", "status")
# An httplog line of a 503 HAProxy produced itself (no server answered): the timers
# TR/Tw/Tc/Tr/Ta (Ta: total, ms), then the status and, after the cookies, the termination state.
_OWN_503 = re.compile(r" \S+/<NOSRV> -?\d+/-?\d+/-?\d+/-?\d+/(\d+) 503 \d+ \S+ \S+ (\S\S)")


def start_pgbouncer(database: str) -> PgBouncer:
    """A throw-away PgBouncer in front of the local server's `database`."""
    return start_ephemeral(database_dsn(database))


stop_pgbouncer = stop_ephemeral


def start_haproxy(backend_port: int, *, maxconn: int, timeout_queue: str | None) -> HAProxy:
    """A started HAProxy in front of 127.0.0.1:backend_port (retried on a lost port race);
    timeout_queue None keeps the stack's default."""
    last: StackError | None = None
    for _ in range(3):
        listen_port, stats_port = free_ports(2)
        config = HAProxyConfig(
            listen_port=listen_port,
            stats_port=stats_port,
            servers=(Server("api", backend_port),),
            server_maxconn=maxconn,
            hard_stop_after="5s",
        )
        if timeout_queue is not None:
            config = dataclasses.replace(config, timeout_queue=timeout_queue)
        workdir = Path(tempfile.mkdtemp(prefix="skillcoach-bench-haproxy-"))
        lb = HAProxy(
            config=config,
            runtime_dir=workdir / "run",
            logfile=workdir / "haproxy.log",
            template_path=haproxy_template(),
        )
        try:
            lb.apply(timeout=15)
        except StackError as exc:
            last = exc
            stop_haproxy(lb)
            continue
        return lb
    raise RuntimeError(f"HAProxy did not start: {last}")


def stop_haproxy(lb: HAProxy) -> None:
    """Stop it (bounded: soft stop, then SIGTERM/SIGKILL) and remove its scratch directory."""
    try:
        lb.stop(timeout=8)
    finally:
        shutil.rmtree(lb.runtime_dir.parent, ignore_errors=True)


@contextlib.contextmanager
def haproxy_in_front(
    backend_port: int, maxconn: int, timeout_queue: str | None = None
) -> Iterator[HAProxy]:
    lb = start_haproxy(backend_port, maxconn=maxconn, timeout_queue=timeout_queue)
    try:
        yield lb
    finally:
        stop_haproxy(lb)


def in_flight_limit(metrics_url: str) -> int:
    """The replica's own admission limit (pool capacity + queue allowance), from its /metrics
    (metrics_url, on its metrics port): HAProxy's maxconn for it."""
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"^skillcoach_http_in_flight_limit ([0-9.e+]+)$", text, re.M)
    if m is None:
        raise RuntimeError(f"no skillcoach_http_in_flight_limit in {metrics_url}")
    return int(float(m.group(1)))


def own_503_ms(logfile: Path) -> dict[str, Any]:
    """HAProxy's own 503s as its log times them (one line each: they count as abnormal):
    those refused from the queue (termination state sQ) and any other, with the percentiles
    of Ta, from the request's first byte to the response. This leaves out the client and the
    kernel, so it is what the proxy itself takes to shed, not what a client sees."""
    refused: list[float] = []
    other = 0
    with logfile.open(errors="replace") as log:
        for line in log:
            m = _OWN_503.search(line)
            if m is None:
                continue
            if m.group(2) == "sQ":
                refused.append(int(m.group(1)) / 1000)
            else:
                other += 1
    return {"queue_refused": latency_summary(refused), "other_own_503": other}


def own_503_text(shed: dict[str, Any]) -> str:
    """For the markdown: HAProxy's own time for its 503s, from a shed phase's "haproxy"."""
    own = shed.get("haproxy", {}).get("own_503_ms", {}).get("queue_refused")
    if not own:
        return ""
    return (
        f"; HAProxy's own time for its {own['count']:,} queue-refused 503s (its log: first"
        f" request byte to response) p50 {own['p50']} / p99 {own['p99']} ms"
    )


def haproxy_report(lb: HAProxy) -> dict[str, Any]:
    """Its limits, the backend's and server's stats, its own 503s from its log, and the log's
    tail (the check transitions)."""
    stats: dict[str, dict[str, Any]] | str
    try:
        with urllib.request.urlopen(f"{lb.stats_url};csv", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        stats = f"stats unavailable: {exc}"
    else:
        stats = {}
        for row in csv.DictReader(io.StringIO(text.removeprefix("# "))):
            if row.get("pxname") == BACKEND:
                stats[row["svname"]] = {k: _num(row.get(k) or "") for k in STATS}
    return {
        "server_maxconn": lb.config.server_maxconn,
        "timeout_queue": lb.config.timeout_queue,
        "stats": stats,
        "log_bytes": lb.logfile.stat().st_size if lb.logfile.exists() else 0,
        "own_503_ms": own_503_ms(lb.logfile) if lb.logfile.exists() else {},
        "log_tail": log_tail(lb.logfile, 8) if lb.logfile.exists() else "",
    }


def _num(value: str) -> int | str:
    return int(value) if value.isdigit() else value
