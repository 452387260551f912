"""Concurrent reads of the same kind, by key, share one statement (the DataLoader pattern).

On a busy replica the requests an event loop turn wakes all reach their read in the same turn;
each asking alone pays a round trip, the statement's parsing and planning in PostgreSQL and a
pass through PgBouncer. A `ReadBatch` collects the keys asked for during one turn and loads
them with one call at the start of the next, so a lone request waits no longer than before
(one turn) and a burst of N costs one statement, not N.

A load runs in its own task, in the context (deadline, trace, instrumentation) of its first
traced member, or untraced of the request that opened the batch: the ones joining it arrived
in the same turn. Its failure is every member's failure; a member that gives up (cancelled)
leaves the batch to the others. Traced, each load is a span of its own under that first traced
member's span, linked both ways with every other member's span (Spans.shared), so a joining
request's trace shows where its read went.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from opentelemetry.trace import Span

from skillcoach.telemetry.tracing import NO_SPANS, Spans

__all__ = ["ReadBatch"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


# A waiting request: its future, and when traced its span and a copy of its context.
_Waiter = tuple[asyncio.Future[V | None], Span | None, contextvars.Context | None]


class ReadBatch(Generic[K, V]):
    """`get(key)`: load(keys)[key] (None when the load's mapping lacks the key), with every
    key asked for in the same event loop turn loaded by one `load` call of up to `max_size`
    distinct keys."""

    def __init__(
        self,
        load: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]],
        *,
        max_size: int,
        spans: Spans = NO_SPANS,
        span_name: str = "db.shared_read",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._load = load
        self._max_size = max_size
        self._spans = spans
        self._span_name = span_name
        # Each key's waiters: the future, and (traced only) the waiting request's span and context.
        self._waiting: dict[K, list[_Waiter[V]]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.loads = 0  # load calls made (tests and benchmarks read it)

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        if not self._waiting:
            # The first key of this turn: the batch goes out once the turn is over. call_soon
            # runs _dispatch in a copy of this request's context, and its tasks inherit it.
            loop.call_soon(self._dispatch)
        span = self._spans.recording()
        context = None if span is None else contextvars.copy_context()
        self._waiting.setdefault(key, []).append((future, span, context))
        return await future

    def _dispatch(self) -> None:
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), self._max_size):
            chunk = {key: waiting[key] for key in keys[start : start + self._max_size]}
            # Without a traced member: this context, a copy of the opener's (call_soon's). A copy
            # each: one Context cannot run two tasks at once, and a request may ask twice.
            traced = next((c for ws in chunk.values() for _, _, c in ws if c is not None), None)
            loop = asyncio.get_running_loop()
            context = None if traced is None else traced.copy()
            task = loop.create_task(self._run(chunk), context=context)
            self._running.add(task)  # held until done: a task only the loop refers to can vanish
            task.add_done_callback(self._running.discard)

    async def _run(self, chunk: dict[K, list[_Waiter[V]]]) -> None:
        self.loads += 1
        members = [s for waiters in chunk.values() for _, s, _ in waiters if s is not None]
        attributes = {
            "skillcoach.shared_read.keys": len(chunk),
            "skillcoach.shared_read.requests": sum(len(w) for w in chunk.values()),
        }
        try:
            with self._spans.shared(self._span_name, members, attributes):
                found = await self._load(list(chunk))
        except Exception as exc:  # every member's failure
            for waiters in chunk.values():
                for future, _, _ in waiters:
                    if not future.done():
                        future.set_exception(exc)
            return
        except BaseException:  # the batch itself cancelled (the loop closing): so are they
            for waiters in chunk.values():
                for future, _, _ in waiters:
                    future.cancel()
            raise
        for key, waiters in chunk.items():
            value = found.get(key)
            for future, _, _ in waiters:
                if not future.done():
                    future.set_result(value)
