"""`python -m loadtests.faults_report FILE`: the fault-injection suite's results (tests/faults,
JSON written where SKILLCOACH_FAULTS_RESULTS points) as the markdown table of
docs/reliability.md.

FILE: {"faults": {name: {"requests", "errors": {status: n}, "failed_by_kind", "recovery_s",
"error_window_s", "acknowledged", "found", "stale_reads", "replayed_acks", ...}},
"updated_at"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "markdown"]

COLUMNS = (
    "fault",
    "requests",
    "errors (status: n)",
    "failed reads / writes",
    "error window s",
    "recovery s",
    "writes acked / in PostgreSQL",
    "acked by replay",
    "stale reads",
)


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(errors.items())) or "none"


def _reads_writes(by_kind: dict[str, int]) -> str:
    reads = sum(n for kind, n in by_kind.items() if kind != "write")
    return f"{reads} / {by_kind.get('write', 0)}"


def row(name: str, r: dict[str, Any]) -> list[str]:
    return [
        name,
        str(r["requests"]),
        _errors(r["errors"]),
        _reads_writes(r.get("failed_by_kind", {})),
        f"{r['error_window_s']:.1f}",
        f"{r['recovery_s']:.1f}" if r["recovered"] else "not recovered",
        f"{r['acknowledged']} / {r['found']}",
        str(r.get("replayed_acks", 0)),
        str(r["stale_reads"]),
    ]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for name, r in results["faults"].items():
        lines.append("| " + " | ".join(row(name, r)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m loadtests.faults_report FILE", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
