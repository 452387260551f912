"""The fast path, as pure ASGI in front of the whole application.

The two cacheable GETs with default-shaped queries and a key this replica already knows need
none of the framework: no Request object, no routing, no middleware stack. A hit is answered
straight from the cache: one Redis round trip and two ASGI sends. A miss (or any read with the
cache off) is computed here too, through the same admission (the request gate, the deadline)
and the same LearnerAnswers as the full route, its errors mapped by the same exception
handlers; only with tracing on does a miss take the full path (whose spans it needs).
Anything else (an unknown key, an odd query, a rate-limit refusal) falls through to the full
application, which then does everything as usual.

A miss whose answer another request is already computing (the same learner, answer and
version seen in Redis) waits for that answer here instead of at the request gate: when a hot
learner's entry ends, the hundreds of requests that find it gone together would otherwise all
queue at the gate for the one computation the first of them does (a cache stampede).

Every request answered here is still a request like any other for the HTTP metrics (recorded
here, through label children bound once), the X-Request-ID header, the access log, the
request's log context and the server span's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from skillcoach.answers.bodies import recommendations_variant, weaknesses_variant
from skillcoach.api.admission import Gatekeeper, Refused, refuse
from skillcoach.api.http_metrics import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    START_KEY,
    HttpMetrics,
    access_line,
    name_server_span,
    request_id,
)
from skillcoach.api.problems import NotFound
from skillcoach.api.rate_limit import RATE_DECISION, client_address
from skillcoach.api.responses import json_bytes_response
from skillcoach.api.state import AppState
from skillcoach.cache.store import Seen
from skillcoach.data.api_keys import ApiKey, hash_key, well_formed
from skillcoach.data.api_keys import Scope as KeyScope
from skillcoach.data.deadline import work_scope
from skillcoach.limits import LEARNER_ID, RECOMMENDATIONS_LIMIT, WEAKNESSES_LIMIT, IntParam
from skillcoach.ml.live_model import ServedModel
from skillcoach.telemetry.logs import REQUEST, RequestLog

__all__ = ["ROUTES", "CacheHitPath"]

# Candidate paths and queries only; the values are checked against skillcoach.limits below.
_PATH = re.compile(r"/v1/learners/([1-9][0-9]{0,18})/(weaknesses|recommendations)")
_LIMIT = re.compile(rb"limit=([1-9][0-9]{0,5})")
_CONTENT_TYPE = (b"content-type", b"application/json")
LIMITS = {"weaknesses": WEAKNESSES_LIMIT, "recommendations": RECOMMENDATIONS_LIMIT}
# The route templates of the full application's two routes (api/routes/learners.py).
ROUTES = {kind: f"/v1/learners/{{learner_id}}/{kind}" for kind in LIMITS}

Handler = Callable[[Request, Exception], Awaitable[Response]]
# Set in the scope by _authorized: the hash of a key this replica has not cached.
_KEY_HASH = "skillcoach.key_hash"
# A computation under way: (learner, kind, variant, version seen) -> its body, or None when
# it ended without a 200 (its followers then take the usual way).
_Flight = tuple[int, str, str, bytes | None]


@dataclass(frozen=True, slots=True)
class _Read:
    """A read the fast path may answer: authorized, in bounds, a model served."""

    state: AppState
    served: ServedModel
    kind: str
    learner_id: int
    limit: int
    variant: str
    rid: bytes


class CacheHitPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        state: Callable[[], AppState | None],
        registry: CollectorRegistry,
        metrics: HttpMetrics,
        keeper: Gatekeeper,
        handlers: dict[type[Exception], Handler],
        traced: bool = False,
        access_log: bool = False,
    ) -> None:
        self.app = app
        self._state = state
        self._keeper = keeper
        self._flights: dict[_Flight, asyncio.Future[bytes | None]] = {}
        self._handlers = handlers
        self._metrics = metrics
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
                read = self._read(scope, match)
                if read is None and (lookup := self._key_lookup(scope)) is not None:
                    # Its key is being looked up already (a replica that starts under load):
                    # wait for that here instead of joining the herd at the request gate.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(lookup)
                    read = self._read(scope, match)
                if read is None and _KEY_HASH in scope:
                    self._uncached_key()
                if read is not None:
                    cache = read.state.cache
                    body: bytes | None = None
                    seen: Seen = None
                    if cache is not None:
                        body, seen = await cache.lookup_seen(
                            learner_id=read.learner_id, kind=read.kind, variant=read.variant
                        )
                    if body is not None:
                        await self._hit(read, body, start, send)
                        return
                    if not self._traced:
                        flight = None if seen is None else self._flight_of(read, seen)
                        if flight is not None and await self._followed(read, flight, start, send):
                            return
                        await self._miss(read, start, scope, receive, send, flight)
                        return
                scope[START_KEY] = start
        await self.app(scope, receive, send)

    async def _hit(self, read: _Read, body: bytes, start: float, send: Send) -> None:
        if self._traced:
            # Before sending: the server span ends with the response.
            name_server_span("GET", ROUTES[read.kind])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _CONTENT_TYPE,
                    (b"content-length", str(len(body)).encode()),
                    (REQUEST_ID_HEADER, read.rid),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        seconds = time.perf_counter() - start
        served, requests, duration = self._children[read.kind]
        served.inc()
        requests.inc()
        duration.observe(seconds)
        if self._access_log:
            access_line(
                request_id=read.rid, method="GET", route=ROUTES[read.kind], status=200,
                seconds=seconds,
            )  # fmt: skip

    def _flight_of(self, read: _Read, seen: tuple[bytes | None]) -> _Flight:
        return (read.learner_id, read.kind, read.variant, seen[0])

    async def _followed(self, read: _Read, flight: _Flight, start: float, send: Send) -> bool:
        """Answered with the body of the same computation under way, if there is one and it
        ends with a 200 within this request's deadline; False: take the usual way."""
        leader = self._flights.get(flight)
        if leader is None:
            return False
        left = self._keeper.request_timeout - (time.perf_counter() - start)
        try:
            async with asyncio.timeout(max(0.0, left)):
                body = await asyncio.shield(leader)
        except TimeoutError:
            return False  # admission then refuses it: its deadline has passed
        if body is None:
            return False
        cache = read.state.cache
        if cache is not None:
            cache.metrics.lock_waits.labels(read.kind).inc()
        await self._hit(read, body, start, send)
        return True

    async def _miss(
        self,
        read: _Read,
        start: float,
        scope: Scope,
        receive: Receive,
        send: Send,
        flight: _Flight | None,
    ) -> None:
        """Computed here, as the full route would (api/routes/learners.py), admitted as the
        full application admits (api/admission.py). With `flight` (the lookup reached Redis),
        requests that miss the same way meanwhile wait for this one's answer (_followed)."""
        lead: asyncio.Future[bytes | None] | None = None
        if flight is not None and flight not in self._flights:
            lead = self._flights[flight] = asyncio.get_running_loop().create_future()
        try:
            await self._computed(read, start, scope, receive, send, lead)
        finally:
            if flight is not None and lead is not None:
                if not lead.done():
                    lead.set_result(None)
                if self._flights.get(flight) is lead:
                    del self._flights[flight]

    async def _computed(
        self,
        read: _Read,
        start: float,
        scope: Scope,
        receive: Receive,
        send: Send,
        lead: asyncio.Future[bytes | None] | None,
    ) -> None:
        route = ROUTES[read.kind]
        token = REQUEST.set(RequestLog(read.rid.decode(), "GET", lambda: route))
        status = 500
        try:
            try:
                deadline = await self._keeper.enter(start)
            except Refused as refused:
                status = 503
                route = "shed"
                await refuse(scope, receive, _with_request_id(send, read.rid), str(refused))
                return
            try:
                with work_scope(deadline=deadline, name=lambda: route):
                    response = await self._answer(read, scope)
            finally:
                self._keeper.leave()
            response.raw_headers.append((REQUEST_ID_HEADER, read.rid))
            status = response.status_code
            if lead is not None and status == 200:
                lead.set_result(bytes(response.body))  # its followers answer at once
            await response(scope, receive, send)
        finally:
            seconds = time.perf_counter() - start
            self._metrics.record("GET", route, status, seconds)
            if self._access_log:
                access_line(
                    request_id=read.rid, method="GET", route=route, status=status,
                    seconds=seconds,
                )  # fmt: skip
            REQUEST.reset(token)

    async def _answer(self, read: _Read, scope: Scope) -> Response:
        answers = read.state.answers
        try:
            if read.kind == "weaknesses":
                body = await answers.weaknesses(
                    read.served, learner_id=read.learner_id, limit=read.limit
                )
            else:
                body = await answers.recommendations(
                    read.served, learner_id=read.learner_id, limit=read.limit
                )
            if body is None:
                lid = read.learner_id
                raise NotFound(f"learner {lid} does not exist", learner_id=lid)
        except Exception as exc:  # mapped exactly as the full application maps it
            for cls in type(exc).__mro__:
                handler = self._handlers.get(cls)
                if handler is not None:
                    return await handler(Request(scope), exc)
            raise
        return json_bytes_response(body)

    def _read(self, scope: Scope, match: re.Match[str]) -> _Read | None:
        state = self._state()
        if state is None:
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
        rid = scope.get(REQUEST_ID_KEY) or request_id(((REQUEST_ID_HEADER, rid),) if rid else ())
        scope[REQUEST_ID_KEY] = rid
        key = None if authorization is None else self._authorized(state, authorization, scope)
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
        return _Read(state, served, kind, learner_id, limit, variant, rid)

    @staticmethod
    def _authorized(state: AppState, authorization: bytes, scope: Scope) -> ApiKey | None:
        # Only keys this replica has already looked up and cached as valid (not revoked for
        # longer than the cache's TTL, not expired) with read scope; everything else goes the
        # full way (and gets its 401/403 there).
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not well_formed(token):
            return None
        key_hash = hash_key(token)
        cached, key = state.keys.get(key_hash)
        if not cached:
            scope[_KEY_HASH] = key_hash  # for _key_lookup
        return key if key is not None and key.allows(KeyScope.READ) else None

    def _uncached_key(self) -> None:
        """Counted: a key the fast path could not serve from this replica's key cache."""
        state = self._state()
        if state is not None and state.cache is not None:
            state.cache.metrics.fallthrough["key"].inc()

    def _key_lookup(self, scope: Scope) -> asyncio.Task[ApiKey | None] | None:
        """The lookup under way of this request's uncached key, if one is; started here only
        for a key this replica held as valid until its entry lapsed (KeyCache.lapsed): a
        client back after its key's refresh failed sends a burst that would otherwise all
        take the request gate. Any other lookup starts on the full path, behind admission, so
        a flood of unknown tokens cannot reach the database past the request gate."""
        key_hash = scope.get(_KEY_HASH)
        state = self._state()
        if key_hash is None or state is None:
            return None
        lookup = state.key_lookups.get(key_hash)
        if lookup is None and state.keys.lapsed(key_hash):
            lookup = state.key_lookup(key_hash)
        return lookup


def _with_request_id(send: Send, rid: bytes) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid)]
        await send(message)

    return sender


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
