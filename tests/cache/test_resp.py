"""The lean RESP connection of the cache-hit path: parsing, pipelining, failure modes."""

from __future__ import annotations

import asyncio

import pytest
import redis

from skillcoach.cache.resp import PipelinedRedis, RespError, _parse_array, _Protocol
from skillcoach_devstack.processes import free_port


def test_parse_complete_partial_and_nil() -> None:
    buf = bytearray(b"*2\r\n$3\r\nabc\r\n$-1\r\n*1\r\n$2\r\nxy")
    assert _parse_array(buf) == ([b"abc", None], 18)
    del buf[:18]
    assert _parse_array(buf) is None  # the second reply is incomplete


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


def test_an_unreachable_node_fails_fast() -> None:
    async def main() -> None:
        client = PipelinedRedis(timeout=0.2)
        with pytest.raises(RespError):
            await client.mget("127.0.0.1", free_port(), b"k")

    asyncio.run(main())
