"""Retention of idempotency keys: a key answers retries for a bounded time, then goes.

Without it the table grows with every keyed write, forever. A client must not retry a write
with the same key after the retention period (default 24 h, like the payment APIs that made
the header common): past it, the key is forgotten and the batch would be recorded again.
A batch sent without the header is keyed by its fingerprint (attempt_writes.
implicit_idempotency_key), so every write leaves a key and the same retention applies: an
identical batch within it is a replay, after it a new write.

Every replica runs the job; a transaction-scoped advisory lock lets one of them work per
round (it is released at COMMIT, so it is safe behind PgBouncer's transaction pooling), and
each round deletes in bounded batches so no statement holds locks for long.
"""

from __future__ import annotations

import logging
import random

import anyio
from prometheus_client import Counter
from sqlalchemy import Connection

from skillcoach.data.database import Database, DatabaseUnavailable

__all__ = ["PRUNE_BATCH", "prune_forever", "prune_idempotency_keys"]

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "idem" in ASCII.
PRUNE_LOCK = 0x6964656D
PRUNE_BATCH = 5000
MAX_BATCHES_PER_ROUND = 20


def prune_idempotency_keys(
    conn: Connection, *, older_than_seconds: float, batch: int
) -> int | None:
    """Delete up to `batch` keys created more than `older_than_seconds` ago; the number
    deleted, or None when another replica is pruning right now."""
    locked = conn.exec_driver_sql(
        "SELECT pg_try_advisory_xact_lock(%(k)s)", {"k": PRUNE_LOCK}
    ).scalar()
    if not locked:
        return None
    result = conn.exec_driver_sql(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM idempotency_keys"
        " WHERE created_at < now() - make_interval(secs => %(s)s) LIMIT %(n)s))",
        {"s": older_than_seconds, "n": batch},
    )
    return int(result.rowcount)


async def prune_once(
    db: Database, *, retention_seconds: float, pruned: Counter, batch: int = PRUNE_BATCH
) -> int:
    """One round: batches until a short one (or the round's cap); the keys deleted."""
    total = 0
    for _ in range(MAX_BATCHES_PER_ROUND):
        try:
            n = await db.run(
                prune_idempotency_keys, older_than_seconds=retention_seconds, batch=batch
            )
        except DatabaseUnavailable as exc:
            log.warning("idempotency key pruning skipped: %s", exc)
            break
        if n is None:
            break
        total += n
        pruned.inc(n)
        if n < batch:
            break
    return total


async def prune_forever(
    db: Database, *, retention_seconds: float, every_seconds: float, pruned: Counter
) -> None:
    while True:
        # Jittered, so replicas started together do not all try at the same moment.
        await anyio.sleep(every_seconds * random.uniform(0.8, 1.2))
        await prune_once(db, retention_seconds=retention_seconds, pruned=pruned)
