"""`skillcoach seed`: load a simulated dataset and its ground truth into PostgreSQL.

Everything goes in with binary COPY inside one transaction, so a failed or interrupted seed
leaves the database as it was. The statistics tables the API maintains on every attempt
insert (learner_skill_stats, learner_exercise_stats, learners.data_version) are computed
here with numpy rather than by replaying a million inserts.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson
import psycopg2.extensions
from sqlalchemy import Engine
from tqdm import tqdm

from skillcoach.data.binary_copy import copy_from_columns
from skillcoach.ml import simulator
from skillcoach.ml.simulator import Catalog, LearnerChunk, SimulationParams

__all__ = ["DATA_TABLES", "SeedConflict", "SeedReport", "seed_database"]

IntArray = npt.NDArray[np.int64]

# Everything a seed owns; model_registry and api_keys survive a --replace.
DATA_TABLES = (
    "sim_runs",
    "sim_attempt_truth",
    "sim_mastery",
    "idempotency_keys",
    "learner_exercise_stats",
    "learner_skill_stats",
    "attempts",
    "learners",
    "exercises",
    "skills",
)
_ANALYZED = ("skills", "exercises", "learners", "attempts", "learner_skill_stats",
             "learner_exercise_stats", "sim_mastery", "sim_attempt_truth")  # fmt: skip


class SeedConflict(RuntimeError):
    """The database already holds data and replacing it was not asked for."""


@dataclass(frozen=True, slots=True)
class SeedReport:
    params: SimulationParams
    skills: int
    exercises: int
    learners: int
    attempts: int
    mastery_rows: int
    skill_stats_rows: int
    exercise_stats_rows: int
    first_attempt_id: int
    replaced: bool
    seconds: float

    def summary(self) -> str:
        rate = self.attempts / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"seeded {self.learners} learners, {self.skills} skills, {self.exercises} exercises,"
            f" {self.attempts} attempts (ids from {self.first_attempt_id}) with ground truth"
            f" in {self.seconds:.1f} s ({rate:,.0f} attempts/s)"
            + ("; previous data replaced" if self.replaced else "")
        )


@dataclass(frozen=True, slots=True)
class _Counts:
    learners: int = 0
    attempts: int = 0
    mastery_rows: int = 0
    skill_stats_rows: int = 0
    exercise_stats_rows: int = 0

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.learners + other.learners,
            self.attempts + other.attempts,
            self.mastery_rows + other.mastery_rows,
            self.skill_stats_rows + other.skill_stats_rows,
            self.exercise_stats_rows + other.exercise_stats_rows,
        )


def seed_database(
    engine: Engine, params: SimulationParams, *, progress: bool, replace: bool
) -> SeedReport:
    started = time.perf_counter()
    catalog = simulator.build_catalog(params)
    raw = engine.raw_connection()
    try:
        dbapi = cast(psycopg2.extensions.connection, raw.driver_connection)
        with dbapi.cursor() as cur:
            # EXCLUSIVE blocks other writers (a concurrent seed, attempt posts) but not
            # readers, for the whole load; TRUNCATE escalates where it is asked for.
            cur.execute(f"LOCK TABLE {', '.join(DATA_TABLES)} IN EXCLUSIVE MODE")
            existing = _existing_rows(cur)
            if existing and not replace:
                raise SeedConflict(
                    f"the database already holds data ({existing}); pass --replace"
                    " (replace=True) to delete it first, or seed an empty database"
                )
            if existing:
                cur.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY")
            first_id = _next_attempt_id(cur)
            _copy_catalog(cur, catalog)
            counts = _Counts()
            with tqdm(
                total=params.learners, unit="learner", disable=not progress, desc="seeding"
            ) as bar:
                for chunk in simulator.simulate_learners(params, catalog):
                    counts += _copy_chunk(cur, chunk, first_id + counts.attempts)
                    bar.update(len(chunk.learner_ids))
            if counts.attempts:
                # The attempts got explicit ids: move the identity past them, or the next
                # plain INSERT would collide.
                cur.execute(
                    "SELECT setval(pg_get_serial_sequence('attempts', 'id'), %s)",
                    (first_id + counts.attempts - 1,),
                )
            cur.execute(
                "INSERT INTO sim_runs (params) VALUES (%s)",
                (orjson.dumps(_run_record(params, first_id, counts)).decode(),),
            )
            cur.execute(f"ANALYZE {', '.join(_ANALYZED)}")
        raw.commit()
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()
    return SeedReport(
        params=params,
        skills=len(catalog.skill_ids),
        exercises=len(catalog.exercise_ids),
        learners=counts.learners,
        attempts=counts.attempts,
        mastery_rows=counts.mastery_rows,
        skill_stats_rows=counts.skill_stats_rows,
        exercise_stats_rows=counts.exercise_stats_rows,
        first_attempt_id=first_id,
        replaced=bool(existing),
        seconds=time.perf_counter() - started,
    )


def _existing_rows(cur: psycopg2.extensions.cursor) -> str:
    """Names of the data tables that are not empty, comma-separated ('' when all are)."""
    probes = " UNION ALL ".join(
        f"SELECT '{t}' FROM (SELECT 1 FROM {t} LIMIT 1) AS {t}_probe" for t in DATA_TABLES
    )
    cur.execute(probes)
    return ", ".join(str(row[0]) for row in cur.fetchall())


def _next_attempt_id(cur: psycopg2.extensions.cursor) -> int:
    # Above both the largest stored id and anything the sequence already handed out (ids of
    # rolled-back inserts are burnt, and a concurrent nextval must never meet ours).
    cur.execute(
        "SELECT greatest((SELECT coalesce(max(id), 0) FROM attempts),"
        " coalesce(pg_sequence_last_value(pg_get_serial_sequence('attempts', 'id')::regclass),"
        " 0))"
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0]) + 1


def _copy_catalog(cur: psycopg2.extensions.cursor, catalog: Catalog) -> None:
    # Names are variable-width text, which the binary path does not handle; the catalog is
    # small enough for a text COPY built in Python.
    skills = "".join(f"{int(s)}\tskill-{int(s):04d}\n" for s in catalog.skill_ids)
    cur.copy_expert("COPY skills (id, name) FROM STDIN", io.StringIO(skills))
    per_skill = catalog.exercises_per_skill
    exercises = "".join(
        f"{int(e)}\t{int(s)}\t{d!r}\tskill-{int(s):04d}/ex-{(int(e) - 1) % per_skill + 1:03d}\n"
        for e, s, d in zip(
            catalog.exercise_ids,
            catalog.exercise_skill_ids,
            catalog.exercise_difficulty.tolist(),
            strict=True,
        )
    )
    cur.copy_expert(
        "COPY exercises (id, skill_id, difficulty, name) FROM STDIN", io.StringIO(exercises)
    )


def _group_last(keys: IntArray, times: IntArray) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Unique keys, each row's group, each group's row count and its latest time."""
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    last = np.full(len(uniq), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, inverse, times)
    return uniq, inverse.astype(np.int64), counts.astype(np.int64), last


