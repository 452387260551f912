"""`skillcoach serve`: one uvicorn process per replica (scale by replicas, not workers)."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import start_http_server
from starlette.types import ASGIApp

from skillcoach.api.accepting import AcceptPump
from skillcoach.api.app import create_app
from skillcoach.api.background import Drain
from skillcoach.settings import Settings
from skillcoach.telemetry.logs import configure_logging

__all__ = ["SERVER_OPTIONS", "DrainingServer", "run_app", "serve"]

# uvicorn.main.STARTUP_FAILURE: the exit status of a server that never started.
STARTUP_FAILURE = 3

# Every replica, and the benchmarks' reference apps, run with exactly these settings.
SERVER_OPTIONS: dict[str, object] = {
    "access_log": False,
    # Starlette's lifespan opens the pool and loads the model before the port is served.
    "lifespan": "on",
    "timeout_graceful_shutdown": 10,
}


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM first drains: the app's Drain flag flips at once (/readyz 503,
    skillcoach_ready 0) while requests, old and new, keep being served for `drain_seconds`
    so load balancers notice; then uvicorn's graceful shutdown runs as usual. A second
    SIGTERM, or SIGINT (a developer's Ctrl-C), skips the drain.

    Each listening socket also gets an AcceptPump (api/accepting.py): new connections are
    accepted in batches, not one per loop iteration, so a busy replica does not leave them
    waiting in the kernel's queue. Once started, the objects alive are frozen out of the
    cyclic garbage collector's generations (gc.freeze): at 1,000 connections its full
    collections otherwise walked the whole imported heap again and again."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        drain: Drain,
        drain_seconds: float,
        accept_pump: bool = True,
    ) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_seconds = drain_seconds
        self._exit_at: float | None = None
        self._accept_pump = accept_pump
        self.pumps: list[AcceptPump] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # Everything alive once the app has started (modules, numpy, scikit-learn, the
            # model, the pools) stays alive: out of the collector's reach, so a full
            # collection under load walks only what requests and connections made.
            gc.freeze()
        if not self.started or not self._accept_pump:
            return
        loop = asyncio.get_running_loop()
        config = self.config

        def protocol() -> asyncio.Protocol:  # what uvicorn's own server creates
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
            )
            return made

        self.pumps = [
            AcceptPump(loop, listener, protocol)
            for server in self.servers
            for listener in server.sockets
        ]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for pump in self.pumps:  # first: the servers' sockets close next
            pump.close()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._exit_at is None and self._drain_seconds > 0:
            # Runs in a signal handler: only attribute stores, the loop's tick does the rest.
            self._drain.begin()
            self._exit_at = time.monotonic() + self._drain_seconds
            return
        self._drain.begin()
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if drain_over(self._exit_at, time.monotonic()):
            # Not through handle_exit: uvicorn would re-raise the recorded SIGTERM after its
            # shutdown and the process would die by the signal instead of exiting 0.
            self.should_exit = True
        return await super().on_tick(counter)


def drain_over(exit_at: float | None, now: float) -> bool:
    return exit_at is not None and now >= exit_at


def run_app(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str,
    own_logging: bool = False,
    drain: Drain | None = None,
    drain_seconds: float = 0.0,
    accept_pump: bool = True,
) -> None:
    """uvicorn with SERVER_OPTIONS: every replica, and the benchmarks' reference apps.
    `own_logging`: the process has configured logging itself (uvicorn's loggers then write
    through the root handler, in its format). `drain`: flipped on SIGTERM, `drain_seconds`
    before the graceful shutdown starts (see DrainingServer). `accept_pump=False`: uvloop's
    own accept only (`python -m loadtests accept` compares the two)."""
    options: dict[str, Any] = dict(SERVER_OPTIONS)
    if own_logging:
        options["log_config"] = None
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, **options)
    server = DrainingServer(
        config, drain=drain or Drain(), drain_seconds=drain_seconds, accept_pump=accept_pump
    )
    server.run()
    if not server.started:
        # As uvicorn.run: a failed start-up (port taken, lifespan error) is exit status 3.
        sys.exit(STARTUP_FAILURE)


def serve(settings: Settings) -> None:
    configure_logging(settings)
    app = create_app(settings)
    if settings.metrics_port:
        # A thread of its own: scrapes keep answering even if the event loop is saturated.
        start_http_server(settings.metrics_port, settings.host, app.state.metrics_registry)
    run_app(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        own_logging=True,
        drain=app.state.drain,
        drain_seconds=settings.shutdown_drain_seconds,
    )
