"""Bad input ends in a clear problem+json 4xx, never a 500, and nothing a client sees names
the database (host, port, role) or logs a statement's bound values.

Ids: a malformed or out-of-range id in the path or query is 400 (the document states the
range: it is a malformed request, not a missing resource; 404 is for a well-formed id that
does not exist). In a JSON body it is 422 with the field's location.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import exc
from starlette.testclient import TestClient

from skillcoach.api.app import create_app
from skillcoach.data.database import create_sync_engine
from skillcoach.settings import load_settings
from skillcoach_devstack.processes import free_port
from tests.fixtures_api import exercise_id

HUGE = "9" * 4400
BAD_IDS = [HUGE, "1" * 4301, "-1", "0", str(2**63), "abc", "1e3", "٣", "1_0", "+5", " 7"]
NOW = datetime.now(UTC).isoformat()


def assert_problem(r: object, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text[:300])  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body: dict[str, object] = r.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    return body


@pytest.mark.parametrize("raw", BAD_IDS)
@pytest.mark.parametrize("kind", ["weaknesses", "recommendations"])
def test_bad_learner_id_in_a_get_path_is_400(client: TestClient, kind: str, raw: str) -> None:
    body = assert_problem(client.get(f"/v1/learners/{raw}/{kind}"), 400)
    assert body["param"] == "learner_id"
    # A 4,400-digit id is not echoed back whole.
    assert len(str(body["detail"])) < 200


@pytest.mark.parametrize("raw", BAD_IDS)
def test_bad_learner_id_in_the_attempts_path_is_400(client: TestClient, raw: str) -> None:
    batch = {"attempts": [{"exercise_id": exercise_id(1, 0), "correct": True, "answered_at": NOW}]}
    body = assert_problem(client.post(f"/v1/learners/{raw}/attempts", json=batch), 400)
    assert body["param"] == "learner_id"


def test_the_largest_learner_id_is_accepted(client: TestClient) -> None:
    # 2**63 - 1 is in range: a well-formed id of nobody is 404, not 400.
    assert_problem(client.get(f"/v1/learners/{2**63 - 1}/weaknesses"), 404)


@pytest.mark.parametrize("raw", BAD_IDS)
@pytest.mark.parametrize("name", ["skill_id", "cursor", "limit"])
def test_bad_integer_query_parameter_is_400(client: TestClient, name: str, raw: str) -> None:
    r = client.get("/v1/exercises", params={name: raw})
    if name == "cursor" and raw == "0":
        assert r.status_code == 200, r.text  # the first page: in range
        return
    assert assert_problem(r, 400)["param"] == name


@pytest.mark.parametrize(
    "value", [HUGE, "-1", "0", str(2**31), str(2**63), '"11"', "1.5", "null", "true", "1e3"]
)
def test_bad_exercise_id_in_the_body_is_422(client: TestClient, value: str) -> None:
    # Raw JSON text: a 4,400-digit integer cannot even be built by json.dumps.
    raw = f'{{"attempts": [{{"exercise_id": {value}, "correct": true, "answered_at": "{NOW}"}}]}}'
    r = client.post(
        "/v1/learners/5/attempts", content=raw, headers={"Content-Type": "application/json"}
    )
    if value == HUGE:
        # Not a number a JSON parser can hold (orjson refuses it outright): malformed.
        assert "malformed JSON" in str(assert_problem(r, 400)["detail"])
        return
    body = assert_problem(r, 422)
    assert "exercise_id" in str(body["detail"])


@pytest.mark.parametrize(
    "answered_at",
    [
        "0057-05-01T10:00:00+20:26",  # found by schemathesis: a 500 from PostgreSQL
        "1969-12-31T23:59:59Z",
        "2026-01-01T00:00:00+14:01",
        "2026-01-01T00:00:00-15:00",
        0,  # a number was taken as Unix time (201)
        1_700_000_000,
        "2026-01-01",
        "yesterday",
        (datetime.now(UTC) + timedelta(days=1)).isoformat(),  # beyond the clock skew
    ],
)
def test_bad_answered_at_is_422(client: TestClient, answered_at: object) -> None:
    batch = {
        "attempts": [
            {"exercise_id": exercise_id(1, 0), "correct": True, "answered_at": answered_at}
        ]
    }
    body = assert_problem(client.post("/v1/learners/6/attempts", json=batch), 422)
    assert "answered_at" in str(body["detail"])


@pytest.mark.parametrize("at", ["1970-01-01T00:00:00+14:00", "2020-02-29T12:00:00.5-14:00", NOW])
def test_answered_at_at_the_edges_is_accepted(client: TestClient, at: str) -> None:
    batch = {"attempts": [{"exercise_id": exercise_id(1, 0), "correct": True, "answered_at": at}]}
    r = client.post("/v1/learners/7/attempts", json=batch)
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize("key", [" ", "é", "a\x7f", "x" * 201])
def test_bad_idempotency_key_is_400(client: TestClient, key: str) -> None:
    batch = {"attempts": [{"exercise_id": exercise_id(1, 0), "correct": True, "answered_at": NOW}]}
    r = client.post(
        "/v1/learners/8/attempts",
        json=batch,
        headers={"Idempotency-Key": key.encode("latin-1")},
    )
    assert_problem(r, 400)


def test_a_closed_database_port_is_never_named_to_clients(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"postgresql+psycopg2://leakyrole:leakypass@127.0.0.1:{port}/leakydb"
    settings = load_settings(database_url=url, environment="test", metrics_port=0)
    secrets = ["127.0.0.1", str(port), "leakyrole", "leakypass", "leakydb", "connection to"]
    caplog.set_level(logging.WARNING)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = "Bearer sk_" + "A" * 43
        responses = [
            c.get("/readyz"),
            c.get("/v1/learners/1/weaknesses"),
            c.get("/v1/skills"),
            c.post("/v1/learners/1/attempts", json={"attempts": []}),
            c.get("/v1/model-status"),
        ]
    for r in responses:
        assert r.status_code == 503, (r.request.url, r.text)
        # The request id is 32 random hex digits, so it contains a five-digit port by chance
        # about once in ten thousand runs: it is checked for its shape, the rest for secrets.
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), r.headers
        others = [v for k, v in r.headers.items() if k != "x-request-id"]
        for secret in secrets:
            assert secret not in r.text, (secret, r.request.url, r.text)
            assert all(secret not in v for v in others), (secret, r.headers)
    assert responses[0].json()["checks"]["database"] == "database unavailable"
    assert responses[1].json()["detail"] in ("database unavailable", "database busy")
    # The driver's text is not lost: it is in the log, for the operator.
    assert str(port) in caplog.text


def test_bound_parameters_never_reach_an_error_message(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_sync_engine(pg_url)
    secret = "s3cret-bound-value"
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO skills (id, name) VALUES (%(i)s, %(n)s) ON CONFLICT DO NOTHING",
                {"i": 987_654, "n": "first"},
            )
        with pytest.raises(exc.IntegrityError) as integrity, engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO skills (id, name) VALUES (%(i)s, %(n)s)",
                {"i": 987_654, "n": secret},
            )
        with pytest.raises(exc.DataError) as data, engine.begin() as conn:
            conn.exec_driver_sql("SELECT %(n)s::varchar(2), %(a)s::int", {"n": "ok", "a": 2**40})
    finally:
        engine.dispose()
    logging.getLogger("test").error("failed: %s", integrity.value)
    logging.getLogger("test").error("failed: %s", data.value)
    for raised in (integrity.value, data.value):
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(raised)
    assert secret not in str(integrity.value) and secret not in caplog.text
    assert str(2**40) not in str(data.value)
