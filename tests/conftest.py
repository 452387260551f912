"""Shared fixtures: a fresh, migrated PostgreSQL database per test session (real server)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

from skillcoach.data.migrate import upgrade

pytest_plugins = ["tests.fixtures_services", "tests.fixtures_api"]

ADMIN_DSN = os.environ.get("SKILLCOACH_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _admin(sql: str) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def fresh_database(prefix: str) -> tuple[str, str]:
    """Create an empty, migrated database; returns (name, SQLAlchemy URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    return name, url


def drop_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated database shared by the session (tests must not assume it is empty)."""
    name, url = fresh_database("skillcoach_test")
    yield url
    drop_database(name)


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A migrated database of this test's own."""
    name, url = fresh_database("skillcoach_t")
    yield url
    drop_database(name)
