from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import orjson
import pytest

from skillcoach.ml.model import ArtifactError, BestLR, sigmoid
from tests.fixtures_api import exercise_id, hand_model


def test_artifact_round_trip_keeps_predictions() -> None:
    model = hand_model()
    blob = model.to_artifact()
    loaded = BestLR.from_artifact(blob, sha256=hashlib.sha256(blob).hexdigest())
    args = ([11, 22, 33], [1, 2, 3], [1, 0, 4], [0, 2, 1])
    assert np.allclose(
        model.exercise_success(*args, total_correct=5, total_incorrect=3),
        loaded.exercise_success(*args, total_correct=5, total_incorrect=3),
    )


def test_checksum_and_format_are_enforced() -> None:
    blob = hand_model().to_artifact()
    with pytest.raises(ArtifactError, match="checksum"):
        BestLR.from_artifact(blob, sha256="0" * 64)
    with pytest.raises(ArtifactError, match="format"):
        BestLR.from_artifact(blob.replace(b"best-lr/2", b"best-lr/9"))
    with pytest.raises(ArtifactError, match="JSON"):
        BestLR.from_artifact(b"\x80not json")


def test_exercise_success_is_the_documented_logit() -> None:
    m = hand_model()
    p = m.exercise_success([exercise_id(1, 3)], [1], [2], [1], total_correct=4, total_incorrect=6)
    w = m.count_weights
    logit = (
        0.5
        - 1.5
        + 0.6
        + w[0] * np.log1p(2)
        + w[1] * np.log1p(1)
        + w[2] * np.log1p(4)
        + w[3] * np.log1p(6)
    )
    assert p[0] == pytest.approx(1 / (1 + np.exp(-logit)))


def test_unknown_ids_contribute_nothing() -> None:
    m = hand_model()
    p_unknown = m.exercise_success([999], [99], [0], [0], total_correct=0, total_incorrect=0)
    assert p_unknown[0] == pytest.approx(float(sigmoid(np.array([0.5]))[0]))


def test_skill_mastery_uses_mean_exercise_weight() -> None:
    m = hand_model()  # exercise weights of every skill average 0
    p = m.skill_mastery([1, 3], [0, 0], [0, 0], total_correct=0, total_incorrect=0)
    assert p == pytest.approx(sigmoid(np.array([0.5 - 1.5, 0.5 + 1.5])))


def test_sigmoid_is_stable_for_large_logits() -> None:
    out = sigmoid(np.array([-1e4, 0.0, 1e4]))
    assert np.all(np.isfinite(out)) and out[0] == 0.0 and out[2] == 1.0 and out[1] == 0.5


def _v1_artifact(model: BestLR) -> bytes:
    """The artifact as format /1 wrote it: no ability keys."""
    doc = orjson.loads(model.to_artifact())
    for key in ("ability_features", "ability_weights", "ability_prior"):
        del doc[key]
    doc["format"] = "skillcoach.best-lr/1"
    return orjson.dumps(doc)


def test_format_1_artifacts_still_load_and_score_counts_only() -> None:
    model = hand_model()
    loaded = BestLR.from_artifact(_v1_artifact(model))
    assert not loaded.uses_ability
    args = ([11, 22, 33], [1, 2, 3], [1, 0, 4], [0, 2, 1])
    # Residual evidence is ignored by a counts-only model: same answer with or without it.
    with_residual = loaded.exercise_success(
        *args, total_correct=5, total_incorrect=3,
        skill_residual=[2.0, -1.0, 0.5], skill_information=[1.0, 1.0, 1.0],
        total_residual=1.5, total_information=3.0,
    )  # fmt: skip
    assert np.allclose(
        with_residual, model.exercise_success(*args, total_correct=5, total_incorrect=3)
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("ability_weights"), "ability"),
        (lambda d: d.update(ability_weights=[1.0]), "ability_weights"),
        (lambda d: d.update(ability_prior=-1.0), "ability_prior"),
        (lambda d: d.update(ability_features=["x", "y"]), "ability features"),
        (lambda d: d.update(skill_weights="nope"), "malformed|differ"),
    ],
)
def test_broken_format_2_artifacts_fail_with_artifact_error(mutate: Any, message: str) -> None:
    doc = orjson.loads(hand_model().to_artifact())
    mutate(doc)
    with pytest.raises(ArtifactError, match=message):
        BestLR.from_artifact(orjson.dumps(doc))


def test_ability_is_difficulty_aware_and_round_trips() -> None:
    base = hand_model()
    model = BestLR.from_coefficients(
        intercept=base.intercept, skill_ids=base.skill_ids, skill_weights=base.skill_weights,
        exercise_ids=base.exercise_ids, exercise_skill_ids=base.exercise_skill_ids,
        exercise_weights=base.exercise_weights, count_weights=base.count_weights,
        ability_weights=[1.0, 0.5], ability_prior=2.0,
    )  # fmt: skip
    loaded = BestLR.from_artifact(model.to_artifact())
    assert loaded.uses_ability and loaded.ability_prior == 2.0
    # Three misses on hard items (expected success 0.2 each) against three on easy ones (0.9):
    # the same counts, but the easy misses are far stronger evidence of weakness.
    p_hard, p_easy = 0.2, 0.9
    residual = np.array([-3 * p_hard, -3 * p_easy])
    information = np.array([3 * p_hard * (1 - p_hard), 3 * p_easy * (1 - p_easy)])
    mastery = loaded.skill_mastery(
        [1, 1], [0, 0], [3, 3], total_correct=0, total_incorrect=3,
        skill_residual=residual, skill_information=information,
        total_residual=residual, total_information=information,
    )  # fmt: skip
    assert mastery[1] < mastery[0]
    # The documented formula.
    total = residual / (information + 2.0)
    skill = (residual + 2.0 * total) / (information + 2.0)
    counts_only = loaded.skill_mastery([1, 1], [0, 0], [3, 3], total_correct=0, total_incorrect=3)
    logit = np.log(counts_only / (1 - counts_only)) + 1.0 * skill + 0.5 * total
    assert mastery == pytest.approx(sigmoid(logit))


def _with_attempts(attempts: Any) -> bytes:
    base = hand_model()
    doc = orjson.loads(base.to_artifact())
    doc["exercise_attempts"] = attempts
    return orjson.dumps(doc)


def test_exercise_attempts_round_trip_and_are_optional() -> None:
    model = hand_model()
    assert model.exercise_attempts is None and model.exercise_attempts_of([11]) is None
    assert b"exercise_attempts" not in model.to_artifact()  # an older /2 artifact's shape
    n = list(range(len(model.exercise_ids)))
    loaded = BestLR.from_artifact(_with_attempts(n))
    again = BestLR.from_artifact(loaded.to_artifact())
    assert again.exercise_attempts is not None and again.exercise_attempts.tolist() == n
    row = {int(e): k for k, e in enumerate(model.exercise_ids)}
    got = again.exercise_attempts_of([exercise_id(2, 1), 999, exercise_id(1, 0)])
    assert got is not None
    assert got.tolist() == [row[exercise_id(2, 1)], 0, row[exercise_id(1, 0)]]  # unknown: 0


@pytest.mark.parametrize("attempts", [[1, 2], "many", [-1] * 12, [0.5] * 12, [[1]] * 12])
def test_malformed_exercise_attempts_fail_with_artifact_error(attempts: Any) -> None:
    with pytest.raises(ArtifactError, match="exercise_attempts"):
        BestLR.from_artifact(_with_attempts(attempts))
