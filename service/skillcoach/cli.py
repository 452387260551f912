"""The `skillcoach` command line: migrate, seed, train, promote, models, apikey, serve,
pgbouncer-exporter, pgbouncer-reloader, and the subcommands of installed plugins (the
`skillcoach.cli` entry-point group; a development install adds `stack`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from skillcoach.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["build_parser", "main"]


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"skillcoach: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_migrate(args: argparse.Namespace) -> int:
    from skillcoach.data.migrate import upgrade

    upgrade(_settings().sqlalchemy_url, args.revision)
    print(f"migrated to {args.revision}")
    return 0


def _cmd_seed(args: argparse.Namespace) -> int:
    from skillcoach.data.database import create_sync_engine
    from skillcoach.ml.seeding import seed_database
    from skillcoach.ml.simulator import SimulationParams

    params = SimulationParams(
        learners=args.learners,
        skills=args.skills,
        exercises_per_skill=args.exercises_per_skill,
        attempts_per_learner=args.attempts_per_learner,
        seed=args.seed,
    )
    from skillcoach.ml.seeding import SeedConflict

    engine = create_sync_engine(_settings().sqlalchemy_url)
    try:
        report = seed_database(engine, params, progress=not args.quiet, replace=args.replace)
    except SeedConflict as exc:
        if not args.if_empty:
            raise
        # A demo job that runs on every install must leave real data alone.
        print(f"not seeded: {exc}")
        return 0
    finally:
        engine.dispose()
    print(report.summary())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from skillcoach.data.database import create_sync_engine
    from skillcoach.ml.training import train_and_store

    engine = create_sync_engine(_settings().sqlalchemy_url)
    verdict = None
    try:
        report = train_and_store(engine, seed=args.seed, test_fraction=args.test_fraction)
        if args.promote:
            from skillcoach.data.model_registry import promote
            from skillcoach.ml.promotion import Verdict, judge

            live = report.metrics.get("live_version")
            verdict = (
                Verdict(True, "--force")
                if args.force
                else judge(report.held_out, report.live_held_out, live_version=live)
            )
            if verdict.promote:
                with engine.begin() as conn:
                    promote(conn, version=report.version)
    finally:
        engine.dispose()
    print(report.summary())
    if verdict is not None:
        # Not promoting is the gate working, not a failure: the live model stays.
        action = "promoted" if verdict.promote else "kept the live model; did not promote"
        print(f"{action} model version {report.version}: {verdict.reason}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from skillcoach.data.database import create_sync_engine
    from skillcoach.data.model_registry import UnknownModelVersion, promote

    engine = create_sync_engine(_settings().sqlalchemy_url)
    try:
        with engine.begin() as conn:
            promote(conn, version=args.version)
    except UnknownModelVersion as exc:
        print(f"skillcoach: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"promoted model version {args.version}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from skillcoach.data.database import create_sync_engine
    from skillcoach.data.model_registry import list_models

    engine = create_sync_engine(_settings().sqlalchemy_url)
    try:
        with engine.connect() as conn:
            records = list_models(conn)
    finally:
        engine.dispose()
    for r in records:
        auc = r.metrics.get("auc")
        live = "*" if r.promoted else " "
        print(f"{live} v{r.version}  trained {r.trained_at:%Y-%m-%d %H:%M:%S}  auc={auc}")
    return 0


def _expiry(args: argparse.Namespace) -> datetime | None:
    """--expires-in DAYS or --expires-at ISO (a time without a zone is UTC); never the past."""
    if args.expires_in is not None:
        return datetime.now(UTC) + timedelta(days=args.expires_in)
    if args.expires_at is None:
        return None
    when = datetime.fromisoformat(args.expires_at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= datetime.now(UTC):
        raise ValueError(f"--expires-at {args.expires_at} is not in the future")
    return when


def _cmd_apikey(args: argparse.Namespace) -> int:
    from skillcoach.data.api_keys import Scope, create_api_key

    try:
        scopes = Scope.parse_list(args.scope)
        expires_at = _expiry(args)
    except ValueError as exc:
        print(f"skillcoach: {exc}", file=sys.stderr)
        return 2
    with _engine() as engine, engine.begin() as conn:
        key = create_api_key(conn, name=args.name, scopes=scopes, expires_at=expires_at)
    # Printed once: only its hash is stored.
    print(key)
    return 0


def _cmd_apikey_list(args: argparse.Namespace) -> int:
    import json

    from skillcoach.data.api_keys import list_api_keys

    with _engine() as engine, engine.connect() as conn:
        records = list_api_keys(conn)

    def iso(when: datetime | None) -> str | None:
        return None if when is None else when.astimezone(UTC).isoformat(timespec="seconds")

    rows = [
        {
            "id": r.id,
            "name": r.name,
            "scopes": list(r.scopes),
            "created_at": iso(r.created_at),
            "expires_at": iso(r.expires_at),
            "last_used_at": iso(r.last_used_at),
            "revoked_at": iso(r.revoked_at),
        }
        for r in records
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("id", "name", "scopes", "created_at", "expires_at", "last_used_at", "revoked_at")
    table = [[str(c).upper() for c in columns]]
    for row in rows:
        scopes = ",".join(row["scopes"])  # type: ignore[arg-type]
        table.append([scopes if c == "scopes" else str(row[c] or "-") for c in columns])
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _cmd_apikey_revoke(args: argparse.Namespace) -> int:
    from skillcoach.data.api_keys import AmbiguousKeyName, revoke_api_keys

    try:
        with _engine() as engine, engine.begin() as conn:
            revoked = revoke_api_keys(conn, ident=args.key, every=args.all)
    except AmbiguousKeyName as exc:
        print(f"skillcoach apikey revoke: {exc}", file=sys.stderr)
        return 1
    if not revoked:
        print(
            f"skillcoach apikey revoke: no active key with id or name {args.key!r}", file=sys.stderr
        )
        return 1
    cached = _settings().api_key_cache_seconds
    for key_id in revoked:
        # The bound is the replicas' key cache (docs/security.md).
        print(f"revoked key {key_id}; refused by every replica within {cached:g} s")
    return 0


@contextlib.contextmanager
def _engine() -> Iterator[Engine]:
    from skillcoach.data.database import create_sync_engine

    engine = create_sync_engine(_settings().sqlalchemy_url)
    try:
        yield engine
    finally:
        engine.dispose()


def _cmd_serve(args: argparse.Namespace) -> int:
    from skillcoach.api.server import serve

    serve(_settings())
    return 0


def _cmd_pgbouncer_exporter(args: argparse.Namespace) -> int:
    import os

    from skillcoach.pgbouncer.exporter import serve

    admin_url = args.admin_url or os.environ.get("SKILLCOACH_PGBOUNCER_ADMIN_URL", "")
    if not admin_url:
        print(
            "skillcoach pgbouncer-exporter: give --admin-url or SKILLCOACH_PGBOUNCER_ADMIN_URL",
            file=sys.stderr,
        )
        return 2
    serve(admin_url, port=args.port, host=args.host)
    return 0


def _cmd_pgbouncer_reloader(args: argparse.Namespace) -> int:
    import logging
    import os

    from skillcoach.pgbouncer.reloader import heartbeat_age, serve

    if args.check_heartbeat is not None:
        # A liveness probe: 0 while the loop still touches the file.
        age = heartbeat_age(args.check_heartbeat)
        if age is None or age > args.max_age:
            state = "missing" if age is None else f"{age:.0f}s old"
            print(f"skillcoach pgbouncer-reloader: heartbeat {state}", file=sys.stderr)
            return 1
        return 0
    admin_url = args.admin_url or os.environ.get("SKILLCOACH_PGBOUNCER_ADMIN_URL", "")
    if args.config is None or not admin_url:
        print(
            "skillcoach pgbouncer-reloader: give --config and --admin-url (or"
            " SKILLCOACH_PGBOUNCER_ADMIN_URL)",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(args.config, admin_url, interval=args.interval, heartbeat=args.heartbeat)
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skillcoach", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("seed", help="generate simulated learners and attempts (with ground truth)")
    p.add_argument("--learners", type=int, default=2000)
    p.add_argument("--skills", type=int, default=50)
    p.add_argument("--exercises-per-skill", type=int, default=20)
    p.add_argument("--attempts-per-learner", type=int, default=100)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--replace", action="store_true", help="delete existing data first")
    p.add_argument(
        "--if-empty",
        action="store_true",
        help="seed only an empty database; with data present, change nothing and exit 0",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_seed)

    p = sub.add_parser("train", help="fit a Best-LR model and store it in the registry")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument(
        "--promote",
        action="store_true",
        help="promote the new version unless it is worse than the live one on the same"
        " held-out attempts (AUC and log loss)",
    )
    p.add_argument("--force", action="store_true", help="with --promote: skip the quality gate")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("promote", help="make a stored model version the live one")
    p.add_argument("version", type=int)
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("apikey", help="manage API keys")
    apikey = p.add_subparsers(dest="apikey_command", required=True)
    c = apikey.add_parser("create", help="create a key and print it once")
    c.add_argument("--scope", default="read", help="comma-separated: read,write,admin")
    c.add_argument("--name", default="cli")
    expiry = c.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in", type=_positive_float, metavar="DAYS", help="the key expires after DAYS"
    )
    expiry.add_argument(
        "--expires-at", metavar="ISO", help="the key expires at this time (no zone: UTC)"
    )
    c.set_defaults(func=_cmd_apikey)
    c = apikey.add_parser("list", help="list keys (never their secrets or hashes)")
    c.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    c.set_defaults(func=_cmd_apikey_list)
    c = apikey.add_parser("revoke", help="revoke a key by id or name")
    c.add_argument("key", metavar="ID|NAME", help="the key's id (all digits) or its name")
    c.add_argument(
        "--all", action="store_true", help="revoke every active key of that name, not just one"
    )
    c.set_defaults(func=_cmd_apikey_revoke)

    p = sub.add_parser("serve", help="run one API replica (configured by SKILLCOACH_* only)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "pgbouncer-exporter",
        help="serve PgBouncer's SHOW POOLS / SHOW STATS as Prometheus metrics",
    )
    p.add_argument(
        "--admin-url",
        default=None,
        help="PgBouncer admin console URL (default: $SKILLCOACH_PGBOUNCER_ADMIN_URL; the"
        " environment keeps the password out of `ps`)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9127)
    p.set_defaults(func=_cmd_pgbouncer_exporter)

    p = sub.add_parser(
        "pgbouncer-reloader",
        help="RELOAD PgBouncer when its config file's content changes (clients stay connected)",
    )
    p.add_argument("--config", type=Path, default=None, help="the pgbouncer.ini to watch")
    p.add_argument(
        "--admin-url",
        default=None,
        help="PgBouncer admin console URL (default: $SKILLCOACH_PGBOUNCER_ADMIN_URL; the"
        " environment keeps the password out of `ps`)",
    )
    p.add_argument("--interval", type=_positive_float, default=5.0, help="seconds between looks")
    p.add_argument("--heartbeat", type=Path, default=None, help="file touched on every pass")
    p.add_argument(
        "--check-heartbeat",
        type=Path,
        default=None,
        metavar="PATH",
        help="only check that PATH was touched within --max-age seconds (a liveness probe)",
    )
    p.add_argument("--max-age", type=_positive_float, default=60.0)
    p.set_defaults(func=_cmd_pgbouncer_reloader)
    _add_plugins(sub)
    return parser


PLUGIN_GROUP = "skillcoach.cli"


def _add_plugins(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands of other installed distributions: each entry point of PLUGIN_GROUP names a
    `register(subparsers)` that adds its parser with a `func` default. The service never
    imports them; a broken plugin costs its own subcommand, not the CLI."""
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            register = entry.load()
            register(sub)
        except Exception as exc:  # any failure of third-party code: report and go on
            print(f"skillcoach: plugin {entry.name!r} not loaded: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except _expected_errors() as exc:
        # Operator mistakes and unreachable services get one line, not a traceback.
        print(f"skillcoach {args.command}: {exc}", file=sys.stderr)
        return 1
    return rc


def _expected_errors() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import OperationalError

    from skillcoach.ml.seeding import SeedConflict
    from skillcoach.ml.training import TrainingError

    return (SeedConflict, TrainingError, ValueError, OperationalError)


if __name__ == "__main__":
    raise SystemExit(main())
