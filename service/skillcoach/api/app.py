"""The application factory: `create_app(settings)`, resources opened in the lifespan."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette

from skillcoach.answers.learner_answers import AnswerConfig, LearnerAnswers
from skillcoach.answers.warming import warm_cache
from skillcoach.api.admission import AdmissionMiddleware, Gatekeeper
from skillcoach.api.auth import KeyCache, flush_usage_forever, refresh_keys_forever
from skillcoach.api.background import Drain, Supervisor
from skillcoach.api.body_deadline import BodyDeadlineMiddleware
from skillcoach.api.error_handlers import exception_handlers
from skillcoach.api.hit_path import CacheHitPath
from skillcoach.api.http_metrics import HttpMetrics, HttpMetricsMiddleware, new_registry
from skillcoach.api.routes import catalog, learners, ops
from skillcoach.api.server_spans import ServerSpanMiddleware
from skillcoach.api.state import AppState
from skillcoach.cache.store import Cache, CacheConfig, connect_redis
from skillcoach.data.database import Database, PoolConfig
from skillcoach.data.idempotency import prune_forever
from skillcoach.data.pool_metrics import PoolCollector
from skillcoach.data.pool_watch import initial_pool, watch_pool_file
from skillcoach.data.readiness import HealthProbe
from skillcoach.data.slot_gate import GateConfig
from skillcoach.errors import DatabaseUnavailable
from skillcoach.limits import MAX_BODY_BYTES, in_flight_limit, running_limit
from skillcoach.ml.inference import Inference
from skillcoach.ml.live_model import LiveModel, ModelCollector
from skillcoach.settings import Settings
from skillcoach.telemetry.tracing import Tracing, tracing_from_env, untraced

__all__ = ["create_app"]

log = logging.getLogger(__name__)

LONG_HELD_SCAN_SECONDS = 1.0

# How a background task is started: as it is, or with instrumentation suppressed.
Background = Callable[
    [Callable[..., Coroutine[Any, Any, Any]]], Callable[..., Coroutine[Any, Any, Any]]
]


async def _refresh_model_forever(
    state: AppState,
    tg: TaskGroup,
    background: Background,
    supervisor: Supervisor,
) -> None:
    interval = state.settings.model_refresh_seconds
    while True:
        # Jitter: replicas started together must not poll the registry in lockstep.
        await anyio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            if await state.live_model.refresh(state.db):
                warm = functools.partial(background(_warm), state)
                tg.start_soon(supervisor.supervise, "warm", warm)
        except DatabaseUnavailable as exc:
            log.warning("model refresh skipped: %s", exc)


async def _warm(state: AppState) -> None:
    settings = state.settings
    try:
        await warm_cache(
            state.answers,
            state.live_model,
            learners=settings.cache_warm_learners,
            seconds=settings.cache_warm_seconds,
        )
    except DatabaseUnavailable as exc:
        log.warning("cache warming stopped: %s", exc)


async def _retry_invalidations_forever(cache: Cache) -> None:
    while True:
        await anyio.sleep(1.0)
        await cache.retry_invalidations()


async def _scan_long_held_forever(db: Database) -> None:
    # A connection stuck in a slow transaction is reported while it is still held.
    while True:
        await anyio.sleep(LONG_HELD_SCAN_SECONDS)
        db.check_long_held()


class ReadyCollector(Collector):
    """skillcoach_ready: what /readyz would answer, from its last probe (an alert on a replica
    that is not ready needs no kube-state-metrics). 0 while draining for shutdown."""

    def __init__(self, state: AppState, drain: Drain) -> None:
        self._state = state
        self._drain = drain

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "skillcoach_ready",
            "1 when this replica would answer /readyz 200 (database reachable at the last"
            " probe, model loaded), else 0",
            value=1 if self._state.ready() and not self._drain.draining else 0,
        )


def create_app(settings: Settings, *, tracing: Tracing | None = None) -> Starlette:
    """The replica's application. `tracing` defaults to the one the OTEL_* variables
    configure (off unless an OTLP endpoint is set)."""
    registry = new_registry()
    holder: dict[str, Database] = {}
    tracing = tracing_from_env() if tracing is None else tracing
    spans = tracing.spans()
    # Background work is not traced: each registry poll or warming run would be a trace.
    background: Background = untraced if tracing.enabled else _as_is
    http_metrics = HttpMetrics(registry)
    inference = Inference(registry, spans)
    supervisor = Supervisor(registry)
    drain = Drain()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tracing.start()
        pool, generation = initial_pool(settings.pool_file, PoolConfig.from_settings(settings))
        db = Database(
            settings.sqlalchemy_url,
            pool,
            statement_timeout_ms=settings.statement_timeout_ms,
            request_timeout=settings.request_timeout,
            long_checkout_seconds=settings.long_checkout_seconds,
            registry=registry,
            on_engine=tracing.instrument_engine if tracing.enabled else None,
            gate=GateConfig.from_settings(settings),
        )
        db.generation = generation
        holder["db"] = db
        probe = HealthProbe(settings.sqlalchemy_url)
        cache = None
        if settings.cache_enabled:
            config = CacheConfig.from_settings(settings)
            cache = Cache(connect_redis(config), config, registry, spans=spans)
        state = AppState(
            settings=settings,
            db=db,
            probe=probe,
            live_model=LiveModel(),
            keys=KeyCache(settings.api_key_cache_seconds),
            registry=registry,
            answers=LearnerAnswers(
                db, cache, AnswerConfig.from_settings(settings), inference=inference, spans=spans
            ),
            cache=cache,
        )
        registry.register(PoolCollector(db.stats))
        pruned = Counter(
            "skillcoach_idempotency_keys_pruned_total",
            "Idempotency keys deleted after the retention period",
            registry=registry,
        )
        registry.register(ModelCollector(state.live_model))
        registry.register(ReadyCollector(state, drain))
        app.state.skillcoach = state
        try:
            await background(state.live_model.refresh)(db)
        except DatabaseUnavailable as exc:
            # Start anyway (liveness stays green); readiness reports the missing model.
            log.warning("no model at start-up: %s", exc)
        async with anyio.create_task_group() as tg:

            def start(name: str, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
                # Supervised: one loop failing must not cancel the others (api/background).
                tg.start_soon(supervisor.supervise, name, functools.partial(fn, *args))

            start(
                "model_refresh",
                background(_refresh_model_forever),
                state,
                tg,
                background,
                supervisor,
            )
            if cache is not None:
                start("cache_retries", background(_retry_invalidations_forever), cache)
                start("warm", background(_warm), state)
            start("long_held_scan", _scan_long_held_forever, db)
            # Two tasks, not one group: a failing rate-limit sync must not stop the flushes.
            start("key_usage", background(flush_usage_forever), db, state.usage)
            if settings.auth_enabled and settings.api_key_cache_seconds > 0:
                ttl = settings.api_key_cache_seconds
                start("key_refresh", background(refresh_keys_forever), db, state.keys, ttl)
            start("rate_limit_sync", background(state.limiter.sync_forever))
            start(
                "idempotency_prune",
                background(
                    functools.partial(
                        prune_forever,
                        db,
                        retention_seconds=settings.idempotency_retention_seconds,
                        every_seconds=settings.idempotency_prune_seconds,
                        pruned=pruned,
                    )
                ),
            )
            if settings.pool_file is not None:
                start(
                    "pool_watch",
                    watch_pool_file,
                    db,
                    settings.pool_file,
                    settings.pool_file_poll_seconds,
                )
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        probe.dispose()
        if cache is not None:
            await cache.aclose()
        db.dispose()
        # Last: the spans of the final requests are flushed to the collector.
        await anyio.to_thread.run_sync(tracing.shutdown)

    def capacity() -> int:
        db = holder.get("db")
        return db.pool_config.capacity if db else settings.pool_size + settings.max_overflow

    def admitted() -> int:
        return in_flight_limit(pool_capacity=capacity(), queue_allowance=settings.queue_allowance)

    def running() -> int:
        return running_limit(pool_capacity=capacity())

    # Admission, shared: the full application's middleware and the fast path's misses.
    keeper = Gatekeeper(
        limit=admitted,
        running=running,
        request_timeout=settings.request_timeout,
        registry=registry,
        gate=GateConfig.from_settings(settings),
    )

    app = Starlette(
        routes=[
            *ops.routes(metrics_on_api_port=settings.metrics_port == 0),
            *learners.routes,
            *catalog.routes,
        ],
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
    )
    # Innermost: a trickled body ends in 408 (and is counted by the HTTP metrics).
    app.add_middleware(
        BodyDeadlineMiddleware, timeout=settings.body_timeout_seconds, max_bytes=MAX_BODY_BYTES
    )
    # Added last = outermost: shed requests are counted by the HTTP metrics too.
    app.add_middleware(AdmissionMiddleware, keeper=keeper)
    app.add_middleware(
        HttpMetricsMiddleware,
        metrics=http_metrics,
        traced=tracing.enabled,
        access_log=settings.access_log,
    )
    # The two cacheable reads skip everything above (see hit_path) and record their own
    # metrics: hits from the cache, misses computed under the same admission.
    app.add_middleware(
        CacheHitPath,
        state=lambda: getattr(app.state, "skillcoach", None),
        registry=registry,
        metrics=http_metrics,
        keeper=keeper,
        handlers=exception_handlers(),
        traced=tracing.enabled,
        access_log=settings.access_log,
    )
    tracer = tracing.tracer()
    if tracer is not None:
        # Outermost of ours: hits get their server span too. Only when tracing is on.
        app.add_middleware(ServerSpanMiddleware, tracer=tracer)
    app.state.metrics_registry = registry
    # Flipped by the server on SIGTERM (api/server.py): /readyz then answers 503.
    app.state.drain = drain
    app.state.tracing = tracing
    return app


def _as_is(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Coroutine[Any, Any, Any]]:
    return fn
