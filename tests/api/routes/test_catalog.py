from __future__ import annotations

from starlette.testclient import TestClient

from skillcoach.api.schemas import ExercisePage, SkillPage


def test_skills_are_paginated(client: TestClient) -> None:
    first = SkillPage.model_validate(client.get("/v1/skills", params={"limit": 2}).json())
    assert [s.id for s in first.items] == [1, 2] and first.next_cursor == 2
    rest = SkillPage.model_validate(
        client.get("/v1/skills", params={"limit": 2, "cursor": first.next_cursor}).json()
    )
    assert [s.id for s in rest.items] == [3] and rest.next_cursor is None
    assert all(s.exercises == 4 for s in first.items + rest.items)


def test_exercises_filter_by_skill(client: TestClient) -> None:
    page = ExercisePage.model_validate(client.get("/v1/exercises", params={"skill_id": 2}).json())
    assert [e.id for e in page.items] == [20, 21, 22, 23]
    assert {e.skill_id for e in page.items} == {2}
    assert client.get("/v1/exercises", params={"skill_id": "x"}).status_code == 400
    assert client.get("/v1/exercises", params={"cursor": -1}).status_code == 400
