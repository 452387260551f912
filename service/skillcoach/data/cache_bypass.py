"""The durable list of learners whose cache version raise Redis did not take.

A write commits, then raises the learner's version in Redis. When that raise fails (Redis
refused it, timed out, or no replica acknowledged it in time), the learner is listed here in
its own short transaction before the write is acknowledged. Every replica reloads the list
about once a second and serves listed learners from PostgreSQL, skipping Redis; any replica
re-raises the version and removes the row only if the raise landed, and only if no newer
failure has been recorded since (the delete is conditional on data_version).
"""

from __future__ import annotations

from sqlalchemy import Connection

__all__ = ["clear_bypass", "load_bypass", "record_bypass"]


def record_bypass(conn: Connection, *, learner_id: int, data_version: int) -> None:
    """List the learner with the version Redis did not take (never lowering a listed one)."""
    conn.exec_driver_sql(
        "INSERT INTO cache_bypass (learner_id, data_version) VALUES (%(l)s, %(v)s)"
        " ON CONFLICT (learner_id) DO UPDATE SET"
        "  data_version = greatest(cache_bypass.data_version, excluded.data_version),"
        "  recorded_at = now()",
        {"l": learner_id, "v": data_version},
    )


def load_bypass(conn: Connection, *, limit: int = 100_000) -> dict[int, int]:
    """learner_id -> the version to raise; bounded, the oldest first (a list this long means
    Redis has been failing for a while, and the repair works through it in that order)."""
    rows = conn.exec_driver_sql(
        "SELECT learner_id, data_version FROM cache_bypass ORDER BY recorded_at LIMIT %(n)s",
        {"n": limit},
    )
    return {int(r.learner_id): int(r.data_version) for r in rows}


def clear_bypass(conn: Connection, *, learner_id: int, data_version: int) -> bool:
    """Unlist the learner once Redis holds `data_version`; a newer failure listed since (a
    higher data_version) stays. True if the row went."""
    result = conn.exec_driver_sql(
        "DELETE FROM cache_bypass WHERE learner_id = %(l)s AND data_version <= %(v)s",
        {"l": learner_id, "v": data_version},
    )
    return bool(result.rowcount)
