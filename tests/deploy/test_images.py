"""The API and operator images: linted (hadolint, checkov), built here with podman through
skillcoach_devstack.images (as `make image` does; unchanged images are not rebuilt), and run.

The API image runs read-only (no tmpfs either), as the image's own user, on the host network
against this session's PgBouncer (a migrated database with a promoted model) and Redis: it
turns ready, answers authenticated reads and writes, and serves its metrics on their own port.
Neither image holds the local stack, the load tests, the tests, pip or a compiler.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.images import (
    IMAGE_UID,
    Built,
    Podman,
    build_images,
    dockerfile_instructions,
    lock_files,
    project_version,
)
from skillcoach_devstack.processes import free_port, run_bounded
from skillcoach_devstack.tools import Tools
from tests.deploy.test_locks import parse_lock
from tests.deploy.tooling import ROOT, checkov_failures, hadolint
from tests.fixtures_api import Keys, exercise_id

# A cold build (the debootstrap base, every wheel downloaded) takes minutes on 2 cores.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

DOCKERFILES = {"api": ROOT / "Dockerfile", "operator": ROOT / "operator" / "Dockerfile"}
USER = f"{IMAGE_UID}:{IMAGE_UID}"


# -- the Dockerfiles as text: lint, security checks, the rules of the images


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_reports_no_error(image: str) -> None:
    result = hadolint(DOCKERFILES[image])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_report_errors(tmp_path: Path) -> None:
    # The control: a relative WORKDIR is one of hadolint's errors.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12.5\nWORKDIR relative/dir\nUSER 1000\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3000" in result.stdout, result.stdout


def test_checkov_passes_both_dockerfiles_and_fails_a_bad_one(tools: Tools, tmp_path: Path) -> None:
    for image, dockerfile in DOCKERFILES.items():
        (tmp_path / image).mkdir()
        shutil.copy(dockerfile, tmp_path / image / "Dockerfile")
    # The control: root user, a latest base and no HEALTHCHECK are each a failed check.
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "Dockerfile").write_text('FROM python:latest\nCMD ["python3"]\n')
    failed = checkov_failures(tools, tmp_path, "dockerfile")
    by_file: dict[str, set[str]] = {}
    for check in failed:
        folder = Path(check["file_path"]).parent.name
        by_file.setdefault(folder, set()).add(check["check_id"])
    assert "api" not in by_file and "operator" not in by_file, by_file
    assert {"CKV_DOCKER_2", "CKV_DOCKER_3", "CKV_DOCKER_7"} <= by_file.get("control", set())


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_checkov_skip_says_why(image: str) -> None:
    for line in DOCKERFILES[image].read_text().splitlines():
        if "checkov:skip=" in line:
            _, _, rest = line.partition("checkov:skip=")
            check, _, reason = rest.partition(":")
            assert check.startswith("CKV_") and len(reason.strip()) > 20, line


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_follows_the_rules_of_the_images(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    froms = [words for words in instructions if words[0] == "FROM"]
    # Multi-stage, every stage on the one base given as an ARG whose default is a version tag.
    assert len(froms) >= 2
    assert all(words[1] == "${BASE_IMAGE}" for words in froms), froms
    (default,) = [w[1] for w in instructions if w[0] == "ARG" and w[1].startswith("BASE_IMAGE=")]
    tag = default.split("=", 1)[1].rpartition(":")[2]
    assert tag and tag != "latest" and any(c.isdigit() for c in tag), default
    final = instructions[instructions.index(froms[-1]) :]
    # The final stage runs nothing and takes only the built virtualenv from the build stage.
    assert not [w for w in final if w[0] in ("RUN", "ADD")], final
    copies = [w for w in final if w[0] == "COPY"]
    assert copies and all(any(a.startswith("--from=") for a in w) for w in copies), copies
    users = [w for w in final if w[0] == "USER"]
    assert users and users[-1][1] == USER
    # Every package comes from a lock with hashes, or is the project's own wheel (no index).
    for words in instructions:
        text = " ".join(words)
        for command in text.split("&&"):
            if " install " in command and "pip" in command:
                assert "--require-hashes" in command or "--no-index" in command, command


# -- the built images


@pytest.fixture(scope="module")
def built() -> Built:
    try:
        return build_images(ROOT)
    except StackError as exc:
        pytest.fail(f"the images could not be built: {exc}", pytrace=False)


def podman_run(
    podman: Podman, *args: str, timeout: float = 120, ok_codes: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    return run_bounded(
        [podman.binary, *args],
        env=podman.env(),
        timeout=timeout,
        ok_codes=ok_codes,
        what=f"podman {' '.join(args[:2])}",
    )


def inspect(podman: Podman, image: str) -> dict[str, Any]:
    result = podman_run(podman, "image", "inspect", image)
    config: dict[str, Any] = json.loads(result.stdout)[0]["Config"]
    return config


def test_both_images_run_as_a_numeric_non_root_user(built: Built) -> None:
    for image in (built.api, built.operator):
        assert inspect(built.podman, image)["User"] == USER, image


_CONTENTS = r"""
import importlib, importlib.metadata, json, os, shutil, sys
modules = sys.argv[1].split(",")
importable = {}
for name in modules:
    try:
        importlib.import_module(name)
        importable[name] = True
    except ImportError:
        importable[name] = False
