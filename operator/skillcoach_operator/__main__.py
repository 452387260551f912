"""`skillcoach-operator` / `python -m skillcoach_operator`: for now it only tells its version.

The operator itself is planned (docs/architecture.md, the pool-sizing contract); until it
exists every other invocation says so and exits 2, instead of pretending to run.
"""

from __future__ import annotations

import sys

from skillcoach_operator import __version__

__all__ = ["main"]

NAME = "skillcoach-operator"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"{NAME} {__version__}")
        return 0
    given = " ".join(args) if args else "no arguments"
    print(
        f"{NAME} {__version__}: only --version is supported yet (got {given});"
        " the operator itself is not implemented",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
