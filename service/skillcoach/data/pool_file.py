"""The pool file: a small JSON document the operator (or the local stack) writes and each
replica watches, so pool sizes change without a restart.

    {"pool_size": 16, "max_overflow": 0, "pool_timeout": 2, "pool_recycle": 3600,
     "generation": 7, "client_budget": 950}

`generation` only grows; a replica ignores a file whose generation is not newer than the one
it applied, so a stale ConfigMap projection can never undo a newer decision.

`client_budget` (optional; files without it stay valid) is PgBouncer's client budget the
pool was sized against: the replica exports it (skillcoach_db_pool_client_budget) so that the
sum of the replicas' pool maximums can be compared with it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["PlannedPool", "PoolFile", "PoolFileError", "read_pool_file", "write_pool_file"]


class PlannedPool(Protocol):
    """What a sizing decision (skillcoach_operator.sizing) gives one pod; the service only
    reads pool files, it never sizes pools itself."""

    @property
    def pool_size(self) -> int: ...
    @property
    def max_overflow(self) -> int: ...
    @property
    def pool_timeout(self) -> float: ...
    @property
    def pool_recycle(self) -> int: ...


class PoolFileError(ValueError):
    """The pool file is unreadable or invalid; the replica keeps its current pool."""


class PoolFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    pool_size: int = Field(ge=1, le=1000)
    max_overflow: int = Field(ge=0, le=1000)
    pool_timeout: float = Field(gt=0, le=60)
    pool_recycle: int = Field(ge=-1)
    generation: int = Field(ge=0)
    client_budget: int | None = Field(default=None, ge=0)

    @classmethod
    def from_plan(
        cls, plan: PlannedPool, *, generation: int, client_budget: int | None = None
    ) -> PoolFile:
        return cls(
            pool_size=plan.pool_size,
            max_overflow=plan.max_overflow,
            pool_timeout=plan.pool_timeout,
            pool_recycle=plan.pool_recycle,
            generation=generation,
            client_budget=client_budget,
        )


def read_pool_file(path: Path) -> PoolFile:
    try:
        return PoolFile.model_validate(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        raise PoolFileError(f"{path}: no such file") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PoolFileError(f"{path}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise PoolFileError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def write_pool_file(path: Path, pool: PoolFile) -> None:
    """Atomic replace: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            # Without a budget the file is exactly what older replicas wrote and read.
            f.write(orjson.dumps(pool.model_dump(exclude_none=True), option=orjson.OPT_INDENT_2))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
