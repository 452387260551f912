"""Timing of model inference: skillcoach_model_inference_duration_seconds{kind} and a span
"model.inference <kind>" per answer computed (when tracing records the request)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram

from skillcoach.telemetry.tracing import NO_SPANS, Spans

__all__ = ["INFERENCE_BUCKETS", "KINDS", "Inference"]

KINDS = ("weaknesses", "recommendations")
# One vectorised call per answer: tens of microseconds for a small learner, milliseconds for
# a large catalog.
INFERENCE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)


class Inference:
    def __init__(self, registry: CollectorRegistry | None, spans: Spans = NO_SPANS) -> None:
        self.duration = Histogram(
            "skillcoach_model_inference_duration_seconds",
            "Model time of one computed answer (all of its model calls), by answer kind",
            ["kind"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self._by_kind = {kind: self.duration.labels(kind) for kind in KINDS}
        self._spans = spans

    @contextmanager
    def timed(self, kind: str, *, earlier: float = 0.0) -> Iterator[None]:
        """Time the block as `kind`'s inference; `earlier` adds model time already spent for
        the same answer elsewhere (inside its database transaction)."""
        with self._spans.child(f"model.inference {kind}"):
            start = time.perf_counter()
            try:
                yield
            finally:
                self._by_kind[kind].observe(time.perf_counter() - start + earlier)
