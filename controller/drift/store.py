"""Drift monitoring wired to the registry: drift reports and reference caches recorded,
checks run over windows of the traffic log (controller.traffic.log, which holds the event
shape). Writes go through `registry.service.Registry` (the only writer)."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.drift.check import DriftResult
from controller.drift.reference import Reference
from controller.traffic.log import read_window
from registry.languages import canonical_language
from registry.schema import ReferenceCache


def record_result(registry: Any, result: DriftResult) -> Any:
    """Store a check's result as a drift_reports row (one audit event with it)."""
    return registry.record_drift_report(result.task, result.language,
                                        **result.registry_kwargs())


class RegistryReferenceStore:
    """References in the registry: the safetensors file in the artifact store (verified on
    read), a `reference_cache` row per (task, language, key) with the stats, and a memory
    layer so one controller process loads each reference once."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._memory: dict[tuple[str, str, str], Reference] = {}

    def get(self, task: str, language: str, key: str) -> Reference | None:
        language = canonical_language(language)
        hit = self._memory.get((task, language, key))
        if hit is not None:
            return hit
        sha = self.registry.query(_reference_sha, task, language, key)
        if sha is None:
            return None
        reference = Reference.load(self.registry.store.verified_path(sha))
        self._memory[(task, language, key)] = reference
        return reference

    def put(self, reference: Reference) -> None:
        language = canonical_language(reference.language)
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", prefix="xlt-reference-")
        os.close(fd)
        try:
            reference.save(tmp)
            sha = self.registry.store.put_file(Path(tmp))
        finally:
            Path(tmp).unlink(missing_ok=True)
        # the row keeps what a person reading the table wants; the arrays are in the file
        stats = {k: reference.stats.get(k) for k in ("n", "source", "created_at",
                                                      "embedding_dim", "embedding_noise_scale",
                                                      "script_mix", "scripts", "kind",
                                                      "version", "window_start", "window_end")}
        self.registry.put_reference_cache(reference.task, language, reference.key, sha, stats)
        self._memory[(reference.task, language, reference.key)] = reference


def reference_count(session: Session, task: str, language: str) -> int:
    """How many references the track has had (a new one is version count + 1)."""
    return len(session.scalars(select(ReferenceCache.id).where(
        ReferenceCache.task == task, ReferenceCache.language == language)).all())


def drift_report_window(session: Session, report_id: int
                        ) -> tuple[str, str, datetime, datetime] | None:
    """(task, language, window start, window end) of a drift report, UTC-aware."""
    from datetime import UTC

    from registry.schema import DriftReport

    row = session.get(DriftReport, report_id)
    if row is None or row.window_start is None or row.window_end is None:
        return None

    def utc(ts: datetime) -> datetime:
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)

    return row.task, row.language, utc(row.window_start), utc(row.window_end)


def _reference_sha(session: Session, task: str, language: str, key: str) -> str | None:
    return session.scalars(select(ReferenceCache.artifact_sha256).where(
        ReferenceCache.task == task, ReferenceCache.language == language,
        ReferenceCache.reference_key == key)).one_or_none()


def check_from_registry(registry: Any, reference: Reference, *, start: datetime | None = None,
                        end: datetime | None = None, limit: int | None = 5000,
                        thresholds: Any = None, reports_dir: str | Path | None = None,
                        html: str = "drifted", record: bool = True) -> DriftResult:
    """Read the window, check it, and record the report: one call per track and tick."""
    from controller.drift.check import check_language

    events = read_window(registry, reference.task, reference.language, start=start, end=end,
                         limit=limit)
    result = check_language(reference, events, thresholds, reports_dir=reports_dir,
                            html=html)  # type: ignore[arg-type]
    if start is not None and result.window_start is None:
        result.window_start = start
    if end is not None and result.window_end is None:
        result.window_end = end
    if record:
        record_result(registry, result)
    return result
