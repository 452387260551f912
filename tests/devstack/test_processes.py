"""Process helpers: liveness (zombies count as dead), bounded waits, SIGTERM then SIGKILL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skillcoach_devstack.processes import (
    ApiReplica,
    bindable,
    free_port,
    free_port_block,
    free_ports,
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


def test_free_ports_are_distinct_and_free() -> None:
    # Each is held while the next is chosen, so none can be handed out twice (a stack once
    # gave PgBouncer and HAProxy's stats page the same port from two free_port calls).
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(bindable(p) for p in ports)


def test_free_port_block_skips_blocks_with_a_taken_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        assert not bindable(taken)
        # The only candidate bases in [taken - 1, taken + 1) all include the held port.
        with pytest.raises(RuntimeError, match="no free block"):
            free_port_block(2, low=taken - 1, high=taken + 1, attempts=20)
        # With an offset, the held port also counts when it is base + offset.
        with pytest.raises(RuntimeError):
            free_port_block(1, low=taken - 5, high=taken - 4, offsets=(0, 5), attempts=5)
    base = free_port_block(3, low=21000, high=22000, offsets=(0, 100))
    assert all(bindable(base + i + o) for o in (0, 100) for i in range(3))


def test_a_replica_records_its_metrics_port(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    replica = ApiReplica(port=port, state_dir=tmp_path, metrics_port=metrics)
    assert replica.metrics_url == f"http://127.0.0.1:{metrics}/metrics"
    assert replica.name == f"api-{port}"
    code = "import time; time.sleep(60)"
    env = {"PATH": "/usr/bin:/bin"}
    # `skillcoach` must be on its command line to count as ours: a stand-in that sleeps.
    proc = subprocess.Popen([sys.executable, "-c", code, "skillcoach"], env=env)
    try:
        replica.pidfile.write_text(f"{proc.pid}\n")
        replica.metrics_port_file.write_text(f"{metrics}\n")
        [known] = known_replicas(tmp_path)
        assert (known.port, known.metrics_port) == (port, metrics)
        assert known.pid() == proc.pid
        assert known.stop(timeout=5)
        assert not replica.metrics_port_file.exists()
        assert known_replicas(tmp_path) == []
    finally:
        proc.kill()
        proc.wait(5)


def test_a_replica_started_without_a_metrics_port_has_no_metrics_url(tmp_path: Path) -> None:
    (tmp_path / "api-8001.pid").write_text("1\n")
    [known] = known_replicas(tmp_path)
    assert known.metrics_port is None and known.metrics_url is None
