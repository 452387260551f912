"""The cache-hit fast path, as pure ASGI in front of the whole application.

A cached answer needs none of the framework: no Request object, no routing, no middleware
stack, no exception machinery. For the two cacheable GETs with default-shaped queries and a
key this replica already knows, this answers a hit straight from the cache; anything else (a
miss, an unknown key, an odd query, a sick Redis) falls through to the full application,
which then does everything as usual. So a hit costs one Redis round trip and two ASGI sends.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from skillcoach.answers.bodies import recommendations_variant, weaknesses_variant
from skillcoach.api.state import AppState
from skillcoach.data.api_keys import Scope as KeyScope
from skillcoach.data.api_keys import hash_key
from skillcoach.limits import LEARNER_ID, RECOMMENDATIONS_LIMIT, WEAKNESSES_LIMIT, IntParam

__all__ = ["CacheHitPath"]

# Candidate paths and queries only; the values are checked against skillcoach.limits below.
_PATH = re.compile(r"/v1/learners/([1-9][0-9]{0,18})/(weaknesses|recommendations)")
_LIMIT = re.compile(rb"limit=([1-9][0-9]{0,5})")
_HEADERS = [(b"content-type", b"application/json")]
LIMITS = {"weaknesses": WEAKNESSES_LIMIT, "recommendations": RECOMMENDATIONS_LIMIT}


class CacheHitPath:
    def __init__(
        self, app: ASGIApp, *, state: Callable[[], AppState | None], registry: CollectorRegistry
    ) -> None:
        self.app = app
        self._state = state
        self.served = Counter(
            "skillcoach_http_cache_fast_path_total",
            "Requests answered by the cache-hit fast path, by endpoint",
            ["kind"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            body = await self._hit(scope)
            if body is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [*_HEADERS, (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _hit(self, scope: Scope) -> bytes | None:
        match = _PATH.fullmatch(scope["path"])
        state = self._state() if match else None
        if match is None or state is None or state.cache is None:
            return None
        served = state.live_model.current
        if served is None or not state.settings.auth_enabled or not self._authorized(state, scope):
            return None
        learner_id, kind = int(match.group(1)), match.group(2)
        limit = _limit(scope["query_string"], LIMITS[kind])
        if limit is None or learner_id not in LEARNER_ID:
            return None
        if kind == "weaknesses":
            variant = weaknesses_variant(served.version, limit)
        else:
            target = state.answers.config.recommendation_target
            variant = recommendations_variant(served.version, limit, target)
        body = await state.cache.lookup(learner_id=learner_id, kind=kind, variant=variant)
        if body is not None:
            self.served.labels(kind).inc()
        return body

    @staticmethod
    def _authorized(state: AppState, scope: Scope) -> bool:
        # Only keys this replica has already looked up and cached as valid with read scope;
        # everything else goes the full way (and gets its 401/403 there).
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return False
                hit, key = state.keys.get(hash_key(token.strip()))
                return hit and key is not None and key.allows(KeyScope.READ)
        return False


def _limit(query: bytes, bounds: IntParam) -> int | None:
    """The limit of a query that is empty or only `limit=N` in bounds; None for anything else
    (which the full path answers, with its 400 where one is due)."""
    if not query:
        return bounds.default
    match = _LIMIT.fullmatch(query)
    if match is None:
        return None
    value = int(match.group(1))
    return value if value in bounds else None
