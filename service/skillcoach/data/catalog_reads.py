"""Reads of the skills and exercises catalog: whole, as each replica holds it in memory (it
changes rarely; two statements, one transaction), and page by page for the catalog endpoints
(one statement each: `single_statement`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from skillcoach.data.database import Reader, single_statement

__all__ = ["Catalog", "exercises_page", "load_catalog", "skills_page"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Catalog:
    skill_names: dict[int, str]
    exercise_ids: IntArray  # sorted by (skill_id, id)
    exercise_skill_ids: IntArray
    exercise_difficulty: npt.NDArray[np.float64]

    def exercises_of(self, skill_ids: IntArray) -> tuple[IntArray, IntArray]:
        """The exercises of each skill, skill by skill in the order given. Each skill's
        exercises are one contiguous run of the sorted catalog: two binary searches per skill
        instead of a membership test over the whole catalog (this runs on every request)."""
        lo = np.searchsorted(self.exercise_skill_ids, skill_ids, side="left")
        hi = np.searchsorted(self.exercise_skill_ids, skill_ids, side="right")
        lengths = hi - lo
        # Position k of skill j's run is lo[j] + k: a ramp over all runs, shifted per run.
        starts = np.cumsum(lengths) - lengths
        rows = np.arange(int(lengths.sum())) + np.repeat(lo - starts, lengths)
        return self.exercise_ids[rows], self.exercise_skill_ids[rows]

    def __len__(self) -> int:
        return len(self.exercise_ids)


def load_catalog(conn: Connection) -> Catalog:
    skills = conn.exec_driver_sql("SELECT id, name FROM skills").all()
    rows = conn.exec_driver_sql(
        "SELECT id, skill_id, difficulty FROM exercises ORDER BY skill_id, id"
    ).all()
    return Catalog(
        skill_names={int(r.id): str(r.name) for r in skills},
        exercise_ids=np.array([r.id for r in rows], dtype=np.int64),
        exercise_skill_ids=np.array([r.skill_id for r in rows], dtype=np.int64),
        exercise_difficulty=np.array([r.difficulty for r in rows], dtype=np.float64),
    )


@single_statement
def skills_page(conn: Reader, *, after: int, limit: int) -> list[dict[str, Any]]:
    """Skills after id `after`, by id: up to limit + 1 rows (the extra one says "more")."""
    rows = conn.exec_driver_sql(
        "SELECT s.id, s.name, count(e.id) AS exercises FROM skills s"
        " LEFT JOIN exercises e ON e.skill_id = s.id WHERE s.id > %(after)s"
        " GROUP BY s.id ORDER BY s.id LIMIT %(limit)s",
        {"after": after, "limit": limit + 1},
    ).all()
    return [{"id": r.id, "name": r.name, "exercises": r.exercises} for r in rows]


@single_statement
def exercises_page(
    conn: Reader, *, after: int, limit: int, skill_id: int | None
) -> list[dict[str, Any]]:
    """Exercises after id `after` (of one skill, if given), by id: up to limit + 1 rows."""
    rows = conn.exec_driver_sql(
        "SELECT id, skill_id, difficulty FROM exercises WHERE id > %(after)s"
        " AND (%(skill)s::int IS NULL OR skill_id = %(skill)s::int) ORDER BY id LIMIT %(limit)s",
        {"after": after, "limit": limit + 1, "skill": skill_id},
    ).all()
    return [{"id": r.id, "skill_id": r.skill_id, "difficulty": r.difficulty} for r in rows]
