"""An app over a small hand-made catalog and model, so answers can be predicted exactly.

Skill 1 is hard (weight -1.5), skill 2 medium (0), skill 3 easy (+1.5); each has 4 exercises
whose weights spread around 0. The database is real PostgreSQL, created fresh for this
module, reached through a real PgBouncer in transaction mode.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from skillcoach.api.app import create_app
from skillcoach.api.state import AppState
from skillcoach.data.api_keys import Scope, create_api_key
from skillcoach.data.database import create_sync_engine
from skillcoach.data.model_registry import promote, store_model
from skillcoach.ml.model import BestLR
from skillcoach.settings import Settings, load_settings
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import free_port
from tests.conftest import drop_database, fresh_database
from tests.fixtures_services import pgbouncer_db_url

SKILL_WEIGHTS = {1: -1.5, 2: 0.0, 3: 1.5}
EX_WEIGHTS = [-0.6, -0.2, 0.2, 0.6]


def exercise_id(skill: int, k: int) -> int:
    return skill * 10 + k


def hand_model() -> BestLR:
    ex_ids, ex_skills, ex_w = [], [], []
    for s in SKILL_WEIGHTS:
        for k, w in enumerate(EX_WEIGHTS):
            ex_ids.append(exercise_id(s, k))
            ex_skills.append(s)
            ex_w.append(w)
    return BestLR.from_coefficients(
        intercept=0.5,
        skill_ids=list(SKILL_WEIGHTS),
        skill_weights=list(SKILL_WEIGHTS.values()),
        exercise_ids=ex_ids,
        exercise_skill_ids=ex_skills,
        exercise_weights=ex_w,
        count_weights=[0.4, -0.4, 0.05, -0.05],
    )


def cached_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    """A test app's settings with the Redis cache on (so the fast path runs), nothing warmed
    at start-up, a pool of 4 and no metrics port; overrides win."""
    fields: dict[str, object] = {"database_url": database_url, "environment": "test",
                                 "pool_size": 4, "metrics_port": 0, "cache_enabled": True,
                                 "redis_url": redis_url, "cache_warm_learners": 0}  # fmt: skip
    return load_settings(**{**fields, **overrides})


def give_two_answers(client: TestClient, learner: int, write_key: str) -> None:
    """Two answers (a miss on skill 1, a success on skill 2) so the learner has answers."""
    at = "2026-03-01T00:00:00+00:00"
    attempts = [
        {"exercise_id": exercise_id(1, 0), "correct": False, "answered_at": at},
        {"exercise_id": exercise_id(2, 1), "correct": True, "answered_at": at},
    ]
    r = client.post(
        f"/v1/learners/{learner}/attempts",
        json={"attempts": attempts},
        headers={"Authorization": f"Bearer {write_key}"},
    )
    assert r.status_code == 201, r.text


def app_state(client: TestClient) -> AppState:
    state: AppState = client.app.state.skillcoach  # type: ignore[attr-defined]
    return state


@dataclass(frozen=True)
class Keys:
    read: str
    write: str
    admin: str


def seed_catalog(engine: Engine) -> None:
    with engine.begin() as conn:
        for s in SKILL_WEIGHTS:
            conn.exec_driver_sql(
                "INSERT INTO skills (id, name) VALUES (%(i)s, %(n)s)", {"i": s, "n": f"skill-{s}"}
            )
            for k in range(len(EX_WEIGHTS)):
                conn.exec_driver_sql(
                    "INSERT INTO exercises (id, skill_id, difficulty, name)"
                    " VALUES (%(i)s, %(s)s, %(d)s, %(n)s)",
                    {"i": exercise_id(s, k), "s": s, "d": -EX_WEIGHTS[k], "n": f"ex-{s}-{k}"},
                )


def store_hand_model(engine: Engine) -> int:
    with engine.begin() as conn:
        version = store_model(
            conn,
            artifact=hand_model().to_artifact(),
            trained_at=datetime(2026, 1, 1, tzinfo=UTC),
            metrics={"auc": 0.75},
            feature_schema={"features": "hand-made"},
        )
        promote(conn, version=version)
    return version


@pytest.fixture(scope="module")
def api_db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    name, direct_url = fresh_database("skillcoach_api")
    engine = create_sync_engine(direct_url)
    seed_catalog(engine)
    store_hand_model(engine)
    engine.dispose()
    yield direct_url
    drop_database(name)


@pytest.fixture(scope="module")
def keys(api_db_url: str) -> Keys:
    engine = create_sync_engine(api_db_url)
    with engine.begin() as conn:
        k = Keys(
            read=create_api_key(conn, name="r", scopes=frozenset({Scope.READ})),
            write=create_api_key(conn, name="w", scopes=frozenset({Scope.READ, Scope.WRITE})),
            admin=create_api_key(conn, name="a", scopes=frozenset({Scope.ADMIN})),
        )
    engine.dispose()
    return k


@pytest.fixture(scope="module")
def api_bouncer_url(api_db_url: str, pgbouncer: PgBouncer, pg_url: str) -> str:
    """The module's database through the session's PgBouncer (transaction pooling)."""
    return pgbouncer_db_url(pgbouncer, pg_url, make_url(api_db_url).database)


@pytest.fixture(scope="module")
def client(api_bouncer_url: str, keys: Keys) -> Iterator[TestClient]:
    settings = load_settings(
        database_url=api_bouncer_url,
        environment="test",
        pool_size=4,
        max_overflow=2,
        model_refresh_seconds=0.2,
        # In-process: /metrics on the API port (the only port a TestClient has).
        metrics_port=0,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {keys.write}"
        yield c


@contextlib.contextmanager
def run_server(
    database_url: str,
    *,
    log_file: Path | None = None,
    otel: Mapping[str, str] | None = None,
    procs: list[subprocess.Popen[bytes]] | None = None,
    **env: str,
) -> Iterator[tuple[str, str]]:
    """`skillcoach serve` as a real process on free ports, configured by SKILLCOACH_* (env)
    and OTEL_* (otel) only; yields (base URL, metrics URL). Its log (stdout and stderr) goes
    to a file (a full pipe would stall it): `log_file`, kept for the caller to read, or a
    temporary one. The caller's own OTEL_* variables are not passed on. `procs`, if given,
    receives the process (to signal it and read its exit status)."""
    port, metrics_port = free_port(), free_port()
    # No drain on the way down (5 s by default, for load balancers): a test that wants one
    # asks for it; the others would each wait it out in teardown.
    env.setdefault("shutdown_drain_seconds", "0")
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SKILLCOACH_", "OTEL_"))},
        "SKILLCOACH_DATABASE_URL": database_url,
        "SKILLCOACH_PORT": str(port),
        "SKILLCOACH_METRICS_PORT": str(metrics_port),
        "SKILLCOACH_ENVIRONMENT": "test",
        "SKILLCOACH_LOG_LEVEL": "warning",
        **{f"SKILLCOACH_{k.upper()}": v for k, v in env.items()},
        **(otel or {}),
    }
    with contextlib.ExitStack() as stack:
        if log_file is None:
            log = stack.enter_context(tempfile.TemporaryFile())
        else:
            # Appending: the child's writes land at the end even after a seek of ours.
            log_file.write_bytes(b"")
            log = stack.enter_context(log_file.open("a+b"))
        proc = subprocess.Popen(
            [sys.executable, "-m", "skillcoach.cli", "serve"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if procs is not None:
            procs.append(proc)

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert proc.poll() is None, output()
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                pytest.fail(f"server did not become ready in 30 s:\n{output()}")
            yield base, f"http://127.0.0.1:{metrics_port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(api_bouncer_url: str, keys: Keys) -> Iterator[tuple[str, str]]:
    """The module's API database served by a real `skillcoach serve` process."""
    with run_server(api_bouncer_url) as urls:
        yield urls
