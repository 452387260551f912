"""What the lifespan opens and every request uses, as one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from starlette.requests import Request

from skillcoach.answers.learner_answers import LearnerAnswers
from skillcoach.api.auth import KeyCache, parse_bearer, require_scope
from skillcoach.api.problems import ServiceUnavailable, Unauthorized
from skillcoach.cache.store import Cache
from skillcoach.data.api_keys import ApiKey, Scope, hash_key, lookup_key
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
        if not self.settings.auth_enabled:
            return None
        key_hash = hash_key(parse_bearer(request.headers.get("authorization")))
        hit, key = self.keys.get(key_hash)
        if not hit:
            key = await self.db.run(lookup_key, key_hash=key_hash, retry=True)
            self.keys.put(key_hash, key)
        if key is None:
            raise Unauthorized("unknown or revoked API key")
        require_scope(key, scope)
        return key


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.skillcoach
    return state
