"""HAProxy: the rendered config (pure) and a real HAProxy in front of two tiny HTTP servers."""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skillcoach.stack.haproxy import (
    HAProxy,
    HAProxyConfig,
    Server,
    default_template_path,
    parse_server_states,
    render_config,
)
from skillcoach.stack.packages import find_binary
from skillcoach.stack.processes import free_port, pid_alive, wait_until

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
    assert "server api-18001 127.0.0.1:18001" in lines
    assert "server api-18002 127.0.0.1:18002" in lines
    assert "balance leastconn" in lines
    assert "http-check send meth GET uri /readyz" in lines
    assert "http-check expect status 200" in lines
    assert "default-server check inter 1s fall 2 rise 2" in lines
    for timeout in ("connect 2s", "client 30s", "server 30s"):
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
    """A tiny HTTP server: / answers its name, /readyz answers 200 until made unready."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = True
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/readyz":
                    status, body = (200, b"ready") if backend.ready else (503, b"not ready")
                else:
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


def _haproxy(tmp_path: Path, servers: tuple[_Backend, ...]) -> HAProxy:
    if find_binary("haproxy") is None:
        pytest.fail("haproxy is not installed: run `make test` (installs it)", pytrace=False)
    return HAProxy(
        config=HAProxyConfig(
            listen_port=free_port(),
            stats_port=free_port(),
            servers=tuple(Server(f"api-{s.name}", s.port) for s in servers),
            check_interval="100ms",
            hard_stop_after="3s",
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
