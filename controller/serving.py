"""Serving a task from the registry: route each request (sticky canary, fallback chain), run
the served adapter, and log an inference event per request for drift and canary analysis.

Models are loaded from verified artifacts and checked against the base fingerprint (the
contract's check at load); each (language, version, base) is loaded once per process. Every
request runs on the base the router names for its adapter (the adapter's own): during a base
upgrade the champion serves on the old base and the canary on the new one, in one call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import torch

from controller.encoder import TextEncoder
from controller.training.artifact import LoadedAdapter, load_adapter
from controller.training.evaluate import embed_texts
from controller.training.pipeline import load_base
from controller.training.split import frozen_prefix
from controller.training.state_cache import MemoryStateCache
from registry import queries
from registry.routing import CachedResolver
from registry.service import Registry


class ModelCache:
    """Bases by ref and adapters by (task, language, version, base), loaded once, and per
    base a memo of what the frozen base computes (its embeddings, and the states below the
    cut of adapters that leave the bottom blocks frozen): the champion, a canary and the
    drift embedding of one request all start from the same frozen blocks, and traffic and
    held-out items come back, so each text crosses those blocks once per process."""

    def __init__(self, registry: Registry, device: str = "cpu", memo: bool = True) -> None:
        self.registry = registry
        self.device = device
        self.use_memo = memo  # off: every adapter merged, every text through every block
        self._bases: dict[str, TextEncoder] = {}
        self._memos: dict[str, MemoryStateCache] = {}
        self._adapters: dict[tuple[str, str, int, str], tuple[LoadedAdapter, list[str]]] = {}
        self._rows: dict[tuple[str, str, int], dict[str, Any]] = {}

    def base(self, ref: str) -> TextEncoder:
        if ref not in self._bases:
            self._bases[ref] = load_base(self.registry, ref, self.device)[1]
        return self._bases[ref]

    def memo(self, ref: str) -> MemoryStateCache | None:
        return self._memos.setdefault(ref, MemoryStateCache()) if self.use_memo else None

    def embed(self, ref: str, texts: Sequence[str],
              model: torch.nn.Module | None = None) -> np.ndarray:
        """Pooled unit-norm embeddings of `texts` by base `ref`, or through an adapter's
        `model` loaded on it (see `adapter`)."""
        return embed_texts(self.base(ref), model, list(texts), self.memo(ref)).numpy()

    def _row(self, task: str, language: str, version: int) -> dict[str, Any]:
        key = (task, language, version)
        if key not in self._rows:  # adapter versions are immutable: cache their rows
            self._rows[key] = self.registry.query(queries.show_adapter, task, language, version)
        return self._rows[key]

    def adapter(self, task: str, language: str, version: int, base: str | None = None
                ) -> tuple[LoadedAdapter, list[str]]:
        """The adapter loaded on `base` (default: the base it was trained on); a base whose
        fingerprint differs from the adapter's is refused (IncompatibleAdapter)."""
        base = base or self._row(task, language, version)["base"]
        key = (task, language, version, base)
        if key not in self._adapters:
            _, path = self.registry.adapter_weights(task, language, version)
            encoder = self.base(base)
            loaded = load_adapter(path, encoder.model, encoder.tokenizer)  # fingerprint check
            # inference only. A full-depth adapter is folded into this private copy of the
            # base (plain matmuls instead of base + low-rank products on every layer); one
            # that leaves the bottom blocks frozen stays a peft model, so `embed` runs only
            # its top blocks, from the base's memoised states
            if not (self.use_memo and frozen_prefix(loaded.model)):
                loaded.model = loaded.model.merge_and_unload()
            loaded.model.eval()
            self._adapters[key] = (loaded, list(loaded.meta["config"]["labels"]))
        return self._adapters[key]

    def predict(self, task: str, language: str, version: int, texts: Sequence[str],
                base: str | None = None) -> tuple[list[str], np.ndarray]:
        """Labels and confidences of adapter `version` of (task, language) on `texts`,
        run on `base` (default: the adapter's own)."""
        labels, probs, _ = self.probabilities(task, language, version, texts, base)
        return labels, probs.max(1)

    def probabilities(self, task: str, language: str, version: int, texts: Sequence[str],
                      base: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Labels, every class's probability (n, classes) and the embeddings the head read
        (n, hidden) of adapter `version` on `texts`."""
        base = base or self._row(task, language, version)["base"]
        loaded, labels = self.adapter(task, language, version, base)
        emb = self.embed(base, texts, loaded.model)
        with torch.inference_mode():
            logits = loaded.head.logits(torch.as_tensor(emb, device=self.base(base).device),
                                        list(texts))
            probs = torch.softmax(logits, dim=-1).float().cpu().numpy()
        return [labels[i] for i in probs.argmax(1)], probs, emb


class Server:
    """Routes and serves requests for one task, and logs what it served."""

    def __init__(self, registry: Registry, task: str, device: str = "cpu",
                 models: ModelCache | None = None) -> None:
        self.registry = registry
        self.task = task
        self.models = models or ModelCache(registry, device)
        # revalidated once per serve() call (one batch), never on a timer: the demo's clock
        # is not real, and a per-request check would be one query per request
        self.resolver = CachedResolver(registry.db, ttl=float("inf"))

    def serve(self, language: str, texts: Sequence[str], routing_keys: Sequence[str], *,
              at: Sequence[datetime] | None = None,
              feedback: Sequence[str | None] | None = None,
              keep_text: bool = True) -> list[dict[str, Any]]:
        """Serve each text; returns the logged events (one per text, in input order)."""
        started = time.perf_counter()
        groups: dict[tuple[str | None, int | None, str | None], list[int]] = defaultdict(list)
        track_base = None
        self.resolver.revalidate()
        for i, key in enumerate(routing_keys):
            r = self.resolver.resolve(self.task, language, key)
            groups[(r.served_language, r.version, r.base)].append(i)
            track_base = r.track_base or r.base
        if track_base is None:
            raise ValueError(f"no base encoder serves {self.task}/{language}")
        # drift compares with a reference embedded by the track's base: embed with it too
        embeddings = self.models.embed(track_base, texts)
        predictions: list[str] = [""] * len(texts)
        confidence = np.zeros(len(texts))
        for (served, version, base), idx in groups.items():
            if version is None or served is None:
                raise ValueError(f"{self.task}/{language} has no champion to serve")
            labels, conf = self.models.predict(self.task, served, version,
                                               [texts[i] for i in idx], base=base)
            for j, i in enumerate(idx):
                predictions[i], confidence[i] = labels[j], conf[j]
        latency = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        versions = {i: v for (_, v, _), idx in groups.items() for i in idx}
        events = [{
            "task": self.task, "language": language, "adapter_version": versions[i],
            "routing_key": routing_keys[i], "text": texts[i], "embedding": embeddings[i],
            "prediction": predictions[i], "confidence": float(confidence[i]),
            "feedback_label": feedback[i] if feedback is not None else None,
            "latency_ms": round(latency, 3), **({"at": at[i]} if at is not None else {}),
        } for i in range(len(texts))]
        from controller.drift.store import log_events

        log_events(self.registry, events, keep_text=keep_text)
        return events
