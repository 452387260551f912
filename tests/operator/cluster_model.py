"""Shared by the operator's tests: realistic objects (a Deployment, PgBouncer's ini rendered from
the one template, a PoolPolicy as the chart writes it) and a JSON merge patch as the API
server applies it."""

from __future__ import annotations

import copy
import string
from collections.abc import Mapping
from typing import Any

from tests.deploy.tooling import ROOT

INI_TEMPLATE = ROOT / "deploy" / "pgbouncer" / "files" / "pgbouncer.ini.tmpl"


def pgbouncer_ini(*, default_pool_size: int = 40, reserve_pool_size: int = 5) -> str:
    """PgBouncer's ini as its chart renders it (every placeholder filled)."""
    values = {
        "database_entries": "skillcoach = host=postgresql port=5432 dbname=skillcoach",
        "listen_addr": "0.0.0.0",
        "listen_port": "6432",
        "logfile": "",
        "pidfile": "",
        "auth_file": "/etc/pgbouncer/auth/userlist.txt",
        "admin_user": "pgbouncer_admin",
        "default_pool_size": str(default_pool_size),
        "reserve_pool_size": str(reserve_pool_size),
        "reserve_pool_timeout": "1",
        "max_db_connections": str(default_pool_size + reserve_pool_size),
        "max_client_conn": "1000",
        "query_wait_timeout": "10",
    }
    return string.Template(INI_TEMPLATE.read_text()).substitute(values)


def deployment(
    name: str,
    namespace: str,
    *,
    replicas: int,
    current: int | None = None,
    max_surge: int | str = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": f"uid-{name}"},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": max_surge}},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas if current is None else current,
            "updatedReplicas": replicas if current is None else current,
        },
    }


def policy_spec(
    *,
    deployment: str = "api",
    pool_config_map: str = "api-pool",
    pgbouncer: str = "pgbouncer",
    max_client_conn: int = 110,
    client_reserve: int = 10,
    max_connections: int = 100,
    server_reserve: int = 10,
    reserve_pool_size: int = 5,
    min_per_pod: int = 2,
    max_per_pod: int = 16,
    grow_delay_seconds: int = 1,
) -> dict[str, Any]:
    return {
        "deployment": deployment,
        "poolConfigMap": {"name": pool_config_map, "key": "pool.json"},
        "pgbouncer": {
            "deployment": pgbouncer,
            "configMap": pgbouncer,
            "key": "pgbouncer.ini",
            "reservePoolSize": reserve_pool_size,
        },
        "clientBudget": {"maxClientConn": max_client_conn, "reserve": client_reserve},
        "serverBudget": {"maxConnections": max_connections, "reserve": server_reserve},
        "perPod": {"min": min_per_pod, "max": max_per_pod, "poolTimeoutSeconds": 2},
        "surge": {"source": "Deployment", "count": "Always"},
        "growDelaySeconds": grow_delay_seconds,
    }


def merge(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    result = copy.deepcopy(dict(target))
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result
