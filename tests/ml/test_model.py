from __future__ import annotations

import hashlib

import numpy as np
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
        BestLR.from_artifact(blob.replace(b"best-lr/1", b"best-lr/9"))
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
