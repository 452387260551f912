"""`python -m loadtests locust`: the realistic-use scenarios (loadtests/locustfile.py) against a
running stack, headless, the result recorded like every other benchmark.

    python -m loadtests locust [--users 50] [--spawn-rate 10] [--duration 60] [--host URL]

Defaults come from the stack `make up` started: SKILLCOACH_URL and SKILLCOACH_API_KEY from
ROOT/.stack/env, the learner and exercise id ranges queried from its
SKILLCOACH_DIRECT_DATABASE_URL (each can be given instead). Locust runs as a subprocess:
importing it monkeypatches the standard library with gevent, which must not happen to the
caller (a pytest process, or a runner with threads and signals of its own). Its stats come
back through the locustfile's own --summary-json, written on quit (locust's --csv files lag
the end of the run by up to a second, its --json carries no failure messages), and the run is
bounded by a subprocess timeout. Writes
loadtests/results/locust-<utc stamp>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from loadtests.cache_tools import id_ranges
from loadtests.recording import record
from loadtests.sampler import Sampler, summarize
from skillcoach_devstack.envfile import read_env

__all__ = ["main", "markdown", "run_locust"]

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
STACK_ENV = ROOT / ".stack" / "env"
STOP_TIMEOUT_S = 5  # users finish the request in flight when the run time is up
STARTUP_MARGIN_S = 60  # locust's import and start-up, the summary and the CSV files
TAIL = 3000


def read_summary(path: Path, output: str) -> dict[str, Any]:
    """The locustfile's --summary-json (written on quit): per-name stats, total, errors."""
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"locust wrote no summary to {path}:\n{output[-TAIL:]}") from None
    summary.pop("exit_code", None)
    return summary


