"""Where an uncached request's CPU goes, measured inside one process:

    python -m loadtests breakdown [--rounds 12] [--batch 2000] [--tasks 16]

One replica's application (`create_app`, cache off) on a scratch database behind PgBouncer,
driven in-process through its ASGI callable by `--tasks` concurrent tasks (no HTTP, no load
generator sharing the CPU): GET /v1/learners/{id}/weaknesses for ids cycling over all
learners. Four variants take turns in batches within the one process (the order reverses every
round), so the host's drift falls on all of them alike; each answers one more part of the
request from memory (filled on its first use, per learner), so that part's CPU drops out:

- full:        as served;
- no I/O:      the database's reply comes from memory: the socket round trip through
               PgBouncer and psycopg2's send, wait and decode are gone;
- no database: the whole evidence read from memory: also the DB gate, the connection, the
               read's deadline, the statement capture and replay, the evidence arrays;
- no model:    also the model's ranking (`weakness_columns`) from memory, per evidence: left
               is the request's own work (fast path, auth, admission, JSON body, metrics).

The differences between neighbours are the parts. CPU is the process's (`time.process_time`)
per request, the median over rounds. Writes loadtests/results/breakdown-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvloop

import skillcoach.answers.learner_answers as answers_module
import skillcoach.data.database as database_module
from loadtests import proxy
from loadtests.harness import database_url, prepare, scratch_database
from loadtests.recording import budget, record
from skillcoach.api.app import create_app
from skillcoach.data.database import Database
from skillcoach.data.learner_reads import SKILL_EVIDENCE_MANY_SQL, fetch_skill_evidences
from skillcoach.data.records import SkillEvidence
from skillcoach.ml.analysis import Weaknesses
from skillcoach.ml.model import BestLR
from skillcoach.ml.simulator import SimulationParams
from skillcoach.settings import load_settings

__all__ = ["PARTS", "VARIANTS", "Memo", "main", "markdown", "measure", "parts_of", "variant"]

# Each variant removes everything its predecessors removed, and one more part: the part a
# variant's successor removes (the last one keeps what no variant removes).
VARIANTS = ("full", "no I/O", "no database", "no model")
PARTS = ("database I/O", "data layer around it", "model ranking", "the rest of the request")

ASGIApp = Callable[..., Awaitable[None]]


@dataclass
class Memo:
    """What each variant answered from memory, and how often (a variant that answers
    nothing from memory removed nothing: the benchmark would measure nothing)."""

    replies: dict[str, Any] = field(default_factory=dict)
    columns: Any = None  # the evidence statement's cursor description
    rows: dict[int, list[Any]] = field(default_factory=dict)  # its rows, per learner
    evidence: dict[int, Any] = field(default_factory=dict)
    ranked: dict[int, tuple[SkillEvidence, Weaknesses]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VARIANTS[1:], 0))


@contextlib.contextmanager
def variant(name: str, memo: Memo) -> Iterator[None]:
    """Patch the parts `name` answers from memory; undone on exit."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}")
    level = VARIANTS.index(name)
    # (owner, attribute) of each patch point, in the variants' order. The patched names are
    # looked up where they are used (database.run_statement in Database._loop_read, and so on).
    points: list[tuple[object, str]] = [
        (database_module, "run_statement"),
        (Database, "run"),
        (answers_module, "weakness_columns"),
    ]
    saved = [getattr(owner, attr) for owner, attr in points]
    run_statement, run, rank = saved

    async def remembered_reply(conn: Any, sql: str, parameters: Any, *a: Any) -> Any:
        # The timeout prefix differs per request; the statement and its parameters do not.
        statement = sql.partition(";")[2].strip()
        if statement == SKILL_EVIDENCE_MANY_SQL:
            return await remembered_evidence_rows(conn, sql, parameters, *a)
        key = f"{statement}|{sorted((parameters or {}).items())!r}"
        if key in memo.replies:
            memo.hits["no I/O"] += 1
            return memo.replies[key]
        reply = memo.replies[key] = await run_statement(conn, sql, parameters, *a)
        return reply

    async def remembered_evidence_rows(conn: Any, sql: str, parameters: Any, *a: Any) -> Any:
        # Requests in flight together share one statement, in ever new combinations: each
        # learner's rows are remembered apart and the reply of a batch put together from them.
        learners = list(dict.fromkeys(parameters["ids"]))
        if memo.columns is not None and all(learner in memo.rows for learner in learners):
            memo.hits["no I/O"] += len(learners)
            return memo.columns, [row for learner in learners for row in memo.rows[learner]]
        columns, rows = await run_statement(conn, sql, parameters, *a)
        memo.columns = columns
        for learner in learners:
            memo.rows[learner] = [row for row in rows if row[0] == learner]
        return columns, rows

    async def remembered_read(self: Database, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        learners = kwargs.get("learner_ids")
        if fn is not fetch_skill_evidences or learners is None:
            return await run(self, fn, *args, **kwargs)
        if all(learner in memo.evidence for learner in learners):
            memo.hits["no database"] += len(learners)
            known = {learner: memo.evidence[learner] for learner in learners}
            return {learner: e for learner, e in known.items() if e is not None}
        found = await run(self, fn, *args, **kwargs)
        for learner in learners:
            memo.evidence[learner] = found.get(learner)
        return found

    def remembered_rank(model: BestLR, evidence: SkillEvidence, **kwargs: Any) -> Weaknesses:
        known = memo.ranked.get(id(evidence))
        if known is not None and known[0] is evidence:
            memo.hits["no model"] += 1
            return known[1]
        ranked: Weaknesses = rank(model, evidence, **kwargs)
        memo.ranked[id(evidence)] = (evidence, ranked)
        return ranked

    patches = [remembered_reply, remembered_read, remembered_rank]
    try:
        for (owner, attr), patch in zip(points[:level], patches, strict=False):
            setattr(owner, attr, patch)
        yield
    finally:
        for (owner, attr), original in zip(points, saved, strict=True):
            setattr(owner, attr, original)


def parts_of(medians: dict[str, float]) -> dict[str, float]:
    """Microseconds per request of each part, from the variants' medians."""
    after = [medians[v] for v in VARIANTS[1:]] + [0.0]
    return {part: medians[v] - rest for part, v, rest in zip(PARTS, VARIANTS, after, strict=True)}


# -- driving the application ------------------------------------------------------------------


async def _lifespan(app: ASGIApp, started: asyncio.Event, stop: asyncio.Event) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "lifespan.startup"}
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the application did not start: {message.get('message')}")
        if message["type"] == "lifespan.startup.complete":
            started.set()

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)


