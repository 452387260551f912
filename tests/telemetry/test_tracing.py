"""Tracing inside one replica, with the SDK's in-memory exporter: the span tree of one
request (server -> cache -> SQL -> inference -> cache), route templates as span names, no
learner id in any span name or metric label, probes untraced, W3C traceparent honoured; and
with tracing off, nothing instrumented. Real PostgreSQL (through PgBouncer) and Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from skillcoach.api.app import create_app
from skillcoach.api.server_spans import ServerSpanMiddleware
from skillcoach.settings import load_settings
from skillcoach.telemetry.tracing import Tracing, TracingConfigError, tracing_from_env
from tests.fixtures_api import Keys, exercise_id

LEARNER = 9_876_543  # digits that appear nowhere else: a span name or label holding them leaks
ROUTE = "/v1/learners/{learner_id}/weaknesses"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(
    api_bouncer_url: str, redis_url: str, keys: Keys
) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "skillcoach-test"}))
    tracing = Tracing(provider, SimpleSpanProcessor(exporter), reason="in-memory")
    settings = load_settings(
        database_url=api_bouncer_url,
        environment="test",
        cache_enabled=True,
        redis_url=redis_url,
        cache_warm_learners=0,
        metrics_port=0,
        model_refresh_seconds=0.05,
    )
    with TestClient(create_app(settings, tracing=tracing), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {keys.write}"
        now = datetime.now(UTC).isoformat()
        batch = {
            "attempts": [
                {"exercise_id": exercise_id(s, 0), "correct": s != 1, "answered_at": now}
                for s in (1, 2, 3)
            ]
        }
        assert c.post(f"/v1/learners/{LEARNER}/attempts", json=batch).status_code == 201
        yield c, exporter


def trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
    return sorted(spans, key=lambda s: s.start_time or 0)


def server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    return servers[0]


def test_a_miss_is_one_tree_server_cache_sql_inference(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    # limit=2: a variant the write did not store, so the fast path looks it up and misses.
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    r = client.get(
        f"/v1/learners/{LEARNER}/weaknesses?limit=2", headers={"traceparent": traceparent}
    )
    assert r.status_code == 200, r.text
    spans = trace_of(exporter, int(TRACE_ID, 16))
    server = server_span(spans)
    assert server.name == f"GET {ROUTE}"
    assert server.attributes is not None and server.attributes["http.route"] == ROUTE
    # The incoming traceparent is the server span's parent (W3C trace context).
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert server.parent.is_remote
    # The evidence read is the one load of its shared read (requests asked at once share
    # it); a lone request's has no one to link to.
    (shared,) = [s for s in spans if s.name == "db.shared_read evidence"]
    assert shared.attributes is not None
    assert shared.attributes["skillcoach.shared_read.requests"] == 1
    assert shared.attributes["skillcoach.shared_read.keys"] == 1
    assert not shared.links
    children = [s for s in spans if s is not server]
    for span in children:
        assert span.parent is not None, span.name
        assert span.parent.span_id in (server.context.span_id, shared.context.span_id), span.name
    assert shared.parent is not None and shared.parent.span_id == server.context.span_id
    names = [s.name for s in children]
    sql = [s for s in children if s.attributes and "db.statement" in s.attributes]
    assert sql, names
    evidence = [s for s in sql if s.parent and s.parent.span_id == shared.context.span_id]
    assert len(evidence) == 1 and "ANY" in str(evidence[0].attributes), names
    # In order: the fast path's lookup, the full path's get, the reads, the model, the store.
    first = {name: names.index(name) for name in reversed(names)}
    assert (
        first["cache.lookup"]
        < first["cache.get"]
        < first["db.shared_read evidence"]
        < children.index(evidence[0])
        < first["model.inference weaknesses"]
        < first["cache.set"]
    ), names
    lookup = children[first["cache.lookup"]]
    assert lookup.attributes is not None and lookup.attributes["skillcoach.cache.hit"] is False
    assert lookup.kind == SpanKind.CLIENT
    for span in sql:
        assert span.attributes is not None
        statement = str(span.attributes["db.statement"])
        # The parameterised text only: bound values are never recorded.
        assert "%(id)s" in statement or "%(" in statement, statement
        assert str(LEARNER) not in statement
        assert all(str(LEARNER) not in str(v) for k, v in span.attributes.items()), span.attributes
    for span in spans:
        assert str(LEARNER) not in span.name, span.name


def test_a_hit_is_a_server_span_with_one_lookup(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    client.get(f"/v1/learners/{LEARNER}/weaknesses?limit=3")  # stores the variant
    exporter.clear()
    r = client.get(f"/v1/learners/{LEARNER}/weaknesses?limit=3")
    assert r.status_code == 200 and r.headers["x-request-id"]
    spans = exporter.get_finished_spans()
    server = server_span(list(spans))
    assert server.name == f"GET {ROUTE}"
    assert server.attributes is not None and server.attributes["http.route"] == ROUTE
    assert [s.name for s in spans if s is not server] == ["cache.lookup"]
    lookup = next(s for s in spans if s.name == "cache.lookup")
    assert lookup.attributes is not None and lookup.attributes["skillcoach.cache.hit"] is True


def test_probes_and_metrics_are_not_traced(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert exporter.get_finished_spans() == ()
    client.get("/v1/model-status")
    assert [s.name for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER] == [
        "GET /v1/model-status"
    ]


def test_background_work_is_not_traced(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    client, exporter = traced
    exporter.clear()
    polls = client.app.state.skillcoach.live_model.refreshed_at  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    # The registry is polled every 50 ms (two SQL statements each): wait for a few polls.
    while client.app.state.skillcoach.live_model.refreshed_at - polls < 0.2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the model registry was not polled"
        time.sleep(0.05)
    assert exporter.get_finished_spans() == ()


def test_no_learner_id_in_span_names_or_metric_labels(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    for path in ("weaknesses", "recommendations", "weaknesses?limit=4", "nope"):
        client.get(f"/v1/learners/{LEARNER}/{path}")
    client.get(f"/v1/learners/{LEARNER + 1}/weaknesses")  # an unknown learner: 404
    names = {s.name for s in exporter.get_finished_spans()}
    assert "GET /v1/learners/{learner_id}/recommendations" in names
    assert not [n for n in names if str(LEARNER) in n or str(LEARNER + 1) in n], names
    text = client.get("/metrics").text
    values = [
        value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for value in sample.labels.values()
    ]
    assert ROUTE in values
    assert not [v for v in values if str(LEARNER) in v or str(LEARNER + 1) in v]


def test_tracing_off_instruments_nothing(api_bouncer_url: str, keys: Keys) -> None:
    settings = load_settings(database_url=api_bouncer_url, environment="test", metrics_port=0)
    app = create_app(settings, tracing=Tracing.off("test"))
    assert ServerSpanMiddleware not in [m.cls for m in app.user_middleware]
    with TestClient(app) as c:
        r = c.get("/v1/learners/1/weaknesses", headers={"Authorization": f"Bearer {keys.read}"})
        assert r.status_code in (200, 404)
        engine = c.app.state.skillcoach.db.engine  # type: ignore[attr-defined]
        # No SQLAlchemy listeners: the statements run exactly as without tracing.
        assert len(engine.dispatch.before_cursor_execute) == 0
    traced_app = create_app(settings, tracing=Tracing(TracerProvider(), reason="test"))
    assert ServerSpanMiddleware in [m.cls for m in traced_app.user_middleware]


OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_tracing_is_off_without_an_endpoint_or_when_disabled(otel_env: pytest.MonkeyPatch) -> None:
    assert not tracing_from_env().enabled
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert not tracing_from_env().enabled
    otel_env.setenv("OTEL_SDK_DISABLED", "false")
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing_from_env().enabled
    otel_env.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER"):
        tracing_from_env()
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(TracingConfigError, match="http/protobuf"):
        tracing_from_env()


def test_tracing_from_the_standard_variables(otel_env: pytest.MonkeyPatch) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    otel_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    otel_env.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=api-7d9f-x2,k8s.namespace.name=prod")
    tracing = tracing_from_env()
    assert tracing.enabled and tracing.provider is not None
    attributes = tracing.provider.resource.attributes
    assert attributes["service.name"] == "skillcoach-api"
    assert attributes["k8s.pod.name"] == "api-7d9f-x2"
    description = tracing.provider.sampler.get_description()
    assert description.startswith("ParentBased{root:TraceIdRatioBased{0.1}"), description
    otel_env.setenv("OTEL_SERVICE_NAME", "skillcoach-canary")
    assert tracing_from_env().provider.resource.attributes["service.name"] == "skillcoach-canary"  # type: ignore[union-attr]


def test_tracing_has_no_side_effects_before_the_replica_starts(
    otel_env: pytest.MonkeyPatch, api_bouncer_url: str
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    threads = threading.active_count()
    settings = load_settings(database_url=api_bouncer_url, environment="test", metrics_port=0)
    app = create_app(settings)
    tracing = app.state.tracing
    assert tracing.enabled and tracing.processor is None
    assert threading.active_count() == threads  # no exporter thread before the lifespan
    # The process-wide provider is never set: several apps (tests) each keep their own.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    tracing.start()
    try:
        assert threading.active_count() == threads + 1  # the batch processor's worker
    finally:
        tracing.shutdown()
