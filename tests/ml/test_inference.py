from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry

from skillcoach.ml.analysis import Recommendation
from skillcoach.ml.inference import Inference


def rec(on_target: bool = True, trusted: bool = True) -> Recommendation:
    return Recommendation(
        exercise_id=1, skill_id=1, predicted_success=0.7, skill_mastery=0.3, seen_count=0,
        last_seen_at=None, on_target=on_target, trusted=trusted,
    )  # fmt: skip


def test_recommended_exercises_are_counted_by_fit() -> None:
    registry = CollectorRegistry()
    inference = Inference(registry)
    # An untrusted exercise is never on target: it counts as untrusted, not off target.
    inference.recommended([rec(), rec(), rec(on_target=False), rec(False, trusted=False)])
    inference.recommended([])
    inference.recommended([rec()])

    def count(fit: str) -> float | None:
        return registry.get_sample_value("skillcoach_recommended_exercises_total", {"fit": fit})

    assert (count("on_target"), count("off_target"), count("untrusted")) == (3.0, 1.0, 1.0)


def test_exercises_of_a_new_skill_are_counted_beside_their_fit() -> None:
    registry = CollectorRegistry()
    inference = Inference(registry)

    def new() -> float | None:
        return registry.get_sample_value("skillcoach_recommended_new_skill_exercises_total")

    assert new() == 0.0  # exposed from the start, so its rate is 0, not absent
    fresh = dataclasses.replace(rec(), new_skill=True)
    inference.recommended([rec(), fresh, dataclasses.replace(fresh, on_target=False)])
    assert new() == 2.0
    on = registry.get_sample_value("skillcoach_recommended_exercises_total", {"fit": "on_target"})
    assert on == 2.0  # a new skill's exercise still counts by its fit
