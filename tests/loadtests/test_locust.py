"""The locust scenarios (loadtests/locustfile.py): the Zipf learner sampler on its own, and a
seconds-long headless run against a real `skillcoach serve` that must exercise every request
kind without a single failure and really write the attempts it posts.

Locust runs only in a subprocess (loadtests/bench_locust.py): this process never imports it,
so gevent never monkeypatches the test session.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from itertools import pairwise

import psycopg2
import pytest
from loadtests.bench_locust import run_locust
from loadtests.zipf_sampler import (
    PERMUTATION_SEED,
    ZipfLearners,
    learner_permutation,
    zipf_cdf,
    zipf_rank,
)

from tests.fixtures_api import EX_WEIGHTS, SKILL_WEIGHTS, Keys, exercise_id

# The request names the locustfile groups its stats under (it is not imported here).
WEAKNESSES = "/v1/learners/[id]/weaknesses"
RECOMMENDATIONS = "/v1/learners/[id]/recommendations"
ATTEMPTS = "/v1/learners/[id]/attempts"
MODEL_STATUS = "/v1/model-status"


# --- the sampler -------------------------------------------------------------------------


def test_cdf_is_increasing_and_ends_at_one() -> None:
    cdf = zipf_cdf(100, 1.1)
    assert len(cdf) == 100
    assert all(a < b for a, b in pairwise(cdf))
    assert cdf[-1] == 1.0
    # P(rank 1) / P(rank 2) = 2^1.1
    p1, p2 = cdf[0], cdf[1] - cdf[0]
    assert p1 / p2 == pytest.approx(2**1.1)


def test_exponent_zero_is_uniform() -> None:
    cdf = zipf_cdf(4, 0.0)
    assert cdf == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_rank_boundaries() -> None:
    cdf = zipf_cdf(3, 1.0)  # P = 6/11, 3/11, 2/11
    assert zipf_rank(cdf, 0.0) == 1
    assert zipf_rank(cdf, cdf[0]) == 1
    assert zipf_rank(cdf, cdf[0] + 1e-9) == 2
    assert zipf_rank(cdf, cdf[1] + 1e-9) == 3
    assert zipf_rank(cdf, 0.999999999) == 3
    assert zipf_rank(cdf, 1.0) == 3


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        zipf_cdf(0, 1.1)
    with pytest.raises(ValueError, match="exponent"):
        zipf_cdf(10, -0.5)


def test_permutation_is_deterministic_and_covers_the_range() -> None:
    ids = learner_permutation(101, 500)
    assert ids == learner_permutation(101, 500, PERMUTATION_SEED)
    assert sorted(ids) == list(range(101, 601))
    assert ids != list(range(101, 601))  # shuffled, so the hot learners are not the first ids
    assert ids != learner_permutation(101, 500, PERMUTATION_SEED + 1)


def test_draws_are_skewed_by_rank_and_within_the_range() -> None:
    n, first = 1000, 5000
    learners = ZipfLearners.build(first_id=first, n=n, exponent=1.1)
    rng = random.Random(1)
    counts = Counter(learners.draw(rng) for _ in range(50_000))
    assert all(first <= learner < first + n for learner in counts)
    by_rank = [counts[learners.ids[k]] for k in range(n)]
    # Rank 1 is the most frequent learner, and the head is ordered as Zipf says.
    assert counts.most_common(1)[0][0] == learners.ids[0]
    assert by_rank[0] > by_rank[1] > by_rank[3] > by_rank[9] > by_rank[99]
    # The expected share of rank 1 is 1 / H(1000, 1.1) ~ 14.6 %; of the top 10, ~ 43 %.
    assert by_rank[0] / 50_000 == pytest.approx(learners.cdf[0], abs=0.01)
    assert sum(by_rank[:10]) / 50_000 == pytest.approx(learners.cdf[9], abs=0.015)
    # The hot learners are spread over the range, not bunched at its start.
    hottest = sorted(learners.ids[:10])
    assert hottest[-1] - hottest[0] > n // 2


def test_same_u_same_learner() -> None:
    a = ZipfLearners.build(first_id=1, n=300, exponent=1.1)
    b = ZipfLearners.build(first_id=1, n=300, exponent=1.1)
    us = [random.Random(3).random() for _ in range(100)]
    assert [a.learner(u) for u in us] == [b.learner(u) for u in us]


def test_the_test_process_never_imports_locust() -> None:
    assert "locust" not in sys.modules
    assert "gevent" not in sys.modules


# --- a short run against a real server --------------------------------------------------

SMOKE_LEARNERS = 40
# The fixtures' catalog: exercise ids skill*10 + k. One skill's are contiguous.
SMOKE_SKILL = next(iter(SKILL_WEIGHTS))
SMOKE_EXERCISES = (exercise_id(SMOKE_SKILL, 0), exercise_id(SMOKE_SKILL, len(EX_WEIGHTS) - 1))


def _psycopg2(url: str) -> str:
    return url.replace("+psycopg2", "")


def _attempt_count(url: str) -> int:
    conn = psycopg2.connect(_psycopg2(url))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM attempts")
            (count,) = cur.fetchone() or (0,)
    finally:
        conn.close()
    return int(count)


@pytest.fixture(scope="module")
def seeded_learners(api_db_url: str) -> tuple[int, int]:
    """Learners 1..N exist (the fixtures seed only the catalog and the model)."""
    conn = psycopg2.connect(_psycopg2(api_db_url))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO learners (id) SELECT generate_series(1, %s) ON CONFLICT DO NOTHING",
                (SMOKE_LEARNERS,),
            )
            cur.execute(
                "SELECT count(*) FROM exercises WHERE id BETWEEN %s AND %s", SMOKE_EXERCISES
            )
            (in_range,) = cur.fetchone() or (0,)
    finally:
        conn.close()
    lo, hi = SMOKE_EXERCISES
    assert in_range == hi - lo + 1, "the smoke's exercise id range must exist in full"
    return 1, SMOKE_LEARNERS


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_smoke_every_scenario_runs_without_failures_and_attempts_land(
    server: tuple[str, str],
    keys: Keys,
    api_db_url: str,
    seeded_learners: tuple[int, int],
) -> None:
    base_url, _ = server
    first, count = seeded_learners
    before = _attempt_count(api_db_url)
    result = run_locust(
        base_url,
        keys.write,
        learner_first=first,
        learners=count,
        exercise_min=SMOKE_EXERCISES[0],
        exercise_max=SMOKE_EXERCISES[1],
        users=10,
        spawn_rate=10,
        duration=5,
        # Short think times: ~a hundred tasks per learner, so the 10 % attempt batches
        # cannot all be missed by chance; the one dashboard polls on start and every 2 s.
        think_min=0.0,
        think_max=0.1,
        poll_seconds=2.0,
    )
    after = _attempt_count(api_db_url)
    summary = f"requests {result['requests']}\nlog:\n{result['log_tail']}"

    assert result["exceptions"] == [], summary
    assert result["failures"] == [], summary
    for name in (WEAKNESSES, RECOMMENDATIONS, ATTEMPTS, MODEL_STATUS):
        assert name in result["requests"], f"{name} never requested: {summary}"
        entry = result["requests"][name]
        assert entry["requests"] >= 1, summary
        assert entry["failures"] == 0, summary
    assert result["total"] is not None
    assert result["total"]["failures"] == 0, summary
    # Reads dominate, as the task weights say (60 + 25 reads to 10 batches).
    reads = result["requests"][WEAKNESSES]["requests"]
    assert reads > result["requests"][ATTEMPTS]["requests"], summary
    # Each 201 batch inserted 1-5 rows: at least one row per accepted batch landed.
    posted = result["requests"][ATTEMPTS]["requests"]
    assert after - before >= posted, f"{after - before} attempt rows for {posted} batches"
    assert after - before <= 5 * posted + 5 * 10, "more rows than batches could have written"
