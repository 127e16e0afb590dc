"""The reference a language's traffic is compared with, and its cache.

A reference belongs to one (task, language) and one **reference key**: which data it was
built from (the dataset split the champion was evaluated on, or a pinned window of
events), with which base encoder (the embeddings depend on it) and which champion (the
reference predictions do). Building one embeds and describes every row, which costs far
more than a check, so it is built once per key and cached; a check only reads it.

Serialised form: one safetensors file (arrays; never pickle) whose metadata carries the
JSON stats. That one file is what the registry's artifact store accepts (`put_file`), and
the stats are what the `reference_cache` table row holds beside the artifact's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from controller.drift.signals import embedding_noise_scale
from controller.drift.window import stack_embeddings
from controller.traffic import descriptors as desc

FORMAT = "xlt-drift-reference/1"
META_KEY = "xlt_reference"


def reference_key(source: str, base: str | None = None, champion: str | None = None) -> str:
    """e.g. `cldr-emoji/hi/test@41.1;base=3f2a9c1d0b7e;champion=v3` (fits String(200))."""
    parts = [source]
    if base:
        parts.append(f"base={base[:12]}")
    if champion:
        parts.append(f"champion={champion}")
    return ";".join(parts)


@dataclass
class Reference:
    task: str
    language: str
    key: str
    descriptors: pd.DataFrame  # desc.DESCRIPTOR_COLUMNS, one row per reference item
    embeddings: np.ndarray | None = None  # (n, d) float32, the base encoder's
    predictions: np.ndarray | None = None  # (n,) str, the champion's predicted labels
    confidences: np.ndarray | None = None  # (n,) float, the champion's top probability
    stats: dict[str, Any] = field(default_factory=dict)
    _embedding_frame: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.descriptors)

    @property
    def embedding_frame(self) -> pd.DataFrame:
        """The embeddings as the DataFrame Evidently's methods take, built once."""
        if self._embedding_frame is None:
            if self.embeddings is None:
                raise ValueError(f"reference {self.key} has no embeddings")
            self._embedding_frame = pd.DataFrame(self.embeddings)
        return self._embedding_frame

    @property
    def script_mix(self) -> np.ndarray:
        return np.asarray(self.stats["script_mix"], dtype=np.float64)

    @property
    def noise_scale(self) -> float:
        return float(self.stats.get("embedding_noise_scale") or float("nan"))

    def summary(self) -> dict[str, Any]:
        """What a drift report records about its reference."""
        return {"key": self.key, "task": self.task, "language": self.language, "n": self.n,
                "source": self.stats.get("source"), "created_at": self.stats.get("created_at"),
                "kind": self.stats.get("kind", "dataset"), "version": self.stats.get("version")}

    # -- serialisation -----------------------------------------------------------------
    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays for safetensors, and the JSON-ready stats (categoricals as vocab + codes)."""
        # C order matters: safetensors writes the raw buffer, and a DataFrame's values
        # come out column-major
        numeric = self.descriptors[list(desc.NUMERIC_DESCRIPTORS + desc.SCRIPT_COLUMNS)]
        tensors: dict[str, np.ndarray] = {
            "descriptors": np.ascontiguousarray(numeric.to_numpy(np.float64))}
        stats = dict(self.stats)
        dominant = self.descriptors[desc.DOMINANT].astype(str).to_numpy()
        tensors["dominant"], stats["dominant_vocab"] = _encode(dominant)
        if self.embeddings is not None:
            tensors["embeddings"] = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if self.predictions is not None:
            tensors["predictions"], stats["label_vocab"] = _encode(self.predictions)
        if self.confidences is not None:
            tensors["confidences"] = np.ascontiguousarray(self.confidences, dtype=np.float64)
        stats.update(format=FORMAT, task=self.task, language=self.language, key=self.key,
                     columns=list(desc.NUMERIC_DESCRIPTORS + desc.SCRIPT_COLUMNS))
        return tensors, stats

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], stats: dict[str, Any]) -> Reference:
        if stats.get("format") != FORMAT:
            raise ValueError(f"not a drift reference (format {stats.get('format')!r})")
        frame = pd.DataFrame(tensors["descriptors"], columns=stats["columns"])
        for col in desc.NUMERIC_DESCRIPTORS + desc.SCRIPT_COLUMNS:
            if col not in frame:  # a script added to descriptors.py after the reference
                frame[col] = 0.0
        frame[desc.DOMINANT] = np.asarray(stats["dominant_vocab"], dtype=object)[
            tensors["dominant"]]
        predictions = (np.asarray(stats["label_vocab"], dtype=object)[tensors["predictions"]]
                       if "predictions" in tensors else None)
        return cls(task=stats["task"], language=stats["language"], key=stats["key"],
                   descriptors=frame[list(desc.DESCRIPTOR_COLUMNS)],
                   embeddings=tensors.get("embeddings"), predictions=predictions,
                   confidences=tensors.get("confidences"), stats=stats)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """One safetensors file, stats in its metadata; written atomically."""
        tensors, stats = self.to_tensors()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        save_file(tensors, tmp, metadata={META_KEY: json.dumps(stats, sort_keys=True)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Reference:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        if META_KEY not in meta:
            raise ValueError(f"{path} is not a drift reference (no {META_KEY} metadata)")
        return cls.from_tensors(load_file(str(path)), json.loads(meta[META_KEY]))


def _encode(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    vocab, codes = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    return codes.astype(np.int32), [str(v) for v in vocab]


def build_reference(task: str, language: str, key: str, *,
                    texts: Sequence[str] | None = None,
                    descriptors: pd.DataFrame | None = None,
                    embeddings: np.ndarray | None = None,
                    predictions: Sequence[str] | None = None,
                    confidences: Sequence[float] | None = None,
                    source: str | None = None) -> Reference:
    """Compute the reference's statistics once. Give `texts` (descriptors are computed) or
    `descriptors` (e.g. from stored events whose text was withheld)."""
    if descriptors is None:
        if texts is None:
            raise ValueError("build_reference needs texts or descriptors")
        descriptors = desc.describe(list(texts))
    descriptors = descriptors[list(desc.DESCRIPTOR_COLUMNS)].reset_index(drop=True)
    n = len(descriptors)
    for name, arr in (("embeddings", embeddings), ("predictions", predictions),
                      ("confidences", confidences)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows, the reference has {n}")
    stats: dict[str, Any] = {
        "n": n,
        "source": source or key,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scripts": list(desc.SCRIPTS),
        "script_mix": descriptors[list(desc.SCRIPT_COLUMNS)].mean().round(8).tolist(),
    }
    if embeddings is not None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        stats["embedding_dim"] = int(embeddings.shape[1])
        stats["embedding_noise_scale"] = embedding_noise_scale(embeddings)
    if predictions is not None:
        predictions = np.asarray(predictions, dtype=object)
    if confidences is not None:
        confidences = np.asarray(confidences, dtype=np.float64)
    return Reference(task, language, key, descriptors, embeddings, predictions, confidences,
                     stats)


def reference_from_events(task: str, language: str, key: str, events: pd.DataFrame, *,
                          predictions: Sequence[str] | None = None,
                          confidences: Sequence[float] | None = None, source: str,
                          version: int | None = None) -> Reference:
    """A reference that follows the traffic: the window of logged events a drift retrain
    answered (their stored descriptors and base embeddings; the new champion's predictions
    on their text when the text was kept). After that retrain is promoted, the next checks
    compare the traffic with the traffic the champion was trained for, like with like."""
    if events.empty:
        raise ValueError(f"no events in the traffic window {source}")
    descriptors = desc.from_records(events["descriptors"].tolist())
    embeddings = stack_embeddings(events["embedding"].tolist())
    reference = build_reference(task, language, key, descriptors=descriptors,
                                embeddings=embeddings, predictions=predictions,
                                confidences=confidences, source=source)
    reference.stats.update(kind="traffic", version=version,
                           window_start=str(events["at"].min()),
                           window_end=str(events["at"].max()))
    return reference


# -- cache -------------------------------------------------------------------------------
class ReferenceStore(Protocol):
    """Where built references are kept per (task, language, key). The registry-backed one
    (controller.drift.store) keeps the file in the artifact store and a `reference_cache`
    row; these two serve tests, the simulator and a controller without a registry."""

    def get(self, task: str, language: str, key: str) -> Reference | None: ...

    def put(self, reference: Reference) -> None: ...


class MemoryReferenceStore:
    def __init__(self) -> None:
        self._items: dict[tuple[str, str, str], Reference] = {}

    def get(self, task: str, language: str, key: str) -> Reference | None:
        return self._items.get((task, language, key))

    def put(self, reference: Reference) -> None:
        self._items[(reference.task, reference.language, reference.key)] = reference


class DiskReferenceStore:
    """<root>/<task>/<language>/<sha256(key)[:24]>.safetensors, plus a memory layer so a
    controller process reads each file once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._memory = MemoryReferenceStore()

    def path(self, task: str, language: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.root / task / language / f"{digest}.safetensors"

    def get(self, task: str, language: str, key: str) -> Reference | None:
        hit = self._memory.get(task, language, key)
        if hit is not None:
            return hit
        path = self.path(task, language, key)
        if not path.is_file():
            return None
        reference = Reference.load(path)
        if reference.key != key:  # a digest collision, or a file copied by hand
            return None
        self._memory.put(reference)
        return reference

    def put(self, reference: Reference) -> None:
        reference.save(self.path(reference.task, reference.language, reference.key))
        self._memory.put(reference)


def get_or_build(store: ReferenceStore, task: str, language: str, key: str,
                 build: Any) -> Reference:
    """The cached reference for `key`, or `build()` it once and cache it."""
    hit = store.get(task, language, key)
    if hit is not None:
        return hit
    reference = build()
    store.put(reference)
    return reference
