"""PgBouncer for the local stack and the tests: render its config, run it, ask its console.

Rendering (`render_config`, `render_userlist`) is pure. `PgBouncer` runs one daemon from a
runtime dir /tmp/skillcoach-pgbouncer-<port>/ owned by the postgres user: PgBouncer refuses
to run as root, and the checkout may sit in a 0700 directory postgres cannot traverse.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

import psycopg2

from skillcoach.pgbouncer.admin import admin_query
from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import require_binary
from skillcoach_devstack.processes import (
    ensure_port_free,
    free_port,
    owned_pid,
    run_bounded,
    stop_owned,
    wait_healthy,
)

__all__ = [
    "ADMIN_USER",
    "PgBouncer",
    "PgBouncerConfig",
    "default_template_path",
    "render_config",
    "render_userlist",
    "runtime_dir_for",
    "start_ephemeral",
    "stop_ephemeral",
]

ADMIN_USER = "pgbouncer_admin"


def default_template_path() -> Path:
    """The PgBouncer config template shipped with this package. In the checkout it is a
    symlink to the Helm chart's deploy/pgbouncer/files/pgbouncer.ini.tmpl, the one source both
    render from; a built wheel carries the file itself."""
    return Path(__file__).resolve().parent / "templates" / "pgbouncer.ini.tmpl"


def runtime_dir_for(port: int) -> Path:
    # Literal /tmp, not tempfile.gettempdir(): TMPDIR may point into a 0700 directory.
    return Path("/tmp") / f"skillcoach-pgbouncer-{port}"


@dataclass(frozen=True, slots=True)
class PgBouncerConfig:
    listen_port: int
    runtime_dir: Path
    # Databases exposed under the same name as on the server.
    databases: Sequence[str]
    server_host: str = "127.0.0.1"
    server_port: int = 5432
    listen_addr: str = "127.0.0.1"
    admin_user: str = ADMIN_USER
    # Any other database name is forwarded too: the tests create databases per test.
    wildcard: bool = True
    default_pool_size: int = 20
    reserve_pool_size: int = 5
    reserve_pool_timeout: float = 1.0
    max_db_connections: int = 50
    max_client_conn: int = 500
    query_wait_timeout: int = 10
    # Where PgBouncer logs, keeps its pid and reads its userlist; None: in runtime_dir, as the
    # daemon this module runs needs. The Helm chart renders the same template with "" (stderr,
    # no pidfile in the foreground) and the userlist its init container writes.
    logfile: str | None = None
    pidfile: str | None = None
    auth_file: str | None = None

    @property
    def logfile_path(self) -> str:
        return str(self.runtime_dir / "pgbouncer.log") if self.logfile is None else self.logfile

    @property
    def pidfile_path(self) -> str:
        return str(self.runtime_dir / "pgbouncer.pid") if self.pidfile is None else self.pidfile

    @property
    def auth_file_path(self) -> str:
        if self.auth_file is None:
            return str(self.runtime_dir / "userlist.txt")
        return self.auth_file

    def database_entries(self) -> str:
        server = f"host={self.server_host} port={self.server_port}"
        lines = [f"{name} = {server} dbname={name}" for name in self.databases]
        if self.wildcard:
            lines.append(f"* = {server}")
        return "\n".join(lines)


def render_config(template: str, cfg: PgBouncerConfig) -> str:
    """The pgbouncer.ini text; a placeholder without a value raises KeyError."""
    return Template(template).substitute(
        database_entries=cfg.database_entries(),
        listen_addr=cfg.listen_addr,
        listen_port=cfg.listen_port,
        logfile=cfg.logfile_path,
        pidfile=cfg.pidfile_path,
        auth_file=cfg.auth_file_path,
        admin_user=cfg.admin_user,
        default_pool_size=cfg.default_pool_size,
        reserve_pool_size=cfg.reserve_pool_size,
        reserve_pool_timeout=f"{cfg.reserve_pool_timeout:g}",
        max_db_connections=cfg.max_db_connections,
        max_client_conn=cfg.max_client_conn,
        query_wait_timeout=cfg.query_wait_timeout,
    )


def render_userlist(users: Mapping[str, str]) -> str:
    """auth_file lines `"user" "password"`; a double quote is escaped by doubling it."""

    def q(s: str) -> str:
        return '"' + s.replace('"', '""') + '"'

    return "".join(f"{q(user)} {q(password)}\n" for user, password in users.items())


@dataclass
class PgBouncer:
    """One PgBouncer daemon: users maps user name to password (admin user included)."""

    config: PgBouncerConfig
    users: Mapping[str, str]
    template_path: Path = field(default_factory=default_template_path)

    @property
    def ini_path(self) -> Path:
        return self.config.runtime_dir / "pgbouncer.ini"

    # The daemon writes these, so they must be set (not "") in a config it runs.
    @property
    def userlist_path(self) -> Path:
        return Path(self.config.auth_file_path)

    @property
    def pidfile(self) -> Path:
        return Path(self.config.pidfile_path)

    @property
    def logfile(self) -> Path:
        return Path(self.config.logfile_path)

    def url(self, user: str, database: str, *, driver: str = "postgresql+psycopg2") -> str:
        password = quote(self.users[user], safe="")
        host, port = self.config.listen_addr, self.config.listen_port
        return f"{driver}://{quote(user, safe='')}:{password}@{host}:{port}/{database}"

    @property
    def admin_url(self) -> str:
        return self.url(self.config.admin_user, "pgbouncer", driver="postgresql")

    def pid(self) -> int | None:
        return owned_pid(self.pidfile, "pgbouncer")

    def is_running(self) -> bool:
        return self.pid() is not None

    def healthy(self) -> bool:
        try:
            admin_query(self.admin_url, "SHOW VERSION", timeout=2)
        except psycopg2.Error:
            return False
        return True

    def write_files(self) -> bool:
        """Render ini and userlist into the runtime dir; True if either changed."""
        run_as = _run_as_user()
        rt = self.config.runtime_dir
        rt.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            template = self.template_path.read_text()
        except FileNotFoundError:
            raise StackError(
                f"no PgBouncer template at {self.template_path} (or pass --root)"
            ) from None
        ini = render_config(template, self.config)
        changed = _write_private(self.ini_path, ini)
        changed |= _write_private(self.userlist_path, render_userlist(self.users))
        if run_as is not None:
            uid, gid = run_as.pw_uid, run_as.pw_gid
            for path in (rt, self.ini_path, self.userlist_path):
                os.chown(path, uid, gid)
            # A log from an earlier run as another user would stop the daemon from opening it.
            if self.logfile.exists():
                os.chown(self.logfile, uid, gid)
        os.chmod(rt, 0o700)
        return changed

    def start(self, *, timeout: float = 15.0) -> None:
        """Write the files and start the daemon; a running one is reloaded instead."""
        changed = self.write_files()
        pid = self.pid()
        if pid is not None:
            if changed:
                os.kill(pid, signal.SIGHUP)  # re-reads ini and userlist, keeps connections
            return
        ensure_port_free(self.config.listen_addr, self.config.listen_port, who="pgbouncer")
        binary = require_binary("pgbouncer", package="pgbouncer")
        self.pidfile.unlink(missing_ok=True)
        cmd = [binary, "-d", str(self.ini_path)]
        run_as = _run_as_user()
        if run_as is not None:
            cmd = ["runuser", "-u", run_as.pw_name, "--", *cmd]
        # -d: it forks into the background once listening, so this returns quickly.
        run_bounded(cmd, what="pgbouncer", timeout=timeout, log=self.logfile)
        wait_healthy(
            self.healthy,
            timeout,
            what=f"pgbouncer on port {self.config.listen_port} did not answer",
            logfile=self.logfile,
        )

    def stop(self, *, timeout: float = 10.0) -> bool:
        """Stop the daemon if it runs (SIGTERM: immediate shutdown); True if it ran."""
        return stop_owned(self.pidfile, "pgbouncer", timeout=timeout)


def _run_as_user() -> pwd.struct_passwd | None:
    """Root runs PgBouncer as postgres (it refuses root); anyone else runs it as themselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("running as root needs a 'postgres' user to run PgBouncer as") from None


