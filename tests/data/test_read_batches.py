"""ReadBatch: the keys asked for in one event loop turn are loaded by one call; a failure is
every member's, a member that gives up leaves the rest served; traced, each load is a span
linked both ways with the requests it served."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping, Sequence

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import StatusCode, Tracer

from skillcoach.data.read_batches import ReadBatch
from skillcoach.telemetry.tracing import Spans

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


class Source:
    """Squares of the keys it knows (those below 100), recording every load."""

    def __init__(self, fail: Exception | None = None, hold: asyncio.Event | None = None) -> None:
        self.calls: list[list[int]] = []
        self.contexts: list[str] = []
        self.fail = fail
        self.hold = hold

    async def load(self, keys: Sequence[int]) -> Mapping[int, int]:
        self.calls.append(list(keys))
        self.contexts.append(WHO.get())
        if self.hold is not None:
            await self.hold.wait()
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return {k: k * k for k in keys if k < 100}


def test_keys_asked_in_one_turn_share_one_load() -> None:
    async def main() -> tuple[list[int | None], Source, int]:
        source = Source()
        batch = ReadBatch(source.load, max_size=32)
        got = await asyncio.gather(*(batch.get(k) for k in (3, 4, 3, 500, 5)))
        return got, source, batch.loads

    got, source, loads = asyncio.run(main())
    assert got == [9, 16, 9, None, 25]  # a key the load does not return: None
    assert source.calls == [[3, 4, 500, 5]] and loads == 1  # distinct keys, in asking order


def test_turns_apart_are_loads_apart_and_a_lone_key_is_not_held() -> None:
    async def main() -> Source:
        source = Source()
        batch = ReadBatch(source.load, max_size=32)
        assert await batch.get(2) == 4
        assert await batch.get(3) == 9
        return source

    assert asyncio.run(main()).calls == [[2], [3]]


def test_a_turn_beyond_max_size_is_split() -> None:
    async def main() -> tuple[list[int | None], Source]:
        source = Source()
        batch = ReadBatch(source.load, max_size=2)
        got = await asyncio.gather(*(batch.get(k) for k in range(5)))
        return got, source

    got, source = asyncio.run(main())
    assert got == [0, 1, 4, 9, 16]
    assert source.calls == [[0, 1], [2, 3], [4]]


def test_a_failed_load_fails_every_member_and_the_next_turn_loads_again() -> None:
    async def main() -> tuple[list[BaseException | int | None], int | None, Source]:
        source = Source(fail=RuntimeError("database gone"))
        batch = ReadBatch(source.load, max_size=32)
        got = await asyncio.gather(batch.get(1), batch.get(2), return_exceptions=True)
        source.fail = None
        return got, await batch.get(7), source

    got, after, source = asyncio.run(main())
    assert [type(g) for g in got] == [RuntimeError, RuntimeError]
    assert after == 49 and source.calls == [[1, 2], [7]]


def test_a_member_that_gives_up_leaves_the_batch_to_the_others() -> None:
    async def main() -> tuple[int | None, bool, Source]:
        hold = asyncio.Event()
        source = Source(hold=hold)
        batch = ReadBatch(source.load, max_size=32)
        quitter = asyncio.ensure_future(batch.get(4))
        stayer = asyncio.ensure_future(batch.get(5))
        await asyncio.sleep(0.01)  # the batch is out, held in the load
        quitter.cancel()
        await asyncio.sleep(0)
        hold.set()
        return await stayer, quitter.cancelled(), source

    value, cancelled, source = asyncio.run(main())
    assert value == 25 and cancelled and source.calls == [[4, 5]]


def test_the_batch_runs_in_the_context_of_the_request_that_opened_it() -> None:
    # The deadline and the trace of a request live in context variables: the load sees the
    # first asker's (the others joined it in the same turn).
    async def main() -> Source:
        source = Source()
        batch = ReadBatch(source.load, max_size=32)

        async def ask(who: str, key: int) -> int | None:
            WHO.set(who)
            return await batch.get(key)

        first = asyncio.ensure_future(ask("first", 1))
        second = asyncio.ensure_future(ask("second", 2))
        assert await asyncio.gather(first, second) == [1, 4]
        return source

    source = asyncio.run(main())
    assert source.calls == [[1, 2]] and source.contexts == ["first"]


def test_max_size_must_admit_a_key() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReadBatch(Source().load, max_size=0)


def _traced() -> tuple[Spans, InMemorySpanExporter, Tracer]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    return Spans(tracer), exporter, tracer


def test_traced_a_load_is_one_span_under_the_opener_linked_both_ways_with_the_others() -> None:
    spans, exporter, tracer = _traced()

    async def main() -> list[int | None]:
        source = Source()
        batch = ReadBatch(source.load, max_size=32, spans=spans, span_name="db.shared_read sq")

        async def request(name: str, key: int) -> int | None:
            with tracer.start_as_current_span(name):
                return await batch.get(key)

        # Three requests in one turn, two asking the same key; a fourth asks untraced.
        return await asyncio.gather(
            request("first", 3), request("second", 4), request("third", 3), batch.get(5)
        )

    assert asyncio.run(main()) == [9, 16, 9, 25]
    finished = {s.name: s for s in exporter.get_finished_spans()}
    shared = finished["db.shared_read sq"]
    first, second, third = finished["first"], finished["second"], finished["third"]
    assert shared.parent is not None and shared.parent.span_id == first.context.span_id
    assert shared.attributes == {
        "skillcoach.shared_read.keys": 3,
        "skillcoach.shared_read.requests": 4,
    }
    # The shared span links to each other request it served; each of them links back.
    assert {link.context.span_id for link in shared.links} == {
        second.context.span_id,
        third.context.span_id,
    }
    assert all(link.attributes == {"skillcoach.link": "member"} for link in shared.links)
    for member in (second, third):
        (back,) = member.links
        assert back.context.span_id == shared.context.span_id
        assert back.attributes == {"skillcoach.link": "shared"}
    assert not first.links  # its trace holds the shared span as a child


def test_traced_each_load_runs_in_and_under_its_own_first_traced_member() -> None:
    # An untraced request opens the turn (a background read, or one the sampler dropped),
    # and the turn is split in two loads: each load runs in the context of a traced request
    # it served (its deadline, its trace) and its span sits under that request's span.
    spans, exporter, tracer = _traced()
    source = Source()

    async def main() -> list[int | None]:
        batch = ReadBatch(source.load, max_size=2, spans=spans, span_name="load")

        async def untraced(key: int) -> int | None:
            WHO.set("untraced opener")
            return await batch.get(key)

        async def request(name: str, key: int) -> int | None:
            WHO.set(name)
            with tracer.start_as_current_span(name):
                return await batch.get(key)

        return await asyncio.gather(untraced(1), request("a", 2), request("b", 3), request("c", 4))

    assert asyncio.run(main()) == [1, 4, 9, 16]
    assert source.calls == [[1, 2], [3, 4]] and source.contexts == ["a", "b"]
    finished = exporter.get_finished_spans()
    by_name = {s.name: s for s in finished}
    loads = sorted((s for s in finished if s.name == "load"), key=lambda s: s.start_time or 0)
    assert len(loads) == 2
    first, second = loads
    assert first.parent is not None and first.parent.span_id == by_name["a"].context.span_id
    assert not first.links  # the untraced opener has no span to link to
    assert second.parent is not None and second.parent.span_id == by_name["b"].context.span_id
    assert [link.context.span_id for link in second.links] == [by_name["c"].context.span_id]
    assert first.context.trace_id == by_name["a"].context.trace_id
    assert second.context.trace_id == by_name["b"].context.trace_id


def test_traced_a_failed_load_is_an_error_span_and_untraced_nothing_is_made() -> None:
    spans, exporter, tracer = _traced()

    async def main(batch: ReadBatch[int, int]) -> list[BaseException | int | None]:
        with tracer.start_as_current_span("request"):
            return await asyncio.gather(batch.get(1), return_exceptions=True)

    source = Source(fail=RuntimeError("database gone"))
    (got,) = asyncio.run(main(ReadBatch(source.load, max_size=32, spans=spans)))
    assert isinstance(got, RuntimeError)
    shared = next(s for s in exporter.get_finished_spans() if s.name == "db.shared_read")
    assert shared.status.status_code is StatusCode.ERROR
    assert [e.name for e in shared.events] == ["exception"]

    exporter.clear()
    assert asyncio.run(main(ReadBatch(Source().load, max_size=32))) == [1]  # NO_SPANS
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]