unwanted = {"skillcoach_devstack", "devstack", "loadtests", "fixtures_api.py",
            "fixtures_services.py", "skillcoach_devstack-0.1.0.dist-info"}
found = []
for top, dirs, files in os.walk("/"):
    if top in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    found += [os.path.join(top, n) for n in dirs + files if n in unwanted]
tools = [t for t in ("gcc", "cc", "c++", "g++", "clang", "make", "ld", "as") if shutil.which(t)]
dists = sorted((d.metadata["Name"], d.version) for d in importlib.metadata.distributions())
print(json.dumps({"importable": importable, "found": found, "tools": tools, "dists": dists,
                  "python": sys.executable}))
"""


def image_contents(podman: Podman, image: str, modules: list[str]) -> dict[str, Any]:
    result = podman_run(
        podman, "run", "--rm", "--network", "none", "--read-only", "--entrypoint", "python3",
        image, "-c", _CONTENTS, ",".join(modules),
    )  # fmt: skip
    contents: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return contents


@pytest.mark.parametrize(
    ("image", "own", "lock", "distribution"),
    [
        ("api", "skillcoach", "service", "skillcoach"),
        ("operator", "skillcoach_operator", "operator", "skillcoach-operator"),
    ],
)
def test_image_holds_its_package_and_locked_dependencies_only(
    built: Built, image: str, own: str, lock: str, distribution: str
) -> None:
    tag = built.api if image == "api" else built.operator
    foreign = ["skillcoach_devstack", "loadtests", "tests", "pip", "setuptools", "wheel"]
    foreign += ["skillcoach_operator"] if image == "api" else ["skillcoach"]
    contents = image_contents(built.podman, tag, [own, *foreign])
    assert contents["importable"] == {own: True, **dict.fromkeys(foreign, False)}
    assert contents["found"] == []
    assert contents["tools"] == []
    # Exactly the locked versions, and the package itself at the pyproject's version.
    pyproject = ROOT / ("pyproject.toml" if image == "api" else "operator/pyproject.toml")
    expected = {pin.name: pin.version for pin in parse_lock(lock_files(ROOT)[lock].read_text())}
    expected[distribution] = project_version(pyproject)
    installed = {name.lower().replace("_", "-"): version for name, version in contents["dists"]}
    assert installed == expected


def test_operator_image_starts_and_prints_its_version(built: Built) -> None:
    result = podman_run(
        built.podman, "run", "--rm", "--network", "none", "--read-only",
        "--read-only-tmpfs=false", "--cap-drop", "all", built.operator,
    )  # fmt: skip
    version = project_version(ROOT / "operator" / "pyproject.toml")
    assert result.stdout.strip() == f"skillcoach-operator {version}"


def test_operator_image_refuses_what_is_not_built_yet(built: Built) -> None:
    result = podman_run(
        built.podman, "run", "--rm", "--network", "none", built.operator, "run", ok_codes=(2,)
    )
    assert "only --version" in result.stderr


# -- the API image running against the real stack


@dataclass(frozen=True)
class Container:
    podman: Podman
    name: str
    url: str
    metrics_url: str

    def logs(self) -> str:
        result = podman_run(self.podman, "logs", "--tail", "40", self.name, ok_codes=(0, 125))
        return result.stdout + result.stderr

    def running(self) -> bool:
        result = podman_run(
            self.podman, "inspect", "--format", "{{.State.Running}}", self.name, ok_codes=(0, 125)
        )
        return result.stdout.strip() == "true"

    def exec(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        as_user = ["--user", user] if user else []
        return podman_run(self.podman, "exec", *as_user, self.name, *args, ok_codes=(0, 1))


@pytest.fixture(scope="module")
def api_container(
    built: Built, api_bouncer_url: str, redis_url: str, keys: Keys
) -> Iterator[Container]:
    port, metrics_port = free_port(), free_port()
    name = f"skillcoach-api-test-{uuid.uuid4().hex[:10]}"
    env = {
        "SKILLCOACH_DATABASE_URL": api_bouncer_url,
        "SKILLCOACH_REDIS_URL": redis_url,
        "SKILLCOACH_CACHE_ENABLED": "true",
        "SKILLCOACH_PORT": str(port),
        "SKILLCOACH_METRICS_PORT": str(metrics_port),
        "SKILLCOACH_ENVIRONMENT": "test",
        "SKILLCOACH_POOL_SIZE": "4",
    }
    # Read-only with no tmpfs at all, as with readOnlyRootFilesystem and no volumes; the
    # image's own user (no --user), no capabilities.
    args = ["run", "--detach", "--name", name, "--network", "host", "--read-only",
            "--read-only-tmpfs=false", "--cap-drop", "all",
            "--security-opt", "no-new-privileges"]  # fmt: skip
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    container = Container(
        built.podman, name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    )
    try:
        podman_run(built.podman, *args, built.api)
        deadline = time.monotonic() + 90
        while True:
            if not container.running():
                pytest.fail(f"the API container exited:\n{container.logs()}", pytrace=False)
            try:
                if httpx.get(f"{container.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"not ready within 90 s:\n{container.logs()}", pytrace=False)
            time.sleep(0.5)
        yield container
    finally:
        podman_run(built.podman, "rm", "--force", "--time", "10", name, ok_codes=(0, 1, 125))


def test_api_image_turns_ready_on_pgbouncer_and_redis(api_container: Container) -> None:
    r = httpx.get(f"{api_container.url}/readyz", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "model": "ok", "cache": "ok"}


def test_api_image_answers_authenticated_requests(api_container: Container, keys: Keys) -> None:
    url = api_container.url
    learner = 1
    read = {"Authorization": f"Bearer {keys.read}"}
    r = httpx.get(f"{url}/v1/learners/{learner}/weaknesses", headers=read, timeout=10)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = {
        "attempts": [
            {"exercise_id": exercise_id(s, 0), "correct": s == 3,
             "answered_at": f"2026-03-01T10:0{s}:00Z"}
            for s in (1, 2, 3)
        ]
    }  # fmt: skip
    write = {"Authorization": f"Bearer {keys.write}"}
    r = httpx.post(f"{url}/v1/learners/{learner}/attempts", json=body, headers=write, timeout=10)
    assert r.status_code == 201, r.text
    for _ in range(2):  # the second read is a cache hit
        r = httpx.get(f"{url}/v1/learners/{learner}/weaknesses", headers=read, timeout=10)
        assert r.status_code == 200, r.text
        assert sorted(s["skill_id"] for s in r.json()["skills"]) == [1, 2, 3]
    assert httpx.get(f"{url}/v1/learners/{learner}/weaknesses", timeout=10).status_code == 401
    # The metrics port of its own answers, and shows the reads were served from Redis.
    metrics = httpx.get(f"{api_container.metrics_url}/metrics", timeout=10)
    assert metrics.status_code == 200
    hits = [
        sample.value
        for family in text_string_to_metric_families(metrics.text)
        if family.name == "skillcoach_cache_hits"
        for sample in family.samples
        if sample.name == "skillcoach_cache_hits_total"
    ]
    assert sum(hits) >= 1, metrics.text[-2000:]


_PID1 = """
import json
status = dict(line.split(":", 1) for line in open("/proc/1/status").read().splitlines())
argv = open("/proc/1/cmdline").read().rstrip("\\0").split("\\0")
print(json.dumps({"uid": status["Uid"].split(), "gid": status["Gid"].split(), "argv": argv}))
"""


def test_api_process_runs_as_the_images_user(api_container: Container) -> None:
    # PID 1 is the entrypoint itself: `skillcoach serve`, exec form, no shell in between.
    result = api_container.exec("python3", "-c", _PID1)
    assert result.returncode == 0, result.stderr
    pid1 = json.loads(result.stdout)
    assert pid1["uid"] == [str(IMAGE_UID)] * 4
    assert pid1["gid"] == [str(IMAGE_UID)] * 4
    assert [Path(pid1["argv"][1]).name, *pid1["argv"][2:]] == ["skillcoach", "serve"], pid1


def test_api_container_filesystem_is_read_only(api_container: Container) -> None:
    probe = "open('/opt/venv/probe', 'w')"
    for user in ("0", None):  # even root cannot write: the filesystem itself refuses
        result = api_container.exec("python3", "-c", probe, user=user)
        assert result.returncode == 1
        assert "Read-only file system" in result.stderr, result.stderr
    result = api_container.exec("python3", "-c", "open('/tmp/probe', 'w')")
    assert "Read-only file system" in result.stderr, result.stderr


def test_api_image_healthcheck_passes(api_container: Container) -> None:
    result = podman_run(
        api_container.podman, "healthcheck", "run", api_container.name, ok_codes=(0, 1)
    )
    assert result.returncode == 0, result.stdout + result.stderr
