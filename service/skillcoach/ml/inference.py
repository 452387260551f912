"""Timing of model inference: skillcoach_model_inference_duration_seconds{kind} and a span
"model.inference <kind>" per answer computed (when tracing records the request); and how the
recommended exercises fit their target, skillcoach_recommended_exercises_total{fit}, and how
many came from a skill the learner had not practised,
skillcoach_recommended_new_skill_exercises_total."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram

from skillcoach.ml.analysis import Recommendation
from skillcoach.telemetry.tracing import NO_SPANS, Spans

__all__ = ["FITS", "INFERENCE_BUCKETS", "KINDS", "Inference"]

KINDS = ("weaknesses", "recommendations")
# on_target: predicted near the target; off_target: the nearest the learner's weak skills
# offered; untrusted: an exercise with too few training answers to predict it closely.
FITS = ("on_target", "off_target", "untrusted")
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
        self.recommended_exercises = Counter(
            "skillcoach_recommended_exercises",
            "Exercises in computed recommendation answers, by how their predicted success fits"
            " the target",
            ["fit"],
            registry=registry,
        )
        self._by_fit = {fit: self.recommended_exercises.labels(fit) for fit in FITS}
        self.recommended_new_skill = Counter(
            "skillcoach_recommended_new_skill_exercises",
            "Exercises in computed recommendation answers from a skill the learner had not"
            " practised (offered when their own skills hold too few near the target)",
            registry=registry,
        )
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

    def recommended(self, recs: Iterable[Recommendation]) -> None:
        """Count a computed answer's exercises by fit: a falling on-target share means the
        weak skills' exercises are too hard or too easy for the learners, or the model is
        stale (a cached answer is counted once, when it is computed). A rising new-skill
        share: learners have outgrown the exercises of their own skills."""
        on = off = untrusted = new = 0
        for r in recs:
            new += r.new_skill
            if not r.trusted:
                untrusted += 1
            elif r.on_target:
                on += 1
            else:
                off += 1
        for fit, n in zip(FITS, (on, off, untrusted), strict=True):
            if n:
                self._by_fit[fit].inc(n)
        if new:
            self.recommended_new_skill.inc(new)
