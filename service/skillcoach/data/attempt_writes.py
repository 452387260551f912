"""The write path: one attempt batch, committed atomically with its statistics."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection

from skillcoach.data.records import Attempt
from skillcoach.errors import IdempotencyConflict, InvalidInput
from skillcoach.limits import CLOCK_SKEW

__all__ = [
    "IMPLICIT_KEY_PREFIX",
    "batch_fingerprint",
    "implicit_idempotency_key",
    "learner_data_version",
    "normalize",
    "record_attempts",
]

# Keys derived from the batch (no Idempotency-Key header). A client's own key with this
# prefix works too: it is just a key.
IMPLICIT_KEY_PREFIX = "batch:"


def normalize(attempts: Sequence[Attempt], *, now: datetime) -> list[Attempt]:
    """Naive timestamps are UTC; a timestamp from the future is refused."""
    out = []
    for i, a in enumerate(attempts):
        ts = a.answered_at if a.answered_at.tzinfo else a.answered_at.replace(tzinfo=UTC)
        if ts > now + CLOCK_SKEW:
            raise InvalidInput(
                f"attempts[{i}].answered_at is in the future ({ts.isoformat()})",
                errors=[{"loc": ["attempts", i, "answered_at"], "msg": "in the future"}],
            )
        out.append(dataclasses.replace(a, answered_at=ts))
    return out


def batch_fingerprint(learner_id: int, attempts: Sequence[Attempt]) -> str:
    payload = [learner_id] + [
        [a.exercise_id, a.correct, a.answered_at.isoformat()] for a in attempts
    ]
    return hashlib.sha256(orjson.dumps(payload)).hexdigest()


def implicit_idempotency_key(fingerprint: str) -> str:
    """The key of a batch sent without an Idempotency-Key: its fingerprint. A byte-identical
    batch (same learner, and each attempt's exercise, correctness and answered_at) within the
    retention period is then a replay of the first, not a second count: a retry whose
    acknowledgement was lost. Two genuinely separate but identical batches are one."""
    return IMPLICIT_KEY_PREFIX + fingerprint


def learner_data_version(conn: Connection, *, learner_id: int) -> int | None:
    """The learner's current data_version (None: no such learner)."""
    version = conn.exec_driver_sql(
        "SELECT data_version FROM learners WHERE id = %(id)s", {"id": learner_id}
    ).scalar()
    return None if version is None else int(version)


def record_attempts(
    conn: Connection,
    *,
    learner_id: int,
    attempts: Sequence[Attempt],
    idempotency_key: str | None,
    fingerprint: str,
) -> dict[str, Any]:
    """Insert the batch and update the learner's statistics in the caller's transaction.

    Raises before anything is written if an exercise is unknown, so nothing partial is ever
    committed. A retried key is claimed (and so serialized) before the learner row is locked.
    """
    conn.exec_driver_sql(
        "INSERT INTO learners (id) VALUES (%(id)s) ON CONFLICT (id) DO NOTHING", {"id": learner_id}
    )

    if idempotency_key is not None:
        claimed = conn.exec_driver_sql(
            "INSERT INTO idempotency_keys (learner_id, key, request_sha256, response)"
            " VALUES (%(l)s, %(k)s, %(h)s, '{}'::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
            {"l": learner_id, "k": idempotency_key, "h": fingerprint},
        ).first()
        if claimed is None:
            return _replay(
                conn, learner_id=learner_id, key=idempotency_key, fingerprint=fingerprint
            )

    # Locks the learner row: concurrent batches of one learner apply one after the other.
    version = conn.exec_driver_sql(
        "UPDATE learners SET data_version = data_version + 1 WHERE id = %(id)s"
        " RETURNING data_version",
        {"id": learner_id},
    ).scalar_one()

    exercise_ids = sorted({a.exercise_id for a in attempts})
    skill_of: dict[int, int] = {}
    # Expected success of each exercise (its population success logit, set once by training;
    # 0 until then): the difficulty-aware residual sums are measured against it.
    expected_of: dict[int, float] = {}
    for r in conn.exec_driver_sql(
        "SELECT id, skill_id, coalesce(prior_logit, 0) AS q FROM exercises WHERE id = ANY(%(ids)s)",
        {"ids": exercise_ids},
    ):
        skill_of[int(r.id)] = int(r.skill_id)
        expected_of[int(r.id)] = 1.0 / (1.0 + math.exp(-float(r.q)))
    unknown = [e for e in exercise_ids if e not in skill_of]
    if unknown:
        # The caller's transaction rolls back: the learner bump and key claim vanish too.
        raise InvalidInput(
            f"unknown exercise id(s): {', '.join(map(str, unknown))}",
            unknown_exercise_ids=unknown,
        )

    conn.exec_driver_sql(
        "INSERT INTO attempts (learner_id, exercise_id, correct, answered_at)"
        " SELECT %(l)s, e, c, t FROM unnest(%(e)s::int[], %(c)s::bool[], %(t)s::timestamptz[])"
        " AS u(e, c, t)",
        {
            "l": learner_id,
            "e": [a.exercise_id for a in attempts],
            "c": [a.correct for a in attempts],
            "t": [a.answered_at for a in attempts],
        },
    )

    per_skill: dict[int, list[Any]] = defaultdict(
        lambda: [0, 0, datetime.min.replace(tzinfo=UTC), 0.0, 0.0]
    )
    per_exercise: dict[int, list[Any]] = defaultdict(lambda: [0, datetime.min.replace(tzinfo=UTC)])
    for a in attempts:
        s = per_skill[skill_of[a.exercise_id]]
        s[0 if a.correct else 1] += 1
        s[2] = max(s[2], a.answered_at)
        p = expected_of[a.exercise_id]
        s[3] += (1.0 if a.correct else 0.0) - p
        s[4] += p * (1.0 - p)
        e = per_exercise[a.exercise_id]
        e[0] += 1
        e[1] = max(e[1], a.answered_at)
    skills = sorted(per_skill)
    conn.exec_driver_sql(
        "INSERT INTO learner_skill_stats"
        " (learner_id, skill_id, n_correct, n_incorrect, last_answered_at,"
        "  sum_residual, sum_information)"
        " SELECT %(l)s, s, c, i, t, r, f"
        " FROM unnest(%(s)s::int[], %(c)s::int[], %(i)s::int[], %(t)s::timestamptz[],"
        "             %(r)s::float8[], %(f)s::float8[])"
        " AS u(s, c, i, t, r, f)"
        " ON CONFLICT (learner_id, skill_id) DO UPDATE SET"
        "  n_correct = learner_skill_stats.n_correct + excluded.n_correct,"
        "  n_incorrect = learner_skill_stats.n_incorrect + excluded.n_incorrect,"
        "  last_answered_at = greatest(learner_skill_stats.last_answered_at,"
        "                              excluded.last_answered_at),"
        "  sum_residual = learner_skill_stats.sum_residual + excluded.sum_residual,"
        "  sum_information = learner_skill_stats.sum_information + excluded.sum_information",
        {
            "l": learner_id,
            "s": skills,
            "c": [per_skill[s][0] for s in skills],
            "i": [per_skill[s][1] for s in skills],
            "t": [per_skill[s][2] for s in skills],
            "r": [per_skill[s][3] for s in skills],
            "f": [per_skill[s][4] for s in skills],
        },
    )
    exercises = sorted(per_exercise)
    conn.exec_driver_sql(
        "INSERT INTO learner_exercise_stats (learner_id, exercise_id, n_attempts, last_answered_at)"
        " SELECT %(l)s, e, n, t FROM unnest(%(e)s::int[], %(n)s::int[], %(t)s::timestamptz[])"
        " AS u(e, n, t)"
        " ON CONFLICT (learner_id, exercise_id) DO UPDATE SET"
        "  n_attempts = learner_exercise_stats.n_attempts + excluded.n_attempts,"
        "  last_answered_at = greatest(learner_exercise_stats.last_answered_at,"
        "                              excluded.last_answered_at)",
        {
            "l": learner_id,
            "e": exercises,
            "n": [per_exercise[e][0] for e in exercises],
            "t": [per_exercise[e][1] for e in exercises],
        },
    )

    response = {
        "learner_id": learner_id,
        "accepted": len(attempts),
        "data_version": int(version),
        "skills_updated": skills,
        "replayed": False,
    }
    if idempotency_key is not None:
        conn.exec_driver_sql(
            "UPDATE idempotency_keys SET response = %(r)s WHERE learner_id = %(l)s AND key = %(k)s",
            {"r": orjson.dumps(response).decode(), "l": learner_id, "k": idempotency_key},
        )
    return response


def _replay(conn: Connection, *, learner_id: int, key: str, fingerprint: str) -> dict[str, Any]:
    row = conn.exec_driver_sql(
        "SELECT request_sha256, response FROM idempotency_keys"
        " WHERE learner_id = %(l)s AND key = %(k)s",
        {"l": learner_id, "k": key},
    ).one()
    if row.request_sha256 != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used for a different batch", key=key
        )
    return {**row.response, "replayed": True}
