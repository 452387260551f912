"""A bare Starlette JSON endpoint: the framework's ceiling in the cache benchmark.

    python -m loadtests.bare_app --port 8101 [--skills 16]

GET /v1/learners/{id}/weaknesses answers a fixed body shaped like skillcoach's (one entry per
practised skill; --skills sets how many, so the size can match a real answer), serialised
with orjson on every request as an ordinary JSON endpoint would. Nothing else: no auth, no
middleware, no database, no Redis. Served exactly as skillcoach is (service/skillcoach/
server.py): one uvicorn process, same loop and HTTP implementations (uvicorn's defaults),
access log off, lifespan on. /healthz answers for readiness.

--count-calls counts every Python and C function call on the serving thread (sys.setprofile)
and adds GET /debug/calls with the totals so far: `python -m loadtests connections` divides
them by the requests answered. The hook slows every call, so a counted server's speed means
nothing; its counts are the point.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from types import FrameType
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from skillcoach.api.server import run_app

__all__ = ["CallCounter", "create_app", "main", "payload"]


def payload(skills: int) -> dict[str, Any]:
    """A weaknesses answer with `skills` entries (the values are fixed, the shape is real)."""
    return {
        "learner_id": 1,
        "model_version": 1,
        "skills": [
            {
                "skill_id": i,
                "skill_name": f"skill-{i:03d}",
                "mastery": 0.4321,
                "interval": [0.3012, 0.5634],
                "attempts": 7,
                "correct": 4,
                "insufficient_data": False,
                "last_practised_at": "2026-11-20T10:11:12.123456+00:00",
            }
            for i in range(1, skills + 1)
        ],
    }


class CallCounter:
    """Function calls made on the thread that installed it, by kind ("python", "c")."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def install(self) -> None:
        sys.setprofile(self._profile)

    def _profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            self.calls["python"] += 1
        elif event == "c_call":
            self.calls["c"] += 1


def create_app(skills: int = 16, counter: CallCounter | None = None) -> Starlette:
    body = payload(skills)

    async def weaknesses(request: Request) -> Response:
        return Response(orjson.dumps(body), media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    routes = [
        Route("/v1/learners/{learner_id:int}/weaknesses", weaknesses, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    if counter is not None:

        async def calls(request: Request) -> Response:
            return Response(orjson.dumps(dict(counter.calls)), media_type="application/json")

        routes.append(Route("/debug/calls", calls, methods=["GET"]))
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bare_app")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--skills", type=int, default=16, help="entries in the fixed body")
    p.add_argument("--log-level", default="warning")
    p.add_argument(
        "--no-accept-pump",
        action="store_true",
        help="uvloop's own accept only (one connection per loop iteration)",
    )
    p.add_argument(
        "--count-calls", action="store_true", help="count function calls (GET /debug/calls)"
    )
    args = p.parse_args(argv)
    counter = CallCounter() if args.count_calls else None
    if counter is not None:
        counter.install()  # this thread serves: uvicorn runs its loop here
    # skillcoach's own server settings: one process, no access log.
    run_app(
        create_app(args.skills, counter),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        accept_pump=not args.no_accept_pump,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
