"""A real OTLP receiver for the tests: oteltap's http/protobuf receiver (a native collector
core) on a free loopback port, run by an event loop in a thread of its own, collecting every
span it receives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from types import TracebackType

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from oteltap import OtelTapHttpProtobufReceiver, OtelTapHttpProtobufReceiverSettings

from skillcoach_devstack.processes import free_port

__all__ = ["OtlpReceiver"]


class OtlpReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self._spans: list[Span] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="otlp-receiver", daemon=True)

    @property
    def url(self) -> str:
        """The OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT; traces go to /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        if not self._ready.wait(timeout=20):
            self._stop.set()
            pytest.fail(f"the OTLP receiver did not start in 20 s: {self._error!r}")
        if self._error is not None:
            pytest.fail(f"the OTLP receiver failed to start: {self._error!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=20)

    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, done: Callable[[list[Span]], bool], *, timeout: float = 20.0) -> list[Span]:
        """The spans received, once `done(spans)` holds or `timeout` has passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if done(spans):
                return spans
            time.sleep(0.1)
        return self.spans()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test by __enter__ or the assertions
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        settings = OtelTapHttpProtobufReceiverSettings(http_port=self.port)
        async with OtelTapHttpProtobufReceiver(settings) as receiver:
            stream = receiver.stream_traces()
            subscribed = asyncio.Event()

            async def collect() -> None:
                first = asyncio.ensure_future(anext(stream))
                subscribed.set()
                span = await first
                while True:
                    with self._lock:
                        self._spans.append(span)
                    span = await anext(stream)

            task = asyncio.create_task(collect())
            await asyncio.wait_for(subscribed.wait(), timeout=5)
            await asyncio.sleep(0.1)  # the stream's queue exists once anext has started
            self._ready.set()
            for _ in range(36_000):  # bounded: an hour at most
                if self._stop.is_set():
                    break
                await asyncio.sleep(0.1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
