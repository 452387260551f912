"""Debian packages the stack and the tests need, installed with apt-get when missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.processes import run_bounded

__all__ = ["REQUIRED", "ensure_packages", "find_binary", "missing_packages", "require_binary"]

# (binary, Debian package providing it)
REQUIRED: tuple[tuple[str, str], ...] = (
    ("pgbouncer", "pgbouncer"),
    ("redis-server", "redis-server"),
    # `redis-cli --cluster create` builds the local Redis Cluster.
    ("redis-cli", "redis-tools"),
    # The stack's load balancer in front of the API replicas.
    ("haproxy", "haproxy"),
    # The load generator of the benchmark smoke test (tests/loadtests).
    ("wrk", "wrk"),
    # The benchmarks' latency meter (loadtests/h2load.py: wrk's latency is wrong on 2 cores).
    ("h2load", "nghttp2-client"),
    # Certificates for the TLS Redis servers of the tests.
    ("openssl", "openssl"),
    # The stack's Prometheus; promtool checks and unit-tests the alert rules (tests/observability).
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
)

# Daemons live in sbin, which a non-root PATH often lacks.
_EXTRA_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(name, path=path)


def require_binary(name: str, *, package: str) -> str:
    """The path of an installed binary, or a StackError naming the Debian package to install."""
    binary = find_binary(name)
    if binary is None:
        raise StackError(f"{name} is not installed (apt-get install {package})")
    return binary


def missing_packages(required: Sequence[tuple[str, str]] = REQUIRED) -> list[str]:
    # One package may provide several binaries: name it once.
    return list(dict.fromkeys(p for binary, p in required if find_binary(binary) is None))


def ensure_packages(
    required: Sequence[tuple[str, str]] = REQUIRED, *, timeout: float = 900.0
) -> list[str]:
    """Install whatever is missing; returns the packages installed (empty if none were)."""
    missing = missing_packages(required)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise StackError(
            f"missing Debian packages: {' '.join(missing)};"
            f" run: sudo apt-get install -y {' '.join(missing)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Update first: on a fresh machine the package lists may be empty or stale.
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
    ):
        run_bounded(cmd, env=env, timeout=timeout)
    still = missing_packages(required)
    if still:
        raise StackError(f"apt-get install left these missing: {' '.join(still)}")
    return missing
