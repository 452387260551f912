"""The "db ceiling" reference app: the uncached read with nothing around it (a benchmark target).

    python -m loadtests.db_ceiling_app --port 8102 --database-url postgresql://...@pgbouncer/db

GET /v1/learners/{id}/weaknesses runs the very SELECT skillcoach's uncached weaknesses read
runs (`SKILL_EVIDENCE_SQL`) with psycopg2 through PgBouncer, in a pool of 16 threads (one
autocommit connection each, the size of skillcoach's default DB pool), and answers the rows
as JSON. Nothing else: no auth, no model, no transaction wrapper or timeout, no metrics, no
middleware. What skillcoach's cache-off replica serves is this minus everything it adds, so
cache-off / db ceiling is what the service costs over the database alone. Served exactly as
skillcoach is (one uvicorn process, access log off). /healthz answers for readiness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import psycopg2
import psycopg2.extensions
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.api.server import run_app
from skillcoach.data.learner_reads import SKILL_EVIDENCE_SQL

__all__ = ["THREADS", "create_app", "main"]

THREADS = 16


def create_app(database_url: str, threads: int = THREADS) -> Starlette:
    dsn = database_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    local = threading.local()
    opened: list[psycopg2.extensions.connection] = []
    pool = ThreadPoolExecutor(threads, thread_name_prefix="db")

    def read(learner_id: int) -> list[tuple[Any, ...]]:
        conn = getattr(local, "conn", None)
        if conn is None:  # one connection per pool thread, opened on its first read
            conn = local.conn = psycopg2.connect(dsn)
            conn.autocommit = True
            opened.append(conn)
        with conn.cursor() as cur:
            cur.execute(SKILL_EVIDENCE_SQL, {"id": learner_id})
            return cur.fetchall()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=True)
        for conn in opened:
            conn.close()

    async def weaknesses(request: Request) -> Response:
        learner_id = int(request.path_params["learner_id"])
        rows = await asyncio.get_running_loop().run_in_executor(pool, read, learner_id)
        if not rows:
            return Response(b'{"status":404}', status_code=404, media_type="application/json")
        return Response(orjson.dumps([list(r) for r in rows]), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/learners/{learner_id:int}/weaknesses", weaknesses, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.db_ceiling_app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--database-url", required=True, help="through PgBouncer")
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    app = create_app(args.database_url, args.threads)
    run_app(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
