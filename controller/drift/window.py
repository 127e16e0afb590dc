"""The current window of a language's traffic as the drift check reads it: descriptors,
embeddings, predictions and confidences, from simulator frames or the traffic log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from controller.traffic import descriptors as desc


# -- the current window --------------------------------------------------------------------
@dataclass
class Window:
    descriptors: pd.DataFrame
    embeddings: np.ndarray | None
    predictions: pd.Series | None
    confidences: pd.Series | None
    start: datetime | None
    end: datetime | None

    @property
    def n(self) -> int:
        return len(self.descriptors)


def stack_embeddings(values: Sequence[Any]) -> np.ndarray | None:
    """Rows of an `embedding` column (arrays, lists, or float32 bytes as stored in
    inference_events.embedding) as one (n, d) float32 array; None if any row lacks one."""
    if len(values) == 0 or any(v is None for v in values):
        return None
    first = values[0]
    if isinstance(first, bytes | bytearray | memoryview):
        flat = np.frombuffer(b"".join(bytes(v) for v in values), dtype=np.float32)
        return flat.reshape(len(values), -1)
    return np.asarray(np.stack([np.asarray(v, dtype=np.float32) for v in values]))


def window_from_events(events: pd.DataFrame | Sequence[Mapping[str, Any]]) -> Window:
    """Accepts what the simulator yields and what controller.traffic.log reads: flat
    descriptor columns, or a `descriptors` dict column, or only `text` (described here)."""
    frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame(list(events))
    frame = frame.reset_index(drop=True)
    if all(c in frame for c in desc.NUMERIC_DESCRIPTORS) and desc.DOMINANT in frame:
        descriptors = frame.reindex(columns=list(desc.DESCRIPTOR_COLUMNS))
        shares = list(desc.SCRIPT_COLUMNS)
        descriptors[shares] = descriptors[shares].fillna(0.0)
    elif "descriptors" in frame and frame["descriptors"].map(bool).all():
        descriptors = desc.from_records(frame["descriptors"].tolist())
    elif "text" in frame and frame["text"].notna().all():
        descriptors = desc.describe(frame["text"].tolist())
    elif frame.empty:
        descriptors = pd.DataFrame(columns=list(desc.DESCRIPTOR_COLUMNS))
    else:
        raise ValueError("events need descriptors (columns or a `descriptors` dict) or text")
    embeddings = stack_embeddings(frame["embedding"].tolist()) if "embedding" in frame else None
    at = pd.to_datetime(frame["at"], utc=True) if "at" in frame and len(frame) else None
    return Window(
        descriptors=descriptors,
        embeddings=embeddings,
        predictions=frame["prediction"].astype(str) if "prediction" in frame else None,
        confidences=(frame["confidence"].astype(np.float64) if "confidence" in frame
                     else None),
        start=_pydatetime(at.min()) if at is not None else None,
        end=_pydatetime(at.max()) if at is not None else None,
    )


def _pydatetime(value: pd.Timestamp) -> datetime:
    return value.floor("us").to_pydatetime()  # datetime has no nanoseconds
