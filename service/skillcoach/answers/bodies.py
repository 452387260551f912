"""The answers' JSON bodies and cache variants: pure functions of the computed results."""

from __future__ import annotations

from datetime import datetime

import orjson

from skillcoach.ml.analysis import Recommendation, SkillWeakness

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
    learner_id: int, model_version: int, names: dict[int, str], ranked: list[SkillWeakness]
) -> bytes:
    return orjson.dumps(
        {
            "learner_id": learner_id,
            "model_version": model_version,
            "skills": [
                {
                    "skill_id": w.skill_id,
                    "skill_name": names.get(w.skill_id),
                    "mastery": round(w.mastery, 4),
                    "interval": [round(w.low, 4), round(w.high, 4)],
                    "attempts": w.attempts,
                    "correct": w.correct,
                    "insufficient_data": w.insufficient_data,
                    "last_practised_at": _iso(w.last_practised_at),
                }
                for w in ranked
            ],
        }
    )


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
    if not r.trusted:
        return "weak skill; too few answers to this exercise yet to predict it closely"
    if not r.on_target:
        return "weak skill; no exercise predicted nearer the target"
    if r.seen_count == 0:
        return "weak skill; predicted success closest to target"
    return "weak skill; least recently seen exercise"
