from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson

from skillcoach.answers.bodies import recommendations_body, weaknesses_body
from skillcoach.data.records import SkillEvidence
from skillcoach.ml.analysis import Recommendation, weakness_columns
from tests.fixtures_api import hand_model

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rec(exercise_id: int, **kw: object) -> Recommendation:
    fields: dict[str, object] = {"exercise_id": exercise_id, "skill_id": 1,
                                 "predicted_success": 0.7, "skill_mastery": 0.3,
                                 "seen_count": 0, "last_seen_at": None}  # fmt: skip
    fields.update(kw)
    return Recommendation(**fields)  # type: ignore[arg-type]


def test_each_recommendation_says_why_it_was_chosen() -> None:
    recs = [
        rec(1),
        rec(2, seen_count=2, last_seen_at=T0),
        rec(3, predicted_success=0.9, on_target=False),
        rec(4, on_target=False, trusted=False),
        rec(5, new_skill=True),
        rec(6, new_skill=True, on_target=False),
    ]
    body = orjson.loads(recommendations_body(7, 3, 0.7, {1: "fractions"}, recs))
    assert [e["reason"]["why"] for e in body["exercises"]] == [
        "weak skill; predicted success closest to target",
        "weak skill; least recently seen exercise",
        "weak skill; no exercise predicted nearer the target",
        "weak skill; too few answers to this exercise yet to predict it closely",
        "new skill; predicted success closest to target",
        "new skill; no exercise predicted nearer the target",
    ]
    assert body["exercises"][1]["last_seen_at"].startswith("2026-01-01T00:00:00")
    assert {e["skill_name"] for e in body["exercises"]} == {"fractions"}


def test_weaknesses_body_renders_each_skill_as_its_record() -> None:
    # Columns straight to JSON: the same fields, order, rounding and ISO 8601 timestamps as
    # rendering the records one by one.
    at = [T0, datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC), T0]
    ev = SkillEvidence(
        skill_ids=np.array([1, 2, 3], dtype=np.int64),
        n_correct=np.array([3, 1, 6], dtype=np.int64),
        n_incorrect=np.array([3, 1, 0], dtype=np.int64),
        last_answered_at=at,
    )
    columns = weakness_columns(hand_model(), ev, min_attempts=5)
    body = orjson.loads(weaknesses_body(7, 3, {1: "fractions", 3: "ratios"}, columns))
    expected = [
        {
            "skill_id": w.skill_id,
            "skill_name": {1: "fractions", 3: "ratios"}.get(w.skill_id),
            "mastery": round(w.mastery, 4),
            "interval": [round(w.low, 4), round(w.high, 4)],
            "attempts": w.attempts,
            "correct": w.correct,
            "insufficient_data": w.insufficient_data,
            "last_practised_at": w.last_practised_at.isoformat(),
        }
        for w in columns.rows()
    ]
    assert body == {"learner_id": 7, "model_version": 3, "skills": expected}
    assert [s["skill_id"] for s in body["skills"]] == [1, 2, 3]
    assert body["skills"][1]["last_practised_at"] == "2026-03-04T05:06:07.890123+00:00"
