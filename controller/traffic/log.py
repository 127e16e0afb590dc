"""The traffic log: inference events in (from `xlt serve`, the demo server and ingest),
windows out (for drift checks and canary analysis). Writes go through
`registry.service.Registry` (the only writer); the window read is a plain SELECT run in the
registry's read transaction.

Stored event shape (table inference_events): the embedding as little-endian float32 bytes
(384 floats = 1.5 KiB a row), the descriptors as a JSON dict without zero script shares,
the text only when policy allows (descriptors and embedding are enough for every signal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.traffic import descriptors as desc
from registry.languages import canonical_language
from registry.schema import InferenceEvent

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
