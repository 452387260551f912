"""The model registry table: store trained models, promote one, read the live one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection

__all__ = [
    "ModelRecord",
    "UnknownModelVersion",
    "fetch_promoted",
    "list_models",
    "promote",
    "promoted_fingerprint",
    "store_model",
]


class UnknownModelVersion(LookupError):
    def __init__(self, version: int) -> None:
        super().__init__(f"no model version {version} in the registry")
        self.version = version


@dataclass(frozen=True, slots=True)
class ModelRecord:
    version: int
    created_at: datetime
    trained_at: datetime
    metrics: dict[str, Any]
    feature_schema: dict[str, Any]
    sha256: str
    promoted: bool
    promoted_at: datetime | None
    artifact: bytes | None = None


_COLUMNS = "version, created_at, trained_at, metrics, feature_schema, sha256, promoted, promoted_at"


def _record(row: Any, artifact: bytes | None = None) -> ModelRecord:
    return ModelRecord(
        version=row.version,
        created_at=row.created_at,
        trained_at=row.trained_at,
        metrics=row.metrics,
        feature_schema=row.feature_schema,
        sha256=row.sha256,
        promoted=row.promoted,
        promoted_at=row.promoted_at,
        artifact=artifact,
    )


def store_model(
    conn: Connection,
    *,
    artifact: bytes,
    trained_at: datetime,
    metrics: dict[str, Any],
    feature_schema: dict[str, Any],
) -> int:
    row = conn.exec_driver_sql(
        "INSERT INTO model_registry (trained_at, metrics, feature_schema, artifact, sha256)"
        " VALUES (%(trained_at)s, %(metrics)s, %(schema)s, %(artifact)s, %(sha)s)"
        " RETURNING version",
        {
            "trained_at": trained_at,
            "metrics": orjson.dumps(metrics).decode(),
            "schema": orjson.dumps(feature_schema).decode(),
            "artifact": artifact,
            "sha": hashlib.sha256(artifact).hexdigest(),
        },
    ).one()
    return int(row.version)


def promote(conn: Connection, *, version: int) -> None:
    """Make `version` the live model; one transaction, so there is never zero or two live."""
    exists = conn.exec_driver_sql(
        "SELECT 1 FROM model_registry WHERE version = %(v)s FOR UPDATE", {"v": version}
    ).first()
    if exists is None:
        raise UnknownModelVersion(version)
    conn.exec_driver_sql(
        "UPDATE model_registry SET promoted = false WHERE promoted AND version <> %(v)s",
        {"v": version},
    )
    conn.exec_driver_sql(
        "UPDATE model_registry SET promoted = true, promoted_at = now()"
        " WHERE version = %(v)s AND NOT promoted",
        {"v": version},
    )


def promoted_fingerprint(conn: Connection) -> tuple[int, str] | None:
    """Version and checksum of the live model: the cheap poll replicas run to spot a promotion."""
    row = conn.exec_driver_sql("SELECT version, sha256 FROM model_registry WHERE promoted").first()
    return None if row is None else (int(row.version), str(row.sha256))


def fetch_promoted(conn: Connection) -> ModelRecord | None:
    row = conn.exec_driver_sql(
        f"SELECT {_COLUMNS}, artifact FROM model_registry WHERE promoted"
    ).first()
    return None if row is None else _record(row, bytes(row.artifact))


def list_models(conn: Connection) -> list[ModelRecord]:
    rows = conn.exec_driver_sql(f"SELECT {_COLUMNS} FROM model_registry ORDER BY version").all()
    return [_record(r) for r in rows]
