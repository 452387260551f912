"""Bearer API keys with scopes, expiry, revocation and last use. Only a SHA-256 of each key
is stored.

Keys are 256-bit random tokens, so a fast unsalted hash is safe (there is nothing to
brute-force); a slow password hash would only add latency to every request.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from skillcoach.data.database import Reader, single_statement

__all__ = [
    "KEY_PREFIX",
    "AmbiguousKeyName",
    "ApiKey",
    "KeyRecord",
    "Scope",
    "create_api_key",
    "hash_key",
    "list_api_keys",
    "lookup_key",
    "lookup_keys",
    "record_last_used",
    "revoke_api_keys",
    "well_formed",
]

KEY_PREFIX = "sk_"
# What create_api_key makes: the prefix and secrets.token_urlsafe(32), i.e. 32 bytes as 43
# unpadded urlsafe base64 characters. Anything else cannot be a key and is refused unhashed.
_KEY_FORMAT = re.compile(r"sk_[A-Za-z0-9_-]{43}")


class Scope(enum.StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @classmethod
    def parse_list(cls, text: str) -> frozenset[Scope]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names:
            raise ValueError("at least one scope is needed (read, write, admin)")
        bad = [n for n in names if n not in cls._value2member_map_]
        if bad:
            raise ValueError(f"unknown scope(s) {', '.join(bad)}; known: read, write, admin")
        return frozenset(cls(n) for n in names)


class AmbiguousKeyName(ValueError):
    """A name given to revoke matches more than one active key."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    scopes: frozenset[Scope]
    # Epoch seconds (wall clock) after which the key is refused, even from a cache.
    expires: float | None = None

    def allows(self, scope: Scope) -> bool:
        # admin implies every other scope
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as `apikey list` shows it: everything but its hash."""

    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def well_formed(token: str) -> bool:
    return len(token) == 46 and _KEY_FORMAT.fullmatch(token) is not None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    conn: Connection,
    *,
    name: str,
    scopes: frozenset[Scope],
    expires_at: datetime | None = None,
) -> str:
    """A new key (returned once; only its hash is stored). `expires_at` must be aware."""
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("expires_at needs a time zone")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.exec_driver_sql(
        "INSERT INTO api_keys (name, key_hash, scopes, expires_at)"
        " VALUES (%(n)s, %(h)s, %(s)s, %(e)s)",
        {"n": name, "h": hash_key(key), "s": sorted(s.value for s in scopes), "e": expires_at},
    )
    return key


_ACTIVE_KEYS = (
    "SELECT key_hash, id, name, scopes, expires_at FROM api_keys WHERE key_hash = {match}"
    " AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
)


@single_statement  # one round trip when run alone (a key-cache miss)
def lookup_key(conn: Reader, *, key_hash: str) -> ApiKey | None:
    """The active key of that hash; None for unknown, revoked and expired keys alike."""
    row = conn.exec_driver_sql(_ACTIVE_KEYS.format(match="%(h)s"), {"h": key_hash}).first()
    return None if row is None else _api_key(row)


@single_statement
def lookup_keys(conn: Reader, *, key_hashes: Sequence[str]) -> dict[str, ApiKey]:
    """The active keys among these hashes, by hash: one statement however many (the key
    cache's refresh); an unknown, revoked or expired key is absent."""
    if not key_hashes:
        return {}
    rows = conn.exec_driver_sql(
        _ACTIVE_KEYS.format(match="ANY(%(h)s)"), {"h": list(key_hashes)}
    ).all()
    return {row.key_hash: _api_key(row) for row in rows}


def _api_key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        scopes=frozenset(Scope(s) for s in row.scopes if s in Scope._value2member_map_),
        expires=None if row.expires_at is None else row.expires_at.timestamp(),
    )


def list_api_keys(conn: Connection) -> list[KeyRecord]:
    rows = conn.exec_driver_sql(
        "SELECT id, name, scopes, created_at, expires_at, last_used_at, revoked_at"
        " FROM api_keys ORDER BY id"
    ).all()
    return [
        KeyRecord(
            id=r.id,
            name=r.name,
            scopes=tuple(r.scopes),
            created_at=r.created_at,
            expires_at=r.expires_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
        )
        for r in rows
    ]


def revoke_api_keys(conn: Connection, *, ident: str, every: bool = False) -> list[int]:
    """Revoke the active key with id `ident` (all digits) or name `ident`; the ids revoked
    (empty: no active key matched). A name shared by several active keys raises
    AmbiguousKeyName unless `every` (names are labels, not unique)."""
    params: dict[str, object] = {"v": int(ident) if ident.isdigit() else ident}
    if ident.isdigit():
        where = "id = %(v)s"
    else:
        where = "name = %(v)s"
        ids = [
            r.id
            for r in conn.exec_driver_sql(
                f"SELECT id FROM api_keys WHERE {where} AND revoked_at IS NULL ORDER BY id"
                " FOR UPDATE",
                params,
            )
        ]
        if len(ids) > 1 and not every:
            listed = ", ".join(str(i) for i in ids)
            raise AmbiguousKeyName(
                f"{len(ids)} active keys are named {ident!r} (ids {listed}); revoke one by id,"
                " or all of them with --all"
            )
    rows = conn.exec_driver_sql(
        f"UPDATE api_keys SET revoked_at = now() WHERE {where} AND revoked_at IS NULL RETURNING id",
        params,
    ).all()
    return sorted(r.id for r in rows)


def record_last_used(conn: Connection, *, seen: Mapping[int, datetime]) -> int:
    """Raise last_used_at to the times in `seen` (key id -> aware time) in one statement;
    never lowers it (replicas flush in any order). Returns the rows changed."""
    if not seen:
        return 0
    ids = list(seen)
    result = conn.exec_driver_sql(
        "UPDATE api_keys AS k SET last_used_at = s.t"
        " FROM unnest(%(ids)s::int[], %(ts)s::timestamptz[]) AS s(id, t)"
        " WHERE k.id = s.id AND (k.last_used_at IS NULL OR k.last_used_at < s.t)",
        {"ids": ids, "ts": [seen[i] for i in ids]},
    )
    return int(result.rowcount)
