"""Authentication of requests: the bearer token, its scope, a per-replica cache of key lookups
and the batched record of each key's last use (the keys themselves live in
skillcoach.data.api_keys)."""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

import anyio

from skillcoach.api.problems import Forbidden, Unauthorized
from skillcoach.data.api_keys import ApiKey, Scope, record_last_used
from skillcoach.data.database import Database
from skillcoach.errors import DatabaseUnavailable

__all__ = [
    "KeyCache",
    "KeyUsage",
    "flush_usage_forever",
    "parse_bearer",
    "require_scope",
]

log = logging.getLogger(__name__)

# Bounds of the two LRUs of KeyCache: far more valid keys than a deployment has, and enough
# unknown tokens that a scanner's repeats are answered from memory.
VALID_ENTRIES = 10_000
UNKNOWN_ENTRIES = 10_000
# How often each replica writes the keys' last use (one UPDATE for all keys it saw).
USAGE_FLUSH_SECONDS = 60.0


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <key>'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization must be 'Bearer <key>'")
    return token


def require_scope(key: ApiKey, scope: Scope) -> None:
    if not key.allows(scope):
        raise Forbidden(f"this API key lacks the {scope.value!r} scope")


class KeyCache:
    """Per-replica cache of key lookups, so authentication rarely costs a DB checkout.

    Valid keys and unknown tokens live in two separate bounded LRUs, so no number of unknown
    tokens can evict a valid key. Every entry lives `ttl` seconds: a revoked key stops working
    within `ttl` on every replica. An expired key is refused at once, from its cached expiry.
    """

    def __init__(
        self,
        ttl: float,
        *,
        valid_entries: int = VALID_ENTRIES,
        unknown_entries: int = UNKNOWN_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._wall = wall
        self._valid_max = valid_entries
        self._unknown_max = unknown_entries
        # key hash -> (cached until, key), least recently used first.
        self._valid: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        # token hash -> cached until, oldest first.
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def get(self, key_hash: str) -> tuple[bool, ApiKey | None]:
        """(cached, key): (True, None) for a cached unknown or expired key, (False, None)
        when the database must be asked."""
        entry = self._valid.get(key_hash)
        if entry is not None:
            if entry[0] < self._clock():
                del self._valid[key_hash]
                return False, None
            key = entry[1]
            if key.expired(self._wall()):
                return True, None
            self._valid.move_to_end(key_hash)
            return True, key
        until = self._unknown.get(key_hash)
        if until is None:
            return False, None
        if until < self._clock():
            del self._unknown[key_hash]
            return False, None
        return True, None

    def put(self, key_hash: str, key: ApiKey | None) -> None:
        until = self._clock() + self._ttl
        if key is None:
            self._valid.pop(key_hash, None)
            self._unknown[key_hash] = until
            self._unknown.move_to_end(key_hash)
            if len(self._unknown) > self._unknown_max:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(key_hash, None)
        self._valid[key_hash] = (until, key)
        self._valid.move_to_end(key_hash)
        if len(self._valid) > self._valid_max:
            self._valid.popitem(last=False)

    def sizes(self) -> tuple[int, int]:
        """(valid, unknown) entries held."""
        return len(self._valid), len(self._unknown)


class KeyUsage:
    """Which keys this replica served, and when last (wall clock): a dict write per request;
    the database hears of it in one UPDATE per flush."""

    def __init__(self, *, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.pending: dict[int, float] = {}

    def seen(self, key_id: int) -> None:
        self.pending[key_id] = self._wall()

    def take(self) -> dict[int, float]:
        batch, self.pending = self.pending, {}
        return batch

    def put_back(self, batch: dict[int, float]) -> None:
        """After a failed flush: keep the newest time of each key for the next one."""
        for key_id, when in batch.items():
            if when > self.pending.get(key_id, 0.0):
                self.pending[key_id] = when


async def flush_usage(db: Database, usage: KeyUsage) -> int:
    batch = usage.take()
    if not batch:
        return 0
    seen = {key_id: datetime.fromtimestamp(t, UTC) for key_id, t in batch.items()}
    try:
        return await db.run(record_last_used, seen=seen)
    except DatabaseUnavailable as exc:
        usage.put_back(batch)
        log.warning("recording the API keys' last use failed, retried later: %s", exc)
        return 0


async def flush_usage_forever(
    db: Database, usage: KeyUsage, every: float = USAGE_FLUSH_SECONDS
) -> None:
    while True:
        # Jitter: replicas started together do not write in lockstep.
        await anyio.sleep(every * random.uniform(0.8, 1.2))
        await flush_usage(db, usage)
