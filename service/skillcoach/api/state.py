"""What the lifespan opens and every request uses, as one typed object."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from starlette.requests import Request

from skillcoach.answers.learner_answers import LearnerAnswers
from skillcoach.api.auth import KeyCache, KeyUsage, parse_bearer, require_scope
from skillcoach.api.problems import ServiceUnavailable, Unauthorized
from skillcoach.api.rate_limit import RATE_DECISION, UNDECIDED, RateLimiter, client_address
from skillcoach.cache.store import Cache
from skillcoach.data.api_keys import ApiKey, Scope, hash_key, lookup_key, well_formed
from skillcoach.data.database import Database
from skillcoach.data.readiness import HealthProbe
from skillcoach.ml.live_model import LiveModel, ServedModel
from skillcoach.settings import Settings

__all__ = ["AppState", "app_state"]


@dataclass(slots=True)
class AppState:
    settings: Settings
    db: Database
    probe: HealthProbe
    live_model: LiveModel
    keys: KeyCache
    registry: CollectorRegistry
    answers: LearnerAnswers
    cache: Cache | None = None
    usage: KeyUsage = field(default_factory=KeyUsage)
    limiter: RateLimiter = field(init=False)
    # Key lookups under way, by key hash (see find_key).
    key_lookups: dict[str, asyncio.Task[ApiKey | None]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        self.limiter = RateLimiter(
            per_key=s.rate_limit_per_key,
            per_client=s.rate_limit_per_client,
            window=s.rate_limit_window_seconds,
            # The cache's own client: no second pool. Without a cache, limits are per replica.
            redis=None if self.cache is None else self.cache.client,
            registry=self.registry,
        )

    def ready(self) -> bool:
        """What /readyz answered last: database reachable at its probe, and a model loaded."""
        return self.probe.last == "ok" and self.live_model.current is not None

    def served_model(self) -> ServedModel:
        served = self.live_model.current
        if served is None:
            raise ServiceUnavailable(
                "no model is loaded yet (none promoted, or still loading)", retry_after=5
            )
        return served

    async def authenticate(self, request: Request, scope: Scope) -> ApiKey | None:
        # The hit path may have counted this request against the limits already (and then
        # fallen through on a miss, or to answer its refusal here).
        decided = request.scope.get(RATE_DECISION, UNDECIDED)
        if decided is not UNDECIDED and decided is not None:
            raise decided.problem()
        limiter = self.limiter
        if decided is UNDECIDED and limiter.client_limit:
            refusal = limiter.check_client(client_address(request.scope))
            if refusal is not None:
                raise refusal.problem()
        if not self.settings.auth_enabled:
            return None
        token = parse_bearer(request.headers.get("authorization"))
        if not well_formed(token):
            # Not a key we could have issued: no hashing, no cache entry, no lookup.
            raise Unauthorized("unknown API key (malformed: not one this service issues)")
        key_hash = hash_key(token)
        hit, key = self.keys.get(key_hash)
        if not hit:
            key = await self.find_key(key_hash)
        if key is None:
            raise Unauthorized("unknown, revoked or expired API key")
        if decided is UNDECIDED and limiter.key_limit:
            refusal = limiter.check_key(key.id)
            if refusal is not None:
                raise refusal.problem()
        self.usage.seen(key.id)
        require_scope(key, scope)
        return key

    async def find_key(self, key_hash: str) -> ApiKey | None:
        """One database lookup per key at a time: requests that miss on the same key together
        (a replica starting under load, or after an outage) share it instead of each taking a
        connection through the request gate. It runs as its own task, so a request that goes
        away does not cancel it for the others."""
        return await asyncio.shield(self.key_lookup(key_hash))

    def key_lookup(self, key_hash: str) -> asyncio.Task[ApiKey | None]:
        """The lookup of `key_hash` under way, started now if none is."""
        task = self.key_lookups.get(key_hash)
        if task is None:
            task = asyncio.ensure_future(self.db.run(lookup_key, key_hash=key_hash, retry=True))
            self.key_lookups[key_hash] = task
            task.add_done_callback(functools.partial(self._looked_up, key_hash))
        return task

    def _looked_up(self, key_hash: str, task: asyncio.Task[ApiKey | None]) -> None:
        if self.key_lookups.get(key_hash) is task:
            del self.key_lookups[key_hash]
        # exception() also marks a failure as seen when every waiter has gone away.
        if not task.cancelled() and task.exception() is None:
            self.keys.put(key_hash, task.result())


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.skillcoach
    return state
