"""Retention of idempotency keys: what is old goes, in batches, one replica at a time, and a
running server does it on its own."""

from __future__ import annotations

import time

import httpx
import psycopg2
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from skillcoach.data.idempotency import PRUNE_LOCK, prune_idempotency_keys
from tests.fixtures_api import Keys, run_server

DAY = 86_400


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _insert(url: str, keys: list[tuple[str, int]]) -> None:
    """(key, age in seconds) rows for learner 1."""
    conn = psycopg2.connect(_libpq(url))
    try:
        with conn, conn.cursor() as cur:
            for key, age in keys:
                cur.execute(
                    "INSERT INTO idempotency_keys (learner_id, key, request_sha256, response,"
                    " created_at) VALUES (1, %s, 'h', '{}', now() - make_interval(secs => %s))",
                    (key, age),
                )
    finally:
        conn.close()


def _keys(url: str) -> set[str]:
    conn = psycopg2.connect(_libpq(url))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT key FROM idempotency_keys")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def test_old_keys_go_in_batches_and_fresh_ones_stay(empty_pg_url: str) -> None:
    _insert(empty_pg_url, [(f"old-{i}", 2 * DAY) for i in range(7)] + [("fresh", 60)])
    engine = create_engine(empty_pg_url)
    try:
        deleted = []
        for _ in range(4):
            with engine.begin() as conn:
                deleted.append(prune_idempotency_keys(conn, older_than_seconds=DAY, batch=3))
        assert deleted == [3, 3, 1, 0]
    finally:
        engine.dispose()
    assert _keys(empty_pg_url) == {"fresh"}


def test_a_replica_already_pruning_keeps_the_others_out(empty_pg_url: str) -> None:
    _insert(empty_pg_url, [("old", 2 * DAY)])
    holder = psycopg2.connect(_libpq(empty_pg_url))
    engine = create_engine(empty_pg_url)
    try:
        with holder.cursor() as cur:  # a transaction holding the prune lock
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,))
            assert cur.fetchone() == (True,)
            with engine.begin() as conn:
                assert prune_idempotency_keys(conn, older_than_seconds=DAY, batch=10) is None
        holder.rollback()  # released with its transaction
        with engine.begin() as conn:
            assert prune_idempotency_keys(conn, older_than_seconds=DAY, batch=10) == 1
    finally:
        holder.close()
        engine.dispose()


@pytest.mark.integration
def test_a_running_server_prunes_on_its_own(api_bouncer_url: str, keys: Keys) -> None:
    direct = api_bouncer_url  # PgBouncer in front: the advisory lock is transaction-scoped
    _insert(direct, [("srv-old", 2 * DAY), ("srv-fresh", 10)])
    env = {"idempotency_prune_seconds": "0.2", "idempotency_retention_seconds": "3600"}
    with run_server(api_bouncer_url, **env) as (_base, metrics):
        deadline = time.monotonic() + 15
        while "srv-old" in _keys(direct) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "srv-old" not in _keys(direct)
        assert "srv-fresh" in _keys(direct)
        text = httpx.get(f"{metrics}/metrics").text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith("skillcoach_idempotency_keys_pruned_total ")
        )
        assert float(line.split()[-1]) >= 1
