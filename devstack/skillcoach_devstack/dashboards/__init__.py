"""skillcoach's Grafana dashboards, built in code with grafana-foundation-sdk (the Grafana 11
build): the overview, the pool and PgBouncer board, and the cache board.

`python -m skillcoach_devstack.dashboards` (`make dashboards`) writes them as JSON to
deploy/helm/skillcoach/files/dashboards/, where the chart ships each as a ConfigMap for the
Grafana sidecar; `--check` only compares. The JSON is generated: edit the builders here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from skillcoach_devstack.dashboards import cache, overview, pool

__all__ = ["BOARDS", "OUTPUT_DIR", "render", "stale", "write_all"]

# File stem -> builder.
BOARDS: dict[str, Callable[[], Dashboard]] = {
    "overview": overview.build,
    "pool": pool.build,
    "cache": cache.build,
}
# Relative to the repository root.
OUTPUT_DIR = Path("deploy") / "helm" / "skillcoach" / "files" / "dashboards"


def render(name: str) -> str:
    """The dashboard's JSON, stable from run to run (sorted keys, a final newline)."""
    return json.dumps(BOARDS[name]().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def stale(directory: Path) -> list[str]:
    """File names in directory that differ from what the builders render (or are missing,
    or are not ours)."""
    expected = {f"{name}.json": render(name) for name in BOARDS}
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    wrong = [n for n, text in expected.items() if _read(directory / n) != text]
    return sorted(set(wrong) | (present - set(expected)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def write_all(directory: Path) -> list[Path]:
    """Write every dashboard that changed; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BOARDS:
        path = directory / f"{name}.json"
        text = render(name)
        if _read(path) != text:
            path.write_text(text)
            written.append(path)
    return written
