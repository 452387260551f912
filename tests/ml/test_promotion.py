"""The promotion gate: pure decisions, then `skillcoach train --promote` on a real database."""

from __future__ import annotations

import pytest

from skillcoach.cli import main
from skillcoach.data.database import create_sync_engine
from skillcoach.data.model_registry import list_models
from skillcoach.ml.promotion import AUC_TOLERANCE, LOG_LOSS_TOLERANCE, HeldOut, judge

GOOD = HeldOut(auc=0.75, log_loss=0.60)


def test_without_a_live_model_the_candidate_is_promoted() -> None:
    assert judge(GOOD, None).promote


@pytest.mark.parametrize(
    ("candidate", "promote", "fragment"),
    [
        (HeldOut(0.75, 0.60), True, "not worse"),
        (HeldOut(0.75 - AUC_TOLERANCE / 2, 0.60 + LOG_LOSS_TOLERANCE / 2), True, "not worse"),
        (HeldOut(0.74, 0.60), False, "AUC 0.7400 is below live v3's 0.7500"),
        (HeldOut(0.76, 0.61), False, "log loss 0.6100 is above live v3's 0.6000"),
        (HeldOut(None, 0.60), False, "no AUC"),
        (HeldOut(0.80, 0.55), True, "not worse"),
    ],
)
def test_a_worse_candidate_is_refused_with_the_reason(
    candidate: HeldOut, promote: bool, fragment: str
) -> None:
    verdict = judge(candidate, GOOD, live_version=3)
    assert verdict.promote is promote
    assert fragment in verdict.reason


def promoted_version(url: str) -> int | None:
    engine = create_sync_engine(url)
    try:
        with engine.connect() as conn:
            live = [r.version for r in list_models(conn) if r.promoted]
    finally:
        engine.dispose()
    return live[0] if live else None


def test_train_promote_keeps_a_better_live_model(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", empty_pg_url)
    seed = ["seed", "--learners", "300", "--skills", "8", "--exercises-per-skill", "5",
            "--attempts-per-learner", "40", "--quiet"]  # fmt: skip
    assert main(seed) == 0
    assert main(["train", "--promote"]) == 0
    assert "promoted model version 1: no live model" in capsys.readouterr().out
    assert promoted_version(empty_pg_url) == 1

    # Trained on a sliver of the learners, v2 is worse on the held-out rest than v1: refused.
    assert main(["train", "--promote", "--test-fraction", "0.97", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "live v1 (difficulty-aware) on the same attempts" in out
    assert "kept the live model; did not promote model version 2" in out
    assert promoted_version(empty_pg_url) == 1

    # The same data and split again: as good as v1, so v3 goes live; --force skips the gate.
    assert main(["train", "--promote"]) == 0
    assert "promoted model version 3: not worse than live v1" in capsys.readouterr().out
    assert main(["train", "--promote", "--force", "--test-fraction", "0.97"]) == 0
    assert "promoted model version 4: --force" in capsys.readouterr().out
    assert promoted_version(empty_pg_url) == 4


def test_a_format_1_live_model_is_judged_on_the_same_held_out_attempts(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Upgrading from a counts-only live model: it still loads, is scored (as it serves, without
    residual sums) on the candidate's held-out attempts, and the verdict says why."""
    from datetime import UTC, datetime

    import orjson

    from skillcoach.data.model_registry import fetch_promoted, promote, store_model

    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", empty_pg_url)
    seed = ["seed", "--learners", "300", "--skills", "8", "--exercises-per-skill", "5",
            "--attempts-per-learner", "40", "--quiet"]  # fmt: skip
    assert main(seed) == 0
    assert main(["train"]) == 0
    capsys.readouterr()
    engine = create_sync_engine(empty_pg_url)
    try:
        with engine.begin() as conn:
            # A format /1 artifact as the previous release stored it: v1's coefficients
            # without the ability keys.
            record = fetch_promoted(conn)
            assert record is None
            (v1,) = list_models(conn)
            artifact = conn.exec_driver_sql(
                "SELECT artifact FROM model_registry WHERE version = %(v)s", {"v": v1.version}
            ).scalar_one()
            doc = orjson.loads(bytes(artifact))
            for key in ("ability_features", "ability_weights", "ability_prior"):
                del doc[key]
            doc["format"] = "skillcoach.best-lr/1"
            old = store_model(conn, artifact=orjson.dumps(doc), trained_at=datetime.now(UTC),
                              metrics={}, feature_schema={})  # fmt: skip
            promote(conn, version=old)
    finally:
        engine.dispose()
    assert main(["train", "--promote"]) == 0
    out = capsys.readouterr().out
    assert f"live v{old} (counts only) on the same attempts: auc 0." in out
    # Same attempts, same coefficients except the ability terms: the difficulty-aware model
    # is not worse, and the verdict names what it was compared with.
    assert f"not worse than live v{old} on the same held-out attempts" in out
    assert promoted_version(empty_pg_url) == old + 1