def _copy_chunk(cur: psycopg2.extensions.cursor, chunk: LearnerChunk, first_id: int) -> _Counts:
    n = chunk.n_attempts
    attempt_ids = np.arange(first_id, first_id + n, dtype=np.int64)
    learners = chunk.attempt_learner_ids
    when = chunk.attempt_answered_at_us
    correct = chunk.attempt_correct

    per_learner = np.searchsorted(learners, chunk.learner_ids, side="right") - np.searchsorted(
        learners, chunk.learner_ids, side="left"
    )
    first_seen = np.full(len(chunk.learner_ids), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, learners - chunk.learner_ids[0], when)
    # A learner without attempts (not produced today, but cheap to be right about) was
    # created at the start of the simulated calendar.
    first_seen[per_learner == 0] = simulator.START.astype(np.int64)
    copy_from_columns(
        cur,
        "learners",
        [
            ("id", "int8", chunk.learner_ids),
            ("created_at", "timestamptz", first_seen),
            ("data_version", "int8", per_learner),
        ],
    )
    copy_from_columns(
        cur,
        "attempts",
        [
            ("id", "int8", attempt_ids),
            ("learner_id", "int8", learners),
            ("exercise_id", "int4", chunk.attempt_exercise_ids),
            ("correct", "bool", correct),
            ("answered_at", "timestamptz", when),
        ],
    )
    copy_from_columns(
        cur,
        "sim_attempt_truth",
        [("attempt_id", "int8", attempt_ids), ("p_correct", "float8", chunk.attempt_p_correct)],
    )
    copy_from_columns(
        cur,
        "sim_mastery",
        [
            ("learner_id", "int8", chunk.mastery_learner_ids),
            ("skill_id", "int4", chunk.mastery_skill_ids),
            ("theta_initial", "float8", chunk.theta_initial),
            ("theta_final", "float8", chunk.theta_final),
            ("mastery_final", "float8", chunk.mastery_final),
        ],
    )

    skill_span = int(chunk.attempt_skill_ids.max(initial=0)) + 1
    keys, inverse, n_total, last = _group_last(
        learners * skill_span + chunk.attempt_skill_ids, when
    )
    n_correct = np.bincount(inverse, weights=correct, minlength=len(keys)).astype(np.int64)
    copy_from_columns(
        cur,
        "learner_skill_stats",
        [
            ("learner_id", "int8", keys // skill_span),
            ("skill_id", "int4", keys % skill_span),
            ("n_correct", "int4", n_correct),
            ("n_incorrect", "int4", n_total - n_correct),
            ("last_answered_at", "timestamptz", last),
            # What the write path sums before training has set any exercise prior (0 logit).
            ("sum_residual", "float8", (2 * n_correct - n_total) / 2.0),
            ("sum_information", "float8", n_total / 4.0),
        ],
    )

    exercise_span = int(chunk.attempt_exercise_ids.max(initial=0)) + 1
    e_keys, _, e_n, e_last = _group_last(
        learners * exercise_span + chunk.attempt_exercise_ids, when
    )
    copy_from_columns(
        cur,
        "learner_exercise_stats",
        [
            ("learner_id", "int8", e_keys // exercise_span),
            ("exercise_id", "int4", e_keys % exercise_span),
            ("n_attempts", "int4", e_n),
            ("last_answered_at", "timestamptz", e_last),
        ],
    )
    return _Counts(
        learners=len(chunk.learner_ids),
        attempts=n,
        mastery_rows=len(chunk.mastery_learner_ids),
        skill_stats_rows=len(keys),
        exercise_stats_rows=len(e_keys),
    )


def _run_record(params: SimulationParams, first_id: int, counts: _Counts) -> dict[str, Any]:
    return {
        **params.to_dict(),
        "attempt_ids": [first_id, first_id + counts.attempts - 1] if counts.attempts else None,
        "attempts": counts.attempts,
        "model": {
            "guess": params.guess,
            "slip": params.slip,
            "skill_difficulty_sd": simulator.SKILL_DIFFICULTY_SD,
            "exercise_difficulty_sd": params.exercise_difficulty_sd,
            "general_ability_sd": simulator.GENERAL_ABILITY_SD,
            "skill_deviation_sd": simulator.SKILL_DEVIATION_SD,
            "gain_per_attempt": simulator.GAIN_PER_ATTEMPT,
            "gain_per_correct": simulator.GAIN_PER_CORRECT,
        },
    }
