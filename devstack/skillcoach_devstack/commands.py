"""`skillcoach stack up|down|status|scale`: the local stack, one progress line per step.

up: packages -> postgres -> pool plan -> pgbouncer -> redis -> redis cluster -> pgbouncer
exporter -> migrate -> seed (if empty) -> train (if no live model) -> api key -> OTLP receiver
(with SKILLCOACH_STACK_OTLP=1, `make up OTLP=1`) -> pool files -> api replicas -> haproxy ->
prometheus -> .stack/env. Every step reuses what already runs and is healthy, so a second `up`
is quick and changes nothing.

Each replica serves /metrics on its own metrics port (its API port + 1000 by default), never on
the API port; Prometheus (prometheus.py) scrapes them all, HAProxy and the PgBouncer exporter,
with the alert rules of the Helm chart loaded, and follows `scale` through its target file.

The replicas' cache is the 6-node Redis Cluster (redis_cluster.py; SKILLCOACH_REDIS_URL is its
redis+cluster:// URL); the standalone redis-server runs beside it for comparison
(SKILLCOACH_STANDALONE_REDIS_URL in .stack/env).

HAProxy always owns the API port (SKILLCOACH_STACK_API_PORT, default 8000), even in front of
one replica; the replicas listen on the ports after it. Each replica's pool comes from
plan_pools (skillcoach_operator.sizing) through its pool file .stack/pool/api-<port>.json, which
the replica watches; `scale N` recomputes the plan, starts or retires replicas (a retired one
is taken out of HAProxy by a soft reload before it is stopped) and rewrites every pool file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from skillcoach import limits
from skillcoach.data.pool_file import PoolFile
from skillcoach.pgbouncer.admin import admin_query
from skillcoach_devstack import envfile, packages, postgres
from skillcoach_devstack.config import Secrets, StackConfig, load_or_create_secrets
from skillcoach_devstack.errors import StackError
from skillcoach_devstack.exporter import ExporterProcess
from skillcoach_devstack.haproxy import HAProxy, HAProxyConfig, Server, server_name
from skillcoach_devstack.haproxy import default_template_path as default_haproxy_template
from skillcoach_devstack.otlp import OtlpReceiver
from skillcoach_devstack.pgbouncer import (
    ADMIN_USER,
    PgBouncer,
    PgBouncerConfig,
    default_template_path,
    runtime_dir_for,
)
from skillcoach_devstack.pools import (
    client_budget,
    plan_scale,
    pool_path,
    prune_pool_files,
    read_pool,
    remove_pool_file,
    split_by_direction,
    stack_budget,
    write_pools,
)
from skillcoach_devstack.processes import (
    ApiReplica,
    http_status,
    known_replicas,
    log_tail,
    run_bounded,
)
from skillcoach_devstack.prometheus import PrometheusConfig, PrometheusServer, Target
from skillcoach_devstack.prometheus import default_rules_path as default_prometheus_rules
from skillcoach_devstack.redis import RedisServer
from skillcoach_devstack.redis_cluster import RedisClusterNodes
from skillcoach_operator.sizing import Budget, PoolPlan, plan_pools

__all__ = ["down", "scale", "status", "up"]

DEMO_SKILLS = 50
DEMO_ATTEMPTS_PER_LEARNER = 100
# One replica's worth of headroom in the client budget, as a rolling update needs on Kubernetes
# (and as a restart of one replica needs here).
SURGE = 1
# PgBouncer's reserve pool in the stack; it comes out of the server budget (stack_budget).
RESERVE_POOL_SIZE = 5
# How long a soft-stopped HAProxy may take to finish its requests: hard-stop-after (10 s in
# the config) plus a margin.
HAPROXY_RETIRE_TIMEOUT = 15.0


def _say(step: str, message: str) -> None:
    print(f"{step:<10} {message}", flush=True)


def _pgbouncer_config(cfg: StackConfig) -> PgBouncerConfig:
    return PgBouncerConfig(
        listen_port=cfg.pgbouncer_port,
        runtime_dir=runtime_dir_for(cfg.pgbouncer_port),
        databases=[cfg.app_database],
        server_host=cfg.pg_host,
        server_port=cfg.pg_port,
        # The stack serves one database; other names must not reach the server through it.
        wildcard=False,
        reserve_pool_size=RESERVE_POOL_SIZE,
    )


def make_pgbouncer(cfg: StackConfig, secrets: Secrets, plan: PoolPlan | None = None) -> PgBouncer:
    """The stack's PgBouncer; with a plan, its pool sizes are the plan's (without one, only
    good for pid, health and stop)."""
    config = _pgbouncer_config(cfg)
    if plan is not None:
        config = dataclasses.replace(
            config,
            default_pool_size=plan.pgbouncer_default_pool_size,
            # The stack's whole server budget: the steady pool plus the reserve pool.
            max_db_connections=plan.pgbouncer_default_pool_size + config.reserve_pool_size,
        )
    return PgBouncer(
        config=config,
        users={cfg.app_user: secrets.app_password, ADMIN_USER: secrets.admin_password},
        template_path=default_template_path(),
    )


def balancer_limit(plan: PoolPlan) -> int:
    """HAProxy's maxconn for each replica: twice what a replica runs under the plan
    (limits.balancer_limit); the rest wait in HAProxy's queue."""
    return limits.balancer_limit(pool_capacity=plan.per_pod)


