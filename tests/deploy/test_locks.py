"""The images' dependency locks (requirements/*.lock, written by `make lock`) agree with the
pyproject files: every dependency pinned at a version its specifier admits, every pin hashed.
An edit of a pyproject's dependencies without `make lock` fails here. That a lock is complete
(nothing missing underneath) is proved by `pip check` in the image builds."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from skillcoach_devstack.images import LOCK_PYTHON, lock_files
from tests.deploy.tooling import ROOT

# The images' environment: the markers of a requirement are judged for it.
MARKER_ENV = {
    "python_version": LOCK_PYTHON,
    "python_full_version": f"{LOCK_PYTHON}.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str | None  # None: not pinned with ==
    extras: frozenset[str]
    hashes: int
    line: str


def parse_lock(text: str) -> list[Pin]:
    """The entries of a pip requirements file with hashes (continuation lines joined)."""
    entries: list[str] = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if raw[:1].isspace() and entries:
            entries[-1] += " " + line.strip()
        else:
            entries.append(line.strip())
    pins = []
    for entry in entries:
        words = entry.replace("\\", " ").split()
        hashes = sum(1 for w in words if w.startswith("--hash=sha256:") and len(w) == 78)
        spec = " ".join(w for w in words if not w.startswith("--hash="))
        try:
            requirement = Requirement(spec)
        except InvalidRequirement:
            pins.append(Pin(spec, None, frozenset(), hashes, entry))
            continue
        specifiers = list(requirement.specifier)
        exact = (
            specifiers[0].version
            if len(specifiers) == 1
            and specifiers[0].operator == "=="
            and "*" not in specifiers[0].version
            else None
        )
        pins.append(
            Pin(
                canonicalize_name(requirement.name),
                exact,
                frozenset(requirement.extras),
                hashes,
                entry,
            )
        )
    return pins


def lock_problems(requirements: list[str], pins: list[Pin]) -> list[str]:
    """What is wrong with a lock for these requirements (empty: nothing)."""
    problems = []
    by_name: dict[str, Pin] = {}
    for pin in pins:
        if pin.version is None:
            problems.append(f"not pinned with ==: {pin.line[:80]}")
        if pin.hashes == 0:
            problems.append(f"no sha256 hash: {pin.name}")
        if pin.name in by_name:
            problems.append(f"locked twice: {pin.name}")
        by_name[pin.name] = pin
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(MARKER_ENV):
            continue
        locked = by_name.get(canonicalize_name(requirement.name))
        if locked is None:
            problems.append(f"{requirement} is not in the lock")
            continue
        if locked.version is not None and not requirement.specifier.contains(
            locked.version, prereleases=True
        ):
            problems.append(
                f"{requirement} does not admit the locked {locked.name}=={locked.version}"
            )
        if not requirement.extras <= locked.extras:
            missing = sorted(requirement.extras - locked.extras)
            problems.append(f"{requirement}: the lock has {locked.name} without extras {missing}")
    return problems


def pyproject(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def lock_pins(key: str) -> list[Pin]:
    path = lock_files(ROOT)[key]
    assert path.is_file(), f"{path} is missing: run `make lock`"
    return parse_lock(path.read_text())


def test_the_service_lock_pins_every_runtime_dependency_of_the_pyproject() -> None:
    requirements = pyproject(ROOT / "pyproject.toml")["project"]["dependencies"]
    pins = lock_pins("service")
    assert lock_problems(requirements, pins) == [], "run `make lock`"
    # The transitive ones are there too: more pins than direct requirements.
    assert len(pins) > len(requirements)


def test_the_operator_lock_pins_the_operators_dependencies() -> None:
    requirements = pyproject(ROOT / "operator" / "pyproject.toml")["project"]["dependencies"]
    assert requirements, "the operator depends on kopf at least"
    assert lock_problems(requirements, lock_pins("operator")) == [], "run `make lock`"


def test_the_build_lock_pins_pip_and_both_build_backends() -> None:
    requirements = ["pip"]
    for path in (ROOT / "pyproject.toml", ROOT / "operator" / "pyproject.toml"):
        requirements += pyproject(path)["build-system"]["requires"]
    assert lock_problems(requirements, lock_pins("build")) == [], "run `make lock`"


def test_the_service_lock_holds_no_development_tool() -> None:
    dev = {
        canonicalize_name(Requirement(r).name)
        for r in pyproject(ROOT / "pyproject.toml")["project"]["optional-dependencies"]["dev"]
    }
    # Tools nothing at run time depends on; they are in the dev extra, never in the image.
    tools = {"pytest", "mypy", "ruff", "uv", "locust", "schemathesis"}
    assert tools <= dev
    locked = {pin.name for pin in lock_pins("service")}
    assert locked & tools == set()
    assert "skillcoach" not in locked  # the service itself is installed from its own wheel


@pytest.mark.parametrize(
    ("requirements", "lock_text", "expected"),
    [
        (["numpy>=99"], "numpy==2.0.0 \\\n    --hash=sha256:" + "a" * 64, "does not admit"),
        (["scipy>=1"], "numpy==2.0.0 \\\n    --hash=sha256:" + "a" * 64, "not in the lock"),
        (["numpy>=1"], "numpy==2.0.0\n", "no sha256 hash"),
        (["numpy>=1"], "numpy>=2.0 \\\n    --hash=sha256:" + "a" * 64, "not pinned"),
        (
            ["uvicorn[standard]>=0.3"],
            "uvicorn==0.40 \\\n    --hash=sha256:" + "a" * 64,
            "without extras",
        ),
    ],
)
def test_the_check_catches_a_stale_lock(
    requirements: list[str], lock_text: str, expected: str
) -> None:
    problems = lock_problems(requirements, parse_lock(lock_text))
    assert any(expected in p for p in problems), problems


def test_the_parser_reads_every_entry_of_a_real_lock() -> None:
    text = lock_files(ROOT)["service"].read_text()
    pins = parse_lock(text)
    entries = [
        line for line in text.splitlines() if line and not line[0].isspace() and line[0] != "#"
    ]
    assert len(pins) == len(entries)
    assert all(pin.version is not None and pin.hashes >= 1 for pin in pins)


@pytest.mark.parametrize("key", ["service", "operator"])
def test_the_tests_run_the_locked_versions_the_images_ship(key: str) -> None:
    # `make venv` installs with the locks as constraints: a newer release the image does not
    # ship never decides a test (it reaches both through `make lock`).
    wrong = {}
    for pin in lock_pins(key):
        try:
            installed = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            continue  # a marker kept it out of this Python (the lock is for the images')
        if installed != pin.version:
            wrong[pin.name] = (installed, pin.version)
    assert wrong == {}, f"installed vs locked: {wrong}; run `make venv` after the lock changed"
