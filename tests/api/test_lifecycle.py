"""SIGTERM on a real `skillcoach serve` under a steady stream of requests: /readyz turns 503
at once while ordinary requests keep succeeding through the drain, then the process exits 0
without a failed request."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.fixtures_api import Keys, run_server

DRAIN_SECONDS = 6.0
# Requests stop well inside the drain (the listener closes when it ends): 3x margin.
LOAD_AFTER_SIGTERM = DRAIN_SECONDS / 3


def test_sigterm_drains_then_exits_0(api_bouncer_url: str, keys: Keys, tmp_path: Path) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "server.log"
    results: list[int | str] = []
    stop = threading.Event()
    with run_server(
        api_bouncer_url,
        log_file=log,
        procs=procs,
        shutdown_drain_seconds=str(DRAIN_SECONDS),
    ) as (base, metrics):
        proc = procs[0]
        auth = {"Authorization": f"Bearer {keys.read}"}

        def load() -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=10) as c:
                deadline = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        results.append(c.get("/v1/learners/1/weaknesses").status_code)
                    except httpx.HTTPError as exc:
                        results.append(repr(exc))
                    time.sleep(0.01)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            time.sleep(0.5)
            before = len(results)
            proc.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            ready = []
            while time.monotonic() - sent_at < LOAD_AFTER_SIGTERM:
                ready.append(httpx.get(f"{base}/readyz", timeout=5).status_code)
                time.sleep(0.05)
            gauge = httpx.get(metrics, timeout=5).text
            stop.set()
        finally:
            stop.set()
            worker.join(timeout=30)
        served_during_drain = len(results) - before
        code = proc.wait(timeout=DRAIN_SECONDS + 30)
    assert before > 0
    # Out of rotation at once (the first poll may race the signal's delivery), and for good.
    assert ready and all(s == 503 for s in ready[1:]), ready
    assert "skillcoach_ready 0.0" in gauge
    # Still serving while draining: every request, before and after SIGTERM, succeeded.
    assert served_during_drain > 0
    assert results and all(r == 404 or r == 200 for r in results), [
        r for r in results if r not in (200, 404)
    ][:5]
    assert code == 0, log.read_text()[-3000:]
