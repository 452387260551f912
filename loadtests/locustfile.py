"""Locust scenarios of realistic use: what the wrk benchmarks cannot say is how the
API holds up under a mix of clients with think time, so these model the clients themselves.

* LearnerUser: a learner app. Learners are drawn from a Zipf distribution (exponent 1.1 by
  default) over the seeded id range through one fixed permutation (loadtests/zipf_sampler.py,
  the scheme of loadtests/zipf.lua), so a few learners are hot and most are cold, as in any
  real population. Mostly reads (weaknesses ~60, recommendations ~25), some attempt batches
  of 1-5 answers (~10), which invalidate that learner's cached answers.
* DashboardUser: an operator dashboard polling /v1/model-status every few seconds; a fixed
  number of them (--dashboards), whatever the user count.

Run it through `python -m loadtests locust` (loadtests/bench_locust.py: headless, id ranges
from the stack's database, the result recorded), or directly:

    SKILLCOACH_API_KEY=... locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 50 -r 10 -t 60s --learners 2000 --exercise-min 1 --exercise-max 1000

Every request needs the key (read scope; the attempt batches write scope). A 200/201 counts as
a success only if its body is JSON with the keys the route handlers write; a 503 is a failure
labelled by its cause (load shed by the replica, database busy, the proxy's own), so the
failure table says why, not just how often.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from argparse import Namespace
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from locust import FastHttpUser, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.event import EventHook
from locust.exception import CatchResponseError
from locust.runners import WorkerRunner
from locust.stats import StatsEntry

from loadtests.zipf_sampler import ZipfLearners

WEAKNESSES = "/v1/learners/[id]/weaknesses"
RECOMMENDATIONS = "/v1/learners/[id]/recommendations"
ATTEMPTS = "/v1/learners/[id]/attempts"
MODEL_STATUS = "/v1/model-status"
REQUEST_NAMES = (WEAKNESSES, RECOMMENDATIONS, ATTEMPTS, MODEL_STATUS)

# Top-level keys each handler writes (skillcoach/answers.py, attempts.py, routes/ops.py).
WEAKNESS_KEYS = frozenset({"learner_id", "model_version", "skills"})
RECOMMENDATION_KEYS = frozenset({"learner_id", "model_version", "target", "exercises"})
ATTEMPT_KEYS = frozenset({"learner_id", "accepted", "data_version", "skills_updated"})
MODEL_STATUS_KEYS = frozenset({"status", "model_version", "pool", "cache"})

PERCENTILES = (0.5, 0.9, 0.99)
MAX_BATCH = 5
CORRECT_RATE = 0.6

_Handler = TypeVar("_Handler", bound=Callable[..., None])


def _listener(hook: EventHook) -> Callable[[_Handler], _Handler]:
    """`@hook.add_listener`, typed: locust's EventHook is not annotated."""

    def register(handler: _Handler) -> _Handler:
        hook.add_listener(handler)  # type: ignore[no-untyped-call]
        return handler

    return register


@_listener(events.init_command_line_parser)
def _options(parser: LocustArgumentParser) -> None:
    # On the parser itself: locust's extra keywords (is_secret) are unknown to argument groups.
    parser.add_argument(
        "--api-key",
        env_var="SKILLCOACH_API_KEY",
        default="",
        is_secret=True,
        help="Bearer key with read and write scope (env SKILLCOACH_API_KEY)",
    )
    parser.add_argument(
        "--learner-first",
        type=int,
        env_var="SKILLCOACH_LOCUST_LEARNER_FIRST",
        default=1,
        help="first learner id of the range requests are drawn from",
    )
    parser.add_argument(
        "--learners",
        type=int,
        env_var="SKILLCOACH_LOCUST_LEARNERS",
        default=2000,
        help="number of learner ids (learner-first .. learner-first+learners-1)",
    )
    parser.add_argument(
        "--exercise-min",
        type=int,
        env_var="SKILLCOACH_LOCUST_EXERCISE_MIN",
        default=1,
        help="lowest exercise id (every id up to --exercise-max must exist: any is posted)",
    )
    parser.add_argument(
        "--exercise-max",
        type=int,
        env_var="SKILLCOACH_LOCUST_EXERCISE_MAX",
        default=1000,
        help="highest exercise id",
    )
    parser.add_argument(
        "--zipf-exponent",
        type=float,
        env_var="SKILLCOACH_LOCUST_ZIPF_EXPONENT",
        default=1.1,
        help="skew of the learner popularity (0: uniform)",
    )
    parser.add_argument(
        "--think-min",
        type=float,
        env_var="SKILLCOACH_LOCUST_THINK_MIN",
        default=0.5,
        help="least seconds a learner waits between requests",
    )
    parser.add_argument(
        "--think-max",
        type=float,
        env_var="SKILLCOACH_LOCUST_THINK_MAX",
        default=2.0,
        help="most seconds a learner waits between requests",
    )
    parser.add_argument(
        "--dashboards",
        type=int,
        env_var="SKILLCOACH_LOCUST_DASHBOARDS",
        default=1,
        help="model-status pollers, spawned first, out of the -u users",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        env_var="SKILLCOACH_LOCUST_POLL_SECONDS",
        default=5.0,
        help="seconds between a dashboard's model-status polls",
    )
    parser.add_argument(
        "--summary-json",
        env_var="SKILLCOACH_LOCUST_SUMMARY_JSON",
        default="",
        include_in_web_ui=False,
        help="write the final stats, failures and exceptions there as JSON on quit",
    )
    parser.add_argument(
        "--seed",
        type=int,
        env_var="SKILLCOACH_LOCUST_SEED",
        default=None,
        help="base seed of the users' random streams (default: a fresh one per run)",
    )


