"""One real `skillcoach serve` with tracing on (OTEL_* only, 10% sampling, exporting to a real
OTLP receiver on loopback), the access log on, a database password in its URL and a Redis
that requires a password. It serves a scenario of normal reads (a miss, a fast-path hit),
writes with idempotency keys, bad and wrong-scope keys and bad input, then stops. Then:

- its spans reached the receiver, the sampled traces whole (server -> cache -> SQL ->
  inference), the unsampled not at all, and the last ones only thanks to the flush at
  shutdown (the batch processor's delay is longer than the run);
- every line it logged is a JSON object; request lines carry the request id it answered
  with and the trace id; no API key or password appears anywhere in the log.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sqlalchemy.engine import make_url

from skillcoach_devstack.redis import RedisServer
from tests.fixtures_api import Keys, exercise_id, run_server
from tests.telemetry.otlp_receiver import OtlpReceiver

LEARNER = 8_765_431
ROUTE = "/v1/learners/{learner_id}/weaknesses"
SERVER_KIND = Span.SpanKind.SPAN_KIND_SERVER
BAD_KEY = "sk_" + secrets.token_urlsafe(32)


def traceparent(sampled: bool) -> tuple[str, str]:
    """(traceparent header, its trace id)."""
    trace_id = secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-{'01' if sampled else '00'}", trace_id


@dataclass
class Run:
    spans: list[Span]
    log: str
    # (response, trace id sent, or None) of every request of the scenario
    responses: list[tuple[httpx.Response, str | None]] = field(default_factory=list)
    sampled: list[str] = field(default_factory=list)
    unsampled: list[str] = field(default_factory=list)
    last_sampled: str = ""


def scenario(base: str, keys: Keys, run: Run) -> None:
    def call(method: str, path: str, *, key: str | None, sampled: bool | None = None,
             **kwargs: Any) -> httpx.Response:  # fmt: skip
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        trace_id = None
        if sampled is not None:
            headers["traceparent"], trace_id = traceparent(sampled)
            (run.sampled if sampled else run.unsampled).append(trace_id)
        r = httpx.request(method, f"{base}{path}", headers=headers, timeout=30, **kwargs)
        run.responses.append((r, trace_id))
        return r

    now = datetime.now(UTC).isoformat()
    batch = {"attempts": [{"exercise_id": exercise_id(2, 1), "correct": True, "answered_at": now}]}
    attempts = f"/v1/learners/{LEARNER}/attempts"
    idem = {"Idempotency-Key": "telemetry-1"}
    assert call("POST", attempts, key=keys.write, json=batch, headers=idem).status_code == 201
    assert call("POST", attempts, key=keys.write, json=batch, headers=idem).status_code == 200
    other = {"attempts": [{**batch["attempts"][0], "correct": False}]}
    assert call("POST", attempts, key=keys.write, json=other, headers=idem).status_code == 409
    path = f"/v1/learners/{LEARNER}/weaknesses?limit=5"
    assert call("GET", path, key=keys.write, sampled=True).status_code == 200  # a miss
    hit = call("GET", path, key=keys.write, sampled=True)  # the fast path
    assert hit.status_code == 200
    assert call("GET", path, key=keys.write, sampled=False).status_code == 200
    assert call("GET", path, key=BAD_KEY).status_code == 401
    assert call("GET", path, key=None).status_code == 401
    assert call("POST", attempts, key=keys.read, json=batch).status_code == 403
    assert call("POST", attempts, key=keys.write, content=b"{not json").status_code == 400
    assert call("GET", f"/v1/learners/{LEARNER + 1}/weaknesses", key=keys.read).status_code == 404
    assert call("GET", "/v1/model-status", key=keys.admin).status_code == 200
    sane = call("GET", path, key=keys.write, headers={"X-Request-ID": "client-id.42"})
    assert sane.headers["x-request-id"] == "client-id.42"
    odd = call("GET", "/v1/model-status", key=keys.read, headers={"X-Request-ID": "x" * 300})
    assert odd.status_code == 200 and len(odd.headers["x-request-id"]) == 32
    # The last request: its spans can only arrive through the flush at shutdown.
    last = call("GET", path.replace("limit=5", "limit=6"), key=keys.write, sampled=True)
    assert last.status_code == 200
    run.last_sampled = run.sampled[-1]


@pytest.fixture(scope="module")
def run(
    api_bouncer_url: str,
    redis_auth: RedisServer,
    keys: Keys,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    log_file = tmp_path_factory.mktemp("replica") / "serve.log"
    assert make_url(api_bouncer_url).password, "the test needs a password in the database URL"
    assert redis_auth.password
    result = Run(spans=[], log="")
    with OtlpReceiver() as receiver:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "skillcoach-telemetry-test",
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=skillcoach-test-pod",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            # Longer than the whole run: only the flush at shutdown exports the spans.
            "OTEL_BSP_SCHEDULE_DELAY": "120000",
        }
        with run_server(
            api_bouncer_url,
            log_file=log_file,
            otel=otel,
            log_level="info",
            access_log="true",
            cache_enabled="true",
            redis_url=redis_auth.url,
            redis_password=redis_auth.password,
            cache_warm_learners="0",
        ) as (base, _):
            scenario(base, keys, result)
            early = {s.trace_id.hex() for s in receiver.spans()}
            assert result.last_sampled not in early, "exported before shutdown: no flush tested"
        wanted = set(result.sampled)
        result.spans = receiver.wait_for(
            lambda spans: wanted <= {s.trace_id.hex() for s in spans if s.kind == SERVER_KIND}
        )
    result.log = log_file.read_text()
    return result


def by_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id.hex() == trace_id]


def test_sampled_traces_reach_the_receiver_whole(run: Run, api_bouncer_url: str) -> None:
    miss, hit, last = (by_trace(run.spans, t) for t in run.sampled)
    for spans in (miss, hit, last):
        servers = [s for s in spans if s.kind == SERVER_KIND]
        assert [s.name for s in servers] == [f"GET {ROUTE}"], [s.name for s in spans]
        children = [s for s in spans if s is not servers[0]]
        # Under the server span, or under the shared evidence read (itself under it).
        shared = [s.span_id for s in children if s.name == "db.shared_read evidence"]
        assert all(s.parent_span_id in (servers[0].span_id, *shared) for s in children)
        assert all(s.parent_span_id == servers[0].span_id for s in children if s.span_id in shared)
    for spans in (miss, last):
        names = [s.name for s in spans]
        database = make_url(api_bouncer_url).database
        assert "cache.get" in names and "cache.set" in names, names
        assert f"SELECT {database}" in names, names
        assert names.count("db.shared_read evidence") == 1, names
        assert "model.inference weaknesses" in names, names
    assert sorted(s.name for s in hit) == ["GET " + ROUTE, "cache.lookup"]


def test_unsampled_and_untraced_requests_export_nothing(run: Run) -> None:
    for trace_id in run.unsampled:
        assert by_trace(run.spans, trace_id) == []
    names = {s.name for s in run.spans}
    assert not [n for n in names if "healthz" in n or "readyz" in n or "metrics" in n], names
    # Parent-based 10%: of the ~10 requests without a traceparent, the sampled ones are whole
    # traces of their own, never fragments.
    for span in run.spans:
        assert str(LEARNER) not in span.name


def test_every_log_line_is_json_with_request_and_trace_ids(run: Run) -> None:
    lines = run.log.splitlines()
    assert lines, "the replica logged nothing"
    records = []
    for line in lines:
        record = json.loads(line)  # every line, uvicorn's and the libraries' included
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    assert any(r["logger"].startswith("uvicorn") for r in records), "uvicorn not routed"
    access = [r for r in records if r["logger"] == "skillcoach.access"]
    for r in [r for r in records if "request_id" in r]:
        assert r.get("trace_id") and r.get("span_id"), r
    by_id = {r["request_id"]: r for r in access}
    assert len(by_id) == len(access), "request ids repeat"
    for response, trace_id in run.responses:
        line = by_id[response.headers["x-request-id"]]
        assert line["status"] == response.status_code, line
        assert line["duration_ms"] >= 0 and line["method"] == response.request.method
        template = re.sub(r"/learners/\d+/", "/learners/{learner_id}/", response.url.path)
        assert line["route"] == template, line
        assert str(LEARNER) not in json.dumps(line), line
        if trace_id is not None:
            assert line["trace_id"] == trace_id, line
    assert not [r for r in access if r["route"] in ("/healthz", "/readyz")], "probes logged"


def test_no_key_or_password_in_any_log_line(
    run: Run, keys: Keys, api_bouncer_url: str, redis_auth: RedisServer
) -> None:
    db_password = make_url(api_bouncer_url).password
    assert db_password and redis_auth.password
    secret_values = {
        "read key": keys.read,
        "write key": keys.write,
        "admin key": keys.admin,
        "rejected key": BAD_KEY,
        "database password": str(db_password),
        "redis password": redis_auth.password,
    }
    for what, value in secret_values.items():
        assert value not in run.log, f"the {what} is in the log"
        assert value[:12] not in run.log, f"a prefix of the {what} is in the log"
    assert "[parameters:" not in run.log or "[parameters: [REDACTED]" in run.log
    assert "authorization" not in run.log.lower()


def test_the_log_file_is_not_empty_of_requests(run: Run, tmp_path: Path) -> None:
    """Guards the tests above against passing vacuously on a log without access lines."""
    access = [line for line in run.log.splitlines() if '"skillcoach.access"' in line]
    assert len(access) >= len(run.responses) >= 15
