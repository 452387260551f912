"""The skills and exercises catalog, held in memory by each replica (it changes rarely)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

__all__ = ["Catalog", "load_catalog"]

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Catalog:
    skill_names: dict[int, str]
    exercise_ids: IntArray  # sorted by (skill_id, id)
    exercise_skill_ids: IntArray
    exercise_difficulty: npt.NDArray[np.float64]

    def exercises_of(self, skill_ids: IntArray) -> tuple[IntArray, IntArray]:
        mask = np.isin(self.exercise_skill_ids, skill_ids)
        return self.exercise_ids[mask], self.exercise_skill_ids[mask]

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
