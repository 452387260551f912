"""`skillcoach serve` as a real process: configured by SKILLCOACH_* only, over real HTTP,
through PgBouncer, with /metrics on a port of its own."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx

from tests.fixtures_api import Keys, exercise_id


def test_serve_answers_over_http_with_read_your_writes(server: tuple[str, str], keys: Keys) -> None:
    base, _ = server
    auth = {"Authorization": f"Bearer {keys.write}"}
    learner = 777_001
    now = datetime.now(UTC).isoformat()
    body = {"attempts": [{"exercise_id": exercise_id(2, 0), "correct": True, "answered_at": now}]}
    r = httpx.post(f"{base}/v1/learners/{learner}/attempts", json=body, headers=auth)
    assert r.status_code == 201, r.text
    w = httpx.get(f"{base}/v1/learners/{learner}/weaknesses", headers=auth).json()
    assert [(s["skill_id"], s["attempts"]) for s in w["skills"]] == [(2, 1)]
    body["attempts"][0]["correct"] = False
    httpx.post(f"{base}/v1/learners/{learner}/attempts", json=body, headers=auth)
    w2 = httpx.get(f"{base}/v1/learners/{learner}/weaknesses", headers=auth).json()
    assert w2["skills"][0]["attempts"] == 2
    assert w2["skills"][0]["mastery"] < w["skills"][0]["mastery"]


def test_metrics_port_serves_the_same_registry(server: tuple[str, str]) -> None:
    base, metrics = server
    httpx.get(f"{base}/healthz")
    text = httpx.get(f"{metrics}/metrics").text
    assert 'skillcoach_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "skillcoach_db_pool_capacity 16.0" in text


def test_concurrent_retries_of_one_batch_count_once(server: tuple[str, str], keys: Keys) -> None:
    base, _ = server
    headers = {"Authorization": f"Bearer {keys.write}", "Idempotency-Key": "race-1"}
    learner = 777_002
    now = datetime.now(UTC).isoformat()
    body = {
        "attempts": [
            {"exercise_id": exercise_id(1, k), "correct": True, "answered_at": now}
            for k in range(4)
        ]
    }

    def send(_: int) -> int:
        url = f"{base}/v1/learners/{learner}/attempts"
        return httpx.post(url, json=body, headers=headers, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = sorted(pool.map(send, range(12)))
    assert codes == [200] * 11 + [201]
    w = httpx.get(f"{base}/v1/learners/{learner}/weaknesses", headers=headers).json()
    assert w["skills"][0]["attempts"] == 4
