"""A seeded simulator of learners practising skills, with known ground truth.

No real attempt log can be downloaded here, so model quality is measured against this
simulator, whose latent state is known exactly. The generator is pure (no I/O) and
deterministic: the same `SimulationParams` always give the same catalog and the same chunks.

The world:
- Skills differ in difficulty; exercises of a skill scatter around the skill's difficulty.
- A learner's ability on a skill, theta, is a general ability plus a skill-specific deviation.
- P(correct) = GUESS + (1 - GUESS - SLIP) * sigmoid(theta - exercise difficulty) (IRT with
  guess and slip).
- Every attempt teaches a little, a correct one more, with diminishing returns in the number
  of practices on that skill; learners also differ in how fast they learn.
- Each learner takes up 8-12 skills (popular, mostly easier, skills more often), unlocked one
  after another like a curriculum and practised in sessions of a few attempts on one skill,
  sessions days apart, so a history spans weeks. A skill opened late may get little or no
  practice; exercises within a skill are picked at random.
- Every learner also has an ability on the skills they never took up (general ability plus a
  deviation, as at the start of their own): the truth a recommendation of a skill new to
  them is scored against.

Variants (the `SimulationParams` fields after `seed`) change one assumption at a time so a
model can be checked on learners it was not designed around: guess/slip levels, learning that
speeds up (rather than slows down) with practice, correlated skill clusters, the spread of
exercise difficulty within a skill, and practice biased towards easy or hard exercises. Their
defaults are the world above, drawn with exactly the same random numbers, so existing seeds
give the same data; a variant's extra randomness comes from its own streams.

Learners are generated in chunks so memory stays bounded however many there are; learner
ids are 1..N, skill ids 1..S, exercise ids 1..S*E (exercise j of skill s is (s-1)*E + j).
Timestamps are int64 microseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "GUESS",
    "SLIP",
    "Catalog",
    "LearnerChunk",
    "SimulationParams",
    "build_catalog",
    "learners_per_chunk",
    "simulate_learners",
    "success_probability",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

GUESS = 0.2
SLIP = 0.1
# Logit scale. Exercises on a practice platform span grade levels, so item difficulty varies
# more than learner ability (sd 1.56 vs 0.98 here); the between-learner part is what any
# model has to infer from a learner's history and the oracle knows outright.
SKILL_DIFFICULTY_SD = 1.2
EXERCISE_DIFFICULTY_SD = 1.0
GENERAL_ABILITY_SD = 0.9
SKILL_DEVIATION_SD = 0.4
LEARNING_RATE_SD = 0.3  # log-normal spread of the per-learner learning speed
# About +1.2 logits over a skill's first 15 practices: error rates fall from ~40 % to ~20 %,
# the shape of published learning curves.
GAIN_PER_ATTEMPT = 0.10
GAIN_PER_CORRECT = 0.15
SKILLS_PER_LEARNER = (8, 12)  # inclusive range
POPULARITY_EXPONENT = 0.8  # Zipf-like skew of how often skills are taken up
MEAN_SESSION_ATTEMPTS = 6.0
UNLOCK_ALL_AT = 0.7  # fraction of a learner's history after which all their skills are open
START = np.datetime64("2024-01-01T00:00:00", "us")
START_SPREAD_DAYS = 60

_US = 1_000_000
_DAY_US = 86_400 * _US
# Bounds one chunk's working set (attempt arrays and the learner x skill key matrix).
_CHUNK_ATTEMPTS = 100_000
_CHUNK_CELLS = 2_000_000

_LIMITS: dict[str, tuple[int, int]] = {
    "learners": (1, 10_000_000),
    "skills": (1, 5_000),
    "exercises_per_skill": (1, 1_000),
    "attempts_per_learner": (1, 10_000),
    "seed": (0, 2**63 - 1),
    "skill_clusters": (0, 5_000),
}
# Inclusive bounds of the float variant parameters.
_FLOAT_LIMITS: dict[str, tuple[float, float]] = {
    "guess": (0.0, 0.5),
    "slip": (0.0, 0.5),
    "learning_scale": (0.0, 10.0),
    "learning_exponent": (-2.0, 1.0),
    "cluster_sd": (0.0, 5.0),
    "exercise_difficulty_sd": (0.0, 5.0),
    "practice_bias": (-5.0, 5.0),
    "practice_bias_sd": (0.0, 5.0),
}


@dataclass(frozen=True, slots=True)
class SimulationParams:
    learners: int
    skills: int = 50
    exercises_per_skill: int = 20
    attempts_per_learner: int = 100
    seed: int = 42
    # -- variants (defaults: the documented world) --
    guess: float = GUESS
    slip: float = SLIP
    learning_scale: float = 1.0  # multiplies every learning gain (0: no learning)
    # Gain of the k-th practice of a skill ~ (1 + k) ** learning_exponent: -0.5 is diminishing
    # returns, a positive value learning that speeds up with practice.
    learning_exponent: float = -0.5
    skill_clusters: int = 0  # 0: independent skills; k: skill i belongs to cluster i % k
    cluster_sd: float = 0.8  # sd of a learner's shared ability shift per cluster
    exercise_difficulty_sd: float = EXERCISE_DIFFICULTY_SD
    # Exercise choice within a skill ~ exp(-practice_bias * z-scored difficulty): positive
    # practises mostly easy items, negative mostly hard ones, 0 uniformly.
    practice_bias: float = 0.0
    # Learners differ in that preference: each learner's bias is practice_bias plus this times
    # a standard normal (some mostly easy, some mostly hard items).
    practice_bias_sd: float = 0.0

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        for name, (flow, fhigh) in _FLOAT_LIMITS.items():
            fvalue = getattr(self, name)
            if isinstance(fvalue, bool) or not isinstance(fvalue, int | float):
                raise ValueError(f"{name} must be a number, got {fvalue!r}")
            if not flow <= fvalue <= fhigh:  # also refuses NaN
                raise ValueError(f"{name} must be between {flow} and {fhigh}, got {fvalue}")
        if self.guess + self.slip >= 1.0:
            raise ValueError("guess + slip must be below 1")

    @property
    def n_exercises(self) -> int:
        return self.skills * self.exercises_per_skill

    @property
    def n_attempts(self) -> int:
        return self.learners * self.attempts_per_learner

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Catalog:
    skill_ids: IntArray  # (S,)
    skill_difficulty: FloatArray  # (S,)
    skill_popularity: FloatArray  # (S,), sums to 1
    exercise_ids: IntArray  # (S*E,)
    exercise_skill_ids: IntArray  # (S*E,)
    exercise_difficulty: FloatArray  # (S*E,)

    @property
    def exercises_per_skill(self) -> int:
        return len(self.exercise_ids) // len(self.skill_ids)

    def difficulty_by_skill(self) -> FloatArray:
        """(S, E) matrix: row s holds the difficulties of skill s's exercises."""
        return self.exercise_difficulty.reshape(len(self.skill_ids), self.exercises_per_skill)


