"""The stack's Redis Cluster: options and parsing, then the real 6-node cluster of the fixture,
including a master killed and its replica taking over.

Every wait polls against a deadline; the failover one is generous (node timeout 2 s, measured
~4 s here) so a loaded machine does not fail it, and the time it took is printed (-s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis.cluster import ClusterNode as StartupNode
from redis.cluster import RedisCluster

from skillcoach_devstack.config import StackConfig
from skillcoach_devstack.envfile import stack_env
from skillcoach_devstack.errors import StackError
from skillcoach_devstack.redis_cluster import RedisClusterNodes, cluster_url, node_args, parse_nodes

T = TypeVar("T")

# Detection (one node timeout) + election (~1 s) is ~4 s; the rest is margin for a busy host.
FAILOVER_DEADLINE = 10.0

NODES_TEXT = """\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
c3 127.0.0.1:7002@17002,host3 master,fail - 0 1 3 connected
d4 127.0.0.1:7003@17003 slave b2 0 1 2 connected
e5 127.0.0.1:7004@17004 master - 0 1 7 connected 10923-16383 [77->-a1]
f6 :0@0 slave,fail? e5 0 1 7 disconnected
"""


def test_nodes_are_loopback_cache_only_cluster_nodes() -> None:
    args = node_args(port=7003, data_dir=Path("/d"))
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--bind"] == "127.0.0.1"
    assert (pairs["--save"], pairs["--appendonly"]) == ("", "no")
    assert pairs["--cluster-enabled"] == "yes"
    assert pairs["--cluster-config-file"] == "/d/nodes-7003.conf"
    assert pairs["--cluster-node-timeout"] == "2000"
    assert pairs["--cluster-require-full-coverage"] == "no"
    # Nodes share the dir: their files must not collide.
    assert (pairs["--pidfile"], pairs["--dbfilename"]) == ("/d/redis-7003.pid", "dump-7003.rdb")


def test_parse_nodes() -> None:
    nodes = {n.node_id: n for n in parse_nodes(NODES_TEXT)}
    assert (nodes["a1"].port, nodes["a1"].slots, nodes["a1"].is_master) == (7000, 5461, True)
    assert nodes["c3"].failed and nodes["c3"].slots == 0
    assert (nodes["d4"].master_id, nodes["d4"].is_master) == ("b2", False)
    assert nodes["e5"].slots == 16384 - 10923  # the migrating slot counts once, at its owner
    assert nodes["f6"].failed and nodes["f6"].port == 0


def test_url_names_every_node() -> None:
    assert cluster_url("127.0.0.1", [7000, 7001]) == "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    cfg = StackConfig.from_env(Path("/r"), {})
    nodes = RedisClusterNodes(base_port=cfg.redis_cluster_port, data_dir=cfg.redis_cluster_dir)
    assert nodes.ports == list(range(7000, 7006))
    assert nodes.data_dir == Path("/r/.stack/redis-cluster")
    assert nodes.url == "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in nodes.ports)


def test_port_setting() -> None:
    env = {"SKILLCOACH_STACK_REDIS_CLUSTER_PORT": "7100"}
    assert StackConfig.from_env(Path("/r"), env).redis_cluster_port == 7100
    # The bus ports (+10000) must fit too.
    with pytest.raises(StackError, match="SKILLCOACH_STACK_REDIS_CLUSTER_PORT"):
        StackConfig.from_env(Path("/r"), {"SKILLCOACH_STACK_REDIS_CLUSTER_PORT": "60000"})


def test_env_file_carries_both_urls() -> None:
    values = stack_env(
        api_url="http://127.0.0.1:8000",
        api_key="k",
        database_url="postgresql+psycopg2://u:p@127.0.0.1:6432/d",
        direct_database_url="postgresql+psycopg2://u:p@127.0.0.1:5432/d",
        redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        standalone_redis_url="redis://127.0.0.1:6390/0",
        pgbouncer_admin_url="postgresql://a:x@127.0.0.1:6432/pgbouncer",
        replica_urls=["http://127.0.0.1:8001"],
        replica_metrics_urls=["http://127.0.0.1:9001/metrics"],
        pgbouncer_metrics_url="http://127.0.0.1:9127/metrics",
        haproxy_stats_url="http://127.0.0.1:8404/stats",
        haproxy_metrics_url="http://127.0.0.1:8404/metrics",
    )
    assert values["SKILLCOACH_REDIS_URL"].startswith("redis+cluster://")
    assert values["SKILLCOACH_STANDALONE_REDIS_URL"] == "redis://127.0.0.1:6390/0"


# -- the real cluster ---------------------------------------------------------------------


def _client(url: str) -> RedisCluster:
    """A sync cluster client from the app's URL form (host:port list after the scheme)."""
    hosts = url.removeprefix("redis+cluster://").split(",")
    nodes = [StartupNode(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, socket_timeout=1.0, socket_connect_timeout=1.0)


def _owner(client: RedisCluster, key: str) -> int:
    """The port of the master the client routes key to."""
    port: int = client.get_node_from_key(key).port  # type: ignore[no-untyped-call]
    return port


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterNodes) -> Iterator[RedisCluster]:
    client = _client(redis_cluster.url)
    try:
        yield client
    finally:
        client.close()


