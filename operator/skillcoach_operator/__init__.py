"""The pool-budget operator: per-pod DB pool sizes and PgBouncer pools that follow the API
Deployment's replica count within one connection budget (docs/operator.md)."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    # One source of truth: operator/pyproject.toml, as installed (editable or in the image).
    __version__ = version("skillcoach-operator")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
