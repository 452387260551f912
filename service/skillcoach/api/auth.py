"""Authentication of requests: the bearer token, its scope, a per-replica cache of key lookups
and the batched record of each key's last use (the keys themselves live in
skillcoach.data.api_keys)."""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import anyio

from skillcoach.api.problems import Forbidden, Unauthorized
from skillcoach.data.api_keys import ApiKey, Scope, lookup_keys, record_last_used
from skillcoach.data.database import Database
from skillcoach.errors import DatabaseUnavailable

__all__ = [
    "KeyCache",
    "KeyUsage",
    "flush_usage_forever",
    "parse_bearer",
    "refresh_keys",
    "refresh_keys_forever",
    "require_scope",
]

log = logging.getLogger(__name__)

# Bounds of the two LRUs of KeyCache: far more valid keys than a deployment has, and enough
# unknown tokens that a scanner's repeats are answered from memory.
VALID_ENTRIES = 10_000
UNKNOWN_ENTRIES = 10_000
# A valid key served within this long is kept fresh (see KeyCache): a client that pauses for
# a few minutes does not come back to a cold cache.
KEEP_FRESH_SECONDS = 300.0
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

    A valid key used within the last `keep_fresh` seconds is refreshed before its entry ends
    (`take_used`, then `refreshed` with what the database says now, by refresh_keys_forever):
    otherwise every request carrying it would miss at once when the entry ends (or when its
    client comes back after a pause), and a busy replica would send hundreds of lookups
    through its request gate together. An entry is only ever renewed by a fresh lookup, so
    the revocation bound holds.

    A valid key whose entry ended anyway (a refresh that failed: the database was busy or
    down) is remembered as `lapsed` until it is looked up again: the fast path may start that
    lookup itself, and the burst of requests that finds the entry gone shares it instead of
    queueing at the request gate. Unknown tokens never lapse, so they cannot start one.
    """

    def __init__(
        self,
        ttl: float,
        *,
        valid_entries: int = VALID_ENTRIES,
        unknown_entries: int = UNKNOWN_ENTRIES,
        keep_fresh: float = KEEP_FRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._ttl = ttl
        self._keep_fresh = keep_fresh
        self._clock = clock
        self._wall = wall
        self._valid_max = valid_entries
        self._unknown_max = unknown_entries
        # key hash -> (cached until, key), least recently used first.
        self._valid: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        # token hash -> cached until, oldest first.
        self._unknown: OrderedDict[str, float] = OrderedDict()
        # Valid key hash -> when it was last served (clock).
        self._used: dict[str, float] = {}
        # Hashes of valid keys whose entry ended, not looked up since, oldest first.
        self._lapsed: OrderedDict[str, None] = OrderedDict()

    def get(self, key_hash: str) -> tuple[bool, ApiKey | None]:
        """(cached, key): (True, None) for a cached unknown or expired key, (False, None)
        when the database must be asked."""
        entry = self._valid.get(key_hash)
        if entry is not None:
            now = self._clock()
            if entry[0] < now:
                del self._valid[key_hash]
                self._lapsed[key_hash] = None
                if len(self._lapsed) > self._valid_max:
                    self._lapsed.popitem(last=False)
                return False, None
            key = entry[1]
            if key.expired(self._wall()):
                return True, None
            self._valid.move_to_end(key_hash)
            self._used[key_hash] = now
            return True, key
        until = self._unknown.get(key_hash)
        if until is None:
            return False, None
        if until < self._clock():
            del self._unknown[key_hash]
            return False, None
        return True, None

    def lapsed(self, key_hash: str) -> bool:
        """A valid key whose entry ended and that has not been looked up since."""
        return key_hash in self._lapsed

    def put(self, key_hash: str, key: ApiKey | None) -> None:
        until = self._clock() + self._ttl
        self._lapsed.pop(key_hash, None)
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

    def take_used(self) -> list[str]:
        """The cached valid keys served within the last `keep_fresh` seconds: the ones to
        refresh. Keys idle for longer are forgotten here and left to end."""
        since = self._clock() - self._keep_fresh
        self._used = {h: t for h, t in self._used.items() if t >= since and h in self._valid}
        return list(self._used)

    def refreshed(self, asked: Sequence[str], found: Mapping[str, ApiKey]) -> None:
        """What the database says now of the keys `asked`: a key it returned starts a new
        entry, one it did not (revoked, expired, deleted) is refused from here on."""
        for key_hash in asked:
            self.put(key_hash, found.get(key_hash))

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


async def refresh_keys(db: Database, keys: KeyCache) -> int:
    """One lookup of every key to keep fresh (KeyCache.take_used); how many were asked. A
    database error propagates, and the entries are left to end on their own (the requests
    then look their key up themselves, as after any miss)."""
    asked = keys.take_used()
    if asked:
        keys.refreshed(asked, await db.run(lookup_keys, key_hashes=asked))
    return len(asked)


async def refresh_keys_forever(db: Database, keys: KeyCache, ttl: float) -> None:
    """Refresh the keys in use every 0.4-0.6 of the cache's TTL: a key in steady use is
    renewed before its entry ends, as long as a refresh takes under 0.4 TTL. A database
    outage is logged when it starts and when it ends, not at every attempt."""
    failing = False
    while True:
        await anyio.sleep(ttl * random.uniform(0.4, 0.6))
        try:
            await refresh_keys(db, keys)
        except DatabaseUnavailable as exc:
            if not failing:
                log.warning("refreshing the cached API keys failed (they expire as usual): %s",
                            exc)  # fmt: skip
            failing = True
            continue
        if failing:
            log.info("refreshing the cached API keys works again")
        failing = False


async def flush_usage_forever(
    db: Database, usage: KeyUsage, every: float = USAGE_FLUSH_SECONDS
) -> None:
    while True:
        # Jitter: replicas started together do not write in lockstep.
        await anyio.sleep(every * random.uniform(0.8, 1.2))
        await flush_usage(db, usage)
