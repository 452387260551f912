"""Process helpers: liveness (zombies count as dead), bounded waits, SIGTERM then SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from skillcoach.stack.processes import (
    ApiReplica,
    free_port,
    http_status,
    known_replicas,
    pid_alive,
    port_open,
    read_pidfile,
    terminate,
    wait_until,
)


def test_wait_until_respects_its_deadline() -> None:
    t0 = time.monotonic()
    assert not wait_until(lambda: False, 0.3, interval=0.05)
    assert 0.25 < time.monotonic() - t0 < 2


def test_terminate_escalates_to_sigkill() -> None:
    # Ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    assert pid_alive(proc.pid)
    t0 = time.monotonic()
    terminate(proc.pid, timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not pid_alive(proc.pid)
    proc.stdout.close()


def test_pidfiles(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path / "none.pid") is None
    (tmp_path / "x.pid").write_text("garbage")
    assert read_pidfile(tmp_path / "x.pid") is None
    (tmp_path / "api-8001.pid").write_text("12345\n")
    (tmp_path / "api-8002.pid").write_text("1\n")
    assert read_pidfile(tmp_path / "api-8001.pid") == 12345
    assert [r.port for r in known_replicas(tmp_path)] == [8001, 8002]
    # pid 1 is alive but is not a skillcoach replica: never treated (or signalled) as ours.
    assert ApiReplica(port=8002, state_dir=tmp_path).pid() is None


def test_nothing_listens_on_a_free_port() -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port, timeout=0.5)
    assert http_status(f"http://127.0.0.1:{port}/healthz", timeout=0.5) is None