def make_haproxy(
    cfg: StackConfig, ports: Sequence[int] = (), *, plan: PoolPlan | None = None
) -> HAProxy:
    """HAProxy on the API port in front of the replicas on ports (empty: only good for pid,
    state and stop); with a plan, each replica's maxconn is its balancer limit under it."""
    config = HAProxyConfig(
        listen_port=cfg.api_port,
        stats_port=cfg.haproxy_stats_port,
        servers=tuple(Server(server_name(p), p) for p in ports),
    )
    if plan is not None:
        config = dataclasses.replace(config, server_maxconn=balancer_limit(plan))
    return HAProxy(
        config=config,
        runtime_dir=cfg.haproxy_dir,
        logfile=cfg.logs_dir / "haproxy.log",
        template_path=default_haproxy_template(),
    )


def make_redis(cfg: StackConfig) -> RedisServer:
    return RedisServer(port=cfg.redis_port, data_dir=cfg.redis_dir)


def make_redis_cluster(cfg: StackConfig) -> RedisClusterNodes:
    return RedisClusterNodes(base_port=cfg.redis_cluster_port, data_dir=cfg.redis_cluster_dir)


def make_exporter(cfg: StackConfig) -> ExporterProcess:
    return ExporterProcess(port=cfg.exporter_port, state_dir=cfg.state_dir)


def make_otlp(cfg: StackConfig) -> OtlpReceiver:
    return OtlpReceiver(
        grpc_port=cfg.otlp_grpc_port, http_port=cfg.otlp_http_port, state_dir=cfg.state_dir
    )


def make_replica(cfg: StackConfig, port: int) -> ApiReplica:
    return ApiReplica(port=port, state_dir=cfg.state_dir, metrics_port=cfg.metrics_port(port))


def make_prometheus(cfg: StackConfig, replicas: Sequence[ApiReplica] = ()) -> PrometheusServer:
    """The stack's Prometheus scraping these replicas' metrics ports, HAProxy and the
    PgBouncer exporter (no replicas: only good for pid, status and stop)."""
    config = PrometheusConfig(
        port=cfg.prometheus_port,
        scrape_interval=cfg.scrape_interval,
        replicas=tuple(Target(pod=r.name, port=r.metrics_port) for r in replicas if r.metrics_port),
        haproxy=Target(pod="haproxy", port=cfg.haproxy_stats_port),
        exporter=Target(pod="pgbouncer-exporter", port=cfg.exporter_port),
        rules_file=default_prometheus_rules(),
    )
    return PrometheusServer(
        config=config, runtime_dir=cfg.prometheus_dir, logfile=cfg.logs_dir / "prometheus.log"
    )


def _direct_url(cfg: StackConfig, secrets: Secrets) -> str:
    return (
        f"postgresql+psycopg2://{cfg.app_user}:{secrets.app_password}"
        f"@{cfg.pg_host}:{cfg.pg_port}/{cfg.app_database}"
    )


