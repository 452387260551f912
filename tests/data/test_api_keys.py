"""API keys in PostgreSQL: lookup refuses revoked and expired keys, listing never shows a
secret, revocation by id or name, batched last use, the 0003 migration, the key format."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import Engine

from skillcoach.data.api_keys import (
    AmbiguousKeyName,
    ApiKey,
    KeyRecord,
    Scope,
    create_api_key,
    hash_key,
    list_api_keys,
    lookup_key,
    lookup_keys,
    record_last_used,
    revoke_api_keys,
    well_formed,
)
from skillcoach.data.database import create_sync_engine
from skillcoach.data.migrate import alembic_config

READ = frozenset({Scope.READ})


@pytest.fixture
def engine(empty_pg_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(empty_pg_url)
    yield engine
    engine.dispose()


def _create(engine: Engine, name: str, expires_at: datetime | None = None) -> str:
    with engine.begin() as conn:
        return create_api_key(conn, name=name, scopes=READ, expires_at=expires_at)


def _lookup(engine: Engine, key: str) -> ApiKey | None:
    with engine.begin() as conn:
        return lookup_key(conn, key_hash=hash_key(key))


def test_lookup_refuses_revoked_and_expired_keys(engine: Engine) -> None:
    live = _create(engine, "live")
    later = _create(engine, "later", datetime.now(UTC) + timedelta(days=1))
    gone = _create(engine, "gone", datetime.now(UTC) - timedelta(seconds=1))
    found = _lookup(engine, later)
    assert found is not None and found.name == "later" and found.expires is not None
    # The expiry travels with the key, so a cache can refuse it without asking again.
    assert found.expired(found.expires) and not found.expired(found.expires - 1)
    assert _lookup(engine, gone) is None
    assert _lookup(engine, live) is not None
    with engine.begin() as conn:
        assert revoke_api_keys(conn, ident="live") != []
    assert _lookup(engine, live) is None
    with pytest.raises(ValueError, match="time zone"), engine.begin() as conn:
        create_api_key(conn, name="naive", scopes=READ, expires_at=datetime(2030, 1, 1))


def test_many_keys_are_looked_up_in_one_statement_active_ones_only(engine: Engine) -> None:
    live, later = (
        _create(engine, "m-live"),
        _create(engine, "m-later", datetime.now(UTC) + timedelta(days=1)),
    )
    gone = _create(engine, "m-gone", datetime.now(UTC) - timedelta(seconds=1))
    revoked = _create(engine, "m-revoked")
    with engine.begin() as conn:
        assert revoke_api_keys(conn, ident="m-revoked") != []
    hashes = [hash_key(k) for k in (live, later, gone, revoked, "sk_never-issued")]
    with engine.begin() as conn:
        found = lookup_keys(conn, key_hashes=hashes)
        assert lookup_keys(conn, key_hashes=[]) == {}
    assert set(found) == {hash_key(live), hash_key(later)}
    # Each the same ApiKey a single lookup gives.
    assert found[hash_key(later)] == _lookup(engine, later)
    assert found[hash_key(live)] == _lookup(engine, live)


def test_list_shows_everything_but_the_secret(engine: Engine) -> None:
    key = _create(engine, "listed", datetime(2031, 1, 2, tzinfo=UTC))
    with engine.begin() as conn:
        records = list_api_keys(conn)
    assert [r.name for r in records] == ["listed"]
    r = records[0]
    assert r.scopes == ("read",) and r.expires_at == datetime(2031, 1, 2, tzinfo=UTC)
    assert r.last_used_at is None and r.revoked_at is None and r.created_at is not None
    assert {f.name for f in fields(KeyRecord)} == {
        "id", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"
    }  # fmt: skip
    assert hash_key(key) not in repr(records) and key not in repr(records)


def test_revoke_by_id_by_name_and_refuse_an_ambiguous_name(engine: Engine) -> None:
    _create(engine, "one")
    _create(engine, "twin")
    _create(engine, "twin")
    with engine.begin() as conn:
        ids = {r.name: r.id for r in list_api_keys(conn)}
    with engine.begin() as conn:
        assert revoke_api_keys(conn, ident=str(ids["one"])) == [ids["one"]]
        # Already revoked: nothing more to do, and the first revocation time stays.
        assert revoke_api_keys(conn, ident=str(ids["one"])) == []
    with pytest.raises(AmbiguousKeyName, match="2 active keys"), engine.begin() as conn:
        revoke_api_keys(conn, ident="twin")
    with engine.begin() as conn:
        assert all(r.revoked_at is None for r in list_api_keys(conn) if r.name == "twin")
        assert len(revoke_api_keys(conn, ident="twin", every=True)) == 2
        assert revoke_api_keys(conn, ident="nobody") == []
        assert all(r.revoked_at is not None for r in list_api_keys(conn))


def test_last_use_is_one_update_that_never_goes_back(engine: Engine) -> None:
    _create(engine, "a")
    _create(engine, "b")
    with engine.begin() as conn:
        a, b = (r.id for r in list_api_keys(conn))
    t1 = datetime(2030, 5, 1, 12, tzinfo=UTC)
    with engine.begin() as conn:
        assert record_last_used(conn, seen={a: t1, b: t1, 999: t1}) == 2
        # A replica flushing an older time later changes nothing.
        assert record_last_used(conn, seen={a: t1 - timedelta(minutes=1)}) == 0
        assert record_last_used(conn, seen={b: t1 + timedelta(minutes=1)}) == 1
        assert record_last_used(conn, seen={}) == 0
        used = {r.id: r.last_used_at for r in list_api_keys(conn)}
    assert used == {a: t1, b: t1 + timedelta(minutes=1)}


def test_migration_0003_goes_down_and_up(empty_pg_url: str, engine: Engine) -> None:
    def columns() -> set[str]:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'"
            )
            return {r[0] for r in rows}

    assert {"expires_at", "last_used_at"} <= columns()
    config = alembic_config(empty_pg_url)
    command.downgrade(config, "0002")
    assert not {"expires_at", "last_used_at"} & columns()
    command.upgrade(config, "head")
    assert {"expires_at", "last_used_at"} <= columns()


def test_every_generated_key_is_well_formed_and_near_misses_are_not() -> None:
    # The format create_api_key uses, many times over (random lengths would show here).
    assert all(well_formed("sk_" + secrets.token_urlsafe(32)) for _ in range(2000))
    good = "sk_" + secrets.token_urlsafe(32)
    for bad in (
        "",
        "sk_",
        "sk_wrong",
        good[:-1],
        good + "A",
        "pk_" + good[3:],
        good[:10] + "+" + good[11:],  # not urlsafe base64
        good[:10] + "=" + good[11:],
        good[:10] + "é" + good[11:],
        " " + good[1:],
    ):
        assert not well_formed(bad), bad
