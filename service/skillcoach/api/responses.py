"""JSON responses of the routes (errors are problem+json: skillcoach.api.problems)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["json_bytes_response", "json_response"]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def json_bytes_response(body: bytes, status: int = 200) -> Response:
    """A body that is already JSON (computed or straight from the cache): no JSON work."""
    return Response(body, status_code=status, media_type="application/json")
