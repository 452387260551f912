"""`skillcoach serve`: one uvicorn process per replica (scale by replicas, not workers)."""

from __future__ import annotations

from typing import Any

import uvicorn
from prometheus_client import start_http_server
from starlette.types import ASGIApp

from skillcoach.api.app import create_app
from skillcoach.settings import Settings
from skillcoach.telemetry.logs import configure_logging

__all__ = ["SERVER_OPTIONS", "run_app", "serve"]

# Every replica, and the benchmarks' reference apps, run with exactly these settings.
SERVER_OPTIONS: dict[str, object] = {
    "access_log": False,
    # Starlette's lifespan opens the pool and loads the model before the port is served.
    "lifespan": "on",
    "timeout_graceful_shutdown": 10,
}


def run_app(
    app: ASGIApp, *, host: str, port: int, log_level: str, own_logging: bool = False
) -> None:
    """uvicorn with SERVER_OPTIONS: every replica, and the benchmarks' reference apps.
    `own_logging`: the process has configured logging itself (uvicorn's loggers then write
    through the root handler, in its format)."""
    options: dict[str, Any] = dict(SERVER_OPTIONS)
    if own_logging:
        options["log_config"] = None
    uvicorn.run(app, host=host, port=port, log_level=log_level, **options)


def serve(settings: Settings) -> None:
    configure_logging(settings)
    app = create_app(settings)
    if settings.metrics_port:
        # A thread of its own: scrapes keep answering even if the event loop is saturated.
        start_http_server(settings.metrics_port, settings.host, app.state.metrics_registry)
    run_app(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, own_logging=True
    )
