"""loadtests/bench_accept.py: the accept queue read from `ss`, and a short real run of both
servers (with and without the accept pump)."""

from __future__ import annotations

import argparse
import shutil
import socket

import pytest
from loadtests.bench_accept import PUMP, UVLOOP, accept_queue, markdown, run


def test_accept_queue_counts_connections_the_server_has_not_accepted() -> None:
    if shutil.which("ss") is None:
        pytest.fail("ss is not installed (iproute2)")
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(64)
        port = lsock.getsockname()[1]
        assert accept_queue(port) == 0
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        try:
            assert accept_queue(port) == 5
            lsock.accept()[0].close()
            assert accept_queue(port) == 4
        finally:
            for c in clients:
                c.close()


@pytest.mark.timeout(120)
def test_a_short_run_measures_both_servers() -> None:
    if shutil.which("h2load") is None:
        pytest.fail("h2load is not installed: run `make services`")
    args = argparse.Namespace(rounds=1, connections=100, duration=2.0, max_seconds=100)
    result = run(args)
    (row,) = result["rounds"]
    assert set(row) == {PUMP, UVLOOP}
    for r in row.values():
        assert r["ok"] > 0 and r["statuses"] == {"200": r["ok"]}
        assert r["accept_queue"]["samples"], "the queue was never sampled"
        assert r["first_byte_ms"]["max"] >= r["first_byte_ms"]["min"] > 0
    assert "| 1 | accept-pump |" in markdown(result)