def plan_for(cfg: StackConfig, replicas: int) -> tuple[Budget, PoolPlan]:
    """The stack's budget (PgBouncer's max_client_conn, PostgreSQL's max_connections) and the
    plan for this many replicas, from the one sizing function."""
    max_connections = int(postgres.scalar(cfg.pg_admin_dsn, "SHOW max_connections"))
    base = _pgbouncer_config(cfg)
    budget = stack_budget(
        max_client_conn=base.max_client_conn,
        max_connections=max_connections,
        reserve_pool_size=base.reserve_pool_size,
    )
    return budget, plan_pools(budget, replicas=replicas, surge=SURGE)


def describe_plan(budget: Budget, plan: PoolPlan, replicas: int) -> str:
    clients = budget.max_client_conn - budget.client_reserve
    servers = budget.max_connections - budget.server_reserve
    text = (
        f"{replicas} replica(s) + {SURGE} surge share {clients} PgBouncer client connections:"
        f" pool {plan.pool_size}+{plan.max_overflow} each;"
        f" PgBouncer default_pool_size {plan.pgbouncer_default_pool_size}"
        f" (+{RESERVE_POOL_SIZE} reserve) of PostgreSQL's {budget.max_connections}"
        f" (stack share {servers + RESERVE_POOL_SIZE})"
    )
    if plan.oversubscribed:
        text += "; OVERSUBSCRIBED: replicas may queue at PgBouncer"
    return text


def _apply_pgbouncer(bouncer: PgBouncer) -> str:
    """Start PgBouncer, or bring a running one to the rendered config (RELOAD re-reads the ini
    and userlist and keeps every connection)."""
    sizes = (
        f"default_pool_size {bouncer.config.default_pool_size},"
        f" max_db_connections {bouncer.config.max_db_connections}"
    )
    where = f"127.0.0.1:{bouncer.config.listen_port}"
    if bouncer.pid() is None:
        bouncer.start()
        return (
            f"started on {where} (transaction pooling, {sizes},"
            f" runtime dir {bouncer.config.runtime_dir})"
        )
    if not bouncer.write_files():
        return f"reused on {where} ({sizes})"
    try:
        admin_query(bouncer.admin_url, "RELOAD")
    except psycopg2.Error as exc:
        raise StackError(f"pgbouncer: RELOAD failed: {str(exc).strip()}") from None
    return f"reloaded on {where}: {sizes}"


def _pool_env(plan: PoolPlan) -> dict[str, str]:
    """The pool a replica starts with: the plan's numbers, as in its pool file. Later changes
    reach it through the pool file only, so these are not part of its fingerprint (a new plan
    must not restart the replicas)."""
    return {
        "SKILLCOACH_POOL_SIZE": str(plan.pool_size),
        "SKILLCOACH_MAX_OVERFLOW": str(plan.max_overflow),
        "SKILLCOACH_POOL_TIMEOUT": f"{plan.pool_timeout:g}",
        "SKILLCOACH_POOL_RECYCLE": str(plan.pool_recycle),
    }


def _stack_settings(
    bouncer: PgBouncer, cache: RedisClusterNodes, cfg: StackConfig
) -> dict[str, str]:
    """What every replica and offline command is configured with (through PgBouncer; the
    cluster as the cache)."""
    return {
        "SKILLCOACH_ENVIRONMENT": "dev",
        "SKILLCOACH_DATABASE_URL": bouncer.url(cfg.app_user, cfg.app_database),
        "SKILLCOACH_REDIS_URL": cache.url,
    }


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
    # Private: `apikey create` prints the demo key.
    envfile.write_private(log, f"$ skillcoach {' '.join(args)}\n{result.stdout}\n{result.stderr}")
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
    pool: PoolFile | None,
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
        # Its database URL, password or pool file changed since it started: it must pick
        # them up.
        replica.stop()
        restarted = ", restarted: its settings changed"
    pid = replica.start(env, cwd=cwd, settings=settings)
    try:
        replica.wait_ready(timeout)
    except StackError:
        # A replica that never became ready must not linger; its log stays.
        replica.stop()
        raise
    sizes = (
        f"pool {pool.pool_size}+{pool.max_overflow} generation {pool.generation}"
        if pool is not None
        else "no pool file"
    )
    return (
        f"started replica on {replica.url} (pid {pid}, {sizes},"
        f" ready in {time.monotonic() - t0:.1f}s{restarted})"
    )


