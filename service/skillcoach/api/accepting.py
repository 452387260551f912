"""Accepting connections in batches, beside uvloop's own accept.

uvloop's libuv accepts one connection per listening-socket event, that is one per event-loop
iteration; a loop busy with a thousand established connections spends up to a few hundred
milliseconds per iteration, so a burst of new connections waits in the kernel's accept queue
for seconds (measured in docs/benchmarks.md), invisible to the server's own latency metrics
and past the request deadline. An AcceptPump watches a duplicate of the listening socket and
accepts up to `batch` connections per event, handing each to the loop as an accepted socket:
the same protocol, the same transports, only accepted sooner. Both take from the one kernel
queue, so neither can take a connection twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

__all__ = ["ACCEPT_BATCH", "AcceptPump"]

log = logging.getLogger(__name__)

# At most this many connections per event: a storm of connects still leaves the loop its
# turn to serve the ones already open.
ACCEPT_BATCH = 128
# Out of file descriptors: accepting again at once would spin; the kernel queue holds them.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_AFTER_S = 0.1


class AcceptPump:
    """Accepts connections from a (duplicated) listening socket in batches and serves each
    with `protocol_factory`, as the loop's own server would."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        batch: int = ACCEPT_BATCH,
    ) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._batch = batch
        # A duplicate: the server keeps (and closes) its own descriptor.
        self._sock = socket.fromfd(listener.fileno(), listener.family, listener.type)
        self._sock.setblocking(False)
        self._tcp = listener.family in (socket.AF_INET, socket.AF_INET6)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.accepted = 0
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno not in _RESOURCE_ERRORS:
                    raise
                log.warning("accepting connections paused for %.1fs: %s", _RETRY_AFTER_S, e)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(_RETRY_AFTER_S, self._resume)
                return
            self.accepted += 1
            conn.setblocking(False)
            if self._tcp:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._serve(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception:  # the peer went away while its transport was made
            log.debug("an accepted connection could not be served", exc_info=True)
            conn.close()

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting (before the server closes its own socket)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
