"""The naive reference app: the seed's setup, reproduced on purpose (a benchmark target only).

What makes it naive is exactly what the seed's plan found:
- an `async def` endpoint that runs a SYNC SQLAlchemy Session (psycopg2) inside the handler,
  so every DB round trip blocks the event loop;
- SQLAlchemy's default pool (pool_size=5, max_overflow=10, pool_timeout=30 s);
- straight to PostgreSQL (port 5432), no PgBouncer.

Sessions ARE closed properly (no artificial leak): the comparison is about blocking I/O and
pool defaults, not about a bug. The work per request is skillcoach's: the learner's rows of
learner_skill_stats, ranked by `weakness_columns` on the promoted model, the same JSON shape.

    python -m loadtests.naive_app --port 8100 --database-url postgresql://postgres@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.answers.bodies import weaknesses_body
from skillcoach.api.server import run_app
from skillcoach.data.model_registry import fetch_promoted
from skillcoach.data.records import SkillEvidence
from skillcoach.ml.analysis import weakness_columns
from skillcoach.ml.model import BestLR

__all__ = ["create_app", "main"]

MIN_ATTEMPTS = 5  # skillcoach's insufficient_data_attempts default
EVIDENCE_SQL = text(
    "SELECT l.id, s.skill_id, s.n_correct, s.n_incorrect, s.last_answered_at"
    " FROM learners l LEFT JOIN learner_skill_stats s ON s.learner_id = l.id"
    " WHERE l.id = :id"
)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(database_url: str) -> Starlette:
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    # The seed's engine: every pool setting left at SQLAlchemy's default (5 + 10, 30 s).
    engine: Engine = create_engine(url)
    session_factory = sessionmaker(bind=engine)
    loaded: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with engine.connect() as conn:
            record = fetch_promoted(conn)
            names = {
                int(r.id): str(r.name)
                for r in conn.exec_driver_sql("SELECT id, name FROM skills").all()
            }
        if record is None or record.artifact is None:
            raise RuntimeError("no promoted model in the database")
        loaded.update(
            model=BestLR.from_artifact(record.artifact, sha256=record.sha256),
            version=record.version,
            names=names,
        )
        yield
        engine.dispose()

    async def weaknesses(request: Request) -> Response:
        learner_id = int(request.path_params["learner_id"])
        # The seed's mistake, kept on purpose: sync I/O inside async def blocks the loop.
        session: Session
        with session_factory() as session:
            rows = session.execute(EVIDENCE_SQL, {"id": learner_id}).all()
        if not rows:
            return _json({"title": "Not Found", "status": 404}, status=404)
        rows = [r for r in rows if r.skill_id is not None]
        evidence = SkillEvidence(
            skill_ids=np.array([r.skill_id for r in rows], dtype=np.int64),
            n_correct=np.array([r.n_correct for r in rows], dtype=np.int64),
            n_incorrect=np.array([r.n_incorrect for r in rows], dtype=np.int64),
            last_answered_at=[r.last_answered_at for r in rows],
        )
        ranked = weakness_columns(loaded["model"], evidence, min_attempts=MIN_ATTEMPTS, limit=100)
        # The same body skillcoach builds, so both apps send identical bytes.
        body = weaknesses_body(learner_id, loaded["version"], loaded["names"], ranked)
        return Response(body, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/learners/{learner_id:int}/weaknesses", weaknesses, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.naive_app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--database-url", required=True, help="direct to PostgreSQL (5432)")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    # skillcoach's own server settings: one process, no access log.
    run_app(create_app(args.database_url), host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
