"""RFC 9457 problem details: the one error shape of the API.

Domain code raises `Problem` subclasses (or the DB layer's typed errors); routes never build
error responses themselves.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationFailed",
    "problem_response",
]

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    status: int = 500
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class BadRequest(Problem):
    status, title = 400, "Bad Request"


class Unauthorized(Problem):
    status, title = 401, "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="skillcoach"'})


class Forbidden(Problem):
    status, title = 403, "Forbidden"


class NotFound(Problem):
    status, title = 404, "Not Found"


class Conflict(Problem):
    status, title = 409, "Conflict"


class PayloadTooLarge(Problem):
    status, title = 413, "Content Too Large"


class UnsupportedMediaType(Problem):
    status, title = 415, "Unsupported Media Type"


class ValidationFailed(Problem):
    status, title = 422, "Unprocessable Content"


class ServiceUnavailable(Problem):
    status, title = 503, "Service Unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1, **extensions: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, **extensions)


def problem_response(problem: Problem, instance: str | None = None) -> Response:
    return Response(
        orjson.dumps(problem.to_dict(instance)),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )
