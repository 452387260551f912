"""The paired inference benchmark compares what it claims to: the reference code, the
abilities code and this tree, each on its own model and candidates (a small run)."""

from __future__ import annotations

import subprocess

import pytest
from loadtests.bench_inference import (
    ABILITIES,
    REFERENCE,
    seed_and_promote,
    time_paired,
    workload,
)
from loadtests.harness import database_url, scratch_database

pytestmark = pytest.mark.integration


def _has_history() -> bool:
    return all(
        subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], check=False).returncode == 0
        for rev in (REFERENCE, ABILITIES)
    )


@pytest.mark.timeout(180)
def test_three_codes_on_the_same_learners() -> None:
    if not _has_history():
        pytest.skip("a shallow clone: the compared revisions are not in this repository")
    with scratch_database() as db:
        url = database_url(db)
        seed_and_promote(url, 150)
        work = workload(url, 12)
    assert list(work.codes) == [REFERENCE, ABILITIES, "this tree"]
    assert len(work.evidence) == 12
    for i, ev in enumerate(work.evidence):
        hist = {name: h[i] for name, h in work.histories.items()}
        # 773bbdd and this tree serve the same model: the same weaknesses, to the last digit.
        mid = work.codes[ABILITIES][0](ev, hist[ABILITIES])
        now = work.codes["this tree"][0](ev, hist["this tree"])
        assert [(w.skill_id, w.mastery) for w in mid] == [(w.skill_id, w.mastery) for w in now]
        # The counts-only reference ranks the same skills (its own estimates).
        ref = work.codes[REFERENCE][0](ev, hist[REFERENCE])
        assert sorted(w.skill_id for w in ref) == sorted(w.skill_id for w in now)
        # Every code recommends from its own candidates, this tree's included.
        for name in work.codes:
            recs = work.codes[name][1](ev, hist[name])
            assert isinstance(recs, list) and 0 < len(recs) <= 10
    timings = time_paired(work, 1)
    for kind in ("weaknesses", "recommendations"):
        assert timings[kind][REFERENCE]["paired_ratio_median"] == 1.0
        for name in work.codes:
            t = timings[kind][name]
            assert 0 < t["p50_us"] <= t["p99_us"] and t["paired_ratio_median"] > 0
