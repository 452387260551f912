"""Fixtures of the deployment tests: the installed tools and a helm with a private home."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.tools import Tools, ensure_tools
from tests.deploy.tooling import ROOT, Helm


@pytest.fixture(scope="session")
def tools() -> Tools:
    try:
        return ensure_tools(ROOT)
    except StackError as exc:
        pytest.fail(f"deployment tools missing ({exc}): run `make test`", pytrace=False)


@pytest.fixture(scope="session")
def helm(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tools, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
