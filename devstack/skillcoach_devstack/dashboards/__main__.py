"""`python -m skillcoach_devstack.dashboards [--root .] [--check]`: write (or check) the chart's
dashboard JSON from the builders."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skillcoach_devstack.dashboards import BOARDS, OUTPUT_DIR, stale, write_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skillcoach_devstack.dashboards")
    parser.add_argument("--root", default=".", help="repository root (default: .)")
    parser.add_argument(
        "--check", action="store_true", help="only report files that differ (exit 1 if any)"
    )
    args = parser.parse_args(argv)
    directory = Path(args.root) / OUTPUT_DIR
    if args.check:
        wrong = stale(directory)
        for name in wrong:
            print(f"{directory / name} differs from the builders: run `make dashboards`")
        return 1 if wrong else 0
    written = write_all(directory)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(BOARDS)} dashboards in {directory} ({len(written)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