@dataclass(frozen=True, slots=True)
class _Running:
    """The parts of a running stack the replicas depend on."""

    cfg: StackConfig
    root: Path
    settings: dict[str, str]
    budget: Budget
    # Where the replicas send traces (the OTLP receiver's endpoint), or None: no tracing.
    otlp_endpoint: str | None = None


def _retire(cfg: StackConfig, replica: ApiReplica, *, drained: bool) -> None:
    stopped = replica.stop()
    remove_pool_file(cfg.pool_dir, replica.port)
    if stopped:
        how = "out of HAProxy first" if drained else "HAProxy was not running"
        _say("api", f"stopped the replica on port {replica.port} ({how})")


def _reconcile(run: _Running, replicas: int, plan: PoolPlan) -> tuple[list[ApiReplica], HAProxy]:
    """Bring the replicas, their pool files and HAProxy to `replicas` replicas under plan."""
    cfg = run.cfg
    ports = cfg.api_ports(replicas)
    known = {r.port: r for r in known_replicas(cfg.state_dir)}
    change = plan_scale(sorted(known), ports)
    lb = make_haproxy(cfg, ports, plan=plan)

    # Shrinking pools (and new replicas' files) before replicas are added...
    shrink_first, grow_last = split_by_direction(cfg.pool_dir, ports, plan)
    clients = client_budget(run.budget)
    for pool_change in write_pools(cfg.pool_dir, shrink_first, plan, budget=clients):
        _say("pool", pool_change.describe())

    surplus = [known[p] for p in change.stop]
    if surplus and not lb.is_running():
        # Nothing routes to them (and an old single replica may hold the API port): stop now.
        for replica in surplus:
            _retire(cfg, replica, drained=False)
        surplus = []

    wanted = [make_replica(cfg, p) for p in ports]
    for replica in wanted:
        settings = {
            **run.settings,
            "SKILLCOACH_HOST": replica.host,
            "SKILLCOACH_PORT": str(replica.port),
            "SKILLCOACH_METRICS_PORT": str(replica.metrics_port),
            "SKILLCOACH_POOL_FILE": str(pool_path(cfg.pool_dir, replica.port).resolve()),
        }
        if run.otlp_endpoint is not None:
            settings |= {
                "OTEL_EXPORTER_OTLP_ENDPOINT": run.otlp_endpoint,
                "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={replica.name}",
            }
        # Caller's SKILLCOACH_* settings pass through (e.g. CACHE_ENABLED=false for a bench);
        # the stack's own and the start-up pool (the plan's numbers) win.
        env = {"SKILLCOACH_CACHE_ENABLED": "true", **os.environ, **settings, **_pool_env(plan)}
        pool = read_pool(cfg.pool_dir, replica.port)
        _say(
            "api",
            _ensure_replica(
                replica, env, settings, pool=pool, cwd=run.root, timeout=cfg.ready_timeout
            ),
        )

    outcome, old_pid = lb.apply(timeout=15)
    servers = ", ".join(str(p) for p in ports)
    if outcome == "started":
        _say(
            "haproxy",
            f"started on {lb.url} -> replicas on {servers} ({lb.config.balance}, maxconn"
            f" {lb.config.server_maxconn} each, checks GET /readyz; stats {lb.stats_url},"
            f" metrics {lb.metrics_url})",
        )
    elif outcome == "reloaded":
        _say(
            "haproxy",
            f"reloaded softly (pid {old_pid} -> {lb.pid()}): replicas on {servers}"
            f" (maxconn {lb.config.server_maxconn} each)",
        )
    else:
        _say("haproxy", f"reused on {lb.url} -> replicas on {servers}")

    if surplus:
        if old_pid is not None:
            # The old process still serves requests it accepted: they may be on a surplus
            # replica, which must not stop before they are answered.
            finished = lb.wait_retired(old_pid, timeout=HAPROXY_RETIRE_TIMEOUT)
            _say(
                "haproxy",
                f"previous process (pid {old_pid}) "
                + ("finished its requests" if finished else "was stopped at its deadline"),
            )
        for replica in surplus:
            _retire(cfg, replica, drained=True)

    # ...growing ones once the surplus replicas are gone.
    for pool_change in write_pools(cfg.pool_dir, grow_last, plan, budget=clients):
        _say("pool", pool_change.describe())
    prune_pool_files(cfg.pool_dir, ports)  # left by replicas stopped with `down`
    return wanted, lb


