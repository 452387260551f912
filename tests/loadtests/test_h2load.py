"""loadtests/h2load.py: the figures of a run from h2load's per-request log (pure), and a real
h2load against a small loopback server whose answers take a known time."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator

import pytest
from loadtests.h2load import H2loadError, figures, parse_log, parse_timings, run_h2load
from loadtests.harness import raise_nofile


def test_parse_log_reads_status_and_milliseconds() -> None:
    log = "1700000000000000\t200\t1500\n1700000000000100\t503\t250\n\n"
    assert parse_log(log) == [(200, 1.5), (503, 0.25)]


def test_parse_timings_reads_connect_and_first_byte_in_milliseconds() -> None:
    stdout = (
        "                     min         max         mean         sd        +/- sd\n"
        "time for request:    28.34ms       7.95s    106.72ms    285.14ms    99.60%\n"
        "time for connect:       34us     14.83ms      4.53ms      3.49ms    70.70%\n"
        "time to 1st byte:    31.53ms       7.96s       1.24s       2.16s    82.46%\n"
    )
    assert parse_timings(stdout) == {
        "connect_ms": {"min": 0.034, "max": 14.83, "mean": 4.53},
        "first_byte_ms": {"min": 31.53, "max": 7960.0, "mean": 1240.0},
    }
    with pytest.raises(H2loadError, match="unreadable"):
        parse_timings("time to 1st byte:    1.5min  2s  1s  0s  0%\n")


def test_figures_count_statuses_and_take_nearest_rank_percentiles() -> None:
    answered = [(200, float(ms)) for ms in range(1, 99)] + [(503, 0.5), (503, 0.5)]
    f = figures(answered, connections=2, seconds=1.0, timeouts=3, errored=1)
    assert (f["requests"], f["ok"], f["shed_503"], f["non_2xx"]) == (100, 98, 2, 2)
    assert f["ok_rps"] == 98.0 and f["rps"] == 100.0
    assert f["statuses"] == {"200": 98, "503": 2}
    assert f["socket_errors"]["timeout"] == 3 and f["socket_errors_total"] == 4
    lat = f["latency_ms"]
    assert (lat["p50"], lat["p99"], lat["max"]) == (48.0, 97.0, 98.0)
    assert f["latency_ms_by_status"]["503"]["max"] == 0.5
    assert f["latency_ms_by_status"]["2xx"]["p50"] == 49.0


def test_a_mean_above_littles_bound_is_flagged() -> None:
    # 2 connections at 100 answers/s: no mean can exceed 2 / 100 s = 20 ms.
    possible = figures([(200, 19.0)] * 100, connections=2, seconds=1.0, timeouts=0, errored=0)
    assert possible["latency_ms"]["little_bound"] == 20.0
    assert possible["latency_consistent"] is True
    impossible = figures([(200, 40.0)] * 100, connections=2, seconds=1.0, timeouts=0, errored=0)
    assert impossible["latency_consistent"] is False


SLOW_ID = 7
SLOW_SECONDS = 1.5


class _Server(asyncio.Protocol):
    """HTTP/1.1 keep-alive: learner SLOW_ID is answered after SLOW_SECONDS, others at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1].decode()
            slow = path == f"/v1/learners/{SLOW_ID}/weaknesses"
            delay = SLOW_SECONDS if slow else 0.0
            asyncio.get_running_loop().call_later(delay, self._answer)

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")


@pytest.fixture
def server() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(loop.create_server(_Server, "127.0.0.1", 0))
    port = srv.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        srv.close()
        loop.close()


@pytest.mark.timeout(120)
def test_a_real_run_counts_answers_and_responses_later_than_the_deadline(server: int) -> None:
    if shutil.which("h2load") is None:
        pytest.fail("h2load is not installed: `apt-get install nghttp2-client` (make services)")
    raise_nofile()
    start = time.monotonic()
    r = run_h2load(
        f"http://127.0.0.1:{server}",
        connections=4,
        duration=3,
        token="t",
        ids=[SLOW_ID] + [1] * 2000,
        timeout=1.0,
    )
    assert time.monotonic() - start < 60
    # Every connection starts with the slow learner: each such answer comes after 1.5 s,
    # later than the 1 s deadline, and counts as a timeout, not in the latency.
    assert r["socket_errors"]["timeout"] >= 4
    assert r["ok"] > 100 and r["statuses"] == {"200": r["ok"]}
    assert r["latency_ms"]["max"] <= 1000
    assert r["latency_consistent"] is True
    assert r["meter"] == "h2load"
    # Each connection's first byte came after the slow first answer.
    assert r["first_byte_ms"]["min"] >= SLOW_SECONDS * 1000 * 0.9
    assert 0 <= r["connect_ms"]["max"] < 5000
