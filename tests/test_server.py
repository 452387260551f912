"""`skillcoach serve` as a real process: configured by SKILLCOACH_* only, over real HTTP,
through PgBouncer, with /metrics on a port of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from skillcoach.stack.processes import free_port
from tests.fixtures_api import Keys, exercise_id


@pytest.fixture(scope="module")
def server(api_bouncer_url: str, keys: Keys) -> Iterator[tuple[str, str]]:
    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SKILLCOACH_")},
        "SKILLCOACH_DATABASE_URL": api_bouncer_url,
        "SKILLCOACH_PORT": str(port),
        "SKILLCOACH_METRICS_PORT": str(metrics_port),
        "SKILLCOACH_ENVIRONMENT": "test",
        "SKILLCOACH_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillcoach.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("server did not become ready in 30 s")
        yield base, f"http://127.0.0.1:{metrics_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


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
    assert "skillcoach_db_pool_capacity 50.0" in text
