"""`skillcoach stack up|down|status`: the local stack, one progress line per step.

up: packages -> postgres -> pgbouncer -> redis -> migrate -> seed (if empty) -> train (if no
live model) -> api key -> api replicas -> .stack/env. Every step reuses what already runs and
is healthy, so a second `up` is quick and changes nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from skillcoach.stack import envfile, packages, postgres
from skillcoach.stack.config import Secrets, StackConfig, load_or_create_secrets
from skillcoach.stack.errors import StackError
from skillcoach.stack.pgbouncer import (
    ADMIN_USER,
    PgBouncer,
    PgBouncerConfig,
    default_template_path,
    runtime_dir_for,
)
from skillcoach.stack.processes import (
    ApiReplica,
    http_status,
    known_replicas,
    log_tail,
    run_bounded,
)
from skillcoach.stack.redis import RedisServer

__all__ = ["down", "status", "up"]

DEMO_SKILLS = 50
DEMO_ATTEMPTS_PER_LEARNER = 100


def _say(step: str, message: str) -> None:
    print(f"{step:<10} {message}", flush=True)


def make_pgbouncer(cfg: StackConfig, secrets: Secrets) -> PgBouncer:
    return PgBouncer(
        config=PgBouncerConfig(
            listen_port=cfg.pgbouncer_port,
            runtime_dir=runtime_dir_for(cfg.pgbouncer_port),
            databases=[cfg.app_database],
            server_host=cfg.pg_host,
            server_port=cfg.pg_port,
            # The stack serves one database; other names must not reach the server through it.
            wildcard=False,
        ),
        users={cfg.app_user: secrets.app_password, ADMIN_USER: secrets.admin_password},
        template_path=_template(cfg),
    )


def _template(cfg: StackConfig) -> Path:
    # ROOT's template first; else the one of the checkout this package was installed from.
    if cfg.pgbouncer_template.is_file():
        return cfg.pgbouncer_template
    fallback = default_template_path()
    return fallback if fallback.is_file() else cfg.pgbouncer_template


def make_redis(cfg: StackConfig) -> RedisServer:
    return RedisServer(port=cfg.redis_port, data_dir=cfg.redis_dir)


def _direct_url(cfg: StackConfig, secrets: Secrets) -> str:
    return (
        f"postgresql+psycopg2://{cfg.app_user}:{secrets.app_password}"
        f"@{cfg.pg_host}:{cfg.pg_port}/{cfg.app_database}"
    )


def _replica_pool(replicas: int, max_client_conn: int) -> tuple[int, int]:
    """(pool_size, max_overflow) per replica so every replica, plus one rollout surge, fits
    under PgBouncer's max_client_conn; capped at the seed defaults 20 + 30.

    Stand-in until the shared pool-sizing function (ARCHITECTURE.md) is wired in here.
    """
    capacity = max(2, min(50, (max_client_conn - 10) // (replicas + 1)))
    pool_size = max(1, capacity * 2 // 5)
    return pool_size, capacity - pool_size


def _cli(
    args: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path, timeout: float
) -> str:
    """Run `skillcoach ARGS` in a child process; its output goes to log, stdout is returned."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = run_bounded(
        [sys.executable, "-m", "skillcoach.cli", *args],
        what=f"`skillcoach {' '.join(args)}`",
        env=env,
        cwd=cwd,
        timeout=timeout,
        ok_codes=range(256),  # judged below, once the output is in the log
    )
    log.write_text(f"$ skillcoach {' '.join(args)}\n{result.stdout}\n{result.stderr}")
    if result.returncode != 0:
        raise StackError(
            f"`skillcoach {' '.join(args)}` failed (exit {result.returncode}); log {log}:\n"
            + log_tail(log)
        )
    return result.stdout


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ensure_replica(
    replica: ApiReplica,
    env: Mapping[str, str],
    settings: Mapping[str, str],
    *,
    cwd: Path,
    timeout: float,
) -> str:
    """Reuse the replica if it runs with these settings, else (re)start it; wait until ready."""
    t0 = time.monotonic()
    restarted = ""
    if replica.pid() is not None:
        if replica.started_with(settings):
            replica.wait_ready(timeout)
            return f"reused replica on {replica.url}"
        # Its database URL, password or pool changed since it started: it must pick them up.
        replica.stop()
        restarted = ", restarted: its settings changed"
    pid = replica.start(env, cwd=cwd, settings=settings)
    try:
        replica.wait_ready(timeout)
    except StackError:
        # A replica that never became ready must not linger; its log stays.
        replica.stop()
        raise
    return (
        f"started replica on {replica.url} (pid {pid},"
        f" pool {settings['SKILLCOACH_POOL_SIZE']}+{settings['SKILLCOACH_MAX_OVERFLOW']},"
        f" ready in {time.monotonic() - t0:.1f}s{restarted})"
    )


