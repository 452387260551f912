"""/v1/skills and /v1/exercises: the paginated catalog (keyset pagination by id)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.api.auth import Scope
from skillcoach.api.params import int_param
from skillcoach.api.routes.learners import json_response
from skillcoach.api.state import app_state

__all__ = ["routes"]

MAX_INT = 2**31 - 1


def _skills_page(conn: Connection, *, after: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.exec_driver_sql(
        "SELECT s.id, s.name, count(e.id) AS exercises FROM skills s"
        " LEFT JOIN exercises e ON e.skill_id = s.id WHERE s.id > %(after)s"
        " GROUP BY s.id ORDER BY s.id LIMIT %(limit)s",
        {"after": after, "limit": limit + 1},
    ).all()
    return [{"id": r.id, "name": r.name, "exercises": r.exercises} for r in rows]


def _exercises_page(
    conn: Connection, *, after: int, limit: int, skill_id: int | None
) -> list[dict[str, Any]]:
    rows = conn.exec_driver_sql(
        "SELECT id, skill_id, difficulty FROM exercises WHERE id > %(after)s"
        " AND (%(skill)s::int IS NULL OR skill_id = %(skill)s::int) ORDER BY id LIMIT %(limit)s",
        {"after": after, "limit": limit + 1, "skill": skill_id},
    ).all()
    return [{"id": r.id, "skill_id": r.skill_id, "difficulty": r.difficulty} for r in rows]


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": items[-1]["id"] if more else None}


async def list_skills(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    after = int_param(request, "cursor", default=0, low=0, high=MAX_INT)
    items = await state.db.run(_skills_page, retry=True, after=after, limit=limit)
    return json_response(_page(items, limit))


async def list_exercises(request: Request) -> Response:
    state = app_state(request)
    await state.authenticate(request, Scope.READ)
    limit = int_param(request, "limit", default=100, low=1, high=1000)
    after = int_param(request, "cursor", default=0, low=0, high=MAX_INT)
    skill_id = (
        int_param(request, "skill_id", default=0, low=1, high=MAX_INT)
        if "skill_id" in request.query_params
        else None
    )
    items = await state.db.run(
        _exercises_page, retry=True, after=after, limit=limit, skill_id=skill_id
    )
    return json_response(_page(items, limit))


routes = [
    Route("/v1/skills", list_skills, methods=["GET"]),
    Route("/v1/exercises", list_exercises, methods=["GET"]),
]
