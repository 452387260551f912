"""The dedicated Redis: the fixture's server answers, and it is started cache-only."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from skillcoach_devstack.redis import server_args


def test_server_is_loopback_and_persists_nothing() -> None:
    args = server_args(
        port=6390, data_dir=Path("/d"), pidfile=Path("/d/redis.pid"), logfile=Path("/d/r.log")
    )
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--port"] == "6390"
    assert pairs["--bind"] == "127.0.0.1"
    assert pairs["--save"] == ""
    assert pairs["--appendonly"] == "no"
    assert pairs["--daemonize"] == "yes"
    assert pairs["--pidfile"] == "/d/redis.pid"


@pytest.mark.integration
def test_fixture_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert client.ping()
        client.set("skillcoach:test:key", "value", ex=60)
        assert client.get("skillcoach:test:key") == b"value"
    finally:
        client.close()
    assert redis_url.startswith("redis://127.0.0.1:")
    assert not redis_url.startswith("redis://127.0.0.1:6379/")
