"""The live API, after `skillcoach train --promote`, ranks weaknesses and recommends exercises
as the offline evaluation (`python -m loadtests evaluate`) says the model does, on the same
learners.

One small seeded world of a non-default simulator variant goes in through the public API only
(POST /v1/learners/{id}/attempts in batches with Idempotency-Keys, a real `skillcoach serve`
behind a real PgBouncer); `skillcoach train --promote` runs in process against the same
database; once the server has loaded the new model, GET /v1/learners/{id}/weaknesses for the
held-out learners is scored against the simulator's truth. The offline side never touches the
database: it fits on the simulated attempts with the evaluation's own code (same split as the
CLI's) and computes the held-out learners' evidence and mastery with numpy. Both must agree
per (learner, skill) and in precision@3, and the API must beat the Laplace baseline computed
from the same attempts. Before training, the server's placeholder model must disagree: the
comparison is shown to be able to fail.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from loadtests.evaluate import (
    World,
    estimated_mastery,
    final_evidence,
    fit_on_training,
    service_recommendations,
    simulate,
    true_mastery,
)
from loadtests.variants import VARIANTS, variant_params
from sqlalchemy import Engine

from skillcoach.cli import main
from skillcoach.data.api_keys import Scope, create_api_key
from skillcoach.data.database import create_sync_engine
from skillcoach.data.model_registry import promote, store_model
from skillcoach.ml import quality
from skillcoach.ml.analysis import RecommendationPolicy
from skillcoach.ml.model import BestLR
from skillcoach.ml.simulator import Catalog
from skillcoach.ml.training import _split
from skillcoach_devstack.pgbouncer import PgBouncer
from tests.conftest import drop_database, fresh_database
from tests.fixtures_api import run_server
from tests.fixtures_services import pgbouncer_db_url

pytestmark = pytest.mark.integration

# `mixed` changes guess/slip, skill correlation, learning and practice bias at once: the world
# furthest from the default. Small enough to post through the API in seconds; half the
# learners held out so precision@3 rests on ~90 learners.
VARIANT = "mixed"
SIZE = {"learners": 200, "skills": 10, "exercises_per_skill": 8, "attempts_per_learner": 40}
TEST_FRACTION = 0.5
SPLIT_SEED = 0
BATCH = 20
# The server polls for a promoted model this often; the test waits many polls at most.
REFRESH_SECONDS = 0.3
LOAD_DEADLINE_SECONDS = 30.0
# The target: the served ranking beats per-skill accuracy by this much.
MARGIN_OVER_LAPLACE = 0.05
# Recommendations as the server answers them by default (its settings' defaults).
RECOMMENDATIONS = RecommendationPolicy(target=0.7, limit=5)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Live:
    direct_url: str
    base: str
    key: str
    placeholder_version: int


@pytest.fixture(scope="module")
def world() -> World:
    (variant,) = [v for v in VARIANTS if v.name == VARIANT]
    return simulate(variant_params(variant, **SIZE))


def _write_catalog(engine: Engine, catalog: Catalog) -> None:
    with engine.begin() as conn:
        for s in catalog.skill_ids.tolist():
            conn.exec_driver_sql(
                "INSERT INTO skills (id, name) VALUES (%(i)s, %(n)s)", {"i": s, "n": f"skill-{s}"}
            )
        rows = zip(catalog.exercise_ids.tolist(), catalog.exercise_skill_ids.tolist(),
                   catalog.exercise_difficulty.tolist(), strict=True)  # fmt: skip
        for e, s, d in rows:
            conn.exec_driver_sql(
                "INSERT INTO exercises (id, skill_id, difficulty, name)"
                " VALUES (%(i)s, %(s)s, %(d)s, %(n)s)",
                {"i": e, "s": s, "d": d, "n": f"ex-{e}"},
            )


def _placeholder(catalog: Catalog) -> BestLR:
    """A counts-only model that knows nothing of the catalog: a replica needs a live model to be
    ready, and this one ranks differently from any fit, so serving it stale is visible."""
    return BestLR.from_coefficients(
        intercept=0.5,
        skill_ids=catalog.skill_ids,
        skill_weights=np.zeros(len(catalog.skill_ids)),
        exercise_ids=catalog.exercise_ids,
        exercise_skill_ids=catalog.exercise_skill_ids,
        exercise_weights=np.zeros(len(catalog.exercise_ids)),
        count_weights=[0.4, -0.4, 0.05, -0.05],
    )


@pytest.fixture(scope="module")
def live(world: World, pgbouncer: PgBouncer, pg_url: str) -> Iterator[Live]:
    name, direct_url = fresh_database("skillcoach_live")
    try:
        engine = create_sync_engine(direct_url)
        try:
            _write_catalog(engine, world.catalog)
            with engine.begin() as conn:
                version = store_model(
                    conn,
                    artifact=_placeholder(world.catalog).to_artifact(),
                    trained_at=datetime(2026, 1, 1, tzinfo=UTC),
                    metrics={},
                    feature_schema={"features": "placeholder"},
                )
                promote(conn, version=version)
                key = create_api_key(conn, name="live", scopes=frozenset({Scope.READ, Scope.WRITE}))
        finally:
            engine.dispose()
        url = pgbouncer_db_url(pgbouncer, pg_url, name)
        with run_server(url, model_refresh_seconds=str(REFRESH_SECONDS)) as (base, _):
            yield Live(direct_url, base, key, version)
    finally:
        drop_database(name)


def _batches(world: World, learner: int) -> list[list[dict[str, Any]]]:
    log = world.log
    sel = np.flatnonzero(log.learner_ids == learner)
    items = [
        {
            "exercise_id": int(log.exercise_ids[i]),
            "correct": bool(log.correct[i]),
            # Exact microseconds: the CLI orders a learner's attempts by answered_at.
            "answered_at": (EPOCH + timedelta(microseconds=int(log.answered_at[i]))).isoformat(),
        }
        for i in sel
    ]
    return [items[k : k + BATCH] for k in range(0, len(items), BATCH)]


def _post_all(http: httpx.Client, world: World) -> None:
    def post_learner(learner: int) -> int:
        n = 0
        for k, batch in enumerate(_batches(world, learner)):
            r = http.post(
                f"/v1/learners/{learner}/attempts",
                json={"attempts": batch},
                headers={"Idempotency-Key": f"live-{learner}-{k}"},
            )
            assert r.status_code == 201, r.text
            assert r.json()["accepted"] == len(batch)
            n += len(batch)
        return n

    learners = np.unique(world.log.learner_ids).tolist()
    with ThreadPoolExecutor(max_workers=4) as pool:
        posted = sum(pool.map(post_learner, learners))
    assert posted == len(world.log)
    # A retried batch (same key, same body) is a replay: nothing counted twice.
    first = learners[0]
    r = http.post(
        f"/v1/learners/{first}/attempts",
        json={"attempts": _batches(world, first)[0]},
        headers={"Idempotency-Key": f"live-{first}-0"},
    )
    assert r.status_code == 200 and r.json()["replayed"] is True, r.text


@dataclass(frozen=True)
class Served:
    """The API's weaknesses of the held-out learners, one row per (learner, skill)."""

    model_versions: set[int]
    keys: IntArray  # learner * span + skill
    mastery: FloatArray
    rank: FloatArray  # position in the learner's answer, weakest first
    attempts: IntArray
    correct: IntArray


