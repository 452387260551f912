"""The pool file: applied at start-up, re-applied live when it changes, ignored when stale
or broken, and a resize under load fails no request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from skillcoach.data.database import PoolConfig
from skillcoach.data.pool_file import PoolFile, PoolFileError, read_pool_file, write_pool_file
from skillcoach.data.pool_watch import initial_pool
from skillcoach_operator.sizing import Budget, plan_pools
from tests.fixtures_api import Keys, run_server

FALLBACK = PoolConfig(pool_size=20, max_overflow=30, pool_timeout=2, pool_recycle=3600)


def pool(size: int, overflow: int, generation: int) -> PoolFile:
    return PoolFile(
        pool_size=size,
        max_overflow=overflow,
        pool_timeout=2,
        pool_recycle=3600,
        generation=generation,
    )


def test_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    write_pool_file(path, pool(3, 4, 7))
    assert read_pool_file(path) == pool(3, 4, 7)
    path.write_text(
        '{"pool_size": 0, "max_overflow": 1, "pool_timeout": 1, "pool_recycle": 1, "generation": 1}'
    )
    with pytest.raises(PoolFileError, match="pool_size"):
        read_pool_file(path)
    path.write_text("{")
    with pytest.raises(PoolFileError):
        read_pool_file(path)


def test_the_client_budget_is_optional_and_carried_to_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    # A file of the format before client_budget: still valid, budget unknown (0).
    path.write_text(
        '{"pool_size": 6, "max_overflow": 0, "pool_timeout": 2, "pool_recycle": 60,'
        ' "generation": 3}'
    )
    assert read_pool_file(path).client_budget is None
    assert initial_pool(path, FALLBACK)[0].client_budget == 0
    # Written without a budget, the file stays in the old format for older replicas.
    write_pool_file(path, pool(3, 4, 7))
    assert "client_budget" not in path.read_text()
    plan = plan_pools(Budget(), replicas=30)
    write_pool_file(path, PoolFile.from_plan(plan, generation=8, client_budget=950))
    assert read_pool_file(path).client_budget == 950
    config, generation = initial_pool(path, FALLBACK)
    assert (config.client_budget, config.capacity, generation) == (950, 16, 8)
    path.write_text(path.read_text().replace("950", "-1"))
    with pytest.raises(PoolFileError, match="client_budget"):
        read_pool_file(path)


def test_initial_pool_prefers_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    assert initial_pool(None, FALLBACK) == (FALLBACK, 0)
    assert initial_pool(path, FALLBACK) == (FALLBACK, 0)  # missing: settings
    write_pool_file(path, PoolFile.from_plan(plan_pools(Budget(), replicas=30), generation=4))
    config, generation = initial_pool(path, FALLBACK)
    assert generation == 4
    assert config.capacity == 16  # the per-pod cap of the sizing function


def test_resize_through_the_file_under_load(
    api_bouncer_url: str, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "pool.json"
    write_pool_file(path, pool(2, 2, 1))
    headers = {"Authorization": f"Bearer {keys.read}"}
    codes: list[int] = []
    stop = threading.Event()
    with run_server(api_bouncer_url, pool_file=str(path), pool_file_poll_seconds="0.1") as (
        base,
        _,
    ):

        def capacity() -> tuple[int, int]:
            p = httpx.get(f"{base}/v1/model-status", headers=headers).json()["pool"]
            return p["capacity"], p["generation"]

        assert capacity() == (4, 1)

        def load() -> None:
            with httpx.Client(base_url=base, headers=headers, timeout=10) as c:
                while not stop.is_set():
                    codes.append(c.get("/v1/skills").status_code)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            write_pool_file(path, pool(6, 3, 2))
            assert _eventually(lambda: capacity() == (9, 2))
            time.sleep(0.3)
            write_pool_file(path, pool(1, 1, 1))  # stale generation: ignored
            path.write_text("{broken")  # broken: ignored, the pool stays
            time.sleep(0.5)
            assert capacity() == (9, 2)
            write_pool_file(path, pool(1, 1, 3))  # shrink below the load's concurrency
            assert _eventually(lambda: capacity() == (2, 3))
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
    assert len(codes) > 50
    assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def _eventually(check: object, timeout: float = 5.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False
