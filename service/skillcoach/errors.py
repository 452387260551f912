"""The errors skillcoach raises on purpose, in one tree.

    SkillcoachError
    ├── InvalidInput            the caller sent something we refuse (HTTP 422)
    ├── IdempotencyConflict     a reused Idempotency-Key with another batch (HTTP 409)
    └── DatabaseUnavailable     the database cannot serve this now; retry later (HTTP 503)
        ├── ConnectionLost      PgBouncer/PostgreSQL unreachable or dropped us (retryable)
        ├── QueryTimeout        statement_timeout cancelled the transaction
        ├── PoolExhausted       no pooled connection free within pool_timeout
        └── DeadlineExceeded    the deadline passed before the work could start or finish

They carry data, never HTTP: the API maps each to its status and problem+json at the edge
(skillcoach.api.error_handlers), so the data and ML layers stay usable from the CLI and jobs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConnectionLost",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "IdempotencyConflict",
    "InvalidInput",
    "PoolExhausted",
    "QueryTimeout",
    "SkillcoachError",
]


class SkillcoachError(Exception):
    """Base of every error skillcoach raises on purpose."""


class InvalidInput(SkillcoachError):
    """Well-formed input that breaks a rule of the domain (an unknown exercise, a timestamp
    from the future). `details` are the machine-readable facts behind the message."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class IdempotencyConflict(SkillcoachError):
    """An Idempotency-Key already used for a different batch of the same learner."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class DatabaseUnavailable(SkillcoachError):
    """The database cannot serve this request now; answer 503 and let the client retry."""


class ConnectionLost(DatabaseUnavailable):
    """PgBouncer or PostgreSQL could not be reached (or dropped us): transient, retryable."""


class QueryTimeout(DatabaseUnavailable):
    """statement_timeout cancelled the transaction: the database is too slow right now."""


class PoolExhausted(DatabaseUnavailable):
    """No pooled connection became free within pool_timeout."""


class DeadlineExceeded(DatabaseUnavailable):
    """The deadline passed before the database work could start or finish."""
