"""The config reloader against a real PgBouncer: a changed pgbouncer.ini, swapped in the way a
ConfigMap volume swaps it, is applied with RELOAD while the clients stay connected; it retries
while PgBouncer is down; the command runs, logs, keeps its heartbeat and stops on SIGTERM."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from sqlalchemy.engine import make_url

from skillcoach.pgbouncer.admin import admin_query
from skillcoach.pgbouncer.reloader import Backoff, Reloader, content_digest, heartbeat_age
from skillcoach_devstack.pgbouncer import PgBouncer, PgBouncerConfig, render_config
from skillcoach_devstack.postgres import libpq_url
from skillcoach_devstack.processes import wait_until

# Wide: a loaded 2-core CI machine.
DEADLINE = 20.0


def _show_config(bouncer: PgBouncer) -> dict[str, str]:
    return {r["key"]: str(r["value"]) for r in admin_query(bouncer.admin_url, "SHOW CONFIG")}


def _connect(bouncer: PgBouncer, pg_url: str) -> psycopg2.extensions.connection:
    url = make_url(pg_url)
    dsn = libpq_url(bouncer.url(url.username or "postgres", url.database or "postgres"))
    return psycopg2.connect(dsn, connect_timeout=3)


def _scalar(conn: psycopg2.extensions.connection, sql: str) -> object:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
    assert row is not None
    return row[0]


class ConfigMapDir:
    """A directory laid out as the kubelet lays out a ConfigMap volume: pgbouncer.ini ->
    ..data/pgbouncer.ini, ..data -> a timestamped dir; `publish` writes a new dir and flips
    ..data with one rename, the atomic swap the reloader must notice."""

    def __init__(self, root: Path, owner: tuple[int, int]) -> None:
        self.root = root
        self.owner = owner
        self.generation = 0

    @property
    def file(self) -> Path:
        return self.root / "pgbouncer.ini"

    def publish(self, text: str) -> None:
        self.generation += 1
        version = self.root / f"..2026_01_01_00_00_{self.generation:02d}.000000000"
        version.mkdir(mode=0o700)
        (version / "pgbouncer.ini").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version.name)
        for path in (version, version / "pgbouncer.ini"):
            os.chown(path, *self.owner)
        os.lchown(tmp, *self.owner)
        os.replace(tmp, self.root / "..data")
        if not self.file.is_symlink():
            self.file.unlink(missing_ok=True)
            self.file.symlink_to("..data/pgbouncer.ini")
            os.lchown(self.file, *self.owner)


def _as_configmap(bouncer: PgBouncer) -> ConfigMapDir:
    """Turn the running PgBouncer's ini into a ConfigMap-style symlink (same content)."""
    rt = bouncer.config.runtime_dir
    st = rt.stat()
    cm = ConfigMapDir(rt, (st.st_uid, st.st_gid))
    text = bouncer.ini_path.read_text()
    bouncer.ini_path.unlink()
    cm.publish(text)
    assert cm.file == bouncer.ini_path and cm.file.is_symlink()
    return cm


@contextmanager
def _running(reloader: Reloader) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=reloader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the reloader did not stop"


@pytest.mark.integration
def test_a_swapped_config_is_reloaded_and_held_clients_keep_working(
    make_pgbouncer: Callable[..., PgBouncer], pg_url: str
) -> None:
    bouncer = make_pgbouncer(default_pool_size=3, max_db_connections=20)
    cm = _as_configmap(bouncer)
    assert _show_config(bouncer)["default_pool_size"] == "3"
    reloader = Reloader(cm.file, bouncer.admin_url, interval=0.2)

    # Two clients held across the reload: one idle between transactions, one inside an open
    # transaction (which holds a PostgreSQL backend).
    idle = _connect(bouncer, pg_url)
    busy = _connect(bouncer, pg_url)
    try:
        assert _scalar(idle, "SELECT 1") == 1
        idle.commit()
        backend = _scalar(busy, "SELECT pg_backend_pid()")
        with busy.cursor() as cur:
            cur.execute("CREATE TEMP TABLE held (x int) ON COMMIT DROP")

        with _running(reloader):
            # The reload at start, of the unchanged file.
            assert wait_until(lambda: reloader.reloads == 1, DEADLINE), reloader.failures
            assert reloader.applied == content_digest(cm.file)

            cm.publish(render_config(_template(bouncer), _with(bouncer, default_pool_size=7)))

            assert wait_until(lambda: reloader.reloads == 2, DEADLINE)
            assert wait_until(lambda: _show_config(bouncer)["default_pool_size"] == "7", DEADLINE)
        assert reloader.applied == content_digest(cm.file)
        assert reloader.failures == 0

        # Nobody was dropped: the open transaction goes on, on the same backend, and commits.
        assert _scalar(busy, "SELECT pg_backend_pid()") == backend
        _scalar(busy, "INSERT INTO held VALUES (1) RETURNING x")
        busy.commit()
        assert _scalar(idle, "SELECT 2") == 2
        idle.commit()
        assert not idle.closed and not busy.closed
    finally:
        idle.close()
        busy.close()


