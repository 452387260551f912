"""The cache-hit fast path, as pure ASGI in front of the whole application.

A cached answer needs none of the framework: no Request object, no routing, no middleware
stack, no exception machinery. For the two cacheable GETs with default-shaped queries and a
key this replica already knows, this answers a hit straight from the cache; anything else (a
miss, an unknown key, an odd query, a sick Redis) falls through to the full application,
which then does everything as usual. So a hit costs one Redis round trip and two ASGI sends.

A hit is still a request like any other for the HTTP metrics (recorded here, through label
children bound once), the X-Request-ID header, the access log and the server span's name.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from skillcoach.answers.bodies import recommendations_variant, weaknesses_variant
from skillcoach.api.http_metrics import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    START_KEY,
    HttpMetrics,
    access_line,
    name_server_span,
    request_id,
)
from skillcoach.api.rate_limit import RATE_DECISION, client_address
from skillcoach.api.state import AppState
from skillcoach.data.api_keys import ApiKey, hash_key, well_formed
from skillcoach.data.api_keys import Scope as KeyScope
from skillcoach.limits import LEARNER_ID, RECOMMENDATIONS_LIMIT, WEAKNESSES_LIMIT, IntParam

__all__ = ["ROUTES", "CacheHitPath"]

# Candidate paths and queries only; the values are checked against skillcoach.limits below.
_PATH = re.compile(r"/v1/learners/([1-9][0-9]{0,18})/(weaknesses|recommendations)")
_LIMIT = re.compile(rb"limit=([1-9][0-9]{0,5})")
_CONTENT_TYPE = (b"content-type", b"application/json")
LIMITS = {"weaknesses": WEAKNESSES_LIMIT, "recommendations": RECOMMENDATIONS_LIMIT}
# The route templates of the full application's two routes (api/routes/learners.py).
ROUTES = {kind: f"/v1/learners/{{learner_id}}/{kind}" for kind in LIMITS}


class CacheHitPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        state: Callable[[], AppState | None],
        registry: CollectorRegistry,
        metrics: HttpMetrics,
        traced: bool = False,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self._state = state
        self._traced = traced
        self._access_log = access_log
        self.served = Counter(
            "skillcoach_http_cache_fast_path_total",
            "Requests answered by the cache-hit fast path, by endpoint",
            ["kind"],
            registry=registry,
        )
        # kind -> (fast-path counter, request counter, latency histogram), bound once.
        self._children = {
            kind: (
                self.served.labels(kind),
                metrics.requests.labels("GET", route, "200"),
                metrics.duration.labels("GET", route),
            )
            for kind, route in ROUTES.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.fullmatch(scope["path"])
            if match is not None:
                start = time.perf_counter()
                hit = await self._hit(scope, match)
                if hit is not None:
                    body, kind, rid = hit
                    if self._traced:
                        # Before sending: the server span ends with the response.
                        name_server_span("GET", ROUTES[kind])
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                _CONTENT_TYPE,
                                (b"content-length", str(len(body)).encode()),
                                (REQUEST_ID_HEADER, rid),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": body})
                    self._record(kind, rid, time.perf_counter() - start)
                    return
                scope[START_KEY] = start
        await self.app(scope, receive, send)

    def _record(self, kind: str, rid: bytes, seconds: float) -> None:
        served, requests, duration = self._children[kind]
        served.inc()
        requests.inc()
        duration.observe(seconds)
        if self._access_log:
            access_line(
                request_id=rid, method="GET", route=ROUTES[kind], status=200, seconds=seconds
            )

    async def _hit(self, scope: Scope, match: re.Match[str]) -> tuple[bytes, str, bytes] | None:
        state = self._state()
        if state is None or state.cache is None:
            return None
        served = state.live_model.current
        if served is None or not state.settings.auth_enabled:
            return None
        authorization = rid = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == REQUEST_ID_HEADER:
                rid = value
        # From here on the full path may follow: it reuses this request id.
        rid = scope[REQUEST_ID_KEY] = request_id(((REQUEST_ID_HEADER, rid),) if rid else ())
        key = None if authorization is None else self._authorized(state, authorization)
        if key is None:
            return None
        limiter = state.limiter
        if limiter.enabled:
            # Counted here once: the full path this may fall through to reads the decision
            # (and answers a refusal with its 429) instead of counting again.
            refusal = scope[RATE_DECISION] = limiter.check(
                key_id=key.id, address=client_address(scope)
            )
            if refusal is not None:
                return None
        state.usage.seen(key.id)
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
        return None if body is None else (body, kind, rid)

    @staticmethod
    def _authorized(state: AppState, authorization: bytes) -> ApiKey | None:
        # Only keys this replica has already looked up and cached as valid (not revoked for
        # longer than the cache's TTL, not expired) with read scope; everything else goes the
        # full way (and gets its 401/403 there).
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not well_formed(token):
            return None
        _, key = state.keys.get(hash_key(token))
        return key if key is not None and key.allows(KeyScope.READ) else None


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
