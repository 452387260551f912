"""Apply the pool file at start-up and whenever it changes (the replica side of the
operator's pool-sizing contract)."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from skillcoach.data.database import Database, PoolConfig
from skillcoach.data.pool_file import PoolFile, PoolFileError, read_pool_file

__all__ = ["apply_pool_file", "initial_pool", "watch_pool_file"]

log = logging.getLogger(__name__)


def _config(pool: PoolFile, pre_ping: bool) -> PoolConfig:
    return PoolConfig(
        pool_size=pool.pool_size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.pool_timeout,
        pool_recycle=pool.pool_recycle,
        pool_pre_ping=pre_ping,
        client_budget=pool.client_budget or 0,
    )


def initial_pool(path: Path | None, fallback: PoolConfig) -> tuple[PoolConfig, int]:
    """The pool to open with: the file's if it is there and valid, else the settings'."""
    if path is None:
        return fallback, 0
    try:
        pool = read_pool_file(path)
    except PoolFileError as exc:
        log.warning("pool file not used at start-up (%s); using settings", exc)
        return fallback, 0
    return _config(pool, fallback.pool_pre_ping), pool.generation


def apply_pool_file(db: Database, path: Path) -> bool:
    """Resize if the file holds a newer generation; True if the pool changed."""
    try:
        pool = read_pool_file(path)
    except PoolFileError as exc:
        # Keep serving with the current pool: a bad write must not take replicas down.
        log.error("pool file ignored: %s", exc)
        return False
    if pool.generation <= db.generation:
        return False
    config = _config(pool, db.pool_config.pool_pre_ping)
    db.resize(config, generation=pool.generation)
    log.info(
        "pool resized to %d+%d (generation %d)",
        config.pool_size,
        config.max_overflow,
        pool.generation,
    )
    return True


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()  # follows the symlink a ConfigMap volume swaps on update
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def watch_pool_file(db: Database, path: Path, interval: float) -> None:
    seen = _signature(path)
    while True:
        await anyio.sleep(interval)
        db.dispose_retired()
        current = _signature(path)
        if current is not None and current != seen:
            apply_pool_file(db, path)
        seen = current
