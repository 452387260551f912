"""The lean RESP connection of the cache-hit path: parsing, pipelining, AUTH, failure modes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis

from skillcoach.cache.resp import (
    MAX_EXTENSIONS,
    MAX_FLOWING_WAIT,
    PipelinedRedis,
    RespAuthError,
    RespError,
    _parse_reply,
    _Protocol,
)
from skillcoach_devstack.processes import free_port
from skillcoach_devstack.redis import RedisServer


def test_parse_complete_partial_and_nil() -> None:
    buf = bytearray(b"*2\r\n$3\r\nabc\r\n$-1\r\n*1\r\n$2\r\nxy")
    assert _parse_reply(buf) == ([b"abc", None], 18)
    del buf[:18]
    assert _parse_reply(buf) is None  # the second reply is incomplete


def test_an_error_reply_answers_only_its_request() -> None:
    proto = _Protocol()
    loop = asyncio.new_event_loop()
    try:
        first, second = loop.create_future(), loop.create_future()
        proto.pending.extend([first, second])
        proto.data_received(b"-MOVED 3999 127.0.0.1:7001\r\n*1\r\n$1\r\nv\r\n")
        assert isinstance(first.exception(), RespError)
        assert second.result() == [b"v"]
    finally:
        loop.close()


def test_pipelined_mgets_against_real_redis(redis_url: str) -> None:
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    redis.Redis(host=host, port=int(port)).set("resp:k", b"\r\nbinary\x00")

    async def main() -> list[list[bytes | None]]:
        client = PipelinedRedis(timeout=1.0)
        try:
            return await asyncio.gather(
                *[client.mget(host, int(port), b"resp:k", b"resp:missing") for _ in range(200)]
            )
        finally:
            client.close()

    assert asyncio.run(main()) == [[b"\r\nbinary\x00", None]] * 200


def test_a_burst_of_lookups_arms_one_reply_timer_not_one_each(redis_url: str) -> None:
    """Replies come in order, so only the oldest request can be overdue: the connection keeps
    one timer for it, whatever the number of lookups in flight (one timer per lookup cost the
    loop more than the reply at thousands of hits a second)."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    redis.Redis(host=host, port=int(port)).set("resp:burst", b"v")

    async def main() -> tuple[int, list[list[bytes | None]]]:
        loop = asyncio.get_running_loop()
        armed = 0
        call_at = loop.call_at

        def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal armed
            armed += 1
            return call_at(when, callback, *args, **kwargs)

        client = PipelinedRedis(timeout=1.0)
        try:
            await client.mget(host, int(port), b"resp:burst")  # connected
            loop.call_at = counting  # type: ignore[method-assign,assignment]
            got = await asyncio.gather(
                *[client.mget(host, int(port), b"resp:burst") for _ in range(300)]
            )
            return armed, list(got)
        finally:
            loop.call_at = call_at  # type: ignore[method-assign]
            client.close()

    armed, got = asyncio.run(main())
    assert got == [[b"v"]] * 300
    assert armed <= 3, armed


def test_the_lookups_of_one_loop_turn_go_out_in_one_write(redis_url: str) -> None:
    """A burst started on one loop turn is one write on the connection, not one per lookup
    (a system call each was the largest cost of a hit), and every lookup still gets its own
    reply, in order."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    r = redis.Redis(host=host, port=int(port))
    for i in range(50):
        r.set(f"resp:turn:{i}", str(i).encode())

    async def main() -> tuple[int, list[list[bytes | None]]]:
        client = PipelinedRedis(timeout=1.0)
        try:
            await client.mget(host, int(port), b"resp:turn:0")  # connected
            proto = client._conns[(host, int(port))]
            assert proto.transport is not None
            writes = 0
            write = proto.transport.write

            def counting(data: bytes) -> None:
                nonlocal writes
                writes += 1
                write(data)

            proto.transport.write = counting  # type: ignore[method-assign]
            got = await asyncio.gather(
                *[client.mget(host, int(port), f"resp:turn:{i}".encode()) for i in range(50)]
            )
            return writes, list(got)
        finally:
            client.close()

    writes, got = asyncio.run(main())
    assert got == [[str(i).encode()] for i in range(50)]
    assert writes == 1, writes


def test_a_loop_busy_past_the_deadline_does_not_abort_a_reply_that_came(redis_url: str) -> None:
    """The reply is in the socket; the event loop only got to the timer late (a saturated
    replica): the lookup still gets its reply and the connection stays open."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    redis.Redis(host=host, port=int(port)).set("resp:busy", b"v")

    async def main() -> tuple[list[bytes | None], bool]:
        client = PipelinedRedis(timeout=0.05)
        try:
            await client.mget(host, int(port), b"resp:busy")  # connected
            lookup = asyncio.ensure_future(client.mget(host, int(port), b"resp:busy"))
            await asyncio.sleep(0)  # the request is written, its timer armed
            time.sleep(0.2)  # noqa: ASYNC251 (on purpose: the loop blocked 4x past the deadline)
            got = await lookup
            return got, next(iter(client._conns.values())).closed
        finally:
            client.close()

    got, closed = asyncio.run(main())
    assert got == [b"v"]
    assert closed is False


