"""`skillcoach-operator` / `python -m skillcoach_operator`: the pool-budget operator.

It takes no arguments but --version: everything else comes from SKILLCOACH_OPERATOR_*
variables (skillcoach_operator.config) and, for cluster access, kopf's usual sources (the
in-cluster service account, else KUBECONFIG or ~/.kube/config). It runs until SIGTERM.
"""

from __future__ import annotations

import sys

import kopf

from skillcoach_operator import __version__
from skillcoach_operator.config import ConfigError, OperatorConfig, load_config
from skillcoach_operator.operator import build_registry

__all__ = ["main"]

NAME = "skillcoach-operator"


def configure_logging(config: OperatorConfig) -> None:
    """One JSON object per line by default (with the object each message is about), for the
    cluster's log collector; plain text for a terminal."""
    kopf.configure(
        debug=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
        log_prefix=config.log_format != "json",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"{NAME} {__version__}")
        return 0
    if args:
        print(
            f"{NAME} {__version__}: it takes only --version (got {' '.join(args)});"
            " configure it with SKILLCOACH_OPERATOR_* variables",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"{NAME}: {exc}", file=sys.stderr)
        return 2
    configure_logging(config)
    kopf.run(
        registry=build_registry(config),
        namespaces=[config.namespace],
        standalone=True,
        liveness_endpoint=config.liveness,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
