"""PgBouncer's admin console: one command (SHOW POOLS, SHOW STATS...) and its rows."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extras

__all__ = ["admin_query"]


def admin_query(admin_url: str, sql: str, *, timeout: int = 3) -> list[dict[str, Any]]:
    """Run one admin-console command and return its rows."""
    conn = psycopg2.connect(admin_url, connect_timeout=timeout)
    try:
        # The console speaks the simple protocol only: no BEGIN around commands.
        conn.autocommit = True
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql)
            rows = cur.fetchall() if cur.description else []
        return [dict(row) for row in rows]
    finally:
        conn.close()
