"""HAProxy: the rendered config (pure) and a real HAProxy in front of tiny HTTP servers."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from skillcoach.limits import running_limit
from skillcoach.settings import Settings
from skillcoach_devstack.commands import (
    balancer_limit,
    make_haproxy,
)
from skillcoach_devstack.config import StackConfig
from skillcoach_devstack.haproxy import (
    HAProxy,
    HAProxyConfig,
    Server,
    default_template_path,
    parse_server_states,
    render_config,
)
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.processes import free_port, pid_alive, wait_until
from skillcoach_operator.sizing import PoolPlan

TEMPLATE = default_template_path().read_text()


def _config(**overrides: object) -> HAProxyConfig:
    values: dict[str, object] = {
        "listen_port": 18000,
        "stats_port": 18404,
        "servers": (Server("api-18001", 18001), Server("api-18002", 18002)),
    }
    values.update(overrides)
    return HAProxyConfig(**values)  # type: ignore[arg-type]


def _directives(text: str) -> list[str]:
    """Config lines without comments and indentation."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def test_rendered_config_has_the_servers_checks_and_timeouts() -> None:
    lines = _directives(render_config(TEMPLATE, _config()))
    assert "bind 127.0.0.1:18000" in lines
    assert "bind 127.0.0.1:18404" in lines
    # Each replica gets at most twice what it runs (2 x 2 x 16 pool) at once; the rest queue.
    assert "server api-18001 127.0.0.1:18001 maxconn 64" in lines
    assert "server api-18002 127.0.0.1:18002 maxconn 64" in lines
    assert "balance leastconn" in lines
    assert "http-check send meth GET uri /readyz" in lines
    assert "http-check expect status 200" in lines
    assert "default-server check inter 1s fall 2 rise 2" in lines
    for timeout in ("connect 2s", "client 30s", "server 30s", "queue 1s"):
        assert f"timeout {timeout}" in lines
    # Retries only when the replica never saw the request.
    assert "retry-on conn-failure" in lines
    assert "http-request use-service prometheus-exporter if { path /metrics }" in lines
    assert "hard-stop-after 10s" in lines


def test_every_placeholder_is_filled_and_loopback_only() -> None:
    text = render_config(TEMPLATE, _config())
    assert "${" not in text
    binds = [line for line in _directives(text) if line.startswith("bind ")]
    assert binds
    assert all(line.startswith("bind 127.0.0.1:") for line in binds)


def test_server_maxconn_and_queue_timeout_are_configurable() -> None:
    servers = (Server("api-1", 1), Server("api-2", 2, maxconn=7))
    lines = _directives(
        render_config(TEMPLATE, _config(servers=servers, server_maxconn=40, timeout_queue="100ms"))
    )
    assert "server api-1 127.0.0.1:1 maxconn 40" in lines
    assert "server api-2 127.0.0.1:2 maxconn 7" in lines
    assert "timeout queue 100ms" in lines
    # maxconn 0 would mean "unlimited" to HAProxy.
    with pytest.raises(ValueError, match="maxconn"):
        render_config(TEMPLATE, _config(server_maxconn=0))
    with pytest.raises(ValueError, match="maxconn"):
        render_config(TEMPLATE, _config(servers=(Server("a", 1, maxconn=0),)))


def test_the_stack_sends_each_replica_twice_what_it_runs_and_queues_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = StackConfig(root=Path("/r"))
    plan = PoolPlan(
        pool_size=12,
        max_overflow=3,
        pool_timeout=2.0,
        pool_recycle=3600,
        pgbouncer_default_pool_size=45,
        oversubscribed=False,
    )
    monkeypatch.delenv("SKILLCOACH_QUEUE_ALLOWANCE", raising=False)
    # Without a plan (status, stop): the default settings' limit.
    defaults = Settings()
    capacity = defaults.pool_size + defaults.max_overflow
    assert make_haproxy(cfg, (8001,)).config.server_maxconn == 2 * running_limit(
        pool_capacity=capacity
    )
    lb = make_haproxy(cfg, (8001, 8002), plan=plan)
    assert lb.config.server_maxconn == balancer_limit(plan) == 2 * 2 * (12 + 3)
    directives = _directives(lb.render())
    assert "server api-8002 127.0.0.1:8002 maxconn 60" in directives
    # The excess waits in HAProxy's queue, bounded by time, not refused at once.
    assert "timeout queue 1s" in directives
    # The queue allowance bounds what a replica admits, not what HAProxy sends it.
    monkeypatch.setenv("SKILLCOACH_QUEUE_ALLOWANCE", "50")
    assert make_haproxy(cfg, (8001,), plan=plan).config.server_maxconn == 60


