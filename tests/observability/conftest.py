"""The deployment tests' fixtures (helm with a private home, the pinned tools), shared here."""

from __future__ import annotations

from tests.deploy.conftest import helm, tools

__all__ = ["helm", "tools"]