def _apply_prometheus(cfg: StackConfig, replicas: Sequence[ApiReplica]) -> PrometheusServer:
    server = make_prometheus(cfg, replicas)
    _say("prometheus", server.apply())
    return server


def _write_env(
    cfg: StackConfig,
    *,
    secrets: Secrets,
    api_key: str,
    bouncer: PgBouncer,
    cache: RedisServer,
    lb: HAProxy,
    replicas: Sequence[ApiReplica],
    prometheus: PrometheusServer,
    otlp_endpoint: str | None,
) -> None:
    envfile.write_env(
        cfg.env_file,
        envfile.stack_env(
            api_url=lb.url,
            api_key=api_key,
            database_url=bouncer.url(cfg.app_user, cfg.app_database),
            direct_database_url=_direct_url(cfg, secrets),
            redis_url=make_redis_cluster(cfg).url,
            standalone_redis_url=cache.url,
            pgbouncer_admin_url=bouncer.admin_url,
            replica_urls=[r.url for r in replicas],
            replica_metrics_urls=[r.metrics_url or "" for r in replicas],
            pgbouncer_metrics_url=make_exporter(cfg).url,
            haproxy_stats_url=lb.stats_url,
            haproxy_metrics_url=lb.metrics_url,
            prometheus_url=prometheus.url,
            otlp_endpoint=otlp_endpoint,
        ),
    )
    _say("env", f"wrote {cfg.env_file}")


