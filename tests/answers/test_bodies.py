from __future__ import annotations

from datetime import UTC, datetime

import orjson

from skillcoach.answers.bodies import recommendations_body
from skillcoach.ml.analysis import Recommendation

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
    ]
    body = orjson.loads(recommendations_body(7, 3, 0.7, {1: "fractions"}, recs))
    assert [e["reason"]["why"] for e in body["exercises"]] == [
        "weak skill; predicted success closest to target",
        "weak skill; least recently seen exercise",
        "weak skill; no exercise predicted nearer the target",
        "weak skill; too few answers to this exercise yet to predict it closely",
    ]
    assert body["exercises"][1]["last_seen_at"].startswith("2026-01-01T00:00:00")
    assert {e["skill_name"] for e in body["exercises"]} == {"fractions"}
