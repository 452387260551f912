"""A real 6-node Redis Cluster (3 masters, 3 replicas) on loopback: the stack's cache by default
and the tests' failover rig.

Node i listens on base_port + i (the stack's default base is 7000, so 7000..7005) and on
base_port + i + 10000 for the cluster bus; both bound to 127.0.0.1 only. Like the standalone
server (redis.py) nothing is persisted: the cluster is a cache, and a node that comes back
empty is simply a cold cache.

The application finds it through `redis+cluster://127.0.0.1:7000,127.0.0.1:7001,...`: every node
is a startup node, because which ones are masters changes with each failover and a client that
starts while one node is down must still find the others.

Like the standalone server it can require a password (every node, and the replicas to their
masters) and speak TLS only, on the client port and the cluster bus alike (`rediss+cluster://`);
the tests use that, the local stack does not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_client

from skillcoach_devstack.errors import StackError
from skillcoach_devstack.packages import find_binary
from skillcoach_devstack.processes import (
    free_port_block,
    log_tail,
    pid_alive,
    port_open,
    process_cmdline,
    read_pidfile,
    run_bounded,
    wait_until,
)
from skillcoach_devstack.redis import RedisTLS, auth_config, tls_args, write_private

__all__ = [
    "ClusterNode",
    "RedisClusterNodes",
    "cluster_url",
    "free_base_port",
    "node_args",
    "parse_nodes",
]

NODES = 6
REPLICAS_PER_MASTER = 1
MASTERS = NODES // (1 + REPLICAS_PER_MASTER)
SLOTS = 16384
# Redis's fixed offset from a node's port to its cluster bus port.
BUS_PORT_OFFSET = 10000
# Failure detection takes one node timeout, the election about another second: with 2000 ms a
# killed master's slots are served by its replica again within ~4 s (the cache's failover
# window; Redis's default of 15000 ms would make it ~17 s).
NODE_TIMEOUT_MS = 2000
CLUSTER_URL_SCHEME = "redis+cluster://"
TLS_CLUSTER_URL_SCHEME = "rediss+cluster://"
_FAILED_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


def free_base_port(*, low: int = 20000, high: int = 22000) -> int:
    """A base port for a scratch cluster (tests, benchmarks): its six nodes and their bus
    ports are all free right now, and all below the ephemeral range (see free_port_block)."""
    return free_port_block(NODES, low=low, high=high, offsets=(0, BUS_PORT_OFFSET))


def cluster_url(host: str, ports: Iterable[int], *, tls: bool = False) -> str:
    """The app's URL of a cluster: `redis+cluster://host:port[,host:port...]` (`rediss+cluster`
    with TLS)."""
    scheme = TLS_CLUSTER_URL_SCHEME if tls else CLUSTER_URL_SCHEME
    return scheme + ",".join(f"{host}:{port}" for port in ports)


def node_args(
    *,
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    include: Path | None = None,
    tls: RedisTLS | None = None,
) -> list[str]:
    """The redis-server options of one cluster node: loopback only, cache only, daemonized.
    include: a config file with more settings (the password); tls: TLS only, on `port`, for
    clients, the cluster bus and replication alike."""
    if tls is None:
        listen = ["--port", str(port)]
    else:
        # The bus port stays port + 10000; the nodes announce the TLS port to clients.
        listen = ["--port", "0", "--tls-port", str(port), *tls_args(tls)]
        listen += ["--tls-cluster", "yes", "--tls-replication", "yes"]
    return [
        *listen,
        *([] if include is None else ["--include", str(include)]),
        "--bind", host,
        "--protected-mode", "yes",
        "--daemonize", "yes",
        "--pidfile", str(data_dir / f"redis-{port}.pid"),
        "--logfile", str(data_dir / f"redis-{port}.log"),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        # The nodes share one dir: each needs its own RDB name, or replicas syncing at the same
        # time would rename their transfers over each other and load a neighbour's data.
        "--dbfilename", f"dump-{port}.rdb",
        # A replica that starts empty (always, nothing is persisted) loads the master's data
        # straight from the socket instead of through a file.
        "--repl-diskless-load", "on-empty-db",
        # The master waits this long for more replicas to share one transfer; each has one
        # replica, so the default 5 s only delays every (re)join.
        "--repl-diskless-sync-delay", "0",
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(data_dir / f"nodes-{port}.conf"),
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        # While a master is down, the other two keep serving their slots (the default, "yes",
        # refuses every query in the cluster until the failover ends): for a cache that falls
        # back to PostgreSQL, losing a third of the keys for ~4 s beats losing all of them.
        "--cluster-require-full-coverage", "no",
        # A replica fails over however long it was cut off from its master. The default (10)
        # stops a replica that lost its link for a while from taking over, to protect stale
        # data; stale is harmless here (keys carry versions, entries have TTLs), an unserved
        # slot is not.
        "--cluster-replica-validity-factor", "0",
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: int

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & _FAILED_FLAGS)


def parse_nodes(text: str) -> list[ClusterNode]:
    """Parse CLUSTER NODES: `id ip:port@bus[,hostname] flags master ping pong epoch link slots`."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        port = address.rpartition(":")[2]
        slots = 0
        for item in fields[8:]:
            if item.startswith("["):
                continue  # a slot being migrated or imported, counted at its owner
            first, _, last = item.partition("-")
            slots += int(last or first) - int(first) + 1
        nodes.append(
            ClusterNode(
                node_id=fields[0],
                port=int(port) if port.isdigit() else 0,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=slots,
            )
        )
    return nodes


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.strip().partition(":") for line in text.splitlines())
    return {name: value for name, sep, value in pairs if sep}


