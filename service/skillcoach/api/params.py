"""Parsing of path and query parameters and of JSON bodies into clear 4xx problems."""

from __future__ import annotations

import re
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from skillcoach.api.problems import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from skillcoach.limits import (
    IDEMPOTENCY_KEY_MAX_CHARS,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_BODY_BYTES,
    FloatRange,
    IntParam,
    IntRange,
)

__all__ = [
    "float_param",
    "int_param",
    "optional_int_param",
    "parse_int",
    "path_id",
    "read_json",
    "valid_idempotency_key",
]

_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def valid_idempotency_key(key: str) -> bool:
    """The rule the OpenAPI document publishes for the Idempotency-Key header."""
    return len(key) <= IDEMPOTENCY_KEY_MAX_CHARS and _IDEMPOTENCY_KEY.match(key) is not None


M = TypeVar("M", bound=BaseModel)


# Longer than any int64 written in decimal (with a sign): refused before int() is called,
# which would raise for over 4300 digits (sys.get_int_max_str_digits) and is slow before that.
MAX_INT_CHARS = 20


def parse_int(raw: str) -> int | None:
    """A plain decimal integer (optional leading '-', ASCII digits only: no spaces, '+' or
    '_' that int() would accept), or None."""
    digits = raw[1:] if raw.startswith("-") else raw
    if len(raw) > MAX_INT_CHARS or not digits.isascii() or not digits.isdigit():
        return None
    return int(raw)


def _shown(raw: str) -> str:
    # A 4,000-digit id is not echoed back whole.
    return repr(raw) if len(raw) <= 40 else f"{raw[:20]!r}... ({len(raw)} characters)"


def path_id(request: Request, name: str, bounds: IntRange) -> int:
    """A path id: 400 when it is not an integer within `bounds` (the OpenAPI document states
    the range, so this is malformed input, not a missing resource: that is 404)."""
    raw = request.path_params[name]
    value = parse_int(raw)
    if value is None or value not in bounds:
        raise BadRequest(
            f"{name} must be an integer from {bounds.low} to {bounds.high}, got {_shown(raw)}",
            param=name,
        )
    return value


def int_param(request: Request, name: str, bounds: IntParam) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return bounds.default
    return _in_range(name, _int(name, raw), bounds)


def optional_int_param(request: Request, name: str, bounds: IntRange) -> int | None:
    raw = request.query_params.get(name)
    return None if raw is None else _in_range(name, _int(name, raw), bounds)


def float_param(request: Request, name: str, bounds: FloatRange, *, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        # Bounded first: float() of a huge digit string is slow, and no bound needs it.
        value = float(raw) if len(raw) <= 64 else float("nan")
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {_shown(raw)}", param=name) from None
    if value not in bounds:  # NaN lies in no range
        raise BadRequest(
            f"{name} must be between {bounds.low} and {bounds.high}, got {value}", param=name
        )
    return value


def _int(name: str, raw: str) -> int:
    value = parse_int(raw)
    if value is None:
        raise BadRequest(f"{name} must be an integer, got {_shown(raw)}", param=name)
    return value


def _in_range(name: str, value: int, bounds: IntRange) -> int:
    if value not in bounds:
        raise BadRequest(
            f"{name} must be between {bounds.low} and {bounds.high}, got {value}", param=name
        )
    return value


async def read_json(request: Request, model: type[M], *, limit: int = MAX_BODY_BYTES) -> M:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json, not {ctype!r}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body over {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    # Counted while streaming: a chunked body without Content-Length is bounded too.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over {limit} bytes", limit=limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValidationFailed(
            f"{where}: {first['msg']}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""),
            errors=errors[:50],
        ) from None
