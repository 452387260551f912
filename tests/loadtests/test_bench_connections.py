"""loadtests/bench_connections.py and loadtests/protocol_app.py: CPU read from /proc, the
per-request arithmetic and tables (pure), the plain protocol's answers on a real socket, and a
short real run of the three servers."""

from __future__ import annotations

import argparse
import asyncio
import shutil

import pytest
from loadtests.bare_app import create_app
from loadtests.bench_connections import (
    BARE,
    COUNTED,
    PROTOCOL,
    markdown,
    per_request,
    run,
    summary,
)
from loadtests.harness import parse_cpu_times
from loadtests.protocol_app import HttpAnswerer, answer_bytes
from starlette.testclient import TestClient


def test_cpu_seconds_counts_fields_after_a_command_name_with_spaces_and_parentheses() -> None:
    # pid (comm) state ppid ... utime stime: the name may hold ") (" itself.
    stat = "4242 (odd) (name x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0"
    assert parse_cpu_times(stat, 100) == (2.5, 0.75)


def test_per_request_divides_the_run_totals_by_the_answers() -> None:
    cost = per_request(1000, (0.03, 0.01), (0.002, 0.008), {"python": 54_000, "c": 56_500})
    assert cost == {
        "server_user_us": 30.0,
        "server_sys_us": 10.0,
        "server_us": 40.0,
        "h2load_user_us": 2.0,
        "h2load_sys_us": 8.0,
        "calls": {"c": 56.5, "python": 54.0},
    }
    assert "calls" not in per_request(10, (1.0, 0.0), (0.0, 0.0))
    with pytest.raises(ValueError, match="no request"):
        per_request(0, (1.0, 0.0), (0.0, 0.0))


def _row(rps: float, user: float, sys: float, calls: float | None = None) -> dict[str, object]:
    row: dict[str, object] = {
        "ok_rps": rps,
        "server_user_us": user,
        "server_sys_us": sys,
        "server_us": user + sys,
        "h2load_user_us": 2.0,
        "h2load_sys_us": 8.0,
    }
    if calls is not None:
        row["calls"] = {"python": calls, "c": calls + 2}
    return row


def test_summary_averages_rounds_and_compares_the_most_connections_with_the_fewest() -> None:
    rounds = [
        {
            f"{BARE}@100": _row(20_000, 28, 12),
            f"{BARE}@1000": _row(13_000, 42, 18),
            f"{COUNTED}@100": _row(10_000, 70, 20, calls=54),
            f"{COUNTED}@1000": _row(9_000, 80, 22, calls=55),
        },
        {
            f"{BARE}@100": _row(22_000, 28, 12),
            f"{BARE}@1000": _row(15_000, 44, 20),
            f"{COUNTED}@100": _row(10_000, 70, 20, calls=54),
            f"{COUNTED}@1000": _row(9_000, 80, 22, calls=55),
        },
    ]
    s = summary(rounds, [100, 1000])
    assert set(s) == {BARE, COUNTED}  # the protocol server never ran
    assert s[BARE]["at"]["1000"]["ok_rps"] == 14_000
    ratio = s[BARE]["most_over_fewest"]
    assert ratio["ok_rps"] == round(14_000 / 21_000, 3)
    assert ratio["server_us"] == 1.55  # 62 / 40
    assert s[COUNTED]["most_over_fewest"]["calls_python"] == round(55 / 54, 3)
    table = markdown({"summary": s, "params": {"connections": [100, 1000]}, "rounds": rounds})
    assert "| bare | 1,000 | 14,000 | 62.0 (43.0 + 19.0) | 10.0 | - |" in table
    assert "| bare-counted | 1,000 | (hooked) |" in table
    assert "| bare | 0.67x | 1.55x |" in table
    assert "| bare-counted | - | 1.13x |" in table  # 102 / 90 us, and no req/s of its own


def test_the_protocol_server_answers_each_request_with_the_bare_endpoints_bytes() -> None:
    bare = TestClient(create_app(16)).get("/v1/learners/7/weaknesses")
    answer = answer_bytes(16)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert body == bare.content and len(body) == int(bare.headers["content-length"])
    assert b"content-type: application/json" in head

    async def exchange() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpAnswerer(answer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = b"GET /v1/learners/1/weaknesses HTTP/1.1\r\nhost: x\r\n\r\n"
            writer.write(request * 2)  # pipelined: two answers
            two = await asyncio.wait_for(reader.readexactly(2 * len(answer)), 10)
            writer.write(request[:20])  # one request in two writes: one answer, once whole
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(request[20:])
            one = await asyncio.wait_for(reader.readexactly(len(answer)), 10)
            writer.close()
            return two, one
        finally:
            server.close()
            await server.wait_closed()

    two, one = asyncio.run(exchange())
    assert two == answer * 2 and one == answer


@pytest.mark.timeout(150)
def test_a_short_run_measures_cost_and_calls_per_request_on_all_three_servers() -> None:
    if shutil.which("h2load") is None:
        pytest.fail("h2load is not installed: run `make services`")
    args = argparse.Namespace(rounds=1, connections=[2, 20], duration=1.0, max_seconds=140)
    result = run(args)
    (row,) = result["rounds"]
    assert set(row) == {f"{n}@{c}" for n in (BARE, PROTOCOL, COUNTED) for c in (2, 20)}
    for m in row.values():
        assert m["ok"] > 0 and m["statuses"] == {"200": m["ok"]}
        assert m["server_us"] > 0
    calls = row[f"{COUNTED}@20"]["calls"]
    # A request through uvicorn and Starlette makes dozens of Python calls; the counted
    # server answers the same code path, so the count must be well above zero and bounded.
    assert 10 < calls["python"] < 1000 and calls["c"] > 0
    assert "calls" not in row[f"{BARE}@20"]
    assert set(result["summary"]) == {BARE, PROTOCOL, COUNTED}
    assert "| protocol | 20 |" in markdown(result)
