"""What ships: the service's wheel (the one its image installs) holds the service only; the
dev stack's wheel carries its templates."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(project: Path, out: Path) -> zipfile.ZipFile:
    """`pip wheel` of a copy of the project (so nothing is built inside the checkout)."""
    src = out / "src"
    shutil.copytree(
        project, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(src)],
        check=True, timeout=240,
    )  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def entry_points_of(wheel: zipfile.ZipFile) -> str:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    return wheel.read(name).decode()


@pytest.fixture(scope="module")
def service_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    out = tmp_path_factory.mktemp("service-wheel")
    # Only what the root pyproject builds from: itself, the README and service/.
    project = out / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "service", project / "service")
    with build_wheel(project, out) as wheel:
        return wheel.namelist(), entry_points_of(wheel)


def test_the_service_wheel_holds_the_service_and_nothing_else(
    service_wheel: tuple[list[str], str],
) -> None:
    names, _ = service_wheel
    top = {name.split("/")[0] for name in names}
    assert top == {"skillcoach", "skillcoach-0.1.0.dist-info"}
    for unwanted in ("devstack", "loadtests", "tests/", "operator", "/stack/", ".tmpl"):
        assert not [n for n in names if unwanted in n], unwanted


def test_the_service_wheel_has_every_layer_and_the_migrations(
    service_wheel: tuple[list[str], str],
) -> None:
    names, _ = service_wheel
    for needed in (
        "skillcoach/cli.py",
        "skillcoach/py.typed",
        "skillcoach/api/app.py",
        "skillcoach/answers/learner_answers.py",
        "skillcoach/cache/store.py",
        "skillcoach/ml/model.py",
        "skillcoach/data/database.py",
        "skillcoach/data/migrations/env.py",
        "skillcoach/data/migrations/versions/0001_initial.py",
        "skillcoach/pgbouncer/exporter.py",
    ):
        assert needed in names


def test_the_service_wheel_has_its_command_and_no_plugin(
    service_wheel: tuple[list[str], str],
) -> None:
    # `skillcoach stack` is the dev stack's plugin: an image has no such subcommand.
    _, entry_points = service_wheel
    assert "skillcoach = skillcoach.cli:main" in entry_points
    assert "[skillcoach.cli]" not in entry_points


def test_the_dev_stack_wheel_carries_its_templates(tmp_path: Path) -> None:
    with build_wheel(ROOT / "devstack", tmp_path) as wheel:
        names = wheel.namelist()
        entry_points = entry_points_of(wheel)
    assert "[skillcoach.cli]" in entry_points
    assert "stack = skillcoach_devstack.cli:register" in entry_points
    assert "skillcoach_devstack/templates/haproxy.cfg.tmpl" in names
    assert "skillcoach_devstack/templates/pgbouncer.ini.tmpl" in names
    assert not [n for n in names if n.startswith("skillcoach/")]