def _locust_env(key: str) -> dict[str, str]:
    """The caller's environment without its SKILLCOACH_*/LOCUST_* settings (the command line
    is the whole configuration), the key passed here rather than in argv (ps shows argv),
    and the repository root importable (the locustfile imports loadtests.zipf_sampler)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKILLCOACH_", "LOCUST_"))}
    env["SKILLCOACH_API_KEY"] = key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore"  # deprecation noise from gevent & co. in the log
    return env


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL locust's process group (its own session, so only what it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def run_locust(
    host: str,
    key: str,
    *,
    learner_first: int,
    learners: int,
    exercise_min: int,
    exercise_max: int,
    users: int = 50,
    spawn_rate: float = 10.0,
    duration: int = 60,
    zipf_exponent: float = 1.1,
    think_min: float = 0.5,
    think_max: float = 2.0,
    dashboards: int = 1,
    poll_seconds: float = 5.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """One headless locust run of loadtests/locustfile.py against host; its stats as a dict.

    Raises RuntimeError with locust's output if it exits non-zero or writes no stats, and
    TimeoutError (after killing it) if it outlives duration + STOP_TIMEOUT_S + a margin."""
    if duration < 1 or users < 1 or spawn_rate <= 0:
        raise ValueError("need duration >= 1 s, users >= 1 and spawn_rate > 0")
    with tempfile.TemporaryDirectory(prefix="skillcoach-locust-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        log_path = Path(tmp) / "locust.log"
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            host,
            "--users",
            str(users),
            "--spawn-rate",
            f"{spawn_rate:g}",
            "--run-time",
            f"{duration}s",
            "--stop-timeout",
            str(STOP_TIMEOUT_S),
            "--only-summary",
            "--summary-json",
            str(summary_path),
            # Failures are read from the summary: a non-zero exit means locust itself failed.
            "--exit-code-on-error",
            "0",
            "--learner-first",
            str(learner_first),
            "--learners",
            str(learners),
            "--exercise-min",
            str(exercise_min),
            "--exercise-max",
            str(exercise_max),
            "--zipf-exponent",
            f"{zipf_exponent:g}",
            "--think-min",
            f"{think_min:g}",
            "--think-max",
            f"{think_max:g}",
            "--dashboards",
            str(dashboards),
            "--poll-seconds",
            f"{poll_seconds:g}",
        ]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        timeout = duration + STOP_TIMEOUT_S + STARTUP_MARGIN_S
        started = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=_locust_env(key),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise TimeoutError(
                    f"locust overran {timeout} s:\n{log_path.read_text(errors='replace')[-TAIL:]}"
                ) from None
            except BaseException:  # interrupted: no locust left behind either
                _kill(proc)
                raise
        wall = time.monotonic() - started
        output = log_path.read_text(errors="replace")
        if returncode != 0:
            raise RuntimeError(f"locust exited {returncode}:\n{output[-TAIL:]}")
        stats = read_summary(summary_path, output)
    return {
        "params": {
            "host": host,
            "users": users,
            "spawn_rate": spawn_rate,
            "duration_s": duration,
            "learners": {"first": learner_first, "count": learners},
            "exercises": {"min": exercise_min, "max": exercise_max},
            "zipf_exponent": zipf_exponent,
            "think_s": [think_min, think_max],
            "dashboards": dashboards,
            "poll_seconds": poll_seconds,
            "seed": seed,
            "locust": version("locust"),
        },
        **stats,
        "wall_s": round(wall, 1),
        "log_tail": output[-TAIL:],
    }


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"Locust, realistic use: {p['users']} users ({p['dashboards']} dashboard(s) polling"
        f" every {p['poll_seconds']:g} s), spawn {p['spawn_rate']:g}/s, {p['duration_s']} s"
        f" against {p['host']}; learners {p['learners']['first']}.."
        f"{p['learners']['first'] + p['learners']['count'] - 1} by Zipf({p['zipf_exponent']:g}),"
        f" think time {p['think_s'][0]:g}-{p['think_s'][1]:g} s (locust {p['locust']}).",
        "",
        "| request | method | requests | failures | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    entries = [*result["requests"].items()]
    if result["total"] is not None:
        entries.append(("**total**", result["total"]))
    for name, e in entries:
        lines.append(
            f"| {name} | {e['method'] or ''} | {e['requests']:,} | {e['failures']:,}"
            f" | {e['rps']:g} | {_cell(e['p50_ms'])} | {_cell(e['p90_ms'])}"
            f" | {_cell(e['p99_ms'])} |"
        )
    if result["failures"]:
        lines += ["", "Failures:"]
        lines += [
            f"- {f['occurrences']:,} x {f['method']} {f['name']}: {f['error']}"
            for f in result["failures"]
        ]
    if result["exceptions"]:
        lines += ["", "Exceptions in the locustfile:"]
        lines += [f"- {x['count']:,} x {x['message']}" for x in result["exceptions"]]
    if result.get("replicas"):
        lines += [
            "",
            "| replica (its /metrics each second) | peak pool use | peak waiters | hit ratio |"
            " cache errors |",
            "|---|---|---|---|---|",
        ]
        for name, r in result["replicas"].items():
            if not r["scrapes"]:
                lines.append(f"| {name} | no scrape answered | | | |")
                continue
            hits = "-" if r["hit_ratio"] is None else f"{r['hit_ratio']:.1%}"
            lines.append(
                f"| {name} | {r['peak_pool_utilization']:.0%} | {r['peak_waiters']:g} | {hits} |"
                f" {r['cache_errors']:g} |"
            )
    return "\n".join([*lines, "", f"Wall time {result['wall_s']} s."])


def _ranges(args: argparse.Namespace, stack: dict[str, str]) -> dict[str, int]:
    """Id ranges: the options given, the rest from the database (learners 1..count)."""
    given = {
        "learner_first": args.learner_first,
        "learners": args.learners,
        "exercise_min": args.exercise_min,
        "exercise_max": args.exercise_max,
    }
    if all(v is not None for v in given.values()):
        return given
    url = (
        args.database_url
        or os.environ.get("SKILLCOACH_DIRECT_DATABASE_URL")
        or stack.get("SKILLCOACH_DIRECT_DATABASE_URL")
    )
    if not url:
        raise SystemExit(
            "no id ranges: give --learners/--exercise-min/--exercise-max, --database-url,"
            f" or start the stack (`make up`) so that {STACK_ENV} names its database"
        )
    ids = id_ranges(url.replace("+psycopg2", ""))
    queried = {
        "learner_first": args.learner_first,
        # The database's learners are 1..count: from --learner-first up to the last one.
        "learners": ids["learners"] - args.learner_first + 1,
        "exercise_min": ids["ex_min"],
        "exercise_max": ids["ex_max"],
    }
    return {k: queried[k] if v is None else v for k, v in given.items()}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests locust", description=__doc__)
    p.add_argument("--host", help=f"API base URL (default: SKILLCOACH_URL of {STACK_ENV})")
    p.add_argument(
        "--api-key", help="read+write key (default: env SKILLCOACH_API_KEY, then the stack's)"
    )
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("--duration", type=int, default=60, help="seconds of load")
    p.add_argument("--learner-first", type=int, default=1)
    p.add_argument("--learners", type=int, help="default: count(*) of learners")
    p.add_argument("--exercise-min", type=int, help="default: min(id) of exercises")
    p.add_argument("--exercise-max", type=int, help="default: max(id) of exercises")
    p.add_argument(
        "--database-url",
        help="where to query the id ranges (default: SKILLCOACH_DIRECT_DATABASE_URL)",
    )
    p.add_argument("--zipf-exponent", type=float, default=1.1)
    p.add_argument("--think-min", type=float, default=0.5, help="learner think time (s)")
    p.add_argument("--think-max", type=float, default=2.0)
    p.add_argument("--dashboards", type=int, default=1, help="model-status pollers")
    p.add_argument("--poll-seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, help="base seed of the users' random streams")
    p.add_argument("--stack-env", type=Path, default=STACK_ENV, help="the stack's env file")
    args = p.parse_args(argv)

    stack = read_env(args.stack_env)
    host = args.host or stack.get("SKILLCOACH_URL")
    key = args.api_key or os.environ.get("SKILLCOACH_API_KEY") or stack.get("SKILLCOACH_API_KEY")
    if not host or not key:
        print(
            f"no --host/--api-key and no running stack in {args.stack_env}: `make up` first",
            file=sys.stderr,
        )
        return 2
    # The replicas' own view while locust drives them (each one's metrics port): pool use,
    # waiters, cache hits.
    replicas = {
        f"replica-{url.rsplit(':', 1)[1]}": metrics_url
        for url, metrics_url in zip(
            stack.get("SKILLCOACH_REPLICA_URLS", "").split(),
            stack.get("SKILLCOACH_REPLICA_METRICS_URLS", "").split(),
            strict=False,
        )
        if not args.host or args.host == stack.get("SKILLCOACH_URL")
    }
    ranges = _ranges(args, stack)
    sampler = Sampler(replicas, {}, interval=1.0).start() if replicas else None
    try:
        result = run_locust(
            host.rstrip("/"),
            key,
            **ranges,
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration=args.duration,
            zipf_exponent=args.zipf_exponent,
            think_min=args.think_min,
            think_max=args.think_max,
            dashboards=args.dashboards,
            poll_seconds=args.poll_seconds,
            seed=args.seed,
        )
    finally:
        samples = sampler.stop() if sampler else []
    result["replicas"] = summarize(samples)
    record("locust", result, markdown)
    return 0