@dataclass(frozen=True, slots=True)
class RedisClusterNodes:
    """The six redis-server daemons of one cluster, by pid file and port, in data_dir."""

    base_port: int
    data_dir: Path
    host: str = "127.0.0.1"
    # Unset: no AUTH (the local stack). Replicas authenticate to their masters with it too.
    password: str | None = field(default=None, repr=False)
    tls: RedisTLS | None = None

    @property
    def ports(self) -> list[int]:
        return [self.base_port + i for i in range(NODES)]

    @property
    def url(self) -> str:
        """The cluster's URL without credentials (rediss+cluster:// when TLS)."""
        return cluster_url(self.host, self.ports, tls=self.tls is not None)

    @property
    def auth_file(self) -> Path:
        return self.data_dir / "redis-auth.conf"

    @property
    def addresses(self) -> str:
        return f"{self.host}:{self.ports[0]}-{self.ports[-1]}"

    def pidfile(self, port: int) -> Path:
        return self.data_dir / f"redis-{port}.pid"

    def logfile(self, port: int) -> Path:
        return self.data_dir / f"redis-{port}.log"

    def config_file(self, port: int) -> Path:
        return self.data_dir / f"nodes-{port}.conf"

    # -- processes ----------------------------------------------------------------------

    def pid(self, port: int) -> int | None:
        pid = read_pidfile(self.pidfile(port))
        # The command line names the port, so a recycled pid (or another node) never matches.
        if pid is None or not pid_alive(pid) or f":{port} " not in f"{process_cmdline(pid)} ":
            return None
        return pid

    def running_ports(self) -> list[int]:
        return [port for port in self.ports if self.pid(port) is not None]

    def is_running(self) -> bool:
        return bool(self.running_ports())

    def start_node(self, port: int, *, timeout: float = 10.0) -> None:
        """Start one node; with its nodes-<port>.conf left from before (kill_node), it rejoins
        the cluster and, once its slots have moved to its replica, becomes that one's replica."""
        if port not in self.ports:
            raise StackError(f"redis-cluster: {port} is not one of {self.addresses}")
        if self.pid(port) is not None:
            return
        for p in (port, port + BUS_PORT_OFFSET):
            if port_open(self.host, p):
                raise StackError(
                    f"redis-cluster: port {p} is already in use by another process"
                    " (set SKILLCOACH_STACK_REDIS_CLUSTER_PORT to move the cluster)"
                )
        binary = find_binary("redis-server")
        if binary is None:
            raise StackError("redis-server is not installed (apt-get install redis-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile(port).unlink(missing_ok=True)
        include = None
        if self.password is not None:
            text = auth_config(self.password, replication=True)
            include = write_private(self.auth_file, text)
        args = node_args(
            port=port, data_dir=self.data_dir, host=self.host, include=include, tls=self.tls
        )
        log = self.logfile(port)
        run_bounded([binary, *args], what=f"redis-server :{port}", timeout=timeout, log=log)
        if not wait_until(lambda: self._ask(port, "PING") is True, timeout):
            raise StackError(
                f"redis-cluster node {port} did not answer PING within {timeout:g}s;"
                f" log {log}:\n{log_tail(log)}"
            )

    def kill_node(self, port: int, *, timeout: float = 5.0) -> None:
        """SIGKILL one node, as a crash would (its nodes.conf stays for start_node)."""
        pid = self.pid(port)
        if pid is None:
            raise StackError(f"redis-cluster node {port} is not running")
        os.kill(pid, signal.SIGKILL)
        if not wait_until(lambda: not pid_alive(pid), timeout, interval=0.02):
            raise StackError(f"redis-cluster node {port} (pid {pid}) survived SIGKILL")

    def stop(self, *, timeout: float = 10.0) -> bool:
        """Stop every node and forget the cluster (nodes-*.conf), so the next start creates a
        fresh one; True if something was running."""
        pids = [pid for pid in map(self.pid, self.ports) if pid is not None]
        # All at once: SIGTERM one by one would have each master wait for its replicas (which
        # are stopping too) and a survivor start a failover for the nodes already gone.
        for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if wait_until(lambda: not any(map(pid_alive, pids)), grace, interval=0.02):
                break
        else:
            raise StackError(f"redis-cluster: processes {pids} survived SIGKILL")
        for port in self.ports:
            self.pidfile(port).unlink(missing_ok=True)
            self.config_file(port).unlink(missing_ok=True)
            (self.data_dir / f"dump-{port}.rdb").unlink(missing_ok=True)
        return bool(pids)

    def start(self, *, timeout: float = 30.0) -> str:
        """Bring the cluster up and healthy; what was done, for a progress line.

        A healthy cluster is reused; one with nodes missing gets them back from their
        nodes.conf; anything beyond repair is stopped and created afresh (it is a cache)."""
        running = self.running_ports()
        if running:
            if len(running) == NODES and self.healthy():
                return "reused"
            missing = [p for p in self.ports if p not in running]
            formed = all(self._info(p).get("cluster_slots_assigned") == str(SLOTS) for p in running)
            if formed and all(self.config_file(p).exists() for p in missing):
                for port in missing:
                    self.start_node(port, timeout=timeout)
                if wait_until(self.healthy, timeout, interval=0.1):
                    restarted = ", ".join(map(str, missing))
                    return f"healed (restarted {restarted})" if missing else "reused (healed)"
            self.stop()
        self._create(timeout)
        return "created"

    def _create(self, timeout: float) -> None:
        cli = find_binary("redis-cli")
        if cli is None:
            raise StackError("redis-cli is not installed (apt-get install redis-tools)")
        # Left by a cluster that was not stopped (a reboot): a node would load it and wait for
        # peers that are not coming instead of joining the new cluster.
        for port in self.ports:
            self.config_file(port).unlink(missing_ok=True)
        try:
            for port in self.ports:
                self.start_node(port, timeout=timeout)
            run_bounded(
                [
                    cli, *self._cli_tls(), "--cluster", "create",
                    *(f"{self.host}:{p}" for p in self.ports),
                    "--cluster-replicas", str(REPLICAS_PER_MASTER),
                    "--cluster-yes",
                ],
                what="redis-cli --cluster create",
                timeout=timeout,
                env=self._cli_env(),
            )  # fmt: skip
            self.wait_ok(timeout)
        except StackError:
            self.stop()  # no half-made cluster left behind; the logs stay
            raise

    def _cli_tls(self) -> list[str]:
        return [] if self.tls is None else ["--tls", "--cacert", str(self.tls.ca_file)]

    def _cli_env(self) -> dict[str, str] | None:
        """redis-cli reads the password from the environment (never the command line)."""
        if self.password is None:
            return None
        return {**os.environ, "REDISCLI_AUTH": self.password}

    # -- state --------------------------------------------------------------------------

    def _ask(self, port: int, *command: str) -> object:
        """One command to one node with short timeouts; None if it does not answer. Sent as
        separate words, so redis-py applies no parser of its own to CLUSTER subcommands (the
        text formats are Redis's, documented and stable)."""
        client = redis_client.Redis(
            host=self.host,
            port=port,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            password=self.password,
            ssl=self.tls is not None,
            ssl_ca_certs=None if self.tls is None else str(self.tls.ca_file),
            ssl_check_hostname=False,  # see redis.ping
        )
        try:
            answer: object = client.execute_command(*command)  # type: ignore[no-untyped-call]
        except redis_client.RedisError:
            return None
        finally:
            client.close()
        return answer.decode() if isinstance(answer, bytes) else answer

    def _info(self, port: int) -> dict[str, str]:
        text = self._ask(port, "CLUSTER", "INFO")
        return _parse_info(text) if isinstance(text, str) else {}

    def view(self, port: int) -> list[ClusterNode] | None:
        """The cluster as node `port` sees it (CLUSTER NODES), or None if it does not answer."""
        text = self._ask(port, "CLUSTER", "NODES")
        return parse_nodes(text) if isinstance(text, str) else None

    def _first_view(self) -> list[ClusterNode]:
        for port in self.running_ports():
            view = self.view(port)
            if view is not None:
                return view
        return []

    def masters(self) -> list[int]:
        """Ports of the masters serving slots, as the first live node sees it."""
        return sorted(
            n.port for n in self._first_view() if n.is_master and n.slots and not n.failed
        )

    def replicas(self) -> dict[int, int]:
        """Replica port -> its master's port, as the first live node sees it."""
        view = self._first_view()
        by_id = {n.node_id: n.port for n in view}
        return {
            n.port: by_id[n.master_id]
            for n in view
            if not n.is_master and not n.failed and n.master_id in by_id
        }

    def describe(self) -> tuple[bool, str]:
        """(healthy, a status line): cluster_state of each live node and the master count."""
        running = self.running_ports()
        if not running:
            return False, f"{self.addresses} (not running)"
        states = {self._info(p).get("cluster_state", "no answer") for p in running}
        state = "/".join(sorted(states))
        return self.healthy(), (
            f"{self.addresses} ({len(running)}/{NODES} nodes running, cluster_state {state},"
            f" {len(self.masters())} masters, {len(self.replicas())} replicas)"
        )

    def healthy(self, *, full: bool = True) -> bool:
        """Every live node says cluster_state:ok with all slots on working nodes, and all agree
        on the masters. full: besides, all six run, nobody is flagged failing, and every master
        has a replica whose replication link is up (so a failover now would lose nothing)."""
        running = self.running_ports()
        if not running or (full and len(running) != NODES):
            return False
        serving: set[frozenset[int]] = set()
        for port in running:
            info = self._info(port)
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            view = self.view(port)
            if view is None:
                return False
            masters = [n for n in view if n.is_master and n.slots and not n.failed]
            if len(masters) != MASTERS or sum(n.slots for n in masters) != SLOTS:
                return False
            serving.add(frozenset(n.port for n in masters))
            if full:
                followed = {n.master_id for n in view if not n.is_master}
                if len(view) != NODES or any(n.failed for n in view):
                    return False
                if followed != {n.node_id for n in masters}:
                    return False
        if len(serving) != 1:
            return False
        return not full or all(self._link_up(p) for p in running if p not in next(iter(serving)))

    def _link_up(self, replica_port: int) -> bool:
        info = self._ask(replica_port, "INFO", "replication")
        if not isinstance(info, dict):
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def wait_ok(self, timeout: float, *, full: bool = True) -> float:
        """Wait until healthy (see healthy()); the seconds it took, StackError at the deadline."""
        t0 = time.monotonic()
        if not wait_until(lambda: self.healthy(full=full), timeout, interval=0.1):
            _, detail = self.describe()
            raise StackError(
                f"redis-cluster not healthy within {timeout:g}s: {detail};"
                f" logs {self.data_dir}/redis-*.log"
            )
        return time.monotonic() - t0
