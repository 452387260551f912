"""OpenTelemetry tracing of a replica, configured from the standard OTEL_* variables only.

Tracing is on when an OTLP endpoint is configured (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
OTEL_EXPORTER_OTLP_ENDPOINT) and neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none
turns it off. The SDK itself reads the rest: OTEL_SERVICE_NAME (default here
"skillcoach-api"), OTEL_RESOURCE_ATTRIBUTES (k8s.pod.name and the like), OTEL_TRACES_SAMPLER
and OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_* (the batch processor) and the exporter's
OTEL_EXPORTER_OTLP_* headers, timeout and certificates. The exporter speaks OTLP over
http/protobuf.

Off means nothing is instrumented: no server-span middleware, no SQLAlchemy listeners, and
the manual spans of the cache and the model (`Spans`) cost one branch. Nothing happens at
import time: the API's factory builds a `Tracing` (`tracing_from_env`), starts it in its
lifespan and shuts it down (flushing the last spans) when the replica stops.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ParamSpec

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue
from sqlalchemy import Engine

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "NO_SPANS",
    "Spans",
    "Tracing",
    "TracingConfigError",
    "span_ids",
    "tracing_from_env",
    "untraced",
]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "skillcoach-api"
INSTRUMENTATION_NAME = "skillcoach"
_PROTOCOLS = ("http/protobuf",)

P = ParamSpec("P")


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this replica cannot do."""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _resource() -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME), with our service
    name when neither variable names one."""
    resource = Resource.create()
    if OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        return resource
    return resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))


def tracing_from_env() -> Tracing:
    """This replica's tracing from the environment (see the module's docstring)."""
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return Tracing.off("OTEL_SDK_DISABLED=true")
    exporters = [e.strip().lower() for e in _env("OTEL_TRACES_EXPORTER").split(",") if e.strip()]
    if exporters == ["none"]:
        return Tracing.off("OTEL_TRACES_EXPORTER=none")
    if any(e not in ("otlp", "none") for e in exporters):
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(exporters)}: only otlp (or none) is supported"
        )
    endpoint = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return Tracing.off("no OTLP endpoint configured")
    protocol = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol not in _PROTOCOLS:
        raise TracingConfigError(f"OTLP protocol {protocol!r}: only http/protobuf is supported")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    def exporting() -> SpanProcessor:
        # Both read their settings (endpoint, headers, timeouts; batch sizes) from OTEL_*.
        return BatchSpanProcessor(OTLPSpanExporter())

    # The sampler is the TracerProvider's own reading of OTEL_TRACES_SAMPLER(_ARG).
    provider = TracerProvider(resource=_resource())
    return Tracing(provider, make_processor=exporting, reason=f"OTLP to {endpoint}")


@dataclass(eq=False)
class Tracing:
    """A replica's tracing: a TracerProvider and the processor that exports its spans, or
    off (provider None). The processor is given, or made by `make_processor` at start (a
    batch processor starts its worker thread as it is made)."""

    provider: TracerProvider | None = None
    processor: SpanProcessor | None = None
    reason: str = ""
    make_processor: Callable[[], SpanProcessor] | None = None
    _started: bool = False

    @classmethod
    def off(cls, reason: str) -> Tracing:
        return cls(None, None, reason=reason)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def tracer(self) -> Tracer | None:
        if self.provider is None:
            return None
        return self.provider.get_tracer(INSTRUMENTATION_NAME)

    def spans(self) -> Spans:
        tracer = self.tracer()
        return NO_SPANS if tracer is None else Spans(tracer)

    def start(self) -> None:
        """Attach the exporting processor (its worker thread starts here, not at import or
        construction)."""
        if self.provider is None or self._started:
            return
        self._started = True
        if self.processor is None and self.make_processor is not None:
            self.processor = self.make_processor()
        if self.processor is not None:
            self.provider.add_span_processor(self.processor)
        log.info("tracing on: %s", self.reason)

    def shutdown(self) -> None:
        """Flush the spans still queued and stop exporting."""
        if self.provider is not None and self._started:
            self._started = False
            self.provider.shutdown()

    def instrument_engine(self, engine: Engine) -> None:
        """A span per SQL statement run through `engine` (its parameterised text only: bound
        parameters are never recorded)."""
        tracer = self.tracer()
        if tracer is None:
            return
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.metrics import NoOpMeterProvider

        # The pool's own gauges (skillcoach_db_pool_*) already count connections.
        usage = NoOpMeterProvider().get_meter(INSTRUMENTATION_NAME).create_up_down_counter("n")
        EngineTracer(tracer, engine, usage)  # type: ignore[no-untyped-call]


_NOTHING: AbstractContextManager[object] = contextlib.nullcontext()


class Spans:
    """Child spans of the current span for the layers below the API (cache calls, model
    inference). A child is made only while the current span records: background work
    (no current span) and requests the sampler dropped cost one check, and with tracing off
    (NO_SPANS) one branch."""

    __slots__ = ("_tracer",)

    def __init__(self, tracer: Tracer | None) -> None:
        self._tracer = tracer

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def child(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> AbstractContextManager[object]:
        tracer = self._tracer
        if tracer is None or not trace.get_current_span().is_recording():
            return _NOTHING
        return tracer.start_as_current_span(name, kind=kind, attributes=attributes)

    def recording(self) -> Span | None:
        """The current span, when tracing is on and it records; else None."""
        if self._tracer is None:
            return None
        span = trace.get_current_span()
        return span if span.is_recording() else None

    @contextlib.contextmanager
    def shared(
        self,
        name: str,
        members: Iterable[Span],
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> Iterator[None]:
        """A span for work done once on behalf of several requests (`members`: their spans,
        from `recording`, in the order they asked). It is a child of the first member still
        recording, and current while the work runs, so the work's own spans nest under it.
        It links both ways with every other member, whose own trace shows no child for it:
        the shared span links to each one's span, each one's span links back. Nothing is made
        when tracing is off or no member records."""
        tracer = self._tracer
        unique: dict[int, Span] = {}
        for member in members:
            if member.is_recording():  # a member that gave up may have ended its span
                unique.setdefault(member.get_span_context().span_id, member)
        if tracer is None or not unique:
            yield
            return
        first, *others = unique.values()
        links = [Link(m.get_span_context(), _SHARED_BY) for m in others]
        with tracer.start_as_current_span(
            name, context=trace.set_span_in_context(first), attributes=attributes, links=links
        ) as span:
            back = span.get_span_context()
            for member in others:
                member.add_link(back, _SHARED_FOR)
            yield


# The links' attributes: which end of a shared span a link is.
_SHARED_BY = {"skillcoach.link": "member"}  # on the shared span: a request it served
_SHARED_FOR = {"skillcoach.link": "shared"}  # on a member: the shared span that served it

NO_SPANS = Spans(None)


def untraced(fn: Callable[P, Awaitable[Any]]) -> Callable[P, Coroutine[Any, Any, None]]:
    """`fn` (a background task) with instrumentation suppressed: the registry polls, cache
    warming and pruning would otherwise start a root trace of SQL spans each."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> None:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():
            await fn(*args, **kwargs)

    return run


def span_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, or None outside any span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