def up(root: Path, *, replicas: int) -> int:
    cfg = StackConfig.from_env(root)
    cfg.api_ports(replicas)  # validates the count before anything starts
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    secrets = load_or_create_secrets(cfg.secrets_file)

    installed = packages.ensure_packages()
    _say(
        "packages",
        f"installed {' '.join(installed)}"
        if installed
        else "pgbouncer, redis-server, haproxy, prometheus present",
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

    budget, plan = plan_for(cfg, replicas)
    _say("plan", describe_plan(budget, plan, replicas))

    bouncer = make_pgbouncer(cfg, secrets, plan)
    _say("pgbouncer", _apply_pgbouncer(bouncer))

    cache = make_redis(cfg)
    was_running = cache.is_running()
    cache.start()
    _say("redis", f"{'reused' if was_running else 'started'} on 127.0.0.1:{cfg.redis_port}")

    cluster = make_redis_cluster(cfg)
    t0 = time.monotonic()
    done = cluster.start()
    _say(
        "cluster",
        f"{done} on {cluster.addresses} ({len(cluster.masters())} masters,"
        f" {len(cluster.replicas())} replicas, {time.monotonic() - t0:.1f}s): {cluster.url}",
    )

    _say("exporter", make_exporter(cfg).ensure(bouncer.admin_url, env=os.environ, cwd=root))

    # Offline commands take the same path as the replicas: through PgBouncer.
    stack_settings = _stack_settings(bouncer, cluster, cfg)
    db_url = stack_settings["SKILLCOACH_DATABASE_URL"]
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

    receiver = make_otlp(cfg)
    if cfg.otlp:
        _say("otlp", receiver.ensure())
    elif receiver.stop():
        _say("otlp", "stopped (start it with `make up OTLP=1`); the replicas restart untraced")
    otlp_endpoint = receiver.endpoint if cfg.otlp else None

    running = _Running(
        cfg=cfg, root=root, settings=stack_settings, budget=budget, otlp_endpoint=otlp_endpoint
    )
    wanted, lb = _reconcile(running, replicas, plan)
    prometheus = _apply_prometheus(cfg, wanted)

    auth = {"Authorization": f"Bearer {api_key}"}
    if http_status(f"{lb.url}/v1/learners/1/weaknesses", headers=auth, timeout=10) in (401, 403):
        # The recorded key no longer matches the database (it was replaced): make a new one.
        api_key = new_key()
        _say("apikey", "the recorded key was rejected; created a new demo key")

    _write_env(
        cfg,
        secrets=secrets,
        api_key=api_key,
        bouncer=bouncer,
        cache=cache,
        lb=lb,
        replicas=wanted,
        prometheus=prometheus,
        otlp_endpoint=otlp_endpoint,
    )
    traces = (
        f"{receiver.logfile} (OTLP receiver on {receiver.endpoint})"
        if otlp_endpoint is not None
        else "off (`make up OTLP=1` prints them to .stack/logs/otlp.log)"
    )
    print(
        "\nskillcoach is up.\n"
        f"  URL:        {lb.url}  (HAProxy -> {len(wanted)} replica(s);"
        f" `skillcoach stack scale N` to change)\n"
        f"  API key:    {api_key}\n"
        f"  Prometheus: {prometheus.url}  (every replica, HAProxy, PgBouncer; alert rules"
        f" loaded: {prometheus.url}/alerts)\n"
        f"  metrics:    {' '.join(r.metrics_url or '' for r in wanted)}\n"
        f"  traces:     {traces}\n"
        f"  logs:       {cfg.logs_dir}/\n"
        f"  env:        . {cfg.env_file}\n"
        "  try:\n"
        f"    curl -sS -H 'Authorization: Bearer {api_key}' {lb.url}/v1/learners/1/weaknesses\n",
        flush=True,
    )
    return 0


def scale(root: Path, *, replicas: int) -> int:
    """Change the number of replicas of a running stack; every pool follows the new plan."""
    cfg = StackConfig.from_env(root)
    cfg.api_ports(replicas)
    api_key = envfile.read_env(cfg.env_file).get("SKILLCOACH_API_KEY", "")
    if not cfg.secrets_file.exists() or not api_key:
        raise StackError("no stack was brought up here: run `skillcoach stack up` first")
    secrets = load_or_create_secrets(cfg.secrets_file)
    if not postgres.is_up(cfg.pg_admin_dsn):
        raise StackError("PostgreSQL is down: run `skillcoach stack up`")

    budget, plan = plan_for(cfg, replicas)
    _say("plan", describe_plan(budget, plan, replicas))
    bouncer = make_pgbouncer(cfg, secrets, plan)
    cache = make_redis(cfg)
    cluster = make_redis_cluster(cfg)
    for name, running in (
        ("pgbouncer", bouncer.is_running()),
        ("redis", cache.is_running()),
        ("cluster", cluster.is_running()),
    ):
        if not running:
            raise StackError(f"{name} is not running: run `skillcoach stack up`")
    _say("pgbouncer", _apply_pgbouncer(bouncer))

    # Tracing stays as `up` left it: a scale must not restart the replicas it keeps.
    receiver = make_otlp(cfg)
    otlp_endpoint = receiver.endpoint if receiver.pid() is not None else None
    run = _Running(
        cfg=cfg,
        root=root,
        settings=_stack_settings(bouncer, cluster, cfg),
        budget=budget,
        otlp_endpoint=otlp_endpoint,
    )
    wanted, lb = _reconcile(run, replicas, plan)
    prometheus = _apply_prometheus(cfg, wanted)
    _write_env(
        cfg,
        secrets=secrets,
        api_key=api_key,
        bouncer=bouncer,
        cache=cache,
        lb=lb,
        replicas=wanted,
        prometheus=prometheus,
        otlp_endpoint=otlp_endpoint,
    )
    print(f"\nskillcoach runs {len(wanted)} replica(s) behind {lb.url}.", flush=True)
    return 0


def down(root: Path) -> int:
    cfg = StackConfig.from_env(root)
    # The load balancer first: it stops taking requests and finishes the ones it holds.
    stopped = make_haproxy(cfg).stop()
    _say("haproxy", "stopped" if stopped else "not running")
    # Together: each drains for its configured seconds (nothing routes to it any more), and
    # one after another those waits would add up.
    replicas = known_replicas(cfg.state_dir)
    with ThreadPoolExecutor(max(1, len(replicas)), thread_name_prefix="stop-api") as pool:
        outcomes = list(pool.map(lambda r: r.stop(), replicas))
    for replica, stopped in zip(replicas, outcomes, strict=True):
        _say("api", f"{'stopped' if stopped else 'not running'} on port {replica.port}")
    stopped = make_prometheus(cfg).stop()
    _say("prometheus", "stopped (its data is kept)" if stopped else "not running")
    stopped = make_otlp(cfg).stop()
    _say("otlp", "stopped" if stopped else "not running")
    stopped = make_exporter(cfg).stop()
    _say("exporter", "stopped" if stopped else "not running")
    if not cfg.secrets_file.exists():
        # Without secrets nothing of ours was configured; still stop by pid file.
        secrets = Secrets(app_password="", admin_password="")
    else:
        secrets = load_or_create_secrets(cfg.secrets_file)
    stopped = make_redis(cfg).stop()
    _say("redis", "stopped" if stopped else "not running")
    stopped = make_redis_cluster(cfg).stop()
    _say("cluster", "stopped (the next `up` creates it afresh)" if stopped else "not running")
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
    exporter = make_exporter(cfg)
    pid = exporter.pid()
    if pid is None:
        line("exporter", False, f"{exporter.url} (not running)")
    else:
        seen = exporter.pgbouncer_up()
        detail = {True: "pgbouncer_up 1", False: "pgbouncer_up 0", None: "not answering"}[seen]
        line("exporter", seen is True, f"{exporter.url} (pid {pid}, {detail})")
    cache = make_redis(cfg)
    pid = cache.pid()
    line(
        "redis",
        pid is not None and cache.healthy(),
        f"127.0.0.1:{cfg.redis_port}" + (f" (pid {pid})" if pid else ""),
    )
    line("cluster", *make_redis_cluster(cfg).describe())
    lb = make_haproxy(cfg)
    pid = lb.pid()
    states = lb.server_states() if pid is not None else None
    if pid is None:
        line("haproxy", False, f"{lb.url} (not running)")
    else:
        n_up = sum(1 for s in (states or {}).values() if s.startswith("UP"))
        line(
            "haproxy",
            lb.healthy() and n_up > 0,
            f"{lb.url} (pid {pid}, {n_up}/{len(states or {})} replicas UP; stats {lb.stats_url})",
        )
    replicas = known_replicas(cfg.state_dir)
    prometheus = make_prometheus(cfg)
    pid = prometheus.pid()
    health = prometheus.targets_health() if pid is not None else None
    if pid is None:
        line("prometheus", False, f"{prometheus.url} (not running)")
    elif health is None:
        line("prometheus", False, f"{prometheus.url} (pid {pid}, not answering)")
    else:
        n_up = sum(1 for h in health.values() if h == "up")
        line(
            "prometheus",
            True,
            f"{prometheus.url} (pid {pid}, {n_up}/{len(health)} targets up,"
            f" every {cfg.scrape_interval}s; alerts {prometheus.url}/alerts)",
        )
    receiver = make_otlp(cfg)
    pid = receiver.pid()
    # Optional: not running is not a failure of the stack.
    _say(
        "otlp",
        f"up   {receiver.endpoint} (pid {pid}, spans in {receiver.logfile})"
        if pid is not None
        else "off  (`make up OTLP=1` starts it)",
    )
    if not replicas:
        line("api", False, "no replica started (run `skillcoach stack up`)")
    for replica in replicas:
        pid = replica.pid()
        if pid is None:
            line("api", False, f"{replica.url} (not running)")
            continue
        ready = http_status(f"{replica.url}/readyz", timeout=2.0)
        detail = "ready" if ready == 200 else f"not ready: /readyz answered {ready}"
        lb_state = (states or {}).get(server_name(replica.port), "not in HAProxy")
        pool = read_pool(cfg.pool_dir, replica.port)
        sizes = (
            "no pool file"
            if pool is None
            else f"pool file {pool.pool_size}+{pool.max_overflow} generation {pool.generation}"
        )
        if replica.metrics_url is None:
            scraped = "no metrics port"
        else:
            state = (health or {}).get(replica.metrics_url, "not a Prometheus target")
            scraped = f"metrics {replica.metrics_url} ({state})"
        line(
            "api",
            ready == 200,
            f"{replica.url} (pid {pid}, {detail}, HAProxy: {lb_state}, {sizes}, {scraped})",
        )
    return 0 if ok else 1
