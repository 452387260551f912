"""Bearer API keys with scopes. Only a SHA-256 of each key is stored.

Keys are 256-bit random tokens, so a fast unsalted hash is safe (there is nothing to
brute-force); a slow password hash would only add latency to every request.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Connection

__all__ = ["ApiKey", "Scope", "create_api_key", "hash_key", "lookup_key"]

KEY_PREFIX = "sk_"


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


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        # admin implies every other scope
        return scope in self.scopes or Scope.ADMIN in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(conn: Connection, *, name: str, scopes: frozenset[Scope]) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.exec_driver_sql(
        "INSERT INTO api_keys (name, key_hash, scopes) VALUES (%(n)s, %(h)s, %(s)s)",
        {"n": name, "h": hash_key(key), "s": sorted(s.value for s in scopes)},
    )
    return key


def lookup_key(conn: Connection, *, key_hash: str) -> ApiKey | None:
    row = conn.exec_driver_sql(
        "SELECT id, name, scopes FROM api_keys WHERE key_hash = %(h)s AND revoked_at IS NULL",
        {"h": key_hash},
    ).first()
    if row is None:
        return None
    return ApiKey(
        id=row.id,
        name=row.name,
        scopes=frozenset(Scope(s) for s in row.scopes if s in Scope._value2member_map_),
    )