class _Config:
    """What the users share, set once per process by the init listener."""

    options: Namespace | None = None
    environment: Environment | None = None
    learners: ZipfLearners | None = None
    user_seq = itertools.count()


@_listener(events.init)
def _configure(environment: Environment, **kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:  # locust used as a library: the caller configures _Config itself
        return
    if not options.api_key:
        raise SystemExit("no API key: pass --api-key or set SKILLCOACH_API_KEY")
    if options.learners < 1 or options.exercise_max < options.exercise_min:
        raise SystemExit("need --learners >= 1 and --exercise-min <= --exercise-max")
    if not 0 <= options.think_min <= options.think_max:
        raise SystemExit("need 0 <= --think-min <= --think-max")
    if options.dashboards < 1 or options.poll_seconds <= 0:
        # fixed_count 0 would make DashboardUser a weighted class; to run learners alone,
        # name the class: `locust -f loadtests/locustfile.py ... LearnerUser`.
        raise SystemExit("need --dashboards >= 1 and --poll-seconds > 0")
    _Config.options = options
    _Config.environment = environment
    _Config.learners = ZipfLearners.build(
        first_id=options.learner_first, n=options.learners, exponent=options.zipf_exponent
    )
    DashboardUser.fixed_count = options.dashboards


def _entry(entry: StatsEntry) -> dict[str, Any]:
    timed = entry.num_requests - entry.num_none_requests
    return {
        "method": entry.method or None,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.total_rps, 2),
        "failures_per_s": round(entry.total_fail_per_sec, 2),
        "avg_ms": round(entry.avg_response_time, 1) if timed else None,
        "max_ms": round(entry.max_response_time, 1) if timed else None,
        **{
            f"p{round(p * 100)}_ms": entry.get_response_time_percentile(p) if timed else None
            for p in PERCENTILES
        },
    }


def _error_message(error: Exception | str | None) -> str:
    if isinstance(error, CatchResponseError):
        return str(error)  # the label _check gave it
    return repr(error) if isinstance(error, Exception) else str(error)


def summary(environment: Environment) -> dict[str, Any]:
    """The run's final numbers. Written on quit, because the --csv files are rewritten only
    every second and lag the end of the run, and --json/--json-file reset the stats they
    print (and carry neither the failure messages nor the exceptions)."""
    stats = environment.stats
    runner = environment.runner
    exceptions = [] if runner is None else list(runner.exceptions.values())
    return {
        "requests": {e.name: _entry(e) for e in stats.entries.values() if e.num_requests},
        "total": _entry(stats.total),
        "failures": sorted(
            (
                {
                    "method": e.method,
                    "name": e.name,
                    "error": _error_message(e.error),
                    "occurrences": e.occurrences,
                }
                for e in stats.errors.values()
            ),
            key=lambda f: -f["occurrences"],
        ),
        "exceptions": [
            {"count": x["count"], "message": x["msg"], "traceback": x["traceback"][-3000:]}
            for x in exceptions
        ],
    }


@_listener(events.quit)
def _write_summary(exit_code: int, **kwargs: Any) -> None:
    environment, options = _Config.environment, _Config.options
    if environment is None or options is None or not options.summary_json:
        return
    if isinstance(environment.runner, WorkerRunner):
        return  # the master has the whole run's numbers
    path = Path(options.summary_json)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**summary(environment), "exit_code": exit_code}, indent=1))
    tmp.replace(path)


def _options_of() -> Namespace:
    if _Config.options is None:
        raise RuntimeError("the skillcoach options were not parsed (init listener not run)")
    return _Config.options


def _content_type(response: ResponseContextManager) -> str:
    """The Content-Type header ("" without one; the first of repeated ones)."""
    value = response.headers.get("content-type") if response.headers is not None else None
    if isinstance(value, list):
        value = value[0] if value else None
    return value or ""


def _fail(response: ResponseContextManager, message: str) -> None:
    response.failure(message)  # type: ignore[no-untyped-call]


def _succeed(response: ResponseContextManager) -> None:
    response.success()  # type: ignore[no-untyped-call]