def _write_private(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except (FileNotFoundError, PermissionError):
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True


def start_ephemeral(server_url: str, *, attempts: int = 3, **overrides: Any) -> PgBouncer:
    """A throw-away PgBouncer (tests, benchmarks) on a free port in front of server_url's
    PostgreSQL, for its database and user (random password), plus a `*` entry so other
    databases of the server work through it too. Stop it with `stop_ephemeral`."""
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    user = url.username or "postgres"
    users = {user: secrets.token_urlsafe(16), ADMIN_USER: secrets.token_urlsafe(16)}
    last: StackError | None = None
    for _ in range(attempts):  # a free port can be taken between choosing and binding it
        port = free_port()
        bouncer = PgBouncer(
            config=PgBouncerConfig(
                listen_port=port,
                runtime_dir=runtime_dir_for(port),
                databases=[url.database or "postgres"],
                server_host=url.host or "127.0.0.1",
                server_port=url.port or 5432,
                **overrides,
            ),
            users=users,
        )
        try:
            bouncer.start(timeout=15)
        except StackError as exc:
            last = exc
            stop_ephemeral(bouncer)
            continue
        return bouncer
    raise StackError(f"PgBouncer did not start in {attempts} attempts: {last}")


def stop_ephemeral(bouncer: PgBouncer) -> None:
    """Stop it and remove its runtime dir (config, userlist with passwords, log)."""
    bouncer.stop()
    shutil.rmtree(bouncer.config.runtime_dir, ignore_errors=True)