def _served(http: httpx.Client, learners: list[int], span: int) -> Served:
    versions: set[int] = set()
    keys: list[int] = []
    mastery: list[float] = []
    rank: list[float] = []
    attempts: list[int] = []
    correct: list[int] = []
    for learner in learners:
        r = http.get(f"/v1/learners/{learner}/weaknesses", params={"limit": 1000})
        assert r.status_code == 200, r.text
        body = r.json()
        versions.add(body["model_version"])
        for position, s in enumerate(body["skills"]):
            keys.append(learner * span + s["skill_id"])
            mastery.append(s["mastery"])
            rank.append(float(position))
            attempts.append(s["attempts"])
            correct.append(s["correct"])
    order = np.argsort(keys)
    return Served(
        versions,
        np.asarray(keys, dtype=np.int64)[order],
        np.asarray(mastery)[order],
        np.asarray(rank)[order],
        np.asarray(attempts, dtype=np.int64)[order],
        np.asarray(correct, dtype=np.int64)[order],
    )


def _recommended(http: httpx.Client, learners: list[int]) -> dict[int, list[tuple[int, float]]]:
    """The API's recommendations of each learner: (exercise, predicted success), in order."""
    out: dict[int, list[tuple[int, float]]] = {}
    for learner in learners:
        r = http.get(
            f"/v1/learners/{learner}/recommendations",
            params={"limit": RECOMMENDATIONS.limit, "target": RECOMMENDATIONS.target},
        )
        assert r.status_code == 200, r.text
        out[learner] = [(e["exercise_id"], e["predicted_success"]) for e in r.json()["exercises"]]
    return out


def _wait_for_model(http: httpx.Client, version: int) -> None:
    deadline = time.monotonic() + LOAD_DEADLINE_SECONDS
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = http.get("/v1/model-status").json()
        if status.get("model_version") == version:
            return
        time.sleep(REFRESH_SECONDS / 2)
    pytest.fail(f"the server did not load v{version} in {LOAD_DEADLINE_SECONDS} s: {status}")