@dataclass(frozen=True, slots=True)
class LearnerChunk:
    """Consecutive learners with all their attempts (ordered by learner, then time)."""

    learner_ids: IntArray  # (n,)
    attempt_learner_ids: IntArray  # (m,)
    attempt_exercise_ids: IntArray
    attempt_skill_ids: IntArray
    attempt_correct: BoolArray
    attempt_answered_at_us: IntArray  # strictly increasing within a learner
    attempt_p_correct: FloatArray  # the true probability the attempt was drawn with
    # One row per (learner, skill practised at least once):
    mastery_learner_ids: IntArray
    mastery_skill_ids: IntArray
    theta_initial: FloatArray
    theta_final: FloatArray
    mastery_final: FloatArray  # true P(correct) at the end, averaged over the skill's exercises
    # (n, S): every learner's true ability at the end on every catalog skill, in catalog
    # order: theta_final where practised, the untouched starting ability on a skill never
    # practised (what a recommendation of a new skill is scored against).
    ability: FloatArray

    @property
    def n_attempts(self) -> int:
        return len(self.attempt_learner_ids)


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def success_probability(
    theta: FloatArray, difficulty: FloatArray, *, guess: float = GUESS, slip: float = SLIP
) -> FloatArray:
    return guess + (1.0 - guess - slip) * _sigmoid(theta - difficulty)


