"""The in-process breakdown removes what each variant says it removes, and puts everything
back afterwards (a small run on a scratch database behind PgBouncer)."""

from __future__ import annotations

import argparse

import pytest
from loadtests.bench_breakdown import VARIANTS, Memo, measure, parts_of, variant

import skillcoach.answers.learner_answers as answers_module
import skillcoach.data.database as database_module
from loadtests import bench_breakdown
from skillcoach.data.database import Database


def test_the_parts_are_the_differences_between_neighbouring_variants() -> None:
    medians = {"full": 300.0, "no I/O": 180.0, "no database": 90.0, "no model": 40.0}
    assert parts_of(medians) == {
        "database I/O": 120.0,
        "data layer around it": 90.0,
        "model ranking": 50.0,
        "the rest of the request": 40.0,
    }
    assert sum(parts_of(medians).values()) == medians["full"]


def _points() -> tuple[object, ...]:
    return (
        getattr(database_module, "run_statement"),  # noqa: B009 - not an exported name
        Database.run,
        getattr(answers_module, "weakness_columns"),  # noqa: B009
    )


def test_a_variant_patches_its_parts_and_puts_them_back() -> None:
    originals = _points()
    with variant("no I/O", Memo()):
        current = _points()
        assert current[0] is not originals[0] and current[1:] == originals[1:]
    with variant("no model", Memo()):
        assert all(c is not o for c, o in zip(_points(), originals, strict=True))
    assert _points() == originals
    with pytest.raises(ValueError, match="unknown variant"), variant("no http", Memo()):
        pass


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_small_run_answers_every_request_and_each_variant_removes_its_part() -> None:
    args = argparse.Namespace(rounds=2, batch=40, tasks=4, learners=40, skills=8)
    result = measure(args)
    assert all(s == {200: args.rounds * args.batch} for s in result["statuses"].values())
    # Each variant really answered from memory on its measured requests (the warm-up filled
    # it): no I/O in its own rounds, the evidence in both later variants', the ranking in
    # the last one's.
    measured = args.rounds * args.batch
    assert result["memory_hits"]["no I/O"] >= measured
    assert result["memory_hits"]["no database"] >= 2 * measured
    assert result["memory_hits"]["no model"] >= measured
    assert set(result["median_us"]) == set(VARIANTS)
    assert all(us > 0 for us in result["median_us"].values())
    assert bench_breakdown.markdown(result).count("|") > 10
