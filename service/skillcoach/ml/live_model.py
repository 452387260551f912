"""The model a replica serves, with the catalog it was loaded against, hot-swapped on promotion."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection

from skillcoach.data.catalog_reads import Catalog, load_catalog
from skillcoach.data.database import Database
from skillcoach.data.model_registry import fetch_promoted, promoted_fingerprint
from skillcoach.errors import DatabaseUnavailable
from skillcoach.ml.model import ArtifactError, BestLR

__all__ = ["LiveModel", "ModelCollector", "ServedModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    version: int
    sha256: str
    trained_at: datetime
    loaded_at: datetime
    metrics: dict[str, Any]
    model: BestLR
    catalog: Catalog


def _load(conn: Connection, known: tuple[int, str] | None) -> tuple[Any, Catalog] | None:
    fingerprint = promoted_fingerprint(conn)
    if fingerprint is None or fingerprint == known:
        return None
    record = fetch_promoted(conn)
    if record is None:  # demoted between the two reads; the next poll sees the new state
        return None
    return record, load_catalog(conn)


class LiveModel:
    """Holds the served model; `current` is replaced atomically, readers never see a mix."""

    def __init__(self) -> None:
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        # Unix time of the last poll that found the served model up to date (None: never),
        # and the polls that failed (registry unreachable, or a promoted model refused).
        self.refreshed_at: float | None = None
        self.refresh_failures = 0

    async def refresh(self, db: Database) -> bool:
        """Load the promoted model if it differs from the served one; True if it changed."""
        served = self.current
        known = None if served is None else (served.version, served.sha256)
        try:
            loaded = await db.run(_load, known, retry=True)
        except DatabaseUnavailable:
            self.refresh_failures += 1
            raise
        if loaded is None:
            self.refreshed_at = time.time()
            return False
        record, catalog = loaded
        try:
            model = BestLR.from_artifact(record.artifact, sha256=record.sha256)
        except ArtifactError as exc:
            # Keep serving the previous model; a broken artifact must not take replicas down.
            self.refresh_failures += 1
            self.last_error = f"model v{record.version}: {exc}"
            log.error("refusing promoted model: %s", self.last_error)
            return False
        _warm_up(model, catalog)
        self.current = ServedModel(
            version=record.version,
            sha256=record.sha256,
            trained_at=record.trained_at,
            loaded_at=datetime.now(UTC),
            metrics=record.metrics,
            model=model,
            catalog=catalog,
        )
        self.last_error = None
        self.refreshed_at = time.time()
        log.info("serving model v%d (%d exercises)", record.version, len(catalog))
        return True


class ModelCollector(Collector):
    """The served model at scrape time: every replica should show the same."""

    def __init__(self, live: LiveModel) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        live = self._live
        served = live.current
        yield GaugeMetricFamily(
            "skillcoach_model_version",
            "Version of the served model (0: none loaded)",
            value=0 if served is None else served.version,
        )
        info = GaugeMetricFamily(
            "skillcoach_model_info",
            "1 for the version this replica serves (no series while none is loaded)",
            labels=["version"],
        )
        if served is not None:
            info.add_metric([str(served.version)], 1)
        yield info
        yield GaugeMetricFamily(
            "skillcoach_model_refresh_timestamp_seconds",
            "Unix time of the last poll of the model registry that left the served model up"
            " to date (0: none yet)",
            value=live.refreshed_at or 0,
        )
        yield CounterMetricFamily(
            "skillcoach_model_refresh_failures",
            "Polls of the model registry that failed: registry unreachable, or the promoted"
            " model refused",
            value=live.refresh_failures,
        )


def _warm_up(model: BestLR, catalog: Catalog) -> None:
    """One inference of each kind before the model is served, so the first request pays no
    first-call costs (numpy/scipy dispatch set-up)."""
    from skillcoach.ml.analysis import ability_interval, mastery_interval

    skills = model.skill_ids[:8]
    zeros = np.zeros(len(skills))
    p = model.skill_mastery(
        skills, zeros, zeros, total_correct=0, total_incorrect=0,
        skill_residual=zeros, skill_information=zeros,
    )  # fmt: skip
    mastery_interval(p, zeros)
    ability_interval(model, p, zeros)
    ex = catalog.exercise_ids[:8]
    z = np.zeros(len(ex))
    model.exercise_success(
        ex,
        catalog.exercise_skill_ids[:8],
        z,
        z,
        total_correct=0,
        total_incorrect=0,
        skill_residual=z,
        skill_information=z,
    )