def build_catalog(params: SimulationParams) -> Catalog:
    rng = np.random.default_rng([params.seed, 0])
    n_skills, per_skill = params.skills, params.exercises_per_skill
    difficulty = rng.normal(0.0, SKILL_DIFFICULTY_SD, n_skills)
    # Foundational (easier) skills tend to be taken up more: rank popularity by a noisy ease.
    rank = np.argsort(np.argsort(difficulty + rng.normal(0.0, SKILL_DIFFICULTY_SD, n_skills)))
    weight = 1.0 / (1.0 + rank.astype(np.float64)) ** POPULARITY_EXPONENT
    popularity: FloatArray = weight / weight.sum()
    ex_difficulty = (
        difficulty[:, None] + rng.normal(0.0, params.exercise_difficulty_sd, (n_skills, per_skill))
    ).ravel()
    skill_ids = np.arange(1, n_skills + 1, dtype=np.int64)
    return Catalog(
        skill_ids=skill_ids,
        skill_difficulty=difficulty,
        skill_popularity=popularity,
        exercise_ids=np.arange(1, n_skills * per_skill + 1, dtype=np.int64),
        exercise_skill_ids=np.repeat(skill_ids, per_skill),
        exercise_difficulty=ex_difficulty,
    )


def learners_per_chunk(params: SimulationParams) -> int:
    by_attempts = _CHUNK_ATTEMPTS // params.attempts_per_learner
    by_cells = _CHUNK_CELLS // params.skills
    return max(1, min(by_attempts, by_cells, params.learners))


def simulate_learners(params: SimulationParams, catalog: Catalog) -> Iterator[LearnerChunk]:
    """Yield the learners in chunks of `learners_per_chunk(params)`, in id order."""
    size = learners_per_chunk(params)
    for index, first in enumerate(range(1, params.learners + 1, size)):
        n = min(size, params.learners + 1 - first)
        rng = np.random.default_rng([params.seed, 1, index])
        yield _simulate_chunk(rng, params, catalog, first, n)


def _choose_skills(
    rng: np.random.Generator, catalog: Catalog, n: int, k_max: int
) -> tuple[IntArray, IntArray]:
    """Each learner's practised skill indices (n, k_max) and how many of them are used (n,)."""
    n_skills = len(catalog.skill_ids)
    low, high = min(SKILLS_PER_LEARNER[0], n_skills), min(SKILLS_PER_LEARNER[1], n_skills)
    n_used = rng.integers(low, high + 1, n).astype(np.int64)
    # Gumbel top-k: k draws without replacement, proportional to popularity, vectorized.
    keys = np.log(catalog.skill_popularity)[None, :] + rng.gumbel(size=(n, n_skills))
    chosen = np.argsort(-keys, axis=1)[:, :k_max].astype(np.int64)
    return chosen, n_used


