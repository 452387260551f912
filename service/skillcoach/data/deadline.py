"""The deadline and the name of the work the data layer is doing for its caller.

Context variables, so they follow the caller into worker threads (AnyIO copies the context)
and never leak between concurrent tasks. The API sets them per request (the route template as
the name); background jobs and the CLI set nothing and get the defaults.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = ["current_work", "remaining", "work_scope"]

# Monotonic time by which the work must be done; None: no deadline beyond the defaults.
_deadline: ContextVar[float | None] = ContextVar("skillcoach_deadline", default=None)
# Names the work lazily: an HTTP request knows its route only after routing, which happens
# after the deadline is set.
_work: ContextVar[Callable[[], str] | None] = ContextVar("skillcoach_work", default=None)

BACKGROUND = "background"


@contextlib.contextmanager
def work_scope(*, deadline: float, name: Callable[[], str]) -> Iterator[None]:
    """Everything the data layer does inside this block honours `deadline` (monotonic) and is
    reported under `name()` (long-held connections)."""
    deadline_token = _deadline.set(deadline)
    work_token = _work.set(name)
    try:
        yield
    finally:
        _work.reset(work_token)
        _deadline.reset(deadline_token)


def remaining(default: float) -> float:
    """Seconds left before the current deadline (`default` outside a work scope)."""
    deadline = _deadline.get()
    return default if deadline is None else deadline - time.monotonic()


def current_work() -> str:
    name = _work.get()
    return BACKGROUND if name is None else name()
