"""The readiness probe's own path to the database.

It must not queue behind request traffic: a saturated replica is busy, not broken, and
failing readiness under load would pull every pod out of the Service at once. So the probe
uses a one-connection pool of its own on the default worker threads, with a short deadline.
"""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread
from sqlalchemy import Engine, exc

from skillcoach.data.database import PoolConfig, create_sync_engine

__all__ = ["UNAVAILABLE", "HealthProbe"]

log = logging.getLogger(__name__)

UNAVAILABLE = "database unavailable"

PROBE_POOL = PoolConfig(pool_size=1, max_overflow=0, pool_timeout=1.0, pool_recycle=600)


class HealthProbe:
    def __init__(self, url: str, *, deadline: float = 2.0) -> None:
        self._engine: Engine = create_sync_engine(url, PROBE_POOL, name="skillcoach-probe")
        self._deadline = deadline
        # The outcome of the last probe (None: not probed yet), for skillcoach_ready.
        self.last: str | None = None

    def _ping(self) -> None:
        with self._engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    async def database(self) -> str:
        """ "ok", or UNAVAILABLE (the reason is logged, never shown to clients)."""
        self.last = await self._probe()
        return self.last

    async def _probe(self) -> str:
        try:
            with anyio.fail_after(self._deadline):
                # abandon_on_cancel: a hung connect must not hold the probe past its deadline.
                await anyio.to_thread.run_sync(self._ping, abandon_on_cancel=True)
        except TimeoutError:
            return self._failed(f"no answer within {self._deadline:g}s")
        except exc.SQLAlchemyError as e:
            first = str(getattr(e, "orig", None) or e).strip().splitlines()
            return self._failed(first[0] if first else type(e).__name__)
        return "ok"

    def _failed(self, why: str) -> str:
        # The driver's text names hosts, ports and roles: it goes to the log, and /readyz
        # (unauthenticated) says only that the database is unavailable.
        if self.last == "ok" or self.last is None:
            log.warning("readiness probe: database unavailable: %s", why)
        else:
            log.debug("readiness probe: database still unavailable: %s", why)
        return UNAVAILABLE

    def dispose(self) -> None:
        self._engine.dispose()
