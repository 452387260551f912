"""The local stack (`skillcoach stack up|down|status|scale`): PostgreSQL, PgBouncer (and its
exporter), Redis, API replicas behind HAProxy, Prometheus with the alert rules, and (with
SKILLCOACH_STACK_OTLP=1) an OTLP receiver for traces. The Grafana dashboards are built here
too (skillcoach_devstack.dashboards).

State lives in ROOT/.stack/ (pid files, logs, generated secrets, the sourceable `env`); PgBouncer's
runtime files live in /tmp/skillcoach-pgbouncer-<port>/ because it runs as the postgres user.
"""

from __future__ import annotations

import sys
from pathlib import Path

from skillcoach_devstack.errors import StackError

__all__ = ["StackError", "run_stack_command"]


def run_stack_command(action: str, *, root: Path, replicas: int | None) -> int:
    """Run up, down, status or scale; returns the process exit code (errors are printed, not
    raised). replicas: up's count (default 1), scale's target (required)."""
    from skillcoach_devstack import commands

    try:
        if action == "up":
            return commands.up(root, replicas=1 if replicas is None else replicas)
        if action == "scale":
            if replicas is None:
                print(
                    "skillcoach stack scale: say how many replicas (`stack scale 3`)",
                    file=sys.stderr,
                )
                return 2
            return commands.scale(root, replicas=replicas)
        if action == "down":
            return commands.down(root)
        if action == "status":
            return commands.status(root)
    except StackError as exc:
        print(f"skillcoach stack {action}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"skillcoach stack: unknown action {action!r} (up, down, status, scale)", file=sys.stderr)
    return 2
