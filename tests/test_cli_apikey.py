"""`skillcoach apikey create|list|revoke` against a real database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from skillcoach.cli import main
from skillcoach.data.api_keys import hash_key, lookup_key
from skillcoach.data.database import create_sync_engine


def _listed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["apikey", "list", "--json"]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


def test_create_list_and_revoke_keys(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", empty_pg_url)
    monkeypatch.setenv("SKILLCOACH_API_KEY_CACHE_SECONDS", "5")
    assert main(["apikey", "create", "--scope", "read", "--name", "ci", "--expires-in", "2"]) == 0
    ci_key = capsys.readouterr().out.strip()
    assert ci_key.startswith("sk_") and len(ci_key) == 46
    assert main(["apikey", "create", "--scope", "read,write", "--name", "twin"]) == 0
    assert main(["apikey", "create", "--name", "twin", "--expires-at", "2099-01-02T03:04"]) == 0
    capsys.readouterr()

    rows = _listed(capsys)
    assert [(r["id"], r["name"], r["scopes"]) for r in rows] == [
        (1, "ci", ["read"]),
        (2, "twin", ["read", "write"]),
        (3, "twin", ["read"]),
    ]
    expires = datetime.fromisoformat(rows[0]["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=2))) < timedelta(minutes=5)
    assert rows[1]["expires_at"] is None
    assert rows[2]["expires_at"] == "2099-01-02T03:04:00+00:00"  # no zone given: UTC
    assert all(r["revoked_at"] is None and r["last_used_at"] is None for r in rows)
    assert set(rows[0]) == {
        "id", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at"
    }  # fmt: skip

    # The table: a header and one line per key, no secret anywhere.
    assert main(["apikey", "list"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "SCOPES"]
    assert len(table.splitlines()) == 4
    assert ci_key not in table and hash_key(ci_key) not in table

    # A shared name is refused without --all; an id or --all works.
    assert main(["apikey", "revoke", "twin"]) == 1
    assert "2 active keys" in capsys.readouterr().err
    assert main(["apikey", "revoke", "ci"]) == 0
    assert "revoked key 1; refused by every replica within 5 s" in capsys.readouterr().out
    assert main(["apikey", "revoke", "1"]) == 1  # already revoked
    assert "no active key" in capsys.readouterr().err
    assert main(["apikey", "revoke", "twin", "--all"]) == 0
    assert capsys.readouterr().out.count("revoked key") == 2
    assert all(r["revoked_at"] is not None for r in _listed(capsys))
    engine = create_sync_engine(empty_pg_url)
    try:
        with engine.connect() as conn:
            assert lookup_key(conn, key_hash=hash_key(ci_key)) is None
    finally:
        engine.dispose()


def test_bad_expiry_is_refused_before_anything_is_written(
    empty_pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKILLCOACH_DATABASE_URL", empty_pg_url)
    assert main(["apikey", "create", "--expires-at", "2001-01-01"]) == 2
    assert "not in the future" in capsys.readouterr().err
    assert main(["apikey", "create", "--expires-at", "next tuesday"]) == 2
    assert "next tuesday" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a positive number
        main(["apikey", "create", "--expires-in", "-1"])
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["apikey", "create", "--expires-in", "1", "--expires-at", "2099-01-01"])
    capsys.readouterr()
    assert _listed(capsys) == []
