"""`skillcoach stack up|down|status|scale`: registered into the service's CLI through the
`skillcoach.cli` entry-point group, so the service package never imports the stack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stack",
        help="the local stack: PostgreSQL, PgBouncer, Redis, API replicas behind HAProxy,"
        " Prometheus",
        description="up [--replicas N] starts everything (N API replicas, default 1, behind"
        " HAProxy on one port); scale N (or scale --replicas N) changes the number of"
        " replicas of a running stack and resizes every replica's pool; down stops it;"
        " status shows each component.",
    )
    p.add_argument("action", choices=["up", "down", "status", "scale"])
    p.add_argument("count", nargs="?", type=int, help="scale (or up): the number of replicas")
    p.add_argument("--replicas", type=int, default=None, help="the number of API replicas")
    p.add_argument("--root", default=".", help="project checkout (state goes to ROOT/.stack)")
    p.set_defaults(func=_cmd_stack)


def _cmd_stack(args: argparse.Namespace) -> int:
    from skillcoach_devstack import run_stack_command

    if args.count is not None and args.replicas is not None and args.count != args.replicas:
        print("skillcoach stack: the count and --replicas disagree", file=sys.stderr)
        return 2
    replicas = args.count if args.count is not None else args.replicas
    return run_stack_command(args.action, root=Path(args.root).resolve(), replicas=replicas)
