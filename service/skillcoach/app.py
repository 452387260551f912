"""The application factory: `create_app(settings)`, resources opened in the lifespan."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from skillcoach.auth import KeyCache
from skillcoach.db import Database, DatabaseUnavailable, PoolConfig, PoolExhausted
from skillcoach.live_model import LiveModel
from skillcoach.metrics import HttpMetricsMiddleware, ModelCollector, PoolCollector, new_registry
from skillcoach.problems import Problem, ServiceUnavailable, problem_response
from skillcoach.routes import catalog, learners, ops
from skillcoach.settings import Settings
from skillcoach.state import AppState

__all__ = ["create_app"]

log = logging.getLogger("skillcoach")


async def _refresh_model_forever(state: AppState) -> None:
    interval = state.settings.model_refresh_seconds
    while True:
        # Jitter: replicas started together must not poll the registry in lockstep.
        await anyio.sleep(interval * random.uniform(0.8, 1.2))
        try:
            await state.live_model.refresh(state.db)
        except DatabaseUnavailable as exc:
            log.warning("model refresh skipped: %s", exc)


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc, request.url.path)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    problem = Problem(exc.detail or "")
    problem.status, problem.title = exc.status_code, exc.detail
    problem.headers = dict(exc.headers or {})
    return problem_response(problem, request.url.path)


async def _db_unavailable(request: Request, exc: Exception) -> Response:
    detail = "database busy" if isinstance(exc, PoolExhausted) else "database unavailable"
    return problem_response(ServiceUnavailable(f"{detail}: {exc}", retry_after=1), request.url.path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return problem_response(Problem("internal error; it has been logged"), request.url.path)


def create_app(settings: Settings) -> Starlette:
    registry = new_registry()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(
            settings.sqlalchemy_url,
            PoolConfig.from_settings(settings),
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        state = AppState(
            settings=settings,
            db=db,
            live_model=LiveModel(),
            keys=KeyCache(settings.api_key_cache_seconds),
            registry=registry,
        )
        registry.register(PoolCollector(db.stats))
        registry.register(ModelCollector(state.live_model))
        app.state.skillcoach = state
        try:
            await state.live_model.refresh(db)
        except DatabaseUnavailable as exc:
            # Start anyway (liveness stays green); readiness reports the missing model.
            log.warning("no model at start-up: %s", exc)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_refresh_model_forever, state)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        db.dispose()

    app = Starlette(
        routes=[*ops.routes, *learners.routes, *catalog.routes],
        lifespan=lifespan,
        exception_handlers={
            Problem: _problem,
            HTTPException: _http_exception,
            DatabaseUnavailable: _db_unavailable,
            Exception: _unexpected,
        },
    )
    app.add_middleware(HttpMetricsMiddleware, registry=registry)
    app.state.metrics_registry = registry
    return app
