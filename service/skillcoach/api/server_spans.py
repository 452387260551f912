"""The server span of every request (when tracing is on), as pure ASGI outside the cache-hit
fast path, so hits are traced too.

- The span's parent is the incoming trace context (the global propagator: W3C traceparent
  and baggage unless OTEL_PROPAGATORS says otherwise).
- It starts named by the method alone, since the route is not known before routing. The
  HTTP metrics middleware, or the fast path for a hit, renames it "<METHOD> <route
  template>" before the response starts (api.http_metrics.name_server_span).
- Probes and /metrics get no span.
- Attributes follow the stable HTTP semantic conventions. They are set only on spans the
  sampler keeps, and no header is recorded.

Why not OpenTelemetry's ASGI middleware: it builds every attribute, wraps `send` and
records meters for every request, sampled or not; on a cache hit that cost more than the hit
itself (loadtests/bench_tracing.py measures the difference). Here a request the sampler
drops costs one span start and a context switch.
"""

from __future__ import annotations

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillcoach.api.admission import UNSHED_PATHS

__all__ = ["UNTRACED_PATHS", "ServerSpanMiddleware"]

UNTRACED_PATHS = UNSHED_PATHS


class ServerSpanMiddleware:
    def __init__(self, app: ASGIApp, *, tracer: Tracer) -> None:
        self.app = app
        self._tracer = tracer
        # The headers the propagator reads (traceparent, tracestate, baggage), as bytes.
        self._fields = {f.lower().encode("latin-1") for f in propagate.get_global_textmap().fields}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in self._fields
        }
        parent = propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(scope["method"], context=parent, kind=SpanKind.SERVER)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            if not span.is_recording():
                await self.app(scope, receive, send)
                return
            _request_attributes(span, scope)

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
        finally:
            span.end()
            context.detach(token)


def _request_attributes(span: trace.Span, scope: Scope) -> None:
    attributes: dict[str, str | int] = {
        "http.request.method": scope["method"],
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server, client = scope.get("server"), scope.get("client")
    if server:
        attributes["server.address"] = str(server[0])
        if server[1] is not None:
            attributes["server.port"] = int(server[1])
    if client:
        attributes["client.address"] = str(client[0])
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
            break
    span.set_attributes(attributes)
