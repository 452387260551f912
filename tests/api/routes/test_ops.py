from __future__ import annotations

import time

from starlette.testclient import TestClient

from skillcoach.api.app import create_app
from skillcoach.api.schemas import ModelStatus
from skillcoach.data.database import create_sync_engine
from skillcoach.settings import load_settings
from tests.conftest import drop_database, fresh_database
from tests.fixtures_api import Keys, seed_catalog, store_hand_model


def test_health_and_readiness_need_no_key(client: TestClient) -> None:
    anon = {"Authorization": ""}
    assert client.get("/healthz", headers=anon).json() == {"status": "ok"}
    ready = client.get("/readyz", headers=anon)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "model": "ok"}


def test_model_status_reports_model_and_pool(client: TestClient, keys: Keys) -> None:
    r = client.get("/v1/model-status", headers={"Authorization": f"Bearer {keys.read}"})
    assert r.status_code == 200
    status = ModelStatus.model_validate(r.json())
    assert status.model_version is not None and status.metrics == {"auc": 0.75}
    assert status.pool.size >= 0 and status.pool.capacity == 6 and status.pool.checked_out == 0
    assert client.get("/model-status").json()["model_version"] == status.model_version
    assert client.get("/v1/model-status", headers={"Authorization": ""}).status_code == 401


def test_metrics_use_route_templates(client: TestClient) -> None:
    client.get("/v1/learners/424242/weaknesses")
    text = client.get("/metrics").text
    assert 'route="/v1/learners/{learner_id}/weaknesses"' in text
    assert "424242" not in text
    assert "skillcoach_db_pool_capacity 6.0" in text


def test_openapi_lists_every_route(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for path in (
        "/v1/learners/{learner_id}/weaknesses",
        "/v1/learners/{learner_id}/recommendations",
        "/v1/learners/{learner_id}/attempts",
        "/v1/model-status",
        "/healthz",
        "/readyz",
    ):
        assert path in doc["paths"]
    assert "AttemptBatch" in doc["components"]["schemas"]


def test_unknown_route_is_problem_json(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    r = client.delete("/v1/learners/1/weaknesses")
    assert r.status_code == 405


def test_not_ready_without_model_then_hot_loads_promotion() -> None:
    name, url = fresh_database("skillcoach_ops")
    try:
        engine = create_sync_engine(url)
        seed_catalog(engine)
        settings = load_settings(
            database_url=url, environment="test", auth_enabled=False, model_refresh_seconds=0.1
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            assert c.get("/healthz").status_code == 200
            r = c.get("/readyz")
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["checks"]["model"] == "not loaded"
            assert c.get("/v1/learners/1/weaknesses").status_code == 503
            version = store_hand_model(engine)
            deadline = time.monotonic() + 10
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.get("/v1/model-status").json()["model_version"] == version
        engine.dispose()
    finally:
        drop_database(name)


def test_database_down_is_503_not_500() -> None:
    settings = load_settings(
        database_url="postgresql://postgres@127.0.0.1:1/none",
        environment="test",
        auth_enabled=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/v1/learners/1/weaknesses")
        assert r.status_code == 503
        r = c.get("/readyz")
        assert r.status_code == 503 and "unavailable" in r.json()["checks"]["database"]
