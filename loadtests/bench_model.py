"""Seed, train and inference timings on a scratch database (a benchmark, not a test).

    python -m loadtests model --learners 10000 --attempts-per-learner 100

Writes loadtests/results/model-<utc stamp>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from loadtests.harness import database_url, scratch_database
from loadtests.recording import record
from skillcoach.data.catalog_reads import load_catalog
from skillcoach.data.database import create_sync_engine
from skillcoach.data.learner_reads import fetch_exercise_history, fetch_skill_evidence
from skillcoach.data.migrate import upgrade
from skillcoach.data.model_registry import fetch_promoted, promote
from skillcoach.ml.analysis import RecommendationPolicy, candidates, rank_weaknesses, recommend
from skillcoach.ml.live_model import ServedModel
from skillcoach.ml.model import BestLR
from skillcoach.ml.seeding import seed_database
from skillcoach.ml.simulator import SimulationParams
from skillcoach.ml.training import train_and_store


def _percentiles(samples: list[float]) -> dict[str, float]:
    us = sorted(s * 1e6 for s in samples)
    return {
        "p50_us": round(statistics.median(us), 1),
        "p99_us": round(us[int(0.99 * (len(us) - 1))], 1),
        "mean_us": round(statistics.fmean(us), 1),
    }


# The service's default policy, at the API's default limit of 10.
POLICY = RecommendationPolicy(limit=10)


def _inference(url: str, learners: int, rounds: int) -> dict[str, Any]:
    engine = create_sync_engine(url)
    with engine.connect() as conn:
        record = fetch_promoted(conn)
        assert record is not None and record.artifact is not None
        catalog = load_catalog(conn)
        ids = [
            r[0]
            for r in conn.exec_driver_sql(
                "SELECT id FROM learners ORDER BY id LIMIT %(n)s", {"n": learners}
            ).all()
        ]
        evidence = [fetch_skill_evidence(conn, learner_id=i) for i in ids]
        histories = []
        live = BestLR.from_artifact(record.artifact)
        for i, ev in zip(ids, evidence, strict=True):
            assert ev is not None
            pool = candidates(live, ev, catalog.exercises_of, POLICY)
            histories.append(
                fetch_exercise_history(conn, learner_id=i, exercise_ids=pool.exercise_ids)
            )
    engine.dispose()
    model = BestLR.from_artifact(record.artifact, sha256=record.sha256)
    served = ServedModel(
        record.version,
        record.sha256,
        record.trained_at,
        datetime.now(UTC),
        record.metrics,
        model,
        catalog,
    )
    weak: list[float] = []
    recs: list[float] = []
    for _ in range(rounds):
        for ev, hist in zip(evidence, histories, strict=True):
            assert ev is not None
            t0 = time.perf_counter()
            rank_weaknesses(served.model, ev, min_attempts=5)
            t1 = time.perf_counter()
            recommend(candidates(served.model, ev, catalog.exercises_of, POLICY), hist, POLICY)
            t2 = time.perf_counter()
            weak.append(t1 - t0)
            recs.append(t2 - t1)
    skills_per_learner = float(np.mean([len(e) for e in evidence if e is not None]))
    return {
        "weaknesses": _percentiles(weak),
        "recommendations": _percentiles(recs),
        "samples": len(weak),
        "skills_per_learner": round(skills_per_learner, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with scratch_database() as db:
        url = database_url(db)
        upgrade(url)
        engine = create_sync_engine(url)
        params = SimulationParams(
            learners=args.learners,
            skills=args.skills,
            exercises_per_skill=args.exercises_per_skill,
            attempts_per_learner=args.attempts_per_learner,
            seed=args.seed,
        )
        t0 = time.perf_counter()
        seed_database(engine, params, progress=False, replace=False)
        seed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = train_and_store(engine, seed=0, test_fraction=0.2)
        train_s = time.perf_counter() - t0
        with engine.begin() as conn:
            promote(conn, version=report.version)
        engine.dispose()
        inference = _inference(url, args.inference_learners, args.rounds)
    return {
        "kind": "model",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "params": vars(args),
        "attempts": args.learners * args.attempts_per_learner,
        "seed_seconds": round(seed_s, 2),
        "seed_attempts_per_second": round(args.learners * args.attempts_per_learner / seed_s),
        "train_seconds": round(train_s, 2),
        "train_metrics": report.metrics,
        "inference": inference,
    }


def markdown(result: dict[str, Any]) -> str:
    inf, m = result["inference"], result["train_metrics"]
    weak, rec = inf["weaknesses"], inf["recommendations"]
    rows = [
        ("seed time", f"{result['seed_seconds']} s ({result['seed_attempts_per_second']:,}/s)"),
        ("train time", f"{result['train_seconds']} s"),
        ("held-out AUC / oracle AUC", f"{m.get('auc', 0):.4f} / {m.get('oracle_auc', 0):.4f}"),
        ("weaknesses inference p50 / p99", f"{weak['p50_us']} / {weak['p99_us']} µs"),
        ("recommendations inference p50 / p99", f"{rec['p50_us']} / {rec['p99_us']} µs"),
    ]
    head = [f"| measure ({result['attempts']:,} attempts) | value |", "|---|---|"]
    return "\n".join(head + [f"| {k} | {v} |" for k, v in rows])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests model")
    p.add_argument("--learners", type=int, default=10_000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--exercises-per-skill", type=int, default=20)
    p.add_argument("--attempts-per-learner", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--inference-learners", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    record("model", run(args), markdown)
    return 0