def _schedule(
    rng: np.random.Generator, n: int, steps: int, n_used: IntArray
) -> tuple[IntArray, BoolArray]:
    """Slot (index into the learner's skills) of every step, and where sessions start.

    Sessions practise one skill; skills are unlocked in order.
    """
    k_max = int(n_used.max())
    new_session = rng.random((n, steps)) < 1.0 / MEAN_SESSION_ATTEMPTS
    new_session[:, 0] = True
    start_step = np.maximum.accumulate(np.where(new_session, np.arange(steps), 0), axis=1)
    # Skills open one after another; a session picks among the open ones by the learner's
    # own preference, so early skills get revisited while later ones come in.
    unlock_span = max(1.0, UNLOCK_ALL_AT * steps)
    n_open = np.minimum(
        n_used[:, None], 1 + np.floor(start_step * n_used[:, None] / unlock_span).astype(np.int64)
    )
    preference = rng.gamma(1.5, 1.0, (n, k_max))
    weights = preference[:, None, :] * (np.arange(k_max)[None, None, :] < n_open[:, :, None])
    cum = np.cumsum(weights, axis=2)
    u = rng.random((n, steps))[:, :, None] * cum[:, :, -1:]
    slot_at_step = np.minimum((u >= cum).sum(axis=2), k_max - 1)
    # Every step of a session takes the slot drawn at the session's first step.
    picked = np.take_along_axis(slot_at_step, start_step, axis=1).astype(np.int64)
    return picked, new_session


def _timestamps(rng: np.random.Generator, n: int, steps: int, new_session: BoolArray) -> IntArray:
    in_session = (20 + rng.exponential(60.0, (n, steps))) * _US
    # Days between sessions, log-normal: mostly about a day, sometimes a week.
    between = np.exp(rng.normal(np.log(1.2), 0.8, (n, steps))) * _DAY_US
    gaps = np.where(new_session, between, in_session).astype(np.int64)
    gaps[:, 0] = rng.integers(0, START_SPREAD_DAYS * _DAY_US, n)
    start_us = START.astype(np.int64)
    out: IntArray = start_us + np.cumsum(gaps, axis=1)
    return out


def _biased_pick(
    rng: np.random.Generator,
    params: SimulationParams,
    catalog: Catalog,
    skill_idx: IntArray,
    slots: IntArray,
) -> IntArray:
    """Exercise index within its skill for every step, favouring easy (bias > 0) or hard items."""
    by_skill = catalog.difficulty_by_skill()
    spread = by_skill.std(axis=1, keepdims=True)
    z = (by_skill - by_skill.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)
    n, steps = slots.shape
    bias = np.asarray(
        params.practice_bias + params.practice_bias_sd * rng.standard_normal(n), dtype=np.float64
    )
    skill_at_step = skill_idx[np.arange(n)[:, None], slots]
    weight = np.exp(-bias[:, None, None] * z[skill_at_step])  # (n, steps, E)
    cum = np.cumsum(weight, axis=2)
    cum /= cum[:, :, -1:]
    u = rng.random((n, steps))
    pick = (u[:, :, None] >= cum).sum(axis=2)
    out: IntArray = np.minimum(pick, params.exercises_per_skill - 1).astype(np.int64)
    return out


