from __future__ import annotations

import numpy as np
import pytest

from skillcoach.data.catalog_reads import Catalog


def catalog(skill_of: list[int]) -> Catalog:
    """Exercises 100, 101, ... of the given skills, sorted by (skill, id) as load_catalog
    returns them."""
    skills = np.sort(np.array(skill_of, dtype=np.int64))
    return Catalog(
        skill_names={int(s): f"skill {s}" for s in skills},
        exercise_ids=np.arange(100, 100 + len(skills), dtype=np.int64),
        exercise_skill_ids=skills,
        exercise_difficulty=np.zeros(len(skills)),
    )


@pytest.mark.parametrize(
    "asked",
    [[3, 1], [1, 2, 3, 7], [7], [], [2, 9, 1], [5]],
)
def test_exercises_of_equals_a_membership_test_in_the_order_asked(asked: list[int]) -> None:
    cat = catalog([1, 1, 1, 2, 3, 3, 5, 5, 5, 5, 7])
    ids, skills = cat.exercises_of(np.array(asked, dtype=np.int64))
    expected = [
        (int(e), int(s))
        for a in asked
        for e, s in zip(cat.exercise_ids, cat.exercise_skill_ids, strict=True)
        if s == a
    ]
    assert list(zip(ids.tolist(), skills.tolist(), strict=True)) == expected
    assert ids.dtype == np.int64 and skills.dtype == np.int64


def test_exercises_of_a_random_catalog_matches_isin() -> None:
    rng = np.random.default_rng(7)
    cat = catalog(rng.integers(1, 60, 2_000).tolist())
    for _ in range(50):
        asked = rng.choice(np.arange(0, 70), size=int(rng.integers(0, 12)), replace=False)
        ids, skills = cat.exercises_of(asked)
        mask = np.isin(cat.exercise_skill_ids, asked)
        assert sorted(ids.tolist()) == cat.exercise_ids[mask].tolist()
        assert set(skills.tolist()) <= set(asked.tolist())
