"""The local stack's side of the pool-sizing contract (docs/architecture.md): its connection budget,
the replicas' pool files in ROOT/.stack/pool/, and which replicas a scale starts or stops.

The sizes come from skillcoach_operator.sizing.plan_pools, the one sizing function; this module
only supplies the stack's budget and writes the result. Each write of a pool file takes a new
generation (persisted in .stack/pool/generation), so a replica never re-applies an old one.
Every file also carries the client budget it was sized against (`client_budget`: PgBouncer's
max_client_conn less the reserve), which the replicas export so that the sum of their pools
can be compared with it (skillcoach_db_pool_client_budget).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from skillcoach.data.pool_file import PoolFile, PoolFileError, read_pool_file, write_pool_file
from skillcoach_operator.sizing import Budget, PoolPlan

__all__ = [
    "PoolChange",
    "ScalePlan",
    "client_budget",
    "last_generation",
    "plan_scale",
    "pool_path",
    "prune_pool_files",
    "read_pool",
    "remove_pool_file",
    "split_by_direction",
    "stack_budget",
    "write_pools",
]

# Client connections of PgBouncer kept for everything that is not a replica: migrate, seed,
# train, apikey, the exporter's console, psql.
CLIENT_RESERVE = 50


def stack_budget(*, max_client_conn: int, max_connections: int, reserve_pool_size: int) -> Budget:
    """The budget of the stack's one PgBouncer in front of the machine's PostgreSQL.

    Server side: the stack may take half of PostgreSQL's max_connections; the other half stays
    with the test suite's own PgBouncers, direct admin connections and the superuser slots.
    PgBouncer's reserve pool comes out of the stack's half, so default_pool_size +
    reserve_pool_size (the stack's max_db_connections) is exactly that half.
    """
    half = max_connections // 2
    return Budget(
        max_client_conn=max_client_conn,
        client_reserve=min(CLIENT_RESERVE, max_client_conn - 1),
        max_connections=max_connections,
        server_reserve=max_connections - half,
        pgbouncer_replicas=1,
        pgbouncer_reserve_pool=reserve_pool_size,
    )


def client_budget(budget: Budget) -> int:
    """The client connections of PgBouncer that the replicas' pools share (plan_pools divides
    exactly this among the replicas and the surge)."""
    return budget.max_client_conn - budget.client_reserve


def pool_path(pool_dir: Path, port: int) -> Path:
    return pool_dir / f"api-{port}.json"


def _generation_file(pool_dir: Path) -> Path:
    return pool_dir / "generation"


def _read(path: Path) -> PoolFile | None:
    try:
        return read_pool_file(path)
    except PoolFileError:
        return None


def read_pool(pool_dir: Path, port: int) -> PoolFile | None:
    """The replica's pool file, or None if it is missing or invalid."""
    return _read(pool_path(pool_dir, port))


def last_generation(pool_dir: Path) -> int:
    """The newest generation written so far: the persisted counter, or a pool file's if newer
    (the counter may be lost; generations must still only grow)."""
    newest = 0
    with contextlib.suppress(FileNotFoundError, ValueError):
        newest = int(_generation_file(pool_dir).read_text().strip())
    for path in pool_dir.glob("api-*.json"):
        pool = _read(path)
        if pool is not None:
            newest = max(newest, pool.generation)
    return newest


def _persist_generation(pool_dir: Path, generation: int) -> None:
    pool_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=pool_dir, prefix=".generation.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{generation}\n")
        os.replace(tmp, _generation_file(pool_dir))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_sizes(a: PoolFile, b: PoolFile) -> bool:
    return a.model_dump(exclude={"generation"}) == b.model_dump(exclude={"generation"})


@dataclass(frozen=True, slots=True)
class PoolChange:
    port: int
    before: PoolFile | None
    after: PoolFile

    def describe(self) -> str:
        def sizes(p: PoolFile) -> str:
            return f"{p.pool_size}+{p.max_overflow}"

        was = f"{sizes(self.before)} -> " if self.before is not None else "new, "
        return (
            f"api-{self.port}: pool {was}{sizes(self.after)}"
            f" (timeout {self.after.pool_timeout:g}s, generation {self.after.generation})"
        )


def split_by_direction(
    pool_dir: Path, ports: Iterable[int], plan: PoolPlan
) -> tuple[list[int], list[int]]:
    """(ports to write before replicas are added, ports to write after surplus ones are gone).

    Shrinking pools (and new replicas' first files) go first and growing ones last, so the sum
    of all pools never exceeds the larger of the old and the new total while replicas come and
    go.
    """
    first, last = [], []
    for port in ports:
        current = _read(pool_path(pool_dir, port))
        if current is None or current.pool_size + current.max_overflow >= plan.per_pod:
            first.append(port)
        else:
            last.append(port)
    return first, last


def write_pools(
    pool_dir: Path, ports: Iterable[int], plan: PoolPlan, *, budget: int | None = None
) -> list[PoolChange]:
    """Write plan's sizes (and the client budget they were sized against) to the pool file of
    each port whose file differs (or is missing); all of them take one new generation.
    Returns what changed, nothing if nothing did."""
    wanted = PoolFile.from_plan(plan, generation=0, client_budget=budget)
    stale: list[tuple[int, PoolFile | None]] = []
    for port in ports:
        current = _read(pool_path(pool_dir, port))
        if current is None or not _same_sizes(current, wanted):
            stale.append((port, current))
    if not stale:
        return []
    generation = last_generation(pool_dir) + 1
    # The counter first: a crash between the two can only skip a generation, never reuse one.
    _persist_generation(pool_dir, generation)
    after = PoolFile.from_plan(plan, generation=generation, client_budget=budget)
    changes = []
    for port, before in stale:
        write_pool_file(pool_path(pool_dir, port), after)
        changes.append(PoolChange(port=port, before=before, after=after))
    return changes


def remove_pool_file(pool_dir: Path, port: int) -> None:
    pool_path(pool_dir, port).unlink(missing_ok=True)


def prune_pool_files(pool_dir: Path, keep: Iterable[int]) -> list[int]:
    """Remove the pool files of replicas that are not wanted any more; returns their ports."""
    wanted = set(keep)
    removed = []
    for path in sorted(pool_dir.glob("api-*.json")):
        port = path.stem.removeprefix("api-")
        if port.isdigit() and int(port) not in wanted:
            path.unlink(missing_ok=True)
            removed.append(int(port))
    return removed


@dataclass(frozen=True, slots=True)
class ScalePlan:
    start: list[int]
    keep: list[int]
    stop: list[int]


def plan_scale(current: Sequence[int], wanted: Sequence[int]) -> ScalePlan:
    """Which replica ports to start, keep and stop to go from current to wanted."""
    have, want = set(current), set(wanted)
    return ScalePlan(start=sorted(want - have), keep=sorted(want & have), stop=sorted(have - want))