def _failure_label(response: ResponseContextManager) -> str:
    """A stable message per cause (locust groups failures by message): no ids, no timings."""
    status = response.status_code
    content_type = _content_type(response)
    problem: dict[str, Any] = {}
    if content_type.startswith("application/problem+json"):
        try:
            problem = json.loads(response.content or b"{}")
        except ValueError:
            problem = {}
    if status == 503:
        if not problem:
            return f"503 not from skillcoach (proxy?), {content_type or 'no content type'}"
        detail = str(problem.get("detail", "")).split(":", 1)[0]
        if "concurrency limit" in detail:
            return "503 load shed: replica at its in-flight limit"
        return f"503 unavailable: {detail}"
    if problem:
        return f"{status} {problem.get('title', '')}".strip()
    return f"HTTP {status}, {content_type or 'no content type'}"


def _check(
    response: ResponseContextManager,
    *,
    expect_status: int,
    keys: frozenset[str],
    learner: int | None = None,
) -> None:
    """Mark the request: a success only with the status, JSON and the keys expected."""
    if not response.status_code:
        # No response at all (refused, reset, timed out). FastHttp also sets .error on every
        # non-2xx answer (LocustBadStatusCode), so only a missing status means a lost one.
        error = getattr(response, "error", None)
        _fail(response, f"connection error: {type(error).__name__}")
        return
    if response.status_code != expect_status:
        _fail(response, _failure_label(response))
        return
    content_type = _content_type(response)
    if not content_type.startswith("application/json"):
        _fail(response, f"{expect_status} but not JSON ({content_type or 'no content type'})")
        return
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        _fail(response, f"{expect_status} with a body that does not parse as JSON")
        return
    if not isinstance(body, dict):
        _fail(response, f"{expect_status} with a JSON {type(body).__name__}, not an object")
        return
    missing = keys - body.keys()
    if missing:
        _fail(response, f"{expect_status} without key(s) {', '.join(sorted(missing))}")
        return
    if learner is not None and body.get("learner_id") != learner:
        _fail(response, f"{expect_status} about another learner than asked")
        return
    _succeed(response)


class LearnerUser(FastHttpUser):
    """A learner's app: look at weaknesses and recommendations, now and then answer."""

    weight = 1
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = _options_of()
        seed = options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
        self.rng = random.Random(seed * 7919 + next(_Config.user_seq))
        self.auth = {"Authorization": f"Bearer {options.api_key}"}
        self.think = (options.think_min, options.think_max)
        self.exercises = (options.exercise_min, options.exercise_max)

    def wait_time(self) -> float:
        return self.rng.uniform(*self.think)

    def _learner(self) -> int:
        if _Config.learners is None:
            raise RuntimeError("the learner sampler was not built (init listener not run)")
        return _Config.learners.draw(self.rng)

    @task(60)
    def weaknesses(self) -> None:
        learner = self._learner()
        with self.client.get(
            f"/v1/learners/{learner}/weaknesses",
            name=WEAKNESSES,
            headers=self.auth,
            catch_response=True,
        ) as response:
            _check(response, expect_status=200, keys=WEAKNESS_KEYS, learner=learner)

    @task(25)
    def recommendations(self) -> None:
        learner = self._learner()
        with self.client.get(
            f"/v1/learners/{learner}/recommendations",
            name=RECOMMENDATIONS,
            headers=self.auth,
            catch_response=True,
        ) as response:
            _check(response, expect_status=200, keys=RECOMMENDATION_KEYS, learner=learner)

    @task(10)
    def attempt_batch(self) -> None:
        """1-5 answers just given (a few seconds apart, none in the future), with an
        Idempotency-Key as a retrying client sends. The key is never from the seeded stream:
        a rerun with the same --seed against the same database must not replay old batches."""
        learner = self._learner()
        now = datetime.now(UTC)
        size = self.rng.randint(1, MAX_BATCH)
        attempts = [
            {
                "exercise_id": self.rng.randint(*self.exercises),
                "correct": self.rng.random() < CORRECT_RATE,
                "answered_at": (now - timedelta(seconds=20 * (size - i))).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            }
            for i in range(size)
        ]
        with self.client.post(
            f"/v1/learners/{learner}/attempts",
            name=ATTEMPTS,
            headers={**self.auth, "Idempotency-Key": uuid.uuid4().hex},
            json={"attempts": attempts},
            catch_response=True,
        ) as response:
            _check(response, expect_status=201, keys=ATTEMPT_KEYS, learner=learner)


class DashboardUser(FastHttpUser):
    """An operator's dashboard: model status every --poll-seconds, nothing else."""

    fixed_count = 1  # replaced by --dashboards
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = _options_of()
        self.auth = {"Authorization": f"Bearer {options.api_key}"}
        self.poll = float(options.poll_seconds)

    def wait_time(self) -> float:
        return self.poll

    @task
    def model_status(self) -> None:
        with self.client.get(
            "/v1/model-status", name=MODEL_STATUS, headers=self.auth, catch_response=True
        ) as response:
            _check(response, expect_status=200, keys=MODEL_STATUS_KEYS)
