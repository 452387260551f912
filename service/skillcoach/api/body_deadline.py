"""A deadline and a size cap on receiving a request body, as pure ASGI middleware.

uvicorn waits for a body as long as the client keeps the connection open: a few hundred
clients trickling bodies would hold a replica's connections (and admission slots) without
end. Here the whole body must arrive within `timeout` seconds of the request's start, or the
request ends in 408 problem+json with `Connection: close`; a body over `max_bytes` ends in
413. Once the body is complete, `receive` passes through untouched (waiting for a disconnect
has no deadline).
"""

from __future__ import annotations

import time

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillcoach.api.problems import PayloadTooLarge, Problem, problem_response

__all__ = ["BodyDeadlineMiddleware", "BodyTimeout", "remaining"]


class BodyTimeout(Problem):
    status, title = 408, "Request Timeout"

    def __init__(self, timeout: float) -> None:
        # The connection is closed: the rest of the body, if it ever comes, is not read.
        super().__init__(
            f"the request body did not arrive within {timeout:g}s",
            headers={"Connection": "close"},
            timeout_seconds=timeout,
        )


def remaining(started: float, timeout: float, now: float) -> float:
    """Seconds left to receive the body (never negative)."""
    return max(0.0, started + timeout - now)


class BodyDeadlineMiddleware:
    def __init__(self, app: ASGIApp, *, timeout: float, max_bytes: int) -> None:
        self.app = app
        self.timeout = timeout
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        timeout, max_bytes = self.timeout, self.max_bytes
        done = False
        size = 0
        response_started = False

        async def bounded_receive() -> Message:
            nonlocal done, size
            if done:
                return await receive()
            try:
                with anyio.fail_after(remaining(started, timeout, time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > max_bytes:
                    raise PayloadTooLarge(f"body over {max_bytes} bytes", limit=max_bytes)
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except (BodyTimeout, PayloadTooLarge) as problem:
            # Raised where no exception handler caught it (outside the routes): answer here.
            if response_started:
                raise
            response = problem_response(problem, scope.get("path"))
            await response(scope, receive, send)