def _eventually(read: Callable[[], T], timeout: float) -> T:
    """read() once it stops raising redis errors (a client finding the new topology)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except redis.RedisError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _poll(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until predicate() held; fails the test at the deadline."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"not true within {timeout:g}s"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.mark.integration
def test_cluster_is_whole(redis_cluster: RedisClusterNodes) -> None:
    assert redis_cluster.healthy()
    assert len(redis_cluster.masters()) == 3
    replicas = redis_cluster.replicas()
    assert len(replicas) == 3
    assert set(replicas.values()) == set(redis_cluster.masters())
    for port in redis_cluster.ports:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            assert client.cluster("INFO")["cluster_state"] == "ok"
        finally:
            client.close()
    assert all(20000 <= p < 32768 for p in redis_cluster.ports)  # never the stack's 7000..


@pytest.mark.integration
def test_start_reuses_and_heals(redis_cluster: RedisClusterNodes) -> None:
    assert redis_cluster.start() == "reused"
    replica = min(redis_cluster.replicas())
    redis_cluster.kill_node(replica)
    # What `stack up` does after a node crashed: bring it back, keep the rest.
    assert redis_cluster.start(timeout=15) == f"healed (restarted {replica})"
    assert redis_cluster.healthy()


@pytest.mark.integration
def test_keys_round_trip(cluster_client: RedisCluster) -> None:
    keys = {f"skillcoach:test:rt:{i}": str(i).encode() for i in range(50)}
    for key, value in keys.items():
        cluster_client.set(key, value, ex=60)
    # 50 keys land on all three masters.
    assert len({_owner(cluster_client, k) for k in keys}) == 3
    assert {k: cluster_client.get(k) for k in keys} == keys


@pytest.mark.integration
def test_master_failover_and_rejoin(
    redis_cluster: RedisClusterNodes, cluster_client: RedisCluster
) -> None:
    redis_cluster.wait_ok(15)  # every master has a synced replica
    before = redis_cluster.masters()
    victim = before[0]
    (heir,) = [r for r, m in redis_cluster.replicas().items() if m == victim]
    candidates = (f"skillcoach:test:fo:{i}" for i in range(10_000))
    keys = [k for k in candidates if _owner(cluster_client, k) == victim][:20]
    assert len(keys) == 20
    for key in keys:
        cluster_client.set(key, key, ex=120)

    # Replication is asynchronous: the keys must be on the heir before its master dies.
    heir_conn = redis.Redis(host="127.0.0.1", port=heir, socket_timeout=2)
    try:
        heir_conn.execute_command("READONLY")  # type: ignore[no-untyped-call]
        _poll(lambda: all(heir_conn.get(k) == k.encode() for k in keys), 5.0)
    finally:
        heir_conn.close()

    try:
        redis_cluster.kill_node(victim)
        took = _poll(
            lambda: victim not in redis_cluster.masters() and redis_cluster.healthy(full=False),
            FAILOVER_DEADLINE,
        )
        print(f"\nfailover: {heir} took over from {victim} in {took:.2f}s")
        after = redis_cluster.masters()
        assert heir in after and len(after) == 3
        # The same client (stale topology) finds the new master and the data survived.
        values = _eventually(lambda: [cluster_client.get(k) for k in keys], 5.0)
        assert values == [k.encode() for k in keys]
        cluster_client.set(keys[0], "written after", ex=120)
        assert cluster_client.get(keys[0]) == b"written after"

        # Back from its nodes.conf, the old master learns it lost its slots and follows heir.
        t0 = time.monotonic()
        redis_cluster.start_node(victim)
        rejoin = redis_cluster.wait_ok(10)
        print(f"rejoin: {victim} is a synced replica of {heir} after {time.monotonic() - t0:.2f}s")
        assert rejoin < 10
        assert redis_cluster.replicas()[victim] == heir
        assert redis_cluster.masters() == after
    finally:
        # The session's cluster must be whole for the tests after this one.
        if victim not in redis_cluster.running_ports():
            redis_cluster.start_node(victim)
        redis_cluster.wait_ok(15)