def test_live_weaknesses_after_train_promote_agree_with_the_offline_evaluation(
    world: World,
    live: Live,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log, catalog = world.log, world.catalog
    span = int(catalog.skill_ids.max()) + 1
    # Offline, exactly as the evaluation does it, on the CLI's split (train's own function:
    # which learners it holds out is part of what must agree).
    is_test = _split(log.learner_ids, seed=SPLIT_SEED, test_fraction=TEST_FRACTION)
    attempt_prior, fit = fit_on_training(world, is_test)
    ev = final_evidence(log.subset(is_test), attempt_prior[is_test], span)
    offline_mastery = estimated_mastery(fit.model, ev)
    truth = true_mastery(world, ev["keys"], span)
    offline_p3, n_learners = quality.precision_at_k(ev["learner"], ev["skill"], truth,
                                                    offline_mastery)  # fmt: skip
    assert offline_p3 is not None and n_learners >= 60
    held_out = np.unique(ev["learner"]).tolist()

    with httpx.Client(
        base_url=live.base, headers={"Authorization": f"Bearer {live.key}"}, timeout=30
    ) as http:
        _post_all(http, world)

        # The placeholder model is live: same evidence, a different ranking. This is what a
        # stale model looks like to the comparison below, which must therefore tell them apart.
        stale = _served(http, held_out, span)
        assert stale.model_versions == {live.placeholder_version}
        np.testing.assert_array_equal(stale.keys, ev["keys"])
        assert np.abs(stale.mastery - offline_mastery).max() > 0.05
        stale_recs = _recommended(http, held_out)

        monkeypatch.setenv("SKILLCOACH_DATABASE_URL", live.direct_url)
        argv = ["train", "--promote", "--seed", str(SPLIT_SEED),
                "--test-fraction", str(TEST_FRACTION)]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr().out
        promoted = re.search(r"^promoted model version (\d+)", out, re.MULTILINE)
        assert promoted is not None, out
        version = int(promoted.group(1))
        assert version != live.placeholder_version
        _wait_for_model(http, version)

        served = _served(http, held_out, span)
        recommended = _recommended(http, held_out)

    assert served.model_versions == {version}
    # The same evidence reached the database as the offline evaluation counts...
    np.testing.assert_array_equal(served.keys, ev["keys"])
    np.testing.assert_array_equal(served.attempts, ev["c"] + ev["i_"])
    np.testing.assert_array_equal(served.correct, ev["c"])
    # ...and the served model is the offline fit: per-skill mastery as the answer rounds it (4
    # decimals), plus rounding error (the database sums residuals in another order than numpy).
    np.testing.assert_allclose(served.mastery, offline_mastery, rtol=0, atol=0.5e-4 + 1e-9)

    # The API's ranking (its order, tie-breaks included) scored against the truth.
    api_p3, api_n = quality.precision_at_k(ev["learner"], ev["skill"], truth, served.rank)
    assert api_n == n_learners
    assert api_p3 is not None and abs(api_p3 - offline_p3) <= 0.02, (api_p3, offline_p3)
    laplace = quality.laplace_accuracy(served.correct, served.attempts - served.correct)
    laplace_p3, _ = quality.precision_at_k(ev["learner"], ev["skill"], truth, laplace)
    assert laplace_p3 is not None
    assert api_p3 >= laplace_p3 + MARGIN_OVER_LAPLACE, (api_p3, laplace_p3)

    # Recommendations: the evaluation's own service_recommendations on the offline fit, with the
    # held-out learners' seen-exercise history, picks what the API picks, in its order.
    offline_recs = {
        learner: [(r.exercise_id, r.predicted_success) for r in recs]
        for learner, _, recs in service_recommendations(
            fit.model, ev, catalog, log.subset(is_test), RECOMMENDATIONS
        )
    }
    assert offline_recs.keys() == recommended.keys()

    def differing(answers: dict[int, list[tuple[int, float]]]) -> list[int]:
        return [
            learner
            for learner in held_out
            if [e for e, _ in answers[learner]] != [e for e, _ in offline_recs[learner]]
        ]

    # The placeholder's picks are not the fit's: the comparison tells a stale model apart.
    assert len(differing(stale_recs)) > 0.5 * len(held_out)
    differ = differing(recommended)
    # A candidate predicted within rounding of the tolerance's edge may fall on either side.
    assert len(differ) <= 0.02 * len(held_out), {
        k: (recommended[k], offline_recs[k]) for k in differ
    }
    offline_p = {(k, e): p for k, recs in offline_recs.items() for e, p in recs}
    for learner in held_out:
        assert len(recommended[learner]) == RECOMMENDATIONS.limit
        for e, p in recommended[learner]:
            if (learner, e) in offline_p:
                assert p == pytest.approx(offline_p[(learner, e)], abs=0.5e-4 + 1e-9)
