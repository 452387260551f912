"""The answers' JSON bodies and cache variants: pure functions of the computed results."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import numpy.typing as npt
import orjson

from skillcoach.ml.analysis import Recommendation, Weaknesses

__all__ = [
    "Answer",
    "recommendations_body",
    "recommendations_variant",
    "weaknesses_body",
    "weaknesses_variant",
]

# A finished body and the learner's data_version of the snapshot it was computed from.
Answer = tuple[bytes, int]


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


def weaknesses_variant(model_version: int, limit: int) -> str:
    return f"m{model_version}:n{limit}"


def recommendations_variant(model_version: int, limit: int, target: float) -> str:
    return f"m{model_version}:n{limit}:t{target:g}"


def weaknesses_body(
    learner_id: int, model_version: int, names: dict[int, str], ranked: Weaknesses
) -> bytes:
    # Whole columns to Python values at once and the timestamps left to orjson (the same
    # ISO 8601 as isoformat()): per-skill numpy scalars and calls cost more than the model.
    name = names.get
    return orjson.dumps(
        {
            "learner_id": learner_id,
            "model_version": model_version,
            "skills": [
                {
                    "skill_id": s,
                    "skill_name": name(s),
                    "mastery": m,
                    "interval": [lo, hi],
                    "attempts": a,
                    "correct": c,
                    "insufficient_data": thin,
                    "last_practised_at": at,
                }
                for s, m, lo, hi, a, c, thin, at in zip(
                    ranked.skill_ids.tolist(),
                    _rounded(ranked.mastery),
                    _rounded(ranked.low),
                    _rounded(ranked.high),
                    ranked.attempts.tolist(),
                    ranked.correct.tolist(),
                    ranked.insufficient_data.tolist(),
                    ranked.last_practised_at,
                    strict=True,
                )
            ],
        }
    )


def _rounded(values: npt.NDArray[np.float64]) -> list[float]:
    out: list[float] = values.round(4).tolist()
    return out


def recommendations_body(
    learner_id: int,
    model_version: int,
    target: float,
    names: dict[int, str],
    recs: list[Recommendation],
) -> bytes:
    return orjson.dumps(
        {
            "learner_id": learner_id,
            "model_version": model_version,
            "target": target,
            "exercises": [
                {
                    "exercise_id": r.exercise_id,
                    "skill_id": r.skill_id,
                    "skill_name": names.get(r.skill_id),
                    "predicted_success": round(r.predicted_success, 4),
                    "seen_count": r.seen_count,
                    "last_seen_at": _iso(r.last_seen_at),
                    "reason": {
                        "skill_id": r.skill_id,
                        "skill_mastery": round(r.skill_mastery, 4),
                        "why": _why(r),
                    },
                }
                for r in recs
            ],
        }
    )


def _why(r: Recommendation) -> str:
    # A new skill is one the learner has not practised: offered only when their own skills
    # hold too few exercises near the target.
    kind = "new skill" if r.new_skill else "weak skill"
    if not r.trusted:
        return f"{kind}; too few answers to this exercise yet to predict it closely"
    if not r.on_target:
        return f"{kind}; no exercise predicted nearer the target"
    if r.seen_count == 0:
        return f"{kind}; predicted success closest to target"
    return f"{kind}; least recently seen exercise"
