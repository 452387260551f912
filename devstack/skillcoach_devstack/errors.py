"""The one error type of the local stack: a step could not be done, and the message says why."""

from __future__ import annotations

__all__ = ["StackError"]


class StackError(RuntimeError):
    """A stack step failed; the message names the component and, where useful, its log."""
