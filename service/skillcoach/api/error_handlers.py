"""Every error a request can end in, mapped to one problem+json response at the edge.

Problems raised by the API itself pass through; domain errors (skillcoach.errors) get their
status here, so the layers below never know about HTTP. Anything else is a bug: logged with
its traceback, answered 500 without details.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from skillcoach.api.problems import Conflict, Problem, ServiceUnavailable, ValidationFailed
from skillcoach.api.problems import problem_response as _response
from skillcoach.errors import (
    DatabaseUnavailable,
    DeadlineExceeded,
    IdempotencyConflict,
    InvalidInput,
    PoolExhausted,
    QueryTimeout,
)

__all__ = ["CLIENT_CLOSED_REQUEST", "exception_handlers"]

log = logging.getLogger(__name__)

# nginx's "client closed request": only ever seen by the metrics.
CLIENT_CLOSED_REQUEST = 499

LOG_EVERY_SECONDS = 5.0
# When each 503 category was last logged at warning level (monotonic seconds).
_last_logged: dict[str, float] = {}

Handler = Callable[[Request, Exception], Awaitable[Response]]


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return _response(exc, request.url.path)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    problem = Problem(exc.detail or "")
    problem.status, problem.title = exc.status_code, exc.detail
    problem.headers = dict(exc.headers or {})
    return _response(problem, request.url.path)


async def _invalid_input(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidInput)
    return _response(ValidationFailed(str(exc), **exc.details), request.url.path)


async def _idempotency_conflict(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdempotencyConflict)
    return _response(Conflict(str(exc), idempotency_key=exc.key), request.url.path)


async def _db_unavailable(request: Request, exc: Exception) -> Response:
    if isinstance(exc, PoolExhausted | DeadlineExceeded):
        detail, retry_after = "database busy", 1
    elif isinstance(exc, QueryTimeout):
        detail, retry_after = "database too slow", 2
    else:
        detail, retry_after = "database unavailable", 2
    # The driver's text (host, port, role) is for the log only: clients get the category.
    # At most one warning per category every few seconds: an outage must not flood the log.
    now = time.monotonic()
    if now - _last_logged.get(detail, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
        _last_logged[detail] = now
        log.warning("%s on %s: %s", detail, request.url.path, exc)
    else:
        log.debug("%s on %s: %s", detail, request.url.path, exc)
    problem = ServiceUnavailable(detail, retry_after=retry_after)
    return _response(problem, request.url.path)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up before its request body was read (a load generator stopping, a
    # proxy timing out): nothing was processed and nobody is left to answer, so no traceback.
    log.debug("client disconnected on %s before its body was read", request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return _response(Problem("internal error; it has been logged"), request.url.path)


def exception_handlers() -> dict[type[Exception], Handler]:
    return {
        Problem: _problem,
        HTTPException: _http_exception,
        InvalidInput: _invalid_input,
        IdempotencyConflict: _idempotency_conflict,
        DatabaseUnavailable: _db_unavailable,
        ClientDisconnect: _client_gone,
        Exception: _unexpected,
    }