def up(root: Path, *, replicas: int) -> int:
    cfg = StackConfig.from_env(root)
    ports = cfg.api_ports(replicas)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    secrets = load_or_create_secrets(cfg.secrets_file)

    installed = packages.ensure_packages()
    _say(
        "packages",
        f"installed {' '.join(installed)}" if installed else "pgbouncer, redis-server present",
    )

    started = postgres.ensure_running(cfg.pg_admin_dsn)
    created = postgres.ensure_role_and_database(
        cfg.pg_admin_dsn,
        role=cfg.app_user,
        password=secrets.app_password,
        database=cfg.app_database,
    )
    _say(
        "postgres",
        f"{'started' if started else 'up'} at {cfg.pg_host}:{cfg.pg_port}"
        + (
            f"; created {', '.join(created)}"
            if created
            else f"; {cfg.app_user} role and database ready"
        ),
    )

    bouncer = make_pgbouncer(cfg, secrets)
    was_running = bouncer.is_running()
    bouncer.start()
    _say(
        "pgbouncer",
        f"{'reused' if was_running else 'started'} on 127.0.0.1:{cfg.pgbouncer_port}"
        f" (transaction pooling, runtime dir {bouncer.config.runtime_dir})",
    )

    cache = make_redis(cfg)
    was_running = cache.is_running()
    cache.start()
    _say("redis", f"{'reused' if was_running else 'started'} on 127.0.0.1:{cfg.redis_port}")

    db_url = bouncer.url(cfg.app_user, cfg.app_database)
    # Offline commands take the same path as the replicas: through PgBouncer.
    stack_settings = {
        "SKILLCOACH_ENVIRONMENT": "dev",
        "SKILLCOACH_DATABASE_URL": db_url,
        "SKILLCOACH_REDIS_URL": cache.url,
    }
    cli_env = {**os.environ, **stack_settings}

    def cli(args: Sequence[str], name: str, timeout: float) -> str:
        return _cli(args, env=cli_env, log=cfg.logs_dir / f"{name}.log", cwd=root, timeout=timeout)

    cli(["migrate"], "migrate", 300)
    _say("migrate", "schema at head (through PgBouncer)")

    learners = int(postgres.scalar(db_url, "SELECT count(*) FROM learners"))
    if learners:
        _say("seed", f"skipped: {learners} learners present")
    else:
        t0 = time.monotonic()
        out = cli(
            [
                "seed",
                "--learners", str(cfg.demo_learners),
                "--skills", str(DEMO_SKILLS),
                "--attempts-per-learner", str(DEMO_ATTEMPTS_PER_LEARNER),
                "--quiet",
            ],
            "seed",
            1800,
        )  # fmt: skip
        _say("seed", f"{_last_line(out) or 'done'} ({time.monotonic() - t0:.0f}s)")

    live = postgres.scalar(db_url, "SELECT max(version) FROM model_registry WHERE promoted")
    if live is not None:
        _say("train", f"skipped: model v{live} is live")
    else:
        t0 = time.monotonic()
        cli(["train", "--promote"], "train", 1800)
        live = postgres.scalar(db_url, "SELECT max(version) FROM model_registry WHERE promoted")
        _say("train", f"model v{live} trained and promoted ({time.monotonic() - t0:.0f}s)")

    def new_key() -> str:
        out = cli(["apikey", "create", "--scope", "read,write", "--name", "demo"], "apikey", 120)
        key = _last_line(out)
        if not key:
            raise StackError("`skillcoach apikey create` printed no key")
        return key

    api_key = envfile.read_env(cfg.env_file).get("SKILLCOACH_API_KEY", "")
    _say("apikey", "reusing the demo key from .stack/env" if api_key else "creating a demo key")
    if not api_key:
        api_key = new_key()

    pool_size, max_overflow = _replica_pool(len(ports), bouncer.config.max_client_conn)
    wanted = {p: ApiReplica(port=p, state_dir=cfg.state_dir) for p in ports}
    for old in known_replicas(cfg.state_dir):
        if old.port not in wanted and old.stop():
            _say("api", f"stopped the replica on port {old.port} (not wanted any more)")
    for replica in wanted.values():
        settings = {
            **stack_settings,
            "SKILLCOACH_HOST": replica.host,
            "SKILLCOACH_PORT": str(replica.port),
            "SKILLCOACH_METRICS_PORT": "0",
            "SKILLCOACH_POOL_SIZE": str(pool_size),
            "SKILLCOACH_MAX_OVERFLOW": str(max_overflow),
        }
        # Caller's SKILLCOACH_* settings pass through (e.g. CACHE_ENABLED=false for a bench).
        env = {"SKILLCOACH_CACHE_ENABLED": "true", **os.environ, **settings}
        _say("api", _ensure_replica(replica, env, settings, cwd=root, timeout=cfg.ready_timeout))

    # Until a load balancer owns the API port, the first replica is the stack's URL.
    first = wanted[ports[0]]
    auth = {"Authorization": f"Bearer {api_key}"}
    if http_status(f"{first.url}/v1/learners/1/weaknesses", headers=auth, timeout=10) in (401, 403):
        # The recorded key no longer matches the database (it was replaced): make a new one.
        api_key = new_key()
        _say("apikey", "the recorded key was rejected; created a new demo key")

    envfile.write_env(
        cfg.env_file,
        envfile.stack_env(
            api_url=first.url,
            api_key=api_key,
            database_url=db_url,
            direct_database_url=_direct_url(cfg, secrets),
            redis_url=cache.url,
            pgbouncer_admin_url=bouncer.admin_url,
            replica_urls=[r.url for r in wanted.values()],
        ),
    )
    _say("env", f"wrote {cfg.env_file}")
    print(
        "\nskillcoach is up.\n"
        f"  URL:     {first.url}\n"
        f"  API key: {api_key}\n"
        f"  env:     . {cfg.env_file}\n"
        "  try:\n"
        f"    curl -sS -H 'Authorization: Bearer {api_key}' {first.url}/v1/learners/1/weaknesses\n",
        flush=True,
    )
    return 0


