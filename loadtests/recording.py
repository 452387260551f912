"""What every benchmark runner does around its run: a time budget, cleanup that runs every
step, and the result written to loadtests/results/<kind>-<UTC stamp>.json with its markdown
summary printed."""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["RESULTS", "budget", "record", "run_all", "run_header"]

RESULTS = Path(__file__).with_name("results")


def _overran(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark overran its --max-seconds budget")


@contextmanager
def budget(seconds: int) -> Iterator[None]:
    """Abort the run (its `finally` blocks still clean up) once `seconds` have passed."""
    signal.signal(signal.SIGALRM, _overran)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)


def run_header(kind: str, params: dict[str, Any], nofile: int | None = None) -> dict[str, Any]:
    """The first fields of every result: what ran, when, on what, with which parameters
    (`nofile`: the open-file limit the runner raised for its connections, if it did)."""
    machine: dict[str, Any] = {"python": platform.python_version(), "cores": os.cpu_count()}
    if nofile is not None:
        machine["nofile"] = nofile
    return {
        "kind": kind,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "params": params,
    }


def record(kind: str, result: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"{markdown(result)}\n\nwritten to {out}")
    return out


def run_all(steps: Iterable[Callable[[], object]]) -> None:
    """Cleanup: each step runs even if an earlier one failed (a failure is printed, not
    raised, so it cannot hide the run's own error or lose its result)."""
    for step in steps:
        try:
            step()
        except Exception as exc:
            print(f"cleanup step failed: {exc!r}", file=sys.stderr)
