"""Health, readiness, model status, metrics and the OpenAPI document.

Only model status needs a key: probes and scrapers must work without one. `/metrics` is on
the API port only with METRICS_PORT=0 (development); otherwise its own port serves it and the
API port answers 404."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.api.openapi import openapi_document
from skillcoach.api.problems import ServiceUnavailable
from skillcoach.api.responses import json_response
from skillcoach.api.state import app_state
from skillcoach.data.api_keys import Scope

__all__ = ["routes"]


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = app_state(request)
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        # Shutting down: out of the load balancer first, while requests still get served.
        raise ServiceUnavailable("shutting down", retry_after=2, checks={"shutdown": "draining"})
    served = state.live_model.current
    checks = {
        "database": await state.probe.database(),
        "model": "ok" if served else (state.live_model.last_error or "not loaded"),
    }
    if state.cache is not None:
        # Informational: the cache is optional, so a degraded one never fails readiness.
        checks["cache"] = "degraded" if state.cache.degraded else "ok"
    if served is None or checks["database"] != "ok":
        raise ServiceUnavailable("not ready", retry_after=2, checks=checks)
    return json_response({"status": "ready", "checks": checks, "model_version": served.version})


async def model_status(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    served = state.live_model.current
    pool = state.db.stats()
    body: dict[str, Any] = {
        "status": "serving" if served else "no-model",
        "model_version": served.version if served else None,
        "trained_at": served.trained_at.isoformat() if served else None,
        "loaded_at": served.loaded_at.isoformat() if served else None,
        "metrics": served.metrics if served else {},
        "pool": {
            "size": pool.size,
            "checked_out": pool.checked_out,
            "idle": pool.idle,
            "overflow": pool.overflow,
            "capacity": pool.capacity,
            "waiters": pool.waiters,
            "long_held": pool.long_held,
            "generation": pool.generation,
        },
    }
    cache = state.cache
    body["cache"] = {
        "enabled": cache is not None,
        "hit_ratio": None if cache is None else cache.hit_ratio,
        "degraded": False if cache is None else cache.degraded,
    }
    if state.live_model.last_error:
        body["last_error"] = state.live_model.last_error
    return json_response(body)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(app_state(request).registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    on_api_port = app_state(request).settings.metrics_port == 0
    return json_response(openapi_document(metrics_on_api_port=on_api_port))


def routes(*, metrics_on_api_port: bool) -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/model-status", model_status, methods=["GET"]),
        Route("/model-status", model_status, methods=["GET"]),
        *([Route("/metrics", metrics, methods=["GET"])] if metrics_on_api_port else []),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
