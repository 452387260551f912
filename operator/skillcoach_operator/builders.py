"""Pure builders: the pool file, the ConfigMap bodies and patches, PgBouncer's ini with new pool
sizes, the PoolPolicy's status and conditions. Nothing here talks to a cluster.

The pool file is the JSON that skillcoach.data.pool_file reads (the service's side of the
contract; this package does not import the service):

    {"client_budget": 950, "generation": 7, "max_overflow": 0, "pool_recycle": 3600,
     "pool_size": 16, "pool_timeout": 2.0}
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from skillcoach_operator.sizing import PoolDecision

__all__ = [
    "ANNOTATION_CLIENT_BUDGET",
    "ANNOTATION_GENERATION",
    "AppliedPool",
    "IniError",
    "PgBouncerPools",
    "build_pgbouncer_configmap_patch",
    "build_pgbouncer_ini",
    "build_pool_configmap",
    "build_pool_configmap_patch",
    "build_pool_file",
    "merge_patch",
    "parse_pgbouncer_pools",
    "parse_pool_file",
    "pool_file_text",
    "set_condition",
]

PREFIX = "skillcoach.io"
# The highest generation the operator ever wrote to this ConfigMap. A chart upgrade rewrites the
# pool file with a lower generation (the release revision) but leaves this annotation alone, so
# the next generation stays above everything the pods have applied.
ANNOTATION_GENERATION = f"{PREFIX}/pool-generation"
ANNOTATION_REPLICAS = f"{PREFIX}/pool-replicas"
ANNOTATION_CLIENT_BUDGET = f"{PREFIX}/pool-client-budget"
ANNOTATION_DEFAULT_POOL = f"{PREFIX}/pgbouncer-default-pool-size"
ANNOTATION_POLICY = f"{PREFIX}/pool-policy"
# The PgBouncer subchart's own annotations of its ConfigMap: kept true to the file.
ANNOTATION_INI_SHA = f"{PREFIX}/pgbouncer-ini-sha256"
ANNOTATION_INI_DEFAULT = f"{PREFIX}/default-pool-size"
ANNOTATION_INI_MAX_DB = f"{PREFIX}/max-db-connections"

INI_KEYS = ("default_pool_size", "reserve_pool_size", "max_db_connections")


# ---- the pool file -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppliedPool:
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    generation: int
    client_budget: int | None

    @property
    def per_pod(self) -> int:
        return self.pool_size + self.max_overflow

    def same_sizes(self, other: AppliedPool) -> bool:
        return (
            self.pool_size,
            self.max_overflow,
            self.pool_timeout,
            self.pool_recycle,
            self.client_budget,
        ) == (
            other.pool_size,
            other.max_overflow,
            other.pool_timeout,
            other.pool_recycle,
            other.client_budget,
        )


def build_pool_file(decision: PoolDecision, generation: int) -> AppliedPool:
    return AppliedPool(
        pool_size=decision.pool_size,
        max_overflow=decision.max_overflow,
        pool_timeout=decision.pool_timeout,
        pool_recycle=decision.pool_recycle,
        generation=generation,
        client_budget=decision.client_budget,
    )


def pool_file_text(pool: AppliedPool) -> str:
    document: dict[str, Any] = {
        "pool_size": pool.pool_size,
        "max_overflow": pool.max_overflow,
        "pool_timeout": pool.pool_timeout,
        "pool_recycle": pool.pool_recycle,
        "generation": pool.generation,
    }
    if pool.client_budget is not None:
        document["client_budget"] = pool.client_budget
    return json.dumps(document, sort_keys=True)


def _int_field(document: Mapping[str, Any], key: str, low: int) -> int | None:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        return None
    return value


def parse_pool_file(text: str | None) -> AppliedPool | None:
    """The pool file as the pods see it; None when absent or not one (it is then rewritten)."""
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    timeout = document.get("pool_timeout")
    fields = (
        _int_field(document, "pool_size", 1),
        _int_field(document, "max_overflow", 0),
        _int_field(document, "pool_recycle", -1),
        _int_field(document, "generation", 0),
    )
    if any(f is None for f in fields) or isinstance(timeout, bool):
        return None
    if not isinstance(timeout, int | float) or timeout <= 0:
        return None
    pool_size, max_overflow, pool_recycle, generation = (int(f or 0) for f in fields)
    budget = document.get("client_budget")
    return AppliedPool(
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=float(timeout),
        pool_recycle=pool_recycle,
        generation=generation,
        client_budget=budget if isinstance(budget, int) and not isinstance(budget, bool) else None,
    )


def _pool_annotations(decision: PoolDecision, generation: int, policy: str) -> dict[str, str]:
    return {
        ANNOTATION_GENERATION: str(generation),
        ANNOTATION_REPLICAS: str(decision.pods),
        ANNOTATION_CLIENT_BUDGET: str(decision.client_budget),
        ANNOTATION_DEFAULT_POOL: str(decision.pgbouncer_default_pool_size),
        ANNOTATION_POLICY: policy,
    }


def build_pool_configmap(
    *,
    name: str,
    namespace: str,
    key: str,
    pool: AppliedPool,
    decision: PoolDecision,
    policy: str,
) -> dict[str, Any]:
    """A new pool ConfigMap. No ownerReference: the pods mount it, so it must outlive the
    PoolPolicy and the operator."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "skillcoach",
                "app.kubernetes.io/component": "api",
                "app.kubernetes.io/managed-by": "skillcoach-operator",
            },
            "annotations": _pool_annotations(decision, pool.generation, policy),
        },
        "data": {key: pool_file_text(pool)},
    }


