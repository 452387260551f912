"""Structured logs: one JSON object per line on stderr, every logger of the process (uvicorn's
too) through one handler.

Each line has `ts` (UTC, ISO 8601), `level`, `logger` and `message`; inside a request also
`request_id`, `method` and `route` (the template, never the raw path, which holds a learner
id), and `trace_id`/`span_id` while a span is current; an exception adds `exc`. The access
log (`skillcoach.access`, SKILLCOACH_ACCESS_LOG) adds `status` and `duration_ms`.

Nothing secret may reach a line: the code logs no keys, passwords or bound SQL parameters,
and as defence in depth every line passes a `Redactor` that removes the replica's own
secrets (database and Redis passwords, however they were configured), bearer tokens, API
keys, passwords in URLs and `key=value` pairs, and SQLAlchemy's `[parameters: ...]`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson

from skillcoach.settings import Settings
from skillcoach.telemetry.tracing import span_ids

__all__ = [
    "ACCESS_LOGGER",
    "FIELDS",
    "REQUEST",
    "JsonFormatter",
    "Redactor",
    "RequestLog",
    "TextFormatter",
    "configure_logging",
    "secrets_of",
]

ACCESS_LOGGER = "skillcoach.access"
REDACTED = "[REDACTED]"
# Extra fields of one line: log.info(..., extra={FIELDS: {...}}).
FIELDS = "skillcoach_fields"


@dataclass(slots=True)
class RequestLog:
    """What every line logged while serving a request carries."""

    request_id: str
    method: str
    # The route template once the router has matched (read when a line is written).
    route: Callable[[], str]


REQUEST: ContextVar[RequestLog | None] = ContextVar("skillcoach_request", default=None)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\bsk_[A-Za-z0-9_\-]{4,}"), f"sk_{REDACTED}"),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/@\s\"']*):[^@\s\"']*@"), rf"\1:{REDACTED}@"),
    # password=..., "password": "...", REDIS_PASSWORD=... (the name may follow an underscore)
    (
        re.compile(
            r"(?i)(?<![a-z])(password|passwd|pwd|secret|api[_-]?key)([\"']?\s*[=:]\s*)"
            r"(\"[^\"]*\"|'[^']*'|[^\s,;&\"']+)"
        ),
        rf"\1\2{REDACTED}",
    ),
    # SQLAlchemy's error text (engines are created with hide_parameters; this is the backstop).
    (re.compile(r"\[parameters: [^\n]*"), f"[parameters: {REDACTED}]"),
)


class Redactor:
    """Removes secrets from text: the exact values given (and their URL-quoted forms), then
    the patterns above."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            # Very short values would blank ordinary words; such passwords are not worth
            # protecting this way (and the patterns still catch them in URLs).
            if len(secret) >= 4:
                values.update({secret, quote(secret, safe=""), quote(secret)})
        self._secrets = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold: passwords given on their own and inside URLs."""
    from sqlalchemy.engine import make_url

    found: list[str] = []
    for secret in (settings.database_password, settings.redis_password):
        if secret is not None:
            found.append(secret.get_secret_value())
    try:
        password = make_url(settings.sqlalchemy_url).password
    except Exception:  # an unparsable URL holds nothing we can name; the patterns remain
        password = None
    if password:
        found.append(str(password))
    redis_url = settings.redis_url.get_secret_value()
    userinfo = redis_url.partition("://")[2].rpartition("@")[0]
    if ":" in userinfo:
        from urllib.parse import unquote

        found.append(unquote(userinfo.partition(":")[2]))
    return [s for s in found if s]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The request's fields, the current span's ids and the record's own extra fields."""
    out: dict[str, Any] = {}
    request = REQUEST.get()
    if request is not None:
        out["request_id"] = request.request_id
        out["method"] = request.method
        out["route"] = request.route()
    ids = span_ids()
    if ids is not None:
        out["trace_id"], out["span_id"] = ids
    extra = getattr(record, FIELDS, None)
    if isinstance(extra, Mapping):
        out.update(extra)
    return out


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            line[key] = self._redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = self._redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = self._redact(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """For reading by eye (SKILLCOACH_LOG_FORMAT=text): the classic line, then the fields."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return self._redact(f"{text} [{fields}]" if fields else text)


def configure_logging(settings: Settings) -> None:
    """Root logging of a replica: one stderr handler with the configured format and the
    redactor of this replica's secrets. Loggers that bring their own handlers (uvicorn's,
    when uvicorn configures logging) are pointed at the root."""
    redact = Redactor(secrets_of(settings))
    formatter: logging.Formatter = (
        JsonFormatter(redact) if settings.log_format == "json" else TextFormatter(redact)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The access log is its own switch: its lines appear at any LOG_LEVEL once it is on.
    logging.getLogger(ACCESS_LOGGER).setLevel(
        logging.INFO if settings.access_log else logging.WARNING
    )
    logging.captureWarnings(True)
