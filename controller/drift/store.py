"""Drift monitoring wired to the registry: inference events in, windows out, drift reports and
reference caches recorded. Writes go through `registry.service.Registry` (the only writer);
the window read is a plain SELECT run in the registry's read transaction.

Stored event shape (table inference_events): the embedding as little-endian float32 bytes
(384 floats = 1.5 KiB a row), the descriptors as a JSON dict without zero script shares,
the text only when policy allows (descriptors and embedding are enough for every signal).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.drift import descriptors as desc
from controller.drift.check import DriftResult
from controller.drift.reference import Reference
from registry.languages import canonical_language
from registry.schema import InferenceEvent, ReferenceCache

REQUIRED = ("task", "language", "prediction", "confidence")
STORED = ("task", "language", "adapter_version", "routing_key", "text", "embedding",
          "descriptors", "prediction", "confidence", "feedback_label", "latency_ms", "at")


def _plain(value: Any) -> Any:
    """numpy scalars and NaN/NaT to what a database driver takes."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


def event_row(event: Mapping[str, Any], *, keep_text: bool = True) -> dict[str, Any]:
    """One inference event (a simulator dict, or what a server logs) as an inference_events
    row: descriptors computed from the text if missing, embedding packed to float32 bytes."""
    missing = [k for k in REQUIRED if event.get(k) is None]
    if missing:
        raise ValueError(f"inference event lacks {missing}")
    row = {k: _plain(event.get(k)) for k in STORED if k in event}
    row["language"] = canonical_language(str(event["language"]))
    row["prediction"] = str(event["prediction"])
    row["confidence"] = float(event["confidence"])
    if not event.get("descriptors"):
        if not event.get("text"):
            raise ValueError("inference event has neither descriptors nor text")
        row["descriptors"] = desc.describe_one(str(event["text"]))
    emb = event.get("embedding")
    if emb is not None and not isinstance(emb, bytes | bytearray):
        row["embedding"] = np.asarray(emb, dtype="<f4").tobytes()
    if not keep_text:
        row["text"] = None
    return row


def log_events(registry: Any, events: Iterable[Mapping[str, Any]], *, keep_text: bool = True,
               batch_size: int = 2000) -> int:
    """Log events through `Registry.log_inference_events`, in batches (one transaction each)."""
    total, batch = 0, []
    for event in events:
        batch.append(event_row(event, keep_text=keep_text))
        if len(batch) >= batch_size:
            total += registry.log_inference_events(batch)
            batch = []
    if batch:
        total += registry.log_inference_events(batch)
    return total


def frame_to_events(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A simulator frame (flat descriptor columns) as event dicts with a descriptors dict."""
    flat = [c for c in desc.DESCRIPTOR_COLUMNS if c in frame]
    records = frame.drop(columns=flat).to_dict(orient="records")
    if flat:
        for record, values in zip(records, frame[flat].to_dict(orient="records"), strict=True):
            record["descriptors"] = {k: (v if isinstance(v, str) else float(v))
                                     for k, v in values.items()
                                     if not (k.startswith("script_") and v == 0.0)}
    return records


def _window_query(session: Session, task: str, language: str, start: datetime | None,
                  end: datetime | None, limit: int | None) -> list[dict[str, Any]]:
    query = select(InferenceEvent).where(InferenceEvent.task == task,
                                         InferenceEvent.language == language)
    if start is not None:
        query = query.where(InferenceEvent.at >= start)
    if end is not None:
        query = query.where(InferenceEvent.at < end)
    # the latest `limit` events of the window, returned oldest first
    query = query.order_by(InferenceEvent.at.desc(), InferenceEvent.id.desc())
    if limit is not None:
        query = query.limit(limit)
    rows = session.scalars(query).all()
    return [{c: getattr(r, c) for c in ("id",) + STORED} for r in reversed(rows)]


def read_window(registry: Any, task: str, language: str, *, start: datetime | None = None,
                end: datetime | None = None, limit: int | None = None) -> pd.DataFrame:
    """Events of (task, language) with start <= at < end (the latest `limit` of them) as the
    frame `check_language` takes."""
    records = registry.query(_window_query, task, canonical_language(language), start, end,
                             limit)
    frame = pd.DataFrame.from_records(records, columns=["id", *STORED])
    if len(frame):
        frame["at"] = pd.to_datetime(frame["at"], utc=True)  # SQLite returns naive UTC
    return frame


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


__all__: Sequence[str] = ("event_row", "log_events", "frame_to_events", "read_window",
                          "record_result", "RegistryReferenceStore", "check_from_registry")
