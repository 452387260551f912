"""AcceptPump: a burst of connections waiting in the kernel's queue is accepted in one event,
each served by the protocol, on both event loops a replica may run."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import uvloop

from skillcoach.api.accepting import AcceptPump

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run(loop_name: str, main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(main, timeout=20))


class Echo(asyncio.Protocol):
    made: list[Echo] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # uvloop's transports are not asyncio.Transport
        Echo.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


@contextmanager
def listener_with_clients(n: int) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A listening socket with `n` connections completed by the kernel, none accepted yet."""
    with ExitStack() as stack:
        lsock = stack.enter_context(socket.socket())
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(256)
        clients = []
        for _ in range(n):
            c = stack.enter_context(socket.create_connection(lsock.getsockname(), timeout=5))
            clients.append(c)
        yield lsock, clients


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - a count, not an event: polled, bounded
            await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def _fresh_protocols() -> None:
    Echo.made = []


@pytest.mark.parametrize("loop_name", LOOPS)
def test_one_event_accepts_every_waiting_connection(loop_name: str) -> None:
    with listener_with_clients(50) as (lsock, clients):

        async def main() -> None:
            pump = AcceptPump(asyncio.get_running_loop(), lsock, Echo)
            try:
                pump._accept()  # one readiness event
                assert pump.accepted == 50
                await until(lambda: len(Echo.made) == 50)
                # Served by the protocol: every client gets its own answer.
                for i, c in enumerate(clients):
                    c.sendall(b"ping %d" % i)
                replies = await asyncio.to_thread(lambda: [c.recv(64) for c in clients])
                assert replies == [b"PING %d" % i for i in range(50)]
            finally:
                pump.close()

        run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_batch_is_bounded_and_the_rest_follow_on_later_events(loop_name: str) -> None:
    with listener_with_clients(30) as (lsock, _):

        async def main() -> None:
            pump = AcceptPump(asyncio.get_running_loop(), lsock, Echo, batch=8)
            try:
                pump._accept()
                assert pump.accepted == 8  # the loop gets its turn between batches
                await until(lambda: pump.accepted == 30)  # its reader, on the next events
                await until(lambda: len(Echo.made) == 30)
            finally:
                pump.close()

        run(loop_name, main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_closed_it_accepts_nothing_and_leaves_the_listener_open(loop_name: str) -> None:
    with listener_with_clients(0) as (lsock, _):

        async def main() -> None:
            pump = AcceptPump(asyncio.get_running_loop(), lsock, Echo)
            pump.close()
            pump.close()  # idempotent
            late = socket.create_connection(lsock.getsockname(), timeout=5)
            try:
                await asyncio.sleep(0.2)
                assert pump.accepted == 0
                conn, _ = lsock.accept()  # still the owner's to accept
                conn.close()
            finally:
                late.close()

        run(loop_name, main())
