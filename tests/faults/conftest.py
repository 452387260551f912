"""The fault-injection suite's shared stack and its fault runner.

One real local stack (`skillcoach stack up --replicas 2`: HAProxy -> 2 replicas -> PgBouncer ->
the system PostgreSQL, cached on a 6-node Redis Cluster) in a scratch root on free ports, with
its own role and database (loadtests/local_stack.py), shared by every fault of the session:
each fault leaves it healthy again (and `healthy_stack` repairs it with `stack up` if not).

`run_fault` drives one fault under steady load (load.py): warm-up, inject, hold the fault for
a few seconds, heal it, wait until requests succeed steadily again (bounded), stop the load,
clean up, and then count in PostgreSQL what the load's acknowledged writes left there. The
figures go to the JSON results file (SKILLCOACH_FAULTS_RESULTS, default a file in the temp
dir), which `python -m loadtests.faults_report FILE` renders as the table of
docs/reliability.md.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from loadtests.harness import ADMIN_DSN, clean_env, database_dsn
from loadtests.local_stack import LocalStack, start_stack, stop_stack

from skillcoach_devstack.commands import make_haproxy, make_pgbouncer, make_redis_cluster, plan_for
from skillcoach_devstack.config import StackConfig, load_or_create_secrets
from skillcoach_devstack.haproxy import HAProxy
from skillcoach_devstack.pgbouncer import PgBouncer
from skillcoach_devstack.processes import ApiReplica, known_replicas, wait_until
from skillcoach_devstack.redis_cluster import RedisClusterNodes
from tests.faults.load import Load, LoadSpec, figures, steady_since

RESULTS_ENV = "SKILLCOACH_FAULTS_RESULTS"
LEARNERS = 60  # seeded learners the readers read
WRITERS = 3
LEARNERS_PER_WRITER = 3
WARM_UP = 2.0
WINDOW = 5.0  # how long a fault is held (or the load observed after a one-off event)
STEADY = 3.0  # recovered: this long without a failed request
RECOVERY_BOUND = 60.0  # generous: a slow, shared 2-core machine
UP_TIMEOUT = 300.0
HEALTHY_TIMEOUT = 60.0
# Replicas poll the registry this often here (default 30 s), so a promotion is seen in-window.
MODEL_REFRESH_SECONDS = "1"


def results_path() -> Path:
    raw = os.environ.get(RESULTS_ENV, "").strip()
    return Path(raw) if raw else Path(tempfile.gettempdir()) / "skillcoach-faults.json"


@dataclass
class FaultStack:
    stack: LocalStack
    cfg: StackConfig
    exercises: list[int]
    _learner_blocks: Iterator[int] = field(default_factory=lambda: itertools.count(0))

    @property
    def admin_dsn(self) -> str:
        """The stack's database, directly on PostgreSQL as the superuser."""
        return database_dsn(self.stack.database)

    def sql(
        self, statement: str, params: dict[str, Any] | None = None, *, server: bool = False
    ) -> list[tuple[Any, ...]]:
        """One autocommit statement in the stack's database (server: in the admin database,
        for what may not run inside the database it changes)."""
        conn = psycopg2.connect(ADMIN_DSN if server else self.admin_dsn, connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def replicas(self) -> list[ApiReplica]:
        return known_replicas(self.cfg.state_dir)

    def haproxy(self) -> HAProxy:
        return make_haproxy(self.cfg)

    def pgbouncer(self) -> PgBouncer:
        """The stack's PgBouncer with the pool sizes `stack up` gave it (its plan)."""
        _, plan = plan_for(self.cfg, self.stack.replicas)
        return make_pgbouncer(self.cfg, load_or_create_secrets(self.cfg.secrets_file), plan)

    def cluster(self) -> RedisClusterNodes:
        return make_redis_cluster(self.cfg)

    def up(self) -> None:
        """`stack up` again with the same settings: starts what is missing, reuses the rest."""
        result = subprocess.run(
            [sys.executable, "-m", "skillcoach.cli", "stack", "up", "--root",
             str(self.stack.root), "--replicas", str(self.stack.replicas)],
            env=clean_env() | self.stack.env, capture_output=True, text=True,
            timeout=UP_TIMEOUT, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"stack up failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )

    def lb_all_up(self) -> bool:
        states = self.haproxy().server_states()
        return (
            states is not None
            and len(states) == self.stack.replicas
            and all(s.startswith("UP") for s in states.values())
        )

    def healthy(self) -> bool:
        replicas = self.replicas()
        return (
            len(replicas) == self.stack.replicas
            and all(r.pid() is not None and r.ready() for r in replicas)
            and self.lb_all_up()
            and self.pgbouncer().healthy()
            and self.cluster().healthy(full=True)
        )

    def ensure_healthy(self) -> None:
        if wait_until(self.healthy, HEALTHY_TIMEOUT / 2, interval=0.5):
            return
        self.up()
        if not wait_until(self.healthy, HEALTHY_TIMEOUT, interval=0.5):
            raise RuntimeError("the stack did not become healthy again after `stack up`")

    def next_write_learners(self) -> list[list[int]]:
        """Fresh learner ids per fault, one disjoint block per writer (never seeded)."""
        base = 9_000_000 + next(self._learner_blocks) * 1000
        return [[base + w * 100 + j for j in range(LEARNERS_PER_WRITER)] for w in range(WRITERS)]


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    root = tmp_path_factory.mktemp("faults") / "stack"
    settings = {"SKILLCOACH_MODEL_REFRESH_SECONDS": MODEL_REFRESH_SECONDS}
    stack = start_stack(root, replicas=2, learners=LEARNERS, settings=settings)
    try:
        cfg = StackConfig.from_env(stack.root, stack.env)
        fs = FaultStack(stack=stack, cfg=cfg, exercises=[])
        fs.exercises = [int(r[0]) for r in fs.sql("SELECT id FROM exercises ORDER BY id LIMIT 40")]
        yield fs
    finally:
        stop_stack(stack)


@pytest.fixture
def healthy_stack(fault_stack: FaultStack) -> FaultStack:
    fault_stack.ensure_healthy()
    return fault_stack


@dataclass
class FaultRun:
    name: str
    load: Load
    record: dict[str, Any]
    write_learners: list[int]


Step = Callable[[Load], None]


def _count_writes(fs: FaultStack, learners: list[int]) -> tuple[set[str], int]:
    """The load's idempotency keys present in PostgreSQL and the attempts of its learners."""
    keys = {
        str(r[0])
        for r in fs.sql(
            "SELECT key FROM idempotency_keys WHERE learner_id = ANY(%(l)s)", {"l": learners}
        )
    }
    attempts = fs.sql(
        "SELECT count(*) FROM attempts WHERE learner_id = ANY(%(l)s)", {"l": learners}
    )
    return keys, int(attempts[0][0])


def _save(name: str, record: dict[str, Any]) -> None:
    path = results_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("faults"), dict):
        data = {"faults": {}}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["faults"][name] = record | {"run_at": now}
    data["updated_at"] = now
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture
def run_fault(healthy_stack: FaultStack) -> Callable[..., FaultRun]:
    fs = healthy_stack

    def run(
        name: str,
        how: str,
        inject: Step,
        heal: Step | None = None,
        *,
        cleanup: Callable[[], None] | None = None,
        window: float = WINDOW,
    ) -> FaultRun:
        writers = fs.next_write_learners()
        spec = LoadSpec(
            url=fs.stack.url,
            key=fs.stack.key,
            read_learners=list(range(1, LEARNERS + 1)),
            write_learners=writers,
            exercises=fs.exercises,
        )
        load = Load(spec)
        load.start()
        healed: float | None = None
        recovered = False
        try:
            time.sleep(WARM_UP)
            injected = time.monotonic()
            try:
                inject(load)
                time.sleep(window)
            finally:
                # A fault is always undone, even when injecting it failed half-way.
                if heal is not None:
                    heal(load)
                    healed = time.monotonic()
            since = injected if healed is None else healed
            recovered = wait_until(
                lambda: (
                    steady_since(load.events, time.monotonic()) >= STEADY
                    and time.monotonic() - since >= STEADY
                ),
                RECOVERY_BOUND,
                interval=0.2,
            )
            end = time.monotonic()
        finally:
            load.stop()
            if cleanup is not None:
                cleanup()
        learners = [learner for block in writers for learner in block]
        found_keys, found_attempts = _count_writes(fs, learners)
        acked = set(load.acks)
        record: dict[str, Any] = {
            "how": how,
            "window_s": window,
            **figures(load.events, injected=injected, healed=healed, end=end),
            "recovered": recovered,
            "acknowledged": len(acked),
            "acknowledged_attempts": sum(a.accepted for a in load.acks.values()),
            "replayed_acks": sum(1 for a in load.acks.values() if a.status == 200),
            "found": len(found_keys & set(load.sent)),
            "found_attempts": found_attempts,
            "lost": sorted(acked - found_keys),
            "unresolved": len(load.unresolved),
            "stale_reads": len(load.stale_reads),
            "stale_examples": load.stale_reads[:5],
            "stale_within_bound": load.stale_within_bound,
            "readbacks": load.readbacks,
            "unchecked_readbacks": load.unchecked,
            "unexpected": load.unexpected[:10],
        }
        _save(name, record)
        return FaultRun(name=name, load=load, record=record, write_learners=learners)

    return run
