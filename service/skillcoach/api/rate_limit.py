"""Rate limits per API key and per client address, shared by the replicas through Redis
without a Redis call on any request.

Fixed windows of `window` seconds, aligned to the wall clock so every replica agrees on them;
a subject (a key, a client address) may make `ceil(rate * window)` requests per window. Each
replica decides alone, from memory: a request is refused when what it admitted since its last
sync plus the global total it last read reaches the limit. A background task (every
SYNC_SECONDS) adds each subject's local count to a Redis counter per (subject, window) with
INCRBY and EXPIRE in one pipeline, and reads the new global total back from the replies.

So the limit is shared within a bound: between two syncs each other replica may admit what it
has not yet reported (at most its own share of one sync interval), and across a window
boundary a subject can make up to twice the limit in one window's time (fixed windows). When
Redis fails, or the cache is off, each replica limits by its own counts only (each admits up
to the limit). Refused requests are not counted, so a client that backs off for Retry-After
is served in the next window.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from starlette.types import Scope

from skillcoach.api.problems import Problem

__all__ = [
    "RATE_DECISION",
    "UNDECIDED",
    "RateLimiter",
    "Refusal",
    "TooManyRequests",
    "client_address",
    "limit_per_window",
]

log = logging.getLogger(__name__)

SYNC_SECONDS = 0.25
# A sync that takes longer is abandoned (the next one retries); the limit stays local meanwhile.
SYNC_TIMEOUT = 1.0
LOG_EVERY_SECONDS = 60
# The ASGI scope key of the hit path's decision (a Refusal, or None for admitted): the full
# path it falls through to must not count the same request again.
RATE_DECISION = "skillcoach.rate"
UNDECIDED: Any = object()
_REDIS_PREFIX = "skillcoach:rl:"


class TooManyRequests(Problem):
    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True, slots=True)
class Refusal:
    subject: str  # "key" or "client"
    retry_after: int  # seconds to the next window

    def problem(self) -> TooManyRequests:
        what = "API key" if self.subject == "key" else "client address"
        return TooManyRequests(
            f"rate limit of this {what} reached; retry after {self.retry_after} s",
            retry_after=self.retry_after,
        )


@dataclass(slots=True)
class _Count:
    window: int
    pending: int = 0  # admitted here since the last sync
    known: int = 0  # the global total of this window at the last sync, ours included


def limit_per_window(rate: float, window: float) -> int:
    """Requests a subject may make in one window (0: no limit)."""
    # The epsilon: 8 / 3600 * 3600 must be 8, not 9, after float rounding.
    return 0 if rate <= 0 else max(1, math.ceil(rate * window - 1e-9))


def client_address(scope: Scope) -> str:
    # The TCP peer as uvicorn reports it: X-Forwarded-For only from FORWARDED_ALLOW_IPS.
    client = scope.get("client")
    return str(client[0]) if client else "-"


class RateLimiter:
    """The per-replica half: admit() is pure bookkeeping in memory; sync() is the only I/O."""

    def __init__(
        self,
        *,
        per_key: float,
        per_client: float,
        window: float,
        redis: Redis | RedisCluster | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.key_limit = limit_per_window(per_key, window)
        self.client_limit = limit_per_window(per_client, window)
        self.enabled = bool(self.key_limit or self.client_limit)
        self._redis = redis
        self._clock = clock
        self._counts: dict[str, _Count] = {}
        # Whether the last sync reached Redis (False: the limits are per replica for now).
        self.shared = False
        self._logged = -float(LOG_EVERY_SECONDS)
        self.refused = Counter(
            "skillcoach_rate_limited_total",
            "Requests answered 429 because their API key or client address reached its rate limit",
            ["subject"],
            registry=registry,
        )
        self._refused = {s: self.refused.labels(s) for s in ("key", "client")}

    def check_key(self, key_id: int) -> Refusal | None:
        if not self.key_limit:
            return None
        return self._admit("key", f"k:{key_id}", self.key_limit)

    def check_client(self, address: str) -> Refusal | None:
        if not self.client_limit:
            return None
        return self._admit("client", f"c:{address}", self.client_limit)

    def check(self, *, key_id: int, address: str) -> Refusal | None:
        """Both limits, the client's first, as the full path checks them: a request refused
        for its client is not counted against its key (one refused for its key has counted
        against its client, like one the full path then answers 401)."""
        return self.check_client(address) or self.check_key(key_id)

    def _admit(self, kind: str, subject: str, limit: int) -> Refusal | None:
        now = self._clock()
        window = int(now // self.window)
        count = self._counts.get(subject)
        if count is None or count.window != window:
            # A new object: a sync under way updates the old one, which is dropped.
            count = self._counts[subject] = _Count(window)
        if count.known + count.pending >= limit:
            self._refused[kind].inc()
            left = (window + 1) * self.window - now
            return Refusal(kind, max(1, math.ceil(left)))
        count.pending += 1
        return None

    def count(self, kind: str, ident: str | int) -> int:
        """What this replica believes `kind` ("key" or "client") `ident` made this window."""
        count = self._counts.get(f"{kind[0]}:{ident}")
        if count is None or count.window != int(self._clock() // self.window):
            return 0
        return count.known + count.pending

    async def sync(self) -> bool:
        """Report this window's local counts to Redis and learn the global totals; drop the
        counts of past windows. False (limits stay local) without Redis or when it fails."""
        window = int(self._clock() // self.window)
        batch = []
        for subject, count in list(self._counts.items()):
            if count.window == window:
                batch.append((subject, count, count.pending))
            else:
                del self._counts[subject]
        if self._redis is None or not batch:
            return False
        # Keys outlive their window a little: a replica whose clock is slightly behind still
        # adds to the same counter.
        ttl = math.ceil(self.window) + 5
        try:
            with anyio.fail_after(SYNC_TIMEOUT):
                pipe = self._redis.pipeline(transaction=False)
                for subject, _, sent in batch:
                    key = f"{_REDIS_PREFIX}{subject}:{window}"
                    pipe.incrby(key, sent)
                    pipe.expire(key, ttl)
                replies = await pipe.execute()
        except Exception as exc:  # any failure: the limits fall back to local counts
            self.shared = False
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY_SECONDS:
                self._logged = now
                log.warning(
                    "rate limit sync with Redis failed (%s: %s); limiting per replica until"
                    " it works again (logged once a minute)",
                    type(exc).__name__,
                    exc,
                )
            return False
        for i, (_, count, sent) in enumerate(batch):
            count.pending -= sent
            count.known = int(replies[2 * i])
        self.shared = True
        return True

    async def sync_forever(self) -> None:
        if not self.enabled:
            return
        while True:
            await anyio.sleep(SYNC_SECONDS)
            await self.sync()
