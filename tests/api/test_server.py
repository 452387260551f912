"""`skillcoach serve` as a real process: configured by SKILLCOACH_* only, over real HTTP,
through PgBouncer, with /metrics on a port of its own."""

from __future__ import annotations

import asyncio
import gc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import uvicorn

from skillcoach.api.background import Drain
from skillcoach.api.server import DrainingServer
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


def test_a_started_server_freezes_what_is_alive_out_of_the_collector() -> None:
    """After start-up, the objects alive (modules, the app, the model) sit in the permanent
    generation: a full collection under load does not walk them again."""

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "lifespan":
            message = await receive()  # type: ignore[operator]
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})  # type: ignore[operator]
            await receive()  # type: ignore[operator]
            await send({"type": "lifespan.shutdown.complete"})  # type: ignore[operator]

    async def start_and_stop() -> int:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        server = DrainingServer(config, drain=Drain(), drain_seconds=0, accept_pump=False)
        serving = asyncio.create_task(server.serve())
        try:
            for _ in range(200):  # bounded: 10 s
                if server.started:
                    break
                await asyncio.sleep(0.05)
            assert server.started
            return gc.get_freeze_count()
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        assert asyncio.run(start_and_stop()) > 1000
    finally:
        gc.unfreeze()
