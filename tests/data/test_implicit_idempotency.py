"""A batch sent without an Idempotency-Key is keyed by its fingerprint: a byte-identical
retry (its acknowledgement lost) counts once; explicit keys behave as before."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine
from starlette.testclient import TestClient

from skillcoach.data.attempt_writes import (
    batch_fingerprint,
    implicit_idempotency_key,
    learner_data_version,
)
from skillcoach.data.records import Attempt
from tests.fixtures_api import exercise_id

_learners = itertools.count(7_200_000)
T0 = datetime(2026, 4, 1, 9, tzinfo=UTC)


def body(*correct: bool, start: datetime = T0) -> dict[str, Any]:
    return {
        "attempts": [
            {
                "exercise_id": exercise_id(2, i % 3),
                "correct": c,
                "answered_at": (start + timedelta(minutes=i)).isoformat(),
            }
            for i, c in enumerate(correct)
        ]
    }


def post(client: TestClient, learner: int, payload: Any, **headers: str) -> Any:
    return client.post(f"/v1/learners/{learner}/attempts", json=payload, headers=headers)


def attempts_of(client: TestClient, learner: int) -> int:
    r = client.get(f"/v1/learners/{learner}/weaknesses")
    assert r.status_code == 200, r.text
    return sum(int(s["attempts"]) for s in r.json()["skills"])


def test_a_retried_post_without_a_key_counts_once(client: TestClient) -> None:
    learner = next(_learners)
    first = post(client, learner, body(True, False))
    assert first.status_code == 201, first.text
    again = post(client, learner, body(True, False))  # the retry of a lost acknowledgement
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "replayed": True}
    assert attempts_of(client, learner) == 2


def test_batches_that_differ_in_anything_are_both_counted(client: TestClient) -> None:
    learner = next(_learners)
    assert post(client, learner, body(True, False)).status_code == 201
    assert post(client, learner, body(True, True)).status_code == 201  # correctness
    later = T0 + timedelta(seconds=1)
    assert post(client, learner, body(True, False, start=later)).status_code == 201  # time
    assert attempts_of(client, learner) == 6


def test_explicit_keys_are_unchanged(client: TestClient) -> None:
    learner = next(_learners)
    first = post(client, learner, body(True), **{"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    # The same batch under another explicit key is another write: the client said so.
    assert post(client, learner, body(True), **{"Idempotency-Key": "k-2"}).status_code == 201
    conflict = post(client, learner, body(False), **{"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409, conflict.text
    assert conflict.headers["content-type"].startswith("application/problem+json")
    assert attempts_of(client, learner) == 2


def test_the_implicit_key_is_the_fingerprint_and_the_version_is_read(
    client: TestClient, api_db_url: str
) -> None:
    learner = next(_learners)
    attempts = [Attempt(exercise_id(2, 0), True, T0)]
    fingerprint = batch_fingerprint(learner, attempts)
    assert implicit_idempotency_key(fingerprint).endswith(fingerprint)
    assert post(client, learner, body(True)).status_code == 201
    engine = create_engine(api_db_url)
    try:
        with engine.begin() as conn:
            keys = conn.exec_driver_sql(
                "SELECT key FROM idempotency_keys WHERE learner_id = %(l)s", {"l": learner}
            ).scalars()
            assert list(keys) == [implicit_idempotency_key(fingerprint)]
            assert learner_data_version(conn, learner_id=learner) == 1
            assert learner_data_version(conn, learner_id=learner + 10**6) is None
    finally:
        engine.dispose()
