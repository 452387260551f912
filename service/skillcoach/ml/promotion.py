"""The quality gate of `skillcoach train --promote`: a new model goes live only if it is not
worse than the live one on the same held-out attempts."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUC_TOLERANCE", "LOG_LOSS_TOLERANCE", "HeldOut", "Verdict", "judge"]

# Differences this small are noise between two fits on nearly the same data; without them a
# retrain on unchanged data would be refused about half the time.
AUC_TOLERANCE = 0.002
LOG_LOSS_TOLERANCE = 0.002


@dataclass(frozen=True, slots=True)
class HeldOut:
    """A model's scores on the held-out attempts of one training run."""

    auc: float | None
    log_loss: float


@dataclass(frozen=True, slots=True)
class Verdict:
    promote: bool
    reason: str


def judge(candidate: HeldOut, live: HeldOut | None, *, live_version: int | None = None) -> Verdict:
    """Promote unless the candidate ranks worse (AUC) or is less calibrated (log loss) than the
    live model on the same attempts, beyond the tolerances."""
    if live is None:
        return Verdict(True, "no live model to compare with")
    name = "the live model" if live_version is None else f"live v{live_version}"
    if candidate.auc is not None and live.auc is not None:
        if candidate.auc < live.auc - AUC_TOLERANCE:
            return Verdict(
                False, f"held-out AUC {candidate.auc:.4f} is below {name}'s {live.auc:.4f}"
            )
    elif candidate.auc is None and live.auc is not None:
        return Verdict(False, "the held-out attempts give no AUC for the new model")
    if candidate.log_loss > live.log_loss + LOG_LOSS_TOLERANCE:
        return Verdict(
            False,
            f"held-out log loss {candidate.log_loss:.4f} is above {name}'s {live.log_loss:.4f}",
        )
    return Verdict(True, f"not worse than {name} on the same held-out attempts")