def test_a_reply_queued_behind_others_on_a_live_connection_is_waited_for() -> None:
    """A node that answers every request, one after another, 40 ms each: the second reply
    comes 80 ms after the first request, past the 50 ms timeout, but replies are flowing on
    the connection, so it is not aborted."""

    async def main() -> list[list[bytes | None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(4096):
                for _ in range(data.count(b"MGET")):
                    await asyncio.sleep(0.04)
                    writer.write(b"*1\r\n$1\r\nv\r\n")

        slow = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = slow.sockets[0].getsockname()[1]
        client = PipelinedRedis(timeout=0.05)
        try:
            first = asyncio.ensure_future(client.mget("127.0.0.1", port, b"a"))
            await asyncio.sleep(0.005)
            second = asyncio.ensure_future(client.mget("127.0.0.1", port, b"b"))
            return list(await asyncio.gather(first, second))
        finally:
            client.close()
            slow.close()

    assert asyncio.run(main()) == [[b"v"], [b"v"]]


def test_a_long_queue_of_replies_is_read_to_the_end_while_they_keep_coming() -> None:
    """Twenty lookups pipelined on one connection, answered 40 ms apart with a 100 ms timeout
    (60 ms of slack for a loaded machine): the last reply comes about 800 ms (eight timeouts)
    after its request, beyond MAX_EXTENSIONS timeouts, as
    when a replica reads a burst of a thousand lookups over several loop turns. Replies keep
    coming, so none of the lookups fails and the connection stays open; a node that stops
    answering halfway is still aborted."""

    async def serve(stop_after: int | None) -> tuple[list[Any], bool]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            answered = 0
            while data := await reader.read(4096):
                for _ in range(data.count(b"MGET")):
                    if stop_after is not None and answered == stop_after:
                        await asyncio.sleep(10)
                    await asyncio.sleep(0.04)
                    writer.write(b"*1\r\n$1\r\nv\r\n")
                    answered += 1

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = PipelinedRedis(timeout=0.1)
        try:
            got = await asyncio.gather(
                *[client.mget("127.0.0.1", port, b"k") for _ in range(20)],
                return_exceptions=True,
            )
            return list(got), next(iter(client._conns.values())).closed
        finally:
            client.close()
            server.close()

    assert MAX_FLOWING_WAIT * 0.1 > 20 * 0.04 > (1 + MAX_EXTENSIONS) * 0.1
    got, closed = asyncio.run(serve(None))
    assert got == [[b"v"]] * 20 and closed is False
    got, closed = asyncio.run(serve(6))
    assert got[:6] == [[b"v"]] * 6 and closed is True
    assert all(isinstance(g, RespError) for g in got[6:])


def test_the_reply_deadline_counts_from_the_write_not_the_queueing() -> None:
    """Lookups queued on a loop turn that then stays busy are written late: a node that
    answers within the deadline of the write is not aborted (counted from the queueing, the
    deadline had passed before the reply could come)."""
    timeout, busy, delay = 0.2, 0.14, 0.1

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await asyncio.sleep(delay)  # a slow node: every reply `delay` after the request
            writer.write(b"*1\r\n$1\r\nv\r\n" * data.count(b"MGET"))
        writer.close()

    async def main() -> tuple[list[Any], bool]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = PipelinedRedis(timeout=timeout)
        try:
            assert await client.mget("127.0.0.1", port, b"k") == [b"v"]  # connection open
            await asyncio.sleep(2 * timeout)  # its last reply long past: nothing "flowing"
            lookups = [asyncio.create_task(client.mget("127.0.0.1", port, b"k")) for _ in range(20)]

            async def block() -> None:  # on the turn the lookups queue, before their write
                time.sleep(busy)  # noqa: ASYNC251 - the point: a turn that holds the loop

            await asyncio.gather(block(), *lookups, return_exceptions=True)
            return [t.result() if not t.exception() else t.exception() for t in lookups], next(
                iter(client._conns.values())
            ).closed
        finally:
            client.close()
            server.close()

    assert busy + delay > timeout > delay  # from the queueing the reply is late; not from the write
    got, closed = asyncio.run(main())
    assert got == [[b"v"]] * 20
    assert closed is False


def test_a_node_that_never_answers_is_aborted_on_time() -> None:
    """A server that accepts and never replies: the timer fires on time and aborts."""

    async def main() -> float:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        client = PipelinedRedis(timeout=0.1)
        try:
            start = time.monotonic()
            with pytest.raises(RespError, match="reply timed out"):
                await client.mget("127.0.0.1", port, b"k")
            return time.monotonic() - start
        finally:
            client.close()
            silent.close()

    # One timeout, not MAX_EXTENSIONS of them: an idle loop runs the timer on time. The
    # bound leaves room for a loaded CI machine but stays under two extensions' worth.
    assert asyncio.run(main()) < 0.1 * (1 + MAX_EXTENSIONS) - 0.05


def test_an_unreachable_node_fails_fast() -> None:
    async def main() -> None:
        client = PipelinedRedis(timeout=0.2)
        with pytest.raises(RespError):
            await client.mget("127.0.0.1", free_port(), b"k")

    asyncio.run(main())


def test_a_status_reply_parses_as_one_item() -> None:
    buf = bytearray(b"+OK\r\n*1\r\n$1\r\nv\r\n")
    assert _parse_reply(buf) == ([b"OK"], 5)


def test_a_refused_auth_fails_every_waiter_once(redis_auth: RedisServer) -> None:
    """Fifty lookups arrive while the first connection opens with a wrong password: one AUTH
    reaches the server, one failure is reported, all fifty fail (to the full path), and the
    next ones within retry_after do not even try."""
    failures: list[Exception] = []

    def refused() -> int:
        with redis.Redis(port=redis_auth.port, password=redis_auth.password) as client:
            log: list[dict[str, Any]] = client.acl_log(128)
            return sum(int(e["count"]) for e in log if e["reason"] == "auth")

    before = refused()

    async def main() -> list[list[bytes | None] | BaseException]:
        client = PipelinedRedis(
            timeout=1.0, password="not-it", retry_after=60, on_failure=failures.append
        )
        try:
            first = await asyncio.gather(
                *[client.mget("127.0.0.1", redis_auth.port, b"k") for _ in range(50)],
                return_exceptions=True,
            )
            later = await asyncio.gather(
                *[client.mget("127.0.0.1", redis_auth.port, b"k") for _ in range(50)],
                return_exceptions=True,
            )
            return first + later
        finally:
            client.close()

    outcomes = asyncio.run(main())
    assert all(isinstance(o, RespError) for o in outcomes)
    assert sum(isinstance(o, RespAuthError) for o in outcomes) == 50  # the first fifty
    assert [type(f) for f in failures] == [RespAuthError]
    assert "not-it" not in str(failures[0])
    assert refused() - before == 1


def test_auth_and_select_before_the_first_mget(redis_auth: RedisServer) -> None:
    assert redis_auth.password is not None
    with redis.Redis(port=redis_auth.port, password=redis_auth.password, db=5) as admin:
        admin.set("resp:db5", b"five")

    async def main() -> list[bytes | None]:
        client = PipelinedRedis(timeout=1.0, password=redis_auth.password, db=5)
        try:
            return await client.mget("127.0.0.1", redis_auth.port, b"resp:db5")
        finally:
            client.close()

    assert asyncio.run(main()) == [b"five"]
