"""Validating production traffic files (JSONL or Parquet) before they reach the registry.

Each row is checked on its own; good rows are stored, each bad row is reported with its
line number and reason. Text is dropped for languages whose policy forbids keeping it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from controller.policy import Policy
from controller.traffic.log import event_row
from registry.errors import InvalidInput
from registry.languages import canonical_language

ALLOWED = {"task", "language", "adapter_version", "routing_key", "text", "embedding",
           "descriptors", "prediction", "confidence", "feedback_label", "latency_ms", "at"}


@dataclass
class IngestReport:
    stored: int = 0
    rejects: list[tuple[int, str]] = field(default_factory=list)
    text_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "rejected": len(self.rejects),
                "text_dropped": self.text_dropped,
                "rejects": [{"line": n, "reason": r} for n, r in self.rejects]}


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, row) pairs; a line that is not JSON is yielded as an error string."""
    if not path.is_file():
        raise InvalidInput(f"no such file: {path}", "give a JSONL or Parquet file")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise InvalidInput(f"{path} is not a readable Parquet file: {exc}", "") from exc
        for i, record in enumerate(frame.to_dict(orient="records"), start=1):
            yield i, record
        return
    if path.suffix not in (".jsonl", ".ndjson", ".json"):
        raise InvalidInput(f"{path.name}: unknown format", "use .jsonl or .parquet")
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, f"not JSON ({exc.msg})"


def _number(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"{key} must be a number")
    return float(value)


def validate(row: Any, dim: int | None) -> dict[str, Any]:
    """The row made ready for `event_row`, or ValueError saying what is wrong."""
    if isinstance(row, str):
        raise ValueError(row)
    if not isinstance(row, dict):
        raise ValueError("row is not an object")
    unknown = set(row) - ALLOWED
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    for key in ("task", "language", "prediction"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"{key} is missing or empty")
    try:
        row["language"] = canonical_language(row["language"])
    except InvalidInput as exc:
        raise ValueError(str(exc)) from exc
    confidence = _number(row, "confidence")
    if confidence is None or not 0 <= confidence <= 1:
        raise ValueError("confidence must be a number in [0, 1]")
    latency = _number(row, "latency_ms")
    if latency is not None and latency < 0:
        raise ValueError("latency_ms must not be negative")
    version = row.get("adapter_version")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise ValueError("adapter_version must be a positive integer")
    emb = row.get("embedding")
    if emb is not None:
        if not isinstance(emb, list | tuple) or not all(isinstance(x, int | float) for x in emb):
            raise ValueError("embedding must be a list of numbers")
        if dim is not None and len(emb) != dim:
            raise ValueError(f"embedding has {len(emb)} dimensions, expected {dim}")
    if not row.get("text") and not row.get("descriptors"):
        raise ValueError("a row needs text or descriptors")
    at = row.get("at")
    if at is not None:
        try:
            parsed = datetime.fromisoformat(str(at))
        except ValueError as exc:
            raise ValueError("at must be an ISO-8601 timestamp") from exc
        row["at"] = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return row


def ingest(registry: Any, path: Path, policy: Policy, *, all_or_nothing: bool = False,
           batch_size: int = 2000) -> IngestReport:
    report = IngestReport()
    good: list[dict[str, Any]] = []
    dim: int | None = None
    for line, raw in read_rows(path):
        try:
            row = validate(raw, dim)
            if row.get("embedding") is not None:
                dim = dim or len(row["embedding"])
            keep = policy.keeps_text(row["language"])
            if not keep and row.get("text"):
                report.text_dropped += 1
            good.append(event_row(row, keep_text=keep))
        except ValueError as exc:
            report.rejects.append((line, str(exc)))
    if all_or_nothing and report.rejects:
        return report
    for start in range(0, len(good), batch_size):
        report.stored += registry.log_inference_events(good[start:start + batch_size])
    return report
