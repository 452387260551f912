"""Which learner the next simulated request is about: Zipf over ranks, a fixed permutation from
rank to learner id. Pure (no locust, no I/O) so it can be unit-tested in the test process,
where importing locust would monkeypatch the standard library with gevent.

The scheme is loadtests/zipf.lua's (the cache benchmark's wrk script): a CDF over ranks
1..n with P(k) proportional to k^-s, precomputed once, and a binary search per draw; rank k
is learner `ids[k - 1]`, where `ids` is one seeded shuffle of the id range, so the hot
learners are spread over the ids rather than being the first ones seeded. The permutation
itself is Python's (random.Random.shuffle), not LuaJIT's: the same seed picks other hot
learners here than in the wrk runs.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

__all__ = ["PERMUTATION_SEED", "ZipfLearners", "learner_permutation", "zipf_cdf", "zipf_rank"]

# The cache benchmark's seed (loadtests/cache_tools.py), so "the same permutation in every
# run" holds across locust runs too.
PERMUTATION_SEED = 20261127


def zipf_cdf(n: int, exponent: float) -> list[float]:
    """CDF over ranks 1..n of P(k) ~ k^-exponent; cdf[k - 1] = P(rank <= k), the last 1.0."""
    if n < 1:
        raise ValueError(f"need at least one rank, got n={n}")
    if exponent < 0:
        raise ValueError(f"the exponent must be >= 0, got {exponent}")
    partial = list(accumulate(k ** (-exponent) for k in range(1, n + 1)))
    total = partial[-1]
    cdf = [p / total for p in partial]
    cdf[-1] = 1.0  # no rounding gap above the last rank
    return cdf


def zipf_rank(cdf: list[float], u: float) -> int:
    """The rank (1-based) a uniform u in [0, 1) falls on: the first k with cdf[k - 1] >= u."""
    return min(bisect_left(cdf, u), len(cdf) - 1) + 1


def learner_permutation(first_id: int, n: int, seed: int = PERMUTATION_SEED) -> list[int]:
    """ids[k - 1] is the learner of rank k: first_id..first_id+n-1 shuffled by a fixed seed."""
    ids = list(range(first_id, first_id + n))
    random.Random(seed).shuffle(ids)
    return ids


@dataclass(frozen=True)
class ZipfLearners:
    """Build once per process (O(n) floats), then draw from any number of users' streams."""

    ids: list[int]
    cdf: list[float]

    @classmethod
    def build(
        cls, *, first_id: int, n: int, exponent: float, seed: int = PERMUTATION_SEED
    ) -> ZipfLearners:
        return cls(ids=learner_permutation(first_id, n, seed), cdf=zipf_cdf(n, exponent))

    def learner(self, u: float) -> int:
        """The learner id that uniform u in [0, 1) maps to (pure: same u, same learner)."""
        return self.ids[zipf_rank(self.cdf, u) - 1]

    def draw(self, rng: random.Random) -> int:
        return self.learner(rng.random())
