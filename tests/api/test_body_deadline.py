"""A request body trickled slowly ends in 408 problem+json within the body deadline, while
the replica keeps serving others; an oversized body ends in 413."""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from skillcoach.api.body_deadline import remaining
from skillcoach.limits import MAX_BODY_BYTES
from tests.fixtures_api import Keys, run_server

BODY_TIMEOUT = 2.0


def test_remaining_is_never_negative() -> None:
    assert remaining(10.0, 2.0, 11.5) == pytest.approx(0.5)
    assert remaining(10.0, 2.0, 99.0) == 0.0


def read_response(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return data


def test_slow_body_gets_408_and_others_are_served(api_bouncer_url: str, keys: Keys) -> None:
    with run_server(api_bouncer_url, body_timeout_seconds=str(BODY_TIMEOUT)) as (base, _):
        url = urlsplit(base)
        body = b'{"attempts": [{"exercise_id": 10, "correct": true, "answered_at": "2026-01-01T00:00:00Z"}]}'
        head = (
            f"POST /v1/learners/42/attempts HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {keys.write}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        stop = threading.Event()
        others: list[int] = []

        def trickle(sock: socket.socket) -> None:
            # One byte every 0.3 s: the whole body would take ~30 s.
            for byte in body[:-1]:
                if stop.is_set():
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.3)

        with socket.create_connection((url.hostname, url.port), timeout=0.5) as sock:
            sock.sendall(head)
            started = time.monotonic()
            sender = threading.Thread(target=trickle, args=(sock,))
            sender.start()
            try:
                # Meanwhile the replica serves others.
                with httpx.Client(base_url=base, timeout=10) as c:
                    for _ in range(10):
                        others.append(c.get("/healthz").status_code)
                raw = read_response(sock, started + BODY_TIMEOUT * 5)
                elapsed = time.monotonic() - started
            finally:
                stop.set()
                sender.join(timeout=30)
        status_line, _, rest = raw.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), raw[:500]
        headers, _, payload = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        assert b"application/problem+json" in headers.lower()
        assert orjson.loads(payload)["status"] == 408
        # Within the deadline plus a generous margin, never before it.
        assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT * 4, elapsed
        assert others == [200] * 10
        # Still healthy afterwards.
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200


def test_oversized_body_is_413(client: object) -> None:
    from starlette.testclient import TestClient

    assert isinstance(client, TestClient)
    r = client.post(
        "/v1/learners/42/attempts",
        content=b"[" + b"1," * (MAX_BODY_BYTES // 2 + 10) + b"1]",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text[:200]
    assert r.headers["content-type"] == "application/problem+json"
