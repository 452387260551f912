"""Load generators for the concurrency benchmark: wrk, and a latency-by-status probe.

`run_wrk` drives one target with Debian's wrk and a Lua script that spreads requests over
learner ids 1..N (random, fixed seed per thread), sends the Authorization header, counts
responses per status in per-thread tables and prints one JSON block from `done` (status
counts aggregated over the threads table, latency percentiles, wrk's error counters).

wrk's Lua API cannot tell which request a response belongs to (one Lua state serves every
connection of a thread), so it cannot time the 503s alone. `shed_probe` does that part: an
asyncio client (uvloop when available) holding many keep-alive connections that times every
response and groups latencies by status (each connection's first response, which includes
waiting for the server to accept it, is reported apart). It also measures its own event-loop
lag, since a Python client at 1,000 connections adds its own delay: its figures are upper
bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

__all__ = ["LUA", "WrkError", "latency_summary", "run_script", "run_wrk", "shed_probe"]

MARK_BEGIN = "-----BEGIN WRK JSON-----"
MARK_END = "-----END WRK JSON-----"
PERCENTILES = (50, 90, 99, 99.9)

LUA = r"""
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

-- statuses is a global: thread:get() reads globals of the thread's Lua state.
local learners, path_fmt

function init(args)
  learners = tonumber(args[1])
  path_fmt = args[2]
  wrk.headers["Authorization"] = "Bearer " .. args[3]
  math.randomseed(tonumber(args[4]) + tid * 7919)
  statuses = {}
end

function request()
  return wrk.format("GET", string.format(path_fmt, math.random(1, learners)))
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
    end
  end
  local parts = {}
  for k, v in pairs(total) do table.insert(parts, string.format('"%s": %d', k, v)) end
  local pct = {}
  for _, p in ipairs({50, 90, 99, 99.9}) do
    table.insert(pct, string.format('"%g": %d', p, latency:percentile(p)))
  end
  local e = summary.errors
  io.write("-----BEGIN WRK JSON-----\n")
  io.write(string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, "statuses": {%s},'
    .. ' "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d},'
    .. ' "latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f,'
    .. ' "percentiles": {%s}}}\n',
    summary.duration, summary.requests, summary.bytes, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ", ")))
  io.write("-----END WRK JSON-----\n")
end
"""


class WrkError(RuntimeError):
    """wrk failed, timed out or printed no JSON block; the message carries its output."""


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    token: str,
    learners: int,
    path: str = "/v1/learners/%d/weaknesses",
    threads: int = 2,
    timeout: float = 35.0,
    seed: int = 42,
) -> dict[str, Any]:
    """One bounded wrk run against url (scheme://host:port); returns the parsed figures."""
    return run_script(
        url,
        LUA,
        [str(learners), path, token, str(seed)],
        connections=connections,
        duration=duration,
        threads=threads,
        timeout=timeout,
    )


def run_script(
    url: str,
    script: str,
    script_args: list[str],
    *,
    connections: int,
    duration: float,
    threads: int = 2,
    timeout: float = 35.0,
) -> dict[str, Any]:
    """One bounded wrk run of a Lua script that prints LUA's JSON block from `done` (LUA
    itself, or LUA followed by functions that replace its init/request), script_args after
    `--`; returns the parsed figures."""
    binary = shutil.which("wrk") or "/usr/bin/wrk"
    with tempfile.TemporaryDirectory(prefix="skillcoach-wrk-") as tmp:
        script_path = Path(tmp) / "bench.lua"
        script_path.write_text(script)
        cmd = [
            binary,
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{duration:g}s",
            f"--timeout={timeout:g}s",
            "--latency",
            "-s",
            str(script_path),
            url.rstrip("/"),
            "--",
            *script_args,
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise WrkError(f"wrk did not finish: {' '.join(cmd[:6])}") from exc
    out = proc.stdout
    m = re.search(re.escape(MARK_BEGIN) + r"\s*(\{.*?\})\s*" + re.escape(MARK_END), out, re.S)
    if proc.returncode != 0 or m is None:
        raise WrkError(f"wrk exited {proc.returncode}:\n{out[-2000:]}\n{proc.stderr[-2000:]}")
    raw: dict[str, Any] = json.loads(m.group(1))
    return _figures(raw, connections=connections)


def _figures(raw: dict[str, Any], *, connections: int) -> dict[str, Any]:
    """The figures of wrk's JSON block (LUA's `done`): rates, statuses, errors, latency."""
    seconds = raw["duration_us"] / 1e6
    statuses = {int(k): int(v) for k, v in raw["statuses"].items()}
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    shed = statuses.get(503, 0)
    lat = raw["latency_us"]
    ms = {f"p{k}": round(v / 1000, 2) for k, v in lat["percentiles"].items()}
    errors = raw["errors"]
    socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    rps = raw["requests"] / seconds
    # Little's law: with `connections` requests always outstanding, the mean latency of the
    # answered ones cannot exceed connections / rate. A mean above it is the client's error.
    bound_ms = connections / rps * 1000 if rps else None
    return {
        "connections": connections,
        "seconds": round(seconds, 2),
        "requests": raw["requests"],
        "rps": round(rps, 1),
        "ok_rps": round(ok / seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ok": ok,
        "shed_503": shed,
        "other": raw["requests"] - ok - shed,
        "non_2xx": raw["requests"] - ok,
        "socket_errors": errors,
        "socket_errors_total": socket_errors,
        "latency_ms": {
            **ms,
            "mean": round(lat["mean"] / 1000, 2),
            "max": round(lat["max"] / 1000, 2),
            "little_bound": None if bound_ms is None else round(bound_ms, 2),
        },
        "latency_consistent": bound_ms is None or lat["mean"] / 1000 <= bound_ms * 1.05 + 0.5,
    }


# -- latency by status: an asyncio client ----------------------------------------------------


def latency_summary(samples: list[float]) -> dict[str, float]:
    """Percentiles in ms of samples in seconds (nearest rank); empty dict for no samples."""
    if not samples:
        return {}
    ms = sorted(s * 1000 for s in samples)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, max(0, round(p / 100 * len(ms)) - 1))], 2)

    return {"count": len(ms), "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": ms[-1]}