async def _get(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    status = 0
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def _batch(
    app: ASGIApp, ids: list[int], tasks: int, headers: list[tuple[bytes, bytes]]
) -> dict[int, int]:
    statuses: dict[int, int] = {}
    todo = iter(ids)

    async def worker() -> None:
        for learner in todo:
            code = await _get(app, f"/v1/learners/{learner}/weaknesses", headers)
            statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return statuses


async def _measure(url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(
        database_url=url, environment="dev", metrics_port=0, cache_enabled=False,
        cache_warm_learners=0,
    )  # fmt: skip
    app: ASGIApp = create_app(settings)
    started, stop = asyncio.Event(), asyncio.Event()
    life = asyncio.create_task(_lifespan(app, started, stop))
    await asyncio.wait_for(started.wait(), 60)
    headers = [(b"host", b"breakdown"), (b"authorization", f"Bearer {key}".encode())]
    # Stride through the learners so consecutive requests read different ones.
    every = [1 + (i * 7919) % args.learners for i in range(args.learners)]
    memo = Memo()
    statuses: dict[str, dict[int, int]] = {v: {} for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for name in VARIANTS:  # warm-up: every learner once, which also fills the memory
            with variant(name, memo):
                await _batch(app, every, args.tasks, headers)
        for r in range(args.rounds):
            ids = [every[(r * args.batch + i) % len(every)] for i in range(args.batch)]
            for name in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                with variant(name, memo):
                    t0 = time.process_time()
                    got = await _batch(app, ids, args.tasks, headers)
                    cpu[name].append((time.process_time() - t0) / len(ids) * 1e6)
                for code, n in got.items():
                    statuses[name][code] = statuses[name].get(code, 0) + n
    finally:
        stop.set()
        await asyncio.wait_for(life, 30)
    medians = {v: round(statistics.median(cpu[v]), 1) for v in VARIANTS}
    return {
        "cpu_us_per_request": {v: [round(x, 1) for x in cpu[v]] for v in VARIANTS},
        "median_us": medians,
        "parts_us": {k: round(v, 1) for k, v in parts_of(medians).items()},
        "statuses": statuses,
        "memory_hits": memo.hits,
    }


def markdown(result: dict[str, Any]) -> str:
    med, parts = result["median_us"], result["parts_us"]
    full = med["full"]
    lines = ["| variant | CPU us per request (median) |", "|---|---|"]
    lines += [f"| {v} | {med[v]} |" for v in VARIANTS]
    lines += ["", "| part | us per request | share |", "|---|---|---|"]
    lines += [f"| {p} | {us} | {us / full:.0%} |" for p, us in parts.items()]
    return "\n".join(lines)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Seed a scratch database, put a PgBouncer in front and measure; everything undone."""
    with scratch_database("skillcoach_breakdown") as name:
        params = SimulationParams(args.learners, args.skills, attempts_per_learner=100)
        key, _ = prepare(database_url(name), params, key_name="breakdown")
        bouncer = proxy.start_pgbouncer(name)
        try:
            return uvloop.run(_measure(bouncer.url("postgres", name), key, args))
        finally:
            proxy.stop_pgbouncer(bouncer)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests breakdown")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--batch", type=int, default=2000, help="requests per variant per round")
    p.add_argument("--tasks", type=int, default=16, help="concurrent requests")
    p.add_argument("--learners", type=int, default=2000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--max-seconds", type=int, default=900)
    args = p.parse_args(argv)
    with budget(args.max_seconds):
        measured = measure(args)
    bad = {v: s for v, s in measured["statuses"].items() if set(s) != {200}}
    result = {"kind": "breakdown", "params": vars(args), **measured}
    record("breakdown", result, markdown)
    if bad:
        print(f"FAIL: answers other than 200: {bad}")
        return 1
    return 0
