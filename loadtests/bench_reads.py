"""Per-read DB time of the uncached read, one read at a time, through PgBouncer:

    python -m loadtests reads [--reads 3000] [--rounds 3] [--learners 500]

The same `fetch_skill_evidence` through `Database.run_sync`, two ways, interleaved in rounds on
one scratch database and one PgBouncer:

- single:        its `single_statement` mark: `SET LOCAL statement_timeout = N; SELECT ...` as
                 one string (one round trip, autocommit) on a raw pooled connection (the
                 default: tracing off);
- single-traced: the same through SQLAlchemy's Connection and result (what a replica with
                 tracing on does, so that the SQL spans see the statement);
- transaction:   the function unmarked: `BEGIN; SET LOCAL ...`, the SELECT, `COMMIT` (three
                 round trips through SQLAlchemy; what every read did before the mark);
- psycopg2:      psycopg2 alone (cursor.execute of the bare SELECT, autocommit): the floor.

Writes loadtests/results/reads-<stamp>.json and prints the medians (microseconds per read) and
the client's CPU per read (what a read costs the replica's GIL).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg2
from prometheus_client import CollectorRegistry

from loadtests import proxy
from loadtests.harness import database_url, prepare, scratch_database
from loadtests.recording import budget, record
from skillcoach.data.database import Database, PoolConfig, Reader
from skillcoach.data.learner_reads import SKILL_EVIDENCE_SQL, fetch_skill_evidence
from skillcoach.data.records import SkillEvidence
from skillcoach.ml.simulator import SimulationParams

__all__ = ["main", "markdown"]


def _in_transaction(conn: Reader, *, learner_id: int) -> SkillEvidence | None:
    """fetch_skill_evidence without its mark: Database.run wraps it in BEGIN ... COMMIT."""
    return fetch_skill_evidence(conn, learner_id=learner_id)


def _time(call: Callable[[int], object], ids: list[int]) -> tuple[list[float], float]:
    """Wall microseconds of each read, and the mean CPU microseconds of this thread per read
    (the Python work that holds the GIL against the event loop in a server)."""
    out = []
    cpu0 = time.thread_time()
    for i in ids:
        t0 = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t0) * 1e6)
    return out, (time.thread_time() - cpu0) * 1e6 / len(ids)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| mode | median us/read | p90 us | rounds' medians | client CPU us/read |",
        "|---|---|---|---|---|",
    ]
    for mode, s in result["summary"].items():
        lines.append(
            f"| {mode} | {s['median_us']} | {s['p90_us']} | {s['round_medians_us']} |"
            f" {s['cpu_us']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests reads")
    p.add_argument("--reads", type=int, default=3000, help="reads per mode per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--learners", type=int, default=500)
    p.add_argument("--max-seconds", type=int, default=600)
    args = p.parse_args(argv)
    with budget(args.max_seconds), scratch_database("skillcoach_reads") as name:
        url = database_url(name)
        prepare(url, SimulationParams(args.learners, 50, attempts_per_learner=100), key_name="r")
        bouncer = proxy.start_pgbouncer(name)
        try:
            pooled = bouncer.url("postgres", name)
            pool = PoolConfig(pool_size=1, max_overflow=0, pool_timeout=5, pool_recycle=3600)
            db = Database(pooled, pool, statement_timeout_ms=3000, registry=CollectorRegistry())
            # An engine hook (as tracing sets one) keeps reads on SQLAlchemy's Connection.
            traced = Database(
                pooled,
                pool,
                statement_timeout_ms=3000,
                registry=CollectorRegistry(),
                on_engine=lambda engine: None,
            )
            raw = psycopg2.connect(pooled.replace("postgresql+psycopg2://", "postgresql://"))
            raw.autocommit = True
            cur = raw.cursor()

            def raw_read(i: int) -> object:
                cur.execute(SKILL_EVIDENCE_SQL, {"id": i})
                return cur.fetchall()

            modes: dict[str, Callable[[int], object]] = {
                "single": lambda i: db.run_sync(fetch_skill_evidence, learner_id=i),
                "single-traced": lambda i: traced.run_sync(fetch_skill_evidence, learner_id=i),
                "transaction": lambda i: db.run_sync(_in_transaction, learner_id=i),
                "psycopg2": raw_read,
            }
            rng = random.Random(7)
            rounds: dict[str, list[list[float]]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.rounds):
                order = list(modes) if r % 2 == 0 else list(modes)[::-1]
                for mode in order:
                    ids = [rng.randint(1, args.learners) for _ in range(args.reads)]
                    _time(modes[mode], ids[:200])  # warm: connection, plans, caches
                    wall, cpu_us = _time(modes[mode], ids)
                    rounds[mode].append(wall)
                    cpu[mode].append(cpu_us)
            raw.close()
            db.dispose()
            traced.dispose()
        finally:
            proxy.stop_pgbouncer(bouncer)
    summary = {}
    for mode, per_round in rounds.items():
        flat = sorted(x for rr in per_round for x in rr)
        summary[mode] = {
            "median_us": round(statistics.median(flat), 1),
            "p90_us": round(flat[int(len(flat) * 0.9)], 1),
            "round_medians_us": [round(statistics.median(rr), 1) for rr in per_round],
            "cpu_us": round(statistics.mean(cpu[mode]), 1),
        }
    result = {"kind": "reads", "params": vars(args), "summary": summary}
    record("reads", result, markdown)
    return 0
