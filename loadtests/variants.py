"""Simulator variants the model is evaluated on (`python -m loadtests evaluate`).

Each variant changes the project's simulator (skillcoach.ml.simulator) in one documented way,
with its own fixed seed, so a model tuned on the default world is also checked on learners it
was not designed around. `mixed` combines several changes at once: the kind of "different
generator" that exposed the counts-only model (guessing and slipping, correlated skills,
learning that speeds up, learners who practise mostly easy or mostly hard items).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from skillcoach.ml.simulator import SimulationParams

__all__ = ["VARIANTS", "Variant", "variant_params"]


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    description: str
    overrides: dict[str, Any]
    seed: int


VARIANTS: tuple[Variant, ...] = (
    Variant("default", "the project's simulator as is", {}, 101),
    Variant("high_guess_slip", "guess 0.30, slip 0.20 (noisier answers)",
            {"guess": 0.30, "slip": 0.20}, 102),
    Variant("no_guess_slip", "guess 0, slip 0 (pure logistic IRT)",
            {"guess": 0.0, "slip": 0.0}, 103),
    Variant("fast_learning", "learning gains x2.5 (mastery moves during the history)",
            {"learning_scale": 2.5}, 104),
    Variant("accelerating", "gains grow with practice: (1 + k) ** 0.3, x0.5",
            {"learning_exponent": 0.3, "learning_scale": 0.5}, 105),
    Variant("clustered", "5 skill clusters sharing a learner shift of sd 0.8",
            {"skill_clusters": 5, "cluster_sd": 0.8}, 106),
    Variant("wide_difficulty", "exercise difficulty within a skill sd 2.0 (default 1.0)",
            {"exercise_difficulty_sd": 2.0}, 107),
    Variant("short_history", "30 attempts per learner", {"attempts_per_learner": 30}, 108),
    Variant("long_history", "300 attempts per learner", {"attempts_per_learner": 300}, 109),
    Variant("easy_bias", "learners practise mostly easy items (bias +1.5)",
            {"practice_bias": 1.5}, 110),
    Variant("hard_bias", "learners practise mostly hard items (bias -1.5)",
            {"practice_bias": -1.5}, 111),
    Variant("mixed_bias", "per-learner practice bias, sd 1.5 (some easy, some hard)",
            {"practice_bias_sd": 1.5}, 112),
    Variant("few_exercises", "3 exercises per skill", {"exercises_per_skill": 3}, 113),
    Variant("mixed", "guess 0.25/slip 0.15, 4 clusters, accelerating learning, bias sd 1.5",
            {"guess": 0.25, "slip": 0.15, "skill_clusters": 4, "learning_exponent": 0.2,
             "learning_scale": 0.6, "practice_bias_sd": 1.5}, 114),
)  # fmt: skip


def variant_params(variant: Variant, *, learners: int, skills: int, exercises_per_skill: int,
                   attempts_per_learner: int) -> SimulationParams:  # fmt: skip
    """The variant's SimulationParams on the run's base size (its overrides win)."""
    base = SimulationParams(
        learners=learners,
        skills=skills,
        exercises_per_skill=exercises_per_skill,
        attempts_per_learner=attempts_per_learner,
        seed=variant.seed,
    )
    return replace(base, **variant.overrides)
