"""Per-request model work of this tree against the code it must stay within 1.2x of, paired.

    python -m loadtests inference [--learners 3000] [--rounds 30]

The model benchmark (`python -m loadtests model`) times one tree per process, and on a shared
host consecutive runs drift by more than the differences it is asked about. This runner
measures three codes in one process on the same learners, call by call in rotating order,
so every sample has partners taken within microseconds of it:

- `684f8fd`: the counts-only Best-LR and its recommendations (the 3 weakest skills), the
  inference budget's reference;
- `773bbdd`: the difficulty-aware abilities, recommendations as before;
- this tree: abilities and the recommendation policy (candidates widen, trusted exercises).

The two older modules are read with `git show` and loaded under other names (their imports of
`skillcoach.ml.model` pointed at their own copy). The earlier model scores a format /1
artifact made from the trained one (the ability keys dropped): the same arithmetic it served.
Writes loadtests/results/inference-<stamp>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.harness import database_url, scratch_database
from loadtests.recording import record
from skillcoach.data.catalog_reads import load_catalog
from skillcoach.data.database import create_sync_engine
from skillcoach.data.learner_reads import fetch_exercise_history, fetch_skill_evidence
from skillcoach.data.migrate import upgrade
from skillcoach.data.model_registry import fetch_promoted, promote
from skillcoach.data.records import ExerciseHistory, SkillEvidence
from skillcoach.ml import analysis
from skillcoach.ml.model import BestLR
from skillcoach.ml.seeding import seed_database
from skillcoach.ml.simulator import SimulationParams
from skillcoach.ml.training import train_and_store

REFERENCE = "684f8fd"  # counts-only model: the budget's "today"
ABILITIES = "773bbdd"  # abilities, the old recommendation rule
LIMIT = 10  # the API's default recommendations limit
ROOT = Path(__file__).resolve().parent.parent
Step = Callable[[SkillEvidence, ExerciseHistory], object]


def _module(name: str, rev: str, path: str, imports: dict[str, str]) -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for old, new in imports.items():
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    # Our own history, read from this repository: the only source this executes.
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


@dataclass(frozen=True)
class Workload:
    codes: dict[str, tuple[Step, Step]]  # name: (weaknesses, recommendations)
    evidence: list[SkillEvidence]
    histories: dict[str, list[ExerciseHistory]]  # name: each learner's, for its candidates
    share_widened: float
    share_new_skills: float  # learners whose candidates reached a skill new to them


def workload(url: str, learners: int) -> Workload:
    old_model = _module("bench_reference_model", REFERENCE, "service/skillcoach/ml/model.py", {})
    old = _module(
        "bench_reference_analysis",
        REFERENCE,
        "service/skillcoach/ml/analysis.py",
        {"from skillcoach.ml.model import": "from bench_reference_model import"},
    )
    mid = _module("bench_abilities_analysis", ABILITIES, "service/skillcoach/ml/analysis.py", {})
    engine = create_sync_engine(url)
    with engine.connect() as conn:
        promoted = fetch_promoted(conn)
        assert promoted is not None and promoted.artifact is not None
        catalog = load_catalog(conn)
        model = BestLR.from_artifact(promoted.artifact)
        doc = orjson.loads(promoted.artifact)
        for key in ("ability_features", "ability_weights", "ability_prior", "exercise_attempts"):
            doc.pop(key, None)
        doc["format"] = "skillcoach.best-lr/1"
        counts_only = old_model.BestLR.from_artifact(orjson.dumps(doc))
        ids = [
            int(r[0])
            for r in conn.exec_driver_sql(
                "SELECT id FROM learners ORDER BY id LIMIT %(n)s", {"n": learners}
            )
        ]
        found = [fetch_skill_evidence(conn, learner_id=i) for i in ids]
    evidence = [e for e in found if e is not None]
    policy = analysis.RecommendationPolicy(limit=LIMIT)

    def isin_of(skills: Any) -> tuple[Any, Any]:  # the catalog look-up both older codes used
        mask = np.isin(catalog.exercise_skill_ids, skills)
        return catalog.exercise_ids[mask], catalog.exercise_skill_ids[mask]

    def old_rule(code: types.ModuleType, m: Any) -> Step:
        def step(e: SkillEvidence, h: ExerciseHistory) -> object:
            skills, mastery = code.focus_skills(m, e, count=3)
            cand, cand_skills = isin_of(skills)
            return code.recommend(m, e, skills=skills, skill_mastery=mastery,
                                  candidate_ids=cand, candidate_skill_ids=cand_skills,
                                  history=h, target=0.7, limit=LIMIT)  # fmt: skip

        return step

    def new_rule(e: SkillEvidence, h: ExerciseHistory) -> object:
        return analysis.recommend(analysis.candidates(model, e, catalog.exercises_of, policy),
                                  h, policy)  # fmt: skip

    codes: dict[str, tuple[Step, Step]] = {
        REFERENCE: (lambda e, h: old.rank_weaknesses(counts_only, e, min_attempts=5),
                    old_rule(old, counts_only)),
        ABILITIES: (lambda e, h: mid.rank_weaknesses(model, e, min_attempts=5),
                    old_rule(mid, model)),
        "this tree": (lambda e, h: analysis.rank_weaknesses(model, e, min_attempts=5),
                      new_rule),
    }  # fmt: skip
    # Each code reads the seen-exercise history of its own candidates, as the service does.
    with engine.connect() as conn:
        histories: dict[str, list[ExerciseHistory]] = {name: [] for name in codes}
        for i, ev in zip(ids, found, strict=True):
            if ev is None:
                continue
            for name, cands in (
                (REFERENCE, isin_of(old.focus_skills(counts_only, ev, count=3)[0])[0]),
                (ABILITIES, isin_of(mid.focus_skills(model, ev, count=3)[0])[0]),
                ("this tree", analysis.candidates(model, ev, catalog.exercises_of, policy)
                 .exercise_ids),
            ):  # fmt: skip
                histories[name].append(
                    fetch_exercise_history(conn, learner_id=i, exercise_ids=cands)
                )
    engine.dispose()
    pools = [analysis.candidates(model, e, catalog.exercises_of, policy) for e in evidence]
    widened = [len(np.unique(p.skill_ids)) > policy.skills for p in pools]
    new_skills = [bool(p.is_new().any()) for p in pools]
    return Workload(codes, evidence, histories, float(np.mean(widened)), float(np.mean(new_skills)))


def time_paired(work: Workload, rounds: int) -> dict[str, dict[str, Any]]:
    codes, evidence, histories = work.codes, work.evidence, work.histories
    names = list(codes)
    samples: dict[tuple[str, str], list[float]] = {
        (n, k): [] for n in names for k in ("weaknesses", "recommendations")
    }
    clock = time.perf_counter
    for rnd in range(rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for li, ev in enumerate(evidence):
            for name in order:
                weak, recs = codes[name]
                hist = histories[name][li]
                t0 = clock()
                weak(ev, hist)
                t1 = clock()
                recs(ev, hist)
                t2 = clock()
                samples[(name, "weaknesses")].append(t1 - t0)
                samples[(name, "recommendations")].append(t2 - t1)
    out: dict[str, dict[str, Any]] = {}
    for kind in ("weaknesses", "recommendations"):
        ref = np.array(samples[(REFERENCE, kind)]) * 1e6
        out[kind] = {}
        for name in names:
            us = np.array(samples[(name, kind)]) * 1e6
            out[kind][name] = {
                "p50_us": round(float(np.median(us)), 1),
                "p99_us": round(float(np.percentile(us, 99)), 1),
                "paired_ratio_median": round(float(np.median(us / ref)), 3),
            }
    return out


def seed_and_promote(url: str, learners: int) -> None:
    """A scratch database as `python -m loadtests model` makes it: seeded, trained, promoted."""
    upgrade(url)
    engine = create_sync_engine(url)
    params = SimulationParams(learners=learners, skills=50, exercises_per_skill=20,
                              attempts_per_learner=100, seed=42)  # fmt: skip
    seed_database(engine, params, progress=False, replace=False)
    report = train_and_store(engine, seed=0, test_fraction=0.2)
    with engine.begin() as conn:
        promote(conn, version=report.version)
    engine.dispose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with scratch_database() as db:
        url = database_url(db)
        seed_and_promote(url, args.learners)
        work = workload(url, args.inference_learners)
        timings = time_paired(work, args.rounds)
    return {
        "kind": "inference",
        "params": vars(args),
        "samples_per_code": args.rounds * len(work.evidence),
        "share_widened": round(work.share_widened, 3),
        "share_new_skills": round(work.share_new_skills, 3),
        "timings": timings,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = ["| code | weaknesses p50 / p99 (µs) | vs 684f8fd | recommendations p50 / p99 (µs)"
            " | vs 684f8fd |", "|---|---|---|---|---|"]  # fmt: skip
    weak, recs = result["timings"]["weaknesses"], result["timings"]["recommendations"]
    for name in weak:
        w, r = weak[name], recs[name]
        rows.append(
            f"| {name} | {w['p50_us']} / {w['p99_us']} | {w['paired_ratio_median']}x"
            f" | {r['p50_us']} / {r['p99_us']} | {r['paired_ratio_median']}x |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests inference")
    p.add_argument("--learners", type=int, default=3_000)
    p.add_argument("--inference-learners", type=int, default=200)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)
    record("inference", run(args), markdown)
    return 0