def test_no_servers_and_bad_values() -> None:
    lines = _directives(render_config(TEMPLATE, _config(servers=())))
    assert not [line for line in lines if line.startswith("server ")]
    with pytest.raises(ValueError, match="balance"):
        render_config(TEMPLATE, _config(balance="random"))
    with pytest.raises(ValueError, match="duplicate"):
        render_config(TEMPLATE, _config(servers=(Server("a", 1), Server("a", 2))))
    with pytest.raises(KeyError, match="nonsense"):
        render_config(TEMPLATE + "\n# ${nonsense}\n", _config())


def test_stats_csv_is_parsed_for_the_replicas_backend() -> None:
    csv_text = (
        "# pxname,svname,qcur,status,\n"
        "api,FRONTEND,,OPEN,\n"
        "replicas,api-8001,0,UP,\n"
        "replicas,api-8002,0,DOWN,\n"
        "replicas,BACKEND,0,UP,\n"
        "stats,FRONTEND,,OPEN,\n"
    )
    assert parse_server_states(csv_text) == {"api-8001": "UP", "api-8002": "DOWN"}


# --- a real HAProxy --------------------------------------------------------------------------


class _Backend:
    """A tiny HTTP server: / answers its name (after `delay` seconds), /readyz answers 200
    until made unready; it records the most requests other than /readyz it held at once."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.ready = True
        self.in_flight = self.peak_in_flight = 0
        lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    status, body = (200, b"ready") if backend.ready else (503, b"not ready")
                else:
                    with lock:
                        backend.in_flight += 1
                        backend.peak_in_flight = max(backend.peak_in_flight, backend.in_flight)
                    try:
                        time.sleep(delay)
                    finally:
                        with lock:
                            backend.in_flight -= 1
                    status, body = 200, backend.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # HAProxy closes a check's connection with a reset once it has the status

        self.server = Quiet(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def backends() -> Iterator[tuple[_Backend, _Backend]]:
    a, b = _Backend("a"), _Backend("b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _haproxy(tmp_path: Path, servers: tuple[_Backend, ...], **config: object) -> HAProxy:
    if find_binary("haproxy") is None:
        pytest.fail("haproxy is not installed: run `make test` (installs it)", pytrace=False)
    return HAProxy(
        config=HAProxyConfig(
            listen_port=free_port(),
            stats_port=free_port(),
            servers=tuple(Server(f"api-{s.name}", s.port) for s in servers),
            check_interval="100ms",
            hard_stop_after="3s",
            **config,  # type: ignore[arg-type]
        ),
        runtime_dir=tmp_path / "haproxy",
        logfile=tmp_path / "haproxy.log",
        template_path=default_template_path(),
    )


def _get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _spread(url: str, n: int) -> Counter[str]:
    return Counter(_get(url)[1] for _ in range(n))


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    return wait_until(predicate, timeout, interval=0.05)


def test_balances_takes_out_an_unready_backend_and_reloads_softly(
    tmp_path: Path, backends: tuple[_Backend, _Backend]
) -> None:
    a, b = backends
    lb = _haproxy(tmp_path, (a, b))
    try:
        assert lb.apply(timeout=10) == ("started", None)
        assert lb.healthy()
        assert lb.apply(timeout=10) == ("unchanged", None)
        assert _wait(lambda: lb.server_states() == {"api-a": "UP", "api-b": "UP"}, 5)

        # Sequential requests take turns (leastconn with equal counts).
        assert _spread(lb.url + "/", 10) == Counter({"a": 5, "b": 5})

        # /readyz failing twice takes b out: every request goes to a.
        b.ready = False
        assert _wait(lambda: (lb.server_states() or {}).get("api-b") == "DOWN", 5)
        assert _spread(lb.url + "/", 6) == Counter({"a": 6})
        b.ready = True
        assert _wait(lambda: (lb.server_states() or {}).get("api-b") == "UP", 5)

        # Prometheus metrics of HAProxy itself on the stats port.
        status, body, _ = _get(lb.metrics_url)
        assert status == 200
        assert 'haproxy_server_status{proxy="replicas",server="api-a"' in body

        # Soft reload onto a only: the new process serves, the old one leaves.
        first_pid = lb.pid()
        assert first_pid is not None
        narrowed = HAProxy(
            config=HAProxyConfig(
                listen_port=lb.config.listen_port,
                stats_port=lb.config.stats_port,
                servers=(Server("api-a", a.port),),
                check_interval="100ms",
                hard_stop_after="3s",
            ),
            runtime_dir=lb.runtime_dir,
            logfile=lb.logfile,
            template_path=lb.template_path,
        )
        outcome, old = narrowed.apply(timeout=10)
        assert (outcome, old) == ("reloaded", first_pid)
        assert narrowed.pid() not in (None, first_pid)
        assert HAProxy.wait_retired(first_pid, timeout=5)
        assert not pid_alive(first_pid)
        assert _spread(lb.url + "/", 4) == Counter({"a": 4})
        lb = narrowed

        # No replica ready at all: HAProxy's own 503 is problem+json with Retry-After.
        a.ready = False
        assert _wait(lambda: (lb.server_states() or {}).get("api-a") == "DOWN", 5)
        status, body, headers = _get(lb.url + "/v1/anything")
        assert status == 503
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] == "1"
        assert json.loads(body)["status"] == 503
    finally:
        pid = lb.pid()
        assert lb.stop(timeout=5) is (pid is not None)
    assert lb.pid() is None
    assert pid is None or not pid_alive(pid)
    log = lb.logfile.read_text()
    # Health-check transitions and HAProxy's own 503s land in the log.
    assert "Server replicas/api-b is DOWN" in log
    assert "Server replicas/api-b is UP" in log
    assert re.search(r"replicas/<NOSRV> .* 503 .*GET /v1/anything", log)


def test_beyond_the_replica_limit_haproxy_answers_503_at_once(tmp_path: Path) -> None:
    """maxconn 2 on a backend that takes 0.5 s per request: of 10 concurrent requests two are
    served, and the other eight wait at most `timeout queue` in HAProxy's queue and get its own
    503 problem+json, long before a slot would free up; the backend never holds more than 2."""
    slow = _Backend("slow", delay=0.5)
    lb = _haproxy(tmp_path, (slow,), server_maxconn=2, timeout_queue="100ms")
    start = threading.Barrier(10)

    def request(_: int) -> tuple[int, str, dict[str, str], float]:
        start.wait(timeout=5)
        t0 = time.perf_counter()
        status, body, headers = _get(lb.url + "/v1/slow")
        return status, body, headers, time.perf_counter() - t0

    try:
        lb.apply(timeout=10)
        assert _wait(lambda: lb.server_states() == {"api-slow": "UP"}, 5)
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(request, range(10)))
    finally:
        lb.stop(timeout=5)
        slow.close()
    served = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(served) == 2 and len(shed) == 8, [(r[0], round(r[3], 3)) for r in results]
    assert all(r[1] == "slow" and r[3] >= 0.5 for r in served)
    for _, body, headers, took in shed:
        assert took < 0.4, took
        assert headers["content-type"] == "application/problem+json"
        assert headers["retry-after"] == "1"
        assert json.loads(body) == {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "no API replica is available",
        }
    assert slow.peak_in_flight == 2
    # Logged as refused after waiting in the backend's queue: termination state sQ, the queue
    # time (Tw, second of the timers) about the 100 ms timeout.
    queued = re.findall(
        r"replicas/<NOSRV> \d+/(\d+)/\S+ 503 .* sQ-- .*GET /v1/slow", lb.logfile.read_text()
    )
    assert len(queued) == 8 and all(90 <= int(tw) < 400 for tw in queued), queued
