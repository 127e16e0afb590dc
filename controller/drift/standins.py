"""Cheap stand-ins for the base encoder and a task head, for tests and the simulator.

`HashingEncoder` embeds text by hashing character 1-3-grams into a fixed number of signed
buckets (feature hashing), L2-normalised, with the same `.embed(texts)` interface as
`controller.encoders.text.TextEncoder`. It is script- and orthography-sensitive (an `ɔ` gives
other n-grams than an `ọ`), deterministic, and embeds thousands of texts a second on one
core, where all-MiniLM-L6-v2 manages about a hundred on the shared 2-core machines.

`CentroidHead` is a nearest-centroid classifier over embeddings with a softmax over cosine
similarities: enough to produce a predicted label and a confidence per event, so that
prediction drift can be exercised without a trained adapter.
"""

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np


class HashingEncoder:
    """Signed feature hashing of character n-grams; `embed` -> (n, dim) float32, unit norm."""

    def __init__(self, dim: int = 384, ngram_range: tuple[int, int] = (1, 3)) -> None:
        self.dim = dim
        self.ngram_range = ngram_range

    @property
    def hidden_size(self) -> int:
        return self.dim

    def _features(self, text: str) -> list[int]:
        padded = f" {unicodedata.normalize('NFC', text.lower())} "
        lo, hi = self.ngram_range
        return [zlib.crc32(padded[i:i + n].encode("utf-8"))
                for n in range(lo, hi + 1) for i in range(len(padded) - n + 1)]

    def embed(self, texts: Sequence[str], batch_size: int = 0) -> np.ndarray:
        del batch_size  # same signature as TextEncoder.embed
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            hashes = np.asarray(self._features(text or ""), dtype=np.uint64)
            if hashes.size == 0:
                continue
            # low bits pick the bucket, one high bit the sign (keeps collisions unbiased)
            sign = np.where((hashes >> np.uint64(31)) & np.uint64(1), -1.0, 1.0)
            np.add.at(out[row], (hashes % np.uint64(self.dim)).astype(np.int64), sign)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class CentroidHead:
    """Nearest-centroid classifier: softmax(cos(embedding, centroid_c) / temperature)."""

    def __init__(self, labels: Sequence[str], centroids: np.ndarray,
                 temperature: float = 0.05) -> None:
        self.labels = tuple(labels)
        norms = np.linalg.norm(centroids, axis=1, keepdims=True)
        self.centroids = (centroids / np.maximum(norms, 1e-12)).astype(np.float32)
        self.temperature = temperature

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: Sequence[str],
            temperature: float = 0.05) -> CentroidHead:
        y = np.asarray(labels, dtype=object)
        classes = sorted(set(y.tolist()))
        centroids = np.stack([embeddings[y == c].mean(axis=0) for c in classes])
        return cls(classes, centroids, temperature)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        logits = embeddings @ self.centroids.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def __call__(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """(predicted labels, confidence = the top probability) for each row."""
        probs = self.predict_proba(embeddings)
        top = probs.argmax(axis=1)
        return [self.labels[i] for i in top], probs[np.arange(len(top)), top]


class KNNHead:
    """k-nearest-neighbour classifier over embeddings (cosine), probabilities from the
    neighbours' similarity-weighted votes. Fitted on labelled rows of the traffic pool it
    is an accurate stand-in champion, whose predictions follow a change in the label mix."""

    def __init__(self, embeddings: np.ndarray, labels: Sequence[str], k: int = 10,
                 temperature: float = 0.05) -> None:
        y = np.asarray(labels, dtype=object)
        self.labels = tuple(sorted(set(y.tolist())))
        index = {label: i for i, label in enumerate(self.labels)}
        self.codes = np.array([index[label] for label in y], dtype=np.int64)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.k = min(k, len(y))
        self.temperature = temperature

    def predict_proba(self, embeddings: np.ndarray, chunk: int = 2048) -> np.ndarray:
        out = np.zeros((len(embeddings), len(self.labels)))
        for start in range(0, len(embeddings), chunk):
            sims = embeddings[start:start + chunk] @ self.embeddings.T
            top = np.argpartition(-sims, self.k - 1, axis=1)[:, :self.k]
            weights = np.exp((np.take_along_axis(sims, top, axis=1) - 1.0) / self.temperature)
            rows = np.repeat(np.arange(len(top)), self.k)
            block = np.zeros((len(top), len(self.labels)))
            np.add.at(block, (rows, self.codes[top].ravel()), weights.ravel())
            out[start:start + chunk] = block / block.sum(axis=1, keepdims=True)
        return out

    def __call__(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        probs = self.predict_proba(embeddings)
        top = probs.argmax(axis=1)
        return [self.labels[i] for i in top], probs[np.arange(len(top)), top]
