"""Parsing of path and query parameters and of JSON bodies into clear 4xx problems."""

from __future__ import annotations

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
from skillcoach.limits import MAX_BODY_BYTES, FloatRange, IntParam, IntRange

__all__ = ["float_param", "int_param", "optional_int_param", "path_id", "read_json"]

M = TypeVar("M", bound=BaseModel)


def path_id(request: Request, name: str, bounds: IntRange) -> int:
    raw = request.path_params[name]
    if not raw.isascii() or not raw.isdigit() or int(raw) not in bounds:
        raise BadRequest(
            f"{name} must be an integer from {bounds.low} to {bounds.high}, got {raw!r}",
            param=name,
        )
    return int(raw)


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
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw!r}", param=name) from None
    if value not in bounds:  # NaN lies in no range
        raise BadRequest(
            f"{name} must be between {bounds.low} and {bounds.high}, got {value}", param=name
        )
    return value


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}", param=name) from None


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
