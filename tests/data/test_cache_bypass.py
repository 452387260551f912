"""The durable bypass list: a listed version is never lowered, and a repair of an older
version never erases a newer failure."""

from __future__ import annotations

import itertools

from sqlalchemy import create_engine

from skillcoach.data.cache_bypass import clear_bypass, load_bypass, record_bypass

_learners = itertools.count(7_100_000)


def test_record_keeps_the_newest_version_and_clear_is_conditional(pg_url: str) -> None:
    engine = create_engine(pg_url)
    learner = next(_learners)
    try:
        with engine.begin() as conn:
            record_bypass(conn, learner_id=learner, data_version=3)
            record_bypass(conn, learner_id=learner, data_version=2)  # a late, older failure
        with engine.begin() as conn:
            assert load_bypass(conn)[learner] == 3
            # A repair that raised version 2 must not unlist the failure of version 3.
            assert clear_bypass(conn, learner_id=learner, data_version=2) is False
        with engine.begin() as conn:
            assert load_bypass(conn)[learner] == 3
            assert clear_bypass(conn, learner_id=learner, data_version=3) is True
        with engine.begin() as conn:
            assert learner not in load_bypass(conn)
    finally:
        engine.dispose()