async def _one_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; (status, server keeps the connection open)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("connection closed before a response")
    status = int(status_line.split(b" ", 2)[1])
    length, keep = 0, True
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"connection" and value.strip().lower() == b"close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


async def _probe(
    host: str,
    port: int,
    *,
    connections: int,
    total: int,
    deadline: float,
    token: str,
    learners: int,
    path: str,
    request_timeout: float,
) -> dict[str, Any]:
    by_status: dict[int, list[float]] = defaultdict(list)
    # A connection's first response also waits for the saturated server to accept() it:
    # kept apart, so by_status is the steady state of established connections.
    first: list[float] = []
    counts: dict[int, int] = defaultdict(int)  # every response, first ones included
    errors: dict[str, int] = defaultdict(int)
    remaining = total
    stop_at = time.monotonic() + deadline
    lag: list[float] = []
    head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"

    async def conn_worker(i: int) -> None:
        nonlocal remaining
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        n, fresh = i, True
        while remaining > 0 and time.monotonic() < stop_at:
            remaining -= 1
            n += connections
            try:
                if stream is None:
                    stream = await asyncio.wait_for(
                        asyncio.open_connection(host, port), request_timeout
                    )
                    fresh = True
                reader, writer = stream
                req = f"GET {path % (n % learners + 1)} HTTP/1.1\r\n{head}".encode()
                t0 = time.perf_counter()
                writer.write(req)
                status, keep = await asyncio.wait_for(_one_response(reader), request_timeout)
                (first if fresh else by_status[status]).append(time.perf_counter() - t0)
                counts[status] += 1
                fresh = False
                if not keep:
                    writer.close()
                    stream = None
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors[type(exc).__name__] += 1
                if stream is not None:
                    stream[1].close()
                    stream = None
        if stream is not None:
            stream[1].close()

    async def lag_meter() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lag.append(time.perf_counter() - t0 - 0.01)

    meter = asyncio.create_task(lag_meter())
    started = time.perf_counter()
    await asyncio.gather(*(conn_worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    meter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await meter
    done = sum(counts.values())
    return {
        "connections": connections,
        "requests": done,
        "seconds": round(elapsed, 2),
        "rps": round(done / elapsed, 1) if elapsed else 0.0,
        "statuses": {str(k): v for k, v in sorted(counts.items())},
        "first_on_connection_ms": latency_summary(first),
        "errors": dict(errors),
        "latency_ms_by_status": {str(k): latency_summary(v) for k, v in sorted(by_status.items())},
        "client_loop_lag_ms": latency_summary(lag),
    }


def shed_probe(
    host: str,
    port: int,
    *,
    connections: int = 1000,
    total: int = 30_000,
    deadline: float = 10.0,
    token: str,
    learners: int,
    path: str = "/v1/learners/%d/weaknesses",
    request_timeout: float = 35.0,
) -> dict[str, Any]:
    """Hold `connections` keep-alive connections; time each response, grouped by status."""
    coro: Coroutine[Any, Any, dict[str, Any]] = _probe(
        host,
        port,
        connections=connections,
        total=total,
        deadline=deadline,
        token=token,
        learners=learners,
        path=path,
        request_timeout=request_timeout,
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