@pytest.mark.integration
def test_an_unchanged_file_is_not_reloaded_again(
    make_pgbouncer: Callable[..., PgBouncer],
) -> None:
    bouncer = make_pgbouncer()
    reloader = Reloader(bouncer.ini_path, bouncer.admin_url, interval=0.05)
    stop = threading.Event()
    passes = reloader.run(stop, max_passes=10)
    assert passes == 10
    assert reloader.reloads == 1


@pytest.mark.integration
def test_it_retries_with_backoff_until_pgbouncer_answers(
    make_pgbouncer: Callable[..., PgBouncer],
) -> None:
    bouncer = make_pgbouncer(default_pool_size=4)
    assert bouncer.stop()
    reloader = Reloader(
        bouncer.ini_path, bouncer.admin_url, interval=0.1, backoff=Backoff(0.1, 0.4)
    )
    with _running(reloader):
        assert wait_until(lambda: reloader.failures >= 3, DEADLINE)
        assert reloader.reloads == 0
        bouncer.start(timeout=15)
        assert wait_until(lambda: reloader.reloads == 1, DEADLINE)
    assert reloader.failures == 0
    assert _show_config(bouncer)["default_pool_size"] == "4"


@pytest.mark.integration
def test_a_missing_file_waits_and_then_is_applied(
    make_pgbouncer: Callable[..., PgBouncer], tmp_path: Path
) -> None:
    bouncer = make_pgbouncer()
    config = tmp_path / "pgbouncer.ini"
    reloader = Reloader(config, bouncer.admin_url, interval=0.05)
    assert reloader.step() == 0.05
    assert reloader.reloads == 0 and reloader.applied is None
    config.write_text(bouncer.ini_path.read_text())
    reloader.step()
    assert reloader.reloads == 1
    assert reloader.applied == content_digest(config)


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=3.0)
    assert [backoff.delay(n) for n in range(0, 7)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert Backoff().delay(10_000) == 30.0


def test_content_digest_follows_the_symlink_swap(tmp_path: Path) -> None:
    cm = ConfigMapDir(tmp_path, (os.getuid(), os.getgid()))
    cm.publish("a = 1\n")
    first = content_digest(cm.file)
    cm.publish("a = 2\n")
    assert first is not None and content_digest(cm.file) not in (None, first)
    assert content_digest(tmp_path / "missing") is None


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        Reloader(tmp_path / "x", "postgresql://x@127.0.0.1:1/pgbouncer", interval=0)


@pytest.mark.integration
def test_the_command_reloads_beats_and_stops_on_sigterm(
    make_pgbouncer: Callable[..., PgBouncer], tmp_path: Path
) -> None:
    bouncer = make_pgbouncer()
    heartbeat = tmp_path / "heartbeat"
    proc = subprocess.Popen(
        [sys.executable, "-m", "skillcoach.cli", "pgbouncer-reloader",
         "--config", str(bouncer.ini_path), "--interval", "0.2", "--heartbeat", str(heartbeat)],
        # The URL comes from the environment, so its password never shows in `ps`.
        env={**os.environ, "SKILLCOACH_PGBOUNCER_ADMIN_URL": bouncer.admin_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert wait_until(heartbeat.exists, DEADLINE)
        check = [sys.executable, "-m", "skillcoach.cli", "pgbouncer-reloader"]
        fresh = subprocess.run(
            [*check, "--check-heartbeat", str(heartbeat), "--max-age", "60"], timeout=30
        )
        assert fresh.returncode == 0
        # The loop keeps touching it.
        os.utime(heartbeat, (time.time() - 3600, time.time() - 3600))
        assert wait_until(lambda: (heartbeat_age(heartbeat) or 3600) < 60, DEADLINE)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    out = proc.stdout.read() if proc.stdout else ""
    digest = content_digest(bouncer.ini_path)
    assert digest is not None and f"PgBouncer reloaded {bouncer.ini_path} (sha256 {digest})" in out
    assert "at start" in out, out
    assert "stopped after 1 reloads" in out, out


def test_the_heartbeat_check_fails_when_stale_or_missing(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    check = [sys.executable, "-m", "skillcoach.cli", "pgbouncer-reloader", "--check-heartbeat"]
    missing = subprocess.run([*check, str(heartbeat)], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "missing" in missing.stderr
    heartbeat.touch()
    os.utime(heartbeat, (time.time() - 120, time.time() - 120))
    stale = subprocess.run(
        [*check, str(heartbeat), "--max-age", "60"], capture_output=True, text=True, timeout=30
    )
    assert stale.returncode == 1 and "old" in stale.stderr


def test_the_command_needs_a_config_and_an_admin_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SKILLCOACH_PGBOUNCER_ADMIN_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "skillcoach.cli", "pgbouncer-reloader", "--config", "/x"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "--admin-url" in result.stderr


def _template(bouncer: PgBouncer) -> str:
    return bouncer.template_path.read_text()


def _with(bouncer: PgBouncer, *, default_pool_size: int) -> PgBouncerConfig:
    return dataclasses.replace(bouncer.config, default_pool_size=default_pool_size)