def _simulate_chunk(
    rng: np.random.Generator, params: SimulationParams, catalog: Catalog, first: int, n: int
) -> LearnerChunk:
    steps, per_skill = params.attempts_per_learner, params.exercises_per_skill
    k_max = min(SKILLS_PER_LEARNER[1], params.skills)
    skill_idx, n_used = _choose_skills(rng, catalog, n, k_max)
    general = rng.normal(0.0, GENERAL_ABILITY_SD, n)
    learn_rate = np.exp(rng.normal(0.0, LEARNING_RATE_SD, n))
    theta0 = general[:, None] + rng.normal(0.0, SKILL_DEVIATION_SD, (n, k_max))
    slots, new_session = _schedule(rng, n, steps, n_used)
    answered = _timestamps(rng, n, steps, new_session)
    exercise_pick = rng.integers(0, per_skill, (n, steps))
    draws = rng.random((n, steps))
    # Variant randomness from separate streams: the default world's draws above stay as they are.
    variant_rng = np.random.default_rng([params.seed, 2, first])
    shift = None
    if params.skill_clusters > 0:
        shift = variant_rng.normal(0.0, params.cluster_sd, (n, params.skill_clusters))
        theta0 = theta0 + shift[np.arange(n)[:, None], skill_idx % params.skill_clusters]
    if params.practice_bias != 0.0 or params.practice_bias_sd > 0.0:
        exercise_pick = _biased_pick(variant_rng, params, catalog, skill_idx, slots)

    # Learning couples every attempt to the previous ones, so time is the one sequential
    # axis; each step is vectorized across the chunk's learners.
    theta = theta0.copy()
    practice = np.zeros((n, k_max), dtype=np.int64)
    rows = np.arange(n)
    ex_index = skill_idx[rows[:, None], slots] * per_skill + exercise_pick
    p_correct = np.empty((n, steps))
    correct = np.empty((n, steps), dtype=bool)
    difficulty = catalog.exercise_difficulty
    g, sl = params.guess, params.slip
    default_learning = params.learning_scale == 1.0 and params.learning_exponent == -0.5
    for t in range(steps):
        slot = slots[:, t]
        p = success_probability(theta[rows, slot], difficulty[ex_index[:, t]], guess=g, slip=sl)
        ok = draws[:, t] < p
        p_correct[:, t], correct[:, t] = p, ok
        if default_learning:  # the original expression, bit for bit
            gain = (GAIN_PER_ATTEMPT + GAIN_PER_CORRECT * ok) / np.sqrt(1.0 + practice[rows, slot])
        else:
            gain = (GAIN_PER_ATTEMPT + GAIN_PER_CORRECT * ok) * (
                params.learning_scale * (1.0 + practice[rows, slot]) ** params.learning_exponent
            )
        theta[rows, slot] += learn_rate * gain
        practice[rows, slot] += 1

    learner_ids = np.arange(first, first + n, dtype=np.int64)
    ability = _ability(params, general, shift, theta, skill_idx, first)
    practised = practice > 0
    m_rows, m_slots = np.nonzero(practised)
    m_skill_idx = skill_idx[m_rows, m_slots]
    theta_final = theta[m_rows, m_slots]
    by_skill = catalog.difficulty_by_skill()[m_skill_idx]
    mastery = success_probability(theta_final[:, None], by_skill, guess=g, slip=sl).mean(axis=1)
    return LearnerChunk(
        learner_ids=learner_ids,
        attempt_learner_ids=np.repeat(learner_ids, steps),
        attempt_exercise_ids=catalog.exercise_ids[ex_index].ravel(),
        attempt_skill_ids=catalog.skill_ids[skill_idx[rows[:, None], slots]].ravel(),
        attempt_correct=correct.ravel(),
        attempt_answered_at_us=answered.ravel(),
        attempt_p_correct=p_correct.ravel(),
        mastery_learner_ids=learner_ids[m_rows],
        mastery_skill_ids=catalog.skill_ids[m_skill_idx],
        theta_initial=theta0[m_rows, m_slots],
        theta_final=theta_final,
        mastery_final=mastery,
        ability=ability,
    )


def _ability(
    params: SimulationParams,
    general: FloatArray,
    shift: FloatArray | None,
    theta: FloatArray,
    skill_idx: IntArray,
    first: int,
) -> FloatArray:
    """(n, S) true ability on every skill: the learner's skills from theta (its final state),
    the skills they never took up drawn like a starting ability (general plus a deviation,
    plus the cluster's shift), from a stream of their own so every other draw is unchanged."""
    n, n_skills = len(general), params.skills
    rng = np.random.default_rng([params.seed, 3, first])
    out: FloatArray = general[:, None] + rng.normal(0.0, SKILL_DEVIATION_SD, (n, n_skills))
    if shift is not None:  # the same per-cluster shifts the learner's own skills got
        out += shift[:, np.arange(n_skills) % shift.shape[1]]
    out[np.arange(n)[:, None], skill_idx] = theta
    return out