def build_pool_configmap_patch(
    *, key: str, pool: AppliedPool, decision: PoolDecision, policy: str
) -> dict[str, Any]:
    """A merge patch of an existing pool ConfigMap: the file and the annotations only."""
    return {
        "metadata": {"annotations": _pool_annotations(decision, pool.generation, policy)},
        "data": {key: pool_file_text(pool)},
    }


# ---- PgBouncer's ini -----------------------------------------------------------------------


class IniError(ValueError):
    """PgBouncer's ini lacks a setting the operator must change."""


@dataclass(frozen=True, slots=True)
class PgBouncerPools:
    default_pool_size: int
    reserve_pool_size: int
    max_db_connections: int


def _section_span(text: str) -> tuple[int, int]:
    """Start and end offsets of the [pgbouncer] section."""
    start = re.search(r"^\s*\[pgbouncer\]\s*$", text, flags=re.M)
    if start is None:
        raise IniError("no [pgbouncer] section")
    end = re.search(r"^\s*\[[^\]]+\]\s*$", text[start.end() :], flags=re.M)
    return start.end(), start.end() + end.start() if end else len(text)


def _setting(key: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<lead>[ \t]*{key}[ \t]*=[ \t]*)(?P<value>[^\s;#]*)", flags=re.M)


def parse_pgbouncer_pools(text: str) -> PgBouncerPools:
    begin, end = _section_span(text)
    section = text[begin:end]
    values: dict[str, int] = {}
    for key in INI_KEYS:
        found = _setting(key).search(section)
        if found is None or not found.group("value").isdigit():
            raise IniError(f"[pgbouncer] has no integer {key}")
        values[key] = int(found.group("value"))
    return PgBouncerPools(**values)


def build_pgbouncer_ini(text: str, decision: PoolDecision) -> str:
    """PgBouncer's ini with the decision's pool sizes; everything else byte for byte."""
    parse_pgbouncer_pools(text)  # every setting present before any is changed
    begin, end = _section_span(text)
    section = text[begin:end]
    wanted = {
        "default_pool_size": decision.pgbouncer_default_pool_size,
        "reserve_pool_size": decision.pgbouncer_reserve_pool,
        "max_db_connections": decision.pgbouncer_max_db_connections,
    }
    for key, value in wanted.items():
        found = _setting(key).search(section)
        assert found is not None  # checked by parse_pgbouncer_pools above
        section = f"{section[: found.start('value')]}{value}{section[found.end('value') :]}"
    return text[:begin] + section + text[end:]


def build_pgbouncer_configmap_patch(*, key: str, text: str) -> dict[str, Any]:
    """A merge patch of PgBouncer's ConfigMap. Its reloader sees the new file and sends RELOAD,
    which keeps every client connection: no restart."""
    pools = parse_pgbouncer_pools(text)
    return {
        "metadata": {
            "annotations": {
                ANNOTATION_INI_SHA: hashlib.sha256(text.encode()).hexdigest(),
                ANNOTATION_INI_DEFAULT: str(pools.default_pool_size),
                ANNOTATION_INI_MAX_DB: str(pools.max_db_connections),
            }
        },
        "data": {key: text},
    }


# ---- status --------------------------------------------------------------------------------


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """The conditions with one of them set; its lastTransitionTime moves only when its status
    changes, so repeating the same decision leaves the status as it was."""
    value = "True" if status else "False"
    result: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for condition in conditions:
        if condition.get("type") == type_:
            previous = condition
        else:
            result.append(dict(condition))
    changed = previous is None or previous.get("status") != value
    updated: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (
            _timestamp(now)
            if changed or previous is None
            else previous.get("lastTransitionTime", _timestamp(now))
        ),
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    result.append(updated)
    return sorted(result, key=lambda c: str(c.get("type")))


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns old into new (keys missing from new become null)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif before != value or key not in old:
            patch[key] = value
    return patch