def down(root: Path) -> int:
    cfg = StackConfig.from_env(root)
    for replica in known_replicas(cfg.state_dir):
        stopped = replica.stop()
        _say("api", f"{'stopped' if stopped else 'not running'} on port {replica.port}")
    if not cfg.secrets_file.exists():
        # Without secrets nothing of ours was configured; still stop by pid file.
        secrets = Secrets(app_password="", admin_password="")
    else:
        secrets = load_or_create_secrets(cfg.secrets_file)
    stopped = make_redis(cfg).stop()
    _say("redis", "stopped" if stopped else "not running")
    stopped = make_pgbouncer(cfg, secrets).stop()
    _say("pgbouncer", "stopped" if stopped else "not running")
    _say("postgres", "left running (the system's server); data kept")
    return 0


def status(root: Path) -> int:
    cfg = StackConfig.from_env(root)
    ok = True

    def line(name: str, up_: bool, detail: str) -> None:
        nonlocal ok
        ok &= up_
        _say(name, f"{'up  ' if up_ else 'down'} {detail}")

    line("postgres", postgres.is_up(cfg.pg_admin_dsn), f"{cfg.pg_host}:{cfg.pg_port}")
    secrets = (
        load_or_create_secrets(cfg.secrets_file)
        if cfg.secrets_file.exists()
        else Secrets(app_password="", admin_password="")
    )
    bouncer = make_pgbouncer(cfg, secrets)
    pid = bouncer.pid()
    line(
        "pgbouncer",
        pid is not None and bouncer.healthy(),
        f"127.0.0.1:{cfg.pgbouncer_port}" + (f" (pid {pid})" if pid else ""),
    )
    cache = make_redis(cfg)
    pid = cache.pid()
    line(
        "redis",
        pid is not None and cache.healthy(),
        f"127.0.0.1:{cfg.redis_port}" + (f" (pid {pid})" if pid else ""),
    )
    replicas = known_replicas(cfg.state_dir)
    if not replicas:
        line("api", False, "no replica started (run `skillcoach stack up`)")
    for replica in replicas:
        pid = replica.pid()
        if pid is None:
            line("api", False, f"{replica.url} (not running)")
            continue
        ready = http_status(f"{replica.url}/readyz", timeout=2.0)
        detail = "ready" if ready == 200 else f"not ready: /readyz answered {ready}"
        line("api", ready == 200, f"{replica.url} (pid {pid}, {detail})")
    return 0 if ok else 1
