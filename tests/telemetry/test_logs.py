"""The log formatters and the redactor, line by line: what a line holds, and that secrets
never survive, whichever way they reach a message (text, URL, exception, SQL error)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine, exc, text

from skillcoach.data.database import create_sync_engine
from skillcoach.settings import load_settings
from skillcoach.telemetry.logs import (
    FIELDS,
    REQUEST,
    JsonFormatter,
    Redactor,
    RequestLog,
    TextFormatter,
    configure_logging,
    secrets_of,
)

KEY = "sk_3Xv9QpL0aZt7YwR2mN5bC8dE1fG4hJ6kL9oP2qS5uV8"
PASSWORD = "s3cr3t-Pa55word"


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    import sys

    info = sys.exc_info() if exc_info else None
    return logging.LogRecord("skillcoach.test", logging.WARNING, __file__, 1, message, args, info)


@pytest.mark.parametrize(
    "line",
    [
        f"Authorization: Bearer {KEY}",
        f"got key {KEY} from the client",
        f"postgresql+psycopg2://app:{PASSWORD}@pgbouncer:6432/skillcoach",
        f"redis://:{PASSWORD}@redis:6379/0",
        f"host=db password={PASSWORD} user=app",
        f"{{'password': '{PASSWORD}'}}",
        f"SKILLCOACH_REDIS_PASSWORD={PASSWORD}",
    ],
)
def test_the_patterns_remove_keys_and_passwords(line: str) -> None:
    redacted = Redactor()(line)
    assert KEY not in redacted and PASSWORD not in redacted, redacted
    assert "[REDACTED]" in redacted


def test_known_secrets_are_removed_verbatim_and_url_quoted() -> None:
    odd = "p@ss:w/rd with spaces"
    redact = Redactor([odd, "abc"])  # too short to redact safely: left alone
    assert redact(f"connecting with {odd}") == "connecting with [REDACTED]"
    assert redact("user:p%40ss%3Aw%2Frd%20with%20spaces") == "user:[REDACTED]"
    assert redact("abc def") == "abc def"


def test_the_settings_secrets_are_found() -> None:
    settings = load_settings(
        database_url=f"postgresql://app:{PASSWORD}@db/x",
        redis_url="redis://:redis-Secret-1@cache:6379/0",
        redis_password="redis-Secret-2",
        database_password="db-Secret-3",
    )
    assert set(secrets_of(settings)) >= {"db-Secret-3", "redis-Secret-1", "redis-Secret-2"}


def test_sql_errors_keep_no_bound_parameters() -> None:
    engine = create_engine("sqlite://", hide_parameters=False)
    with pytest.raises(exc.SQLAlchemyError) as err, engine.connect() as conn:
        conn.execute(text("SELECT * FROM missing WHERE v = :v"), {"v": "bound-value-77"})
    assert "bound-value-77" in str(err.value)  # what an engine without hide_parameters says
    line = JsonFormatter(Redactor()).format(record("query failed: %s", err.value))
    assert "bound-value-77" not in line and "[parameters: [REDACTED]" in line
    # The service's own engines never put bound values into their errors in the first place.
    assert create_sync_engine("postgresql+psycopg2://app@db/x").hide_parameters


@pytest.fixture
def in_request() -> Iterator[None]:
    token = REQUEST.set(RequestLog("req-1", "GET", lambda: "/v1/learners/{learner_id}/weaknesses"))
    try:
        yield
    finally:
        REQUEST.reset(token)


def test_a_json_line_in_a_request_and_a_span(in_request: None) -> None:
    tracer = TracerProvider().get_tracer("test")
    formatter = JsonFormatter(Redactor([PASSWORD]))
    with tracer.start_as_current_span("request") as span:
        try:
            raise RuntimeError(f"cannot connect with {PASSWORD}")
        except RuntimeError:
            rec = record("failed for %s", KEY, exc_info=True)
        rec.__dict__[FIELDS] = {"status": 503, "note": f"pw {PASSWORD}"}
        line = json.loads(formatter.format(rec))
        context = span.get_span_context()
    assert line["level"] == "warning" and line["logger"] == "skillcoach.test"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert line["request_id"] == "req-1" and line["method"] == "GET"
    assert line["route"] == "/v1/learners/{learner_id}/weaknesses"
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["status"] == 503
    assert "RuntimeError" in line["exc"]
    text_of_line = json.dumps(line)
    assert KEY not in text_of_line and PASSWORD not in text_of_line


def test_a_line_outside_requests_and_spans_has_no_ids() -> None:
    line = json.loads(JsonFormatter(Redactor()).format(record("started")))
    assert set(line) == {"ts", "level", "logger", "message"}


def test_the_text_format_is_redacted_too(in_request: None) -> None:
    line = TextFormatter(Redactor()).format(record("key %s", KEY))
    assert KEY not in line and "request_id=req-1" in line and "skillcoach.test" in line


def test_configure_logging_routes_every_logger_through_one_json_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(
            load_settings(
                database_url=f"postgresql://app:{PASSWORD}@db/x",
                log_level="warning",
                access_log=True,
            )
        )
        logging.getLogger("uvicorn.error").warning("uvicorn says %s", PASSWORD)
        logging.getLogger("skillcoach.access").info("GET / 200")
        logging.getLogger("skillcoach.other").info("below the level: dropped")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("skillcoach.access").setLevel(logging.NOTSET)
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("uvicorn.error", "warning"),
        ("skillcoach.access", "info"),
    ]
    assert PASSWORD not in stream.getvalue()
