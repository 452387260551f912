"""The replica's Prometheus metrics: fast-path hits counted like every other request, the
gauges an operator alerts on (model served and refreshed, ready, pool budget), inference
time, and /metrics only on its own port. Real PostgreSQL (through PgBouncer) and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from skillcoach.api.app import create_app
from skillcoach.data.pool_file import PoolFile, write_pool_file
from skillcoach.settings import load_settings
from tests.fixtures_api import Keys, exercise_id

LEARNER = 7_700_001
WEAK = "/v1/learners/{learner_id}/weaknesses"
RECS = "/v1/learners/{learner_id}/recommendations"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """(sample name, sorted labels) -> value of one /metrics text."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(all_samples: Samples, name: str, **labels: str) -> float:
    return all_samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def cached(
    api_bouncer_url: str, redis_url: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, float]]:
    """An in-process replica with the cache on and a pool file that names its budget;
    yields it and the unix time it started at."""
    pool_file = tmp_path_factory.mktemp("pool") / "pool.json"
    write_pool_file(
        pool_file,
        PoolFile(
            pool_size=5,
            max_overflow=1,
            pool_timeout=2,
            pool_recycle=600,
            generation=2,
            client_budget=450,
        ),
    )
    settings = load_settings(
        database_url=api_bouncer_url,
        environment="test",
        cache_enabled=True,
        redis_url=redis_url,
        cache_warm_learners=0,
        pool_file=pool_file,
        metrics_port=0,
    )
    started = time.time()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {keys.write}"
        now = datetime.now(UTC).isoformat()
        batch = {
            "attempts": [{"exercise_id": exercise_id(3, 2), "correct": True, "answered_at": now}]
        }
        assert c.post(f"/v1/learners/{LEARNER}/attempts", json=batch).status_code == 201
        yield c, started


def test_fast_path_hits_are_in_the_request_counter_and_histogram(
    cached: tuple[TestClient, float],
) -> None:
    client, _ = cached
    path = f"/v1/learners/{LEARNER}/weaknesses"
    assert client.get(path).status_code == 200  # stored by the write: the key is now known
    before = samples(client.get("/metrics").text)
    hits = 7
    for _ in range(hits):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["x-request-id"]
    after = samples(client.get("/metrics").text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("skillcoach_http_cache_fast_path_total", kind="weaknesses") == hits
    assert grew("skillcoach_http_requests_total", method="GET", route=WEAK, status="200") == hits
    assert grew("skillcoach_http_request_duration_seconds_count", method="GET", route=WEAK) == hits
    # Each hit's latency is in the histogram: under a second, well above zero.
    assert (
        grew("skillcoach_http_request_duration_seconds_bucket", method="GET", route=WEAK, le="1.0")
        == hits
    )
    assert 0 < grew("skillcoach_http_request_duration_seconds_sum", method="GET", route=WEAK) < hits


def test_a_miss_is_timed_from_its_lookup_and_its_inference_is_measured(
    cached: tuple[TestClient, float],
) -> None:
    client, _ = cached
    before = samples(client.get("/metrics").text)
    # Variants the write did not store: both miss, after a fast-path lookup.
    assert client.get(f"/v1/learners/{LEARNER}/weaknesses?limit=2").status_code == 200
    assert client.get(f"/v1/learners/{LEARNER}/recommendations?limit=2").status_code == 200
    after = samples(client.get("/metrics").text)
    name = "skillcoach_model_inference_duration_seconds_count"
    for kind in ("weaknesses", "recommendations"):
        assert value(after, name, kind=kind) - value(before, name, kind=kind) == 1, kind
        inference = value(after, "skillcoach_model_inference_duration_seconds_sum", kind=kind)
        assert 0 < inference < 1, (kind, inference)
    # The computed recommendations' exercises, counted by how they fit the target (the hand
    # model carries no training counts: every exercise is trusted).
    fits = {
        fit: value(after, "skillcoach_recommended_exercises_total", fit=fit)
        - value(before, "skillcoach_recommended_exercises_total", fit=fit)
        for fit in ("on_target", "off_target", "untrusted")
    }
    assert fits["on_target"] + fits["off_target"] == 2 and fits["untrusted"] == 0, fits
    for route in (WEAK, RECS):
        count = "skillcoach_http_requests_total"
        assert value(after, count, method="GET", route=route, status="200") > value(
            before, count, method="GET", route=route, status="200"
        )


def test_model_ready_and_pool_gauges(cached: tuple[TestClient, float], keys: Keys) -> None:
    client, started = cached
    assert client.get("/readyz").status_code == 200
    version = client.get("/v1/model-status").json()["model_version"]
    s = samples(client.get("/metrics").text)
    info = {labels: v for (name, labels), v in s.items() if name == "skillcoach_model_info"}
    assert info == {(("version", str(version)),): 1.0}
    assert value(s, "skillcoach_model_version") == version
    refreshed = value(s, "skillcoach_model_refresh_timestamp_seconds")
    assert started - 1 <= refreshed <= time.time() + 1
    assert value(s, "skillcoach_model_refresh_failures_total") == 0
    assert value(s, "skillcoach_ready") == 1
    assert value(s, "skillcoach_db_pool_client_budget") == 450
    assert value(s, "skillcoach_db_pool_capacity") == 6
    assert value(s, "skillcoach_http_in_flight_limit") == 6 + 1000
    assert ("skillcoach_http_requests_in_flight", ()) in s
    assert ("skillcoach_http_shed_total", ()) in s


def test_an_unready_replica_says_so_in_its_metrics() -> None:
    settings = load_settings(
        database_url="postgresql://postgres@127.0.0.1:1/none",
        environment="test",
        auth_enabled=False,
        metrics_port=0,
        request_timeout=1.0,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 503
        s = samples(c.get("/metrics").text)
    assert value(s, "skillcoach_ready") == 0
    assert value(s, "skillcoach_model_version") == 0
    assert not [k for k in s if k[0] == "skillcoach_model_info"]
    assert value(s, "skillcoach_model_refresh_timestamp_seconds") == 0
    assert value(s, "skillcoach_model_refresh_failures_total") >= 1
    assert value(s, "skillcoach_db_pool_client_budget") == 0  # no pool file: unknown


def test_metrics_are_on_their_own_port_only(server: tuple[str, str]) -> None:
    base, metrics = server
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "/metrics" not in httpx.get(f"{base}/openapi.json").json()["paths"]
    text = httpx.get(f"{metrics}/metrics").text
    assert "skillcoach_http_requests_total" in text and "skillcoach_ready 1.0" in text


def test_metrics_on_the_api_port_when_asked(api_bouncer_url: str) -> None:
    settings = load_settings(database_url=api_bouncer_url, environment="test", metrics_port=0)
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 200
        assert "/metrics" in c.get("/openapi.json").json()["paths"]
