"""Authentication of requests: the bearer token, its scope, and a per-replica cache of key
lookups (the keys themselves live in skillcoach.data.api_keys)."""

from __future__ import annotations

import time
from collections.abc import Callable

from skillcoach.api.problems import Forbidden, Unauthorized
from skillcoach.data.api_keys import ApiKey, Scope

__all__ = ["KeyCache", "parse_bearer", "require_scope"]


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
    """Per-replica TTL cache of key lookups, so authentication rarely costs a DB checkout.

    A revoked key stops working within `ttl` seconds on every replica.
    """

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}

    def get(self, key_hash: str) -> tuple[bool, ApiKey | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < self._clock():
            return False, None
        return True, entry[1]

    def put(self, key_hash: str, value: ApiKey | None) -> None:
        if len(self._entries) > 10_000:  # bound memory against a flood of random keys
            self._entries.clear()
        self._entries[key_hash] = (self._clock() + self._ttl, value)
